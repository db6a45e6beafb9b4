#pragma once
/// \file
/// Sequential: modules applied one after another, torch.nn.Sequential.
///   nn::Sequential<float> model{std::make_shared<nn::Dense<float>>(784, 256),
///                               std::make_shared<nn::ReLU<float>>(),
///                               std::make_shared<nn::Dense<float>>(256, 10)};
///   model.push_back(std::make_shared<nn::Softmax<float>>(1));
///   auto block = std::make_shared<nn::Sequential<float>>(conv, relu);  // nested, by arguments
/// Children are named "0", "1", ... so parameters read "0.weight", "2.bias". forward calls each
/// child through operator() so that summary() lists them. model[i] is the i-th module;
/// model.at<nn::Dense<float>>(i) the same cast to its type (ValueError if it is not one).
///
/// checkpoint_every(k) runs the layers k at a time as activation checkpoints (nn/checkpoint.hpp)
/// while gradients are on: only every k-th layer's output is kept, each segment runs again in
/// backward. As torch.utils.checkpoint_sequential, the last segment is not checkpointed (its
/// values are needed as soon as backward starts). 0 turns it off.
///
/// A BatchNorm followed by a ReLU layer runs as one op, BatchNorm::forward_relu (batch_norm_relu:
/// the same values and running statistics; ops/norm.hpp), also inside a checkpoint segment
/// that holds both, but not under summary().

#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <memory>
#include <string>
#include <type_traits>
#include <typeinfo>
#include <vector>

#include "tapegrad/nn/activation.hpp"
#include "tapegrad/nn/batch_norm.hpp"
#include "tapegrad/nn/checkpoint.hpp"
#include "tapegrad/nn/module.hpp"

namespace tapegrad::nn {

/// Modules called one after the other, torch.nn.Sequential: y = m_k(... m_1(m_0(x))). Children are
/// named "0", "1", ...
template <class T>
class Sequential : public Module<T> {
 public:
  /// A shared pointer to a module.
  using Ptr = std::shared_ptr<Module<T>>;

  Sequential() = default;
  /// The given modules, in order.
  Sequential(std::initializer_list<Ptr> modules) {
    for (const Ptr& m : modules) push_back(m);
  }
  /// The same from separate arguments, so that std::make_shared<Sequential<T>>(a, b, c) works
  /// (make_shared cannot forward a braced list).
  template <class... M>
  requires(sizeof...(M) > 0 && (std::is_convertible_v<std::shared_ptr<M>, Ptr> &&
                                ...)) explicit Sequential(std::shared_ptr<M>... modules) {
    (push_back(std::move(modules)), ...);
  }

  /// Appends a module (named by its index).
  void push_back(Ptr m) {
    if (!m)
      tapegrad::detail::fail<ValueError>("Sequential: push_back of a null module at index ",
                                         layers_.size());
    layers_.push_back(this->register_module(std::to_string(layers_.size()), std::move(m)));
  }

  /// Number of modules.
  size_t size() const { return layers_.size(); }
  /// Whether there are no modules.
  bool empty() const { return layers_.empty(); }
  /// Module i; throws ValueError if i is out of range.
  const Ptr& operator[](size_t i) const {
    check_index(i);
    return layers_[i];
  }
  /// Module i cast to M; throws ValueError if i is out of range or the module is not an M.
  template <class M>
  M& at(size_t i) const {
    check_index(i);
    M* m = dynamic_cast<M*>(layers_[i].get());
    if (m == nullptr)
      tapegrad::detail::fail<ValueError>("Sequential: module ", i, " is ", layers_[i]->name(),
                                         ", not of the requested type");
    return *m;
  }
  /// Iterator to the first module.
  auto begin() const { return layers_.begin(); }
  /// Iterator past the last module.
  auto end() const { return layers_.end(); }

  Var<T> forward(const Var<T>& x) override {
    const size_t n = layers_.size();
    const size_t k = is_grad_enabled() ? checkpoint_every_ : 0;
    Var<T> y = x;
    size_t i = 0;
    if (k > 0)
      for (; i + k < n; i += k) y = tapegrad::checkpoint(Segment{this, i, i + k}, y);
    return run(i, n, y, x);
  }
  std::string name() const override { return "Sequential"; }

  /// Runs the layers k at a time as activation checkpoints (0: off; see the file's description);
  /// returns *this.
  Sequential& checkpoint_every(size_t k) {
    checkpoint_every_ = k;
    return *this;
  }
  /// The k of checkpoint_every(k) (0: off).
  size_t checkpoint_every() const { return checkpoint_every_; }

 private:
  void check_index(size_t i) const {
    if (i >= layers_.size())
      tapegrad::detail::fail<ValueError>("Sequential: index ", i, " out of range (", layers_.size(),
                                         " modules)");
  }
  // Layers [begin, end) on y (input: the Sequential's or the segment's input); a BatchNorm
  // followed by a ReLU as one op.
  Var<T> run(size_t begin, size_t end, Var<T> y, const Var<T>& input) const {
    for (size_t i = begin; i < end; ++i) {
      if (auto* bn = bn_before_relu(i, end)) {
        y = bn->forward_relu(y);
        ++i;
        continue;
      }
      y = (*layers_[i])(hand_on(y, input, *layers_[i]));
    }
    return y;
  }
  // Layer i as a BatchNorm when layer i + 1 < end is a ReLU (exactly nn::ReLU: a subclass may
  // differ), not under summary() (which lists both); else nullptr.
  BatchNorm<T>* bn_before_relu(size_t i, size_t end) const {
    if (i + 1 >= end || detail::summary_rows != nullptr) return nullptr;
    const Module<T>& next = *layers_[i + 1];
    if (typeid(next) != typeid(ReLU<T>)) return nullptr;
    return dynamic_cast<BatchNorm<T>*>(layers_[i].get());
  }
  // Lets an in-place activation layer (ReLU, Sigmoid, Tanh) write over the previous layer's
  // output, which only it reads; never over the Sequential's own input (the caller holds it),
  // and never inside another module, which may read its input twice (a residual block).
  static const Var<T>& hand_on(const Var<T>& y, const Var<T>& input, const Module<T>& next) {
    if (next.writes_over_input() && y.defined() &&
        !(y.id() == input.id() && &y.tape() == &input.tape()))
      y.node().handed_on = true;
    return y;
  }
  // Layers [begin, end) as a checkpoint segment; they replay their Dropout masks.
  struct Segment {
    Sequential* s;
    uint32_t begin, end;
    Segment(Sequential* seq, size_t b, size_t e)
        : s(seq), begin(static_cast<uint32_t>(b)), end(static_cast<uint32_t>(e)) {}
    Var<T> operator()(const Var<T>& x) const { return s->run(begin, end, x, x); }
    void save_random(std::vector<int64_t>& ints) const {
      for (uint32_t i = begin; i < end; ++i) detail::save_dropout_calls(*s->layers_[i], ints);
    }
    void restore_random(const std::vector<int64_t>& ints) const {
      size_t k = 0;
      for (uint32_t i = begin; i < end; ++i) detail::restore_dropout_calls(*s->layers_[i], ints, k);
    }
  };

  std::vector<Ptr> layers_;
  size_t checkpoint_every_ = 0;
};

}  // namespace tapegrad::nn
