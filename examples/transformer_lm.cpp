// transformer_lm: a causal character-level Transformer language model on the text of Debian's
// `fortunes` package, and why Pre-LN trains without a learning-rate warm-up while Post-LN needs
// one (Xiong et al. 2020, "On Layer Normalization in the Transformer Architecture").
//
// Model: Embedding(96, 128) + learned positions, 4 x TransformerEncoderLayer(128, 4 heads,
// feed-forward 512, ReLU, dropout 0), causal, Linear(128, 96); context 64, batch 32, time-major
// [T, N, E]. Post-LN (norm_first = false, PyTorch's default) or Pre-LN (norm_first = true, with a
// final LayerNorm). The 96 symbols are printable ASCII, newline, and nothing else: tabs become
// spaces, other bytes are dropped.
//
// It
//   1. measures at initialisation the gradient norm of every block's attention and
//      feed-forward parameters (diag::GradientMonitor, mean over 8 batches) for both layouts:
//      Post-LN's grow toward the output, Pre-LN's stay about flat;
//   2. trains Post-LN without warm-up, Post-LN with a linear warm-up, and Pre-LN without warm-up
//      at the same large learning rate on the same batches (Adam, clip_grad_norm 1), and reports
//      the held-out bits per character of each;
//   3. prints text sampled from the model with the lowest held-out loss.
// Output: tables on stdout, and in --out (default transformer_lm_out/): grad_norms_init.svg,
// loss.svg, grad_norms_init.csv, training.csv, summary.csv, sample.txt.
// Run with --help for the flags; the README's "Attention and Transformers" section has the
// measured figures.

#include <sys/resource.h>
#include <sys/stat.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <exception>
#include <filesystem>
#include <fstream>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "example_util.hpp"
#include "tapegrad/diag/monitor.hpp"
#include "tapegrad/diag/svg_plot.hpp"
#include "tapegrad/io/atomic_file.hpp"
#include "tapegrad/nn/dense.hpp"
#include "tapegrad/nn/embedding.hpp"
#include "tapegrad/nn/init.hpp"
#include "tapegrad/nn/positional_encoding.hpp"
#include "tapegrad/nn/transformer.hpp"
#include "tapegrad/ops/loss.hpp"
#include "tapegrad/ops/shape.hpp"
#include "tapegrad/optim/adam.hpp"
#include "tapegrad/optim/scheduler.hpp"
#include "tapegrad/threads.hpp"

namespace tg = tapegrad;
namespace nn = tapegrad::nn;
namespace diag = tapegrad::diag;
namespace optim = tapegrad::optim;

