#pragma once
/// \file
/// Recurrent layers over whole sequences, as torch.nn.RNN, LSTM and GRU: multi-layer,
/// time-major [T, N, input_size] input (or batch-first [N, T, input_size]), optional initial
/// states, every step's output and the final states. Parameter names, shapes, gate order,
/// equations and default initialisation are PyTorch's, so its weights load unchanged:
///
///   weight_ih_l{k} [G*hidden, input_size (k = 0) or hidden_size]   weight_hh_l{k} [G*hidden,
///   hidden] bias_ih_l{k}   [G*hidden]                                      bias_hh_l{k} [G*hidden]
///   G = 1 (RNN), 4 (LSTM: gates i, f, g, o), 3 (GRU: gates r, z, n); every parameter
///   ~ U(±1/sqrt(hidden_size)) (torch.nn.RNNBase.reset_parameters).
/// The equations of one step are in nn/rnn_cell.hpp and ops/rnn.hpp. Layer k > 0 takes layer
/// k-1's outputs h_t as its input sequence.
///
///   nn::LSTM<float> lstm(32, 128, {.num_layers = 2, .batch_first = true});
///   auto [y, state] = lstm.forward(x, {});        // y [N, T, 128]; state.h, state.c [2, N, 128]
///   auto [y2, state2] = lstm.forward(x2, nn::detach(state));  // continue, truncated BPTT
///   Var<float> y3 = lstm(x);                      // Module call: the output sequence only
///
/// Truncated BPTT over a long sequence, one update per window of k steps: carry the state's
/// values (not its graph) from one window to the next.
///   auto h = Tensor<float>::zeros({L, N, H}), c = Tensor<float>::zeros({L, N, H});
///   for (each window xw [k, N, F]) {
///     tape.clear();
///     auto [y, s] = lstm.forward(tape.constant(xw), {tape.constant(h), tape.constant(c)});
///     tape.backward(loss_of(y)); opt.step(); opt.zero_grad();
///     h.copy_(s.h.value()), c.copy_(s.c.value());
///   }
/// Within one tape, nn::detach(state) (ops/detach.hpp) cuts the graph the same way.
///
/// forward(x, state, hidden_steps) returns RNNOutput {output, state}:
///   output    [T, N, hidden] (batch-first: [N, T, hidden]): the last layer's h_t for every t
///   state.h   [num_layers, N, hidden]: every layer's h at the last step (h_n)
///   state.c   LSTM only, [num_layers, N, hidden]: every layer's c at the last step (c_n)
/// The initial state has the same shapes (always [num_layers, N, hidden], also when
/// batch_first, as in PyTorch); an empty Var means zeros. If hidden_steps is not null it
/// receives the last layer's per-step h_t Vars ([N, hidden] each, t = 0..T-1), their gradients
/// retained (retain_grad()): after backward, h_t.grad() is dL/dh_t, the gradient that reaches step
/// t through time (see diag/through_time.hpp for norms and flags).
///
/// Speed: one linear over all T*N rows computes every step's input projection (one GEMM per
/// layer); each step then runs one fused op (ops/rnn.hpp: the hidden GEMM, the gates and the
/// state update), and the outputs are gathered by one stack op. In the steady state a forward
/// allocates nothing beyond the tape's reused buffers.
///
/// Not implemented (PyTorch options): bidirectional, dropout between layers, proj_size, and
/// unbatched 2-D input (reshape a sequence to [T, 1, F]).

#include <cstdint>
#include <sstream>
#include <string>
#include <vector>

#include "tapegrad/nn/rnn_cell.hpp"
#include "tapegrad/ops/stack.hpp"

namespace tapegrad::nn {

/// The options of RNN, LSTM and GRU, under PyTorch's names.
struct RNNOptions {
  /// Number of stacked layers.
  int64_t num_layers = 1;
  /// Whether the layers have the biases b_ih and b_hh.
  bool bias = true;
  /// Whether inputs and outputs are [N, T, F] rather than [T, N, F].
  bool batch_first = false;
  RNNNonlinearity nonlinearity = RNNNonlinearity::tanh;  ///< nn::RNN only
};

/// What a sequence layer returns: the output sequence and the final state.
template <class T>
struct RNNOutput {
  /// The output sequence, [T, N, hidden_size] (batch_first: [N, T, hidden_size]).
  Var<T> output;
  /// The final state: h (and c) [num_layers, N, hidden_size].
  RNNState<T> state;
};

/// The machinery the three sequence layers share (PyTorch's RNNBase).
template <class T>
class RNNBase : public Module<T> {
 public:
  /// Which recurrence the layers run.
  enum class Mode { rnn, lstm, gru };

  /// Module call: the output sequence from a zero initial state.
  Var<T> forward(const Var<T>& x) override { return forward(x, RNNState<T>{}).output; }

