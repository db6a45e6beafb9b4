// The padded-image kernels of stride-1 conv2d (ops/conv_kernels.hpp): each kernel against its
// formula written as plain loops, and conv2d's values and gradients on that path against the
// definitions, with channel counts that leave remainders in every block size, on one and two
// threads (per-thread partial sums).
#include <gtest/gtest.h>

#include <cstdint>
#include <vector>

#include "tapegrad/ops/conv.hpp"
#include "tapegrad/ops/elementwise.hpp"
#include "tapegrad/random.hpp"
#include "tapegrad/threads.hpp"

namespace tg = tapegrad;

namespace {

template <class T>
std::vector<T> random_vector(int64_t n, tg::Generator& g) {
  std::vector<T> v(static_cast<size_t>(n));
  for (auto& x : v) x = static_cast<T>(g.normal(0, 1));
  return v;
}

TEST(PadImage, ZerosAroundTheImageAndTheSlack) {
  // Two channels of 2x3 into 4x6 at (1, 2): every element checked.
  const std::vector<float> x{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12};
  std::vector<float> xp(2 * 4 * 6 + 5, -1.0f);
  tg::detail::pad_image(x.data(), 2, 2, 3, xp.data(), 4, 6, 1, 2, 5);
  for (int c = 0; c < 2; ++c)
    for (int r = 0; r < 4; ++r)
      for (int q = 0; q < 6; ++q) {
        const bool inside = r >= 1 && r < 3 && q >= 2 && q < 5;
        const float expected = inside ? x[static_cast<size_t>(c * 6 + (r - 1) * 3 + (q - 2))] : 0;
        EXPECT_EQ(xp[static_cast<size_t>((c * 4 + r) * 6 + q)], expected) << c << r << q;
      }
  for (size_t i = 48; i < xp.size(); ++i) EXPECT_EQ(xp[i], 0.0f) << i;
}

// shifted_conv: out[oc, m] = Σ_k wt[k, oc] in[off_k + m].
template <class T>
void check_shifted_conv(int64_t OC, int64_t K) {
  using SK = tg::detail::ShiftedKernel<T>;
  tg::Generator g(3);
  const int64_t M = 2 * SK::MB, ldo = M + 3;
  std::vector<int64_t> off(static_cast<size_t>(K));
  for (int64_t k = 0; k < K; ++k) off[static_cast<size_t>(k)] = (k * 7) % 23;
  const auto in = random_vector<T>(23 + M, g), wt = random_vector<T>(K * OC, g);
  std::vector<T> out(static_cast<size_t>(OC * ldo), T(-7));
  tg::detail::shifted_conv(wt.data(), OC, off.data(), K, in.data(), M, out.data(), ldo);
  for (int64_t oc = 0; oc < OC; ++oc)
    for (int64_t m = 0; m < M; ++m) {
      double expected = 0;
      for (int64_t k = 0; k < K; ++k)
        expected += double(wt[static_cast<size_t>(k * OC + oc)]) *
                    double(in[static_cast<size_t>(off[static_cast<size_t>(k)] + m)]);
      EXPECT_NEAR(out[static_cast<size_t>(oc * ldo + m)], expected, 1e-4) << oc << " " << m;
    }
  // Nothing written beyond M in a row.
  for (int64_t oc = 0; oc < OC; ++oc)
    for (int64_t m = M; m < ldo; ++m) EXPECT_EQ(out[static_cast<size_t>(oc * ldo + m)], T(-7));
}

TEST(ShiftedConv, MatchesFormula) {
  for (int64_t oc : {1, 2, 3, 8, 11, 16}) {
    check_shifted_conv<float>(oc, 5);
    check_shifted_conv<double>(oc, 9);
  }
}

// shifted_wgrad: dw[o, k] += Σ_m g[o, m] in[off_k + m].
template <class T>
void check_shifted_wgrad(int64_t O, int64_t K) {
  using SK = tg::detail::ShiftedKernel<T>;
  tg::Generator gen(4);
  const int64_t M = SK::MB + SK::PS, ldg = M + 2, ldw = K + 1;
  std::vector<int64_t> off(static_cast<size_t>(K));
  for (int64_t k = 0; k < K; ++k) off[static_cast<size_t>(k)] = (k * 5) % 17;
  const auto in = random_vector<T>(17 + M, gen), g = random_vector<T>(O * ldg, gen);
  auto dw = random_vector<T>(O * ldw, gen);
  const auto dw0 = dw;
  tg::detail::shifted_wgrad(g.data(), ldg, O, off.data(), K, in.data(), M, dw.data(), ldw);
  for (int64_t o = 0; o < O; ++o)
    for (int64_t k = 0; k < ldw; ++k) {
      double expected = dw0[static_cast<size_t>(o * ldw + k)];
      if (k < K)
        for (int64_t m = 0; m < M; ++m)
          expected += double(g[static_cast<size_t>(o * ldg + m)]) *
                      double(in[static_cast<size_t>(off[static_cast<size_t>(k)] + m)]);
      EXPECT_NEAR(dw[static_cast<size_t>(o * ldw + k)], expected, 1e-4) << o << " " << k;
    }
}

TEST(ShiftedWgrad, MatchesFormula) {
  // Tap counts that leave every tail of the tap blocks (6, then 3, then single taps with
  // AVX-512; 4 and single taps otherwise).
  for (int64_t o : {1, 3, 4, 9})
    for (int64_t k : {7, 9, 16}) {
      check_shifted_wgrad<float>(o, k);
      check_shifted_wgrad<double>(o, k + 6);
    }
}

struct Case {
  const char* what;
  int64_t N, C, H, W, O, kh, kw;
  tg::Size2 padding, dilation, stride = 1;
};

// conv2d forward and backward on the padded-image path against the definitions:
//   y[n,o,p,q] = b[o] + Σ w[o,c,i,j] x[n,c,p−ph+i·dh,q−pw+j·dw]   (zero outside), and with
//   seed s = dL/dy: dx[n,c,ih,iw] += s·w, dw[o,c,i,j] += s·x, db[o] += s.
template <class T>
void check_case(const Case& k, int threads, double tol) {
  tg::set_num_threads(threads);
  tg::Generator gen(9);
  auto x = tg::Tensor<T>::randn({k.N, k.C, k.H, k.W}, gen);
  auto w = tg::Tensor<T>::randn({k.O, k.C, k.kh, k.kw}, gen);
  auto b = tg::Tensor<T>::randn({k.O}, gen);
  tg::Tape<T> tape;
  auto xv = tape.input(x), wv = tape.input(w), bv = tape.input(b);
  auto y = tg::conv2d(xv, wv, bv, k.stride, k.padding, k.dilation);
  ASSERT_EQ(y.node().ints[tg::detail::conv_path_at], 1) << k.what << ": not the padded path";
  const int64_t OH = y.size(2), OW = y.size(3);
  auto seed = tg::Tensor<T>::randn(y.shape(), gen);
  tape.backward(y, seed);
  tg::Tensor<double> ey({k.N, k.O, OH, OW});
  auto dx = tg::Tensor<double>::zeros(x.shape()), dw = tg::Tensor<double>::zeros(w.shape());
  auto db = tg::Tensor<double>::zeros(b.shape());
  const tg::Size2 p = k.padding, d = k.dilation, st = k.stride;
  for (int64_t n = 0; n < k.N; ++n)
    for (int64_t o = 0; o < k.O; ++o)
      for (int64_t r = 0; r < OH; ++r)
        for (int64_t q = 0; q < OW; ++q) {
          const double s = seed.at(n, o, r, q);
          double acc = b[o];
          db[o] += s;
          for (int64_t c = 0; c < k.C; ++c)
            for (int64_t i = 0; i < k.kh; ++i)
              for (int64_t j = 0; j < k.kw; ++j) {
                const int64_t ih = r * st.h - p.h + i * d.h, iw = q * st.w - p.w + j * d.w;
                if (ih < 0 || ih >= k.H || iw < 0 || iw >= k.W) continue;
                acc += double(w.at(o, c, i, j)) * double(x.at(n, c, ih, iw));
                dx.at(n, c, ih, iw) += s * double(w.at(o, c, i, j));
                dw.at(o, c, i, j) += s * double(x.at(n, c, ih, iw));
              }
          ey.at(n, o, r, q) = acc;
        }
  EXPECT_TRUE(tg::allclose(y.value().template to<double>(), ey, tol, tol)) << k.what;
  EXPECT_TRUE(tg::allclose(xv.grad().template to<double>(), dx, tol, tol)) << k.what;
  EXPECT_TRUE(tg::allclose(wv.grad().template to<double>(), dw, tol, tol)) << k.what;
  EXPECT_TRUE(tg::allclose(bv.grad().template to<double>(), db, tol, tol)) << k.what;
  tg::set_num_threads(1);
}

// Large enough for the OpenMP path (N·C·kh·kw·OH·OW above parallel_threshold).
const Case cases[] = {
    {"3x3 pad 1, 16 -> 16 (the ResNet's)", 6, 16, 12, 10, 16, 3, 3, 1, 1},
    {"3x3 pad 1, 5 -> 11 (remainders)", 8, 5, 13, 9, 11, 3, 3, 1, 1},
    {"3x3 no padding", 8, 6, 11, 12, 3, 3, 3, 0, 1},
    {"5x3 pad (2, 1), dilation (1, 2)", 8, 4, 12, 11, 9, 5, 3, {2, 1}, {1, 2}},
    {"2x4 pad (0, 3), one channel", 16, 1, 15, 14, 2, 2, 4, {0, 3}, 1},
    // Strided: phase planes.
    {"3x3 stride 2 pad 1, 16 -> 32 (the ResNet's)", 6, 16, 14, 14, 32, 3, 3, 1, 1, 2},
    {"1x2 stride 2", 8, 6, 14, 13, 10, 1, 2, 0, 1, 2},
    {"3x3 stride 2, odd size, no padding", 8, 5, 13, 11, 7, 3, 3, 0, 1, 2},
    {"5x4 stride (3, 2) pad (2, 1) dilation (1, 2)", 8, 3, 17, 16, 5, 5, 4, {2, 1}, {1, 2}, {3, 2}},
    {"3x3 stride 2 dilation 2 (taps in one phase)", 8, 4, 15, 15, 3, 3, 3, 2, 2, 2},
    {"2x2 stride 2 pad 3 (padding beyond the kernel)", 8, 4, 9, 10, 6, 2, 2, 3, 1, 2},
};

TEST(Conv2dPaddedPath, MatchesDefinitionDouble) {
  for (const auto& k : cases)
    for (int threads : {1, 2}) check_case<double>(k, threads, 1e-10);
}

TEST(Conv2dPaddedPath, MatchesDefinitionFloat) {
  for (const auto& k : cases)
    for (int threads : {1, 2}) check_case<float>(k, threads, 2e-4);
}

TEST(Conv2dPaddedPath, ChosenForKernelsLargerThan1x1) {
  tg::Tape<float> tape;
  auto x = tape.constant(tg::Tensor<float>::zeros({1, 2, 8, 8}));
  auto w3 = tape.constant(tg::Tensor<float>::zeros({2, 2, 3, 3}));
  auto w1 = tape.constant(tg::Tensor<float>::zeros({2, 2, 1, 1}));
  auto path = [](const tg::Var<float>& y) { return y.node().ints[tg::detail::conv_path_at]; };
  EXPECT_EQ(path(tg::conv2d(x, w3, 1, 1)), 1);
  EXPECT_EQ(path(tg::conv2d(x, w3, 2, 1)), 1);     // strided: phase planes
  EXPECT_EQ(path(tg::conv2d(x, w1, 2, 0)), 0);     // 1x1 strided: a strided copy
  EXPECT_EQ(path(tg::conv2d(x, w3, 2, 3)), 1);     // strided, any padding
  EXPECT_EQ(path(tg::conv2d(x, w3, 1, 3)), 0);     // stride 1, padding beyond the extent - 1
  EXPECT_EQ(path(tg::conv2d(x, w1, 1, 0)), 0);     // 1x1: the image is the column matrix
  EXPECT_EQ(path(tg::conv2d(x, w3, 1, 2, 2)), 1);  // dilated
}

// x feeds two convolutions: the second backward adds to the gradient the first assigned.
TEST(Conv2dPaddedPath, AccumulatesIntoAGradientAlreadyWritten) {
  tg::Generator gen(8);
  auto x = tg::Tensor<double>::randn({3, 4, 7, 6}, gen);
  auto w1 = tg::Tensor<double>::randn({5, 4, 3, 3}, gen);
  auto w2 = tg::Tensor<double>::randn({5, 4, 3, 3}, gen);
  auto seed = tg::Tensor<double>::randn({3, 5, 7, 6}, gen);
  auto dx_of = [&](const tg::Tensor<double>* wa, const tg::Tensor<double>* wb) {
    tg::Tape<double> tape;
    auto xv = tape.input(x);
    auto y = tg::conv2d(xv, tape.constant(*wa), 1, 1);
    if (wb) y = y + tg::conv2d(xv, tape.constant(*wb), 1, 1);
    tape.backward(y, seed);
    return xv.grad();
  };
  const auto both = dx_of(&w1, &w2), one = dx_of(&w1, nullptr), two = dx_of(&w2, nullptr);
  for (int64_t i = 0; i < x.numel(); ++i) EXPECT_NEAR(both[i], one[i] + two[i], 1e-12) << i;
}

// Buffers are reused: a second step on the same tape gives the same result bit for bit.
TEST(Conv2dPaddedPath, RepeatableAcrossSteps) {
  tg::Generator gen(2);
  auto x = tg::Tensor<float>::randn({4, 3, 9, 9}, gen);
  tg::Parameter<float> w(tg::Tensor<float>::randn({5, 3, 3, 3}, gen));
  tg::Tape<float> tape;
  std::vector<float> first_y, first_dw;
  for (int step = 0; step < 2; ++step) {
    tape.clear();
    w.zero_grad();
    auto y = tg::conv2d(tape.input(x), tape.param(w), 1, 1);
    tape.backward(y, tg::Tensor<float>::ones(y.shape()));
    std::vector<float> yv(y.value().data(), y.value().data() + y.numel());
    std::vector<float> dwv(w.grad().data(), w.grad().data() + w.grad().numel());
    if (step == 0) {
      first_y = yv, first_dw = dwv;
    } else {
      EXPECT_EQ(yv, first_y);
      EXPECT_EQ(dwv, first_dw);
    }
  }
}

}  // namespace
