#pragma once
/// \file
/// dst = lhs · rhs (or +=): the GEMM behind linear, matmul and the recurrent cells.
///
/// At two or more threads a large product is split by rows of dst: each thread multiplies its
/// own block of rows with Eigen's single-threaded GEMM (Eigen runs sequentially inside a parallel
/// region). On this 2-core Zen 4 machine the split beats Eigen's own parallel GEMM where it
/// matters most, the deep MLPs' 128x256x256 (161-175 GFLOP/s vs 122-150 in three runs of
/// benchmarks/core.cpp's BM_GemmSplit), and matches or beats it on the larger shapes within the
/// machine's noise. Every row block is computed the same way whichever thread takes it, so the
/// results are bit-identical run to run for a thread count.
///
/// With EIGEN_USE_BLAS the product goes whole to the system BLAS, which has its own threads.

#include <Eigen/Core>
#include <cstdint>

#include "tapegrad/threads.hpp"

namespace tapegrad::detail {

// Below this many multiply-adds (or 32 rows) a product stays whole: splitting costs more than
// it saves.
inline constexpr int64_t gemm_split_min_macs = int64_t{1} << 20;

template <class Dst, class Lhs, class Rhs>
void gemm_rows(Dst& dst, const Lhs& lhs, const Rhs& rhs, bool accumulate) {
  if (accumulate)
    dst.noalias() += lhs * rhs;
  else
    dst.noalias() = lhs * rhs;
}

// dst must be a writable Eigen expression (a Map or a Block) of lhs.rows() x rhs.cols().
template <class Dst, class Lhs, class Rhs>
void gemm(Dst&& dst, const Lhs& lhs, const Rhs& rhs, bool accumulate) {
#if defined(_OPENMP) && !defined(EIGEN_USE_BLAS)
  const int64_t m = dst.rows();
  const int threads = get_num_threads();
  if (threads > 1 && m >= 32 && m * dst.cols() * lhs.cols() >= gemm_split_min_macs) {
    run_team(threads, [&](int64_t t, int64_t nt) {
      // Block edges on multiples of 16 rows, the kernel's register-block size.
      const int64_t r0 = m * t / nt / 16 * 16;
      const int64_t r1 = t + 1 == nt ? m : m * (t + 1) / nt / 16 * 16;
      if (r1 > r0) {
        auto block = dst.middleRows(r0, r1 - r0);
        gemm_rows(block, lhs.middleRows(r0, r1 - r0), rhs, accumulate);
      }
    });
    return;
  }
  // A product that stays whole runs on one thread: Eigen's own parallel GEMM would compute other
  // bits than this (its blocking depends on its thread count) and would escape run_team's watch
  // on contention.
  OneThread one;
#endif
  gemm_rows(dst, lhs, rhs, accumulate);
}

// Many independent products (the batches of a batched matmul, the heads of attention): f(i,
// split) computes product i. With two threads or more, at least two products and enough work in
// total, the products are shared among the threads and each stays on its thread (split = false:
// use gemm_rows); otherwise they run one after another and each may be split by rows
// (split = true: use gemm). Product i is computed the same way on whichever thread runs it.
template <class F>
void for_each_product(int64_t count, int64_t macs_each, F&& f) {
  if (count > 1 && get_num_threads() > 1 && !inside_team() &&
      count * macs_each >= gemm_split_min_macs) {
    parallel_for(count, true, [&](int64_t i) { f(i, false); });
    return;
  }
  for (int64_t i = 0; i < count; ++i) f(i, true);
}

// gemm (split = true) or gemm_rows (split = false), for the body of for_each_product.
template <class Dst, class Lhs, class Rhs>
void gemm(bool split, Dst&& dst, const Lhs& lhs, const Rhs& rhs, bool accumulate) {
  if (split)
    gemm(dst, lhs, rhs, accumulate);
  else
    gemm_rows(dst, lhs, rhs, accumulate);
}

}  // namespace tapegrad::detail
