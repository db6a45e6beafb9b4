// Pooling ops: values and gradients computed by hand (ties, overlapping windows, padding),
// finite-difference gradchecks, a large case against the written-out definition, the errors.
#include <gtest/gtest.h>

#include <cmath>
#include <functional>
#include <limits>
#include <optional>
#include <string>
#include <vector>

#include "tapegrad/diag/gradcheck.hpp"
#include "tapegrad/ops/pool.hpp"
#include "test_util.hpp"

namespace tg = tapegrad;
using tapegrad::testing::expect_error_containing;

namespace {

tg::Tensor<double> image(std::initializer_list<std::initializer_list<double>> rows) {
  std::vector<double> v;
  int64_t h = 0, w = 0;
  for (auto r : rows) {
    ++h;
    w = static_cast<int64_t>(r.size());
    v.insert(v.end(), r.begin(), r.end());
  }
  return tg::Tensor<double>::from(v, {1, 1, h, w});
}

void expect_values(const tg::Tensor<double>& t, const std::vector<double>& v) {
  ASSERT_EQ(t.numel(), static_cast<int64_t>(v.size())) << t;
  for (size_t i = 0; i < v.size(); ++i) EXPECT_DOUBLE_EQ(t[int64_t(i)], v[i]) << "at " << i;
}

TEST(MaxPool2d, ValuesAndStrideDefaultsToKernel) {
  tg::Tape<double> tape;
  auto x = tape.input(image({{1, 2, 5, 0, 9},  //
                             {3, 4, 1, 6, 9},
                             {0, 7, 2, 2, 9},
                             {8, 1, 3, 4, 9},
                             {9, 9, 9, 9, 9}}));
  auto y = tg::max_pool2d(x, 2);  // 5x5 -> floor((5-2)/2)+1 = 2: last row/column dropped
  ASSERT_EQ(y.shape(), tg::Shape({1, 1, 2, 2}));
  expect_values(y.value(), {4, 6, 8, 4});
  tape.backward(y, tg::Tensor<double>::from({1.0, 2.0, 3.0, 4.0}, {1, 1, 2, 2}));
  expect_values(x.grad(), {0, 0, 0, 0, 0,  //
                           0, 1, 0, 2, 0,  //
                           0, 0, 0, 0, 0,  //
                           3, 0, 0, 4, 0,  //
                           0, 0, 0, 0, 0});
}

TEST(MaxPool2d, TiesGoToFirstMaximumInRowMajorOrder) {
  tg::Tape<double> tape;
  auto x = tape.input(image({{1, 3, 7, 7},  //
                             {3, 2, 7, 7}}));
  auto y = tg::max_pool2d(x, 2);
  expect_values(y.value(), {3, 7});
  tape.backward(y, tg::Tensor<double>::from({1.0, 1.0}, {1, 1, 1, 2}));
  expect_values(x.grad(), {0, 1, 1, 0,  //
                           0, 0, 0, 0});
}

TEST(MaxPool2d, OverlappingWindowsAccumulate) {
  // kernel 2, stride 1 on 3x3: the centre 9 is the maximum of all four windows.
  tg::Tape<double> tape;
  auto x = tape.input(image({{1, 2, 3},  //
                             {4, 9, 5},
                             {6, 7, 8}}));
  auto y = tg::max_pool2d(x, 2, 1);
  expect_values(y.value(), {9, 9, 9, 9});
  tape.backward(y, tg::Tensor<double>::from({1.0, 2.0, 3.0, 4.0}, {1, 1, 2, 2}));
  expect_values(x.grad(), {0, 0, 0, 0, 10, 0, 0, 0, 0});
  // kernel 3, stride 2, padding 1 on 3x3: windows overlap on the middle row and column.
  tg::Tape<double> t2;
  auto x2 = t2.input(image({{1, 8, 2},  //
                            {3, 4, 5},
                            {6, 0, 7}}));
  auto y2 = tg::max_pool2d(x2, 3, 2, 1);
  ASSERT_EQ(y2.shape(), tg::Shape({1, 1, 2, 2}));
  expect_values(y2.value(), {8, 8, 6, 7});
  t2.backward(y2, tg::Tensor<double>::from({1.0, 2.0, 3.0, 4.0}, {1, 1, 2, 2}));
  expect_values(x2.grad(), {0, 3, 0, 0, 0, 0, 3, 0, 4});
}

TEST(MaxPool2d, PaddingIsMinusInfinity) {
  tg::Tape<double> tape;
  auto x = tape.input(tg::Tensor<double>::full({1, 1, 2, 2}, -5.0));
  auto y = tg::max_pool2d(x, 2, 1, 1);  // 3x3 output, every window partly padding
  ASSERT_EQ(y.shape(), tg::Shape({1, 1, 3, 3}));
  for (int i = 0; i < 9; ++i) EXPECT_EQ(y.value()[i], -5.0);
  // A window holding only -inf pixels (and padding) still routes its gradient into the image.
  tg::Tape<double> t2;
  const double inf = std::numeric_limits<double>::infinity();
  auto x2 = t2.input(tg::Tensor<double>::full({1, 1, 2, 2}, -inf));
  auto y2 = tg::max_pool2d(x2, 2, 2, 1);
  t2.backward(y2, tg::Tensor<double>::ones(y2.shape()));
  expect_values(x2.grad(), {1, 1, 1, 1});
}

TEST(MaxPool2d, NanPropagates) {
  tg::Tape<double> tape;
  auto x = tape.input(image({{1, NAN, 3, 4}}));
  auto y = tg::max_pool2d(x, tg::Size2{1, 2});
  EXPECT_TRUE(std::isnan(y.value()[0]));
  EXPECT_EQ(y.value()[1], 4.0);
  tape.backward(y, tg::Tensor<double>::ones(y.shape()));
  expect_values(x.grad(), {0, 1, 0, 1});
}

TEST(AvgPool2d, CountIncludesPadding) {
  tg::Tape<double> tape;
  auto x = tape.input(image({{1, 2},  //
                             {3, 4}}));
  auto y = tg::avg_pool2d(x, 2, 2, 1);  // each window holds one pixel and three zeros
  expect_values(y.value(), {0.25, 0.5, 0.75, 1.0});
  tape.backward(y, tg::Tensor<double>::ones(y.shape()));
  expect_values(x.grad(), {0.25, 0.25, 0.25, 0.25});
}

TEST(AvgPool2d, OverlappingWindowsAndRectangularKernel) {
  tg::Tape<double> tape;
  auto x = tape.input(image({{1, 2, 3},  //
                             {4, 5, 6},
                             {7, 8, 9}}));
  auto y = tg::avg_pool2d(x, 2, 1);
  expect_values(y.value(), {3, 4, 6, 7});
  tape.backward(y, tg::Tensor<double>::ones(y.shape()));
  // Each pixel receives 1/4 per window containing it: corners 1, edges 2, centre 4 windows.
  expect_values(x.grad(), {0.25, 0.5, 0.25, 0.5, 1.0, 0.5, 0.25, 0.5, 0.25});

  tg::Tape<double> t2;
  auto z = tg::avg_pool2d(t2.constant(image({{1, 2, 3}, {4, 5, 6}, {7, 8, 9}})), {1, 3});
  ASSERT_EQ(z.shape(), tg::Shape({1, 1, 3, 1}));
  expect_values(z.value(), {2, 5, 8});
}

TEST(GlobalAvgPool2d, ValuesAndGradient) {
  tg::Tape<double> tape;
  auto x = tape.input(tg::Tensor<double>::arange(12).reshape({1, 3, 2, 2}));
  auto y = tg::global_avg_pool2d(x);
  ASSERT_EQ(y.shape(), tg::Shape({1, 3}));
  expect_values(y.value(), {1.5, 5.5, 9.5});
  tape.backward(y, tg::Tensor<double>::from({4.0, 8.0, -4.0}, {1, 3}));
  expect_values(x.grad(), {1, 1, 1, 1, 2, 2, 2, 2, -1, -1, -1, -1});
}

TEST(Pool2d, Gradcheck) {
  tg::Generator gen(4);
  auto x = tg::Tensor<double>::randn({2, 3, 7, 6}, gen);
  using F = std::function<tg::Var<double>(const tg::Var<double>&)>;
  const std::vector<std::pair<const char*, F>> fs = {
      {"max 2", [](auto& v) { return tg::max_pool2d(v, 2); }},
      {"max 3 s2 p1", [](auto& v) { return tg::max_pool2d(v, 3, 2, 1); }},
      {"max (3,2) s(1,2) p(1,0)",
       [](auto& v) {
         return tg::max_pool2d(v, {3, 2}, {{1, 2}}, {1, 0});
       }},
      {"avg 2", [](auto& v) { return tg::avg_pool2d(v, 2); }},
      {"avg 3 s1 p1", [](auto& v) { return tg::avg_pool2d(v, 3, 1, 1); }},
      {"avg (2,3) s(2,1)",
       [](auto& v) {
         return tg::avg_pool2d(v, {2, 3}, {{2, 1}});
       }},
      {"global avg", [](auto& v) { return tg::global_avg_pool2d(v); }},
  };
  for (const auto& [what, f] : fs) {
    auto r = tg::gradcheck(
        [&f](tg::Tape<double>&, const std::vector<tg::Var<double>>& v) { return f(v[0]); }, {x});
    EXPECT_TRUE(r) << what << ": " << r;
  }
}

// A batch large enough for the OpenMP path, against the definitions written out.
TEST(Pool2d, LargeBatchMatchesDefinition) {
  const int64_t N = 4, C = 8, H = 30, W = 29, k = 3, s = 2, p = 1;
  const int64_t OH = (H + 2 * p - k) / s + 1, OW = (W + 2 * p - k) / s + 1;
  tg::Generator gen(9);
  auto x = tg::Tensor<float>::randn({N, C, H, W}, gen);
  auto seed = tg::Tensor<float>::randn({N, C, OH, OW}, gen);
  ASSERT_GT(N * C * OH * OW * k * k, tg::parallel_threshold);
  tg::Tape<float> tape;
  auto xv = tape.input(x);
  auto ym = tg::max_pool2d(xv, k, s, p);
  tape.backward(ym, seed);
  auto max_grad = xv.grad().clone();
  auto max_value = ym.value().clone();
  tape.clear();
  xv = tape.input(x);
  auto ya = tg::avg_pool2d(xv, k, s, p);
  tape.backward(ya, seed);
  auto dmax = tg::Tensor<float>::zeros(x.shape()), davg = tg::Tensor<float>::zeros(x.shape());
  for (int64_t n = 0; n < N; ++n)
    for (int64_t c = 0; c < C; ++c)
      for (int64_t r = 0; r < OH; ++r)
        for (int64_t q = 0; q < OW; ++q) {
          float best = -INFINITY, sum = 0;
          int64_t bi = -1, bj = -1;
          for (int64_t i = r * s - p; i < r * s - p + k; ++i)
            for (int64_t j = q * s - p; j < q * s - p + k; ++j) {
              if (i < 0 || i >= H || j < 0 || j >= W) continue;
              sum += x.at(n, c, i, j);
              if (x.at(n, c, i, j) > best) best = x.at(n, c, i, j), bi = i, bj = j;
            }
          EXPECT_EQ(max_value.at(n, c, r, q), best);
          EXPECT_NEAR(ya.value().at(n, c, r, q), sum / (k * k), 1e-6);
          dmax.at(n, c, bi, bj) += seed.at(n, c, r, q);
          for (int64_t i = std::max<int64_t>(0, r * s - p); i < std::min(H, r * s - p + k); ++i)
            for (int64_t j = std::max<int64_t>(0, q * s - p); j < std::min(W, q * s - p + k); ++j)
              davg.at(n, c, i, j) += seed.at(n, c, r, q) / (k * k);
        }
  EXPECT_TRUE(tg::allclose(max_grad, dmax, 1e-6, 1e-6));
  EXPECT_TRUE(tg::allclose(xv.grad(), davg, 1e-5, 1e-6));
}

TEST(Pool2d, Errors) {
  tg::Tape<double> tape;
  auto x3 = tape.constant(tg::Tensor<double>::zeros({2, 5, 5}));
  auto x = tape.constant(tg::Tensor<double>::zeros({2, 3, 4, 5}));
  expect_error_containing<tg::ShapeError>([&] { tg::max_pool2d(x3, 2); },
                                          {"max_pool2d", "[2,5,5]", "4-D"});
  expect_error_containing<tg::ShapeError>([&] { tg::avg_pool2d(x3, 2); },
                                          {"avg_pool2d", "[2,5,5]", "4-D"});
  expect_error_containing<tg::ShapeError>([&] { tg::global_avg_pool2d(x3); },
                                          {"global_avg_pool2d", "[2,5,5]", "4-D"});
  expect_error_containing<tg::ShapeError>(
      [&] { tg::max_pool2d(x, 5); },
      {"max_pool2d", "[2,3,4,5]", "kernel 5x5", "larger than the 4x5"});
  expect_error_containing<tg::ShapeError>(
      [&] {
        tg::avg_pool2d(x, {2, 8}, 1, 1);
      },
      {"avg_pool2d", "[2,3,4,5]", "larger than the 6x7 padded input"});
  expect_error_containing<tg::ValueError>(
      [&] { tg::max_pool2d(x, 2, 1, 2); },
      {"max_pool2d", "[2,3,4,5]", "padding 2", "half the kernel"});
  expect_error_containing<tg::ValueError>([&] { tg::avg_pool2d(x, 0); },
                                          {"avg_pool2d", "kernel 0"});
  expect_error_containing<tg::ValueError>([&] { tg::max_pool2d(x, 2, 0); },
                                          {"max_pool2d", "stride 0"});
  // Sizes whose index arithmetic would overflow int64_t (2 * padding, height + padding).
  constexpr int64_t big = std::numeric_limits<int64_t>::max();
  expect_error_containing<tg::ValueError>([&] { tg::avg_pool2d(x, big, std::nullopt, big / 2); },
                                          {"avg_pool2d", "[2,3,4,5]", "at most 2147483648"});
  expect_error_containing<tg::ValueError>([&] { tg::max_pool2d(x, 2, big); },
                                          {"max_pool2d", "stride 9223372036854775807"});
  auto wide = tape.constant(tg::Tensor<double>::zeros({1, 1, 0, big}));
  EXPECT_THROW(tg::max_pool2d(wide, 2), tg::ValueError);
}

}  // namespace
