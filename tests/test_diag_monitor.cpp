#include <gtest/gtest.h>

#include <cmath>
#include <functional>
#include <limits>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "tapegrad/diag/monitor.hpp"
#include "tapegrad/nn/activation.hpp"
#include "tapegrad/nn/dense.hpp"
#include "tapegrad/nn/sequential.hpp"
#include "tapegrad/nn/transformer.hpp"
#include "tapegrad/ops/loss.hpp"
#include "tapegrad/optim/sgd.hpp"
#include "test_util.hpp"

namespace tg = tapegrad;
namespace diag = tapegrad::diag;
using tapegrad::testing::error_message;
using tapegrad::testing::read_text_file;
using tapegrad::testing::tmp_path;

namespace {

// Stand-ins for the real layers: a dense layer with weight [out, in] and bias [out], and a
// parameter-free activation, named as the real modules are.
class MonDense : public tg::nn::Module<double> {
 public:
  MonDense(int64_t in, int64_t out) : in_(in), out_(out) {
    weight = register_parameter("weight", tg::Tensor<double>::zeros({out, in}));
    bias = register_parameter("bias", tg::Tensor<double>::zeros({out}));
  }
  tg::Var<double> forward(const tg::Var<double>& x) override { return x; }
  std::string name() const override {
    return "Dense(" + std::to_string(in_) + ", " + std::to_string(out_) + ")";
  }
  tg::Parameter<double> weight, bias;

 private:
  int64_t in_, out_;
};

class MonNamed : public tg::nn::Module<double> {
 public:
  explicit MonNamed(std::string n) : n_(std::move(n)) {}
  tg::Var<double> forward(const tg::Var<double>& x) override { return x; }
  std::string name() const override { return n_; }

 private:
  std::string n_;
};

// Dense, activation, Dense, activation, Dense: layers "0", "2", "4" as in a Sequential.
class MonStack : public tg::nn::Module<double> {
 public:
  explicit MonStack(const std::string& activation, const std::string& extra = "") {
    for (int i = 0; i < 3; ++i) {
      dense.push_back(register_module(std::to_string(2 * i), std::make_shared<MonDense>(2, 2)));
      if (i < 2) register_module(std::to_string(2 * i + 1), std::make_shared<MonNamed>(activation));
    }
    if (!extra.empty()) register_module("extra", std::make_shared<MonNamed>(extra));
  }
  tg::Var<double> forward(const tg::Var<double>& x) override { return x; }
  std::string name() const override { return "Sequential"; }
  std::vector<std::shared_ptr<MonDense>> dense;
};

// Gives layer i a gradient of L2 norm exactly `norm` (all of it in the bias' first entry).
void set_norm(MonStack& m, size_t i, double norm) {
  m.dense[i]->weight.grad().zero_();
  m.dense[i]->bias.grad().zero_();
  m.dense[i]->bias.grad()[0] = norm;
}
void set_norms(MonStack& m, double a, double b, double c) {
  set_norm(m, 0, a);
  set_norm(m, 1, b);
  set_norm(m, 2, c);
}

bool contains(const std::string& s, const std::string& part) {
  return s.find(part) != std::string::npos;
}
// The diagnosis as one line: its wrapping (newline and indent) turned back into single spaces.
std::string unwrapped(const std::string& s) {
  std::string out;
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] != '\n') {
      out += s[i];
      continue;
    }
    out += ' ';
    while (i + 1 < s.size() && s[i + 1] == ' ') ++i;
  }
  return out;
}

