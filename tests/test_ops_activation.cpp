// Activations: values against the documented formulas written out here, gradients against
// finite differences, the kinks, stability at +-30, +-100, +-1e4, and errors.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <numbers>
#include <string>
#include <vector>

#include "tapegrad/diag/gradcheck.hpp"
#include "tapegrad/ops/activation.hpp"
#include "tapegrad/ops/elementwise.hpp"
#include "test_util.hpp"

namespace tg = tapegrad;
using tapegrad::testing::expect_all_finite;

namespace {

using VarsD = std::vector<tg::Var<double>>;

// Sum of every element of y, as a scalar op local to this test (so backward can start from it
// without depending on ops/reduce.hpp).
template <class T>
tg::Var<T> total(const tg::Var<T>& y) {
  auto s = y.tape().record("total", tg::Shape{}, {y}, [](tg::OpContext<T>& c) {
    c.add_grad(0, c.grad_out()[0] + T(0) * c.input(0).array());
  });
  s.value()[0] = y.value().array().sum();
  return s;
}

template <class T>
::testing::AssertionResult close(T a, double b, double tol) {
  if (std::abs(double(a) - b) <= tol * std::max(1.0, std::abs(b)))
    return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << a << " vs " << b << " (tol " << tol << ")";
}

// Runs f on an input x and seeds backward with ones: returns (value, dvalue/dx summed).
template <class T, class F>
std::pair<tg::Tensor<T>, tg::Tensor<T>> run(F f, const tg::Tensor<T>& x) {
  tg::Tape<T> tape;
  auto v = tape.input(x);
  auto y = f(v);
  tape.backward(y, tg::Tensor<T>::ones(y.shape()));
  return {y.value().clone(), v.grad().clone()};
}

const std::vector<double> kExtremes = {-1e4, -100, -30, 30, 100, 1e4};

template <class T>
class ActivationTyped : public ::testing::Test {};
using Types = ::testing::Types<float, double>;
TYPED_TEST_SUITE(ActivationTyped, Types);

// ---------------------------------------------------------------- sigmoid

TEST(Sigmoid, ValuesAndGradientFromFormula) {
  const std::vector<double> xs = {-3.0, -0.5, 0.0, 0.25, 2.0};
  auto [y, g] = run<double>([](auto x) { return tg::sigmoid(x); }, tg::Tensor<double>::from(xs));
  for (size_t i = 0; i < xs.size(); ++i) {
    const double s = 1.0 / (1.0 + std::exp(-xs[i]));
    EXPECT_TRUE(close(y[i], s, 1e-15));
    EXPECT_TRUE(close(g[i], s * (1 - s), 1e-15));
  }
  EXPECT_EQ(y[2], 0.5);
  EXPECT_EQ(g[2], 0.25);
}

TEST(Sigmoid, Gradcheck) {
  auto r = tg::gradcheck([](tg::Tape<double>&, const VarsD& x) { return tg::sigmoid(x[0]); },
                         {tg::Tensor<double>::from({{-4.0, -1.0, 0.0}, {0.3, 1.7, 6.0}})});
  EXPECT_TRUE(r) << r;
}

TYPED_TEST(ActivationTyped, SigmoidStableAtExtremes) {
  using T = TypeParam;
  std::vector<T> xs(kExtremes.begin(), kExtremes.end());
  auto [y, g] = run<T>([](auto x) { return tg::sigmoid(x); }, tg::Tensor<T>::from(xs));
  expect_all_finite(y, "sigmoid");
  expect_all_finite(g, "sigmoid'");
  // Tails: sigmoid(-a) = exp(-a) / (1 + exp(-a)) (relative accuracy where representable).
  if constexpr (std::is_same_v<T, double>) {
    EXPECT_TRUE(close<T>(y[1] / T(std::exp(-100.0)), 1.0, 1e-12)) << y[1];
  } else {  // exp(-100) is below float's normal range: only "tiny and not negative" is asked
    EXPECT_GE(y[1], T(0));
    EXPECT_LT(y[1], std::numeric_limits<T>::min());
  }
  EXPECT_TRUE(close<T>(y[2] / T(std::exp(-30.0) / (1 + std::exp(-30.0))), 1.0, 1e-5));
  // sigmoid(-1e4) underflows: 0 or a denormal (Eigen's exp stops at the smallest denormal).
  EXPECT_GE(y[0], T(0));
  EXPECT_LT(y[0], std::numeric_limits<T>::min());
  EXPECT_EQ(y[3], T(1.0 / (1.0 + std::exp(-30.0))));
  EXPECT_EQ(y[4], T(1));
  EXPECT_EQ(y[5], T(1));
  EXPECT_LT(g[0], std::numeric_limits<T>::min());
  EXPECT_EQ(g[5], T(0));
  EXPECT_GE(g[2], T(0));
}

// ---------------------------------------------------------------- tanh

TYPED_TEST(ActivationTyped, TanhValuesGradientAndExtremes) {
  using T = TypeParam;
  const std::vector<double> xs = {-1e4, -100, -30, -1.5, -0.2, 0, 0.7, 3, 30, 100, 1e4};
  auto [y, g] = run<T>([](auto x) { return tg::tanh(x); },
                       tg::Tensor<T>::from(std::vector<T>(xs.begin(), xs.end())));
  const double tol = std::is_same_v<T, float> ? 1e-6 : 1e-15;
  for (size_t i = 0; i < xs.size(); ++i) {
    const double e2 = std::exp(-2 * std::abs(xs[i]));  // tanh|x| = (1 - e^-2|x|)/(1 + e^-2|x|)
    const double t = std::copysign((1 - e2) / (1 + e2), xs[i]);
    EXPECT_TRUE(close(y[i], t, tol)) << "x = " << xs[i];
    EXPECT_TRUE(close(g[i], 1 - t * t, 4 * tol)) << "x = " << xs[i];
  }
  expect_all_finite(y, "tanh");
  expect_all_finite(g, "tanh'");
  EXPECT_EQ(y[0], T(-1));
  EXPECT_EQ(y[10], T(1));
  EXPECT_EQ(g[0], T(0));
}

TEST(Tanh, Gradcheck) {
  auto r = tg::gradcheck([](tg::Tape<double>&, const VarsD& x) { return tg::tanh(x[0]); },
                         {tg::Tensor<double>::from({-2.5, -0.4, 0.0, 0.9, 3.0})});
  EXPECT_TRUE(r) << r;
}

// ---------------------------------------------------------------- relu / leaky_relu

TYPED_TEST(ActivationTyped, ReluValuesAndGradientIncludingZero) {
  using T = TypeParam;
  const T tiny = std::numeric_limits<T>::denorm_min();
  auto [y, g] = run<T>([](auto x) { return tg::relu(x); },
                       tg::Tensor<T>::from({T(-2), T(-0.0), T(0), tiny, T(0.5), T(1e4)}));
  const std::vector<T> want_y = {0, 0, 0, tiny, T(0.5), T(1e4)};
  const std::vector<T> want_g = {0, 0, 0, 1, 1, 1};  // relu'(0) = 0; the smallest x > 0 has 1
  for (size_t i = 0; i < want_y.size(); ++i) {
    EXPECT_EQ(y[i], want_y[i]) << i;
    EXPECT_EQ(g[i], want_g[i]) << i;
  }
}

TEST(Relu, PropagatesNaN) {
  tg::Tape<float> tape;
  auto y = tg::relu(tape.constant(tg::Tensor<float>::from({std::nanf(""), -1.f})));
  EXPECT_TRUE(std::isnan(y.value()[0]));
  EXPECT_EQ(y.value()[1], 0.f);
}

TEST(Relu, Gradcheck) {
  auto r = tg::gradcheck([](tg::Tape<double>&, const VarsD& x) { return tg::relu(x[0]); },
                         {tg::Tensor<double>::from({{-2.0, -0.3}, {0.2, 1.5}})});
  EXPECT_TRUE(r) << r;
}

TYPED_TEST(ActivationTyped, LeakyReluValuesGradientAndZero) {
  using T = TypeParam;
  const std::vector<double> xs = {-3.0, -0.5, 0.0, 0.5, 2.0};
  for (double slope : {0.01, 0.2, 0.0, 1.0, 1.5, -0.3}) {
    auto [y, g] = run<T>([&](auto x) { return tg::leaky_relu(x, slope); },
                         tg::Tensor<T>::from(std::vector<T>(xs.begin(), xs.end())));
    for (size_t i = 0; i < xs.size(); ++i) {
      const double want = xs[i] > 0 ? xs[i] : slope * xs[i];
      const double dwant = xs[i] > 0 ? 1.0 : slope;  // at 0: the slope (SEMANTICS.md)
      EXPECT_TRUE(close(y[i], want, 1e-7)) << "slope " << slope << " x " << xs[i];
      EXPECT_TRUE(close(g[i], dwant, 1e-7)) << "slope " << slope << " x " << xs[i];
    }
  }
  // Default slope 0.01, as torch.nn.LeakyReLU.
  auto [y, g] = run<T>([](auto x) { return tg::leaky_relu(x); }, tg::Tensor<T>::from({T(-2)}));
  EXPECT_EQ(y[0], T(-0.02));
  EXPECT_EQ(g[0], T(0.01));
}

TEST(LeakyRelu, Gradcheck) {
  for (double slope : {0.01, 0.3, 2.0}) {
    auto r = tg::gradcheck(
        [slope](tg::Tape<double>&, const VarsD& x) { return tg::leaky_relu(x[0], slope); },
        {tg::Tensor<double>::from({-2.0, -0.3, 0.2, 1.5})});
    EXPECT_TRUE(r) << "slope " << slope << ": " << r;
  }
}

TEST(LeakyRelu, NonFiniteSlopeThrows) {
  tg::Tape<double> tape;
  auto x = tape.input(tg::Tensor<double>::zeros({2}));
  try {
    tg::leaky_relu(x, std::nan(""));
    FAIL() << "no exception";
  } catch (const tg::ValueError& e) {
    EXPECT_NE(std::string(e.what()).find("leaky_relu"), std::string::npos) << e.what();
  }
}

// ---------------------------------------------------------------- gelu

TEST(Gelu, ExactValuesAndGradient) {
  const std::vector<double> xs = {-3.0, -1.0, 0.0, 0.5, 2.0};
  auto [y, g] = run<double>([](auto x) { return tg::gelu(x); }, tg::Tensor<double>::from(xs));
  for (size_t i = 0; i < xs.size(); ++i) {
    const double x = xs[i];
    const double Phi = 0.5 * (1 + std::erf(x / std::sqrt(2.0)));
    const double phi = std::exp(-x * x / 2) / std::sqrt(2 * std::numbers::pi);
    EXPECT_TRUE(close(y[i], x * Phi, 1e-14)) << x;
    EXPECT_TRUE(close(g[i], Phi + x * phi, 1e-14)) << x;
  }
  // Hand values: gelu(1) = Phi(1) = 0.8413447460685429; gelu(0) = 0, gelu'(0) = 0.5.
  tg::Tape<double> tape;
  auto one = tg::gelu(tape.constant(tg::Tensor<double>::from({1.0})));
  EXPECT_NEAR(one.value()[0], 0.8413447460685429, 1e-15);
  EXPECT_EQ(y[2], 0.0);
  EXPECT_EQ(g[2], 0.5);
}

TEST(Gelu, TanhApproximationValuesAndGradient) {
  const std::vector<double> xs = {-3.0, -1.0, 0.0, 0.5, 2.0};
  auto [y, g] = run<double>([](auto x) { return tg::gelu(x, tg::GeluApproximation::tanh); },
                            tg::Tensor<double>::from(xs));
  const double k = std::sqrt(2 / std::numbers::pi);
  for (size_t i = 0; i < xs.size(); ++i) {
    const double x = xs[i];
    const double t = std::tanh(k * (x + 0.044715 * x * x * x));
    EXPECT_TRUE(close(y[i], 0.5 * x * (1 + t), 1e-14)) << x;
    const double d = 0.5 * (1 + t) + 0.5 * x * (1 - t * t) * k * (1 + 3 * 0.044715 * x * x);
    EXPECT_TRUE(close(g[i], d, 1e-14)) << x;
  }
  // The two forms agree to about 1e-3 (the approximation's documented accuracy).
  auto [exact, ge] = run<double>([](auto x) { return tg::gelu(x); }, tg::Tensor<double>::from(xs));
  for (size_t i = 0; i < xs.size(); ++i) EXPECT_NEAR(y[i], exact[i], 2e-3);
}

TEST(Gelu, Gradcheck) {
  const auto x = tg::Tensor<double>::from({-3.5, -1.2, -0.1, 0.0, 0.4, 2.2});
  for (auto a : {tg::GeluApproximation::none, tg::GeluApproximation::tanh}) {
    auto r =
        tg::gradcheck([a](tg::Tape<double>&, const VarsD& v) { return tg::gelu(v[0], a); }, {x});
    EXPECT_TRUE(r) << r;
  }
}

// In float the exact GELU's erfc is a vectorised fit (detail::normal_cdf_float). Against the
// formulas in double with std::erfc, at the same float inputs from -12 to 12: relative error
// within 5e-7 (1 + x^2) for the value (a few float ulps; measured at most 2.7e-7 (1 + x^2), float
// std::erfc 1.0e-7), where float's own rounding of x enters exp(-x^2/2) amplified by x^2; the
// slope Phi + x phi crosses zero near -0.75, so its error is bounded relative to its larger term
// (measured 3.1e-7 (1 + x^2)).
TEST(Gelu, FloatMatchesTheFormulaInDouble) {
  std::vector<float> xs;
  for (int i = -2400; i <= 2400; ++i) xs.push_back(float(i * 0.005));
  auto [y, g] = run<float>([](auto x) { return tg::gelu(x); }, tg::Tensor<float>::from(xs));
  for (size_t i = 0; i < xs.size(); ++i) {
    const double x = xs[i], tol = 5e-7 * (1 + x * x);
    const double Phi = 0.5 * std::erfc(-x / std::sqrt(2.0));
    const double xphi = x * std::exp(-x * x / 2) / std::sqrt(2 * std::numbers::pi);
    ASSERT_LE(std::abs(y[i] - x * Phi), tol * std::abs(x * Phi)) << x;
    ASSERT_LE(std::abs(g[i] - (Phi + xphi)), tol * std::max(Phi, std::abs(xphi))) << x;
  }
  EXPECT_EQ(y[2400], 0.0f);
  EXPECT_EQ(g[2400], 0.5f);
}

TYPED_TEST(ActivationTyped, GeluFiniteAtExtremes) {
  using T = TypeParam;
  std::vector<T> xs(kExtremes.begin(), kExtremes.end());
  for (auto a : {tg::GeluApproximation::none, tg::GeluApproximation::tanh}) {
    auto [y, g] = run<T>([a](auto x) { return tg::gelu(x, a); }, tg::Tensor<T>::from(xs));
    expect_all_finite(y, "gelu");
    expect_all_finite(g, "gelu'");
    EXPECT_EQ(y[0], T(0));
    EXPECT_EQ(y[5], T(1e4));
    EXPECT_EQ(g[0], T(0));
    EXPECT_EQ(g[5], T(1));
  }
}

// ---------------------------------------------------------------- softmax / log_softmax

// softmax of each row of a [rows, n] tensor, straight from the definition (small inputs).
std::vector<double> softmax_rows(const std::vector<double>& x, int64_t n) {
  std::vector<double> y(x.size());
  for (size_t r = 0; r < x.size() / n; ++r) {
    double s = 0;
    for (int64_t j = 0; j < n; ++j) s += std::exp(x[r * n + j]);
    for (int64_t j = 0; j < n; ++j) y[r * n + j] = std::exp(x[r * n + j]) / s;
  }
  return y;
}

TEST(Softmax, ValuesAgainstDefinition) {
  const std::vector<double> xs = {1, 2, 3, -1, 0, 4};
  tg::Tape<double> tape;
  auto x = tape.constant(tg::Tensor<double>::from(xs, {2, 3}));
  auto y = tg::softmax(x);
  auto ly = tg::log_softmax(x);
  const auto want = softmax_rows(xs, 3);
  for (size_t i = 0; i < xs.size(); ++i) {
    EXPECT_TRUE(close(y.value()[i], want[i], 1e-15)) << i;
    EXPECT_TRUE(close(ly.value()[i], std::log(want[i]), 1e-15)) << i;
  }
  // Hand value: softmax([0, ln 3]) = [1/4, 3/4].
  auto h = tg::softmax(tape.constant(tg::Tensor<double>::from({0.0, std::log(3.0)})));
  EXPECT_NEAR(h.value()[0], 0.25, 1e-16);
  EXPECT_NEAR(h.value()[1], 0.75, 1e-16);
}

TEST(Softmax, OtherDimsMatchTheLastDimOfATransposedCopy) {
  // x[a][b][c] of shape [2,3,4]; softmax over dim d is computed by hand along that axis.
  tg::Generator gen(3);
  auto x = tg::Tensor<double>::randn({2, 3, 4}, gen);
  for (int d : {0, 1, 2, -2, -3}) {
    const int dd = d < 0 ? d + 3 : d;
    tg::Tape<double> tape;
    auto v = tape.constant(x);
    auto y = tg::softmax(v, d).value();
    auto ly = tg::log_softmax(v, d).value();
    const int64_t n = x.size(dd);
    for (int a = 0; a < 2; ++a)
      for (int b = 0; b < 3; ++b)
        for (int c = 0; c < 4; ++c) {
          int64_t idx[3] = {a, b, c};
          double s = 0;
          for (int64_t j = 0; j < n; ++j) {
            int64_t k[3] = {a, b, c};
            k[dd] = j;
            s += std::exp(x(k[0], k[1], k[2]));
          }
          const double want = std::exp(x(idx[0], idx[1], idx[2])) / s;
          EXPECT_TRUE(close(y(a, b, c), want, 1e-14)) << "dim " << d;
          EXPECT_TRUE(close(ly(a, b, c), std::log(want), 1e-14)) << "dim " << d;
        }
  }
}

TEST(Softmax, Gradcheck) {
  tg::Generator gen(7);
  auto x2 = tg::Tensor<double>::randn({3, 5}, gen);
  auto x3 = tg::Tensor<double>::randn({2, 3, 4}, gen);
  for (int d : {-1, 0}) {
    auto r = tg::gradcheck([d](tg::Tape<double>&, const VarsD& x) { return tg::softmax(x[0], d); },
                           {x2});
    EXPECT_TRUE(r) << "softmax dim " << d << ": " << r;
    auto l = tg::gradcheck(
        [d](tg::Tape<double>&, const VarsD& x) { return tg::log_softmax(x[0], d); }, {x2});
    EXPECT_TRUE(l) << "log_softmax dim " << d << ": " << l;
  }
  for (int d : {0, 1, 2}) {
    auto r = tg::gradcheck([d](tg::Tape<double>&, const VarsD& x) { return tg::softmax(x[0], d); },
                           {x3});
    EXPECT_TRUE(r) << "softmax dim " << d << ": " << r;
    auto l = tg::gradcheck(
        [d](tg::Tape<double>&, const VarsD& x) { return tg::log_softmax(x[0], d); }, {x3});
    EXPECT_TRUE(l) << "log_softmax dim " << d << ": " << l;
  }
}

TEST(Softmax, GradientAccumulatesWhenInputIsUsedTwice) {
  // y = softmax(x) + log_softmax(x): both backward paths add into x's gradient.
  auto r = tg::gradcheck(
      [](tg::Tape<double>& t, const VarsD& x) {
        auto a = tg::softmax(x[0], 0);
        auto b = tg::log_softmax(x[0], 0);
        auto s = t.record("plus", tg::Shape(a.shape()), {a, b}, [](tg::OpContext<double>& c) {
          c.add_grad(0, c.grad_out().array());
          c.add_grad(1, c.grad_out().array());
        });
        s.value().array() = a.value().array() + b.value().array();
        return s;
      },
      {tg::Tensor<double>::from({{0.1, -0.7, 1.1}, {2.0, 0.4, -0.3}})});
  EXPECT_TRUE(r) << r;
}

TYPED_TEST(ActivationTyped, SoftmaxAndLogSoftmaxStableAtExtremes) {
  using T = TypeParam;
  for (double a : {30.0, 100.0, 1e4}) {
    // Rows [a, 0], [-a, 0], [a, -a].
    auto x = tg::Tensor<T>::from({{T(a), T(0)}, {T(-a), T(0)}, {T(a), T(-a)}});
    tg::Tensor<T> gs, gl;
    tg::Tape<T> tape;
    auto v = tape.input(x);
    auto y = tg::softmax(v);
    auto ly = tg::log_softmax(v);
    // Seed an uneven gradient so the softmax gradient is not identically 0.
    auto seed = tg::Tensor<T>::from({{T(1), T(-2)}, {T(0.5), T(3)}, {T(-1), T(2)}});
    tape.backward(y, seed);
    gs = v.grad().clone();
    tape.backward(ly, seed);
    gl = v.grad().clone();
    expect_all_finite(y.value(), "softmax");
    expect_all_finite(ly.value(), "log_softmax");
    expect_all_finite(gs, "softmax'");
    expect_all_finite(gl, "log_softmax'");
    const double e = std::exp(-a);  // softmax([a, 0]) = [1/(1+e), e/(1+e)]
    EXPECT_TRUE(close(y.value()(0, 0), 1 / (1 + e), 1e-6));
    EXPECT_TRUE(close(y.value()(1, 1), 1 / (1 + e), 1e-6));
    EXPECT_NEAR(double(y.value()(0, 1)), e / (1 + e), 1e-12);
    // log_softmax([a, 0]) = [-log(1+e), -a - log(1+e)]
    EXPECT_TRUE(close(ly.value()(0, 0), -std::log1p(e), 1e-6));
    EXPECT_TRUE(close(ly.value()(0, 1), -a - std::log1p(e), 1e-6));
    EXPECT_TRUE(close(ly.value()(2, 1), -2 * a - std::log1p(std::exp(-2 * a)), 1e-6));
    // log_softmax' = g - softmax * sum(g): row 0 with g = [1, -2], sum -1.
    EXPECT_TRUE(close(gl(0, 0), 1 + 1 / (1 + e), 1e-6));
    EXPECT_TRUE(close(gl(0, 1), -2 + e / (1 + e), 1e-6));
  }
}

TEST(Softmax, ScalarAndEmptyInputs) {
  tg::Tape<double> tape;
  auto s = tape.input(tg::Tensor<double>::scalar(5.0));
  auto y = tg::softmax(s);
  EXPECT_EQ(y.value().item(), 1.0);
  EXPECT_EQ(tg::log_softmax(s).value().item(), 0.0);
  tape.backward(y);
  EXPECT_EQ(s.grad().item(), 0.0);
  auto e = tg::softmax(tape.constant(tg::Tensor<double>::zeros({0, 3})));
  EXPECT_EQ(e.shape(), (tg::Shape{0, 3}));
}

TEST(Softmax, DimOutOfRangeThrows) {
  tg::Tape<double> tape;
  auto x = tape.input(tg::Tensor<double>::zeros({2, 3}));
  for (int d : {2, -3}) {
    try {
      tg::softmax(x, d);
      FAIL() << "no exception for dim " << d;
    } catch (const tg::ShapeError& e) {
      const std::string m = e.what();
      EXPECT_EQ(m.rfind("softmax:", 0), 0u) << m;
      EXPECT_NE(m.find("[2,3]"), std::string::npos) << m;
      EXPECT_NE(m.find(std::to_string(d)), std::string::npos) << m;
    }
    try {
      tg::log_softmax(x, d);
      FAIL() << "no exception for dim " << d;
    } catch (const tg::ShapeError& e) {
      const std::string m = e.what();
      EXPECT_EQ(m.rfind("log_softmax:", 0), 0u) << m;
      EXPECT_NE(m.find("[2,3]"), std::string::npos) << m;
    }
  }
}

// ---------------------------------------------------------------- threads

// Above parallel_threshold the forward and backward passes are cut among the threads. The
// values and gradients at 2 threads are the bits of 1 thread, and match the formulas in double
// (an element in the wrong place, or a slice left out, would not), for tensors whose size is
// not a multiple of the slices' 64-element blocks, in place and not.
TEST(Activation, LargeTensorsAtTwoThreadsGiveOneThreadsBitsAndTheFormulas) {
  const int64_t n = 3 * tg::parallel_threshold + 77;
  std::vector<double> xs(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) xs[static_cast<size_t>(i)] = -6.0 + 12.0 * double(i) / double(n);
  const auto x = tg::Tensor<double>::from(xs);
  using Fn = tg::Var<double> (*)(const tg::Var<double>&);
  struct Case {
    const char* name;
    Fn f, f_inplace;  // f_inplace: the in-place form (on a fresh op output), where there is one
    double (*value)(double);
    double (*slope)(double);
  };
  const Case cases[] = {
      {"sigmoid", [](const tg::Var<double>& v) { return tg::sigmoid(v); },
       [](const tg::Var<double>& v) { return tg::sigmoid_(v * 1.0); },
       [](double v) { return 1 / (1 + std::exp(-v)); },
       [](double v) { return std::exp(-v) / ((1 + std::exp(-v)) * (1 + std::exp(-v))); }},
      {"tanh", [](const tg::Var<double>& v) { return tg::tanh(v); },
       [](const tg::Var<double>& v) { return tg::tanh_(v * 1.0); },
       [](double v) { return std::tanh(v); },
       [](double v) { return 1 - std::tanh(v) * std::tanh(v); }},
      {"gelu", [](const tg::Var<double>& v) { return tg::gelu(v); }, nullptr,
       [](double v) { return 0.5 * v * std::erfc(-v / std::numbers::sqrt2); },
       [](double v) {
         return 0.5 * std::erfc(-v / std::numbers::sqrt2) +
                v * std::exp(-0.5 * v * v) / std::sqrt(2 * std::numbers::pi);
       }},
      {"gelu_tanh",
       [](const tg::Var<double>& v) { return tg::gelu(v, tg::GeluApproximation::tanh); }, nullptr,
       [](double v) {
         return 0.5 * v *
                (1 + std::tanh(std::sqrt(2 / std::numbers::pi) * (v + 0.044715 * v * v * v)));
       },
       [](double v) {  // 0.5 (1 + t) + 0.5 v (1 - t^2) k (1 + 3 * 0.044715 v^2)
         const double k = std::sqrt(2 / std::numbers::pi);
         const double t = std::tanh(k * (v + 0.044715 * v * v * v));
         return 0.5 * (1 + t) + 0.5 * v * (1 - t * t) * k * (1 + 3 * 0.044715 * v * v);
       }},
  };
  for (const Case& c : cases)
    for (const Fn f : {c.f, c.f_inplace}) {
      if (f == nullptr) continue;
      const std::string name = std::string(c.name) + (f == c.f ? "" : " in place");
      tg::set_num_threads(1);
      const auto [y1, g1] = run<double>(f, x);
      tg::set_num_threads(2);
      const auto [y2, g2] = run<double>(f, x);
      tg::set_num_threads(1);
      ASSERT_EQ(y2.numel(), n) << name;
      EXPECT_EQ(0, std::memcmp(y1.data(), y2.data(), sizeof(double) * size_t(n))) << name;
      EXPECT_EQ(0, std::memcmp(g1.data(), g2.data(), sizeof(double) * size_t(n))) << name;
      for (int64_t i = 0; i < n; ++i) {
        const double v = xs[static_cast<size_t>(i)];
        ASSERT_TRUE(close(y2[i], c.value(v), 1e-12)) << name << " value at " << i;
        ASSERT_TRUE(close(g2[i], c.slope(v), 1e-12)) << name << " gradient at " << i;
      }
    }
}

// ---------------------------------------------------------------- tape integration

TEST(Activation, BuffersAreReusedAcrossSteps) {
  tg::Parameter<float> p(tg::Tensor<float>::full({8, 16}, 0.5f));
  tg::Tape<float> tape;
  std::vector<const float*> first;
  for (int step = 0; step < 3; ++step) {
    tape.clear();
    auto w = tape.param(p);
    std::vector<tg::Var<float>> ys = {tg::sigmoid(w), tg::tanh(w),
                                      tg::relu(w),    tg::gelu(w, tg::GeluApproximation::tanh),
                                      tg::softmax(w), tg::log_softmax(w, 0)};
    tape.backward(total(ys[5]));
    tape.backward(total(ys[4]));
    for (size_t k = 0; k < ys.size(); ++k) {
      if (step == 0)
        first.push_back(ys[k].value().data());
      else
        EXPECT_EQ(first[k], ys[k].value().data()) << "op " << k << " step " << step;
    }
  }
}

}  // namespace
