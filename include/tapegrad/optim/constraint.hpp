#pragma once
/// \file
/// Weight constraints: projections applied to a parameter's value after the update (stage 4 of
/// Optimizer::step), with Keras' semantics (keras/src/constraints/constraints.py), ε = 1e-7:
///
///   MaxNorm(max_value = 2):   w ← w · clip(‖w‖, 0, max_value) / (ε + ‖w‖)
///   UnitNorm:                 w ← w / (ε + ‖w‖)
///   MinMaxNorm(min = 0, max = 1, rate = 1):
///                             d = rate·clip(‖w‖, min, max) + (1 − rate)·‖w‖; w ← w · d / (ε + ‖w‖)
///   NonNeg:                   w ← max(w, 0)      (NaN stays NaN, as in Keras; −∞ becomes 0)
///
/// ‖w‖ is the L2 norm of each unit: over all dims except `dim`, which indexes the units.
/// The default dim = 0 is one norm per output unit: per row of a Dense weight [out, in], per
/// output channel of a Conv2D weight [O, C, kh, kw] — the same vectors as Keras' axis = 0 on its
/// (in, out) kernel. dim = -1 (whole_tensor) takes one norm over the whole tensor. A rank-0 or
/// rank-1 tensor (a bias) is always one vector, as Keras treats a bias.
/// Keras scales by d/(ε + ‖w‖) even when nothing is clipped (MaxNorm of a unit with ‖w‖ < max
/// shrinks it by ‖w‖/(ε + ‖w‖)); kept for fidelity.
///
/// A constraint is any callable void(Tensor<T>&); these four are the built-in ones. Their options
/// are checked when applied: eps must be finite and > 0 (ε = 0 divides a zero unit by 0), and the
/// norm bounds finite (ValueError otherwise).

#include <algorithm>
#include <cmath>
#include <functional>
#include <limits>

#include "tapegrad/tensor.hpp"

namespace tapegrad::optim {

/// A projection applied to a parameter's value after each update.
template <class T>
using Constraint = std::function<void(Tensor<T>&)>;

/// The dim argument for one norm over the whole tensor.
inline constexpr int whole_tensor = -1;
/// Keras' epsilon (backend.epsilon()), the default eps of the norm constraints.
inline constexpr double keras_epsilon = 1e-7;

namespace detail {

// ε = 0 makes a zero unit 0/0 = NaN, a negative one can divide by 0 or flip the sign.
inline void check_eps(const char* who, double eps) {
  if (!(eps > 0 && std::isfinite(eps)))
    tapegrad::detail::fail<ValueError>(who, ": eps must be finite and > 0, got ", eps);
}

// Calls f(unit_norm) -> factor for each unit of w and multiplies the unit by the factor.
// Units are the slices along `dim` (see above); norms are accumulated in double.
template <class T, class F>
void rescale_units(const char* who, Tensor<T>& w, int dim, F&& factor) {
  if (w.numel() == 0) return;
  const Shape& s = w.shape();
  if (dim == whole_tensor || s.rank() <= 1) {
    auto a = w.array();
    const double n = std::sqrt(a.template cast<double>().square().sum());
    a *= static_cast<T>(factor(n));
    return;
  }
  if (dim < 0 || dim >= s.rank())
    tapegrad::detail::fail<ShapeError>(who, ": dim ", dim, " out of range for a weight of shape ",
                                       s, " (use 0..", s.rank() - 1,
                                       ", or -1 for the whole tensor)");
  int64_t outer = 1, inner = 1;
  for (int d = 0; d < dim; ++d) outer *= s[d];
  for (int d = dim + 1; d < s.rank(); ++d) inner *= s[d];
  const int64_t units = s[dim];
  auto a = w.array();
  for (int64_t j = 0; j < units; ++j) {
    double sq = 0;
    for (int64_t o = 0; o < outer; ++o)
      sq += a.segment((o * units + j) * inner, inner).template cast<double>().square().sum();
    const T f = static_cast<T>(factor(std::sqrt(sq)));
    for (int64_t o = 0; o < outer; ++o) a.segment((o * units + j) * inner, inner) *= f;
  }
}

}  // namespace detail

/// Keras MaxNorm: each unit's norm is at most max_value after the projection.
struct MaxNorm {
  /// The largest norm of a unit.
  double max_value = 2.0;
  /// The dim the units are sliced along (whole_tensor: one unit).
  int dim = 0;
  /// Added to the norm in the division (Keras').
  double eps = keras_epsilon;

