// Conversion of every supported source layout into tritlm's run-time layouts (kernels.h).
// Each function checks sizes and code values before it reads or writes, and throws
// std::invalid_argument with a message naming the source format and the problem.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>

#include "packed.h"

namespace tritlm {

// An int8 matrix w[n, k] of {-1, 0, 1} (ternary) or {-1, 1} (binary) with f32 scales
// [n, k / (group_blocks * 128)]; the binary format rounds them to binary16 (kernels.h).
PackedWeights pack_int8(kernels::Format format, const int8_t* w, int64_t n, int64_t k, const float* scales,
                        int64_t group_blocks, int n_threads);

// Raw GGUF tensor data of a weight of n rows and k columns.
PackedWeights repack_tq2_0(const uint8_t* data, size_t size, int64_t n, int64_t k, int n_threads);
PackedWeights repack_tq1_0(const uint8_t* data, size_t size, int64_t n, int64_t k, int n_threads);
PackedWeights repack_i2_s(const uint8_t* data, size_t size, int64_t n, int64_t k, int n_threads,
                          std::shared_ptr<const void> owner = nullptr);
PackedWeights repack_q1_0(const uint8_t* data, size_t size, int64_t n, int64_t k, int n_threads);

// Hugging Face's packed uint8 layout of BitNet b1.58: packed[packed_rows, k] holds rows
// i * packed_rows + r (i = 0..3) of the n = 4 * packed_rows row matrix in bits 2i..2i+1 of row r.
PackedWeights repack_hf_packed(const uint8_t* packed, int64_t packed_rows, int64_t k, float weight_scale,
                               int n_threads);

// The inverse of pack_int8: w[n, k] and scales[n, groups] (as stored: a binary matrix's rounded).
void unpack(const PackedWeights& w, int8_t* values, float* scales);

}  // namespace tritlm
