#pragma once
/// \file
/// Gradient clipping, as torch.nn.utils.clip_grad_norm_ / clip_grad_value_ (clip_grad.py,
/// C++ torch/nn/utils/clip_grad.h):
///
///   total     = ‖(‖g_1‖_p, …, ‖g_k‖_p)‖_p = (Σ_i Σ_j |g_ij|^p)^(1/p)   (p = ∞: max |g_ij|)
///   clip_coef = min(max_norm / (total + 1e-6), 1);   every g *= clip_coef;   return total
///
/// so a gradient whose norm equals max_norm is still scaled by max_norm / (max_norm + 1e-6),
/// exactly as PyTorch does. total = inf gives clip_coef = 0 (finite entries become 0, inf
/// entries NaN); total = NaN makes every gradient NaN — PyTorch's behaviour, kept.
///
/// One deliberate difference: total is computed without overflow or underflow. Each tensor's sum
/// is first taken in T (one vectorised pass); only when it overflows or underflows is it redone
/// scaled by the tensor's largest |g|, and tensors are combined as (scale, sum) pairs in double,
/// as LAPACK's nrm2 does. A float32 gradient of norm 1e22 is therefore clipped to max_norm
/// instead of its norm becoming inf and every gradient being zeroed.
///
/// clip_grad_value: g ← clamp(g, −v, v) elementwise; NaN stays NaN.
///
/// The free functions take the parameters a user's own loop trains; Optimizer::step() runs the
/// same code through GradNormClip / GradValueClip.

#include <algorithm>
#include <array>
#include <cmath>
#include <limits>
#include <span>
#include <vector>

#include "tapegrad/parameter.hpp"
#include "tapegrad/threads.hpp"

namespace tapegrad::optim {

namespace detail {

using tapegrad::detail::fail;

inline void check_norm_type(const char* who, double p) {
  if (!(p > 0)) fail<ValueError>(who, ": norm_type must be positive or infinity, got ", p);
}

// Accumulates Σ|x|^p as scale^p · sum, so that neither overflows (LAPACK nrm2's update),
// and remembers NaN and ±inf separately.
class PowerSum {
 public:
  explicit PowerSum(double p) : p_(p) {}
  // Adds m^p · s (m ≥ 0 finite, s ≥ 0 finite).
  void add(double m, double s) {
    if (m == 0 || s == 0) return;
    if (m > scale_) {
      sum_ = s + sum_ * ratio_pow(scale_ / m);
      scale_ = m;
    } else {
      sum_ += s * ratio_pow(m / scale_);
    }
  }
  void add_nan() { nan_ = true; }
  void add_inf() { inf_ = true; }
  double norm() const {
    if (nan_) return std::numeric_limits<double>::quiet_NaN();
    if (inf_) return std::numeric_limits<double>::infinity();
    if (scale_ == 0) return 0;
    return scale_ * (p_ == 2 ? std::sqrt(sum_) : p_ == 1 ? sum_ : std::pow(sum_, 1 / p_));
  }

