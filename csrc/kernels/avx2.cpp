// AVX2 kernels. Ternary weights are unpacked to unsigned codes 0/1/2 with one shift and one mask
// per 32 weights and multiplied with the int8 activations by vpmaddubsw; the codes' offset (-1 a
// weight) is removed with the activations' block sums. Binary weights are never unpacked: their
// bits index lookup tables of activation sums (section "Binary weights"). Integer sums are exact,
// so only the epilogue's float steps need to follow scalar.cpp, and they do, one operation at a
// time.
//
// CMake compiles this file twice on x86-64: as is (avx2_table, isa "avx2"), and with
// TRITLM_X86_VNNI=1 and the AVX-512 VNNI + BW + VL flags (avx512vnni_table, isa "avx512-vnni"),
// where vpdpbusd on 256-bit vectors replaces the maddubs / int16 / madd chain with one
// instruction and vpermw looks up 16-bit table entries directly.
// Everything but the table accessor is in an anonymous namespace and always inlined, so the two
// objects share no out-of-line code the linker could mix up.
#include <algorithm>
#include <cstring>
#include <immintrin.h>
#include <type_traits>

#include "kernels.h"

#define TRITLM_INLINE inline __attribute__((always_inline))
// The tile loops over activation rows must be unrolled so the accumulators live in registers.
#define TRITLM_UNROLL _Pragma("GCC unroll 8")

namespace tritlm::kernels {
namespace {


TRITLM_INLINE int32_t hsum_i32(__m256i v) {
  __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, _MM_SHUFFLE(1, 0, 3, 2)));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, _MM_SHUFFLE(2, 3, 0, 1)));
  return _mm_cvtsi128_si32(s);
}

inline float hmax_ps(__m256 v) {
  __m128 m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  m = _mm_max_ps(m, _mm_movehl_ps(m, m));
  m = _mm_max_ss(m, _mm_movehdup_ps(m));
  return _mm_cvtss_f32(m);
}

bool quantize_row(const float* x, int64_t k, int8_t* q, float* s, int32_t* block_sums) {
  const __m256 abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
  const __m256i exp_mask = _mm256_set1_epi32(0x7f800000);
  __m256 vmax = _mm256_setzero_ps();
  __m256i nonfinite = _mm256_setzero_si256();
  for (int64_t i = 0; i < k; i += 8) {
    const __m256 v = _mm256_loadu_ps(x + i);
    const __m256i e = _mm256_and_si256(_mm256_castps_si256(v), exp_mask);
    nonfinite = _mm256_or_si256(nonfinite, _mm256_cmpeq_epi32(e, exp_mask));
    vmax = _mm256_max_ps(vmax, _mm256_and_ps(v, abs_mask));
  }
  if (!_mm256_testz_si256(nonfinite, nonfinite)) return false;
  const float scale = 127.0f / std::max(hmax_ps(vmax), 1e-5f);
  *s = scale;

  const __m256 vs = _mm256_set1_ps(scale);
  const __m256i lo = _mm256_set1_epi32(-128), hi = _mm256_set1_epi32(127);
  const __m256i order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
  for (int64_t b = 0; b < k / kBlock; ++b) {
    __m256i sum = _mm256_setzero_si256();
    for (int64_t j = b * kBlock; j < (b + 1) * kBlock; j += 32) {
      __m256i v[4];
      for (int t = 0; t < 4; ++t) {
        // cvtps rounds with MXCSR's default mode, half to even, as nearbyint does.
        const __m256i r = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(x + j + 8 * t), vs));
        v[t] = _mm256_min_epi32(_mm256_max_epi32(r, lo), hi);
        sum = _mm256_add_epi32(sum, v[t]);
      }
      // packs interleave the 128-bit lanes; the permute restores element order.
      const __m256i p = _mm256_packs_epi16(_mm256_packs_epi32(v[0], v[1]), _mm256_packs_epi32(v[2], v[3]));
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(q + j), _mm256_permutevar8x32_epi32(p, order));
    }
    block_sums[b] = hsum_i32(sum);
  }
  return true;
}

// The four 32-code vectors of one 128-weight block, in weight order.
struct TernaryBlock {
  static constexpr int64_t kBytes = 32;
  __m256i c[4];
  TRITLM_INLINE explicit TernaryBlock(const uint8_t* p) {
    const __m256i raw = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
    const __m256i mask = _mm256_set1_epi8(3);
    c[0] = _mm256_and_si256(_mm256_srli_epi16(raw, 6), mask);
    c[1] = _mm256_and_si256(_mm256_srli_epi16(raw, 4), mask);
    c[2] = _mm256_and_si256(_mm256_srli_epi16(raw, 2), mask);
    c[3] = _mm256_and_si256(raw, mask);
  }
  // sum(W * q) = sum(code * q) - sum(q)
  static int32_t correct(int32_t code_dot, int32_t q_sum) { return code_dot - q_sum; }
  static __m256i correct(__m256i code_dot, __m256i q_sum) { return _mm256_sub_epi32(code_dot, q_sum); }
  static __m128i correct(__m128i code_dot, __m128i q_sum) { return _mm_sub_epi32(code_dot, q_sum); }
};