TEST(GradientMonitor, GroupsParametersIntoLayersAndComputesL2Norms) {
  MonStack m("Sigmoid()");
  diag::GradientMonitor<double> mon(m);
  EXPECT_EQ(mon.layer_names(), (std::vector<std::string>{"0", "2", "4"}));
  EXPECT_EQ(mon.activation(), diag::Activation::Sigmoid);
  // Layer "0": weight grads 3, 4 and bias grad 12 -> sqrt(9 + 16 + 144) = 13.
  set_norms(m, 0, 1, 2);
  m.dense[0]->weight.grad()[0] = 3;
  m.dense[0]->weight.grad()[3] = 4;
  m.dense[0]->bias.grad()[1] = 12;
  ASSERT_TRUE(mon.record(0));
  const auto n = mon.latest();
  EXPECT_DOUBLE_EQ(n[0], 13.0);
  EXPECT_DOUBLE_EQ(n[1], 1.0);
  EXPECT_DOUBLE_EQ(n[2], 2.0);
  const auto f = mon.flags();
  EXPECT_DOUBLE_EQ(f.total_norm, std::sqrt(169.0 + 1 + 4));
  EXPECT_DOUBLE_EQ(f.first_last_ratio, 6.5);
  EXPECT_DOUBLE_EQ(f.layers[1].ratio_to_last, 0.5);
  EXPECT_EQ(f.layers[0].module, "Dense(2, 2)");
  EXPECT_FALSE(f.any());

  // Parameters without requires_grad are not watched; a model without any is an error.
  m.dense[2]->weight.set_requires_grad(false);
  m.dense[2]->bias.set_requires_grad(false);
  diag::GradientMonitor<double> partial(m);
  EXPECT_EQ(partial.layer_names(), (std::vector<std::string>{"0", "2"}));
  MonNamed empty("Empty");
  EXPECT_THROW(diag::GradientMonitor<double>{empty}, tg::ValueError);
}

TEST(GradientMonitor, FlagsVanishingByThresholdAndByRatio) {
  MonStack m("Sigmoid()");
  diag::GradientMonitor<double> mon(m);
  set_norms(m, 1e-9, 0.5, 1.0);  // 1e-9 < 1e-7
  mon.record(0);
  auto f = mon.flags();
  EXPECT_TRUE(f.vanishing);
  EXPECT_TRUE(f.layers[0].vanishing);
  EXPECT_FALSE(f.layers[1].vanishing);
  EXPECT_FALSE(f.exploding || f.non_finite);
  EXPECT_EQ(f.layers[0].flag(), "VANISHING");

  set_norms(m, 1e-4, 0.5, 1.0);  // above the threshold, but 1e-4 of the last layer
  mon.record(1);
  f = mon.flags();
  EXPECT_TRUE(f.layers[0].vanishing);
  EXPECT_DOUBLE_EQ(f.first_last_ratio, 1e-4);

  set_norms(m, 0.2, 0.5, 1.0);  // within the healthy band
  mon.record(2);
  EXPECT_FALSE(mon.flags().any());
}

TEST(GradientMonitor, FlagsExplodingByThresholdAndRatio) {
  MonStack m("ReLU()");
  diag::GradientMonitor<double> mon(m);
  set_norms(m, 5e3, 2.0, 1.0);
  mon.record(0);
  auto f = mon.flags();
  EXPECT_TRUE(f.exploding);
  EXPECT_TRUE(f.layers[0].exploding);
  EXPECT_FALSE(f.layers[1].exploding);
  EXPECT_FALSE(f.vanishing);

  set_norms(m, 500, 2.0, 1.0);  // below 1e3 but 500x the last layer
  mon.record(1);
  EXPECT_TRUE(mon.flags().layers[0].exploding);
}

TEST(GradientMonitor, InfiniteUpperLimitsTurnTheirFlagsOff) {
  MonStack m("ReLU()");
  const double inf = std::numeric_limits<double>::infinity();
  diag::MonitorOptions opt;
  opt.exploding_threshold = inf;
  opt.exploding_ratio = inf;
  opt.growth_factor = inf;
  opt.growth_window = 2;
  diag::GradientMonitor<double> mon(m, opt);
  set_norms(m, 1e300, 2.0, 1.0);  // 1e300 and 5e299 x the last layer: exploding by default
  mon.record(0);
  set_norms(m, 1e301, 2.0, 1.0);  // and grew 10-fold over a window of 2
  mon.record(1);
  EXPECT_FALSE(mon.flags().exploding) << mon.report();
  EXPECT_FALSE(mon.flags().growing);

  opt.exploding_ratio = 1e2;  // the ratio alone still flags it
  diag::GradientMonitor<double> by_ratio(m, opt);
  by_ratio.record(0);
  EXPECT_TRUE(by_ratio.flags().layers[0].exploding);
  EXPECT_FALSE(by_ratio.flags().layers[0].growing);
}

