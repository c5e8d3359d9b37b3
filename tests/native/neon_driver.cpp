// Standalone check that the NEON kernel tables equal the scalar table bit for bit.
//
// Built for aarch64 by tests/native/build_neon.sh (scalar.cpp, neon.cpp twice: baseline and
// +dotprod) and run under qemu-aarch64 by tests/test_neon_qemu.py. For every case the scalar
// table computes the reference and each NEON table must reproduce every output bit:
//   * matmul, both formats, over shapes (activation rows x weight rows x K x group size), a
//     split row range [r0, mid) + [mid, r1) against one scalar call (for the binary format mid
//     is a tile boundary, possibly 0, and weight rows end in partial tiles), and ldy > n with
//     sentinel padding, and a sentinel tail past the last row, that must stay untouched; a
//     table with lookup tables (build_lut) gets them built for every activation row first, as
//     packed.cpp does;
//   * the int16/int32 extremes: all q = 127 or -128 against all +1 / all -1 weights at large K;
//   * special scales (0, -0, subnormal, huge, inf, NaN);
//   * quantize_row on random rows of many magnitudes, exact .5 ties, amax below 1e-5,
//     subnormals, FLT_MAX, and rejection of NaN / infinity anywhere in the row;
//   * matvec_f16 (the f16 output head) over cols 16 .. 2560, 1-5 x rows and row ranges split
//     in two, with random halves and with special ones (subnormal, +-0, +-65504, overflow).
// neon-dotprod runs only if the CPU reports dotprod (HWCAP_ASIMDDP); otherwise the driver never
// calls into that object, not even its table accessor.
//
// Output: one line per table tested or skipped, the first mismatches, and a final line
// "N passed, M failed". Exit status 0 only if nothing failed.
#include <sys/auxv.h>

#include <cfloat>
#include <cinttypes>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "f16.h"
#include "kernels/kernels.h"

#ifndef HWCAP_ASIMDDP
#define HWCAP_ASIMDDP (1ul << 20)
#endif

namespace k = tritlm::kernels;

namespace {

constexpr uint64_t kSeed = 0x7217'1a4b'2024'0001ull;
constexpr int kMaxReported = 8;  // mismatching values printed per failed case

int g_passed = 0, g_failed = 0;

uint32_t bits_of(float v) {
  uint32_t b;
  std::memcpy(&b, &v, sizeof b);
  return b;
}

float float_of(uint32_t b) {
  float v;
  std::memcpy(&v, &b, sizeof v);
  return v;
}

void record(bool ok, const std::string& what) {
  if (ok) {
    ++g_passed;
  } else {
    ++g_failed;
    std::printf("FAIL %s\n", what.c_str());
  }
}

std::string num(double v) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%g", v);
  return buf;
}

const char* format_name(k::Format f) { return f == k::Format::kTernary ? "ternary" : "binary"; }

// ------------------------------------------------------------------------------------------
// Matmul cases
// ------------------------------------------------------------------------------------------

enum class WeightFill { kRandom, kAllPlus, kAllMinus, kRowsPlusMinusZero };
enum class ActFill { kRandom, kExtremes };  // kExtremes: rows of all 127, all -128, random
enum class ScaleFill { kRandom, kOne, kSpecial };

struct MatmulCase {
  k::Format format;
  int64_t rows, n, k, group_blocks;
  WeightFill weights = WeightFill::kRandom;
  ActFill acts = ActFill::kRandom;
  ScaleFill scales = ScaleFill::kRandom;
};

std::string describe(const MatmulCase& c) {
  static const char* const kWeights[] = {"random", "all+1", "all-1", "rows+1/-1/0"};
  static const char* const kActs[] = {"random", "127/-128/random"};
  static const char* const kScales[] = {"random", "one", "special"};
  char buf[240];
  std::snprintf(buf, sizeof buf, "%s rows=%" PRId64 " n=%" PRId64 " k=%" PRId64 " group_blocks=%" PRId64
                " weights=%s q=%s scales=%s",
                format_name(c.format), c.rows, c.n, c.k, c.group_blocks, kWeights[static_cast<int>(c.weights)],
                kActs[static_cast<int>(c.acts)], kScales[static_cast<int>(c.scales)]);
  return buf;
}

// Pack weight values (-1/0/+1, or -1/+1 for binary) of row r into the run-time layout of
// kernels.h (codes zeroed beforehand), written from the layout's description rather than with
// its helpers; weight_at() must read them back.
void pack_row(k::Format f, int64_t r, const std::vector<int>& w, uint8_t* codes) {
  const int64_t kk = static_cast<int64_t>(w.size());
  for (int64_t i = 0; i < kk; ++i) {
    if (f == k::Format::kTernary) {
      const int64_t block = i / k::kBlock, j = i % k::kBlock;
      codes[r * (kk / 4) + block * 32 + j % 32] |= static_cast<uint8_t>((w[i] + 1) << (6 - 2 * (j / 32)));
    } else if (w[i] > 0) {
      // Tile r / 32 is kk * 4 bytes; in it, 32 bytes per 8 weights, one byte per row.
      const int64_t tile = r / k::kTileRows, row_in_tile = r % k::kTileRows;
      codes[tile * kk * 4 + (i / 8) * k::kTileRows + row_in_tile] |= static_cast<uint8_t>(1u << (i % 8));
    }
  }
}

