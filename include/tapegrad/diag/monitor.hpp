#pragma once
/// \file
/// GradientMonitor: watches the gradient of every layer during training and says what is wrong.
///
///   diag::GradientMonitor<float> monitor(model);
///   ... tape.backward(loss); monitor.record(step); optimizer.step(); ...
///   std::cout << monitor.report() << monitor.diagnosis();
///   monitor.write_csv("grad_norms.csv");
///
/// Layers are the parameters grouped by their name up to the last '.', in model order:
/// "0.weight" and "0.bias" are layer "0", "block1.bn1.weight" is layer "block1.bn1". A layer's
/// norm is the L2 norm of all its parameters' gradients together, computed in double
/// (sqrt(sum g^2), rescaled when the squares would overflow). Ratios compare a layer with the
/// last *weight layer* (one with a matrix or kernel: Dense, Conv2D, ...), and the first/last
/// ratio the weight layer nearest the input with the one nearest the loss: in a deep sigmoid
/// network the gradient shrinks by up to 4x per layer on its way back (sigma' <= 1/4), so that
/// ratio falls geometrically with depth (Glorot & Bengio 2010; He et al. 2015).
///
/// Flags, for the latest record:
///   vanishing   a layer's norm below vanishing_threshold, or (weight layers only) its ratio to
///               the last weight layer below vanishing_ratio
///   exploding   a layer's norm above exploding_threshold, (weight layers only) its ratio to the
///               last weight layer above exploding_ratio, or "growing": over the last
///               growth_window records the norm rose at least 3 times in 4 and grew at least
///               growth_factor-fold
///   non_finite  a NaN or Inf in a layer's gradient
/// Normalisation layers (only vectors: gamma, beta) are judged by the thresholds alone: their
/// few parameters have a small norm next to a large output layer's by count, not by vanishing.
///
/// Transformers: each nn::TransformerEncoderLayer is a block whose attention ("self_attn",
/// "self_attn.out_proj") and feed-forward ("linear1", "linear2") gradient norms are reported
/// together, input side first. Xiong et al. 2020 ("On Layer Normalization in the Transformer
/// Architecture") show that at initialisation a Post-LN Transformer's gradients are largest for
/// the blocks near the output, so that a large learning rate at the start diverges unless it is
/// warmed up, while a Pre-LN one's are about equal across the blocks. Flag:
///   needs_warmup  Post-LN blocks (norm_first = false) whose last block's gradient norm is above
///                 warmup_ratio times the first block's; the diagnosis prescribes a learning-rate
///                 warm-up or Pre-LN (or, after set_warmup(), says the warm-up is on).
/// History is a ring buffer of `history` records: memory stays bounded over any run length, and
/// recording allocates nothing.

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <span>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "tapegrad/error.hpp"
#include "tapegrad/io/atomic_file.hpp"
#include "tapegrad/nn/module.hpp"
#include "tapegrad/optim/optimizer.hpp"
#include "tapegrad/parameter.hpp"

namespace tapegrad::diag {

/// The hidden activation, which decides the likely cause of vanishing gradients.
enum class Activation { Unknown, Sigmoid, Tanh, ReLU };

/// "Sigmoid", "Tanh", "ReLU" or "unknown".
inline const char* activation_name(Activation a) {
  switch (a) {
    case Activation::Sigmoid:
      return "Sigmoid";
    case Activation::Tanh:
      return "Tanh";
    case Activation::ReLU:
      return "ReLU";
    case Activation::Unknown:
      break;
  }
  return "unknown";
}

/// Thresholds and history of a GradientMonitor. Its constructor throws ValueError unless
/// every >= 1, 1 <= history <= max_monitor_history, growth_window >= 2, no threshold or ratio is
/// NaN (it would silently turn its flag off), 0 <= vanishing_threshold < exploding_threshold,
/// 0 <= vanishing_ratio < exploding_ratio, growth_factor >= 1 and warmup_ratio > 0; the vanishing
/// limits must be finite (0 turns their flag off), the others may be +infinity (which turns
/// theirs off). Growth is judged once growth_window records are kept: a history shorter than
/// growth_window never flags it.
struct MonitorOptions {
  int64_t every = 1;                  ///< record() records only steps divisible by this
  double vanishing_threshold = 1e-7;  ///< a layer norm below this is vanishing
  double vanishing_ratio = 1e-2;      ///< a layer/last-layer ratio below this is vanishing
  double exploding_threshold = 1e3;   ///< a layer norm above this is exploding
  double exploding_ratio = 1e2;       ///< a layer/last-layer ratio above this is exploding
  int growth_window = 8;              ///< records examined for steady growth
  double growth_factor = 10;          ///< growth over the window that counts as exploding
  int64_t history = 1000;             ///< records kept (a ring buffer)
  /// Post-LN last/first block gradient ratio that calls for a warm-up. Measured at initialisation
  /// (examples/transformer_lm.cpp, 4 layers): Post-LN 1.4, Pre-LN 0.9.
  double warmup_ratio = 1.2;
};

/// The largest MonitorOptions::history: the ring buffer (history × layers norms) is allocated up
/// front.
inline constexpr int64_t max_monitor_history = int64_t{1} << 24;

/// One layer's gradient in the latest record, and its diagnosis.
struct LayerStatus {
  std::string layer;         ///< the name prefix, e.g. "0" or "block1.bn1"
  std::string module;        ///< the module's name() when known, e.g. "Dense(784, 256)"
  double norm = 0;           ///< L2 norm of the layer's gradients
  double ratio_to_last = 0;  ///< norm / last weight layer's norm (NaN when that is 0 or not finite)
  bool weight_layer = false;  ///< has a matrix or kernel (the ratio rules apply to it)
  ///@{
  /// The layer's flags: vanishing or exploding (by norm or ratio), growing steadily over the
  /// window, or holding NaN/inf.
  bool vanishing = false, exploding = false, growing = false, non_finite = false;
  ///@}

