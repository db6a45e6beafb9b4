// vanishing_demo: why deep networks stop learning, and what cures it.
//
// A 784 → 20 hidden layers of 256 → 10 MLP on Fashion-MNIST (batch 128, cross-entropy) in 14
// configurations. For each one the program measures, on one batch at initialisation, the
// gradient L2 norm of every layer (diag::GradientMonitor) and the ratio first layer / last
// layer, then trains it for a short run (SGD, momentum 0.9, lr 0.01, the same batches in the
// same order for every configuration) and evaluates it on the 10k test images.
//
// What it shows (numbers from the default run, seed 1):
//   sigmoid-default  the gradient shrinks ~7x per layer on its way back (sigma' <= 1/4 times
//                    |W| ~ 0.58): the first layer's is 5e-17 of the last one's; nothing learns.
//   sigmoid-xavier   Xavier (gain 1) only lifts |W| to 1: still 0.25 per layer, ratio 1e-12.
//   sigmoid-ln       LayerNorm does not save the sigmoid (ratio 1e-8): it divides by each
//                    sample's spread, dominated by the 0.5 offset all sigmoid outputs share;
//                    BatchNorm divides by the spread over the batch, which excludes it (1.4).
//   tanh-xavier, relu-he, res-bn/-scaled/-zero, sigmoid-bn: ratios between 0.9 and 2.5.
//   res-plain        x + relu(Wx + b) with He init doubles the activations' variance per block
//                    and adds a positive drift: logits ~2e4, gradient norm ~4e5, NaN at step 2.
//                    The working blocks put the ReLU first, x + W relu(x) + b, so the branch
//                    adds a zero-mean term, and keep it small (BN, W/sqrt(19) or W = 0).
//   relu-normal      weights N(0, 1): gradient norm 6e22, the first SGD step (6e20) destroys the
//                    weights; with clip-by-global-norm 1 the step is lr·1 = 0.01 and training
//                    makes progress, though the loss stays ~1e21: clipping bounds the update,
//                    it does not repair the initialisation.
//
// Output: a table on stdout, and in --out (default vanishing_out/): vanishing.svg (per-layer
// gradient norm at init, all configurations), training.svg (training loss), accuracy.svg
// (training-batch accuracy), grad_norms_init.csv, training.csv, summary.csv.
// Run with --help for the flags.

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <exception>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "example_util.hpp"
#include "tapegrad/diag/monitor.hpp"
#include "tapegrad/diag/svg_plot.hpp"
#include "tapegrad/io/atomic_file.hpp"
#include "tapegrad/io/dataloader.hpp"
#include "tapegrad/io/fashion_mnist.hpp"
#include "tapegrad/nn/activation.hpp"
#include "tapegrad/nn/batch_norm.hpp"
#include "tapegrad/nn/dense.hpp"
#include "tapegrad/nn/init.hpp"
#include "tapegrad/nn/layer_norm.hpp"
#include "tapegrad/nn/residual.hpp"
#include "tapegrad/nn/sequential.hpp"
#include "tapegrad/nn/weight_norm.hpp"
#include "tapegrad/ops/loss.hpp"
#include "tapegrad/optim/sgd.hpp"
#include "tapegrad/tapegrad.hpp"
#include "tapegrad/threads.hpp"

namespace nn = tapegrad::nn;
namespace diag = tapegrad::diag;
namespace io = tapegrad::io;
namespace optim = tapegrad::optim;
using examples::seconds_since;

