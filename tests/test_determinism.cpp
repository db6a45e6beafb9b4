// Results are bit-identical run to run for the same seed and thread count, and agree across
// thread counts to rounding. The models are large enough (parameters above
// parallel_threshold, batch-wide convolutions) that the multi-threaded paths run: the GEMMs,
// the convolution kernels, the optimizer's update and the clipping norm.
#include <gtest/gtest.h>

#include <cstring>
#include <memory>
#include <vector>

#include "tapegrad/tapegrad.hpp"

namespace {

namespace tg = tapegrad;
namespace nn = tapegrad::nn;

std::shared_ptr<nn::Sequential<float>> mlp() {
  auto m = std::make_shared<nn::Sequential<float>>();
  m->push_back(std::make_shared<nn::Dense<float>>(300, 200));
  m->push_back(std::make_shared<nn::Sigmoid<float>>());
  m->push_back(std::make_shared<nn::Dense<float>>(200, 200));
  m->push_back(std::make_shared<nn::LayerNorm<float>>(200));
  m->push_back(std::make_shared<nn::ReLU<float>>());
  m->push_back(std::make_shared<nn::Dense<float>>(200, 10));
  return m;
}

std::shared_ptr<nn::Sequential<float>> convnet() {
  auto m = std::make_shared<nn::Sequential<float>>();
  m->push_back(std::make_shared<nn::Conv2D<float>>(1, 8, 3, 1, 1, 1, false));
  m->push_back(std::make_shared<nn::BatchNorm2d<float>>(8));
  m->push_back(std::make_shared<nn::ReLU<float>>());
  m->push_back(std::make_shared<nn::BasicBlock<float>>(8, 16, 2));
  m->push_back(std::make_shared<nn::GlobalAvgPool2D<float>>());
  m->push_back(std::make_shared<nn::Dense<float>>(16, 10));
  return m;
}

// Trains a freshly built model (the same seed every time) for 4 steps of SGD with momentum
// and a clipping bound small enough to act, at the given thread count; returns every
// parameter's values and gradients after the last step, and the losses.
std::vector<float> train(bool conv, int threads) {
  tg::set_num_threads(threads);
  nn::default_generator().manual_seed(11);  // the layers' initialisation
  auto model = conv ? convnet() : mlp();
  tg::Generator g(12);
  const tg::Shape in = conv ? tg::Shape{24, 1, 16, 16} : tg::Shape{64, 300};
  const auto x = tg::Tensor<float>::randn(in, g);
  std::vector<int64_t> labels;
  for (int64_t i = 0; i < in[0]; ++i) labels.push_back(static_cast<int64_t>(g.below(10)));
  tg::optim::SGD<float> opt(model->parameters(), {.lr = 0.1, .momentum = 0.9});
  opt.set_clip_grad_norm(0.5);
  tg::Tape<float> tape;
  std::vector<float> out;
  for (int step = 0; step < 4; ++step) {
    tape.clear();
    opt.zero_grad();
    auto loss = tg::cross_entropy((*model)(tape.constant(x)), labels);
    tape.backward(loss);
    opt.step();
    out.push_back(loss.item());
  }
  for (const auto& p : model->parameters()) {
    out.insert(out.end(), p.value().data(), p.value().data() + p.numel());
    out.insert(out.end(), p.grad().data(), p.grad().data() + p.numel());
  }
  tg::set_num_threads(1);
  return out;
}

bool same_bits(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

void check(bool conv) {
  const auto one = train(conv, 1), two = train(conv, 2);
  EXPECT_TRUE(same_bits(one, train(conv, 1))) << "1 thread, run to run";
  EXPECT_TRUE(same_bits(two, train(conv, 2))) << "2 threads, run to run";
  ASSERT_EQ(one.size(), two.size());
  double worst = 0;
  for (size_t i = 0; i < one.size(); ++i)
    worst = std::max(worst,
                     std::abs(double(one[i]) - double(two[i])) / (1e-3 + std::abs(double(one[i]))));
  EXPECT_LT(worst, 1e-3) << "1 vs 2 threads";
  EXPECT_NE(one[0], one[3]);  // the steps did change the model
}

}  // namespace

TEST(Determinism, MlpTrainingIsBitIdenticalRunToRun) { check(false); }
TEST(Determinism, ConvNetTrainingIsBitIdenticalRunToRun) { check(true); }