  /// "NON-FINITE", "GROWING", "EXPLODING", "VANISHING" or "ok".
  std::string flag() const {
    if (non_finite) return "NON-FINITE";
    if (growing) return "GROWING";
    if (exploding) return "EXPLODING";
    if (vanishing) return "VANISHING";
    return "ok";
  }
};

/// One Transformer block (an nn::TransformerEncoderLayer): gradient L2 norms of its attention and
/// feed-forward parameters, and of both together.
struct BlockStatus {
  std::string block;  ///< its name prefix, e.g. "encoder.layers.0"
  ///@{
  /// L2 norms of the block's attention parameters, of its feed-forward parameters, and of both.
  double attention = 0, feed_forward = 0, norm = 0;
  ///@}
};

/// The diagnosis of the latest record: per layer, per Transformer block, and overall.
struct GradientFlags {
  int64_t step = -1;  ///< the step of the latest record, -1 before any
  /// Per layer, input side first.
  std::vector<LayerStatus> layers;
  double first_last_ratio = 0;  ///< first weight layer's norm / last weight layer's norm
  double total_norm = 0;        ///< L2 norm over all layers (what clip_grad_norm_ sees)
  ///@{
  /// Whether any layer is vanishing, exploding, growing or non-finite.
  bool vanishing = false, exploding = false, growing = false, non_finite = false;
  ///@}
  std::vector<BlockStatus> blocks;  ///< Transformer blocks, input side first (empty if none)
  bool post_ln = false;       ///< the blocks normalise after the residual (norm_first = false)
  double block_ratio = NAN;   ///< last block's norm / first block's (NaN without 2 blocks)
  bool needs_warmup = false;  ///< Post-LN and block_ratio > warmup_ratio

  /// Whether anything is flagged (vanishing, exploding, non-finite, or a warm-up needed).
  bool any() const { return vanishing || exploding || non_finite || needs_warmup; }
  /// any().
  explicit operator bool() const { return any(); }
};

/// Per-layer gradient norms after backward, their history, and a diagnosis of vanishing and
/// exploding gradients with the likely cause and cure (see the file's description).
template <class T>
class GradientMonitor {
 public:
  /// Attaches to a model: its parameters, and its module names to recognise the activation.
  /// Throws ValueError for invalid options (see MonitorOptions) or no trainable parameter.
  explicit GradientMonitor(const nn::Module<T>& model, MonitorOptions options = {})
      : opt_(options) {
    setup(model.named_parameters());
    collect_modules(model, "");
    for (auto& l : layers_)
      for (const auto& [prefix, name] : module_names_)
        if (prefix == l.name) l.module = name;
    detect_architecture();
    find_blocks();
  }
  /// Attaches to parameters only (no module names: tell it the activation if you know it).
  /// ValueErrors as the other constructor's.
  explicit GradientMonitor(const std::vector<std::pair<std::string, Parameter<T>>>& named,
                           MonitorOptions options = {})
      : opt_(options) {
    setup(named);
  }

  /// States the hidden activation, for models whose module names do not show it.
  void set_activation(Activation a) { activation_ = a; }
  /// The hidden activation (detected from module names or set).
  Activation activation() const { return activation_; }
  /// The options given at construction.
  const MonitorOptions& options() const { return opt_; }

