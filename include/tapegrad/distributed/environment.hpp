#pragma once
/// \file
/// Environment: MPI for the life of a program (MPI_Init_thread in the constructor, MPI_Finalize
/// in the destructor), this process's rank, the world size and the rank on its machine; and the
/// rule that one failing process ends the whole job instead of leaving the others waiting.
///
///   int main(int argc, char** argv) {
///     return tapegrad::distributed::run(argc, argv, [&](distributed::Environment& env) {
///       ... env.rank(), env.world_size(), env.world() (a ProcessGroup of every process) ...
///       return 0;
///     });
///   }
///
/// Started by mpirun / mpiexec (`mpirun -np 4 ./train`, `mpirun --hostfile hosts ./train`) or by
/// Slurm (`srun -n 4 ./train`), every process runs main(); a program started alone is a job of
/// one process.
///
/// A failing rank: the other ranks wait in their next collective for a rank that will never come,
/// so an exception on one rank must end the job. Three safeguards, each printing
/// "tapegrad: rank R: <message>" to stderr before it calls MPI_Abort (which ends every process of
/// the job, exit status non-zero):
///   - distributed::run(...) catches any exception escaping the function it runs;
///   - the Environment installs a std::terminate handler (option abort_on_terminate), so an
///     uncaught exception anywhere (also in another thread) aborts the job;
///   - the Environment's destructor, reached by an exception propagating out of its scope, aborts
///     instead of calling MPI_Finalize (which would wait for the others).
/// Environment::abort(message) does the same by hand, e.g. from a catch block.
///
/// Randomness: rank_seed(seed, rank) derives a per-process seed (data augmentation, Dropout: see
/// DistributedDataParallel); rank 0 keeps the seed itself, so rank 0 of a job draws what a single
/// process would.

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <memory>
#include <string>
#include <type_traits>
#include <utility>

#include "tapegrad/distributed/process_group.hpp"

namespace tapegrad::distributed {

/// The options of an Environment.
struct EnvironmentOptions {
  /// The thread support asked of MPI. DistributedDataParallel overlaps its averaging with the
  /// backward pass on a thread of its own, which needs MPI_THREAD_MULTIPLE; with less it
  /// progresses only when the training thread calls into MPI.
  int thread_level = MPI_THREAD_MULTIPLE;
  /// Open MPI: unless the launcher or the user set mpi_yield_when_idle, set it, so a thread
  /// waiting in MPI yields its core instead of spinning on it. DistributedDataParallel's
  /// communication thread waits on the cores the training computes on; on 2 ranks of a 2-core
  /// machine its spinning slowed the wide-mlp backward from 6.9-7.0 to 8.3-8.4 ms per step.
  /// Only when this Environment starts MPI; no effect on other MPI libraries.
  bool yield_when_idle = true;
  /// Install a std::terminate handler that prints the uncaught exception and aborts the job.
  bool abort_on_terminate = true;
};

namespace detail {
inline int& world_rank_cache() {
  static int rank = -1;
  return rank;
}
inline std::terminate_handler& previous_terminate() {
  static std::terminate_handler h = nullptr;
  return h;
}

// Prints "tapegrad: rank R: message" and ends the job (every process) with MPI_Abort.
[[noreturn]] inline void abort_job(const std::string& message, int code) {
  std::fprintf(stderr, "tapegrad: rank %d: %s; aborting the job (MPI_Abort)\n", world_rank_cache(),
               message.c_str());
  std::fflush(stderr);
  if (mpi_initialized()) MPI_Abort(MPI_COMM_WORLD, code);
  std::_Exit(code == 0 ? 1 : code);
}

inline std::string describe_current_exception() {
  const std::exception_ptr e = std::current_exception();
  if (!e) return "std::terminate was called without an active exception";
  try {
    std::rethrow_exception(e);
  } catch (const std::exception& x) {
    return std::string("uncaught exception: ") + x.what();
  } catch (...) {
    return "uncaught exception of a type not derived from std::exception";
  }
}

[[noreturn]] inline void terminate_handler() {
  if (mpi_initialized()) abort_job(describe_current_exception(), 1);
  if (previous_terminate()) previous_terminate()();
  std::abort();
}
}  // namespace detail

/// A seed for this process from a seed for the job: rank 0 keeps `seed`, every other rank gets
/// a different, well-mixed one (splitmix64 of seed and rank).
inline uint64_t rank_seed(uint64_t seed, int rank) {
  if (rank == 0) return seed;
  uint64_t z = seed + 0x9E3779B97F4A7C15ULL * (static_cast<uint64_t>(rank) + 1);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
  return z ^ (z >> 31);
}

/// MPI for the life of the program: MPI_Init_thread in the constructor, MPI_Finalize in the
/// destructor; one failing process ends the whole job (see the file's description). Not copyable.
class Environment {
 public:
  /// Initialises MPI with the program's arguments (unless the program did); throws DistributedError
  /// if another Environment is alive or MPI was finalised already.
  Environment(int& argc, char**& argv, EnvironmentOptions options = {}) {
    init(&argc, &argv, options);
  }
  /// Initialises MPI without the program's arguments.
  explicit Environment(EnvironmentOptions options = {}) { init(nullptr, nullptr, options); }
  Environment(const Environment&) = delete;
  Environment& operator=(const Environment&) = delete;