namespace {

constexpr int64_t kInputs = 784, kWidth = 256, kHidden = 20, kClasses = 10, kBatch = 128;
constexpr double kLr = 0.01, kMomentum = 0.9, kClipNorm = 1.0, kL2 = 1e-4;
constexpr int kDefaultSteps = 200;
constexpr float kMean = 0.2860f, kStd = 0.3530f;  // Fashion-MNIST training-set pixel statistics

enum class Act { Sigmoid, Tanh, ReLU };
enum class Init { Default, Xavier, He, Normal };
enum class Norm { None, Batch, Layer };
// Residual blocks (19, after the first hidden layer):
//   Plain      x + relu(W x + b)          post-activation: adds a positive term every block
//   PreBN      x + W relu(BN(x)) + b      pre-activation (He et al. 2016, "Identity Mappings")
//   PreScaled  x + W relu(x) + b,  W ~ He / sqrt(19)
//   PreZero    x + W relu(x) + b,  W = 0  (each block starts as the identity)
enum class Res { None, Plain, PreBN, PreScaled, PreZero };

struct Config {
  const char* tag;  // the letter
  const char* key;
  const char* description;
  Act act;
  Init init;
  Norm norm = Norm::None;
  Res res = Res::None;
  bool weight_norm = false;
  bool clip = false;
  bool l2 = false;
};

const std::vector<Config>& all_configs() {
  static const std::vector<Config> configs = {
      {"a", "sigmoid-default", "sigmoid, PyTorch default init U(+-1/sqrt(fan_in))", Act::Sigmoid,
       Init::Default},
      {"b", "sigmoid-xavier", "sigmoid, Xavier uniform (gain 1)", Act::Sigmoid, Init::Xavier},
      {"c", "tanh-xavier", "tanh, Xavier uniform (gain 1)", Act::Tanh, Init::Xavier},
      {"d", "relu-he", "ReLU, He (Kaiming) normal, fan_in", Act::ReLU, Init::He},
      {"e", "res-plain", "ReLU, 19 blocks x + relu(Wx+b), He init", Act::ReLU, Init::He, Norm::None,
       Res::Plain},
      {"e", "res-bn", "ReLU, 19 blocks x + W relu(BN(x)) + b, He init", Act::ReLU, Init::He,
       Norm::None, Res::PreBN},
      {"e", "res-scaled", "ReLU, 19 blocks x + W relu(x) + b, W ~ He / sqrt(19)", Act::ReLU,
       Init::He, Norm::None, Res::PreScaled},
      {"e", "res-zero", "ReLU, 19 blocks x + W relu(x) + b, W = 0", Act::ReLU, Init::He, Norm::None,
       Res::PreZero},
      {"f", "sigmoid-bn", "sigmoid, Dense -> BatchNorm -> sigmoid, default init", Act::Sigmoid,
       Init::Default, Norm::Batch},
      {"g", "sigmoid-ln", "sigmoid, Dense -> LayerNorm -> sigmoid, default init", Act::Sigmoid,
       Init::Default, Norm::Layer},
      {"h", "relu-normal", "ReLU, weights N(0, 1), plain SGD", Act::ReLU, Init::Normal},
      {"h", "relu-normal-clip", "ReLU, weights N(0, 1), clip global grad norm to 1", Act::ReLU,
       Init::Normal, Norm::None, Res::None, false, true},
      {"+", "relu-he-wn", "ReLU, He init, weight normalization (w = g v/|v|)", Act::ReLU, Init::He,
       Norm::None, Res::None, true},
      {"+", "relu-he-l2", "ReLU, He init, L2 penalty 1e-4 on the weights (Keras)", Act::ReLU,
       Init::He, Norm::None, Res::None, false, false, true},
  };
  return configs;
}

// ---------------------------------------------------------------- model

using Net = nn::Sequential<float>;
using ModulePtr = std::shared_ptr<nn::Module<float>>;

ModulePtr activation(Act a) {
  switch (a) {
    case Act::Sigmoid:
      return std::make_shared<nn::Sigmoid<float>>();
    case Act::Tanh:
      return std::make_shared<nn::Tanh<float>>();
    case Act::ReLU:
      break;
  }
  return std::make_shared<nn::ReLU<float>>();
}

// A Dense layer initialised by the configuration's scheme (biases 0 except for the default
// init, which keeps PyTorch's U(+-1/sqrt(fan_in))), its weight multiplied by `scale`, wrapped in
// WeightNorm when asked. He's gain sqrt(2) is for a layer followed by a ReLU: the output layer
// (followed by the softmax) gets the gain of a linear layer, 1.
ModulePtr dense(const Config& c, int64_t in, int64_t out, tg::Generator& gen, double scale = 1,
                bool output = false) {
  auto d = std::make_shared<nn::Dense<float>>(in, out, true, gen);
  switch (c.init) {
    case Init::Default:
      break;
    case Init::Xavier:
      nn::init::xavier_uniform_(d->weight, 1.0, gen);
      break;
    case Init::He:
      nn::init::kaiming_normal_(d->weight, 0, "fan_in", output ? "linear" : "relu", gen);
      break;
    case Init::Normal:
      nn::init::normal_(d->weight, 0.0, 1.0, gen);
      break;
  }
  if (c.init != Init::Default) nn::init::zeros_(d->bias);
  if (scale != 1) d->weight.value().array() *= static_cast<float>(scale);
  if (c.weight_norm) return std::make_shared<nn::WeightNorm<float>>(d);
  return d;
}

std::shared_ptr<Net> build(const Config& c, tg::Generator& gen) {
  auto net = std::make_shared<Net>();
  if (c.res == Res::None) {
    int64_t in = kInputs;
    for (int64_t l = 0; l < kHidden; ++l) {
      net->push_back(dense(c, in, kWidth, gen));
      if (c.norm == Norm::Batch) net->push_back(std::make_shared<nn::BatchNorm1d<float>>(kWidth));
      if (c.norm == Norm::Layer) net->push_back(std::make_shared<nn::LayerNorm<float>>(kWidth));
      net->push_back(activation(c.act));
      in = kWidth;
    }
  } else {
    // The first hidden layer changes the width (784 → 256), so it cannot be a residual block;
    // the other 19 are x + branch(x).
    net->push_back(dense(c, kInputs, kWidth, gen));
    net->push_back(activation(c.act));
    const double scale = c.res == Res::PreScaled ? 1.0 / std::sqrt(double(kHidden - 1))
                         : c.res == Res::PreZero ? 0.0
                                                 : 1.0;
    for (int64_t l = 1; l < kHidden; ++l) {
      auto branch = std::make_shared<Net>();
      if (c.res == Res::Plain) {
        branch->push_back(dense(c, kWidth, kWidth, gen));
        branch->push_back(activation(c.act));
      } else {
        if (c.res == Res::PreBN)
          branch->push_back(std::make_shared<nn::BatchNorm1d<float>>(kWidth));
        branch->push_back(activation(c.act));
        branch->push_back(dense(c, kWidth, kWidth, gen, scale));
      }
      net->push_back(std::make_shared<nn::DenseResidual<float>>(branch));
    }
  }
  net->push_back(dense(c, kWidth, kClasses, gen, 1.0, /*output=*/true));
  return net;
}

// ---------------------------------------------------------------- one configuration

struct Result {
  const Config* config = nullptr;
  // at initialisation (one batch)
  std::vector<std::string> layer_names, layer_modules;
  std::vector<double> layer_norms;  // every monitored layer
  std::vector<double> dense_norms;  // the 21 Dense layers only, input side first
  diag::GradientFlags init_flags;
  std::string init_report, init_diagnosis;
  double logit_rms = 0;
  // training
  double first_update_norm = 0;  // ‖θ after step 1 − θ before‖ over all parameters
  std::vector<double> losses, batch_accuracy;
  int64_t steps_run = 0;
  int64_t diverged_at = -1;  // first step whose loss is not finite
  diag::GradientFlags end_flags;
  double final_loss = NAN, test_accuracy = NAN, seconds = 0;
};

std::string flag_text(const diag::GradientFlags& f) {
  std::string s;
  auto add = [&](const char* x) { s += (s.empty() ? "" : "+") + std::string(x); };
  if (f.non_finite) add("NON-FINITE");
  if (f.exploding) add(f.growing ? "GROWING" : "EXPLODING");
  if (f.vanishing) add("VANISHING");
  return s.empty() ? "ok" : s;
}

double rms(const tg::Tensor<float>& t) {
  if (t.numel() == 0) return 0;
  return std::sqrt(t.array().cast<double>().square().mean());
}

Result run(const Config& c, const io::FashionMNIST& train, io::DataLoader<float>& test_loader,
           int64_t steps, uint64_t seed) {
  Result r;
  r.config = &c;
  const auto t0 = std::chrono::steady_clock::now();
  tg::Generator gen(seed);  // the same draws for every configuration
  auto model = build(c, gen);
  model->train();

  auto params = model->named_parameters();
  std::unique_ptr<optim::SGD<float>> sgd;
  const optim::SGDOptions sgd_options{.lr = kLr, .momentum = kMomentum};
  if (c.l2) {
    // Penalise the weights only; biases and normalisation parameters stay free.
    sgd = std::make_unique<optim::SGD<float>>(optim::split_decay_groups(params), sgd_options);
    sgd->set_penalties(0.0, kL2);
  } else {
    sgd = std::make_unique<optim::SGD<float>>(params, sgd_options);
  }
  if (c.clip) sgd->set_clip_grad_norm(kClipNorm);

  diag::MonitorOptions mo;
  mo.history = std::max<int64_t>(steps, 1);
  diag::GradientMonitor<float> monitor(*model, mo);
  monitor.set_clipping(*sgd);  // so its diagnosis knows what the clipping already does

  // Same seed, same batches in the same order for every configuration.
  io::DataLoader<float> loader(
      train.images, train.labels,
      io::DataLoaderOptions(kBatch).shuffle(true).drop_last(true).seed(seed).normalize(kMean,
                                                                                       kStd));
  tg::Tape<float> tape;
  examples::ProgressBar bar(std::string("  ") + c.key, steps);
  std::vector<tg::Tensor<float>> before;
  int64_t step = 0;
  const auto train_t0 = std::chrono::steady_clock::now();
  while (step < steps && r.diverged_at < 0) {
    for (const auto& batch : loader) {
      if (step >= steps) break;
      tape.clear();
      sgd->zero_grad();
      auto logits = (*model)(tape.constant(batch.images));
      auto loss = tg::cross_entropy(logits, batch.labels);
      tape.backward(loss);
      monitor.record(step);
      const double l = loss.item();
      int64_t correct = 0;
      for (int64_t i = 0; i < batch.size(); ++i)
        correct += examples::argmax_row(logits.value(), i) == batch.labels[size_t(i)];
      r.losses.push_back(l);
      r.batch_accuracy.push_back(double(correct) / double(batch.size()));

      if (step == 0) {  // the gradient at initialisation
        r.logit_rms = rms(logits.value());
        r.init_flags = monitor.flags();
        r.init_report = monitor.report();
        r.init_diagnosis = monitor.diagnosis();
        for (const auto& s : r.init_flags.layers) {
          r.layer_names.push_back(s.layer);
          r.layer_modules.push_back(s.module);
          r.layer_norms.push_back(s.norm);
          if (s.module.rfind("Dense(", 0) == 0 || s.module.rfind("WeightNorm(", 0) == 0)
            r.dense_norms.push_back(s.norm);
        }
        for (const auto& [n, p] : params) before.push_back(p.value().clone());
      }
      if (!std::isfinite(l)) {
        r.diverged_at = step;
        ++step;
        break;
      }
      sgd->step();
      if (step == 0) {
        double sq = 0;
        for (size_t k = 0; k < params.size(); ++k)
          sq +=
              (params[k].second.value().array() - before[k].array()).cast<double>().square().sum();
        r.first_update_norm = std::sqrt(sq);
        before.clear();
      }
      ++step;
      char info[96];
      std::snprintf(info, sizeof info, "loss %.4g  %.1f steps/s", l,
                    double(step) / seconds_since(train_t0));
      bar.update(step, info);
      tape.clear();  // releases the batch: the loader reuses its buffer
    }
  }
  bar.finish();
  tape.clear();
  r.steps_run = step;
  r.end_flags = monitor.flags();
  // Final loss: the mean over the last 20 steps (a single batch is noisy).
  const size_t n = r.losses.size(), k = std::min<size_t>(20, n);
  double sum = 0;
  for (size_t i = n - k; i < n; ++i) sum += r.losses[i];
  r.final_loss = k ? sum / double(k) : NAN;
  r.test_accuracy = examples::accuracy(*model, test_loader);
  r.seconds = seconds_since(t0);
  return r;
}

// ---------------------------------------------------------------- output

std::string sci(double x) {
  char b[32];
  std::snprintf(b, sizeof b, "%.1e", x);
  return b;
}

std::string pad(const std::string& s, size_t w, bool right = false) {
  if (s.size() >= w) return s;
  return right ? std::string(w - s.size(), ' ') + s : s + std::string(w - s.size(), ' ');
}

// Moving average over the last `window` values (fewer at the start); NaN once a value is NaN.
std::vector<double> smooth(const std::vector<double>& v, size_t window) {
  std::vector<double> out(v.size());
  double sum = 0;
  for (size_t i = 0; i < v.size(); ++i) {
    sum += v[i];
    if (i >= window) sum -= v[i - window];
    out[i] = sum / double(std::min(i + 1, window));
  }
  return out;
}

void print_table(const std::vector<Result>& results, int64_t steps) {
  std::printf(
      "\nGradient at initialisation (one batch of %lld) and after %lld SGD steps "
      "(lr %.2g, momentum %.1f)\n",
      static_cast<long long>(kBatch), static_cast<long long>(steps), kLr, kMomentum);
  const std::string head = pad("", 2) + pad("config", 18) + pad("first/last", 11, true) +
                           pad("total", 10, true) + pad("logits rms", 11, true) + "  " +
                           pad("flags at init", 20) + pad("1st step", 9, true) +
                           pad("loss", 9, true) + pad("test acc", 9, true) + "  " +
                           pad("flags at end", 20) + pad("time", 6, true);
  std::printf("%s\n  %s\n", head.c_str(), std::string(head.size() - 2, '-').c_str());
  for (const auto& r : results) {
    char loss[32], acc[32], secs[32];
    if (r.diverged_at >= 0)
      std::snprintf(loss, sizeof loss, "NaN@%lld", static_cast<long long>(r.diverged_at));
    else
      std::snprintf(loss, sizeof loss, "%.3g", r.final_loss);
    std::snprintf(acc, sizeof acc, "%.3f", r.test_accuracy);
    std::snprintf(secs, sizeof secs, "%.1fs", r.seconds);
    const std::string line =
        pad(std::string(r.config->tag) + " ", 2) + pad(r.config->key, 18) +
        pad(sci(r.init_flags.first_last_ratio), 11, true) +
        pad(sci(r.init_flags.total_norm), 10, true) + pad(sci(r.logit_rms), 11, true) + "  " +
        pad(flag_text(r.init_flags), 20) + pad(sci(r.first_update_norm), 9, true) +
        pad(loss, 9, true) + pad(acc, 9, true) + "  " + pad(flag_text(r.end_flags), 20) +
        pad(secs, 6, true);
    std::printf("%s\n", line.c_str());
  }
  std::printf(
      "\n  first/last: gradient norm of the first Dense layer / the output layer's; total: the\n"
      "  global gradient norm (what clipping sees); 1st step: norm of the first update of all\n"
      "  weights (lr x clipped gradient, with clipping at most %.2g); loss: mean of the last 20\n"
      "  training batches (NaN@k: diverged at step k); test acc: 10k test images, eval mode.\n",
      kLr * kClipNorm);
}

// Equal within rounding, layer by layer.
bool same_norms(const std::vector<double>& a, const std::vector<double>& b) {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); ++i)
    if (!(std::abs(a[i] - b[i]) <= 1e-4 * std::max(std::abs(a[i]), std::abs(b[i])))) return false;
  return true;
}

