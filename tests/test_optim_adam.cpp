// Adam and AdamW after three steps vs the documented equations (SEMANTICS.md,
// torch.optim.Adam/AdamW) written out here element by element.
#include <gtest/gtest.h>

#include "optim_check.hpp"
#include "tapegrad/optim/adam.hpp"

namespace tg = tapegrad;
using namespace optim_check;

namespace {

struct Ref {
  double lr = 1e-3, b1 = 0.9, b2 = 0.999, eps = 1e-8, wd = 0;
  bool amsgrad = false, decoupled = false;
};

// Adam: g += wd·θ | AdamW: θ *= 1 − lr·wd; m = β1 m + (1−β1) g; v = β2 v + (1−β2) g²;
// v̂ = max(v̂, v) with amsgrad; θ −= lr/(1−β1^t) · m / (√v/√(1−β2^t) + eps).
double adam_reference(int k, int64_t i, const Ref& r, int steps = 3) {
  double w = initial(k, i), m = 0, v = 0, vmax = 0;
  for (int t = 1; t <= steps; ++t) {
    double g = gradient(k, i, t - 1);
    if (r.decoupled)
      w *= 1 - r.lr * r.wd;
    else
      g += r.wd * w;
    m = r.b1 * m + (1 - r.b1) * g;
    v = r.b2 * v + (1 - r.b2) * g * g;
    vmax = std::max(vmax, v);
    const double vv = r.amsgrad ? vmax : v;
    const double bc1 = 1 - std::pow(r.b1, t), bc2 = 1 - std::pow(r.b2, t);
    w -= r.lr / bc1 * m / (std::sqrt(vv) / std::sqrt(bc2) + r.eps);
  }
  return w;
}

void check_adam(tg::optim::AdamOptions o) {
  auto ps = make_params();
  tg::optim::Adam<double> opt(ps, o);
  run_three_steps(opt, ps);
  const Ref r{o.lr, o.betas[0], o.betas[1], o.eps, o.weight_decay, o.amsgrad, false};
  expect_params(ps, [&](int k, int64_t i) { return adam_reference(k, i, r); });
}

void check_adamw(tg::optim::AdamWOptions o) {
  auto ps = make_params();
  tg::optim::AdamW<double> opt(ps, o);
  run_three_steps(opt, ps);
  const Ref r{o.lr, o.betas[0], o.betas[1], o.eps, o.weight_decay, o.amsgrad, true};
  expect_params(ps, [&](int k, int64_t i) { return adam_reference(k, i, r); });
}

}  // namespace

TEST(OptimAdam, Defaults) {
  check_adam({});
  tg::optim::AdamOptions o;
  EXPECT_EQ(o.lr, 1e-3);
  EXPECT_EQ(o.betas[0], 0.9);
  EXPECT_EQ(o.betas[1], 0.999);
  EXPECT_EQ(o.eps, 1e-8);
  EXPECT_EQ(o.weight_decay, 0.0);
  EXPECT_EQ(tg::optim::AdamWOptions{}.weight_decay, 1e-2);
}
TEST(OptimAdam, LargeLrOtherBetasEps) {
  check_adam({.lr = 0.1, .betas = {0.8, 0.95}, .eps = 1e-3});
}
TEST(OptimAdam, CoupledWeightDecay) { check_adam({.lr = 0.05, .weight_decay = 0.3}); }

TEST(OptimAdam, Amsgrad) {
  check_adam({.lr = 0.05, .betas = {0.9, 0.5}, .amsgrad = true});
  // The running maximum does change the result here (v falls after the large first step).
  auto ps = make_params();
  tg::optim::Adam<double> opt(ps, {.lr = 0.05, .betas = {0.9, 0.5}, .amsgrad = true});
  run_three_steps(opt, ps);
  const Ref plain{0.05, 0.9, 0.5, 1e-8, 0, false, false};
  double max_diff = 0;
  for (int64_t i = 0; i < ps[0].numel(); ++i)
    max_diff = std::max(max_diff, std::abs(ps[0].value()[i] - adam_reference(0, i, plain)));
  EXPECT_GT(max_diff, 1e-3);
}

TEST(OptimAdamW, DecoupledWeightDecay) {
  check_adamw({.lr = 0.05, .weight_decay = 0.5});
  check_adamw({.lr = 0.01, .betas = {0.85, 0.99}, .weight_decay = 0.2, .amsgrad = true});
}
TEST(OptimAdamW, DefaultWeightDecayIsApplied) { check_adamw({.lr = 0.1}); }

