#pragma once
/// \file
/// checkpoint(segment, inputs...): activation checkpointing (gradient checkpointing; Chen et al.
/// 2016, "Training Deep Nets with Sublinear Memory Cost"; torch.utils.checkpoint). The segment
/// runs without keeping its intermediate values: forward runs it on the tape's scratch tape
/// with gradients off and keeps only its output; backward runs it again there with gradients
/// on, from the same inputs, and sends the output's gradient back through it into the inputs
/// and into the parameters it uses. Memory falls from every value inside the segment to its
/// output, for one more forward pass of the segment.
///
///   auto y = tg::checkpoint([&](const tg::Var<float>& h) { return block(h); }, x);
///
/// segment is called with the Vars it gets (on the scratch tape) and returns its output. It must
/// compute the same function when run again: a segment object with members
///   void save_random(std::vector<int64_t>& ints) const;       // before the first run
///   void restore_random(const std::vector<int64_t>& ints) const;  // before the second
/// keeps what its randomness depends on in the node's ints (nn::checkpoint does that for the
/// Dropout layers of a module). During the second run detail::recomputing is true, so that
/// BatchNorm updates its running statistics once per step, not twice (a flaw of PyTorch's
/// checkpoint). The gradients equal those of the unchecked run bit for bit (the
/// same ops run in the same order). The segment is copied onto the node until the tape is
/// cleared: one of pointer size or two is stored without allocation.

#include <array>
#include <cstdint>
#include <tuple>
#include <utility>
#include <vector>

#include "tapegrad/tape.hpp"

namespace tapegrad {

namespace detail {

// Runs the segment on the scratch tape from the given values: as constants, or as inputs
// whose gradients backward computes where need_grad.
template <class T, size_t N, class F>
Var<T> run_segment(Tape<T>& scratch, const F& segment, const std::array<const Tensor<T>*, N>& v,
                   const std::array<bool, N>& need_grad, std::array<Var<T>, N>& in) {
  for (size_t k = 0; k < N; ++k)
    in[k] = need_grad[k] ? scratch.input(*v[k]) : scratch.constant(*v[k]);
  return std::apply(segment, in);
}

}  // namespace detail

/// segment(x, more...) as an activation checkpoint: its intermediate values are not kept, it runs
/// again in backward (see the file's description). Returns segment's output; its gradients equal
/// those of the unchecked call.
template <class T, class F, class... V>
Var<T> checkpoint(F segment, const Var<T>& x, const V&... more) {
  constexpr size_t N = 1 + sizeof...(V);
  const std::array<Var<T>, N> inputs{x, more...};
  Tape<T>& tape = x.tape();
  auto backward = [segment](OpContext<T>& c) {
    if constexpr (requires { segment.restore_random(c.node().ints); })
      segment.restore_random(c.node().ints);
    Tape<T>& scratch = c.tape().scratch();
    scratch.clear();
    std::array<const Tensor<T>*, N> v;
    std::array<bool, N> need;
    for (size_t k = 0; k < N; ++k) {
      v[k] = &c.input(static_cast<int>(k));
      need[k] = c.needs_grad(static_cast<int>(k));
    }
    std::array<Var<T>, N> in;
    const bool was = detail::recomputing;
    detail::recomputing = true;  // BatchNorm does not update its statistics a second time
    Var<T> out;
    try {
      out = detail::run_segment<T, N>(scratch, segment, v, need, in);
    } catch (...) {
      detail::recomputing = was;
      throw;
    }
    detail::recomputing = was;
    scratch.backward(out, c.grad_out());
    for (size_t k = 0; k < N; ++k)
      if (need[k]) c.add_grad(static_cast<int>(k), in[k].grad().array());
    scratch.clear();
  };
  // Tracked whenever gradients are on: the parameters inside may need them when no input does
  // (the first layers of a network, whose input is data).
  Var<T> y =
      tape.record_closure("checkpoint", std::span<const Var<T>>(inputs), std::move(backward));
  if constexpr (requires { segment.save_random(y.node().ints); })
    segment.save_random(y.node().ints);
  Tape<T>& scratch = tape.scratch();
  scratch.clear();
  {
    NoGradGuard no_grad;
    std::array<const Tensor<T>*, N> v;
    for (size_t k = 0; k < N; ++k) v[k] = &inputs[k].node().value;
    std::array<Var<T>, N> in;
    const Var<T> out = detail::run_segment<T, N>(scratch, segment, v, std::array<bool, N>{}, in);
    Tensor<T>& value = y.node().value;
    value.resize(out.shape());
    value.copy_(out.value());
  }
  scratch.clear();
  return y;
}

}  // namespace tapegrad
