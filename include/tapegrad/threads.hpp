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

// Whether a loop over n elements should be split among the threads: more than one thread, n
// above parallel_threshold, and not already inside a parallel region. Below it the loop opens
// no OpenMP region at all (each region ends in a barrier).
inline bool split_among_threads(int64_t n) {
#ifdef _OPENMP
  return n > parallel_threshold && omp_get_max_threads() > 1 && !omp_in_parallel();
#else
  (void)n;
  return false;
#endif
}

// Runs f(offset, length) over [0, n) in pieces of `chunk` elements, on every thread when
// split_among_threads(n). Each piece is one call on one thread, so what f computes per piece
// does not depend on the thread count (reductions: one partial result per piece, combined in
// piece order).
template <class F>
void for_each_chunk(int64_t n, int64_t chunk, F&& f) {
  const int64_t pieces = (n + chunk - 1) / chunk;
  if (!split_among_threads(n)) {
    for (int64_t i = 0; i < pieces; ++i) f(i * chunk, std::min(chunk, n - i * chunk));
    return;
  }
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < pieces; ++i) f(i * chunk, std::min(chunk, n - i * chunk));
}

// Runs f(offset, length) over [0, n) for an elementwise loop (every output element a function
// of the same element of the inputs, no reduction): one call for the whole range when it is
// small, else one contiguous slice per thread (slice bounds on multiples of 64 elements, whole
// cache lines of floats). The result does not depend on how [0, n) was cut.
template <class F>
void for_each_slice(int64_t n, F&& f) {
  if (!split_among_threads(n)) {
    if (n > 0) f(int64_t(0), n);
    return;
  }
#ifdef _OPENMP
#pragma omp parallel
  {
    const int64_t t = omp_get_thread_num(), nt = omp_get_num_threads();
    const int64_t per = (n + nt - 1) / nt;
    const int64_t step = (per + 63) / 64 * 64;
    const int64_t lo = std::min(n, t * step), hi = std::min(n, lo + step);
    if (hi > lo) f(lo, hi - lo);
  }
#endif
}
}  // namespace detail

}  // namespace tapegrad