int weight_value(const MatmulCase& c, int64_t r, std::mt19937_64& rng) {
  const bool ternary = c.format == k::Format::kTernary;
  switch (c.weights) {
    case WeightFill::kAllPlus: return 1;
    case WeightFill::kAllMinus: return -1;
    case WeightFill::kRowsPlusMinusZero:
      if (r % 3 == 0) return 1;
      if (r % 3 == 1) return -1;
      return ternary ? 0 : ((rng() & 1) ? 1 : -1);
    case WeightFill::kRandom: break;
  }
  return ternary ? static_cast<int>(rng() % 3) - 1 : ((rng() & 1) ? 1 : -1);
}

float random_scale(std::mt19937_64& rng) {
  std::uniform_real_distribution<float> mag(-12.0f, 4.0f);
  const float v = std::exp2(mag(rng));
  return (rng() & 1) ? -v : v;
}

float special_scale(std::mt19937_64& rng) {
  // 65504 is binary16's largest finite value and 3e-6 one of its subnormals (the binary format's
  // scales are halves).
  static const float kSpecials[] = {0.0f,      -0.0f,    1e-40f, -3e-42f,       FLT_MIN, 3e38f, -3e38f, INFINITY,
                                    -INFINITY, std::nanf(""), 1.0f, -1.0f, 65504.0f, -3e-6f};
  constexpr uint64_t kCount = sizeof kSpecials / sizeof kSpecials[0];
  const uint64_t pick = rng() % (2 * kCount);
  return pick < kCount ? kSpecials[pick] : random_scale(rng);
}

struct MatmulData {
  std::vector<uint8_t> codes;
  std::vector<float> scales;          // ternary
  std::vector<uint16_t> half_scales;  // binary
  std::vector<int8_t> q;
  std::vector<float> s;
  std::vector<int32_t> block_sums;
  k::WeightView w;
  k::ActView a;
};

MatmulData make_data(const MatmulCase& c, std::mt19937_64& rng) {
  MatmulData d;
  const int64_t blocks = c.k / k::kBlock, groups = blocks / c.group_blocks;
  // Padding rows of the binary layout keep zero codes and zero scales, as the packers leave them.
  d.codes.assign(k::code_bytes(c.format, c.n, c.k), 0);
  const bool binary = c.format == k::Format::kBinary;
  if (binary)
    d.half_scales.assign(k::padded_rows(c.format, c.n) * groups, 0);
  else
    d.scales.assign(k::padded_rows(c.format, c.n) * groups, 0.0f);
  std::vector<int> row(c.k);
  for (int64_t r = 0; r < c.n; ++r) {
    for (int64_t i = 0; i < c.k; ++i) row[i] = weight_value(c, r, rng);
    pack_row(c.format, r, row, d.codes.data());
    for (int64_t i = r % 7; i < c.k; i += 97) {  // spot-check the packer against the contract
      if (k::weight_at(c.format, d.codes.data(), c.k, r, i) != row[i]) {
        std::printf("driver bug: pack_row disagrees with weight_at\n");
        std::exit(2);
      }
    }
    for (int64_t g = 0; g < groups; ++g) {
      const float v =
          c.scales == ScaleFill::kOne ? 1.0f : c.scales == ScaleFill::kSpecial ? special_scale(rng) : random_scale(rng);
      const int64_t i = k::scale_index(c.format, groups, r, g);
      if (binary)
        d.half_scales[i] = tritlm::f32_to_fp16(v);
      else
        d.scales[i] = v;
    }
  }
  d.q.resize(c.rows * c.k);
  for (int64_t b = 0; b < c.rows; ++b) {
    for (int64_t i = 0; i < c.k; ++i) {
      int v = static_cast<int>(rng() % 256) - 128;  // full int8 range, -128 included
      if (c.acts == ActFill::kExtremes && b % 3 == 0) v = 127;
      if (c.acts == ActFill::kExtremes && b % 3 == 1) v = -128;
      d.q[b * c.k + i] = static_cast<int8_t>(v);
    }
  }
  d.s.resize(c.rows);
  std::uniform_real_distribution<float> smag(-6.0f, 8.0f);
  for (float& v : d.s) v = c.scales == ScaleFill::kOne ? 1.0f : std::exp2(smag(rng));
  d.block_sums.resize(c.rows * blocks);
  for (int64_t b = 0; b < c.rows; ++b) {
    for (int64_t blk = 0; blk < blocks; ++blk) {
      int32_t sum = 0;
      for (int64_t i = 0; i < k::kBlock; ++i) sum += d.q[b * c.k + blk * k::kBlock + i];
      d.block_sums[b * blocks + blk] = sum;
    }
  }
  d.w = k::WeightView{c.format, d.codes.data(), d.scales.data(), d.half_scales.data(), c.n, c.k, c.group_blocks};
  d.a = k::ActView{d.q.data(), d.s.data(), d.block_sums.data(), c.rows, c.k};
  return d;
}

