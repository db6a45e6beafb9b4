#pragma once
/// \file
/// DistributedDataParallel<T>: data-parallel training over MPI, as torch.nn.parallel.
/// DistributedDataParallel. Every process holds a replica of the model and trains it on its own
/// part of each global batch; the gradients are averaged across the processes during the backward
/// pass, so every replica takes the same optimizer step and the replicas stay identical.
///
///   distributed::Environment env(argc, argv);
///   auto model = std::make_shared<nn::Sequential<float>>(...);
///   distributed::DistributedDataParallel<float> ddp(model, env.world());
///   optim::SGD<float> opt(ddp.named_parameters(), {.lr = 0.1, .momentum = 0.9});
///   ddp.attach(opt);                 // optional: step() waits for the averaging (see below)
///   for (...) {                      // each rank its own batch (DistributedSampler)
///     tape.clear();
///     opt.zero_grad();
///     auto loss = cross_entropy(ddp(tape.constant(batch.images)), batch.labels);
///     tape.backward(loss);           // averaging starts while the sweep runs
///     opt.step();                    // every rank: the same step on the averaged gradient
///   }
///
/// Construction (a collective of the group): every rank must pass the same model: the ranks
/// compare their parameters' and buffers' names and shapes, the dtype and the options, and on a
/// difference every rank throws DistributedError naming the first differing entry and the ranks
/// (no rank is left waiting). Then rank 0's parameters and buffers are broadcast, so the replicas
/// start equal whatever each rank initialised; and every Dropout inside gets a per-rank seed,
/// rank_seed(rank 0's seed, rank) with rank 0's call count (rank 0 keeps its own, so rank 0 draws
/// the masks a single process would).
///
/// Gradient buckets: the parameters (those with requires_grad), in reverse registration order
/// (roughly the order their gradients become final), are packed into buckets: the first closes
/// once it holds first_bucket_cap_mb (1 MB), each later one at bucket_cap_mb (25 MB), as
/// PyTorch's. A bucket is one contiguous buffer, and each parameter's gradient a view into it
/// (PyTorch's gradient_as_bucket_view): no copy in or out.
///
/// The backward pass: the forward through this module sets it as the tape's SweepListener. The
/// tape tells it when each parameter's gradient is final; once every gradient of a bucket is, and
/// every earlier bucket has been started, the bucket is divided by the number of processes and
/// it is handed to a thread of its own (option progress_thread; it needs MPI_THREAD_MULTIPLE,
/// Environment's default), which sums the buckets across the ranks with blocking MPI_Allreduce,
/// one after another, while the sweep goes on through the earlier layers (allreduce_worker.hpp
/// says why not MPI_Iallreduce). Without that thread each bucket is an MPI_Iallreduce that
/// progresses inside the training thread's MPI calls. Buckets start in the same order on every
/// rank. Parameters that received no gradient on a rank (not used in its forward, or not reached
/// from the loss: PyTorch's find_unused_parameters, always on here) count with the gradient they
/// hold, zeros after zero_grad(); their buckets start when the sweep ends.
///
/// Waiting: when an optimizer is attached (attach(opt): a pre-step hook of the optimizer) its
/// step() waits for the buckets before its pipeline, so the non-finite check, the penalties and
/// the clipping's total norm all see the averaged gradient, and raise / skip_step decide the same
/// on every rank (a NaN on one rank is a NaN in the average). Without an attached optimizer the
/// end of the sweep waits (as PyTorch's backward). synchronize() waits by hand: call it before
/// reading gradients between backward() and an attached optimizer's step() (GradientMonitor).
///
/// no_sync(): while the guard lives, forwards do not synchronise and their backward passes only
/// accumulate locally (gradient accumulation); the first backward after it averages the sums.
///
/// Buffers (BatchNorm's running statistics): with broadcast_buffers (default, as PyTorch) rank
/// 0's buffers are broadcast at the start of every forward with gradients on, so all ranks
/// normalise with the same ones; SyncBatchNorm (sync_batch_norm.hpp) keeps them equal anyway.
///
/// With gradients off (NoGradGuard) the forward communicates nothing: one rank may evaluate alone.
/// Every rank must otherwise run the same forwards and backwards in the same order.

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <limits>
#include <memory>
#include <sstream>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "tapegrad/distributed/allreduce_worker.hpp"
#include "tapegrad/distributed/environment.hpp"
#include "tapegrad/distributed/process_group.hpp"
#include "tapegrad/nn/dropout.hpp"
#include "tapegrad/nn/module.hpp"
#include "tapegrad/optim/optimizer.hpp"
#include "tapegrad/tape.hpp"

