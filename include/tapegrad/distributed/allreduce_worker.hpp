#pragma once
/// \file
/// AllreduceWorker<T>: a thread that sums buffers across a communicator with blocking
/// MPI_Allreduce, one after another in the order they were handed over, while the thread that
/// handed them over goes on computing (DistributedDataParallel's buckets during backward).
///
/// Why a thread with blocking calls rather than MPI_Iallreduce: Open MPI moves a non-blocking
/// collective's data only inside MPI calls, and its non-blocking algorithms (libnbc) are slower
/// than the blocking ones. On 2 ranks of a 2-core Zen 5 a 7.1 MB float allreduce took 2.1 ms as
/// MPI_Iallreduce + MPI_Wait against 0.8 ms as MPI_Allreduce, and the wide-mlp training step
/// with MPI_Iallreduce and a polling thread took 14-16 ms against 11.6-12.0 ms for two ranks
/// that do not communicate at all. PyTorch's MPI backend (ProcessGroupMPI) also runs its
/// collectives on a worker thread. Needs MPI_THREAD_MULTIPLE (the training thread may call MPI
/// meanwhile, e.g. SyncBatchNorm's backward); the worker has a communicator of its own, so its
/// collectives never interleave with the training thread's on one communicator.

#include <condition_variable>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "tapegrad/distributed/process_group.hpp"
#include "tapegrad/tensor.hpp"

namespace tapegrad::distributed::detail {

template <class T>
class AllreduceWorker {
 public:
  // Duplicates `comm` (a collective of its group) and starts the thread.
  explicit AllreduceWorker(MPI_Comm comm) : state_(std::make_shared<State>()) {
    check(MPI_Comm_dup(comm, &state_->comm), "DistributedDataParallel: MPI_Comm_dup");
    thread_ = std::thread([s = state_] { run(*s); });
  }
  // Every handed-over buffer must be summed by then (wait_all), except while an exception
  // unwinds: then a sum may never end (the peer failed too, the job is being aborted), so the
  // thread is left to itself with the buffers it holds, and nothing of this object is touched.
  ~AllreduceWorker() {
    bool pending;
    {
      std::lock_guard<std::mutex> l(state_->mutex);
      pending = state_->done < state_->queue.size();
      state_->stop = true;
    }
    state_->work.notify_one();
    if (pending) {
      thread_.detach();
      return;
    }
    thread_.join();
    if (mpi_initialized()) MPI_Comm_free(&state_->comm);
  }
  AllreduceWorker(const AllreduceWorker&) = delete;
  AllreduceWorker& operator=(const AllreduceWorker&) = delete;

  // Forgets the last pass's buffers, once they are summed (an error of theirs is dropped: it
  // was or will be reported by the pass that handed them over).
  void reset() {
    std::unique_lock<std::mutex> l(state_->mutex);
    state_->finished.wait(l, [&] { return state_->done == state_->queue.size(); });
    state_->error.clear();
    state_->queue.clear();
    state_->done_at.clear();
    state_->done = 0;
  }

  // Hands over the next buffer: its numel() elements are summed in place across the ranks.
  void submit(Tensor<T> buffer) {
    mpi_count(buffer.numel(), "DistributedDataParallel");  // a clear error on this thread
    {
      std::lock_guard<std::mutex> l(state_->mutex);
      state_->queue.push_back(std::move(buffer));
      state_->done_at.push_back(0);
    }
    state_->work.notify_one();
  }

  // Blocks until every buffer handed over is summed; returns when the last one was (steady
  // clock, seconds; 0 when none was handed over). DistributedError if an MPI call failed.
  double wait_all() {
    std::unique_lock<std::mutex> l(state_->mutex);
    state_->finished.wait(l, [&] { return state_->done == state_->queue.size(); });
    if (!state_->error.empty()) {
      std::string e = std::exchange(state_->error, {});
      tapegrad::detail::fail<DistributedError>("DistributedDataParallel: ", e);
    }
    return state_->done_at.empty() ? 0.0 : state_->done_at.back();
  }

 private:
  struct State {
    MPI_Comm comm = MPI_COMM_NULL;
    std::mutex mutex;
    std::condition_variable work, finished;
    std::vector<Tensor<T>> queue;  // the buffers of this pass, in order
    std::vector<double> done_at;   // when each was summed
    size_t done = 0;               // queue[0, done) are summed
    bool stop = false;
    std::string error;  // the first failed call's message
  };

  // The thread: sums the next buffer, outside the lock, until told to stop.
  static void run(State& s) {
    std::unique_lock<std::mutex> l(s.mutex);
    for (;;) {
      s.work.wait(l, [&] { return s.stop || s.done < s.queue.size(); });
      if (s.stop) return;
      Tensor<T> buffer = s.queue[s.done];
      const bool failed = !s.error.empty();  // after a failure the rest are not started
      l.unlock();
      int rc = MPI_SUCCESS;
      if (!failed && buffer.numel() > 0)
        rc = MPI_Allreduce(MPI_IN_PLACE, buffer.data(), static_cast<int>(buffer.numel()),
                           mpi_type<T>(), MPI_SUM, s.comm);
      const double at = seconds_now();
      l.lock();
      if (rc != MPI_SUCCESS && s.error.empty()) s.error = "MPI_Allreduce: " + mpi_error_text(rc);
      s.done_at[s.done] = at;
      ++s.done;
      s.finished.notify_all();
    }
  }

  std::shared_ptr<State> state_;
  std::thread thread_;
};

}  // namespace tapegrad::distributed::detail
