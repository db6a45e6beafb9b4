// Keras weight constraints (MaxNorm, UnitNorm, MinMaxNorm, NonNeg), per output unit, against
// the formulas written here; and as the optimizer's last stage.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>

#include "tapegrad/optim/constraint.hpp"
#include "tapegrad/optim/sgd.hpp"
#include "test_util.hpp"

namespace tg = tapegrad;
namespace opt = tapegrad::optim;
using tapegrad::testing::expect_error_containing;
using tapegrad::testing::row_norm;

namespace {

const double eps = 1e-7;

// Rows of norm 5, 0.5, 0 and 13.
tg::Tensor<double> dense_weight() {
  return tg::Tensor<double>::from(
      {{3.0, 4.0, 0.0}, {0.3, 0.0, -0.4}, {0.0, 0.0, 0.0}, {-5.0, 0.0, 12.0}});
}
const double row_norms[] = {5.0, 0.5, 0.0, 13.0};

}  // namespace

TEST(OptimConstraint, MaxNormPerRow) {
  auto w = dense_weight();
  const auto w0 = w.clone();
  opt::MaxNorm{2.0}(w);
  for (int64_t r = 0; r < 4; ++r) {
    const double n = row_norms[r], f = std::min(n, 2.0) / (eps + n);
    for (int64_t c = 0; c < 3; ++c) EXPECT_NEAR(w(r, c), w0(r, c) * f, 1e-15);
    EXPECT_LE(row_norm(w, r), 2.0);
  }
}

TEST(OptimConstraint, UnitNormPerRowAndPerConvChannel) {
  auto w = dense_weight();
  const auto w0 = w.clone();
  opt::UnitNorm{}(w);
  for (int64_t r = 0; r < 4; ++r)
    for (int64_t c = 0; c < 3; ++c) EXPECT_NEAR(w(r, c), w0(r, c) / (eps + row_norms[r]), 1e-15);
  EXPECT_NEAR(row_norm(w, 0), 1.0, 1e-7);
  EXPECT_NEAR(row_norm(w, 3), 1.0, 1e-7);
  EXPECT_EQ(row_norm(w, 2), 0.0);  // a zero unit stays zero (ε keeps it finite)

  tg::Generator gen(3);
  auto k = tg::Tensor<float>::randn({4, 3, 2, 2}, gen, 0.f, 3.f);  // [O, C, kh, kw]
  opt::UnitNorm{}(k);
  for (int64_t o = 0; o < 4; ++o) {
    double s = 0;
    for (int64_t i = 0; i < 12; ++i) s += double(k[o * 12 + i]) * k[o * 12 + i];
    EXPECT_NEAR(std::sqrt(s), 1.0, 1e-6);
  }
}

TEST(OptimConstraint, MinMaxNormWithRate) {
  auto w = dense_weight();
  const auto w0 = w.clone();
  opt::MinMaxNorm{.min_value = 1.0, .max_value = 6.0, .rate = 0.5}(w);
  for (int64_t r = 0; r < 4; ++r) {
    const double n = row_norms[r];
    const double desired = 0.5 * std::clamp(n, 1.0, 6.0) + 0.5 * n;
    for (int64_t c = 0; c < 3; ++c)
      EXPECT_NEAR(w(r, c), w0(r, c) * desired / (eps + n), 1e-14) << r;
  }
}

TEST(OptimConstraint, NonNeg) {
  auto w = tg::Tensor<double>::from({-1.0, 0.0, 2.0, -0.0, std::nan("")});
  opt::NonNeg{}(w);
  EXPECT_EQ(w[0], 0.0);
  EXPECT_EQ(w[1], 0.0);
  EXPECT_EQ(w[2], 2.0);
  EXPECT_EQ(w[3], 0.0);
  EXPECT_TRUE(std::isnan(w[4]));  // Keras: w · [w ≥ 0] keeps NaN
}

TEST(OptimConstraint, NonNegSetsMinusInfinityToZero) {
  const double inf = std::numeric_limits<double>::infinity();
  auto w = tg::Tensor<double>::from({-inf, inf, -2.0});
  opt::NonNeg{}(w);  // not −∞ · 0 = NaN
  EXPECT_EQ(w[0], 0.0);
  EXPECT_EQ(w[1], inf);
  EXPECT_EQ(w[2], 0.0);
}

TEST(OptimConstraint, OtherDimsWholeTensorAndBias) {
  auto w = dense_weight();  // dim 1: one norm per column
  const auto w0 = w.clone();
  opt::UnitNorm{.dim = 1}(w);
  for (int64_t c = 0; c < 3; ++c) {
    double s = 0;
    for (int64_t r = 0; r < 4; ++r) s += w0(r, c) * w0(r, c);
    for (int64_t r = 0; r < 4; ++r) EXPECT_NEAR(w(r, c), w0(r, c) / (eps + std::sqrt(s)), 1e-15);
  }
  auto x = dense_weight();
  opt::MaxNorm{.max_value = 1.0, .dim = opt::whole_tensor}(x);
  const double total = std::sqrt(25.0 + 0.25 + 169.0);
  for (int64_t i = 0; i < 12; ++i) EXPECT_NEAR(x[i], w0[i] / (eps + total), 1e-15);
  auto bias = tg::Tensor<double>::from({3.0, 4.0});  // one vector, not per element
  opt::MaxNorm{.max_value = 1.0}(bias);
  EXPECT_NEAR(bias[0], 3.0 / (5.0 + eps), 1e-15);
  EXPECT_NEAR(bias[1], 4.0 / (5.0 + eps), 1e-15);
}