#if TRITLM_X86_VNNI
// The exact dot product of unsigned codes and int8 activations over one scale group, in int32
// lanes. vpdpbusd adds each group of four u8 x s8 products straight into int32 lanes. Its latency
// (about 4 cycles) would bound a single chain, so a block may be spread over kAcc independent
// accumulators (the 32 vector registers of AVX-512 VL hold them).
template <int kAcc>
struct Dot {
  static constexpr int64_t kFlushBlocks = kMaxK / kBlock;  // int32 lanes never need a flush
  __m256i acc[kAcc];
  TRITLM_INLINE void reset() {
    for (int i = 0; i < kAcc; ++i) acc[i] = _mm256_setzero_si256();
  }
  TRITLM_INLINE void add(const __m256i (&c)[4], const int8_t* x) {
    for (int i = 0; i < 4; ++i)
      acc[i % kAcc] = _mm256_dpbusd_epi32(acc[i % kAcc], c[i],
                                          _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x + 32 * i)));
  }
  TRITLM_INLINE void flush() {}
  // Eight int32 partial sums whose total is the dot product (after the group's last flush).
  TRITLM_INLINE __m256i lanes() const {
    __m256i sum = acc[0];
    for (int i = 1; i < kAcc; ++i) sum = _mm256_add_epi32(sum, acc[i]);
    return sum;
  }
};
// A tile of few activation rows spreads each block over four chains; eight rows have enough
// independent work with two.
template <int BT>
using TileDot = Dot<BT >= 8 ? 2 : 4>;
#else
template <int kAcc>  // one int16 and one int32 register whatever kAcc
struct Dot {
  // Blocks accumulated in int16 before widening: a block adds at most 4 * 512 = 2048 in
  // magnitude per lane (a maddubs lane is two products of |code| <= 2 and |q| <= 128), so 8
  // blocks stay within +-16384, well inside int16.
  static constexpr int64_t kFlushBlocks = 8;
  __m256i acc16, acc32;
  TRITLM_INLINE void reset() { acc16 = acc32 = _mm256_setzero_si256(); }
  TRITLM_INLINE void add(const __m256i (&c)[4], const int8_t* x) {
    const __m256i p0 = _mm256_maddubs_epi16(c[0], _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x)));
    const __m256i p1 = _mm256_maddubs_epi16(c[1], _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x + 32)));
    const __m256i p2 = _mm256_maddubs_epi16(c[2], _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x + 64)));
    const __m256i p3 = _mm256_maddubs_epi16(c[3], _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x + 96)));
    acc16 = _mm256_add_epi16(acc16, _mm256_add_epi16(_mm256_add_epi16(p0, p1), _mm256_add_epi16(p2, p3)));
  }
  TRITLM_INLINE void flush() {
    acc32 = _mm256_add_epi32(acc32, _mm256_madd_epi16(acc16, _mm256_set1_epi16(1)));
    acc16 = _mm256_setzero_si256();
  }
  TRITLM_INLINE __m256i lanes() const { return acc32; }
};
template <int BT>
using TileDot = Dot<1>;
#endif

// Lane i of the result is the total of v[i]'s eight int32 lanes (exact: integer adds).
TRITLM_INLINE __m256i lane_totals8(const __m256i (&v)[8]) {
  const __m256i a = _mm256_hadd_epi32(_mm256_hadd_epi32(v[0], v[1]), _mm256_hadd_epi32(v[2], v[3]));
  const __m256i b = _mm256_hadd_epi32(_mm256_hadd_epi32(v[4], v[5]), _mm256_hadd_epi32(v[6], v[7]));
  // a's low 128 bits hold v[0..3]'s low-half totals, its high 128 bits their high-half totals.
  return _mm256_add_epi32(_mm256_permute2x128_si256(a, b, 0x20), _mm256_permute2x128_si256(a, b, 0x31));
}

TRITLM_INLINE __m128i lane_totals4(const __m256i (&v)[4]) {
  const __m256i a = _mm256_hadd_epi32(_mm256_hadd_epi32(v[0], v[1]), _mm256_hadd_epi32(v[2], v[3]));
  return _mm_add_epi32(_mm256_castsi256_si128(a), _mm256_extracti128_si256(a, 1));
}

// The dot products of the BT rows of a tile over one group of blocks [c0, end). GB > 0 states at
// compile time that a group is GB blocks (few enough for one flush), which unrolls the loops.
template <class Block, int GB = 0, class D, int BT>
TRITLM_INLINE void group_dots(D (&dot)[BT], const uint8_t* row, const int8_t* const (&q)[BT], int64_t c0,
                              int64_t end) {
  TRITLM_UNROLL for (int t = 0; t < BT; ++t) dot[t].reset();
  if constexpr (GB > 0) {
    static_assert(GB <= D::kFlushBlocks);
    for (int64_t blk = c0; blk < c0 + GB; ++blk) {
      const Block wb(row + blk * Block::kBytes);
      TRITLM_UNROLL for (int t = 0; t < BT; ++t) dot[t].add(wb.c, q[t] + blk * kBlock);
    }
    TRITLM_UNROLL for (int t = 0; t < BT; ++t) dot[t].flush();
    return;
  }
  for (; c0 < end; c0 += D::kFlushBlocks) {
    const int64_t c1 = c0 + std::min(D::kFlushBlocks, end - c0);
    for (int64_t blk = c0; blk < c1; ++blk) {
      const Block wb(row + blk * Block::kBytes);
      TRITLM_UNROLL for (int t = 0; t < BT; ++t) dot[t].add(wb.c, q[t] + blk * kBlock);
    }
    TRITLM_UNROLL for (int t = 0; t < BT; ++t) dot[t].flush();
  }
}

// One weight row against BT activation rows starting at b0, over the whole of K, one horizontal
// sum per row and group: the path for few rows and few, long groups.
template <class Block, int BT>
TRITLM_INLINE void row_tile(const WeightView& w, const ActView& a, int64_t r, int64_t b0, float* y, int64_t ldy) {
  const int64_t nblocks = w.k / kBlock, gb = w.group_blocks, groups = w.groups();
  const uint8_t* row = w.codes + r * nblocks * Block::kBytes;
  const int8_t* q[BT];
  float acc[BT];
  TRITLM_UNROLL for (int t = 0; t < BT; ++t) {
    q[t] = a.q + (b0 + t) * a.k;
    acc[t] = 0.0f;
  }
  for (int64_t g = 0; g < groups; ++g) {
    TileDot<BT> dot[BT];
    group_dots<Block>(dot, row, q, g * gb, (g + 1) * gb);
    const float scale = w.scales[r * groups + g];
    TRITLM_UNROLL for (int t = 0; t < BT; ++t) {
      const int32_t* sums = a.block_sums + (b0 + t) * nblocks;
      int32_t q_sum = 0;
      for (int64_t blk = g * gb; blk < (g + 1) * gb; ++blk) q_sum += sums[blk];
      const int32_t isum = Block::correct(hsum_i32(dot[t].lanes()), q_sum);
      const float term = static_cast<float>(isum) * scale;
      acc[t] = acc[t] + term;
    }
  }
  TRITLM_UNROLL for (int t = 0; t < BT; ++t) y[(b0 + t) * ldy + r] = acc[t] / a.s[b0 + t];
}

