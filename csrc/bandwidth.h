// The machine's memory read bandwidth, measured the way decode reads weights: streaming, every
// byte once, split over threads. Benchmarks quote kernel speed as a fraction of it.
#pragma once

#include <cstdint>

namespace tritlm {

// Best of `repeats` passes over a fresh buffer of nbytes, in bytes per second.
double measure_read_bandwidth(int64_t nbytes, int n_threads, int repeats);

}  // namespace tritlm
