#pragma once
/// \file
/// Tape<T>: records, in execution order, one node per op: its value, its inputs and its
/// backward function. Recording order is a topological order, so backward(loss) is one reverse
/// sweep. clear() forgets the nodes but keeps their buffers: the next step's node i reuses
/// node i's storage, so a training loop stops allocating after its first step.
///
/// Var<T> is a handle (tape, node id, generation). Using a Var after clear() or mixing Vars of
/// two tapes throws TapeError instead of reading the wrong node.
///
/// Writing an op (see ops/elementwise.hpp for many examples):
///   Var<T> out = tape.record("exp", x.shape(), {x}, [](OpContext<T>& c) {
///     c.add_grad(0, c.grad_out().array() * c.value().array());   // d exp(x) = exp(x) dx
///   });
///   out.value().array() = x.value().array().exp();
/// The backward is a captureless lambda (a plain function pointer: no allocation); what it
/// needs beyond the inputs and output it finds in the node: saved(k) tensors, scalar(k), ints.
/// record() also takes what the backward reads (Reads: the inputs' values, its own output,
/// both by default), so the tape knows which values must stay intact until backward.
///
/// Memory. Values live until clear() (a training loop reuses them step after step), but
///   - gradients of intermediate values are lent by a pool (buffer_pool.hpp) when backward first
///     writes them and taken back once the node's own backward has read them: the sweep holds
///     the peak of its live gradients, not one per node. Var::grad() of such a value throws;
///     call retain_grad() on it before backward to keep it (PyTorch's rule). Inputs' and
///     parameters' gradients are kept as before;
///   - in-place ops (record_inplace: relu_, add_, ...) write their output over their input's
///     value when nothing has read that value and no backward needs it, and mark the input
///     overwritten: reading it afterwards (Var::value(), or as an op's input) throws TapeError
///     instead of returning the new values. tape.set_inplace(false) turns this off.
/// memory_stats() reports what the tape holds and the floor backward needs.
///
/// A SweepListener set on the tape (set_listener) hears, during the reverse sweep, when each
/// parameter's gradient is final and when the sweep ends: DistributedDataParallel starts
/// averaging a group of gradients across processes while the sweep goes on. A parameter's
/// gradient is final when the sweep passes the parameter's first leaf of the recording, since
/// every node that consumes it was recorded after it; parameters' gradients are never lent by
/// the pool, so the listener may read them from then on. A checkpointed segment (a closure op)
/// adds into the gradients of the parameters inside it when the sweep reaches it: leaves
/// recorded after the first such op are reported once the sweep has passed it, and parameters
/// used only inside segments are not reported (the listener treats them at sweep_done()).
/// Without a listener this costs nothing.

#include <algorithm>
#include <array>
#include <atomic>
#include <cstdint>
#include <cstring>
#include <functional>
#include <initializer_list>
#include <iomanip>
#include <memory>
#include <optional>
#include <span>
#include <sstream>
#include <string>
#include <vector>

#include "tapegrad/buffer_pool.hpp"
#include "tapegrad/gemm.hpp"
#include "tapegrad/parameter.hpp"
#include "tapegrad/tensor.hpp"

namespace tapegrad {

/// Records ops in execution order and differentiates them in one reverse sweep (see the file's
/// description).
template <class T>
class Tape;
template <class T>
class OpContext;

/// An op's backward: reads its node through the OpContext and adds into its inputs' gradients.
template <class T>
using BackwardFn = void (*)(OpContext<T>&);

/// What an op's backward reads besides its output gradient and its saved buffers.
enum class Reads : uint8_t { none = 0, inputs = 1, output = 2, all = 3 };
/// Whether r includes the op's inputs' values.
constexpr bool reads_inputs(Reads r) { return (static_cast<uint8_t>(r) & 1) != 0; }
/// Whether r includes the op's own output value.
constexpr bool reads_output(Reads r) { return (static_cast<uint8_t>(r) & 2) != 0; }

namespace detail {
// Gradient recording is on unless a NoGradGuard is alive on this thread.
inline thread_local bool grad_enabled = true;
// True while a checkpointed segment runs again in backward (ops/checkpoint.hpp): ops with a side
// effect (BatchNorm's running statistics) skip it the second time.
inline thread_local bool recomputing = false;
// Identifies a recording (a tape between two clear()s) among all tapes of the process.
inline uint64_t new_recording_id() {
  static std::atomic<uint64_t> next{1};
  return next.fetch_add(1, std::memory_order_relaxed);
}
}  // namespace detail

/// While alive, ops compute values but record no backward (torch.no_grad()).
class NoGradGuard {
 public:
  NoGradGuard() : previous_(detail::grad_enabled) { detail::grad_enabled = false; }
  ~NoGradGuard() { detail::grad_enabled = previous_; }
  NoGradGuard(const NoGradGuard&) = delete;
  NoGradGuard& operator=(const NoGradGuard&) = delete;

