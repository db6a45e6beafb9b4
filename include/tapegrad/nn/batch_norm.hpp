#pragma once
/// \file
/// BatchNorm: batch normalisation over the channels (dim 1) of [N,C] or [N,C,H,W] inputs, as
/// torch.nn.BatchNorm1d / BatchNorm2d (equations in ops/norm.hpp and SEMANTICS.md):
///   train: normalise with the batch mean and biased variance, then update
///          running_mean ← (1 − m)·running_mean + m·μ, running_var ← (1 − m)·running_var +
///          m·σ²·n/(n−1) with m = momentum, or 1/num_batches_tracked when momentum is nullopt;
///   eval:  normalise with running_mean and running_var (batch statistics again when
///          track_running_stats = false).
/// Parameters weight (γ = 1) and bias (β = 0) exist when affine; the buffers running_mean (0),
/// running_var (1) and num_batches_tracked (0, a scalar) when track_running_stats, registered so
/// named_buffers() lists them ("bn1.running_mean") and checkpoints save them. The buffers are
/// updated in place: a tensor obtained from named_buffers() sees every update.
///
/// BatchNorm accepts any input of rank >= 2; BatchNorm1d requires [N,C] or [N,C,L] and
/// BatchNorm2d [N,C,H,W], like PyTorch's.
///
/// Module::summary() runs the model once on zeros: in training mode that call normalises with the
/// batch statistics but leaves the running statistics untouched.
///
/// set_stats_reducer(r) makes the layer take its training statistics over several processes
/// (ops/norm.hpp; distributed::convert_sync_batchnorm sets it on every BatchNorm of a model, and
/// its name() then reads "SyncBatchNorm(...)"). As in PyTorch, only a module in training mode
/// synchronises, and summary() never does.

#include <cstdint>
#include <memory>
#include <optional>
#include <sstream>
#include <string>

#include "tapegrad/nn/module.hpp"
#include "tapegrad/ops/activation.hpp"
#include "tapegrad/ops/norm.hpp"

namespace tapegrad::nn {

/// Batch normalisation over the channels (dim 1) of inputs of rank >= 2, as torch.nn.BatchNorm: y =
/// (x − μ) / √(σ² + eps) · γ + β, with the batch statistics in training and the running ones in
/// eval (details in the file's description). Throws ShapeError if x's dim 1 is not num_features.
template <class T>
class BatchNorm : public Module<T> {
 public:
  /// num_features channels; momentum nullopt: cumulative average of the batch statistics; affine:
  /// learn γ and β; track_running_stats: keep running statistics for eval. Throws ValueError if
  /// num_features <= 0, eps is negative or not finite, or momentum is outside [0, 1] (or NaN).
  explicit BatchNorm(int64_t num_features, double eps = 1e-5, std::optional<double> momentum = 0.1,
                     bool affine = true, bool track_running_stats = true)
      : BatchNorm("BatchNorm", num_features, eps, momentum, affine, track_running_stats) {}

  ///@{
  /// Parameters (undefined when affine = false) and buffers (empty when track_running_stats =
  /// false), public as in torch::nn::BatchNorm2dImpl.
  /// γ (weight, [C], initially 1) and β (bias, [C], initially 0), defined when affine.
  Parameter<T> weight, bias;
  ///@}
  ///@{
  /// The buffers running_mean [C], running_var [C] and num_batches_tracked (scalar), when
  /// track_running_stats; updated in place in training.
  Tensor<T> running_mean, running_var, num_batches_tracked;
  ///@}

  Var<T> forward(const Var<T>& x) override { return apply(x, false); }

  /// relu(forward(x)) as one op, batch_norm_relu (ops/norm.hpp): one pass over the values
  /// forward and one fewer backward, the same running statistics and eval behaviour. The
  /// ResNet blocks call it for a BatchNorm followed by a ReLU. Under summary() it is
  /// (*this)(x) and then relu, so that the table lists this layer.
  Var<T> forward_relu(const Var<T>& x) {
    if (in_summary()) return relu_((*this)(x));
    return apply(x, true);
  }

 private:
  Var<T> apply(const Var<T>& x, bool relu) {
    const Shape s = x.shape();  // a copy: recording may move the nodes
    check_rank(s);
    if (s[1] != num_features_)
      tapegrad::detail::fail<ShapeError>(name(), ": input ", s, " has ", s[1],
                                         " channels, expected ", num_features_);
    // Batch statistics in training, and always when no running statistics are kept.
    const bool use_batch_stats = this->is_training() || !track_running_stats_;
    int64_t per_channel = s[0];
    for (int d = 2; d < s.rank(); ++d) per_channel *= s[d];
    // With a reducer the count over all processes decides (batch_norm checks it), and every
    // process must reach the reduction.
    const BatchStatsReducer* reducer =
        this->is_training() && !in_summary() ? reducer_.get() : nullptr;
    if (use_batch_stats && per_channel == 1 && !reducer)  // an empty batch (0) passes
      tapegrad::detail::fail<ValueError>(
          name(), ": Expected more than 1 value per channel when training, got input size ", s);
    Tape<T>& tape = x.tape();
    const Var<T> g = affine_ ? tape.param(weight) : Var<T>();
    const Var<T> b = affine_ ? tape.param(bias) : Var<T>();
    // summary() must not move the running statistics: it then normalises with batch stats only.
    const bool keep_stats = track_running_stats_ && !(this->is_training() && in_summary());
    return (relu ? batch_norm_relu<T>
                 : batch_norm<T>)(x, g, b, keep_stats ? running_mean : Tensor<T>(),
                                  keep_stats ? running_var : Tensor<T>(), use_batch_stats,
                                  momentum_, eps_, keep_stats ? num_batches_tracked : Tensor<T>(),
                                  reducer);
  }