namespace tapegrad::distributed {

/// The keyword arguments of torch's DistributedDataParallel that apply here, and two of our own.
struct DDPOptions {
  double bucket_cap_mb = 25;       ///< a bucket closes once it holds this many MB (1 MB = 2^20 B)
  double first_bucket_cap_mb = 1;  ///< the first bucket (the last layers' gradients) closes earlier
  bool broadcast_buffers = true;   ///< rank 0's buffers to every rank at each forward
  /// Average the buckets on a thread of their own with blocking MPI_Allreduce (needs
  /// MPI_THREAD_MULTIPLE); without it each bucket is an MPI_Iallreduce, which progresses only
  /// inside MPI calls of the training thread.
  bool progress_thread = true;
  /// Give every Dropout inside a per-rank seed derived from rank 0's (see above).
  bool per_rank_dropout_seeds = true;
};

/// What the averaging cost, summed over the synchronised backward passes since reset_stats().
struct DDPStats {
  int64_t steps = 0;                 ///< backward passes whose gradients were averaged
  int64_t buckets_launched = 0;      ///< allreduces started
  int64_t launched_in_backward = 0;  ///< of them, started before the sweep ended
  double communication_seconds = 0;  ///< per step, first bucket's start to last one's end
  double wait_seconds = 0;           ///< the training thread blocked in them: starting them (inside
                                     ///< MPI_Iallreduce) and waiting for them to end
  /// The share of the communication time the training thread did not wait for.
  double hidden_fraction() const {
    return communication_seconds > 0 ? 1.0 - wait_seconds / communication_seconds
                                     : std::numeric_limits<double>::quiet_NaN();
  }
};

namespace detail {

// "1.weight [256,784]": one line of a rank's model description, split for the error message.
inline std::string describe_entry(const std::string& line) {
  if (line.empty()) return "nothing";
  const char kind = line[0];
  const std::string rest = line.substr(2);
  if (kind == 'p') return "parameter " + rest;
  if (kind == 'b') return "buffer " + rest;
  if (kind == 'o') return "options " + rest;
  return rest;
}

inline std::vector<std::string> split_lines(const std::string& s) {
  std::vector<std::string> out;
  std::istringstream in(s);
  for (std::string line; std::getline(in, line);) out.push_back(line);
  return out;
}

// Compares the ranks' descriptions; on a difference throws, identically on every rank, naming
// the first differing entry, rank 0's version of it and every differing rank's.
inline void check_same_everywhere(ProcessGroup& group, const std::string& who,
                                  const std::string& description) {
  const std::vector<std::string> all = group.allgather(description);
  if (std::all_of(all.begin(), all.end(), [&](const std::string& d) { return d == all[0]; }))
    return;
  std::vector<std::vector<std::string>> lines;
  for (const auto& d : all) lines.push_back(split_lines(d));
  size_t first = std::numeric_limits<size_t>::max();
  for (size_t r = 1; r < lines.size(); ++r) {
    const size_t n = std::max(lines[r].size(), lines[0].size());
    for (size_t k = 0; k < n && k < first; ++k) {
      const std::string a = k < lines[0].size() ? lines[0][k] : "";
      const std::string b = k < lines[r].size() ? lines[r][k] : "";
      if (a != b) first = k;
    }
  }
  auto entry = [&](size_t r) {
    return first < lines[r].size() ? describe_entry(lines[r][first]) : std::string("nothing");
  };
  std::ostringstream os;
  os << who << ": the ranks' models differ (every rank must build the same model with the same "
     << "options): at entry " << first << ", rank 0 has " << entry(0);
  int shown = 0;
  for (size_t r = 1; r < lines.size(); ++r) {
    if (entry(r) == entry(0)) continue;
    if (shown++ == 8) {
      os << ", ...";
      break;
    }
    os << (shown == 1 ? " but " : ", ") << "rank " << r << " has " << entry(r);
  }
  throw DistributedError(os.str());
}

// The averaging machinery of a DistributedDataParallel: buckets, their allreduces, the tape's
// listener, the communication thread. Shared with the optimizer's pre-step hook through a
// weak_ptr.
template <class T>
class Reducer final : public SweepListener<T> {
 public:
  Reducer(nn::Module<T>& module, ProcessGroup& group, const DDPOptions& options) : opt_(options) {
    const char* who = "DistributedDataParallel";
    if (!(options.bucket_cap_mb > 0) || !(options.first_bucket_cap_mb > 0))
      tapegrad::detail::fail<ValueError>(who, ": bucket_cap_mb ", options.bucket_cap_mb,
                                         " and first_bucket_cap_mb ", options.first_bucket_cap_mb,
                                         " must be > 0");
    check(MPI_Comm_dup(group.comm(), &comm_), "DistributedDataParallel: MPI_Comm_dup");
    MPI_Comm_rank(comm_, &rank_);
    MPI_Comm_size(comm_, &size_);

    const auto named = module.named_parameters();
    const auto buffers = module.named_buffers();
    // 1. Every rank the same model and options?
    std::ostringstream d;
    d << "t dtype " << (std::is_same_v<T, float> ? "float" : "double") << "\n"
      << "o bucket_cap_mb=" << options.bucket_cap_mb
      << " first_bucket_cap_mb=" << options.first_bucket_cap_mb
      << " broadcast_buffers=" << options.broadcast_buffers
      << " per_rank_dropout_seeds=" << options.per_rank_dropout_seeds << "\n";
    for (const auto& [n, p] : named)
      d << "p '" << n << "' of shape " << p.shape() << (p.requires_grad() ? "" : " (frozen)")
        << "\n";
    for (const auto& [n, b] : buffers) d << "b '" << n << "' of shape " << b.shape() << "\n";
    try {
      check_same_everywhere(group, who, d.str());
    } catch (...) {
      MPI_Comm_free(&comm_);  // no destructor runs for a constructor that throws
      throw;
    }

    // 2. Rank 0's parameters and buffers everywhere.
    for (const auto& [n, p] : named) bcast(p.value());
    for (const auto& [n, b] : buffers) {
      bcast(b);
      buffers_.push_back(b);
    }
    for (const auto& [n, m] : module.named_modules())
      if (auto* dp = dynamic_cast<nn::Dropout<T>*>(m)) dropouts_.push_back(dp);
    sync_dropout_seeds();

    // 3. Buckets, in reverse registration order; each gradient becomes a view of its bucket.
    for (const auto& [n, p] : named) {
      if (!p.requires_grad() || index_.count(p.key())) continue;
      index_.emplace(p.key(), params_.size());
      params_.push_back(p);
      names_.push_back(n);
    }
    const auto cap = [&](size_t b) {
      const double mb = b == 0 ? options.first_bucket_cap_mb : options.bucket_cap_mb;
      return mb * 1024.0 * 1024.0;
    };
    constexpr int64_t align = static_cast<int64_t>(Tensor<T>::alignment / sizeof(T));
    std::vector<std::vector<size_t>> members;
    double bytes = 0;
    for (size_t k = params_.size(); k-- > 0;) {
      if (members.empty() || bytes >= cap(members.size() - 1)) {
        members.emplace_back();
        bytes = 0;
      }
      members.back().push_back(k);
      bytes += static_cast<double>(params_[k].numel()) * sizeof(T);
    }
    bucket_of_.assign(params_.size(), 0);
    offset_of_.assign(params_.size(), 0);
    views_.resize(params_.size());
    ready_.assign(params_.size(), 0);
    buckets_.resize(members.size());
    for (size_t b = 0; b < members.size(); ++b) {
      Bucket& bk = buckets_[b];
      bk.params = members[b];
      int64_t off = 0;
      for (size_t k : bk.params) {
        offset_of_[k] = off;
        off += (params_[k].numel() + align - 1) / align * align;
      }
      bk.flat = Tensor<T>::zeros({off});
      bk.numel = off;
      for (size_t k : bk.params) {
        bucket_of_[k] = static_cast<int>(b);
        const Parameter<T>& p = params_[k];
        views_[k] = bk.flat.narrow(offset_of_[k], p.numel()).reshape(p.shape());
        if (p.grad_buffer().shape() == p.shape()) views_[k].copy_(p.grad_buffer());
        p.grad_buffer() = views_[k];
      }
    }

    int provided = MPI_THREAD_SINGLE;
    MPI_Query_thread(&provided);
    if (size_ > 1 && options.progress_thread && provided >= MPI_THREAD_MULTIPLE &&
        !buckets_.empty())
      worker_ = std::make_unique<AllreduceWorker<T>>(comm_);
  }

