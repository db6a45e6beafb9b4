// The Optimizer<T> pipeline itself: non-finite policies, parameter groups, state_dict.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>

#include "tapegrad/optim/adam.hpp"
#include "tapegrad/optim/rmsprop.hpp"
#include "tapegrad/optim/sgd.hpp"
#include "test_util.hpp"

namespace tg = tapegrad;
namespace opt = tapegrad::optim;

namespace {

const double inf = std::numeric_limits<double>::infinity();

// fc1.weight [3,2], fc1.bias [3], fc2.weight [1,3], with finite gradients.
opt::NamedParameters<double> named_model() {
  opt::NamedParameters<double> m;
  const std::pair<const char*, tg::Shape> spec[] = {
      {"fc1.weight", {3, 2}}, {"fc1.bias", {3}}, {"fc2.weight", {1, 3}}};
  int k = 0;
  for (const auto& [name, shape] : spec) {
    tg::Parameter<double> p{tg::Tensor<double>(shape)};
    for (int64_t i = 0; i < p.numel(); ++i) {
      p.value()[i] = 0.5 - 0.1 * double(i) + k;
      p.grad()[i] = 0.2 * std::cos(double(i + k));
    }
    m.emplace_back(name, p);
    ++k;
  }
  return m;
}

std::vector<tg::Tensor<double>> snapshot(const opt::NamedParameters<double>& m, bool grads) {
  std::vector<tg::Tensor<double>> out;
  for (const auto& [n, p] : m) out.push_back((grads ? p.grad() : p.value()).clone());
  return out;
}

void expect_same(const std::vector<tg::Tensor<double>>& a,
                 const std::vector<tg::Tensor<double>>& b) {
  ASSERT_EQ(a.size(), b.size());
  for (size_t k = 0; k < a.size(); ++k)
    for (int64_t i = 0; i < a[k].numel(); ++i) {
      if (std::isnan(a[k][i]))
        EXPECT_TRUE(std::isnan(b[k][i]));
      else
        EXPECT_EQ(a[k][i], b[k][i]) << "tensor " << k << " element " << i;
    }
}

void expect_same(const opt::StateDict& a, const opt::StateDict& b) {
  ASSERT_EQ(a.size(), b.size());
  for (size_t k = 0; k < a.size(); ++k) {
    EXPECT_EQ(a[k].first, b[k].first);
    ASSERT_EQ(a[k].second.index(), b[k].second.index()) << a[k].first;
    std::visit(
        [&](const auto& x) {
          const auto& y = std::get<std::decay_t<decltype(x)>>(b[k].second);
          EXPECT_TRUE(x.shape() == y.shape());
          for (int64_t i = 0; i < x.numel(); ++i) EXPECT_EQ(x[i], y[i]);
        },
        a[k].second);
  }
}
// The step count of a state_dict entry.
int64_t step_of(const tg::AnyTensor& t) { return std::get<tg::Tensor<int64_t>>(t).item(); }

}  // namespace

// ---- non-finite policies, with an inf and with a NaN gradient ----

TEST(OptimNonFinite, PropagateWritesNonFiniteValues) {
  for (double bad : {inf, std::nan("")}) {
    auto m = named_model();
    opt::SGD<double> sgd(m, {.lr = 0.1});
    m[2].second.grad()[1] = bad;
    sgd.step();
    EXPECT_FALSE(std::isfinite(m[2].second.value()[1]));  // PyTorch's default behaviour
    EXPECT_TRUE(std::isfinite(m[0].second.value()[0]));
    EXPECT_FALSE(std::isfinite(sgd.last_total_norm()));
  }
}