TEST(GradientMonitor, FlagsNonFiniteGradients) {
  MonStack m("ReLU()");
  diag::GradientMonitor<double> mon(m);
  set_norms(m, 1, 1, 1);
  m.dense[1]->weight.grad()[2] = std::numeric_limits<double>::quiet_NaN();
  mon.record(0);
  auto f = mon.flags();
  EXPECT_TRUE(f.non_finite);
  EXPECT_TRUE(f.layers[1].non_finite);
  EXPECT_FALSE(f.layers[0].non_finite);
  EXPECT_TRUE(std::isnan(mon.latest()[1]));
  EXPECT_EQ(f.layers[1].flag(), "NON-FINITE");
  EXPECT_EQ(mon.non_finite_records(), 1);

  set_norms(m, 1, 1, 1);
  m.dense[2]->bias.grad()[1] = -std::numeric_limits<double>::infinity();
  mon.record(1);
  f = mon.flags();
  EXPECT_TRUE(f.layers[2].non_finite);
  EXPECT_TRUE(std::isnan(f.first_last_ratio));  // no ratio to an infinite last layer
  EXPECT_EQ(mon.non_finite_records(), 2);

  // Huge but finite double gradients are not mistaken for Inf: sqrt(2) * 1e200.
  set_norms(m, 1, 1, 1);
  m.dense[0]->weight.grad()[0] = 1e200;
  m.dense[0]->weight.grad()[1] = -1e200;
  mon.record(2);
  EXPECT_NEAR(mon.latest()[0] / 1e200, std::sqrt(2.0), 1e-12);
  EXPECT_FALSE(mon.flags().non_finite);
}

TEST(GradientMonitor, FlagsSteadyGrowthOverTheWindow) {
  MonStack m("ReLU()");
  diag::MonitorOptions opt;
  opt.growth_window = 6;
  opt.growth_factor = 10;
  diag::GradientMonitor<double> mon(m, opt);
  // Norms 0.01, 0.02, ..., 0.32 in every layer: far below the threshold, but growing 32-fold.
  double x = 0.01;
  for (int s = 0; s < 6; ++s, x *= 2) {
    set_norms(m, x, x, x);
    mon.record(s);
    if (s < 5) {
      EXPECT_FALSE(mon.flags().growing) << "flagged before the window is full";
    }
  }
  auto f = mon.flags();
  EXPECT_TRUE(f.growing);
  EXPECT_TRUE(f.exploding);
  EXPECT_EQ(f.layers[0].flag(), "GROWING");
  EXPECT_TRUE(contains(mon.diagnosis(), "diverging"));

  // One dip in five steps is still steady growth; two are not; nor is growth below the factor.
  diag::GradientMonitor<double> noisy(m, opt);
  for (double v : {1.0, 2.0, 4.0, 3.0, 8.0, 20.0}) {
    set_norms(m, v, v, v);
    noisy.record(0);
  }
  EXPECT_TRUE(noisy.flags().growing);
  diag::GradientMonitor<double> jumpy(m, opt);
  for (double v : {1.0, 2.0, 1.5, 4.0, 3.0, 20.0}) {
    set_norms(m, v, v, v);
    jumpy.record(0);
  }
  EXPECT_FALSE(jumpy.flags().growing);
  diag::GradientMonitor<double> slow(m, opt);
  for (double v : {1.0, 1.2, 1.4, 1.6, 1.8, 2.0}) {
    set_norms(m, v, v, v);
    slow.record(0);
  }
  EXPECT_FALSE(slow.flags().growing);
}

TEST(GradientMonitor, HistoryIsABoundedRingBufferAndEveryKSteps) {
  MonStack m("ReLU()");
  diag::MonitorOptions opt;
  opt.history = 5;
  opt.every = 2;
  diag::GradientMonitor<double> mon(m, opt);
  for (int s = 0; s < 24; ++s) {
    set_norms(m, s, 2 * s, 3 * s);
    EXPECT_EQ(mon.record(s), s % 2 == 0);
  }
  EXPECT_EQ(mon.total_records(), 12);
  EXPECT_EQ(mon.size(), 5);  // steps 14, 16, 18, 20, 22 kept
  EXPECT_EQ(mon.step_at(0), 14);
  EXPECT_EQ(mon.step_at(4), 22);
  EXPECT_DOUBLE_EQ(mon.norms_at(0)[2], 42.0);
  EXPECT_THROW(mon.step_at(5), tg::ValueError);

  const std::string csv = mon.csv();
  std::istringstream lines(csv);
  std::string line;
  std::vector<std::string> rows;
  while (std::getline(lines, line)) rows.push_back(line);
  ASSERT_EQ(rows.size(), 1u + 5 * 3);
  EXPECT_EQ(rows[0], "step,layer,norm");
  EXPECT_EQ(rows[1], "14,0,14");
  EXPECT_EQ(rows[2], "14,2,28");
  EXPECT_EQ(rows[3], "14,4,42");
  EXPECT_EQ(rows[15], "22,4,66");

  const std::string path = tmp_path("tg_monitor.csv");
  mon.write_csv(path);
  EXPECT_EQ(read_text_file(path), csv);

  diag::MonitorOptions bad;
  bad.every = 0;
  EXPECT_THROW(diag::GradientMonitor<double>(m, bad), tg::ValueError);
}