namespace {

constexpr int64_t kVocab = 96, kModel = 128, kHeads = 4, kFeedForward = 512, kLayers = 4;
constexpr int64_t kContext = 64, kChunk = 4096;  // every 10th chunk of the text is held out
constexpr const char* kDefaultData = "/usr/share/games/fortunes";

// ---------------------------------------------------------------- data

// Printable ASCII 32..126 -> 0..94, newline -> 95.
int symbol_of(unsigned char c) {
  if (c == '\t') c = ' ';
  if (c >= 32 && c <= 126) return c - 32;
  if (c == '\n') return 95;
  return -1;
}
char char_of(int s) { return s == 95 ? '\n' : static_cast<char>(s + 32); }

struct Corpus {
  std::vector<uint8_t> train, held_out;
  int files = 0;
};

// Every regular file of `dir` without a dot in its name (fortune's text files; the .dat indexes
// and .u8 links are skipped), in name order.
Corpus read_corpus(const std::string& dir) {
  namespace fs = std::filesystem;
  std::error_code ec;
  if (!fs::is_directory(dir, ec))
    throw tg::IOError("no directory " + dir +
                      ": install Debian's fortunes package (apt-get install fortunes, or "
                      "scripts/install-deps.sh), or point --data at a folder of text files");
  std::vector<fs::path> paths;
  for (const auto& e : fs::directory_iterator(dir))
    if (e.is_regular_file() && !e.is_symlink() &&
        e.path().filename().string().find('.') == std::string::npos)
      paths.push_back(e.path());
  std::sort(paths.begin(), paths.end());
  Corpus c;
  std::vector<uint8_t> all;
  for (const auto& p : paths) {
    std::ifstream f(p, std::ios::binary);
    std::string text((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
    for (unsigned char ch : text)
      if (const int s = symbol_of(ch); s >= 0) all.push_back(static_cast<uint8_t>(s));
    ++c.files;
  }
  if (all.size() < static_cast<size_t>(20 * kChunk))
    throw tg::IOError(dir + " holds only " + std::to_string(all.size()) +
                      " usable characters (need at least " + std::to_string(20 * kChunk) + ")");
  for (size_t i = 0; i < all.size(); ++i)
    ((i / kChunk) % 10 == 9 ? c.held_out : c.train).push_back(all[i]);
  return c;
}

// Windows of kContext + 1 symbols: inputs [T, N] (as floats, for the Embedding) and the next
// symbol of every position, in the same [T, N] order.
void make_batch(const std::vector<uint8_t>& text, const std::vector<size_t>& starts,
                tg::Tensor<float>& ids, std::vector<int64_t>& targets) {
  const auto N = static_cast<int64_t>(starts.size());
  ids.resize({kContext, N});
  targets.resize(static_cast<size_t>(kContext * N));
  for (int64_t n = 0; n < N; ++n)
    for (int64_t t = 0; t < kContext; ++t) {
      const size_t at = starts[static_cast<size_t>(n)] + static_cast<size_t>(t);
      ids(t, n) = float(text[at]);
      targets[static_cast<size_t>(t * N + n)] = text[at + 1];
    }
}

// ---------------------------------------------------------------- model

class CharLM : public nn::Module<float> {
 public:
  CharLM(bool norm_first, bool xavier, tg::Generator& gen) : norm_first_(norm_first) {
    tok = register_module(
        "tok", std::make_shared<nn::Embedding<float>>(kVocab, kModel, std::nullopt, gen));
    pos = register_module("pos", std::make_shared<nn::LearnedPositionalEncoding<float>>(
                                     kContext, kModel, false, gen));
    nn::TransformerEncoderLayer<float> layer(
        kModel, kHeads, {.dim_feedforward = kFeedForward, .dropout = 0.0, .norm_first = norm_first},
        gen);
    encoder = register_module(
        "encoder", std::make_shared<nn::TransformerEncoder<float>>(
                       layer, kLayers,
                       norm_first ? std::make_shared<nn::LayerNorm<float>>(kModel) : nullptr, gen));
    head = register_module("head", std::make_shared<nn::Dense<float>>(kModel, kVocab, true, gen));
    // nn.Transformer's _reset_parameters: xavier_uniform_ on every matrix of the encoder.
    if (xavier)
      for (auto& p : encoder->parameters())
        if (p.value().rank() >= 2) nn::init::xavier_uniform_(p, 1.0, gen);
  }
  // ids [T, N] -> logits [T * N, vocab], causal.
  tg::Var<float> forward(const tg::Var<float>& ids) override {
    const tg::Var<float> h = encoder->forward((*pos)((*tok)(ids)), {.is_causal = true});
    return tg::reshape((*head)(h), {-1, kVocab});
  }
  std::string name() const override { return norm_first_ ? "CharLM(Pre-LN)" : "CharLM(Post-LN)"; }

  std::shared_ptr<nn::Embedding<float>> tok;
  std::shared_ptr<nn::LearnedPositionalEncoding<float>> pos;
  std::shared_ptr<nn::TransformerEncoder<float>> encoder;
  std::shared_ptr<nn::Dense<float>> head;

 private:
  bool norm_first_;
};

// ---------------------------------------------------------------- runs

struct Settings {
  int64_t steps, batch, warmup, eval_every;
  bool xavier;
  double lr;
  uint64_t seed;
};

double cpu_seconds() {
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  return double(u.ru_utime.tv_sec + u.ru_stime.tv_sec) +
         1e-6 * double(u.ru_utime.tv_usec + u.ru_stime.tv_usec);
}

// Random window starts, drawn from g.
std::vector<size_t> random_starts(const std::vector<uint8_t>& text, int64_t n, tg::Generator& g) {
  std::vector<size_t> s(static_cast<size_t>(n));
  for (auto& x : s) x = static_cast<size_t>(g.below(text.size() - kContext - 1));
  return s;
}

// Mean cross-entropy (nats) over fixed held-out windows, 32 per batch, evenly spaced.
double held_out_loss(CharLM& model, const std::vector<uint8_t>& text, int64_t windows) {
  tg::NoGradGuard no_grad;
  model.eval();
  tg::Tape<float> tape;
  tg::Tensor<float> ids;
  std::vector<int64_t> targets;
  const size_t stride = (text.size() - kContext - 1) / static_cast<size_t>(windows);
  double total = 0;
  int64_t batches = 0;
  for (int64_t w = 0; w < windows; w += 32, ++batches) {
    std::vector<size_t> starts;
    for (int64_t k = w; k < std::min(windows, w + 32); ++k)
      starts.push_back(static_cast<size_t>(k) * stride);
    make_batch(text, starts, ids, targets);
    tape.clear();
    total += tg::cross_entropy(model(tape.constant(ids)), targets).item();
  }
  model.train();
  return total / double(batches);
}

struct InitNorms {
  std::vector<double> attention, feed_forward;  // per block, mean over the batches
  std::string report, diagnosis;                // the monitor's, for the first batch
};

InitNorms measure_at_init(bool norm_first, const Corpus& c, const Settings& s, int batches) {
  tg::Generator gen(s.seed);
  CharLM model(norm_first, s.xavier, gen);
  diag::GradientMonitor<float> monitor(model);
  tg::Generator data(s.seed + 1);
  InitNorms r;
  r.attention.assign(kLayers, 0.0);
  r.feed_forward.assign(kLayers, 0.0);
  tg::Tape<float> tape;
  tg::Tensor<float> ids;
  std::vector<int64_t> targets;
  for (int b = 0; b < batches; ++b) {
    make_batch(c.train, random_starts(c.train, s.batch, data), ids, targets);
    tape.clear();
    model.zero_grad();
    tape.backward(tg::cross_entropy(model(tape.constant(ids)), targets));
    monitor.record(b);
    const auto f = monitor.flags();
    for (size_t k = 0; k < f.blocks.size(); ++k) {
      r.attention[k] += f.blocks[k].attention / batches;
      r.feed_forward[k] += f.blocks[k].feed_forward / batches;
    }
    if (b == 0) r.report = monitor.report(), r.diagnosis = monitor.diagnosis();
  }
  return r;
}

struct Config {
  const char* key;
  const char* label;
  bool norm_first, warmup;
};
const std::vector<Config>& configs() {
  static const std::vector<Config> all = {
      {"post-ln", "Post-LN, no warm-up", false, false},
      {"post-ln-warmup", "Post-LN, warm-up", false, true},
      {"pre-ln", "Pre-LN, no warm-up", true, false},
  };
  return all;
}

struct Run {
  const Config* config;
  std::vector<double> loss;                      // per step
  std::vector<std::pair<int64_t, double>> held;  // (step, held-out nats)
  double bpc = NAN, seconds = 0, cpu = 0;
  std::shared_ptr<CharLM> model;
};

Run train(const Config& cfg, const Corpus& c, const Settings& s) {
  Run r{&cfg, {}, {}, NAN, 0, 0, nullptr};
  const auto wall0 = std::chrono::steady_clock::now();
  const double cpu0 = cpu_seconds();
  tg::Generator gen(s.seed);  // the same initial weights for both Post-LN runs
  r.model = std::make_shared<CharLM>(cfg.norm_first, s.xavier, gen);
  optim::Adam<float> opt(r.model->named_parameters(), {.lr = s.lr});
  opt.set_clip_grad_norm(1.0);
  std::unique_ptr<optim::LinearWarmup<float>> sched;
  if (cfg.warmup) sched = std::make_unique<optim::LinearWarmup<float>>(opt, s.warmup, 0.01);
  tg::Generator data(s.seed + 1);  // the same batches for every run
  tg::Tape<float> tape;
  tg::Tensor<float> ids;
  std::vector<int64_t> targets;
  examples::ProgressBar bar(std::string("  ") + cfg.key, s.steps);
  for (int64_t step = 0; step < s.steps; ++step) {
    make_batch(c.train, random_starts(c.train, s.batch, data), ids, targets);
    tape.clear();
    opt.zero_grad();
    const auto loss = tg::cross_entropy((*r.model)(tape.constant(ids)), targets);
    tape.backward(loss);
    opt.step();
    if (sched) sched->step();
    r.loss.push_back(loss.item());
    if ((step + 1) % s.eval_every == 0 || step + 1 == s.steps)
      r.held.emplace_back(step + 1, held_out_loss(*r.model, c.held_out, 256));
    char info[64];
    std::snprintf(info, sizeof info, "loss %.3f", double(loss.item()));
    bar.update(step + 1, info);
  }
  bar.finish();
  r.bpc = r.held.back().second / std::log(2.0);
  r.seconds = examples::seconds_since(wall0);
  r.cpu = cpu_seconds() - cpu0;
  return r;
}

std::string sample(CharLM& model, int64_t length, double temperature, uint64_t seed,
                   const std::string& prompt) {
  tg::NoGradGuard no_grad;
  model.eval();
  tg::Generator g(seed);
  std::vector<int> text;
  for (char ch : prompt)
    if (const int s = symbol_of(static_cast<unsigned char>(ch)); s >= 0) text.push_back(s);
  if (text.empty()) text.push_back(95);
  tg::Tape<float> tape;
  tg::Tensor<float> ids;
  std::string out = prompt;
  std::vector<double> p(kVocab);
  for (int64_t i = 0; i < length; ++i) {
    const int64_t n = std::min<int64_t>(kContext, static_cast<int64_t>(text.size()));
    ids.resize({n, 1});
    for (int64_t t = 0; t < n; ++t) ids(t, 0) = float(text[text.size() - n + t]);
    tape.clear();
    const tg::Tensor<float>& logits = model(tape.constant(ids)).value();
    double mx = -INFINITY, sum = 0;
    for (int64_t v = 0; v < kVocab; ++v) mx = std::max(mx, double(logits(n - 1, v)) / temperature);
    for (int64_t v = 0; v < kVocab; ++v)
      sum += (p[v] = std::exp(double(logits(n - 1, v)) / temperature - mx));
    double u = g.uniform() * sum;
    int next = kVocab - 1;
    for (int v = 0; v < kVocab; ++v)
      if ((u -= p[v]) < 0) {
        next = v;
        break;
      }
    text.push_back(next);
    out += char_of(next);
  }
  model.train();
  return out;
}

// ---------------------------------------------------------------- output

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

}  // namespace

int main(int argc, char** argv) {
  std::string data_dir = kDefaultData, out = "transformer_lm_out", init = "xavier", prompt = "\n";
  Settings s{.steps = 600,
             .batch = 32,
             .warmup = 150,
             .eval_every = 1,
             .xavier = true,
             .lr = 5e-3,
             .seed = 1};
  int threads = 2;
  int64_t sample_length = 400;
  double temperature = 0.8;
  std::vector<std::string> only = {"post-ln", "post-ln-warmup", "pre-ln"};
  CLI::App app(
      "A causal character-level Transformer (4 layers, d_model 128, 4 heads, context 64) on the\n"
      "fortunes text: gradient norms per block at initialisation for Post-LN and Pre-LN, then\n"
      "Post-LN without and with warm-up and Pre-LN without warm-up trained at one large learning\n"
      "rate on the same batches, held-out bits per character, and a sample.");
  app.add_option("--data", data_dir, "text files (Debian's fortunes package)")
      ->capture_default_str();
  app.add_option("--out", out, "output folder, created if missing")->capture_default_str();
  app.add_option("--steps", s.steps, "training steps per run")
      ->capture_default_str()
      ->check(examples::positive());
  app.add_option("--batch", s.batch, "sequences per step")
      ->capture_default_str()
      ->check(examples::positive());
  app.add_option("--lr", s.lr, "Adam's learning rate for every run")
      ->capture_default_str()
      ->check(examples::positive());
  app.add_option("--warmup", s.warmup, "warm-up steps of the warm-up run, linear from 1%")
      ->capture_default_str()
      ->check(examples::positive());
  app.add_option("--only", only, "comma-separated runs")
      ->capture_default_str()
      ->delimiter(',')
      ->check(CLI::IsMember(only));
  app.add_option("--threads", threads, "threads")
      ->capture_default_str()
      ->check(examples::positive());
  app.add_option("--seed", s.seed, "seed of the weights, the batches and the sample")
      ->capture_default_str();
  app.add_option("--init", init,
                 "encoder matrices xavier_uniform_ as nn.Transformer initialises them, or\n"
                 "the layers' own defaults (Linear's kaiming_uniform_, as nn.TransformerEncoder\n"
                 "alone leaves them)")
      ->capture_default_str()
      ->check(CLI::IsMember({"xavier", "pytorch"}));
  app.add_option("--sample", sample_length, "characters to sample from the best model")
      ->capture_default_str()
      ->check(examples::at_least(0));
  app.add_option("--temperature", temperature, "sampling temperature")
      ->capture_default_str()
      ->check(examples::positive());
  app.add_option("--prompt", prompt, "the sample's beginning (default a newline)");
  if (const int rc = examples::parse_flags(app, argc, argv); rc >= 0) return rc;
  s.xavier = init == "xavier";
  s.eval_every = std::max<int64_t>(1, s.steps / 12);
  std::vector<const Config*> chosen;
  for (const auto& c : configs())
    if (std::find(only.begin(), only.end(), c.key) != only.end()) chosen.push_back(&c);

  try {
    tg::set_num_threads(threads);
    const auto wall0 = std::chrono::steady_clock::now();
    const Corpus corpus = read_corpus(data_dir);  // first: no output folder when there is no text
    std::filesystem::create_directories(out);
    std::printf("Text: %d files of %s, %zu training and %zu held-out characters (96 symbols)\n",
                corpus.files, data_dir.c_str(), corpus.train.size(), corpus.held_out.size());
    std::printf(
        "Model: 4 x TransformerEncoderLayer(128, 4 heads, ff 512), context 64, batch %lld, "
        "%d thread%s\n\n",
        static_cast<long long>(s.batch), threads, threads == 1 ? "" : "s");

    // 1. Gradient norms at initialisation.
    constexpr int kInitBatches = 8;
    const InitNorms post = measure_at_init(false, corpus, s, kInitBatches);
    const InitNorms pre = measure_at_init(true, corpus, s, kInitBatches);
    std::printf("1. Gradient L2 norm per block at initialisation (mean of %d batches)\n",
                kInitBatches);
    std::printf("   block   Post-LN attention  feed-forward   Pre-LN attention  feed-forward\n");
    for (int64_t k = 0; k < kLayers; ++k)
      std::printf("   %lld       %15.3e  %12.3e   %16.3e  %12.3e\n", static_cast<long long>(k + 1),
                  post.attention[k], post.feed_forward[k], pre.attention[k], pre.feed_forward[k]);
    const auto ratio = [](const std::vector<double>& v) { return v.back() / v.front(); };
    std::printf("   last/first %12.2f  %12.2f   %16.2f  %12.2f\n\n", ratio(post.attention),
                ratio(post.feed_forward), ratio(pre.attention), ratio(pre.feed_forward));
    std::printf("The monitor on Post-LN at initialisation (first batch):\n%s%s\n",
                post.report.c_str(), post.diagnosis.c_str());

    // 2. Training.
    std::printf("2. Training: Adam lr %g, clip_grad_norm 1, %lld steps, warm-up %lld steps\n", s.lr,
                static_cast<long long>(s.steps), static_cast<long long>(s.warmup));
    std::vector<Run> runs;
    for (const Config* c : chosen) {
      runs.push_back(train(*c, corpus, s));
      const Run& r = runs.back();
      std::printf("   %-16s held-out %.3f bits/char  (%.0f s, %.1f ms/step)\n", c->label, r.bpc,
                  r.seconds, 1e3 * r.seconds / double(s.steps));
      std::fflush(stdout);
    }

    // 3. A sample from the best model.
    const Run* best = &runs.front();
    for (const Run& r : runs)
      if (r.bpc < best->bpc) best = &r;
    const std::string text = sample(*best->model, sample_length, temperature, s.seed, prompt);
    std::printf("\n3. Sampled from %s (temperature %.2f, seed %llu):\n%s\n", best->config->label,
                temperature, static_cast<unsigned long long>(s.seed), text.c_str());

    // Files.
    diag::LinePlot gplot, lplot;
    gplot.title("Gradient norm per block at initialisation (mean of 8 batches)")
        .x_label("block (1 = nearest the input)")
        .y_label("gradient L2 norm (log scale)")
        .log_y()
        .size(900, 560);
    gplot.add("Post-LN attention", post.attention).add("Post-LN feed-forward", post.feed_forward);
    gplot.add("Pre-LN attention", pre.attention).add("Pre-LN feed-forward", pre.feed_forward);
    gplot.save(out + "/grad_norms_init.svg");
    lplot.title("Training loss (moving average of 20 steps) and held-out loss (points), nats/char")
        .x_label("step")
        .y_label("cross-entropy")
        .y_limits(1.0, 4.6)
        .size(1000, 600);
    std::ostringstream csv_init, csv_train, csv_sum;
    csv_init
        << "block,post_ln_attention,post_ln_feed_forward,pre_ln_attention,pre_ln_feed_forward\n";
    for (int64_t k = 0; k < kLayers; ++k)
      csv_init << k + 1 << "," << post.attention[k] << "," << post.feed_forward[k] << ","
               << pre.attention[k] << "," << pre.feed_forward[k] << "\n";
    csv_train << "run,step,loss,held_out\n";
    csv_sum << "run,lr,steps,warmup,held_out_bits_per_char,seconds\n";
    for (const Run& r : runs) {
      lplot.add(std::string(r.config->label) + " (train)", smooth(r.loss, 20));
      std::vector<double> hx, hy;
      for (const auto& [st, v] : r.held) hx.push_back(double(st)), hy.push_back(v);
      lplot.add(std::string(r.config->label) + " (held-out)", hx, hy);
      size_t h = 0;
      for (size_t i = 0; i < r.loss.size(); ++i) {
        csv_train << r.config->key << "," << i + 1 << "," << r.loss[i] << ",";
        if (h < r.held.size() && r.held[h].first == static_cast<int64_t>(i + 1))
          csv_train << r.held[h++].second;
        csv_train << "\n";
      }
      csv_sum << r.config->key << "," << s.lr << "," << s.steps << ","
              << (r.config->warmup ? s.warmup : 0) << "," << r.bpc << "," << r.seconds << "\n";
    }
    lplot.save(out + "/loss.svg");
    tg::io::write_file_atomically(out + "/grad_norms_init.csv", csv_init.str());
    tg::io::write_file_atomically(out + "/training.csv", csv_train.str());
    tg::io::write_file_atomically(out + "/summary.csv", csv_sum.str());
    tg::io::write_file_atomically(out + "/sample.txt", text + "\n");
    std::printf("\nWrote %s/{grad_norms_init,loss}.svg, CSVs and sample.txt. Total %.0f s.\n",
                out.c_str(), examples::seconds_since(wall0));
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
  return 0;
}
