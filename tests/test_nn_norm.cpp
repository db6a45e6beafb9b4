// nn::BatchNorm (1d/2d) and nn::LayerNorm: gradients through expect_layer_gradcheck in both
// modes, outputs and running statistics against the formulas written out here, buffers, errors.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <optional>
#include <string>
#include <vector>

#include "layer_check.hpp"
#include "tapegrad/nn/batch_norm.hpp"
#include "tapegrad/nn/layer_norm.hpp"
#include "tapegrad/nn/sequential.hpp"
#include "tapegrad/ops/activation.hpp"
#include "tapegrad/ops/reduce.hpp"
#include "test_util.hpp"

namespace tg = tapegrad;
using tapegrad::testing::expect_error_containing;
using tapegrad::testing::run;
using tapegrad::testing::sample;

namespace {

using TD = tg::Tensor<double>;

// Per-channel mean and BIASED variance of x [N,C,*], written out.
struct ChannelStats {
  std::vector<double> mean, var;
  int64_t n = 0;  // values per channel
};
ChannelStats channel_stats(const TD& x) {
  const int64_t N = x.size(0), C = x.size(1), S = x.numel() / (N * C);
  ChannelStats st;
  st.n = N * S;
  for (int64_t c = 0; c < C; ++c) {
    double m = 0, v = 0;
    for (int64_t k = 0; k < N; ++k)
      for (int64_t s = 0; s < S; ++s) m += x[(k * C + c) * S + s];
    m /= double(st.n);
    for (int64_t k = 0; k < N; ++k)
      for (int64_t s = 0; s < S; ++s) v += std::pow(x[(k * C + c) * S + s] - m, 2);
    st.mean.push_back(m);
    st.var.push_back(v / double(st.n));
  }
  return st;
}

// y = γ·(x − mean)/√(var + eps) + β per channel, written out.
void expect_normalized(const TD& y, const TD& x, const std::vector<double>& mean,
                       const std::vector<double>& var, const std::vector<double>& g,
                       const std::vector<double>& b, double eps, double tol = 1e-12) {
  const int64_t N = x.size(0), C = x.size(1), S = x.numel() / (N * C);
  ASSERT_EQ(y.shape(), x.shape());
  for (int64_t k = 0; k < N; ++k)
    for (int64_t c = 0; c < C; ++c)
      for (int64_t s = 0; s < S; ++s) {
        const int64_t i = (k * C + c) * S + s;
        EXPECT_NEAR(y[i], g[c] * (x[i] - mean[c]) / std::sqrt(var[c] + eps) + b[c], tol) << i;
      }
}

// ---------------------------------------------------------------- BatchNorm gradients

TEST(BatchNormLayer, GradcheckTrainAndEval2D) {
  tg::nn::BatchNorm1d<double> bn(3);
  bn.weight.value() = TD::from({1.5, 0.5, -1.0});
  bn.bias.value() = TD::from({0.1, -0.2, 0.3});
  expect_layer_gradcheck(bn, sample({5, 3}, 1));
  bn.running_mean.copy_(TD::from({0.2, -0.1, 0.5}));
  bn.running_var.copy_(TD::from({0.5, 2.0, 1.5}));
  bn.eval();
  expect_layer_gradcheck(bn, sample({5, 3}, 2));
}

TEST(BatchNormLayer, GradcheckTrainAndEval4D) {
  tg::nn::BatchNorm2d<double> bn(2);
  bn.weight.value() = TD::from({0.7, 1.3});
  bn.bias.value() = TD::from({-0.4, 0.6});
  expect_layer_gradcheck(bn, sample({2, 2, 3, 2}, 3));
  bn.eval();  // running stats as left by the training calls above
  expect_layer_gradcheck(bn, sample({2, 2, 3, 2}, 4));
}

TEST(BatchNormLayer, GradcheckWithoutAffine) {
  tg::nn::BatchNorm<double> bn(2, 1e-5, 0.1, /*affine=*/false);
  EXPECT_TRUE(bn.parameters().empty());
  expect_layer_gradcheck(bn, sample({3, 2, 2, 2}, 5));
  expect_layer_gradcheck(bn, sample({4, 2}, 6));
  bn.eval();
  expect_layer_gradcheck(bn, sample({3, 2, 2, 2}, 7));
}

TEST(BatchNormLayer, GradcheckEvalWithoutRunningStatsUsesBatchStats) {
  tg::nn::BatchNorm2d<double> bn(2, 1e-5, 0.1, true, /*track_running_stats=*/false);
  bn.eval();
  expect_layer_gradcheck(bn, sample({2, 2, 2, 2}, 8));
}

// ---------------------------------------------------------------- BatchNorm values

TEST(BatchNormLayer, TwoTrainingStepsOutputsAndRunningStats) {
  tg::nn::BatchNorm2d<double> bn(2);  // eps 1e-5, momentum 0.1
  const std::vector<double> g = {2.0, -0.5}, b = {0.5, 1.0};
  bn.weight.value().copy_(TD::from(g));
  bn.bias.value().copy_(TD::from(b));
  const TD x1 = sample({3, 2, 2, 2}, 10), x2 = sample({3, 2, 2, 2}, 11, -1, 3);
  const TD y1 = run(bn, x1);
  const TD y2 = run(bn, x2);
  const auto s1 = channel_stats(x1), s2 = channel_stats(x2);
  // Outputs use the BIASED batch variance.
  expect_normalized(y1, x1, s1.mean, s1.var, g, b, 1e-5);
  expect_normalized(y2, x2, s2.mean, s2.var, g, b, 1e-5);
  // Running statistics use the UNBIASED variance σ²·n/(n−1), n = 3·2·2 = 12.
  ASSERT_EQ(s1.n, 12);
  for (int c = 0; c < 2; ++c) {
    const double rm1 = 0.9 * 0.0 + 0.1 * s1.mean[c];
    const double rv1 = 0.9 * 1.0 + 0.1 * s1.var[c] * 12.0 / 11.0;
    const double rm2 = 0.9 * rm1 + 0.1 * s2.mean[c];
    const double rv2 = 0.9 * rv1 + 0.1 * s2.var[c] * 12.0 / 11.0;
    EXPECT_NEAR(bn.running_mean[c], rm2, 1e-12);
    EXPECT_NEAR(bn.running_var[c], rv2, 1e-12);
  }
  EXPECT_EQ(bn.num_batches_tracked.item(), 2.0);
  EXPECT_EQ(bn.num_batches_tracked.rank(), 0);
}

TEST(BatchNorm1dLayer, TwoTrainingStepsOn2DInput) {
  tg::nn::BatchNorm1d<double> bn(3, 1e-3, 0.3);
  const TD x1 = sample({4, 3}, 12), x2 = sample({4, 3}, 13);
  const TD y1 = run(bn, x1), y2 = run(bn, x2);
  const auto s1 = channel_stats(x1), s2 = channel_stats(x2);
  const std::vector<double> ones(3, 1.0), zeros(3, 0.0);
  expect_normalized(y1, x1, s1.mean, s1.var, ones, zeros, 1e-3);
  expect_normalized(y2, x2, s2.mean, s2.var, ones, zeros, 1e-3);
  for (int c = 0; c < 3; ++c) {
    const double rm = 0.7 * (0.3 * s1.mean[c]) + 0.3 * s2.mean[c];
    const double rv = 0.7 * (0.7 + 0.3 * s1.var[c] * 4 / 3) + 0.3 * s2.var[c] * 4 / 3;
    EXPECT_NEAR(bn.running_mean[c], rm, 1e-12);
    EXPECT_NEAR(bn.running_var[c], rv, 1e-12);
  }
}

TEST(BatchNormLayer, EvalUsesRunningStatsAndDoesNotUpdateThem) {
  tg::nn::BatchNorm2d<double> bn(2, 1e-5);
  const std::vector<double> rm = {0.5, -1.0}, rv = {4.0, 0.25}, g = {1.5, 2.0}, b = {0.0, -1.0};
  bn.running_mean.copy_(TD::from(rm));
  bn.running_var.copy_(TD::from(rv));
  bn.weight.value().copy_(TD::from(g));
  bn.bias.value().copy_(TD::from(b));
  bn.eval();
  const TD x = sample({2, 2, 3, 3}, 14);
  expect_normalized(run(bn, x), x, rm, rv, g, b, 1e-5);
  EXPECT_EQ(bn.running_mean[0], 0.5);
  EXPECT_EQ(bn.running_var[1], 0.25);
  EXPECT_EQ(bn.num_batches_tracked.item(), 0.0);
  // One sample is fine in eval.
  const TD x1 = sample({1, 2, 1, 1}, 15);
  expect_normalized(run(bn, x1), x1, rm, rv, g, b, 1e-5);
}

// forward_relu (the fused batch_norm_relu op) against relu(forward(x)): the same outputs,
// running statistics and counter, in training (two steps) and in eval, and the same gradients
// up to the order of the sums; summary() still lists the layer.
TEST(BatchNormLayer, ForwardReluMatchesForwardThenRelu) {
  tg::nn::BatchNorm2d<double> fused(3), plain(3);
  for (auto* bn : {&fused, &plain}) {
    bn->weight.value().copy_(TD::from({1.5, -0.5, 1.0}));
    bn->bias.value().copy_(TD::from({0.25, 0.0, -0.5}));
  }
  for (int step = 0; step < 3; ++step) {
    if (step == 2) {
      fused.eval();
      plain.eval();
    }
    const TD x = sample({4, 3, 2, 3}, 70 + step), dy = sample({4, 3, 2, 3}, 80 + step);
    tg::Tape<double> tf, tp;
    auto xf = tf.input(x), xp = tp.input(x);
    auto yf = fused.forward_relu(xf);
    auto yp = tg::relu(plain(xp));
    EXPECT_EQ(std::string(yf.node().op), "batch_norm_relu");
    tf.backward(yf, dy);
    tp.backward(yp, dy);
    for (int64_t i = 0; i < x.numel(); ++i) {
      ASSERT_EQ(yf.value()[i], yp.value()[i]) << "step " << step << " y " << i;
      ASSERT_NEAR(xf.grad()[i], xp.grad()[i], 1e-12) << "step " << step << " dx " << i;
    }
    for (int c = 0; c < 3; ++c) {
      EXPECT_EQ(fused.running_mean[c], plain.running_mean[c]) << step;
      EXPECT_EQ(fused.running_var[c], plain.running_var[c]) << step;
      EXPECT_NEAR(fused.weight.grad()[c], plain.weight.grad()[c], 1e-12) << step;
      EXPECT_NEAR(fused.bias.grad()[c], plain.bias.grad()[c], 1e-12) << step;
    }
    EXPECT_EQ(fused.num_batches_tracked.item(), plain.num_batches_tracked.item()) << step;
    fused.zero_grad();
    plain.zero_grad();
  }
  EXPECT_EQ(fused.num_batches_tracked.item(), 2.0);
}

// In a Sequential, a BatchNorm followed by a ReLU runs as batch_norm_relu, with the values and
// running statistics of the two layers called one after the other.
TEST(BatchNormLayer, SequentialFusesBatchNormAndRelu) {
  auto bn = std::make_shared<tg::nn::BatchNorm2d<double>>(2);
  tg::nn::Sequential<double> seq{bn, std::make_shared<tg::nn::ReLU<double>>()};
  tg::nn::BatchNorm2d<double> plain(2);
  tg::nn::ReLU<double> relu;
  const TD x = sample({3, 2, 2, 2}, 90);
  tg::Tape<double> tf, tp;
  auto yf = seq(tf.input(x));
  auto yp = relu(plain(tp.input(x)));
  EXPECT_EQ(std::string(yf.node().op), "batch_norm_relu");
  EXPECT_EQ(tf.size(), 4u);  // x, weight, bias, batch_norm_relu
  for (int64_t i = 0; i < x.numel(); ++i) EXPECT_EQ(yf.value()[i], yp.value()[i]) << i;
  for (int c = 0; c < 2; ++c) {
    EXPECT_EQ(bn->running_mean[c], plain.running_mean[c]);
    EXPECT_EQ(bn->running_var[c], plain.running_var[c]);
  }
  EXPECT_EQ(bn->num_batches_tracked.item(), 1.0);
  // summary() still lists both layers.
  EXPECT_NE(seq.summary({3, 2, 2, 2}).find("ReLU"), std::string::npos);
}

TEST(BatchNormLayer, MomentumNoneIsCumulativeAverage) {
  tg::nn::BatchNorm1d<double> bn(2, 1e-5, std::nullopt);
  std::vector<double> msum(2, 0), vsum(2, 0);
  for (uint64_t k = 0; k < 4; ++k) {
    const TD x = sample({3, 2}, 20 + k, -1.0 + double(k), 2.0 + 2 * double(k));
    run(bn, x);
    const auto s = channel_stats(x);
    for (int c = 0; c < 2; ++c) msum[c] += s.mean[c], vsum[c] += s.var[c] * 3 / 2;
  }
  EXPECT_EQ(bn.num_batches_tracked.item(), 4.0);
  for (int c = 0; c < 2; ++c) {
    EXPECT_NEAR(bn.running_mean[c], msum[c] / 4, 1e-12);  // initial 0 gets weight 0
    EXPECT_NEAR(bn.running_var[c], vsum[c] / 4, 1e-12);
  }
  EXPECT_EQ(bn.name(), "BatchNorm1d(2, momentum=None)");
}

TEST(BatchNormLayer, NoRunningStatsMeansBatchStatsInEvalAndNoBuffers) {
  tg::nn::BatchNorm2d<double> bn(2, 1e-5, 0.1, true, false);
  EXPECT_TRUE(bn.named_buffers().empty());
  bn.eval();
  const TD x = sample({2, 2, 2, 2}, 30);
  const auto s = channel_stats(x);
  expect_normalized(run(bn, x), x, s.mean, s.var, {1, 1}, {0, 0}, 1e-5);
}

TEST(BatchNormLayer, ParametersAndBuffersAreRegistered) {
  tg::nn::BatchNorm2d<float> bn(16);
  const auto params = bn.named_parameters();
  ASSERT_EQ(params.size(), 2u);
  EXPECT_EQ(params[0].first, "weight");
  EXPECT_EQ(params[1].first, "bias");
  EXPECT_EQ(bn.num_parameters(), 32);
  const auto buffers = bn.named_buffers();
  ASSERT_EQ(buffers.size(), 3u);
  EXPECT_EQ(buffers[0].first, "running_mean");
  EXPECT_EQ(buffers[1].first, "running_var");
  EXPECT_EQ(buffers[2].first, "num_batches_tracked");
  EXPECT_EQ(buffers[1].second[3], 1.0f);
  // The registered buffer IS the member: a training step is visible through named_buffers().
  tg::Tape<float> tape;
  tg::Tensor<float> x = tg::Tensor<float>::full({2, 16, 1, 2}, 3.0f);
  x[0] = 7.0f;
  bn(tape.constant(x));
  EXPECT_NE(buffers[0].second[0], 0.0f);
  EXPECT_EQ(buffers[2].second.item(), 1.0f);
  EXPECT_EQ(bn.name(), "BatchNorm2d(16)");
  tg::nn::BatchNorm<float> plain(4, 1e-3, 0.1, false);
  EXPECT_EQ(plain.name(), "BatchNorm(4, eps=0.001, affine=false)");
  EXPECT_TRUE(plain.named_parameters().empty());
}

TEST(BatchNormLayer, SummaryLeavesRunningStatsAlone) {
  tg::nn::BatchNorm2d<double> bn(3);
  const std::string s = bn.summary({2, 3, 4, 4});
  EXPECT_NE(s.find("BatchNorm2d(3)"), std::string::npos) << s;
  EXPECT_NE(s.find("[2,3,4,4]"), std::string::npos) << s;
  EXPECT_EQ(bn.num_batches_tracked.item(), 0.0);
  EXPECT_EQ(bn.running_var[0], 1.0);
}

TEST(BatchNormLayer, Errors) {
  tg::Tape<double> tape;
  tg::nn::BatchNorm1d<double> bn1(3);
  tg::nn::BatchNorm2d<double> bn2(3);
  tg::nn::BatchNorm<double> bn(3);
  expect_error_containing<tg::ValueError>(
      [&] {
        bn1(tape.constant(TD::ones({1, 3})));
      },
      {"BatchNorm1d(3)", "Expected more than 1 value per channel when training", "[1,3]"});
  expect_error_containing<tg::ValueError>(
      [&] {
        bn2(tape.constant(TD::ones({1, 3, 1, 1})));
      },
      {"BatchNorm2d(3)", "[1,3,1,1]"});
  expect_error_containing<tg::ShapeError>(
      [&] {
        bn1(tape.constant(TD::ones({2, 3, 4, 4})));
      },
      {"BatchNorm1d(3)", "4-D", "[2,3,4,4]"});
  expect_error_containing<tg::ShapeError>(
      [&] {
        bn2(tape.constant(TD::ones({2, 3})));
      },
      {"BatchNorm2d(3)", "4-D", "[2,3]"});
  expect_error_containing<tg::ShapeError>(
      [&] {
        bn2(tape.constant(TD::ones({2, 5, 4, 4})));
      },
      {"BatchNorm2d(3)", "[2,5,4,4]", "5 channels", "expected 3"});
  expect_error_containing<tg::ShapeError>([&] { bn(tape.constant(TD::ones({6}))); },
                                          {"BatchNorm(3)", "[6]"});
  expect_error_containing<tg::ValueError>([] { tg::nn::BatchNorm2d<double> bad(0); },
                                          {"BatchNorm2d", "num_features", "0"});
}

// momentum outside [0, 1] or NaN, and eps negative, NaN or infinite, would turn the running
// statistics or the output into NaN or zeros: rejected at construction, the option named.
TEST(BatchNormLayer, RejectsBadMomentumAndEps) {
  const double inf = std::numeric_limits<double>::infinity();
  const double nan = std::numeric_limits<double>::quiet_NaN();
  for (double m : {nan, inf, -inf, -1.0, 1.5})
    expect_error_containing<tg::ValueError>([&] { tg::nn::BatchNorm1d<double> bad(2, 1e-5, m); },
                                            {"BatchNorm1d", "momentum"});
  for (double e : {nan, inf, -1.0})
    expect_error_containing<tg::ValueError>([&] { tg::nn::BatchNorm2d<double> bad(2, e); },
                                            {"BatchNorm2d", "eps"});
  // The bounds, the cumulative average (nullopt) and eps = 0 stay valid, as in PyTorch.
  EXPECT_NO_THROW(tg::nn::BatchNorm1d<double>(2, 0.0, 0.0));
  EXPECT_NO_THROW(tg::nn::BatchNorm1d<double>(2, 1e-5, std::nullopt));
  tg::nn::BatchNorm1d<double> one(2, 1e-5, 1.0);  // running stats = the last batch's
  const TD x = sample({4, 2}, 30);
  run(one, x);
  const auto s = channel_stats(x);
  for (int c = 0; c < 2; ++c) EXPECT_NEAR(one.running_mean[c], s.mean[c], 1e-12);
}

// An empty batch, as PyTorch 1.13 treats it (BatchNorm2d(2)(torch.empty(0, 2, 3, 3))): an empty
// output, running statistics untouched, num_batches_tracked still counted by the module.
TEST(BatchNormLayer, EmptyBatchLeavesRunningStatsAndCountsTheCall) {
  tg::nn::BatchNorm2d<double> bn(2);
  bn.running_mean.copy_(TD::from({0.5, -0.5}));
  bn.running_var.copy_(TD::from({2.0, 3.0}));
  tg::Tape<double> tape;
  auto x = tape.input(TD::zeros({0, 2, 3, 3}));
  auto y = bn(x);
  EXPECT_EQ(y.shape(), (tg::Shape{0, 2, 3, 3}));
  tape.backward(tg::sum(y));
  tapegrad::testing::expect_values(bn.running_mean, {0.5, -0.5}, {2}, 0);
  tapegrad::testing::expect_values(bn.running_var, {2.0, 3.0}, {2}, 0);
  EXPECT_EQ(bn.num_batches_tracked.item(), 1.0);
  tapegrad::testing::expect_values(bn.weight.grad(), {0.0, 0.0}, {2}, 0);
  tapegrad::testing::expect_values(bn.bias.grad(), {0.0, 0.0}, {2}, 0);
  // One value per channel is still PyTorch's error.
  EXPECT_THROW(bn(tape.constant(TD::ones({1, 2, 1, 1}))), tg::ValueError);
}

// ---------------------------------------------------------------- LayerNorm

TEST(LayerNormLayer, GradcheckAffineAndPlain) {
  tg::nn::LayerNorm<double> ln(4);
  ln.weight.value().copy_(TD::from({1.5, -0.5, 0.8, 1.2}));
  ln.bias.value().copy_(TD::from({0.1, 0.2, -0.3, 0.0}));
  expect_layer_gradcheck(ln, sample({3, 4}, 40));
  ln.eval();  // identical in eval
  expect_layer_gradcheck(ln, sample({2, 3, 4}, 41));
  tg::nn::LayerNorm<double> plain({2, 3}, 1e-5, false);
  EXPECT_TRUE(plain.parameters().empty());
  expect_layer_gradcheck(plain, sample({2, 2, 3}, 42));
  tg::nn::LayerNorm<double> two({2, 3});
  two.weight.value() = sample({2, 3}, 43, 0.5, 1.5);
  two.bias.value() = sample({2, 3}, 44);
  expect_layer_gradcheck(two, sample({3, 2, 3}, 45));
}

TEST(LayerNormLayer, ValuesAgainstFormula) {
  tg::nn::LayerNorm<double> ln({2, 2}, 1e-5);
  const std::vector<double> g = {1, 2, -1, 0.5}, b = {0, 0.5, 1, -1};
  ln.weight.value().copy_(TD::from(g));
  ln.bias.value().copy_(TD::from(b));
  const TD x = sample({3, 2, 2}, 46);
  const TD y = run(ln, x);
  for (int r = 0; r < 3; ++r) {
    double mu = 0, var = 0;
    for (int j = 0; j < 4; ++j) mu += x[r * 4 + j] / 4;
    for (int j = 0; j < 4; ++j) var += std::pow(x[r * 4 + j] - mu, 2) / 4;  // biased
    for (int j = 0; j < 4; ++j)
      EXPECT_NEAR(y[r * 4 + j], (x[r * 4 + j] - mu) / std::sqrt(var + 1e-5) * g[j] + b[j], 1e-12);
  }
  ln.eval();
  EXPECT_TRUE(tg::allclose(run(ln, x), y, 0, 0));
}

TEST(LayerNormLayer, ParametersNameAndErrors) {
  tg::nn::LayerNorm<float> ln(256);
  EXPECT_EQ(ln.num_parameters(), 512);
  EXPECT_EQ(ln.named_parameters()[0].first, "weight");
  EXPECT_EQ(ln.weight.shape(), tg::Shape{256});
  EXPECT_EQ(ln.name(), "LayerNorm([256])");
  tg::nn::LayerNorm<float> ln2({4, 5}, 1e-3, false);
  EXPECT_EQ(ln2.name(), "LayerNorm([4,5], eps=0.001, elementwise_affine=false)");
  tg::Tape<float> tape;
  expect_error_containing<tg::ShapeError>(
      [&] {
        ln(tape.constant(tg::Tensor<float>::zeros({2, 128})));
      },
      {"LayerNorm([256])", "[*,256]", "[2,128]"});
  expect_error_containing<tg::ShapeError>(
      [&] {
        ln2(tape.constant(tg::Tensor<float>::zeros({4, 5, 4})));
      },
      {"LayerNorm([4,5]", "[*,4,5]", "[4,5,4]"});
  expect_error_containing<tg::ValueError>(
      [] { tg::nn::LayerNorm<float> bad(std::vector<int64_t>{}); },
      {"LayerNorm", "normalized_shape"});
  expect_error_containing<tg::ValueError>(
      [] {
        tg::nn::LayerNorm<float> bad({3, 0});
      },
      {"LayerNorm", "positive", "0"});
  // An infinite eps would make every output 0 (β): rejected like NaN and negative ones.
  for (double e : {std::numeric_limits<double>::infinity(), std::nan(""), -1e-5})
    expect_error_containing<tg::ValueError>([&] { tg::nn::LayerNorm<float> bad(4, e); },
                                            {"LayerNorm", "eps"});
  EXPECT_NO_THROW(tg::nn::LayerNorm<float>(4, 0.0));
}

}  // namespace