// Options that used to turn a flag off silently (NaN), flag every layer (a negative threshold),
// contradict each other, or fail with a bare std::length_error / bad_alloc (a huge history) are
// ValueErrors naming the option.
TEST(GradientMonitor, InvalidOptionsRaiseNamingTheOption) {
  MonStack m("ReLU()");
  const double nan = std::nan(""), inf = std::numeric_limits<double>::infinity();
  struct Case {
    const char* option;
    std::function<void(diag::MonitorOptions&)> set;
  };
  const std::vector<Case> cases = {
      {"vanishing_threshold", [&](auto& o) { o.vanishing_threshold = nan; }},
      {"vanishing_threshold", [&](auto& o) { o.vanishing_threshold = -1; }},
      {"exploding_threshold", [&](auto& o) { o.exploding_threshold = -1; }},
      {"exploding_threshold", [&](auto& o) { o.exploding_threshold = nan; }},
      {"exploding_threshold", [&](auto& o) { o.exploding_threshold = -inf; }},
      {"vanishing_threshold", [&](auto& o) { o.vanishing_threshold = inf; }},
      {"vanishing_threshold", [&](auto& o) { o.vanishing_threshold = 1e300; }},  // > exploding
      {"vanishing_ratio", [&](auto& o) { o.vanishing_ratio = nan; }},
      {"exploding_ratio", [&](auto& o) { o.exploding_ratio = nan; }},
      {"exploding_ratio", [&](auto& o) { o.exploding_ratio = 1e-3; }},  // below vanishing
      {"growth_factor", [&](auto& o) { o.growth_factor = nan; }},
      {"growth_factor", [&](auto& o) { o.growth_factor = 0.5; }},
      {"warmup_ratio", [&](auto& o) { o.warmup_ratio = nan; }},
      {"warmup_ratio", [&](auto& o) { o.warmup_ratio = 0; }},
      {"history", [&](auto& o) { o.history = int64_t{1} << 61; }},
      {"history", [&](auto& o) { o.history = 1000000000000; }},
      {"history", [&](auto& o) { o.history = diag::max_monitor_history + 1; }},
  };
  for (const auto& c : cases) {
    diag::MonitorOptions o;
    c.set(o);
    const std::string msg =
        error_message<tg::ValueError>([&] { diag::GradientMonitor<double> mon(m, o); });
    EXPECT_TRUE(contains(msg, "GradientMonitor")) << c.option << ": " << msg;
    EXPECT_TRUE(contains(msg, c.option)) << c.option << ": " << msg;
  }
  EXPECT_TRUE(contains(error_message<tg::ValueError>([&] {
                         diag::GradientMonitor<double>(m.named_parameters(),
                                                       diag::MonitorOptions{.warmup_ratio = nan});
                       }),
                       "warmup_ratio"));
  // The defaults and the boundary values are valid.
  EXPECT_NO_THROW(diag::GradientMonitor<double>(m, diag::MonitorOptions{}));
  diag::MonitorOptions edge;
  edge.vanishing_threshold = 0;
  edge.vanishing_ratio = 0;
  edge.growth_factor = 1;
  EXPECT_NO_THROW(diag::GradientMonitor<double>(m, edge));

  diag::GradientMonitor<double> mon(m);
  const std::string warm = error_message<tg::ValueError>([&] { mon.set_warmup(-5); });
  EXPECT_TRUE(contains(warm, "set_warmup")) << warm;
  EXPECT_TRUE(contains(warm, "-5")) << warm;
  EXPECT_NO_THROW(mon.set_warmup(0));
}

