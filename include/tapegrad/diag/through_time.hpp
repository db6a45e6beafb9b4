#pragma once
/// \file
/// Gradient norms through time: the GradientMonitor's view of a recurrent network, per time step
/// instead of per layer.
///
///   std::vector<tg::Var<float>> hs;
///   auto out = rnn.forward(x, {}, &hs);             // hs[t] = h_t of the last layer
///   tape.backward(loss);
///   auto norms = tg::diag::grad_norms_through_time(hs);   // norms[t] = ||dL/dh_t||
///   auto flags = tg::diag::through_time_flags(norms);      // e.g. "VANISHING (x0.42/step)"
///
/// dL/dh_t is the whole gradient that reaches step t, through every later step. In a vanilla
/// RNN it is multiplied by W_hh^T diag(act') once per step back in time, so its norm changes
/// geometrically: it shrinks when those Jacobians' norms are below 1 (tanh' <= 1 and a small
/// W_hh: vanishing) and grows when they are above (exploding) (Bengio, Simard & Frasconi 1994;
/// Pascanu, Mikolov & Bengio 2013). An LSTM's cell state passes it on multiplied by the forget
/// gate only, so where the gates stay open it neither vanishes nor explodes.
///
/// through_time_flags fits log ||dL/dh_t|| = a + b t by least squares and reports
///   factor_per_step = exp(-b): the norm's factor per step back in time (< 1 decays, > 1 grows),
///   span            = factor_per_step^(t_last - t_first): the fitted first-to-last ratio,
///   r2              = the fit's R^2 (near 1: geometric),
/// and flags vanishing when span < vanishing_ratio, exploding when span > exploding_ratio
/// (the same defaults as GradientMonitor's layer ratios: 1e-2 and 1e2), non_finite when a norm is
/// NaN or infinite. A step whose gradient is exactly zero while a later step has one (the
/// gradient died on the way back: saturated tanh units, whose derivative is 0 in floating point,
/// or a dead ReLU) is counted in dead_steps, left out of the fit, and sets vanishing too; with
/// fewer than two steps left to fit, factor_per_step and span are 0. A detach() also cuts the
/// gradient: pass only the steps of the window you train through.
/// Norms are computed in double and scaled by the largest |g|, so they do not overflow.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <span>
#include <sstream>
#include <string>
#include <vector>

#include "tapegrad/error.hpp"
#include "tapegrad/tape.hpp"

namespace tapegrad::diag {

namespace detail {
// ||g||_2 of a tensor, in double, without overflow.
template <class T>
double scaled_l2_norm(const Tensor<T>& g) {
  double m = 0;
  for (int64_t i = 0; i < g.numel(); ++i) {
    const double a = std::abs(static_cast<double>(g[i]));
    if (!(a <= m)) m = a;  // NaN sticks
  }
  if (m == 0 || !std::isfinite(m)) return m;
  double s = 0;
  for (int64_t i = 0; i < g.numel(); ++i) {
    const double r = static_cast<double>(g[i]) / m;
    s += r * r;
  }
  return m * std::sqrt(s);
}
}  // namespace detail

/// norms[t] = ||dL/dh_t|| for every Var of `steps` after a backward (0 where no gradient
/// reached). Writes into `norms` (no allocation once its capacity suffices).
template <class T>
void grad_norms_through_time(std::span<const Var<T>> steps, std::vector<double>& norms) {
  norms.resize(steps.size());
  for (size_t t = 0; t < steps.size(); ++t) {
    const Node<T>& n = steps[t].node();
    if (!n.is_param && !n.is_leaf && !n.retain)
      tapegrad::detail::fail<TapeError>(
          "grad_norms_through_time: step ", t, " (node ", steps[t].id(), ", ", n.op,
          ") is an intermediate value whose gradient backward frees; call retain_grad() on it "
          "before backward (nn::RNN's hidden_steps are retained)");
    norms[t] = n.is_param     ? detail::scaled_l2_norm(n.param.grad())
               : n.grad_ready ? detail::scaled_l2_norm(n.grad)
                              : 0.0;
  }
}
/// ‖dL/dh_t‖ for each step's Var after backward (a step without gradient gives 0).
template <class T>
std::vector<double> grad_norms_through_time(const std::vector<Var<T>>& steps) {
  std::vector<double> norms;
  grad_norms_through_time(std::span<const Var<T>>(steps), norms);
  return norms;
}

/// The thresholds of through_time_flags: 0 <= vanishing_ratio < exploding_ratio, neither NaN,
/// vanishing_ratio finite (ValueError otherwise); exploding_ratio = +infinity turns that flag off.
struct ThroughTimeOptions {
  double vanishing_ratio = 1e-2;  ///< fitted first/last ratio below this: vanishing
  double exploding_ratio = 1e2;   ///< above this: exploding
};

/// The fitted decay of gradient norms through time and its diagnosis (see the file's description).
struct ThroughTimeFlags {
  /// The norm's factor per step back in time, exp(−b) (NaN with fewer than two fitted steps).
  double factor_per_step = std::numeric_limits<double>::quiet_NaN();
  /// The fitted first-to-last ratio, factor_per_step^(t_last − t_first).
  double span = std::numeric_limits<double>::quiet_NaN();
  /// The fit's R² (near 1: geometric).
  double r2 = std::numeric_limits<double>::quiet_NaN();
  int64_t fitted_steps = 0;  ///< steps with a finite, nonzero norm
  int64_t dead_steps = 0;    ///< steps with a zero norm before a step with a nonzero one
  ///@{
  /// Whether the gradient vanishes, explodes or holds NaN/inf.
  bool vanishing = false, exploding = false, non_finite = false;
  ///@}

