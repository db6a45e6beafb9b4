// The vanishing/exploding-gradient phenomenon the demo (examples/vanishing_demo.cpp) shows,
// checked on a small deterministic setup: 20 hidden layers of width 64, inputs of 32 features
// drawn N(0, 1) from a seeded Generator, a batch of 16, 10 classes, cross-entropy, in double.
//
// The ratio is the gradient L2 norm of the first Dense layer over the output layer's, as
// diag::GradientMonitor reports it. Why the bounds hold at this size, roughly: backward through
// one hidden layer multiplies the gradient by act'(z) · |W|, with |W| = sqrt(fan_out · Var(w)).
//   sigmoid, PyTorch default init U(±1/sqrt(fan_in)): Var(w) = 1/(3·fan_in), |W| ≈ 0.58,
//     sigma' ≤ 1/4 (≈ 0.2 in practice), so ≈ 0.12-0.14 per layer, ≈ 1e-17 over 20 layers: the
//     bound 1e-6 (the number at 20 layers) holds with 10 orders of magnitude to spare,
//     whatever the width (|W| does not depend on it).
//   ReLU + He, tanh + Xavier, sigmoid + BatchNorm: ≈ 1 per layer, ratio near 1; [0.1, 10] leaves
//     room for the different shapes of the first (32 inputs) and last (10 outputs) layers.
//   ReLU + N(0, 1): the activations grow by sqrt(64/2) ≈ 5.7 per layer, ≈ 1e15 after 20, and the
//     gradient with them: a total norm far above 1e10.
// Measured over weight seeds 1..30 (this file uses 1): sigmoid 6e-18 .. 2e-17; ReLU + He
// 0.23 .. 0.92; tanh + Xavier 0.61 .. 1.3; sigmoid + BatchNorm 0.44 .. 0.84; N(0, 1) total norm
// at least 6e15.
#include <gtest/gtest.h>

#include <cmath>
#include <memory>
#include <vector>

#include "tapegrad/diag/monitor.hpp"
#include "tapegrad/nn/activation.hpp"
#include "tapegrad/nn/batch_norm.hpp"
#include "tapegrad/nn/dense.hpp"
#include "tapegrad/nn/init.hpp"
#include "tapegrad/nn/sequential.hpp"
#include "tapegrad/ops/loss.hpp"
#include "tapegrad/optim/sgd.hpp"

namespace tg = tapegrad;
namespace nn = tapegrad::nn;

