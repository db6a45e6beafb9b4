#pragma once
// Parameter<T>: a trainable tensor and its gradient, living outside any tape.
// A Parameter is a handle: copies refer to the same value and grad (like a torch parameter),
// so a module, its optimizer and a monitor can all hold it. Update values in place.

#include <memory>

#include "tapegrad/tensor.hpp"

namespace tapegrad {

template <class T>
class Parameter {
 public:
  Parameter() = default;  // undefined, like an empty torch::Tensor
  explicit Parameter(Tensor<T> value)
      : state_(std::make_shared<State>(State{value, Tensor<T>::zeros(value.shape()), true})) {}

  bool defined() const { return state_ != nullptr; }
  Tensor<T>& value() const { return state().value; }
  Tensor<T>& grad() const { return state().grad; }
  const Shape& shape() const { return state().value.shape(); }
  int64_t numel() const { return state().value.numel(); }
  bool requires_grad() const { return state().requires_grad; }
  void set_requires_grad(bool on) const { state().requires_grad = on; }
  void zero_grad() const { state().grad.zero_(); }

  // Identity of the underlying parameter (the same for every copy of the handle).
  const void* key() const { return state_.get(); }
  friend bool operator==(const Parameter& a, const Parameter& b) { return a.state_ == b.state_; }

 private:
  struct State {
    Tensor<T> value;
    Tensor<T> grad;
    bool requires_grad;
  };
  State& state() const {
    if (!state_) detail::fail<ValueError>("Parameter: use of an undefined parameter");
    return *state_;
  }
  std::shared_ptr<State> state_;
};

}  // namespace tapegrad
