#pragma once
/// \file
/// nn::checkpoint(module, x): the activation checkpoint (ops/checkpoint.hpp) of a module call.
/// Its second run, in backward, draws the same Dropout masks as the first: the call counters of
/// every Dropout layer in the module are kept on the node and rewound before it. Sequential's
/// checkpoint_every(k) checkpoints its layers k at a time this way.
///
///   auto y = nn::checkpoint(*block, x);   // block's intermediate values are not kept

#include <cstdint>
#include <vector>

#include "tapegrad/nn/dropout.hpp"
#include "tapegrad/nn/module.hpp"
#include "tapegrad/ops/checkpoint.hpp"

namespace tapegrad::nn {

namespace detail {

// The call counters of the Dropout layers in m's tree, appended to ints / read back from it.
template <class T>
void save_dropout_calls(Module<T>& m, std::vector<int64_t>& ints) {
  m.apply([&](Module<T>& sub) {
    if (auto* d = dynamic_cast<Dropout<T>*>(&sub)) ints.push_back(static_cast<int64_t>(d->calls()));
  });
}
template <class T>
void restore_dropout_calls(Module<T>& m, const std::vector<int64_t>& ints, size_t& k) {
  m.apply([&](Module<T>& sub) {
    if (auto* d = dynamic_cast<Dropout<T>*>(&sub))
      d->set_calls(static_cast<uint64_t>(ints.at(k++)));
  });
}

// A module as a checkpoint segment (pointer-sized: stored on the node without allocation).
template <class T>
struct ModuleSegment {
  Module<T>* module;
  Var<T> operator()(const Var<T>& x) const { return (*module)(x); }
  void save_random(std::vector<int64_t>& ints) const { save_dropout_calls(*module, ints); }
  void restore_random(const std::vector<int64_t>& ints) const {
    size_t k = 0;
    restore_dropout_calls(*module, ints, k);
  }
};

}  // namespace detail

/// module(x) as an activation checkpoint: module's intermediate values are not kept but computed
/// again in backward, with the same Dropout masks. Returns the module's output.
template <class T>
Var<T> checkpoint(Module<T>& module, const Var<T>& x) {
  return tapegrad::checkpoint(detail::ModuleSegment<T>{&module}, x);
}

}  // namespace tapegrad::nn
