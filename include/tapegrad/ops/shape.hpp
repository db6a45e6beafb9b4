#pragma once
/// \file
/// Shape ops, as in PyTorch:
///   reshape(x, {dims})                    torch.reshape; one size may be -1. A view: no copy.
///   flatten(x, start_dim=0, end_dim=-1)   torch.flatten: dims start..end folded into one; a
///                                         0-d tensor becomes [1]. A view: no copy.
///   concat({xs...}, dim=0)                torch.cat: sizes equal except along dim (a
///                                         std::vector of Vars or a braced list).
///   slice(x, dim, start, end)             x.narrow(dim, start, end - start), i.e. Python's
///                                         x[..., start:end] along dim (negative start/end count
///                                         from the end); ShapeError when out of range.
///   split(x, size or {sizes}, dim=0)      torch.split: consecutive slices along dim of `size`
///                                         elements (the last one shorter) or of the given sizes.
///   permute(x, {dims})                    torch.permute: output dim i is input dim dims[i]. A copy
///                                         (tensors are contiguous), one pass.
///   transpose(x, dim0, dim1)              torch.transpose: permute swapping two dims
///                                         (transpose(x) in linalg.hpp is the 2-D x.t()).
/// Backward: reshape/flatten pass the gradient through; concat hands each input its block of
/// the gradient; slice adds the gradient into the sliced block of a zeroed buffer; permute copies
/// the gradient back through the inverse permutation.
/// Along dim, a tensor is seen as [outer, size * inner] (row-major), so that concat and slice
/// copy blocks of columns of a matrix with Eigen.

#include <algorithm>
#include <array>
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

///@{
/// x with another shape of the same number of elements (one size may be -1), a view sharing x's
/// storage (torch.reshape); ShapeError if the sizes do not fit.
template <class T>
Var<T> reshape(const Var<T>& x, std::span<const int64_t> dims) {
  const Tensor<T> view = x.value().reshape(dims);  // "reshape: [2,3] (6 elements) to ..."
  return x.tape().record_view("reshape", view, {x}, &detail::pass_through_backward<T>, Reads::none);
}
template <class T>
Var<T> reshape(const Var<T>& x, const std::vector<int64_t>& dims) {
  return reshape(x, std::span<const int64_t>(dims));
}
template <class T>
Var<T> reshape(const Var<T>& x, std::initializer_list<int64_t> dims) {
  return reshape(x, std::span<const int64_t>(dims.begin(), dims.size()));
}
template <class T>
Var<T> reshape(const Var<T>& x, const Shape& shape) {
  return reshape(x, shape.dims());
}
///@}

/// Dims start_dim..end_dim folded into one (torch.flatten), a view; a 0-d tensor becomes [1].
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

///@{
/// xs joined along dim (torch.cat): sizes equal except along dim (ShapeError otherwise).
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
///@}
/// concat({a, b}, 1), as torch.cat({a, b}, 1)
template <class T>
Var<T> concat(std::initializer_list<Var<T>> xs, int64_t dim = 0) {
  return concat(std::span<const Var<T>>(xs.begin(), xs.size()), dim);
}

/// Elements start..end-1 along dim (x[..., start:end]; negative start/end count from the end);
/// ShapeError when out of range.
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

///@{
/// Consecutive slices along dim (torch.split): of split_size elements (the last one shorter) or of
/// the given sizes (which must add up to the dim's size, ShapeError otherwise).
template <class T>
std::vector<Var<T>> split(const Var<T>& x, const std::vector<int64_t>& sizes, int64_t dim = 0) {
  const Shape s = x.shape();
  if (s.rank() == 0) detail::fail<ShapeError>("split: cannot split a 0-d tensor (shape [])");
  const int d = detail::normalize_dim("split", s, dim);
  int64_t total = 0;
  for (int64_t n : sizes) {
    if (n < 0) detail::fail<ShapeError>("split: negative size ", n, " for shape ", s);
    total += n;
  }
  if (total != s[d])
    detail::fail<ShapeError>("split: sizes add up to ", total, " but dim ", dim, " of shape ", s,
                             " has ", s[d]);
  std::vector<Var<T>> out;
  int64_t start = 0;
  for (int64_t n : sizes) {
    out.push_back(slice(x, d, start, start + n));
    start += n;
  }
  return out;
}

template <class T>
std::vector<Var<T>> split(const Var<T>& x, int64_t split_size, int64_t dim = 0) {
  const Shape s = x.shape();
  if (s.rank() == 0) detail::fail<ShapeError>("split: cannot split a 0-d tensor (shape [])");
  const int64_t n = s[detail::normalize_dim("split", s, dim)];
  if (split_size <= 0 && n > 0)
    detail::fail<ShapeError>("split: split_size must be positive, got ", split_size);
  std::vector<int64_t> sizes;
  for (int64_t start = 0; start < n; start += split_size)
    sizes.push_back(std::min(split_size, n - start));
  if (sizes.empty()) sizes.push_back(0);  // torch: one empty piece
  return split(x, sizes, dim);
}
///@}

