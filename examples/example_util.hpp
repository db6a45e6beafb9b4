#pragma once
// Helpers the example programs share (not part of the library): a progress bar drawn on stderr
// only when stderr is a terminal, a small command-line flag reader, mkdir -p, and
// classification accuracy over a dataset in eval mode without recording gradients.

#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <optional>
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

// Flags as "--name value" or "--name=value"; every flag takes a value except those listed as
// switches. Unknown flags and missing values are errors with a pointer to --help.
class Flags {
 public:
  Flags(int argc, char** argv, std::vector<std::string> known, std::vector<std::string> switches)
      : known_(std::move(known)), switches_(std::move(switches)) {
    for (int i = 1; i < argc; ++i) {
      std::string a = argv[i];
      if (a.rfind("--", 0) != 0) fail("unexpected argument '" + a + "'");
      std::string name = a.substr(2), value;
      const auto eq = name.find('=');
      const bool is_switch = contains(switches_, name);
      if (eq != std::string::npos) {
        value = name.substr(eq + 1);
        name = name.substr(0, eq);
      } else if (!is_switch) {
        if (i + 1 >= argc) fail("--" + name + " needs a value");
        value = argv[++i];
      }
      if (!contains(known_, name) && !contains(switches_, name)) fail("unknown flag --" + name);
      values_.emplace_back(name, value);
    }
  }
  bool has(const std::string& name) const { return get(name).has_value(); }
  std::optional<std::string> get(const std::string& name) const {
    std::optional<std::string> v;
    for (const auto& [n, x] : values_)
      if (n == name) v = x;  // the last occurrence wins
    return v;
  }
  std::string str(const std::string& name, const std::string& fallback) const {
    return get(name).value_or(fallback);
  }
  long long integer(const std::string& name, long long fallback, long long min = 0) const {
    const auto v = get(name);
    if (!v) return fallback;
    char* end = nullptr;
    const long long x = std::strtoll(v->c_str(), &end, 10);
    if (v->empty() || *end != '\0' || x < min)
      fail("--" + name + " expects an integer >= " + std::to_string(min) + ", got '" + *v + "'");
    return x;
  }

 private:
  static bool contains(const std::vector<std::string>& v, const std::string& s) {
    return std::find(v.begin(), v.end(), s) != v.end();
  }
  [[noreturn]] static void fail(const std::string& msg) {
    std::fprintf(stderr, "error: %s (see --help)\n", msg.c_str());
    std::exit(2);
  }
  std::vector<std::string> known_, switches_;
  std::vector<std::pair<std::string, std::string>> values_;
};

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