  /// Tells the diagnosis that the learning rate is warmed up over the first `steps` steps (0: not),
  /// so that it does not prescribe a warm-up that is already on. Throws ValueError if steps < 0.
  void set_warmup(int64_t steps) {
    if (steps < 0)
      tapegrad::detail::fail<ValueError>("GradientMonitor: set_warmup: steps must be >= 0, got ",
                                         steps);
    warmup_steps_ = steps;
  }

  /// Tells the diagnosis which clipping the optimizer applies (read now, not kept in sync), so
  /// it does not prescribe what is already on and says what the clipping does to this step.
  void set_clipping(const optim::Optimizer<T>& optimizer) {
    const auto& n = optimizer.clip_grad_norm();
    const auto& v = optimizer.clip_grad_value();
    clip_max_norm_ = n ? n->max_norm : NAN;
    clip_norm_type_ = n ? n->norm_type : 2.0;
    clip_value_ = v ? v->clip_value : NAN;
  }

  /// Number of layers (parameters grouped by name prefix).
  int64_t num_layers() const { return static_cast<int64_t>(layers_.size()); }
  /// The layers' names, input side first.
  std::vector<std::string> layer_names() const {
    std::vector<std::string> out;
    for (const auto& l : layers_) out.push_back(l.name);
    return out;
  }

  /// Measures every layer's gradient norm now, if step is one to record (step % every == 0).
  /// Call after backward() and before the optimizer changes the gradients. Returns whether it
  /// recorded.
  bool record(int64_t step) {
    if (step % opt_.every != 0) return false;
    const size_t cap = static_cast<size_t>(opt_.history);
    const size_t slot = (start_ + count_) % cap;
    if (count_ == cap)
      start_ = (start_ + 1) % cap;
    else
      ++count_;
    steps_[slot] = step;
    double* out = &norms_[slot * layers_.size()];
    for (size_t i = 0; i < layers_.size(); ++i) out[i] = layer_norm(layers_[i]);
    ++total_records_;
    if (any_non_finite(out)) ++non_finite_records_;
    return true;
  }

  /// Records in the history (at most options().history).
  int64_t size() const { return static_cast<int64_t>(count_); }
  /// Records ever made, including those the ring buffer has dropped.
  int64_t total_records() const { return total_records_; }
  /// Records that held a NaN or inf gradient.
  int64_t non_finite_records() const { return non_finite_records_; }
  /// Record k of the history, 0 = oldest: its step and per-layer norms.
  int64_t step_at(int64_t k) const { return steps_[index(k)]; }
  /// The per-layer norms of record k, 0 = oldest (k in [0, size())).
  std::span<const double> norms_at(int64_t k) const {
    return {&norms_[index(k) * layers_.size()], layers_.size()};
  }
  /// The per-layer norms of the latest record; throws ValueError before any.
  std::span<const double> latest() const {
    if (count_ == 0) tapegrad::detail::fail<ValueError>("GradientMonitor: nothing recorded yet");
    return norms_at(size() - 1);
  }

  /// Flags for the latest record (all false before any record).
  GradientFlags flags() const {
    GradientFlags f;
    if (count_ == 0) return f;
    const auto n = latest();
    f.step = step_at(size() - 1);
    f.total_norm = combine(n);
    const double last = n[last_weight_];
    const bool ratio_ok = last > 0 && std::isfinite(last);
    f.first_last_ratio = ratio_ok ? n[first_weight_] / last : std::nan("");
    for (size_t i = 0; i < layers_.size(); ++i) {
      LayerStatus s;
      s.layer = layers_[i].name;
      s.module = layers_[i].module;
      s.weight_layer = layers_[i].weight_layer;
      s.norm = n[i];
      s.ratio_to_last = ratio_ok ? n[i] / last : std::nan("");
      s.non_finite = !std::isfinite(n[i]);
      if (!s.non_finite) {
        const bool by_ratio = ratio_ok && s.weight_layer;
        s.vanishing =
            n[i] < opt_.vanishing_threshold || (by_ratio && s.ratio_to_last < opt_.vanishing_ratio);
        s.growing = growing(i);
        s.exploding = n[i] > opt_.exploding_threshold ||
                      (by_ratio && s.ratio_to_last > opt_.exploding_ratio) || s.growing;
        if (s.exploding) s.vanishing = false;
      }
      f.vanishing |= s.vanishing;
      f.exploding |= s.exploding;
      f.growing |= s.growing;
      f.non_finite |= s.non_finite;
      f.layers.push_back(std::move(s));
    }
    for (const Block& b : blocks_) {
      BlockStatus s{b.prefix};
      s.attention = combine_layers(n, b.attention);
      s.feed_forward = combine_layers(n, b.feed_forward);
      s.norm = std::hypot(s.attention, s.feed_forward);
      f.post_ln = f.post_ln || !b.norm_first;
      f.blocks.push_back(std::move(s));
    }
    if (f.blocks.size() >= 2 && f.blocks.front().norm > 0)
      f.block_ratio = f.blocks.back().norm / f.blocks.front().norm;
    f.needs_warmup = f.post_ln && !f.non_finite && f.block_ratio > opt_.warmup_ratio;
    return f;
  }