namespace detail {

// Walks the permuted shape (output dim i is input dim dims[i]) in row-major order, one row of
// its last dim at a time: f(out_offset, in_offset, n, in_step) for the n elements at out_offset,
// out_offset + 1, ... which sit at in_offset, in_offset + in_step, ... in the input.
template <class F>
void for_each_permuted_row(const Shape& in_shape, const std::vector<int64_t>& dims, F&& f) {
  const int r = in_shape.rank();
  if (r == 0) return f(int64_t{0}, int64_t{0}, int64_t{1}, int64_t{1});
  std::array<int64_t, Shape::max_rank> in_stride{}, size{}, stride{}, idx{};
  int64_t st = 1;
  for (int i = r - 1; i >= 0; --i) in_stride[static_cast<size_t>(i)] = st, st *= in_shape[i];
  int64_t total = 1;
  for (int i = 0; i < r; ++i) {
    const auto u = static_cast<size_t>(i), d = static_cast<size_t>(dims[u]);
    size[u] = in_shape[static_cast<int>(d)];
    stride[u] = in_stride[d];
    total *= size[u];
  }
  const int64_t n = size[static_cast<size_t>(r - 1)], step = stride[static_cast<size_t>(r - 1)];
  int64_t off = 0;
  for (int64_t o = 0; o < total; o += n) {
    f(o, off, n, step);
    for (int d = r - 2; d >= 0; --d) {  // odometer over the output dims above the last
      const auto u = static_cast<size_t>(d);
      off += stride[u];
      if (++idx[u] < size[u]) break;
      off -= stride[u] * size[u];
      idx[u] = 0;
    }
  }
}

}  // namespace detail

/// Output dim i is input dim dims[i] (torch.permute); a copy. ShapeError unless dims is a
/// permutation of 0..rank-1.
template <class T>
Var<T> permute(const Var<T>& x, const std::vector<int64_t>& dims) {
  const Shape s = x.shape();
  if (static_cast<int>(dims.size()) != s.rank())
    detail::fail<ShapeError>("permute: ", dims.size(), " dims given for shape ", s, " (rank ",
                             s.rank(), ")");
  std::array<bool, Shape::max_rank> seen{};
  Shape out = s;
  for (size_t i = 0; i < dims.size(); ++i) {
    const int d = detail::normalize_dim("permute", s, dims[i]);
    if (seen[static_cast<size_t>(d)])
      detail::fail<ShapeError>("permute: dim ", dims[i], " repeated for shape ", s);
    seen[static_cast<size_t>(d)] = true;
    out[static_cast<int>(i)] = s[d];
  }
  Var<T> y = x.tape().record(
      "permute", out, {x},
      [](OpContext<T>& c) {
        bool assign = false;  // a bijection: every input gradient element is written once
        T* gx = c.grad_in_uninitialized(0, assign).data();
        const T* g = c.grad_out().data();
        detail::for_each_permuted_row(c.input(0).shape(), c.node().ints,
                                      [&](int64_t o, int64_t i, int64_t n, int64_t step) {
                                        if (assign)
                                          for (int64_t j = 0; j < n; ++j)
                                            gx[i + j * step] = g[o + j];
                                        else
                                          for (int64_t j = 0; j < n; ++j)
                                            gx[i + j * step] += g[o + j];
                                      });
      },
      Reads::none);            // the input's shape only
  auto& ints = y.node().ints;  // the permutation, normalised
  ints.resize(dims.size());
  for (size_t i = 0; i < dims.size(); ++i) ints[i] = detail::normalize_dim("permute", s, dims[i]);
  const T* xv = x.value().data();
  T* yv = y.value().data();
  detail::for_each_permuted_row(s, ints, [&](int64_t o, int64_t i, int64_t n, int64_t step) {
    for (int64_t j = 0; j < n; ++j) yv[o + j] = xv[i + j * step];
  });
  return y;
}

/// permute swapping dims dim0 and dim1 (torch.transpose).
template <class T>
Var<T> transpose(const Var<T>& x, int64_t dim0, int64_t dim1) {
  const Shape s = x.shape();
  const int a = detail::normalize_dim("transpose", s, dim0);
  const int b = detail::normalize_dim("transpose", s, dim1);
  std::vector<int64_t> dims(static_cast<size_t>(s.rank()));
  for (int i = 0; i < s.rank(); ++i) dims[static_cast<size_t>(i)] = i;
  std::swap(dims[static_cast<size_t>(a)], dims[static_cast<size_t>(b)]);
  return permute(x, dims);
}

}  // namespace tapegrad
