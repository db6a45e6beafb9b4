// exploding_rnn: gradients through time, where vanishing and exploding gradients are worst,
// and the two cures: gradient clipping (Pascanu, Mikolov & Bengio 2013) for exploding
// gradients, the LSTM (Hochreiter & Schmidhuber 1997) for vanishing ones.
//
// Task: the adding problem (Hochreiter & Schmidhuber 1997; Le, Jaitly & Hinton 2015),
// generated here. Each sequence has T steps of 2 inputs: a value U(0, 1) and a marker that is 1
// at one step in the first half and one in the second half, 0 elsewhere. The target is the sum
// of the two marked values, read from the last hidden state through a Dense(hidden, 1). Always
// predicting 1 gives MSE = Var(a + b) = 1/6 = 0.167: a model below that has learned to carry
// information across up to T steps.
//
// Configurations (the same batches in the same order for all):
//   rnn-sgd         RNN tanh, W_hh = 2 x orthogonal, SGD (lr 0.01, momentum 0.9), no clipping
//   rnn-sgd-clip    the same, clip_grad_norm 1
//   rnn-adam-clip   RNN tanh, PyTorch default init, Adam (lr 0.01), clip_grad_norm 1
//   lstm-adam       LSTM, PyTorch default init, Adam (lr 0.01), no clipping
//   lstm-adam-clip  the same, clip_grad_norm 1
//
// What it shows (default run: T = 100, hidden 32, batch 64, 1500 steps, seed 1; ~45 s CPU):
//   rnn-sgd         W_hh = 2 x orthogonal makes every step back in time multiply ||dL/dh_t|| by
//                   1.16: 1e6 at t = 1, a global gradient norm of 2.6e6. The first SGD update
//                   (2.6e4) throws the weights far away, every tanh unit saturates, and the
//                   gradient no longer passes a single step back (0 at 99 of 100 steps): the
//                   recurrent layer is dead and only the head learns (test MSE 0.162, the
//                   baseline). Exploding gradients did not make the loss NaN here; they
//                   stalled training for good.
//   rnn-sgd-clip    the same gradients, but each update is at most lr x 1 (0.01): the network
//                   walks out of the exploding region within ~400 steps instead of jumping,
//                   keeps training (its gradient still reaches every step), and ends slightly
//                   below the baseline (0.159). Clipping cures the explosion, not the
//                   vanishing that follows: the trained gradient shrinks 0.88x per step.
//   rnn-adam-clip   PyTorch's default init: the gradient vanishes from the start (x0.54 per step,
//                   1e-27 at t = 1) and stays so; stuck at the baseline (0.160).
//   lstm-adam(-clip) at initialisation the LSTM's gradient vanishes too (x0.68 per step: forget
//                   gates ~0.5), but it can learn to keep its forget gates open, and it does:
//                   after training ||dL/dh_t|| is flat (x0.997 per step) and the task is solved
//                   (test MSE 0.001 without clipping, 0.0003 with it) between steps 650 and 850.
//
// Output: a table on stdout, and in --out (default exploding_rnn_out/):
//   grad_through_time_init.svg     ||dL/dh_t|| over t at initialisation (one batch)
//   grad_through_time_trained.svg  the same, mean of the last 50 training steps
//   loss.svg                       training loss (moving average of 50 steps)
//   grad_norm.svg                  global gradient norm before clipping, per step
//   training.csv, through_time.csv, summary.csv
// Run with --help for the flags.

#include <sys/resource.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <exception>
#include <filesystem>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "example_util.hpp"
#include "tapegrad/diag/svg_plot.hpp"
#include "tapegrad/diag/through_time.hpp"
#include "tapegrad/io/atomic_file.hpp"
#include "tapegrad/nn/dense.hpp"
#include "tapegrad/nn/init.hpp"
#include "tapegrad/nn/rnn.hpp"
#include "tapegrad/ops/loss.hpp"
#include "tapegrad/ops/shape.hpp"
#include "tapegrad/optim/adam.hpp"
#include "tapegrad/optim/sgd.hpp"
#include "tapegrad/threads.hpp"

namespace tg = tapegrad;
namespace nn = tapegrad::nn;
namespace diag = tapegrad::diag;
namespace optim = tapegrad::optim;