 private:
  bool previous_;
};
/// Whether ops record their backward on this thread (no NoGradGuard alive).
inline bool is_grad_enabled() { return detail::grad_enabled; }

/// One recorded op: its value, inputs, backward function and the state the sweep needs. For op
/// authors (OpContext::node()).
template <class T>
struct Node {
  /// The op's name (as in TapeMemoryStats).
  const char* op = "";
  /// The op's output.
  Tensor<T> value;
  Tensor<T> grad;               ///< this sweep's gradient (or, for a parameter, its grad)
  std::vector<int32_t> inputs;  ///< node ids, all smaller than this node's id
  /// The function the sweep calls (nullptr for leaves and ops without gradient).
  BackwardFn<T> backward = nullptr;
  /// Whether the sweep differentiates this node (an input requires grad and recording was on).
  bool requires_grad = false;
  bool grad_ready = false;  ///< grad holds a gradient written in this sweep (or call, for leaves)
  /// A constant, input or parameter, not an op's output.
  bool is_leaf = false;
  bool is_param = false;     ///< grad aliases param's gradient: add into it, or assign once after
                             ///< its zero_grad(); never reset
  bool swept = false;        ///< its backward ran in a sweep without retain_graph
  bool reached = false;      ///< scratch of Tape::check_not_swept
  bool pooled = false;       ///< grad was lent by the tape's pool (given back after this backward)
  bool retain = false;       ///< retain_grad(): keep the gradient of this intermediate value
  bool value_read = false;   ///< a recorded backward reads this value
  Reads reads = Reads::all;  ///< what this node's backward reads
  int32_t consumers = 0;     ///< ops recorded with this node as an input
  int32_t overwritten_by = -1;  ///< the in-place op that wrote over this value, or -1
  int32_t storage_of = -1;      ///< a view or in-place output: the node whose buffer it shares
  bool in_place = false;        ///< its value is its input's buffer, written over (storage_of)
  bool handed_on = false;       ///< passed from one layer of a Sequential to the next, which is
                                ///< its only reader (nn::ReLU & co. may then write over it)
  bool first_leaf = false;      ///< the first leaf of its parameter in this recording
  Parameter<T> param;           ///< the parameter of an is_param leaf
  bool borrowed = false;  ///< value shares storage owned elsewhere (a leaf's tensor, a view, the
                          ///< input an in-place op wrote over)
  std::array<Tensor<T>, 3> saved;  ///< op-specific buffers for backward, reused across steps
  /// Op-specific scalars for backward (OpContext::scalar).
  std::array<double, 4> scalars{};
  /// Op-specific integers for backward (sizes, indices).
  std::vector<int64_t> ints;
  std::function<void(OpContext<T>&)> closure;  ///< the backward of record_closure's ops
};

/// What a tape holds, in bytes (Tape::memory_stats()).
struct TapeMemoryStats {
  /// The memory of the ops of one name.
  struct Op {
    /// The op's name.
    const char* op;
    ///@{
    /// Nodes of this op, the bytes of their values, of the values a backward reads, and of their
    /// saved buffers.
    int64_t nodes = 0, values = 0, needed_values = 0, saved = 0;
    ///@}
  };
  int64_t values = 0;         ///< op outputs the tape owns (leaves, views, in-place outputs share)
  int64_t needed_values = 0;  ///< of which a recorded backward reads
  int64_t saved = 0;          ///< ops' saved buffers
  int64_t grads = 0;          ///< intermediate gradients lent out now (none after a backward)
  int64_t peak_grads = 0;     ///< intermediate gradients lent out at once, at most, in the last
                              ///< backward
  int64_t grad_pool = 0;      ///< what the gradient pool holds, lent or free
  int64_t kept_grads = 0;     ///< gradients of inputs and retained values
  int64_t param_grads = 0;    ///< gradients of the parameters used (on this tape or in its
                              ///< checkpointed segments), each once
  int64_t scratch = 0;        ///< the scratch tape of checkpointed segments (all of it)
  std::vector<Op> by_op;      ///< per op name, most memory first

  /// Most held at once during the step: values and saved buffers stay all step, intermediate
  /// gradients peak during backward.
  int64_t peak() const { return values + saved + peak_grads + kept_grads + param_grads + scratch; }
  /// What the step cannot do with less: the values backward reads, the saved buffers, the
  /// parameters' gradients and the largest set of intermediate gradients alive at once.
  int64_t floor() const { return needed_values + saved + peak_grads + param_grads; }
  /// A table of the figures in MB, per op below.
  std::string str() const {
    std::ostringstream os;
    auto mb = [](int64_t b) { return double(b) / (1 << 20); };
    os << std::fixed << std::setprecision(2) << "tape memory (MB): peak " << mb(peak())
       << ", floor " << mb(floor()) << "\n  values " << mb(values) << " (read by backward "
       << mb(needed_values) << "), saved " << mb(saved) << ", intermediate gradients peak "
       << mb(peak_grads) << " (pool " << mb(grad_pool) << "), kept gradients " << mb(kept_grads)
       << ", parameter gradients " << mb(param_grads) << ", checkpoint scratch " << mb(scratch)
       << "\n";
    os << "  " << std::left << std::setw(20) << "op" << std::right << std::setw(7) << "nodes"
       << std::setw(10) << "values" << std::setw(10) << "read" << std::setw(10) << "saved"
       << "\n";
    for (const Op& o : by_op)
      os << "  " << std::left << std::setw(20) << o.op << std::right << std::setw(7) << o.nodes
         << std::setw(10) << mb(o.values) << std::setw(10) << mb(o.needed_values) << std::setw(10)
         << mb(o.saved) << "\n";
    return os.str();
  }
};

/// Hears a reverse sweep as it runs (Tape::set_listener).
template <class T>
class SweepListener {
 public:
  /// p's gradient is final for this sweep: every node consuming p was differentiated (or is not
  /// reached from the output). Called once per sweep for each parameter the recording entered
  /// as a leaf with gradient, among the nodes the sweep covers (those recorded up to its output).
  virtual void gradient_ready(const Parameter<T>& p) = 0;
  /// The sweep has ended (every backward() call that gets past its checks ends with it).
  virtual void sweep_done() = 0;

