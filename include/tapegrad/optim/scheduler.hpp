#pragma once
/// \file
/// Learning-rate schedules acting on an optimizer's parameter groups, with PyTorch's formulas
/// (torch.optim.lr_scheduler). Each group's lr is recomputed from its initial lr (the lr it had
/// when added to the optimizer) and the epoch e, in closed form:
///
///   StepLR(step_size, gamma = 0.1):      lr = base · gamma^⌊e / step_size⌋
///   CosineAnnealingLR(T_max, eta_min):   lr = eta_min + (base − eta_min)·(1 + cos(π·e/T_max))/2
///   LinearWarmup(warmup_steps, start_factor = 1/3, end_factor = 1)   (PyTorch's LinearLR):
///                                        lr = base · (s + (f − s)·min(e,
///                                        warmup_steps)/warmup_steps)
///   SequentialLR(schedulers, milestones): scheduler k for milestone_{k−1} ≤ e < milestone_k,
///                                        run on the epoch counted from its milestone (PyTorch's
///                                        SequentialLR); WarmupCosineLR is warm-up then cosine.
///   WarmupInverseSqrtLR(warmup_steps, start_factor = 1/warmup_steps):
///                                        linear warm-up as LinearWarmup up to e = warmup_steps,
///                                        then lr = base · √(warmup_steps / e) (the Transformer's
///                                        schedule, Vaswani et al. 2017, normalised to peak at
///                                        base; fairseq's inverse_sqrt)
///
/// Like PyTorch, constructing a scheduler sets epoch 0's lr; call step() once per epoch (or per
/// iteration, for warm-up), after optimizer.step(). set_epoch(e) resumes at epoch e.
/// A float argument that is not finite throws ValueError at construction, and an epoch whose lr
/// would not be finite (gamma = 1e300 after a few steps) throws ValueError naming the scheduler
/// before any lr changes.

#include <cmath>
#include <cstdint>
#include <limits>
#include <memory>
#include <numbers>
#include <vector>

#include "tapegrad/optim/optimizer.hpp"

namespace tapegrad::optim {

/// The base of the learning-rate schedules: sets each group's lr from its initial lr and the epoch
/// (see the file's description).
template <class T>
class LRScheduler {
 public:
  /// A schedule of optimizer's lr; subclasses set epoch 0's lr on construction. name (a string
  /// literal) begins the messages of errors, e.g. "StepLR".
  explicit LRScheduler(Optimizer<T>& optimizer, const char* name = "LRScheduler")
      : opt_(&optimizer), name_(name) {}
  virtual ~LRScheduler() = default;

  /// The lr of a group whose initial lr is base_lr, at epoch e.
  virtual double lr_at(double base_lr, int64_t epoch) const = 0;

  /// The next epoch: sets its lr. Throws ValueError past the largest int64_t epoch, or (as
  /// set_epoch) if its lr would not be finite.
  void step() {
    if (epoch_ == std::numeric_limits<int64_t>::max())  // epoch_ + 1 would overflow
      tapegrad::detail::fail<ValueError>(name_, ": step() past the last epoch ", epoch_);
    set_epoch(epoch_ + 1);
  }
  /// Jumps to epoch (to resume) and sets its lr. Throws ValueError, changing nothing, if epoch is
  /// negative or a group's lr at that epoch would not be finite.
  void set_epoch(int64_t epoch) {
    if (epoch < 0) tapegrad::detail::fail<ValueError>(name_, ": negative epoch ", epoch);
    // Every group's lr checked first (lr_at is cheap and pure), so a failure changes nothing.
    for (size_t g = 0; g < opt_->num_param_groups(); ++g) {
      const double lr = lr_at(opt_->initial_lr(g), epoch);
      if (!std::isfinite(lr))
        tapegrad::detail::fail<ValueError>(name_, ": the lr of group ", g, " at epoch ", epoch,
                                           " would be ", lr, " (initial lr ", opt_->initial_lr(g),
                                           ")");
    }
    epoch_ = epoch;
    for (size_t g = 0; g < opt_->num_param_groups(); ++g)
      opt_->set_lr(g, lr_at(opt_->initial_lr(g), epoch));
  }
  /// The current epoch.
  int64_t last_epoch() const { return epoch_; }
  /// The lr of every group, as set by the last step().
  std::vector<double> get_last_lr() const {
    std::vector<double> out;
    for (size_t g = 0; g < opt_->num_param_groups(); ++g) out.push_back(opt_->lr(g));
    return out;
  }
  /// The optimizer whose lr the schedule sets.
  Optimizer<T>& optimizer() const { return *opt_; }