// Decode (one activation row) with short groups of GB blocks (TQ2_0: two): the groups go eight
// at a time, each in its own accumulator; one transposing reduction gives their eight dot
// products in one vector, whose offsets, conversions and scales are vector operations. Only
// scalar.cpp's running sum stays scalar, group by group in order.
template <class Block, int GB>
TRITLM_INLINE void row_decode(const WeightView& w, const ActView& a, int64_t r, int64_t b, float* y, int64_t ldy) {
  static_assert(GB <= Dot<1>::kFlushBlocks);
  const int64_t nblocks = w.k / kBlock, groups = w.groups();
  const uint8_t* row = w.codes + r * nblocks * Block::kBytes;
  const int8_t* q[1] = {a.q + b * a.k};
  const int32_t* sums = a.block_sums + b * nblocks;
  const float* scales = w.scales + r * groups;
  float acc = 0.0f;
  int64_t g = 0;
  for (; g + 8 <= groups; g += 8) {
    __m256i lanes[8];
    alignas(32) int32_t q_sums[8];
    TRITLM_UNROLL for (int i = 0; i < 8; ++i) {
      Dot<2> dot[1];
      group_dots<Block, GB>(dot, row, q, (g + i) * GB, 0);
      lanes[i] = dot[0].lanes();
      q_sums[i] = 0;
      for (int j = 0; j < GB; ++j) q_sums[i] += sums[(g + i) * GB + j];
    }
    const int32_t* group_sums = GB == 1 ? sums + g : q_sums;  // one block a group: the block sums
    const __m256i isum =
        Block::correct(lane_totals8(lanes), _mm256_loadu_si256(reinterpret_cast<const __m256i*>(group_sums)));
    alignas(32) float terms[8];
    _mm256_store_ps(terms, _mm256_mul_ps(_mm256_cvtepi32_ps(isum), _mm256_loadu_ps(scales + g)));
    TRITLM_UNROLL for (int i = 0; i < 8; ++i) acc = acc + terms[i];
  }
  for (; g < groups; ++g) {
    Dot<1> dot[1];
    group_dots<Block, GB>(dot, row, q, g * GB, 0);
    int32_t q_sum = 0;
    for (int j = 0; j < GB; ++j) q_sum += sums[g * GB + j];
    const float term = static_cast<float>(Block::correct(hsum_i32(dot[0].lanes()), q_sum)) * scales[g];
    acc = acc + term;
  }
  y[b * ldy + r] = acc / a.s[b];
}

// One weight row against a tile of BT = 4 or 8 activation rows: per group, one transposing
// reduction gives the BT rows' dot products in one vector, and scalar.cpp's per-row running sums
// are the lanes of one float vector (each lane adds its terms in group order, as scalar.cpp does).
// tile_qsums[g * BT + t] is activation row b0 + t's sum of q over group g.
template <class Block, int BT, int GB>
TRITLM_INLINE void row_tile_lanes(const WeightView& w, const ActView& a, const int32_t* tile_qsums, int64_t r,
                                  int64_t b0, float* y, int64_t ldy) {
  static_assert(BT == 4 || BT == 8);
  using FV = std::conditional_t<BT == 8, __m256, __m128>;
  const int64_t nblocks = w.k / kBlock, gb = w.group_blocks, groups = w.groups();
  const uint8_t* row = w.codes + r * nblocks * Block::kBytes;
  const int8_t* q[BT];
  TRITLM_UNROLL for (int t = 0; t < BT; ++t) q[t] = a.q + (b0 + t) * a.k;
  FV acc;
  if constexpr (BT == 8) acc = _mm256_setzero_ps(); else acc = _mm_setzero_ps();
  for (int64_t g = 0; g < groups; ++g) {
    Dot<1> dot[BT];
    group_dots<Block, GB>(dot, row, q, g * gb, (g + 1) * gb);
    __m256i lanes[BT];
    TRITLM_UNROLL for (int t = 0; t < BT; ++t) lanes[t] = dot[t].lanes();
    const int32_t* qs = tile_qsums + g * BT;
    const float scale = w.scales[r * groups + g];
    if constexpr (BT == 8) {
      const __m256i isum = Block::correct(lane_totals8(lanes), _mm256_loadu_si256(reinterpret_cast<const __m256i*>(qs)));
      acc = _mm256_add_ps(acc, _mm256_mul_ps(_mm256_cvtepi32_ps(isum), _mm256_set1_ps(scale)));
    } else {
      const __m128i isum = Block::correct(lane_totals4(lanes), _mm_loadu_si128(reinterpret_cast<const __m128i*>(qs)));
      acc = _mm_add_ps(acc, _mm_mul_ps(_mm_cvtepi32_ps(isum), _mm_set1_ps(scale)));
    }
  }
  alignas(32) float out[BT];
  if constexpr (BT == 8) _mm256_store_ps(out, _mm256_div_ps(acc, _mm256_loadu_ps(a.s + b0)));
  else _mm_store_ps(out, _mm_div_ps(acc, _mm_loadu_ps(a.s + b0)));
  TRITLM_UNROLL for (int t = 0; t < BT; ++t) y[(b0 + t) * ldy + r] = out[t];
}

