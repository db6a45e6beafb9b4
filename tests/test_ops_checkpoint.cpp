// Activation checkpointing (ops/checkpoint.hpp, nn/checkpoint.hpp, Sequential's
// checkpoint_every): the gradients equal the unchecked run's bit for bit (double), Dropout
// masks are replayed, BatchNorm's statistics move once per step, and the main tape keeps only
// the segments' outputs.
#include <gtest/gtest.h>

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "tapegrad/tapegrad.hpp"
#include "test_util.hpp"

namespace tg = tapegrad;
namespace nn = tapegrad::nn;
using tapegrad::testing::same_bits;

namespace {

using TD = tg::Tensor<double>;
using Vars = std::vector<tg::Var<double>>;

TEST(Checkpoint, GradcheckTwoInputs) {
  tg::Generator g(1);
  const TD a = TD::randn({3, 4}, g), b = TD::randn({3, 4}, g);
  auto r = tg::gradcheck(
      [](tg::Tape<double>&, const Vars& v) {
        return tg::checkpoint(
            [](const tg::Var<double>& x, const tg::Var<double>& y) {
              return tg::tanh(x * y) + tg::square(x);
            },
            v[0], v[1]);
      },
      {a, b});
  EXPECT_TRUE(r) << r;
}

// An MLP with Dropout: its parameter and input gradients, losses and Dropout counters.
struct StepResult {
  std::vector<TD> grads;
  double loss = 0;
  std::vector<uint64_t> dropout_calls;
  tg::TapeMemoryStats memory;
};

std::shared_ptr<nn::Sequential<double>> mlp_with_dropout() {
  tg::Generator g(7);
  auto m = std::make_shared<nn::Sequential<double>>();
  for (int i = 0; i < 6; ++i) {
    m->push_back(std::make_shared<nn::Dense<double>>(i == 0 ? 5 : 12, 12, true, g));
    m->push_back(std::make_shared<nn::Tanh<double>>());
    m->push_back(std::make_shared<nn::Dropout<double>>(0.25, g));
  }
  m->push_back(std::make_shared<nn::Dense<double>>(12, 3, true, g));
  return m;
}

// Two training steps (forward + backward, the gradients of the second) with `checkpointed`
// choosing how the model runs.
template <class Forward>
StepResult two_steps(nn::Sequential<double>& model, Forward forward) {
  StepResult r;
  tg::Generator g(11);
  const TD x0 = TD::randn({8, 5}, g);
  tg::Tape<double> tape;
  for (int step = 0; step < 2; ++step) {
    tape.clear();
    model.zero_grad();
    auto x = tape.input(x0);
    auto loss = tg::cross_entropy(forward(x), {0, 1, 2, 0, 1, 2, 0, 1});
    tape.backward(loss);
    r.loss = loss.item();
    r.grads.clear();
    r.grads.push_back(x.grad().clone());
    for (const auto& p : model.parameters()) r.grads.push_back(p.grad().clone());
  }
  model.apply([&](nn::Module<double>& m) {
    if (auto* d = dynamic_cast<nn::Dropout<double>*>(&m)) r.dropout_calls.push_back(d->calls());
  });
  r.memory = tape.memory_stats();
  return r;
}

void expect_same(const StepResult& a, const StepResult& b) {
  EXPECT_EQ(a.loss, b.loss);
  ASSERT_EQ(a.grads.size(), b.grads.size());
  for (size_t k = 0; k < a.grads.size(); ++k) EXPECT_TRUE(same_bits(a.grads[k], b.grads[k])) << k;
  EXPECT_EQ(a.dropout_calls, b.dropout_calls);
}

TEST(Checkpoint, ModuleSegmentReplaysDropoutAndGivesTheSameGradients) {
  auto plain = mlp_with_dropout();
  const StepResult expected =
      two_steps(*plain, [&](const tg::Var<double>& x) { return (*plain)(x); });
  auto model = mlp_with_dropout();
  const StepResult got =
      two_steps(*model, [&](const tg::Var<double>& x) { return nn::checkpoint(*model, x); });
  expect_same(expected, got);
  EXPECT_EQ(got.dropout_calls, std::vector<uint64_t>(6, 2));  // one mask per step, not two
  // The main tape keeps the input leaf's gradient and the segment's output; the scratch tape
  // holds the intermediate values of one run.
  EXPECT_LT(got.memory.values, expected.memory.values / 10);
  EXPECT_GT(got.memory.scratch, 0);
}

TEST(Checkpoint, SequentialEveryKLayersGivesTheSameGradients) {
  auto plain = mlp_with_dropout();
  const StepResult expected =
      two_steps(*plain, [&](const tg::Var<double>& x) { return (*plain)(x); });
  for (size_t k : {1, 3, 6, 9}) {
    auto model = mlp_with_dropout();
    model->checkpoint_every(k);
    const StepResult got = two_steps(*model, [&](const tg::Var<double>& x) { return (*model)(x); });
    expect_same(expected, got);
    // Every module alone saves nothing (each output is kept, now without in-place sharing);
    // 3 modules (Dense, Tanh, Dropout) keep 1 value of 2; 6 or 9 keep 1 of 4 or of 6.
    if (k == 3) {
      EXPECT_LT(got.memory.values, expected.memory.values * 0.52) << k;
    }
    if (k >= 6) {
      EXPECT_LT(got.memory.values, expected.memory.values * 0.3) << k;
    }
    // The parameters' gradients exist either way, inside segments or not.
    EXPECT_GT(expected.memory.param_grads, 0);
    EXPECT_EQ(got.memory.param_grads, expected.memory.param_grads) << k;
  }
  // Without gradients (evaluation) the layers simply run.
  auto model = mlp_with_dropout();
  model->checkpoint_every(2);
  tg::NoGradGuard no_grad;
  tg::Tape<double> tape;
  auto y = (*model)(tape.constant(TD::ones({2, 5})));
  EXPECT_EQ(y.shape(), (tg::Shape{2, 3}));
  EXPECT_EQ(tape.memory_stats().scratch, 0);
}

// Only parameters need gradients (the input is data): the segment still runs backward.
TEST(Checkpoint, ParametersGetGradientsWhenTheInputIsData) {
  auto plain = mlp_with_dropout();
  auto model = mlp_with_dropout();
  tg::Generator g(3);
  const TD x0 = TD::randn({4, 5}, g);
  for (auto* m : {plain.get(), model.get()}) {
    tg::Tape<double> tape;
    m->zero_grad();
    auto x = tape.constant(x0);
    auto y = m == model.get() ? nn::checkpoint(*m, x) : (*m)(x);
    tape.backward(tg::sum(y));
  }
  const auto a = plain->parameters(), b = model->parameters();
  for (size_t k = 0; k < a.size(); ++k) EXPECT_TRUE(same_bits(a[k].grad(), b[k].grad())) << k;
}

// BatchNorm inside a segment: its running statistics move once per step, as without it.
TEST(Checkpoint, BatchNormStatisticsMoveOncePerStep) {
  auto make = [] {
    tg::Generator g(5);
    return std::make_shared<nn::Sequential<double>>(
        std::make_shared<nn::Conv2D<double>>(1, 3, 3, 1, 1, 1, false, g),
        std::make_shared<nn::BatchNorm2d<double>>(3), std::make_shared<nn::ReLU<double>>(),
        std::make_shared<nn::Conv2D<double>>(3, 2, 3, 1, 1, 1, true, g),
        std::make_shared<nn::GlobalAvgPool2D<double>>());
  };
  auto plain = make(), model = make();
  model->checkpoint_every(3);  // layers 0-2 checkpointed, 3-4 not
  tg::Generator g(9);
  const TD x0 = TD::randn({4, 1, 6, 6}, g);
  for (auto* m : {plain.get(), model.get()})
    for (int step = 0; step < 3; ++step) {
      tg::Tape<double> tape;
      m->zero_grad();
      tape.backward(tg::sum((*m)(tape.input(x0))));
    }
  const auto ba = plain->named_buffers(), bb = model->named_buffers();
  ASSERT_EQ(ba.size(), bb.size());
  for (size_t k = 0; k < ba.size(); ++k)
    EXPECT_TRUE(same_bits(ba[k].second, bb[k].second)) << ba[k].first;
  EXPECT_EQ(model->at<nn::BatchNorm2d<double>>(1).num_batches_tracked.item(), 3.0);
  const auto a = plain->parameters(), b = model->parameters();
  for (size_t k = 0; k < a.size(); ++k) EXPECT_TRUE(same_bits(a[k].grad(), b[k].grad())) << k;
}

// A SweepListener (DistributedDataParallel's hook) hears a parameter's gradient only once it is
// final: a parameter used inside a segment and again after it is reported once the sweep has
// run the segment's backward; one used only inside a segment is not reported (the listener
// takes it at sweep_done); one used only before the first segment as without checkpoints.
struct Listener : tg::SweepListener<double> {
  std::vector<std::pair<const void*, const char*>> names;
  std::vector<std::pair<std::string, double>> events;  // name, gradient when reported
  void gradient_ready(const tg::Parameter<double>& p) override {
    for (const auto& [k, n] : names)
      if (k == p.key()) events.emplace_back(n, p.grad()[0]);
  }
  void sweep_done() override { events.emplace_back("done", 0.0); }
};

TEST(Checkpoint, ListenerHearsGradientsOnceFinal) {
  tg::Parameter<double> a(TD::from({2.0})), w(TD::from({3.0})), v(TD::from({5.0}));
  Listener r;
  r.names = {{a.key(), "a"}, {w.key(), "w"}, {v.key(), "v"}};
  tg::Tape<double> tape;
  tape.set_listener(&r);
  auto x = tape.constant(TD::from({1.0}));
  auto h = x * tape.param(a);  // a: before the segment
  auto y = tg::checkpoint(
      [&](const tg::Var<double>& z) {
        tg::Tape<double>& t = z.tape();
        return z * t.param(w) * t.param(v);  // w and v inside the segment
      },
      h);
  auto loss = y * tape.param(w);  // w again, after it: loss = a x w^2 v
  tape.backward(loss);
  // d/dw = 2 a x w v = 60 (both uses), d/da = x w^2 v = 45; v is left to sweep_done.
  const std::vector<std::pair<std::string, double>> expected{
      {"w", 60.0}, {"a", 45.0}, {"done", 0.0}};
  EXPECT_EQ(r.events, expected);
  EXPECT_DOUBLE_EQ(v.grad()[0], 2.0 * 3.0 * 3.0);
}

}  // namespace