  /// A per-layer table of the latest record: layer, module, norm, ratio to the last layer, flag.
  std::string report() const {
    std::ostringstream os;
    if (count_ == 0) return "GradientMonitor: no gradients recorded yet\n";
    const GradientFlags f = flags();
    size_t wl = 5, wm = 6;
    for (const auto& s : f.layers) {
      wl = std::max(wl, s.layer.size());
      wm = std::max(wm, s.module.size());
    }
    wm = std::min<size_t>(wm, 32);
    const bool modules = std::any_of(f.layers.begin(), f.layers.end(),
                                     [](const LayerStatus& s) { return !s.module.empty(); });
    os << "Gradient L2 norm per layer at step " << f.step
       << " (ratio = layer / last weight layer)\n";
    std::string head = "  " + pad("layer", wl) + (modules ? pad("module", wm) : "") +
                       pad("grad norm", 10) + pad("ratio", 10) + "flag\n";
    os << head << "  " << std::string(head.size() - 3, '-') << "\n";
    for (const auto& s : f.layers)
      os << "  " << pad(s.layer, wl) << (modules ? pad(s.module, wm) : "") << pad(sci(s.norm), 10)
         << pad(sci(s.ratio_to_last), 10) << s.flag() << "\n";
    os << "  total norm " << sci(f.total_norm) << ", first/last ratio " << sci(f.first_last_ratio);
    if (f.any()) {
      os << ":";
      if (f.non_finite) os << " NON-FINITE";
      if (f.exploding) os << (f.growing ? " EXPLODING (growing)" : " EXPLODING");
      if (f.vanishing) os << " VANISHING";
      if (f.needs_warmup) os << " WARM-UP";
    } else {
      os << ": ok";
    }
    os << "\n";
    if (!f.blocks.empty()) {
      os << "Transformer blocks (" << (f.post_ln ? "Post-LN" : "Pre-LN")
         << "): gradient L2 norm of the attention and feed-forward parameters\n";
      size_t wb = 5;
      for (const auto& b : f.blocks) wb = std::max(wb, b.block.size());
      os << "  " << pad("block", wb) << pad("attention", 10) << pad("feed-fwd", 10) << "both\n";
      for (const auto& b : f.blocks)
        os << "  " << pad(b.block, wb) << pad(sci(b.attention), 10) << pad(sci(b.feed_forward), 10)
           << sci(b.norm) << "\n";
      os << "  last/first block ratio " << sci(f.block_ratio)
         << (f.needs_warmup ? ": WARM-UP (Post-LN, larger near the output)" : "") << "\n";
    }
    return os.str();
  }

  /// The likely cause of what the latest record shows and the remedies that fit, wrapped at
  /// 100 columns.
  std::string diagnosis() const { return wrap(diagnosis_text(), 100); }

