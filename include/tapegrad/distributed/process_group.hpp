#pragma once
/// \file
/// ProcessGroup: collective operations on tensors among the processes of an MPI communicator, as
/// torch.distributed's ProcessGroup (MPI backend). Every process of the group must call the same
/// collectives in the same order, with tensors of the same shape and dtype (as in
/// torch.distributed; MPI cannot tell a mismatch from a late process).
///
///   distributed::Environment env(argc, argv);          // MPI_Init_thread (environment.hpp)
///   distributed::ProcessGroup& world = env.world();
///   world.allreduce(t, distributed::ReduceOp::avg);    // in place, blocking
///   distributed::Work w = world.allreduce_async(t);    // non-blocking: MPI_Iallreduce
///   ... other work ...
///   w.wait();
///
/// Operations work in place on the tensor's storage (a Tensor is a handle: pass it by value and
/// the caller's tensor sees the result). allreduce: sum, avg (the sum divided by the group size,
/// for float and double), max, min, elementwise. broadcast: root's values to every process.
/// allgather: every process's tensor stacked along a new first dim, [size, ...]. barrier: returns
/// once every process has entered it.
///
/// The _async forms return a Work whose wait() blocks until the operation is complete (test()
/// tells without blocking). Until then the tensor must not be read or written. MPI moves data
/// only inside MPI calls: an operation progresses while wait(), test() or any other MPI call of
/// the process runs (DistributedDataParallel polls from a thread of its own). A Work destroyed
/// while pending waits for its operation, since MPI has no way to abandon a collective.
///
/// The group works on a duplicate of the communicator it is given (MPI_Comm_dup), so its traffic
/// never mixes with other traffic on that communicator; creating a group is itself a collective
/// over the communicator. MPI errors are fatal (MPI_ERRORS_ARE_FATAL, MPI's default): they end
/// the whole job, never one process alone.

// MPI's C API only: its deprecated C++ bindings stay out (they also warn under -Wextra).
#ifndef OMPI_SKIP_MPICXX
#define OMPI_SKIP_MPICXX 1
#endif
#ifndef MPICH_SKIP_MPICXX
#define MPICH_SKIP_MPICXX 1
#endif
#include <mpi.h>

#include <chrono>
#include <cstdint>
#include <cstring>
#include <functional>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "tapegrad/error.hpp"
#include "tapegrad/tensor.hpp"

