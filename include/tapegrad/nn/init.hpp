#pragma once
/// \file
/// Weight initialisation, as torch.nn.init (names keep PyTorch's trailing underscore: they fill
/// the tensor in place and return it). Formulas (torch/csrc/api/src/nn/init.cpp,
/// SEMANTICS.md "Initialization"), for a weight [out, in, k...]:
///   fan_in = in · Πk, fan_out = out · Πk (at least 2 dims);
///   gain: linear/conv/sigmoid 1, tanh 5/3, relu √2, leaky_relu √(2/(1 + slope²)) (slope 0.01
///         by default), selu 3/4;
///   xavier_uniform_(gain)  U(±gain·√(6/(fan_in + fan_out)))
///   xavier_normal_(gain)   N(0, gain·√(2/(fan_in + fan_out)))
///   kaiming_uniform_(a, mode, nonlinearity)  U(±gain·√(3/fan)), gain = calculate_gain(
///                          nonlinearity, a), fan = fan_in or fan_out by mode; with the
///                          defaults (a = 0, "leaky_relu") that is U(±√(6/fan)) as for ReLU
///   kaiming_normal_        N(0, gain/√fan)
///   orthogonal_(gain)      gain · Q from the QR decomposition of a normal matrix [rows, cols]
///                          (rows = size(0)), signs fixed by diag(R), so QᵀQ = I (or QQᵀ = I
///                          when rows < cols).
///
/// Every function takes a Tensor<T>& (or a Parameter<T>, whose value is filled) and a Generator&.
/// Without one, nn::default_generator() is used: a single process-wide generator seeded 0 at
/// start-up, so a program that builds its model the same way gets the same weights every run.
/// Reseed it with nn::default_generator().manual_seed(s) (as torch.manual_seed). It is not
/// thread-safe: build models on one thread, or pass each thread its own Generator.
///
/// Arguments that would fill the tensor with NaN or inf, or that PyTorch rejects (std < 0,
/// a > b), throw ValueError naming the function and the argument.

#include <Eigen/Dense>
#include <cmath>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "tapegrad/parameter.hpp"
#include "tapegrad/random.hpp"
#include "tapegrad/tensor.hpp"

