#pragma once
/// \file
/// scaled_dot_product_attention(q, k, v, options): attention as ONE op, with the math of
/// torch.nn.functional.scaled_dot_product_attention (PyTorch 2.0's reference implementation):
///   q [..., L, E], k [..., S, E], v [..., S, Ev] (equal leading dims)  ->  out [..., L, Ev]
///   A   = scale * q k^T (+ attn_mask),  scale = 1/sqrt(E) unless given
///   P   = softmax(A) along S          (a row whose every key is masked gives zeros, not NaN)
///   P'  = dropout(P, dropout_p)       (inverted dropout; only when dropout_p > 0)
///   out = P' v
/// attn_mask broadcasts to [..., L, S]: a Tensor<bool> where TRUE MEANS "TAKE PART" (PyTorch's
/// SDPA convention; nn::MultiheadAttention's masks use the opposite one, true = masked out), or an
/// additive Tensor<T> (0 keeps a score, -inf removes it). is_causal lets query i see keys j <= i
/// (the top-left lower triangle, as PyTorch) without building a mask; both may be given.
///
/// Backward, per head, with dO the output gradient and M the dropout mask:
///   dV = P'^T dO,   dP = (dO V^T) * M / (1 - p),   dA = P * (dP - rowsum(dP * P)),
///   dQ = scale * dA K,   dK = scale * dA^T Q.            Masks take no gradient.
///
/// Memory: the op keeps per head one [L, S] block, P (the attention weights), and nothing else of
/// that size; backward works in one [L, S] scratch block per thread (two with dropout). Buffers
/// live on the tape node, so a training loop allocates nothing here after its first step.
/// Speed: per head, two GEMMs forward and four backward on strided views (no copy, no
/// transpose; causal: in blocks of query rows that skip most of the masked triangle), plus one
/// pass over the block for the softmax; the heads are shared among the
/// threads (detail::for_each_product). Dropout masks are not stored but drawn again in backward:
/// head i of a call draws from Generator(seed + i), the seed taken once per call from the given
/// Generator, so the masks are the same whatever the thread count and a call can be replayed.
///
/// nn::MultiheadAttention runs the same kernel (detail::attention) on its projections in place:
/// [T, N, 3E] with head h of q, k, v as column blocks, its output written into [T, N, E].

#include <Eigen/Core>
#include <array>
#include <cmath>
#include <cstdint>
#include <limits>
#include <optional>
#include <span>

#include "tapegrad/gemm.hpp"
#include "tapegrad/random.hpp"
#include "tapegrad/tape.hpp"
#include "tapegrad/threads.hpp"

namespace tapegrad {

/// An attention mask: none, boolean or additive (see the header comment for what true means).
template <class T>
class AttentionMask {
 public:
  AttentionMask() = default;
  /// A boolean mask (implicit, so a Tensor<bool> passes as a mask).
  AttentionMask(Tensor<bool> mask) : boolean_(std::move(mask)), kind_(Kind::boolean) {}  // NOLINT
  /// An additive mask (implicit, so a Tensor<T> passes as a mask).
  AttentionMask(Tensor<T> mask) : additive_(std::move(mask)), kind_(Kind::additive) {}  // NOLINT

  /// Whether a mask is set.
  bool defined() const { return kind_ != Kind::none; }
  /// Whether the mask is boolean (else additive).
  bool is_bool() const { return kind_ == Kind::boolean; }
  /// The mask's shape.
  const Shape& shape() const { return is_bool() ? boolean_.shape() : additive_.shape(); }
  /// The boolean mask (empty unless is_bool()).
  const Tensor<bool>& boolean() const { return boolean_; }
  /// The additive mask (empty unless an additive mask is set).
  const Tensor<T>& additive() const { return additive_; }