constexpr uint32_t kSentinel = 0x7fbadbadu;  // a NaN pattern no kernel produces
// Sentinel floats after the last output row: a write for a padding row of the last activation
// row's last binary tile would land there.
constexpr int64_t kTail = k::kTileRows;

// The activation rows' lookup tables for a table whose binary matmul reads them (none
// otherwise), built as packed.cpp builds them, in a buffer first filled with junk so that
// build_lut must write every byte the matmul reads.
std::vector<uint8_t> build_luts(const k::KernelTable& t, const MatmulCase& c, const MatmulData& d) {
  if (c.format != k::Format::kBinary || t.build_lut == nullptr) return {};
  const int64_t bytes = t.lut_bytes(c.k);
  std::vector<uint8_t> lut(c.rows * bytes, 0xa5);
  for (int64_t b = 0; b < c.rows; ++b) t.build_lut(d.q.data() + b * c.k, c.k, lut.data() + b * bytes);
  return lut;
}

// Runs one case through scalar (one call over all rows) and each table (two calls splitting the
// weight rows at mid: n/2, or for the binary format n/2 rounded down to a tile boundary), with
// ldy = n + 3 so the padding must keep its sentinel, as must rows [mid, n) after the first call.
void run_matmul_case(const MatmulCase& c, const std::vector<const k::KernelTable*>& tables,
                     std::mt19937_64& rng) {
  const MatmulData d = make_data(c, rng);
  const int64_t ldy = c.n + 3, size = c.rows * ldy + kTail;
  const int fi = static_cast<int>(c.format);
  std::vector<float> expect(size, float_of(kSentinel));
  k::kScalarTable.matmul[fi](d.w, d.a, 0, c.n, expect.data(), ldy, false);

  // Analytic check of the reference itself where the answer is known exactly.
  if (c.scales == ScaleFill::kOne && c.group_blocks == c.k / k::kBlock && c.acts == ActFill::kExtremes &&
      (c.weights == WeightFill::kAllPlus || c.weights == WeightFill::kAllMinus)) {
    const int sign = c.weights == WeightFill::kAllPlus ? 1 : -1;
    for (int64_t b = 0; b < c.rows && b < 2; ++b) {
      const float want = static_cast<float>(sign * (b == 0 ? 127 : -128) * c.k);
      record(bits_of(expect[b * ldy]) == bits_of(want), "scalar analytic " + describe(c));
    }
  }

  const int64_t align = c.format == k::Format::kBinary ? k::kTileRows : 1;
  const int64_t mid = c.n / 2 / align * align;
  for (const k::KernelTable* t : tables) {
    const std::vector<uint8_t> lut = build_luts(*t, c, d);
    k::ActView a = d.a;
    a.lut = lut.empty() ? nullptr : lut.data();
    std::vector<float> got(size, float_of(kSentinel));
    t->matmul[fi](d.w, a, 0, mid, got.data(), ldy, false);
    // The first call writes weight rows [0, mid) only.
    int strays = 0;
    for (int64_t i = 0; i < size; ++i) strays += i % ldy >= mid && bits_of(got[i]) != kSentinel;
    record(strays == 0, std::string(t->isa) + " matmul " + describe(c) + " writes only [0, " + std::to_string(mid) +
                            ") (" + std::to_string(strays) + " values outside)");
    t->matmul[fi](d.w, a, mid, c.n, got.data(), ldy, true);
    int bad = 0;
    for (int64_t i = 0; i < size; ++i) {
      if (bits_of(got[i]) != bits_of(expect[i])) {
        if (bad < kMaxReported) {
          std::printf("  %s matmul %s: y[%" PRId64 "][%" PRId64 "] = %.9g (0x%08x), scalar %.9g (0x%08x)\n",
                      t->isa, describe(c).c_str(), i / ldy, i % ldy, got[i], bits_of(got[i]), expect[i],
                      bits_of(expect[i]));
        }
        ++bad;
      }
    }
    record(bad == 0, std::string(t->isa) + " matmul " + describe(c) + " (" + std::to_string(bad) + " values differ)");
  }
}