  ~Reducer() {
    if (!mpi_initialized()) return;
    if (std::uncaught_exceptions() > 0) {
      // Unwinding from an error: waiting for pending buckets could wait forever for a rank that
      // failed too (the job is being aborted). The worker leaves its thread to itself; the
      // buffers of pending MPI_Iallreduce calls stay allocated, since MPI may still write into
      // them, and the communicator stays.
      bool pending = false;
      for (const Bucket& b : buckets_) pending = pending || !b.done;
      worker_.reset();
      if (pending) {
        auto* keep = new std::vector<Tensor<T>>();  // deliberately never freed
        for (const Bucket& b : buckets_) keep->push_back(b.flat);
        return;
      }
    } else {
      try {
        synchronize();
      } catch (...) {  // a destructor must not throw
      }
      worker_.reset();
    }
    if (comm_ != MPI_COMM_NULL) MPI_Comm_free(&comm_);
  }
  Reducer(const Reducer&) = delete;
  Reducer& operator=(const Reducer&) = delete;

  // ---- called by DistributedDataParallel ----

  // Before the module's forward: finishes the previous averaging, resets the buckets for this
  // recording, broadcasts the buffers and listens to the tape.
  void prepare(Tape<T>& tape) {
    if (tape.listener() != nullptr && tape.listener() != this)
      tapegrad::detail::fail<DistributedError>(
          "DistributedDataParallel: the tape already has another listener (another "
          "DistributedDataParallel?); use one tape per data-parallel model");
    if (state_ == State::reducing) synchronize();
    if (state_ != State::prepared || recording_ != tape.recording_id()) {
      if (worker_) worker_->reset();
      std::fill(ready_.begin(), ready_.end(), 0);
      for (Bucket& b : buckets_) {
        b.pending = static_cast<int>(b.params.size());
        b.done = true;
      }
      next_launch_ = 0;
      state_ = State::prepared;
      recording_ = tape.recording_id();
    }
    if (opt_.broadcast_buffers)
      for (Tensor<T>& b : buffers_) bcast(b);
    tape.set_listener(this);
  }