namespace {

constexpr int64_t kDefaultSteps = 1500, kDefaultSeqLen = 100, kDefaultHidden = 32,
                  kDefaultBatch = 64, kTestSize = 1000, kTail = 50;
constexpr double kBaseline = 1.0 / 6.0;  // MSE of always predicting 1.0
constexpr double kClipNorm = 1.0;

enum class Cell { RNN, LSTM };
enum class Opt { SGD, Adam };

struct Config {
  const char* key;
  const char* description;
  Cell cell;
  double whh_gain;  // > 0: W_hh = gain x orthogonal; 0: PyTorch default init
  Opt opt;
  double lr;
  bool clip;
};

const std::vector<Config>& all_configs() {
  static const std::vector<Config> configs = {
      {"rnn-sgd", "RNN tanh, W_hh = 2 x orthogonal, SGD lr 0.01 momentum 0.9, no clipping",
       Cell::RNN, 2.0, Opt::SGD, 0.01, false},
      {"rnn-sgd-clip", "the same with clip_grad_norm 1", Cell::RNN, 2.0, Opt::SGD, 0.01, true},
      {"rnn-adam-clip", "RNN tanh, default init, Adam lr 0.01, clip_grad_norm 1", Cell::RNN, 0.0,
       Opt::Adam, 0.01, true},
      {"lstm-adam", "LSTM, default init, Adam lr 0.01, no clipping", Cell::LSTM, 0.0, Opt::Adam,
       0.01, false},
      {"lstm-adam-clip", "LSTM, default init, Adam lr 0.01, clip_grad_norm 1", Cell::LSTM, 0.0,
       Opt::Adam, 0.01, true},
  };
  return configs;
}

double cpu_seconds() {
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  return double(u.ru_utime.tv_sec + u.ru_stime.tv_sec) +
         1e-6 * double(u.ru_utime.tv_usec + u.ru_stime.tv_usec);
}

// One batch of the adding problem: x [T, N, 2] (value, marker), y [N, 1].
void adding_batch(int64_t T, int64_t N, tg::Generator& g, tg::Tensor<float>& x,
                  tg::Tensor<float>& y) {
  x.resize({T, N, 2});
  y.resize({N, 1});
  x.zero_();
  for (int64_t n = 0; n < N; ++n) {
    for (int64_t t = 0; t < T; ++t) x(t, n, 0) = static_cast<float>(g.uniform());
    const auto half = static_cast<uint64_t>(T / 2);
    const int64_t a = static_cast<int64_t>(g.below(half));
    const int64_t b = T / 2 + static_cast<int64_t>(g.below(static_cast<uint64_t>(T) - half));
    x(a, n, 1) = 1, x(b, n, 1) = 1;
    y(n, 0) = x(a, n, 0) + x(b, n, 0);
  }
}

// A recurrent layer and its Dense head on the last hidden state.
struct Model {
  std::unique_ptr<nn::RNNBase<float>> rnn;
  std::unique_ptr<nn::Dense<float>> head;