  /// The output sequence and the final state from x [T, N, input_size] (batch_first: [N, T,
  /// input_size]) and an initial state ([num_layers, N, hidden_size] each; empty Vars: zeros).
  /// Wrong shapes throw ShapeError.
  RNNOutput<T> forward(const Var<T>& x, const RNNState<T>& state,
                       std::vector<Var<T>>* hidden_steps = nullptr) {
    const Shape xs = x.shape();
    const bool bf = opt_.batch_first;
    if (xs.rank() != 3 || xs[2] != input_)
      tapegrad::detail::fail<ShapeError>(name(), ": input ", xs, ": expected ",
                                         bf ? "[N,T," : "[T,N,", input_, "]",
                                         xs.rank() == 2 ? " (reshape one sequence to 3-D)" : "");
    const int64_t steps = bf ? xs[1] : xs[0], n = bf ? xs[0] : xs[1];
    if (steps == 0) tapegrad::detail::fail<ValueError>(name(), ": input ", xs, " has no steps");
    const int64_t L = opt_.num_layers;
    check_state("h", state.h, n);
    if (mode_ == Mode::lstm)
      check_state("c", state.c, n);
    else if (state.c.defined())
      tapegrad::detail::fail<ValueError>(name(), ": has no cell state c (got ", state.c.shape(),
                                         ")");

    Tape<T>& tape = x.tape();
    if (hidden_steps) hidden_steps->clear();
    last_h_.resize(static_cast<size_t>(L));
    last_c_.resize(static_cast<size_t>(L));
    step_out_.resize(static_cast<size_t>(steps));
    Var<T> input = x;
    for (int64_t k = 0; k < L; ++k) {
      const auto ks = static_cast<size_t>(k);
      const Var<T> w_hh = tape.param(w_hh_[ks]);
      const Var<T> b_hh = opt_.bias ? tape.param(b_hh_[ks]) : Var<T>();
      // Every step's input projection at once: [T, N, G*H] (or [N, T, G*H]).
      const Var<T> xp = opt_.bias ? linear(input, tape.param(w_ih_[ks]), tape.param(b_ih_[ks]))
                                  : linear(input, tape.param(w_ih_[ks]));
      Var<T> h = layer_state(state.h, k);
      Var<T> c = layer_state(state.c, k);  // for an LSTM: the previous step's record
      for (int64_t t = 0; t < steps; ++t) {
        const StepRows rows = bf ? StepRows{t, steps, n} : StepRows{t * n, 1, n};
        switch (mode_) {
          case Mode::rnn:
            h = rnn_cell(xp, rows, h, w_hh, b_hh, opt_.nonlinearity);
            break;
          case Mode::lstm:
            c = lstm_cell(xp, rows, h, c, w_hh, b_hh);
            h = lstm_hidden(c);
            break;
          case Mode::gru:
            h = gru_cell(xp, rows, h, w_hh, b_hh);
            break;
        }
        step_out_[static_cast<size_t>(t)] = h;
        if (hidden_steps && k == L - 1) hidden_steps->push_back(h.retain_grad());
      }
      input = stack(std::span<const Var<T>>(step_out_), bf ? 1 : 0);
      last_h_[ks] = h;
      if (mode_ == Mode::lstm) last_c_[ks] = lstm_cell_state(c);
    }
    RNNOutput<T> out;
    out.output = input;
    out.state.h = stack(std::span<const Var<T>>(last_h_), 0);
    if (mode_ == Mode::lstm) out.state.c = stack(std::span<const Var<T>>(last_c_), 0);
    for (auto& v : step_out_) v = Var<T>();  // hold no handles between calls
    for (auto& v : last_h_) v = Var<T>();
    for (auto& v : last_c_) v = Var<T>();
    return out;
  }

  // ---- configuration and parameters ----
  /// Size of the input's last dimension.
  int64_t input_size() const { return input_; }
  /// Size of the hidden state.
  int64_t hidden_size() const { return hidden_; }
  /// The options given at construction.
  const RNNOptions& options() const { return opt_; }
  /// Number of stacked layers.
  int64_t num_layers() const { return opt_.num_layers; }
  /// The recurrence.
  Mode mode() const { return mode_; }
  ///@{
  /// weight_ih_l{k} and friends, as PyTorch's attributes; bias_* are undefined when bias=false.
  const Parameter<T>& weight_ih_l(int64_t k) const { return w_ih_.at(static_cast<size_t>(k)); }
  const Parameter<T>& weight_hh_l(int64_t k) const { return w_hh_.at(static_cast<size_t>(k)); }
  const Parameter<T>& bias_ih_l(int64_t k) const { return at_bias(b_ih_, k); }
  const Parameter<T>& bias_hh_l(int64_t k) const { return at_bias(b_hh_, k); }
  ///@}

  std::string name() const override {
    std::ostringstream os;
    os << kind_ << "(" << input_ << ", " << hidden_;
    if (opt_.num_layers != 1) os << ", num_layers=" << opt_.num_layers;
    if (mode_ == Mode::rnn && opt_.nonlinearity == RNNNonlinearity::relu)
      os << ", nonlinearity=relu";
    if (!opt_.bias) os << ", bias=false";
    if (opt_.batch_first) os << ", batch_first=true";
    os << ")";
    return os.str();
  }