  // Waits until every started bucket is averaged (first starting those not started, when the
  // backward pass has begun). Nothing to do between a forward and its backward.
  void synchronize() {
    if (state_ == State::prepared && next_launch_ > 0) finish_launch();
    if (state_ != State::reducing) return;
    const double t0 = seconds_now();
    double last_done = 0;
    if (worker_) last_done = worker_->wait_all();  // the buckets end in order
    for (size_t b = 0; b < next_launch_; ++b) {
      Bucket& bk = buckets_[b];
      if (!bk.done) {
        check(MPI_Wait(&bk.request, MPI_STATUS_IGNORE), "DistributedDataParallel: MPI_Wait");
        bk.done = true;
        bk.done_at = seconds_now();
      }
      last_done = std::max(last_done, bk.done_at);
    }
    const double t1 = seconds_now();
    if (next_launch_ > 0 && size_ > 1) {
      stats_.wait_seconds += t1 - t0;
      stats_.communication_seconds += last_done - buckets_[0].launched_at;
    }
    state_ = State::idle;
  }

  void set_attached(std::weak_ptr<void> token) { attached_.push_back(std::move(token)); }
  bool attached() const {
    return std::any_of(attached_.begin(), attached_.end(),
                       [](const std::weak_ptr<void>& w) { return !w.expired(); });
  }

