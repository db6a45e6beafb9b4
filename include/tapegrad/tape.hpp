#pragma once
// Tape<T>: records, in execution order, one node per op: its value, its inputs and its
// backward function. Recording order is a topological order, so backward(loss) is one reverse
// sweep. clear() forgets the nodes but keeps their buffers: the next step's node i reuses
// node i's storage, so a training loop stops allocating after its first step.
//
// Var<T> is a handle (tape, node id, generation). Using a Var after clear() or mixing Vars of
// two tapes throws TapeError instead of reading the wrong node.
//
// Writing an op (see ops/elementwise.hpp for many examples):
//   Var<T> out = tape.record("exp", x.shape(), {x}, [](OpContext<T>& c) {
//     c.add_grad(0, c.grad_out().array() * c.value().array());   // d exp(x) = exp(x) dx
//   });
//   out.value().array() = x.value().array().exp();
// The backward is a captureless lambda (a plain function pointer: no allocation); what it
// needs beyond the inputs and output it finds in the node: saved(k) tensors, scalar(k), ints.

#include <array>
#include <cstdint>
#include <initializer_list>
#include <optional>
#include <span>
#include <vector>

#include "tapegrad/gemm.hpp"
#include "tapegrad/parameter.hpp"
#include "tapegrad/tensor.hpp"

namespace tapegrad {

template <class T>
class Tape;
template <class T>
class OpContext;

template <class T>
using BackwardFn = void (*)(OpContext<T>&);

namespace detail {
// Gradient recording is on unless a NoGradGuard is alive on this thread.
inline thread_local bool grad_enabled = true;
}  // namespace detail

// While alive, ops compute values but record no backward (torch.no_grad()).
class NoGradGuard {
 public:
  NoGradGuard() : previous_(detail::grad_enabled) { detail::grad_enabled = false; }
  ~NoGradGuard() { detail::grad_enabled = previous_; }
  NoGradGuard(const NoGradGuard&) = delete;
  NoGradGuard& operator=(const NoGradGuard&) = delete;

 private:
  bool previous_;
};
inline bool is_grad_enabled() { return detail::grad_enabled; }

template <class T>
struct Node {
  const char* op = "";
  Tensor<T> value;
  Tensor<T> grad;               // this sweep's gradient (or, for a parameter, its grad)
  std::vector<int32_t> inputs;  // node ids, all smaller than this node's id
  BackwardFn<T> backward = nullptr;
  bool requires_grad = false;
  bool grad_ready = false;  // grad holds a gradient written in this sweep (or call, for leaves)
  bool is_leaf = false;
  bool is_param = false;  // grad aliases param's gradient: add into it, or assign once after
                          // its zero_grad(); never reset
  bool swept = false;     // its backward ran in a sweep without retain_graph
  bool reached = false;   // scratch of Tape::check_not_swept
  Parameter<T> param;     // the parameter of an is_param leaf
  bool borrowed = false;  // value shares storage owned elsewhere (a leaf's tensor, a view)
  std::array<Tensor<T>, 3> saved;  // op-specific buffers for backward, reused across steps
  std::array<double, 4> scalars{};
  std::vector<int64_t> ints;
};

template <class T>
class Var {
 public:
  Var() = default;  // an empty handle; using it throws

  Tape<T>& tape() const {
    check();
    return *tape_;
  }
  int32_t id() const { return id_; }
  bool defined() const { return tape_ != nullptr; }

  // The op's output. Mutable so that an op can fill it right after recording.
  Tensor<T>& value() const { return node().value; }
  const Shape& shape() const { return node().value.shape(); }
  int rank() const { return shape().rank(); }
  int64_t numel() const { return shape().numel(); }
  int64_t size(int dim) const { return shape().dim(dim); }
  T item() const { return node().value.item(); }
  bool requires_grad() const { return node().requires_grad; }
  // Gradient of the last backward() with respect to this value; zeros if none reached it.
  Tensor<T> grad() const;

  // For op authors: the node behind this handle.
  Node<T>& node() const;

 private:
  friend class Tape<T>;
  Var(Tape<T>* t, int32_t id, uint64_t gen) : tape_(t), id_(id), generation_(gen) {}
  void check() const;

  Tape<T>* tape_ = nullptr;
  int32_t id_ = -1;
  uint64_t generation_ = 0;
};

template <class T>
class Tape {
 public:
  Tape() = default;
  Tape(const Tape&) = delete;  // Vars point at their tape
  Tape& operator=(const Tape&) = delete;

