// Owned, packed operands of the kernels and the threaded matmul that combines them.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "f16.h"
#include "kernels/kernels.h"
#include "weight_memory.h"

namespace tritlm {

struct PackedWeights {
  kernels::Format format = kernels::Format::kTernary;
  int64_t n = 0, k = 0, group_blocks = 0;
  WeightVector<uint8_t> codes;         // code_bytes(format, n, k), unless the codes are borrowed
  // padded_rows(format, n) * groups() scales laid out by scale_index: f32 for the ternary
  // format, IEEE binary16 for the binary one (kernels.h); the other vector is empty.
  WeightVector<float> scales;
  WeightVector<uint16_t> half_scales;
  // Codes already in the run-time layout in memory someone else owns (a memory-mapped I2_S
  // tensor), viewed rather than copied; `owner` keeps that memory alive.
  const uint8_t* borrowed = nullptr;
  std::shared_ptr<const void> owner;

  const uint8_t* code_data() const { return borrowed ? borrowed : codes.data(); }
  int64_t groups() const { return k / (group_blocks * kernels::kBlock); }
  int64_t code_bytes() const { return kernels::code_bytes(format, n, k); }
  int64_t nbytes() const {
    return code_bytes() + static_cast<int64_t>(scales.size() * sizeof(float) + half_scales.size() * sizeof(uint16_t));
  }
  float scale(int64_t r, int64_t g) const { return view().scale(r, g); }
  // Stores v as row r's scale of group g (the binary format rounds it to the nearest half).
  void set_scale(int64_t r, int64_t g, float v) {
    const int64_t i = kernels::scale_index(format, groups(), r, g);
    if (format == kernels::Format::kTernary)
      scales[i] = v;
    else
      half_scales[i] = f32_to_fp16(v);
  }
  kernels::WeightView view() const {
    return {format, code_data(), scales.data(), half_scales.data(), n, k, group_blocks};
  }
};

struct QuantizedActivations {
  int64_t rows = 0, k = 0;
  std::vector<int8_t> q;             // rows * k
  std::vector<float> s;              // rows
  std::vector<int32_t> block_sums;   // rows * k / 128
  kernels::ActView view() const { return {q.data(), s.data(), block_sums.data(), rows, k}; }
};

// Quantizes rows x k floats; throws std::invalid_argument naming the first row that holds a NaN
// or an infinity. k must be a positive multiple of 128 (the caller checks).
QuantizedActivations quantize(const kernels::KernelTable& t, const float* x, int64_t rows, int64_t k, int n_threads);

// Activations quantized elsewhere: copies q and s and computes the block sums.
QuantizedActivations activations_from_int8(const int8_t* q, const float* s, int64_t rows, int64_t k);

// y[rows, n] = W a, split over weight rows across n_threads threads. Shapes must agree (the
// caller checks).
void matmul(const kernels::KernelTable& t, const PackedWeights& w, const QuantizedActivations& a, float* y,
            int n_threads);

// One product y = W a of several that share their activations (attention's q, k and v; the
// gate and up projections).
struct Product {
  const PackedWeights* w;
  float* y;  // [a.rows, w->n]
};

// All the products at once: one build of the lookup tables (a thread's own, for a few rows) and
// one parallel run over the rows of every matrix, so a decode step pays one thread hand-off, not
// one a matrix. `next`: the matrices of the caller's next matmul, whose first rows idle workers
// fetch ahead.
void matmul(const kernels::KernelTable& t, const std::vector<Product>& products, const QuantizedActivations& a,
            int n_threads, const std::vector<const PackedWeights*>& next = {});

}  // namespace tritlm
