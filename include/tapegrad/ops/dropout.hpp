#pragma once
/// \file
/// dropout: inverted dropout, as torch.nn.functional.dropout (Srivastava et al. 2014):
///   train: y = x ⊙ m / (1 − p),  m_i ~ Bernoulli(1 − p) drawn from the given Generator;
///          dx = dy ⊙ m / (1 − p)
///   eval (training = false) or p = 0: y = x (the input Var itself, no node recorded).
/// p must lie in [0, 1) (ValueError otherwise). The scaled mask m / (1 − p) is kept in the
/// node's saved(0), reused across steps.

#include "tapegrad/tape.hpp"

namespace tapegrad {

namespace detail {
inline void check_dropout_p(const char* who, double p) {
  if (!(p >= 0.0 && p < 1.0))
    fail<ValueError>(who, ": dropout probability has to be in [0, 1), but got ", p);
}
}  // namespace detail

/// Inverted dropout: y = x ⊙ m / (1 − p), m_i ~ Bernoulli(1 − p) from gen, when training and p > 0;
/// else x itself. Any shape; p outside [0, 1) throws ValueError.
template <class T>
Var<T> dropout(const Var<T>& x, double p, bool training, Generator& gen) {
  detail::check_dropout_p("dropout", p);
  if (!training || p == 0.0) return x;
  Var<T> y = x.tape().record(
      "dropout", Shape(x.shape()), {x},
      [](OpContext<T>& c) { c.add_grad(0, c.grad_out().array() * c.saved(0).array()); },
      Reads::none);  // the mask is saved
  Tensor<T>& mask = y.node().saved[0];
  mask.resize(x.shape());
  const T scale = T(1.0 / (1.0 - p));
  for (int64_t i = 0; i < mask.numel(); ++i) mask[i] = gen.uniform() < p ? T(0) : scale;
  y.value().array() = x.value().array() * mask.array();
  return y;
}

}  // namespace tapegrad
