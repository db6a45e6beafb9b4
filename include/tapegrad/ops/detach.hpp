#pragma once
/// \file
/// detach(x): the same values as x, cut from the graph, as torch.Tensor.detach(): the result is
/// a new leaf that requires no gradient, so backward stops there and nothing recorded before it
/// receives a gradient through it. No copy: the result shares x's storage (a view).
///
/// Truncated backpropagation through time (Williams & Peng 1990) detaches a recurrent state
/// every k steps so that backward runs through at most k steps:
///   state = {tg::detach(out.state.h), tg::detach(out.state.c)};   // or nn::detach(out.state)
///
/// A Var is valid until its tape is cleared. To carry a state over tape.clear(), copy its value
/// into a Tensor you own first (h_keep.copy_(out.state.h.value())) and enter that after the
/// clear with tape.constant(h_keep).

#include "tapegrad/tape.hpp"

namespace tapegrad {

/// The values of x as a new leaf without gradient, sharing x's storage (torch.Tensor.detach()).
template <class T>
Var<T> detach(const Var<T>& x) {
  // A view recorded without a backward function never requires grad (Tape::record_impl).
  return x.tape().record_view("detach", x.value(), {x}, nullptr);
}

}  // namespace tapegrad
