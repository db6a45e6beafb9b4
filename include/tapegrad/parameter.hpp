#pragma once
/// \file
/// Parameter<T>: a trainable tensor and its gradient, living outside any tape.
/// A Parameter is a handle: copies refer to the same value and grad (like a torch parameter),
/// so a module, its optimizer and a monitor can all hold it. Update values in place.
///
/// zero_grad() is lazy, in the spirit of PyTorch's zero_grad(set_to_none=True): it only marks
/// the gradient as zero. The next backward then overwrites the buffer instead of adding into it,
/// which saves a pass over every gradient per training step; reading grad() before that fills
/// in the zeros, so the gradient always reads as zero after zero_grad().

#include <cstdint>
#include <memory>

#include "tapegrad/tensor.hpp"

namespace tapegrad {

/// A trainable tensor and its gradient, living outside any tape. A handle: copies refer to the same
/// value and gradient.
template <class T>
class Parameter {
 public:
  Parameter() = default;  ///< undefined, like an empty torch::Tensor
  /// A parameter holding value (shared, not copied) with a zero gradient, requiring grad.
  explicit Parameter(Tensor<T> value)
      : state_(std::make_shared<State>(
            State{value, Tensor<T>::zeros(value.shape()), true, /*grad_is_zero=*/false})) {}

  /// Whether the handle refers to a parameter.
  bool defined() const { return state_ != nullptr; }
  /// The value (update it in place).
  Tensor<T>& value() const { return state().value; }
  /// The gradient, the same shape as value(); zeros after zero_grad().
  Tensor<T>& grad() const {
    State& s = state();
    if (s.grad_is_zero) {
      s.grad.zero_();
      s.grad_is_zero = false;
    }
    return s.grad;
  }
  /// The value's shape.
  const Shape& shape() const { return state().value.shape(); }
  /// The value's number of elements.
  int64_t numel() const { return state().value.numel(); }
  /// Whether backward computes its gradient (default true).
  bool requires_grad() const { return state().requires_grad; }
  /// Freezes (false) or unfreezes the parameter.
  void set_requires_grad(bool on) const { state().requires_grad = on; }
  /// Marks the gradient zero (lazily, see the file's description).
  void zero_grad() const { state().grad_is_zero = true; }

  /// For the tape: the gradient buffer as it is (its zeros possibly not filled in yet), and,
  /// once after zero_grad(), true: the first backward write must assign, not add.
  Tensor<T>& grad_buffer() const { return state().grad; }
  /// (For the tape.) True once after zero_grad(): clears the pending zero.
  bool take_pending_zero() const {
    State& s = state();
    const bool pending = s.grad_is_zero;
    s.grad_is_zero = false;
    return pending;
  }
  /// For the tape: notes that recording `id` (Tape::recording_id) entered this parameter as a
  /// leaf that tracks its gradient; true the first time for that id. last_recording() is the
  /// last such id (0: never).
  bool enter_recording(uint64_t id) const {
    State& s = state();
    const bool first = s.recording != id;
    s.recording = id;
    return first;
  }
  /// (For the tape.) The last recording that entered this parameter (0: never).
  uint64_t last_recording() const { return state().recording; }

  /// Identity of the underlying parameter (the same for every copy of the handle).
  const void* key() const { return state_.get(); }
  /// Whether both handles refer to the same parameter.
  friend bool operator==(const Parameter& a, const Parameter& b) { return a.state_ == b.state_; }

 private:
  struct State {
    Tensor<T> value;
    Tensor<T> grad;
    bool requires_grad;
    bool grad_is_zero;       ///< zero_grad() ran and the buffer holds stale values
    uint64_t recording = 0;  ///< the last recording that entered it as a tracked leaf
  };
  State& state() const {
    if (!state_) detail::fail<ValueError>("Parameter: use of an undefined parameter");
    return *state_;
  }
  std::shared_ptr<State> state_;
};

}  // namespace tapegrad
