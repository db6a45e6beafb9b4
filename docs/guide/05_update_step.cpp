// Chapter 5: cures in the update step: clipping, penalties, weight normalization and
// constraints, the non-finite policy, and the order step() applies them in.
// Builds as guide_05_update_step; exits non-zero if a claim of the chapter is false.
#include <cmath>
#include <cstdio>
#include <iostream>
#include <memory>
#include <string>
#include <tapegrad/tapegrad.hpp>
#include <vector>

namespace nn = tg::nn;
namespace optim = tg::optim;
using tg::Tensor;
using Params = std::vector<tg::Parameter<double>>;

static int failures = 0;
static void check(bool ok, const std::string& claim) {
  std::printf("%s %s\n", ok ? "[ok]    " : "[FAILED]", claim.c_str());
  failures += !ok;
}

// A network whose gradient explodes: 5 ReLU layers of 16 with N(0, 1) weights.
std::shared_ptr<nn::Sequential<double>> make_model() {
  tg::Generator gen(3);
  auto m = std::make_shared<nn::Sequential<double>>();
  for (int l = 0; l < 5; ++l) {
    auto d = std::make_shared<nn::Dense<double>>(16, l == 4 ? 1 : 16, true, gen);
    nn::init::normal_(d->weight, 0.0, 1.0, gen);
    m->push_back(d);
    if (l < 4) m->push_back(std::make_shared<nn::ReLU<double>>());
  }
  return m;
}

tg::Generator data_gen(4);
const auto x = Tensor<double>::randn({32, 16}, data_gen),
           target = Tensor<double>::randn({32, 1}, data_gen);

void backward(nn::Module<double>& m) {
  tg::Tape<double> tape;
  tape.backward(tg::mse_loss(m(tape.constant(x)), target));
}
std::vector<Tensor<double>> values(const Params& ps) {
  std::vector<Tensor<double>> v;
  for (const auto& p : ps) v.push_back(p.value().clone());
  return v;
}
double distance(const Params& ps, const std::vector<Tensor<double>>& before) {
  double s = 0;
  for (size_t i = 0; i < ps.size(); ++i)
    s += (ps[i].value().array() - before[i].array()).square().sum();
  return std::sqrt(s);
}

int main() {
  {  // Clipping by global norm: the update is at most lr x max_norm.
    auto m = make_model();
    optim::SGD<double> opt(m->parameters(), {.lr = 0.01});
    opt.set_clip_grad_norm(1.0);
    backward(*m);
    const auto before = values(m->parameters());
    const double total = opt.step();  // the norm before clipping, as clip_grad_norm_ returns
    const double after = optim::grad_norm(m->parameters()),
                 moved = distance(m->parameters(), before);
    std::printf("clip by norm:  total %.4g -> %.6f, parameters moved %.6f\n", total, after, moved);
    check(total > 1e3 && after <= 1 && moved <= 0.01 + 1e-12,
          "norm clipping: gradient norm <= 1, step <= lr");
  }
  {  // Clipping by value: every element into [-v, v] (changes the direction).
    auto m = make_model();
    optim::SGD<double> opt(m->parameters(), {.lr = 0.01});
    opt.set_clip_grad_value(0.1);
    backward(*m);
    opt.step();
    double largest = 0;
    for (const auto& p : m->parameters())
      largest = std::max(largest, p.grad().array().abs().maxCoeff());
    std::printf("clip by value: largest |g| after step %.3g\n", largest);
    check(largest <= 0.1, "value clipping: every |g| <= 0.1");
  }
  {  // The order: penalties -> clipping -> update rule -> constraints. Redo it by hand.
    auto m = make_model();
    const double lr = 0.1, l1 = 1e-3, l2 = 0.01, max_row_norm = 0.5;
    optim::SGD<double> opt(m->parameters(), {.lr = lr});
    opt.set_penalties(l1, l2).set_clip_grad_norm(1.0);
    opt.param_group(0).constraints.push_back(optim::MaxNorm{.max_value = max_row_norm});
    backward(*m);
    auto expected = values(m->parameters());
    double sq = 0;  // 1. g' = g + l1·sign(w) + 2·l2·w (Keras L1 and L2)
    std::vector<Tensor<double>> g;
    for (const auto& p : m->parameters()) {
      g.push_back(p.grad().clone());
      const auto w = p.value().array();
      g.back().array() += l1 * ((w > 0).cast<double>() - (w < 0).cast<double>()) + 2 * l2 * w;
      sq += g.back().array().square().sum();
    }
    const double coef = std::min(1.0, 1.0 / (std::sqrt(sq) + 1e-6));  // 2. clip_grad_norm_
    for (size_t i = 0; i < g.size(); ++i) {
      expected[i].array() -= lr * coef * g[i].array();         // 3. SGD
      optim::MaxNorm{.max_value = max_row_norm}(expected[i]);  // 4. project every row (unit)
    }
    opt.step();
    const double diff = distance(m->parameters(), expected);
    std::printf("step() vs penalty, clip, SGD, MaxNorm by hand: difference %.2g\n", diff);
    check(diff < 1e-12,
          "step() applies penalties, then clipping, then the update, then constraints");
  }
  {  // Weight normalization w = g v/|v|: same function at the start, direction and length apart.
    tg::Generator gen(5);
    auto dense = std::make_shared<nn::Dense<double>>(16, 4, true, gen);
    tg::Tape<double> tape;
    const Tensor<double> y0 = (*dense)(tape.constant(x)).value().clone();
    nn::WeightNorm<double> wn(dense);
    const Tensor<double> y1 = wn(tape.constant(x)).value();
    for (const auto& [name, p] : wn.named_parameters())
      std::cout << "  " << name << " " << p.shape() << "\n";
    check((y0.array() - y1.array()).abs().maxCoeff() < 1e-12,
          "WeightNorm leaves the layer's output unchanged");
  }
  {  // Non-finite gradients: raise (nothing changes), skip_step (counted), propagate (PyTorch).
    auto m = make_model();
    optim::SGD<double> opt(m->named_parameters(), {.lr = 0.01});
    backward(*m);
    m->parameters()[2].grad()[5] = NAN;
    const auto before = values(m->parameters());
    opt.set_nonfinite_policy(optim::NonFinitePolicy::raise);
    try {
      opt.step();
    } catch (const tg::NonFiniteError& e) {
      std::cout << "raise: " << e.what() << "\n";
    }
    opt.set_nonfinite_policy(optim::NonFinitePolicy::skip_step);
    opt.step();
    check(distance(m->parameters(), before) == 0 && opt.skipped_steps() == 1,
          "raise and skip_step leave the parameters untouched; skipped_steps() counts");
    opt.set_nonfinite_policy(optim::NonFinitePolicy::propagate);
    opt.step();
    check(std::isnan(m->parameters()[2].value()[5]), "propagate lets the NaN into the weights");
  }
  return failures == 0 ? 0 : 1;
}