std::vector<MatmulCase> matmul_cases() {
  std::vector<MatmulCase> cases;
  const int64_t ks[] = {128, 256, 640, 2560, 6912};
  const k::Format formats[] = {k::Format::kTernary, k::Format::kBinary};
  for (k::Format f : formats) {
    const bool binary = f == k::Format::kBinary;
    // Ternary: activation rows 1, 3, 7, 17 cover every tile path (8/4 main tiles, 4-2-1 tails);
    // weight rows odd and even, 1 included. Binary: activation rows in pairs and a single one
    // (odd and even counts), weight rows in one partial tile, one whole tile, a whole tile and
    // one row, and two tiles and a partial one. 64 is a full prefill batch.
    const std::vector<int64_t> rows_list =
        binary ? std::vector<int64_t>{1, 2, 3, 5, 9, 64} : std::vector<int64_t>{1, 3, 7, 17, 64};
    const std::vector<int64_t> n_list = binary ? std::vector<int64_t>{1, 31, 32, 33, 70} : std::vector<int64_t>{1, 7, 8, 33};
    for (int64_t kk : ks) {
      const int64_t blocks = kk / k::kBlock;
      std::vector<int64_t> gbs{blocks};  // one group per row (per-tensor / per-channel scale)
      if (blocks % 2 == 0 && blocks != 2) gbs.push_back(2);
      if (blocks != 1) gbs.push_back(1);
      for (int64_t gb : gbs) {
        for (int64_t rows : rows_list) {
          for (int64_t n : n_list) {
            cases.push_back({f, rows, n, kk, gb});
          }
        }
      }
    }
    // Scales that are zero, subnormal, huge, infinite, NaN (over two tiles, the second partial).
    cases.push_back({f, 5, 40, 1024, 1, WeightFill::kRandom, ActFill::kRandom, ScaleFill::kSpecial});
    cases.push_back({f, 9, 6, 2560, 2, WeightFill::kRandom, ActFill::kRandom, ScaleFill::kSpecial});
    // Accumulator extremes: every product +-127 or +-128 over a long row (the binary kernels'
    // int16 and byte sums at their bounds), in a tile and a partial one.
    for (int64_t kk : {int64_t{6912}, int64_t{16384}}) {
      for (WeightFill wf : {WeightFill::kAllPlus, WeightFill::kAllMinus, WeightFill::kRowsPlusMinusZero}) {
        cases.push_back({f, 3, 35, kk, kk / k::kBlock, wf, ActFill::kExtremes, ScaleFill::kOne});
        cases.push_back({f, 3, 35, kk, 1, wf, ActFill::kExtremes, ScaleFill::kRandom});
      }
      cases.push_back({f, 9, 4, kk, 16, WeightFill::kAllMinus, ActFill::kExtremes, ScaleFill::kRandom});
    }
  }
  return cases;
}

// ------------------------------------------------------------------------------------------
// quantize_row cases
// ------------------------------------------------------------------------------------------

struct QuantResult {
  bool ok;
  std::vector<int8_t> q;
  float s;
  std::vector<int32_t> block_sums;
};

QuantResult quantize(const k::KernelTable& t, const std::vector<float>& x) {
  const int64_t kk = static_cast<int64_t>(x.size());
  QuantResult r{false, std::vector<int8_t>(kk, 99), 0.0f, std::vector<int32_t>(kk / k::kBlock, 12345)};
  r.ok = t.quantize_row(x.data(), kk, r.q.data(), &r.s, r.block_sums.data());
  return r;
}

void check_quantize(const std::string& name, const std::vector<float>& x,
                    const std::vector<const k::KernelTable*>& tables) {
  const QuantResult want = quantize(k::kScalarTable, x);
  for (const k::KernelTable* t : tables) {
    const QuantResult got = quantize(*t, x);
    bool same = got.ok == want.ok;
    if (same && want.ok) {
      same = bits_of(got.s) == bits_of(want.s) && got.q == want.q && got.block_sums == want.block_sums;
    }
    if (!same) {
      std::printf("  %s quantize %s: ok %d/%d s 0x%08x/0x%08x\n", t->isa, name.c_str(), got.ok, want.ok,
                  bits_of(got.s), bits_of(want.s));
      int shown = 0;
      for (size_t i = 0; i < x.size() && shown < kMaxReported; ++i) {
        if (got.q[i] != want.q[i]) {
          std::printf("    x[%zu] = %.9g: q %d, scalar %d\n", i, x[i], got.q[i], want.q[i]);
          ++shown;
        }
      }
    }
    record(same, std::string(t->isa) + " quantize " + name);
  }
}