TEST(GradientMonitor, ReportIsATableOfLayersNormsRatiosAndFlags) {
  MonStack m("Sigmoid()");
  diag::GradientMonitor<double> mon(m);
  EXPECT_TRUE(contains(mon.report(), "no gradients recorded"));
  set_norms(m, 1.3e-9, 0.25, 13);
  mon.record(7);
  const std::string r = mon.report();
  EXPECT_TRUE(contains(r, "at step 7")) << r;
  EXPECT_TRUE(contains(r, "layer")) << r;
  EXPECT_TRUE(contains(r, "Dense(2, 2)")) << r;
  EXPECT_TRUE(contains(r, "1.30e-09")) << r;
  EXPECT_TRUE(contains(r, "1.00e-10")) << r;  // ratio 1.3e-9 / 13
  EXPECT_TRUE(contains(r, "VANISHING")) << r;
  EXPECT_TRUE(contains(r, "1.92e-02")) << r;  // 0.25 / 13, not flagged
  // One row per layer: "0", "2" and "4" each start a line.
  EXPECT_TRUE(contains(r, "\n  0 ")) << r;
  EXPECT_TRUE(contains(r, "\n  4 ")) << r;
}

TEST(GradientMonitor, DiagnosisNamesCauseAndRemedies) {
  {  // sigmoid, vanishing: switch to ReLU + He, BatchNorm, residual connections
    MonStack m("Sigmoid()");
    diag::GradientMonitor<double> mon(m);
    set_norms(m, 1e-8, 1e-4, 1);
    mon.record(0);
    const std::string d = mon.diagnosis();
    EXPECT_TRUE(contains(d, "Vanishing gradients")) << d;
    EXPECT_TRUE(contains(d, "saturating Sigmoid")) << d;
    EXPECT_TRUE(contains(d, "ReLU activations with He")) << d;
    EXPECT_TRUE(contains(d, "BatchNorm")) << d;
    EXPECT_TRUE(contains(d, "residual connections")) << d;
    EXPECT_FALSE(contains(d, "Exploding")) << d;
  }
  {  // tanh already with BatchNorm: BatchNorm is not suggested again
    MonStack m("Tanh()", "BatchNorm1d(2)");
    diag::GradientMonitor<double> mon(m);
    set_norms(m, 1e-8, 1e-4, 1);
    mon.record(0);
    const std::string d = mon.diagnosis();
    EXPECT_TRUE(contains(d, "saturating Tanh")) << d;
    EXPECT_FALSE(contains(d, "BatchNorm")) << d;
  }
  {  // sigmoid with LayerNorm only: BatchNorm still suggested, LayerNorm named as not enough
    MonStack m("Sigmoid()", "LayerNorm([2])");
    diag::GradientMonitor<double> mon(m);
    set_norms(m, 1e-8, 1e-4, 1);
    mon.record(0);
    const std::string d = unwrapped(mon.diagnosis());
    EXPECT_TRUE(contains(d,
                         "BatchNorm after each linear layer (the LayerNorm layers here do not "
                         "prevent it)"))
        << d;
  }
  {  // exploding: clipping, smaller learning rate, better init
    MonStack m("ReLU()");
    diag::GradientMonitor<double> mon(m);
    set_norms(m, 1e12, 1e6, 1);
    mon.record(0);
    const std::string d = mon.diagnosis();
    EXPECT_TRUE(contains(d, "Exploding gradients")) << d;
    EXPECT_TRUE(contains(d, "clip gradients by global norm")) << d;
    EXPECT_TRUE(contains(d, "smaller learning rate")) << d;
    EXPECT_TRUE(contains(d, "He (ReLU)")) << d;
  }
  {  // non-finite
    MonStack m("ReLU()");
    diag::GradientMonitor<double> mon(m);
    set_norms(m, 1, 1, 1);
    m.dense[0]->bias.grad()[1] = std::numeric_limits<double>::infinity();
    mon.record(3);
    const std::string d = mon.diagnosis();
    EXPECT_TRUE(contains(d, "Non-finite gradients (NaN or Inf) at step 3 in 1 of 3 layers")) << d;
    EXPECT_TRUE(contains(d, "clip gradients")) << d;
  }
  {  // healthy
    MonStack m("ReLU()");
    diag::GradientMonitor<double> mon(m);
    set_norms(m, 0.5, 0.7, 1);
    mon.record(0);
    EXPECT_TRUE(contains(mon.diagnosis(), "No gradient problem seen at step 0")) << mon.diagnosis();
  }
  {  // parameters only: unknown activation until told
    MonStack m("Mystery()");
    diag::GradientMonitor<double> mon(m.named_parameters());
    set_norms(m, 1e-8, 1e-4, 1);
    mon.record(0);
    EXPECT_EQ(mon.activation(), diag::Activation::Unknown);
    EXPECT_TRUE(contains(mon.diagnosis(), "set_activation()")) << mon.diagnosis();
    mon.set_activation(diag::Activation::Tanh);
    EXPECT_TRUE(contains(mon.diagnosis(), "saturating Tanh")) << mon.diagnosis();
  }
}

