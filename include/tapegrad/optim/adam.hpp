#pragma once
/// \file
/// Adam and AdamW: torch.optim.Adam / AdamW's equations and defaults (docs; C++
/// torch/csrc/api/src/optim/adam.cpp, adamw.cpp). Per parameter, t = its own step count:
///
///   Adam  (coupled L2):   g = g + wd·θ
///   AdamW (decoupled):    θ = θ·(1 − lr·wd)                   before the moments
///   m = β1·m + (1 − β1)·g          (computed as m + (1 − β1)·(g − m), PyTorch's lerp)
///   v = β2·v + (1 − β2)·g²
///   amsgrad:  v_max = max(v_max, v), used in place of v below
///   θ = θ − (lr / (1 − β1^t)) · m / (√v / √(1 − β2^t) + eps)
///
/// eps is added after the square root of the bias-corrected v (PyTorch; tiny-dnn puts it
/// inside, flashlight uses the paper's ε̂ — both differ slightly).
/// Defaults: lr 1e-3, betas (0.9, 0.999), eps 1e-8, amsgrad false; weight_decay 0 for Adam,
/// 1e-2 for AdamW. State: "step", "exp_avg", "exp_avg_sq", and "max_exp_avg_sq" with amsgrad.

#include <array>
#include <cmath>

#include "tapegrad/optim/optimizer.hpp"

namespace tapegrad::optim {

/// Adam's hyperparameters (torch.optim.Adam's names and defaults).
struct AdamOptions {
  /// Learning rate.
  double lr = 1e-3;
  /// β1 and β2, the decay rates of the moment estimates.
  std::array<double, 2> betas{0.9, 0.999};
  /// Added to the denominator, after the square root.
  double eps = 1e-8;
  /// Coupled L2 weight decay: g += weight_decay·θ.
  double weight_decay = 0;
  /// Use the maximum of the second-moment estimates (AMSGrad).
  bool amsgrad = false;
};

/// AdamW's hyperparameters (torch.optim.AdamW's names and defaults).
struct AdamWOptions {
  /// Learning rate.
  double lr = 1e-3;
  /// β1 and β2, the decay rates of the moment estimates.
  std::array<double, 2> betas{0.9, 0.999};
  /// Added to the denominator, after the square root.
  double eps = 1e-8;
  /// Decoupled weight decay: θ ← θ·(1 − lr·weight_decay).
  double weight_decay = 1e-2;
  /// Use the maximum of the second-moment estimates (AMSGrad).
  bool amsgrad = false;
};

/// Adam, torch.optim.Adam (equations in the file's description). Negative hyperparameters or betas
/// outside [0, 1) throw ValueError.
template <class T>
class Adam : public Optimizer<T> {
 public:
  ///@{
  /// Adam over parameter groups, a parameter list, or named parameters (then state and errors use
  /// the names).
  Adam(std::vector<ParamGroup<T>> groups, AdamOptions o = {})
      : Adam("Adam", std::move(groups), o, /*decoupled=*/false) {}
  Adam(const std::vector<Parameter<T>>& params, AdamOptions o = {})
      : Adam(std::vector<ParamGroup<T>>{ParamGroup<T>::of(params)}, o) {}
  Adam(const NamedParameters<T>& params, AdamOptions o = {})
      : Adam(std::vector<ParamGroup<T>>{ParamGroup<T>::of(params)}, o) {}
  ///@}

  /// The hyperparameters given at construction.
  const AdamOptions& options() const { return o_; }
  /// Whether weight decay is decoupled (AdamW).
  bool decoupled_weight_decay() const { return decoupled_; }

 protected:
  using typename Optimizer<T>::ParamState;

  /// For AdamW: name for errors, decoupled weight decay or not.
  Adam(const char* name, std::vector<ParamGroup<T>> groups, AdamOptions o, bool decoupled)
      : Optimizer<T>(name, std::move(groups), o.lr, o.weight_decay), o_(o), decoupled_(decoupled) {
    this->check_nonnegative("eps", o.eps);
    for (int k = 0; k < 2; ++k)
      if (!(o.betas[k] >= 0 && o.betas[k] < 1))
        tapegrad::detail::fail<ValueError>(name, ": invalid beta parameter at index ", k, ": ",
                                           o.betas[k], " (must be in [0, 1))");
  }

  std::array<const char*, 3> buffer_names() const override {
    return {"exp_avg", "exp_avg_sq", o_.amsgrad ? "max_exp_avg_sq" : nullptr};
  }
  /// exp_avg_sq and max_exp_avg_sq: their square roots are taken.
  std::array<bool, 3> nonnegative_buffers() const override { return {false, true, true}; }

  void update(const Parameter<T>& p, ParamState& s, double lr, double wd) override {
    if (!s.initialized) this->init_state(s, p);
    const int64_t t = ++s.step;
    const double b1 = o_.betas[0], b2 = o_.betas[1];
    const double bc1 = 1 - std::pow(b1, double(t)), bc2 = 1 - std::pow(b2, double(t));
    const T step_size = static_cast<T>(lr / bc1), bc2_sqrt = static_cast<T>(std::sqrt(bc2));
    const T one_b1 = static_cast<T>(1 - b1), beta2 = static_cast<T>(b2),
            one_b2 = static_cast<T>(1 - b2), eps = static_cast<T>(o_.eps),
            decay = static_cast<T>(1 - lr * wd), wdt = static_cast<T>(wd);
    const bool coupled = !decoupled_ && wd != 0, shrink = decoupled_ && wd != 0;
    auto w_all = p.value().array();
    const auto g_all = p.grad().array();
    auto m_all = s.buf[0].array(), v_all = s.buf[1].array();
    this->for_chunks(p.numel(), [&](int64_t off, int64_t n) {
      auto w = w_all.segment(off, n);
      auto m = m_all.segment(off, n), v = v_all.segment(off, n);
      const auto g = g_all.segment(off, n);
      if (shrink) w *= decay;
      if (coupled) {
        m += one_b1 * ((g + wdt * w) - m);
        v = beta2 * v + one_b2 * (g + wdt * w).square();
      } else {
        m += one_b1 * (g - m);
        v = beta2 * v + one_b2 * g.square();
      }
      if (o_.amsgrad) {
        auto vmax = s.buf[2].array().segment(off, n);
        vmax = vmax.max(v);
        w -= step_size * (m / (vmax.sqrt() / bc2_sqrt + eps));
      } else {
        w -= step_size * (m / (v.sqrt() / bc2_sqrt + eps));
      }
    });
  }

 private:
  AdamOptions o_;
  bool decoupled_;
};

/// AdamW: Adam with decoupled weight decay θ ← θ·(1 − lr·wd) (Loshchilov & Hutter), default
/// weight_decay 1e-2.
template <class T>
class AdamW : public Adam<T> {
 public:
  ///@{
  /// AdamW over parameter groups, a parameter list, or named parameters.
  AdamW(std::vector<ParamGroup<T>> groups, AdamWOptions o = {})
      : Adam<T>("AdamW", std::move(groups),
                AdamOptions{o.lr, o.betas, o.eps, o.weight_decay, o.amsgrad},
                /*decoupled=*/true) {}
  AdamW(const std::vector<Parameter<T>>& params, AdamWOptions o = {})
      : AdamW(std::vector<ParamGroup<T>>{ParamGroup<T>::of(params)}, o) {}
  AdamW(const NamedParameters<T>& params, AdamWOptions o = {})
      : AdamW(std::vector<ParamGroup<T>>{ParamGroup<T>::of(params)}, o) {}
  ///@}
};

}  // namespace tapegrad::optim