 protected:
  ~SweepListener() = default;
};

/// A handle to a node of a tape: (tape, node id, recording). Cheap to copy. Using it after the
/// tape's clear(), or with another tape's Vars, throws TapeError.
template <class T>
class Var {
 public:
  Var() = default;  ///< an empty handle; using it throws

  /// The tape it belongs to; throws TapeError if the handle is empty or stale.
  Tape<T>& tape() const {
    check();
    return *tape_;
  }
  /// The node's id on its tape.
  int32_t id() const { return id_; }
  /// Whether the handle refers to a node (a default-constructed Var does not).
  bool defined() const { return tape_ != nullptr; }

  /// The op's output. Mutable so that an op can fill it right after recording. Throws
  /// TapeError if an in-place op has written over it since.
  Tensor<T>& value() const;
  /// The shape of the value.
  const Shape& shape() const { return node().value.shape(); }
  /// Number of dimensions of the value.
  int rank() const { return shape().rank(); }
  /// Number of elements of the value.
  int64_t numel() const { return shape().numel(); }
  /// Size of dimension dim of the value (negative counts from the end).
  int64_t size(int dim) const { return shape().dim(dim); }
  /// The value of a one-element result (a loss); throws ShapeError otherwise.
  T item() const { return value().item(); }
  /// Whether backward computes a gradient for this value.
  bool requires_grad() const { return node().requires_grad; }
  /// Gradient of the last backward() with respect to this value; zeros if none reached it.
  /// For an intermediate value (an op's output) only after retain_grad(), else TapeError.
  Tensor<T> grad() const;
  /// Keeps this intermediate value's gradient after backward (torch.Tensor.retain_grad());
  /// call it before backward. Inputs and parameters keep theirs anyway.
  const Var& retain_grad() const {
    node().retain = true;
    return *this;
  }

  /// For op authors: the node behind this handle.
  Node<T>& node() const;

 private:
  friend class Tape<T>;
  Var(Tape<T>* t, int32_t id, uint64_t gen) : tape_(t), id_(id), generation_(gen) {}
  void check() const;

  Tape<T>* tape_ = nullptr;
  int32_t id_ = -1;
  uint64_t generation_ = 0;
};

/// Records ops in execution order, one node per op, and differentiates them in one reverse sweep;
/// clear() forgets the nodes but keeps their buffers. Not copyable.
template <class T>
class Tape {
 public:
  Tape() : generation_(detail::new_recording_id()) {}
  Tape(const Tape&) = delete;  ///< Vars point at their tape
  Tape& operator=(const Tape&) = delete;

  /// A leaf without gradient (data, labels, fixed masks). Shares the tensor's storage.
  Var<T> constant(const Tensor<T>& t) { return leaf("constant", t, false); }
  /// A leaf whose gradient is kept on the tape: read it with Var::grad() after backward.
  Var<T> input(const Tensor<T>& t) { return leaf("input", t, is_grad_enabled()); }
  /// A leaf whose gradient is added into p.grad() by backward.
  Var<T> param(const Parameter<T>& p) {
    const bool track = p.requires_grad() && is_grad_enabled();
    Var<T> v = leaf("parameter", p.value(), track);
    if (track) {
      Node<T>& n = nodes_[v.id_];
      if (!(p.grad_buffer().shape() == p.value().shape()))
        p.grad_buffer() = Tensor<T>::zeros(p.shape());
      n.grad = p.grad_buffer();
      n.is_param = true;
      n.param = p;
      // A scratch tape is cleared after each segment: remember the parameters it has seen so
      // memory_stats() counts their gradients (a parameter is new only in the first step).
      if (nested_ && std::find(seen_params_.begin(), seen_params_.end(), p) == seen_params_.end())
        seen_params_.push_back(p);
      // A scratch tape never has a listener: its leaves leave the parameter's recording alone.
      if (!nested_) n.first_leaf = p.enter_recording(generation_);
    }
    return v;
  }

