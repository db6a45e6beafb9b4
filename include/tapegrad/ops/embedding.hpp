#pragma once
/// \file
/// embedding(indices, weight, padding_idx): torch.nn.functional.embedding. Row indices[i] of
/// weight [num_embeddings, embedding_dim] for every index: the output has the indices' shape
/// plus a last dim of embedding_dim.
///   forward:  y[i, :] = weight[indices[i], :]
///   backward: dweight[r, :] += sum over {i : indices[i] = r} of g[i, :]  (a scatter-add: an index
///             used twice gets both gradients), except r = padding_idx, which gets none (PyTorch:
///             "the entries at padding_idx do not contribute to the gradient").
/// Indices come as a Tensor<int64_t> (torch's LongTensor), or as a Var<T> holding whole numbers so
/// that an nn::Embedding can sit in a Sequential, whose modules take Vars; such values are rounded
/// to the nearest integer, and one farther than 1e-3 from an integer is a ValueError. Indices carry
/// no gradient. An index outside [0, num_embeddings) is a ValueError naming it.
/// The indices are copied into the node's ints (capacity kept by the tape: no allocation per step).

#include <cmath>
#include <cstdint>
#include <optional>

#include "tapegrad/tape.hpp"
#include "tapegrad/threads.hpp"

namespace tapegrad {

namespace detail {

inline int64_t embedding_padding(const Shape& w, std::optional<int64_t> padding_idx) {
  if (!padding_idx) return -1;
  const int64_t n = w[0], p = *padding_idx;
  if (p < -n || p >= n)
    fail<ValueError>("embedding: padding_idx ", p, " out of range for weight ", w);
  return p < 0 ? p + n : p;
}

// Records the node once ints = [padding, index...] are filled by `fill`; see the header comment.
template <class T, class Fill>
Var<T> embedding_impl(Shape index_shape, const Var<T>& weight, std::optional<int64_t> padding_idx,
                      Fill fill) {
  const Shape ws = weight.shape();
  if (ws.rank() != 2)
    fail<ShapeError>("embedding: weight ", ws, " must be 2-D [num_embeddings, embedding_dim]");
  if (index_shape.rank() >= Shape::max_rank)
    fail<ShapeError>("embedding: indices of shape ", index_shape,
                     " would give an output above rank ", Shape::max_rank);
  const int64_t pad = embedding_padding(ws, padding_idx);
  Shape out = index_shape;
  out.push_back(ws[1]);
  Var<T> y = weight.tape().record(
      "embedding", out, {weight},
      [](OpContext<T>& c) {
        const auto& ints = c.node().ints;
        const int64_t dim = c.input(0).shape()[1], n = static_cast<int64_t>(ints.size()) - 1;
        const int64_t pad = ints[0];
        T* gw = c.grad_in(0).data();
        const T* g = c.grad_out().data();
        for (int64_t i = 0; i < n; ++i) {  // in order: duplicates add up the same way every time
          const int64_t r = ints[static_cast<size_t>(i) + 1];
          if (r == pad) continue;
          Eigen::Map<Eigen::Array<T, Eigen::Dynamic, 1>>(gw + r * dim, dim) +=
              Eigen::Map<const Eigen::Array<T, Eigen::Dynamic, 1>>(g + i * dim, dim);
        }
      },
      Reads::none);  // the weight's shape and the indices in ints
  auto& ints = y.node().ints;
  const int64_t n = index_shape.numel();
  ints.resize(static_cast<size_t>(n) + 1);
  ints[0] = pad;
  fill(ints.data() + 1);
  for (int64_t i = 0; i < n; ++i) {
    const int64_t r = ints[static_cast<size_t>(i) + 1];
    if (r < 0 || r >= ws[0])
      fail<ValueError>("embedding: index ", r, " at position ", i, " is out of range [0, ", ws[0],
                       ") for weight ", ws);
  }
  const int64_t dim = ws[1];
  const T* w = weight.value().data();
  T* yv = y.value().data();
  const int64_t* idx = ints.data() + 1;
  detail::parallel_for(n, n * dim > parallel_threshold, [&](int64_t i) {
    Eigen::Map<Eigen::Array<T, Eigen::Dynamic, 1>>(yv + i * dim, dim) =
        Eigen::Map<const Eigen::Array<T, Eigen::Dynamic, 1>>(w + idx[i] * dim, dim);
  });
  return y;
}

}  // namespace detail

///@{
/// The rows of weight [num_embeddings, D] for indices of any shape: output indices.shape + [D]. The
/// row padding_idx gets no gradient; an index out of range throws ValueError. Indices as a
/// Tensor<int64_t>, or a Var of whole numbers.
template <class T>
Var<T> embedding(const Tensor<int64_t>& indices, const Var<T>& weight,
                 std::optional<int64_t> padding_idx = std::nullopt) {
  return detail::embedding_impl(indices.shape(), weight, padding_idx, [&](int64_t* out) {
    for (int64_t i = 0; i < indices.numel(); ++i) out[i] = indices[i];
  });
}

template <class T>
Var<T> embedding(const Var<T>& indices, const Var<T>& weight,
                 std::optional<int64_t> padding_idx = std::nullopt) {
  if (&indices.tape() != &weight.tape())
    detail::fail<TapeError>("embedding: Vars from two different tapes in one op");
  const Tensor<T> iv = indices.value();  // a handle: recording may move the tape's nodes
  return detail::embedding_impl(indices.shape(), weight, padding_idx, [&](int64_t* out) {
    for (int64_t i = 0; i < iv.numel(); ++i) {
      const T v = iv[i];
      const T r = std::nearbyint(v);
      if (!(std::abs(v - r) <= T(1e-3)))
        detail::fail<ValueError>("embedding: index ", v, " at position ", i,
                                 " is not a whole number");
      if (!(std::abs(r) < T(1e18)))  // the cast below would be undefined
        detail::fail<ValueError>("embedding: index ", v, " at position ", i, " is out of range");
      out[i] = static_cast<int64_t>(r);
    }
  });
}
///@}

}  // namespace tapegrad
