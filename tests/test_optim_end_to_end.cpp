// End to end: a 10-layer ReLU MLP with weights drawn N(0, 1) has exploding gradients. Plain SGD
// diverges; the same SGD with clip-by-global-norm 1.0 trains.
#include <gtest/gtest.h>

#include <cmath>
#include <memory>
#include <vector>

#include "tapegrad/nn/activation.hpp"
#include "tapegrad/nn/dense.hpp"
#include "tapegrad/nn/init.hpp"
#include "tapegrad/nn/sequential.hpp"
#include "tapegrad/ops/loss.hpp"
#include "tapegrad/optim/sgd.hpp"

namespace tg = tapegrad;

namespace {

// 4 -> 9 x (Dense 8 + ReLU) -> Dense 1, weights N(0, 1), zero biases; float32.
std::shared_ptr<tg::nn::Sequential<float>> deep_relu_mlp(tg::Generator& gen) {
  auto net = std::make_shared<tg::nn::Sequential<float>>();
  int64_t in = 4;
  for (int l = 0; l < 10; ++l) {
    const int64_t out = l == 9 ? 1 : 8;
    auto d = std::make_shared<tg::nn::Dense<float>>(in, out, true, gen);
    tg::nn::init::normal_(d->weight.value(), 0.0, 1.0, gen);
    d->bias.value().zero_();
    net->push_back(d);
    if (l < 9) net->push_back(std::make_shared<tg::nn::ReLU<float>>());
    in = out;
  }
  return net;
}

struct History {
  std::vector<double> losses, norms;
};

// 20 full-batch steps of SGD (lr 0.01) on y = sin(x0) + x1·x2, with or without clipping.
History train(bool clip) {
  tg::Generator gen(42);
  auto net = deep_relu_mlp(gen);
  const auto x = tg::Tensor<float>::randn({64, 4}, gen);
  tg::Tensor<float> y({64, 1});
  for (int64_t i = 0; i < 64; ++i) y[i] = std::sin(x(i, 0)) + x(i, 1) * x(i, 2);
  tg::optim::SGD<float> sgd(net->named_parameters(), {.lr = 0.01});
  if (clip) sgd.set_clip_grad_norm(1.0);
  tg::Tape<float> tape;
  History r;
  for (int step = 0; step < 20; ++step) {
    tape.clear();
    sgd.zero_grad();
    auto loss = tg::mse_loss((*net)(tape.constant(x)), y);
    r.losses.push_back(loss.item());
    tape.backward(loss);
    r.norms.push_back(sgd.step());
  }
  return r;
}

}  // namespace

TEST(OptimEndToEnd, PlainSgdDivergesOnExplodingGradients) {
  const History r = train(false);
  EXPECT_LT(r.losses[0], 1e6);  // a finite, moderate start...
  EXPECT_GT(r.norms[0], 1e4);   // ...with an exploding gradient
  bool diverged = false;
  for (double l : r.losses) diverged = diverged || !std::isfinite(l) || l > 1e6;
  EXPECT_TRUE(diverged);
}

TEST(OptimEndToEnd, ClipByGlobalNormTrainsAtTheSameLr) {
  const History r = train(true);
  for (size_t s = 0; s < r.losses.size(); ++s) {
    EXPECT_TRUE(std::isfinite(r.losses[s])) << "step " << s;
    EXPECT_LE(r.losses[s], r.losses[0]) << "step " << s;
  }
  EXPECT_LT(r.losses.back(), r.losses[0] / 10);
  EXPECT_GT(r.norms[0], 1e4);  // clipping was active: the pre-clip norms are large
  EXPECT_DOUBLE_EQ(r.losses[0], train(false).losses[0]);  // same network, same start
}
