#pragma once
/// \file
/// Activation functions, as torch.nn.functional: sigmoid, tanh, relu, leaky_relu, gelu,
/// softmax, log_softmax. Each forward is an Eigen array expression; each backward sits right
/// below it and, where that is cheapest, uses the saved output instead of the input.
///
/// Stability: every function here stays finite (value and gradient) for inputs up to +-1e4
/// and beyond: sigmoid uses the sign-split form, softmax and log_softmax subtract the maximum.
///
/// Derivatives at kinks follow PyTorch: relu'(0) = 0, leaky_relu'(0) = negative_slope.
///
/// The output shape is passed to record() as a copy (Shape(x.shape())): recording may grow the
/// tape's node vector, which would leave a reference into x's node dangling.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <numbers>
#include <type_traits>

#include "tapegrad/tape.hpp"

namespace tapegrad {

/// Which form of GELU to compute (torch.nn.functional.gelu's `approximate` argument).
enum class GeluApproximation {
  none,  ///< exact: x * Phi(x), Phi the standard normal CDF (PyTorch's default)
  tanh,  // 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))) (Hendrycks & Gimpel)
};

namespace detail {

// Eigen 3.4 vectorises neither comparisons nor select(), so the step function [v > 0] is
// written with min/max/multiply, which it does vectorise: max(v, 0) is 0 or at least the
// smallest denormal; two multiplies by `step_scale` lift the smallest denormal above 1
// (the constant itself does not overflow), and min(., 1) clamps. Exact: 0 or 1.
template <class T>
inline constexpr T step_scale = T(std::is_same_v<T, float> ? 0x1p75 : 0x1p537);

template <class Expr>
auto step_positive(const Expr& v) {
  using T = typename Expr::Scalar;
  return ((v.max(T(0)) * step_scale<T>)*step_scale<T>).min(T(1));
}

// out = sigmoid(x) in the sign-split form: with e = exp(-|x|),
//   sigmoid(x) = 1 / (1 + e)  for x > 0,   e / (1 + e)  for x <= 0,
// so exp never overflows and neither branch cancels. Written branch-free as
// (e + [x > 0] (1 - e)) / (1 + e) so that Eigen vectorises both passes; e goes through a small
// block on the stack, so y may be x's own buffer (sigmoid_). Split among the threads when large
// (slices start on whole blocks of 64 elements, so every element is computed as on one thread).
template <class T>
void sigmoid_into(const Tensor<T>& x, Tensor<T>& y) {
  for_each_slice(x.numel(), [&](int64_t off, int64_t len) {
    constexpr int64_t block = 512;
    alignas(64) T e[block];
    for (int64_t i = off; i < off + len; i += block) {
      const int64_t n = std::min(block, off + len - i);
      const Eigen::Map<const Eigen::Array<T, Eigen::Dynamic, 1>> xv(x.data() + i, n);
      Eigen::Map<Eigen::Array<T, Eigen::Dynamic, 1>> ev(e, n), out(y.data() + i, n);
      ev = (-xv.abs()).exp();
      out = (ev + step_positive(xv) * (T(1) - ev)) / (T(1) + ev);
    }
  });
}

// y = tanh(x), split among the threads when large; y may be x's own buffer (tanh_).
template <class T>
void tanh_into(const Tensor<T>& x, Tensor<T>& y) {
  for_each_slice(x.numel(),
                 [&](int64_t off, int64_t n) { elements(y, off, n) = elements(x, off, n).tanh(); });
}

// The backward of the activations that read only their output (so that they can run in
// place over their input: relu_, sigmoid_, tanh_).
// Elementwise, so split among the threads when large (OpContext::add_grad_elementwise).
template <class T>
void sigmoid_backward(OpContext<T>& c) {  // y (1 - y)
  c.add_grad_elementwise(0, [&](int64_t off, int64_t n) {
    const auto v = elements(c.value(), off, n);
    return elements(c.grad_out(), off, n) * v * (T(1) - v);
  });
}
template <class T>
void tanh_backward(OpContext<T>& c) {  // 1 - y^2
  c.add_grad_elementwise(0, [&](int64_t off, int64_t n) {
    return elements(c.grad_out(), off, n) * (T(1) - elements(c.value(), off, n).square());
  });
}
template <class T>
void relu_backward(OpContext<T>& c) {  // [y > 0], which is [x > 0]
  c.add_grad_elementwise(0, [&](int64_t off, int64_t n) {
    return elements(c.grad_out(), off, n) * step_positive(elements(c.value(), off, n));
  });
}

// y = max(x, 0), split among the threads when large; y may be x's own buffer (relu_).
template <class T>
void relu_into(const Tensor<T>& x, Tensor<T>& y) {
  for_each_slice(x.numel(), [&](int64_t off, int64_t n) {
    elements(y, off, n) = elements(x, off, n).max(T(0));
  });
}

// Records a unary op whose backward reads only its output, on x's buffer when in_place and
// that is safe (Tape::record_inplace), and fills it with compute(x's value, output).
template <class T, class Compute>
Var<T> unary_of_output(const char* op, const Var<T>& x, BackwardFn<T> backward, bool in_place,
                       Compute compute) {
  Var<T> y;
  bool on_x = false;
  if (in_place)
    y = x.tape().record_inplace(op, 0, {x}, backward, Reads::output, on_x);
  else
    y = x.tape().record(op, Shape(x.shape()), {x}, backward, Reads::output);
  compute(x.node().value, y.node().value);  // elementwise: safe when they are one buffer
  return y;
}

// GELU constants (T-typed, at namespace scope so captureless backward lambdas can use them).
template <class T>
struct GeluConstants {
  static constexpr T inv_sqrt2 = T(1 / std::numbers::sqrt2);
  static constexpr T inv_sqrt_2pi = T(0.5 * std::numbers::inv_sqrtpi * std::numbers::sqrt2);
  static constexpr T k = T(std::numbers::sqrt2 * std::numbers::inv_sqrtpi);  // sqrt(2/pi)
  static constexpr T c3 = T(0.044715);
};

// Phi(x) = 0.5 erfc(-x / sqrt 2), the standard normal CDF, of n floats, written to phi (not
// aliasing x), vectorised in chunks on the stack: erfc(|u|) = t exp(-u^2 + P(t)),
// t = 1 / (1 + |u| / 2), with P the degree-9 Chebyshev fit of Numerical Recipes (2nd ed., section
// 6.2), whose relative error is below 1.2e-7 for every u, the far tails included (1 + erf(u)
// would cancel on the left); erfc(u) = 2 - erfc(|u|) for u < 0. Scalar std::erfc took ~30 ms per
// million floats, forward and backward.
inline void normal_cdf_float(const float* x, int64_t n, float* phi) {
  constexpr int64_t chunk = 256;
  Eigen::Array<float, chunk, 1> z, t;  // on the stack: no allocation per call
  for (int64_t i = 0; i < n; i += chunk) {
    const int64_t m = std::min(chunk, n - i);
    auto zs = z.head(m), ts = t.head(m);
    const Eigen::Map<const Eigen::ArrayXf> xv(x + i, m);
    zs = xv.abs() * GeluConstants<float>::inv_sqrt2;
    ts = (1.0f + 0.5f * zs).inverse();
    Eigen::Map<Eigen::ArrayXf> out(phi + i, m);
    out = 0.5f * ts *
          (ts * (1.00002368f +
                 ts * (0.37409196f +
                       ts * (0.09678418f +
                             ts * (-0.18628806f +
                                   ts * (0.27886807f +
                                         ts * (-1.13520398f +
                                               ts * (1.48851587f +
                                                     ts * (-0.82215223f + ts * 0.17087277f)))))))) -
           1.26551223f - zs.square())
              .exp();
    out = (xv > 0.0f).select(1.0f - out, out);  // erfc(-u) = 2 - erfc(u)
  }
}

// A softmax dimension seen as [outer, n, inner] of a row-major tensor.
struct SoftmaxLayout {
  int64_t outer = 1, n = 1, inner = 1;
};
inline SoftmaxLayout softmax_layout(const char* op, const Shape& s, int dim) {
  SoftmaxLayout l;
  if (s.rank() == 0) {  // a scalar is one slice of one element, as in PyTorch
    if (dim != 0 && dim != -1) fail<ShapeError>(op, ": dim ", dim, " out of range for shape ", s);
    return l;
  }
  if (dim < -s.rank() || dim >= s.rank())
    fail<ShapeError>(op, ": dim ", dim, " out of range for shape ", s);
  const int d = dim < 0 ? dim + s.rank() : dim;
  for (int i = 0; i < d; ++i) l.outer *= s[i];
  l.n = s[d];
  for (int i = d + 1; i < s.rank(); ++i) l.inner *= s[i];
  return l;
}

template <class T>
using RowMajorMap = Eigen::Map<Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>>;
template <class T>
using ConstRowMajorMap =
    Eigen::Map<const Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>>;
template <class T>
using RowVectorMap = Eigen::Map<Eigen::Array<T, 1, Eigen::Dynamic>>;
template <class T>
using VectorMap = Eigen::Map<Eigen::Array<T, Eigen::Dynamic, 1>>;
template <class T>
using ConstVectorMap = Eigen::Map<const Eigen::Array<T, Eigen::Dynamic, 1>>;

}  // namespace detail

/// sigmoid(x) = 1 / (1 + exp(-x));  d/dx = y (1 - y), from the saved output.
template <class T>
Var<T> sigmoid(const Var<T>& x) {
  return detail::unary_of_output("sigmoid", x, &detail::sigmoid_backward<T>, false,
                                 &detail::sigmoid_into<T>);
}

/// tanh(x);  d/dx = 1 - y^2, from the saved output.
template <class T>
Var<T> tanh(const Var<T>& x) {
  return detail::unary_of_output("tanh", x, &detail::tanh_backward<T>, false,
                                 &detail::tanh_into<T>);
}

/// relu(x) = max(x, 0) (NaN stays NaN);  d/dx = [x > 0], so relu'(0) = 0 as in PyTorch.
template <class T>
Var<T> relu(const Var<T>& x) {
  return detail::unary_of_output("relu", x, &detail::relu_backward<T>, false,
                                 &detail::relu_into<T>);
}

/// In place, as PyTorch's relu_ / sigmoid_ / tanh_ (and nn.ReLU(inplace=True)): the output is
/// written over x's buffer when nothing has read x and no backward needs it
/// (Tape::record_inplace), else these are relu, sigmoid, tanh. Do not read x afterwards: the
/// tape throws TapeError if something does. The activation layers use them.
template <class T>
Var<T> relu_(const Var<T>& x) {
  return detail::unary_of_output("relu", x, &detail::relu_backward<T>, true, &detail::relu_into<T>);
}
/// sigmoid written over x's buffer when the tape allows it (see relu_); same values and gradient as
/// sigmoid(x).
template <class T>
Var<T> sigmoid_(const Var<T>& x) {
  return detail::unary_of_output("sigmoid", x, &detail::sigmoid_backward<T>, true,
                                 &detail::sigmoid_into<T>);
}
/// tanh written over x's buffer when the tape allows it (see relu_); same values and gradient as
/// tanh(x).
template <class T>
Var<T> tanh_(const Var<T>& x) {
  return detail::unary_of_output("tanh", x, &detail::tanh_backward<T>, true, &detail::tanh_into<T>);
}

/// leaky_relu(x) = x for x > 0, negative_slope * x otherwise (torch.nn.LeakyReLU);
/// d/dx = 1 for x > 0, negative_slope for x <= 0 (so the derivative at 0 is the slope, as
/// PyTorch's backward `x > 0 ? g : g * slope`).
template <class T>
Var<T> leaky_relu(const Var<T>& x, double negative_slope = 0.01) {
  if (!std::isfinite(negative_slope))
    detail::fail<ValueError>("leaky_relu: negative_slope must be finite, got ", negative_slope);
  Var<T> y = x.tape().record(
      "leaky_relu", Shape(x.shape()), {x},
      [](OpContext<T>& c) {
        const T a = static_cast<T>(c.scalar(0));
        c.add_grad(
            0, c.grad_out().array() * (a + (T(1) - a) * detail::step_positive(c.input(0).array())));
      },
      Reads::inputs);
  y.node().scalars[0] = negative_slope;
  const T a = static_cast<T>(negative_slope);
  const auto xv = x.value().array();
  // For a <= 1 the larger of x and a*x is the right branch on both sides of 0; for a > 1
  // the smaller is.
  if (a <= T(1))
    y.value().array() = xv.max(a * xv);
  else
    y.value().array() = xv.min(a * xv);
  return y;
}

/// gelu(x), torch.nn.functional.gelu:
///   none: x * Phi(x), Phi(x) = 0.5 erfc(-x / sqrt 2)   (erfc, not 1 + erf, so the left tail
///         keeps its precision);  d/dx = Phi(x) + x phi(x), phi(x) = exp(-x^2/2) / sqrt(2 pi).
///         In float, erfc is a vectorised fit of relative error ~1e-7 (detail::normal_cdf_float);
///         in double, std::erfc.
///   tanh: 0.5 x (1 + t), t = tanh(k (x + 0.044715 x^3)), k = sqrt(2/pi);
///         d/dx = 0.5 (1 + t) + 0.5 x (1 - t^2) k (1 + 3 * 0.044715 x^2).
template <class T>
Var<T> gelu(const Var<T>& x, GeluApproximation approximate = GeluApproximation::none) {
  using K = detail::GeluConstants<T>;
  if (approximate == GeluApproximation::none) {
    Var<T> y = x.tape().record(
        "gelu", Shape(x.shape()), {x},
        [](OpContext<T>& c) {
          if constexpr (std::is_same_v<T, float>) {
            // d = Phi(x) + x phi(x), computed once per element into saved(0)
            Tensor<T>& d = c.saved(0);
            d.resize(c.input(0).shape());
            const T* xd = c.input(0).data();
            detail::for_each_slice(d.numel(), [&](int64_t off, int64_t n) {
              detail::normal_cdf_float(xd + off, n, d.data() + off);
              const auto xv = detail::elements(c.input(0), off, n);
              detail::elements(d, off, n) += xv * K::inv_sqrt_2pi * (-0.5f * xv.square()).exp();
            });
            c.add_grad_elementwise(0, [&](int64_t off, int64_t n) {
              return detail::elements(c.grad_out(), off, n) * detail::elements(d, off, n);
            });
          } else {
            c.add_grad_elementwise(0, [&](int64_t off, int64_t n) {
              return detail::elements(c.grad_out(), off, n) *
                     detail::elements(c.input(0), off, n).unaryExpr([](T v) {
                       return T(0.5) * std::erfc(-v * K::inv_sqrt2) +
                              v * K::inv_sqrt_2pi * std::exp(T(-0.5) * v * v);
                     });
            });
          }
        },
        Reads::inputs);
    const Tensor<T>& xv = x.node().value;
    Tensor<T>& yv = y.node().value;
    detail::for_each_slice(xv.numel(), [&](int64_t off, int64_t n) {
      if constexpr (std::is_same_v<T, float>) {
        detail::normal_cdf_float(xv.data() + off, n, yv.data() + off);
        detail::elements(yv, off, n) *= detail::elements(xv, off, n);
      } else {
        detail::elements(yv, off, n) = detail::elements(xv, off, n).unaryExpr([](T v) {
          return T(0.5) * v * std::erfc(-v * K::inv_sqrt2);
        });
      }
    });
    return y;
  }
  Var<T> y = x.tape().record(
      "gelu_tanh", Shape(x.shape()), {x},
      [](OpContext<T>& c) {
        using K = detail::GeluConstants<T>;
        const T k = K::k, c3 = K::c3;
        Tensor<T>& t = c.saved(0);  // t = tanh(k (x + c3 x^3)), computed once per element here
        t.resize(c.input(0).shape());
        c.add_grad_elementwise(0, [&](int64_t off, int64_t n) {
          const auto xv = detail::elements(c.input(0), off, n);
          auto tv = detail::elements(t, off, n);
          tv = (k * (xv + c3 * xv.cube())).tanh();
          return detail::elements(c.grad_out(), off, n) *
                 (T(0.5) * (T(1) + tv) +
                  T(0.5) * xv * (T(1) - tv.square()) * k * (T(1) + T(3) * c3 * xv.square()));
        });
      },
      Reads::inputs);
  const T k = K::k, c3 = K::c3;
  const Tensor<T>& xt = x.node().value;
  Tensor<T>& yt = y.node().value;
  detail::for_each_slice(xt.numel(), [&](int64_t off, int64_t n) {
    const auto xv = detail::elements(xt, off, n);
    detail::elements(yt, off, n) = T(0.5) * xv * (T(1) + (k * (xv + c3 * xv.cube())).tanh());
  });
  return y;
}

/// softmax(x, dim)_i = exp(x_i - m) / sum_j exp(x_j - m), m = max_j x_j (the shift changes
/// nothing mathematically and keeps exp <= 1);  dx = y * (g - sum_j g_j y_j).
/// A slice that is -inf throughout (a fully masked row of attention scores, see
/// ops/masking.hpp) gives zeros and passes no gradient, where PyTorch gives NaN: a query that
/// may attend to nothing contributes nothing instead of poisoning the whole step.
/// Along the last dim each row is contiguous and is processed as one vectorised 1-D array (a
/// whole-matrix expression broadcasting the row maxima would fall back to scalar exp).
/// Along another dim each [n, inner] block is reduced column-wise.
template <class T>
Var<T> softmax(const Var<T>& x, int dim = -1) {
  const detail::SoftmaxLayout l = detail::softmax_layout("softmax", x.shape(), dim);
  Var<T> y = x.tape().record(
      "softmax", Shape(x.shape()), {x},
      [](OpContext<T>& c) {
        const int64_t outer = c.node().ints[0], n = c.node().ints[1], inner = c.node().ints[2];
        if (c.value().numel() == 0) return;
        Tensor<T>& gx = c.grad_in(0);
        for (int64_t o = 0; o < outer; ++o) {
          const int64_t off = o * n * inner;
          if (inner == 1) {
            const detail::ConstVectorMap<T> yr(c.value().data() + off, n);
            const detail::ConstVectorMap<T> gr(c.grad_out().data() + off, n);
            const T s = (gr * yr).sum();
            detail::VectorMap<T>(gx.data() + off, n) += yr * (gr - s);
            continue;
          }
          const auto Y = detail::ConstRowMajorMap<T>(c.value().data() + off, n, inner).array();
          const auto G = detail::ConstRowMajorMap<T>(c.grad_out().data() + off, n, inner).array();
          detail::RowVectorMap<T> S(c.saved(0).data(), inner);  // sum_j g_j y_j per column
          S = (G * Y).colwise().sum();
          detail::RowMajorMap<T>(gx.data() + off, n, inner).array() += Y * (G.rowwise() - S);
        }
      },
      Reads::output);
  auto& ints = y.node().ints;
  ints.push_back(l.outer), ints.push_back(l.n), ints.push_back(l.inner);
  if (x.numel() == 0) return y;
  Tensor<T>& s = y.node().saved[0];  // column maxima, then sums; reused by backward
  if (l.inner > 1) s.resize(Shape{l.inner});
  for (int64_t o = 0; o < l.outer; ++o) {
    const int64_t off = o * l.n * l.inner;
    if (l.inner == 1) {
      const detail::ConstVectorMap<T> xr(x.value().data() + off, l.n);
      detail::VectorMap<T> yr(y.value().data() + off, l.n);
      const T m = xr.maxCoeff();
      if (m == -std::numeric_limits<T>::infinity()) {  // fully masked
        yr.setZero();
        continue;
      }
      yr = (xr - m).exp();
      yr *= T(1) / yr.sum();
      continue;
    }
    const auto X = detail::ConstRowMajorMap<T>(x.value().data() + off, l.n, l.inner).array();
    auto Y = detail::RowMajorMap<T>(y.value().data() + off, l.n, l.inner).array();
    detail::RowVectorMap<T> S(s.data(), l.inner);
    // A fully masked column (maximum -inf) is shifted by 0: its exps are 0, its sum 0, and the
    // division below leaves it 0.
    S = X.colwise().maxCoeff().unaryExpr(
        [](T v) { return v == -std::numeric_limits<T>::infinity() ? T(0) : v; });
    Y = (X.rowwise() - S).exp();
    S = Y.colwise().sum().unaryExpr([](T v) { return v > T(0) ? T(1) / v : T(0); });
    Y.rowwise() *= S;
  }
  return y;
}

/// log_softmax(x, dim)_i = (x_i - m) - log sum_j exp(x_j - m), m = max_j x_j;
/// dx = g - exp(y) * sum_j g_j.
template <class T>
Var<T> log_softmax(const Var<T>& x, int dim = -1) {
  const detail::SoftmaxLayout l = detail::softmax_layout("log_softmax", x.shape(), dim);
  Var<T> y = x.tape().record(
      "log_softmax", Shape(x.shape()), {x},
      [](OpContext<T>& c) {
        const int64_t outer = c.node().ints[0], n = c.node().ints[1], inner = c.node().ints[2];
        if (c.value().numel() == 0) return;
        Tensor<T>& gx = c.grad_in(0);
        for (int64_t o = 0; o < outer; ++o) {
          const int64_t off = o * n * inner;
          if (inner == 1) {
            const detail::ConstVectorMap<T> yr(c.value().data() + off, n);
            const detail::ConstVectorMap<T> gr(c.grad_out().data() + off, n);
            const T s = gr.sum();
            detail::VectorMap<T>(gx.data() + off, n) += gr - yr.exp() * s;
            continue;
          }
          const auto Y = detail::ConstRowMajorMap<T>(c.value().data() + off, n, inner).array();
          const auto G = detail::ConstRowMajorMap<T>(c.grad_out().data() + off, n, inner).array();
          detail::RowVectorMap<T> S(c.saved(0).data(), inner);  // sum_j g_j per column
          S = G.colwise().sum();
          detail::RowMajorMap<T>(gx.data() + off, n, inner).array() += G - Y.exp().rowwise() * S;
        }
      },
      Reads::output);
  auto& ints = y.node().ints;
  ints.push_back(l.outer), ints.push_back(l.n), ints.push_back(l.inner);
  if (x.numel() == 0) return y;
  Tensor<T>& s = y.node().saved[0];  // column maxima, then log-sum-exps; reused by backward
  if (l.inner > 1) s.resize(Shape{l.inner});
  for (int64_t o = 0; o < l.outer; ++o) {
    const int64_t off = o * l.n * l.inner;
    if (l.inner == 1) {
      const detail::ConstVectorMap<T> xr(x.value().data() + off, l.n);
      detail::VectorMap<T> yr(y.value().data() + off, l.n);
      yr = xr - xr.maxCoeff();
      yr -= std::log(yr.exp().sum());
      continue;
    }
    const auto X = detail::ConstRowMajorMap<T>(x.value().data() + off, l.n, l.inner).array();
    auto Y = detail::RowMajorMap<T>(y.value().data() + off, l.n, l.inner).array();
    detail::RowVectorMap<T> S(s.data(), l.inner);
    S = X.colwise().maxCoeff();
    Y = X.rowwise() - S;
    S = Y.exp().colwise().sum().log();
    Y.rowwise() -= S;
  }
  return y;
}

}  // namespace tapegrad
