#pragma once
// Shape ops, as in PyTorch:
//   reshape(x, {dims})                    torch.reshape; one size may be -1. A view: no copy.
//   flatten(x, start_dim=0, end_dim=-1)   torch.flatten: dims start..end folded into one; a
//                                         0-d tensor becomes [1]. A view: no copy.
//   concat({xs...}, dim=0)                torch.cat: sizes equal except along dim (a
//                                         std::vector of Vars or a braced list).
//   slice(x, dim, start, end)             x.narrow(dim, start, end - start), i.e. Python's
//                                         x[..., start:end] along dim (negative start/end count
//                                         from the end); ShapeError when out of range.
// Backward: reshape/flatten pass the gradient through; concat hands each input its block of
// the gradient; slice adds the gradient into the sliced block of a zeroed buffer.
// Along dim, a tensor is seen as [outer, size * inner] (row-major), so that concat and slice
// copy blocks of columns of a matrix with Eigen.

#include <initializer_list>
#include <span>
#include <vector>

#include "tapegrad/ops/broadcast.hpp"
#include "tapegrad/tape.hpp"

namespace tapegrad {

namespace detail {
template <class T>
void pass_through_backward(OpContext<T>& c) {
  c.add_grad(0, c.grad_out().array());
}
}  // namespace detail

template <class T>
Var<T> reshape(const Var<T>& x, const std::vector<int64_t>& dims) {
  const Tensor<T> view = x.value().reshape(dims);  // "reshape: [2,3] (6 elements) to ..."
  return x.tape().record_view("reshape", view, {x}, &detail::pass_through_backward<T>, Reads::none);
}
template <class T>
Var<T> reshape(const Var<T>& x, std::initializer_list<int64_t> dims) {
  return reshape(x, std::vector<int64_t>(dims));
}
template <class T>
Var<T> reshape(const Var<T>& x, const Shape& shape) {
  return reshape(x, std::vector<int64_t>(shape.dims().begin(), shape.dims().end()));
}

template <class T>
Var<T> flatten(const Var<T>& x, int64_t start_dim = 0, int64_t end_dim = -1) {
  const Shape s = x.shape();
  std::vector<int64_t> dims;
  if (s.rank() == 0) {  // torch: a 0-d tensor flattens to [1]; dims 0 and -1 are allowed
    if ((start_dim != 0 && start_dim != -1) || (end_dim != 0 && end_dim != -1))
      detail::fail<ShapeError>("flatten: start_dim ", start_dim, ", end_dim ", end_dim,
                               " out of range for shape []");
    dims = {1};
  } else {
    const int a = detail::normalize_dim("flatten", s, start_dim);
    const int b = detail::normalize_dim("flatten", s, end_dim);
    if (a > b)
      detail::fail<ShapeError>("flatten: start_dim ", start_dim, " comes after end_dim ", end_dim,
                               " for shape ", s);
    int64_t folded = 1;
    for (int i = 0; i < s.rank(); ++i) {
      if (i < a || i > b)
        dims.push_back(s[i]);
      else
        folded *= s[i];
      if (i == b) dims.push_back(folded);
    }
  }
  const Tensor<T> view = x.value().reshape(dims);
  return x.tape().record_view("flatten", view, {x}, &detail::pass_through_backward<T>, Reads::none);
}

template <class T>
Var<T> concat(std::span<const Var<T>> xs, int64_t dim = 0) {
  if (xs.empty()) detail::fail<ShapeError>("concat: no tensors to concatenate");
  const Shape first = xs[0].shape();
  if (first.rank() == 0)
    detail::fail<ShapeError>("concat: tensor 0 has shape []: 0-d tensors cannot be concatenated");
  const int d = detail::normalize_dim("concat", first, dim);
  Shape out = first;
  out[d] = 0;
  for (size_t k = 0; k < xs.size(); ++k) {
    const Shape& s = xs[k].shape();
    bool fits = s.rank() == first.rank();
    for (int i = 0; fits && i < s.rank(); ++i) fits = i == d || s[i] == first[i];
    if (!fits)
      detail::fail<ShapeError>("concat: tensor ", k, " has shape ", s, " but tensor 0 has ", first,
                               ": sizes must match except in dim ", d);
    out[d] += s[d];
  }
  Var<T> y = xs[0].tape().record(
      "concat", out, xs,
      [](OpContext<T>& c) {
        const Shape& ys = c.value().shape();
        const detail::DimSplit split = detail::split_at(ys, static_cast<int>(c.node().ints[0]));
        const auto G = c.grad_out().matrix(split.outer, split.size * split.inner);
        int64_t col = 0;
        for (size_t k = 0; k < c.node().inputs.size(); ++k) {
          const int64_t w =
              c.input(static_cast<int>(k)).shape()[static_cast<int>(c.node().ints[0])] *
              split.inner;
          c.add_grad_matrix(static_cast<int>(k), split.outer, w, G.middleCols(col, w));
          col += w;
        }
      },
      Reads::none);
  y.node().ints.push_back(d);
  const detail::DimSplit split = detail::split_at(out, d);
  auto Y = y.value().matrix(split.outer, split.size * split.inner);
  int64_t col = 0;
  for (const Var<T>& x : xs) {
    const int64_t w = x.shape()[d] * split.inner;
    Y.middleCols(col, w) = x.value().matrix(split.outer, w);
    col += w;
  }
  return y;
}

template <class T>
Var<T> concat(const std::vector<Var<T>>& xs, int64_t dim = 0) {
  return concat(std::span<const Var<T>>(xs.data(), xs.size()), dim);
}
// concat({a, b}, 1), as torch.cat({a, b}, 1)
template <class T>
Var<T> concat(std::initializer_list<Var<T>> xs, int64_t dim = 0) {
  return concat(std::span<const Var<T>>(xs.begin(), xs.size()), dim);
}

template <class T>
Var<T> slice(const Var<T>& x, int64_t dim, int64_t start, int64_t end) {
  const Shape s = x.shape();
  if (s.rank() == 0) detail::fail<ShapeError>("slice: cannot slice a 0-d tensor (shape [])");
  const int d = detail::normalize_dim("slice", s, dim);
  const int64_t n = s[d];
  const int64_t a = start < 0 ? start + n : start, b = end < 0 ? end + n : end;
  if (a < 0 || b > n || a > b)
    detail::fail<ShapeError>("slice: [", start, ":", end, "] out of range for dim ", dim,
                             " of size ", n, " in shape ", s);
  Shape out = s;
  out[d] = b - a;
  Var<T> y = x.tape().record(
      "slice", out, {x},
      [](OpContext<T>& c) {
        const int d = static_cast<int>(c.node().ints[0]);
        const int64_t a = c.node().ints[1];
        const detail::DimSplit in = detail::split_at(c.input(0).shape(), d);
        const int64_t len = c.value().shape()[d];
        Tensor<T>& gx = c.grad_in(0);
        gx.matrix(in.outer, in.size * in.inner).middleCols(a * in.inner, len * in.inner) +=
            c.grad_out().matrix(in.outer, len * in.inner);
      },
      Reads::none);
  y.node().ints.push_back(d);
  y.node().ints.push_back(a);
  const detail::DimSplit in = detail::split_at(s, d);
  y.value().matrix(in.outer, (b - a) * in.inner) =
      x.value().matrix(in.outer, n * in.inner).middleCols(a * in.inner, (b - a) * in.inner);
  return y;
}

}  // namespace tapegrad