  ~Environment() {
    world_.reset();
    if (options_.abort_on_terminate) std::set_terminate(detail::previous_terminate());
    active() = false;
    if (std::uncaught_exceptions() > uncaught_) {
      // An exception is leaving the scope of the Environment: MPI_Finalize would wait for the
      // other processes, which may be waiting for this one.
      detail::abort_job("an exception left the scope of distributed::Environment", 1);
    }
    if (owns_mpi_ && detail::mpi_initialized()) MPI_Finalize();
  }

  /// This process's rank among all processes.
  int rank() const { return rank_; }
  /// The number of processes.
  int world_size() const { return world_size_; }
  /// Rank among the processes on this machine (MPI_COMM_TYPE_SHARED), and their number.
  int local_rank() const { return local_rank_; }
  /// The number of processes on this machine.
  int local_size() const { return local_size_; }
  /// The thread support MPI provided (MPI_THREAD_SINGLE ... MPI_THREAD_MULTIPLE).
  int thread_level() const { return thread_level_; }
  /// Every process of the job (a duplicate of MPI_COMM_WORLD).
  ProcessGroup& world() { return *world_; }

  /// Prints "tapegrad: rank R: message" to stderr and ends the whole job (MPI_Abort).
  [[noreturn]] static void abort(const std::string& message, int code = 1) {
    detail::abort_job(message, code);
  }

 private:
  static bool& active() {
    static bool a = false;
    return a;
  }

  void init(int* argc, char*** argv, EnvironmentOptions options) {
    if (active())
      tapegrad::detail::fail<DistributedError>(
          "Environment: one is alive already (create one per program, in main)");
    options_ = options;
    int finalized = 0;
    MPI_Finalized(&finalized);
    if (finalized)
      tapegrad::detail::fail<DistributedError>("Environment: MPI was finalised already");
    int initialized = 0;
    MPI_Initialized(&initialized);
    if (initialized) {  // the program started MPI itself: it also ends it
      MPI_Query_thread(&thread_level_);
    } else {
      // Open MPI reads its parameters from the environment in MPI_Init; 0: the user's wins.
      if (options.yield_when_idle) setenv("OMPI_MCA_mpi_yield_when_idle", "1", 0);
      detail::check(MPI_Init_thread(argc, argv, options.thread_level, &thread_level_),
                    "Environment: MPI_Init_thread");
      owns_mpi_ = true;
    }
    MPI_Comm_rank(MPI_COMM_WORLD, &rank_);
    MPI_Comm_size(MPI_COMM_WORLD, &world_size_);
    detail::world_rank_cache() = rank_;
    MPI_Comm node;
    MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, rank_, MPI_INFO_NULL, &node);
    MPI_Comm_rank(node, &local_rank_);
    MPI_Comm_size(node, &local_size_);
    MPI_Comm_free(&node);
    world_ = std::make_unique<ProcessGroup>(MPI_COMM_WORLD);
    if (options.abort_on_terminate)
      detail::previous_terminate() = std::set_terminate(&detail::terminate_handler);
    uncaught_ = std::uncaught_exceptions();
    active() = true;
  }

  EnvironmentOptions options_;
  bool owns_mpi_ = false;
  int rank_ = 0, world_size_ = 1, local_rank_ = 0, local_size_ = 1;
  int thread_level_ = MPI_THREAD_SINGLE;
  int uncaught_ = 0;
  std::unique_ptr<ProcessGroup> world_;
};

namespace detail {
template <class F, class... A>
int call_and_abort_on_error(F& fn, A&... args) {
  try {
    if constexpr (std::is_void_v<std::invoke_result_t<F&, A&...>>) {
      fn(args...);
      return 0;
    } else {
      return static_cast<int>(fn(args...));
    }
  } catch (const std::exception& e) {
    abort_job(e.what(), 1);
  } catch (...) {
    abort_job("an exception of a type not derived from std::exception", 1);
  }
}
}  // namespace detail

/// Runs fn(env) with a new Environment; an exception escaping fn is printed and aborts the job
/// (see the top of this file). Returns fn's result (0 for a void fn), for main() to return.
template <class F>
int run(int& argc, char**& argv, F&& fn, EnvironmentOptions options = {}) {
  Environment env(argc, argv, options);
  return detail::call_and_abort_on_error(fn, env);
}
/// The same with an Environment already alive: runs fn().
template <class F>
int run(F&& fn) {
  detail::require_mpi("distributed::run");
  return detail::call_and_abort_on_error(fn);
}

}  // namespace tapegrad::distributed
