// SGD after three steps vs the documented equations (SEMANTICS.md, torch.optim.SGD) written
// out here element by element.
#include <gtest/gtest.h>

#include "optim_check.hpp"
#include "tapegrad/optim/sgd.hpp"

namespace tg = tapegrad;
using namespace optim_check;

namespace {

// The reference: d = g + wd·θ; b = d (first step) or μ·b + (1−τ)·d; d = d + μ·b (Nesterov) or b;
// θ = θ − lr·d.
double sgd_reference(int k, int64_t i, tg::optim::SGDOptions o) {
  double w = initial(k, i), b = 0;
  for (int t = 0; t < 3; ++t) {
    double d = gradient(k, i, t) + o.weight_decay * w;
    if (o.momentum != 0) {
      b = t == 0 ? d : o.momentum * b + (1 - o.dampening) * d;
      d = o.nesterov ? d + o.momentum * b : b;
    }
    w = w - o.lr * d;
  }
  return w;
}

void check(tg::optim::SGDOptions o) {
  auto ps = make_params();
  tg::optim::SGD<double> opt(ps, o);
  run_three_steps(opt, ps);
  expect_params(ps, [&](int k, int64_t i) { return sgd_reference(k, i, o); });
}

}  // namespace

TEST(OptimSGD, Plain) { check({.lr = 0.1}); }
TEST(OptimSGD, CoupledWeightDecay) { check({.lr = 0.1, .weight_decay = 0.3}); }
TEST(OptimSGD, Momentum) { check({.lr = 0.1, .momentum = 0.9}); }

TEST(OptimSGD, MomentumFirstStepHasNoDampening) {
  // With dampening 0.5 the first buffer is g itself, not 0.5·g.
  auto ps = make_params();
  tg::optim::SGD<double> opt(ps, {.lr = 0.1, .momentum = 0.9, .dampening = 0.5});
  set_grads(ps, 0);
  opt.step();
  for (int64_t i = 0; i < ps[0].numel(); ++i)
    EXPECT_DOUBLE_EQ(ps[0].value()[i], initial(0, i) - 0.1 * gradient(0, i, 0));
  check({.lr = 0.1, .momentum = 0.9, .dampening = 0.5, .weight_decay = 0.2});
}

TEST(OptimSGD, Nesterov) { check({.lr = 0.05, .momentum = 0.8, .nesterov = true}); }
TEST(OptimSGD, NesterovWithWeightDecay) {
  check({.lr = 0.05, .momentum = 0.8, .weight_decay = 0.1, .nesterov = true});
}

TEST(OptimSGD, StateIsTheMomentumBufferOnly) {
  auto ps = make_params();
  tg::optim::SGD<double> plain(ps, {.lr = 0.1});
  run_three_steps(plain, ps);
  EXPECT_TRUE(plain.state_dict().empty());

  auto qs = make_params();
  tg::optim::SGD<double> opt(qs, {.lr = 0.1, .momentum = 0.9});
  run_three_steps(opt, qs);
  const auto sd = opt.state_dict();
  ASSERT_EQ(sd.size(), 2u);
  EXPECT_EQ(sd[0].first, "state.0.momentum_buffer");
  EXPECT_EQ(sd[1].first, "state.1.momentum_buffer");
  EXPECT_EQ(std::get<tg::Tensor<double>>(sd[0].second).shape(), (tg::Shape{2, 3}));
}

TEST(OptimSGD, InvalidOptionsRaise) {
  auto ps = make_params();
  auto expect_value_error = [&](tg::optim::SGDOptions o, const std::string& part) {
    try {
      tg::optim::SGD<double> opt(ps, o);
      ADD_FAILURE() << "no exception for " << part;
    } catch (const tg::ValueError& e) {
      const std::string msg = e.what();
      EXPECT_NE(msg.find("SGD"), std::string::npos) << msg;
      EXPECT_NE(msg.find(part), std::string::npos) << msg;
    }
  };
  expect_value_error({.lr = 0.1, .nesterov = true}, "Nesterov");
  expect_value_error({.lr = 0.1, .momentum = 0.9, .dampening = 0.1, .nesterov = true}, "Nesterov");
  expect_value_error({.lr = -1}, "lr");
  expect_value_error({.lr = 0.1, .momentum = -0.5}, "momentum");
  expect_value_error({.lr = 0.1, .weight_decay = -1}, "weight_decay");
}

TEST(OptimSGD, FloatMatchesDoubleReference) {
  tg::Parameter<float> p(tg::Tensor<float>::from({1.0f, -2.0f, 0.5f}));
  tg::optim::SGD<float> opt({p}, {.lr = 0.1, .momentum = 0.9, .nesterov = true});
  const double g[] = {0.3, -0.2, 1.0};
  double w[] = {1.0, -2.0, 0.5}, b[3] = {};
  for (int t = 0; t < 2; ++t) {
    for (int i = 0; i < 3; ++i) {
      p.grad()[i] = static_cast<float>(g[i] * (t + 1));
      const double d = g[i] * (t + 1);
      b[i] = t == 0 ? d : 0.9 * b[i] + d;
      w[i] -= 0.1 * (d + 0.9 * b[i]);
    }
    opt.step();
  }
  for (int i = 0; i < 3; ++i) EXPECT_NEAR(p.value()[i], w[i], 1e-6);
}
