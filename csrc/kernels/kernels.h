// The kernel layer's contract: run-time weight layouts, the views kernels read, and the
// per-ISA function table. Every ISA file (scalar.cpp, avx2.cpp, neon.cpp) implements exactly
// the functions of one KernelTable; scalar.cpp is the executable specification that every
// SIMD table must reproduce bit for bit (tests/test_kernels_exact.py, tests/native/).
#pragma once

#include <cstddef>
#include <cstdint>

#include "f16.h"

namespace tritlm::kernels {

// Weights per block: every run-time layout is a whole number of 128-weight blocks per row, so
// the input size K of a matrix must be a multiple of 128.
constexpr int64_t kBlock = 128;
// Largest K a kernel accepts: |code * q| <= 256 = 2^8, so no int32 sum over a row can overflow.
constexpr int64_t kMaxK = int64_t{1} << 22;

enum class Format : int {
  // 2 bits per weight. Row n is K/4 bytes; block b of the row is 32 bytes at offset 32*b, and
  // byte j of a block holds weights j, j+32, j+64, j+96 in bits 7:6, 5:4, 3:2, 1:0 as
  // code = w + 1 (0 -> -1, 1 -> 0, 2 -> +1; code 3 never occurs). This is bitnet.cpp's I2_S
  // block order, chosen because one shift and one mask yield 32 consecutive codes per vector.
  kTernary = 0,
  // 1 bit per weight, in tiles of 32 rows (n is padded to a multiple of 32 with zero bytes and
  // zero scales; no kernel writes a padding row's output). Tile t (rows 32t..32t+31) is K*4
  // bytes at offset t*K*4, and within it the 32 bytes at offset 32*j hold weights 8j..8j+7:
  // byte p is row 32t+p, bit i weight 8j+i, as 1 -> +1, 0 -> -1. Chosen for lookup-table
  // kernels: one byte-wide shuffle looks up a 4-weight nibble of 32 (AVX2) or 16 (NEON) rows at
  // once, and one word-wide permute (AVX-512) a nibble of 16 row pairs.
  kBinary = 1,
};
constexpr int kFormatCount = 2;

// Rows of a binary tile.
constexpr int64_t kTileRows = 32;

// Rows the layout stores: n, rounded up to whole tiles for the binary format.
constexpr int64_t padded_rows(Format f, int64_t n) {
  return f == Format::kTernary ? n : (n + kTileRows - 1) / kTileRows * kTileRows;
}

// Packed bytes of a whole n x k matrix in a format.
constexpr int64_t code_bytes(Format f, int64_t n, int64_t k) {
  return f == Format::kTernary ? n * (k / 4) : padded_rows(f, n) * (k / 8);
}

// Byte offset of row r's weights 8j..8j+7 (binary) in a matrix of input size k.
constexpr int64_t binary_byte(int64_t k, int64_t r, int64_t j) {
  return r / kTileRows * kTileRows * (k / 8) + j * kTileRows + r % kTileRows;
}

// Weight (r, i) of a packed matrix, decoded from the format's layout: the definition the
// packers and every kernel agree with.
inline int weight_at(Format f, const uint8_t* codes, int64_t k, int64_t r, int64_t i) {
  if (f == Format::kTernary) {
    const uint8_t* row = codes + r * (k / 4);
    const int64_t block = i / kBlock, j = i % kBlock;
    return ((row[block * 32 + j % 32] >> (6 - 2 * (j / 32))) & 3) - 1;
  }
  return ((codes[binary_byte(k, r, i / 8)] >> (i % 8)) & 1) ? 1 : -1;
}

// Index of row r's scale for group g among a matrix's scales: row-major [n, groups] for the
// ternary format, [tile][group][32] for the binary one (so a tile's 32 scales of a group are
// one contiguous vector, a 64-byte line, for the lookup-table kernels' epilogues).
constexpr int64_t scale_index(Format f, int64_t groups, int64_t r, int64_t g) {
  return f == Format::kTernary ? r * groups + g : (r / kTileRows * groups + g) * kTileRows + r % kTileRows;
}

// A packed weight matrix W[n, k], k / (group_blocks * 128) scale groups a row: the weights of
// row r in group g are multiplied by the scale at scale_index(format, groups, r, g). A
// per-tensor scale is stored as one group per row (group_blocks = k / 128) holding the same
// value in every row. The ternary format's scales are f32 (`scales`). The binary format's are
// IEEE binary16 (`half_scales`), as GGUF Q1_0 stores them: a 128-weight block is then 18 bytes,
// as in the file, and decode, which streams every byte once, reads 10% less than with f32.
struct WeightView {
  Format format;
  const uint8_t* codes;
  const float* scales;          // ternary only
  const uint16_t* half_scales;  // binary only
  int64_t n;
  int64_t k;
  int64_t group_blocks;
  int64_t groups() const { return k / (group_blocks * kBlock); }
  // Row r's scale of group g, widened to f32 (exactly) from a binary matrix's halves.
  float scale(int64_t r, int64_t g) const {
    const int64_t i = scale_index(format, groups(), r, g);
    return format == Format::kTernary ? scales[i] : fp16_to_f32(half_scales[i]);
  }
};

// Activations quantized per row: q[b, k] int8, scale s[b] (x ~= q / s), block_sums[b, k/128]
// the sum of q over each 128-element block (the offset correction of the 0/1/2 and 0/1 codes).
// lut: for tables with a build_lut, the binary matmul's lookup tables of these rows, row b at
// lut + b * lut_bytes(k) (the caller builds them once for all the matmuls that share the
// activations); null otherwise.
struct ActView {
  const int8_t* q;
  const float* s;
  const int32_t* block_sums;
  int64_t rows;
  int64_t k;
  const uint8_t* lut = nullptr;
};

// Quantize one row of k floats (k a multiple of 128):
//   amax = max|x|; s = 127 / max(amax, 1e-5); q = clamp(round_half_even(x * s), -128, 127)
// all in f32. Returns false, writing nothing useful, if x holds a NaN or an infinity.
using QuantizeRowFn = bool (*)(const float* x, int64_t k, int8_t* q, float* s, int32_t* block_sums);

// y[b * ldy + r] for every activation row b and weight rows r in [r0, r1):
//   acc = 0.0f; for each group g: acc = acc + float(isum_g) * scale[r, g]   (a multiply then an add,
//   never fused); y = acc / s[b], where isum_g is the exact int32 sum of W[r, k] * q[b, k] over g.
// For the binary format, r0 is a multiple of kTileRows and r1 one or n. `continues`: the calling
// thread's previous call ended at row r0 of the same matrix, so a kernel that prefetches ahead of
// its reads has already asked for these rows' first bytes (the result never depends on it).
using MatmulFn = void (*)(const WeightView& w, const ActView& a, int64_t r0, int64_t r1, float* y,
                          int64_t ldy, bool continues);

// The binary matmul's lookup tables of one activation row (contents private to the ISA): bytes
// a row needs for input size k, and the builder from its int8 activations.
using LutBytesFn = int64_t (*)(int64_t k);
using BuildLutFn = void (*)(const int8_t* q, int64_t k, uint8_t* lut);

// y[t * ldy + r] = dot(w row r, x row t) for weight rows r in [r0, r1) and x rows t < n_x, with
// w an IEEE binary16 matrix and both row strides `cols` (a multiple of 16): the output head.
// The order is fixed so that 8-lane (AVX2) and 4-lane (NEON) FMA accumulators reproduce it:
//   acc[0..15] = 0; for i < cols: acc[i % 16] = fma(f32(w[r, i]), x[t, i], acc[i % 16]) (fused);
//   for step in 8, 4, 2, 1: acc[j] = acc[j] + acc[j + step] for j < step; the result is acc[0].
using MatvecF16Fn = void (*)(const uint16_t* w, int64_t cols, const float* x, int64_t n_x, int64_t r0, int64_t r1,
                             float* y, int64_t ldy);

// y[j * ldy + i] = fma(a[j * lda + p], f32(x[p * ldx + i]), y[j * ldy + i]) for p = 0, 1, .., m - 1
// in turn, every j < n_a and i < n (fused, element by element; n a multiple of 16): attention's
// weighted sums of m rows of an f16 value cache, one per query head of a group. One call for the
// group lets a kernel read each value row from memory once.
using AxpyRowsF16Fn = void (*)(const uint16_t* x, int64_t ldx, const float* a, int64_t lda, int64_t n_a, int64_t m,
                               float* y, int64_t ldy, int64_t n);

// h[i] = the IEEE binary16 bits of x[i] for i < n (n a multiple of 16): f32_to_fp16 of f16.h, the
// nearest half with ties to even, overflow to infinity, and a NaN quieted with its sign and its
// payload's top 9 bits, as the F16C and NEON conversions do: the f16 KV cache's stores.
using F32ToF16Fn = void (*)(const float* x, uint16_t* h, int64_t n);

// The 8-bit output head: y[t * ldy + r] = float(isum) * w_scale[r] / s[t], isum the exact int32
// dot product of int8 weight row r and int8 activation row t (rows of `cols`, a multiple of 32),
// for weight rows r in [r0, r1) and activation rows t < n_x. A multiply then a division, as
// the ternary epilogue.
using MatvecQ8Fn = void (*)(const int8_t* w, const float* w_scale, int64_t cols, const int8_t* q, const float* s,
                            int64_t n_x, int64_t r0, int64_t r1, float* y, int64_t ldy);

struct KernelTable {
  const char* isa;
  QuantizeRowFn quantize_row;
  MatmulFn matmul[kFormatCount];  // indexed by Format
  MatvecF16Fn matvec_f16;
  AxpyRowsF16Fn axpy_rows_f16;
  F32ToF16Fn f32_to_f16;
  MatvecQ8Fn matvec_q8;
  LutBytesFn lut_bytes;  // null if the binary matmul reads no lookup tables
  BuildLutFn build_lut;
};

// Each ISA file defines its table; the ones a build or a CPU lacks are null (dispatch.cpp).
extern const KernelTable kScalarTable;
const KernelTable* avx2_table();          // null unless built for x86-64
const KernelTable* avx512vnni_table();    // null unless built for x86-64
const KernelTable* neon_table();          // null unless built for aarch64
const KernelTable* neon_dotprod_table();  // null unless built for aarch64

}  // namespace tritlm::kernels
