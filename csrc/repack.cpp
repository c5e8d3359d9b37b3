#include "repack.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <functional>
#include <limits>
#include <mutex>
#include <stdexcept>
#include <string>

#include "f16.h"
#include "threadpool.h"

namespace tritlm {
namespace {

using kernels::Format;
using kernels::kBlock;

std::string str(int64_t v) { return std::to_string(v); }

void check_shape(const char* what, int64_t n, int64_t k, int64_t k_multiple) {
  if (n <= 0) throw std::invalid_argument(std::string(what) + ": n must be positive, got " + str(n));
  if (k <= 0 || k % k_multiple != 0)
    throw std::invalid_argument(std::string(what) + ": k must be a positive multiple of " + str(k_multiple) +
                                ", got " + str(k));
  if (k > kernels::kMaxK)
    throw std::invalid_argument(std::string(what) + ": k = " + str(k) + " exceeds the largest supported, " +
                                str(kernels::kMaxK));
  if (n > std::numeric_limits<int64_t>::max() / k / 4)
    throw std::invalid_argument(std::string(what) + ": n * k is too large");
}

void check_size(const char* what, size_t size, size_t expected) {
  if (size != expected)
    throw std::invalid_argument(std::string(what) + ": data is " + std::to_string(size) + " bytes, expected " +
                                std::to_string(expected) + " for this n and k");
}

// Writes row r of w from its k int8 weights, in the format's layout.
void pack_row(PackedWeights& w, int64_t r, const int8_t* v) {
  const int64_t k = w.k;
  if (w.format == Format::kTernary) {
    uint8_t* out = w.codes.data() + r * (k / 4);
    for (int64_t b = 0; b < k / kBlock; ++b, v += kBlock, out += 32)
      for (int j = 0; j < 32; ++j)
        out[j] = static_cast<uint8_t>(((v[j] + 1) << 6) | ((v[j + 32] + 1) << 4) | ((v[j + 64] + 1) << 2) |
                                      (v[j + 96] + 1));
  } else {
    for (int64_t j = 0; j < k / 8; ++j) {
      uint8_t byte = 0;
      for (int i = 0; i < 8; ++i) byte |= static_cast<uint8_t>((v[8 * j + i] > 0) << i);
      w.codes[kernels::binary_byte(k, r, j)] = byte;
    }
  }
}

// Why a group's scale cannot be stored, or an empty string. The binary format keeps its scales
// as binary16 (rounded to nearest even), so a scale must round to a finite half, and a nonzero
// one to a nonzero half: anything else would silently change the weights' magnitude.
std::string check_scale(Format f, int64_t g, float scale) {
  if (!std::isfinite(scale)) return "scale of group " + str(g) + " is not finite";
  if (f == Format::kBinary) {
    const uint16_t h = f32_to_fp16(scale);
    if ((h & 0x7c00) == 0x7c00 || (scale != 0.0f && (h & 0x7fff) == 0)) {
      char value[32];
      std::snprintf(value, sizeof value, "%g", scale);
      return "scale of group " + str(g) + " (" + value +
             ") is outside binary16's range, in which the binary format stores scales";
    }
  }
  return {};
}

// Decodes row r of a source into k int8 weights and its group scales; returns an error message
// or an empty string.
using RowDecoder = std::function<std::string(int64_t r, int8_t* values, float* scales)>;

// Runs decode over all rows in parallel and packs the results. The first error (lowest row)
// is thrown after all threads finish, prefixed with the source's name.
PackedWeights build(const char* what, Format f, int64_t n, int64_t k, int64_t group_blocks, const RowDecoder& decode,
                    int n_threads) {
  PackedWeights w;
  w.format = f;
  w.n = n;
  w.k = k;
  w.group_blocks = group_blocks;
  w.codes.assign(w.code_bytes(), 0);
  const int64_t n_scales = kernels::padded_rows(f, n) * w.groups();
  if (f == Format::kTernary)
    w.scales.assign(n_scales, 0.0f);
  else
    w.half_scales.assign(n_scales, 0);
  constexpr int64_t kRowsPerTask = 64;
  std::mutex error_mutex;
  int64_t error_row = n;
  std::string error;
  ThreadPool::instance().run((n + kRowsPerTask - 1) / kRowsPerTask, n_threads, [&](int64_t task) {
    std::vector<int8_t> values(k);
    std::vector<float> scales(w.groups());
    for (int64_t r = task * kRowsPerTask; r < std::min(n, (task + 1) * kRowsPerTask); ++r) {
      std::string e = decode(r, values.data(), scales.data());
      for (int64_t g = 0; e.empty() && g < w.groups(); ++g) e = check_scale(f, g, scales[g]);
      if (!e.empty()) {
        std::lock_guard<std::mutex> lock(error_mutex);
        if (r < error_row) {
          error_row = r;
          error = std::move(e);
        }
        return;
      }
      pack_row(w, r, values.data());
      for (int64_t g = 0; g < w.groups(); ++g) w.set_scale(r, g, scales[g]);
    }
  });
  if (!error.empty()) throw std::invalid_argument(std::string(what) + ": row " + str(error_row) + ": " + error);
  return w;
}

uint16_t read_u16(const uint8_t* p) { return static_cast<uint16_t>(p[0] | (p[1] << 8)); }

float read_f32(const uint8_t* p) {
  float v;
  std::memcpy(&v, p, sizeof v);  // GGUF is little-endian, as are all targets we build for
  return v;
}

std::string bad_code(int64_t index) { return "invalid 2-bit code 3 at column " + str(index); }

}  // namespace

PackedWeights pack_int8(Format f, const int8_t* w, int64_t n, int64_t k, const float* scales, int64_t group_blocks,
                        int n_threads) {
  const char* what = f == Format::kTernary ? "pack_ternary" : "pack_binary";
  check_shape(what, n, k, kBlock);
  if (group_blocks <= 0 || (k / kBlock) % group_blocks != 0)
    throw std::invalid_argument(std::string(what) + ": group size " + str(group_blocks * kBlock) +
                                " does not divide k = " + str(k));
  const int64_t groups = k / (group_blocks * kBlock);
  return build(what, f, n, k, group_blocks,
               [&](int64_t r, int8_t* values, float* row_scales) -> std::string {
                 const int8_t* src = w + r * k;
                 for (int64_t i = 0; i < k; ++i) {
                   const int8_t v = src[i];
                   const bool ok = f == Format::kTernary ? (v >= -1 && v <= 1) : (v == -1 || v == 1);
                   if (!ok)
                     return "value " + str(v) + " at column " + str(i) + " is not " +
                            (f == Format::kTernary ? "-1, 0 or 1" : "-1 or 1");
                   values[i] = v;
                 }
                 std::memcpy(row_scales, scales + r * groups, groups * sizeof(float));
                 return {};
               },
               n_threads);
}

// TQ2_0: 256-weight blocks of qs[64] then fp16 d; in each 128-weight half, element m + 32 l is at
// bits 2l..2l+1 of byte m, as w + 1.
PackedWeights repack_tq2_0(const uint8_t* data, size_t size, int64_t n, int64_t k, int n_threads) {
  check_shape("tq2_0", n, k, 256);
  constexpr int64_t kBytes = 66;
  const int64_t row = k / 256 * kBytes;
  check_size("tq2_0", size, static_cast<size_t>(n * row));
  return build("tq2_0", Format::kTernary, n, k, 2,
               [&](int64_t r, int8_t* values, float* scales) -> std::string {
                 for (int64_t b = 0; b < k / 256; ++b) {
                   const uint8_t* blk = data + r * row + b * kBytes;
                   for (int half = 0; half < 2; ++half)
                     for (int l = 0; l < 4; ++l)
                       for (int m = 0; m < 32; ++m) {
                         const int64_t i = b * 256 + half * 128 + l * 32 + m;
                         const int code = (blk[half * 32 + m] >> (2 * l)) & 3;
                         if (code == 3) return bad_code(i);
                         values[i] = static_cast<int8_t>(code - 1);
                       }
                   scales[b] = fp16_to_f32(read_u16(blk + 64));
                 }
                 return {};
               },
               n_threads);
}

// TQ1_0: 256-weight blocks of qs[48], qh[4], fp16 d. A byte holds 5 (qs) or 4 (qh) base-3 digits
// in fixed point: digit n of byte q is ((uint8_t)(q * 3^n) * 3) >> 8. Bytes 0..31 of qs give
// weights n*32 + m (160 weights), bytes 32..47 give 160 + n*16 + m, qh gives 240 + n*4 + j.
PackedWeights repack_tq1_0(const uint8_t* data, size_t size, int64_t n, int64_t k, int n_threads) {
  check_shape("tq1_0", n, k, 256);
  constexpr int64_t kBytes = 54;
  const int64_t row = k / 256 * kBytes;
  check_size("tq1_0", size, static_cast<size_t>(n * row));
  return build("tq1_0", Format::kTernary, n, k, 2,
               [&](int64_t r, int8_t* values, float* scales) -> std::string {
                 static constexpr uint8_t kPow3[5] = {1, 3, 9, 27, 81};
                 auto digit = [](uint8_t q, int d) {
                   return static_cast<int8_t>(((static_cast<uint8_t>(q * kPow3[d]) * 3) >> 8) - 1);
                 };
                 for (int64_t b = 0; b < k / 256; ++b) {
                   const uint8_t* blk = data + r * row + b * kBytes;
                   int8_t* v = values + b * 256;
                   for (int d = 0; d < 5; ++d)
                     for (int m = 0; m < 32; ++m) v[d * 32 + m] = digit(blk[m], d);
                   for (int d = 0; d < 5; ++d)
                     for (int m = 0; m < 16; ++m) v[160 + d * 16 + m] = digit(blk[32 + m], d);
                   for (int d = 0; d < 4; ++d)
                     for (int j = 0; j < 4; ++j) v[240 + d * 4 + j] = digit(blk[48 + j], d);
                   scales[b] = fp16_to_f32(read_u16(blk + 52));
                 }
                 return {};
               },
               n_threads);
}

// I2_S: n*k/4 bytes in tritlm's ternary layout exactly, then a 32-byte tail whose first four
// bytes are the f32 tensor scale. With an owner, the codes are checked and then viewed in place
// (a memory-mapped file needs no second copy); without one they are copied.
PackedWeights repack_i2_s(const uint8_t* data, size_t size, int64_t n, int64_t k, int n_threads,
                          std::shared_ptr<const void> owner) {
  check_shape("i2_s", n, k, kBlock);
  const int64_t packed = n * k / 4;
  check_size("i2_s", size, static_cast<size_t>(packed + 32));
  const float scale = read_f32(data + packed);
  if (!owner)
    return build("i2_s", Format::kTernary, n, k, k / kBlock,
                 [&](int64_t r, int8_t* values, float* scales) -> std::string {
                   const uint8_t* src = data + r * (k / 4);
                   for (int64_t b = 0; b < k / kBlock; ++b)
                     for (int j = 0; j < 32; ++j)
                       for (int i = 0; i < 4; ++i) {
                         const int code = (src[b * 32 + j] >> (6 - 2 * i)) & 3;
                         const int64_t col = b * kBlock + 32 * i + j;
                         if (code == 3) return bad_code(col);
                         values[col] = static_cast<int8_t>(code - 1);
                       }
                     scales[0] = scale;
                   return {};
                 },
                 n_threads);
  if (!std::isfinite(scale)) throw std::invalid_argument("i2_s: the tensor scale is not finite");
  // Code 3 (both bits of a field set) is the one invalid value; find the first, in parallel.
  std::atomic<int64_t> first_bad{packed};
  constexpr int64_t kBytesPerTask = 1 << 20;
  ThreadPool::instance().run((packed + kBytesPerTask - 1) / kBytesPerTask, n_threads, [&](int64_t task) {
    for (int64_t i = task * kBytesPerTask; i < std::min(packed, (task + 1) * kBytesPerTask); ++i)
      if (data[i] & (data[i] >> 1) & 0x55) {
        int64_t seen = first_bad.load();
        while (i < seen && !first_bad.compare_exchange_weak(seen, i)) {
        }
        return;
      }
  });
  if (first_bad.load() < packed) {
    const int64_t i = first_bad.load(), r = i / (k / 4), j = i % (k / 4) % 32, b = i % (k / 4) / 32;
    int field = 0;
    while (((data[i] >> (6 - 2 * field)) & 3) != 3) ++field;
    throw std::invalid_argument("i2_s: row " + str(r) + ": " + bad_code(b * kBlock + 32 * field + j));
  }
  PackedWeights w;
  w.format = Format::kTernary;
  w.n = n;
  w.k = k;
  w.group_blocks = k / kBlock;
  w.scales.assign(n, scale);
  w.borrowed = data;
  w.owner = std::move(owner);
  return w;
}

// Q1_0: 128-weight blocks of fp16 d then qs[16]; weight j is bit j % 8 of byte j / 8, 1 -> +d.
PackedWeights repack_q1_0(const uint8_t* data, size_t size, int64_t n, int64_t k, int n_threads) {
  check_shape("q1_0", n, k, kBlock);
  constexpr int64_t kBytes = 18;
  const int64_t row = k / kBlock * kBytes;
  check_size("q1_0", size, static_cast<size_t>(n * row));
  return build("q1_0", Format::kBinary, n, k, 1,
               [&](int64_t r, int8_t* values, float* scales) -> std::string {
                 for (int64_t b = 0; b < k / kBlock; ++b) {
                   const uint8_t* blk = data + r * row + b * kBytes;
                   scales[b] = fp16_to_f32(read_u16(blk));
                   for (int j = 0; j < kBlock; ++j)
                     values[b * kBlock + j] = ((blk[2 + j / 8] >> (j % 8)) & 1) ? 1 : -1;
                 }
                 return {};
               },
               n_threads);
}

PackedWeights repack_hf_packed(const uint8_t* packed, int64_t packed_rows, int64_t k, float weight_scale,
                               int n_threads) {
  check_shape("hf_packed", packed_rows, k, kBlock);
  if (!std::isfinite(weight_scale)) throw std::invalid_argument("hf_packed: weight_scale is not finite");
  return build("hf_packed", Format::kTernary, 4 * packed_rows, k, k / kBlock,
               [&](int64_t r, int8_t* values, float* scales) -> std::string {
                 const uint8_t* src = packed + (r % packed_rows) * k;
                 const int shift = static_cast<int>(2 * (r / packed_rows));
                 for (int64_t i = 0; i < k; ++i) {
                   const int code = (src[i] >> shift) & 3;
                   if (code == 3) return bad_code(i);
                   values[i] = static_cast<int8_t>(code - 1);
                 }
                 scales[0] = weight_scale;
                 return {};
               },
               n_threads);
}

void unpack(const PackedWeights& w, int8_t* values, float* scales) {
  for (int64_t r = 0; r < w.n; ++r)
    for (int64_t i = 0; i < w.k; ++i)
      values[r * w.k + i] = static_cast<int8_t>(kernels::weight_at(w.format, w.code_data(), w.k, r, i));
  for (int64_t r = 0; r < w.n; ++r)
    for (int64_t g = 0; g < w.groups(); ++g) scales[r * w.groups() + g] = w.scale(r, g);
}

}  // namespace tritlm
