// Chapter 3: why gradients vanish and explode.
// Builds as guide_03_vanishing; writes 03_grad_norms.svg; exits non-zero if a claim is false.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <iostream>
#include <memory>
#include <string>
#include <tapegrad/tapegrad.hpp>
#include <vector>

namespace nn = tg::nn;
using tg::Tensor;
using tg::Var;

static int failures = 0;
static void check(bool ok, const std::string& claim) {
  std::printf("%s %s\n", ok ? "[ok]    " : "[FAILED]", claim.c_str());
  failures += !ok;
}

// The largest and smallest derivative of f over x in [-8, 8], read from the tape:
// the gradient of sum(f(x)) with respect to x is f'(x), elementwise.
template <class F>
std::pair<double, double> derivative_range(F f) {
  tg::Tape<double> tape;
  Var<double> x = tape.input(Tensor<double>::arange(-8.0, 8.0001, 0.01));
  tape.backward(tg::sum(f(x)));
  return {x.grad().array().maxCoeff(), x.grad().array().minCoeff()};
}

// 784 -> 20 hidden layers of 256 -> 10, as the demo's MLP.
std::shared_ptr<nn::Sequential<float>> mlp(const std::string& act, bool normal_weights) {
  tg::Generator gen(1);
  auto net = std::make_shared<nn::Sequential<float>>();
  for (int l = 0; l <= 20; ++l) {
    auto dense = std::make_shared<nn::Dense<float>>(l == 0 ? 784 : 256, l == 20 ? 10 : 256, true,
                                                    gen);  // PyTorch's default init
    if (normal_weights) nn::init::normal_(dense->weight, 0.0, 1.0, gen);
    net->push_back(dense);
    if (l == 20) break;
    if (act == "sigmoid") net->push_back(std::make_shared<nn::Sigmoid<float>>());
    if (act == "tanh") net->push_back(std::make_shared<nn::Tanh<float>>());
    if (act == "relu") net->push_back(std::make_shared<nn::ReLU<float>>());
  }
  return net;
}

int main() {
  auto [s_max, s_min] = derivative_range([](const Var<double>& x) { return tg::sigmoid(x); });
  auto [t_max, t_min] = derivative_range([](const Var<double>& x) { return tg::tanh(x); });
  auto [r_max, r_min] = derivative_range([](const Var<double>& x) { return tg::relu(x); });
  std::printf("derivative over [-8, 8]: sigmoid %.4f..%.4f  tanh %.4f..%.4f  relu %g..%g\n", s_min,
              s_max, t_min, t_max, r_min, r_max);
  const auto at = [](double v, double bound) { return v <= bound && v > bound - 1e-9; };
  check(at(s_max, 0.25) && at(t_max, 1) && r_min == 0 && r_max == 1,
        "sigmoid' <= 1/4, tanh' <= 1, relu' in {0, 1}");

  // One batch of random "images" through three 21-layer MLPs; the monitor reads every layer.
  tg::Generator gen(2);
  const auto images = Tensor<float>::randn({64, 784}, gen);
  std::vector<int64_t> labels(64);
  for (auto& y : labels) y = static_cast<int64_t>(gen.below(10));

  tg::diag::LinePlot plot;
  plot.title("Gradient norm per Dense layer at initialisation").log_y();
  plot.x_label("layer (0 = input side)").y_label("L2 norm of the gradient");
  std::vector<tg::diag::GradientFlags> flags;
  for (auto [act, normal] : {std::pair{"sigmoid", false}, {"tanh", false}, {"relu", true}}) {
    auto net = mlp(act, normal);
    tg::diag::GradientMonitor<float> monitor(*net);
    tg::Tape<float> tape;
    tape.backward(tg::cross_entropy((*net)(tape.constant(images)), labels));
    monitor.record(0);
    flags.push_back(monitor.flags());
    std::vector<double> norms;
    for (const auto& layer : flags.back().layers) norms.push_back(layer.norm);
    const std::string name = std::string(act) + (normal ? ", N(0,1) weights" : ", default init");
    plot.add(name, norms);
    const double r = flags.back().first_last_ratio;
    std::printf("%-24s first/last %8.1e  per layer x%.2f  total norm %8.1e  %s\n", name.c_str(), r,
                std::pow(r, 1.0 / 20), flags.back().total_norm,
                flags.back().exploding   ? "EXPLODING"
                : flags.back().vanishing ? "VANISHING"
                                         : "ok");
    if (act == std::string("sigmoid")) std::cout << monitor.report() << monitor.diagnosis();
  }
  plot.save("03_grad_norms.svg");

  check(flags[0].first_last_ratio < 1e-3 && flags[0].vanishing,
        "sigmoid, default init: first layer's gradient < 1e-3 x the last's (VANISHING)");
  check(flags[1].first_last_ratio < 1e-3, "tanh, default init: < 1e-3 x the last's as well");
  check(flags[2].total_norm > 1e6 && flags[2].exploding,
        "ReLU with N(0, 1) weights: total gradient norm > 1e6 (EXPLODING)");
  return failures == 0 ? 0 : 1;
}