// Dense(2, 2) "0", a normalisation layer "1" (gamma and beta: vectors only), and a large
// Dense(2, 50) output "2", named as in a Sequential.
class MonNorm : public tg::nn::Module<double> {
 public:
  MonNorm() {
    weight = register_parameter("weight", tg::Tensor<double>::zeros({2}));
    bias = register_parameter("bias", tg::Tensor<double>::zeros({2}));
  }
  tg::Var<double> forward(const tg::Var<double>& x) override { return x; }
  std::string name() const override { return "BatchNorm1d(2)"; }
  tg::Parameter<double> weight, bias;
};

class MonNormStack : public tg::nn::Module<double> {
 public:
  MonNormStack() {
    first = register_module("0", std::make_shared<MonDense>(2, 2));
    norm = register_module("1", std::make_shared<MonNorm>());
    last = register_module("2", std::make_shared<MonDense>(2, 50));
  }
  tg::Var<double> forward(const tg::Var<double>& x) override { return x; }
  std::string name() const override { return "Sequential"; }
  std::shared_ptr<MonDense> first, last;
  std::shared_ptr<MonNorm> norm;
};

TEST(GradientMonitor, NormalisationLayersAreJudgedByTheThresholdsNotTheRatio) {
  MonNormStack m;
  diag::GradientMonitor<double> mon(m);
  m.first->bias.grad()[0] = 0.5;
  m.norm->bias.grad()[0] = 1e-3;  // 1e-3 of the output layer: small by count, not vanishing
  m.last->bias.grad()[0] = 1.0;
  mon.record(0);
  auto f = mon.flags();
  EXPECT_FALSE(f.any()) << mon.report();
  EXPECT_TRUE(f.layers[0].weight_layer);
  EXPECT_FALSE(f.layers[1].weight_layer);
  EXPECT_DOUBLE_EQ(f.layers[1].ratio_to_last, 1e-3);  // still reported
  EXPECT_DOUBLE_EQ(f.first_last_ratio, 0.5);

  // The same ratio on a weight layer is vanishing; a normalisation layer below the absolute
  // threshold is too.
  m.first->bias.grad()[0] = 1e-3;
  mon.record(1);
  f = mon.flags();
  EXPECT_TRUE(f.layers[0].vanishing);
  EXPECT_FALSE(f.layers[1].vanishing);
  m.first->bias.grad()[0] = 0.5;
  m.norm->bias.grad()[0] = 1e-9;
  mon.record(2);
  f = mon.flags();
  EXPECT_FALSE(f.layers[0].vanishing);
  EXPECT_TRUE(f.layers[1].vanishing);
}

// Dense "0", Dense "1", then a normalisation layer "2" nearest the loss.
class MonTrailingNorm : public tg::nn::Module<double> {
 public:
  MonTrailingNorm() {
    a = register_module("0", std::make_shared<MonDense>(2, 2));
    b = register_module("1", std::make_shared<MonDense>(2, 2));
    n = register_module("2", std::make_shared<MonNorm>());
  }
  tg::Var<double> forward(const tg::Var<double>& x) override { return x; }
  std::string name() const override { return "Sequential"; }
  std::shared_ptr<MonDense> a, b;
  std::shared_ptr<MonNorm> n;
};

TEST(GradientMonitor, RatiosCompareWithTheLastWeightLayer) {
  MonTrailingNorm m;
  diag::GradientMonitor<double> mon(m);
  m.a->bias.grad()[0] = 0.25;
  m.b->bias.grad()[0] = 2.0;
  m.n->bias.grad()[0] = 100.0;
  mon.record(0);
  const auto f = mon.flags();
  EXPECT_DOUBLE_EQ(f.first_last_ratio, 0.125);  // 0.25 / 2, not 0.25 / 100
  EXPECT_DOUBLE_EQ(f.layers[2].ratio_to_last, 50.0);
  EXPECT_FALSE(f.any()) << mon.report();
}