 protected:
  /// Sets every group's lr to lr_at(initial lr, current epoch).
  void apply() { set_epoch(epoch_); }

 private:
  Optimizer<T>* opt_;
  const char* name_;
  int64_t epoch_ = 0;
};

/// lr = base · gamma^⌊e / step_size⌋ (torch.optim.lr_scheduler.StepLR).
template <class T>
class StepLR : public LRScheduler<T> {
 public:
  /// step_size < 1, or gamma negative or not finite, throws ValueError.
  StepLR(Optimizer<T>& opt, int64_t step_size, double gamma = 0.1)
      : LRScheduler<T>(opt, "StepLR"), step_size_(step_size), gamma_(gamma) {
    if (step_size < 1)
      tapegrad::detail::fail<ValueError>("StepLR: step_size must be >= 1, got ", step_size);
    if (!(gamma >= 0 && std::isfinite(gamma)))
      tapegrad::detail::fail<ValueError>("StepLR: gamma must be finite and >= 0, got ", gamma);
    this->apply();
  }
  double lr_at(double base, int64_t e) const override {
    return base * std::pow(gamma_, double(e / step_size_));
  }

 private:
  int64_t step_size_;
  double gamma_;
};

/// lr = eta_min + (base − eta_min)·(1 + cos(π·e/T_max))/2
/// (torch.optim.lr_scheduler.CosineAnnealingLR).
template <class T>
class CosineAnnealingLR : public LRScheduler<T> {
 public:
  /// T_max < 1, or eta_min negative or not finite, throws ValueError.
  CosineAnnealingLR(Optimizer<T>& opt, int64_t T_max, double eta_min = 0)
      : LRScheduler<T>(opt, "CosineAnnealingLR"), t_max_(T_max), eta_min_(eta_min) {
    if (T_max < 1)
      tapegrad::detail::fail<ValueError>("CosineAnnealingLR: T_max must be >= 1, got ", T_max);
    if (!(eta_min >= 0 && std::isfinite(eta_min)))
      tapegrad::detail::fail<ValueError>("CosineAnnealingLR: eta_min must be finite and >= 0, got ",
                                         eta_min);
    this->apply();
  }
  double lr_at(double base, int64_t e) const override {
    return eta_min_ +
           (base - eta_min_) * (1 + std::cos(std::numbers::pi * double(e) / double(t_max_))) / 2;
  }

 private:
  int64_t t_max_;
  double eta_min_;
};

/// Linear warm-up: lr = base · (s + (f − s)·min(e, warmup_steps)/warmup_steps)
/// (torch.optim.lr_scheduler.LinearLR).
template <class T>
class LinearWarmup : public LRScheduler<T> {
 public:
  /// warmup_steps < 1 or factors outside [0, 1] throw ValueError.
  LinearWarmup(Optimizer<T>& opt, int64_t warmup_steps, double start_factor = 1.0 / 3,
               double end_factor = 1.0)
      : LRScheduler<T>(opt, "LinearWarmup"),
        steps_(warmup_steps),
        start_(start_factor),
        end_(end_factor) {
    if (warmup_steps < 1)
      tapegrad::detail::fail<ValueError>("LinearWarmup: warmup_steps must be >= 1, got ",
                                         warmup_steps);
    if (!(start_factor > 0 && start_factor <= 1) || !(end_factor >= 0 && end_factor <= 1))
      tapegrad::detail::fail<ValueError>(
          "LinearWarmup: need 0 < start_factor <= 1 and 0 <= end_factor <= 1, got ", start_factor,
          " and ", end_factor);
    this->apply();
  }
  double lr_at(double base, int64_t e) const override {
    const double done = double(std::min(e, steps_)) / double(steps_);
    return base * (start_ + (end_ - start_) * done);
  }

