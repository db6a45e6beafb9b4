#pragma once
/// \file
/// Recurrent cells, one time step each, as torch.nn.RNNCell, LSTMCell and GRUCell: the same
/// parameter names, shapes, gate order and equations, so PyTorch weights load unchanged.
///
///   RNNCell(input_size, hidden_size, bias, nonlinearity)   h' = act(x W_ih^T + b_ih + h W_hh^T +
///   b_hh) LSTMCell(input_size, hidden_size, bias)                gates i, f, g, o; c' = f c + i g;
///                                                          h' = o tanh(c')
///   GRUCell(input_size, hidden_size, bias)                 gates r, z, n;
///                                                          n = tanh(W_in x + b_in + r (W_hn h +
///                                                          b_hn)) h' = (1 - z) n + z h
///   (the full equations, and their derivatives, are in ops/rnn.hpp)
///
/// Parameters (G = 1, 4, 3 gate blocks of hidden_size rows, in the order above):
///   weight_ih [G*hidden, input]   weight_hh [G*hidden, hidden]   bias_ih [G*hidden]   bias_hh
///   [G*hidden]
/// Default initialisation (torch.nn.RNNCellBase.reset_parameters): every parameter
/// ~ U(-1/sqrt(hidden_size), 1/sqrt(hidden_size)), drawn in the order weight_ih, weight_hh,
/// bias_ih, bias_hh from the Generator given, or nn::default_generator().
///
/// Inputs are batched: x [N, input_size], h and c [N, hidden_size]. An empty Var (Var<T>()) as
/// a state means zeros, as omitting hx in PyTorch. Call forms:
///   Var<T>      RNNCell::forward(x, h)          GRUCell::forward(x, h)
///   RNNState<T> LSTMCell::forward(x, {h, c})    returns {h', c'}
///   Var<T>      forward(x) / operator()(x)      h' from a zero state (LSTMCell: h' only)
///
/// RNNState<T> {h, c} is the state type the sequence layers (nn/rnn.hpp) use too; c is only used
/// by LSTMs. nn::detach(state) detaches both (truncated BPTT; ops/detach.hpp).

#include <cmath>
#include <cstdint>
#include <sstream>
#include <string>

#include "tapegrad/nn/init.hpp"
#include "tapegrad/nn/module.hpp"
#include "tapegrad/ops/detach.hpp"
#include "tapegrad/ops/linalg.hpp"
#include "tapegrad/ops/rnn.hpp"

namespace tapegrad::nn {

/// A recurrent state: h, and c for an LSTM. Empty Vars mean zeros.
template <class T>
struct RNNState {
  /// The hidden state, [N, hidden_size].
  Var<T> h{};
  Var<T> c{};  ///< LSTM only
};

/// Both parts detached (those that are defined): the start of a new truncated-BPTT window.
template <class T>
RNNState<T> detach(const RNNState<T>& s) {
  return {s.h.defined() ? tapegrad::detach(s.h) : Var<T>(),
          s.c.defined() ? tapegrad::detach(s.c) : Var<T>()};
}

namespace detail {

// U(±1/sqrt(hidden)) for one recurrent parameter (PyTorch's reset_parameters).
template <class T>
Tensor<T> recurrent_init(const Shape& shape, int64_t hidden, Generator& gen) {
  Tensor<T> t(shape);
  const double bound = 1.0 / std::sqrt(static_cast<double>(hidden));
  init::uniform_(t, -bound, bound, gen);
  return t;
}

inline void check_recurrent_sizes(const char* kind, int64_t input, int64_t hidden) {
  if (input < 1 || hidden < 1)
    tapegrad::detail::fail<ValueError>(kind, "(", input, ", ", hidden,
                                       "): input_size and hidden_size must be >= 1");
}

}  // namespace detail

/// What the three cells share: parameters, the input projection and the state checks.
template <class T>
class RNNCellBase : public Module<T> {
 public:
  Parameter<T> weight_ih;  ///< [G*hidden, input]
  Parameter<T> weight_hh;  ///< [G*hidden, hidden]
  Parameter<T> bias_ih;    ///< [G*hidden]; undefined when bias = false
  Parameter<T> bias_hh;    ///< [G*hidden]; undefined when bias = false

  /// Size of the input's last dimension.
  int64_t input_size() const { return input_; }
  /// Size of the hidden state.
  int64_t hidden_size() const { return hidden_; }
  /// Whether the cell has the biases b_ih and b_hh.
  bool bias() const { return bias_; }

 protected:
  /// For the cells: gates hidden-sized blocks in the weights (1, 4 or 3), kind names the cell.
  /// Sizes below 1 throw ValueError.
  RNNCellBase(const char* kind, int64_t gates, int64_t input, int64_t hidden, bool bias,
              Generator& gen)
      : kind_(kind), input_(input), hidden_(hidden), bias_(bias) {
    detail::check_recurrent_sizes(kind, input, hidden);
    weight_ih = this->register_parameter(
        "weight_ih", detail::recurrent_init<T>({gates * hidden, input}, hidden, gen));
    weight_hh = this->register_parameter(
        "weight_hh", detail::recurrent_init<T>({gates * hidden, hidden}, hidden, gen));
    if (bias) {
      bias_ih = this->register_parameter("bias_ih",
                                         detail::recurrent_init<T>({gates * hidden}, hidden, gen));
      bias_hh = this->register_parameter("bias_hh",
                                         detail::recurrent_init<T>({gates * hidden}, hidden, gen));
    }
  }