 private:
  enum class Kind { none, boolean, additive };
  Tensor<bool> boolean_;
  Tensor<T> additive_;
  Kind kind_ = Kind::none;
};

/// The optional arguments of scaled_dot_product_attention, under PyTorch's names.
template <class T>
struct AttentionOptions {
  /// A boolean (true = take part) or additive mask broadcasting to [..., L, S].
  AttentionMask<T> attn_mask{};
  /// Dropout probability on the attention weights (0: none).
  double dropout_p = 0.0;
  /// Let query i attend only to keys j <= i.
  bool is_causal = false;
  std::optional<double> scale{};   ///< default 1/sqrt(E)
  Generator* generator = nullptr;  ///< draws the dropout seeds; needed when dropout_p > 0
};

namespace detail {

// Where the heads of one operand lie in its tensor: head i starts at element
//   base + (i / inner) * outer_stride + (i % inner) * inner_stride
// (inner = heads per outer index: H for [N, H] heads), and its rows are row_stride apart.
struct HeadView {
  int64_t base = 0, outer_stride = 0, inner_stride = 0, row_stride = 0;
  int64_t at(int64_t i, int64_t inner) const {
    return base + (i / inner) * outer_stride + (i % inner) * inner_stride;
  }
};

struct AttentionGeometry {
  Shape lead;         // the dims the heads run over ([..] of q, or [N, H]); numel = heads
  int64_t inner = 1;  // see HeadView
  int64_t L = 0, S = 0, E = 0, Ev = 0;
  HeadView q, k, v, o;  // o: the output (and its gradient)
  double scale = 1;
  bool causal = false;
};

// A mask as the kernel reads it: element (head i, row r, key j) at
//   offset(i) + r * row_stride + j * col_stride
// with offset(i) from i's index over geometry.lead, and stride 0 along broadcast dims.
template <class T>
struct MaskRef {
  const T* additive = nullptr;
  const bool* boolean = nullptr;
  bool masked_when = true;  // the boolean value that removes a key
  std::array<int64_t, Shape::max_rank> lead_stride{};
  int64_t row_stride = 0, col_stride = 0;