  // A leaf without gradient (data, labels, fixed masks). Shares the tensor's storage.
  Var<T> constant(const Tensor<T>& t) { return leaf("constant", t, false); }
  // A leaf whose gradient is kept on the tape: read it with Var::grad() after backward.
  Var<T> input(const Tensor<T>& t) { return leaf("input", t, is_grad_enabled()); }
  // A leaf whose gradient is added into p.grad() by backward.
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
    }
    return v;
  }

  // Records an op node with an uninitialised value of the given shape; the caller fills it.
  // The node takes part in backward only when an input requires grad and recording is on.
  Var<T> record(const char* op, const Shape& shape, std::initializer_list<Var<T>> inputs,
                BackwardFn<T> backward) {
    return record(op, shape, std::span<const Var<T>>(inputs.begin(), inputs.size()), backward);
  }
  Var<T> record(const char* op, const Shape& shape, std::span<const Var<T>> inputs,
                BackwardFn<T> backward) {
    return record_impl(op, &shape, nullptr, inputs, backward);
  }
  // Records an op whose value is a view sharing another tensor's storage (reshape).
  Var<T> record_view(const char* op, const Tensor<T>& view, std::initializer_list<Var<T>> inputs,
                     BackwardFn<T> backward) {
    return record_impl(op, nullptr, &view, std::span<const Var<T>>(inputs.begin(), inputs.size()),
                       backward);
  }

  // Reverse sweep from a scalar loss (seed 1). Each op is differentiated once, as in PyTorch: a
  // backward() that would run the backward of an op an earlier backward() already ran (the
  // same loss twice, or two losses sharing a trunk) throws TapeError before changing anything,
  // since it would add the same gradients into the parameters again; unless the earlier one
  // passed retain_graph = true. Outputs of disjoint parts of a recording may each be swept.
  void backward(const Var<T>& loss, bool retain_graph = false) {
    check_own(loss, "backward");
    if (loss.numel() != 1)
      detail::fail<TapeError>("backward: the loss has shape ", loss.shape(),
                              "; pass a seed gradient of that shape for a non-scalar output");
    sweep(loss, nullptr, retain_graph);
  }
  // Reverse sweep from any output, seeded with d(objective)/d(output).
  void backward(const Var<T>& out, const Tensor<T>& seed, bool retain_graph = false) {
    check_own(out, "backward");
    if (!(seed.shape() == out.shape()))
      detail::fail<ShapeError>("backward: seed of shape ", seed.shape(), " for an output of shape ",
                               out.shape());
    sweep(out, &seed, retain_graph);
  }

  // Forgets every node (their Vars become stale) but keeps the buffers for reuse. Borrowed
  // values (leaves, views) are let go, so their owners' buffers are unshared again.
  void clear() {
    for (size_t i = 0; i < size_; ++i)
      if (nodes_[i].borrowed) nodes_[i].value = Tensor<T>();
    size_ = 0;
    ++generation_;
    swept_any_ = false;
  }
  size_t size() const { return size_; }

  Node<T>& node(int32_t id) { return nodes_[static_cast<size_t>(id)]; }

 private:
  friend class Var<T>;

  Var<T> leaf(const char* op, const Tensor<T>& t, bool requires_grad) {
    const Tensor<T> value = t;  // t may be a node's value, and new_node may move the nodes
    Node<T>& n = new_node(op, nullptr);
    n.value = value;  // share storage, no copy
    n.borrowed = true;
    n.requires_grad = requires_grad;
    n.is_leaf = true;
    return Var<T>(this, static_cast<int32_t>(size_ - 1), generation_);
  }

  Var<T> record_impl(const char* op, const Shape* shape, const Tensor<T>* view,
                     std::span<const Var<T>> inputs, BackwardFn<T> backward) {
    bool track = false;
    for (const Var<T>& in : inputs) {
      in.check();
      if (in.tape_ != this)
        detail::fail<TapeError>(op, ": Vars from two different tapes in one op");
      track = track || nodes_[in.id_].requires_grad;
    }
    track = track && is_grad_enabled() && backward != nullptr;
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
    for (const Var<T>& in : inputs) n.inputs.push_back(in.id_);
    return Var<T>(this, static_cast<int32_t>(size_ - 1), generation_);
  }

  // A node for the next id; its value is sized to *shape, reusing the slot's buffer.
  Node<T>& new_node(const char* op, const Shape* shape) {
    if (size_ == nodes_.size()) nodes_.emplace_back();
    Node<T>& n = nodes_[size_++];
    n.op = op;
    if (shape) n.value.resize(*shape);
    n.inputs.clear();
    n.ints.clear();
    n.backward = nullptr;
    n.grad_ready = false;
    n.swept = false;
    n.is_leaf = false;
    n.borrowed = false;
    if (n.is_param) {  // the slot held a parameter's grad: never write into it again
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
    for (size_t i = 0; i <= last; ++i)
      if (!nodes_[i].is_leaf) nodes_[i].grad_ready = false;
    Node<T>& o = nodes_[last];
    if (!o.requires_grad) return;  // nothing upstream needs a gradient
    if (!o.is_param || o.param.take_pending_zero()) {
      o.grad.resize(o.value.shape());
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
    for (size_t i = last + 1; i-- > 0;) {
      Node<T>& n = nodes_[i];
      if (!n.grad_ready || n.backward == nullptr) continue;
      OpContext<T> c(*this, n);
      n.backward(c);
      n.swept = !retain_graph;
    }
    swept_any_ = swept_any_ || !retain_graph;
  }

  std::vector<Node<T>> nodes_;
  size_t size_ = 0;
  uint64_t generation_ = 0;
  bool swept_any_ = false;  // a backward without retain_graph ran since clear()
};

// What a backward function sees: its node's output, its output gradient, its inputs, and the
// gradients of its inputs to add into.
template <class T>
class OpContext {
 public:
  OpContext(Tape<T>& tape, Node<T>& node) : tape_(tape), node_(node) {}

  Node<T>& node() { return node_; }
  const Tensor<T>& value() const { return node_.value; }
  const Tensor<T>& grad_out() const { return node_.grad; }
  const Tensor<T>& input(int k) const { return in(k).value; }
  Tensor<T>& saved(int k) { return node_.saved[static_cast<size_t>(k)]; }
  double scalar(int k) const { return node_.scalars[static_cast<size_t>(k)]; }
  bool needs_grad(int k) const { return in(k).requires_grad; }

  // Adds an Eigen array expression (with numel() elements of input k) to input k's gradient.
  // The first write of a sweep assigns, so buffers need no zeroing.
  template <class Expr>
  void add_grad(int k, const Expr& e) {
    Node<T>& n = in(k);
    if (!n.requires_grad) return;
    if (fresh(n))
      n.grad.array() = e;
    else
      n.grad.array() += e;
  }
  // Same for a matrix expression (e.g. a product) viewed as rows x cols of input k's gradient.
  template <class Expr>
  void add_grad_matrix(int k, int64_t rows, int64_t cols, const Expr& e) {
    Node<T>& n = in(k);
    if (!n.requires_grad) return;
    if (fresh(n))
      n.grad.matrix(rows, cols).noalias() = e;
    else
      n.grad.matrix(rows, cols).noalias() += e;
  }
  // Same for the product lhs · rhs, through detail::gemm (split among the threads when large).
  template <class Lhs, class Rhs>
  void add_grad_product(int k, int64_t rows, int64_t cols, const Lhs& lhs, const Rhs& rhs) {
    Node<T>& n = in(k);
    if (!n.requires_grad) return;
    const bool assign = fresh(n);
    detail::gemm(n.grad.matrix(rows, cols), lhs, rhs, !assign);
  }
  // Input k's gradient buffer, zeroed if this sweep has not written it yet; for ops that
  // scatter into it (max, slice, pooling).
  Tensor<T>& grad_in(int k) {
    Node<T>& n = in(k);
    if (fresh(n)) n.grad.zero_();
    return n.grad;
  }
  // Input k's gradient buffer without grad_in's zero fill, for a backward that writes every
  // element itself (one pass instead of zero fill + read-modify-write): `assign` comes back
  // true when this sweep has not written the buffer yet (then assign every element: it holds
  // stale values), false when the backward must add into it. Only for inputs that need_grad.
  Tensor<T>& grad_in_uninitialized(int k, bool& assign) {
    Node<T>& n = in(k);
    assign = fresh(n);
    return n.grad;
  }

 private:
  Node<T>& in(int k) const { return tape_.node(node_.inputs[static_cast<size_t>(k)]); }
  // True (and the buffer sized but not initialised) when n's gradient is not yet written.
  static bool fresh(Node<T>& n) {
    if (n.is_param) return n.param.take_pending_zero();
    if (n.grad_ready) return false;
    n.grad.resize(n.value.shape());
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
Tensor<T> Var<T>::grad() const {
  const Node<T>& n = node();
  if (n.is_param) return n.param.grad();  // fills in pending zeros
  if (!n.grad_ready) return Tensor<T>::zeros(n.value.shape());
  return n.grad;
}

}  // namespace tapegrad
