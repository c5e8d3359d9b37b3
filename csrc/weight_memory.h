// Memory for weights: hundreds of megabytes that every decode step streams once. On Linux it
// comes from 2 MiB-aligned regions marked MADV_HUGEPAGE, so that the kernel can back them with
// 2 MiB pages: a sequential read then misses the TLB once per 2 MiB instead of once per 4 KiB,
// and under a hypervisor each miss is a two-level page walk. Bonsai-1.7B's 196 linears
// streamed at 20-21 instead of 14-16 GB/s on one core, 29-30 instead of 22-25 on two. The
// read-bandwidth probe uses the same memory, so the roofline is measured on equal terms.
// Elsewhere (or with transparent huge pages off) it is ordinary aligned memory.
#pragma once

#include <cstddef>
#include <new>
#include <vector>

namespace tritlm {

// At least `bytes` bytes, 64-byte aligned, uninitialized; std::bad_alloc when there are none.
void* weight_alloc(size_t bytes);
// Gives back what weight_alloc(bytes) returned.
void weight_free(void* p, size_t bytes) noexcept;

template <class T>
struct WeightAllocator {
  using value_type = T;
  WeightAllocator() = default;
  template <class U>
  WeightAllocator(const WeightAllocator<U>&) noexcept {}
  T* allocate(size_t n) { return static_cast<T*>(weight_alloc(n * sizeof(T))); }
  void deallocate(T* p, size_t n) noexcept { weight_free(p, n * sizeof(T)); }
  template <class U>
  bool operator==(const WeightAllocator<U>&) const noexcept { return true; }
  template <class U>
  bool operator!=(const WeightAllocator<U>&) const noexcept { return false; }
};

template <class T>
using WeightVector = std::vector<T, WeightAllocator<T>>;

}  // namespace tritlm