// Activation rows go in tiles of 8 (then 4, 2, 1), so each unpacked weight block serves up to
// eight rows; rows of W are the inner loop so a tile of activations stays in cache.
template <class Block>
void matmul(const WeightView& w, const ActView& a, int64_t r0, int64_t r1, float* y, int64_t ldy, bool /*continues*/) {
  const int64_t nblocks = w.k / kBlock, gb = w.group_blocks, groups = w.groups();
  // Each tile's per-group activation sums, transposed so that a group's are contiguous. (A plain
  // new[]: a std::vector method would be a COMDAT function built with this object's ISA flags.)
  int32_t* const qsums = a.rows >= 4 ? new int32_t[groups * 8] : nullptr;
  auto tile_qsums = [&](int64_t b0, int bt) {
    for (int64_t i = 0; i < groups * bt; ++i) qsums[i] = 0;
    for (int t = 0; t < bt; ++t)
      for (int64_t blk = 0; blk < nblocks; ++blk) qsums[blk / gb * bt + t] += a.block_sums[(b0 + t) * nblocks + blk];
    return qsums;
  };
  int64_t b0 = 0;
  for (; b0 + 8 <= a.rows; b0 += 8) {
    const int32_t* qs = tile_qsums(b0, 8);
    if (gb == 1) {
      for (int64_t r = r0; r < r1; ++r) row_tile_lanes<Block, 8, 1>(w, a, qs, r, b0, y, ldy);
    } else {
      for (int64_t r = r0; r < r1; ++r) row_tile_lanes<Block, 8, 0>(w, a, qs, r, b0, y, ldy);
    }
  }
  for (; b0 + 4 <= a.rows; b0 += 4) {
    const int32_t* qs = tile_qsums(b0, 4);
    for (int64_t r = r0; r < r1; ++r) row_tile_lanes<Block, 4, 0>(w, a, qs, r, b0, y, ldy);
  }
  for (; b0 + 2 <= a.rows; b0 += 2)
    for (int64_t r = r0; r < r1; ++r) row_tile<Block, 2>(w, a, r, b0, y, ldy);
  for (; b0 < a.rows; ++b0) {
    if (gb == 1) {
      for (int64_t r = r0; r < r1; ++r) row_decode<Block, 1>(w, a, r, b0, y, ldy);
    } else if (gb == 2) {
      for (int64_t r = r0; r < r1; ++r) row_decode<Block, 2>(w, a, r, b0, y, ldy);
    } else {  // long groups: one horizontal sum per group costs little
      for (int64_t r = r0; r < r1; ++r) row_tile<Block, 1>(w, a, r, b0, y, ldy);
    }
  }
  delete[] qsums;
}

// ------------------------------------------------------------------------------------------
// Binary weights: lookup tables
// ------------------------------------------------------------------------------------------
//
// A 1-bit weight costs as much to unpack as a 2-bit one, so the binary kernel unpacks nothing:
// for every quad of activations q[4u..4u+3] the table T_u[m] = sum of q[4u+i] over the set bits
// i of m (m < 16, |T| <= 512, int16) is built once per activation row (build_lut), and each
// nibble of the layout's bytes, a quad of one row's weights as bits, indexes it. The exact
// product is then sum(W * q) = 2 * sum_u T_u[nibble] - sum(q). A block's 32 lookups per row add
// up to at most 32 * 512 = 16384 in magnitude, so they are summed in int16 lanes and widened
// once a block.
//
// avx2: T_u is stored as its 16 low bytes then its 16 high bytes; vpshufb looks both up for the
// 32 rows of a tile (one byte a row) and vpunpck{l,h}bw joins them into int16. avx512-vnni:
// T_u is 16 int16, and vpermw (which reads only the low 4 bits of each index word) looks up the
// nibble of the even rows (low bytes) and, shifted by 8, of the odd rows (high bytes): no
// masks, no joins. Either way a block ends with the tile's 32 int16 sums in two vectors, rows
// 0-7 | 16-23 and 8-15 | 24-31, widened to four int32 vectors of rows 0-7, 8-15, 16-23, 24-31.

constexpr int64_t kQuadsPerBlock = kBlock / 4;

int64_t lut_bytes(int64_t k) { return k / 4 * 32; }

void build_lut(const int8_t* q, int64_t k, uint8_t* lut) {
  // T[m] is the dot product of m's bits (as bytes 0/1) with the quad: the bytes of bits_lo hold
  // the bits of m = 0..7 and those of bits_hi of m = 8..15, four bytes an entry, so one u8 x s8
  // dot product of each against the quad repeated gives eight entries in int32 lanes.
  auto bits_of = [](int m0) {
    alignas(32) uint8_t b[32];
    for (int m = 0; m < 8; ++m)
      for (int i = 0; i < 4; ++i) b[4 * m + i] = static_cast<uint8_t>(((m0 + m) >> i) & 1);
    return _mm256_load_si256(reinterpret_cast<const __m256i*>(b));
  };
  const __m256i bits_lo = bits_of(0), bits_hi = bits_of(8);
#if !TRITLM_X86_VNNI
  const __m256i ones = _mm256_set1_epi16(1);
  // Per 128-bit lane: the low bytes of its 8 words, then their high bytes.
  const __m256i split = _mm256_setr_epi8(0, 2, 4, 6, 8, 10, 12, 14, 1, 3, 5, 7, 9, 11, 13, 15, 0, 2, 4, 6, 8, 10, 12,
                                         14, 1, 3, 5, 7, 9, 11, 13, 15);
#endif
  for (int64_t u = 0; u < k / 4; ++u) {
    int32_t quad;
    std::memcpy(&quad, q + 4 * u, sizeof quad);
    const __m256i x = _mm256_set1_epi32(quad);
#if TRITLM_X86_VNNI
    const __m256i lo = _mm256_dpbusd_epi32(_mm256_setzero_si256(), bits_lo, x);
    const __m256i hi = _mm256_dpbusd_epi32(_mm256_setzero_si256(), bits_hi, x);
#else
    const __m256i lo = _mm256_madd_epi16(_mm256_maddubs_epi16(bits_lo, x), ones);
    const __m256i hi = _mm256_madd_epi16(_mm256_maddubs_epi16(bits_hi, x), ones);
#endif
    // packs interleaves the 128-bit lanes: [T0-3 T8-11 | T4-7 T12-15] -> T0..15 in order.
    __m256i t = _mm256_permute4x64_epi64(_mm256_packs_epi32(lo, hi), _MM_SHUFFLE(3, 1, 2, 0));
#if !TRITLM_X86_VNNI
    // [lo(T0..7) hi(T0..7) | lo(T8..15) hi(T8..15)] -> [lo(T0..15) | hi(T0..15)]
    t = _mm256_permute4x64_epi64(_mm256_shuffle_epi8(t, split), _MM_SHUFFLE(3, 1, 2, 0));
#endif
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(lut + 32 * u), t);
  }
}

