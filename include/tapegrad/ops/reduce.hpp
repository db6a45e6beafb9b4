#pragma once
/// \file
/// Reductions, as torch.sum / torch.mean / torch.max(dim):
///   sum(x)                      -> scalar (shape []);  dx = g everywhere
///   sum(x, dim, keepdim=false)  -> x without dim (or with size 1 there); dx = g broadcast back
///   mean(x), mean(x, dim, ...)  -> sum / count; dx = g / count (NaN for an empty reduction, as
///                                  torch)
///   max(x, dim, keepdim=false)  -> the largest value along dim; the whole gradient goes to the
///                                  FIRST maximum in row-major order (NaN counts as the maximum,
///                                  as torch.max propagates NaN)
/// dim may be negative (counted from the end). A 0-d tensor accepts dim 0 or -1, as in torch.
///
/// Along dim, x is seen as [outer, size, inner] (row-major): the reduced value [o, i] collects
/// x[o, 0..size-1, i]. Rows are reduced with Eigen's vectorised row/column sums; the backward of
/// sum and mean is one replicate expression.

#include <Eigen/Core>
#include <cmath>
#include <cstdint>

#include "tapegrad/ops/broadcast.hpp"
#include "tapegrad/tape.hpp"

namespace tapegrad {

namespace detail {

// The [outer, size, inner] view of x along dim, and the reduced output shape.
struct ReduceLayout {
  DimSplit split;
  Shape out;
};
inline ReduceLayout reduce_layout(const char* op, const Shape& s, int64_t dim, bool keepdim) {
  if (s.rank() == 0) {  // a 0-d tensor reduces to itself along dim 0 / -1
    if (dim != 0 && dim != -1)
      fail<ShapeError>(op, ": dim ", dim, " out of range for shape [] (rank 0)");
    return {DimSplit{}, Shape{}};
  }
  const int d = normalize_dim(op, s, dim);
  ReduceLayout r{split_at(s, d), Shape{}};
  for (int i = 0; i < s.rank(); ++i) {
    if (i != d)
      r.out.push_back(s[i]);
    else if (keepdim)
      r.out.push_back(1);
  }
  return r;
}

// Y[o, i] = scale * sum_j X[o, j, i]
template <class T>
void sum_rows(const T* x, T* y, const DimSplit& s, T scale) {
  using RowMajor = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  if (s.inner == 1) {
    Eigen::Map<Eigen::Matrix<T, Eigen::Dynamic, 1>>(y, s.outer) =
        Eigen::Map<const RowMajor>(x, s.outer, s.size).rowwise().sum() * scale;
    return;
  }
  for (int64_t o = 0; o < s.outer; ++o)
    Eigen::Map<Eigen::Matrix<T, 1, Eigen::Dynamic>>(y + o * s.inner, s.inner) =
        Eigen::Map<const RowMajor>(x + o * s.size * s.inner, s.size, s.inner).colwise().sum() *
        scale;
}

// Backward of sum/mean along a dim: dX[o, j, i] += scale * G[o, i] (scale in scalars[0]).
template <class T>
void sum_dim_backward(OpContext<T>& c) {
  const Shape& xs = c.input(0).shape();
  const DimSplit s = xs.rank() == 0 ? DimSplit{} : split_at(xs, static_cast<int>(c.node().ints[0]));
  const T scale = static_cast<T>(c.scalar(0));
  c.add_grad_matrix(0, s.outer, s.size * s.inner,
                    c.grad_out().matrix(s.outer, s.inner).replicate(1, s.size) * scale);
}

template <class T>
Var<T> reduce_dim(const char* op, const Var<T>& x, int64_t dim, bool keepdim, bool mean) {
  const Shape xs = x.shape();
  const ReduceLayout r = reduce_layout(op, xs, dim, keepdim);
  const T scale = mean ? T(1) / static_cast<T>(r.split.size) : T(1);
  Var<T> y = x.tape().record(op, r.out, {x}, &sum_dim_backward<T>, Reads::none);
  y.node().ints.push_back(xs.rank() == 0 ? 0 : normalize_dim(op, xs, dim));
  y.node().scalars[0] = scale;
  sum_rows(x.value().data(), y.value().data(), r.split, scale);
  return y;
}

}  // namespace detail

/// Sum of all elements, a 0-d result.
template <class T>
Var<T> sum(const Var<T>& x) {
  Var<T> y = x.tape().record(
      "sum", Shape{}, {x},
      [](OpContext<T>& c) {
        c.add_grad(
            0, Eigen::Array<T, Eigen::Dynamic, 1>::Constant(c.input(0).numel(), c.grad_out()[0]));
      },
      Reads::none);
  y.value()[0] = x.value().array().sum();
  return y;
}

/// Mean of all elements, a 0-d result (NaN for an empty tensor, as torch).
template <class T>
Var<T> mean(const Var<T>& x) {
  Var<T> y = x.tape().record(
      "mean", Shape{}, {x},
      [](OpContext<T>& c) {
        const int64_t n = c.input(0).numel();
        c.add_grad(0, Eigen::Array<T, Eigen::Dynamic, 1>::Constant(
                          n, c.grad_out()[0] / static_cast<T>(n)));
      },
      Reads::none);
  const Tensor<T>& xv = x.value();
  y.value()[0] = xv.array().sum() / static_cast<T>(xv.numel());
  return y;
}

/// Sum along dim (negative counts from the end), keeping it as size 1 when keepdim; ShapeError if
/// dim is out of range.
template <class T>
Var<T> sum(const Var<T>& x, int64_t dim, bool keepdim = false) {
  return detail::reduce_dim("sum", x, dim, keepdim, false);
}

/// Mean along dim (negative counts from the end), keeping it as size 1 when keepdim; ShapeError if
/// dim is out of range.
template <class T>
Var<T> mean(const Var<T>& x, int64_t dim, bool keepdim = false) {
  return detail::reduce_dim("mean", x, dim, keepdim, true);
}

/// Largest value along dim. The indices of the maxima (j in [outer, size, inner]) are kept in
/// the node's ints, one per output element after the dim itself at ints[0].
template <class T>
Var<T> max(const Var<T>& x, int64_t dim, bool keepdim = false) {
  const Shape xs = x.shape();
  const detail::ReduceLayout r = detail::reduce_layout("max", xs, dim, keepdim);
  const detail::DimSplit s = r.split;
  if (s.size == 0)
    detail::fail<ShapeError>("max: dim ", dim, " of shape ", xs, " is empty: there is no maximum");
  Var<T> y = x.tape().record("max", r.out, {x}, [](OpContext<T>& c) {
    const Shape& xs = c.input(0).shape();
    const auto& ints = c.node().ints;
    const detail::DimSplit s =
        xs.rank() == 0 ? detail::DimSplit{} : detail::split_at(xs, static_cast<int>(ints[0]));
    const T* g = c.grad_out().data();
    T* gx = c.grad_in(0).data();
    for (int64_t o = 0; o < s.outer; ++o)
      for (int64_t i = 0; i < s.inner; ++i) {
        const int64_t k = o * s.inner + i;
        gx[(o * s.size + ints[static_cast<size_t>(k) + 1]) * s.inner + i] += g[k];
      }
  });
  auto& ints = y.node().ints;
  ints.resize(static_cast<size_t>(s.outer * s.inner) + 1);
  ints[0] = xs.rank() == 0 ? 0 : detail::normalize_dim("max", xs, dim);
  int64_t* arg = ints.data() + 1;
  const T* xd = x.value().data();
  T* yd = y.value().data();
  for (int64_t o = 0; o < s.outer; ++o) {
    T* yo = yd + o * s.inner;
    int64_t* ao = arg + o * s.inner;
    const T* xo = xd + o * s.size * s.inner;
    for (int64_t i = 0; i < s.inner; ++i) {
      yo[i] = xo[i];
      ao[i] = 0;
    }
    for (int64_t j = 1; j < s.size; ++j)  // rows in order: a later equal value never wins
      for (int64_t i = 0; i < s.inner; ++i) {
        const T v = xo[j * s.inner + i];
        if (v > yo[i] || (std::isnan(v) && !std::isnan(yo[i]))) {
          yo[i] = v;
          ao[i] = j;
        }
      }
  }
  return y;
}

}  // namespace tapegrad
