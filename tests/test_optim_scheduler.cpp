// Learning-rate schedules vs PyTorch's formulas (and the Transformer's inverse square root)
// written out here.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <limits>
#include <numbers>
#include <string>

#include "tapegrad/optim/scheduler.hpp"
#include "tapegrad/optim/sgd.hpp"
#include "test_util.hpp"

namespace tg = tapegrad;
namespace opt = tapegrad::optim;
using tapegrad::testing::expect_error_containing;

namespace {

// Two groups with base lrs 0.1 and 0.4.
std::vector<opt::ParamGroup<double>> two_groups() {
  auto a = opt::ParamGroup<double>::of({tg::Parameter<double>(tg::Tensor<double>::zeros({2}))});
  auto b = opt::ParamGroup<double>::of({tg::Parameter<double>(tg::Tensor<double>::zeros({2}))});
  b.lr = 0.4;
  return {a, b};
}

const double bases[] = {0.1, 0.4};

}  // namespace

TEST(OptimScheduler, StepLR) {
  opt::SGD<double> sgd(two_groups(), {.lr = 0.1});
  opt::StepLR sched(sgd, 3, 0.5);  // the optimizer's T is deduced
  for (int e = 0; e <= 10; ++e) {
    if (e > 0) sched.step();
    EXPECT_EQ(sched.last_epoch(), e);
    for (size_t g = 0; g < 2; ++g)
      EXPECT_NEAR(sgd.lr(g), bases[g] * std::pow(0.5, e / 3), 1e-15) << e;
  }
  EXPECT_NEAR(sched.get_last_lr()[1], 0.4 * 0.5 * 0.5 * 0.5, 1e-15);
}

TEST(OptimScheduler, CosineAnnealing) {
  opt::SGD<double> sgd(two_groups(), {.lr = 0.1});
  opt::CosineAnnealingLR sched(sgd, 10, 0.01);
  for (int e = 0; e <= 10; ++e) {
    if (e > 0) sched.step();
    for (size_t g = 0; g < 2; ++g)
      EXPECT_NEAR(sgd.lr(g),
                  0.01 + (bases[g] - 0.01) * (1 + std::cos(std::numbers::pi * e / 10)) / 2, 1e-15);
  }
  EXPECT_NEAR(sgd.lr(0), 0.01, 1e-15);  // reaches eta_min at T_max
}

TEST(OptimScheduler, LinearWarmup) {
  opt::SGD<double> sgd(two_groups(), {.lr = 0.1});
  opt::LinearWarmup sched(sgd, 4, 0.25);
  for (int e = 0; e <= 6; ++e) {
    if (e > 0) sched.step();
    const double factor = 0.25 + 0.75 * std::min(e, 4) / 4.0;
    for (size_t g = 0; g < 2; ++g) EXPECT_NEAR(sgd.lr(g), bases[g] * factor, 1e-15) << e;
  }
}

TEST(OptimScheduler, WarmupThenCosineAndSequential) {
  opt::SGD<double> sgd(two_groups(), {.lr = 0.1});
  opt::WarmupCosineLR sched(sgd, 3, 6, 0.1, 0.0);
  auto expected = [](double base, int e) {
    if (e < 3) return base * (0.1 + 0.9 * e / 3.0);
    return base * (1 + std::cos(std::numbers::pi * (e - 3) / 6.0)) / 2;
  };
  for (int e = 0; e <= 9; ++e) {
    if (e > 0) sched.step();
    for (size_t g = 0; g < 2; ++g) EXPECT_NEAR(sgd.lr(g), expected(bases[g], e), 1e-15) << e;
  }
  // Resuming at an epoch gives the same lr as stepping there.
  sched.set_epoch(4);
  EXPECT_NEAR(sgd.lr(1), expected(0.4, 4), 1e-15);

  // Generic SequentialLR: step decay, then constant-by-warmup-factor 1 (end of warm-up).
  auto a = std::make_shared<opt::StepLR<double>>(sgd, 2, 0.5);
  auto b = std::make_shared<opt::CosineAnnealingLR<double>>(sgd, 4);
  opt::SequentialLR<double> seq(sgd, {a, b}, {5});
  for (int e = 0; e <= 8; ++e) {
    if (e > 0) seq.step();
    const double want = e < 5 ? 0.1 * std::pow(0.5, e / 2)
                              : 0.1 * (1 + std::cos(std::numbers::pi * (e - 5) / 4)) / 2;
    EXPECT_NEAR(sgd.lr(0), want, 1e-15) << e;
  }
}

