// Argument checking shared by the binding files: every array is checked here, with a message
// naming the argument, before native code touches its memory.
#pragma once

#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>

#include <atomic>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "kernels/dispatch.h"
#include "kernels/kernels.h"
#include "threadpool.h"

namespace nb = nanobind;
using namespace nb::literals;

namespace tritlm {


// Any array-like input, read-only ones included (np.frombuffer over bytes, memory maps).
using Input = nb::ndarray<nb::ro>;

constexpr int kMaxThreads = 1024;
inline std::atomic<int> g_threads{0};  // 0 until first use: physical_cores()

inline int default_threads() {
  int n = g_threads.load();
  if (n == 0) {
    n = physical_cores();
    g_threads.store(n);
  }
  return n;
}

inline int check_threads(int n, const char* name = "n_threads") {
  if (n < 1 || n > kMaxThreads)
    throw nb::value_error((std::string(name) + " must be between 1 and " + std::to_string(kMaxThreads) +
                           ", got " + std::to_string(n)).c_str());
  return n;
}

inline int resolve_threads(std::optional<int> n) { return n ? check_threads(*n) : default_threads(); }

inline const kernels::KernelTable& resolve_table(const std::optional<std::string>& isa) {
  return isa ? kernels::table_named(*isa) : kernels::active_table();
}

inline std::string dtype_name(nb::dlpack::dtype d) {
  const char* kind = "unknown";
  switch (static_cast<nb::dlpack::dtype_code>(d.code)) {
    case nb::dlpack::dtype_code::Int: kind = "int"; break;
    case nb::dlpack::dtype_code::UInt: kind = "uint"; break;
    case nb::dlpack::dtype_code::Float: kind = "float"; break;
    case nb::dlpack::dtype_code::Bfloat: kind = "bfloat"; break;
    case nb::dlpack::dtype_code::Complex: kind = "complex"; break;
    case nb::dlpack::dtype_code::Bool: return "bool";
  }
  return kind + std::to_string(d.bits);
}

template <class T> const char* dtype_of();
template <> inline const char* dtype_of<float>() { return "float32"; }
template <> inline const char* dtype_of<int8_t>() { return "int8"; }
template <> inline const char* dtype_of<uint8_t>() { return "uint8"; }
template <> inline const char* dtype_of<int32_t>() { return "int32"; }

// True when p may be read as a T: numpy allows views at any byte offset (np.frombuffer(buf,
// offset=1), a memory-mapped file's tensor), and reading a T at an address not aligned for it
// is undefined behaviour, whatever the CPU tolerates.
template <class T>
bool aligned_for(const void* p) {
  return reinterpret_cast<uintptr_t>(p) % alignof(T) == 0;
}

// The data of a C-contiguous CPU array of T with `ndim` dimensions, or an exception naming
// `name`; its address is not checked against T's alignment (for callers that copy the bytes).
template <class T>
const void* require_bytes(const Input& a, const char* name, size_t ndim) {
  const std::string arg(name);
  if (a.device_type() != nb::device::cpu::value) throw nb::value_error((arg + " must be a CPU array").c_str());
  if (a.dtype() != nb::dtype<T>())
    throw nb::type_error((arg + " must have dtype " + dtype_of<T>() + ", got " + dtype_name(a.dtype())).c_str());
  if (a.ndim() != ndim)
    throw nb::value_error(
        (arg + " must have " + std::to_string(ndim) + " dimensions, got " + std::to_string(a.ndim())).c_str());
  int64_t expected = 1;
  for (size_t i = ndim; a.size() > 0 && i-- > 0;) {
    if (a.shape(i) != 1 && a.stride(i) != expected)
      throw nb::value_error((arg + " must be C-contiguous (use numpy.ascontiguousarray)").c_str());
    expected *= static_cast<int64_t>(a.shape(i));
  }
  return a.data();
}

// As require_bytes, and aligned for T, so native code may read the elements as T.
template <class T>
const T* require(const Input& a, const char* name, size_t ndim) {
  const void* p = require_bytes<T>(a, name, ndim);
  if (a.size() > 0 && !aligned_for<T>(p))
    throw nb::value_error((std::string(name) + " is not aligned to its " + std::to_string(alignof(T)) +
                           "-byte elements (a view at an odd byte offset); copy it with numpy.array")
                              .c_str());
  return static_cast<const T*>(p);
}

inline void check_k(int64_t k, const char* what) {
  if (k <= 0 || k % kernels::kBlock != 0 || k > kernels::kMaxK)
    throw nb::value_error((std::string(what) + " must be a positive multiple of 128 up to " +
                           std::to_string(kernels::kMaxK) + ", got " + std::to_string(k))
                              .c_str());
}

// A numpy array that owns a heap copy-free buffer: the vector's storage moves into a capsule.
template <class T>
nb::ndarray<nb::numpy, T> to_numpy(std::vector<T>&& v, std::initializer_list<size_t> shape) {
  auto* owned = new std::vector<T>(std::move(v));
  nb::capsule owner(owned, [](void* p) noexcept { delete static_cast<std::vector<T>*>(p); });
  return nb::ndarray<nb::numpy, T>(owned->data(), shape, owner);
}


void bind_model(nb::module_& m);

}  // namespace tritlm