 private:
  int64_t steps_;
  double start_, end_;
};

/// Scheduler k for milestone_{k−1} ≤ e < milestone_k, on the epoch counted from its milestone
/// (torch.optim.lr_scheduler.SequentialLR).
template <class T>
class SequentialLR : public LRScheduler<T> {
 public:
  /// One more scheduler than milestones, milestones increasing (ValueError otherwise).
  SequentialLR(Optimizer<T>& opt, std::vector<std::shared_ptr<LRScheduler<T>>> schedulers,
               std::vector<int64_t> milestones)
      : LRScheduler<T>(opt, "SequentialLR"),
        scheds_(std::move(schedulers)),
        milestones_(std::move(milestones)) {
    if (scheds_.empty() || milestones_.size() + 1 != scheds_.size())
      tapegrad::detail::fail<ValueError>("SequentialLR: ", scheds_.size(), " schedulers need ",
                                         scheds_.empty() ? 0 : scheds_.size() - 1,
                                         " milestones, got ", milestones_.size());
    for (size_t k = 0; k < milestones_.size(); ++k)
      if (milestones_[k] < 1 || (k > 0 && milestones_[k] <= milestones_[k - 1]))
        tapegrad::detail::fail<ValueError>("SequentialLR: milestones must be positive and ",
                                           "increasing (milestone ", k, " = ", milestones_[k], ")");
    for (const auto& s : scheds_)
      if (!s || &s->optimizer() != &opt)
        tapegrad::detail::fail<ValueError>(
            "SequentialLR: every scheduler must act on the same optimizer");
    this->apply();
  }
  double lr_at(double base, int64_t e) const override {
    size_t k = 0;
    while (k < milestones_.size() && milestones_[k] <= e) ++k;
    return scheds_[k]->lr_at(base, k == 0 ? e : e - milestones_[k - 1]);
  }

 private:
  std::vector<std::shared_ptr<LRScheduler<T>>> scheds_;
  std::vector<int64_t> milestones_;
};

/// Linear warm-up over warmup_steps from start_factor·base to base, then cosine annealing from
/// base to eta_min over the next T_max epochs.
template <class T>
class WarmupCosineLR : public SequentialLR<T> {
 public:
  /// Warm-up over warmup_steps, then cosine annealing over T_max epochs; invalid arguments throw
  /// ValueError.
  WarmupCosineLR(Optimizer<T>& opt, int64_t warmup_steps, int64_t T_max,
                 double start_factor = 1.0 / 3, double eta_min = 0)
      : SequentialLR<T>(opt,
                        {std::make_shared<LinearWarmup<T>>(opt, warmup_steps, start_factor),
                         std::make_shared<CosineAnnealingLR<T>>(opt, T_max, eta_min)},
                        {warmup_steps}) {}
};

/// Linear warm-up from start_factor·base to base over warmup_steps, then decay as 1/√e.
template <class T>
class WarmupInverseSqrtLR : public LRScheduler<T> {
 public:
  /// start_factor = 0 means 1/warmup_steps; warmup_steps < 1 or start_factor outside [0, 1] throw
  /// ValueError.
  WarmupInverseSqrtLR(Optimizer<T>& opt, int64_t warmup_steps, double start_factor = 0)
      : LRScheduler<T>(opt, "WarmupInverseSqrtLR"),
        steps_(warmup_steps),
        start_(start_factor > 0 || warmup_steps < 1 ? start_factor : 1.0 / double(warmup_steps)) {
    if (warmup_steps < 1)
      tapegrad::detail::fail<ValueError>("WarmupInverseSqrtLR: warmup_steps must be >= 1, got ",
                                         warmup_steps);
    if (!(start_factor >= 0 && start_factor <= 1))
      tapegrad::detail::fail<ValueError>(
          "WarmupInverseSqrtLR: need 0 <= start_factor <= 1 (0: 1/warmup_steps), got ",
          start_factor);
    this->apply();
  }
  double lr_at(double base, int64_t e) const override {
    if (e < steps_) return base * (start_ + (1 - start_) * double(e) / double(steps_));
    return base * std::sqrt(double(steps_) / double(e));
  }

 private:
  int64_t steps_;
  double start_;
};

}  // namespace tapegrad::optim