  /// x W_ih^T + b_ih, after checking x is [N, input_size].
  Var<T> project(const Var<T>& x) const {
    if (x.rank() != 2 || x.size(1) != input_)
      tapegrad::detail::fail<ShapeError>(name(), ": input ", x.shape(), ": expected [N,", input_,
                                         "]");
    Tape<T>& tape = x.tape();
    return bias_ ? linear(x, tape.param(weight_ih), tape.param(bias_ih))
                 : linear(x, tape.param(weight_ih));
  }
  /// A state must be empty or [N, hidden_size].
  void check_state(const char* what, const Var<T>& s, int64_t n) const {
    if (s.defined() && !(s.rank() == 2 && s.size(0) == n && s.size(1) == hidden_))
      tapegrad::detail::fail<ShapeError>(name(), ": ", what, " ", s.shape(), " for an input of ", n,
                                         " rows: expected [", n, ",", hidden_, "]");
  }
  /// The cell's name for summaries, with extra arguments appended.
  std::string describe(const std::string& extra = "") const {
    std::ostringstream os;
    os << kind_ << "(" << input_ << ", " << hidden_ << (bias_ ? "" : ", bias=false") << extra
       << ")";
    return os.str();
  }

 public:
  std::string name() const override { return describe(); }

 private:
  const char* kind_;
  int64_t input_, hidden_;
  bool bias_;
};

/// Elman cell: h' = act(x W_ih^T + b_ih + h W_hh^T + b_hh), act = tanh or relu; x [N, input_size],
/// h [N, hidden_size].
template <class T>
class RNNCell : public RNNCellBase<T> {
 public:
  /// Weights U(±1/√hidden_size) from gen, as PyTorch's.
  RNNCell(int64_t input_size, int64_t hidden_size, bool bias = true,
          RNNNonlinearity nonlinearity = RNNNonlinearity::tanh,
          Generator& gen = default_generator())
      : RNNCellBase<T>("RNNCell", 1, input_size, hidden_size, bias, gen),
        nonlinearity_(nonlinearity) {}

  /// The activation, tanh or relu.
  RNNNonlinearity nonlinearity() const { return nonlinearity_; }

  Var<T> forward(const Var<T>& x) override { return forward(x, Var<T>()); }
  /// h' from x [N, input_size] and h [N, hidden_size] (empty: zeros); wrong shapes throw
  /// ShapeError.
  Var<T> forward(const Var<T>& x, const Var<T>& h) {
    const Var<T> xp = this->project(x);
    this->check_state("h", h, x.size(0));
    Tape<T>& tape = x.tape();
    return rnn_cell(xp, {}, h, tape.param(this->weight_hh),
                    this->bias() ? tape.param(this->bias_hh) : Var<T>(), nonlinearity_);
  }

  std::string name() const override {
    return this->describe(nonlinearity_ == RNNNonlinearity::relu ? ", nonlinearity=relu" : "");
  }

 private:
  RNNNonlinearity nonlinearity_;
};

/// LSTM cell, torch.nn.LSTMCell: gates i, f, g, o from x and h; c' = f·c + i·g, h' = o·tanh(c'); x
/// [N, input_size], h and c [N, hidden_size].
template <class T>
class LSTMCell : public RNNCellBase<T> {
 public:
  /// Weights U(±1/√hidden_size) from gen, as PyTorch's.
  LSTMCell(int64_t input_size, int64_t hidden_size, bool bias = true,
           Generator& gen = default_generator())
      : RNNCellBase<T>("LSTMCell", 4, input_size, hidden_size, bias, gen) {}

  Var<T> forward(const Var<T>& x) override { return forward(x, RNNState<T>{}).h; }
  /// (h', c') from x [N, input_size] and state (empty: zeros); wrong shapes throw ShapeError.
  RNNState<T> forward(const Var<T>& x, const RNNState<T>& state) {
    const Var<T> xp = this->project(x);
    this->check_state("h", state.h, x.size(0));
    this->check_state("c", state.c, x.size(0));
    Tape<T>& tape = x.tape();
    const Var<T> record = lstm_cell(xp, {}, state.h, state.c, tape.param(this->weight_hh),
                                    this->bias() ? tape.param(this->bias_hh) : Var<T>());
    return {lstm_hidden(record), lstm_cell_state(record)};
  }
};

/// GRU cell, torch.nn.GRUCell: r, z, n gates; h' = (1 − z)·n + z·h; x [N, input_size], h [N,
/// hidden_size].
template <class T>
class GRUCell : public RNNCellBase<T> {
 public:
  /// Weights U(±1/√hidden_size) from gen, as PyTorch's.
  GRUCell(int64_t input_size, int64_t hidden_size, bool bias = true,
          Generator& gen = default_generator())
      : RNNCellBase<T>("GRUCell", 3, input_size, hidden_size, bias, gen) {}

  Var<T> forward(const Var<T>& x) override { return forward(x, Var<T>()); }
  /// h' from x [N, input_size] and h [N, hidden_size] (empty: zeros); wrong shapes throw
  /// ShapeError.
  Var<T> forward(const Var<T>& x, const Var<T>& h) {
    const Var<T> xp = this->project(x);
    this->check_state("h", h, x.size(0));
    Tape<T>& tape = x.tape();
    return gru_cell(xp, {}, h, tape.param(this->weight_hh),
                    this->bias() ? tape.param(this->bias_hh) : Var<T>());
  }
};

}  // namespace tapegrad::nn