TEST(OptimConstraint, BadArgumentsRaise) {
  auto w = dense_weight();
  try {
    opt::MaxNorm{.dim = 2}(w);
    ADD_FAILURE();
  } catch (const tg::ShapeError& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("MaxNorm"), std::string::npos) << msg;
    EXPECT_NE(msg.find("[4,3]"), std::string::npos) << msg;
  }
  EXPECT_THROW(opt::MaxNorm{.max_value = -1}(w), tg::ValueError);
  EXPECT_THROW((opt::MinMaxNorm{.min_value = 2, .max_value = 1}(w)), tg::ValueError);
  EXPECT_THROW(opt::MinMaxNorm{.rate = 1.5}(w), tg::ValueError);
}

// eps = 0 gives NaN on a zero unit, NaN eps NaN everywhere, a negative eps inf; infinite bounds
// give inf weights. Each is a ValueError naming the constraint and the option; w is untouched.
TEST(OptimConstraint, NonFiniteOrNonPositiveEpsAndInfiniteBoundsRaise) {
  const double inf = std::numeric_limits<double>::infinity(), nan = std::nan("");
  auto w = dense_weight();
  const auto w0 = w.clone();
  for (double e : {0.0, -1.0, nan, inf}) {
    expect_error_containing<tg::ValueError>([&] { opt::MaxNorm{.max_value = 1, .eps = e}(w); },
                                            {"MaxNorm", "eps"});
    expect_error_containing<tg::ValueError>([&] { opt::UnitNorm{.eps = e}(w); },
                                            {"UnitNorm", "eps"});
    expect_error_containing<tg::ValueError>([&] { opt::MinMaxNorm{.eps = e}(w); },
                                            {"MinMaxNorm", "eps"});
  }
  expect_error_containing<tg::ValueError>([&] { opt::MaxNorm{.max_value = inf}(w); },
                                          {"MaxNorm", "max_value", "inf"});
  expect_error_containing<tg::ValueError>([&] { opt::MaxNorm{.max_value = nan}(w); },
                                          {"MaxNorm", "max_value"});
  expect_error_containing<tg::ValueError>(
      [&] { opt::MinMaxNorm{.min_value = inf, .max_value = inf}(w); },
      {"MinMaxNorm", "min_value", "max_value"});
  expect_error_containing<tg::ValueError>([&] { opt::MinMaxNorm{.max_value = inf}(w); },
                                          {"MinMaxNorm", "max_value", "inf"});
  EXPECT_TRUE(tapegrad::testing::same_bits(w, w0));
  // A norm of 1e300 fits a double but not a float weight.
  auto f = tg::Tensor<float>::ones({2, 3});
  expect_error_containing<tg::ValueError>(
      [&] { opt::MinMaxNorm{.min_value = 1e300, .max_value = 1e300}(f); },
      {"MinMaxNorm", "min_value", "1e+300"});
  auto d = dense_weight();
  opt::MinMaxNorm{.min_value = 1e300, .max_value = 1e300}(d);
  EXPECT_NEAR(d(0, 0) / 1e300, 3.0 / (eps + 5.0), 1e-12);  // row 0: (3, 4, 0), norm 5
  // A tiny positive eps is fine: the zero row stays zero.
  auto z = tg::Tensor<double>::zeros({2, 3});
  opt::UnitNorm{.eps = 1e-30}(z);
  EXPECT_EQ(z[0], 0.0);
}

TEST(OptimConstraint, AfterAnOptimizerStepUnitsAreAtOneOrBelowMax) {
  tg::Generator gen(11);
  tg::Parameter<double> dense(tg::Tensor<double>::randn({5, 4}, gen));
  tg::Parameter<double> conv(tg::Tensor<double>::randn({3, 2, 3, 3}, gen));
  tg::Parameter<double> bias(tg::Tensor<double>::randn({5}, gen));
  auto groups = std::vector<opt::ParamGroup<double>>{opt::ParamGroup<double>::of({dense}),
                                                     opt::ParamGroup<double>::of({conv, bias})};
  groups[0].constraints.push_back(opt::UnitNorm{});
  opt::SGD<double> sgd(groups, {.lr = 0.5, .momentum = 0.9});
  sgd.add_constraint(conv, opt::MaxNorm{.max_value = 0.5});
  sgd.add_constraint(bias, opt::NonNeg{});
  for (int step = 0; step < 3; ++step) {
    dense.grad() = tg::Tensor<double>::randn({5, 4}, gen, 0.0, 3.0);
    conv.grad() = tg::Tensor<double>::randn({3, 2, 3, 3}, gen, 0.0, 3.0);
    bias.grad() = tg::Tensor<double>::randn({5}, gen);
    sgd.step();
    for (int64_t o = 0; o < 5; ++o) EXPECT_NEAR(row_norm(dense.value(), o), 1.0, 1e-6);
    for (int64_t o = 0; o < 3; ++o) EXPECT_LE(row_norm(conv.value(), o), 0.5);
    for (int64_t i = 0; i < 5; ++i) EXPECT_GE(bias.value()[i], 0.0);
  }
}
