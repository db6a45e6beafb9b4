#pragma once
/// \file
/// Checkpoints of data-parallel training: rank 0 writes, every rank reads.
///
///   distributed::save_checkpoint("ckpt.safetensors", ddp, opt, {{"epoch", "3"}});
///   auto meta = distributed::load_checkpoint("ckpt.safetensors", ddp, opt);
///
/// save_checkpoint: rank 0 writes ddp.module() (and the optimizer) with io::save_checkpoint,
/// atomically as always; the file is the one a single process writes (names without the
/// "module." prefix), so a one-process run, PyTorch or another job size can read it. The replicas
/// are identical, so rank 0's state is everyone's; Dropout streams are saved as rank 0's, from
/// which every rank derives its own. Every rank returns once the file is complete, or throws the
/// same IOError when rank 0 could not write it (a collective: no rank is left waiting).
///
/// load_checkpoint: every rank reads the file (it must be reachable from every machine: a shared
/// file system, or a copy per machine) into ddp.module() and the optimizer, then re-derives the
/// per-rank Dropout seeds (DistributedDataParallel::sync_dropout_seeds). If any rank fails, every
/// rank throws an IOError naming the ranks that failed and the first one's error (the others may
/// have loaded the file by then). Resuming thus continues exactly the uninterrupted training.

#include <string>
#include <vector>

#include "tapegrad/distributed/data_parallel.hpp"
#include "tapegrad/distributed/process_group.hpp"
#include "tapegrad/io/checkpoint.hpp"

namespace tapegrad::distributed {

namespace detail {
// Every rank learns whether `what` succeeded on every rank; throws on all of them if not.
inline void agree_on(ProcessGroup& group, const std::string& who, const std::string& error) {
  const std::vector<std::string> all = group.allgather(error);
  std::string ranks, first;
  for (size_t r = 0; r < all.size(); ++r) {
    if (all[r].empty()) continue;
    ranks += (ranks.empty() ? "" : ", ") + std::to_string(r);
    if (first.empty()) first = all[r];
  }
  if (!ranks.empty()) tapegrad::detail::fail<IOError>(who, ": failed on rank ", ranks, ": ", first);
}

template <class F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const std::exception& e) {
    return std::string(e.what()).empty() ? "unknown error" : e.what();
  }
  return {};
}
}  // namespace detail

///@{
/// Rank 0 writes ddp.module() (and the optimizer's state) with io::save_checkpoint; every rank
/// returns once the file is complete, or throws the same IOError (a collective).
template <class T>
void save_checkpoint(const std::string& path, DistributedDataParallel<T>& ddp,
                     const io::Metadata& metadata = {}) {
  ProcessGroup& g = ddp.process_group();
  std::string error;
  if (g.rank() == 0)
    error = detail::error_of([&] { io::save_checkpoint(path, ddp.module(), metadata); });
  error = g.broadcast(error, 0);
  if (!error.empty()) tapegrad::detail::fail<IOError>("save_checkpoint (rank 0): ", error);
}

template <class T, class O>
requires io::OptimizerState<O>
void save_checkpoint(const std::string& path, DistributedDataParallel<T>& ddp, const O& optimizer,
                     const io::Metadata& metadata = {}) {
  ProcessGroup& g = ddp.process_group();
  std::string error;
  if (g.rank() == 0)
    error = detail::error_of([&] { io::save_checkpoint(path, ddp.module(), optimizer, metadata); });
  error = g.broadcast(error, 0);
  if (!error.empty()) tapegrad::detail::fail<IOError>("save_checkpoint (rank 0): ", error);
}
///@}

///@{
/// Every rank reads the file into ddp.module() (and the optimizer), then re-derives the per-rank
/// Dropout seeds; returns the metadata. If any rank fails, every rank throws an IOError naming them
/// (a collective).
template <class T>
io::Metadata load_checkpoint(const std::string& path, DistributedDataParallel<T>& ddp) {
  io::Metadata meta;
  const std::string error =
      detail::error_of([&] { meta = io::load_checkpoint(path, ddp.module()); });
  detail::agree_on(ddp.process_group(), "load_checkpoint", error);
  ddp.sync_dropout_seeds();
  return meta;
}

template <class T, class O>
requires io::OptimizerState<O> io::Metadata load_checkpoint(const std::string& path,
                                                            DistributedDataParallel<T>& ddp,
                                                            O& optimizer) {
  io::Metadata meta;
  const std::string error =
      detail::error_of([&] { meta = io::load_checkpoint(path, ddp.module(), optimizer); });
  detail::agree_on(ddp.process_group(), "load_checkpoint", error);
  ddp.sync_dropout_seeds();
  return meta;
}
///@}

}  // namespace tapegrad::distributed