 protected:
  /// For RNN, LSTM and GRU: kind names the layer in summaries and errors. Sizes below 1 throw
  /// ValueError.
  RNNBase(const char* kind, Mode mode, int64_t input_size, int64_t hidden_size, RNNOptions opt,
          Generator& gen)
      : kind_(kind), mode_(mode), input_(input_size), hidden_(hidden_size), opt_(opt) {
    detail::check_recurrent_sizes(kind, input_size, hidden_size);
    if (opt.num_layers < 1)
      tapegrad::detail::fail<ValueError>(kind, "(", input_size, ", ", hidden_size,
                                         "): num_layers must be >= 1, got ", opt.num_layers);
    if (mode != Mode::rnn && opt.nonlinearity != RNNNonlinearity::tanh)
      tapegrad::detail::fail<ValueError>(kind, "(", input_size, ", ", hidden_size,
                                         "): nonlinearity applies to nn::RNN only");
    const int64_t gh = gates() * hidden_size;
    for (int64_t k = 0; k < opt.num_layers; ++k) {
      const std::string s = "_l" + std::to_string(k);
      const int64_t in = k == 0 ? input_size : hidden_size;
      w_ih_.push_back(this->register_parameter(
          "weight_ih" + s, detail::recurrent_init<T>({gh, in}, hidden_size, gen)));
      w_hh_.push_back(this->register_parameter(
          "weight_hh" + s, detail::recurrent_init<T>({gh, hidden_size}, hidden_size, gen)));
      if (opt.bias) {
        b_ih_.push_back(this->register_parameter(
            "bias_ih" + s, detail::recurrent_init<T>({gh}, hidden_size, gen)));
        b_hh_.push_back(this->register_parameter(
            "bias_hh" + s, detail::recurrent_init<T>({gh}, hidden_size, gen)));
      }
    }
  }

 private:
  int64_t gates() const { return mode_ == Mode::lstm ? 4 : mode_ == Mode::gru ? 3 : 1; }

  const Parameter<T>& at_bias(const std::vector<Parameter<T>>& b, int64_t k) const {
    static const Parameter<T> none;
    if (k < 0 || k >= opt_.num_layers)
      tapegrad::detail::fail<ValueError>(name(), ": layer ", k, " out of range");
    return opt_.bias ? b[static_cast<size_t>(k)] : none;
  }

  // A state must be empty or [num_layers, N, hidden_size].
  void check_state(const char* what, const Var<T>& s, int64_t n) const {
    if (s.defined() &&
        !(s.rank() == 3 && s.size(0) == opt_.num_layers && s.size(1) == n && s.size(2) == hidden_))
      tapegrad::detail::fail<ShapeError>(name(), ": initial ", what, " ", s.shape(),
                                         " for a batch of ", n, ": expected [", opt_.num_layers,
                                         ",", n, ",", hidden_, "]");
  }
  // Layer k's part [1, N, H] of an initial state (the state itself for one layer).
  Var<T> layer_state(const Var<T>& s, int64_t k) const {
    if (!s.defined()) return s;
    return opt_.num_layers == 1 ? s : slice(s, 0, k, k + 1);
  }

  const char* kind_;
  Mode mode_;
  int64_t input_, hidden_;
  RNNOptions opt_;
  std::vector<Parameter<T>> w_ih_, w_hh_, b_ih_, b_hh_;
  // Scratch for one forward (capacity kept: no allocation per call in the steady state).
  std::vector<Var<T>> step_out_, last_h_, last_c_;
};

/// Elman RNN: h_t = act(x_t W_ih^T + b_ih + h_{t-1} W_hh^T + b_hh), act = tanh or relu.
template <class T>
class RNN : public RNNBase<T> {
 public:
  /// Weights U(±1/√hidden_size) from gen, as PyTorch's.
  RNN(int64_t input_size, int64_t hidden_size, RNNOptions options = {},
      Generator& gen = default_generator())
      : RNNBase<T>("RNN", RNNBase<T>::Mode::rnn, input_size, hidden_size, options, gen) {}
};

/// Long short-term memory (Hochreiter & Schmidhuber 1997), gates i, f, g, o.
template <class T>
class LSTM : public RNNBase<T> {
 public:
  /// Weights U(±1/√hidden_size) from gen, as PyTorch's.
  LSTM(int64_t input_size, int64_t hidden_size, RNNOptions options = {},
       Generator& gen = default_generator())
      : RNNBase<T>("LSTM", RNNBase<T>::Mode::lstm, input_size, hidden_size, options, gen) {}
};

/// Gated recurrent unit (Cho et al. 2014), gates r, z, n, b_hn inside r * (W_hn h + b_hn).
template <class T>
class GRU : public RNNBase<T> {
 public:
  /// Weights U(±1/√hidden_size) from gen, as PyTorch's.
  GRU(int64_t input_size, int64_t hidden_size, RNNOptions options = {},
      Generator& gen = default_generator())
      : RNNBase<T>("GRU", RNNBase<T>::Mode::gru, input_size, hidden_size, options, gen) {}
};

}  // namespace tapegrad::nn
