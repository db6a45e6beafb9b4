#pragma once
// Helpers the example programs share (not part of the library): a progress bar drawn on stderr
// only when stderr is a terminal, command-line parsing with CLI11, mkdir -p, and
// classification accuracy over a dataset in eval mode without recording gradients.

#include <sys/stat.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ostream>
#include <sstream>
#include <string>
#include <vector>

#include "tapegrad/io/dataloader.hpp"
#include "tapegrad/nn/module.hpp"
#include "tapegrad/tape.hpp"

namespace examples {

namespace tg = tapegrad;

inline double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

// "[label] ██████░░░░░░  120/400  <info>", redrawn in place at most 10 times a second. Nothing
// is drawn when stderr is not a terminal (a log file gets no carriage-return noise).
class ProgressBar {
 public:
  ProgressBar(std::string label, int64_t total)
      : label_(std::move(label)), total_(std::max<int64_t>(total, 1)), tty_(isatty(2) == 1) {}
  ~ProgressBar() { finish(); }
  ProgressBar(const ProgressBar&) = delete;
  ProgressBar& operator=(const ProgressBar&) = delete;

  void update(int64_t done, const std::string& info) {
    if (!tty_) return;
    const auto now = std::chrono::steady_clock::now();
    if (done < total_ && drawn_ && now - last_ < std::chrono::milliseconds(100)) return;
    last_ = now;
    drawn_ = true;
    constexpr int width = 24;
    const int filled = static_cast<int>(width * std::min(done, total_) / total_);
    std::string bar;
    for (int i = 0; i < width; ++i) bar += i < filled ? "\u2588" : "\u2591";
    std::fprintf(stderr, "\r\033[K%s %s %lld/%lld  %s", label_.c_str(), bar.c_str(),
                 static_cast<long long>(done), static_cast<long long>(total_), info.c_str());
    std::fflush(stderr);
  }
  // Erases the bar so that the next line starts clean.
  void finish() {
    if (tty_ && drawn_) std::fprintf(stderr, "\r\033[K"), std::fflush(stderr);
    drawn_ = false;
  }

 private:
  std::string label_;
  int64_t total_;
  bool tty_, drawn_ = false;
  std::chrono::steady_clock::time_point last_{};
};

// Parses the command line into `app` (CLI11, which takes "--name value" and "--name=value"):
// returns -1 when the program should go on, 0 after printing --help, 2 after printing why a flag
// is wrong. `print` false prints nothing (fashion_ddp's ranks other than 0).
inline int parse_flags(CLI::App& app, int argc, char** argv, bool print = true) {
  try {
    app.parse(argc, argv);
    return -1;
  } catch (const CLI::ParseError& e) {
    std::ostream quiet(nullptr);
    return (print ? app.exit(e) : app.exit(e, quiet, quiet)) == 0 ? 0 : 2;
  }
}

// A CLI11 check that a flag's value is a number >= min (> min when `strict`), with a short message
// (CLI::PositiveNumber's spells out the range up to 1.8e308 in full).
inline CLI::Validator at_least(double min, bool strict = false) {
  char m[32];
  std::snprintf(m, sizeof m, "%s%g", strict ? ">" : ">=", min);
  return CLI::Validator(
      [=](std::string& s) {
        char* end = nullptr;
        const double x = std::strtod(s.c_str(), &end);
        const bool ok = !s.empty() && *end == '\0' && (strict ? x > min : x >= min);
        return ok ? std::string() : "expects a number " + std::string(m) + ", got '" + s + "'";
      },
      strict && min == 0 ? std::string("POSITIVE") : m);
}
inline CLI::Validator positive() { return at_least(0, true); }

// --only: a comma-separated subset of `keys` (the help's footer lists them) into `only`.
inline void add_only_flag(CLI::App& app, std::vector<std::string>& only,
                          const std::vector<std::string>& keys) {
  app.add_option("--only", only, "comma-separated configuration keys (default: all)")
      ->delimiter(',')
      ->check(CLI::IsMember(keys).description(""));
}

// The configurations whose key --only named, all when it named none, in program order.
template <class Config>
std::vector<const Config*> chosen_configs(const std::vector<Config>& all,
                                          const std::vector<std::string>& only) {
  std::vector<const Config*> chosen;
  for (const auto& c : all)
    if (only.empty() || std::find(only.begin(), only.end(), c.key) != only.end())
      chosen.push_back(&c);
  return chosen;
}

// mkdir -p.
inline void make_dirs(const std::string& path) {
  std::string cur, part;
  std::stringstream ss(path);
  if (!path.empty() && path[0] == '/') cur = "/";
  while (std::getline(ss, part, '/')) {
    if (part.empty()) continue;
    cur += part + "/";
    if (::mkdir(cur.c_str(), 0755) != 0 && errno != EEXIST)
      throw tg::IOError("cannot create directory " + cur + ": " + std::strerror(errno));
  }
  struct stat st;
  if (::stat(path.c_str(), &st) != 0 || !S_ISDIR(st.st_mode))
    throw tg::IOError(path + " is not a directory");
}

// Index of the largest logit of row i.
template <class T>
int64_t argmax_row(const tg::Tensor<T>& logits, int64_t i) {
  const int64_t c = logits.size(1);
  int64_t best = 0;
  for (int64_t j = 1; j < c; ++j)
    if (logits(i, j) > logits(i, best)) best = j;
  return best;
}

// Fraction of the samples the model classifies correctly, computed in eval mode (BatchNorm
// uses its running statistics) without recording gradients; the training mode is restored.
template <class T>
double accuracy(tg::nn::Module<T>& model, tg::io::DataLoader<T>& loader) {
  const bool was_training = model.is_training();
  model.eval();
  tg::NoGradGuard no_grad;
  tg::Tape<T> tape;
  int64_t correct = 0, seen = 0;
  for (const auto& batch : loader) {
    tape.clear();
    const tg::Tensor<T>& logits = model(tape.constant(batch.images)).value();
    for (int64_t i = 0; i < batch.size(); ++i)
      correct += argmax_row(logits, i) == batch.labels[static_cast<size_t>(i)];
    seen += batch.size();
    tape.clear();  // releases the batch so the loader can reuse its buffer
  }
  model.train(was_training);
  return seen ? double(correct) / double(seen) : 0.0;
}

}  // namespace examples