// avx512-vnni: a block's 16 chunks go as 8 lines of two chunks, one prefetch a line, the line
// loop kept rolled (unrolled completely, GCC spills the loads it hoists: 2.4-2.8 cycles a row
// block L2-hot instead of 1.9-2.1). A chunk at a time, the prefetch's branch every other chunk
// and the table loads GCC then leaves unfolded cost 5-6% L2-hot (one core, 2048 x 2048 and
// 1024 x 6144: 5.1-5.3 against 4.8-5.0 cycles a chunk, alternating builds).
#define TRITLM_LINE_LOOP _Pragma("GCC unroll 1")

// How far ahead of the lookups the codes are prefetched into L2. The hardware prefetcher keeps
// few misses in flight on this stream (on Zen 4 it stops helping once the loads that hit L1 span
// more than two 4 KiB pages, as the tables do: a stream benchmark fell from 32 to 12 GB/s on one
// core), so the software prefetches are what keeps memory busy:
// one line a line of codes, 8 KiB ahead. At 4 KiB ahead (the 196 linears of Bonsai-1.7B,
// 2 threads: 12.6 -> 10.0 ms against none; every other line is as slow as none; 1-2 KiB ahead is
// worse) one core drew 20.6 GB/s streaming a 4096-column matrix from memory, at 8-16 KiB
// 22.4-23.2 (32 KiB: 22.6; into L1 with T0 instead of L2: 12.9), and Bonsai-8B decode ran 3-7%
// faster, alternating in one process (1.7B: no change). Issued as the lookups go, one per line,
// not eight at a block's start: 72-78% -> 76-81% of the probe on two threads, 56-60% -> 61-66%
// on one. Past the matrix's end they are harmless: prefetches never fault.
constexpr int64_t kPrefetchAhead = 8192;

TRITLM_INLINE void prefetch_codes(const uint8_t* line) {
  _mm_prefetch(reinterpret_cast<const char*>(line + kPrefetchAhead), _MM_HINT_T1);
}

// The int16 sums of one block (32 quads) for the 32 rows of a tile and BT activation rows:
// lo[t] rows 0-7 | 16-23, hi[t] rows 8-15 | 24-31. codes: the block's 512 bytes; luts[t]: the
// block's 32 tables of activation row t.
template <int BT>
TRITLM_INLINE void binary_block(const uint8_t* codes, const uint8_t* const (&luts)[BT], __m256i (&lo)[BT],
                                __m256i (&hi)[BT]) {
#if TRITLM_X86_VNNI
  __m256i even[BT], odd[BT];
  TRITLM_UNROLL for (int t = 0; t < BT; ++t) even[t] = odd[t] = _mm256_setzero_si256();
  TRITLM_LINE_LOOP for (int j0 = 0; j0 < kQuadsPerBlock / 2; j0 += 2) {  // a line of codes: chunks j0, j0 + 1
    prefetch_codes(codes + 32 * j0);
    TRITLM_UNROLL for (int h = 0; h < 2; ++h) {  // 8 weights: quads 2j (low nibbles), 2j + 1
      const int j = j0 + h;
      const __m256i c = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(codes + 32 * j));
      const __m256i c4 = _mm256_srli_epi16(c, 4), c8 = _mm256_srli_epi16(c, 8), c12 = _mm256_srli_epi16(c, 12);
      TRITLM_UNROLL for (int t = 0; t < BT; ++t) {
        const __m256i t0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(luts[t] + 64 * j));
        const __m256i t1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(luts[t] + 64 * j + 32));
        even[t] = _mm256_add_epi16(even[t], _mm256_add_epi16(_mm256_permutexvar_epi16(c, t0),
                                                             _mm256_permutexvar_epi16(c4, t1)));
        odd[t] = _mm256_add_epi16(odd[t], _mm256_add_epi16(_mm256_permutexvar_epi16(c8, t0),
                                                           _mm256_permutexvar_epi16(c12, t1)));
      }
    }
  }
  // even holds rows 0, 2, .., 30 and odd rows 1, 3, .., 31: interleaved per 128-bit lane.
  TRITLM_UNROLL for (int t = 0; t < BT; ++t) {
    lo[t] = _mm256_unpacklo_epi16(even[t], odd[t]);
    hi[t] = _mm256_unpackhi_epi16(even[t], odd[t]);
  }