TEST(OptimNonFinite, RaiseNamesTheFirstBadParameterAndChangesNothing) {
  for (double bad : {inf, std::nan("")}) {
    for (int variant = 0; variant < 3; ++variant) {  // plain, with clipping, with penalties
      auto m = named_model();
      opt::Adam<double> adam(m, {.lr = 0.1});
      adam.set_nonfinite_policy(opt::NonFinitePolicy::raise);
      if (variant == 1) adam.set_clip_grad_norm(1.0);
      if (variant == 2) adam.set_penalties(0.01, 0.01);
      adam.step();  // one good step, so there is state to protect
      m[1].second.grad()[2] = bad;
      m[2].second.grad()[0] = -inf;
      const auto values = snapshot(m, false), grads = snapshot(m, true);
      const auto state = adam.state_dict();
      try {
        adam.step();
        ADD_FAILURE() << "no exception";
      } catch (const tg::NonFiniteError& e) {
        const std::string msg = e.what();
        EXPECT_NE(msg.find("Adam.step"), std::string::npos) << msg;
        EXPECT_NE(msg.find("'fc1.bias'"), std::string::npos) << msg;  // the first, not fc2
        EXPECT_NE(msg.find("[3]"), std::string::npos) << msg;
        EXPECT_NE(msg.find(std::isnan(bad) ? "NaN" : "inf"), std::string::npos) << msg;
      }
      expect_same(values, snapshot(m, false));
      expect_same(grads, snapshot(m, true));
      expect_same(state, adam.state_dict());
    }
  }
}

TEST(OptimNonFinite, UnnamedParametersAreNamedByIndex) {
  tg::Parameter<double> a(tg::Tensor<double>::ones({2})), b(tg::Tensor<double>::ones({2, 2}));
  opt::SGD<double> sgd({a, b}, {.lr = 0.1});
  sgd.set_nonfinite_policy(opt::NonFinitePolicy::raise);
  b.grad()[3] = std::nan("");
  try {
    sgd.step();
    ADD_FAILURE();
  } catch (const tg::NonFiniteError& e) {
    EXPECT_NE(std::string(e.what()).find("parameter '1' of shape [2,2]"), std::string::npos)
        << e.what();
  }
}

TEST(OptimNonFinite, SkipStepChangesNothingAndCounts) {
  for (double bad : {inf, std::nan("")}) {
    auto m = named_model();
    opt::Adam<double> adam(m, {.lr = 0.1});
    adam.set_nonfinite_policy(opt::NonFinitePolicy::skip_step).set_clip_grad_norm(1.0);
    adam.step();
    m[2].second.grad()[2] = bad;
    const auto values = snapshot(m, false), grads = snapshot(m, true);
    const auto state = adam.state_dict();
    const double r = adam.step();
    EXPECT_FALSE(std::isfinite(r));
    EXPECT_EQ(adam.skipped_steps(), 1);
    expect_same(values, snapshot(m, false));
    expect_same(grads, snapshot(m, true));
    expect_same(state, adam.state_dict());
    // The next finite step goes through.
    m[2].second.grad()[2] = 0.1;
    EXPECT_TRUE(std::isfinite(adam.step()));
    EXPECT_EQ(adam.skipped_steps(), 1);
    EXPECT_NE(m[0].second.value()[0], values[0][0]);
    EXPECT_EQ(step_of(adam.state_dict()[0].second), 2);  // state.0.step
  }
}

// ---- parameter groups ----

TEST(OptimGroups, SplitDecayGroupsByRankAndName) {
  opt::NamedParameters<double> m = {
      {"0.weight", tg::Parameter<double>(tg::Tensor<double>::zeros({3, 2}))},
      {"0.bias", tg::Parameter<double>(tg::Tensor<double>::zeros({3}))},
      {"bn.weight", tg::Parameter<double>(tg::Tensor<double>::zeros({3}))},
      {"proj.bias", tg::Parameter<double>(tg::Tensor<double>::zeros({3, 1}))},
      {"conv.weight", tg::Parameter<double>(tg::Tensor<double>::zeros({2, 1, 3, 3}))}};
  const auto groups = opt::split_decay_groups(m);
  ASSERT_EQ(groups.size(), 2u);
  EXPECT_EQ(groups[0].names, (std::vector<std::string>{"0.weight", "conv.weight"}));
  EXPECT_FALSE(groups[0].exempt_from_penalties);
  EXPECT_EQ(groups[1].names, (std::vector<std::string>{"0.bias", "bn.weight", "proj.bias"}));
  EXPECT_TRUE(groups[1].exempt_from_penalties);
}