namespace tapegrad::distributed {

/// An error of the distributed layer: MPI not initialised, the processes disagreeing (models,
/// options), a rank's failure reported to every rank.
struct DistributedError : Error {
  using Error::Error;
};

/// The reductions of allreduce (avg: the sum divided by the group's size).
enum class ReduceOp { sum, avg, max, min };

/// "sum", "avg", "max" or "min".
inline const char* reduce_op_name(ReduceOp op) {
  switch (op) {
    case ReduceOp::sum:
      return "sum";
    case ReduceOp::avg:
      return "avg";
    case ReduceOp::max:
      return "max";
    case ReduceOp::min:
      return "min";
  }
  return "?";
}

namespace detail {

template <class T>
MPI_Datatype mpi_type() {
  if constexpr (std::is_same_v<T, float>)
    return MPI_FLOAT;
  else if constexpr (std::is_same_v<T, double>)
    return MPI_DOUBLE;
  else if constexpr (std::is_same_v<T, int64_t>)
    return MPI_INT64_T;
  else if constexpr (std::is_same_v<T, uint64_t>)
    return MPI_UINT64_T;
  else if constexpr (std::is_same_v<T, int32_t>)
    return MPI_INT32_T;
  else if constexpr (std::is_same_v<T, char>)
    return MPI_CHAR;
  else
    static_assert(sizeof(T) == 0, "distributed: no MPI datatype for this type");
}

inline MPI_Op mpi_op(ReduceOp op) {
  switch (op) {
    case ReduceOp::sum:
    case ReduceOp::avg:
      return MPI_SUM;
    case ReduceOp::max:
      return MPI_MAX;
    case ReduceOp::min:
      return MPI_MIN;
  }
  return MPI_SUM;
}

inline bool mpi_initialized() {
  int init = 0, fin = 0;
  MPI_Initialized(&init);
  MPI_Finalized(&fin);
  return init && !fin;
}

inline void require_mpi(const char* who) {
  if (!mpi_initialized())
    tapegrad::detail::fail<DistributedError>(
        who,
        ": MPI is not initialised (create a distributed::Environment first) or already "
        "finalised");
}

// MPI counts are int: larger tensors would need several calls.
inline int mpi_count(int64_t n, const char* who) {
  if (n > INT32_MAX)
    tapegrad::detail::fail<ValueError>(who, ": ", n,
                                       " elements exceed MPI's int count (2^31 - 1) per call");
  return static_cast<int>(n);
}

// MPI's text for an error code.
inline std::string mpi_error_text(int rc) {
  char text[MPI_MAX_ERROR_STRING];
  int len = 0;
  MPI_Error_string(rc, text, &len);
  return std::string(text, static_cast<size_t>(len));
}

inline void check(int rc, const char* what) {
  if (rc == MPI_SUCCESS) return;
  tapegrad::detail::fail<DistributedError>(what, ": ", mpi_error_text(rc));
}

// Steady-clock seconds, for the timings of DistributedDataParallel's statistics.
inline double seconds_now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

}  // namespace detail

/// A pending non-blocking operation (torch.distributed's Work). Move-only.
class Work {
 public:
  Work() = default;
  /// Takes over o's pending operation.
  Work(Work&& o) noexcept
      : request_(std::exchange(o.request_, MPI_REQUEST_NULL)),
        finish_(std::move(o.finish_)),
        pending_(std::exchange(o.pending_, false)) {}
  /// Completes this one's pending operation (quietly), then takes over o's.
  Work& operator=(Work&& o) noexcept {
    if (this != &o) {
      complete_quietly();
      request_ = std::exchange(o.request_, MPI_REQUEST_NULL);
      finish_ = std::move(o.finish_);
      pending_ = std::exchange(o.pending_, false);
    }
    return *this;
  }
  Work(const Work&) = delete;
  Work& operator=(const Work&) = delete;
  ~Work() { complete_quietly(); }

  /// Blocks until the operation has completed (at once when it has).
  void wait() {
    if (!pending_) return;
    detail::check(MPI_Wait(&request_, MPI_STATUS_IGNORE), "Work::wait: MPI_Wait");
    finish();
  }
  /// True when the operation has completed (then wait() returns at once); never blocks.
  bool test() {
    if (!pending_) return true;
    int flag = 0;
    detail::check(MPI_Test(&request_, &flag, MPI_STATUS_IGNORE), "Work::test: MPI_Test");
    if (flag) finish();
    return flag != 0;
  }
  /// Whether the operation is known to have completed (no MPI call).
  bool completed() const { return !pending_; }

 private:
  friend class ProcessGroup;
  Work(MPI_Request r, std::function<void()> finish)
      : request_(r), finish_(std::move(finish)), pending_(true) {}
  void finish() {
    pending_ = false;
    if (finish_) finish_();
    finish_ = nullptr;  // lets go of the tensors it held
  }
  void complete_quietly() noexcept {
    if (pending_ && detail::mpi_initialized()) {
      MPI_Wait(&request_, MPI_STATUS_IGNORE);
      pending_ = false;
      if (finish_) finish_();
    }
    finish_ = nullptr;
    pending_ = false;
  }

  MPI_Request request_ = MPI_REQUEST_NULL;
  std::function<void()> finish_;  // runs on completion (avg's division); holds the tensors
  bool pending_ = false;
};

/// A group of processes and the collectives on its communicator: allreduce, broadcast, allgather,
/// barrier, blocking or returning a Work. Not copyable. MPI errors throw DistributedError.
class ProcessGroup {
 public:
  /// A group of the processes of comm, communicating on a duplicate of it (a collective call).
  explicit ProcessGroup(MPI_Comm comm = MPI_COMM_WORLD) {
    detail::require_mpi("ProcessGroup");
    detail::check(MPI_Comm_dup(comm, &comm_), "ProcessGroup: MPI_Comm_dup");
    MPI_Comm_rank(comm_, &rank_);
    MPI_Comm_size(comm_, &size_);
  }
  ~ProcessGroup() {
    if (comm_ != MPI_COMM_NULL && detail::mpi_initialized()) MPI_Comm_free(&comm_);
  }
  ProcessGroup(const ProcessGroup&) = delete;
  ProcessGroup& operator=(const ProcessGroup&) = delete;

