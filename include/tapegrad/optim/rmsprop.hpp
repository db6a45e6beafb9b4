#pragma once
/// \file
/// RMSprop: torch.optim.RMSprop's equations and defaults (docs; C++
/// torch/csrc/api/src/optim/rmsprop.cpp):
///
///   g = g + wd·θ                                        (if wd ≠ 0, coupled)
///   s = α·s + (1 − α)·g²
///   centered:  ḡ = α·ḡ + (1 − α)·g  (as ḡ + (1 − α)(g − ḡ));   a = √max(s − ḡ², 0) + eps
///   else:      a = √s + eps                             (eps outside the square root)
///   μ > 0:     b = μ·b + g / a;   θ = θ − lr·b
///   else:      θ = θ − lr·g / a
///
/// s ≥ ḡ² in exact arithmetic (both are averages with the same weights, which sum to at most 1);
/// rounding can make s − ḡ² slightly negative when g hardly varies (a float gradient of 0.1 held
/// constant did within 1300 steps), and torch's √ of it gives NaN weights. Here it is taken as 0,
/// the variance it stands for.
///
/// Defaults: lr 1e-2, alpha 0.99, eps 1e-8, weight_decay 0, momentum 0, centered false.
/// State: "step", "square_avg", "momentum_buffer" (μ > 0), "grad_avg" (centered).

#include "tapegrad/optim/optimizer.hpp"

namespace tapegrad::optim {

/// RMSprop's hyperparameters (torch.optim.RMSprop's names and defaults).
struct RMSpropOptions {
  /// Learning rate.
  double lr = 1e-2;
  /// Decay rate of the squared-gradient average.
  double alpha = 0.99;
  /// Added to the denominator, after the square root.
  double eps = 1e-8;
  /// Coupled L2 weight decay: g += weight_decay·θ.
  double weight_decay = 0;
  /// Momentum μ (0: none).
  double momentum = 0;
  /// Normalise by the variance estimate (s − ḡ²) instead of s.
  bool centered = false;
};

/// RMSprop, torch.optim.RMSprop (equations in the file's description). Negative hyperparameters
/// throw ValueError.
template <class T>
class RMSprop : public Optimizer<T> {
 public:
  ///@{
  /// RMSprop over parameter groups, a parameter list, or named parameters.
  RMSprop(std::vector<ParamGroup<T>> groups, RMSpropOptions o = {})
      : Optimizer<T>("RMSprop", std::move(groups), o.lr, o.weight_decay), o_(o) {
    this->check_nonnegative("eps", o.eps);
    this->check_nonnegative("momentum", o.momentum);
    if (!(o.alpha >= 0 && o.alpha <= 1))
      tapegrad::detail::fail<ValueError>("RMSprop: invalid alpha ", o.alpha,
                                         " (must be in [0, 1])");
  }
  RMSprop(const std::vector<Parameter<T>>& params, RMSpropOptions o = {})
      : RMSprop(std::vector<ParamGroup<T>>{ParamGroup<T>::of(params)}, o) {}
  RMSprop(const NamedParameters<T>& params, RMSpropOptions o = {})
      : RMSprop(std::vector<ParamGroup<T>>{ParamGroup<T>::of(params)}, o) {}
  ///@}

  /// The hyperparameters given at construction.
  const RMSpropOptions& options() const { return o_; }

 protected:
  using typename Optimizer<T>::ParamState;

  /// Fixed slots: 0 square_avg, 1 momentum_buffer, 2 grad_avg.
  std::array<const char*, 3> buffer_names() const override {
    return {"square_avg", o_.momentum > 0 ? "momentum_buffer" : nullptr,
            o_.centered ? "grad_avg" : nullptr};
  }
  /// square_avg: its square root is taken.
  std::array<bool, 3> nonnegative_buffers() const override { return {true, false, false}; }

  void update(const Parameter<T>& p, ParamState& s, double lr_d, double wd_d) override {
    if (!s.initialized) this->init_state(s, p);
    ++s.step;
    const T lr = static_cast<T>(lr_d), wd = static_cast<T>(wd_d), alpha = static_cast<T>(o_.alpha),
            one_a = static_cast<T>(1 - o_.alpha), eps = static_cast<T>(o_.eps),
            mu = static_cast<T>(o_.momentum);
    const bool decay = wd_d != 0, momentum = o_.momentum > 0, centered = o_.centered;
    auto w_all = p.value().array();
    const auto g_all = p.grad().array();
    this->for_chunks(p.numel(), [&](int64_t off, int64_t n) {
      auto w = w_all.segment(off, n);
      auto sq = s.buf[0].array().segment(off, n);
      const auto g0 = g_all.segment(off, n);
      // The same body with d = g or d = g + wd·θ, evaluated inside each expression.
      auto body = [&](const auto& d) {
        sq = alpha * sq + one_a * d.square();
        auto apply = [&](const auto& avg) {
          if (momentum) {
            auto b = s.buf[1].array().segment(off, n);
            b = mu * b + d / avg;
            w -= lr * b;
          } else {
            w -= lr * (d / avg);
          }
        };
        if (centered) {
          auto ga = s.buf[2].array().segment(off, n);
          ga += one_a * (d - ga);
          apply((sq - ga.square()).max(T(0)).sqrt() + eps);
        } else {
          apply(sq.sqrt() + eps);
        }
      };
      if (decay)
        body(g0 + wd * w);
      else
        body(g0);
    });
  }

 private:
  RMSpropOptions o_;
};

}  // namespace tapegrad::optim