TEST(OptimGroups, PerGroupLrAndExemptionFromDecayAndPenalties) {
  auto m = named_model();
  auto groups = opt::split_decay_groups(m);  // {fc1.weight, fc2.weight}, {fc1.bias}
  groups[1].lr = 0.5;
  opt::SGD<double> sgd(groups, {.lr = 0.1, .weight_decay = 0.2});
  sgd.set_penalties(0.01, 0.03);
  const auto w0 = snapshot(m, false), g0 = snapshot(m, true);
  sgd.step();
  EXPECT_EQ(sgd.param_name(0), "fc1.weight");
  EXPECT_EQ(sgd.param_name(1), "fc2.weight");
  EXPECT_EQ(sgd.param_name(2), "fc1.bias");
  EXPECT_EQ(sgd.lr(0), 0.1);
  EXPECT_EQ(sgd.lr(1), 0.5);
  for (int64_t i = 0; i < 6; ++i) {  // fc1.weight: penalties and decay
    const double w = w0[0][i], sign = w > 0 ? 1 : w < 0 ? -1 : 0;
    const double g = g0[0][i] + 0.01 * sign + 2 * 0.03 * w;
    EXPECT_NEAR(m[0].second.value()[i], w - 0.1 * (g + 0.2 * w), 1e-15);
  }
  for (int64_t i = 0; i < 3; ++i)  // fc1.bias: exempt, lr 0.5
    EXPECT_DOUBLE_EQ(m[1].second.value()[i], w0[1][i] - 0.5 * g0[1][i]);
}

TEST(OptimGroups, InvalidGroupsRaise) {
  auto m = named_model();
  opt::ParamGroup<double> a = opt::ParamGroup<double>::of(m), b;
  b.params = {m[1].second};
  try {
    opt::SGD<double> sgd({a, b});
    ADD_FAILURE();
  } catch (const tg::ValueError& e) {
    EXPECT_NE(std::string(e.what()).find("more than one parameter group"), std::string::npos);
  }
  EXPECT_THROW(opt::SGD<double>(std::vector<tg::Parameter<double>>{}), tg::ValueError);
  opt::ParamGroup<double> c = opt::ParamGroup<double>::of(m);
  c.names.pop_back();
  EXPECT_THROW(opt::SGD<double>({c}), tg::ValueError);
  opt::ParamGroup<double> d = opt::ParamGroup<double>::of(m);
  d.lr = -0.1;
  EXPECT_THROW(opt::SGD<double>({d}), tg::ValueError);
  opt::SGD<double> sgd(m);
  tg::Parameter<double> stranger(tg::Tensor<double>::zeros({2}));
  EXPECT_THROW(sgd.add_constraint(stranger, opt::NonNeg{}), tg::ValueError);
  EXPECT_THROW(sgd.set_lr(-1.0), tg::ValueError);
}