 public:
  std::string name() const override {
    std::ostringstream os;
    os << (reducer_ ? "SyncBatchNorm" : kind_) << "(" << num_features_;
    if (eps_ != 1e-5) os << ", eps=" << eps_;
    if (momentum_ != std::optional<double>(0.1)) {
      os << ", momentum=";
      if (momentum_)
        os << *momentum_;
      else
        os << "None";
    }
    if (!affine_) os << ", affine=false";
    if (!track_running_stats_) os << ", track_running_stats=false";
    os << ")";
    return os.str();
  }

  /// The number of channels C.
  int64_t num_features() const { return num_features_; }
  /// The epsilon added to the variance.
  double eps() const { return eps_; }
  /// The momentum of the running statistics (nullopt: cumulative average).
  std::optional<double> momentum() const { return momentum_; }
  /// Whether γ and β are learned.
  bool affine() const { return affine_; }
  /// Whether running statistics are kept.
  bool track_running_stats() const { return track_running_stats_; }

  /// Training statistics over several processes (nullptr: this batch alone).
  void set_stats_reducer(std::shared_ptr<const BatchStatsReducer> reducer) {
    reducer_ = std::move(reducer);
  }
  /// The reducer set by set_stats_reducer(), or nullptr.
  const std::shared_ptr<const BatchStatsReducer>& stats_reducer() const { return reducer_; }

  /// running_mean ← 0, running_var ← 1, num_batches_tracked ← 0 (in place).
  void reset_running_stats() {
    if (!track_running_stats_) return;
    running_mean.zero_();
    running_var.fill_(T(1));
    num_batches_tracked.zero_();
  }
  /// Also γ ← 1, β ← 0.
  void reset_parameters() {
    reset_running_stats();
    if (!affine_) return;
    weight.value().fill_(T(1));
    bias.value().zero_();
  }

 protected:
  /// For BatchNorm1d and BatchNorm2d: kind names the layer in summaries and errors.
  BatchNorm(const char* kind, int64_t num_features, double eps, std::optional<double> momentum,
            bool affine, bool track_running_stats)
      : num_features_(num_features),
        eps_(eps),
        momentum_(momentum),
        affine_(affine),
        track_running_stats_(track_running_stats),
        kind_(kind) {
    if (num_features <= 0)
      tapegrad::detail::fail<ValueError>(kind, ": num_features must be positive, got ",
                                         num_features);
    // Checked here too, not only at the first forward: the error comes where the layer is built.
    tapegrad::detail::check_norm_eps(kind, eps);
    tapegrad::detail::check_norm_momentum(kind, momentum);
    if (affine) {
      weight = this->register_parameter("weight", Tensor<T>::ones({num_features}));
      bias = this->register_parameter("bias", Tensor<T>::zeros({num_features}));
    }
    if (track_running_stats) {
      running_mean = this->register_buffer("running_mean", Tensor<T>::zeros({num_features}));
      running_var = this->register_buffer("running_var", Tensor<T>::ones({num_features}));
      num_batches_tracked = this->register_buffer("num_batches_tracked", Tensor<T>::zeros({}));
    }
  }

  /// BatchNorm: rank >= 2; the 1d/2d variants narrow it.
  virtual void check_rank(const Shape& s) const {
    if (s.rank() < 2)
      tapegrad::detail::fail<ShapeError>(name(), ": expected an input [N,C] or [N,C,H,W], got ", s);
  }

 private:
  static bool in_summary() { return detail::summary_rows != nullptr; }

  int64_t num_features_;
  double eps_;
  std::optional<double> momentum_;
  bool affine_, track_running_stats_;
  const char* kind_;
  std::shared_ptr<const BatchStatsReducer> reducer_;
};

/// torch.nn.BatchNorm1d: input [N,C] or [N,C,L].
template <class T>
class BatchNorm1d : public BatchNorm<T> {
 public:
  /// Batch normalisation of [N,C] or [N,C,L] inputs (ShapeError for other ranks); arguments and
  /// ValueErrors as BatchNorm's.
  explicit BatchNorm1d(int64_t num_features, double eps = 1e-5,
                       std::optional<double> momentum = 0.1, bool affine = true,
                       bool track_running_stats = true)
      : BatchNorm<T>("BatchNorm1d", num_features, eps, momentum, affine, track_running_stats) {}

 protected:
  void check_rank(const Shape& s) const override {
    if (s.rank() != 2 && s.rank() != 3)
      tapegrad::detail::fail<ShapeError>(this->name(),
                                         ": expected a 2-D [N,C] or 3-D [N,C,L] input, got ",
                                         s.rank(), "-D input ", s);
  }
};

/// torch.nn.BatchNorm2d: input [N,C,H,W].
template <class T>
class BatchNorm2d : public BatchNorm<T> {
 public:
  /// Batch normalisation of [N,C,H,W] inputs (ShapeError for other ranks); arguments and
  /// ValueErrors as BatchNorm's.
  explicit BatchNorm2d(int64_t num_features, double eps = 1e-5,
                       std::optional<double> momentum = 0.1, bool affine = true,
                       bool track_running_stats = true)
      : BatchNorm<T>("BatchNorm2d", num_features, eps, momentum, affine, track_running_stats) {}

 protected:
  void check_rank(const Shape& s) const override {
    if (s.rank() != 4)
      tapegrad::detail::fail<ShapeError>(this->name(), ": expected a 4-D input [N,C,H,W], got ",
                                         s.rank(), "-D input ", s);
  }
};

}  // namespace tapegrad::nn
