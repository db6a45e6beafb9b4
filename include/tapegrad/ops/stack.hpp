#pragma once
/// \file
/// stack(xs, dim): torch.stack: k tensors of one shape s joined along a NEW dim inserted at
/// `dim` (0 <= dim <= rank, negative counts from rank + 1): the result has shape
/// s[:dim] + [k] + s[dim:]. Backward hands each input its block of the gradient.
///
/// Unlike reshaping every input to insert a size-1 dim and concatenating, stack records one node
/// and builds no shape vectors, so a recurrent layer can gather its T per-step outputs into
/// [T, N, H] (dim 0) or [N, T, H] (dim 1) without allocating per step.
/// Seen row-major, the output is [outer, k * inner] with outer = prod(s[:dim]) and
/// inner = prod(s[dim:]): input j fills columns j*inner .. (j+1)*inner of every row.

#include <array>
#include <initializer_list>
#include <span>
#include <vector>

#include "tapegrad/error.hpp"
#include "tapegrad/tape.hpp"

namespace tapegrad {

///@{
/// k tensors of one shape s joined along a new dim at dim: shape s[:dim] + [k] + s[dim:]
/// (torch.stack). ShapeError if the shapes differ or dim is out of range.
template <class T>
Var<T> stack(std::span<const Var<T>> xs, int64_t dim = 0) {
  if (xs.empty()) detail::fail<ShapeError>("stack: no tensors to stack");
  const Shape s = xs[0].shape();
  if (s.rank() >= Shape::max_rank)
    detail::fail<ShapeError>("stack: tensors of shape ", s, " would exceed rank ", Shape::max_rank);
  if (dim < -(s.rank() + 1) || dim > s.rank())
    detail::fail<ShapeError>("stack: dim ", dim, " out of range for stacking tensors of shape ", s,
                             " (allowed ", -(s.rank() + 1), " to ", s.rank(), ")");
  const int d = static_cast<int>(dim < 0 ? dim + s.rank() + 1 : dim);
  for (size_t k = 1; k < xs.size(); ++k)
    if (!(xs[k].shape() == s))
      detail::fail<ShapeError>("stack: tensor ", k, " has shape ", xs[k].shape(),
                               " but tensor 0 has ", s, ": all shapes must be equal");
  std::array<int64_t, Shape::max_rank> dims{};
  int64_t outer = 1, inner = 1;
  for (int i = 0, j = 0; i <= s.rank(); ++i) {
    if (i == d) {
      dims[static_cast<size_t>(i)] = static_cast<int64_t>(xs.size());
      continue;
    }
    dims[static_cast<size_t>(i)] = s[j];
    (j < d ? outer : inner) *= s[j];
    ++j;
  }
  const Shape out(std::span<const int64_t>(dims.data(), static_cast<size_t>(s.rank() + 1)));
  Var<T> y = xs[0].tape().record(
      "stack", out, xs,
      [](OpContext<T>& c) {
        const int64_t outer = c.node().ints[0], inner = c.node().ints[1];
        const int64_t k = static_cast<int64_t>(c.node().inputs.size());
        const auto G = c.grad_out().matrix(outer, k * inner);
        for (int64_t j = 0; j < k; ++j)
          c.add_grad_matrix(static_cast<int>(j), outer, inner, G.middleCols(j * inner, inner));
      },
      Reads::none);
  y.node().ints.push_back(outer);
  y.node().ints.push_back(inner);
  const int64_t k = static_cast<int64_t>(xs.size());
  auto Y = y.value().matrix(outer, k * inner);
  for (int64_t j = 0; j < k; ++j)
    Y.middleCols(j * inner, inner) = xs[static_cast<size_t>(j)].value().matrix(outer, inner);
  return y;
}

template <class T>
Var<T> stack(const std::vector<Var<T>>& xs, int64_t dim = 0) {
  return stack(std::span<const Var<T>>(xs.data(), xs.size()), dim);
}
template <class T>
Var<T> stack(std::initializer_list<Var<T>> xs, int64_t dim = 0) {
  return stack(std::span<const Var<T>>(xs.begin(), xs.size()), dim);
}
///@}

}  // namespace tapegrad