// param_group(i) hands out its fields: a NaN or negative value set there is caught by the next
// step(), before any weight changes (it used to turn every weight into NaN).
TEST(OptimGroups, InvalidValuesSetThroughParamGroupRaiseAtStep) {
  for (const char* field : {"lr", "weight_decay", "l1", "l2"})
    for (double bad : {std::nan(""), -1.0, inf}) {
      auto m = named_model();
      opt::Adam<double> adam(m, {.lr = 0.1});
      adam.add_param_group(opt::ParamGroup<double>{});  // an empty second group, indexed 1
      auto& g = adam.param_group(1);
      const std::string f = field;
      if (f == "lr") g.lr = bad;
      if (f == "weight_decay") g.weight_decay = bad;
      if (f == "l1") g.l1 = bad;
      if (f == "l2") g.l2 = bad;
      const auto values = snapshot(m, false);
      const std::string msg =
          tapegrad::testing::error_message<tg::ValueError>([&] { adam.step(); });
      EXPECT_NE(msg.find("Adam.step: parameter group 1 has an invalid"), std::string::npos)
          << field << " = " << bad << ": " << msg;
      EXPECT_NE(msg.find("nothing was updated"), std::string::npos) << msg;
      expect_same(values, snapshot(m, false));
      g.lr = 0.1, g.weight_decay = 0.0, g.l1 = 0.0, g.l2 = 0.0;
      EXPECT_NO_THROW(adam.step());
    }
}

TEST(OptimGroups, FrozenParametersAreSkippedAndZeroGradClearsAll) {
  auto m = named_model();
  opt::Adam<double> adam(m, {.lr = 0.1});
  m[1].second.set_requires_grad(false);
  const auto w0 = snapshot(m, false);
  adam.step();
  expect_same({w0[1]}, {m[1].second.value()});
  EXPECT_NE(m[0].second.value()[0], w0[0][0]);
  for (const auto& [k, t] : adam.state_dict()) EXPECT_EQ(k.rfind("state.1.", 0), std::string::npos);
  adam.zero_grad();
  for (const auto& [n, p] : m)
    for (int64_t i = 0; i < p.numel(); ++i) EXPECT_EQ(p.grad()[i], 0.0);
}

// ---- state_dict ----

TEST(OptimState, RoundTripResumesExactly) {
  auto a = named_model(), b = named_model();
  opt::Adam<double> first(a, {.lr = 0.05, .amsgrad = true});
  for (int t = 0; t < 2; ++t) first.step();
  const auto sd = first.state_dict();
  ASSERT_EQ(sd.size(), 12u);  // 3 params x (step, exp_avg, exp_avg_sq, max_exp_avg_sq)
  EXPECT_EQ(sd[4].first, "state.1.step");
  EXPECT_EQ(sd[7].first, "state.1.max_exp_avg_sq");
  for (size_t k = 0; k < a.size(); ++k) b[k].second.value().copy_(a[k].second.value());
  opt::Adam<double> second(b, {.lr = 0.05, .amsgrad = true});
  second.load_state_dict(sd);
  expect_same(sd, second.state_dict());
  first.step();
  second.step();
  expect_same(snapshot(a, false), snapshot(b, false));
  // The saved tensors are copies: stepping did not change sd.
  EXPECT_EQ(step_of(sd[0].second), 2);

  // SGD's momentum buffer round trip.
  auto c = named_model(), d = named_model();
  opt::SGD<double> s1(c, {.lr = 0.1, .momentum = 0.9});
  s1.step();
  opt::SGD<double> s2(d, {.lr = 0.1, .momentum = 0.9});
  s2.load_state_dict(s1.state_dict());
  for (size_t k = 0; k < c.size(); ++k) d[k].second.value().copy_(c[k].second.value());
  s1.step();
  s2.step();  // uses the loaded buffer: not a first step
  expect_same(snapshot(c, false), snapshot(d, false));
}