 private:
  std::string diagnosis_text() const {
    if (count_ == 0) return "No gradients recorded yet: call record(step) after backward().\n";
    const GradientFlags f = flags();
    std::ostringstream os;
    const auto flagged = [&](auto pred) {
      std::vector<std::string> names;
      for (const auto& s : f.layers)
        if (pred(s)) names.push_back(s.layer);
      return names;
    };
    const std::string act = activation_name(activation_);
    const bool saturating = activation_ == Activation::Sigmoid || activation_ == Activation::Tanh;
    const bool clips_norm = !std::isnan(clip_max_norm_), clips_value = !std::isnan(clip_value_);
    // "clip gradients by global norm" as a remedy, or what the clipping already on does.
    const auto clipping_remedy = [&] {
      if (!clips_norm && !clips_value) return std::string("clip gradients by global norm");
      std::ostringstream c;
      c << "(already on: ";
      if (clips_norm) {
        c << "clipping by global norm to " << sci(clip_max_norm_);
        if (clip_norm_type_ == 2.0 && f.total_norm > clip_max_norm_ && std::isfinite(f.total_norm))
          c << ", which scales this step's gradient by " << sci(clip_max_norm_ / f.total_norm);
      }
      if (clips_norm && clips_value) c << "; ";
      if (clips_value) c << "clipping each value to +-" << sci(clip_value_);
      c << ": it bounds the update, it does not cure the network below)";
      return c.str();
    };

    if (f.non_finite) {
      const auto bad = flagged([](const LayerStatus& s) { return s.non_finite; });
      os << "Non-finite gradients (NaN or Inf) at step " << f.step << " in " << bad.size() << " of "
         << f.layers.size() << " layers (first: " << bad.front() << ").\n"
         << "  Likely cause: the forward pass or the loss overflowed: a learning rate too large, "
            "gradients that exploded in earlier steps, or a log/division of 0 in the loss.\n"
         << "  Remedies: a smaller learning rate; " << clipping_remedy()
         << "; check the inputs and the loss for NaN; a variance-preserving initialisation (He "
            "for ReLU, Xavier for tanh/sigmoid); the optimizer's non-finite policy can skip such "
            "steps.\n";
    }
    if (f.exploding) {
      os << "Exploding gradients at step " << f.step << ": ";
      if (f.growing) {
        os << "norms grew more than " << opt_.growth_factor << "-fold over the last "
           << opt_.growth_window << " records";
      } else if (f.first_last_ratio > opt_.exploding_ratio) {
        os << "the first layer's gradient is " << sci(f.first_last_ratio)
           << " times the last layer's";
      } else {
        double top = 0;
        for (const auto& l : f.layers) top = std::max(top, l.norm);
        os << "largest layer norm " << sci(top) << " (threshold " << sci(opt_.exploding_threshold)
           << "), total norm " << sci(f.total_norm);
      }
      os << ".\n  Likely cause: ";
      if (f.growing)
        os << "training is diverging: the learning rate is too high for this network.\n";
      else
        os << "weights initialised too large for the depth (e.g. N(0, 1) instead of He or "
              "Xavier scaling), so each layer multiplies the gradient by more than 1.\n";
      os << "  Remedies: " << clipping_remedy()
         << "; a smaller learning rate; He (ReLU) or Xavier (tanh, sigmoid) initialisation";
      if (!has_batchnorm_ && !has_layernorm_) os << "; BatchNorm or LayerNorm";
      if (has_residual_) os << "; scale each residual branch's last layer by ~1/sqrt(depth)";
      os << ".\n";
    }
    if (f.needs_warmup) {
      os << "Post-LN Transformer whose gradients grow toward the output at step " << f.step
         << ": the last block's gradient norm is " << sci(f.block_ratio) << " times the first's ("
         << f.blocks.front().block << " " << sci(f.blocks.front().norm) << ", "
         << f.blocks.back().block << " " << sci(f.blocks.back().norm) << ").\n"
         << "  Likely cause: layer normalisation after each residual addition (norm_first = "
            "false): at initialisation the gradients of the blocks near the output are the "
            "largest (Xiong et al. 2020), so the first updates at a large learning rate are too "
            "large for them and training diverges or stalls.\n"
         << "  Remedies: ";
      if (warmup_steps_ > 0)
        os << "(already on: a learning-rate warm-up over " << warmup_steps_
           << " steps; if the loss still spikes, lengthen it or lower the peak learning rate); ";
      else
        os << "a learning-rate warm-up (optim::LinearWarmup, WarmupCosineLR, WarmupInverseSqrtLR: "
              "from a small fraction to the full rate over the first hundreds to thousands of "
              "steps); ";
      os << "Pre-LN blocks (norm_first = true, and a final LayerNorm), whose gradients are about "
            "equal across the blocks and which train without warm-up; "
         << clipping_remedy() << ".\n";
    }
    if (f.vanishing) {
      const auto van = flagged([](const LayerStatus& s) { return s.vanishing; });
      os << "Vanishing gradients at step " << f.step << ": " << van.size() << " of "
         << f.layers.size() << " layers flagged";
      if (std::isfinite(f.first_last_ratio) && f.first_last_ratio < opt_.vanishing_ratio)
        os << "; the first layer's gradient is " << sci(f.first_last_ratio)
           << " of the last layer's";
      os << ".\n  Likely cause: ";
      if (saturating) {
        os << "saturating " << act << " activations: each layer multiplies the gradient by "
           << (activation_ == Activation::Sigmoid ? "sigma'(z) <= 0.25"
                                                  : "tanh'(z) <= 1 (much less once saturated)")
           << ", so it shrinks geometrically on its way back to the first layers.\n";
        os << "  Remedies: ReLU activations with He (Kaiming) initialisation";
        // BatchNorm, not LayerNorm: per-sample statistics leave a deep sigmoid network's
        // gradient vanishing (measured in examples/vanishing_demo.cpp: ratio 1.5e-8 at depth 20).
        if (!has_batchnorm_) {
          os << "; BatchNorm after each linear layer";
          if (has_layernorm_) os << " (the LayerNorm layers here do not prevent it)";
        }
        if (!has_residual_) os << "; residual connections";
        os << "; at least Xavier (Glorot) initialisation if you keep " << act << ".\n";
      } else if (activation_ == Activation::ReLU) {
        os << "initial weights too small for the depth, or dead ReLUs (units whose input is "
              "always negative pass no gradient).\n"
           << "  Remedies: He (Kaiming) initialisation";
        if (!has_batchnorm_) os << "; BatchNorm";
        if (!has_residual_) os << "; residual connections";
        os << "; LeakyReLU; a smaller learning rate if units died during training.\n";
      } else {
        os << "saturating activations (sigmoid, tanh) or initial weights too small for the "
              "depth.\n"
           << "  Remedies: ReLU with He initialisation; BatchNorm; residual connections; Xavier "
              "initialisation for tanh/sigmoid. (Tell the monitor the activation with "
              "set_activation() for a more specific diagnosis.)\n";
      }
    }
    if (!f.any()) {
      double lo = INFINITY, hi = 0;
      for (const auto& s : f.layers) lo = std::min(lo, s.norm), hi = std::max(hi, s.norm);
      os << "No gradient problem seen at step " << f.step << ": layer norms between " << sci(lo)
         << " and " << sci(hi) << ", first/last ratio " << sci(f.first_last_ratio) << ".\n";
      if (f.blocks.size() >= 2)
        os << "  Transformer blocks (" << (f.post_ln ? "Post-LN" : "Pre-LN")
           << "): last/first block gradient ratio " << sci(f.block_ratio)
           << (f.post_ln ? " (at most " + sci(opt_.warmup_ratio) + ": no warm-up needed yet)"
                         : " (Pre-LN: no warm-up needed)")
           << ".\n";
    }
    return os.str();
  }

