// The Python module tritlm._core. Every argument is checked here, with a message naming it,
// before any kernel touches memory; compute runs with the GIL released.
#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>
#include <nanobind/stl/optional.h>
#include <nanobind/stl/pair.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/vector.h>

#include <atomic>
#include <cmath>
#include <optional>
#include <string>

#include "bandwidth.h"
#include "bindings_util.h"
#include "kernels/dispatch.h"
#include "packed.h"
#include "repack.h"
#include "threadpool.h"

namespace nb = nanobind;
using namespace nb::literals;

namespace tritlm {
namespace {

QuantizedActivations quantize_checked(const Input& x, int n_threads, const kernels::KernelTable& t) {
  const float* data = require<float>(x, "x", 2);
  const int64_t rows = static_cast<int64_t>(x.shape(0)), k = static_cast<int64_t>(x.shape(1));
  if (rows < 1) throw nb::value_error("x must have at least one row");
  check_k(k, "x.shape[1] (K)");
  nb::gil_scoped_release release;
  return quantize(t, data, rows, k, n_threads);
}

nb::ndarray<nb::numpy, float> matmul_checked(const PackedWeights& w, const QuantizedActivations& a, int n_threads,
                                             const kernels::KernelTable& t) {
  if (a.k != w.k)
    throw nb::value_error(("activations have K = " + std::to_string(a.k) + " but the weights expect K = " +
                           std::to_string(w.k))
                              .c_str());
  std::vector<float> y(static_cast<size_t>(a.rows * w.n));
  {
    nb::gil_scoped_release release;
    matmul(t, w, a, y.data(), n_threads);
  }
  return to_numpy(std::move(y), {static_cast<size_t>(a.rows), static_cast<size_t>(w.n)});
}

std::pair<const uint8_t*, size_t> bytes_of(const Input& data) {
  const uint8_t* p = require<uint8_t>(data, "data", 1);
  return {p, data.shape(0)};
}

using Repack = PackedWeights (*)(const uint8_t*, size_t, int64_t, int64_t, int);

void def_repack(nb::module_& m, const char* name, Repack fn, const char* doc) {
  m.def(
      name,
      [fn](const Input& data, int64_t n, int64_t k, std::optional<int> n_threads) {
        const auto [p, size] = bytes_of(data);
        const int threads = resolve_threads(n_threads);
        nb::gil_scoped_release release;
        return fn(p, size, n, k, threads);
      },
      "data"_a, "n"_a, "k"_a, "n_threads"_a = nb::none(), doc);
}

}  // namespace
}  // namespace tritlm