// Values of x * s that are exact halves must round to even: check the reference on a crafted row.
void check_scalar_ties() {
  std::vector<float> x(128, 0.0f);
  const float in[] = {127.0f, 0.5f, 1.5f, 2.5f, -0.5f, -1.5f, -2.5f, 126.5f, -126.5f, -127.0f};
  const int8_t want[] = {127, 0, 2, 2, 0, -2, -2, 126, -126, -127};
  for (size_t i = 0; i < sizeof in / sizeof in[0]; ++i) x[i] = in[i];
  const QuantResult r = quantize(k::kScalarTable, x);
  bool ok = r.ok && r.s == 1.0f;
  for (size_t i = 0; ok && i < sizeof in / sizeof in[0]; ++i) ok = r.q[i] == want[i];
  record(ok, "scalar quantize rounds exact ties to even");
}

void run_quantize_cases(const std::vector<const k::KernelTable*>& tables, std::mt19937_64& rng) {
  check_scalar_ties();
  std::normal_distribution<float> normal(0.0f, 1.0f);
  const int64_t ks[] = {128, 256, 640, 2560, 6912};
  const float magnitudes[] = {1e-30f, 1e-12f, 3e-6f, 9.99e-6f, 1e-3f, 1.0f, 37.0f, 1e4f, 1e30f};
  for (int64_t kk : ks) {
    for (float m : magnitudes) {
      std::vector<float> x(kk);
      for (float& v : x) v = normal(rng) * m;
      check_quantize("normal k=" + std::to_string(kk) + " magnitude " + num(m), x, tables);
    }
    // One outlier dominating the row, values at the clamp edge.
    std::vector<float> x(kk);
    for (float& v : x) v = normal(rng);
    x[rng() % kk] = -1000.0f;
    check_quantize("outlier k=" + std::to_string(kk), x, tables);
  }

  // Exact ties: amax 127 gives s = 1, amax 63.5 gives s = 2, amax 254 gives s = 0.5; halves of
  // every integer in range then land exactly on .5.
  const float amaxes[] = {127.0f, 63.5f, 254.0f};
  for (float amax : amaxes) {
    for (int64_t kk : {int64_t{128}, int64_t{1024}}) {
      const float s = 127.0f / amax;
      std::vector<float> x(kk);
      for (float& v : x) v = (static_cast<float>(static_cast<int>(rng() % 255) - 127) + 0.5f) / s;
      x[rng() % kk] = (rng() & 1) ? amax : -amax;
      for (float& v : x) v = v > amax ? amax : v < -amax ? -amax : v;
      check_quantize("ties amax=" + num(amax) + " k=" + std::to_string(kk), x, tables);
    }
  }

  // amax below 1e-5 (s = 127 / 1e-5), zeros, -0, subnormals, FLT_MAX.
  {
    std::vector<float> x(256, 0.0f);
    check_quantize("all zero", x, tables);
    for (size_t i = 0; i < x.size(); i += 2) x[i] = -0.0f;
    check_quantize("zeros and negative zeros", x, tables);
    for (float& v : x) v = normal(rng) * 1e-40f;  // subnormal
    check_quantize("subnormal", x, tables);
    for (float& v : x) v = normal(rng) * 4e-6f;
    x[7] = 1e-5f;
    x[8] = -9.999999e-6f;
    check_quantize("amax at 1e-5", x, tables);
    for (float& v : x) v = normal(rng) * 1e37f;  // stays finite
    x[3] = FLT_MAX;
    x[4] = -FLT_MAX;
    check_quantize("FLT_MAX", x, tables);
    // Values whose product with s sits right next to a half: nextafter around (m + 0.5) / s.
    const float s = 127.0f / 100.0f;
    for (size_t i = 0; i < x.size(); ++i) {
      const float t = (static_cast<float>(static_cast<int>(rng() % 200) - 100) + 0.5f) / s;
      x[i] = (i % 3 == 0) ? t : std::nextafter(t, (i % 3 == 1) ? INFINITY : -INFINITY);
      if (x[i] > 100.0f) x[i] = 100.0f;
      if (x[i] < -100.0f) x[i] = -100.0f;
    }
    x[0] = 100.0f;
    check_quantize("near halves", x, tables);
  }

  // Any NaN or infinity anywhere rejects the row.
  const uint32_t nonfinite[] = {0x7fc00000u, 0xffc00000u, 0x7f800001u, 0x7fbfffffu, 0x7f800000u, 0xff800000u};
  for (uint32_t bits : nonfinite) {
    for (int64_t kk : {int64_t{128}, int64_t{2560}}) {
      for (int64_t pos : {int64_t{0}, kk / 2 + 3, kk - 1}) {
        std::vector<float> x(kk);
        for (float& v : x) v = normal(rng);
        x[pos] = float_of(bits);
        char name[80];
        std::snprintf(name, sizeof name, "rejects 0x%08x at %" PRId64 " of %" PRId64, bits, pos, kk);
        for (const k::KernelTable* t : tables) {
          const QuantResult got = quantize(*t, x);
          record(!got.ok, std::string(t->isa) + " quantize " + name);
        }
      }
    }
  }
}

