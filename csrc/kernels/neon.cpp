// ARM Advanced SIMD (NEON) kernels for aarch64, bit-for-bit equal to scalar.cpp.
//
// CMake compiles this file twice on aarch64:
//   * plain (baseline armv8-a): defines neon_table(), isa "neon". Products are widened with
//     SMLAL into int16 lanes and folded into int32 with SADALP before an int16 can overflow.
//   * with -march=armv8.2-a+dotprod -DTRITLM_NEON_DOTPROD=1: defines neon_dotprod_table(), isa
//     "neon-dotprod", accumulating 4 products per int32 lane with SDOT (vdotq_s32).
// Elsewhere the file is not compiled; dispatch.cpp returns null tables instead.
//
// Why the results are exact: weights are decoded to signed int8 {-1, 0, +1} (ternary) or
// {-1, +1} (binary), so every product w * q lies in [-128, 128] and every integer sum over a
// group is exact whatever the summation order. Only the float epilogue rounds, and it repeats
// scalar.cpp's operations in scalar.cpp's order (one multiply, then one add, per group; then a
// division). The build passes -ffp-contract=off so the compiler never fuses them into an FMA.
//
// Both copies are linked into one binary, so everything but the table accessor lives in an
// anonymous namespace, and this file deliberately calls no inline function of a header
// (kernels.h helpers, <algorithm>): such functions are emitted as COMDAT copies in both objects,
// and the linker could keep the armv8.2-a copy for callers running on a baseline CPU. The
// table itself is constant-initialized, so the dotprod object runs no code before dispatch has
// checked the CPU.
#include <arm_neon.h>

#include <cstdint>
#include <cstring>

#include "kernels.h"

#if !defined(__aarch64__)
#error "neon.cpp is built for aarch64 only (dispatch.cpp provides null tables elsewhere)"
#endif

#if defined(TRITLM_NEON_DOTPROD) && TRITLM_NEON_DOTPROD
#if !defined(__ARM_FEATURE_DOTPROD)
#error "TRITLM_NEON_DOTPROD=1 needs -march=armv8.2-a+dotprod"
#endif
#define TRITLM_NEON_USE_DOTPROD 1
#define TRITLM_NEON_TABLE_ACCESSOR neon_dotprod_table
#define TRITLM_NEON_ISA_NAME "neon-dotprod"
#else
#define TRITLM_NEON_USE_DOTPROD 0
#define TRITLM_NEON_TABLE_ACCESSOR neon_table
#define TRITLM_NEON_ISA_NAME "neon"
#endif

