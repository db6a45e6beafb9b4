// Losses: values against the formulas written out here (or by hand), gradients against
// finite differences, stability at +-30, +-100, +-1e4, and errors.
#include <gtest/gtest.h>

#include <cmath>
#include <string>
#include <vector>

#include "tapegrad/diag/gradcheck.hpp"
#include "tapegrad/ops/loss.hpp"
#include "test_util.hpp"

namespace tg = tapegrad;
using tapegrad::testing::expect_all_finite;

namespace {

using VarsD = std::vector<tg::Var<double>>;

// Expects f() to throw E whose message starts with `op:` and contains every piece.
template <class E, class F>
void expect_error(F f, const std::string& op, const std::vector<std::string>& pieces) {
  try {
    f();
    ADD_FAILURE() << "no exception from " << op;
  } catch (const E& e) {
    const std::string m = e.what();
    EXPECT_EQ(m.rfind(op + ":", 0), 0u) << m;
    for (const auto& p : pieces)
      EXPECT_NE(m.find(p), std::string::npos) << "'" << p << "' in " << m;
  } catch (const std::exception& e) {
    ADD_FAILURE() << "wrong exception type: " << e.what();
  }
}

template <class T>
class LossTyped : public ::testing::Test {};
using Types = ::testing::Types<float, double>;
TYPED_TEST_SUITE(LossTyped, Types);

// ---------------------------------------------------------------- mse_loss

TEST(MseLoss, ValueAndGradientByHand) {
  tg::Tape<double> tape;
  auto p = tape.input(tg::Tensor<double>::from({{1.0, 2.0}, {3.0, -1.0}}));
  auto t = tape.input(tg::Tensor<double>::from({{0.0, 2.0}, {1.0, 1.0}}));
  auto l = tg::mse_loss(p, t);
  EXPECT_EQ(l.shape(), tg::Shape{});
  // differences 1, 0, 2, -2: (1 + 0 + 4 + 4) / 4
  EXPECT_DOUBLE_EQ(l.item(), 9.0 / 4);
  tape.backward(l);
  const std::vector<double> dp = {0.5, 0.0, 1.0, -1.0};  // 2 d / 4
  for (int i = 0; i < 4; ++i) {
    EXPECT_DOUBLE_EQ(p.grad()[i], dp[i]);
    EXPECT_DOUBLE_EQ(t.grad()[i], -dp[i]);
  }
}

TEST(MseLoss, TensorTargetGetsNoGradient) {
  tg::Tape<float> tape;
  auto p = tape.input(tg::Tensor<float>::from({3.f, 0.f}));
  auto l = tg::mse_loss(p, tg::Tensor<float>::from({1.f, 0.f}));
  EXPECT_FLOAT_EQ(l.item(), 2.f);  // (4 + 0) / 2
  tape.backward(l);
  EXPECT_FLOAT_EQ(p.grad()[0], 2.f);  // 2 * 2 / 2
  EXPECT_FLOAT_EQ(p.grad()[1], 0.f);
}

TEST(MseLoss, Gradcheck) {
  tg::Generator g(1);
  auto r =
      tg::gradcheck([](tg::Tape<double>&, const VarsD& x) { return tg::mse_loss(x[0], x[1]); },
                    {tg::Tensor<double>::randn({3, 4}, g), tg::Tensor<double>::randn({3, 4}, g)});
  EXPECT_TRUE(r) << r;
}

TEST(MseLoss, ShapeErrors) {
  tg::Tape<double> tape;
  auto p = tape.input(tg::Tensor<double>::zeros({2, 3}));
  auto t = tape.input(tg::Tensor<double>::zeros({3, 2}));
  expect_error<tg::ShapeError>([&] { tg::mse_loss(p, t); }, "mse_loss", {"[2,3]", "[3,2]"});
  expect_error<tg::ShapeError>([&] { tg::mse_loss(p, tg::Tensor<double>::zeros({6})); }, "mse_loss",
                               {"[2,3]", "[6]"});
  auto e = tape.input(tg::Tensor<double>::zeros({0}));
  expect_error<tg::ShapeError>([&] { tg::mse_loss(e, e); }, "mse_loss", {"empty", "[0]"});
}

// ---------------------------------------------------------------- cross_entropy / nll_loss

// -log softmax(row)[label], straight from the definition (moderate inputs only).
double ce_row(const std::vector<double>& row, int64_t label) {
  double s = 0;
  for (double v : row) s += std::exp(v);
  return -std::log(std::exp(row[static_cast<size_t>(label)]) / s);
}

TEST(CrossEntropy, ValueAndGradientAgainstDefinition) {
  const std::vector<std::vector<double>> rows = {{1.0, 2.0, 0.5}, {-1.0, 0.0, 3.0}};
  const std::vector<int64_t> labels = {1, 0};
  tg::Tape<double> tape;
  auto x = tape.input(tg::Tensor<double>::from({{1.0, 2.0, 0.5}, {-1.0, 0.0, 3.0}}));
  auto l = tg::cross_entropy(x, labels);
  EXPECT_EQ(l.shape(), tg::Shape{});
  EXPECT_NEAR(l.item(), (ce_row(rows[0], 1) + ce_row(rows[1], 0)) / 2, 1e-14);
  tape.backward(l);
  for (int i = 0; i < 2; ++i) {
    double s = 0;
    for (double v : rows[i]) s += std::exp(v);
    for (int j = 0; j < 3; ++j) {
      const double want = (std::exp(rows[i][j]) / s - (j == labels[i] ? 1 : 0)) / 2;
      EXPECT_NEAR(x.grad()(i, j), want, 1e-15) << i << "," << j;
    }
  }
}

TEST(CrossEntropy, HandValues) {
  tg::Tape<double> tape;
  // Uniform logits over C classes: loss log C.
  auto u = tg::cross_entropy(tape.constant(tg::Tensor<double>::zeros({3, 4})), {0, 3, 2});
  EXPECT_NEAR(u.item(), std::log(4.0), 1e-15);
  // [0, ln 3] with label 1: softmax = [1/4, 3/4], loss = -ln(3/4).
  auto h = tg::cross_entropy(tape.constant(tg::Tensor<double>::from({{0.0, std::log(3.0)}})), {1});
  EXPECT_NEAR(h.item(), -std::log(0.75), 1e-15);
}

TEST(CrossEntropy, EqualsNllOfLogSoftmax) {
  tg::Generator g(5);
  auto x = tg::Tensor<double>::randn({4, 5}, g);
  const std::vector<int64_t> labels = {4, 0, 2, 2};
  tg::Tape<double> tape;
  auto v1 = tape.input(x);
  auto v2 = tape.input(x);
  auto a = tg::cross_entropy(v1, labels);
  auto b = tg::nll_loss(tg::log_softmax(v2), labels);
  EXPECT_NEAR(a.item(), b.item(), 1e-14);
  tape.backward(a);
  tape.backward(b);
  EXPECT_TRUE(tg::allclose(v1.grad(), v2.grad(), 1e-12, 1e-14));
}

TEST(CrossEntropy, Gradcheck) {
  tg::Generator g(2);
  auto x = tg::Tensor<double>::randn({4, 3}, g, 0.0, 2.0);
  auto r = tg::gradcheck(
      [](tg::Tape<double>&, const VarsD& v) {
        return tg::cross_entropy(v[0], {2, 0, 1, 1});
      },
      {x});
  EXPECT_TRUE(r) << r;
}

TYPED_TEST(LossTyped, CrossEntropyStableAtExtremes) {
  using T = TypeParam;
  for (double a : {30.0, 100.0, 1e4}) {
    tg::Tape<T> tape;
    auto x = tape.input(tg::Tensor<T>::from({{T(a), T(0)}, {T(a), T(0)}, {T(-a), T(a)}}));
    auto l0 = tg::cross_entropy(x, {0, 0, 1});  // every label on the largest logit
    EXPECT_TRUE(std::isfinite(l0.item()));
    EXPECT_NEAR(double(l0.item()),
                (2 * std::log1p(std::exp(-a)) + std::log1p(std::exp(-2 * a))) / 3, 1e-7);
    tape.backward(l0);
    expect_all_finite(x.grad(), "cross_entropy'");
    // grad row 0 = (softmax - onehot)/3 = ([1/(1+e), e/(1+e)] - [1, 0]) / 3, e = exp(-a)
    const double e = std::exp(-a);
    EXPECT_NEAR(double(x.grad()(0, 0)), -e / (1 + e) / 3, 1e-7);
    EXPECT_NEAR(double(x.grad()(0, 1)), e / (1 + e) / 3, 1e-7);

    auto l1 = tg::cross_entropy(x, {1, 1, 0});  // every label on the smallest logit
    // Loss a + log(1 + e) per row for rows 0, 1 and 2a + log(1 + e^2) for row 2.
    EXPECT_NEAR(double(l1.item()) / (4 * a / 3), 1.0, 1e-6);
    tape.backward(l1);
    expect_all_finite(x.grad(), "cross_entropy'");
    EXPECT_NEAR(double(x.grad()(0, 0)), (1 / (1 + e)) / 3, 1e-7);
    EXPECT_NEAR(double(x.grad()(0, 1)), (e / (1 + e) - 1) / 3, 1e-7);
  }
  // The brief's cases, exactly: CE([1e4, 0], 0) = 0 and CE([1e4, 0], 1) = 1e4.
  tg::Tape<T> tape;
  auto x = tape.constant(tg::Tensor<T>::from({{T(1e4), T(0)}}));
  EXPECT_EQ(tg::cross_entropy(x, {0}).item(), T(0));
  EXPECT_EQ(tg::cross_entropy(x, {1}).item(), T(1e4));
}

TEST(CrossEntropy, LabelAndShapeErrors) {
  tg::Tape<double> tape;
  auto x = tape.input(tg::Tensor<double>::zeros({2, 3}));
  expect_error<tg::ValueError>(
      [&] {
        tg::cross_entropy(x, {0, 3});
      },
      "cross_entropy", {"label 3", "C = 3", "[2,3]"});
  expect_error<tg::ValueError>(
      [&] {
        tg::cross_entropy(x, {-1, 0});
      },
      "cross_entropy", {"label -1", "C = 3"});
  expect_error<tg::ShapeError>(
      [&] {
        tg::cross_entropy(x, {0, 1, 2});
      },
      "cross_entropy", {"[2,3]", "3 labels"});
  expect_error<tg::ShapeError>([&] { tg::cross_entropy(x, {}); }, "cross_entropy",
                               {"[2,3]", "0 labels"});
  auto r3 = tape.input(tg::Tensor<double>::zeros({2, 3, 4}));
  expect_error<tg::ShapeError>(
      [&] {
        tg::cross_entropy(r3, {0, 1});
      },
      "cross_entropy", {"[N, C]", "[2,3,4]"});
  auto empty = tape.input(tg::Tensor<double>::zeros({0, 3}));
  expect_error<tg::ShapeError>([&] { tg::cross_entropy(empty, {}); }, "cross_entropy",
                               {"empty", "[0,3]"});
  expect_error<tg::ValueError>([&] { tg::nll_loss(x, {1, 7}); }, "nll_loss", {"label 7", "C = 3"});
  expect_error<tg::ShapeError>([&] { tg::nll_loss(x, {1}); }, "nll_loss", {"[2,3]", "1 labels"});
}

TEST(CrossEntropy, LabelsLiveInTheNodeAndBuffersAreReused) {
  tg::Parameter<float> w(tg::Tensor<float>::zeros({4, 3}));
  tg::Tape<float> tape;
  const std::vector<int64_t> labels = {0, 1, 2, 1};
  const int64_t* ints = nullptr;
  const float* probs = nullptr;
  for (int step = 0; step < 3; ++step) {
    tape.clear();
    w.zero_grad();
    auto l = tg::cross_entropy(tape.param(w), labels);
    tape.backward(l);
    EXPECT_EQ(l.node().ints, labels);
    if (step == 0) {
      ints = l.node().ints.data();
      probs = l.node().saved[0].data();
    } else {
      EXPECT_EQ(ints, l.node().ints.data()) << "step " << step;
      EXPECT_EQ(probs, l.node().saved[0].data()) << "step " << step;
    }
    // Zero logits: softmax 1/3 everywhere; grad (1/3 - onehot) / 4.
    EXPECT_FLOAT_EQ(w.grad()(0, 0), (1.f / 3 - 1) / 4);
    EXPECT_FLOAT_EQ(w.grad()(0, 1), (1.f / 3) / 4);
  }
}

TEST(NllLoss, ValueGradientAndGradcheck) {
  tg::Tape<double> tape;
  auto lp = tape.input(tg::Tensor<double>::from({{-0.1, -2.0, -3.0}, {-1.5, -0.5, -2.5}}));
  auto l = tg::nll_loss(lp, {2, 1});
  EXPECT_DOUBLE_EQ(l.item(), (3.0 + 0.5) / 2);
  tape.backward(l);
  const std::vector<double> want = {0, 0, -0.5, 0, -0.5, 0};
  for (int i = 0; i < 6; ++i) EXPECT_EQ(lp.grad()[i], want[i]) << i;

  tg::Generator g(9);
  auto r = tg::gradcheck(
      [](tg::Tape<double>&, const VarsD& v) {
        return tg::nll_loss(v[0], {0, 2, 2});
      },
      {tg::Tensor<double>::randn({3, 4}, g)});
  EXPECT_TRUE(r) << r;
}

// ---------------------------------------------------------------- BCE with logits

// -[t log s + (1 - t) log(1 - s)], s = 1/(1 + exp(-x)): the textbook form (moderate x).
double bce_naive(double x, double t) {
  const double s = 1 / (1 + std::exp(-x));
  return -(t * std::log(s) + (1 - t) * std::log(1 - s));
}

TEST(BceWithLogits, ValueAndGradientAgainstTextbookForm) {
  const std::vector<double> xs = {-2.0, -0.3, 0.0, 1.2, 4.0};
  const std::vector<double> ts = {0.0, 1.0, 0.5, 0.25, 1.0};
  tg::Tape<double> tape;
  auto x = tape.input(tg::Tensor<double>::from(xs));
  auto t = tape.input(tg::Tensor<double>::from(ts));
  auto l = tg::binary_cross_entropy_with_logits(x, t);
  EXPECT_EQ(l.shape(), tg::Shape{});
  double want = 0;
  for (size_t i = 0; i < xs.size(); ++i) want += bce_naive(xs[i], ts[i]) / xs.size();
  EXPECT_NEAR(l.item(), want, 1e-14);
  tape.backward(l);
  for (size_t i = 0; i < xs.size(); ++i) {
    const double s = 1 / (1 + std::exp(-xs[i]));
    EXPECT_NEAR(x.grad()[i], (s - ts[i]) / 5, 1e-15) << i;
    EXPECT_NEAR(t.grad()[i], -xs[i] / 5, 1e-15) << i;
  }
  // Hand value: x = 0 gives log 2 whatever the target.
  auto z = tg::binary_cross_entropy_with_logits(tape.constant(tg::Tensor<double>::zeros({3})),
                                                tg::Tensor<double>::from({0.0, 1.0, 0.3}));
  EXPECT_NEAR(z.item(), std::log(2.0), 1e-16);
}

TEST(BceWithLogits, Gradcheck) {
  tg::Generator g(4);
  auto r = tg::gradcheck(
      [](tg::Tape<double>&, const VarsD& v) {
        return tg::binary_cross_entropy_with_logits(v[0], v[1]);
      },
      {tg::Tensor<double>::randn({2, 3}, g, 0.0, 2.0), tg::Tensor<double>::rand({2, 3}, g)});
  EXPECT_TRUE(r) << r;
}

TYPED_TEST(LossTyped, BceWithLogitsStableAtExtremes) {
  using T = TypeParam;
  for (double a : {30.0, 100.0, 1e4}) {
    // x = +a, -a with targets 1, 0 (confident and right) and 0, 1 (confident and wrong).
    tg::Tape<T> tape;
    auto x = tape.input(tg::Tensor<T>::from({T(a), T(-a)}));
    auto right = tg::binary_cross_entropy_with_logits(x, tg::Tensor<T>::from({T(1), T(0)}));
    EXPECT_NEAR(double(right.item()), std::log1p(std::exp(-a)), 1e-7);
    tape.backward(right);
    expect_all_finite(x.grad(), "bce'");
    EXPECT_NEAR(double(x.grad()[0]), -std::exp(-a) / (1 + std::exp(-a)) / 2, 1e-7);
    auto wrong = tg::binary_cross_entropy_with_logits(x, tg::Tensor<T>::from({T(0), T(1)}));
    EXPECT_NEAR(double(wrong.item()) / (a + std::log1p(std::exp(-a))), 1.0, 1e-6);
    tape.backward(wrong);
    expect_all_finite(x.grad(), "bce'");
    EXPECT_NEAR(double(x.grad()[0]), 1 / (1 + std::exp(-a)) / 2, 1e-7);   // (1 - 0) / 2
    EXPECT_NEAR(double(x.grad()[1]), -1 / (1 + std::exp(-a)) / 2, 1e-7);  // (0 - 1) / 2
  }
}

TEST(BceWithLogits, ShapeErrors) {
  tg::Tape<double> tape;
  auto x = tape.input(tg::Tensor<double>::zeros({4}));
  expect_error<tg::ShapeError>(
      [&] {
        tg::binary_cross_entropy_with_logits(x, tg::Tensor<double>::zeros({4, 1}));
      },
      "binary_cross_entropy_with_logits", {"[4]", "[4,1]"});
}

}  // namespace