// ------------------------------------------------------------------------------------------
// matvec_f16 cases
// ------------------------------------------------------------------------------------------

struct F16Case {
  int64_t cols, n_x, rows, r0, r1;
  bool special;  // halves drawn from subnormals, zeros, the largest finite values and normals
};

std::string describe(const F16Case& c) {
  char buf[160];
  std::snprintf(buf, sizeof buf, "cols=%" PRId64 " n_x=%" PRId64 " rows=%" PRId64 " range=[%" PRId64 ", %" PRId64
                ")%s", c.cols, c.n_x, c.rows, c.r0, c.r1, c.special ? " special" : "");
  return buf;
}

uint16_t random_half(std::mt19937_64& rng, bool special) {
  if (!special) {
    // Any finite half: sign, exponent 0..30 (0 = subnormal or zero), any mantissa.
    const uint16_t exp = static_cast<uint16_t>(rng() % 31), mant = static_cast<uint16_t>(rng() % 1024);
    return static_cast<uint16_t>(((rng() & 1) << 15) | (exp << 10) | mant);
  }
  static const uint16_t kSpecials[] = {0x0000, 0x8000, 0x0001, 0x8001, 0x03ff, 0x83ff, 0x0400,
                                       0x7bff, 0xfbff, 0x3c00, 0xbc00, 0x3555};
  constexpr uint64_t kCount = sizeof kSpecials / sizeof kSpecials[0];
  const uint64_t pick = rng() % (2 * kCount);
  return pick < kCount ? kSpecials[pick] : static_cast<uint16_t>(rng() & 0x7bff);  // or a random finite one
}

// Runs one case through scalar (one call over [r0, r1)) and each table (two calls splitting the
// range), with ldy = rows + 5 so every value outside the range and the padding keep a sentinel.
void run_f16_case(const F16Case& c, const std::vector<const k::KernelTable*>& tables, std::mt19937_64& rng) {
  std::vector<uint16_t> w(c.rows * c.cols);
  for (uint16_t& h : w) h = random_half(rng, c.special);
  std::vector<float> x(c.n_x * c.cols);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  // Special cases give x row t a magnitude class: tiny (subnormal x, products and sums), huge
  // (overflow to infinity, inf - inf = NaN), and wide (2^-20 .. 2^20 within the row).
  std::uniform_real_distribution<float> tiny(-149.0f, -138.0f), huge(96.0f, 112.0f), wide(-20.0f, 20.0f);
  for (int64_t t = 0; t < c.n_x; ++t) {
    for (int64_t i = 0; i < c.cols; ++i) {
      const float e = t % 3 == 0 ? tiny(rng) : t % 3 == 1 ? huge(rng) : wide(rng);
      x[t * c.cols + i] = c.special ? normal(rng) * std::exp2(e) : normal(rng);
    }
  }
  const int64_t ldy = c.rows + 5;
  std::vector<float> expect(c.n_x * ldy, float_of(kSentinel));
  k::kScalarTable.matvec_f16(w.data(), c.cols, x.data(), c.n_x, c.r0, c.r1, expect.data(), ldy);
  for (const k::KernelTable* t : tables) {
    std::vector<float> got(c.n_x * ldy, float_of(kSentinel));
    const int64_t mid = c.r0 + (c.r1 - c.r0) / 2;
    t->matvec_f16(w.data(), c.cols, x.data(), c.n_x, c.r0, mid, got.data(), ldy);
    t->matvec_f16(w.data(), c.cols, x.data(), c.n_x, mid, c.r1, got.data(), ldy);
    int bad = 0;
    for (int64_t i = 0; i < c.n_x * ldy; ++i) {
      // Overflow can make inf - inf: any NaN then matches any NaN (the sentinel is a NaN too, so
      // compare bits when either side holds it).
      const bool both_nan = std::isnan(got[i]) && std::isnan(expect[i]) && bits_of(got[i]) != kSentinel &&
                            bits_of(expect[i]) != kSentinel;
      if (bits_of(got[i]) != bits_of(expect[i]) && !both_nan) {
        if (bad < kMaxReported) {
          std::printf("  %s matvec_f16 %s: y[%" PRId64 "][%" PRId64 "] = %.9g (0x%08x), scalar %.9g (0x%08x)\n",
                      t->isa, describe(c).c_str(), i / ldy, i % ldy, got[i], bits_of(got[i]), expect[i],
                      bits_of(expect[i]));
        }
        ++bad;
      }
    }
    record(bad == 0, std::string(t->isa) + " matvec_f16 " + describe(c) + " (" + std::to_string(bad) +
                         " values differ)");
  }
}