#else
  const __m256i mask = _mm256_set1_epi8(0x0f);
  TRITLM_UNROLL for (int t = 0; t < BT; ++t) lo[t] = hi[t] = _mm256_setzero_si256();
  // Here the line loop ran 4-5% slower than a chunk at a time (6.6 against 6.3 cycles a chunk).
  _Pragma("GCC unroll 2") for (int j = 0; j < kQuadsPerBlock / 2; ++j) {
    if (j % 2 == 0) prefetch_codes(codes + 32 * j);
    const __m256i c = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(codes + 32 * j));
    const __m256i n0 = _mm256_and_si256(c, mask), n1 = _mm256_and_si256(_mm256_srli_epi16(c, 4), mask);
    TRITLM_UNROLL for (int t = 0; t < BT; ++t) {
      const uint8_t* p = luts[t] + 64 * j;
      auto table = [p](int off) {
        return _mm256_broadcastsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p + off)));
      };
      const __m256i l0 = _mm256_shuffle_epi8(table(0), n0), h0 = _mm256_shuffle_epi8(table(16), n0);
      const __m256i l1 = _mm256_shuffle_epi8(table(32), n1), h1 = _mm256_shuffle_epi8(table(48), n1);
      lo[t] = _mm256_add_epi16(lo[t], _mm256_add_epi16(_mm256_unpacklo_epi8(l0, h0), _mm256_unpacklo_epi8(l1, h1)));
      hi[t] = _mm256_add_epi16(hi[t], _mm256_add_epi16(_mm256_unpackhi_epi8(l0, h0), _mm256_unpackhi_epi8(l1, h1)));
    }
  }
#endif
}

// One tile of 32 weight rows against BT activation rows from b0: per scale group, the blocks'
// sums are widened into int32 (rows 0-7, 8-15, 16-23, 24-31), corrected, converted and scaled,
// then added to each row's running sum in group order, as scalar.cpp does row by row.
template <int BT>
TRITLM_INLINE void binary_tile(const WeightView& w, const ActView& a, int64_t tile, int64_t b0, int64_t r1, float* y,
                               int64_t ldy) {
  const int64_t nblocks = w.k / kBlock, gb = w.group_blocks, groups = w.groups(), lut_row = lut_bytes(a.k);
  const uint8_t* codes = w.codes + tile * kTileRows * (w.k / 8);
  const uint16_t* scales = w.half_scales + tile * groups * kTileRows;
  __m256 acc[BT][4];
  TRITLM_UNROLL for (int t = 0; t < BT; ++t) {
    for (int j = 0; j < 4; ++j) acc[t][j] = _mm256_setzero_ps();
  }
  for (int64_t g = 0; g < groups; ++g) {
    __m256i isum[BT][4];
    int32_t q_sum[BT];
    TRITLM_UNROLL for (int t = 0; t < BT; ++t) {
      for (int j = 0; j < 4; ++j) isum[t][j] = _mm256_setzero_si256();
      q_sum[t] = 0;
    }
    for (int64_t blk = g * gb; blk < (g + 1) * gb; ++blk) {
      const uint8_t* luts[BT];
      TRITLM_UNROLL for (int t = 0; t < BT; ++t) {
        luts[t] = a.lut + (b0 + t) * lut_row + blk * kQuadsPerBlock * 32;
        q_sum[t] += a.block_sums[(b0 + t) * nblocks + blk];
      }
      __m256i lo[BT], hi[BT];
      const uint8_t* bc = codes + blk * kTileRows * (kBlock / 8);
      binary_block<BT>(bc, luts, lo, hi);
      TRITLM_UNROLL for (int t = 0; t < BT; ++t) {
        isum[t][0] = _mm256_add_epi32(isum[t][0], _mm256_cvtepi16_epi32(_mm256_castsi256_si128(lo[t])));
        isum[t][1] = _mm256_add_epi32(isum[t][1], _mm256_cvtepi16_epi32(_mm256_castsi256_si128(hi[t])));
        isum[t][2] = _mm256_add_epi32(isum[t][2], _mm256_cvtepi16_epi32(_mm256_extracti128_si256(lo[t], 1)));
        isum[t][3] = _mm256_add_epi32(isum[t][3], _mm256_cvtepi16_epi32(_mm256_extracti128_si256(hi[t], 1)));
      }
    }
    // This group's 32 binary16 scales (one 64-byte line), widened exactly by vcvtph2ps; and the
    // line as many groups ahead as the codes' prefetch is blocks ahead.
    const uint16_t* sg = scales + g * kTileRows;
    _mm_prefetch(reinterpret_cast<const char*>(sg + kPrefetchAhead / (kBlock / 8)), _MM_HINT_T1);
    __m256 scale[4];
    for (int j = 0; j < 4; ++j) scale[j] = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(sg + 8 * j)));
    TRITLM_UNROLL for (int t = 0; t < BT; ++t) {
      const __m256i qs = _mm256_set1_epi32(q_sum[t]);
      for (int j = 0; j < 4; ++j) {
        const __m256i v = _mm256_sub_epi32(_mm256_add_epi32(isum[t][j], isum[t][j]), qs);
        const __m256 term = _mm256_mul_ps(_mm256_cvtepi32_ps(v), scale[j]);
        acc[t][j] = _mm256_add_ps(acc[t][j], term);
      }
    }
  }
  const int64_t r0 = tile * kTileRows, rows = std::min(kTileRows, r1 - r0);
  TRITLM_UNROLL for (int t = 0; t < BT; ++t) {
    alignas(32) float out[kTileRows];
    const __m256 s = _mm256_set1_ps(a.s[b0 + t]);
    for (int j = 0; j < 4; ++j) _mm256_store_ps(out + 8 * j, _mm256_div_ps(acc[t][j], s));
    std::copy(out, out + rows, y + (b0 + t) * ldy + r0);
  }
}

