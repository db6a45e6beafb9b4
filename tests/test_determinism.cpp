// Results are bit-identical run to run for the same seed and thread count, and agree across
// thread counts to rounding. They do not depend on the machine's load either: a team that runs
// on the calling thread alone while backing off from contention (threads.hpp) computes the
// same bits as the threads together. The models are large enough (parameters above
// parallel_threshold, batch-wide convolutions) that the multi-threaded paths run: the GEMMs,
// the convolution kernels, the optimizer's update and the clipping norm.
#include <gtest/gtest.h>
#include <omp.h>

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
// alone: every team runs on the calling thread, as while backing off from contention.
std::vector<float> train(bool conv, int threads, bool alone = false) {
  tg::set_num_threads(threads);
  auto& contention = tg::detail::contention();
  contention.alone_until = alone ? tg::detail::now_ns() + int64_t{3600} * 1'000'000'000 : 0;
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
  contention.alone_until = 0;
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
  EXPECT_TRUE(same_bits(two, train(conv, 2, true))) << "2 threads, teams on one thread";
}

}  // namespace

TEST(Determinism, MlpTrainingIsBitIdenticalRunToRun) { check(false); }
TEST(Determinism, ConvNetTrainingIsBitIdenticalRunToRun) { check(true); }

// The contention rule of threads.hpp: a team is late when its caller waited at the barrier
// longer than running the other shares itself would have taken (plus 0.2 ms of wake-up), or
// ran less than 3/4 of its own share; then teams run alone for 4 ms, 8 ms, ... up to 256 ms;
// after a team on time, for half as long.
TEST(Contention, LateTeamsBackOffDoublingAndTeamsOnTimeHalving) {
  tg::detail::Contention c;
  const int64_t ms = 1'000'000;
  // Own share 1 ms, waited 1.1 ms: on time (1 ms + 0.2 ms allowed).
  c.judge(0, 1 * ms, 2'100'000, 2, 1 * ms);
  EXPECT_FALSE(c.backing_off(2'100'001));
  EXPECT_EQ(c.late_teams.load(), 0);
  // Own share 1 ms, waited 1.3 ms: late, alone for 4 ms from the end.
  c.judge(0, 1 * ms, 2'300'000, 2, 1 * ms);
  EXPECT_EQ(c.late_teams.load(), 1);
  EXPECT_TRUE(c.backing_off(2'300'000 + 4 * ms - 1));
  EXPECT_FALSE(c.backing_off(2'300'000 + 4 * ms));
  // Late again: 8, 16, ... 256, and no longer.
  int64_t t = 10 * ms;
  for (int64_t expect : {8, 16, 32, 64, 128, 256, 256}) {
    c.judge(t, t + 50'000, t + 5 * ms, 2, 50'000);  // own 0.05 ms, waited 4.95 ms
    EXPECT_TRUE(c.backing_off(t + 5 * ms + expect * ms - 1)) << expect;
    EXPECT_FALSE(c.backing_off(t + 5 * ms + expect * ms)) << expect;
    t += 300 * ms;
  }
  // On time: alone again for 128, 64, ... 4 ms after each, then not at all.
  for (int64_t expect : {128, 64, 32, 16, 8, 4, 0}) {
    c.judge(t, t + ms, t + ms + 10'000, 2, ms);  // waited 0.01 ms
    EXPECT_EQ(c.backing_off(t + ms + 10'000 + expect * ms - 1), expect > 0) << expect;
    EXPECT_FALSE(c.backing_off(t + ms + 10'000 + expect * ms)) << expect;
    t += 300 * ms;
  }
  // The next late team starts again at 4 ms.
  c.judge(t + 2 * ms, t + 3 * ms, t + 6 * ms, 2, ms);
  EXPECT_FALSE(c.backing_off(t + 6 * ms + 4 * ms));
  EXPECT_TRUE(c.backing_off(t + 6 * ms + 4 * ms - 1));
  // With 4 shares the caller may wait three own shares.
  c.judge(t + 20 * ms, t + 21 * ms, t + 24 * ms + 100'000, 4, ms);
  EXPECT_EQ(c.late_teams.load(), 9);
  // A caller that ran 0.7 ms of its 1 ms share shared its core: late, though it did not wait.
  c.judge(t + 30 * ms, t + 31 * ms, t + 31 * ms, 2, 700'000);
  EXPECT_EQ(c.late_teams.load(), 10);
  // 0.8 ms of 1 ms is on time; a 0.09 ms share is too short to tell.
  c.judge(t + 40 * ms, t + 41 * ms, t + 41 * ms, 2, 800'000);
  c.judge(t + 50 * ms, t + 50 * ms + 90'000, t + 50 * ms + 90'000, 2, 10'000);
  EXPECT_EQ(c.late_teams.load(), 10);
}

// Under back-off a team runs its shares in order on the calling thread, numbered as in
// parallel (per-thread scratch stays apart), inside which loops stay whole; after it the
// thread is outside any team again.
TEST(Contention, TeamAloneRunsEveryShareInOrderOnTheCaller) {
  tg::set_num_threads(2);
  auto& c = tg::detail::contention();
  c.alone_until = tg::detail::now_ns() + int64_t{3600} * 1'000'000'000;
  std::vector<int> shares;
  std::vector<bool> nested_whole;
  tg::detail::run_team(2, [&](int t, int threads) {
    EXPECT_EQ(threads, 2);
    EXPECT_EQ(tg::detail::thread_index(), t);
    EXPECT_EQ(omp_get_thread_num(), 0);
    shares.push_back(t);
    int calls = 0;
    tg::detail::for_each_slice(int64_t{1} << 20, [&](int64_t off, int64_t len) {
      ++calls;
      EXPECT_EQ(off, 0);
      EXPECT_EQ(len, int64_t{1} << 20);
    });
    nested_whole.push_back(calls == 1);
  });
  c.alone_until = 0;
  tg::set_num_threads(1);
  EXPECT_EQ(shares, (std::vector<int>{0, 1}));
  EXPECT_EQ(nested_whole, (std::vector<bool>{true, true}));
  EXPECT_EQ(tg::detail::thread_index(), 0);
  EXPECT_FALSE(tg::detail::inside_team());
}