 private:
  double ratio_pow(double r) const { return p_ == 2 ? r * r : p_ == 1 ? r : std::pow(r, p_); }
  double p_;
  double scale_ = 0, sum_ = 0;
  bool nan_ = false, inf_ = false;
};

// Σ|x|^p summed in T; a large tensor in at most 64 blocks whose size depends on its size only
// (summed in parallel, combined in double), so that the result does not depend on the thread
// count.
template <class T>
double plain_power_sum(const Tensor<T>& t, double p) {
  const auto sum_of = [&t, p](int64_t off, int64_t n) -> T {
    const auto a = t.array().segment(off, n);
    return p == 2 ? a.square().sum() : p == 1 ? a.abs().sum() : a.abs().pow(T(p)).sum();
  };
  const int64_t n = t.numel();
  if (n <= parallel_threshold) return sum_of(0, n);
  constexpr int64_t blocks = 64;
  std::array<double, blocks> partial{};
  const int64_t len = std::max<int64_t>(1 << 14, (n + blocks - 1) / blocks);
  tapegrad::detail::for_each_chunk(n, len, [&](int64_t off, int64_t m) {
    partial[static_cast<size_t>(off / len)] = sum_of(off, m);
  });
  double s = 0;
  for (double v : partial) s += v;
  return s;
}

// Σ|x|^p of one tensor (p finite) into acc, overflow- and underflow-free.
template <class T>
void accumulate_power_sum(const Tensor<T>& t, double p, PowerSum& acc) {
  if (t.numel() == 0) return;
  const auto a = t.array();
  // Fast path: the plain sum in T. A finite sum well above the underflow range is exact enough.
  const double s = plain_power_sum(t, p);
  constexpr T tiny = std::numeric_limits<T>::min() / std::numeric_limits<T>::epsilon();
  if (std::isfinite(s) && s >= tiny) {
    acc.add(p == 2 ? std::sqrt(s) : p == 1 ? s : std::pow(s, 1 / p), 1.0);
    return;
  }
  const T m = a.abs().template maxCoeff<Eigen::PropagateNaN>();
  if (std::isnan(m)) return acc.add_nan();
  if (std::isinf(m)) return acc.add_inf();
  if (m == 0) return;
  // Scaled: every |x|/m ≤ 1, so the sum is at most numel().
  const double scaled = p == 2   ? double((a / m).square().sum())
                        : p == 1 ? double((a.abs() / m).sum())
                                 : double((a.abs() / m).pow(T(p)).sum());
  acc.add(m, scaled);
}

// max |x| over the tensors; NaN if any element is NaN.
template <class T>
double max_abs(std::span<const Parameter<T>> params) {
  double m = 0;
  for (const auto& p : params) {
    if (p.grad().numel() == 0) continue;
    const T v = p.grad().array().abs().template maxCoeff<Eigen::PropagateNaN>();
    if (std::isnan(v)) return std::numeric_limits<double>::quiet_NaN();
    m = std::max(m, double(v));
  }
  return m;
}

// True when every element is finite: x − x is 0 for finite x and NaN for ±inf and NaN, and a
// vectorised sum keeps the NaN (Eigen's allFinite() runs element by element, 4x slower).
template <class T>
bool all_finite(const Tensor<T>& t) {
  const auto a = t.array();
  return (a - a).sum() == T(0);
}

template <class T>
void check_grad_shape(const char* who, const Parameter<T>& p) {
  if (!(p.grad().shape() == p.value().shape()))
    fail<ShapeError>(who, ": gradient of shape ", p.grad().shape(), " for a parameter of shape ",
                     p.value().shape());
}

// Multiplies every gradient by coef (≥ 0), without flushing coef to zero when it is below
// T's normal range (a float gradient of norm 1e41 needs coef 1e-41): then by √coef twice.
template <class T>
void scale_grads(std::span<const Parameter<T>> params, double coef) {
  const T c = static_cast<T>(coef);
  const bool twice = coef > 0 && c < std::numeric_limits<T>::min();
  const T r = twice ? static_cast<T>(std::sqrt(coef)) : c;
  for (const auto& p : params) {
    auto g = p.grad().array();
    tapegrad::detail::for_each_chunk(g.size(), 4096, [&](int64_t off, int64_t n) {
      g.segment(off, n) *= r;
      if (twice) g.segment(off, n) *= r;
    });
  }
}

}  // namespace detail

/// ‖(g_1, …, g_k)‖_p over every parameter's gradient, in double, without overflow.
/// norm_type is any p > 0 or INFINITY. Returns 0 for an empty list.
template <class T>
double grad_norm(std::span<const Parameter<T>> params, double norm_type = 2.0) {
  detail::check_norm_type("grad_norm", norm_type);
  for (const auto& p : params) detail::check_grad_shape("grad_norm", p);
  if (std::isinf(norm_type)) return detail::max_abs(params);
  detail::PowerSum acc(norm_type);
  for (const auto& p : params) detail::accumulate_power_sum(p.grad(), norm_type, acc);
  return acc.norm();
}
/// The same for a vector of parameters.
template <class T>
double grad_norm(const std::vector<Parameter<T>>& params, double norm_type = 2.0) {
  return grad_norm(std::span<const Parameter<T>>(params), norm_type);
}

/// Clipping by global norm as a pipeline stage (Optimizer::step's stage 2).
struct GradNormClip {
  /// The largest total norm allowed.
  double max_norm;
  /// The order p of the norm (inf: the largest absolute value).
  double norm_type = 2.0;
  /// Throw NonFiniteError when the total norm is NaN or inf (else the gradients become NaN).
  bool error_if_nonfinite = false;

