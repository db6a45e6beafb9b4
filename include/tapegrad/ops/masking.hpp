#pragma once
/// \file
/// Masking, as in PyTorch's attention code:
///   masked_fill(x, mask, value)   torch.Tensor.masked_fill: value where the boolean mask is true,
///                                 x elsewhere; the mask broadcasts to x's shape (never the
///                                 other way). dx = g where the mask is false, 0 where it is true.
///   an additive float mask        x + mask, the broadcasting add of ops/elementwise.hpp: 0 keeps
///                                 a score, -inf removes it (PyTorch's float attn_mask).
/// Then softmax (ops/activation.hpp) gives a row whose every score is -inf zeros, not NaN, and
/// no gradient: a query allowed to attend to nothing contributes nothing.
///
///   auto w = tg::softmax(tg::masked_fill(scores, causal, -INFINITY), -1);
///
/// The fused attention op (ops/attention.hpp) applies the same masks inside its kernel without
/// building either tensor.

#include <cstdint>

#include "tapegrad/ops/broadcast.hpp"
#include "tapegrad/tape.hpp"

namespace tapegrad {

/// value where mask is true, x elsewhere (torch.Tensor.masked_fill); mask broadcasts to x's shape
/// (ShapeError otherwise). dx = g where the mask is false, 0 where true.
template <class T>
Var<T> masked_fill(const Var<T>& x, const Tensor<bool>& mask, T value) {
  const Shape xs = x.shape();
  if (!(detail::broadcast_shape("masked_fill", xs, mask.shape()) == xs))
    detail::fail<ShapeError>("masked_fill: mask ", mask.shape(),
                             " does not broadcast to the input's shape ", xs);
  Var<T> y = x.tape().record(
      "masked_fill", xs, {x},
      [](OpContext<T>& c) { c.add_grad(0, c.grad_out().array() * c.saved(0).array()); },
      Reads::none);  // the saved keep mask only
  // keep = 1 where the input passes (and its gradient with it), 0 where value replaces it; kept
  // expanded to x's shape for the backward.
  Tensor<T>& keep = y.node().saved[0];
  keep.resize(xs);
  const detail::BroadcastPlan p = detail::make_plan(xs, xs, mask.shape());
  const bool* m = mask.data();
  T* k = keep.data();
  detail::for_each_row(p, [&](int64_t o, int64_t, int64_t om) {
    for (int64_t j = 0; j < p.row; ++j) k[o + j] = m[p.b_row ? om + j : om] ? T(0) : T(1);
  });
  const T* xv = x.value().data();
  T* yv = y.value().data();
  for (int64_t i = 0; i < x.numel(); ++i) yv[i] = k[i] != T(0) ? xv[i] : value;
  return y;
}

}  // namespace tapegrad
