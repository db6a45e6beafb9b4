// sum, mean, max: values by hand, gradients by hand and by gradcheck (double, 1e-6), errors.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "tapegrad/diag/gradcheck.hpp"
#include "tapegrad/ops/reduce.hpp"
#include "test_util.hpp"

namespace tg = tapegrad;
using TD = tg::Tensor<double>;
using VD = tg::Var<double>;
using Vars = std::vector<VD>;
using tapegrad::testing::expect_error_exact;
using tapegrad::testing::expect_gradcheck;
using tapegrad::testing::expect_values;
using tapegrad::testing::randn;
using tapegrad::testing::seq;

namespace {

TEST(Reduce, SumAndMeanOfAll) {
  tg::Tape<double> tape;
  auto x = tape.input(seq({2, 3}));
  auto s = tg::sum(x);
  EXPECT_EQ(s.shape(), tg::Shape{});
  EXPECT_DOUBLE_EQ(s.item(), 21.0);
  auto m = tg::mean(x);
  EXPECT_DOUBLE_EQ(m.item(), 3.5);
  tape.backward(m);
  expect_values(x.grad(), {1.0 / 6, 1.0 / 6, 1.0 / 6, 1.0 / 6, 1.0 / 6, 1.0 / 6}, {2, 3});

  tg::Tape<double> t2;
  auto y = t2.input(seq({2, 3}));
  auto z = tg::sum(y);
  t2.backward(z);
  expect_values(y.grad(), {1, 1, 1, 1, 1, 1}, {2, 3});

  tg::Tape<double> t3;  // empty: sum 0, mean NaN (torch)
  auto e = t3.input(TD::zeros({0, 3}));
  EXPECT_EQ(tg::sum(e).item(), 0.0);
  EXPECT_TRUE(std::isnan(tg::mean(e).item()));
}

TEST(Reduce, SumAlongEachDim) {
  tg::Tape<double> tape;
  auto x = tape.input(seq({2, 3, 4}));  // x[i,j,k] = 12 i + 4 j + k + 1
  auto s0 = tg::sum(x, 0);
  std::vector<double> e0;
  for (int j = 0; j < 3; ++j)
    for (int k = 0; k < 4; ++k) e0.push_back((4 * j + k + 1) + (12 + 4 * j + k + 1));
  expect_values(s0.value(), e0, {3, 4});
  auto s1 = tg::sum(x, 1);
  expect_values(s1.value(), {15, 18, 21, 24, 51, 54, 57, 60}, {2, 4});
  auto s2 = tg::sum(x, -1);
  expect_values(s2.value(), {10, 26, 42, 58, 74, 90}, {2, 3});
  auto k1 = tg::sum(x, -2, true);
  expect_values(k1.value(), {15, 18, 21, 24, 51, 54, 57, 60}, {2, 1, 4});
  auto k2 = tg::sum(x, 2, true);
  expect_values(k2.value(), {10, 26, 42, 58, 74, 90}, {2, 3, 1});

  tape.backward(s1, TD::from({{1.0, 2.0, 3.0, 4.0}, {5.0, 6.0, 7.0, 8.0}}));
  // dx[i,j,k] = g[i,k] for every j
  expect_values(x.grad(), {1, 2, 3, 4, 1, 2, 3, 4, 1, 2, 3, 4, 5, 6, 7, 8, 5, 6, 7, 8, 5, 6, 7, 8},
                {2, 3, 4});
}

TEST(Reduce, MeanAlongDim) {
  tg::Tape<double> tape;
  auto x = tape.input(seq({2, 3}));
  auto m0 = tg::mean(x, 0);
  expect_values(m0.value(), {2.5, 3.5, 4.5}, {3});
  auto m1 = tg::mean(x, 1, true);
  expect_values(m1.value(), {2, 5}, {2, 1});
  tape.backward(m1, TD::from({3.0, 6.0}, {2, 1}));
  expect_values(x.grad(), {1, 1, 1, 2, 2, 2}, {2, 3});  // g / 3
}

TEST(Reduce, ZeroDimTensorAcceptsDimZero) {
  tg::Tape<double> tape;
  auto x = tape.input(TD::scalar(4.0));
  auto s = tg::sum(x, 0);
  EXPECT_EQ(s.shape(), tg::Shape{});
  EXPECT_DOUBLE_EQ(s.item(), 4.0);
  auto m = tg::max(x, -1);
  EXPECT_DOUBLE_EQ(m.item(), 4.0);
  tape.backward(m);
  EXPECT_DOUBLE_EQ(x.grad().item(), 1.0);
}

TEST(Reduce, MaxValuesAndGradientToFirstMaximum) {
  tg::Tape<double> tape;
  auto x =
      tape.input(TD::from({{1.0, 5.0, 5.0, 2.0}, {7.0, 0.0, 7.0, 7.0}, {-1.0, -3.0, -2.0, -1.0}}));
  auto m1 = tg::max(x, 1);
  expect_values(m1.value(), {5, 7, -1}, {3});
  tape.backward(m1, TD::from({10.0, 20.0, 30.0}));
  // ties: the first maximum in row-major order takes the whole gradient
  expect_values(x.grad(), {0, 10, 0, 0, 20, 0, 0, 0, 30, 0, 0, 0}, {3, 4});

  tg::Tape<double> t2;  // along dim 0, kept
  auto y = t2.input(TD::from({{1.0, 9.0, 3.0}, {4.0, 9.0, 0.0}, {4.0, 2.0, 3.0}}));
  auto m0 = tg::max(y, 0, true);
  expect_values(m0.value(), {4, 9, 3}, {1, 3});
  t2.backward(m0, TD::from({{1.0, 2.0, 3.0}}));
  expect_values(y.grad(), {0, 2, 3, 1, 0, 0, 0, 0, 0}, {3, 3});
}

TEST(Reduce, MaxPropagatesNaN) {
  tg::Tape<double> tape;
  const double nan = std::numeric_limits<double>::quiet_NaN();
  auto x = tape.input(TD::from({1.0, nan, 3.0}));
  auto m = tg::max(x, 0);
  EXPECT_TRUE(std::isnan(m.item()));
  tape.backward(m);
  expect_values(x.grad(), {0, 1, 0}, {3});
}

TEST(Reduce, Gradcheck) {
  const TD x = randn({2, 3, 4}, 1);
  expect_gradcheck([](tg::Tape<double>&, const Vars& v) { return tg::sum(v[0]); }, {x});
  expect_gradcheck([](tg::Tape<double>&, const Vars& v) { return tg::mean(v[0]); }, {x});
  for (int d : {0, 1, 2, -1, -3})
    for (bool keep : {false, true}) {
      SCOPED_TRACE("dim " + std::to_string(d) + (keep ? " keepdim" : ""));
      expect_gradcheck(
          [d, keep](tg::Tape<double>&, const Vars& v) { return tg::sum(v[0], d, keep); }, {x});
      expect_gradcheck(
          [d, keep](tg::Tape<double>&, const Vars& v) { return tg::mean(v[0], d, keep); }, {x});
      // distinct values (a randn draw), so that the maximum is away from a tie
      expect_gradcheck(
          [d, keep](tg::Tape<double>&, const Vars& v) { return tg::max(v[0], d, keep); }, {x});
    }
}

TEST(Reduce, Errors) {
  tg::Tape<double> tape;
  auto x = tape.input(TD::zeros({3, 4}));
  expect_error_exact<tg::ShapeError>([&] { tg::sum(x, 2); },
                                     "sum: dim 2 out of range for shape [3,4] (rank 2)");
  expect_error_exact<tg::ShapeError>([&] { tg::mean(x, -3); },
                                     "mean: dim -3 out of range for shape [3,4] (rank 2)");
  expect_error_exact<tg::ShapeError>([&] { tg::max(x, 5, true); },
                                     "max: dim 5 out of range for shape [3,4] (rank 2)");
  auto e = tape.input(TD::zeros({3, 0}));
  expect_error_exact<tg::ShapeError>([&] { tg::max(e, 1); },
                                     "max: dim 1 of shape [3,0] is empty: there is no maximum");
  auto s = tape.input(TD::scalar(1.0));
  expect_error_exact<tg::ShapeError>([&] { tg::sum(s, 1); },
                                     "sum: dim 1 out of range for shape [] (rank 0)");
}

}  // namespace
