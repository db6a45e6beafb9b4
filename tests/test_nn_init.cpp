// nn::init: gains and fans from the formulas, bounds and sample statistics of every
// initialiser on large tensors, orthogonality, reproducibility, errors.
#include <gtest/gtest.h>

#include <cmath>
#include <string>

#include "tapegrad/nn/init.hpp"

namespace tg = tapegrad;
namespace init = tapegrad::nn::init;

namespace {

struct Stats {
  double mean, std, max_abs, min, max;
};
template <class T>
Stats stats(const tg::Tensor<T>& t) {
  double s = 0, s2 = 0, m = 0, lo = INFINITY, hi = -INFINITY;
  for (int64_t i = 0; i < t.numel(); ++i) {
    const double v = t[i];
    s += v;
    s2 += v * v;
    m = std::max(m, std::abs(v));
    lo = std::min(lo, v);
    hi = std::max(hi, v);
  }
  const double n = double(t.numel()), mean = s / n;
  return {mean, std::sqrt(s2 / n - mean * mean), m, lo, hi};
}

// A uniform U(±bound) sample: inside the bound, reaching near it, std bound/√3 within 2%
// (the tensors have >= 50k elements: the sampling error of the std is below 0.4%).
template <class T>
void expect_uniform(const tg::Tensor<T>& t, double bound) {
  const Stats s = stats(t);
  EXPECT_LE(s.max_abs, bound * (1 + 1e-6));
  EXPECT_GT(s.max, 0.99 * bound);
  EXPECT_LT(s.min, -0.99 * bound);
  EXPECT_NEAR(s.std, bound / std::sqrt(3.0), 0.02 * bound / std::sqrt(3.0));
  EXPECT_NEAR(s.mean, 0.0, 5 * bound / std::sqrt(3.0 * double(t.numel())));  // 5 sigma
}
template <class T>
void expect_normal(const tg::Tensor<T>& t, double mean, double std) {
  const Stats s = stats(t);
  EXPECT_NEAR(s.std, std, 0.02 * std);
  EXPECT_NEAR(s.mean, mean, 5 * std / std::sqrt(double(t.numel())));  // 5 sigma
}

TEST(Init, CalculateGain) {
  EXPECT_DOUBLE_EQ(init::calculate_gain("linear"), 1.0);
  EXPECT_DOUBLE_EQ(init::calculate_gain("conv2d"), 1.0);
  EXPECT_DOUBLE_EQ(init::calculate_gain("sigmoid"), 1.0);
  EXPECT_DOUBLE_EQ(init::calculate_gain("tanh"), 5.0 / 3.0);
  EXPECT_DOUBLE_EQ(init::calculate_gain("relu"), std::sqrt(2.0));
  EXPECT_DOUBLE_EQ(init::calculate_gain("relu", 0.5), std::sqrt(2.0));  // param ignored
  EXPECT_DOUBLE_EQ(init::calculate_gain("leaky_relu"), std::sqrt(2.0 / (1 + 0.01 * 0.01)));
  EXPECT_DOUBLE_EQ(init::calculate_gain("leaky_relu", 0.2), std::sqrt(2.0 / 1.04));
  EXPECT_DOUBLE_EQ(init::calculate_gain("leaky_relu", 0.0), std::sqrt(2.0));
  EXPECT_DOUBLE_EQ(init::calculate_gain("selu"), 0.75);
  try {
    init::calculate_gain("swish");
    FAIL();
  } catch (const tg::ValueError& e) {
    EXPECT_NE(std::string(e.what()).find("calculate_gain"), std::string::npos);
    EXPECT_NE(std::string(e.what()).find("swish"), std::string::npos);
  }
}

TEST(Init, Fans) {
  EXPECT_EQ(init::fan_in({256, 784}), 784);
  EXPECT_EQ(init::fan_out({256, 784}), 256);
  EXPECT_EQ(init::fan_in({16, 3, 3, 5}), 45);
  EXPECT_EQ(init::fan_out({16, 3, 3, 5}), 240);
  try {
    init::fan_in({10});
    FAIL();
  } catch (const tg::ValueError& e) {
    EXPECT_NE(std::string(e.what()).find("[10]"), std::string::npos) << e.what();
  }
  tg::Tensor<double> v({5});
  EXPECT_THROW(init::xavier_uniform_(v), tg::ValueError);
  EXPECT_THROW(init::kaiming_normal_(v), tg::ValueError);
}

TEST(Init, UniformNormalConstant) {
  tg::Generator g(1);
  tg::Tensor<double> t({300, 300});
  init::uniform_(t, -2.0, 4.0, g);
  const Stats s = stats(t);
  EXPECT_GE(s.min, -2.0);
  EXPECT_LT(s.max, 4.0);
  EXPECT_NEAR(s.mean, 1.0, 0.03);
  EXPECT_NEAR(s.std, 6.0 / std::sqrt(12.0), 0.02);
  init::normal_(t, 3.0, 0.5, g);
  expect_normal(t, 3.0, 0.5);
  init::constant_(t, 0.25);
  EXPECT_EQ(stats(t).min, 0.25);
  EXPECT_EQ(stats(t).max, 0.25);
  init::zeros_(t);
  EXPECT_EQ(stats(t).max_abs, 0.0);
  init::ones_(t);
  EXPECT_EQ(stats(t).min, 1.0);
  EXPECT_EQ(stats(t).max, 1.0);
}

TEST(Init, Xavier) {
  tg::Generator g(2);
  tg::Tensor<float> t({200, 500});  // fan_in 500, fan_out 200
  init::xavier_uniform_(t, 1.0, g);
  expect_uniform(t, std::sqrt(6.0 / 700));
  init::xavier_uniform_(t, 5.0 / 3.0, g);
  expect_uniform(t, 5.0 / 3.0 * std::sqrt(6.0 / 700));
  init::xavier_normal_(t, 1.0, g);
  expect_normal(t, 0.0, std::sqrt(2.0 / 700));
  tg::Tensor<double> c({64, 32, 5, 5});  // fan_in 800, fan_out 1600
  init::xavier_normal_(c, 2.0, g);
  expect_normal(c, 0.0, 2.0 * std::sqrt(2.0 / 2400));
}

TEST(Init, Kaiming) {
  tg::Generator g(3);
  tg::Tensor<double> t({300, 400});  // fan_in 400, fan_out 300
  init::kaiming_uniform_(t, 0.0, "fan_in", "leaky_relu", g);
  expect_uniform(t, std::sqrt(6.0 / 400));  // √(6/((1+a²)·fan_in)) with a = 0
  const double a = std::sqrt(5.0);          // nn.Linear's choice: bound 1/√fan_in
  init::kaiming_uniform_(t, a, "fan_in", "leaky_relu", g);
  expect_uniform(t, std::sqrt(6.0 / ((1 + a * a) * 400)));
  expect_uniform(t, 1.0 / std::sqrt(400.0));
  init::kaiming_uniform_(t, 0.0, "fan_out", "relu", g);
  expect_uniform(t, std::sqrt(6.0 / 300));
  init::kaiming_uniform_(t, 0.0, "fan_in", "tanh", g);
  expect_uniform(t, 5.0 / 3.0 * std::sqrt(3.0 / 400));
  init::kaiming_normal_(t, 0.0, "fan_in", "leaky_relu", g);
  expect_normal(t, 0.0, std::sqrt(2.0 / 400));
  init::kaiming_normal_(t, 0.0, "fan_out", "relu", g);
  expect_normal(t, 0.0, std::sqrt(2.0 / 300));
  tg::Tensor<float> c({64, 32, 5, 5});  // fan_in 800
  init::kaiming_normal_(c, 0.1, "fan_in", "leaky_relu", g);
  expect_normal(c, 0.0, std::sqrt(2.0 / (1.01 * 800)));
  try {
    init::kaiming_uniform_(t, 0.0, "fan_avg", "relu", g);
    FAIL();
  } catch (const tg::ValueError& e) {
    EXPECT_NE(std::string(e.what()).find("fan_avg"), std::string::npos);
  }
}

template <class T>
void expect_orthonormal_rows_or_columns(const tg::Tensor<T>& t, double gain, double tol) {
  const int64_t rows = t.size(0), cols = t.numel() / rows;
  Eigen::MatrixXd m(rows, cols);
  for (int64_t i = 0; i < rows; ++i)
    for (int64_t j = 0; j < cols; ++j) m(i, j) = t[i * cols + j];
  const Eigen::MatrixXd gram =
      rows >= cols ? Eigen::MatrixXd(m.transpose() * m) : Eigen::MatrixXd(m * m.transpose());
  const Eigen::MatrixXd expected =
      gain * gain * Eigen::MatrixXd::Identity(gram.rows(), gram.cols());
  EXPECT_LT((gram - expected).cwiseAbs().maxCoeff(), tol) << gram;
}

TEST(Init, Orthogonal) {
  tg::Generator g(4);
  tg::Tensor<double> tall({9, 5}), wide({3, 7}), square({6, 6}), conv({4, 2, 3, 3});
  init::orthogonal_(tall, 1.0, g);
  expect_orthonormal_rows_or_columns(tall, 1.0, 1e-12);  // WᵀW = I
  init::orthogonal_(wide, 1.0, g);
  expect_orthonormal_rows_or_columns(wide, 1.0, 1e-12);  // WWᵀ = I
  init::orthogonal_(square, 2.0, g);
  expect_orthonormal_rows_or_columns(square, 2.0, 1e-12);  // WᵀW = 4I
  init::orthogonal_(conv, 1.0, g);
  expect_orthonormal_rows_or_columns(conv, 1.0, 1e-12);  // viewed as [4, 18]
  tg::Tensor<float> f({16, 16});
  init::orthogonal_(f, 1.0, g);
  expect_orthonormal_rows_or_columns(f, 1.0, 1e-5);
  tg::Tensor<double> v({4});
  EXPECT_THROW(init::orthogonal_(v, 1.0, g), tg::ValueError);
}

TEST(Init, ReproducibleAndDefaultGenerator) {
  tg::Tensor<double> a({10, 10}), b({10, 10});
  tg::Generator g1(42), g2(42);
  init::kaiming_uniform_(a, 0.0, "fan_in", "relu", g1);
  init::kaiming_uniform_(b, 0.0, "fan_in", "relu", g2);
  EXPECT_TRUE(tg::allclose(a, b, 0, 0));
  tg::nn::default_generator().manual_seed(7);
  init::normal_(a);
  tg::nn::default_generator().manual_seed(7);
  init::normal_(b);
  EXPECT_TRUE(tg::allclose(a, b, 0, 0));
  init::normal_(b);  // the default generator moved on
  EXPECT_FALSE(tg::allclose(a, b, 0, 0));
  tg::Generator g3(7);  // the default generator is an ordinary Generator seeded as told
  init::normal_(b, 0.0, 1.0, g3);
  EXPECT_TRUE(tg::allclose(a, b, 0, 0));
}

TEST(Init, ParameterOverloadsFillTheValue) {
  tg::Parameter<float> p(tg::Tensor<float>::zeros({250, 200}));
  tg::Generator g(5);
  init::xavier_uniform_(p, 1.0, g);
  expect_uniform(p.value(), std::sqrt(6.0 / 450));
  init::ones_(p);
  EXPECT_EQ(p.value()[17], 1.0f);
  init::orthogonal_(p, 1.0, g);
  expect_orthonormal_rows_or_columns(p.value(), 1.0, 1e-5);
}

// The message of the ValueError that f() throws names the function and the argument.
template <class F>
void expect_value_error(F f, const std::string& function, const std::string& argument) {
  try {
    f();
    ADD_FAILURE() << "no exception thrown";
  } catch (const tg::ValueError& e) {
    const std::string what = e.what();
    EXPECT_NE(what.find(function), std::string::npos) << what;
    EXPECT_NE(what.find(argument), std::string::npos) << what;
  }
}

// Arguments PyTorch rejects (std < 0, a > b) or that would fill the tensor with NaN or inf throw
// ValueError and leave the tensor as it was.
TEST(Init, BadArgumentsRaise) {
  const double inf = INFINITY, nan = NAN;
  tg::Generator g(6);
  tg::Tensor<double> t = tg::Tensor<double>::full({3, 4}, 0.5);
  for (double std : {-1.0, nan, inf})
    expect_value_error([&] { init::normal_(t, 0.0, std, g); }, "normal_", "std");
  expect_value_error([&] { init::normal_(t, nan, 1.0, g); }, "normal_", "mean");
  expect_value_error([&] { init::uniform_(t, 1.0, 0.0, g); }, "uniform_", "a <= b");
  expect_value_error([&] { init::uniform_(t, -inf, inf, g); }, "uniform_", "finite");
  expect_value_error([&] { init::uniform_(t, -1e308, 1e308, g); }, "uniform_", "b - a");
  expect_value_error([&] { init::uniform_(t, 0.0, nan, g); }, "uniform_", "finite");
  for (double gain : {nan, inf, -1.0}) {
    expect_value_error([&] { init::xavier_uniform_(t, gain, g); }, "xavier_uniform_", "gain");
    expect_value_error([&] { init::xavier_normal_(t, gain, g); }, "xavier_normal_", "gain");
  }
  expect_value_error([&] { init::orthogonal_(t, inf, g); }, "orthogonal_", "gain");
  expect_value_error([&] { init::orthogonal_(t, nan, g); }, "orthogonal_", "gain");
  for (double a : {nan, inf}) {
    expect_value_error([&] { init::kaiming_uniform_(t, a, "fan_in", "leaky_relu", g); },
                       "kaiming_uniform_", "a must be finite");
    expect_value_error([&] { init::kaiming_normal_(t, a, "fan_in", "relu", g); }, "kaiming_normal_",
                       "a must be finite");
    expect_value_error([&] { init::calculate_gain("leaky_relu", a); }, "calculate_gain",
                       "leaky_relu");
  }
  for (int64_t i = 0; i < t.numel(); ++i) EXPECT_EQ(t[i], 0.5);
  // Still valid: std = 0, a = b, a negative orthogonal gain, an empty weight.
  init::normal_(t, 2.0, 0.0, g);
  EXPECT_EQ(t[5], 2.0);
  init::uniform_(t, -3.0, -3.0, g);
  EXPECT_EQ(t[5], -3.0);
  init::orthogonal_(t, -1.0, g);
  expect_orthonormal_rows_or_columns(t, 1.0, 1e-12);
  tg::Tensor<double> empty({0, 0});
  EXPECT_NO_THROW(init::xavier_uniform_(empty, 1.0, g));
  EXPECT_NO_THROW(init::xavier_normal_(empty, 1.0, g));
}

}  // namespace