  ///@{
  /// Records an op node with an uninitialised value of the given shape; the caller fills it.
  /// The node takes part in backward only when an input requires grad and recording is on.
  /// `reads`: what its backward reads (Reads::all when in doubt).
  Var<T> record(const char* op, const Shape& shape, std::initializer_list<Var<T>> inputs,
                BackwardFn<T> backward, Reads reads = Reads::all) {
    return record(op, shape, std::span<const Var<T>>(inputs.begin(), inputs.size()), backward,
                  reads);
  }
  Var<T> record(const char* op, const Shape& shape, std::span<const Var<T>> inputs,
                BackwardFn<T> backward, Reads reads = Reads::all) {
    return record_impl(op, &shape, nullptr, inputs, backward, reads, -1, false);
  }
  ///@}
  /// Records an op whose value is a view sharing another tensor's storage (reshape).
  Var<T> record_view(const char* op, const Tensor<T>& view, std::initializer_list<Var<T>> inputs,
                     BackwardFn<T> backward, Reads reads = Reads::all) {
    return record_impl(op, nullptr, &view, std::span<const Var<T>>(inputs.begin(), inputs.size()),
                       backward, reads, inputs.begin()->id_, false);
  }
  /// Records an elementwise op whose output has input k's shape, on input k's buffer when that
  /// is safe (relu_, add_): in-place is on, input k is an op's output (not a leaf or a view;
  /// an in-place output is fine), no op has taken it as an input yet, no backward reads its
  /// buffer, and nobody else holds the buffer. Then the output shares input k's buffer and
  /// input k is marked overwritten. in_place tells which happened; either way the caller
  /// computes the output elementwise from input k's value into the output's (one buffer or
  /// two). The backward of such an op must not read its inputs (they may be gone).
  Var<T> record_inplace(const char* op, int k, std::initializer_list<Var<T>> inputs,
                        BackwardFn<T> backward, Reads reads, bool& in_place) {
    if (reads_inputs(reads))
      detail::fail<TapeError>(op, ": an in-place op's backward cannot read its inputs");
    const Var<T>& x = inputs.begin()[k];
    x.check();
    in_place = inplace_ && x.tape_ == this && can_write_over(x.id_);
    const Node<T>& xn = nodes_[static_cast<size_t>(x.id_)];
    const std::span<const Var<T>> all(inputs.begin(), inputs.size());
    if (!in_place)
      return record_impl(op, &xn.value.shape(), nullptr, all, backward, reads, -1, false);
    const int32_t target = x.id_;
    Var<T> y = record_impl(op, nullptr, &xn.value, all, backward, reads, target, false);
    nodes_[static_cast<size_t>(target)].overwritten_by = y.id_;
    nodes_[static_cast<size_t>(y.id_)].in_place = true;
    return y;
  }
  /// Records an op whose backward is a closure that holds state (checkpoint: the segment to run
  /// again; a capture of a pointer or two is stored without allocation). It takes part in
  /// backward whenever gradients are on, whatever its inputs. Its value is empty: the caller
  /// sizes it (value().resize()) once it knows the shape.
  Var<T> record_closure(const char* op, std::span<const Var<T>> inputs,
                        std::function<void(OpContext<T>&)> backward, Reads reads = Reads::inputs) {
    const Shape empty{0};
    Var<T> y = record_impl(op, &empty, nullptr, inputs, &run_closure, reads, -1, true);
    Node<T>& n = nodes_[static_cast<size_t>(y.id_)];
    if (n.backward) n.closure = std::move(backward);
    return y;
  }
  /// The tape checkpointed segments run on (ops/checkpoint.hpp), made on first use; its buffers
  /// are kept for the next segment, like this tape's.
  Tape& scratch() {
    if (!scratch_) {
      scratch_ = std::make_unique<Tape>();
      scratch_->pool_ = pool_;  // one pool: the segment's gradients reuse this tape's buffers
      scratch_->nested_ = true;
      scratch_->inplace_ = inplace_;
    }
    return *scratch_;
  }

  /// Whether in-place ops may write over their inputs (default on).
  void set_inplace(bool on) { inplace_ = on; }
  /// Whether in-place ops may write over their inputs.
  bool inplace() const { return inplace_; }

  /// Reverse sweep from a scalar loss (seed 1). Each op is differentiated once, as in PyTorch: a
  /// backward() that would run the backward of an op an earlier backward() already ran (the
  /// same loss twice, or two losses sharing a trunk) throws TapeError before changing anything,
  /// since it would add the same gradients into the parameters again; unless the earlier one
  /// passed retain_graph = true. Outputs of disjoint parts of a recording may each be swept.
  void backward(const Var<T>& loss, bool retain_graph = false) {
    check_own(loss, "backward");
    if (loss.numel() != 1)
      detail::fail<TapeError>("backward: the loss has shape ", loss.shape(),
                              "; pass a seed gradient of that shape for a non-scalar output");
    sweep(loss, nullptr, retain_graph);
  }
  /// Reverse sweep from any output, seeded with d(objective)/d(output).
  void backward(const Var<T>& out, const Tensor<T>& seed, bool retain_graph = false) {
    check_own(out, "backward");
    if (!(seed.shape() == out.shape()))
      detail::fail<ShapeError>("backward: seed of shape ", seed.shape(), " for an output of shape ",
                               out.shape());
    sweep(out, &seed, retain_graph);
  }

