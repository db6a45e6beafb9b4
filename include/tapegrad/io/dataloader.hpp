#pragma once
/// \file
/// DataLoader: mini-batches over an in-memory dataset (images [N, ...], N labels), as
/// torch.utils.data.DataLoader(dataset, batch_size, shuffle, drop_last) for tensors in memory.
///
///   auto opts = io::DataLoaderOptions(128).shuffle(true).seed(1).normalize(0.286f, 0.353f);
///   io::DataLoader loader(train.images, train.labels, opts);
///   for (int epoch = 0; epoch < 5; ++epoch)
///     for (const auto& batch : loader) { ... batch.images [B, ...], batch.labels (B) ... }
///
/// Each pass (each begin()) is one epoch. With shuffle, epoch e visits the samples in a
/// permutation drawn from a Generator seeded by (seed, e): a new order every epoch, the same
/// orders in every run, and set_epoch(e) replays epoch e (resuming from a checkpoint).
/// Normalisation: x' = (x - mean) / std, as torchvision.transforms.Normalize.
///
/// A Sampler replaces the loader's own order (torch.utils.data.DataLoader(sampler=...)): each
/// epoch visits the indices the sampler gives for it, which may leave samples out or repeat them;
/// distributed::DistributedSampler gives each process its share of the data set. With a sampler,
/// shuffle must be off (the sampler decides the order), as in PyTorch.
///
/// The batch lives in buffers the loader reuses: after the first batch nothing is allocated,
/// provided the previous batch's tensor is no longer held (clear the tape that used it). A batch
/// still held elsewhere is never overwritten: the loader then takes a fresh buffer.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <iterator>
#include <limits>
#include <memory>
#include <optional>
#include <span>
#include <utility>
#include <vector>

#include "tapegrad/error.hpp"
#include "tapegrad/random.hpp"
#include "tapegrad/tensor.hpp"

namespace tapegrad::io {

/// Normalisation x' = (x − mean) / std.
struct Normalize {
  /// Subtracted from every value.
  float mean = 0;
  /// Then divided into every value.
  float std = 1;
};

/// Options in the style of torch::data::DataLoaderOptions: chained setters, getters of the same
/// name. DataLoaderOptions(128).shuffle(true).seed(1).normalize(0.2860f, 0.3530f)
class DataLoaderOptions {
 public:
  /// Options with the given batch size (implicit, so a number passes as options).
  DataLoaderOptions(int64_t batch_size = 64) : batch_size_(batch_size) {}  // NOLINT: implicit

  /// Samples per batch.
  DataLoaderOptions& batch_size(int64_t v) { return batch_size_ = v, *this; }
  /// Visit the samples in a new permutation every epoch.
  DataLoaderOptions& shuffle(bool v) { return shuffle_ = v, *this; }
  /// Skip the last batch when it is smaller than batch_size.
  DataLoaderOptions& drop_last(bool v) { return drop_last_ = v, *this; }
  /// The seed of the shuffle.
  DataLoaderOptions& seed(uint64_t v) { return seed_ = v, *this; }
  /// Normalise the images: x' = (x − mean) / std.
  DataLoaderOptions& normalize(float mean, float std) { return normalize_ = {mean, std}, *this; }

  /// Samples per batch.
  int64_t batch_size() const { return batch_size_; }
  /// Whether epochs are shuffled.
  bool shuffle() const { return shuffle_; }
  /// Whether a last, smaller batch is skipped.
  bool drop_last() const { return drop_last_; }
  /// The seed of the shuffle.
  uint64_t seed() const { return seed_; }
  /// The normalisation, if set.
  const std::optional<Normalize>& normalize() const { return normalize_; }

 private:
  int64_t batch_size_;
  bool shuffle_ = false;
  bool drop_last_ = false;
  uint64_t seed_ = 0;
  std::optional<Normalize> normalize_;
};

/// The permutation of [0, out.size()) a shuffling DataLoader with this seed visits in epoch
/// `epoch`. One generator per (seed, epoch): epochs are independent of how many were run before.
inline void epoch_permutation(uint64_t seed, int64_t epoch, std::span<int64_t> out) {
  const auto n = static_cast<int64_t>(out.size());
  for (int64_t i = 0; i < n; ++i) out[static_cast<size_t>(i)] = i;
  // + 1 in unsigned arithmetic: epoch + 1 would overflow at INT64_MAX.
  Generator g(seed + 0x9E3779B97F4A7C15ULL * (static_cast<uint64_t>(epoch) + 1));
  for (int64_t i = n - 1; i > 0; --i)  // Fisher-Yates
    std::swap(out[static_cast<size_t>(i)], out[g.below(static_cast<uint64_t>(i) + 1)]);
}

/// The sample order of every epoch, for a DataLoader (see above).
class Sampler {
 public:
  virtual ~Sampler() = default;
  /// Indices per epoch.
  virtual int64_t size() const = 0;
  /// Writes epoch `epoch`'s size() indices, each in [0, dataset size), to out.
  virtual void indices(int64_t epoch, std::span<int64_t> out) const = 0;
};

/// A mini-batch.
template <class T>
struct Batch {
  Tensor<T> images;             ///< [B, ...] with the dataset's per-sample shape
  std::vector<int64_t> labels;  ///< B labels
  int64_t index = 0;            ///< which batch of the epoch

