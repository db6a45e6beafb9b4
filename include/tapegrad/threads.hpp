#pragma once
// One switch for both thread pools: Eigen's GEMM and our own OpenMP loops.

#include <Eigen/Core>

#ifdef _OPENMP
#include <omp.h>
#endif

namespace tapegrad {

inline void set_num_threads(int n) {
  if (n < 1) n = 1;
  Eigen::setNbThreads(n);
#ifdef _OPENMP
  omp_set_num_threads(n);
#endif
}

inline int get_num_threads() {
#ifdef _OPENMP
  return omp_get_max_threads();
#else
  return 1;
#endif
}

// Elementwise loops go parallel only above this many elements: below it, waking threads
// costs more than the loop.
inline constexpr int64_t parallel_threshold = 1 << 15;

}  // namespace tapegrad