  Model(const Config& c, int64_t hidden, tg::Generator& gen) {
    if (c.cell == Cell::LSTM)
      rnn = std::make_unique<nn::LSTM<float>>(2, hidden, nn::RNNOptions{}, gen);
    else
      rnn = std::make_unique<nn::RNN<float>>(2, hidden, nn::RNNOptions{}, gen);
    if (c.whh_gain > 0) nn::init::orthogonal_(rnn->weight_hh_l(0), c.whh_gain, gen);
    head = std::make_unique<nn::Dense<float>>(hidden, 1, true, gen);
  }
  std::vector<std::pair<std::string, tg::Parameter<float>>> named_parameters() const {
    auto p = rnn->named_parameters();
    for (auto& [n, q] : head->named_parameters()) p.emplace_back("head." + n, q);
    return p;
  }
  // The prediction [N, 1]; hidden_steps receives h_t of every step.
  tg::Var<float> operator()(const tg::Var<float>& x, std::vector<tg::Var<float>>* hidden_steps) {
    const auto out = rnn->forward(x, {}, hidden_steps);
    return (*head)(tg::reshape(out.state.h, {x.size(1), rnn->hidden_size()}));
  }
};

struct Result {
  const Config* config = nullptr;
  std::vector<double> losses, grad_norms;   // per step; grad_norms before clipping
  std::vector<double> tt_init, tt_trained;  // ||dL/dh_t||, t = 1..T
  diag::ThroughTimeFlags init_flags, trained_flags;
  double first_update = 0;  // ||theta_1 - theta_0|| over all parameters
  int64_t diverged_at = -1;
  double train_loss = NAN, test_mse = NAN, cpu = 0;
};

double mse_on(Model& m, const tg::Tensor<float>& x, const tg::Tensor<float>& y) {
  tg::NoGradGuard no_grad;
  tg::Tape<float> tape;
  const tg::Var<float> pred = m(tape.constant(x), nullptr);
  return tg::mse_loss(pred, tape.constant(y)).item();
}

Result run(const Config& c, int64_t T, int64_t N, int64_t H, int64_t steps, uint64_t seed,
           const tg::Tensor<float>& test_x, const tg::Tensor<float>& test_y) {
  Result r;
  r.config = &c;
  const double cpu0 = cpu_seconds();
  tg::Generator gen(seed);
  Model model(c, H, gen);
  const auto params = model.named_parameters();
  std::unique_ptr<optim::Optimizer<float>> opt;
  if (c.opt == Opt::SGD)
    opt =
        std::make_unique<optim::SGD<float>>(params, optim::SGDOptions{.lr = c.lr, .momentum = 0.9});
  else
    opt = std::make_unique<optim::Adam<float>>(params, optim::AdamOptions{.lr = c.lr});
  if (c.clip) opt->set_clip_grad_norm(kClipNorm);

  tg::Generator data(seed + 1000);  // the same batches for every configuration
  tg::Tensor<float> x, y;
  tg::Tape<float> tape;
  std::vector<tg::Var<float>> hs;
  std::vector<double> norms;
  std::vector<tg::Tensor<float>> before;
  r.tt_trained.assign(static_cast<size_t>(T), 0.0);
  int64_t tail = 0;
  examples::ProgressBar bar(std::string("  ") + c.key, steps);
  for (int64_t s = 0; s < steps; ++s) {
    adding_batch(T, N, data, x, y);
    tape.clear();
    opt->zero_grad();
    const auto loss = tg::mse_loss(model(tape.constant(x), &hs), tape.constant(y));
    tape.backward(loss);
    const double l = loss.item();
    r.losses.push_back(l);
    diag::grad_norms_through_time(std::span<const tg::Var<float>>(hs), norms);
    if (s == 0) r.tt_init = norms;
    if (!std::isfinite(l)) {
      r.diverged_at = s;
      break;
    }
    if (s >= steps - kTail) {
      for (size_t t = 0; t < norms.size(); ++t) r.tt_trained[t] += norms[t];
      ++tail;
    }
    if (s == 0)
      for (const auto& [n, p] : params) before.push_back(p.value().clone());
    r.grad_norms.push_back(opt->step());
    if (s == 0) {
      double sq = 0;
      for (size_t k = 0; k < params.size(); ++k)
        sq += (params[k].second.value().array() - before[k].array()).cast<double>().square().sum();
      r.first_update = std::sqrt(sq);
    }
    char info[64];
    std::snprintf(info, sizeof info, "loss %.4f", l);
    bar.update(s + 1, info);
  }
  bar.finish();
  for (double& v : r.tt_trained) v = tail ? v / double(tail) : NAN;
  r.init_flags = diag::through_time_flags(r.tt_init);
  r.trained_flags = diag::through_time_flags(r.tt_trained);
  if (r.diverged_at < 0) {
    const size_t n = r.losses.size(), k = std::min<size_t>(kTail, n);
    double sum = 0;
    for (size_t i = n - k; i < n; ++i) sum += r.losses[i];
    r.train_loss = sum / double(k);
    r.test_mse = mse_on(model, test_x, test_y);
  }
  r.cpu = cpu_seconds() - cpu0;
  return r;
}

// ---------------------------------------------------------------- output

std::string fmt(const char* f, double v) {
  char b[48];
  std::snprintf(b, sizeof b, f, v);
  return b;
}

std::string pad(const std::string& s, size_t w, bool right = false) {
  if (s.size() >= w) return s;
  return right ? std::string(w - s.size(), ' ') + s : s + std::string(w - s.size(), ' ');
}

// "x1.16 EXPLODING", "x0.54 VANISHING", "x0.99 ok", or "no gradient" when none passes a step.
std::string through_time_text(const diag::ThroughTimeFlags& f) {
  if (f.non_finite) return "NON-FINITE";
  if (!std::isfinite(f.factor_per_step)) return "-";
  const char* word = f.exploding ? "EXPLODING" : f.vanishing ? "VANISHING" : "ok";
  return fmt("x%.3g ", f.factor_per_step) + word;
}

void print_table(const std::vector<Result>& results, int64_t T, int64_t steps) {
  std::printf("\nAdding problem, T = %lld, %lld steps per configuration (baseline MSE 0.167)\n",
              static_cast<long long>(T), static_cast<long long>(steps));
  const std::string head = pad("  config", 17) + pad("|g| init", 10, true) + "  " +
                           pad("through time, init", 19) + pad("1st update", 11, true) +
                           pad("max |g|", 9, true) + "  " + pad("through time, trained", 22) +
                           pad("train MSE", 10, true) + pad("test MSE", 10, true) +
                           pad("CPU", 7, true);
  std::printf("%s\n  %s\n", head.c_str(), std::string(head.size() - 2, '-').c_str());
  for (const auto& r : results) {
    double max_g = 0;
    for (double g : r.grad_norms) max_g = std::max(max_g, g);
    const std::string train =
        r.diverged_at >= 0 ? "NaN@" + std::to_string(r.diverged_at) : fmt("%.4f", r.train_loss);
    const std::string line =
        pad(std::string("  ") + r.config->key, 17) +
        pad(r.grad_norms.empty() ? "-" : fmt("%.2g", r.grad_norms[0]), 10, true) + "  " +
        pad(through_time_text(r.init_flags), 19) + pad(fmt("%.2g", r.first_update), 11, true) +
        pad(fmt("%.2g", max_g), 9, true) + "  " + pad(through_time_text(r.trained_flags), 22) +
        pad(train, 10, true) + pad(r.diverged_at >= 0 ? "-" : fmt("%.4f", r.test_mse), 10, true) +
        pad(fmt("%.1fs", r.cpu), 7, true);
    std::printf("%s\n", line.c_str());
  }
  std::printf(
      "\n  |g| init: global gradient norm at step 1 (before clipping); through time: the fitted\n"
      "  factor of ||dL/dh_t|| per step back in time (at init: one batch; trained: mean of the\n"
      "  last %lld steps), flagged when it changes more than 100x over the sequence; 1st update:\n"
      "  ||theta_1 - theta_0|| (with clipping at most lr x %.0f for SGD); max |g|: largest\n"
      "  gradient norm of the run; train MSE: mean of the last %lld batches; test MSE: %lld\n"
      "  held-out sequences; CPU: process CPU time.\n",
      static_cast<long long>(kTail), kClipNorm, static_cast<long long>(kTail),
      static_cast<long long>(kTestSize));
}

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

void write_outputs(const std::string& dir, const std::vector<Result>& results, int64_t T) {
  std::vector<double> ts(static_cast<size_t>(T));
  for (int64_t t = 0; t < T; ++t) ts[static_cast<size_t>(t)] = double(t + 1);
  const std::string tt_x = "time step t (the loss reads h_T, T = " + std::to_string(T) + ")";
  diag::LinePlot init, trained, loss, gnorm;
  init.title("||dL/dh_t|| at initialisation (adding problem, one batch)")
      .x_label(tt_x)
      .y_label("||dL/dh_t|| (log scale)")
      .log_y()
      .size(1000, 600);
  trained.title("||dL/dh_t|| after training (mean of the last 50 steps)")
      .x_label(tt_x)
      .y_label("||dL/dh_t|| (log scale)")
      .log_y()
      .size(1000, 600);
  loss.title("Training loss (MSE, moving average of 50 steps); always predicting 1 gives 0.167")
      .x_label("step")
      .y_label("MSE (log scale)")
      .log_y()
      .y_limits(1e-4, 10)
      .size(1000, 600);
  gnorm.title("Global gradient norm before clipping (moving average of 10 steps)")
      .x_label("step")
      .y_label("||g|| (log scale)")
      .log_y()
      .size(1000, 600);
  std::ostringstream training, through, summary;
  training << "config,step,loss,grad_norm\n";
  through << "config,t,grad_norm_init,grad_norm_trained\n";
  summary << "config,description,grad_norm_init,factor_init,first_update,factor_trained,"
             "train_mse,test_mse,diverged_at,cpu_seconds\n";
  for (size_t i = 0; i < results.size(); ++i) {
    const Result& r = results[i];
    const std::string key = r.config->key;
    // Configurations that differ only in the optimizer share the gradient at initialisation:
    // one line for them, named after all.
    bool drawn = false;
    for (size_t j = 0; j < i; ++j) drawn = drawn || results[j].tt_init == r.tt_init;
    if (!drawn) {
      std::string name = key;
      for (size_t j = i + 1; j < results.size(); ++j)
        if (results[j].tt_init == r.tt_init) name += ", " + std::string(results[j].config->key);
      init.add(name, ts, r.tt_init);
    }
    const int64_t dead = r.trained_flags.dead_steps;
    trained.add(dead ? key + " (0 at " + std::to_string(dead) + " steps)" : key, ts, r.tt_trained);
    loss.add(key, smooth(r.losses, 50));
    gnorm.add(key, smooth(r.grad_norms, 10));
    for (size_t i = 0; i < r.losses.size(); ++i)
      training << key << "," << i + 1 << "," << r.losses[i] << ","
               << (i < r.grad_norms.size() ? r.grad_norms[i] : NAN) << "\n";
    for (size_t t = 0; t < r.tt_init.size(); ++t)
      through << key << "," << t + 1 << "," << r.tt_init[t] << "," << r.tt_trained[t] << "\n";
    summary << key << ",\"" << r.config->description << "\","
            << (r.grad_norms.empty() ? NAN : r.grad_norms[0]) << "," << r.init_flags.factor_per_step
            << "," << r.first_update << "," << r.trained_flags.factor_per_step << ","
            << r.train_loss << "," << r.test_mse << "," << r.diverged_at << "," << r.cpu << "\n";
  }
  init.save(dir + "/grad_through_time_init.svg");
  trained.save(dir + "/grad_through_time_trained.svg");
  loss.save(dir + "/loss.svg");
  gnorm.save(dir + "/grad_norm.svg");
  tg::io::write_file_atomically(dir + "/training.csv", training.str());
  tg::io::write_file_atomically(dir + "/through_time.csv", through.str());
  tg::io::write_file_atomically(dir + "/summary.csv", summary.str());
}

}  // namespace