  /// Number of samples in the batch.
  int64_t size() const { return static_cast<int64_t>(labels.size()); }
};

/// Mini-batches over an in-memory dataset (images [N, ...], N labels), torch.utils.data.DataLoader:
/// iterate it for one epoch (see the file's description).
template <class T>
class DataLoader {
 public:
  /// images [N, ...] and N labels; a sampler replaces the loader's own order. Images and labels of
  /// different lengths throw ShapeError; a batch size below 1, an invalid normalisation (a
  /// non-finite mean, a std that is not positive and finite, or whose 1/std or mean/std overflows
  /// T) or shuffle with a sampler throw ValueError.
  DataLoader(Tensor<T> images, std::vector<int64_t> labels, DataLoaderOptions options = {},
             std::shared_ptr<const Sampler> sampler = nullptr)
      : images_(std::move(images)),
        labels_(std::move(labels)),
        opt_(options),
        sampler_(std::move(sampler)) {
    if (images_.rank() < 1 || images_.size(0) != static_cast<int64_t>(labels_.size()))
      tapegrad::detail::fail<ShapeError>("DataLoader: images of shape ", images_.shape(), " and ",
                                         labels_.size(), " labels: one label per image needed");
    if (opt_.batch_size() < 1)
      tapegrad::detail::fail<ValueError>("DataLoader: batch_size ", opt_.batch_size(),
                                         " must be at least 1");
    if (opt_.normalize() && !(opt_.normalize()->std > 0 && std::isfinite(opt_.normalize()->std) &&
                              std::isfinite(opt_.normalize()->mean)))
      tapegrad::detail::fail<ValueError>("DataLoader: normalize(mean ", opt_.normalize()->mean,
                                         ", std ", opt_.normalize()->std,
                                         ") needs a finite mean and a positive finite std");
    if (opt_.normalize()) {
      // load() multiplies by 1/std and adds −mean/std, in T: a tiny std (1e-40f) overflows them.
      const T inv = T(1) / T(opt_.normalize()->std);
      if (!std::isfinite(inv) || !std::isfinite(T(opt_.normalize()->mean) * inv))
        tapegrad::detail::fail<ValueError>(
            "DataLoader: normalize(mean ", opt_.normalize()->mean, ", std ", opt_.normalize()->std,
            "): std is too small: 1/std or mean/std is not finite in the images' type");
    }
    if (sampler_ && opt_.shuffle())
      tapegrad::detail::fail<ValueError>(
          "DataLoader: a sampler and shuffle(true) are mutually exclusive (the sampler decides "
          "the order)");
    if (sampler_ && sampler_->size() < 0)
      tapegrad::detail::fail<ValueError>("DataLoader: the sampler's size is ", sampler_->size());
    const int64_t n = num_samples();
    sample_numel_ = n > 0 ? images_.numel() / n : 0;
    order_.resize(static_cast<size_t>(sampler_ ? sampler_->size() : n));
    for (int64_t i = 0; i < n && !sampler_; ++i) order_[static_cast<size_t>(i)] = i;
    batch_.labels.reserve(static_cast<size_t>(std::min(opt_.batch_size(), epoch_samples())));
  }

  /// Samples in the data set.
  int64_t num_samples() const { return static_cast<int64_t>(labels_.size()); }
  /// Samples visited per epoch: num_samples(), or the sampler's size.
  int64_t epoch_samples() const { return static_cast<int64_t>(order_.size()); }
  /// Batches per epoch.
  int64_t size() const {
    const int64_t n = epoch_samples(), b = opt_.batch_size();
    return n / b + (!opt_.drop_last() && n % b != 0);  // not (n + b - 1) / b: overflows
  }
  /// The sampler, if any.
  const std::shared_ptr<const Sampler>& sampler() const { return sampler_; }
  /// The options given at construction.
  const DataLoaderOptions& options() const { return opt_; }
  /// The epoch the next begin() starts (0 at first).
  int64_t epoch() const { return epoch_; }
  /// Sets the epoch the next begin() starts (to replay one). Throws ValueError if e is negative.
  void set_epoch(int64_t e) {
    if (e < 0) tapegrad::detail::fail<ValueError>("DataLoader: set_epoch: negative epoch ", e);
    epoch_ = e;
  }
  /// The sample order of the current epoch.
  const std::vector<int64_t>& order() const { return order_; }