 public:
  /// The history as CSV: "step,layer,norm", one row per layer per record, oldest first.
  void write_csv(const std::string& path) const { io::write_file_atomically(path, csv()); }
  /// The history as CSV text (see write_csv).
  std::string csv() const {
    std::string out = "step,layer,norm\n";
    char num[40];
    for (int64_t k = 0; k < size(); ++k) {
      const auto n = norms_at(k);
      for (size_t i = 0; i < layers_.size(); ++i) {
        out += std::to_string(step_at(k)) + "," + csv_field(layers_[i].name) + ",";
        std::snprintf(num, sizeof num, "%.17g", n[i]);
        out += num;
        out += '\n';
      }
    }
    return out;
  }

 private:
  struct Layer {
    std::string name, module;
    std::vector<Parameter<T>> params;
    bool weight_layer = false;  ///< a parameter of rank >= 2: a matrix or a kernel
  };

  void setup(const std::vector<std::pair<std::string, Parameter<T>>>& named) {
    if (opt_.every < 1 || opt_.history < 1 || opt_.growth_window < 2)
      tapegrad::detail::fail<ValueError>("GradientMonitor: every (", opt_.every, ") and history (",
                                         opt_.history, ") must be at least 1, growth_window (",
                                         opt_.growth_window, ") at least 2");
    if (opt_.history > max_monitor_history)
      tapegrad::detail::fail<ValueError>("GradientMonitor: history ", opt_.history, " is above ",
                                         max_monitor_history,
                                         " records (its ring buffer is allocated up front)");
    check_thresholds();
    for (const auto& [name, p] : named) {
      if (!p.requires_grad()) continue;
      const auto dot = name.rfind('.');
      const std::string prefix = dot == std::string::npos ? "(root)" : name.substr(0, dot);
      auto it = std::find_if(layers_.begin(), layers_.end(),
                             [&](const Layer& l) { return l.name == prefix; });
      if (it == layers_.end()) it = layers_.insert(layers_.end(), Layer{prefix, "", {}});
      it->params.push_back(p);
      it->weight_layer |= p.value().rank() >= 2;
    }
    if (layers_.empty())
      tapegrad::detail::fail<ValueError>("GradientMonitor: the model has no trainable parameters");
    // The ratios' reference layers; a model without any matrix compares its first and last.
    first_weight_ = 0;
    last_weight_ = layers_.size() - 1;
    const auto is_weight = [](const Layer& l) { return l.weight_layer; };
    const auto first = std::find_if(layers_.begin(), layers_.end(), is_weight);
    if (first != layers_.end()) {
      first_weight_ = static_cast<size_t>(first - layers_.begin());
      last_weight_ = layers_.size() - 1 -
                     static_cast<size_t>(std::find_if(layers_.rbegin(), layers_.rend(), is_weight) -
                                         layers_.rbegin());
    }
    norms_.assign(static_cast<size_t>(opt_.history) * layers_.size(), 0.0);
    steps_.assign(static_cast<size_t>(opt_.history), 0);
  }