  // Broadcasts rank 0's Dropout seeds and call counts, then derives each rank's seed from them.
  void sync_dropout_seeds() {
    if (dropouts_.empty() || !opt_.per_rank_dropout_seeds) return;
    std::vector<uint64_t> v;
    for (auto* d : dropouts_) {
      v.push_back(d->seed());
      v.push_back(d->calls());
    }
    check(MPI_Bcast(v.data(), static_cast<int>(v.size()), MPI_UINT64_T, 0, comm_),
          "DistributedDataParallel: MPI_Bcast");
    for (size_t i = 0; i < dropouts_.size(); ++i)
      dropouts_[i]->set_extra_state("seed " + std::to_string(rank_seed(v[2 * i], rank_)) +
                                    " calls " + std::to_string(v[2 * i + 1]));
  }

  int rank() const { return rank_; }
  int size() const { return size_; }
  bool threaded() const { return worker_ != nullptr; }
  const DDPStats& stats() const { return stats_; }
  void reset_stats() { stats_ = DDPStats{}; }
  std::vector<std::vector<std::string>> bucket_names() const {
    std::vector<std::vector<std::string>> out;
    for (const Bucket& b : buckets_) {
      out.emplace_back();
      for (size_t k : b.params) out.back().push_back(names_[k]);
    }
    return out;
  }

  // ---- SweepListener ----
  void gradient_ready(const Parameter<T>& p) override {
    const auto it = index_.find(p.key());
    if (it == index_.end()) return;  // not this model's parameter
    const size_t k = it->second;
    // Listening to a recording whose averaging has begun (or ended), or twice for one gradient.
    if (state_ != State::prepared || ready_[k])
      tapegrad::detail::fail<DistributedError>(
          "DistributedDataParallel: the gradient of '", names_[k],
          "' was computed twice for one forward (a second backward over the same recording?); "
          "run a new forward for each backward, or accumulate under no_sync()");
    ready_[k] = 1;
    if (--buckets_[static_cast<size_t>(bucket_of_[k])].pending == 0) {
      const size_t before = next_launch_;
      launch_ready();
      stats_.launched_in_backward += static_cast<int64_t>(next_launch_ - before);
    }
    if (!worker_) poll();
  }
  void sweep_done() override {
    if (state_ != State::prepared) return;
    finish_launch();
    if (!attached()) synchronize();
  }

 private:
  enum class State { idle, prepared, reducing };

  struct Bucket {
    Tensor<T> flat;              // the gradients of its parameters, each a view into it
    std::vector<size_t> params;  // indices into params_, in reverse registration order
    int64_t numel = 0;
    int pending = 0;  // gradients not final yet in this backward pass
    MPI_Request request = MPI_REQUEST_NULL;
    bool done = true;
    double launched_at = 0, done_at = 0;
  };

  static void check(int rc, const char* what) { distributed::detail::check(rc, what); }