  /// An input iterator over the batches of an epoch; the batch it points at lives in the loader.
  class iterator {
   public:
    /// Input iterator.
    using iterator_category = std::input_iterator_tag;
    /// A batch.
    using value_type = Batch<T>;
    /// Difference between positions.
    using difference_type = std::ptrdiff_t;
    /// Pointer to a batch.
    using pointer = const Batch<T>*;
    /// Reference to a batch.
    using reference = const Batch<T>&;

    iterator() = default;
    /// The current batch.
    reference operator*() const { return loader_->batch_; }
    /// The current batch.
    pointer operator->() const { return &loader_->batch_; }
    /// Loads the next batch.
    iterator& operator++() {
      if (++i_ < loader_->size()) loader_->load(i_);
      return *this;
    }
    /// Loads the next batch.
    void operator++(int) { ++*this; }
    /// Same position.
    friend bool operator==(const iterator& a, const iterator& b) { return a.i_ == b.i_; }

   private:
    friend class DataLoader;
    iterator(DataLoader* l, int64_t i) : loader_(l), i_(i) {}
    DataLoader* loader_ = nullptr;
    int64_t i_ = 0;
  };

  /// Starts an epoch: draws its order (with shuffle) and loads its first batch. Throws
  /// ValueError at epoch INT64_MAX, which no epoch could follow.
  iterator begin() {
    start_epoch();
    if (size() > 0) load(0);
    return iterator(this, 0);
  }
  /// The position past the last batch.
  iterator end() { return iterator(this, size()); }

  /// Loads batch i of the current epoch's order into the loader's buffers.
  const Batch<T>& load(int64_t i) {
    if (i < 0 || i >= size())
      tapegrad::detail::fail<ValueError>("DataLoader: batch ", i, " out of range (", size(),
                                         " batches)");
    const int64_t first = i * opt_.batch_size();
    const int64_t b = std::min(opt_.batch_size(), epoch_samples() - first);
    Shape s = images_.shape();
    s[0] = b;
    batch_.images.resize(s);  // keeps the buffer unless it is held elsewhere or too small
    batch_.labels.resize(static_cast<size_t>(b));
    batch_.index = i;
    const T* src = images_.data();
    T* dst = batch_.images.data();
    const size_t row = static_cast<size_t>(sample_numel_);
    for (int64_t k = 0; k < b; ++k) {
      const int64_t j = order_[static_cast<size_t>(first + k)];
      if (row) std::memcpy(dst + k * sample_numel_, src + j * sample_numel_, row * sizeof(T));
      batch_.labels[static_cast<size_t>(k)] = labels_[static_cast<size_t>(j)];
    }
    if (opt_.normalize()) {
      const T inv = T(1) / T(opt_.normalize()->std);
      const T shift = -T(opt_.normalize()->mean) * inv;
      batch_.images.array() = batch_.images.array() * inv + shift;
    }
    return batch_;
  }

 private:
  void start_epoch() {
    if (epoch_ == std::numeric_limits<int64_t>::max())  // ++epoch_ would overflow
      tapegrad::detail::fail<ValueError>("DataLoader: epoch ", epoch_,
                                         " is the largest int64_t: no epoch can follow it");
    if (sampler_) {
      sampler_->indices(epoch_, order_);
      const int64_t n = num_samples();
      for (size_t k = 0; k < order_.size(); ++k)
        if (order_[k] < 0 || order_[k] >= n)
          tapegrad::detail::fail<ValueError>("DataLoader: the sampler gave index ", order_[k],
                                             " (position ", k, " of epoch ", epoch_,
                                             ") for a data set of ", n, " samples");
    } else if (opt_.shuffle()) {
      epoch_permutation(opt_.seed(), epoch_, order_);
    }
    ++epoch_;
  }

  Tensor<T> images_;
  std::vector<int64_t> labels_;
  DataLoaderOptions opt_;
  std::shared_ptr<const Sampler> sampler_;
  int64_t sample_numel_ = 0;
  std::vector<int64_t> order_;
  Batch<T> batch_;
  int64_t epoch_ = 0;
};

}  // namespace tapegrad::io