  /// Forgets every node (their Vars become stale) but keeps the buffers for reuse. Borrowed
  /// values (leaves, views) are let go, so their owners' buffers are unshared again; the inputs'
  /// gradients go back to the pool.
  /// The listener is part of the recording: clear() removes it too.
  void clear() {
    for (size_t i = 0; i < size_; ++i) {
      Node<T>& n = nodes_[i];
      if (n.borrowed) n.value = Tensor<T>();
      if (n.pooled) give_back(n);
    }
    size_ = 0;
    generation_ = detail::new_recording_id();
    swept_any_ = false;
    listener_ = nullptr;
    first_closure_ = -1;
  }
  /// Number of nodes recorded since the last clear().
  size_t size() const { return size_; }

  /// The listener of this recording's sweeps (nullptr: none), until clear(). It must outlive the
  /// sweeps it hears.
  void set_listener(SweepListener<T>* listener) { listener_ = listener; }
  /// The listener set by set_listener(), or nullptr.
  SweepListener<T>* listener() const { return listener_; }
  /// This recording's identity, unique among all tapes of the process; clear() starts a new one.
  uint64_t recording_id() const { return generation_; }

  /// For op authors: the node of id id (unchecked).
  Node<T>& node(int32_t id) { return nodes_[static_cast<size_t>(id)]; }

  /// What the tape holds now and held at most in its last backward (see TapeMemoryStats).
  TapeMemoryStats memory_stats() const {
    TapeMemoryStats m;
    std::vector<const void*> params;
    add_memory(m, params);
    m.grads = pool_->in_use_bytes();
    m.peak_grads = pool_->peak_in_use_bytes();
    m.grad_pool = pool_->owned_bytes();
    std::sort(m.by_op.begin(), m.by_op.end(),
              [](const auto& x, const auto& y) { return x.values + x.saved > y.values + y.saved; });
    return m;
  }

 private:
  friend class Var<T>;
  friend class OpContext<T>;

  // Adds this tape's buffers to m, a scratch tape's to m.scratch; each parameter's gradient
  // once (`params`). The gradient pool is the parent's, counted by memory_stats().
  void add_memory(TapeMemoryStats& m, std::vector<const void*>& params) const {
    constexpr int64_t b = sizeof(T);
    int64_t& values = nested_ ? m.scratch : m.values;
    int64_t& saved_total = nested_ ? m.scratch : m.saved;
    int64_t& kept = nested_ ? m.scratch : m.kept_grads;
    for (size_t i = 0; i < nodes_.size(); ++i) {
      const Node<T>& n = nodes_[i];
      const bool live = i < size_;
      const int64_t value = n.borrowed ? 0 : n.value.capacity() * b;
      int64_t saved = 0;
      for (const auto& t : n.saved) saved += t.capacity() * b;
      values += value;
      saved_total += saved;
      if (!n.pooled && !n.is_param) kept += n.grad.capacity() * b;
      if (n.is_param && live && !nested_) add_param_grad(m, params, n.param);
      if (!live) continue;
      const int64_t needed = n.value_read && !n.borrowed && !nested_ ? n.value.numel() * b : 0;
      m.needed_values += needed;
      auto it = std::find_if(m.by_op.begin(), m.by_op.end(), [&](const TapeMemoryStats::Op& o) {
        return std::strcmp(o.op, n.op) == 0;
      });
      if (nested_) continue;  // the scratch's nodes are not the step's ops
      if (it == m.by_op.end()) it = m.by_op.insert(m.by_op.end(), TapeMemoryStats::Op{n.op});
      ++it->nodes;
      it->values += value;
      it->needed_values += needed;
      it->saved += saved;
    }
    for (const Parameter<T>& p : seen_params_) add_param_grad(m, params, p);
    if (scratch_) scratch_->add_memory(m, params);
  }

  // Counts p's gradient once.
  static void add_param_grad(TapeMemoryStats& m, std::vector<const void*>& params,
                             const Parameter<T>& p) {
    if (std::find(params.begin(), params.end(), p.key()) != params.end()) return;
    params.push_back(p.key());
    m.param_grads += p.grad_buffer().capacity() * static_cast<int64_t>(sizeof(T));
  }

  Var<T> leaf(const char* op, const Tensor<T>& t, bool requires_grad) {
    const Tensor<T> value = t;  // t may be a node's value, and new_node may move the nodes
    Node<T>& n = new_node(op, nullptr);
    n.value = value;  // share storage, no copy
    n.borrowed = true;
    n.requires_grad = requires_grad;
    n.is_leaf = true;
    return Var<T>(this, static_cast<int32_t>(size_ - 1), generation_);
  }