  // Written so that NaN fails: a NaN threshold would silently turn its flag off. An upper limit
  // of +infinity is allowed: nothing is above it, so its flag is off, as the user meant.
  void check_thresholds() const {
    auto check = [](const char* what, double v, double lo, bool lo_allowed, bool inf_allowed) {
      const bool in_range = v > lo || (lo_allowed && v == lo);
      if (!(in_range && (std::isfinite(v) || inf_allowed)))
        tapegrad::detail::fail<ValueError>("GradientMonitor: ", what, " must be ",
                                           inf_allowed ? "" : "finite and ",
                                           lo_allowed ? ">= " : "> ", lo, ", got ", v);
    };
    check("vanishing_threshold", opt_.vanishing_threshold, 0, true, false);
    check("exploding_threshold", opt_.exploding_threshold, 0, false, true);
    check("vanishing_ratio", opt_.vanishing_ratio, 0, true, false);
    check("exploding_ratio", opt_.exploding_ratio, 0, false, true);
    check("growth_factor", opt_.growth_factor, 1, true, true);
    check("warmup_ratio", opt_.warmup_ratio, 0, false, true);
    // Both pairs judge the same quantity: otherwise a layer could be vanishing and exploding.
    if (!(opt_.vanishing_threshold < opt_.exploding_threshold))
      tapegrad::detail::fail<ValueError>(
          "GradientMonitor: vanishing_threshold (", opt_.vanishing_threshold,
          ") must be below exploding_threshold (", opt_.exploding_threshold, ")");
    if (!(opt_.vanishing_ratio < opt_.exploding_ratio))
      tapegrad::detail::fail<ValueError>("GradientMonitor: vanishing_ratio (", opt_.vanishing_ratio,
                                         ") must be below exploding_ratio (", opt_.exploding_ratio,
                                         ")");
  }

  void collect_modules(const nn::Module<T>& m, const std::string& prefix) {
    module_names_.emplace_back(prefix.empty() ? "(root)" : prefix, m.name());
    for (const auto& [n, c] : m.named_children())
      collect_modules(*c, prefix.empty() ? n : prefix + "." + n);
  }