  /// This process's rank in the group.
  int rank() const { return rank_; }
  /// Number of processes in the group.
  int size() const { return size_; }
  /// The group's own communicator (a duplicate), for calls of one's own.
  MPI_Comm comm() const { return comm_; }

  // ---- allreduce ----
  /// Reduces t over the processes, in place on every process (t's storage).
  template <class T>
  void allreduce(Tensor<T> t, ReduceOp op = ReduceOp::sum) {
    check_op<T>(op, "allreduce");
    detail::check(MPI_Allreduce(MPI_IN_PLACE, t.data(), detail::mpi_count(t.numel(), "allreduce"),
                                detail::mpi_type<T>(), detail::mpi_op(op), comm_),
                  "allreduce: MPI_Allreduce");
    if (op == ReduceOp::avg) divide(t);
  }
  /// allreduce, non-blocking: t holds the result once the Work completes; t must not be touched
  /// before.
  template <class T>
  Work allreduce_async(Tensor<T> t, ReduceOp op = ReduceOp::sum) {
    check_op<T>(op, "allreduce_async");
    MPI_Request r;
    detail::check(
        MPI_Iallreduce(MPI_IN_PLACE, t.data(), detail::mpi_count(t.numel(), "allreduce_async"),
                       detail::mpi_type<T>(), detail::mpi_op(op), comm_, &r),
        "allreduce_async: MPI_Iallreduce");
    const int n = size_;
    if (op != ReduceOp::avg) return Work(r, [t]() {});
    return Work(r, [t, n]() mutable {
      if constexpr (std::is_floating_point_v<T>) t.array() /= static_cast<T>(n);
    });
  }
  /// One number: the reduction of every process's value.
  template <class S>
  requires std::is_arithmetic_v<S> S allreduce(S value, ReduceOp op = ReduceOp::sum) {
    if constexpr (std::is_integral_v<S>) {
      if (op == ReduceOp::avg)
        tapegrad::detail::fail<ValueError>("allreduce: avg of an integer; use sum and divide");
      int64_t v = static_cast<int64_t>(value);
      detail::check(MPI_Allreduce(MPI_IN_PLACE, &v, 1, MPI_INT64_T, detail::mpi_op(op), comm_),
                    "allreduce: MPI_Allreduce");
      return static_cast<S>(v);
    } else {
      double v = static_cast<double>(value);
      detail::check(MPI_Allreduce(MPI_IN_PLACE, &v, 1, MPI_DOUBLE, detail::mpi_op(op), comm_),
                    "allreduce: MPI_Allreduce");
      if (op == ReduceOp::avg) v /= size_;
      return static_cast<S>(v);
    }
  }

  // ---- broadcast ----
  /// root's t on every process, in place; the shapes must match.
  template <class T>
  void broadcast(Tensor<T> t, int root = 0) {
    check_root(root, "broadcast");
    detail::check(MPI_Bcast(t.data(), detail::mpi_count(t.numel(), "broadcast"),
                            detail::mpi_type<T>(), root, comm_),
                  "broadcast: MPI_Bcast");
  }
  /// broadcast, non-blocking: t holds the result once the Work completes.
  template <class T>
  Work broadcast_async(Tensor<T> t, int root = 0) {
    check_root(root, "broadcast_async");
    MPI_Request r;
    detail::check(MPI_Ibcast(t.data(), detail::mpi_count(t.numel(), "broadcast_async"),
                             detail::mpi_type<T>(), root, comm_, &r),
                  "broadcast_async: MPI_Ibcast");
    return Work(r, [t]() {});
  }