TEST(GradientMonitor, DiagnosisKnowsTheClippingAlreadyOn) {
  MonStack m("ReLU()");
  diag::GradientMonitor<double> mon(m);
  set_norms(m, 3000, 40, 1);  // total norm sqrt(9e6 + 1600 + 1) = 3000.27
  mon.record(0);
  EXPECT_TRUE(contains(unwrapped(mon.diagnosis()), "Remedies: clip gradients by global norm"))
      << mon.diagnosis();

  tg::optim::SGD<double> sgd(m.named_parameters(), {.lr = 0.1});
  sgd.set_clip_grad_norm(2.0).set_clip_grad_value(0.5);
  mon.set_clipping(sgd);
  const std::string d = unwrapped(mon.diagnosis());
  EXPECT_FALSE(contains(d, "Remedies: clip gradients")) << d;
  EXPECT_TRUE(contains(d, "already on: clipping by global norm to 2.00e+00")) << d;
  EXPECT_TRUE(contains(d, "scales this step's gradient by 6.67e-04")) << d;  // 2 / 3000.27
  EXPECT_TRUE(contains(d, "clipping each value to +-5.00e-01")) << d;
  EXPECT_TRUE(contains(d, "smaller learning rate")) << d;

  sgd.clear_clipping();
  mon.set_clipping(sgd);
  EXPECT_TRUE(contains(unwrapped(mon.diagnosis()), "Remedies: clip gradients by global norm"));
}

TEST(GradientMonitor, WorksOnFloatModels) {
  class FloatLayer : public tg::nn::Module<float> {
   public:
    FloatLayer() { w = register_parameter("weight", tg::Tensor<float>::zeros({3})); }
    tg::Var<float> forward(const tg::Var<float>& x) override { return x; }
    std::string name() const override { return "FloatLayer"; }
    tg::Parameter<float> w;
  };
  FloatLayer l;
  diag::GradientMonitor<float> mon(l);
  EXPECT_EQ(mon.layer_names(), (std::vector<std::string>{"(root)"}));
  // 3e30^2 overflows float but not the double accumulator: sqrt(3) * 3e30.
  l.w.grad().fill_(3e30f);
  mon.record(0);
  EXPECT_NEAR(mon.latest()[0] / (std::sqrt(3.0) * double(3e30f)), 1.0, 1e-12);
}

// ---- on real layers ----

// depth hidden Dense(width) layers with the given activation; He-normal weights when he.
template <class Act>
std::shared_ptr<tg::nn::Sequential<double>> mon_mlp(int depth, int64_t width, bool he,
                                                    tg::Generator& g) {
  auto net = std::make_shared<tg::nn::Sequential<double>>();
  int64_t in = 20;
  for (int i = 0; i < depth; ++i) {
    auto d = std::make_shared<tg::nn::Dense<double>>(in, width, true, g);
    if (he) tg::nn::init::kaiming_normal_(d->weight.value(), 0, "fan_in", "relu", g);
    net->push_back(d);
    net->push_back(std::make_shared<Act>());
    in = width;
  }
  net->push_back(std::make_shared<tg::nn::Dense<double>>(in, 5, true, g));
  return net;
}

// One forward/backward of cross-entropy on a fixed random batch, then one record.
void mon_backward(tg::nn::Module<double>& net, diag::GradientMonitor<double>& mon,
                  tg::Generator& g) {
  tg::Tape<double> tape;
  const auto x = tg::Tensor<double>::randn({16, 20}, g);
  std::vector<int64_t> y(16);
  for (size_t i = 0; i < y.size(); ++i) y[i] = static_cast<int64_t>(i % 5);
  net.zero_grad();
  tape.backward(tg::cross_entropy(net(tape.constant(x)), y));
  mon.record(0);
}

TEST(GradientMonitor, SeesVanishingInADeepSigmoidNetworkAndNotWithReLUAndHe) {
  tg::Generator g(7);
  auto sigmoid = mon_mlp<tg::nn::Sigmoid<double>>(10, 32, false, g);
  diag::GradientMonitor<double> ms(*sigmoid);
  EXPECT_EQ(ms.activation(), diag::Activation::Sigmoid);
  EXPECT_EQ(ms.num_layers(), 11);
  mon_backward(*sigmoid, ms, g);
  const auto fs = ms.flags();
  EXPECT_TRUE(fs.vanishing) << ms.report();
  EXPECT_LT(fs.first_last_ratio, 1e-4) << ms.report();
  EXPECT_EQ(fs.layers[0].module, "Dense(20, 32)");
  EXPECT_TRUE(contains(ms.diagnosis(), "saturating Sigmoid")) << ms.diagnosis();

  auto relu = mon_mlp<tg::nn::ReLU<double>>(10, 32, true, g);
  diag::GradientMonitor<double> mr(*relu);
  EXPECT_EQ(mr.activation(), diag::Activation::ReLU);
  mon_backward(*relu, mr, g);
  const auto fr = mr.flags();
  EXPECT_FALSE(fr.any()) << mr.report();
  EXPECT_GT(fr.first_last_ratio, 0.1) << mr.report();
  EXPECT_LT(fr.first_last_ratio, 10) << mr.report();
}

}  // namespace

