#pragma once
/// \file
/// dst = lhs · rhs (or +=): the GEMM behind linear, matmul and the recurrent cells.
///
/// One thread's product is gemm_rows: tapegrad's packed kernel (gemm_kernel.hpp) for float and
/// double operands with pointer access and at least 2 x MR rows and NR columns (16 x 48 floats
/// with AVX-512), else Eigen's GEMM; narrower products waste the kernel's padded blocks (on
/// 128 x 16 x 256 it reached 92 GFLOP/s, Eigen's 150).
///
/// At two or more threads a large product is cut among them, each thread running the kernel chosen
/// for the whole product on its block (Eigen runs sequentially inside a parallel region): by
/// columns of dst when it is wider than tall, else by rows. Each thread packs all of the operand
/// that is not cut; packing the right operand costs more (Eigen's was 20 % of the deep MLPs' GEMM
/// time), so a wide product, e.g. a layer's 128 x 256 output from its 256 x 256 weight, is cut so
/// that each thread packs half of it. On a 2-core Zen 4 the row cut beat Eigen's own parallel GEMM
/// on the deep MLPs' 128x256x256 (161-175 GFLOP/s vs 122-150, benchmarks/core.cpp's BM_GemmSplit);
/// on a 2-core Zen 5 cutting wide products by columns took the 2-thread deep-mlp-sigmoid step from
/// 7.0 to 6.8 ms and wide-mlp's from 10.9 to 10.3 ms (medians of 6 alternated runs of
/// bench_workloads). Every block is computed the same way whichever thread takes it, so the results
/// are bit-identical run to run for a thread count.
///
/// With EIGEN_USE_BLAS the product goes whole to the system BLAS, which has its own threads.

#include <Eigen/Core>
#include <algorithm>
#include <cstdint>
#include <type_traits>

#include "tapegrad/gemm_kernel.hpp"
#include "tapegrad/threads.hpp"

namespace tapegrad::detail {

// Below this many multiply-adds (or 32 rows and 32 columns) a product stays whole: splitting
// costs more than it saves.
inline constexpr int64_t gemm_split_min_macs = int64_t{1} << 20;

// Whether the operands can go to gemm_packed: float or double, all three addressable by pointer
// and strides.
template <class Dst, class Lhs, class Rhs>
constexpr bool packable() {
  using D = std::decay_t<Dst>;
  using L = std::decay_t<Lhs>;
  using R = std::decay_t<Rhs>;
  using T = typename D::Scalar;
  constexpr auto direct = [](int flags) { return (flags & Eigen::DirectAccessBit) != 0; };
  return (std::is_same_v<T, float> || std::is_same_v<T, double>) &&
         std::is_same_v<T, typename L::Scalar> && std::is_same_v<T, typename R::Scalar> &&
         direct(Eigen::internal::traits<D>::Flags) && direct(Eigen::internal::traits<L>::Flags) &&
         direct(Eigen::internal::traits<R>::Flags);
}

// Whether a product of rows x cols results goes to gemm_packed: where it measured faster than
// Eigen's, at least two row blocks and one column panel (narrower products waste its padded
// blocks). Decided on the whole product, also for the blocks a thread computes of it, so a
// result's bits do not depend on the thread count.
template <class T>
bool packed_pays(int64_t rows, int64_t cols) {
  return rows >= 2 * GemmKernel<T>::MR && cols >= GemmKernel<T>::NR;
}

// One thread's product: gemm_packed when `packed` and the operands allow it, else Eigen's.
template <class Dst, class Lhs, class Rhs>
void gemm_one(Dst& dst, const Lhs& lhs, const Rhs& rhs, bool accumulate, bool packed) {
#ifndef EIGEN_USE_BLAS
  if constexpr (packable<Dst, Lhs, Rhs>()) {
    if (packed && dst.colStride() == 1) {
      gemm_packed(dst.data(), dst.rowStride(), dst.rows(), dst.cols(), lhs.cols(), lhs.data(),
                  lhs.rowStride(), lhs.colStride(), rhs.data(), rhs.rowStride(), rhs.colStride(),
                  accumulate);
      return;
    }
  }
#else
  (void)packed;
#endif
  if (accumulate)
    dst.noalias() += lhs * rhs;
  else
    dst.noalias() = lhs * rhs;
}

// One thread's product (gemm_one, the kernel chosen by its shape).
template <class Dst, class Lhs, class Rhs>
void gemm_rows(Dst& dst, const Lhs& lhs, const Rhs& rhs, bool accumulate) {
  using T = typename std::decay_t<Dst>::Scalar;
  gemm_one(dst, lhs, rhs, accumulate, packed_pays<T>(dst.rows(), dst.cols()));
}

// dst must be a writable Eigen expression (a Map or a Block) of lhs.rows() x rhs.cols().
template <class Dst, class Lhs, class Rhs>
void gemm(Dst&& dst, const Lhs& lhs, const Rhs& rhs, bool accumulate) {
#if defined(_OPENMP) && !defined(EIGEN_USE_BLAS)
  const int64_t m = dst.rows(), n = dst.cols();
  const int threads = get_num_threads();
  if (threads > 1 && std::max(m, n) >= 32 && m * n * lhs.cols() >= gemm_split_min_macs) {
    const bool by_cols = n > m;
    const bool packed = packed_pays<typename std::decay_t<Dst>::Scalar>(m, n);
    const int64_t len = by_cols ? n : m;
    run_team(threads, [&](int64_t t, int64_t nt) {
      // Block edges on multiples of 16, the kernel's register-block size.
      const int64_t lo = len * t / nt / 16 * 16;
      const int64_t hi = t + 1 == nt ? len : len * (t + 1) / nt / 16 * 16;
      if (hi <= lo) return;
      if (by_cols) {
        auto block = dst.middleCols(lo, hi - lo);
        gemm_one(block, lhs, rhs.middleCols(lo, hi - lo), accumulate, packed);
      } else {
        auto block = dst.middleRows(lo, hi - lo);
        gemm_one(block, lhs.middleRows(lo, hi - lo), rhs, accumulate, packed);
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