// Linear warm-up to the peak, then base * sqrt(warmup / e): 0.4 * sqrt(4 / 9) = 0.2667 at e = 9.
TEST(OptimScheduler, WarmupInverseSqrt) {
  opt::SGD<double> sgd(two_groups(), {.lr = 0.1});
  opt::WarmupInverseSqrtLR sched(sgd, 4);  // start_factor 1/4 by default
  const double want1[] = {0.025, 0.04375, 0.0625, 0.08125, 0.1, 0.1 * std::sqrt(0.8)};
  for (int e = 0; e <= 30; ++e) {
    if (e > 0) sched.step();
    const double f = e < 4 ? 0.25 + 0.75 * e / 4.0 : std::sqrt(4.0 / e);
    for (size_t g = 0; g < 2; ++g) EXPECT_NEAR(sgd.lr(g), bases[g] * f, 1e-15) << e;
    if (e < 6) {
      EXPECT_NEAR(sgd.lr(0), want1[e], 1e-15) << e;
    }
  }
  EXPECT_NEAR(sgd.lr(1), 0.4 * std::sqrt(4.0 / 30.0), 1e-15);
  sched.set_epoch(9);
  EXPECT_NEAR(sgd.lr(1), 0.4 * 2.0 / 3.0, 1e-15);
  opt::WarmupInverseSqrtLR from_zero(sgd, 10, 1e-3);
  EXPECT_NEAR(sgd.lr(0), 1e-4, 1e-18);
  EXPECT_THROW(opt::WarmupInverseSqrtLR(sgd, 0), tg::ValueError);
  EXPECT_THROW(opt::WarmupInverseSqrtLR(sgd, 5, 1.5), tg::ValueError);
}

TEST(OptimScheduler, BadArgumentsRaise) {
  opt::SGD<double> sgd(two_groups(), {.lr = 0.1});
  EXPECT_THROW(opt::StepLR(sgd, 0), tg::ValueError);
  EXPECT_THROW(opt::CosineAnnealingLR(sgd, 0), tg::ValueError);
  EXPECT_THROW(opt::LinearWarmup(sgd, 5, 0.0), tg::ValueError);
  auto a = std::make_shared<opt::StepLR<double>>(sgd, 2);
  EXPECT_THROW(opt::SequentialLR<double>(sgd, {a, a}, {}), tg::ValueError);
  EXPECT_THROW(opt::SequentialLR<double>(sgd, {a, a}, {0}), tg::ValueError);
  opt::SGD<double> other(two_groups());
  auto c = std::make_shared<opt::StepLR<double>>(other, 2);
  EXPECT_THROW(opt::SequentialLR<double>(sgd, {a, c}, {3}), tg::ValueError);
  EXPECT_THROW(a->set_epoch(-1), tg::ValueError);
}

// A non-finite gamma or eta_min throws at construction, naming the option (it used to surface as
// "SGD: invalid lr inf" at the first step, or a NaN lr).
TEST(OptimScheduler, NonFiniteFloatArgumentsRaise) {
  const double inf = std::numeric_limits<double>::infinity(), nan = std::nan("");
  opt::SGD<double> sgd(two_groups(), {.lr = 0.1});
  for (double gamma : {inf, nan, -0.5})
    expect_error_containing<tg::ValueError>([&] { opt::StepLR(sgd, 1, gamma); },
                                            {"StepLR", "gamma"});
  for (double eta_min : {inf, nan, -1.0})
    expect_error_containing<tg::ValueError>([&] { opt::CosineAnnealingLR(sgd, 10, eta_min); },
                                            {"CosineAnnealingLR", "eta_min"});
  for (double f : {inf, nan}) {
    expect_error_containing<tg::ValueError>([&] { opt::LinearWarmup(sgd, 5, f); },
                                            {"LinearWarmup", "start_factor"});
    expect_error_containing<tg::ValueError>([&] { opt::LinearWarmup(sgd, 5, 0.5, f); },
                                            {"LinearWarmup", "end_factor"});
    expect_error_containing<tg::ValueError>([&] { opt::WarmupInverseSqrtLR(sgd, 5, f); },
                                            {"WarmupInverseSqrtLR", "start_factor"});
  }
  EXPECT_EQ(sgd.lr(0), 0.1);  // untouched by the failed constructions
  EXPECT_EQ(sgd.lr(1), 0.4);
}

// A finite gamma whose powers overflow: the epoch whose lr would be inf throws, naming the
// scheduler, and leaves the epoch and the lrs as they were.
TEST(OptimScheduler, AnLrThatWouldOverflowRaisesAndChangesNothing) {
  opt::SGD<double> sgd(two_groups(), {.lr = 0.1});
  opt::StepLR sched(sgd, 1, 1e300);
  sched.step();
  EXPECT_NEAR(sgd.lr(0), 0.1 * 1e300, 1e286);
  expect_error_containing<tg::ValueError>([&] { sched.step(); }, {"StepLR", "epoch 2", "inf"});
  EXPECT_EQ(sched.last_epoch(), 1);
  EXPECT_NEAR(sgd.lr(0), 0.1 * 1e300, 1e286);
  EXPECT_NEAR(sgd.lr(1), 0.4 * 1e300, 1e286);
}

// step() after the largest epoch used to overflow int64_t (undefined behaviour).
TEST(OptimScheduler, StepPastTheLargestEpochRaises) {
  opt::SGD<double> sgd(two_groups(), {.lr = 0.1});
  opt::StepLR sched(sgd, 2);
  const int64_t last = std::numeric_limits<int64_t>::max();
  sched.set_epoch(last);
  EXPECT_EQ(sched.last_epoch(), last);
  EXPECT_EQ(sgd.lr(0), 0.1 * std::pow(0.1, double(last / 2)));  // 0: underflows, still finite
  expect_error_containing<tg::ValueError>([&] { sched.step(); },
                                          {"StepLR", "step()", std::to_string(last)});
  EXPECT_EQ(sched.last_epoch(), last);
  expect_error_containing<tg::ValueError>([&] { sched.set_epoch(-3); }, {"StepLR", "-3"});
}