int main(int argc, char** argv) {
  std::string out = "exploding_rnn_out";
  int64_t steps = kDefaultSteps, T = kDefaultSeqLen, H = kDefaultHidden, N = kDefaultBatch;
  int threads = 1;
  uint64_t seed = 1;
  std::vector<std::string> only, keys;
  std::string footer = "Configurations:\n";
  for (const auto& c : all_configs()) {
    keys.push_back(c.key);
    footer += "  " + pad(c.key, 15) + " " + c.description + "\n";
  }
  CLI::App app(
      "Trains vanilla RNNs and LSTMs on the adding problem and shows the gradient through time:\n"
      "exploding (cured by clipping the update), vanishing (cured by the LSTM's cell state).");
  app.footer(footer);
  app.add_option("--out", out, "output folder, created if missing")->capture_default_str();
  app.add_option("--steps", steps, "training steps per configuration")
      ->capture_default_str()
      ->check(examples::positive());
  app.add_option("--seq-len", T, "sequence length")
      ->capture_default_str()
      ->check(examples::at_least(2));
  app.add_option("--hidden", H, "hidden size")->capture_default_str()->check(examples::positive());
  app.add_option("--batch", N, "sequences per step")
      ->capture_default_str()
      ->check(examples::positive());
  app.add_option("--threads", threads, "threads")
      ->capture_default_str()
      ->check(examples::positive());
  examples::add_only_flag(app, only, keys);
  app.add_option("--seed", seed, "seed of the weights and the data")->capture_default_str();
  if (const int rc = examples::parse_flags(app, argc, argv); rc >= 0) return rc;

  const std::vector<const Config*> chosen = examples::chosen_configs(all_configs(), only);

  try {
    tg::set_num_threads(threads);
    std::filesystem::create_directories(out);
    const auto wall0 = std::chrono::steady_clock::now();
    const double cpu0 = cpu_seconds();
    tg::Tensor<float> test_x, test_y;
    tg::Generator test_gen(seed + 2000);
    adding_batch(T, kTestSize, test_gen, test_x, test_y);
    std::printf(
        "Adding problem: T = %lld, batch %lld, hidden %lld, %lld steps per configuration, "
        "%d thread%s\n",
        static_cast<long long>(T), static_cast<long long>(N), static_cast<long long>(H),
        static_cast<long long>(steps), threads, threads == 1 ? "" : "s");
    std::vector<Result> results;
    for (const Config* c : chosen) {
      results.push_back(run(*c, T, N, H, steps, seed, test_x, test_y));
      const Result& r = results.back();
      const std::string what = r.diverged_at >= 0
                                   ? "diverged at step " + std::to_string(r.diverged_at)
                                   : fmt("test MSE %.4f", r.test_mse);
      std::printf("  %-15s %s  (%.1f s CPU)\n", c->key, what.c_str(), r.cpu);
      std::fflush(stdout);
    }
    print_table(results, T, steps);
    write_outputs(out, results, T);
    std::printf(
        "\nWrote %s/{grad_through_time_init,grad_through_time_trained,loss,grad_norm}.svg "
        "and CSVs. Total %.1f s CPU, %.1f s wall.\n",
        out.c_str(), cpu_seconds() - cpu0, examples::seconds_since(wall0));
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
  return 0;
}
