// set_flush_denormal: subnormal operands and results become zero on the calling thread and in
// every share of the parallel loops it starts; off, they are kept. Values are powers of two, so
// each product is exact and worked out by hand: 2^-126 is float's smallest normal number, 2^-140
// and 2^-127 are subnormal.
#include <gtest/gtest.h>
#include <omp.h>

#include <cmath>
#include <vector>

#include "tapegrad/denormal.hpp"
#include "tapegrad/ops/elementwise.hpp"
#include "tapegrad/tape.hpp"
#include "tapegrad/threads.hpp"

namespace {

namespace tg = tapegrad;

// Leaves the calling thread's mode and thread count as a test found them, even when it fails.
class FlushDenormal : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!TAPEGRAD_HAS_FLUSH_DENORMAL) GTEST_SKIP() << "no flush-denormal mode on this CPU";
  }
  void TearDown() override {
    tg::set_flush_denormal(false);
    tg::set_num_threads(threads_);
  }
  const int threads_ = tg::get_num_threads();
};

float pow2(int e) { return std::ldexp(1.0f, e); }

std::vector<float> values(const tg::Tensor<float>& t) {
  return std::vector<float>(t.data(), t.data() + t.numel());
}

TEST_F(FlushDenormal, SubnormalOperandsAndResultsAreZeroOnlyWhileOn) {
  tg::set_num_threads(1);
  const auto x = tg::Tensor<float>::from({pow2(-126), pow2(-140), 1.5f, -pow2(-130)});
  const auto run = [&] {
    tg::Tape<float> tape;
    return values((tape.input(x) * 0.5f).value());
  };
  ASSERT_TRUE(tg::set_flush_denormal(false));
  EXPECT_EQ(run(), (std::vector<float>{pow2(-127), pow2(-141), 0.75f, -pow2(-131)}));
  ASSERT_TRUE(tg::set_flush_denormal(true));
  // A normal operand with a subnormal result, then a subnormal operand: both zero.
  EXPECT_EQ(run(), (std::vector<float>{0.0f, 0.0f, 0.75f, 0.0f}));
  ASSERT_TRUE(tg::set_flush_denormal(false));
  EXPECT_EQ(run()[1], pow2(-141));

  // Doubles too: 2^-1022 is the smallest normal double.
  tg::set_flush_denormal(true);
  tg::Tape<double> tape;
  const auto y = tape.input(tg::Tensor<double>::full({1}, std::ldexp(1.0, -1022))) * 0.5;
  EXPECT_EQ(y.value()[0], 0.0);
}

TEST_F(FlushDenormal, AGradientThatFallsBelowTheNormalRangeIsZero) {
  tg::set_num_threads(1);
  const auto grad_of = [&](bool flush) {
    tg::set_flush_denormal(flush);
    tg::Tape<float> tape;
    const auto x = tape.input(tg::Tensor<float>::full({1}, 3.0f));
    tape.backward(x * pow2(-70) * pow2(-70));  // d/dx = 2^-140
    return x.grad()[0];
  };
  EXPECT_EQ(grad_of(false), pow2(-140));
  EXPECT_EQ(grad_of(true), 0.0f);
}

TEST_F(FlushDenormal, EveryShareOfAParallelLoopRunsInTheCallersModeAndLeavesItsThreadAsFound) {
  tg::set_num_threads(2);
  // The OpenMP threads start with flushing off, whatever earlier tests left.
#pragma omp parallel num_threads(2)
  tg::detail::set_denormal_mode(0);
  tg::set_flush_denormal(true);
  std::vector<unsigned> share_mode(2, 0);
  tg::detail::run_team(2, [&](int t, int) { share_mode[t] = tg::detail::denormal_mode(); });
  EXPECT_EQ(share_mode[0], tg::detail::flush_denormal_bits);
  EXPECT_EQ(share_mode[1], tg::detail::flush_denormal_bits);
  std::vector<unsigned> thread_mode(2, 1);
#pragma omp parallel num_threads(2)
  thread_mode[omp_get_thread_num()] = tg::detail::denormal_mode();
  EXPECT_EQ(thread_mode[0], tg::detail::flush_denormal_bits);  // the calling thread's own
  if (omp_get_max_threads() > 1) {
    EXPECT_EQ(thread_mode[1], 0u);  // restored after its share
  }

  // An elementwise op large enough to be cut among the threads: every element flushed.
  const int64_t n = 4 * tg::parallel_threshold;
  const auto x = tg::Tensor<float>::full({n}, pow2(-140));
  const auto product = [&](bool flush) {
    tg::set_flush_denormal(flush);
    tg::Tape<float> tape;
    return (tape.input(x) * 0.5f).value();
  };
  const auto on = product(true);
  const auto off = product(false);
  int64_t zeros = 0, kept = 0;
  for (int64_t i = 0; i < n; ++i) {
    zeros += on[i] == 0.0f;
    kept += off[i] == pow2(-141);
  }
  EXPECT_EQ(zeros, n);
  EXPECT_EQ(kept, n);
}

}  // namespace