// axpy_rows_f16 (attention's weighted sums of f16 value rows, one per query head of a group):
// element-wise fused, row after row, so every table must equal scalar exactly, NaNs included.
// m = 37 and 70 cross the kernels' blocks of 32 rows.
void run_axpy_cases(const std::vector<const k::KernelTable*>& tables, std::mt19937_64& rng) {
  std::normal_distribution<float> normal(0.0f, 1.0f);
  for (int64_t n : {int64_t{16}, int64_t{48}, int64_t{64}, int64_t{128}, int64_t{272}}) {
    for (int64_t m : {int64_t{1}, int64_t{3}, int64_t{37}, int64_t{70}}) {
      for (int64_t n_a : {int64_t{1}, int64_t{3}}) {
        for (bool special : {false, true}) {
          const int64_t ldx = n + 16, lda = m + 5, ldy = n + 32;  // strides longer than the rows
          std::vector<uint16_t> x(m * ldx);
          for (uint16_t& h : x) h = random_half(rng, special);
          std::vector<float> y0(n_a * ldy), a(n_a * lda);
          for (float& v : y0) v = normal(rng);
          for (float& v : a) v = special ? normal(rng) * 1e30f : normal(rng);
          std::vector<float> expect = y0;
          k::kScalarTable.axpy_rows_f16(x.data(), ldx, a.data(), lda, n_a, m, expect.data(), ldy, n);
          for (const k::KernelTable* t : tables) {
            std::vector<float> got = y0;
            t->axpy_rows_f16(x.data(), ldx, a.data(), lda, n_a, m, got.data(), ldy, n);
            int bad = 0;
            for (size_t i = 0; i < got.size(); ++i)
              if (bits_of(got[i]) != bits_of(expect[i]) && !(std::isnan(got[i]) && std::isnan(expect[i]))) ++bad;
            record(bad == 0, std::string(t->isa) + " axpy_rows_f16 n=" + std::to_string(n) + " m=" +
                                 std::to_string(m) + " n_a=" + std::to_string(n_a) + (special ? " special" : "") +
                                 " (" + std::to_string(bad) + " values differ)");
          }
        }
      }
    }
  }
}

// f32_to_f16 (the f16 KV cache's stores): FCVTN must give scalar's bits for every value, ties,
// subnormals, overflow and NaN payloads included.
void run_f32_to_f16_cases(const std::vector<const k::KernelTable*>& tables, std::mt19937_64& rng) {
  std::vector<float> x;
  std::uniform_real_distribution<float> exponent(-30.0f, 18.0f);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  for (int i = 0; i < 4096; ++i) x.push_back(normal(rng) * std::exp2(exponent(rng)));
  for (int i = 0; i < 1024; ++i) {  // exactly half way between two adjacent halves
    const uint16_t h = static_cast<uint16_t>(rng() % 0x7bff);
    const float lo = tritlm::fp16_to_f32(h), hi = tritlm::fp16_to_f32(static_cast<uint16_t>(h + 1));
    x.push_back((lo + hi) / 2);
    x.push_back(-(lo + hi) / 2);
  }
  for (float v : {65504.0f, 65519.996f, 65520.0f, 1e10f, INFINITY, -INFINITY, 0.0f, -0.0f, 0x1p-24f, 0x1p-25f,
                  0x1.8p-25f, 1e-45f, -1e-45f})
    x.push_back(v);
  for (uint32_t bits : {0x7fc00000u, 0xffc00000u, 0x7f800001u, 0x7fbfffffu, 0x7fc12345u, 0xffffffffu}) {
    float v;
    std::memcpy(&v, &bits, sizeof v);
    x.push_back(v);
  }
  while (x.size() % 16 != 0) x.push_back(1.0f);
  const int64_t n = static_cast<int64_t>(x.size());
  std::vector<uint16_t> expect(n);
  k::kScalarTable.f32_to_f16(x.data(), expect.data(), n);
  for (const k::KernelTable* t : tables) {
    std::vector<uint16_t> got(n);
    t->f32_to_f16(x.data(), got.data(), n);
    int bad = 0;
    for (int64_t i = 0; i < n; ++i) bad += got[i] != expect[i];
    record(bad == 0, std::string(t->isa) + " f32_to_f16 (" + std::to_string(bad) + " of " + std::to_string(n) +
                         " values differ)");
  }
}