TEST(OptimState, LoadValidatesNamesAndShapesAndChangesNothingOnError) {
  auto m = named_model();
  opt::Adam<double> adam(m, {.lr = 0.05});
  adam.step();
  const auto good = adam.state_dict();
  auto expect_error = [&](opt::StateDict sd, bool shape_error, const std::string& part) {
    try {
      adam.load_state_dict(sd);
      ADD_FAILURE() << "no exception for " << part;
    } catch (const tg::ShapeError& e) {
      EXPECT_TRUE(shape_error) << e.what();
      EXPECT_NE(std::string(e.what()).find(part), std::string::npos) << e.what();
      EXPECT_NE(std::string(e.what()).find("Adam.load_state_dict"), std::string::npos);
    } catch (const tg::ValueError& e) {
      EXPECT_FALSE(shape_error) << e.what();
      EXPECT_NE(std::string(e.what()).find(part), std::string::npos) << e.what();
      EXPECT_NE(std::string(e.what()).find("Adam.load_state_dict"), std::string::npos);
    }
    expect_same(good, adam.state_dict());
  };
  auto renamed = good;
  renamed[1].first = "state.0.exp_avgg";
  expect_error(renamed, false, "state.0.exp_avgg");
  auto far = good;
  far.emplace_back("state.3.step", tg::Tensor<double>::scalar(1));
  expect_error(far, false, "state.3.step");
  auto junk = good;
  junk.emplace_back("param_groups.0.lr", tg::Tensor<double>::scalar(1));
  expect_error(junk, false, "param_groups.0.lr");
  auto amsgrad_entry = good;
  amsgrad_entry.emplace_back("state.0.max_exp_avg_sq", tg::Tensor<double>::zeros({3, 2}));
  expect_error(amsgrad_entry, false, "state.0.max_exp_avg_sq");
  auto missing = good;
  missing.erase(missing.begin() + 2);  // state.0.exp_avg_sq
  expect_error(missing, false, "missing 'state.0.exp_avg_sq'");
  auto duplicate = good;
  duplicate.push_back(good[1]);
  expect_error(duplicate, false, "duplicate");
  auto wrong_shape = good;
  wrong_shape[1].second = tg::Tensor<double>::zeros({2, 3});
  expect_error(wrong_shape, true, "[2,3]");
  auto wrong_dtype = good;
  wrong_dtype[1].second = tg::Tensor<float>::zeros({3, 2});
  expect_error(wrong_dtype, false, "'state.0.exp_avg' is F32, the optimizer's is F64");
  auto vector_step = good;
  vector_step[0].second = tg::Tensor<double>::ones({1});
  expect_error(vector_step, true, "state.0.step");
  auto fractional = good;
  fractional[0].second = tg::Tensor<double>::scalar(1.5);
  expect_error(fractional, false, "step count");
  auto negative = good;
  negative[0].second = tg::Tensor<int64_t>::scalar(-1);
  expect_error(negative, false, "step count");
  auto negative_float = good;
  negative_float[0].second = tg::Tensor<float>::scalar(-1);
  expect_error(negative_float, false, "step count");
  auto nan_step = good;
  nan_step[0].second = tg::Tensor<double>::scalar(std::nan(""));
  expect_error(nan_step, false, "step count");
  // An empty dict is valid: every parameter starts afresh.
  adam.load_state_dict({});
  EXPECT_TRUE(adam.state_dict().empty());
}