  void bcast(Tensor<T> t) {
    if (size_ > 1 && t.numel() > 0)
      check(MPI_Bcast(t.data(), mpi_count(t.numel(), "DistributedDataParallel"), mpi_type<T>(), 0,
                      comm_),
            "DistributedDataParallel: MPI_Bcast");
  }

  // Starts every bucket, in order, whose gradients are all final and whose predecessors started.
  void launch_ready() {
    while (next_launch_ < buckets_.size() && buckets_[next_launch_].pending == 0)
      launch(next_launch_++);
  }

  // The rest of the buckets: gradients not final by now will not change in this pass.
  void finish_launch() {
    for (Bucket& b : buckets_) b.pending = 0;
    std::fill(ready_.begin(), ready_.end(), 1);
    launch_ready();
    state_ = State::reducing;
    ++stats_.steps;
  }

  void launch(size_t b) {
    Bucket& bk = buckets_[b];
    for (size_t k : bk.params) {
      Tensor<T>& g = params_[k].grad();  // fills in the zeros of a gradient zero_grad() left
      if (g.data() != views_[k].data()) {
        // Someone replaced the gradient tensor: put its values back into the bucket.
        if (!(g.shape() == views_[k].shape()))
          tapegrad::detail::fail<ShapeError>("DistributedDataParallel: the gradient of '",
                                             names_[k], "' has shape ", g.shape(),
                                             ", its parameter ", views_[k].shape());
        views_[k].copy_(g);
        params_[k].grad_buffer() = views_[k];
      }
    }
    ++stats_.buckets_launched;
    bk.launched_at = seconds_now();
    if (size_ == 1) {
      bk.done_at = bk.launched_at;
      return;
    }
    bk.flat.array() /= static_cast<T>(size_);
    if (worker_) {
      worker_->submit(bk.flat);
      return;
    }
    bk.done = false;
    const double t_call = seconds_now();
    check(
        MPI_Iallreduce(MPI_IN_PLACE, bk.flat.data(), mpi_count(bk.numel, "DistributedDataParallel"),
                       mpi_type<T>(), MPI_SUM, comm_, &bk.request),
        "DistributedDataParallel: MPI_Iallreduce");
    stats_.wait_seconds += seconds_now() - t_call;  // MPI may do part of the work right here
  }

  // Without the worker thread: lets MPI move the pending buckets' data now.
  void poll() {
    for (size_t b = 0; b < next_launch_; ++b) {
      Bucket& bk = buckets_[b];
      if (bk.done) continue;
      int flag = 0;
      MPI_Test(&bk.request, &flag, MPI_STATUS_IGNORE);
      if (!flag) return;
      bk.done = true;
      bk.done_at = seconds_now();
    }
  }

  DDPOptions opt_;
  MPI_Comm comm_ = MPI_COMM_NULL;
  int rank_ = 0, size_ = 1;
  std::vector<Parameter<T>> params_;  // with requires_grad, registration order, each once
  std::vector<std::string> names_;
  std::vector<Tensor<T>> views_;  // params_[k]'s gradient: a view of its bucket
  std::vector<int> bucket_of_;
  std::vector<int64_t> offset_of_;
  std::vector<char> ready_;
  std::unordered_map<const void*, size_t> index_;
  std::vector<Bucket> buckets_;
  std::vector<Tensor<T>> buffers_;
  std::vector<nn::Dropout<T>*> dropouts_;
  size_t next_launch_ = 0;
  State state_ = State::idle;
  uint64_t recording_ = 0;
  std::vector<std::weak_ptr<void>> attached_;
  DDPStats stats_;

  std::unique_ptr<AllreduceWorker<T>> worker_;  // null: each bucket an MPI_Iallreduce
};

}  // namespace detail

/// Data-parallel training over a ProcessGroup, torch's DistributedDataParallel: the wrapped module
/// runs on each process's share of the batch, and its gradients are averaged across processes in
/// buckets while backward runs (see the file's description).
template <class T>
class DistributedDataParallel : public nn::Module<T> {
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, double>,
                "DistributedDataParallel<T>: T must be float or double");

