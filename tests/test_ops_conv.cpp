// conv2d: values against a direct convolution written out from the definition, gradients by
// finite differences, and the errors.
#include <gtest/gtest.h>

#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#include "tapegrad/diag/gradcheck.hpp"
#include "tapegrad/ops/conv.hpp"
#include "test_util.hpp"

namespace tg = tapegrad;
using tapegrad::testing::expect_error_containing;

namespace {

struct ConvCase {
  const char* what;
  int64_t N, C, H, W, O, kh, kw;
  tg::Size2 stride, padding, dilation;
  bool bias;
};

// y[n,o,p,q] = b[o] + Σ_{c,i,j} w[o,c,i,j] x[n,c,p·sh−ph+i·dh, q·sw−pw+j·dw], zero outside.
template <class T>
tg::Tensor<T> naive_conv(const tg::Tensor<T>& x, const tg::Tensor<T>& w, const tg::Tensor<T>* b,
                         tg::Size2 s, tg::Size2 p, tg::Size2 d) {
  const int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  const int64_t O = w.size(0), kh = w.size(2), kw = w.size(3);
  const int64_t OH = (H + 2 * p.h - d.h * (kh - 1) - 1) / s.h + 1;
  const int64_t OW = (W + 2 * p.w - d.w * (kw - 1) - 1) / s.w + 1;
  tg::Tensor<T> y({N, O, OH, OW});
  for (int64_t n = 0; n < N; ++n)
    for (int64_t o = 0; o < O; ++o)
      for (int64_t r = 0; r < OH; ++r)
        for (int64_t q = 0; q < OW; ++q) {
          double acc = b ? (*b)[o] : 0.0;
          for (int64_t c = 0; c < C; ++c)
            for (int64_t i = 0; i < kh; ++i)
              for (int64_t j = 0; j < kw; ++j) {
                const int64_t ih = r * s.h - p.h + i * d.h, iw = q * s.w - p.w + j * d.w;
                if (ih < 0 || ih >= H || iw < 0 || iw >= W) continue;
                acc += double(w.at(o, c, i, j)) * double(x.at(n, c, ih, iw));
              }
          y.at(n, o, r, q) = T(acc);
        }
  return y;
}

const ConvCase cases[] = {
    {"3x3 plain", 2, 3, 6, 7, 4, 3, 3, 1, 0, 1, true},
    {"stride 2", 2, 2, 7, 7, 3, 3, 3, 2, 0, 1, true},
    {"padding 1", 1, 2, 5, 5, 3, 3, 3, 1, 1, 1, true},
    {"dilation 2", 2, 2, 7, 8, 2, 3, 3, 1, 1, 2, true},
    {"rectangular", 2, 2, 7, 9, 3, 2, 4, {2, 1}, {1, 2}, {1, 2}, true},
    {"1x1", 2, 4, 5, 3, 3, 1, 1, 1, 0, 1, true},
    {"1x1 stride 2", 2, 3, 5, 5, 2, 1, 1, 2, 0, 1, true},
    {"no bias", 2, 2, 5, 6, 3, 3, 2, 1, {0, 1}, 1, false},
    {"stride 3 pad 2 (partial windows)", 1, 1, 8, 7, 2, 3, 3, 3, 2, 1, true},
    {"kernel equals padded input", 1, 2, 3, 2, 2, 5, 4, 1, 1, 1, true},
};

template <class T>
void check_values(const ConvCase& k, double tol) {
  tg::Generator gen(7);
  auto x = tg::Tensor<T>::randn({k.N, k.C, k.H, k.W}, gen);
  auto w = tg::Tensor<T>::randn({k.O, k.C, k.kh, k.kw}, gen);
  auto b = tg::Tensor<T>::randn({k.O}, gen);
  tg::Tape<T> tape;
  auto y = k.bias ? tg::conv2d(tape.constant(x), tape.constant(w), tape.constant(b), k.stride,
                               k.padding, k.dilation)
                  : tg::conv2d(tape.constant(x), tape.constant(w), k.stride, k.padding, k.dilation);
  auto expected = naive_conv(x, w, k.bias ? &b : nullptr, k.stride, k.padding, k.dilation);
  ASSERT_EQ(y.shape(), expected.shape()) << k.what;
  EXPECT_TRUE(tg::allclose(y.value(), expected, tol, tol)) << k.what;
}

TEST(Conv2d, MatchesDirectConvolutionDouble) {
  for (const auto& k : cases) check_values<double>(k, 1e-12);
}

TEST(Conv2d, MatchesDirectConvolutionFloat) {
  for (const auto& k : cases) check_values<float>(k, 1e-5);
}

TEST(Conv2d, HandComputedValue) {
  // x = 1..9 as 3x3, w = [[1,0],[0,-1]], b = 0.5: y[p,q] = x[p,q] - x[p+1,q+1] + 0.5 = -3.5.
  tg::Tape<double> tape;
  auto x = tape.constant(tg::Tensor<double>::arange(1.0, 10.0).reshape({1, 1, 3, 3}));
  auto w = tape.constant(tg::Tensor<double>::from({1.0, 0.0, 0.0, -1.0}).reshape({1, 1, 2, 2}));
  auto y = tg::conv2d(x, w, tape.constant(tg::Tensor<double>::from({0.5})));
  ASSERT_EQ(y.shape(), tg::Shape({1, 1, 2, 2}));
  for (int i = 0; i < 4; ++i) EXPECT_DOUBLE_EQ(y.value()[i], -3.5);
  // Padding 1, stride 2: output 2x2; y[0,0] = -x[0,0] + 0.5 (only w[1,1] hits the image).
  auto z = tg::conv2d(x, w, tape.constant(tg::Tensor<double>::from({0.5})), 2, 1);
  ASSERT_EQ(z.shape(), tg::Shape({1, 1, 2, 2}));
  EXPECT_DOUBLE_EQ(z.value()[0], -0.5);
  EXPECT_DOUBLE_EQ(z.value()[1], 0.5 - 3.0);  // window rows -1..0, cols 1..2: -x[0,2]
  EXPECT_DOUBLE_EQ(z.value()[2], 0.5 - 7.0);  // -x[2,0]
  EXPECT_DOUBLE_EQ(z.value()[3], 0.5 + 5.0 - 9.0);
}

TEST(Conv2d, Gradcheck) {
  for (const auto& k : cases) {
    tg::Generator gen(11);
    std::vector<tg::Tensor<double>> in{tg::Tensor<double>::randn({k.N, k.C, k.H, k.W}, gen),
                                       tg::Tensor<double>::randn({k.O, k.C, k.kh, k.kw}, gen)};
    if (k.bias) in.push_back(tg::Tensor<double>::randn({k.O}, gen));
    auto r = tg::gradcheck(
        [&k](tg::Tape<double>&, const std::vector<tg::Var<double>>& v) {
          return k.bias ? tg::conv2d(v[0], v[1], v[2], k.stride, k.padding, k.dilation)
                        : tg::conv2d(v[0], v[1], k.stride, k.padding, k.dilation);
        },
        in);
    EXPECT_TRUE(r) << k.what << ": " << r;
  }
}

// The backward written out from the definition: with seed g = dL/dy,
//   dx[n,c,ih,iw] += g[n,o,p,q] w[o,c,i,j],  dw[o,c,i,j] += g[n,o,p,q] x[n,c,ih,iw],
//   db[o] += g[n,o,p,q]  over every (n,o,p,q,c,i,j) whose (ih,iw) is inside the image.
void expect_backward_matches_direct_formula(const ConvCase& k) {
  tg::Generator gen(21);
  auto x = tg::Tensor<double>::randn({k.N, k.C, k.H, k.W}, gen);
  auto w = tg::Tensor<double>::randn({k.O, k.C, k.kh, k.kw}, gen);
  auto b = tg::Tensor<double>::randn({k.O}, gen);
  const tg::Size2 s = k.stride, p = k.padding, d = k.dilation;
  tg::Tape<double> tape;
  auto xv = tape.input(x), wv = tape.input(w), bv = tape.input(b);
  auto y = tg::conv2d(xv, wv, bv, s, p, d);
  const int64_t OH = y.size(2), OW = y.size(3);
  ASSERT_GT(k.N * k.C * k.kh * k.kw * OH * OW, tg::parallel_threshold) << k.what;
  auto seed = tg::Tensor<double>::randn(y.shape(), gen);
  tape.backward(y, seed);
  auto dx = tg::Tensor<double>::zeros(x.shape()), dw = tg::Tensor<double>::zeros(w.shape());
  auto db = tg::Tensor<double>::zeros(b.shape());
  for (int64_t n = 0; n < k.N; ++n)
    for (int64_t o = 0; o < k.O; ++o)
      for (int64_t r = 0; r < OH; ++r)
        for (int64_t q = 0; q < OW; ++q) {
          const double g = seed.at(n, o, r, q);
          db[o] += g;
          for (int64_t c = 0; c < k.C; ++c)
            for (int64_t i = 0; i < k.kh; ++i)
              for (int64_t j = 0; j < k.kw; ++j) {
                const int64_t ih = r * s.h - p.h + i * d.h, iw = q * s.w - p.w + j * d.w;
                if (ih < 0 || ih >= k.H || iw < 0 || iw >= k.W) continue;
                dx.at(n, c, ih, iw) += g * w.at(o, c, i, j);
                dw.at(o, c, i, j) += g * x.at(n, c, ih, iw);
              }
        }
  EXPECT_TRUE(tg::allclose(xv.grad(), dx, 1e-10, 1e-10)) << k.what;
  EXPECT_TRUE(tg::allclose(wv.grad(), dw, 1e-10, 1e-10)) << k.what;
  EXPECT_TRUE(tg::allclose(bv.grad(), db, 1e-10, 1e-10)) << k.what;
  EXPECT_TRUE(tg::allclose(y.value(), naive_conv(x, w, &b, s, p, d), 1e-12, 1e-12)) << k.what;
}

// Batches large enough for the OpenMP path (per-thread partial sums), which gradcheck cannot
// afford. The last three take the im2col path with products wide enough for the packed GEMM
// kernel (at least 16 rows and 48 columns; double): a 1x1 at stride 1 (the image is the column
// matrix), a 1x1 at stride 2 (ResNet's shortcut) and a 3x3 padded beyond what the padded-image
// kernels undo.
TEST(Conv2d, BackwardMatchesDirectFormulaOnLargeBatch) {
  const ConvCase large[] = {
      {"3x3 stride (2,1) dilation (1,2)", 8, 6, 15, 14, 4, 3, 3, {2, 1}, 1, {1, 2}, true},
      {"1x1 direct", 8, 20, 16, 16, 16, 1, 1, 1, 0, 1, true},
      {"1x1 stride 2", 8, 32, 24, 23, 32, 1, 1, 2, 0, 1, true},
      {"3x3 padding 3", 8, 6, 10, 9, 16, 3, 3, 1, 3, 1, true},
  };
  for (const auto& k : large) expect_backward_matches_direct_formula(k);
}

TEST(Conv2d, GradientOnlyForWhatNeedsIt) {
  // Weight as a parameter, input constant (the first layer of a network).
  tg::Generator gen(3);
  tg::Parameter<double> w(tg::Tensor<double>::randn({2, 1, 3, 3}, gen));
  auto x = tg::Tensor<double>::randn({2, 1, 5, 5}, gen);
  tg::Tape<double> tape;
  for (int step = 0; step < 2; ++step) {  // the second step reuses the buffers
    tape.clear();
    w.zero_grad();
    auto y = tg::conv2d(tape.constant(x), tape.param(w), 1, 1);
    tape.backward(y, tg::Tensor<double>::ones(y.shape()));
    // dW[o,0,i,j] = Σ_n Σ_{p,q} x[n, p−1+i, q−1+j]: the sum of x over a shifted 5x5 window.
    for (int i = 0; i < 3; ++i)
      for (int j = 0; j < 3; ++j) {
        double expected = 0;
        for (int n = 0; n < 2; ++n)
          for (int p = 0; p < 5; ++p)
            for (int q = 0; q < 5; ++q) {
              const int ih = p - 1 + i, iw = q - 1 + j;
              if (ih >= 0 && ih < 5 && iw >= 0 && iw < 5) expected += x.at(n, 0, ih, iw);
            }
        EXPECT_NEAR(w.grad().at(1, 0, i, j), expected, 1e-12) << step << " " << i << j;
      }
  }
}

// Batch 0 (it died with SIGFPE in the weight gradient: a division by the 0 images): empty
// output and input gradient, zero weight and bias gradients, on every kernel path.
TEST(Conv2d, EmptyBatchForwardAndBackward) {
  for (int64_t stride : {1, 2})
    for (int64_t C : {1, 3})
      for (bool as_float : {false, true}) {
        auto run = [&](auto zero) {
          using T = decltype(zero);
          tg::Parameter<T> w(tg::Tensor<T>::ones({2, C, 3, 3}));
          tg::Parameter<T> b(tg::Tensor<T>::ones({2}));
          tg::Tape<T> tape;
          auto x = tape.input(tg::Tensor<T>::zeros({0, C, 5, 5}));
          auto y = tg::conv2d(x, tape.param(w), tape.param(b), stride, 1);
          const int64_t out = stride == 1 ? 5 : 3;
          EXPECT_EQ(y.shape(), (tg::Shape{0, 2, out, out}));
          tape.backward(y, tg::Tensor<T>::ones(y.shape()));
          EXPECT_EQ(x.grad().shape(), (tg::Shape{0, C, 5, 5}));
          for (int64_t i = 0; i < w.numel(); ++i) EXPECT_EQ(w.grad()[i], T(0));
          for (int64_t i = 0; i < b.numel(); ++i) EXPECT_EQ(b.grad()[i], T(0));
        };
        if (as_float)
          run(0.0f);
        else
          run(0.0);
      }
}

TEST(Conv2d, SteadyStateReusesColumnBuffer) {
  tg::Generator gen(5);
  auto x = tg::Tensor<float>::randn({2, 3, 6, 6}, gen);
  tg::Parameter<float> w(tg::Tensor<float>::randn({4, 3, 3, 3}, gen));
  tg::Tape<float> tape;
  const float* first = nullptr;
  for (int step = 0; step < 3; ++step) {
    tape.clear();
    auto y = tg::conv2d(tape.input(x), tape.param(w), 1, 1);
    tape.backward(y, tg::Tensor<float>::ones(y.shape()));
    const float* col = y.node().saved[0].data();
    if (step == 0)
      first = col;
    else
      EXPECT_EQ(col, first);
  }
}

TEST(Conv2d, Errors) {
  tg::Tape<double> tape;
  auto x = tape.constant(tg::Tensor<double>::zeros({2, 3, 5, 5}));
  auto w = tape.constant(tg::Tensor<double>::zeros({4, 3, 3, 3}));
  expect_error_containing<tg::ShapeError>(
      [&] {
        tg::conv2d(tape.constant(tg::Tensor<double>::zeros({3, 5, 5})), w);
      },
      {"conv2d", "[3,5,5]", "[4,3,3,3]", "4-D"});
  expect_error_containing<tg::ShapeError>(
      [&] {
        tg::conv2d(x, tape.constant(tg::Tensor<double>::zeros({4, 3, 3})));
      },
      {"conv2d", "[2,3,5,5]", "[4,3,3]"});
  expect_error_containing<tg::ShapeError>(
      [&] {
        tg::conv2d(x, tape.constant(tg::Tensor<double>::zeros({4, 2, 3, 3})));
      },
      {"conv2d", "[2,3,5,5]", "[4,2,3,3]", "3 channels"});
  expect_error_containing<tg::ShapeError>(
      [&] {
        tg::conv2d(x, tape.constant(tg::Tensor<double>::zeros({4, 3, 6, 3})));
      },
      {"conv2d", "[2,3,5,5]", "[4,3,6,3]", "larger than the 5x5 padded input"});
  expect_error_containing<tg::ShapeError>([&] { tg::conv2d(x, w, 1, 0, 3); },  // dilated kernel 7x7
                                          {"conv2d", "7x7", "larger"});
  expect_error_containing<tg::ShapeError>(
      [&] { tg::conv2d(x, w, tape.constant(tg::Tensor<double>::zeros({3}))); },
      {"conv2d", "bias [3]", "[4]"});
  EXPECT_THROW(tg::conv2d(x, w, 0), tg::ValueError);
  EXPECT_THROW(tg::conv2d(x, w, 1, -1), tg::ValueError);
  EXPECT_NO_THROW(tg::conv2d(x, tape.constant(tg::Tensor<double>::zeros({4, 3, 6, 3})), 1, 1));
  // Sizes whose index arithmetic would overflow int64_t (stride + height, 2 * padding).
  constexpr int64_t big = std::numeric_limits<int64_t>::max();
  expect_error_containing<tg::ValueError>([&] { tg::conv2d(x, w, big); },
                                          {"conv2d", "[2,3,5,5]", "at most 2147483648"});
  expect_error_containing<tg::ValueError>([&] { tg::conv2d(x, w, 1, big); },
                                          {"conv2d", "padding 9223372036854775807"});
  expect_error_containing<tg::ValueError>([&] { tg::conv2d(x, w, 1, 0, big); },
                                          {"conv2d", "dilation 9223372036854775807"});
  // An image of no rows but a huge width: no element, yet H + 2 * padding must not overflow.
  auto wide = tape.constant(tg::Tensor<double>::zeros({1, 3, 0, big}));
  EXPECT_THROW(tg::conv2d(wide, w, 1, 1), tg::ValueError);
  // A padding within bounds whose output has 2^62 elements: an error, not a wrapped allocation.
  auto one = tape.constant(tg::Tensor<double>::ones({1, 1, 2, 2}));
  auto w1 = tape.constant(tg::Tensor<double>::ones({1, 1, 1, 1}));
  EXPECT_THROW(tg::conv2d(one, w1, 1, (int64_t{1} << 30) - 1), tg::ShapeError);
}

}  // namespace