// matvec_q8 (the 8-bit head): exact int32 dots, then scalar's multiply and division.
void run_q8_cases(const std::vector<const k::KernelTable*>& tables, std::mt19937_64& rng) {
  std::uniform_real_distribution<float> scale(1e-4f, 2.0f);
  for (int64_t cols : {int64_t{32}, int64_t{128}, int64_t{2560}}) {
    for (int64_t n_x : {int64_t{1}, int64_t{3}}) {
      const int64_t rows = 37;
      std::vector<int8_t> w(rows * cols), q(n_x * cols);
      for (int8_t& v : w) v = static_cast<int8_t>(rng() % 256);  // -128 included
      for (int8_t& v : q) v = static_cast<int8_t>(rng() % 256);
      std::vector<float> ws(rows), s(n_x);
      for (float& v : ws) v = scale(rng);
      for (float& v : s) v = scale(rng);
      std::vector<float> expect(n_x * rows);
      k::kScalarTable.matvec_q8(w.data(), ws.data(), cols, q.data(), s.data(), n_x, 0, rows, expect.data(), rows);
      for (const k::KernelTable* t : tables) {
        std::vector<float> got(n_x * rows);
        t->matvec_q8(w.data(), ws.data(), cols, q.data(), s.data(), n_x, 0, 20, got.data(), rows);
        t->matvec_q8(w.data(), ws.data(), cols, q.data(), s.data(), n_x, 20, rows, got.data(), rows);
        int bad = 0;
        for (size_t i = 0; i < got.size(); ++i) bad += bits_of(got[i]) != bits_of(expect[i]);
        record(bad == 0, std::string(t->isa) + " matvec_q8 cols=" + std::to_string(cols) + " n_x=" +
                             std::to_string(n_x) + " (" + std::to_string(bad) + " values differ)");
      }
    }
  }
}

void run_f16_cases(const std::vector<const k::KernelTable*>& tables, std::mt19937_64& rng) {
  // A check of the reference itself: 16 columns of 1.0 against x = 0..15 sum to 120 exactly.
  {
    std::vector<uint16_t> w(16, 0x3c00);
    std::vector<float> x(16);
    for (int i = 0; i < 16; ++i) x[i] = static_cast<float>(i);
    float y = 0.0f;
    k::kScalarTable.matvec_f16(w.data(), 16, x.data(), 1, 0, 1, &y, 1);
    record(y == 120.0f, "scalar matvec_f16 analytic sum");
  }
  int cases = 0;
  for (int64_t cols : {int64_t{16}, int64_t{32}, int64_t{48}, int64_t{272}, int64_t{2560}}) {
    for (int64_t n_x = 1; n_x <= 5; ++n_x) {
      // Row ranges: all rows, and an odd range starting inside, to hit every row tile and tail.
      for (const auto& [r0, r1] : {std::pair<int64_t, int64_t>{0, 13}, {3, 10}, {5, 6}}) {
        run_f16_case({cols, n_x, 13, r0, r1, false}, tables, rng);
        ++cases;
      }
    }
    run_f16_case({cols, 3, 11, 0, 11, true}, tables, rng);
    run_f16_case({cols, 5, 9, 1, 9, true}, tables, rng);
    cases += 2;
  }
  std::printf("%d matvec_f16 shapes\n", cases);
}

bool cpu_has_dotprod() { return (getauxval(AT_HWCAP) & HWCAP_ASIMDDP) != 0; }

}  // namespace

int main() {
  std::vector<const k::KernelTable*> tables;
  const k::KernelTable* neon = k::neon_table();
  if (neon == nullptr || std::strcmp(neon->isa, "neon") != 0) {
    std::printf("FAIL neon_table() is missing or misnamed\n");
    return 1;
  }
  tables.push_back(neon);
  std::printf("testing table: neon\n");
  if (cpu_has_dotprod()) {
    // Only now is it safe to call into the object built with -march=armv8.2-a+dotprod.
    const k::KernelTable* dp = k::neon_dotprod_table();
    if (dp == nullptr || std::strcmp(dp->isa, "neon-dotprod") != 0) {
      std::printf("FAIL neon_dotprod_table() is missing or misnamed\n");
      return 1;
    }
    tables.push_back(dp);
    std::printf("testing table: neon-dotprod\n");
  } else {
    std::printf("skipping table: neon-dotprod (CPU lacks dotprod, HWCAP_ASIMDDP not set)\n");
  }
  std::fflush(stdout);

  // The NEON binary matmul reads lookup tables: packed.cpp builds them only if both are set.
  for (const k::KernelTable* t : tables)
    record(t->lut_bytes != nullptr && t->build_lut != nullptr, std::string(t->isa) + " has lut_bytes and build_lut");

  std::mt19937_64 rng(kSeed);
  run_quantize_cases(tables, rng);
  const std::vector<MatmulCase> cases = matmul_cases();
  for (const MatmulCase& c : cases) run_matmul_case(c, tables, rng);
  run_f16_cases(tables, rng);
  run_axpy_cases(tables, rng);
  run_f32_to_f16_cases(tables, rng);
  run_q8_cases(tables, rng);

  std::printf("%d matmul shapes, %zu tables\n", static_cast<int>(cases.size()), tables.size());
  std::printf("%d passed, %d failed\n", g_passed, g_failed);
  return g_failed == 0 ? 0 : 1;
}