namespace tritlm::kernels {
namespace {

// ------------------------------------------------------------------------------------------
// quantize_row
// ------------------------------------------------------------------------------------------

// max|x| over the row; false if any value is NaN or infinite (exponent bits all ones, the same
// test as scalar.cpp's is_finite_bits). max is exact, so the lane order does not matter.
bool row_amax(const float* x, int64_t k, float* amax_out) {
  const uint32x4_t exponent = vdupq_n_u32(0x7f800000u);
  uint32x4_t nonfinite = vdupq_n_u32(0);
  float32x4_t amax0 = vdupq_n_f32(0.0f), amax1 = amax0, amax2 = amax0, amax3 = amax0;
  // k is a multiple of 128, so 16 floats per step never run past the row.
  for (int64_t i = 0; i < k; i += 16) {
    const float32x4_t x0 = vld1q_f32(x + i), x1 = vld1q_f32(x + i + 4);
    const float32x4_t x2 = vld1q_f32(x + i + 8), x3 = vld1q_f32(x + i + 12);
    const uint32x4_t e0 = vandq_u32(vreinterpretq_u32_f32(x0), exponent);
    const uint32x4_t e1 = vandq_u32(vreinterpretq_u32_f32(x1), exponent);
    const uint32x4_t e2 = vandq_u32(vreinterpretq_u32_f32(x2), exponent);
    const uint32x4_t e3 = vandq_u32(vreinterpretq_u32_f32(x3), exponent);
    nonfinite = vorrq_u32(nonfinite, vorrq_u32(vorrq_u32(vceqq_u32(e0, exponent), vceqq_u32(e1, exponent)),
                                               vorrq_u32(vceqq_u32(e2, exponent), vceqq_u32(e3, exponent))));
    amax0 = vmaxq_f32(amax0, vabsq_f32(x0));
    amax1 = vmaxq_f32(amax1, vabsq_f32(x1));
    amax2 = vmaxq_f32(amax2, vabsq_f32(x2));
    amax3 = vmaxq_f32(amax3, vabsq_f32(x3));
  }
  if (vmaxvq_u32(nonfinite) != 0) return false;
  *amax_out = vmaxvq_f32(vmaxq_f32(vmaxq_f32(amax0, amax1), vmaxq_f32(amax2, amax3)));
  return true;
}

// round_half_even(x * scale) clamped to int8, for 16 floats. FCVTNS rounds to nearest even
// like nearbyint in the default mode; x * scale is finite, and the saturating narrows
// (int32 -> int16 -> int8) clamp to [-128, 127] exactly as scalar.cpp's float clamp does.
int8x16_t quantize16(const float* x, float32x4_t scale) {
  const int32x4_t r0 = vcvtnq_s32_f32(vmulq_f32(vld1q_f32(x), scale));
  const int32x4_t r1 = vcvtnq_s32_f32(vmulq_f32(vld1q_f32(x + 4), scale));
  const int32x4_t r2 = vcvtnq_s32_f32(vmulq_f32(vld1q_f32(x + 8), scale));
  const int32x4_t r3 = vcvtnq_s32_f32(vmulq_f32(vld1q_f32(x + 12), scale));
  const int16x8_t lo = vcombine_s16(vqmovn_s32(r0), vqmovn_s32(r1));
  const int16x8_t hi = vcombine_s16(vqmovn_s32(r2), vqmovn_s32(r3));
  return vcombine_s8(vqmovn_s16(lo), vqmovn_s16(hi));
}

bool quantize_row(const float* x, int64_t k, int8_t* q, float* s, int32_t* block_sums) {
  float amax;
  if (!row_amax(x, k, &amax)) return false;
  // Written as scalar.cpp's std::max(amax, 1e-5f) expands: (a < b) ? b : a.
  const float scale = 127.0f / (amax < 1e-5f ? 1e-5f : amax);
  *s = scale;
  const float32x4_t vscale = vdupq_n_f32(scale);
  for (int64_t b = 0; b < k / kBlock; ++b) {
    // Pairwise-widening adds: each int16 lane sums 16 int8 values, |sum| <= 2048.
    int16x8_t sum = vdupq_n_s16(0);
    for (int64_t i = b * kBlock; i < (b + 1) * kBlock; i += 16) {
      const int8x16_t v = quantize16(x + i, vscale);
      vst1q_s8(q + i, v);
      sum = vpadalq_s8(sum, v);
    }
    block_sums[b] = vaddlvq_s16(sum);
  }
  return true;
}

// ------------------------------------------------------------------------------------------
// Integer accumulation for R activation rows at once
// ------------------------------------------------------------------------------------------

// Activation rows handled per pass over a weight row: decoded weights are reused for all of
// them. SDOT needs 2 accumulators per row (16 registers at 8 rows); the baseline needs 3 per row
// (two int16, one int32), so it stops at 4 rows to stay within the 32 vector registers.
#if TRITLM_NEON_USE_DOTPROD
constexpr int kRowTile = 8;
#else
constexpr int kRowTile = 4;
#endif

// Blocks accumulated before RowSums::flush(). The baseline's int16 lanes take 8 products of
// magnitude <= 128 per block (one per 16-weight vector), so 16 blocks reach at most
// 16 * 8 * 128 = 16384 < 32767. SDOT accumulates straight into int32 and ignores flush().
constexpr int64_t kFlushBlocks = 16;

#if TRITLM_NEON_USE_DOTPROD
// Two int32x4 accumulators per row, alternated by the caller, to halve the SDOT dependency
// chains when R is small.
template <int R>
struct RowSums {
  int32x4_t acc[R][2];

  RowSums() {
#pragma GCC unroll 8
    for (int i = 0; i < R; ++i) acc[i][0] = acc[i][1] = vdupq_n_s32(0);
  }
  // acc[i] += w . q[i][off .. off+16) for every row i; slot is 0 or 1.
  void add(int slot, int8x16_t w, const int8_t* const* q, int64_t off) {
#pragma GCC unroll 8
    for (int i = 0; i < R; ++i) acc[i][slot] = vdotq_s32(acc[i][slot], w, vld1q_s8(q[i] + off));
  }
  void flush() {}
  int32_t total(int i) const { return vaddvq_s32(vaddq_s32(acc[i][0], acc[i][1])); }
};
#else
// Per row: SMLAL/SMLAL2 products into two int16x8 (low and high 8 bytes of each vector), folded
// into an int32x4 by flush() every kFlushBlocks blocks and at the end of a group.
template <int R>
struct RowSums {
  int16x8_t lo[R], hi[R];
  int32x4_t acc[R];