  /// Whether anything is flagged.
  bool any() const { return vanishing || exploding || non_finite; }
  /// any().
  explicit operator bool() const { return any(); }
  /// "ok", "VANISHING", "EXPLODING" or "NON-FINITE", with the factor per step.
  std::string flag() const {
    std::ostringstream os;
    os << (non_finite ? "NON-FINITE" : exploding ? "EXPLODING" : vanishing ? "VANISHING" : "ok");
    if (std::isfinite(factor_per_step)) os << " (x" << factor_per_step << "/step)";
    return os.str();
  }
};

///@{
/// Fits log ‖dL/dh_t‖ = a + b·t by least squares over the finite, nonzero norms and flags vanishing
/// and exploding (see the file's description). Throws ValueError for invalid options (a NaN ratio
/// would turn its flag off; vanishing_ratio above exploding_ratio could set both).
inline ThroughTimeFlags through_time_flags(std::span<const double> norms,
                                           ThroughTimeOptions o = {}) {
  if (!(o.vanishing_ratio >= 0 && std::isfinite(o.vanishing_ratio)) || !(o.exploding_ratio > 0) ||
      !(o.vanishing_ratio < o.exploding_ratio))
    tapegrad::detail::fail<ValueError>(
        "through_time_flags: need 0 <= vanishing_ratio < exploding_ratio, vanishing_ratio ",
        "finite; got vanishing_ratio ", o.vanishing_ratio, ", exploding_ratio ", o.exploding_ratio);
  ThroughTimeFlags f;
  double sx = 0, sy = 0, n = 0;
  double t_first = -1, t_last = -1;
  for (size_t t = 0; t < norms.size(); ++t) {
    if (!std::isfinite(norms[t])) f.non_finite = true;
    if (!(norms[t] > 0) || !std::isfinite(norms[t])) continue;
    sx += double(t), sy += std::log(norms[t]), n += 1;
    if (t_first < 0) t_first = double(t);
    t_last = double(t);
  }
  f.fitted_steps = static_cast<int64_t>(n);
  for (size_t t = 0; t < norms.size() && double(t) < t_last; ++t) f.dead_steps += norms[t] == 0;
  f.vanishing = f.dead_steps > 0;
  if (n == 1 && f.dead_steps > 0) f.factor_per_step = f.span = 0;
  if (n < 2) return f;
  const double mx = sx / n, my = sy / n;
  double sxx = 0, sxy = 0, syy = 0;
  for (size_t t = 0; t < norms.size(); ++t) {
    if (!(norms[t] > 0) || !std::isfinite(norms[t])) continue;
    const double dx = double(t) - mx, dy = std::log(norms[t]) - my;
    sxx += dx * dx, sxy += dx * dy, syy += dy * dy;
  }
  const double b = sxy / sxx;
  f.factor_per_step = std::exp(-b);
  f.span = std::exp(-b * (t_last - t_first));
  f.r2 = syy > 0 ? (sxy * sxy) / (sxx * syy) : 1.0;
  f.vanishing = f.vanishing || f.span < o.vanishing_ratio;
  f.exploding = f.span > o.exploding_ratio;
  return f;
}
inline ThroughTimeFlags through_time_flags(const std::vector<double>& norms,
                                           ThroughTimeOptions o = {}) {
  return through_time_flags(std::span<const double>(norms), o);
}
///@}

}  // namespace tapegrad::diag
