// Software prefetches into L2, for memory the hardware prefetcher would reach too late. Into L2
// rather than L1: on Zen 4 a T0 prefetch stream halves what a core draws from memory
// (docs/kernels.md). A prefetch never faults, so a range past an allocation's end is harmless.
#pragma once

#include <cstdint>

#if defined(_M_X64) && !defined(__GNUC__)
#include <immintrin.h>
#endif

namespace tritlm {

inline void prefetch_line_l2(const void* p) {
#if defined(__GNUC__) || defined(__clang__)
  __builtin_prefetch(p, 0, 2);
#elif defined(_M_X64)
  _mm_prefetch(static_cast<const char*>(p), _MM_HINT_T1);
#endif
}

// Every 64-byte line of [p, p + bytes).
inline void prefetch_l2(const void* p, int64_t bytes) {
  for (int64_t off = 0; off < bytes; off += 64) prefetch_line_l2(static_cast<const char*>(p) + off);
}

}  // namespace tritlm