  // view: the value shares this tensor's storage, which is node `base`'s (or a leaf's) buffer.
  // always_track: take part in backward even when no input needs a gradient (record_closure).
  Var<T> record_impl(const char* op, const Shape* shape, const Tensor<T>* view,
                     std::span<const Var<T>> inputs, BackwardFn<T> backward, Reads reads,
                     int32_t base, bool always_track) {
    bool track = false;
    for (const Var<T>& in : inputs) {
      in.check();
      if (in.tape_ != this)
        detail::fail<TapeError>(op, ": Vars from two different tapes in one op");
      const Node<T>& n = nodes_[static_cast<size_t>(in.id_)];
      if (n.overwritten_by >= 0) fail_overwritten(op, in.id_);
      track = track || n.requires_grad;
    }
    track = (track || always_track) && is_grad_enabled() && backward != nullptr;
    // Copies first: shape and view may refer into nodes_, which new_node can reallocate.
    const std::optional<Shape> out_shape = shape ? std::optional<Shape>(*shape) : std::nullopt;
    const Tensor<T> out_view = view ? *view : Tensor<T>();
    Node<T>& n = new_node(op, out_shape ? &*out_shape : nullptr);
    if (view) {
      n.value = out_view;
      n.borrowed = true;
    }
    n.requires_grad = track;
    n.backward = track ? backward : nullptr;
    n.reads = reads;
    n.storage_of = view ? base : -1;
    for (const Var<T>& in : inputs) n.inputs.push_back(in.id_);
    const auto id = static_cast<int32_t>(size_ - 1);
    for (const Var<T>& in : inputs) {
      ++nodes_[static_cast<size_t>(in.id_)].consumers;
      if (track && reads_inputs(reads)) mark_read(in.id_);
    }
    if (track && reads_output(reads)) mark_read(id);
    if (track && always_track && first_closure_ < 0) first_closure_ = id;
    return Var<T>(this, id, generation_);
  }

  static void run_closure(OpContext<T>& c) { c.node().closure(c); }

  // Whether an op may write over node id's value (see record_inplace).
  bool can_write_over(int32_t id) const {
    const Node<T>& x = nodes_[static_cast<size_t>(id)];
    if (x.is_leaf || (x.borrowed && !x.in_place) || x.consumers > 0 || x.retain ||
        x.overwritten_by >= 0)
      return false;
    long holders = 1;  // the nodes sharing the buffer: x and the chain it was written over
    int32_t owner = id;
    while (nodes_[static_cast<size_t>(owner)].in_place) {
      owner = nodes_[static_cast<size_t>(owner)].storage_of;
      ++holders;
    }
    return !nodes_[static_cast<size_t>(owner)].value_read && x.value.use_count() == holders;
  }

  // A backward will read node id's value: so its buffer, wherever it lives, must stay intact.
  void mark_read(int32_t id) {
    for (; id >= 0; id = nodes_[static_cast<size_t>(id)].storage_of)
      nodes_[static_cast<size_t>(id)].value_read = true;
  }

  [[noreturn]] void fail_overwritten(const char* what, int32_t id) const {
    const Node<T>& n = nodes_[static_cast<size_t>(id)];
    const int32_t by = n.overwritten_by;
    detail::fail<TapeError>(
        what, ": the value of node ", id, " (", n.op, ") was overwritten by the in-place op ",
        nodes_[static_cast<size_t>(by)].op, " (node ", by,
        ") to save memory; read that op's output instead, or call tape.set_inplace(false) "
        "before recording");
  }

  // A node for the next id; its value is sized to *shape, reusing the slot's buffer. The node is
  // counted only once its value exists, so a tape whose op ran out of memory stays usable.
  Node<T>& new_node(const char* op, const Shape* shape) {
    if (size_ == nodes_.size()) nodes_.emplace_back();
    Node<T>& n = nodes_[size_];
    if (shape) {
      try {
        n.value.resize(*shape);
      } catch (const OutOfMemoryError& e) {
        detail::fail<OutOfMemoryError>(op, ": ", e.what());
      }
    }
    ++size_;
    n.op = op;
    n.inputs.clear();
    n.ints.clear();
    n.backward = nullptr;
    n.grad_ready = false;
    n.swept = false;
    n.first_leaf = false;
    n.is_leaf = false;
    n.borrowed = false;
    n.retain = false;
    n.value_read = false;
    n.reads = Reads::all;
    n.consumers = 0;
    n.overwritten_by = -1;
    n.storage_of = -1;
    n.in_place = false;
    n.handed_on = false;
    n.closure = nullptr;
    if (n.pooled) give_back(n);  // a sweep that threw left it lent
    if (n.is_param) {            // the slot held a parameter's grad: never write into it again
      n.grad = Tensor<T>();
      n.is_param = false;
      n.param = Parameter<T>();
    }
    return n;
  }

  void check_own(const Var<T>& v, const char* what) const {
    v.check();
    if (v.tape_ != this) detail::fail<TapeError>(what, ": the Var belongs to another tape");
  }

  // Throws if the sweep from node `last` would run a backward that ran already.
  void check_not_swept(size_t last) {
    for (size_t i = 0; i <= last; ++i) nodes_[i].reached = false;
    nodes_[last].reached = true;
    for (size_t i = last + 1; i-- > 0;) {
      Node<T>& n = nodes_[i];
      if (!n.reached || n.backward == nullptr) continue;
      if (n.swept)
        detail::fail<TapeError>(
            "backward: the recording from this output back was already differentiated at node ", i,
            " (", n.op,
            "); a second backward would add the same gradients again. To accumulate gradients "
            "over several batches, record each forward anew (tape.clear(), forward, backward) "
            "without zero_grad() in between; to differentiate one recording twice, pass "
            "retain_graph = true to the first backward");
      for (int32_t k : n.inputs)
        if (nodes_[static_cast<size_t>(k)].requires_grad)
          nodes_[static_cast<size_t>(k)].reached = true;
    }
  }