namespace tapegrad::nn {

/// The process-wide generator every layer and initialiser uses when given none (seed 0).
inline Generator& default_generator() {
  static Generator g(0);
  return g;
}

namespace init {

namespace detail {
// A NaN or infinite argument would make every element NaN or inf.
inline void check_finite(const char* who, const char* what, double v) {
  if (!std::isfinite(v))
    tapegrad::detail::fail<ValueError>(who, ": ", what, " must be finite, got ", v);
}
}  // namespace detail

/// The recommended gain for a nonlinearity (torch.nn.init.calculate_gain). `param` is the
/// negative slope of "leaky_relu" (0.01 when absent) and is ignored otherwise. Throws ValueError
/// for an unknown nonlinearity or a non-finite leaky_relu slope.
inline double calculate_gain(std::string_view nonlinearity,
                             std::optional<double> param = std::nullopt) {
  if (nonlinearity == "linear" || nonlinearity == "conv1d" || nonlinearity == "conv2d" ||
      nonlinearity == "conv3d" || nonlinearity == "conv_transpose1d" ||
      nonlinearity == "conv_transpose2d" || nonlinearity == "conv_transpose3d" ||
      nonlinearity == "sigmoid")
    return 1.0;
  if (nonlinearity == "tanh") return 5.0 / 3.0;
  if (nonlinearity == "relu") return std::sqrt(2.0);
  if (nonlinearity == "leaky_relu") {
    const double slope = param.value_or(0.01);
    detail::check_finite("calculate_gain", "the negative slope (param) of leaky_relu", slope);
    return std::sqrt(2.0 / (1.0 + slope * slope));
  }
  if (nonlinearity == "selu") return 3.0 / 4.0;
  tapegrad::detail::fail<ValueError>(
      "calculate_gain: unsupported nonlinearity \"", nonlinearity,
      "\" (linear, conv1d/2d/3d, conv_transpose1d/2d/3d, sigmoid, tanh, relu, "
      "leaky_relu, selu)");
}

/// A weight's fan in and fan out (calculate_fan_in_and_fan_out).
struct Fans {
  ///@{
  /// size(1)·receptive field and size(0)·receptive field.
  int64_t fan_in, fan_out;
  ///@}
};

/// fan_in = size(1)·receptive field, fan_out = size(0)·receptive field, where the receptive
/// field is the product of the dims after the first two.
inline Fans calculate_fan_in_and_fan_out(const Shape& s) {
  if (s.rank() < 2)
    tapegrad::detail::fail<ValueError>(
        "init: fan in and fan out can not be computed for a tensor of shape ", s,
        " (fewer than 2 dimensions)");
  int64_t receptive = 1;
  for (int d = 2; d < s.rank(); ++d) receptive *= s[d];
  return {s[1] * receptive, s[0] * receptive};
}
/// calculate_fan_in_and_fan_out(s).fan_in; ValueError below rank 2.
inline int64_t fan_in(const Shape& s) { return calculate_fan_in_and_fan_out(s).fan_in; }
/// calculate_fan_in_and_fan_out(s).fan_out; ValueError below rank 2.
inline int64_t fan_out(const Shape& s) { return calculate_fan_in_and_fan_out(s).fan_out; }

namespace detail {
inline void check_gain(const char* who, double gain) {
  // PyTorch's xavier_* reject a negative gain through uniform_/normal_ (a > b, std < 0).
  if (!(gain >= 0 && std::isfinite(gain)))
    tapegrad::detail::fail<ValueError>(who, ": gain must be finite and >= 0, got ", gain);
}
inline int64_t fan_by_mode(const Shape& s, std::string_view mode) {
  const Fans f = calculate_fan_in_and_fan_out(s);
  if (mode == "fan_in") return f.fan_in;
  if (mode == "fan_out") return f.fan_out;
  tapegrad::detail::fail<ValueError>("init: mode \"", mode,
                                     "\" is not supported, use \"fan_in\" or \"fan_out\"");
}
}  // namespace detail

/// U(a, b). Throws ValueError if a > b, or a, b or b − a is not finite (as torch's uniform_).
template <class T>
Tensor<T>& uniform_(Tensor<T>& t, double a = 0, double b = 1, Generator& g = default_generator()) {
  if (!std::isfinite(a) || !std::isfinite(b) || !std::isfinite(b - a))
    tapegrad::detail::fail<ValueError>("uniform_: a, b and b - a must be finite, got a = ", a,
                                       ", b = ", b);
  if (a > b) tapegrad::detail::fail<ValueError>("uniform_: need a <= b, got a = ", a, " > b = ", b);
  for (int64_t i = 0; i < t.numel(); ++i) t[i] = static_cast<T>(g.uniform(a, b));
  return t;
}
/// N(mean, std²). Throws ValueError if mean is not finite, or std is negative or not finite
/// (torch's normal_ rejects std < 0).
template <class T>
Tensor<T>& normal_(Tensor<T>& t, double mean = 0, double std = 1,
                   Generator& g = default_generator()) {
  detail::check_finite("normal_", "mean", mean);
  if (!(std >= 0 && std::isfinite(std)))
    tapegrad::detail::fail<ValueError>("normal_: std must be finite and >= 0, got ", std);
  for (int64_t i = 0; i < t.numel(); ++i) t[i] = static_cast<T>(g.normal(mean, std));
  return t;
}
/// Fills t with value.
template <class T>
Tensor<T>& constant_(Tensor<T>& t, double value) {
  return t.fill_(static_cast<T>(value));
}
/// Fills t with 0.
template <class T>
Tensor<T>& zeros_(Tensor<T>& t) {
  return t.fill_(T(0));
}
/// Fills t with 1.
template <class T>
Tensor<T>& ones_(Tensor<T>& t) {
  return t.fill_(T(1));
}

/// Glorot & Bengio 2010: U(±gain·√(6 / (fan_in + fan_out))). ValueError below rank 2 or if gain
/// is negative or not finite. A zero-element tensor is left alone.
template <class T>
Tensor<T>& xavier_uniform_(Tensor<T>& t, double gain = 1, Generator& g = default_generator()) {
  const Fans f = calculate_fan_in_and_fan_out(t.shape());
  detail::check_gain("xavier_uniform_", gain);
  if (t.numel() == 0) return t;  // fan_in + fan_out may be 0: an infinite bound
  const double bound = gain * std::sqrt(6.0 / double(f.fan_in + f.fan_out));
  return uniform_(t, -bound, bound, g);
}
/// Glorot & Bengio 2010: N(0, gain²·2 / (fan_in + fan_out)). ValueError below rank 2 or if gain
/// is negative or not finite. A zero-element tensor is left alone.
template <class T>
Tensor<T>& xavier_normal_(Tensor<T>& t, double gain = 1, Generator& g = default_generator()) {
  const Fans f = calculate_fan_in_and_fan_out(t.shape());
  detail::check_gain("xavier_normal_", gain);
  if (t.numel() == 0) return t;  // fan_in + fan_out may be 0: an infinite std
  return normal_(t, 0.0, gain * std::sqrt(2.0 / double(f.fan_in + f.fan_out)), g);
}

/// He et al. 2015: U(±gain·√(3/fan)), gain = calculate_gain(nonlinearity, a), fan by mode. A
/// zero-element tensor is left alone (PyTorch warns and does the same). Throws ValueError below
/// rank 2, for an unknown mode or nonlinearity, or a non-finite a.
template <class T>
Tensor<T>& kaiming_uniform_(Tensor<T>& t, double a = 0, std::string_view mode = "fan_in",
                            std::string_view nonlinearity = "leaky_relu",
                            Generator& g = default_generator()) {
  const int64_t fan = detail::fan_by_mode(t.shape(), mode);
  detail::check_finite("kaiming_uniform_", "a", a);
  if (t.numel() == 0) return t;
  const double bound = calculate_gain(nonlinearity, a) * std::sqrt(3.0 / double(fan));
  return uniform_(t, -bound, bound, g);
}
/// He et al. 2015: N(0, std²) with std = gain / √fan, gain = calculate_gain(nonlinearity, a), fan
/// by mode ("fan_in" or "fan_out"). A zero-element tensor is left alone. ValueErrors as
/// kaiming_uniform_'s.
template <class T>
Tensor<T>& kaiming_normal_(Tensor<T>& t, double a = 0, std::string_view mode = "fan_in",
                           std::string_view nonlinearity = "leaky_relu",
                           Generator& g = default_generator()) {
  const int64_t fan = detail::fan_by_mode(t.shape(), mode);
  detail::check_finite("kaiming_normal_", "a", a);
  if (t.numel() == 0) return t;
  return normal_(t, 0.0, calculate_gain(nonlinearity, a) / std::sqrt(double(fan)), g);
}

/// Saxe et al. 2013: a (semi-)orthogonal matrix, viewed as [size(0), numel / size(0)], times
/// gain. Throws ValueError below rank 2 or if gain is not finite.
template <class T>
Tensor<T>& orthogonal_(Tensor<T>& t, double gain = 1, Generator& g = default_generator()) {
  if (t.rank() < 2)
    tapegrad::detail::fail<ValueError>(
        "orthogonal_: only tensors with 2 or more dimensions are "
        "supported, got shape ",
        t.shape());
  detail::check_finite("orthogonal_", "gain", gain);
  if (t.numel() == 0) return t;
  const int64_t rows = t.size(0), cols = t.numel() / rows;
  const bool wide = rows < cols;  // QR of the tall transpose, then transpose back
  const int64_t m = wide ? cols : rows, n = wide ? rows : cols;
  Eigen::MatrixXd a(m, n);
  for (int64_t i = 0; i < rows; ++i)
    for (int64_t j = 0; j < cols; ++j) (wide ? a(j, i) : a(i, j)) = g.normal();
  Eigen::HouseholderQR<Eigen::MatrixXd> qr(a);
  Eigen::MatrixXd q = qr.householderQ() * Eigen::MatrixXd::Identity(m, n);
  // Make the decomposition unique (R with a positive diagonal), as PyTorch does.
  for (int64_t j = 0; j < n; ++j)
    if (qr.matrixQR()(j, j) < 0) q.col(j) *= -1.0;
  for (int64_t i = 0; i < rows; ++i)
    for (int64_t j = 0; j < cols; ++j)
      t[i * cols + j] = static_cast<T>(gain * (wide ? q(j, i) : q(i, j)));
  return t;
}

/// The same functions applied to a Parameter's value.
template <class T>
Tensor<T>& uniform_(const Parameter<T>& p, double a = 0, double b = 1,
                    Generator& g = default_generator()) {
  return uniform_(p.value(), a, b, g);
}
/// normal_ on p's value.
template <class T>
Tensor<T>& normal_(const Parameter<T>& p, double mean = 0, double std = 1,
                   Generator& g = default_generator()) {
  return normal_(p.value(), mean, std, g);
}
/// constant_ on p's value.
template <class T>
Tensor<T>& constant_(const Parameter<T>& p, double value) {
  return constant_(p.value(), value);
}
/// zeros_ on p's value.
template <class T>
Tensor<T>& zeros_(const Parameter<T>& p) {
  return zeros_(p.value());
}
/// ones_ on p's value.
template <class T>
Tensor<T>& ones_(const Parameter<T>& p) {
  return ones_(p.value());
}
/// xavier_uniform_ on p's value.
template <class T>
Tensor<T>& xavier_uniform_(const Parameter<T>& p, double gain = 1,
                           Generator& g = default_generator()) {
  return xavier_uniform_(p.value(), gain, g);
}
/// xavier_normal_ on p's value.
template <class T>
Tensor<T>& xavier_normal_(const Parameter<T>& p, double gain = 1,
                          Generator& g = default_generator()) {
  return xavier_normal_(p.value(), gain, g);
}
/// kaiming_uniform_ on p's value.
template <class T>
Tensor<T>& kaiming_uniform_(const Parameter<T>& p, double a = 0, std::string_view mode = "fan_in",
                            std::string_view nonlinearity = "leaky_relu",
                            Generator& g = default_generator()) {
  return kaiming_uniform_(p.value(), a, mode, nonlinearity, g);
}
/// kaiming_normal_ on p's value.
template <class T>
Tensor<T>& kaiming_normal_(const Parameter<T>& p, double a = 0, std::string_view mode = "fan_in",
                           std::string_view nonlinearity = "leaky_relu",
                           Generator& g = default_generator()) {
  return kaiming_normal_(p.value(), a, mode, nonlinearity, g);
}
/// orthogonal_ on p's value.
template <class T>
Tensor<T>& orthogonal_(const Parameter<T>& p, double gain = 1, Generator& g = default_generator()) {
  return orthogonal_(p.value(), gain, g);
}

}  // namespace init
}  // namespace tapegrad::nn