  int64_t offset(int64_t i, const Shape& lead) const {
    int64_t off = 0;
    for (int d = lead.rank() - 1; d >= 0; --d) {
      off += (i % lead[d]) * lead_stride[static_cast<size_t>(d)];
      i /= lead[d];
    }
    return off;
  }
};

// The MaskRef of mask m read as a tensor of shape `view` (m's own shape, or a reshape such as
// MultiheadAttention's [N, 1, 1, S] for a key padding mask), broadcast to [lead..., L, S].
template <class T>
MaskRef<T> mask_ref(const char* op, const char* what, const AttentionMask<T>& m, const Shape& view,
                    const AttentionGeometry& g, bool masked_when) {
  MaskRef<T> r;
  const int lr = g.lead.rank(), full = lr + 2;
  bool fits = view.rank() <= full && view.numel() == m.shape().numel();
  std::array<int64_t, Shape::max_rank + 2> stride{};
  int64_t st = 1;
  for (int i = view.rank() - 1; fits && i >= 0; --i) {
    const int d = full - view.rank() + i;  // right-aligned
    const int64_t want = d < lr ? g.lead[d] : d == lr ? g.L : g.S;
    fits = view[i] == want || view[i] == 1;
    stride[static_cast<size_t>(d)] = view[i] == 1 ? 0 : st;
    st *= view[i];
  }
  if (!fits) {
    Shape scores = g.lead;
    scores.push_back(g.L);
    scores.push_back(g.S);
    fail<ShapeError>(op, ": ", what, " of shape ", m.shape(), " does not broadcast to the scores ",
                     scores);
  }
  for (int d = 0; d < lr; ++d)
    r.lead_stride[static_cast<size_t>(d)] = stride[static_cast<size_t>(d)];
  r.row_stride = stride[static_cast<size_t>(lr)];
  r.col_stride = stride[static_cast<size_t>(lr + 1)];
  if (m.is_bool())
    r.boolean = m.boolean().data();
  else
    r.additive = m.additive().data();
  r.masked_when = masked_when;
  return r;
}

template <class T>
using AttnMat = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
template <class T>
using Strided = Eigen::Map<AttnMat<T>, Eigen::Unaligned, Eigen::OuterStride<>>;
template <class T>
using ConstStrided = Eigen::Map<const AttnMat<T>, Eigen::Unaligned, Eigen::OuterStride<>>;
template <class T>
using RowSeg = Eigen::Map<Eigen::Array<T, Eigen::Dynamic, 1>>;
template <class T>
using ConstRowSeg = Eigen::Map<const Eigen::Array<T, Eigen::Dynamic, 1>>;

// Node layout: ints [lead rank, lead dims (6), inner, L, S, E, Ev, causal, dropout, seed,
// cover q, k, v, tiled, then base/outer/inner/row of q, k, v, o]; scalars [scale, dropout_p] (the
// scale is not among the ints: load_geometry leaves it 1).
constexpr size_t kAttnInts = 1 + Shape::max_rank + 13 + 16;

inline void store_geometry(std::vector<int64_t>& ints, const AttentionGeometry& g, bool dropout,
                           uint64_t seed, const std::array<bool, 4>& cover) {
  ints.assign(kAttnInts, 0);
  int64_t* p = ints.data();
  *p++ = g.lead.rank();
  for (int d = 0; d < Shape::max_rank; ++d) *p++ = d < g.lead.rank() ? g.lead[d] : 0;
  for (int64_t v : {g.inner, g.L, g.S, g.E, g.Ev, int64_t{g.causal}, int64_t{dropout},
                    static_cast<int64_t>(seed), int64_t{cover[0]}, int64_t{cover[1]},
                    int64_t{cover[2]}, int64_t{cover[3]}})
    *p++ = v;
  for (const HeadView* h : {&g.q, &g.k, &g.v, &g.o})
    for (int64_t v : {h->base, h->outer_stride, h->inner_stride, h->row_stride}) *p++ = v;
}

struct StoredGeometry {
  AttentionGeometry g;
  bool dropout = false;
  uint64_t seed = 0;
  std::array<bool, 4> cover{};  // q, k, v each covered alone; or q = k = v tiled by the three
};
inline StoredGeometry load_geometry(const std::vector<int64_t>& ints) {
  StoredGeometry s;
  const int64_t* p = ints.data();
  const int lr = static_cast<int>(*p++);
  s.g.lead = Shape(std::span<const int64_t>(p, static_cast<size_t>(lr)));
  p += Shape::max_rank;
  s.g.inner = *p++, s.g.L = *p++, s.g.S = *p++, s.g.E = *p++, s.g.Ev = *p++;
  s.g.causal = *p++ != 0;
  s.dropout = *p++ != 0;
  s.seed = static_cast<uint64_t>(*p++);
  for (bool& c : s.cover) c = *p++ != 0;
  for (HeadView* h : {&s.g.q, &s.g.k, &s.g.v, &s.g.o}) {
    h->base = *p++, h->outer_stride = *p++, h->inner_stride = *p++, h->row_stride = *p++;
  }
  return s;
}

// Scores of head i (scaled GEMM output in P) -> masked softmax, row by row, in place. Keys at or
// beyond `visible` (the causal cut) and masked keys get probability 0; so does every key of a row
// that sees none.
template <class T>
void masked_softmax_rows(T* P, int64_t i, const AttentionGeometry& g,
                         std::span<const MaskRef<T>> masks) {
  constexpr T minus_inf = -std::numeric_limits<T>::infinity();
  const T scale = static_cast<T>(g.scale);
  std::array<int64_t, 2> moff{};
  for (size_t m = 0; m < masks.size(); ++m) moff[m] = masks[m].offset(i, g.lead);
  for (int64_t r = 0; r < g.L; ++r) {
    T* row = P + r * g.S;
    const int64_t n = g.causal ? std::min(g.S, r + 1) : g.S;
    RowSeg<T> x(row, n);
    x *= scale;
    for (size_t m = 0; m < masks.size(); ++m) {
      const MaskRef<T>& mk = masks[m];
      const int64_t base = moff[m] + r * mk.row_stride;
      if (mk.additive) {
        if (mk.col_stride)
          x += ConstRowSeg<T>(mk.additive + base, n);
        else
          x += mk.additive[base];
      } else {
        for (int64_t j = 0; j < n; ++j)
          if (mk.boolean[base + j * mk.col_stride] == mk.masked_when) row[j] = minus_inf;
      }
    }
    const T mx = n > 0 ? x.maxCoeff() : minus_inf;
    if (mx == minus_inf) {  // sees no key
      RowSeg<T>(row, g.S).setZero();
      continue;
    }
    x = (x - mx).exp();
    x *= T(1) / x.sum();
    RowSeg<T>(row + n, g.S - n).setZero();
  }
}

// Dropout of head i: D = P * keep / (1 - p), keep drawn from Generator(seed + i) in row-major
// order over the whole [L, S] block. Backward recovers the mask from D: where D = 0 either the
// weight was dropped or P = 0, and where P = 0 the mask does not matter (dA = P * ...).
template <class T>
void attention_dropout(const T* P, T* D, int64_t count, double p, uint64_t seed) {
  Generator gen(seed);
  const T kept = static_cast<T>(1.0 / (1.0 - p));
  for (int64_t e = 0; e < count; ++e) D[e] = gen.uniform() < p ? T(0) : P[e] * kept;
}

// Causal attention is computed in blocks of this many query rows: block [r0, r0 + rows) sees
// keys [0, r0 + rows) only, so the products skip most of the masked upper triangle (5/8 of the
// work at 64 x 64 instead of all of it).
constexpr int64_t kCausalRows = 16;

// The row blocks of a head: f(r0, rows, cols) for rows [r0, r0 + rows) and the keys
// [0, cols) they may see; the last block first when `reverse` (backward: it sees every key
// any block sees, so it can assign where the others add).
template <class F>
void for_each_row_block(int64_t L, int64_t S, bool causal, bool reverse, F&& f) {
  const int64_t rb = causal ? kCausalRows : std::max<int64_t>(L, 1);
  const int64_t blocks = (L + rb - 1) / rb;
  for (int64_t k = 0; k < blocks; ++k) {
    const int64_t b = reverse ? blocks - 1 - k : k;
    const int64_t r0 = b * rb, rows = std::min(rb, L - r0);
    f(r0, rows, causal ? std::min(S, r0 + rows) : S);
  }
}

template <class T>
void attention_backward(OpContext<T>& c) {
  StoredGeometry s = load_geometry(c.node().ints);
  s.g.scale = c.scalar(0);
  const AttentionGeometry& g = s.g;
  const int64_t heads = g.lead.numel(), L = g.L, S = g.S, E = g.E, Ev = g.Ev, block = L * S;
  if (heads == 0 || L == 0 || S == 0) return;  // no gradient reaches any input (zeros)
  const double p = c.scalar(1);
  const T scale = static_cast<T>(g.scale);
  // Gradient buffers: an input covered whole by its view, and not shared with another input of
  // this op, is assigned when this sweep has not written it yet; otherwise added into.
  std::array<T*, 3> grad{};
  std::array<bool, 3> acc{};
  if (s.cover[3] && c.needs_grad(0)) {  // one input whose q, k, v column blocks tile it
    bool assign = false;
    T* b = c.grad_in_uninitialized(0, assign).data();
    grad = {b, b, b};
    acc = {!assign, !assign, !assign};
  }
  for (int k = 0; k < 3; ++k) {
    if (!c.needs_grad(k) || s.cover[3]) continue;
    if (s.cover[static_cast<size_t>(k)]) {
      bool assign = false;
      grad[static_cast<size_t>(k)] = c.grad_in_uninitialized(k, assign).data();
      acc[static_cast<size_t>(k)] = !assign;
    } else {
      grad[static_cast<size_t>(k)] = c.grad_in(k).data();  // zeroed once when shared
      acc[static_cast<size_t>(k)] = true;
    }
  }
  const int per_thread = s.dropout ? 2 : 1;
  Tensor<T>& scratch = c.saved(1);
  scratch.resize(Shape{get_num_threads() * per_thread * block});
  const T* Pall = c.saved(0).data();
  const T* qd = c.input(0).data();
  const T* kd = c.input(1).data();
  const T* vd = c.input(2).data();
  const T* go = c.grad_out().data();
  for_each_product(heads, block * (2 * E + 2 * Ev), [&](int64_t i, bool split) {
    T* dP = scratch.data() + thread_index() * per_thread * block;
    const T* P = Pall + i * block;
    const ConstStrided<T> Q(qd + g.q.at(i, g.inner), L, E, Eigen::OuterStride<>(g.q.row_stride));
    const ConstStrided<T> K(kd + g.k.at(i, g.inner), S, E, Eigen::OuterStride<>(g.k.row_stride));
    const ConstStrided<T> V(vd + g.v.at(i, g.inner), S, Ev, Eigen::OuterStride<>(g.v.row_stride));
    const ConstStrided<T> dO(go + g.o.at(i, g.inner), L, Ev, Eigen::OuterStride<>(g.o.row_stride));
    const T* D = nullptr;  // the dropped weights v was multiplied with (dropout only)
    if (s.dropout) {
      T* d = dP + block;
      attention_dropout(P, d, block, p, s.seed + static_cast<uint64_t>(i));
      D = d;
    }
    const T kept = static_cast<T>(1.0 / (1.0 - p));
    // dK and dV rows the last block does not reach (keys no query sees) get no gradient.
    bool first = true;
    for_each_row_block(L, S, g.causal, true, [&](int64_t r0, int64_t rows, int64_t cols) {
      const auto stride = Eigen::OuterStride<>(S);
      Strided<T> dPb(dP + r0 * S, rows, cols, stride);
      const auto dOb = dO.middleRows(r0, rows);
      gemm(split, dPb, dOb, V.topRows(cols).transpose(), false);  // dP' = dO V^T
      if (grad[2]) {                                              // dV = P'^T dO
        Strided<T> dV(grad[2] + g.v.at(i, g.inner), S, Ev, Eigen::OuterStride<>(g.v.row_stride));
        const ConstStrided<T> Pb(D ? D + r0 * S : P + r0 * S, rows, cols, stride);
        if (first && !acc[2] && cols < S) dV.bottomRows(S - cols).setZero();
        gemm(split, dV.topRows(cols), Pb.transpose(), dOb, acc[2] || !first);
      }
      for (int64_t r = r0; r < r0 + rows; ++r) {  // dA = scale * P * (dP - rowsum(dP * P))
        RowSeg<T> d(dP + r * S, cols);
        const ConstRowSeg<T> pr(P + r * S, cols);
        if (D) d *= (ConstRowSeg<T>(D + r * S, cols) != T(0)).template cast<T>() * kept;
        const T dot = (d * pr).sum();
        d = pr * (d - dot) * scale;
      }
      const ConstStrided<T> dA(dP + r0 * S, rows, cols, stride);
      if (grad[0]) {
        Strided<T> dQ(grad[0] + g.q.at(i, g.inner), L, E, Eigen::OuterStride<>(g.q.row_stride));
        gemm(split, dQ.middleRows(r0, rows), dA, K.topRows(cols), acc[0]);
      }
      if (grad[1]) {
        Strided<T> dK(grad[1] + g.k.at(i, g.inner), S, E, Eigen::OuterStride<>(g.k.row_stride));
        if (first && !acc[1] && cols < S) dK.bottomRows(S - cols).setZero();
        gemm(split, dK.topRows(cols), dA.transpose(), Q.middleRows(r0, rows), acc[1] || !first);
      }
      first = false;
    });
  });
}

// Records and computes the attention of q, k, v as laid out in g; out_shape holds every head's
// output at g.o. See the header comment.
template <class T>
Var<T> attention(const char* op, const Var<T>& q, const Var<T>& k, const Var<T>& v,
                 const Shape& out_shape, const AttentionGeometry& g,
                 std::span<const MaskRef<T>> masks, double dropout_p, Generator* gen) {
  if (!(dropout_p >= 0.0 && dropout_p < 1.0))
    fail<ValueError>(op, ": dropout probability has to be in [0, 1), but got ", dropout_p);
  const bool dropout = dropout_p > 0.0;
  if (dropout && gen == nullptr)
    fail<ValueError>(op, ": dropout_p = ", dropout_p, " needs a Generator for its masks");
  const int64_t heads = g.lead.numel(), L = g.L, S = g.S, E = g.E, Ev = g.Ev, block = L * S;
  // A view covers its input when it reads every element once and no other operand shares it.
  const std::array<int64_t, 3> per_input{L * E, S * E, S * Ev};
  const std::array<const Var<T>*, 3> in{&q, &k, &v};
  std::array<bool, 4> cover{};
  for (size_t a = 0; a < 3; ++a) {
    bool alone = true;
    for (size_t b = 0; b < 3; ++b) alone = alone && (a == b || in[a]->id() != in[b]->id());
    cover[a] = alone && in[a]->numel() == heads * per_input[a];
  }
  // MultiheadAttention's self-attention: one projection [T, N, 3E] whose column blocks are q, k
  // and v, so that their gradients together write every element once.
  cover[3] = q.id() == k.id() && k.id() == v.id() &&
             q.numel() == heads * (per_input[0] + per_input[1] + per_input[2]);
  const uint64_t seed = dropout ? gen->next_u64() : 0;
  // Backward reads q, k and v (and the saved weights P), not the output.
  Var<T> y = q.tape().record(op, out_shape, {q, k, v}, &attention_backward<T>, Reads::inputs);
  Node<T>& node = y.node();
  store_geometry(node.ints, g, dropout, seed, cover);
  node.scalars[0] = g.scale;
  node.scalars[1] = dropout_p;
  Tensor<T>& Pall = node.saved[0];  // every head's weights P
  Pall.resize(Shape{heads * block});
  if (dropout) node.saved[1].resize(Shape{get_num_threads() * block});
  T* od = y.value().data();
  if (S == 0) {  // no key: every query sees nothing
    y.value().zero_();
    return y;
  }
  const T* qd = q.value().data();
  const T* kd = k.value().data();
  const T* vd = v.value().data();
  T* scratch = node.saved[1].data();
  for_each_product(heads, block * (E + Ev), [&](int64_t i, bool split) {
    T* P = Pall.data() + i * block;
    const ConstStrided<T> Q(qd + g.q.at(i, g.inner), L, E, Eigen::OuterStride<>(g.q.row_stride));
    const ConstStrided<T> K(kd + g.k.at(i, g.inner), S, E, Eigen::OuterStride<>(g.k.row_stride));
    const ConstStrided<T> V(vd + g.v.at(i, g.inner), S, Ev, Eigen::OuterStride<>(g.v.row_stride));
    Strided<T> O(od + g.o.at(i, g.inner), L, Ev, Eigen::OuterStride<>(g.o.row_stride));
    for_each_row_block(L, S, g.causal, false, [&](int64_t r0, int64_t rows, int64_t cols) {
      Strided<T> Pb(P + r0 * S, rows, cols, Eigen::OuterStride<>(S));
      gemm(split, Pb, Q.middleRows(r0, rows), K.topRows(cols).transpose(), false);
    });
    masked_softmax_rows(P, i, g, masks);  // also zeroes the keys the blocks skipped
    const T* Pv = P;
    if (dropout) {
      T* D = scratch + thread_index() * block;
      attention_dropout(P, D, block, dropout_p, seed + static_cast<uint64_t>(i));
      Pv = D;
    }
    for_each_row_block(L, S, g.causal, false, [&](int64_t r0, int64_t rows, int64_t cols) {
      const ConstStrided<T> Pb(Pv + r0 * S, rows, cols, Eigen::OuterStride<>(S));
      gemm(split, O.middleRows(r0, rows), Pb, V.topRows(cols), false);
    });
  });
  return y;
}

// The attention weights P kept by an attention node, [heads, L, S] in head order.
template <class T>
Tensor<T> attention_weights(const Var<T>& out) {
  const StoredGeometry s = load_geometry(out.node().ints);
  return out.node().saved[0].reshape({s.g.lead.numel(), s.g.L, s.g.S});
}

}  // namespace detail

/// softmax(scale · q kᵀ + mask) v as one op: q [..., L, E], k [..., S, E], v [..., S, Ev] -> [...,
/// L, Ev] (equations and backward in the file's description). Mismatched shapes throw ShapeError;
/// dropout_p outside [0, 1) or without a generator, or a scale that is not finite, throws
/// ValueError.
template <class T>
Var<T> scaled_dot_product_attention(const Var<T>& q, const Var<T>& k, const Var<T>& v,
                                    const AttentionOptions<T>& options = {}) {
  constexpr const char* op = "scaled_dot_product_attention";
  const Shape sq = q.shape(), sk = k.shape(), sv = v.shape();
  const auto fail_shapes = [&](const char* why) {
    detail::fail<ShapeError>(op, ": query ", sq, ", key ", sk, ", value ", sv, ": ", why);
  };
  if (sq.rank() < 2 || sk.rank() != sq.rank() || sv.rank() != sq.rank())
    fail_shapes("expected [..., L, E], [..., S, E], [..., S, Ev] of one rank >= 2");
  const int r = sq.rank();
  for (int d = 0; d + 2 < r; ++d)
    if (sk[d] != sq[d] || sv[d] != sq[d]) fail_shapes("leading dims differ");
  if (sk[r - 1] != sq[r - 1]) fail_shapes("query and key embedding sizes differ");
  if (sv[r - 2] != sk[r - 2]) fail_shapes("key and value lengths differ");
  detail::AttentionGeometry g;
  g.lead = Shape(std::span<const int64_t>(sq.dims().data(), static_cast<size_t>(r - 2)));
  g.L = sq[r - 2], g.S = sk[r - 2], g.E = sq[r - 1], g.Ev = sv[r - 1];
  g.q = {0, g.L * g.E, 0, g.E};
  g.k = {0, g.S * g.E, 0, g.E};
  g.v = {0, g.S * g.Ev, 0, g.Ev};
  g.o = {0, g.L * g.Ev, 0, g.Ev};
  g.scale = options.scale.value_or(g.E > 0 ? 1.0 / std::sqrt(double(g.E)) : 1.0);
  if (!std::isfinite(g.scale))
    detail::fail<ValueError>(op, ": scale must be finite, got ", g.scale);
  g.causal = options.is_causal;
  Shape out = g.lead;
  out.push_back(g.L);
  out.push_back(g.Ev);
  std::array<detail::MaskRef<T>, 1> masks;
  size_t n_masks = 0;
  if (options.attn_mask.defined())
    masks[n_masks++] = detail::mask_ref(op, "attn_mask", options.attn_mask,
                                        options.attn_mask.shape(), g, /*masked_when=*/false);
  return detail::attention(op, q, k, v, out, g,
                           std::span<const detail::MaskRef<T>>(masks.data(), n_masks),
                           options.dropout_p, options.generator);
}

}  // namespace tapegrad
