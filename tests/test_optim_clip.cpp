// clip_grad_norm / clip_grad_value (torch.nn.utils semantics, SEMANTICS.md) and the clipping
// stage of Optimizer::step, against values computed here from the formula
// clip_coef = min(max_norm / (total + 1e-6), 1).
#include <gtest/gtest.h>

#include <cmath>
#include <limits>

#include "tapegrad/optim/clip.hpp"
#include "tapegrad/optim/sgd.hpp"

namespace tg = tapegrad;
namespace opt = tapegrad::optim;

namespace {

template <class T>
tg::Parameter<T> with_grad(std::vector<T> g) {
  tg::Parameter<T> p(tg::Tensor<T>::zeros({static_cast<int64_t>(g.size())}));
  p.grad() = tg::Tensor<T>::from(g);
  return p;
}

template <class T>
double l2(const tg::Parameter<T>& p) {
  double s = 0;
  for (int64_t i = 0; i < p.numel(); ++i) s += double(p.grad()[i]) * double(p.grad()[i]);
  return std::sqrt(s);
}

const double inf = std::numeric_limits<double>::infinity();

}  // namespace

TEST(OptimClip, Float32NormOf1e22IsClippedToMaxNorm) {
  // 100 entries of 1e21: norm 1e22. Each square (1e42) overflows float, so a float
  // accumulation gives inf — PyTorch's float32 clip_grad_norm_ then zeroes every gradient.
  auto p = with_grad<float>(std::vector<float>(100, 1e21f));
  ASSERT_TRUE(std::isinf(p.grad().array().square().sum()));
  const double total = opt::clip_grad_norm<float>({p}, 1.0);
  EXPECT_NEAR(total, 1e22, 1e22 * 1e-6);
  const double after = l2(p);
  EXPECT_TRUE(std::isfinite(after));
  EXPECT_NEAR(after, 1.0, 1e-5);
  for (int64_t i = 0; i < p.numel(); ++i) EXPECT_NEAR(p.grad()[i], 0.1f, 1e-6f);
}

TEST(OptimClip, Float32NormBeyondFloatRangeAndTinyNorm) {
  // Norm 1e39 > FLT_MAX (coefficient 1e-39 is below float's normal range), and a norm of
  // 1e-25 whose squares underflow float.
  auto big = with_grad<float>(std::vector<float>(10000, 1e37f));
  EXPECT_NEAR(opt::clip_grad_norm<float>({big}, 2.0), 1e39, 1e39 * 1e-6);
  EXPECT_NEAR(l2(big), 2.0, 2e-5);
  auto tiny = with_grad<float>({3e-25f, 4e-25f});
  EXPECT_NEAR(opt::grad_norm<float>({tiny}), 5e-25, 5e-25 * 1e-6);
}

TEST(OptimClip, DoubleNormAboveDoubleSquaresRange) {
  auto p = with_grad<double>({3e200, 4e200});  // squares overflow double
  EXPECT_NEAR(opt::grad_norm<double>({p}), 5e200, 5e200 * 1e-14);
  auto q = with_grad<double>({3e-200, 4e-200});  // squares underflow double
  EXPECT_NEAR(opt::grad_norm<double>({q}), 5e-200, 5e-200 * 1e-14);
}

TEST(OptimClip, AboveThresholdScalesAndReturnsPreClipNorm) {
  auto a = with_grad<double>({3.0, 0.0});
  auto b = with_grad<double>({4.0});  // global norm over both: 5
  const double total = opt::clip_grad_norm<double>({a, b}, 1.0);
  EXPECT_DOUBLE_EQ(total, 5.0);
  const double coef = 1.0 / (5.0 + 1e-6);
  EXPECT_DOUBLE_EQ(a.grad()[0], 3.0 * coef);
  EXPECT_DOUBLE_EQ(a.grad()[1], 0.0);
  EXPECT_DOUBLE_EQ(b.grad()[0], 4.0 * coef);
}

TEST(OptimClip, BelowThresholdUnchanged) {
  auto a = with_grad<double>({0.3, -0.4});
  EXPECT_DOUBLE_EQ(opt::clip_grad_norm<double>({a}, 1.0), 0.5);
  EXPECT_EQ(a.grad()[0], 0.3);  // coefficient clamped to exactly 1
  EXPECT_EQ(a.grad()[1], -0.4);
  // Just below: max_norm/(total + 1e-6) >= 1 still.
  auto b = with_grad<double>({1.0 - 2e-6});
  opt::clip_grad_norm<double>({b}, 1.0);
  EXPECT_EQ(b.grad()[0], 1.0 - 2e-6);
}