// Transformer blocks: per-block attention and feed-forward norms, and the warm-up diagnosis of
// Post-LN gradients that grow toward the output (constructed gradients: block k's attention norm
// 5(k+1), its feed-forward norm 13(k+1), so the last/first ratio is 3).
TEST(GradientMonitor, TransformerBlocksAndTheWarmUpDiagnosis) {
  for (bool norm_first : {false, true}) {
    for (double growth : {1.0, 0.0}) {  // 1: grows 3x toward the output; 0: flat
      tg::nn::TransformerEncoderLayer<double> layer(
          4, 2, {.dim_feedforward = 8, .dropout = 0.0, .norm_first = norm_first});
      tg::nn::TransformerEncoder<double> enc(layer, 3);
      diag::GradientMonitor<double> mon(enc);
      for (auto& p : enc.parameters()) p.grad().zero_();
      for (int64_t k = 0; k < 3; ++k) {
        auto& b = enc.layer(k);
        const double s = 1 + growth * double(k);
        b.self_attn->in_proj_bias.grad()[0] = 3 * s;
        b.self_attn->out_proj->bias.grad()[0] = 4 * s;
        b.linear1->bias.grad()[0] = 5 * s;
        b.linear2->bias.grad()[0] = 12 * s;
        b.norm1->bias.grad()[0] = b.norm2->bias.grad()[0] = 1;
      }
      mon.record(0);
      const auto f = mon.flags();
      ASSERT_EQ(f.blocks.size(), 3u);
      EXPECT_EQ(f.blocks[2].block, "layers.2");
      EXPECT_DOUBLE_EQ(f.blocks[0].attention, 5.0);
      EXPECT_DOUBLE_EQ(f.blocks[0].feed_forward, 13.0);
      EXPECT_DOUBLE_EQ(f.blocks[2].feed_forward, 13.0 * (1 + 2 * growth));
      EXPECT_DOUBLE_EQ(f.blocks[1].norm, std::hypot(5.0, 13.0) * (1 + growth));
      EXPECT_NEAR(f.block_ratio, 1 + 2 * growth, 1e-12);
      EXPECT_EQ(f.post_ln, !norm_first);
      EXPECT_FALSE(f.vanishing || f.exploding || f.non_finite) << mon.report();
      const bool warm = !norm_first && growth > 0;
      EXPECT_EQ(f.needs_warmup, warm) << mon.report();
      EXPECT_EQ(f.any(), warm);
      const std::string r = mon.report(), d = unwrapped(mon.diagnosis());
      EXPECT_TRUE(
          contains(r, norm_first ? "Transformer blocks (Pre-LN)" : "Transformer blocks (Post-LN)"))
          << r;
      EXPECT_TRUE(contains(r, "layers.1  5.00e+00    1.30e+01    1.39e+01") || growth > 0) << r;
      if (warm) {
        EXPECT_TRUE(contains(r, "WARM-UP")) << r;
        EXPECT_TRUE(contains(d,
                             "Post-LN Transformer whose gradients grow toward the output at step "
                             "0: the last block's gradient norm is 3.00e+00 times the first's"))
            << d;
        EXPECT_TRUE(contains(d, "Remedies: a learning-rate warm-up")) << d;
        EXPECT_TRUE(contains(d, "Pre-LN blocks (norm_first = true")) << d;
        mon.set_warmup(200);
        const std::string w = unwrapped(mon.diagnosis());
        EXPECT_TRUE(contains(w, "already on: a learning-rate warm-up over 200 steps")) << w;
        EXPECT_FALSE(contains(w, "Remedies: a learning-rate warm-up")) << w;
      } else {
        EXPECT_TRUE(contains(d, "No gradient problem seen at step 0")) << d;
        EXPECT_TRUE(contains(d, norm_first ? "(Pre-LN: no warm-up needed)"
                                           : "(at most 1.20e+00: no warm-up needed yet)"))
            << d;
      }
    }
  }
}