  // Reads the activation and the presence of normalisation and residual connections from the
  // module names ("Sigmoid", "BatchNorm1d(256)", "Residual", "BasicBlock(64, 64)").
  void detect_architecture() {
    bool sigmoid = false, tanh = false, relu = false;
    for (const auto& [prefix, name] : module_names_) {
      std::string s = name;
      for (auto& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
      sigmoid |= s.find("sigmoid") != std::string::npos;
      tanh |= s.find("tanh") != std::string::npos;
      relu |= s.find("relu") != std::string::npos || s.find("gelu") != std::string::npos ||
              s.find("elu") != std::string::npos;
      has_batchnorm_ |= s.find("batchnorm") != std::string::npos;
      has_layernorm_ |= s.find("layernorm") != std::string::npos;
      has_residual_ |=
          s.find("residual") != std::string::npos || s.find("basicblock") != std::string::npos ||
          s.find("preactblock") != std::string::npos || s.find("bottleneck") != std::string::npos ||
          s.find("transformerencoderlayer") != std::string::npos;
    }
    // Saturating activations explain vanishing gradients even when ReLUs appear elsewhere.
    activation_ = sigmoid ? Activation::Sigmoid
                  : tanh  ? Activation::Tanh
                  : relu  ? Activation::ReLU
                          : Activation::Unknown;
  }

  // The Transformer blocks among the modules, and which layers are their attention and
  // feed-forward parts (PyTorch's submodule names).
  void find_blocks() {
    for (const auto& [prefix, name] : module_names_) {
      if (name.rfind("TransformerEncoderLayer(", 0) != 0) continue;
      Block b{prefix, name.find("norm_first=true") != std::string::npos, {}, {}};
      const std::string head = prefix == "(root)" ? "" : prefix + ".";  // the model itself
      for (size_t i = 0; i < layers_.size(); ++i) {
        const std::string& l = layers_[i].name;
        if (l.rfind(head, 0) != 0) continue;
        const std::string part = l.substr(head.size());
        if (part == "self_attn" || part.rfind("self_attn.", 0) == 0) b.attention.push_back(i);
        if (part == "linear1" || part == "linear2") b.feed_forward.push_back(i);
      }
      blocks_.push_back(std::move(b));
    }
  }
  static double combine_layers(std::span<const double> n, const std::vector<size_t>& which) {
    double s = 0;
    for (size_t i : which) s += n[i] * n[i];
    return std::sqrt(s);
  }

  static double layer_norm(const Layer& l) {
    double sum = 0;
    for (const auto& p : l.params) {
      const Tensor<T>& g = p.grad();
      if (g.numel() == 0) continue;
      sum += g.array().template cast<double>().square().sum();
    }
    if (std::isinf(sum)) {  // finite values whose squares overflow: rescale by the largest
      double big = 0;
      for (const auto& p : l.params)
        if (p.grad().numel()) big = std::max(big, double(p.grad().array().abs().maxCoeff()));
      if (std::isfinite(big) && big > 0) {
        double scaled = 0;
        for (const auto& p : l.params)
          if (p.grad().numel())
            scaled += (p.grad().array().template cast<double>() / big).square().sum();
        return big * std::sqrt(scaled);
      }
      return INFINITY;
    }
    return std::sqrt(sum);  // NaN when any gradient is NaN
  }

  // L2 norm of per-layer norms, overflow-safe.
  static double combine(std::span<const double> n) {
    double big = 0;
    for (double x : n) {
      if (!std::isfinite(x)) return x;
      big = std::max(big, x);
    }
    if (big == 0) return 0;
    double s = 0;
    for (double x : n) s += (x / big) * (x / big);
    return big * std::sqrt(s);
  }

  static bool any_non_finite(const double* n, size_t count) {
    for (size_t i = 0; i < count; ++i)
      if (!std::isfinite(n[i])) return true;
    return false;
  }
  bool any_non_finite(const double* n) const { return any_non_finite(n, layers_.size()); }

  // Steady growth of layer i over the last growth_window records.
  bool growing(size_t i) const {
    const int64_t w = opt_.growth_window;
    if (size() < w) return false;
    int rises = 0;
    double prev = 0, first = 0;
    for (int64_t k = size() - w; k < size(); ++k) {
      const double x = norms_at(k)[i];
      if (!std::isfinite(x)) return false;
      if (k == size() - w)
        first = x;
      else
        rises += x > prev;
      prev = x;
    }
    return 4 * rises >= 3 * (w - 1) && first > 0 && prev >= opt_.growth_factor * first;
  }

  size_t index(int64_t k) const {
    if (k < 0 || k >= size())
      tapegrad::detail::fail<ValueError>("GradientMonitor: record ", k, " out of range (", size(),
                                         " in the history)");
    return (start_ + static_cast<size_t>(k)) % static_cast<size_t>(opt_.history);
  }

  // s cut or padded to w columns, then two spaces.
  static std::string pad(std::string s, size_t w) {
    if (s.size() > w) s = s.substr(0, w - 1) + "~";
    return s + std::string(w - s.size() + 2, ' ');
  }
  static std::string sci(double x) {
    char buf[32];
    std::snprintf(buf, sizeof buf, "%.2e", x);
    return buf;
  }
  // Wraps each line at width columns; continuation lines are indented 2 more than the line.
  static std::string wrap(const std::string& text, size_t width) {
    std::string out, line;
    std::istringstream in(text);
    while (std::getline(in, line)) {
      const size_t indent =
          line.find_first_not_of(' ') == std::string::npos ? 0 : line.find_first_not_of(' ');
      size_t start = 0;
      while (line.size() - start > width) {
        size_t cut = line.rfind(' ', start + width);
        if (cut == std::string::npos || cut <= start + indent + 2) break;  // a very long word
        out += line.substr(start, cut - start) + "\n";
        start = cut + 1;
        line.insert(start, std::string(indent + 2, ' '));
      }
      out += line.substr(start) + "\n";
    }
    return out;
  }
  static std::string csv_field(const std::string& s) {
    if (s.find_first_of(",\"\n") == std::string::npos) return s;
    std::string q = "\"";
    for (char c : s) q += c == '"' ? std::string("\"\"") : std::string(1, c);
    return q + "\"";
  }

  MonitorOptions opt_;
  std::vector<Layer> layers_;
  std::vector<std::pair<std::string, std::string>> module_names_;  // (prefix, name())
  Activation activation_ = Activation::Unknown;
  bool has_batchnorm_ = false, has_layernorm_ = false, has_residual_ = false;
  struct Block {
    std::string prefix;
    bool norm_first;
    std::vector<size_t> attention, feed_forward;  ///< indices into layers_
  };
  std::vector<Block> blocks_;
  int64_t warmup_steps_ = 0;
  size_t first_weight_ = 0, last_weight_ = 0;  // indices of the first and last weight layers
  double clip_max_norm_ = NAN, clip_norm_type_ = 2.0, clip_value_ = NAN;  // NaN: not clipping
  std::vector<double> norms_;  // history x layers, a ring buffer
  std::vector<int64_t> steps_;
  size_t start_ = 0, count_ = 0;
  int64_t total_records_ = 0, non_finite_records_ = 0;
};

}  // namespace tapegrad::diag