TEST(OptimAdamW, DecayIsNotTheCoupledL2) {
  // Same settings as Adam with weight_decay: different results (the decay bypasses the moments).
  auto a = make_params(), b = make_params();
  tg::optim::Adam<double> adam(a, {.lr = 0.05, .weight_decay = 0.5});
  tg::optim::AdamW<double> adamw(b, {.lr = 0.05, .weight_decay = 0.5});
  run_three_steps(adam, a);
  run_three_steps(adamw, b);
  EXPECT_GT(std::abs(a[0].value()[1] - b[0].value()[1]), 1e-4);
  EXPECT_EQ(adamw.name(), "AdamW");
  EXPECT_TRUE(adamw.decoupled_weight_decay());
}

TEST(OptimAdam, StepCountIsPerParameter) {
  // Parameter 1 is frozen for the first step: its bias correction then uses t = 1, 2.
  auto ps = make_params();
  tg::optim::Adam<double> opt(ps, {.lr = 0.1});
  ps[1].set_requires_grad(false);
  set_grads(ps, 0);
  opt.step();
  ps[1].set_requires_grad(true);
  for (int t = 1; t < 3; ++t) {
    set_grads(ps, t);
    opt.step();
  }
  const Ref r{0.1};
  for (int64_t i = 0; i < ps[0].numel(); ++i)
    EXPECT_NEAR(ps[0].value()[i], adam_reference(0, i, r), 1e-12 * std::abs(ps[0].value()[i]));
  // Parameter 1 saw gradients of steps 1 and 2 as its own steps 1 and 2.
  for (int64_t i = 0; i < ps[1].numel(); ++i) {
    double w = initial(1, i), m = 0, v = 0;
    for (int t = 1; t <= 2; ++t) {
      const double g = gradient(1, i, t);
      m = 0.9 * m + 0.1 * g;
      v = 0.999 * v + 0.001 * g * g;
      w -= 0.1 / (1 - std::pow(0.9, t)) * m /
           (std::sqrt(v) / std::sqrt(1 - std::pow(0.999, t)) + 1e-8);
    }
    EXPECT_NEAR(ps[1].value()[i], w, 1e-12 * std::abs(w));
  }
  const auto sd = opt.state_dict();
  ASSERT_EQ(sd.size(), 6u);
  EXPECT_EQ(sd[0].first, "state.0.step");
  EXPECT_EQ(std::get<tg::Tensor<int64_t>>(sd[0].second).item(), 3);
  EXPECT_EQ(tg::shape_of(sd[0].second).rank(), 0);
  EXPECT_EQ(sd[1].first, "state.0.exp_avg");
  EXPECT_EQ(sd[2].first, "state.0.exp_avg_sq");
  EXPECT_EQ(sd[3].first, "state.1.step");
  EXPECT_EQ(std::get<tg::Tensor<int64_t>>(sd[3].second).item(), 2);
}

TEST(OptimAdam, InvalidOptionsRaise) {
  auto ps = make_params();
  EXPECT_THROW(tg::optim::Adam<double>(ps, {.betas = {1.0, 0.999}}), tg::ValueError);
  EXPECT_THROW(tg::optim::Adam<double>(ps, {.betas = {0.9, -0.1}}), tg::ValueError);
  EXPECT_THROW(tg::optim::Adam<double>(ps, {.eps = -1}), tg::ValueError);
  try {
    tg::optim::AdamW<double> opt(ps, {.betas = {0.9, 1.5}});
    ADD_FAILURE();
  } catch (const tg::ValueError& e) {
    EXPECT_NE(std::string(e.what()).find("AdamW: invalid beta parameter at index 1"),
              std::string::npos)
        << e.what();
  }
}

TEST(OptimAdam, FloatTracksDoubleReference) {
  tg::Parameter<float> p(tg::Tensor<float>::from({1.0f, -2.0f, 0.5f, 0.0f}));
  tg::optim::AdamW<float> opt({p}, {.lr = 0.01, .amsgrad = true});
  const double g0[] = {0.3, -0.2, 1.0, 0.0};
  double w[] = {1.0, -2.0, 0.5, 0.0}, m[4] = {}, v[4] = {}, vm[4] = {};
  for (int t = 1; t <= 3; ++t) {
    for (int i = 0; i < 4; ++i) {
      const double g = g0[i] / t;
      p.grad()[i] = static_cast<float>(g);
      w[i] *= 1 - 0.01 * 1e-2;
      m[i] = 0.9 * m[i] + 0.1 * g;
      v[i] = 0.999 * v[i] + 0.001 * g * g;
      vm[i] = std::max(vm[i], v[i]);
      w[i] -= 0.01 / (1 - std::pow(0.9, t)) * m[i] /
              (std::sqrt(vm[i]) / std::sqrt(1 - std::pow(0.999, t)) + 1e-8);
    }
    opt.step();
  }
  for (int i = 0; i < 4; ++i) EXPECT_NEAR(p.value()[i], w[i], 1e-6);
}
