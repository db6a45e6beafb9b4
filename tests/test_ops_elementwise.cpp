// Elementwise ops and broadcasting: values against hand-computed numbers or the formula written
// out here, gradients by gradcheck (double, 1e-6) and by hand, errors by type and message.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "tapegrad/diag/gradcheck.hpp"
#include "tapegrad/ops/elementwise.hpp"
#include "test_util.hpp"

namespace tg = tapegrad;
using TD = tg::Tensor<double>;
using VD = tg::Var<double>;
using Vars = std::vector<VD>;
using tapegrad::testing::expect_error_containing;
using tapegrad::testing::expect_gradcheck;
using tapegrad::testing::expect_values;
using tapegrad::testing::randn;
using tapegrad::testing::seq;

namespace {

// Away from zero, for denominators and logarithms.
TD positive(const tg::Shape& s, uint64_t seed) {
  tg::Generator g(seed);
  return TD::rand(s, g, 0.5, 2.0);
}

// ---------------- broadcasting helpers ----------------

TEST(Broadcast, ShapeRules) {
  using tg::Shape;
  EXPECT_EQ(tg::detail::broadcast_shape("add", Shape{3, 4}, Shape{4}), (Shape{3, 4}));
  EXPECT_EQ(tg::detail::broadcast_shape("add", Shape{4}, Shape{3, 4}), (Shape{3, 4}));
  EXPECT_EQ(tg::detail::broadcast_shape("add", Shape{2, 3, 4}, Shape{3, 1}), (Shape{2, 3, 4}));
  EXPECT_EQ(tg::detail::broadcast_shape("add", Shape{3, 1}, Shape{1, 4}), (Shape{3, 4}));
  EXPECT_EQ(tg::detail::broadcast_shape("add", Shape{}, Shape{2, 2}), (Shape{2, 2}));
  EXPECT_EQ(tg::detail::broadcast_shape("add", Shape{0, 3}, Shape{1, 3}), (Shape{0, 3}));
  expect_error_containing<tg::ShapeError>(
      [] {
        tg::detail::broadcast_shape("mul", tg::Shape{2, 3}, tg::Shape{4, 3});
      },
      {"mul", "[2,3]", "[4,3]", "4"});
}

TEST(Broadcast, SumToReducesOverBroadcastDims) {
  // src [2,3,2] = 1..12 summed to [3,1]: element j = sum over i, k of src[i, j, k]
  const TD src = seq({2, 3, 2});
  TD dst = TD::full({3, 1}, 100.0);  // accumulates
  tg::detail::accumulate_sum_to(src.data(), src.shape(), dst.data(), dst.shape());
  expect_values(dst, {100 + 1 + 2 + 7 + 8, 100 + 3 + 4 + 9 + 10, 100 + 5 + 6 + 11 + 12}, {3, 1});
  TD all = TD::zeros({});  // to a scalar: the total
  tg::detail::accumulate_sum_to(src.data(), src.shape(), all.data(), all.shape());
  EXPECT_DOUBLE_EQ(all.item(), 78.0);
  TD row = TD::zeros({2});  // [2]: sum over the first two dims
  tg::detail::accumulate_sum_to(src.data(), src.shape(), row.data(), row.shape());
  expect_values(row, {1 + 3 + 5 + 7 + 9 + 11, 2 + 4 + 6 + 8 + 10 + 12}, {2});
}

// ---------------- binary operators: values ----------------

TEST(Elementwise, SameShapeValuesAndGradients) {
  tg::Tape<double> tape;
  auto a = tape.input(TD::from({{1.0, -2.0}, {3.0, 4.0}}));
  auto b = tape.input(TD::from({{2.0, 4.0}, {-1.0, 0.5}}));
  expect_values((a + b).value(), {3, 2, 2, 4.5}, {2, 2});
  expect_values((a - b).value(), {-1, -6, 4, 3.5}, {2, 2});
  expect_values((a * b).value(), {2, -8, -3, 2}, {2, 2});
  expect_values((a / b).value(), {0.5, -0.5, -3, 8}, {2, 2});

  // L = sum(seed * a / b): dL/da = seed / b, dL/db = -seed a / b^2
  auto q = a / b;
  tape.backward(q, TD::from({{1.0, 2.0}, {3.0, 4.0}}));
  expect_values(a.grad(), {0.5, 0.5, -3, 8}, {2, 2});
  expect_values(b.grad(), {-0.25, 0.25, -9, -64}, {2, 2});
}

TEST(Elementwise, ProductRuleWhenBothOperandsAreTheSameVar) {
  tg::Tape<double> tape;
  auto x = tape.input(TD::from({3.0, -1.5}));
  auto y = x * x;  // d/dx = 2x, both halves land in one buffer
  tape.backward(y, TD::ones({2}));
  expect_values(x.grad(), {6.0, -3.0}, {2});
}

TEST(Elementwise, BroadcastRowVector) {  // [3,4] + [4]
  tg::Tape<double> tape;
  auto a = tape.input(seq({3, 4}));  // 1..12
  auto b = tape.input(TD::from({10.0, 20.0, 30.0, 40.0}));
  auto y = a + b;
  expect_values(y.value(), {11, 22, 33, 44, 15, 26, 37, 48, 19, 30, 41, 52}, {3, 4});
  tape.backward(y, seq({3, 4}));  // seed 1..12
  expect_values(a.grad(), {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12}, {3, 4});
  expect_values(b.grad(), {1 + 5 + 9, 2 + 6 + 10, 3 + 7 + 11, 4 + 8 + 12}, {4});

  tg::Tape<double> t2;  // the same with a product: db_j = sum_i seed_ij a_ij
  auto a2 = t2.input(seq({3, 4}));
  auto b2 = t2.input(TD::from({1.0, 2.0, 3.0, 4.0}));
  auto p = a2 * b2;
  expect_values(p.value(), {1, 4, 9, 16, 5, 12, 21, 32, 9, 20, 33, 48}, {3, 4});
  t2.backward(p, TD::ones({3, 4}));
  expect_values(b2.grad(), {1 + 5 + 9, 2 + 6 + 10, 3 + 7 + 11, 4 + 8 + 12}, {4});
  expect_values(a2.grad(), {1, 2, 3, 4, 1, 2, 3, 4, 1, 2, 3, 4}, {3, 4});
}

TEST(Elementwise, BroadcastFirstOperandSmaller) {  // [4] - [3,4]
  tg::Tape<double> tape;
  auto a = tape.input(TD::from({10.0, 20.0, 30.0, 40.0}));
  auto b = tape.input(seq({3, 4}));
  auto y = a - b;
  expect_values(y.value(), {9, 18, 27, 36, 5, 14, 23, 32, 1, 10, 19, 28}, {3, 4});
  tape.backward(y, seq({3, 4}));
  expect_values(a.grad(), {15, 18, 21, 24}, {4});
  expect_values(b.grad(), {-1, -2, -3, -4, -5, -6, -7, -8, -9, -10, -11, -12}, {3, 4});
}

TEST(Elementwise, BroadcastInnerColumn) {  // [2,3,4] * [3,1]
  tg::Tape<double> tape;
  const TD av = seq({2, 3, 4});
  auto a = tape.input(av);
  auto b = tape.input(TD::from({2.0, -1.0, 0.5}, {3, 1}));
  auto y = a * b;
  const double bv[3] = {2.0, -1.0, 0.5};
  std::vector<double> expected, db(3, 0.0);
  for (int i = 0; i < 2; ++i)
    for (int j = 0; j < 3; ++j)
      for (int k = 0; k < 4; ++k) {
        expected.push_back(av.at(i, j, k) * bv[j]);
        db[static_cast<size_t>(j)] += av.at(i, j, k);  // seed ones: db_j = sum_ik a_ijk
      }
  expect_values(y.value(), expected, {2, 3, 4});
  tape.backward(y, TD::ones({2, 3, 4}));
  expect_values(b.grad(), db, {3, 1});
  std::vector<double> da;
  for (int i = 0; i < 2; ++i)
    for (int j = 0; j < 3; ++j)
      for (int k = 0; k < 4; ++k) da.push_back(bv[j]);
  expect_values(a.grad(), da, {2, 3, 4});
}

TEST(Elementwise, BroadcastBothOperands) {  // [3,1] * [1,4] -> [3,4]
  tg::Tape<double> tape;
  auto a = tape.input(TD::from({1.0, 2.0, 3.0}, {3, 1}));
  auto b = tape.input(TD::from({{1.0, 10.0, 100.0, 1000.0}}));
  auto y = a * b;
  expect_values(y.value(), {1, 10, 100, 1000, 2, 20, 200, 2000, 3, 30, 300, 3000}, {3, 4});
  tape.backward(y, TD::ones({3, 4}));
  expect_values(a.grad(), {1111, 1111, 1111}, {3, 1});  // sum_j b_j
  expect_values(b.grad(), {6, 6, 6, 6}, {1, 4});        // sum_i a_i

  tg::Tape<double> t2;  // division, both broadcast: y_ij = a_i / b_j
  auto c = t2.input(TD::from({1.0, 2.0, 3.0}, {3, 1}));
  auto d = t2.input(TD::from({{1.0, 2.0, 4.0, 8.0}}));
  auto q = c / d;
  expect_values(q.value(), {1, 0.5, 0.25, 0.125, 2, 1, 0.5, 0.25, 3, 1.5, 0.75, 0.375}, {3, 4});
  t2.backward(q, TD::ones({3, 4}));
  expect_values(c.grad(), {1.875, 1.875, 1.875}, {3, 1});  // sum_j 1/b_j
  // dd_j = -sum_i a_i / b_j^2 = -6 / b_j^2
  expect_values(d.grad(), {-6.0, -1.5, -0.375, -0.09375}, {1, 4});
}

TEST(Elementwise, BroadcastRankSix) {  // [2,1,3,1,2,1] - [4,3,1,2,2] -> [2,4,3,1,2,2]
  tg::Tape<double> tape;
  const TD av = seq({2, 1, 3, 1, 2, 1}), bv = seq({4, 3, 1, 2, 2}, 0.5, 0.25);
  auto a = tape.input(av);
  auto b = tape.input(bv);
  auto y = a - b;
  ASSERT_EQ(y.shape(), (tg::Shape{2, 4, 3, 1, 2, 2}));
  TD ga = TD::zeros(av.shape()), gb = TD::zeros(bv.shape());
  const TD seed = seq(y.shape(), 1.0, 0.5);
  for (int i0 = 0; i0 < 2; ++i0)
    for (int i1 = 0; i1 < 4; ++i1)
      for (int i2 = 0; i2 < 3; ++i2)
        for (int i4 = 0; i4 < 2; ++i4)
          for (int i5 = 0; i5 < 2; ++i5) {
            EXPECT_EQ(y.value().at(i0, i1, i2, 0, i4, i5),
                      av.at(i0, 0, i2, 0, i4, 0) - bv.at(i1, i2, 0, i4, i5));
            const double g = seed.at(i0, i1, i2, 0, i4, i5);
            ga.at(i0, 0, i2, 0, i4, 0) += g;
            gb.at(i1, i2, 0, i4, i5) -= g;
          }
  tape.backward(y, seed);
  EXPECT_TRUE(tg::allclose(a.grad(), ga, 1e-12, 1e-12));
  EXPECT_TRUE(tg::allclose(b.grad(), gb, 1e-12, 1e-12));
}

TEST(Elementwise, ScalarShapedTensorsBroadcast) {
  tg::Tape<double> tape;
  auto x = tape.input(TD::from({{1.0, 2.0}, {3.0, 4.0}}));
  auto s = tape.input(TD::scalar(3.0));  // rank 0
  auto u = tape.input(TD::from({2.0}));  // [1]
  auto y = s / x;                        // scalar first
  expect_values(y.value(), {3, 1.5, 1, 0.75}, {2, 2});
  auto z = x - u;  // [1] second
  expect_values(z.value(), {-1, 0, 1, 2}, {2, 2});
  tape.backward(y, TD::ones({2, 2}));
  EXPECT_NEAR(s.grad().item(), 1 + 0.5 + 1.0 / 3 + 0.25, 1e-12);  // sum 1/x
  expect_values(x.grad(), {-3, -0.75, -3.0 / 9, -3.0 / 16}, {2, 2});
  tape.backward(z, TD::ones({2, 2}));
  EXPECT_DOUBLE_EQ(u.grad().item(), -4.0);
}

TEST(Elementwise, ScalarOperandsOnEitherSide) {
  tg::Tape<double> tape;
  auto x = tape.input(TD::from({1.0, 2.0, 4.0}));
  expect_values((x + 1.5).value(), {2.5, 3.5, 5.5}, {3});
  expect_values((1.5 + x).value(), {2.5, 3.5, 5.5}, {3});
  expect_values((x - 1).value(), {0, 1, 3}, {3});
  expect_values((10 - x).value(), {9, 8, 6}, {3});
  expect_values((x * 3).value(), {3, 6, 12}, {3});
  expect_values((3 * x).value(), {3, 6, 12}, {3});
  expect_values((x / 4).value(), {0.25, 0.5, 1}, {3});
  expect_values((4 / x).value(), {4, 2, 1}, {3});
  expect_values((-x).value(), {-1, -2, -4}, {3});
  // d/dx of (x + 1.5) + (10 - x) + 3x + x/4 + 4/x - (x - 1) = 1 - 1 + 3 + 0.25 - 4/x^2 - 1
  auto y = (x + 1.5) + (10 - x) + 3 * x + x / 4 + 4 / x - (x - 1);
  tape.backward(y, TD::ones({3}));
  expect_values(x.grad(), {2.25 - 4.0, 2.25 - 1.0, 2.25 - 0.25}, {3});
  EXPECT_EQ(tape.size(), 1u + 9 + 11);  // scalars live in the nodes: no constant nodes
}

TEST(Elementwise, TensorOperandsEnterAsConstants) {
  tg::Tape<double> tape;
  auto x = tape.input(TD::from({1.0, 2.0}));
  const TD t = TD::from({3.0, 5.0});
  auto y = (x * t) + (t / x) - (t - x) + (x + t) - (x / t) + (t * x) + (t + x) - (x - t);
  // d/dx: t - t/x^2 + 1 + 1 - 1/t + t + 1 - 1 = 2t + 2 - t/x^2 - 1/t
  tape.backward(y, TD::ones({2}));
  expect_values(x.grad(), {6 + 2 - 3 - 1.0 / 3, 10 + 2 - 5.0 / 4 - 0.2}, {2});
  EXPECT_DOUBLE_EQ(y.value()[0], 3 + 3 - 2 + 4 - 1.0 / 3 + 3 + 4 + 2);
}

TEST(Elementwise, FloatOperatorsCompileAndCompute) {
  tg::Tape<float> tape;
  auto x = tape.input(tg::Tensor<float>::from({1.0f, 2.0f}));
  auto y = 2 * x + 0.5f - x / 2.0 + tg::Tensor<float>::from({1.0f, 1.0f}) * x;
  EXPECT_FLOAT_EQ(y.value()[1], 4.0f + 0.5f - 1.0f + 2.0f);
  tape.backward(y, tg::Tensor<float>::ones({2}));
  EXPECT_FLOAT_EQ(x.grad()[0], 2.5f);
}

TEST(Elementwise, EmptyBroadcastGivesZeroGradient) {
  tg::Tape<double> tape;
  auto a = tape.input(TD::zeros({0, 3}));
  auto b = tape.input(TD::from({1.0, 2.0, 3.0}));
  auto y = a + b;
  EXPECT_EQ(y.shape(), (tg::Shape{0, 3}));
  tape.backward(y, TD::zeros({0, 3}));
  expect_values(b.grad(), {0, 0, 0}, {3});
}

TEST(Elementwise, ConstantOperandGetsNoGradient) {
  tg::Tape<double> tape;
  auto x = tape.input(TD::from({1.0, 2.0}));
  auto c = tape.constant(TD::from({{1.0, 2.0}, {3.0, 4.0}}));
  auto y = c * x;
  tape.backward(y, TD::ones({2, 2}));
  expect_values(x.grad(), {4, 6}, {2});
  expect_values(c.grad(), {0, 0, 0, 0}, {2, 2});
}

// ---------------- gradcheck of every binary op and broadcasting case ----------------

struct Case {
  tg::Shape a, b;
};
const Case broadcast_cases[] = {
    {{3, 4}, {3, 4}},       {{3, 4}, {4}},       {{4}, {3, 4}},
    {{2, 3, 4}, {3, 1}},    {{3, 1}, {2, 3, 4}}, {{3, 1}, {1, 4}},
    {{1, 4}, {3, 1}},       {{3, 4}, {}},        {{}, {3, 4}},
    {{2, 3}, {1}},          {{1}, {2, 3}},       {{2, 1, 3, 1, 2, 1}, {4, 3, 1, 2, 2}},
    {{2, 3, 4}, {2, 1, 4}}, {{5}, {5}},          {{}, {}},
};

TEST(ElementwiseGradcheck, AddSubMulDivEveryBroadcastCase) {
  uint64_t seed = 1;
  for (const auto& cs : broadcast_cases) {
    SCOPED_TRACE(cs.a.str() + " op " + cs.b.str());
    const TD a = randn(cs.a, seed++), b = randn(cs.b, seed++), bp = positive(cs.b, seed++);
    expect_gradcheck([](tg::Tape<double>&, const Vars& x) { return x[0] + x[1]; }, {a, b});
    expect_gradcheck([](tg::Tape<double>&, const Vars& x) { return x[0] - x[1]; }, {a, b});
    expect_gradcheck([](tg::Tape<double>&, const Vars& x) { return x[0] * x[1]; }, {a, b});
    expect_gradcheck([](tg::Tape<double>&, const Vars& x) { return x[0] / x[1]; }, {a, bp});
  }
}

TEST(ElementwiseGradcheck, ScalarAndTensorOperands) {
  const TD x = positive({2, 3}, 7);
  const TD t = randn({3}, 8);
  expect_gradcheck(
      [](tg::Tape<double>&, const Vars& v) {
        return (v[0] + 2.0) * (3.0 - v[0]) + (v[0] - 0.5) / 4.0 + 2.0 / v[0] - 1.5 * v[0] +
               v[0] * 0.25;
      },
      {x});
  expect_gradcheck(
      [t](tg::Tape<double>&, const Vars& v) {
        return (v[0] * t) + (t / v[0]) - (t - v[0]) + (v[0] - t) + (v[0] / t) + (t + v[0]);
      },
      {x});
  expect_gradcheck([](tg::Tape<double>&, const Vars& v) { return -v[0]; }, {x});
}

// ---------------- unary functions ----------------

TEST(Elementwise, UnaryValuesAndGradientsByHand) {
  tg::Tape<double> tape;
  auto x = tape.input(TD::from({0.5, 1.0, 4.0}));
  auto e = tg::exp(x);
  expect_values(e.value(), {std::exp(0.5), std::exp(1.0), std::exp(4.0)}, {3});
  tape.backward(e, TD::ones({3}));
  expect_values(x.grad(), {std::exp(0.5), std::exp(1.0), std::exp(4.0)}, {3});

  tg::Tape<double> t2;
  auto y = t2.input(TD::from({0.25, 1.0, 4.0}));
  auto l = tg::log(y);
  expect_values(l.value(), {std::log(0.25), 0.0, std::log(4.0)}, {3});
  t2.backward(l, TD::ones({3}));
  expect_values(y.grad(), {4.0, 1.0, 0.25}, {3});

  tg::Tape<double> t3;
  auto z = t3.input(TD::from({0.25, 1.0, 4.0}));
  auto s = tg::sqrt(z);
  expect_values(s.value(), {0.5, 1.0, 2.0}, {3});
  t3.backward(s, TD::ones({3}));
  expect_values(z.grad(), {1.0, 0.5, 0.25}, {3});  // 1 / (2 sqrt(x))

  tg::Tape<double> t4;
  auto w = t4.input(TD::from({-3.0, 0.5, 2.0}));
  auto q = tg::square(w);
  expect_values(q.value(), {9, 0.25, 4}, {3});
  t4.backward(q, TD::ones({3}));
  expect_values(w.grad(), {-6, 1, 4}, {3});
}

TEST(Elementwise, PowValuesAndGradients) {
  tg::Tape<double> tape;
  auto x = tape.input(TD::from({0.5, 2.0, 3.0}));
  auto y3 = tg::pow(x, 3.0);
  expect_values(y3.value(), {0.125, 8, 27}, {3});
  tape.backward(y3, TD::ones({3}));
  expect_values(x.grad(), {0.75, 12, 27}, {3});  // 3 x^2

  tg::Tape<double> t2;
  auto u = t2.input(TD::from({0.25, 4.0}));
  auto h = tg::pow(u, -0.5);
  expect_values(h.value(), {2.0, 0.5}, {2});
  t2.backward(h, TD::ones({2}));
  expect_values(u.grad(), {-0.5 * std::pow(0.25, -1.5), -0.5 * std::pow(4.0, -1.5)}, {2});
  EXPECT_NEAR(u.grad()[0], -4.0, 1e-12);

  tg::Tape<double> t3;  // p = 0: value 1, gradient 0 even at x = 0 (no 0 * inf)
  auto v = t3.input(TD::from({0.0, 2.0}));
  auto one = tg::pow(v, 0.0);
  expect_values(one.value(), {1, 1}, {2});
  t3.backward(one, TD::ones({2}));
  expect_values(v.grad(), {0, 0}, {2});

  tg::Tape<double> t4;  // p = 2 at a negative base
  auto n = t4.input(TD::from({-1.5}));
  auto sq = tg::pow(n, 2);
  EXPECT_DOUBLE_EQ(sq.value()[0], 2.25);
  t4.backward(sq, TD::ones({1}));
  EXPECT_DOUBLE_EQ(n.grad()[0], -3.0);
}

TEST(Elementwise, AbsDerivativeAtZeroIsZero) {
  tg::Tape<double> tape;
  auto x = tape.input(TD::from({-2.0, 0.0, 3.0}));
  auto y = tg::abs(x);
  expect_values(y.value(), {2, 0, 3}, {3});
  tape.backward(y, TD::from({5.0, 5.0, 5.0}));
  expect_values(x.grad(), {-5, 0, 5}, {3});
}

TEST(Elementwise, ClampValuesAndGradientAtBounds) {
  tg::Tape<double> tape;
  auto x = tape.input(TD::from({-3.0, -1.0, 0.0, 0.5, 2.0, 2.5}));
  auto y = tg::clamp(x, -1.0, 2.0);
  expect_values(y.value(), {-1, -1, 0, 0.5, 2, 2}, {6});
  tape.backward(y, TD::full({6}, 3.0));
  // the bounds themselves (-1 and 2) pass the gradient, as torch.clamp
  expect_values(x.grad(), {0, 3, 3, 3, 3, 0}, {6});

  tg::Tape<double> t2;  // lo > hi: everything becomes hi, no gradient (torch)
  auto z = t2.input(TD::from({-5.0, 0.0, 5.0}));
  auto c = tg::clamp(z, 1.0, -1.0);
  expect_values(c.value(), {-1, -1, -1}, {3});
  t2.backward(c, TD::ones({3}));
  expect_values(z.grad(), {0, 0, 0}, {3});

  tg::Tape<double> t3;  // NaN stays NaN
  auto n = t3.input(TD::from({std::numeric_limits<double>::quiet_NaN()}));
  EXPECT_TRUE(std::isnan(tg::clamp(n, -1.0, 1.0).value()[0]));
}

TEST(ElementwiseGradcheck, UnaryFunctions) {
  const TD r = randn({2, 3}, 11);
  const TD p = positive({2, 3}, 12);
  // keep away from the kinks: |x| >= 0.3 for abs, clamp bounds far from every element
  TD k = randn({2, 3}, 13);
  for (int64_t i = 0; i < k.numel(); ++i) k[i] += k[i] >= 0 ? 0.3 : -0.3;
  TD c = TD::from({{-2.0, -0.6, 0.1}, {0.7, 1.4, 3.0}});
  expect_gradcheck([](tg::Tape<double>&, const Vars& x) { return tg::exp(x[0]); }, {r});
  expect_gradcheck([](tg::Tape<double>&, const Vars& x) { return tg::log(x[0]); }, {p});
  expect_gradcheck([](tg::Tape<double>&, const Vars& x) { return tg::sqrt(x[0]); }, {p});
  expect_gradcheck([](tg::Tape<double>&, const Vars& x) { return tg::square(x[0]); }, {r});
  expect_gradcheck([](tg::Tape<double>&, const Vars& x) { return tg::abs(x[0]); }, {k});
  expect_gradcheck([](tg::Tape<double>&, const Vars& x) { return tg::clamp(x[0], -1.0, 1.0); },
                   {c});
  for (double e : {3.0, 2.0, 0.5, -1.5, 1.0})
    expect_gradcheck([e](tg::Tape<double>&, const Vars& x) { return tg::pow(x[0], e); }, {p});
  expect_gradcheck([](tg::Tape<double>&, const Vars& x) { return tg::pow(x[0], 3); }, {r});
  // a composition, so that gradients flow through several ops
  expect_gradcheck(
      [](tg::Tape<double>&, const Vars& x) {
        return tg::log(tg::exp(x[0]) + tg::square(x[1])) * tg::sqrt(x[1]);
      },
      {randn({3, 2}, 14), positive({2}, 15)});
}

// ---------------- errors ----------------

TEST(Elementwise, IncompatibleShapesNameOpAndShapes) {
  tg::Tape<double> tape;
  auto a = tape.input(TD::zeros({3, 4}));
  auto b = tape.input(TD::zeros({3}));
  expect_error_containing<tg::ShapeError>([&] { a + b; }, {"add", "[3,4]", "[3]"});
  expect_error_containing<tg::ShapeError>([&] { a - b; }, {"sub", "[3,4]", "[3]"});
  expect_error_containing<tg::ShapeError>([&] { b* a; }, {"mul", "[3]", "[3,4]"});
  expect_error_containing<tg::ShapeError>(
      [&] {
        a / TD::zeros({2, 4});
      },
      {"div", "[3,4]", "[2,4]"});
  const size_t before = tape.size();
  expect_error_containing<tg::ShapeError>([&] { a + TD::zeros({5}); }, {"add", "[3,4]", "[5]"});
  EXPECT_EQ(tape.size(), before + 1);  // only the constant: the failed op recorded nothing
}

TEST(Elementwise, VarsOfTwoTapesThrow) {
  tg::Tape<double> t1, t2;
  auto a = t1.input(TD::zeros({2}));
  auto b = t2.input(TD::zeros({2}));
  expect_error_containing<tg::TapeError>([&] { a* b; }, {"mul", "two different tapes"});
}

}  // namespace