  // ---- allgather: [size, ...shape] ----
  /// Every process's t, stacked in rank order: [size, ...shape]; shapes must match.
  template <class T>
  Tensor<T> allgather(const Tensor<T>& t) {
    Tensor<T> out(stacked(t.shape()));
    detail::check(
        MPI_Allgather(t.data(), detail::mpi_count(t.numel(), "allgather"), detail::mpi_type<T>(),
                      out.data(), detail::mpi_count(t.numel(), "allgather"), detail::mpi_type<T>(),
                      comm_),
        "allgather: MPI_Allgather");
    return out;
  }
  /// Non-blocking: out (resized to [size, ...shape]) holds the result once the Work completes.
  template <class T>
  Work allgather_async(const Tensor<T>& t, Tensor<T>& out) {
    out.resize(stacked(t.shape()));
    MPI_Request r;
    const int n = detail::mpi_count(t.numel(), "allgather_async");
    detail::check(MPI_Iallgather(t.data(), n, detail::mpi_type<T>(), out.data(), n,
                                 detail::mpi_type<T>(), comm_, &r),
                  "allgather_async: MPI_Iallgather");
    return Work(r, [t, o = out]() {});
  }
  /// Every process's string, in rank order (strings may differ in length).
  std::vector<std::string> allgather(const std::string& s) {
    const int len = detail::mpi_count(static_cast<int64_t>(s.size()), "allgather");
    std::vector<int> lens(static_cast<size_t>(size_)), offsets(static_cast<size_t>(size_));
    detail::check(MPI_Allgather(&len, 1, MPI_INT, lens.data(), 1, MPI_INT, comm_),
                  "allgather: MPI_Allgather");
    int64_t total = 0;
    for (int r = 0; r < size_; ++r) {
      offsets[static_cast<size_t>(r)] = detail::mpi_count(total, "allgather");
      total += lens[static_cast<size_t>(r)];
    }
    std::string all(static_cast<size_t>(total), '\0');
    detail::check(MPI_Allgatherv(s.data(), len, MPI_CHAR, all.data(), lens.data(), offsets.data(),
                                 MPI_CHAR, comm_),
                  "allgather: MPI_Allgatherv");
    std::vector<std::string> out;
    for (int r = 0; r < size_; ++r)
      out.push_back(all.substr(static_cast<size_t>(offsets[static_cast<size_t>(r)]),
                               static_cast<size_t>(lens[static_cast<size_t>(r)])));
    return out;
  }
  /// root's string on every process.
  std::string broadcast(std::string s, int root = 0) {
    check_root(root, "broadcast");
    int64_t len = static_cast<int64_t>(s.size());
    detail::check(MPI_Bcast(&len, 1, MPI_INT64_T, root, comm_), "broadcast: MPI_Bcast");
    s.resize(static_cast<size_t>(len));
    detail::check(MPI_Bcast(s.data(), detail::mpi_count(len, "broadcast"), MPI_CHAR, root, comm_),
                  "broadcast: MPI_Bcast");
    return s;
  }

  // ---- barrier ----
  /// Waits until every process of the group has called it.
  void barrier() { detail::check(MPI_Barrier(comm_), "barrier: MPI_Barrier"); }
  /// barrier, non-blocking.
  Work barrier_async() {
    MPI_Request r;
    detail::check(MPI_Ibarrier(comm_, &r), "barrier_async: MPI_Ibarrier");
    return Work(r, nullptr);
  }

 private:
  template <class T>
  void check_op(ReduceOp op, const char* who) const {
    if (op == ReduceOp::avg && !std::is_floating_point_v<T>)
      tapegrad::detail::fail<ValueError>(who, ": avg needs a float or double tensor");
  }
  void check_root(int root, const char* who) const {
    if (root < 0 || root >= size_)
      tapegrad::detail::fail<ValueError>(who, ": root ", root,
                                         " is not a rank of this group (size ", size_, ")");
  }
  template <class T>
  void divide(Tensor<T>& t) const {
    if constexpr (std::is_floating_point_v<T>) t.array() /= static_cast<T>(size_);
  }
  Shape stacked(const Shape& s) const {
    std::vector<int64_t> dims{size_};
    dims.insert(dims.end(), s.dims().begin(), s.dims().end());
    return Shape{std::span<const int64_t>(dims)};
  }

  MPI_Comm comm_ = MPI_COMM_NULL;
  int rank_ = 0;
  int size_ = 1;
};

}  // namespace tapegrad::distributed
