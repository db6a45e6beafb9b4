#pragma once
/// \file
/// SGD with momentum, dampening, Nesterov and coupled weight decay: torch.optim.SGD's equations
/// and defaults (docs; C++ torch/csrc/api/src/optim/sgd.cpp):
///
///   d = g + wd·θ                                       (if wd ≠ 0)
///   if μ ≠ 0:  b = d on the first step (a copy, no dampening), then b = μ·b + (1 − τ)·d
///              d = d + μ·b  (Nesterov)   or   d = b
///   θ = θ − lr·d
///
/// lr multiplies the step outside the buffer (PyTorch), so changing lr does not rescale the
/// momentum already accumulated. Nesterov requires μ > 0 and τ = 0 (ValueError otherwise).
/// State: "momentum_buffer" when μ ≠ 0; no step count (as PyTorch).

#include "tapegrad/optim/optimizer.hpp"

namespace tapegrad::optim {

/// SGD's hyperparameters (torch.optim.SGD's names and defaults).
struct SGDOptions {
  /// Learning rate.
  double lr = 1e-3;
  /// Momentum μ (0: none).
  double momentum = 0;
  /// Dampening τ of the momentum.
  double dampening = 0;
  /// Coupled L2 weight decay: d = g + weight_decay·θ.
  double weight_decay = 0;
  /// Nesterov momentum (requires μ > 0 and τ = 0).
  bool nesterov = false;
};

/// SGD, torch.optim.SGD (equations in the file's description). Negative hyperparameters, or
/// Nesterov without momentum or with dampening, throw ValueError.
template <class T>
class SGD : public Optimizer<T> {
 public:
  ///@{
  /// SGD over parameter groups, a parameter list, or named parameters.
  SGD(std::vector<ParamGroup<T>> groups, SGDOptions o = {})
      : Optimizer<T>("SGD", std::move(groups), o.lr, o.weight_decay), o_(o) {
    this->check_nonnegative("momentum", o.momentum);
    if (!(o.dampening >= 0 && o.dampening <= 1))
      tapegrad::detail::fail<ValueError>("SGD: invalid dampening ", o.dampening,
                                         " (must be in [0, 1])");
    if (o.nesterov && (o.momentum <= 0 || o.dampening != 0))
      tapegrad::detail::fail<ValueError>(
          "SGD: Nesterov momentum requires a momentum > 0 and zero dampening (got momentum ",
          o.momentum, ", dampening ", o.dampening, ")");
  }
  SGD(const std::vector<Parameter<T>>& params, SGDOptions o = {})
      : SGD(std::vector<ParamGroup<T>>{ParamGroup<T>::of(params)}, o) {}
  SGD(const NamedParameters<T>& params, SGDOptions o = {})
      : SGD(std::vector<ParamGroup<T>>{ParamGroup<T>::of(params)}, o) {}
  ///@}

  /// The hyperparameters given at construction.
  const SGDOptions& options() const { return o_; }

 protected:
  using typename Optimizer<T>::ParamState;

  std::array<const char*, 3> buffer_names() const override {
    return {o_.momentum != 0 ? "momentum_buffer" : nullptr, nullptr, nullptr};
  }
  bool has_step_count() const override { return false; }

  void update(const Parameter<T>& p, ParamState& s, double lr_d, double wd_d) override {
    const T lr = static_cast<T>(lr_d), wd = static_cast<T>(wd_d);
    auto w_all = p.value().array();
    const auto g_all = p.grad().array();
    if (o_.momentum == 0) {
      if (wd_d != 0)
        w_all -= lr * (g_all + wd * w_all);
      else
        w_all -= lr * g_all;
      return;
    }
    const T mu = static_cast<T>(o_.momentum), keep = static_cast<T>(1 - o_.dampening);
    const bool first = !s.initialized;
    if (first) {
      s.buf[0] = Tensor<T>(p.shape());
      s.initialized = true;
    }
    auto b_all = s.buf[0].array();
    this->for_chunks(p.numel(), [&](int64_t off, int64_t n) {
      auto w = w_all.segment(off, n);
      auto b = b_all.segment(off, n);
      const auto g = g_all.segment(off, n);
      // d = g + wd·θ is re-evaluated inside each expression rather than stored.
      if (first) {
        if (wd_d != 0)
          b = g + wd * w;
        else
          b = g;
      } else if (wd_d != 0) {
        b = mu * b + keep * (g + wd * w);
      } else {
        b = mu * b + keep * g;
      }
      if (!o_.nesterov)
        w -= lr * b;
      else if (wd_d != 0)
        w -= lr * ((g + wd * w) + mu * b);
      else
        w -= lr * (g + mu * b);
    });
  }

 private:
  SGDOptions o_;
};

}  // namespace tapegrad::optim
