// ARM Advanced SIMD (NEON) kernels for aarch64, bit-for-bit equal to scalar.cpp.
//
// CMake compiles this file twice on aarch64:
//   * plain (baseline armv8-a): defines neon_table(), isa "neon". Ternary products are widened
//     with SMLAL into int16 lanes and folded into int32 with SADALP before an int16 can overflow.
//   * with -march=armv8.2-a+dotprod -DTRITLM_NEON_DOTPROD=1: defines neon_dotprod_table(), isa
//     "neon-dotprod", accumulating 4 ternary products per int32 lane with SDOT (vdotq_s32).
// Both share the binary kernel, which looks sums up in tables (TBL) and multiplies nothing.
// Elsewhere the file is not compiled; dispatch.cpp returns null tables instead.
//
// Why the results are exact: ternary weights are decoded to signed int8 {-1, 0, +1}, so every
// product w * q lies in [-128, 128], and binary sums are looked up and added as integers whose
// bounds are shown below; every integer sum over a group is exact whatever the summation
// order. Only the float epilogue rounds, and it repeats
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
// Ternary weights: one 128-weight block into 8 vectors of 16 signed weights
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

// y[b * ldy + r] for weight row r and activation rows b0 .. b0 + R - 1.
template <int R>
void ternary_row_times_tile(const WeightView& w, const ActView& a, int64_t r, int64_t b0, float* y, int64_t ldy) {
  constexpr int64_t kBlockBytes = 32;
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
      for (; block < chunk_end; ++block) ternary_block<R>(row + block * kBlockBytes, q, block * kBlock, sums);
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

void matmul_ternary(const WeightView& w, const ActView& a, int64_t r0, int64_t r1, float* y, int64_t ldy,
                    bool /*continues*/) {
  // Weight row outermost: its packed bytes (K/4) stay in L1 while every activation tile passes
  // over them, so each weight byte comes from memory once per call.
  for (int64_t r = r0; r < r1; ++r) {
    int64_t b = 0;
    for (; a.rows - b >= kRowTile; b += kRowTile) ternary_row_times_tile<kRowTile>(w, a, r, b, y, ldy);
    // Remaining rows (< kRowTile) in tiles of 4, 2, 1.
    if (kRowTile > 4 && a.rows - b >= 4) {
      ternary_row_times_tile<4>(w, a, r, b, y, ldy);
      b += 4;
    }
    if (a.rows - b >= 2) {
      ternary_row_times_tile<2>(w, a, r, b, y, ldy);
      b += 2;
    }
    if (a.rows - b >= 1) ternary_row_times_tile<1>(w, a, r, b, y, ldy);
  }
}

// ------------------------------------------------------------------------------------------
// Binary weights: lookup tables
// ------------------------------------------------------------------------------------------
//
// As in avx2.cpp, a 1-bit weight is never unpacked: for every quad of activations q[4u..4u+3]
// the table T_u[m] = sum of q[4u+i] over the set bits i of m (m < 16) is built once per
// activation row (build_lut), and each nibble of the layout's bytes, a quad of one row's
// weights as bits, indexes it: TBL looks up one nibble for 16 rows (a byte each) at once, so a
// 32-byte chunk of a tile (8 weights of 32 rows) is two registers, rows 0-15 and 16-31, and
// four lookups a register. The exact product is then sum(W * q) = 2 * sum_u T_u[nibble] - sum(q).
//
// TBL returns bytes and T needs 10 bits, so each table holds the biased T' = T + 512, in
// [0, 1020] (four q >= -128 give T >= -512, four q <= 127 give T <= 508), split as
// lo = T' & 127 and hi = T' >> 7, in [0, 7]. That split keeps the sums in bytes for longest:
// a chunk's two lo lookups (low and high nibble) add up to at most 254, which one widening add
// per 8 rows takes into uint16; a block's 32 hi lookups add up to at most 224, in bytes all
// along. Per chunk and activation row that is 8 TBL, 6 byte adds and 4 widening adds (UADDW),
// where joining low and high bytes into int16 first (ZIP1/ZIP2, as avx2.cpp unpacks) costs
// 8 TBL, 8 ZIP and 8 int16 adds. A block ends with one UMLAL per 8 rows, lo + 128 * hi, which is
// the block's biased sum (at most 32 * 1020 = 32640) in uint16, widened into uint32 per scale
// group; the bias, 2 * 512 * 32 per block after doubling, is taken off with the block sums.

constexpr int64_t kQuadsPerBlock = kBlock / 4;
constexpr int32_t kLutBias = 512;  // -min(T): four activations of -128
constexpr int64_t kLutQuadBytes = 32;  // a quad's table: 16 lo bytes, then 16 hi bytes

int64_t lut_bytes(int64_t k) { return k / 4 * kLutQuadBytes; }

// One quad's table from x, the int16 activations of two quads (this one at lanes L..L+3).
// Lane m of bit_i is 1 if bit i of m is set, so t0 holds T' of m = 0..7, and t1 = t0 + q[3]
// those of m = 8..15.
template <int L>
inline void quad_table(int16x8_t x, uint8_t* out) {
  static const int16_t kBits[3][8] = {{0, 1, 0, 1, 0, 1, 0, 1}, {0, 0, 1, 1, 0, 0, 1, 1}, {0, 0, 0, 0, 1, 1, 1, 1}};
  int16x8_t t0 = vmlaq_laneq_s16(vdupq_n_s16(kLutBias), vld1q_s16(kBits[0]), x, L);
  t0 = vmlaq_laneq_s16(t0, vld1q_s16(kBits[1]), x, L + 1);
  t0 = vmlaq_laneq_s16(t0, vld1q_s16(kBits[2]), x, L + 2);
  const int16x8_t t1 = vmlaq_laneq_s16(t0, vdupq_n_s16(1), x, L + 3);
  const uint16x8_t u0 = vreinterpretq_u16_s16(t0), u1 = vreinterpretq_u16_s16(t1);
  // The low bytes of the 16 words (UZP1 keeps the even bytes), and T' >> 7 narrowed.
  vst1q_u8(out, vandq_u8(vuzp1q_u8(vreinterpretq_u8_u16(u0), vreinterpretq_u8_u16(u1)), vdupq_n_u8(127)));
  vst1q_u8(out + 16, vshrn_high_n_u16(vshrn_n_u16(u0, 7), u1, 7));
}

void build_lut(const int8_t* q, int64_t k, uint8_t* lut) {
  for (int64_t u = 0; u < k / 4; u += 2) {  // k is a multiple of 128: quads come in pairs
    const int16x8_t x = vmovl_s8(vld1_s8(q + 4 * u));
    quad_table<0>(x, lut + kLutQuadBytes * u);
    quad_table<4>(x, lut + kLutQuadBytes * (u + 1));
  }
}

// The biased sums of one block (32 quads) for the 32 rows of a tile and BT activation rows:
// s[t][0..3] rows 0-7, 8-15, 16-23, 24-31 of activation row t. codes: the block's 512 bytes;
// luts[t]: the block's 32 tables of activation row t.
template <int BT>
inline void binary_block(const uint8_t* codes, const uint8_t* const (&luts)[BT], uint16x8_t (&s)[BT][4]) {
  const uint8x16_t low_nibble = vdupq_n_u8(0x0f);
  uint8x16_t hi[BT][2];
  uint16x8_t lo[BT][4];
#pragma GCC unroll 4
  for (int t = 0; t < BT; ++t) {
    hi[t][0] = hi[t][1] = vdupq_n_u8(0);
    lo[t][0] = lo[t][1] = lo[t][2] = lo[t][3] = vdupq_n_u16(0);
  }
  for (int64_t j = 0; j < kQuadsPerBlock / 2; ++j) {  // weights 8j..8j+7: quads 2j (low nibbles), 2j + 1
    const uint8x16x2_t c = vld1q_u8_x2(codes + kTileRows * j);
    const uint8x16_t nib[2][2] = {{vandq_u8(c.val[0], low_nibble), vshrq_n_u8(c.val[0], 4)},
                                  {vandq_u8(c.val[1], low_nibble), vshrq_n_u8(c.val[1], 4)}};
#pragma GCC unroll 4
    for (int t = 0; t < BT; ++t) {
      // lo and hi bytes of quad 2j's table, then of quad 2j + 1's.
      const uint8x16x4_t tab = vld1q_u8_x4(luts[t] + 2 * kLutQuadBytes * j);
#pragma GCC unroll 2
      for (int h = 0; h < 2; ++h) {  // rows 16h .. 16h + 15
        const uint8x16_t l = vaddq_u8(vqtbl1q_u8(tab.val[0], nib[h][0]), vqtbl1q_u8(tab.val[2], nib[h][1]));
        hi[t][h] = vaddq_u8(hi[t][h], vaddq_u8(vqtbl1q_u8(tab.val[1], nib[h][0]), vqtbl1q_u8(tab.val[3], nib[h][1])));
        lo[t][2 * h] = vaddw_u8(lo[t][2 * h], vget_low_u8(l));
        lo[t][2 * h + 1] = vaddw_high_u8(lo[t][2 * h + 1], l);
      }
    }
  }
  const uint8x16_t times128 = vdupq_n_u8(128);
#pragma GCC unroll 4
  for (int t = 0; t < BT; ++t) {
#pragma GCC unroll 2
    for (int h = 0; h < 2; ++h) {
      s[t][2 * h] = vmlal_u8(lo[t][2 * h], vget_low_u8(hi[t][h]), vget_low_u8(times128));
      s[t][2 * h + 1] = vmlal_high_u8(lo[t][2 * h + 1], hi[t][h], times128);
    }
  }
}

// One tile of 32 weight rows against BT activation rows from b0: per scale group, the blocks'
// biased sums are widened into uint32 (8 vectors of 4 rows), unbiased, corrected, converted and
// scaled, then added to each row's running sum in group order, as scalar.cpp does row by row.
template <int BT>
inline void binary_tile(const WeightView& w, const ActView& a, int64_t tile, int64_t b0, int64_t r1, float* y,
                        int64_t ldy) {
  const int64_t nblocks = w.k / kBlock, gb = w.group_blocks, groups = nblocks / gb, lut_row = lut_bytes(a.k);
  const uint8_t* codes = w.codes + tile * kTileRows * (w.k / 8);
  const uint16_t* scales = w.half_scales + tile * groups * kTileRows;
  // 2 * sum(T) = 2 * sum(T') - 2 * 512 per quad; the arithmetic is modulo 2^32 (the true isum
  // fits int32 whatever the K).
  const uint32_t bias = static_cast<uint32_t>(2 * kLutBias * kQuadsPerBlock) * static_cast<uint32_t>(gb);
  float32x4_t acc[BT][8];
#pragma GCC unroll 4
  for (int t = 0; t < BT; ++t) {
#pragma GCC unroll 8
    for (int i = 0; i < 8; ++i) acc[t][i] = vdupq_n_f32(0.0f);
  }
  for (int64_t g = 0; g < groups; ++g) {
    uint32x4_t isum[BT][8];
    uint32_t q_sum[BT];
#pragma GCC unroll 4
    for (int t = 0; t < BT; ++t) {
#pragma GCC unroll 8
      for (int i = 0; i < 8; ++i) isum[t][i] = vdupq_n_u32(0);
      q_sum[t] = 0;
    }
    for (int64_t blk = g * gb; blk < (g + 1) * gb; ++blk) {
      const uint8_t* luts[BT];
#pragma GCC unroll 4
      for (int t = 0; t < BT; ++t) {
        luts[t] = a.lut + (b0 + t) * lut_row + blk * kQuadsPerBlock * kLutQuadBytes;
        q_sum[t] += static_cast<uint32_t>(a.block_sums[(b0 + t) * nblocks + blk]);
      }
      uint16x8_t s[BT][4];
      binary_block<BT>(codes + blk * kTileRows * (kBlock / 8), luts, s);
#pragma GCC unroll 4
      for (int t = 0; t < BT; ++t) {
#pragma GCC unroll 4
        for (int i = 0; i < 4; ++i) {
          isum[t][2 * i] = vaddw_u16(isum[t][2 * i], vget_low_u16(s[t][i]));
          isum[t][2 * i + 1] = vaddw_high_u16(isum[t][2 * i + 1], s[t][i]);
        }
      }
    }
    // scalar.cpp's epilogue, four rows at a time: widen the binary16 scales (exact), multiply,
    // round, then add.
    const uint16_t* sg = scales + g * kTileRows;
    float32x4_t scale[8];
#pragma GCC unroll 8
    for (int i = 0; i < 8; ++i) scale[i] = vcvt_f32_f16(vreinterpret_f16_u16(vld1_u16(sg + 4 * i)));
#pragma GCC unroll 4
    for (int t = 0; t < BT; ++t) {
      const uint32x4_t correction = vdupq_n_u32(bias + q_sum[t]);
#pragma GCC unroll 8
      for (int i = 0; i < 8; ++i) {
        const int32x4_t v = vreinterpretq_s32_u32(vsubq_u32(vshlq_n_u32(isum[t][i], 1), correction));
        const float32x4_t term = vmulq_f32(vcvtq_f32_s32(v), scale[i]);
        acc[t][i] = vaddq_f32(acc[t][i], term);
      }
    }
  }
  const int64_t r0 = tile * kTileRows, rows = r1 - r0 < kTileRows ? r1 - r0 : kTileRows;
#pragma GCC unroll 4
  for (int t = 0; t < BT; ++t) {
    float out[kTileRows];
    const float32x4_t s = vdupq_n_f32(a.s[b0 + t]);
#pragma GCC unroll 8
    for (int i = 0; i < 8; ++i) vst1q_f32(out + 4 * i, vdivq_f32(acc[t][i], s));
    std::memcpy(y + (b0 + t) * ldy + r0, out, static_cast<size_t>(rows) * sizeof(float));
  }
}

// Weight tiles outer, activation rows inner, two at a time (the codes' loads and nibble splits
// then serve both; three would not fit the 32 vector registers): a tile's codes stay in L1
// while the activation rows' tables stream from L2.
void matmul_binary(const WeightView& w, const ActView& a, int64_t r0, int64_t r1, float* y, int64_t ldy,
                   bool /*continues*/) {
  for (int64_t tile = r0 / kTileRows; tile * kTileRows < r1; ++tile) {
    int64_t b = 0;
    for (; b + 2 <= a.rows; b += 2) binary_tile<2>(w, a, tile, b, r1, y, ldy);
    if (b < a.rows) binary_tile<1>(w, a, tile, b, r1, y, ldy);
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

// V vectors of y (4 V floats from y) stay in registers over all m rows: V independent FMA chains.
template <int V>
inline void axpy_rows_chunk(const uint16_t* x, int64_t ldx, const float* a, int64_t m, float* y) {
  float32x4_t acc[V];
  for (int v = 0; v < V; ++v) acc[v] = vld1q_f32(y + 4 * v);
  for (int64_t p = 0; p < m; ++p) {
    const float32x4_t ap = vdupq_n_f32(a[p]);
    for (int v = 0; v < V; ++v) {
      const float32x4_t h = vcvt_f32_f16(vreinterpret_f16_u16(vld1_u16(x + p * ldx + 4 * v)));
      acc[v] = vfmaq_f32(acc[v], ap, h);
    }
  }
  for (int v = 0; v < V; ++v) vst1q_f32(y + 4 * v, acc[v]);
}

// As avx2.cpp: a block of value rows at a time, each read from memory once for every output row.
constexpr int64_t kAxpyBlockRows = 32;

void axpy_rows_f16(const uint16_t* x, int64_t ldx, const float* a, int64_t lda, int64_t n_a, int64_t m, float* y,
                   int64_t ldy, int64_t n) {
  for (int64_t p0 = 0; p0 < m; p0 += kAxpyBlockRows) {
    const int64_t rows = m - p0 < kAxpyBlockRows ? m - p0 : kAxpyBlockRows;  // no std::min: see the top
    for (int64_t j = 0; j < n_a; ++j) {
      float* yj = y + j * ldy;
      int64_t i = 0;
      for (; i + 32 <= n; i += 32) axpy_rows_chunk<8>(x + p0 * ldx + i, ldx, a + j * lda + p0, rows, yj + i);
      for (; i < n; i += 16) axpy_rows_chunk<4>(x + p0 * ldx + i, ldx, a + j * lda + p0, rows, yj + i);
    }
  }
}

// FCVTN rounds by FPCR (to nearest even unless a program changed it) and, with FPCR.DN clear as
// Linux and macOS leave it, quiets a NaN keeping its payload's top bits.
void f32_to_f16(const float* x, uint16_t* h, int64_t n) {
  for (int64_t i = 0; i < n; i += 4) vst1_u16(h + i, vreinterpret_u16_f16(vcvt_f16_f32(vld1q_f32(x + i))));
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
    {matmul_ternary, matmul_binary},
    matvec_f16,
    axpy_rows_f16,
    f32_to_f16,
    matvec_q8,
    lut_bytes,
    build_lut,
};

}  // namespace

const KernelTable* TRITLM_NEON_TABLE_ACCESSOR() { return &kNeonTable; }

}  // namespace tritlm::kernels
