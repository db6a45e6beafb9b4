// RMSprop after three steps vs the documented equations (SEMANTICS.md, torch.optim.RMSprop)
// written out here element by element.
#include <gtest/gtest.h>

#include <cmath>

#include "optim_check.hpp"
#include "tapegrad/optim/rmsprop.hpp"

namespace tg = tapegrad;
using namespace optim_check;

namespace {

// g += wd·θ; s = α s + (1−α) g²; centered: ḡ = α ḡ + (1−α) g, a = √(s − ḡ²) + eps,
// else a = √s + eps; momentum: b = μ b + g/a, θ −= lr·b; else θ −= lr·g/a.
double rmsprop_reference(int k, int64_t i, const tg::optim::RMSpropOptions& o) {
  double w = initial(k, i), s = 0, ga = 0, b = 0;
  for (int t = 0; t < 3; ++t) {
    const double g = gradient(k, i, t) + o.weight_decay * w;
    s = o.alpha * s + (1 - o.alpha) * g * g;
    double a;
    if (o.centered) {
      ga = o.alpha * ga + (1 - o.alpha) * g;
      a = std::sqrt(s - ga * ga) + o.eps;
    } else {
      a = std::sqrt(s) + o.eps;
    }
    if (o.momentum > 0) {
      b = o.momentum * b + g / a;
      w -= o.lr * b;
    } else {
      w -= o.lr * g / a;
    }
  }
  return w;
}

void check(tg::optim::RMSpropOptions o) {
  auto ps = make_params();
  tg::optim::RMSprop<double> opt(ps, o);
  run_three_steps(opt, ps);
  expect_params(ps, [&](int k, int64_t i) { return rmsprop_reference(k, i, o); });
}

}  // namespace

TEST(OptimRMSprop, Defaults) {
  check({});
  const tg::optim::RMSpropOptions o;
  EXPECT_EQ(o.lr, 1e-2);
  EXPECT_EQ(o.alpha, 0.99);
  EXPECT_EQ(o.eps, 1e-8);
}
TEST(OptimRMSprop, EpsOutsideTheSqrt) {
  // A large eps makes inside vs outside clearly different.
  check({.lr = 0.1, .alpha = 0.9, .eps = 0.5});
}
TEST(OptimRMSprop, Centered) { check({.lr = 0.01, .alpha = 0.9, .centered = true}); }
TEST(OptimRMSprop, Momentum) { check({.lr = 0.01, .momentum = 0.8}); }
TEST(OptimRMSprop, CenteredMomentumWeightDecay) {
  check({.lr = 0.02, .alpha = 0.8, .weight_decay = 0.1, .momentum = 0.5, .centered = true});
}

// s − ḡ² is a variance, never negative; rounding made it so and the weights NaN (within 1300
// steps of a constant float gradient 0.1, before the fix). Taken as 0, a = eps: |Δθ| <= lr·g/eps.
TEST(OptimRMSprop, CenteredVarianceRoundedBelowZeroIsZeroNotNaN) {
  tg::Parameter<float> p(tg::Tensor<float>::zeros({64}));
  const float lr = 1e-6f, eps = 1e-8f;
  tg::optim::RMSprop<float> opt(std::vector<tg::Parameter<float>>{p},
                                {.lr = lr, .eps = eps, .centered = true});
  for (int t = 0; t < 2000; ++t) {
    const auto before = p.value().clone();
    for (int64_t i = 0; i < 64; ++i) p.grad()[i] = 0.1f * (1 + 0.001f * float(i));
    opt.step();
    for (int64_t i = 0; i < 64; ++i) {
      ASSERT_TRUE(std::isfinite(p.value()[i])) << "step " << t << " element " << i;
      ASSERT_LE(std::abs(p.value()[i] - before[i]), lr * p.grad()[i] / eps * 1.001f);
    }
  }

  // In double, from a state whose s − ḡ² after the update is −9.9e-12: θ = −lr·0.1/eps.
  tg::Parameter<double> q(tg::Tensor<double>::zeros({1}));
  tg::optim::RMSprop<double> centered(std::vector<tg::Parameter<double>>{q},
                                      {.lr = 1e-9, .centered = true});
  q.grad()[0] = 0.1;
  centered.step();
  auto sd = centered.state_dict();  // step, square_avg, grad_avg
  ASSERT_EQ(sd[1].first, "state.0.square_avg");
  ASSERT_EQ(sd[2].first, "state.0.grad_avg");
  sd[1].second = tg::Tensor<double>::full({1}, 0.01 * (1 - 1e-9));
  sd[2].second = tg::Tensor<double>::full({1}, 0.1);
  centered.load_state_dict(sd);
  const double before = q.value()[0];
  centered.step();
  EXPECT_NEAR(q.value()[0] - before, -1e-9 * 0.1 / 1e-8, 1e-12);
}

TEST(OptimRMSprop, StateNames) {
  auto ps = make_params();
  tg::optim::RMSprop<double> opt(ps, {.momentum = 0.5, .centered = true});
  run_three_steps(opt, ps);
  const auto sd = opt.state_dict();
  ASSERT_EQ(sd.size(), 8u);
  EXPECT_EQ(sd[0].first, "state.0.step");
  EXPECT_EQ(sd[1].first, "state.0.square_avg");
  EXPECT_EQ(sd[2].first, "state.0.momentum_buffer");
  EXPECT_EQ(sd[3].first, "state.0.grad_avg");
}

TEST(OptimRMSprop, InvalidOptionsRaise) {
  auto ps = make_params();
  EXPECT_THROW(tg::optim::RMSprop<double>(ps, {.alpha = 1.5}), tg::ValueError);
  EXPECT_THROW(tg::optim::RMSprop<double>(ps, {.eps = -1}), tg::ValueError);
  EXPECT_THROW(tg::optim::RMSprop<double>(ps, {.momentum = -1}), tg::ValueError);
}