// A loaded step of INT64_MAX made the next step() overflow (undefined behaviour; NaN weights), a
// negative second moment a NaN square root: both are ValueErrors naming load_state_dict and the
// key, and the state is unchanged.
TEST(OptimState, LoadRejectsAnUnincrementableStepAndNegativeSecondMoments) {
  const int64_t max = std::numeric_limits<int64_t>::max();
  auto m = named_model();
  opt::Adam<double> adam(m, {.lr = 0.05, .amsgrad = true});
  adam.step();
  const auto good = adam.state_dict();
  auto expect_rejected = [&](opt::Optimizer<double>& o, const opt::StateDict& sd,
                             const std::string& who, const std::string& key) {
    const auto before = o.state_dict();
    const std::string msg =
        tapegrad::testing::error_message<tg::ValueError>([&] { o.load_state_dict(sd); });
    EXPECT_NE(msg.find(who + ".load_state_dict"), std::string::npos) << msg;
    EXPECT_NE(msg.find("'" + key + "'"), std::string::npos) << msg;
    expect_same(before, o.state_dict());
  };
  auto huge = good;  // [0] is state.0.step
  huge[0].second = tg::Tensor<int64_t>::scalar(max);
  expect_rejected(adam, huge, "Adam", "state.0.step");
  for (size_t k : {2u, 3u}) {  // state.0.exp_avg_sq, state.0.max_exp_avg_sq
    auto negative = good;
    auto t = tg::Tensor<double>::ones({3, 2});
    t[4] = -5;
    negative[k].second = t;
    expect_rejected(adam, negative, "Adam", good[k].first);
    t[4] = std::nan("");
    expect_rejected(adam, negative, "Adam", good[k].first);
  }
  auto exp_avg = good;  // a first moment may be negative
  exp_avg[1].second = tg::Tensor<double>::full({3, 2}, -5.0);
  EXPECT_NO_THROW(adam.load_state_dict(exp_avg));
  // The largest step that can still be incremented loads, and step() stays finite.
  auto last = good;
  last[0].second = tg::Tensor<int64_t>::scalar(max - 1);
  adam.load_state_dict(last);
  adam.step();
  EXPECT_EQ(step_of(adam.state_dict()[0].second), max);
  for (const auto& [name, p] : m)
    for (int64_t i = 0; i < p.numel(); ++i) EXPECT_TRUE(std::isfinite(p.value()[i])) << name;

  auto r = named_model();
  opt::RMSprop<double> rms(r, {.centered = true});
  rms.step();
  const auto rgood = rms.state_dict();  // step, square_avg, grad_avg per parameter
  auto rhuge = rgood;
  rhuge[0].second = tg::Tensor<int64_t>::scalar(max);
  expect_rejected(rms, rhuge, "RMSprop", "state.0.step");
  auto rneg = rgood;
  rneg[1].second = tg::Tensor<double>::full({3, 2}, -1.0);
  expect_rejected(rms, rneg, "RMSprop", "state.0.square_avg");
  auto grad_avg = rgood;  // a mean gradient may be negative
  grad_avg[2].second = tg::Tensor<double>::full({3, 2}, -1e-3);
  EXPECT_NO_THROW(rms.load_state_dict(grad_avg));
}

// add_pre_step_hook: the hooks run first, in order, and what they do to the gradients is what
// the pipeline (non-finite check, clipping norm, update) sees; a throwing hook changes nothing.
TEST(OptimPreStepHook, RunsFirstInOrderAndItsGradientsAreUsed) {
  tg::Parameter<double> p(tg::Tensor<double>::from({1.0, 2.0}));
  tg::optim::SGD<double> opt(std::vector<tg::Parameter<double>>{p}, {.lr = 0.5});
  opt.set_nonfinite_policy(tg::optim::NonFinitePolicy::raise);
  p.grad().fill_(NAN);  // would raise, but the hooks replace it first
  std::vector<int> order;
  opt.add_pre_step_hook([&] {
    order.push_back(1);
    p.grad()[0] = 3.0;
    p.grad()[1] = 4.0;
  });
  opt.add_pre_step_hook([&] { order.push_back(2); });
  EXPECT_EQ(opt.num_pre_step_hooks(), 2u);
  const double norm = opt.step();
  EXPECT_EQ(order, (std::vector<int>{1, 2}));
  EXPECT_DOUBLE_EQ(norm, 5.0);  // the norm of the hook's gradient
  EXPECT_DOUBLE_EQ(p.value()[0], 1.0 - 0.5 * 3.0);
  EXPECT_DOUBLE_EQ(p.value()[1], 2.0 - 0.5 * 4.0);
  tg::optim::SGD<double> other(std::vector<tg::Parameter<double>>{p}, {.lr = 0.5});
  other.add_pre_step_hook([] { throw tg::ValueError("hook failed"); });
  const double before = p.value()[0];
  EXPECT_THROW(other.step(), tg::ValueError);
  EXPECT_EQ(p.value()[0], before);
  EXPECT_THROW(other.add_pre_step_hook(nullptr), tg::ValueError);
}
