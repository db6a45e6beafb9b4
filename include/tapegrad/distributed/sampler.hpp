#pragma once
/// \file
/// DistributedSampler: each process's share of a data set, as torch.utils.data.distributed.
/// DistributedSampler, for an io::DataLoader (its sampler argument; shuffle off in the loader).
///
///   auto sampler = std::make_shared<distributed::DistributedSampler>(
///       train.size(), env.world(), distributed::DistributedSamplerOptions{.seed = 1});
///   io::DataLoader<float> loader(train.images, train.labels, io::DataLoaderOptions(32), sampler);
///   for (int epoch = 0; ...) for (const auto& batch : loader) ...   // the loader's epoch counts
///
/// Epoch e: the indices 0..n-1, shuffled (option shuffle, default on) by the permutation a
/// shuffling DataLoader with the same seed draws in epoch e (io::epoch_permutation), so every rank
/// draws the same one and a one-process job visits what a plain shuffling loader visits; then,
/// as PyTorch:
///   - without drop_last, padded at the end with its own first indices (repeated if needed) up to
///     total_size = p·⌈n/p⌉, so every rank gets ⌈n/p⌉ samples, a few of them twice overall;
///   - with drop_last and n not divisible by p, cut to total_size = p·⌈(n − p)/p⌉;
///   - rank r takes positions r, r + p, r + 2p, ... of that list.
/// The shards of one epoch are disjoint (apart from the padding) and together cover the data set;
/// batch k of the p ranks together is batch k of a one-process loader with p times the batch size.
///
/// Used with a DataLoader, the loader passes its own epoch (begin() counts them, set_epoch
/// replays one); set_epoch()/epoch()/indices() without an epoch are for using the sampler alone,
/// as PyTorch's sampler.set_epoch(e) before iter(sampler). Every rank must use the same seed and
/// options: the constructor that takes a ProcessGroup checks that they do (a collective).

#include <cstdint>
#include <span>
#include <sstream>
#include <string>
#include <vector>

#include "tapegrad/distributed/process_group.hpp"
#include "tapegrad/io/dataloader.hpp"

namespace tapegrad::distributed {

/// The options of a DistributedSampler, under PyTorch's names.
struct DistributedSamplerOptions {
  /// Shuffle each epoch (the permutation a shuffling DataLoader with seed draws).
  bool shuffle = true;
  /// The seed of the shuffle; every rank must use the same.
  uint64_t seed = 0;
  /// Cut the list to a multiple of the number of processes instead of padding it.
  bool drop_last = false;
};

/// Each process's share of a data set for an io::DataLoader, torch's DistributedSampler (see the
/// file's description).
class DistributedSampler : public io::Sampler {
 public:
  /// The share of rank rank among num_replicas processes of a data set of dataset_size samples;
  /// invalid sizes or ranks throw ValueError.
  DistributedSampler(int64_t dataset_size, int num_replicas, int rank,
                     DistributedSamplerOptions options = {})
      : n_(dataset_size), p_(num_replicas), rank_(rank), opt_(options) {
    if (dataset_size < 0)
      tapegrad::detail::fail<ValueError>("DistributedSampler: dataset size ", dataset_size,
                                         " is negative");
    if (num_replicas < 1 || rank < 0 || rank >= num_replicas)
      tapegrad::detail::fail<ValueError>("DistributedSampler: invalid rank ", rank,
                                         ", rank should be in the interval [0, ", num_replicas - 1,
                                         "] (num_replicas ", num_replicas, ")");
    const int64_t p = num_replicas;
    if (opt_.drop_last && n_ % p != 0)
      num_samples_ = n_ > p ? (n_ - p + p - 1) / p : 0;  // ceil((n − p)/p)
    else
      num_samples_ = (n_ + p - 1) / p;
    total_size_ = num_samples_ * p;
  }
  /// Over the processes of a group; checks that every rank passes the same size and options.
  DistributedSampler(int64_t dataset_size, ProcessGroup& group,
                     DistributedSamplerOptions options = {})
      : DistributedSampler(dataset_size, group.size(), group.rank(), options) {
    std::ostringstream d;
    d << "dataset size " << dataset_size << ", shuffle " << options.shuffle << ", seed "
      << options.seed << ", drop_last " << options.drop_last;
    const std::vector<std::string> all = group.allgather(d.str());
    for (size_t r = 1; r < all.size(); ++r)
      if (all[r] != all[0])
        tapegrad::detail::fail<DistributedError>(
            "DistributedSampler: the ranks disagree (every rank must pass the same data set "
            "size, seed and options): rank 0 has ",
            all[0], ", rank ", r, " has ", all[r]);
  }

  /// Samples per rank and epoch.
  int64_t size() const override { return num_samples_; }
  /// Epoch `epoch`'s indices for this rank.
  void indices(int64_t epoch, std::span<int64_t> out) const override {
    if (static_cast<int64_t>(out.size()) != num_samples_)
      tapegrad::detail::fail<ValueError>("DistributedSampler: room for ", out.size(),
                                         " indices, expected ", num_samples_);
    if (num_samples_ == 0) return;
    order_.resize(static_cast<size_t>(n_));
    if (opt_.shuffle)
      io::epoch_permutation(opt_.seed, epoch, order_);
    else
      for (int64_t i = 0; i < n_; ++i) order_[static_cast<size_t>(i)] = i;
    // Position j of the padded (or cut) list is order_[j mod n]; rank r takes r, r + p, ...
    for (int64_t k = 0; k < num_samples_; ++k)
      out[static_cast<size_t>(k)] = order_[static_cast<size_t>((rank_ + k * p_) % n_)];
  }
  /// The indices of epoch() for this rank.
  std::vector<int64_t> indices() const {
    std::vector<int64_t> out(static_cast<size_t>(num_samples_));
    indices(epoch_, out);
    return out;
  }

  /// Sets the epoch indices() uses (a DataLoader passes its own).
  void set_epoch(int64_t epoch) { epoch_ = epoch; }
  /// The epoch indices() uses.
  int64_t epoch() const { return epoch_; }
  /// The length of the padded (or cut) list all ranks share.
  int64_t total_size() const { return total_size_; }
  /// Number of processes.
  int num_replicas() const { return p_; }
  /// This process's rank.
  int rank() const { return rank_; }
  /// The options given at construction.
  const DistributedSamplerOptions& options() const { return opt_; }

 private:
  int64_t n_;
  int p_, rank_;
  DistributedSamplerOptions opt_;
  int64_t num_samples_ = 0, total_size_ = 0;
  int64_t epoch_ = 0;
  mutable std::vector<int64_t> order_;  // scratch, reused every epoch
};

}  // namespace tapegrad::distributed
