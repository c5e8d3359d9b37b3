#include "weight_memory.h"

#include <cstdint>
#include <iterator>
#include <map>
#include <mutex>

#if defined(__linux__)
#include <sys/mman.h>
#endif

namespace tritlm {

#if defined(__linux__)
namespace {

constexpr size_t kHugePage = size_t{2} << 20;
constexpr size_t kRegion = size_t{32} << 20;  // carved up for the allocations that fit a quarter of it
constexpr size_t kAlign = 64;

size_t round_up(size_t n, size_t to) { return (n + to - 1) / to * to; }

// A 2 MiB-aligned anonymous mapping of `size` bytes (a multiple of 2 MiB), marked for huge pages.
char* map_region(size_t size) {
  void* raw = mmap(nullptr, size + kHugePage, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (raw == MAP_FAILED) throw std::bad_alloc();
  char* start = static_cast<char*>(raw);
  char* base = reinterpret_cast<char*>(round_up(reinterpret_cast<uintptr_t>(start), kHugePage));
  if (base > start) munmap(start, static_cast<size_t>(base - start));
  munmap(base + size, static_cast<size_t>(start + kHugePage - base));
  madvise(base, size, MADV_HUGEPAGE);  // advice only: where THP is off the region simply keeps 4 KiB pages
  return base;
}

// Packed matrices come and go together (a model's) or one by one (tests, tools), and most are
// smaller than a huge page: they are laid end to end in shared regions, and a region is given
// back when the last allocation in it is. Large ones get a region of their own.
class Arena {
 public:
  void* alloc(size_t bytes) {
    bytes = round_up(bytes == 0 ? 1 : bytes, kAlign);
    std::lock_guard<std::mutex> lock(mutex_);
    if (bytes > kRegion / 4) return add(round_up(bytes, kHugePage), bytes, false);
    if (current_ == nullptr || current_->used + bytes > current_->size) return add(kRegion, bytes, true);
    void* p = current_->base + current_->used;
    current_->used += bytes;
    ++current_->live;
    return p;
  }

  void free(void* p) noexcept {
    std::lock_guard<std::mutex> lock(mutex_);
    auto it = std::prev(regions_.upper_bound(static_cast<char*>(p)));
    Region& r = it->second;
    if (--r.live > 0) return;
    if (&r == current_) {
      r.used = 0;  // keep the open region for the next allocations
      return;
    }
    munmap(r.base, r.size);
    regions_.erase(it);
  }

 private:
  struct Region {
    char* base;
    size_t size, used;
    int64_t live;
  };

  // A new region holding one allocation of `bytes` at its start; `shared`: the one the next
  // small allocations go to (the previous one is left to its live allocations).
  void* add(size_t size, size_t bytes, bool shared) {
    char* base = map_region(size);
    Region& r = regions_[base] = Region{base, size, bytes, 1};
    if (shared) current_ = &r;
    return base;
  }

  std::mutex mutex_;
  std::map<char*, Region> regions_;  // by base address; map nodes do not move
  Region* current_ = nullptr;        // the shared region new small allocations go to
};

Arena& arena() {
  static Arena* a = new Arena();  // never destroyed: weights may outlive static destructors
  return *a;
}

}  // namespace

void* weight_alloc(size_t bytes) { return arena().alloc(bytes); }
void weight_free(void* p, size_t) noexcept {
  if (p) arena().free(p);
}

#else

void* weight_alloc(size_t bytes) { return ::operator new(bytes == 0 ? 1 : bytes, std::align_val_t{64}); }
void weight_free(void* p, size_t) noexcept { ::operator delete(p, std::align_val_t{64}); }

#endif

}  // namespace tritlm