// Weight tiles outer, activation rows inner: a tile's codes stay in L1 while the activation
// rows' tables stream from L2.
void matmul_binary(const WeightView& w, const ActView& a, int64_t r0, int64_t r1, float* y, int64_t ldy,
                   bool continues) {
#if TRITLM_X86_VNNI
  constexpr int kWide = 8;  // 32 vector registers: 16 int16 accumulators
#else
  constexpr int kWide = 4;
#endif
  // The first tiles' codes, which the prefetches 8 KiB ahead in binary_block never cover, unless
  // the previous call's did. Asked for again on every call, the 128 prefetches of lines already
  // fetched or in flight cost 1.2-1.9% of a Bonsai-1.7B decode step (per-token medians of 12
  // alternating sessions, twice: 11 and 12 of 12 faster without): a step makes ~5700 calls.
  if (!continues) {
    const char* start = reinterpret_cast<const char*>(w.codes + r0 * (w.k / 8));
    for (int64_t l = 0; l < kPrefetchAhead; l += 64) _mm_prefetch(start + l, _MM_HINT_T1);
  }
  for (int64_t tile = r0 / kTileRows; tile * kTileRows < r1; ++tile) {
    int64_t b = 0;
    for (; b + kWide <= a.rows; b += kWide) binary_tile<kWide>(w, a, tile, b, r1, y, ldy);
    for (; b + 2 <= a.rows; b += 2) binary_tile<2>(w, a, tile, b, r1, y, ldy);
    if (b < a.rows) binary_tile<1>(w, a, tile, b, r1, y, ldy);
  }
}

// ------------------------------------------------------------------------------------------
// f16 matrix-vector (the output head)
// ------------------------------------------------------------------------------------------

#if TRITLM_X86_VNNI
// The f16 kernel uses nothing from AVX-512, and compiled with it (EVEX encodings, ymm16-31) the
// same source streams ~15% slower on Zen 4 (22-24 vs 26-29 GB/s on one core), so this table
// borrows the plain AVX2 build's: one indirect call per block of rows.
void matvec_f16(const uint16_t* w, int64_t cols, const float* x, int64_t n_x, int64_t r0, int64_t r1, float* y,
                int64_t ldy) {
  avx2_table()->matvec_f16(w, cols, x, n_x, r0, r1, y, ldy);
}
#else

// scalar.cpp's 16 partial sums live in two 8-lane accumulators: lo holds acc[0..7], hi
// acc[8..15]. Its pairwise reduction is then: step 8 = lo + hi, step 4 = the two 128-bit
// halves, step 2 = lanes {0,1} + {2,3}, step 1 = lane 0 + lane 1.
TRITLM_INLINE float reduce16(__m256 lo, __m256 hi) {
  const __m256 s8 = _mm256_add_ps(lo, hi);
  const __m128 s4 = _mm_add_ps(_mm256_castps256_ps128(s8), _mm256_extractf128_ps(s8, 1));
  const __m128 s2 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
  return _mm_cvtss_f32(_mm_add_ss(s2, _mm_movehdup_ps(s2)));
}

// R weight rows from r times T x rows from t0. Each 16 halves of a weight row are converted
// once (vcvtph2ps, exact) and fused-multiply-added into every x row's two accumulators; the
// 2 * R * T independent FMA chains hide the FMA latency. The next R rows are prefetched into
// L2 as these are read: L2 keeps more misses in flight than L1, which doubles the bandwidth one
// core draws (13.5 -> 27 GB/s at 128256 x 2560, n_x = 1, on one Zen 4 core). A prefetch past the
// matrix's end is harmless: prefetches never fault.
template <int R, int T>
TRITLM_INLINE void f16_tile(const uint16_t* w, int64_t cols, const float* x, int64_t r, int64_t t0, float* y,
                            int64_t ldy) {
  __m256 lo[R][T], hi[R][T];
  TRITLM_UNROLL for (int i = 0; i < R; ++i) {
    TRITLM_UNROLL for (int t = 0; t < T; ++t) lo[i][t] = hi[i][t] = _mm256_setzero_ps();
  }
  for (int64_t k = 0; k < cols; k += 16) {
    __m256 wl[R], wh[R];
    TRITLM_UNROLL for (int i = 0; i < R; ++i) {
      const uint16_t* p = w + (r + i) * cols + k;
      _mm_prefetch(reinterpret_cast<const char*>(p + R * cols), _MM_HINT_T1);
      wl[i] = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
      wh[i] = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p + 8)));
    }
    TRITLM_UNROLL for (int t = 0; t < T; ++t) {
      const float* xt = x + (t0 + t) * cols + k;
      const __m256 xl = _mm256_loadu_ps(xt), xh = _mm256_loadu_ps(xt + 8);
      TRITLM_UNROLL for (int i = 0; i < R; ++i) {
        lo[i][t] = _mm256_fmadd_ps(wl[i], xl, lo[i][t]);
        hi[i][t] = _mm256_fmadd_ps(wh[i], xh, hi[i][t]);
      }
    }
  }
  TRITLM_UNROLL for (int i = 0; i < R; ++i) {
    TRITLM_UNROLL for (int t = 0; t < T; ++t) y[(t0 + t) * ldy + r + i] = reduce16(lo[i][t], hi[i][t]);
  }
}

// R weight rows against every x row: the rows' 2 * R * cols bytes stay in L1 while the x rows
// pass in pairs, so each weight byte is read from memory once per call.
template <int R>
TRITLM_INLINE void f16_rows(const uint16_t* w, int64_t cols, const float* x, int64_t n_x, int64_t r, float* y,
                            int64_t ldy) {
  int64_t t = 0;
  for (; t + 2 <= n_x; t += 2) f16_tile<R, 2>(w, cols, x, r, t, y, ldy);
  if (t < n_x) f16_tile<R, 1>(w, cols, x, r, t, y, ldy);
}

// Decode (one x row) takes weight rows four at a time: eight FMA chains, and four streams.
void matvec_f16(const uint16_t* w, int64_t cols, const float* x, int64_t n_x, int64_t r0, int64_t r1, float* y,
                int64_t ldy) {
  int64_t r = r0;
  if (n_x == 1)
    for (; r + 4 <= r1; r += 4) f16_tile<4, 1>(w, cols, x, r, 0, y, ldy);
  for (; r + 2 <= r1; r += 2) f16_rows<2>(w, cols, x, n_x, r, y, ldy);
  if (r < r1) f16_rows<1>(w, cols, x, n_x, r, y, ldy);
}
#endif  // TRITLM_X86_VNNI