  void sweep(const Var<T>& out, const Tensor<T>* seed, bool retain_graph) {
    const auto last = static_cast<size_t>(out.id_);
    if (swept_any_) check_not_swept(last);  // only after a first sweep: it costs a pass
    for (size_t i = 0; i <= last; ++i) {
      Node<T>& n = nodes_[i];
      if (n.is_leaf) continue;     // inputs' gradients add up over sweeps (until clear())
      if (n.pooled) give_back(n);  // a sweep that threw left it lent
      n.grad_ready = false;
    }
    if (!nested_) pool_->reset_peak();
    Node<T>& o = nodes_[last];
    if (!o.requires_grad) {  // nothing upstream needs a gradient
      if (listener_) listener_->sweep_done();
      return;
    }
    if (!o.is_param || o.param.take_pending_zero()) {
      if (!o.is_param) start_grad(o);
      if (seed)
        o.grad.copy_(*seed);
      else
        o.grad.fill_(T(1));
    } else {
      if (seed)
        o.grad.array() += seed->array();
      else
        o.grad.array() += T(1);
    }
    o.grad_ready = true;
    // With a listener, leaves recorded after the first closure op (a checkpointed segment, which
    // may add into any parameter's gradient) are reported once the sweep has passed it.
    const size_t held =
        listener_ && first_closure_ >= 0 && static_cast<size_t>(first_closure_) <= last
            ? static_cast<size_t>(first_closure_)
            : SIZE_MAX;
    for (size_t i = last + 1; i-- > 0;) {
      Node<T>& n = nodes_[i];
      if (!n.grad_ready || n.backward == nullptr) {
        if (n.first_leaf && listener_ && i < held) listener_->gradient_ready(n.param);
      } else {
        OpContext<T> c(*this, n);
        n.backward(c);
        n.swept = !retain_graph;
        if (n.pooled) give_back(n);  // its backward was its last reader
      }
      if (i == held)
        for (size_t j = held + 1; j <= last; ++j)
          if (nodes_[j].first_leaf) listener_->gradient_ready(nodes_[j].param);
    }
    swept_any_ = swept_any_ || !retain_graph;
    if (listener_) listener_->sweep_done();
  }

  // A gradient buffer for n (not a parameter), sized but not initialised: lent by the pool
  // (an intermediate value's until its backward has run, an input's until clear()), unless n
  // is a retained value, which keeps its own.
  void start_grad(Node<T>& n) {
    if (n.retain) {
      n.grad.resize(n.value.shape());
    } else {
      pool_->acquire(n.value.shape(), n.grad);
      n.pooled = true;
    }
  }
  void give_back(Node<T>& n) {
    pool_->release(n.grad);
    n.pooled = false;
  }

  std::vector<Node<T>> nodes_;
  size_t size_ = 0;
  uint64_t generation_;     // the recording's id (detail::new_recording_id)
  bool swept_any_ = false;  // a backward without retain_graph ran since clear()
  bool inplace_ = true;
  BufferPool<T> own_pool_;
  BufferPool<T>* pool_ = &own_pool_;       // gradients (a scratch tape uses its parent's)
  std::unique_ptr<Tape> scratch_;          // where checkpointed segments run (ops/checkpoint.hpp)
  bool nested_ = false;                    // this is another tape's scratch
  std::vector<Parameter<T>> seen_params_;  // a scratch tape's parameters, across clear()
  SweepListener<T>* listener_ = nullptr;
  int32_t first_closure_ = -1;  // the first op recorded by record_closure (tracked), or -1
};

namespace detail {
// Elements [off, off + len) of t as an Eigen array (for add_grad_elementwise and for_each_slice).
template <class T>
Eigen::Map<const Eigen::Array<T, Eigen::Dynamic, 1>> elements(const Tensor<T>& t, int64_t off,
                                                              int64_t len) {
  return Eigen::Map<const Eigen::Array<T, Eigen::Dynamic, 1>>(t.data() + off, len);
}
template <class T>
Eigen::Map<Eigen::Array<T, Eigen::Dynamic, 1>> elements(Tensor<T>& t, int64_t off, int64_t len) {
  return Eigen::Map<Eigen::Array<T, Eigen::Dynamic, 1>>(t.data() + off, len);
}
}  // namespace detail

/// What a backward function sees: its node's output, its output gradient, its inputs, and the
/// gradients of its inputs to add into.
template <class T>
class OpContext {
 public:
  /// The context of node on tape (the tape's sweep creates it).
  OpContext(Tape<T>& tape, Node<T>& node) : tape_(tape), node_(node) {}