  /// Scales each unit of w with norm n above max_value by max_value / (ε + n). Throws ValueError
  /// if max_value is negative or not finite, or eps is not finite and > 0.
  template <class T>
  void operator()(Tensor<T>& w) const {
    if (!(max_value >= 0 && std::isfinite(max_value)))
      tapegrad::detail::fail<ValueError>("MaxNorm: max_value must be finite and >= 0, got ",
                                         max_value);
    detail::check_eps("MaxNorm", eps);
    detail::rescale_units("MaxNorm", w, dim,
                          [&](double n) { return std::clamp(n, 0.0, max_value) / (eps + n); });
  }
};

/// Keras UnitNorm: each unit rescaled to norm 1 (n/(ε + n) exactly).
struct UnitNorm {
  /// The dim the units are sliced along (whole_tensor: one unit).
  int dim = 0;
  /// Added to the norm in the division (Keras').
  double eps = keras_epsilon;

  /// Scales each unit of w by 1 / (ε + n). Throws ValueError if eps is not finite and > 0.
  template <class T>
  void operator()(Tensor<T>& w) const {
    detail::check_eps("UnitNorm", eps);
    detail::rescale_units("UnitNorm", w, dim, [&](double n) { return 1.0 / (eps + n); });
  }
};

/// Keras MinMaxNorm: each unit's norm moved (by `rate`) into [min_value, max_value].
struct MinMaxNorm {
  /// The smallest norm of a unit.
  double min_value = 0.0;
  /// The largest norm of a unit.
  double max_value = 1.0;
  /// How far to move toward [min_value, max_value] (1: all the way).
  double rate = 1.0;
  /// The dim the units are sliced along (whole_tensor: one unit).
  int dim = 0;
  /// Added to the norm in the division (Keras').
  double eps = keras_epsilon;

  /// Scales each unit of w toward a norm in [min_value, max_value] by rate. Throws ValueError
  /// unless 0 <= min_value <= max_value < inf, min_value fits in T (a unit of that norm must be
  /// representable), 0 <= rate <= 1 and eps is finite and > 0.
  template <class T>
  void operator()(Tensor<T>& w) const {
    if (!(min_value >= 0 && min_value <= max_value) || !(rate >= 0 && rate <= 1))
      tapegrad::detail::fail<ValueError>("MinMaxNorm: need 0 <= min_value <= max_value and ",
                                         "0 <= rate <= 1, got min_value = ", min_value,
                                         ", max_value = ", max_value, ", rate = ", rate);
    // Units are pushed up to min_value: beyond T's range they would become inf.
    if (!std::isfinite(max_value) || min_value > static_cast<double>(std::numeric_limits<T>::max()))
      tapegrad::detail::fail<ValueError>("MinMaxNorm: min_value and max_value must be finite ",
                                         "(min_value within the weight's type), got min_value = ",
                                         min_value, ", max_value = ", max_value);
    detail::check_eps("MinMaxNorm", eps);
    detail::rescale_units("MinMaxNorm", w, dim, [&](double n) {
      const double desired = rate * std::clamp(n, min_value, max_value) + (1 - rate) * n;
      return desired / (eps + n);
    });
  }
};

/// Keras NonNeg: negative entries set to 0.
struct NonNeg {
  /// Sets w's negative entries (−∞ included) to 0; NaN stays NaN.
  template <class T>
  void operator()(Tensor<T>& w) const {
    auto a = w.array();
    // A select, not a multiplication by the mask: −∞ · 0 would be NaN.
    a = (a < T(0)).select(T(0), a);
  }
};

}  // namespace tapegrad::optim