// V vectors of y (8 V floats from y) stay in registers over all m rows: V independent FMA
// chains, eight to keep both FMA pipes busy.
template <int V>
TRITLM_INLINE void axpy_rows_chunk(const uint16_t* x, int64_t ldx, const float* a, int64_t m, float* y) {
  __m256 acc[V];
  TRITLM_UNROLL for (int v = 0; v < V; ++v) acc[v] = _mm256_loadu_ps(y + 8 * v);
  for (int64_t p = 0; p < m; ++p) {
    const __m256 ap = _mm256_set1_ps(a[p]);
    TRITLM_UNROLL for (int v = 0; v < V; ++v) {
      const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(x + p * ldx + 8 * v));
      acc[v] = _mm256_fmadd_ps(ap, _mm256_cvtph_ps(h), acc[v]);
    }
  }
  TRITLM_UNROLL for (int v = 0; v < V; ++v) _mm256_storeu_ps(y + 8 * v, acc[v]);
}

// Value rows a block: 8 KiB of 128-wide rows, read from memory once and then from L1 by the
// passes of every output row (a group's query heads) and 64-wide chunk. Unblocked, one call a
// head read the values once per head of the group, from memory again at long contexts
// (Bonsai-1.7B decode at 2048 positions: this kernel's time -33%).
constexpr int64_t kAxpyBlockRows = 32;

void axpy_rows_f16(const uint16_t* x, int64_t ldx, const float* a, int64_t lda, int64_t n_a, int64_t m, float* y,
                   int64_t ldy, int64_t n) {
  for (int64_t p0 = 0; p0 < m; p0 += kAxpyBlockRows) {
    const int64_t rows = std::min(kAxpyBlockRows, m - p0);
    for (int64_t j = 0; j < n_a; ++j) {
      float* yj = y + j * ldy;
      int64_t i = 0;
      for (; i + 64 <= n; i += 64) axpy_rows_chunk<8>(x + p0 * ldx + i, ldx, a + j * lda + p0, rows, yj + i);
      for (; i < n; i += 16) axpy_rows_chunk<2>(x + p0 * ldx + i, ldx, a + j * lda + p0, rows, yj + i);
    }
  }
}

void f32_to_f16(const float* x, uint16_t* h, int64_t n) {
  for (int64_t i = 0; i < n; i += 8)
    _mm_storeu_si128(reinterpret_cast<__m128i*>(h + i), _mm256_cvtps_ph(_mm256_loadu_ps(x + i), _MM_FROUND_TO_NEAREST_INT));
}

// 8-bit head. The sign trick makes one operand unsigned without changing the product:
// w * x = sign(w, x) * |x|, so vpmaddubsw (or VNNI's vpdpbusd) takes |x| as u8 and w with x's
// sign as s8: 32 exact products per instruction instead of vpmaddwd's 16. Weights lie in
// [-127, 127] (the binding checks), so negating one never wraps; a pair sum of vpmaddubsw is at
// most 2 * 128 * 127, inside int16. R rows at a time share each activation load, and the next R
// rows are prefetched into L2 as these stream (as for the f16 head: it doubles what one core
// draws).
template <int R>
TRITLM_INLINE void q8_rows(const int8_t* w, const float* w_scale, int64_t cols, const int8_t* qt, float s, int64_t r,
                           float* yt) {
  __m256i acc[R];
  TRITLM_UNROLL for (int i = 0; i < R; ++i) acc[i] = _mm256_setzero_si256();
  for (int64_t k = 0; k < cols; k += 32) {
    const __m256i x = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(qt + k));
    const __m256i ax = _mm256_abs_epi8(x);
    TRITLM_UNROLL for (int i = 0; i < R; ++i) {
      const int8_t* p = w + (r + i) * cols + k;
      _mm_prefetch(reinterpret_cast<const char*>(p + R * cols), _MM_HINT_T1);
      const __m256i sw = _mm256_sign_epi8(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)), x);
#if TRITLM_X86_VNNI
      acc[i] = _mm256_dpbusd_epi32(acc[i], ax, sw);
#else
      acc[i] = _mm256_add_epi32(acc[i], _mm256_madd_epi16(_mm256_maddubs_epi16(ax, sw), _mm256_set1_epi16(1)));
#endif
    }
  }
  TRITLM_UNROLL for (int i = 0; i < R; ++i) {
    const float v = static_cast<float>(hsum_i32(acc[i])) * w_scale[r + i];
    yt[r + i] = v / s;
  }
}

void matvec_q8(const int8_t* w, const float* w_scale, int64_t cols, const int8_t* q, const float* s, int64_t n_x,
               int64_t r0, int64_t r1, float* y, int64_t ldy) {
  for (int64_t t = 0; t < n_x; ++t) {
    int64_t r = r0;
    for (; r + 4 <= r1; r += 4) q8_rows<4>(w, w_scale, cols, q + t * cols, s[t], r, y + t * ldy);
    for (; r < r1; ++r) q8_rows<1>(w, w_scale, cols, q + t * cols, s[t], r, y + t * ldy);
  }
}

const KernelTable kTable = {
#if TRITLM_X86_VNNI
    "avx512-vnni",
#else
    "avx2",
#endif
    quantize_row,
    {matmul<TernaryBlock>, matmul_binary},
    matvec_f16,
    axpy_rows_f16,
    f32_to_f16,
    matvec_q8,
    lut_bytes,
    build_lut,
};

}  // namespace

#if TRITLM_X86_VNNI
const KernelTable* avx512vnni_table() { return &kTable; }
#else
const KernelTable* avx2_table() { return &kTable; }
#endif

}  // namespace tritlm::kernels