TEST(OptimClip, ExactlyAtThresholdIsScaledByTheEpsilon) {
  auto a = with_grad<double>({0.0, 2.0});
  EXPECT_EQ(opt::clip_grad_norm<double>({a}, 2.0), 2.0);
  EXPECT_DOUBLE_EQ(a.grad()[1], 2.0 * (2.0 / (2.0 + 1e-6)));
  EXPECT_LT(a.grad()[1], 2.0);
}

TEST(OptimClip, InfinityNorm) {
  auto a = with_grad<double>({-7.0, 2.0});
  auto b = with_grad<double>({3.0});
  const double total = opt::clip_grad_norm<double>({a, b}, 1.0, inf);
  EXPECT_EQ(total, 7.0);
  const double coef = 1.0 / (7.0 + 1e-6);
  EXPECT_DOUBLE_EQ(a.grad()[0], -7.0 * coef);
  EXPECT_DOUBLE_EQ(b.grad()[0], 3.0 * coef);
  auto c = with_grad<float>({1e30f, -3e38f});  // no overflow question for max
  EXPECT_NEAR(opt::grad_norm<float>({c}, inf), 3e38, 3e38 * 1e-7);
}

TEST(OptimClip, OneNormAndThreeNorm) {
  auto a = with_grad<double>({1.0, -2.0});
  auto b = with_grad<double>({3.0});
  EXPECT_DOUBLE_EQ(opt::grad_norm<double>({a, b}, 1.0), 6.0);
  EXPECT_NEAR(opt::grad_norm<double>({a, b}, 3.0), std::cbrt(1.0 + 8.0 + 27.0), 1e-14);
  auto c = with_grad<float>(std::vector<float>(8, 1e20f));  // 1-norm 8e20, cubes overflow
  EXPECT_NEAR(opt::grad_norm<float>({c}, 3.0), 2e20, 2e20 * 1e-6);
}

TEST(OptimClip, NonFiniteTotals) {
  // inf: clip_coef 0, finite entries become 0 and the inf entry NaN (PyTorch, issue #46849).
  auto a = with_grad<double>({inf, 2.0});
  auto b = with_grad<double>({-1.0});
  EXPECT_EQ(opt::clip_grad_norm<double>({a, b}, 1.0), inf);
  EXPECT_TRUE(std::isnan(a.grad()[0]));
  EXPECT_EQ(a.grad()[1], 0.0);
  EXPECT_EQ(b.grad()[0], -0.0);
  // NaN: every gradient NaN.
  auto c = with_grad<double>({std::nan(""), 2.0});
  auto d = with_grad<double>({-1.0});
  EXPECT_TRUE(std::isnan(opt::clip_grad_norm<double>({c, d}, 1.0)));
  EXPECT_TRUE(std::isnan(c.grad()[1]));
  EXPECT_TRUE(std::isnan(d.grad()[0]));
  // error_if_nonfinite throws and leaves the gradients alone.
  for (double bad : {inf, std::nan("")}) {
    auto e = with_grad<float>({float(bad), 2.0f});
    try {
      opt::clip_grad_norm<float>({e}, 1.0, 2.0, true);
      ADD_FAILURE() << "no exception";
    } catch (const tg::NonFiniteError& err) {
      const std::string msg = err.what();
      EXPECT_NE(msg.find("clip_grad_norm"), std::string::npos) << msg;
      EXPECT_NE(msg.find("non-finite"), std::string::npos) << msg;
    }
    EXPECT_EQ(e.grad()[1], 2.0f);
  }
}

TEST(OptimClip, ValueClipping) {
  auto a = with_grad<double>({-3.0, 0.5, 2.0, std::nan(""), -inf});
  opt::clip_grad_value<double>({a}, 1.0);
  EXPECT_EQ(a.grad()[0], -1.0);
  EXPECT_EQ(a.grad()[1], 0.5);
  EXPECT_EQ(a.grad()[2], 1.0);
  EXPECT_TRUE(std::isnan(a.grad()[3]));  // clamp propagates NaN
  EXPECT_EQ(a.grad()[4], -1.0);
}