namespace {

constexpr int64_t kIn = 32, kWidth = 64, kHidden = 20, kClasses = 10, kBatch = 16;

enum class Kind { SigmoidDefault, ReluHe, TanhXavier, SigmoidBatchNorm, ReluNormal };

// kIn → 20 × (Dense kWidth [→ BatchNorm] → activation) → Dense kClasses.
std::shared_ptr<nn::Sequential<double>> deep_mlp(Kind kind, tg::Generator& gen) {
  auto net = std::make_shared<nn::Sequential<double>>();
  for (int64_t l = 0; l <= kHidden; ++l) {
    const bool output = l == kHidden;
    auto d = std::make_shared<nn::Dense<double>>(l == 0 ? kIn : kWidth, output ? kClasses : kWidth,
                                                 true, gen);
    switch (kind) {
      case Kind::SigmoidDefault:
      case Kind::SigmoidBatchNorm:
        break;  // PyTorch's default init, as Dense draws it
      case Kind::ReluHe:
        nn::init::kaiming_normal_(d->weight, 0, "fan_in", output ? "linear" : "relu", gen);
        nn::init::zeros_(d->bias);
        break;
      case Kind::TanhXavier:
        nn::init::xavier_uniform_(d->weight, 1.0, gen);
        nn::init::zeros_(d->bias);
        break;
      case Kind::ReluNormal:
        nn::init::normal_(d->weight, 0.0, 1.0, gen);
        nn::init::zeros_(d->bias);
        break;
    }
    net->push_back(d);
    if (output) break;
    if (kind == Kind::SigmoidBatchNorm)
      net->push_back(std::make_shared<nn::BatchNorm1d<double>>(kWidth));
    if (kind == Kind::SigmoidDefault || kind == Kind::SigmoidBatchNorm)
      net->push_back(std::make_shared<nn::Sigmoid<double>>());
    else if (kind == Kind::TanhXavier)
      net->push_back(std::make_shared<nn::Tanh<double>>());
    else
      net->push_back(std::make_shared<nn::ReLU<double>>());
  }
  return net;
}

struct Batch {
  tg::Tensor<double> x;
  std::vector<int64_t> labels;
};

Batch synthetic_batch() {
  tg::Generator gen(7);
  Batch b{tg::Tensor<double>::randn({kBatch, kIn}, gen), {}};
  for (int64_t i = 0; i < kBatch; ++i) b.labels.push_back(static_cast<int64_t>(gen.below(10)));
  return b;
}

// One forward and backward at initialisation; the monitor's flags for it.
tg::diag::GradientFlags gradients_at_init(nn::Module<double>& model, const Batch& b) {
  tg::Tape<double> tape;
  model.zero_grad();
  tape.backward(tg::cross_entropy(model(tape.constant(b.x)), b.labels));
  tg::diag::GradientMonitor<double> monitor(model);
  monitor.record(0);
  return monitor.flags();
}

tg::diag::GradientFlags flags_for(Kind kind) {
  tg::Generator gen(1);
  auto model = deep_mlp(kind, gen);
  return gradients_at_init(*model, synthetic_batch());
}

// The first and last monitored layers must be the input and output Dense layers.
void expect_dense_ends(const tg::diag::GradientFlags& f) {
  ASSERT_GE(f.layers.size(), 21u);
  EXPECT_EQ(f.layers.front().module, "Dense(32, 64)");
  EXPECT_EQ(f.layers.back().module, "Dense(64, 10)");
}

TEST(Vanishing, SigmoidWithDefaultInitVanishesBelowOneMillionth) {
  const auto f = flags_for(Kind::SigmoidDefault);
  expect_dense_ends(f);
  EXPECT_LT(f.first_last_ratio, 1e-6);
  EXPECT_GT(f.first_last_ratio, 0.0);  // small, not zero: the gradient still flows
  EXPECT_TRUE(f.vanishing);
  EXPECT_FALSE(f.exploding);
  // It shrinks layer by layer: every Dense layer's norm is below the next one's.
  std::vector<double> dense;
  for (const auto& s : f.layers) dense.push_back(s.norm);
  for (size_t i = 0; i + 1 < dense.size(); ++i) EXPECT_LT(dense[i], dense[i + 1]) << i;
}

TEST(Vanishing, ReluWithHeInitKeepsTheRatioNearOne) {
  const auto f = flags_for(Kind::ReluHe);
  expect_dense_ends(f);
  EXPECT_GE(f.first_last_ratio, 0.1);
  EXPECT_LE(f.first_last_ratio, 10.0);
  EXPECT_FALSE(f.any());
}

TEST(Vanishing, TanhWithXavierInitKeepsTheRatioNearOne) {
  const auto f = flags_for(Kind::TanhXavier);
  expect_dense_ends(f);
  EXPECT_GE(f.first_last_ratio, 0.1);
  EXPECT_LE(f.first_last_ratio, 10.0);
}

TEST(Vanishing, BatchNormCuresTheSigmoidNetwork) {
  const auto f = flags_for(Kind::SigmoidBatchNorm);
  ASSERT_EQ(f.layers.size(), 41u);  // 21 Dense + 20 BatchNorm
  EXPECT_EQ(f.layers.front().module, "Dense(32, 64)");
  EXPECT_EQ(f.layers.back().module, "Dense(64, 10)");
  EXPECT_GE(f.first_last_ratio, 0.1);
  EXPECT_LE(f.first_last_ratio, 10.0);
  // Same weights as the vanishing network (same generator, same draws for the Dense layers).
  EXPECT_GT(f.first_last_ratio, 1e6 * flags_for(Kind::SigmoidDefault).first_last_ratio);
}

TEST(Vanishing, StandardNormalWeightsExplodeAndClippingBoundsTheUpdate) {
  const Batch b = synthetic_batch();
  const double lr = 0.1, max_norm = 1.0;
  // Returns the norm of the first SGD update of all parameters; total = the gradient norm.
  auto first_update = [&](bool clip, double& total) {
    tg::Generator gen(1);
    auto model = deep_mlp(Kind::ReluNormal, gen);
    const auto f = gradients_at_init(*model, b);
    EXPECT_TRUE(f.exploding);
    EXPECT_FALSE(f.non_finite);
    total = f.total_norm;
    const auto params = model->parameters();
    std::vector<tg::Tensor<double>> before;
    for (const auto& p : params) before.push_back(p.value().clone());
    tg::optim::SGD<double> sgd(params, {.lr = lr});
    if (clip) sgd.set_clip_grad_norm(max_norm);
    const double seen = sgd.step();
    EXPECT_DOUBLE_EQ(seen, total) << "the optimizer and the monitor measure the same norm";
    double sq = 0;
    for (size_t k = 0; k < params.size(); ++k)
      sq += (params[k].value().array() - before[k].array()).square().sum();
    return std::sqrt(sq);
  };
  double total = 0;
  const double unclipped = first_update(false, total);
  EXPECT_GT(total, 1e10);
  EXPECT_NEAR(unclipped / (lr * total), 1.0, 1e-9);  // plain SGD: the step is lr · gradient
  const double clipped = first_update(true, total);
  EXPECT_GT(total, 1e10);
  // clip_coef = max_norm / (total + 1e-6): the step is lr · max_norm up to rounding.
  EXPECT_LE(clipped, lr * max_norm * (1 + 1e-12));
  EXPECT_GT(clipped, 0.999 * lr * max_norm);
}

}  // namespace