  /// Throws ValueError for a negative max_norm or an invalid norm_type.
  void validate(const char* who) const {
    if (!(max_norm >= 0))
      tapegrad::detail::fail<ValueError>(who, ": max_norm must be >= 0, got ", max_norm);
    detail::check_norm_type(who, norm_type);
  }
  /// Scales the gradients given their pre-clip total norm (as computed by grad_norm).
  template <class T>
  void apply(std::span<const Parameter<T>> params, double total) const {
    if (error_if_nonfinite && !std::isfinite(total))
      tapegrad::detail::fail<NonFiniteError>("clip_grad_norm: the total norm of order ", norm_type,
                                             " for gradients from `parameters` is non-finite (",
                                             total, "), so it cannot be clipped");
    // std::min keeps a NaN first argument: a NaN total makes every gradient NaN.
    const double coef = std::min(max_norm / (total + 1e-6), 1.0);
    if (coef == 1.0) return;  // multiplying by 1 changes nothing
    detail::scale_grads(params, coef);
  }
  /// grad_norm, then apply; returns the pre-clip total.
  template <class T>
  double operator()(std::span<const Parameter<T>> params) const {
    validate("clip_grad_norm");
    const double total = grad_norm(params, norm_type);
    apply(params, total);
    return total;
  }
};

/// Clipping by value as a pipeline stage: g ← clamp(g, −clip_value, clip_value).
struct GradValueClip {
  /// The largest absolute value allowed.
  double clip_value;

  /// Throws ValueError for a negative clip_value.
  void validate(const char* who) const {
    if (!(clip_value >= 0))
      tapegrad::detail::fail<ValueError>(who, ": clip_value must be >= 0, got ", clip_value);
  }
  /// Clamps every gradient to [−clip_value, clip_value].
  template <class T>
  void operator()(std::span<const Parameter<T>> params) const {
    validate("clip_grad_value");
    const T v = static_cast<T>(clip_value);
    for (const auto& p : params) {
      detail::check_grad_shape("clip_grad_value", p);
      auto g = p.grad().array();
      // Eigen's max/min follow std::max/min (the first operand wins a comparison with NaN),
      // so a NaN gradient stays NaN, as torch's clamp_; vectorised, unlike select().
      g = g.max(-v).min(v);
    }
  }
};

/// torch.nn.utils.clip_grad_norm_: scales the gradients in place so that their global p-norm is
/// at most max_norm; returns the total norm before clipping. error_if_nonfinite: throw
/// NonFiniteError instead of clipping a NaN or infinite total.
template <class T>
double clip_grad_norm(const std::vector<Parameter<T>>& params, double max_norm,
                      double norm_type = 2.0, bool error_if_nonfinite = false) {
  return GradNormClip{max_norm, norm_type,
                      error_if_nonfinite}(std::span<const Parameter<T>>(params));
}

/// torch.nn.utils.clip_grad_value_: clamps every gradient element to [−clip_value, clip_value].
template <class T>
void clip_grad_value(const std::vector<Parameter<T>>& params, double clip_value) {
  GradValueClip{clip_value}(std::span<const Parameter<T>>(params));
}

}  // namespace tapegrad::optim