TEST(OptimClip, BadArgumentsRaise) {
  auto a = with_grad<double>({1.0});
  EXPECT_THROW(opt::clip_grad_norm<double>({a}, 1.0, 0.0), tg::ValueError);
  EXPECT_THROW(opt::clip_grad_norm<double>({a}, 1.0, -2.0), tg::ValueError);
  EXPECT_THROW(opt::clip_grad_norm<double>({a}, -1.0), tg::ValueError);
  EXPECT_THROW(opt::clip_grad_value<double>({a}, -1.0), tg::ValueError);
  EXPECT_EQ(opt::clip_grad_norm<double>({}, 1.0), 0.0);  // nothing to clip
  tg::Parameter<double> bad(tg::Tensor<double>::zeros({2, 2}));
  bad.grad() = tg::Tensor<double>::zeros({3});
  try {
    opt::clip_grad_norm<double>({bad}, 1.0);
    ADD_FAILURE();
  } catch (const tg::ShapeError& e) {
    EXPECT_NE(std::string(e.what()).find("[3]"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("[2,2]"), std::string::npos) << e.what();
  }
}

TEST(OptimClip, InOptimizerStepClipsOverAllParamsBeforeTheUpdate) {
  auto a = with_grad<double>({3.0, 0.0});
  auto b = with_grad<double>({4.0});
  opt::SGD<double> sgd({a, b}, {.lr = 1.0});
  sgd.set_clip_grad_norm(1.0);
  EXPECT_DOUBLE_EQ(sgd.step(), 5.0);
  EXPECT_DOUBLE_EQ(sgd.last_total_norm(), 5.0);
  const double coef = 1.0 / (5.0 + 1e-6);
  EXPECT_DOUBLE_EQ(a.value()[0], -3.0 * coef);
  EXPECT_DOUBLE_EQ(b.value()[0], -4.0 * coef);
  EXPECT_DOUBLE_EQ(b.grad()[0], 4.0 * coef);  // gradients are left clipped, as clip_grad_norm_
  // By value after norm: the pre-clip norm is still what step() returns.
  a.grad() = tg::Tensor<double>::from({30.0, 0.0});
  b.grad() = tg::Tensor<double>::from({-40.0});
  a.value().zero_(), b.value().zero_();
  sgd.set_clip_grad_norm(10.0).set_clip_grad_value(7.0);
  EXPECT_DOUBLE_EQ(sgd.step(), 50.0);
  EXPECT_DOUBLE_EQ(a.value()[0], -30.0 * (10.0 / (50.0 + 1e-6)));  // ≈ 6 < 7: kept
  EXPECT_DOUBLE_EQ(b.value()[0], 7.0);  // ≈ -8 after the norm clip, then clamped to -7
  // Without clipping, step() still reports the (2-)norm by default.
  sgd.clear_clipping();
  a.grad() = tg::Tensor<double>::from({0.6, 0.0});
  b.grad() = tg::Tensor<double>::from({0.8});
  EXPECT_NEAR(sgd.step(), 1.0, 1e-15);
  sgd.set_track_grad_norm(false);
  EXPECT_TRUE(std::isnan(sgd.step()));
}

// A gradient above parallel_threshold is summed in fixed blocks, so its norm and the clipped
// values are the same bits at 1 and 2 threads, and the norm matches the formula.
TEST(OptimClip, LargeGradientSameBitsAtOneAndTwoThreads) {
  const int64_t n = 3 * tg::parallel_threshold + 17;
  std::vector<float> g(static_cast<size_t>(n));
  double exact = 0;
  for (int64_t i = 0; i < n; ++i) {
    g[static_cast<size_t>(i)] = static_cast<float>((i % 7) - 3) * 0.25f;  // -0.75 .. 0.75
    exact += double(g[static_cast<size_t>(i)]) * double(g[static_cast<size_t>(i)]);
  }
  exact = std::sqrt(exact);
  std::vector<double> totals;
  std::vector<tg::Parameter<float>> clipped;
  for (int threads : {1, 2}) {
    tg::set_num_threads(threads);
    auto p = with_grad(g);
    totals.push_back(opt::clip_grad_norm(std::vector<tg::Parameter<float>>{p}, 1.0));
    clipped.push_back(p);
  }
  tg::set_num_threads(1);
  EXPECT_NEAR(totals[0], exact, 1e-6 * exact);
  EXPECT_EQ(totals[0], totals[1]);
  EXPECT_NEAR(l2(clipped[0]), 1.0, 1e-5);
  for (int64_t i = 0; i < n; ++i) ASSERT_EQ(clipped[0].grad()[i], clipped[1].grad()[i]) << i;
}
