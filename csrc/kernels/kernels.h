// The kernel layer's contract: run-time weight layouts, the views kernels read, and the
// per-ISA function table. Every ISA file (scalar.cpp, avx2.cpp, neon.cpp) implements exactly
// the functions of one KernelTable; scalar.cpp is the executable specification that every
// SIMD table must reproduce bit for bit (tests/test_kernels_exact.py, tests/native/).
#pragma once

#include <cstddef>
#include <cstdint>

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
  // 1 bit per weight. Row n is K/8 bytes; block b is 16 bytes at offset 16*b, and bit u of
  // byte j holds weight 16*u + j of the block as 1 -> +1, 0 -> -1. One shift and one mask
  // yield 16 consecutive weights per 128-bit lane (NEON) or 2x16 per 256-bit vector (AVX2).
  kBinary = 1,
};
constexpr int kFormatCount = 2;

// Packed bytes of one row in a format.
constexpr int64_t row_bytes(Format f, int64_t k) { return f == Format::kTernary ? k / 4 : k / 8; }

// Weight i of a packed row, decoded from the format's layout: the definition the packers and
// every kernel agree with.
inline int weight_at(Format f, const uint8_t* row, int64_t i) {
  const int64_t block = i / kBlock, j = i % kBlock;
  if (f == Format::kTernary) return ((row[block * 32 + j % 32] >> (6 - 2 * (j / 32))) & 3) - 1;
  return ((row[block * 16 + j % 16] >> (j / 16)) & 1) ? 1 : -1;
}

// A packed weight matrix W[n, k]. Scales are f32 [n, k / (group_blocks * 128)]: the weights of
// row r in group g are multiplied by scales[r * groups + g]. A per-tensor scale is stored as one
// group per row (group_blocks = k / 128) holding the same value in every row.
struct WeightView {
  Format format;
  const uint8_t* codes;
  const float* scales;
  int64_t n;
  int64_t k;
  int64_t group_blocks;
  int64_t groups() const { return k / (group_blocks * kBlock); }
};

// Activations quantized per row: q[b, k] int8, scale s[b] (x ~= q / s), block_sums[b, k/128]
// the sum of q over each 128-element block (the offset correction of the 0/1/2 and 0/1 codes).
struct ActView {
  const int8_t* q;
  const float* s;
  const int32_t* block_sums;
  int64_t rows;
  int64_t k;
};

// Quantize one row of k floats (k a multiple of 128):
//   amax = max|x|; s = 127 / max(amax, 1e-5); q = clamp(round_half_even(x * s), -128, 127)
// all in f32. Returns false, writing nothing useful, if x holds a NaN or an infinity.
using QuantizeRowFn = bool (*)(const float* x, int64_t k, int8_t* q, float* s, int32_t* block_sums);

// y[b * ldy + r] for every activation row b and weight rows r in [r0, r1):
//   acc = 0.0f; for each group g: acc = acc + float(isum_g) * scale[r, g]   (a multiply then an add,
//   never fused); y = acc / s[b], where isum_g is the exact int32 sum of W[r, k] * q[b, k] over g.
using MatmulFn = void (*)(const WeightView& w, const ActView& a, int64_t r0, int64_t r1, float* y,
                          int64_t ldy);

// y[t * ldy + r] = dot(w row r, x row t) for weight rows r in [r0, r1) and x rows t < n_x, with
// w an IEEE binary16 matrix and both row strides `cols` (a multiple of 16): the output head.
// The order is fixed so that 8-lane (AVX2) and 4-lane (NEON) FMA accumulators reproduce it:
//   acc[0..15] = 0; for i < cols: acc[i % 16] = fma(f32(w[r, i]), x[t, i], acc[i % 16]) (fused);
//   for step in 8, 4, 2, 1: acc[j] = acc[j] + acc[j + step] for j < step; the result is acc[0].
using MatvecF16Fn = void (*)(const uint16_t* w, int64_t cols, const float* x, int64_t n_x, int64_t r0, int64_t r1,
                             float* y, int64_t ldy);

// y[i] = fma(a, f32(x[i]), y[i]) for i < n (fused, element by element; n a multiple of 16):
// attention's weighted sum of an f16 value cache.
using AxpyF16Fn = void (*)(const uint16_t* x, float a, float* y, int64_t n);

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
  AxpyF16Fn axpy_f16;
  MatvecQ8Fn matvec_q8;
};

// Each ISA file defines its table; the ones a build or a CPU lacks are null (dispatch.cpp).
extern const KernelTable kScalarTable;
const KernelTable* avx2_table();          // null unless built for x86-64
const KernelTable* avx512vnni_table();    // null unless built for x86-64
const KernelTable* neon_table();          // null unless built for aarch64
const KernelTable* neon_dotprod_table();  // null unless built for aarch64

}  // namespace tritlm::kernels