void write_outputs(const std::string& dir, const std::vector<Result>& results) {
  // vanishing.svg: per-layer gradient norm at initialisation, Dense layers only.
  diag::LinePlot grads;
  grads.title("Gradient L2 norm per layer at initialisation (784 -> 20 x 256 -> 10, batch 128)")
      .x_label("Dense layer (1 = input side, 21 = output layer)")
      .y_label("gradient L2 norm (log scale)")
      .log_y()
      .size(1100, 650);
  // Configurations whose gradients at initialisation coincide (clipping and L2 act only in the
  // update; weight normalization with g = |v| has the same per-layer norm) share one line.
  std::vector<bool> drawn(results.size(), false);
  for (size_t i = 0; i < results.size(); ++i) {
    if (drawn[i]) continue;
    std::string name = results[i].config->key;
    for (size_t j = i + 1; j < results.size(); ++j)
      if (!drawn[j] && same_norms(results[i].dense_norms, results[j].dense_norms)) {
        drawn[j] = true;
        name += std::string(", ") + results[j].config->key;
      }
    grads.add(name, results[i].dense_norms);
  }
  grads.save(dir + "/vanishing.svg");

  // training.svg: the loss, on a linear axis limited to [0, 3]: the diverging configurations
  // leave it at the top (their loss is ~1e20 or NaN; training.csv has the numbers).
  diag::LinePlot loss;
  loss.title("Training loss (moving average of 10 batches)")
      .x_label("SGD step")
      .y_label("cross-entropy")
      .y_limits(0, 3)
      .size(1100, 650);
  diag::LinePlot acc;
  acc.title("Training-batch accuracy (moving average of 10 batches)")
      .x_label("SGD step")
      .y_label("accuracy")
      .y_limits(0, 1)
      .size(1100, 650);
  for (const auto& r : results) {
    const std::vector<double> l = smooth(r.losses, 10);
    std::string note;
    if (r.diverged_at >= 0) {
      note = " (NaN at step " + std::to_string(r.diverged_at) + ")";
    } else if (*std::min_element(l.begin(), l.end()) > 3) {
      char b[48];
      std::snprintf(b, sizeof b, " (~%.0e, off chart)", r.final_loss);
      note = b;
    }
    loss.add(r.config->key + note, l);
    char test[32];
    std::snprintf(test, sizeof test, " (test %.3f)", r.test_accuracy);
    acc.add(r.config->key + std::string(test), smooth(r.batch_accuracy, 10));
  }
  loss.save(dir + "/training.svg");
  acc.save(dir + "/accuracy.svg");

  // CSVs.
  std::ostringstream g, t, s;
  g.precision(17), t.precision(17), s.precision(17);
  g << "config,layer_index,layer,module,grad_norm,ratio_to_last,flag\n";
  t << "config,step,loss,batch_accuracy\n";
  s << "config,description,first_last_ratio,total_grad_norm,logit_rms,init_flags,"
       "first_update_norm,steps,diverged_at,final_loss,test_accuracy,end_flags,seconds\n";
  for (const auto& r : results) {
    const auto& L = r.init_flags.layers;
    for (size_t i = 0; i < L.size(); ++i)
      g << r.config->key << "," << i << "," << L[i].layer << ",\"" << L[i].module << "\","
        << L[i].norm << "," << L[i].ratio_to_last << "," << L[i].flag() << "\n";
    for (size_t i = 0; i < r.losses.size(); ++i)
      t << r.config->key << "," << i << "," << r.losses[i] << "," << r.batch_accuracy[i] << "\n";
    s << r.config->key << ",\"" << r.config->description << "\"," << r.init_flags.first_last_ratio
      << "," << r.init_flags.total_norm << "," << r.logit_rms << "," << flag_text(r.init_flags)
      << "," << r.first_update_norm << "," << r.steps_run << "," << r.diverged_at << ","
      << r.final_loss << "," << r.test_accuracy << "," << flag_text(r.end_flags) << "," << r.seconds
      << "\n";
  }
  io::write_file_atomically(dir + "/grad_norms_init.csv", g.str());
  io::write_file_atomically(dir + "/training.csv", t.str());
  io::write_file_atomically(dir + "/summary.csv", s.str());
}

}  // namespace

