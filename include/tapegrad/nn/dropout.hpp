#pragma once
/// \file
/// Dropout(p = 0.5): torch.nn.Dropout. In training mode each element is zeroed with probability
/// p and the survivors scaled by 1/(1 − p) (inverted dropout, ops/dropout.hpp); in eval mode the
/// layer is the identity. p outside [0, 1) is a ValueError.
///
/// Randomness, made reproducible and replayable: the layer has a seed (drawn from the
/// Generator given at construction, or nn::default_generator()) and counts its training calls;
/// call k draws its mask from Generator(seed + k). So
///   - a program that builds the same model gets the same masks every run;
///   - reset_rng() rewinds the counter: the next calls repeat the same masks (gradcheck uses
///     it, see tests/layer_check.hpp); manual_seed(s) sets the seed and rewinds;
///   - nn::reset_rng(model) rewinds every Dropout inside a model (Sequential, blocks, ...);
///   - the seed and the counter are the layer's extra state ("seed 123 calls 45"), which
///     checkpoints save, so a resumed run draws the masks the uninterrupted one would have.

#include <cinttypes>
#include <cstdint>
#include <cstdio>
#include <sstream>
#include <string>

#include "tapegrad/nn/init.hpp"
#include "tapegrad/nn/module.hpp"
#include "tapegrad/ops/dropout.hpp"

namespace tapegrad::nn {

/// Dropout layer, torch.nn.Dropout: in training each element is zeroed with probability p and the
/// survivors scaled by 1/(1 − p); the identity in eval. Any shape.
template <class T>
class Dropout : public Module<T> {
 public:
  /// Dropout with probability p (ValueError outside [0, 1)); its seed is drawn from gen.
  explicit Dropout(double p = 0.5, Generator& gen = default_generator())
      : p_(p), seed_(gen.next_u64()) {
    tapegrad::detail::check_dropout_p("Dropout", p);
  }

  Var<T> forward(const Var<T>& x) override {
    // summary() sees the identity and leaves the counter alone: calling it changes no mask.
    if (!active()) return x;
    Generator g = next_generator();
    return dropout(x, p_, true, g);
  }
  /// Whether a call now drops anything: training, p > 0 and not inside summary().
  bool active() const {
    return this->is_training() && p_ != 0.0 && detail::summary_rows == nullptr;
  }
  /// The Generator of the next call, counted as one: for a layer that applies this dropout inside
  /// a fused op (MultiheadAttention drops attention weights inside its attention kernel).
  Generator next_generator() { return Generator(seed_ + calls_++); }
  std::string name() const override {
    std::ostringstream os;
    os << "Dropout(p=" << p_ << ")";
    return os.str();
  }

  /// The probability of zeroing an element.
  double p() const { return p_; }
  /// The seed of the layer's masks.
  uint64_t seed() const { return seed_; }
  /// Training calls so far (since the last rewind); the next call draws mask number calls().
  uint64_t calls() const { return calls_; }  // training calls so far (since the last rewind)
  /// Rewinds the call counter: the next calls repeat the same masks.
  void reset_rng() { calls_ = 0; }
  /// Sets the call counter: the next call draws mask number calls.
  void set_calls(uint64_t calls) { calls_ = calls; }  // the next call draws mask number `calls`
  /// Sets the seed and rewinds the call counter.
  void manual_seed(uint64_t seed) {
    seed_ = seed;
    calls_ = 0;
  }

  std::string get_extra_state() const override {
    return "seed " + std::to_string(seed_) + " calls " + std::to_string(calls_);
  }
  void set_extra_state(const std::string& state) override {
    uint64_t seed = 0, calls = 0;
    char tail = 0;
    if (std::sscanf(state.c_str(), "seed %" SCNu64 " calls %" SCNu64 "%c", &seed, &calls, &tail) !=
            2 ||
        state != "seed " + std::to_string(seed) + " calls " + std::to_string(calls))
      tapegrad::detail::fail<ValueError>(name(), ".set_extra_state: \"", state,
                                         "\" is not \"seed <n> calls <n>\"");
    seed_ = seed;
    calls_ = calls;
  }

 private:
  double p_;
  uint64_t seed_;
  uint64_t calls_ = 0;
};

/// Rewinds every Dropout in m's tree, m included: the next calls repeat the same masks.
template <class T>
void reset_rng(Module<T>& m) {
  if (auto* d = dynamic_cast<Dropout<T>*>(&m)) d->reset_rng();
  for (const auto& [name, child] : m.named_children()) reset_rng(*child);
}

}  // namespace tapegrad::nn