  RowSums() {
#pragma GCC unroll 8
    for (int i = 0; i < R; ++i) {
      lo[i] = hi[i] = vdupq_n_s16(0);
      acc[i] = vdupq_n_s32(0);
    }
  }
  void add(int /*slot*/, int8x16_t w, const int8_t* const* q, int64_t off) {
#pragma GCC unroll 8
    for (int i = 0; i < R; ++i) {
      const int8x16_t a = vld1q_s8(q[i] + off);
      lo[i] = vmlal_s8(lo[i], vget_low_s8(w), vget_low_s8(a));
      hi[i] = vmlal_high_s8(hi[i], w, a);
    }
  }
  void flush() {
#pragma GCC unroll 8
    for (int i = 0; i < R; ++i) {
      acc[i] = vpadalq_s16(vpadalq_s16(acc[i], lo[i]), hi[i]);
      lo[i] = hi[i] = vdupq_n_s16(0);
    }
  }
  int32_t total(int i) const { return vaddvq_s32(acc[i]); }
};
#endif

// ------------------------------------------------------------------------------------------
// Weight decoding: one 128-weight block into 8 vectors of 16 signed weights
// ------------------------------------------------------------------------------------------

// Codes 0/1/2 -> weights -1/0/+1.
inline int8x16_t ternary_weights(uint8x16_t codes) {
  return vsubq_s8(vreinterpretq_s8_u8(codes), vdupq_n_s8(1));
}

// Ternary block: 32 bytes; byte j holds weights j, j+32, j+64, j+96 in bits 7:6, 5:4, 3:2,
// 1:0, so one shift (and a mask, except for the top pair) of bytes 0-15 / 16-31 gives the
// codes of 16 consecutive weights.
template <int R>
inline void ternary_block(const uint8_t* codes, const int8_t* const* q, int64_t off, RowSums<R>& sums) {
  const uint8x16_t b0 = vld1q_u8(codes), b1 = vld1q_u8(codes + 16);
  const uint8x16_t mask = vdupq_n_u8(3);
  sums.add(0, ternary_weights(vshrq_n_u8(b0, 6)), q, off + 0);
  sums.add(1, ternary_weights(vshrq_n_u8(b1, 6)), q, off + 16);
  sums.add(0, ternary_weights(vandq_u8(vshrq_n_u8(b0, 4), mask)), q, off + 32);
  sums.add(1, ternary_weights(vandq_u8(vshrq_n_u8(b1, 4), mask)), q, off + 48);
  sums.add(0, ternary_weights(vandq_u8(vshrq_n_u8(b0, 2), mask)), q, off + 64);
  sums.add(1, ternary_weights(vandq_u8(vshrq_n_u8(b1, 2), mask)), q, off + 80);
  sums.add(0, ternary_weights(vandq_u8(b0, mask)), q, off + 96);
  sums.add(1, ternary_weights(vandq_u8(b1, mask)), q, off + 112);
}

// Binary block: 16 bytes; bit u of byte j is weight 16u + j. CMTST selects the bit of all 16
// bytes at once and BSL turns set/clear into +1/-1. (Using 0/1 weights and the block sums would
// save the BSL, but this way the result depends on q alone, like scalar.cpp's.)
template <int R>
inline void binary_block(const uint8_t* bits, const int8_t* const* q, int64_t off, RowSums<R>& sums) {
  const uint8x16_t b = vld1q_u8(bits);
  const int8x16_t plus = vdupq_n_s8(1), minus = vdupq_n_s8(-1);
#pragma GCC unroll 8
  for (int u = 0; u < 8; ++u) {
    const uint8x16_t set = vtstq_u8(b, vdupq_n_u8(static_cast<uint8_t>(1u << u)));
    sums.add(u & 1, vbslq_s8(set, plus, minus), q, off + 16 * u);
  }
}

// ------------------------------------------------------------------------------------------
// Matmul
// ------------------------------------------------------------------------------------------

// y[b * ldy + r] for weight row r and activation rows b0 .. b0 + R - 1.
template <Format F, int R>
void row_times_tile(const WeightView& w, const ActView& a, int64_t r, int64_t b0, float* y, int64_t ldy) {
  constexpr int64_t kBlockBytes = F == Format::kTernary ? 32 : 16;
  const int64_t blocks = w.k / kBlock;
  const int64_t groups = blocks / w.group_blocks;
  const uint8_t* row = w.codes + r * blocks * kBlockBytes;
  const float* scales = w.scales + r * groups;

  const int8_t* q[R];
  float acc[R];
  for (int i = 0; i < R; ++i) {
    q[i] = a.q + (b0 + i) * a.k;
    acc[i] = 0.0f;
  }

  int64_t block = 0;
  for (int64_t g = 0; g < groups; ++g) {
    RowSums<R> sums;
    const int64_t group_end = block + w.group_blocks;
    while (block < group_end) {
      const int64_t chunk_end = group_end - block > kFlushBlocks ? block + kFlushBlocks : group_end;
      for (; block < chunk_end; ++block) {
        if constexpr (F == Format::kTernary) {
          ternary_block<R>(row + block * kBlockBytes, q, block * kBlock, sums);
        } else {
          binary_block<R>(row + block * kBlockBytes, q, block * kBlock, sums);
        }
      }
      sums.flush();
    }
    // scalar.cpp's epilogue, operation for operation: multiply, round, then add.
    for (int i = 0; i < R; ++i) {
      const float term = static_cast<float>(sums.total(i)) * scales[g];
      acc[i] = acc[i] + term;
    }
  }
  for (int i = 0; i < R; ++i) y[(b0 + i) * ldy + r] = acc[i] / a.s[b0 + i];
}

template <Format F>
void matmul(const WeightView& w, const ActView& a, int64_t r0, int64_t r1, float* y, int64_t ldy) {
  // Weight row outermost: its packed bytes (K/4 or K/8) stay in L1 while every activation
  // tile passes over them, so each weight byte comes from memory once per call.
  for (int64_t r = r0; r < r1; ++r) {
    int64_t b = 0;
    for (; a.rows - b >= kRowTile; b += kRowTile) row_times_tile<F, kRowTile>(w, a, r, b, y, ldy);
    // Remaining rows (< kRowTile) in tiles of 4, 2, 1.
    if (kRowTile > 4 && a.rows - b >= 4) {
      row_times_tile<F, 4>(w, a, r, b, y, ldy);
      b += 4;
    }
    if (a.rows - b >= 2) {
      row_times_tile<F, 2>(w, a, r, b, y, ldy);
      b += 2;
    }
    if (a.rows - b >= 1) row_times_tile<F, 1>(w, a, r, b, y, ldy);
  }
}

// ------------------------------------------------------------------------------------------
// f16 matrix-vector (the output head)
// ------------------------------------------------------------------------------------------

// scalar.cpp's 16 partial sums live in four 4-lane accumulators, a[q] holding acc[4q .. 4q+3].
// Its pairwise reduction is then: step 8 = a0 + a2 and a1 + a3, step 4 = their sum, step 2 =
// lanes {0,1} + {2,3}, step 1 = lane 0 + lane 1.
inline float reduce16(const float32x4_t (&a)[4]) {
  const float32x4_t s4 = vaddq_f32(vaddq_f32(a[0], a[2]), vaddq_f32(a[1], a[3]));
  const float32x2_t s2 = vadd_f32(vget_low_f32(s4), vget_high_f32(s4));
  return vget_lane_f32(s2, 0) + vget_lane_f32(s2, 1);
}

// R weight rows from r times T x rows from t0. Each 4 halves of a weight row are widened once
// (FCVTL, exact) and fused-multiply-added (FMLA) into every x row's four accumulators; the
// 4 * R * T independent chains hide the FMA latency. The next R rows are prefetched into L2 as
// these are read, as avx2.cpp does (there it doubles one core's bandwidth; prefetches never
// fault, so reaching past the matrix's end is harmless).
template <int R, int T>
inline void f16_tile(const uint16_t* w, int64_t cols, const float* x, int64_t r, int64_t t0, float* y, int64_t ldy) {
  float32x4_t acc[R][T][4];
#pragma GCC unroll 8
  for (int i = 0; i < R; ++i) {
#pragma GCC unroll 8
    for (int t = 0; t < T; ++t) acc[i][t][0] = acc[i][t][1] = acc[i][t][2] = acc[i][t][3] = vdupq_n_f32(0.0f);
  }
  for (int64_t k = 0; k < cols; k += 16) {
    // Halves k .. k+7 feed partial sums 0-7 (accumulators 0, 1), k+8 .. k+15 sums 8-15 (2, 3).
#pragma GCC unroll 2
    for (int half = 0; half < 2; ++half) {
      float16x8_t h[R];
#pragma GCC unroll 8
      for (int i = 0; i < R; ++i) {
        const uint16_t* p = w + (r + i) * cols + k + 8 * half;
        if (half == 0) __builtin_prefetch(p + R * cols, 0, 2);  // PRFM PLDL2KEEP
        h[i] = vreinterpretq_f16_u16(vld1q_u16(p));
      }
#pragma GCC unroll 2
      for (int q = 0; q < 2; ++q) {
        float32x4_t xv[T];
#pragma GCC unroll 8
        for (int t = 0; t < T; ++t) xv[t] = vld1q_f32(x + (t0 + t) * cols + k + 8 * half + 4 * q);
#pragma GCC unroll 8
        for (int i = 0; i < R; ++i) {
          const float32x4_t wq = q == 0 ? vcvt_f32_f16(vget_low_f16(h[i])) : vcvt_high_f32_f16(h[i]);
#pragma GCC unroll 8
          for (int t = 0; t < T; ++t) acc[i][t][2 * half + q] = vfmaq_f32(acc[i][t][2 * half + q], wq, xv[t]);
        }
      }
    }
  }
#pragma GCC unroll 8
  for (int i = 0; i < R; ++i) {
#pragma GCC unroll 8
    for (int t = 0; t < T; ++t) y[(t0 + t) * ldy + r + i] = reduce16(acc[i][t]);
  }
}

// R weight rows against every x row: the rows stay in L1 while the x rows pass in pairs, so
// each weight byte is read from memory once per call.
template <int R>
inline void f16_rows(const uint16_t* w, int64_t cols, const float* x, int64_t n_x, int64_t r, float* y, int64_t ldy) {
  int64_t t = 0;
  for (; t + 2 <= n_x; t += 2) f16_tile<R, 2>(w, cols, x, r, t, y, ldy);
  if (t < n_x) f16_tile<R, 1>(w, cols, x, r, t, y, ldy);
}

// Decode (one x row) takes weight rows four at a time: sixteen FMA chains, and four streams.
void matvec_f16(const uint16_t* w, int64_t cols, const float* x, int64_t n_x, int64_t r0, int64_t r1, float* y,
                int64_t ldy) {
  int64_t r = r0;
  if (n_x == 1)
    for (; r + 4 <= r1; r += 4) f16_tile<4, 1>(w, cols, x, r, 0, y, ldy);
  for (; r + 2 <= r1; r += 2) f16_rows<2>(w, cols, x, n_x, r, y, ldy);
  if (r < r1) f16_rows<1>(w, cols, x, n_x, r, y, ldy);
}

void axpy_f16(const uint16_t* x, float a, float* y, int64_t n) {
  const float32x4_t va = vdupq_n_f32(a);
  for (int64_t i = 0; i < n; i += 4) {
    const float32x4_t v = vcvt_f32_f16(vreinterpret_f16_u16(vld1_u16(x + i)));
    vst1q_f32(y + i, vfmaq_f32(vld1q_f32(y + i), va, v));
  }
}

// 8-bit head: the exact int32 dot product of two int8 rows (sdot where the CPU has it, else
// widening multiplies with pairwise accumulation: a product pair is at most 2 * 128 * 128, which
// the int32 lanes of sadalp hold).
inline int32_t dot_q8(const int8_t* a, const int8_t* b, int64_t n) {
  int32x4_t acc = vdupq_n_s32(0);
  for (int64_t i = 0; i < n; i += 16) {
    const int8x16_t x = vld1q_s8(a + i), y = vld1q_s8(b + i);
#if TRITLM_NEON_USE_DOTPROD
    acc = vdotq_s32(acc, x, y);
#else
    acc = vpadalq_s16(acc, vmull_s8(vget_low_s8(x), vget_low_s8(y)));
    acc = vpadalq_s16(acc, vmull_high_s8(x, y));
#endif
  }
  return vaddvq_s32(acc);
}

void matvec_q8(const int8_t* w, const float* w_scale, int64_t cols, const int8_t* q, const float* s, int64_t n_x,
               int64_t r0, int64_t r1, float* y, int64_t ldy) {
  for (int64_t t = 0; t < n_x; ++t)
    for (int64_t r = r0; r < r1; ++r) {
      const float v = static_cast<float>(dot_q8(w + r * cols, q + t * cols, cols)) * w_scale[r];
      y[t * ldy + r] = v / s[t];
    }
}

constexpr KernelTable kNeonTable = {
    TRITLM_NEON_ISA_NAME,
    quantize_row,
    {matmul<Format::kTernary>, matmul<Format::kBinary>},
    matvec_f16,
    axpy_f16,
    matvec_q8,
};

}  // namespace

const KernelTable* TRITLM_NEON_TABLE_ACCESSOR() { return &kNeonTable; }

}  // namespace tritlm::kernels
