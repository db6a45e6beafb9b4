#pragma once
/// \file
/// SyncBatchNorm: batch normalisation whose training statistics are those of the global batch,
/// the union of every process's batch (torch.nn.SyncBatchNorm). Per channel, the processes sum
/// their counts and Σx, then Σ(x − μ)² about the global mean; the backward sums Σdy and
/// Σdy·(x − μ) the same way (ops/norm.hpp). So a model trained on p processes with batches of
/// B/p normalises exactly as one process with batches of B: its outputs, its input gradients
/// and its running statistics (updated with the global mean and the unbiased global variance,
/// identically on every rank) are those of BatchNorm on the whole batch. dγ and dβ are this
/// process's share; DistributedDataParallel averages them like every gradient.
///
///   model.push_back(std::make_shared<distributed::SyncBatchNorm<float>>(16, env.world()));
///   distributed::convert_sync_batchnorm(model, env.world());   // or: every BatchNorm inside
///
/// convert_sync_batchnorm changes the BatchNorm modules in place (their class, names, parameters
/// and buffers stay, so checkpoints and the blocks that hold them are unaffected; name() then
/// reads "SyncBatchNorm(...)"), where PyTorch returns a new module; it returns how many it
/// converted. Only a module in training mode synchronises (in eval mode it uses its running
/// statistics); every rank must run the same SyncBatchNorm layers in the same order.
///
/// The statistics travel on a duplicate of the group's communicator, apart from the gradient
/// averaging's, so the two never mix.

#include <cstdint>
#include <memory>
#include <optional>

#include "tapegrad/distributed/process_group.hpp"
#include "tapegrad/nn/batch_norm.hpp"
#include "tapegrad/nn/module.hpp"
#include "tapegrad/ops/norm.hpp"

namespace tapegrad::distributed {

/// Sums batch_norm's statistics over the processes of a group (a blocking MPI_Allreduce of
/// doubles on its own communicator).
class GroupStatsReducer final : public BatchStatsReducer {
 public:
  /// A reducer over group's processes, on a duplicate of its communicator (a collective).
  explicit GroupStatsReducer(ProcessGroup& group) {
    detail::check(MPI_Comm_dup(group.comm(), &comm_), "SyncBatchNorm: MPI_Comm_dup");
  }
  ~GroupStatsReducer() {
    if (comm_ != MPI_COMM_NULL && detail::mpi_initialized()) MPI_Comm_free(&comm_);
  }
  GroupStatsReducer(const GroupStatsReducer&) = delete;
  GroupStatsReducer& operator=(const GroupStatsReducer&) = delete;

  void sum(double* values, int64_t n) const override {
    detail::check(MPI_Allreduce(MPI_IN_PLACE, values, detail::mpi_count(n, "SyncBatchNorm"),
                                MPI_DOUBLE, MPI_SUM, comm_),
                  "SyncBatchNorm: MPI_Allreduce");
  }

 private:
  MPI_Comm comm_ = MPI_COMM_NULL;
};

/// torch.nn.SyncBatchNorm: any input [N,C,*] of rank >= 2.
template <class T>
class SyncBatchNorm : public nn::BatchNorm<T> {
 public:
  /// BatchNorm whose training statistics are those of the whole batch across group's processes;
  /// arguments as nn::BatchNorm's.
  SyncBatchNorm(int64_t num_features, ProcessGroup& group, double eps = 1e-5,
                std::optional<double> momentum = 0.1, bool affine = true,
                bool track_running_stats = true)
      : nn::BatchNorm<T>("SyncBatchNorm", num_features, eps, momentum, affine,
                         track_running_stats) {
    this->set_stats_reducer(std::make_shared<GroupStatsReducer>(group));
  }
};

/// Makes every BatchNorm in m's tree (m included) take its statistics over the group; returns
/// how many it changed. A collective over the group (each conversion duplicates a communicator
/// once).
template <class T>
int convert_sync_batchnorm(nn::Module<T>& m, ProcessGroup& group) {
  std::shared_ptr<const BatchStatsReducer> reducer;
  int n = 0;
  for (const auto& [name, module] : m.named_modules()) {
    auto* bn = dynamic_cast<nn::BatchNorm<T>*>(module);
    if (bn == nullptr) continue;
    if (!reducer) reducer = std::make_shared<GroupStatsReducer>(group);
    bn->set_stats_reducer(reducer);
    ++n;
  }
  return n;
}

}  // namespace tapegrad::distributed