int main(int argc, char** argv) {
  std::string out = "vanishing_out", data_dir;
  int64_t steps = kDefaultSteps;
  // One thread by default: the README's timings of the demo were taken so.
  int threads = 1;
  uint64_t seed = 1;
  std::vector<std::string> only, keys;
  std::string footer = "Configurations:\n";
  for (const auto& c : all_configs()) {
    keys.push_back(c.key);
    footer += "  (" + std::string(c.tag) + ") " + pad(c.key, 17) + " " + c.description + "\n";
  }
  CLI::App app(
      "Trains a 784 -> 20 x 256 -> 10 MLP on Fashion-MNIST in several configurations and shows\n"
      "how the gradient vanishes or explodes layer by layer, and what cures it.");
  app.footer(footer);
  app.add_option("--out", out, "output folder, created if missing")->capture_default_str();
  app.add_option("--steps", steps, "SGD steps per configuration (468 = one epoch)")
      ->capture_default_str()
      ->check(examples::positive());
  app.add_option("--data-dir", data_dir,
                 std::string("Fashion-MNIST folder\n(default $") +
                     io::FashionMNIST::environment_variable + ", else " +
                     io::FashionMNIST::default_directory + ")");
  app.add_option("--threads", threads, "threads")
      ->capture_default_str()
      ->check(examples::positive());
  examples::add_only_flag(app, only, keys);
  app.add_option("--seed", seed, "seed of the weights and the batch order")->capture_default_str();
  if (const int rc = examples::parse_flags(app, argc, argv); rc >= 0) return rc;

  const std::vector<const Config*> chosen = examples::chosen_configs(all_configs(), only);

  try {
    tg::set_num_threads(threads);
    const auto t0 = std::chrono::steady_clock::now();
    const io::FashionMNIST train(io::Split::Train, data_dir, io::ImageLayout::Flat);
    const io::FashionMNIST test(io::Split::Test, data_dir, io::ImageLayout::Flat);
    examples::make_dirs(out);
    io::DataLoader<float> test_loader(test.images, test.labels,
                                      io::DataLoaderOptions(1000).normalize(kMean, kStd));
    std::printf(
        "Fashion-MNIST from %s (%lld train, %lld test images), loaded in %.1f s; %d threads\n"
        "Network 784 -> %lld hidden layers of %lld -> 10, batch %lld, cross-entropy; "
        "%lld SGD steps per configuration:\n",
        train.directory.c_str(), static_cast<long long>(train.size()),
        static_cast<long long>(test.size()), seconds_since(t0), threads,
        static_cast<long long>(kHidden), static_cast<long long>(kWidth),
        static_cast<long long>(kBatch), static_cast<long long>(steps));

    for (const Config* c : chosen) std::printf("  (%s) %-17s %s\n", c->tag, c->key, c->description);
    std::printf("\n");
    std::vector<Result> results;
    for (size_t i = 0; i < chosen.size(); ++i) {
      const Config& c = *chosen[i];
      results.push_back(run(c, train, test_loader, steps, seed));
      const Result& r = results.back();
      std::printf("[%2zu/%zu] %-17s first/last %s, test accuracy %.3f (%.1f s)\n", i + 1,
                  chosen.size(), c.key, sci(r.init_flags.first_last_ratio).c_str(), r.test_accuracy,
                  r.seconds);
      std::fflush(stdout);
    }

    print_table(results, steps);
    std::printf("\nWhat the gradient monitor concludes at initialisation:\n");
    for (const auto& r : results) {
      std::printf("\n(%s) %s\n", r.config->tag, r.config->key);
      std::istringstream lines(r.init_diagnosis);
      for (std::string line; std::getline(lines, line);) std::printf("  %s\n", line.c_str());
    }
    write_outputs(out, results);
    std::printf(
        "\nWrote %s/vanishing.svg (per-layer gradient norms), training.svg (loss), accuracy.svg,\n"
        "grad_norms_init.csv, training.csv and summary.csv. Total time %.1f s.\n",
        out.c_str(), seconds_since(t0));
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
  return 0;
}
