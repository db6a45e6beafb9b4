#pragma once
/// \file
/// Fused recurrent cell steps: one tape node per time step computes the hidden GEMM, the gate
/// nonlinearities and the state update, with the backward written out right below. The layers
/// in nn/rnn_cell.hpp and nn/rnn.hpp are built on them.
///
/// Equations (torch.nn.RNNCell / LSTMCell / GRUCell documentation; SEMANTICS.md), with the input
/// projection xp = x W_ih^T + b_ih computed beforehand (for a whole sequence by ONE linear over
/// [T*N, input_size]: the per-step work is then only the hidden GEMM):
///
///   rnn_cell   h' = act(xp + h W_hh^T + b_hh),   act = tanh or relu
///   lstm_cell  [i f g o] = xp + h W_hh^T + b_hh    (gate order i, f, g, o: 4 blocks of H columns)
///              i = sigma(i), f = sigma(f), g = tanh(g), o = sigma(o)
///              c' = f * c + i * g
///              h' = o * tanh(c')                  (a second op, lstm_hidden)
///   gru_cell   [r z n] gate blocks (order r, z, n); xp_* and hp_* = h W_hh^T + b_hh split alike
///              r = sigma(xp_r + hp_r), z = sigma(xp_z + hp_z)
///              n = tanh(xp_n + r * hp_n)          (b_hn stays inside r * (W_hn h + b_hn))
///              h' = (1 - z) * n + z * h
///
/// Which rows of xp belong to the step: StepRows{first, stride, count} selects rows first,
/// first + stride, ... of xp seen as a matrix [rows, gates*H]. A sequence [T, N, F] projected to
/// [T, N, G*H] has step t at {t*N, 1, N}; a batch-first [N, T, F] one at {t, T, N}; a single
/// step (the cells) uses every row: {0, 1, -1}. Backward adds each step's gate gradient into
/// its own rows of xp's gradient, so one linear backward then serves the whole sequence.
///
/// h and c may be empty Vars (Var<T>()): a zero initial state, for which the hidden GEMM and its
/// gradients are skipped. b_hh may be empty (bias = false).
///
/// LSTM has two outputs. lstm_cell returns the step's record [N, 5H] = [i f g o | c'] (the
/// activated gates and the new cell state); lstm_hidden(record) computes h' = o * tanh(c') and
/// lstm_cell_state(record) copies c' out. The next step takes the record itself as its c (c is
/// read from the last H columns of a [N, 5H] operand), so the recurrence needs no copy. The
/// gradient reaching the record's gate columns flows back to the gate pre-activations.
///
/// Derivatives (sigma' = s(1 - s), tanh' = 1 - t^2, relu'(0) = 0), with D the pre-activation
/// gradient of the gates:
///   LSTM  dc = g_c'; D_i = (g_i + dc g) i(1-i); D_f = (g_f + dc c) f(1-f);
///         D_g = (g_g + dc i)(1 - g^2); D_o = g_o o(1-o); dc_prev = dc f
///   GRU   dn = g_h'(1-z); dz = g_h'(h - n); D_n = dn (1 - n^2); D_r = D_n hp_n r(1-r);
///         D_z = dz z(1-z); d hp = [D_r, D_z, D_n r]; dh_prev = g_h' z + d hp W_hh
///   all   d xp = D (GRU: [D_r, D_z, D_n]);  dh_prev += D W_hh;  dW_hh += D^T h;  db_hh += sum D
///
/// Every buffer is a node's value or saved tensor, reused step after step (no allocation in the
/// steady state). Forward of the LSTM and GRU keeps the pre-activations in saved(0)/(1), which
/// backward overwrites with D.

#include <Eigen/Core>
#include <array>
#include <cstdint>
#include <span>

#include "tapegrad/error.hpp"
#include "tapegrad/ops/activation.hpp"
#include "tapegrad/ops/linalg.hpp"
#include "tapegrad/ops/shape.hpp"
#include "tapegrad/tape.hpp"
#include "tapegrad/threads.hpp"