  /// The node being differentiated.
  Node<T>& node() { return node_; }
  /// The tape the node is on.
  Tape<T>& tape() { return tape_; }
  /// The op's output value.
  const Tensor<T>& value() const { return node_.value; }
  /// The gradient of the objective with respect to the output (same shape as value()).
  const Tensor<T>& grad_out() const { return node_.grad; }
  /// The value of input k.
  const Tensor<T>& input(int k) const { return in(k).value; }
  /// The op's saved buffer k (0 to 2), written in forward.
  Tensor<T>& saved(int k) { return node_.saved[static_cast<size_t>(k)]; }
  /// The op's scalar k (0 to 3), written in forward.
  double scalar(int k) const { return node_.scalars[static_cast<size_t>(k)]; }
  /// Whether input k needs a gradient (skip computing it when not).
  bool needs_grad(int k) const { return in(k).requires_grad; }

  /// Adds an Eigen array expression (with numel() elements of input k) to input k's gradient.
  /// The first write of a sweep assigns, so buffers need no zeroing.
  template <class Expr>
  void add_grad(int k, const Expr& e) {
    Node<T>& n = in(k);
    if (!n.requires_grad) return;
    if (fresh(n))
      n.grad.array() = e;
    else
      n.grad.array() += e;
  }
  /// Same for an elementwise expression built piece by piece, split among the threads when
  /// large (detail::for_each_slice): f(offset, length) returns the expression's elements
  /// [offset, offset + length) (Eigen arrays of that length, e.g. maps at the offset).
  template <class F>
  void add_grad_elementwise(int k, F&& f) {
    Node<T>& n = in(k);
    if (!n.requires_grad) return;
    const bool assign = fresh(n);
    T* g = n.grad.data();
    detail::for_each_slice(n.grad.numel(), [&](int64_t off, int64_t len) {
      Eigen::Map<Eigen::Array<T, Eigen::Dynamic, 1>> d(g + off, len);
      if (assign)
        d = f(off, len);
      else
        d += f(off, len);
    });
  }
  /// Same for a matrix expression (e.g. a product) viewed as rows x cols of input k's gradient.
  template <class Expr>
  void add_grad_matrix(int k, int64_t rows, int64_t cols, const Expr& e) {
    Node<T>& n = in(k);
    if (!n.requires_grad) return;
    if (fresh(n))
      n.grad.matrix(rows, cols).noalias() = e;
    else
      n.grad.matrix(rows, cols).noalias() += e;
  }
  /// Same for the product lhs · rhs, through detail::gemm (split among the threads when large).
  template <class Lhs, class Rhs>
  void add_grad_product(int k, int64_t rows, int64_t cols, const Lhs& lhs, const Rhs& rhs) {
    Node<T>& n = in(k);
    if (!n.requires_grad) return;
    const bool assign = fresh(n);
    detail::gemm(n.grad.matrix(rows, cols), lhs, rhs, !assign);
  }
  /// Input k's gradient buffer, zeroed if this sweep has not written it yet; for ops that
  /// scatter into it (max, slice, pooling).
  Tensor<T>& grad_in(int k) {
    Node<T>& n = in(k);
    if (fresh(n)) n.grad.zero_();
    return n.grad;
  }
  /// Input k's gradient buffer without grad_in's zero fill, for a backward that writes every
  /// element itself (one pass instead of zero fill + read-modify-write): `assign` comes back
  /// true when this sweep has not written the buffer yet (then assign every element: it holds
  /// stale values), false when the backward must add into it. Only for inputs that need_grad.
  Tensor<T>& grad_in_uninitialized(int k, bool& assign) {
    Node<T>& n = in(k);
    assign = fresh(n);
    return n.grad;
  }

 private:
  Node<T>& in(int k) const { return tape_.node(node_.inputs[static_cast<size_t>(k)]); }
  // True (and the buffer sized but not initialised) when n's gradient is not yet written.
  bool fresh(Node<T>& n) {
    if (n.is_param) return n.param.take_pending_zero();
    if (n.grad_ready) return false;
    tape_.start_grad(n);
    n.grad_ready = true;
    return true;
  }

  Tape<T>& tape_;
  Node<T>& node_;
};

template <class T>
void Var<T>::check() const {
  if (tape_ == nullptr) detail::fail<TapeError>("Var: use of an empty Var");
  if (generation_ != tape_->generation_ || static_cast<size_t>(id_) >= tape_->size_)
    detail::fail<TapeError>("Var: stale handle (node ", id_,
                            " was recorded before the tape was cleared)");
}

template <class T>
Node<T>& Var<T>::node() const {
  check();
  return tape_->node(id_);
}

template <class T>
Tensor<T>& Var<T>::value() const {
  Node<T>& n = node();
  if (n.overwritten_by >= 0) tape_->fail_overwritten("Var::value", id_);
  return n.value;
}

template <class T>
Tensor<T> Var<T>::grad() const {
  const Node<T>& n = node();
  if (n.is_param) return n.param.grad();  // fills in pending zeros
  if (!n.is_leaf && !n.retain)
    detail::fail<TapeError>("Var::grad: node ", id_, " (", n.op,
                            ") is an intermediate value, whose gradient backward frees once it "
                            "is used; call retain_grad() on it before backward to keep it (as "
                            "in PyTorch)");
  if (!n.grad_ready) return Tensor<T>::zeros(n.value.shape());
  return n.grad;
}

}  // namespace tapegrad
