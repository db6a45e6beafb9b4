#pragma once
/// \file
/// One switch for both thread pools: Eigen's GEMM and our own OpenMP loops.

#include <Eigen/Core>
#include <algorithm>
#include <cstdint>

#ifdef _OPENMP
#include <omp.h>
#endif

namespace tapegrad {

/// Sets the threads of Eigen's GEMM and of tapegrad's OpenMP loops to n (at least 1).
inline void set_num_threads(int n) {
  if (n < 1) n = 1;
  Eigen::setNbThreads(n);
#ifdef _OPENMP
  omp_set_num_threads(n);
#endif
}

/// The threads OpenMP loops use (1 without OpenMP).
inline int get_num_threads() {
#ifdef _OPENMP
  return omp_get_max_threads();
#else
  return 1;
#endif
}

/// Elementwise loops go parallel only above this many elements: below it, waking threads
/// costs more than the loop.
inline constexpr int64_t parallel_threshold = 1 << 15;

namespace detail {
// The calling thread's number in the current parallel region (0 outside one): an index into
// per-thread scratch buffers.
inline int thread_index() {
#ifdef _OPENMP
  return omp_get_thread_num();
#else
  return 0;
#endif
}

// Runs f(offset, length) over [0, n) in pieces of `chunk` elements, on every thread when n is
// above parallel_threshold. Each piece is one call on one thread, so what f computes per piece
// does not depend on the thread count.
template <class F>
void for_each_chunk(int64_t n, int64_t chunk, F&& f) {
  const int64_t pieces = (n + chunk - 1) / chunk;
#pragma omp parallel for schedule(static) if (n > parallel_threshold)
  for (int64_t i = 0; i < pieces; ++i) f(i * chunk, std::min(chunk, n - i * chunk));
}
}  // namespace detail

}  // namespace tapegrad
