// Chapter 4: cures at initialisation (Xavier, He) and in the architecture (BatchNorm,
// LayerNorm, residual connections).
// Builds as guide_04_init_and_architecture; exits non-zero if a claim of the chapter is false.
#include <cmath>
#include <cstdio>
#include <memory>
#include <string>
#include <tapegrad/tapegrad.hpp>
#include <vector>

namespace nn = tg::nn;
using tg::Tensor;
using tg::Var;
using Net = nn::Sequential<float>;

static int failures = 0;
static void check(bool ok, const std::string& claim) {
  std::printf("%s %s\n", ok ? "[ok]    " : "[FAILED]", claim.c_str());
  failures += !ok;
}

struct Config {
  const char* name;
  const char* act;   // "sigmoid", "tanh" or "relu"
  const char* init;  // "default" (PyTorch's U(+-1/sqrt(fan_in))), "xavier" or "he"
  const char* norm = "";
  bool residual = false;
};

std::shared_ptr<nn::Module<float>> activation(const std::string& act) {
  if (act == "sigmoid") return std::make_shared<nn::Sigmoid<float>>();
  if (act == "tanh") return std::make_shared<nn::Tanh<float>>();
  return std::make_shared<nn::ReLU<float>>();
}

std::shared_ptr<nn::Dense<float>> dense(const Config& c, int64_t in, int64_t out,
                                        tg::Generator& gen, double scale = 1) {
  auto d = std::make_shared<nn::Dense<float>>(in, out, true, gen);
  if (c.init == std::string("xavier")) nn::init::xavier_uniform_(d->weight, 1.0, gen);
  if (c.init == std::string("he")) nn::init::kaiming_normal_(d->weight, 0, "fan_in", "relu", gen);
  if (c.init != std::string("default")) nn::init::zeros_(d->bias);
  d->weight.value().array() *= float(scale);
  return d;
}

// 784 -> 20 hidden layers of 256 -> 10. Residual: the first hidden layer, then 19 blocks
// x + W relu(x) + b with W drawn by He and scaled by 1/sqrt(19).
std::shared_ptr<Net> build(const Config& c) {
  tg::Generator gen(1);
  auto net = std::make_shared<Net>();
  for (int l = 0; l < 20; ++l) {
    if (c.residual && l > 0) {
      auto body = std::make_shared<Net>(std::make_shared<nn::ReLU<float>>(),
                                        dense(c, 256, 256, gen, 1 / std::sqrt(19.0)));
      net->push_back(std::make_shared<nn::DenseResidual<float>>(body));
      continue;
    }
    net->push_back(dense(c, l == 0 ? 784 : 256, 256, gen));
    if (c.norm == std::string("batch"))
      net->push_back(std::make_shared<nn::BatchNorm1d<float>>(256));
    if (c.norm == std::string("layer")) net->push_back(std::make_shared<nn::LayerNorm<float>>(256));
    net->push_back(activation(c.act));
  }
  net->push_back(dense(c, 256, 10, gen));
  return net;
}

int main() {
  tg::Generator gen(2);
  const auto images = Tensor<float>::randn({64, 784}, gen);
  std::vector<int64_t> labels(64);
  for (auto& y : labels) y = static_cast<int64_t>(gen.below(10));

  const std::vector<Config> configs = {{"sigmoid, default init", "sigmoid", "default"},
                                       {"sigmoid, Xavier", "sigmoid", "xavier"},
                                       {"tanh, Xavier", "tanh", "xavier"},
                                       {"ReLU, default init", "relu", "default"},
                                       {"ReLU, He", "relu", "he"},
                                       {"sigmoid + BatchNorm", "sigmoid", "default", "batch"},
                                       {"sigmoid + LayerNorm", "sigmoid", "default", "layer"},
                                       {"ReLU, He, residual", "relu", "he", "", true}};
  std::printf("%-22s %12s %12s %12s\n", "configuration", "rms layer 1", "rms layer 20",
              "first/last");
  std::vector<double> ratio, spread;
  for (const Config& c : configs) {
    auto net = build(c);
    tg::diag::GradientMonitor<float> monitor(*net);
    tg::Tape<float> tape;
    // Run the layers one by one to read the RMS of every hidden layer's input to its activation.
    std::vector<double> stds;
    Var<float> h = tape.constant(images);
    for (size_t i = 0; i < net->size(); ++i) {
      h = (*(*net)[i])(h);
      const bool pre_activation = i + 1 < net->size() && (*net)[i + 1]->num_parameters() == 0;
      if (pre_activation || dynamic_cast<nn::DenseResidual<float>*>((*net)[i].get()))
        stds.push_back(std::sqrt(h.value().array().cast<double>().square().mean()));
    }
    tape.backward(tg::cross_entropy(h, labels));
    monitor.record(0);
    ratio.push_back(monitor.flags().first_last_ratio);
    spread.push_back(stds.back() / stds.front());
    std::printf("%-22s %12.2e %12.2e %12.2e\n", c.name, stds.front(), stds.back(), ratio.back());
  }

  check(ratio[1] < 1e-3, "Xavier alone does not save the sigmoid (first/last < 1e-3)");
  check(spread[3] < 0.1 && spread[4] > 0.5 && spread[4] < 2,
        "He keeps the ReLU network's signal (RMS layer 20 / layer 1 in [0.5, 2]); "
        "the default init loses it (< 0.1)");
  for (int i : {2, 4, 5, 7})
    check(ratio[i] > 0.1 && ratio[i] < 10,
          std::string(configs[i].name) + ": first/last in [0.1, 10]");
  check(ratio[6] < 1e-3, "LayerNorm does not save the sigmoid (first/last < 1e-3)");
  return failures == 0 ? 0 : 1;
}
