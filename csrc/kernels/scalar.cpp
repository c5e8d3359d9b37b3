// The executable specification: plain loops, no intrinsics. Every SIMD table must produce the
// same bits as this file for the same inputs, so it spells out each rounding step.
#include <algorithm>
#include <cmath>
#include <cstring>

#include "f16.h"
#include "kernels.h"

namespace tritlm::kernels {
namespace {

bool is_finite_bits(float v) {
  uint32_t bits;
  std::memcpy(&bits, &v, sizeof bits);
  return (bits & 0x7f800000u) != 0x7f800000u;
}

bool quantize_row(const float* x, int64_t k, int8_t* q, float* s, int32_t* block_sums) {
  float amax = 0.0f;
  for (int64_t i = 0; i < k; ++i) {
    if (!is_finite_bits(x[i])) return false;
    amax = std::max(amax, std::fabs(x[i]));
  }
  const float scale = 127.0f / std::max(amax, 1e-5f);
  *s = scale;
  for (int64_t b = 0; b < k / kBlock; ++b) {
    int32_t sum = 0;
    for (int64_t i = b * kBlock; i < (b + 1) * kBlock; ++i) {
      const float r = std::nearbyint(x[i] * scale);  // default rounding mode: half to even
      const int32_t v = static_cast<int32_t>(std::min(127.0f, std::max(-128.0f, r)));
      q[i] = static_cast<int8_t>(v);
      sum += v;
    }
    block_sums[b] = sum;
  }
  return true;
}

template <Format F>
void matmul(const WeightView& w, const ActView& a, int64_t r0, int64_t r1, float* y, int64_t ldy, bool /*continues*/) {
  const int64_t groups = w.groups(), gk = w.group_blocks * kBlock;
  for (int64_t r = r0; r < r1; ++r) {
    for (int64_t b = 0; b < a.rows; ++b) {
      const int8_t* q = a.q + b * a.k;
      float acc = 0.0f;
      for (int64_t g = 0; g < groups; ++g) {
        int32_t isum = 0;
        for (int64_t i = g * gk; i < (g + 1) * gk; ++i) isum += weight_at(F, w.codes, w.k, r, i) * q[i];
        const float term = static_cast<float>(isum) * w.scale(r, g);
        acc = acc + term;
      }
      y[b * ldy + r] = acc / a.s[b];
    }
  }
}

void matvec_f16(const uint16_t* w, int64_t cols, const float* x, int64_t n_x, int64_t r0, int64_t r1, float* y,
                int64_t ldy) {
  for (int64_t r = r0; r < r1; ++r) {
    const uint16_t* row = w + r * cols;
    for (int64_t t = 0; t < n_x; ++t) {
      const float* xt = x + t * cols;
      float acc[16] = {};
      for (int64_t i = 0; i < cols; ++i) acc[i % 16] = std::fma(fp16_to_f32(row[i]), xt[i], acc[i % 16]);
      for (int step = 8; step >= 1; step /= 2)
        for (int j = 0; j < step; ++j) acc[j] = acc[j] + acc[j + step];
      y[t * ldy + r] = acc[0];
    }
  }
}

void axpy_rows_f16(const uint16_t* x, int64_t ldx, const float* a, int64_t lda, int64_t n_a, int64_t m, float* y,
                   int64_t ldy, int64_t n) {
  for (int64_t j = 0; j < n_a; ++j)
    for (int64_t p = 0; p < m; ++p)
      for (int64_t i = 0; i < n; ++i)
        y[j * ldy + i] = std::fma(a[j * lda + p], fp16_to_f32(x[p * ldx + i]), y[j * ldy + i]);
}

void f32_to_f16(const float* x, uint16_t* h, int64_t n) {
  for (int64_t i = 0; i < n; ++i) h[i] = f32_to_fp16(x[i]);
}

void matvec_q8(const int8_t* w, const float* w_scale, int64_t cols, const int8_t* q, const float* s, int64_t n_x,
               int64_t r0, int64_t r1, float* y, int64_t ldy) {
  for (int64_t r = r0; r < r1; ++r)
    for (int64_t t = 0; t < n_x; ++t) {
      int32_t isum = 0;
      for (int64_t i = 0; i < cols; ++i) isum += w[r * cols + i] * q[t * cols + i];
      const float scaled = static_cast<float>(isum) * w_scale[r];
      y[t * ldy + r] = scaled / s[t];
    }
}

}  // namespace

const KernelTable kScalarTable = {
    "scalar",
    quantize_row,
    {matmul<Format::kTernary>, matmul<Format::kBinary>},
    matvec_f16,
    axpy_rows_f16,
    f32_to_f16,
    matvec_q8,
    nullptr,
    nullptr,
};

}  // namespace tritlm::kernels