 public:
  /// A shared pointer to a module.
  using Ptr = std::shared_ptr<nn::Module<T>>;

  /// Wraps `module` (its parameters then read "module.<name>", as in PyTorch). A collective over
  /// the group: see the top of this file.
  DistributedDataParallel(Ptr module, ProcessGroup& group, DDPOptions options = {})
      : group_(group) {
    if (!module) tapegrad::detail::fail<ValueError>("DistributedDataParallel: the module is null");
    distributed::detail::require_mpi("DistributedDataParallel");
    module_ = this->register_module("module", std::move(module));
    reducer_ = std::make_shared<detail::Reducer<T>>(*module_, group, options);
  }
  /// The same for a module the caller owns (it must outlive this one).
  DistributedDataParallel(nn::Module<T>& module, ProcessGroup& group, DDPOptions options = {})
      : DistributedDataParallel(Ptr(&module, [](nn::Module<T>*) {}), group, options) {}

  Var<T> forward(const Var<T>& x) override {
    if (is_grad_enabled() && no_sync_depth_ == 0) reducer_->prepare(x.tape());
    return (*module_)(x);
  }
  std::string name() const override { return "DistributedDataParallel"; }

  /// The wrapped module.
  nn::Module<T>& module() const { return *module_; }
  /// The group the gradients are averaged over.
  ProcessGroup& process_group() const { return group_; }
  /// This process's rank in the group.
  int rank() const { return reducer_->rank(); }
  /// Number of processes in the group.
  int world_size() const { return reducer_->size(); }

  /// Makes opt.step() wait for the averaged gradients (a pre-step hook); from then on the end of
  /// the backward pass no longer waits. The hook does nothing once this object is gone.
  void attach(optim::Optimizer<T>& opt) {
    std::weak_ptr<detail::Reducer<T>> weak = reducer_;
    auto token = std::make_shared<char>(0);  // lives as long as the optimizer's hook
    reducer_->set_attached(token);
    opt.add_pre_step_hook([weak, token] {
      if (auto r = weak.lock()) r->synchronize();
    });
  }

  /// Waits for the averaging of the last backward pass (nothing to do when it is done).
  void synchronize() { reducer_->synchronize(); }

  /// The guard no_sync() returns: while it lives, backward passes do not average.
  class NoSync {
   public:
    /// Suspends averaging on d until destroyed.
    explicit NoSync(DistributedDataParallel& d) : d_(d) { ++d_.no_sync_depth_; }
    ~NoSync() { --d_.no_sync_depth_; }
    NoSync(const NoSync&) = delete;
    NoSync& operator=(const NoSync&) = delete;

   private:
    DistributedDataParallel& d_;
  };
  /// While the returned guard lives, forward passes do not synchronise (torch's no_sync()).
  [[nodiscard]] NoSync no_sync() { return NoSync(*this); }

  /// Re-derives the per-rank Dropout seeds from rank 0's (a collective): after loading a
  /// checkpoint, which gives every rank rank 0's (distributed::load_checkpoint calls it).
  void sync_dropout_seeds() { reducer_->sync_dropout_seeds(); }

  /// The parameter names of each bucket, in the order the buckets are averaged.
  std::vector<std::vector<std::string>> bucket_names() const { return reducer_->bucket_names(); }
  /// Figures of the averaging so far (see DDPStats).
  const DDPStats& stats() const { return reducer_->stats(); }
  /// Sets the figures to zero.
  void reset_stats() { reducer_->reset_stats(); }
  /// Whether a thread of its own averages the buckets (see DDPOptions::progress_thread).
  bool has_progress_thread() const { return reducer_->threaded(); }

 private:
  ProcessGroup& group_;
  Ptr module_;
  std::shared_ptr<detail::Reducer<T>> reducer_;
  int no_sync_depth_ = 0;
};

}  // namespace tapegrad::distributed