namespace tapegrad {

/// The nonlinearity of a vanilla RNN (torch.nn.RNN's `nonlinearity`).
enum class RNNNonlinearity { tanh, relu };

/// "tanh" or "relu".
inline const char* nonlinearity_name(RNNNonlinearity n) {
  return n == RNNNonlinearity::relu ? "relu" : "tanh";
}

/// The rows of one time step in an input projection (see the header comment).
struct StepRows {
  /// The first row.
  int64_t first = 0;
  /// The distance between consecutive rows.
  int64_t stride = 1;
  int64_t count = -1;  ///< -1: every row
};

namespace detail {

template <class T>
using RnnMat = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
template <class T>
using StridedMap = Eigen::Map<RnnMat<T>, Eigen::Unaligned, Eigen::OuterStride<>>;
template <class T>
using ConstStridedMap = Eigen::Map<const RnnMat<T>, Eigen::Unaligned, Eigen::OuterStride<>>;
template <class T>
using Seg = Eigen::Map<Eigen::Array<T, Eigen::Dynamic, 1>>;
template <class T>
using ConstSeg = Eigen::Map<const Eigen::Array<T, Eigen::Dynamic, 1>>;

// Node layout shared by the three cells. Inputs: 0 = xp, 1 = W_hh, then b_hh, h, c when
// present (in that order). ints: first, stride, N, flags, and the RNN nonlinearity.
enum CellFlag : int64_t { kCellBias = 1, kCellH = 2, kCellC = 4 };
struct CellLayout {
  int64_t first, stride, n, h, gates;
  int b = -1, hi = -1, ci = -1;  // input indices, -1 when absent
  int64_t c_cols = 0;            // columns of the c operand: H or 5H (an lstm_cell record)
};

template <class T>
CellLayout cell_layout(OpContext<T>& c, int64_t gates) {
  const auto& ints = c.node().ints;
  CellLayout l{ints[0], ints[1], ints[2], c.input(1).shape()[1], gates};
  int k = 2;
  if (ints[3] & kCellBias) l.b = k++;
  if (ints[3] & kCellH) l.hi = k++;
  if (ints[3] & kCellC) {
    l.ci = k++;
    l.c_cols = c.input(l.ci).shape().dim(-1);
  }
  return l;
}

// Checks a cell's operands (the message names the op and the shapes) and records the node.
template <class T>
Var<T> record_cell(const char* op, int64_t gates, int64_t out_cols, const Var<T>& xp, StepRows rows,
                   const Var<T>& h, const Var<T>* c, const Var<T>& w, const Var<T>& b,
                   BackwardFn<T> backward, int64_t extra_int) {
  const Shape ws = w.shape();
  if (ws.rank() != 2 || ws[1] < 1 || ws[0] != gates * ws[1])
    fail<ShapeError>(op, ": weight_hh ", ws, " must be [", gates, "*hidden_size, hidden_size]");
  const int64_t H = ws[1], GH = gates * H;
  const Shape xs = xp.shape();
  if (xs.rank() < 1 || xs.dim(-1) != GH)
    fail<ShapeError>(op, ": input projection ", xs, " but weight_hh ", ws, ": expected ", GH,
                     " columns (", gates, "*hidden_size)");
  const int64_t R = leading_rows(xs);
  const int64_t n = rows.count < 0 ? R : rows.count;
  if (rows.first < 0 || rows.stride < 1 || (n > 0 && rows.first + (n - 1) * rows.stride >= R))
    fail<ShapeError>(op, ": step rows {first ", rows.first, ", stride ", rows.stride, ", count ", n,
                     "} out of range for an input projection of ", R, " rows ", xs);
  auto check_state = [&](const char* what, const Var<T>& s, bool record_ok) {
    const Shape ss = s.shape();
    const bool cols_ok = ss.rank() >= 1 && (ss.dim(-1) == H || (record_ok && ss.dim(-1) == 5 * H));
    if (!cols_ok || leading_rows(ss) != n)
      fail<ShapeError>(op, ": ", what, " ", ss, " but weight_hh ", ws, " and ", n,
                       " rows per step: expected [", n, ",", H, "]",
                       record_ok ? " (or an lstm_cell record [N,5*hidden])" : "");
  };
  int64_t flags = 0;
  std::array<Var<T>, 5> in{xp, w};  // no heap allocation per step
  size_t count = 2;
  if (b.defined()) {
    const Shape bs = b.shape();
    if (bs.rank() != 1 || bs[0] != GH)
      fail<ShapeError>(op, ": bias_hh ", bs, " but weight_hh ", ws, ": expected [", GH, "]");
    flags |= kCellBias;
    in[count++] = b;
  }
  if (h.defined()) {
    check_state("h", h, false);
    flags |= kCellH;
    in[count++] = h;
  }
  if (c && c->defined()) {
    check_state("c", *c, true);
    flags |= kCellC;
    in[count++] = *c;
  }
  Var<T> y = xp.tape().record(op, Shape{n, out_cols * H}, std::span<const Var<T>>(in.data(), count),
                              backward);
  auto& ints = y.node().ints;
  ints.push_back(rows.first), ints.push_back(rows.stride), ints.push_back(n);
  ints.push_back(flags), ints.push_back(extra_int);
  return y;
}

// xp's rows of this step as a [N, G*H] matrix (strided when the sequence is batch-first).
template <class T>
ConstStridedMap<T> step_rows(const Tensor<T>& xp, const CellLayout& l) {
  const int64_t gh = l.gates * l.h;
  return ConstStridedMap<T>(xp.data() + l.first * gh, l.n, gh, Eigen::OuterStride<>(l.stride * gh));
}
template <class T>
StridedMap<T> step_rows(Tensor<T>& xp, const CellLayout& l) {
  const int64_t gh = l.gates * l.h;
  return StridedMap<T>(xp.data() + l.first * gh, l.n, gh, Eigen::OuterStride<>(l.stride * gh));
}

// pre = xp rows + b_hh + h W_hh^T (or, when `hidden_only`, b_hh + h W_hh^T: the GRU keeps the
// hidden projection apart because r multiplies its n block).
template <class T>
void cell_preactivation(OpContext<T>& c, const CellLayout& l, Tensor<T>& pre, bool hidden_only) {
  const int64_t gh = l.gates * l.h;
  pre.resize(Shape{l.n, gh});
  auto P = pre.matrix(l.n, gh);
  if (hidden_only)
    P.setZero();
  else
    P = step_rows(c.input(0), l);
  if (l.b >= 0) P.rowwise() += c.input(l.b).matrix(1, gh).row(0);
  if (l.hi >= 0)
    gemm(P, c.input(l.hi).matrix(l.n, l.h), c.input(1).matrix(gh, l.h).transpose(), true);
}

// Adds D (the gates' pre-activation gradient, [N, G*H]) to the gradients of W_hh, b_hh and h.
template <class T>
void cell_weight_grads(OpContext<T>& c, const CellLayout& l, const Tensor<T>& D) {
  const int64_t gh = l.gates * l.h;
  const auto Dm = D.matrix(l.n, gh);
  if (l.hi >= 0) {
    c.add_grad_product(1, gh, l.h, Dm.transpose(), c.input(l.hi).matrix(l.n, l.h));
    c.add_grad_product(l.hi, l.n, l.h, Dm, c.input(1).matrix(gh, l.h));
  }
  if (l.b >= 0) c.add_grad(l.b, Dm.colwise().sum().transpose().array());
}

template <class T>
auto sigmoid_of(const auto& x) {
  return T(1) / (T(1) + (-x).exp());
}

// Elementwise work per row goes parallel only when it is large; the GEMMs thread themselves.
inline bool cell_parallel(int64_t n, int64_t cols) {
  return n > 1 && n * cols > parallel_threshold;
}

// ---- the three cells' forward from the context of their own node ----

template <class T>
void rnn_forward(OpContext<T>& c) {
  const CellLayout l = cell_layout(c, 1);
  Tensor<T>& y = c.node().value;
  cell_preactivation(c, l, y, false);
  if (c.node().ints[4] == static_cast<int64_t>(RNNNonlinearity::relu))
    y.array() = y.array().max(T(0));
  else
    y.array() = y.array().tanh();
}

template <class T>
void lstm_forward(OpContext<T>& c) {
  const CellLayout l = cell_layout(c, 4);
  Tensor<T>& pre = c.saved(0);
  cell_preactivation(c, l, pre, false);
  const int64_t H = l.h;
  const T* cp = l.ci >= 0 ? c.input(l.ci).data() + (l.c_cols - H) : nullptr;
  const T* P = pre.data();
  T* Y = c.node().value.data();
  detail::parallel_for(l.n, cell_parallel(l.n, 4 * H), [&](int64_t r) {
    const T* p = P + r * 4 * H;
    T* y = Y + r * 5 * H;
    Seg<T>(y, 2 * H) = sigmoid_of<T>(ConstSeg<T>(p, 2 * H));          // i, f
    Seg<T>(y + 2 * H, H) = ConstSeg<T>(p + 2 * H, H).tanh();          // g
    Seg<T>(y + 3 * H, H) = sigmoid_of<T>(ConstSeg<T>(p + 3 * H, H));  // o
    Seg<T> cn(y + 4 * H, H);
    cn = ConstSeg<T>(y, H) * ConstSeg<T>(y + 2 * H, H);                       // i * g
    if (cp) cn += ConstSeg<T>(y + H, H) * ConstSeg<T>(cp + r * l.c_cols, H);  // + f * c
  });
}

template <class T>
void gru_forward(OpContext<T>& c) {
  const CellLayout l = cell_layout(c, 3);
  Tensor<T>& hp = c.saved(1);  // b_hh + h W_hh^T
  cell_preactivation(c, l, hp, true);
  Tensor<T>& act = c.saved(0);  // [r z n]
  act.resize(Shape{l.n, 3 * l.h});
  const int64_t H = l.h;
  const auto X = step_rows(c.input(0), l);
  const T* h = l.hi >= 0 ? c.input(l.hi).data() : nullptr;
  const T* P = hp.data();
  T* A = act.data();
  T* Y = c.node().value.data();
  detail::parallel_for(l.n, cell_parallel(l.n, 3 * H), [&](int64_t r) {
    const T* x = X.data() + r * X.outerStride();
    const T* p = P + r * 3 * H;
    T* a = A + r * 3 * H;
    Seg<T>(a, 2 * H) = sigmoid_of<T>(ConstSeg<T>(x, 2 * H) + ConstSeg<T>(p, 2 * H));  // r, z
    Seg<T>(a + 2 * H, H) =
        (ConstSeg<T>(x + 2 * H, H) + ConstSeg<T>(a, H) * ConstSeg<T>(p + 2 * H, H)).tanh();
    const ConstSeg<T> z(a + H, H), n(a + 2 * H, H);
    Seg<T> y(Y + r * H, H);
    if (h)
      y = n + z * (ConstSeg<T>(h + r * H, H) - n);
    else
      y = (T(1) - z) * n;
  });
}

}  // namespace detail

// ---------------------------------------------------------------- rnn_cell

/// h' = act(xp + h W_hh^T + b_hh) for the rows of one step: [N, H].
template <class T>
Var<T> rnn_cell(const Var<T>& xp, StepRows rows, const Var<T>& h, const Var<T>& w_hh,
                const Var<T>& b_hh, RNNNonlinearity nonlinearity = RNNNonlinearity::tanh) {
  Var<T> y = detail::record_cell<T>(
      "rnn_cell", 1, 1, xp, rows, h, nullptr, w_hh, b_hh,
      [](OpContext<T>& c) {
        const detail::CellLayout l = detail::cell_layout(c, 1);
        Tensor<T>& D = c.saved(0);
        D.resize(c.value().shape());
        const auto y = c.value().array();
        if (c.node().ints[4] == static_cast<int64_t>(RNNNonlinearity::relu))
          D.array() = c.grad_out().array() * detail::step_positive(y);
        else
          D.array() = c.grad_out().array() * (T(1) - y.square());
        if (c.needs_grad(0)) {
          Tensor<T>& gx = c.grad_in(0);
          detail::step_rows(gx, l) += D.matrix(l.n, l.h);
        }
        detail::cell_weight_grads(c, l, D);
      },
      static_cast<int64_t>(nonlinearity));
  OpContext<T> ctx(y.tape(), y.node());
  detail::rnn_forward(ctx);
  return y;
}

// ---------------------------------------------------------------- lstm_cell

/// One LSTM step: returns the record [N, 5H] = [i f g o | c'] (see the header comment). c may be
/// a cell state [N, H] or the previous step's record [N, 5H].
template <class T>
Var<T> lstm_cell(const Var<T>& xp, StepRows rows, const Var<T>& h, const Var<T>& c,
                 const Var<T>& w_hh, const Var<T>& b_hh) {
  Var<T> y = detail::record_cell<T>(
      "lstm_cell", 4, 5, xp, rows, h, &c, w_hh, b_hh,
      [](OpContext<T>& ctx) {
        const detail::CellLayout l = detail::cell_layout(ctx, 4);
        const int64_t H = l.h;
        Tensor<T>& D = ctx.saved(0);  // held the pre-activations; now their gradient
        D.resize(Shape{l.n, 4 * H});
        const T* Y = ctx.value().data();
        const T* G = ctx.grad_out().data();
        const bool c_grad = l.ci >= 0 && ctx.needs_grad(l.ci);
        const T* cp = l.ci >= 0 ? ctx.input(l.ci).data() + (l.c_cols - H) : nullptr;
        T* gc = c_grad ? ctx.grad_in(l.ci).data() + (l.c_cols - H) : nullptr;
        T* Dp = D.data();
        detail::parallel_for(l.n, detail::cell_parallel(l.n, 4 * H), [&](int64_t r) {
          using S = detail::ConstSeg<T>;
          const T* y = Y + r * 5 * H;
          const T* g = G + r * 5 * H;
          T* d = Dp + r * 4 * H;
          const S i(y, H), f(y + H, H), gg(y + 2 * H, H), o(y + 3 * H, H), dc(g + 4 * H, H);
          detail::Seg<T>(d, H) = (S(g, H) + dc * gg) * i * (T(1) - i);
          if (cp)
            detail::Seg<T>(d + H, H) =
                (S(g + H, H) + dc * S(cp + r * l.c_cols, H)) * f * (T(1) - f);
          else
            detail::Seg<T>(d + H, H) = S(g + H, H) * f * (T(1) - f);
          detail::Seg<T>(d + 2 * H, H) = (S(g + 2 * H, H) + dc * i) * (T(1) - gg.square());
          detail::Seg<T>(d + 3 * H, H) = S(g + 3 * H, H) * o * (T(1) - o);
          if (gc) detail::Seg<T>(gc + r * l.c_cols, H) += dc * f;
        });
        if (ctx.needs_grad(0)) {
          Tensor<T>& gx = ctx.grad_in(0);
          detail::step_rows(gx, l) += D.matrix(l.n, 4 * H);
        }
        detail::cell_weight_grads(ctx, l, D);
      },
      0);
  OpContext<T> ctx(y.tape(), y.node());
  detail::lstm_forward(ctx);
  return y;
}

/// h' = o * tanh(c') from an lstm_cell record [N, 5H]: [N, H].
template <class T>
Var<T> lstm_hidden(const Var<T>& record) {
  const Shape rs = record.shape();
  if (rs.rank() != 2 || rs[1] % 5 != 0 || rs[1] == 0)
    detail::fail<ShapeError>("lstm_hidden: ", rs, " is not an lstm_cell record [N,5*hidden]");
  const int64_t n = rs[0], H = rs[1] / 5;
  Var<T> y = record.tape().record("lstm_hidden", Shape{n, H}, {record}, [](OpContext<T>& c) {
    const int64_t n = c.value().shape()[0], H = c.value().shape()[1];
    const T* R = c.input(0).data();
    const T* TC = c.saved(0).data();
    const T* G = c.grad_out().data();
    T* GR = c.grad_in(0).data();
    detail::parallel_for(n, detail::cell_parallel(n, 2 * H), [&](int64_t r) {
      using S = detail::ConstSeg<T>;
      const S g(G + r * H, H), tc(TC + r * H, H), o(R + r * 5 * H + 3 * H, H);
      detail::Seg<T>(GR + r * 5 * H + 3 * H, H) += g * tc;
      detail::Seg<T>(GR + r * 5 * H + 4 * H, H) += g * o * (T(1) - tc.square());
    });
  });
  Tensor<T>& tc = y.node().saved[0];  // tanh(c'), for backward
  tc.resize(Shape{n, H});
  const auto R = record.value().matrix(n, 5 * H);
  tc.matrix(n, H) = R.rightCols(H).array().tanh().matrix();
  y.value().matrix(n, H) = (R.middleCols(3 * H, H).array() * tc.matrix(n, H).array()).matrix();
  return y;
}

/// c' copied out of an lstm_cell record [N, 5H]: [N, H].
template <class T>
Var<T> lstm_cell_state(const Var<T>& record) {
  const Shape rs = record.shape();
  if (rs.rank() != 2 || rs[1] % 5 != 0 || rs[1] == 0)
    detail::fail<ShapeError>("lstm_cell_state: ", rs, " is not an lstm_cell record [N,5*hidden]");
  return slice(record, 1, 4 * (rs[1] / 5), rs[1]);
}

// ---------------------------------------------------------------- gru_cell

/// One GRU step: h' [N, H].
template <class T>
Var<T> gru_cell(const Var<T>& xp, StepRows rows, const Var<T>& h, const Var<T>& w_hh,
                const Var<T>& b_hh) {
  Var<T> y = detail::record_cell<T>(
      "gru_cell", 3, 1, xp, rows, h, nullptr, w_hh, b_hh,
      [](OpContext<T>& c) {
        const detail::CellLayout l = detail::cell_layout(c, 3);
        const int64_t H = l.h;
        const T* A = c.saved(0).data();
        const T* P = c.saved(1).data();
        Tensor<T>& D = c.saved(2);  // gradient of the hidden projection b_hh + h W_hh^T
        D.resize(Shape{l.n, 3 * H});
        const T* G = c.grad_out().data();
        const T* h = l.hi >= 0 ? c.input(l.hi).data() : nullptr;
        T* gh = l.hi >= 0 && c.needs_grad(l.hi) ? c.grad_in(l.hi).data() : nullptr;
        T* gx = nullptr;
        int64_t gx_stride = 0;
        if (c.needs_grad(0)) {
          auto GX = detail::step_rows(c.grad_in(0), l);
          gx = GX.data();
          gx_stride = GX.outerStride();
        }
        T* Dp = D.data();
        detail::parallel_for(l.n, detail::cell_parallel(l.n, 3 * H), [&](int64_t r) {
          using S = detail::ConstSeg<T>;
          const T* a = A + r * 3 * H;
          const S rg(a, H), z(a + H, H), n(a + 2 * H, H), g(G + r * H, H);
          const S pn(P + r * 3 * H + 2 * H, H);
          T* d = Dp + r * 3 * H;
          detail::Seg<T> dn(d + 2 * H, H);  // first D_n, then D_n * r
          dn = g * (T(1) - z) * (T(1) - n.square());
          detail::Seg<T>(d, H) = dn * pn * rg * (T(1) - rg);
          if (h)
            detail::Seg<T>(d + H, H) = g * (S(h + r * H, H) - n) * z * (T(1) - z);
          else
            detail::Seg<T>(d + H, H) = -g * n * z * (T(1) - z);
          if (gx) {
            T* x = gx + r * gx_stride;
            detail::Seg<T>(x, 3 * H) += S(d, 3 * H);
          }
          dn *= rg;
          if (gh) detail::Seg<T>(gh + r * H, H) += g * z;
        });
        detail::cell_weight_grads(c, l, D);
      },
      0);
  OpContext<T> ctx(y.tape(), y.node());
  detail::gru_forward(ctx);
  return y;
}

}  // namespace tapegrad
