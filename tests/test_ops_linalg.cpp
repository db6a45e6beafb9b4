// matmul, transpose, linear: values by hand and against naive loops, gradients by hand and by
// gradcheck (double, 1e-6), errors by type and message.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "tapegrad/diag/gradcheck.hpp"
#include "tapegrad/ops/linalg.hpp"
#include "test_util.hpp"

namespace tg = tapegrad;
using TD = tg::Tensor<double>;
using VD = tg::Var<double>;
using Vars = std::vector<VD>;
using tapegrad::testing::expect_error_exact;
using tapegrad::testing::expect_gradcheck;
using tapegrad::testing::expect_values;
using tapegrad::testing::randn;

namespace {

// Naive C = A B for row-major A [m,k], B [k,n].
std::vector<double> naive_matmul(const TD& a, const TD& b, int64_t m, int64_t k, int64_t n) {
  std::vector<double> c(static_cast<size_t>(m * n), 0.0);
  for (int64_t i = 0; i < m; ++i)
    for (int64_t j = 0; j < n; ++j)
      for (int64_t p = 0; p < k; ++p)
        c[static_cast<size_t>(i * n + j)] += a[i * k + p] * b[p * n + j];
  return c;
}

TEST(Matmul, ValuesAndGradientsByHand) {
  tg::Tape<double> tape;
  auto a = tape.input(TD::from({{1.0, 2.0}, {3.0, 4.0}}));
  auto b = tape.input(TD::from({{5.0, 6.0, 1.0}, {7.0, 8.0, -1.0}}));
  auto y = tg::matmul(a, b);
  expect_values(y.value(), {19, 22, -1, 43, 50, -1}, {2, 3});
  tape.backward(y, TD::from({{1.0, 0.0, 2.0}, {0.0, 1.0, 0.0}}));
  // da = g b^T: row 0 = [5 + 2, 7 - 2], row 1 = [6, 8]
  expect_values(a.grad(), {7, 5, 6, 8}, {2, 2});
  // db = a^T g: [[1, 3, 2], [2, 4, 4]]
  expect_values(b.grad(), {1, 3, 2, 2, 4, 4}, {2, 3});
}

TEST(Matmul, BatchedLeftOperandFoldsIntoRows) {
  tg::Tape<double> tape;
  const TD av = randn({2, 3, 4}, 1), bv = randn({4, 5}, 2);
  auto y = tg::matmul(tape.input(av), tape.input(bv));
  EXPECT_EQ(y.shape(), (tg::Shape{2, 3, 5}));
  expect_values(y.value(), naive_matmul(av, bv, 6, 4, 5), {2, 3, 5});
}

TEST(Matmul, LargeProductMatchesNaiveLoops) {  // above Eigen's small-product threshold
  tg::Tape<double> tape;
  const TD av = randn({70, 90}, 3), bv = randn({90, 40}, 4);
  auto y = tg::matmul(tape.input(av), tape.input(bv));
  expect_values(y.value(), naive_matmul(av, bv, 70, 90, 40), {70, 40}, 1e-10);
}

TEST(Matmul, Gradcheck) {
  expect_gradcheck([](tg::Tape<double>&, const Vars& x) { return tg::matmul(x[0], x[1]); },
                   {randn({3, 4}, 5), randn({4, 2}, 6)});
  expect_gradcheck([](tg::Tape<double>&, const Vars& x) { return tg::matmul(x[0], x[1]); },
                   {randn({2, 3, 4}, 7), randn({4, 2}, 8)});
  expect_gradcheck(  // the same input on both sides
      [](tg::Tape<double>&, const Vars& x) { return tg::matmul(x[0], x[0]); }, {randn({3, 3}, 9)});
}

TEST(Matmul, ErrorsNameShapes) {
  tg::Tape<float> tape;
  auto a = tape.input(tg::Tensor<float>::zeros({32, 784}));
  auto b = tape.input(tg::Tensor<float>::zeros({256, 10}));
  expect_error_exact<tg::ShapeError>(
      [&] { tg::matmul(a, b); }, "matmul: [32,784] x [256,10]: inner sizes differ (784 vs 256)");
  auto v = tape.input(tg::Tensor<float>::zeros({784}));
  expect_error_exact<tg::ShapeError>(
      [&] { tg::matmul(a, v); }, "matmul: [32,784] x [784]: expected [M,K] or [B,M,K] times [K,N]");
  auto four = tape.input(tg::Tensor<float>::zeros({1, 2, 3, 4}));
  expect_error_exact<tg::ShapeError>(
      [&] { tg::matmul(four, b); },
      "matmul: [1,2,3,4] x [256,10]: expected [M,K] or [B,M,K] times [K,N]");
}

TEST(Transpose, ValuesGradientAndErrors) {
  tg::Tape<double> tape;
  auto x = tape.input(TD::from({{1.0, 2.0, 3.0}, {4.0, 5.0, 6.0}}));
  auto y = tg::transpose(x);
  expect_values(y.value(), {1, 4, 2, 5, 3, 6}, {3, 2});
  tape.backward(y, TD::from({{1.0, 2.0}, {3.0, 4.0}, {5.0, 6.0}}));
  expect_values(x.grad(), {1, 3, 5, 2, 4, 6}, {2, 3});
  expect_gradcheck([](tg::Tape<double>&, const Vars& v) { return tg::transpose(v[0]); },
                   {randn({3, 5}, 10)});
  auto r3 = tape.input(TD::zeros({2, 2, 2}));
  expect_error_exact<tg::ShapeError>([&] { tg::transpose(r3); },
                                     "transpose: [2,2,2] is not 2-D (3 dims)");
}

TEST(Linear, ValuesAndGradientsByHand) {
  tg::Parameter<double> w(TD::from({{1.0, 0.0, -1.0}, {2.0, 1.0, 0.5}}));  // [out=2, in=3]
  tg::Parameter<double> b(TD::from({0.5, -1.0}));
  tg::Tape<double> tape;
  auto x = tape.input(TD::from({{1.0, 2.0, 3.0}, {-1.0, 0.0, 2.0}}));  // [N=2, in=3]
  auto y = tg::linear(x, tape.param(w), tape.param(b));
  // row 0: [1 - 3 + 0.5, 2 + 2 + 1.5 - 1] ; row 1: [-1 - 2 + 0.5, -2 + 1 - 1]
  expect_values(y.value(), {-1.5, 4.5, -2.5, -2.0}, {2, 2});
  const TD g = TD::from({{1.0, 2.0}, {3.0, -1.0}});
  tape.backward(y, g);
  // dx = g w: row 0 = [1 + 4, 0 + 2, -1 + 1], row 1 = [3 - 2, 0 - 1, -3 - 0.5]
  expect_values(x.grad(), {5, 2, 0, 1, -1, -3.5}, {2, 3});
  // dw = g^T x: row 0 = 1*[1,2,3] + 3*[-1,0,2], row 1 = 2*[1,2,3] - 1*[-1,0,2]
  expect_values(w.grad(), {-2, 2, 9, 3, 4, 4}, {2, 3});
  expect_values(b.grad(), {4, 1}, {2});  // column sums of g

  // a second pass accumulates into the parameters' gradients
  tape.clear();
  auto y2 = tg::linear(tape.constant(TD::from({{1.0, 2.0, 3.0}, {-1.0, 0.0, 2.0}})), tape.param(w),
                       tape.param(b));
  tape.backward(y2, g);
  expect_values(w.grad(), {-4, 4, 18, 6, 8, 8}, {2, 3});
  expect_values(b.grad(), {8, 2}, {2});
}

TEST(Linear, LeadingDimsFoldAndNoBias) {
  tg::Tape<double> tape;
  const TD xv = randn({2, 3, 4}, 11), wv = randn({5, 4}, 12), bv = randn({5}, 13);
  auto y = tg::linear(tape.input(xv), tape.input(wv), tape.input(bv));
  auto y0 = tg::linear(tape.input(xv), tape.input(wv));
  EXPECT_EQ(y.shape(), (tg::Shape{2, 3, 5}));
  std::vector<double> expected, expected0;
  for (int64_t r = 0; r < 6; ++r)
    for (int64_t o = 0; o < 5; ++o) {
      double s = 0;
      for (int64_t i = 0; i < 4; ++i) s += xv[r * 4 + i] * wv[o * 4 + i];
      expected0.push_back(s);
      expected.push_back(s + bv[o]);
    }
  expect_values(y.value(), expected, {2, 3, 5});
  expect_values(y0.value(), expected0, {2, 3, 5});

  auto v = tg::linear(tape.input(TD::from({1.0, 2.0})), tape.input(TD::from({{3.0, 4.0}})));
  expect_values(v.value(), {11}, {1});  // 1-D input gives a 1-D output
}

TEST(Linear, LargeMatchesNaiveLoops) {
  tg::Tape<float> tape;
  tg::Generator gen(14);
  const auto xv = tg::Tensor<float>::randn({64, 100}, gen);
  const auto wv = tg::Tensor<float>::randn({50, 100}, gen);
  const auto bv = tg::Tensor<float>::randn({50}, gen);
  auto y = tg::linear(tape.input(xv), tape.input(wv), tape.input(bv));
  for (int64_t r = 0; r < 64; ++r)
    for (int64_t o = 0; o < 50; ++o) {
      double s = bv[o];
      for (int64_t i = 0; i < 100; ++i) s += double(xv[r * 100 + i]) * double(wv[o * 100 + i]);
      EXPECT_NEAR(y.value()[r * 50 + o], s, 1e-3) << r << "," << o;
    }
}

TEST(Linear, Gradcheck) {
  tg::Generator gen(15);
  tg::Parameter<double> w(TD::randn({3, 4}, gen)), b(TD::randn({3}, gen));
  expect_gradcheck([w, b](tg::Tape<double>& t,
                          const Vars& x) { return tg::linear(x[0], t.param(w), t.param(b)); },
                   {randn({5, 4}, 16)}, {w, b});
  expect_gradcheck([w](tg::Tape<double>& t, const Vars& x) { return tg::linear(x[0], t.param(w)); },
                   {randn({2, 2, 4}, 17)}, {w});
  expect_gradcheck(  // every operand a tape input
      [](tg::Tape<double>&, const Vars& x) { return tg::linear(x[0], x[1], x[2]); },
      {randn({4}, 18), randn({2, 4}, 19), randn({2}, 20)});
}

TEST(Linear, ErrorsNameShapes) {
  tg::Tape<float> tape;
  auto x = tape.input(tg::Tensor<float>::zeros({32, 784}));
  auto w = tape.input(tg::Tensor<float>::zeros({256, 100}));
  auto b = tape.input(tg::Tensor<float>::zeros({10}));
  expect_error_exact<tg::ShapeError>(
      [&] { tg::linear(x, w); },
      "linear: input [32,784] but weight [256,100]: in_features differ (784 vs 100)");
  auto w2 = tape.input(tg::Tensor<float>::zeros({256, 784}));
  expect_error_exact<tg::ShapeError>([&] { tg::linear(x, w2, b); },
                                     "linear: bias [10] but weight [256,784]: expected bias [256]");
  expect_error_exact<tg::ShapeError>([&] { tg::linear(x, b); },
                                     "linear: weight [10] must be 2-D [out_features,in_features]");
  auto s = tape.input(tg::Tensor<float>::scalar(1));
  expect_error_exact<tg::ShapeError>([&] { tg::linear(s, w2); },
                                     "linear: input [] must have at least one dim");
}

}  // namespace