NB_MODULE(_core, m) {
  using namespace tritlm;
  m.doc() = "tritlm's native core: kernels, packing, threads, and the transformer forward pass.";

  nb::class_<PackedWeights>(m, "PackedWeights", "A weight matrix in tritlm's run-time layout.")
      .def_prop_ro("format", [](const PackedWeights& w) {
        return w.format == kernels::Format::kTernary ? "ternary" : "binary";
      })
      .def_ro("n", &PackedWeights::n)
      .def_ro("k", &PackedWeights::k)
      .def_prop_ro("group_size", [](const PackedWeights& w) { return w.group_blocks * kernels::kBlock; })
      .def_prop_ro("nbytes", &PackedWeights::nbytes)
      .def_prop_ro(
          "codes",
          [](const PackedWeights& w) {
            // ternary: [n, k / 4]; binary: [tiles, k / 8, 32], one byte a row of a tile.
            const size_t n = static_cast<size_t>(w.n), k = static_cast<size_t>(w.k);
            if (w.format == kernels::Format::kTernary)
              return nb::ndarray<nb::numpy, const uint8_t>(w.code_data(), {n, k / 4}, nb::handle());
            const size_t tiles = static_cast<size_t>(kernels::padded_rows(w.format, w.n) / kernels::kTileRows);
            return nb::ndarray<nb::numpy, const uint8_t>(w.code_data(), {tiles, k / 8, size_t{kernels::kTileRows}},
                                                         nb::handle());
          },
          nb::rv_policy::reference_internal)
      .def_prop_ro(
          "scales",
          [](const PackedWeights& w) {
            std::vector<float> out(static_cast<size_t>(w.n * w.groups()));
            for (int64_t r = 0; r < w.n; ++r)
              for (int64_t g = 0; g < w.groups(); ++g) out[r * w.groups() + g] = w.scale(r, g);
            return to_numpy(std::move(out), {static_cast<size_t>(w.n), static_cast<size_t>(w.groups())});
          },
          nb::rv_policy::move, "The scales as float32 [n, groups] (a copy, in row order whatever the layout).")
      .def(
          "unpack",
          [](const PackedWeights& w) {
            std::vector<int8_t> values(static_cast<size_t>(w.n * w.k));
            std::vector<float> scales(static_cast<size_t>(w.n * w.groups()));
            unpack(w, values.data(), scales.data());
            return std::make_pair(
                to_numpy(std::move(values), {static_cast<size_t>(w.n), static_cast<size_t>(w.k)}),
                to_numpy(std::move(scales), {static_cast<size_t>(w.n), static_cast<size_t>(w.groups())}));
          },
          "The weights as int8 [n, k] and the scales as float32 [n, groups].")
      .def("__repr__", [](const PackedWeights& w) {
        return std::string("PackedWeights(format='") + (w.format == kernels::Format::kTernary ? "ternary" : "binary") +
               "', n=" + std::to_string(w.n) + ", k=" + std::to_string(w.k) +
               ", group_size=" + std::to_string(w.group_blocks * kernels::kBlock) + ")";
      });

  nb::class_<QuantizedActivations>(m, "QuantizedActivations", "Activations quantized per row to int8.")
      .def_ro("rows", &QuantizedActivations::rows)
      .def_ro("k", &QuantizedActivations::k)
      .def_prop_ro(
          "q",
          [](const QuantizedActivations& a) {
            return nb::ndarray<nb::numpy, const int8_t, nb::ndim<2>>(
                a.q.data(), {static_cast<size_t>(a.rows), static_cast<size_t>(a.k)}, nb::handle());
          },
          nb::rv_policy::reference_internal)
      .def_prop_ro(
          "scale",
          [](const QuantizedActivations& a) {
            return nb::ndarray<nb::numpy, const float, nb::ndim<1>>(a.s.data(), {static_cast<size_t>(a.rows)},
                                                                    nb::handle());
          },
          nb::rv_policy::reference_internal)
      .def_prop_ro(
          "block_sums",
          [](const QuantizedActivations& a) {
            return nb::ndarray<nb::numpy, const int32_t, nb::ndim<2>>(
                a.block_sums.data(), {static_cast<size_t>(a.rows), static_cast<size_t>(a.k / kernels::kBlock)},
                nb::handle());
          },
          nb::rv_policy::reference_internal)
      .def("__repr__", [](const QuantizedActivations& a) {
        return "QuantizedActivations(rows=" + std::to_string(a.rows) + ", k=" + std::to_string(a.k) + ")";
      });

  m.def(
      "quantize",
      [](const Input& x, std::optional<int> n_threads, std::optional<std::string> isa) {
        return quantize_checked(x, resolve_threads(n_threads), resolve_table(isa));
      },
      "x"_a, "n_threads"_a = nb::none(), "isa"_a = nb::none());

  m.def(
      "f32_to_f16",
      [](const Input& x, std::optional<std::string> isa) {
        const float* xd = require<float>(x, "x", 1);
        const int64_t n = static_cast<int64_t>(x.shape(0));
        if (n % 16 != 0) throw nb::value_error(("x holds " + std::to_string(n) + " values; need a multiple of 16").c_str());
        std::vector<uint16_t> h(static_cast<size_t>(n));
        resolve_table(isa).f32_to_f16(xd, h.data(), n);
        return to_numpy(std::move(h), {static_cast<size_t>(n)});
      },
      "x"_a, "isa"_a = nb::none());

  m.def(
      "activations_from_int8",
      [](const Input& q, const Input& s) {
        const int8_t* qd = require<int8_t>(q, "q", 2);
        const float* sd = require<float>(s, "scale", 1);
        const int64_t rows = static_cast<int64_t>(q.shape(0)), k = static_cast<int64_t>(q.shape(1));
        if (rows < 1) throw nb::value_error("q must have at least one row");
        check_k(k, "q.shape[1] (K)");
        if (static_cast<int64_t>(s.shape(0)) != rows)
          throw nb::value_error(("scale has " + std::to_string(s.shape(0)) + " values for " + std::to_string(rows) +
                                 " rows of q").c_str());
        for (int64_t b = 0; b < rows; ++b)
          if (!std::isfinite(sd[b]) || sd[b] == 0.0f)
            throw nb::value_error(("scale[" + std::to_string(b) + "] must be finite and non-zero").c_str());
        return activations_from_int8(qd, sd, rows, k);
      },
      "q"_a, "scale"_a);

  m.def(
      "matmul",
      [](const PackedWeights& w, const QuantizedActivations& a, std::optional<int> n_threads,
         std::optional<std::string> isa) { return matmul_checked(w, a, resolve_threads(n_threads), resolve_table(isa)); },
      "w"_a, "a"_a, "n_threads"_a = nb::none(), "isa"_a = nb::none());

  m.def(
      "linear",
      [](const PackedWeights& w, const Input& x, std::optional<int> n_threads, std::optional<std::string> isa) {
        const int threads = resolve_threads(n_threads);
        const kernels::KernelTable& t = resolve_table(isa);
        return matmul_checked(w, quantize_checked(x, threads, t), threads, t);
      },
      "w"_a, "x"_a, "n_threads"_a = nb::none(), "isa"_a = nb::none());

  m.def(
      "pack_int8",
      [](const Input& w, const Input& scales, bool binary, std::optional<int> n_threads) {
        const int8_t* wd = require<int8_t>(w, "w", 2);
        const float* sd = require<float>(scales, "scale", 2);
        const int64_t n = static_cast<int64_t>(w.shape(0)), k = static_cast<int64_t>(w.shape(1));
        const int64_t groups = static_cast<int64_t>(scales.shape(1));
        if (n < 1) throw nb::value_error("w must have at least one row");
        check_k(k, "w.shape[1] (K)");
        if (static_cast<int64_t>(scales.shape(0)) != n || groups < 1 || k % (groups * kernels::kBlock) != 0)
          throw nb::value_error(("scale has shape (" + std::to_string(scales.shape(0)) + ", " +
                                 std::to_string(groups) + "); for w of shape (" + std::to_string(n) + ", " +
                                 std::to_string(k) + ") it needs n rows and a group count that splits k into " +
                                 "multiples of 128")
                                    .c_str());
        const int threads = resolve_threads(n_threads);
        nb::gil_scoped_release release;
        return pack_int8(binary ? kernels::Format::kBinary : kernels::Format::kTernary, wd, n, k, sd,
                         k / (groups * kernels::kBlock), threads);
      },
      "w"_a, "scale"_a, "binary"_a, "n_threads"_a = nb::none());

  def_repack(m, "repack_tq2_0", repack_tq2_0, "GGUF TQ2_0 tensor data -> ternary weights.");
  def_repack(m, "repack_tq1_0", repack_tq1_0, "GGUF TQ1_0 tensor data -> ternary weights.");
  m.def(
      "repack_i2_s",
      [](const Input& data, int64_t n, int64_t k, std::optional<int> n_threads, bool in_place) {
        const auto [p, size] = bytes_of(data);
        const int threads = resolve_threads(n_threads);
        std::shared_ptr<const void> owner;
        if (in_place)  // a reference to the array keeps its memory (say, a file mapping) alive
          owner = std::shared_ptr<const void>(new Input(data), [](const void* a) {
            nb::gil_scoped_acquire gil;
            delete static_cast<const Input*>(a);
          });
        nb::gil_scoped_release release;
        return repack_i2_s(p, size, n, k, threads, std::move(owner));
      },
      "data"_a, "n"_a, "k"_a, "n_threads"_a = nb::none(), "in_place"_a = false,
      "bitnet.cpp I2_S tensor data -> ternary weights; in_place views the codes instead of copying.");
  def_repack(m, "repack_q1_0", repack_q1_0, "GGUF Q1_0 tensor data -> binary weights.");

  m.def(
      "repack_hf_packed",
      [](const Input& packed, float weight_scale, std::optional<int> n_threads) {
        const uint8_t* p = require<uint8_t>(packed, "packed", 2);
        const int threads = resolve_threads(n_threads);
        nb::gil_scoped_release release;
        return repack_hf_packed(p, static_cast<int64_t>(packed.shape(0)), static_cast<int64_t>(packed.shape(1)),
                                weight_scale, threads);
      },
      "packed"_a, "weight_scale"_a, "n_threads"_a = nb::none());

  m.def("cpu_features", &kernels::cpu_features, "CPU features the kernels care about.");
  m.def(
      "available_isas",
      [] {
        std::vector<std::string> out;
        for (const kernels::KernelTable* t : kernels::available_tables()) out.emplace_back(t->isa);
        return out;
      },
      "Kernel ISAs this CPU and build can run, scalar first, preferred last.");
  m.def("active_isa", [] { return std::string(kernels::active_table().isa); });
  m.def("set_active_isa", [](const std::string& isa) { kernels::set_active_table(isa); }, "isa"_a);
  m.def("physical_cores", &physical_cores);
  m.def("get_num_threads", &default_threads);
  m.def("set_num_threads", [](int n) { g_threads.store(check_threads(n, "n")); }, "n"_a);
  m.def(
      "measure_read_bandwidth",
      [](int64_t nbytes, std::optional<int> n_threads, int repeats) {
        if (nbytes < 1) throw nb::value_error("nbytes must be positive");
        if (repeats < 1) throw nb::value_error("repeats must be positive");
        const int threads = resolve_threads(n_threads);
        nb::gil_scoped_release release;
        return measure_read_bandwidth(nbytes, threads, repeats);
      },
      "nbytes"_a, "n_threads"_a = nb::none(), "repeats"_a = 3,
      "Streaming read bandwidth in bytes/s, best of `repeats` passes over an nbytes buffer.");

  bind_model(m);
}
