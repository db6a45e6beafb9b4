#pragma once
/// \file
/// Matrix products: matmul, transpose, and linear (the fused op behind nn::Dense).
///
///   matmul(a, b):     torch.matmul: [M,K] x [K,N] -> [M,N]; [..,M,K] x [K,N] folded into one
///                     GEMM; [..,M,K] x [..,K,N] with broadcast batch dims; 1-D operands.
///                     da = g b^T, db = a^T g.
///   transpose(x):     [M,N] -> [N,M]; dx = g^T.
///   linear(x, w, b):  y = x w^T + b as torch.nn.functional.linear: x [*, in] (leading dims
///                     folded into rows), w [out, in], b [out] -> y [*, out].
///                     dx = g w, dw += g^T x, db += column sums of g.
///
/// linear is one op, not matmul + transpose + add: one GEMM that adds into the output filled with
/// the bias (one load and add per result, against a separate pass over the output), and in
/// backward two GEMMs that write straight into the gradients (a parameter's gradient
/// accumulates in place) plus one vectorised column sum.
/// Every GEMM goes through detail::gemm (gemm.hpp): tapegrad's packed kernel or Eigen's, cut
/// among the threads (by rows or by columns) above a size threshold (tapegrad::set_num_threads).

#include <Eigen/Core>
#include <algorithm>
#include <array>
#include <span>
#include <vector>

#include "tapegrad/error.hpp"
#include "tapegrad/gemm.hpp"
#include "tapegrad/ops/shape.hpp"
#include "tapegrad/tape.hpp"

namespace tapegrad {

namespace detail {
// Rows of a tensor seen as a matrix whose columns are its last dim (1 for a 1-D tensor).
inline int64_t leading_rows(const Shape& s) {
  int64_t r = 1;
  for (int i = 0; i + 1 < s.rank(); ++i) r *= s[i];
  return r;
}

// Batched matmul: the batch dims (all but the last two) of a [.., M, K] and b [.., K, N]
// broadcast as in torch.matmul. Returns the output shape; with `ints` (the node's), fills in for
// every output batch o the element offset of its a block at ints[o] and of its b block at
// ints[B + o], then B, M, K, N and whether a, b are shared (a block serves several batches).
inline Shape matmul_batched(const Shape& sa, const Shape& sb, std::vector<int64_t>* ints) {
  const int ra = sa.rank() - 2, rb = sb.rank() - 2, ro = ra > rb ? ra : rb;
  const int64_t M = sa[ra], K = sa[ra + 1], N = sb[rb + 1];
  std::array<int64_t, Shape::max_rank> bo{}, st_a{}, st_b{};
  int64_t stride_a = M * K, stride_b = K * N, batches = 1;
  for (int i = ro - 1; i >= 0; --i) {  // right-aligned batch dims
    const int ia = i - (ro - ra), ib = i - (ro - rb);
    const int64_t da = ia >= 0 ? sa[ia] : 1, db = ib >= 0 ? sb[ib] : 1;
    if (da != db && da != 1 && db != 1)
      fail<ShapeError>("matmul: ", sa, " x ", sb, ": batch dims cannot be broadcast (", da, " vs ",
                       db, ")");
    const auto u = static_cast<size_t>(i);
    bo[u] = da == 1 ? db : da;
    st_a[u] = da == 1 ? 0 : stride_a;
    st_b[u] = db == 1 ? 0 : stride_b;
    stride_a *= da;
    stride_b *= db;
    batches *= bo[u];
  }
  Shape out(std::span<const int64_t>(bo.data(), static_cast<size_t>(ro)));
  out.push_back(M);
  out.push_back(N);
  if (!ints) return out;
  ints->resize(static_cast<size_t>(2 * batches + 6));
  int64_t* off = ints->data();
  std::array<int64_t, Shape::max_rank> idx{};
  int64_t oa = 0, ob = 0;
  for (int64_t o = 0; o < batches; ++o) {
    off[o] = oa;
    off[batches + o] = ob;
    for (int d = ro - 1; d >= 0; --d) {  // odometer over the output batch dims
      const auto u = static_cast<size_t>(d);
      oa += st_a[u], ob += st_b[u];
      if (++idx[u] < bo[u]) break;
      oa -= st_a[u] * bo[u], ob -= st_b[u] * bo[u];
      idx[u] = 0;
    }
  }
  int64_t ba = 1, bb = 1;
  for (int i = 0; i < ra; ++i) ba *= sa[i];
  for (int i = 0; i < rb; ++i) bb *= sb[i];
  int64_t* tail = off + 2 * batches;
  tail[0] = batches, tail[1] = M, tail[2] = K, tail[3] = N;
  tail[4] = ba != batches, tail[5] = bb != batches;
  return out;
}

template <class T>
using MatMap = Eigen::Map<Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>>;
template <class T>
using ConstMatMap =
    Eigen::Map<const Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>>;

template <class T>
void matmul_batched_backward(OpContext<T>& c) {
  const auto& ints = c.node().ints;
  const auto B = static_cast<int64_t>(ints.size() - 6) / 2;
  const int64_t* t = ints.data() + 2 * B;
  const int64_t M = t[1], K = t[2], N = t[3];
  const bool a_shared = t[4] != 0, b_shared = t[5] != 0;
  const T* A = c.input(0).data();
  const T* Bm = c.input(1).data();
  const T* G = c.grad_out().data();
  // A block that serves several output batches accumulates their gradients one after another.
  auto run = [&](int k, bool shared, auto&& product) {
    if (!c.needs_grad(k)) return;
    bool assign = false;
    Tensor<T>& g = c.grad_in_uninitialized(k, assign);
    if (shared && assign) g.zero_();
    const bool acc = shared || !assign;
    if (shared)
      for (int64_t o = 0; o < B; ++o) product(g.data(), o, true, acc);
    else
      for_each_product(B, M * N * K,
                       [&](int64_t o, bool split) { product(g.data(), o, split, acc); });
  };
  run(0, a_shared, [&](T* ga, int64_t o, bool split, bool acc) {  // dA = G B^T
    const int64_t oa = ints[static_cast<size_t>(o)], ob = ints[static_cast<size_t>(B + o)];
    gemm(split, MatMap<T>(ga + oa, M, K), ConstMatMap<T>(G + o * M * N, M, N),
         ConstMatMap<T>(Bm + ob, K, N).transpose(), acc);
  });
  run(1, b_shared, [&](T* gb, int64_t o, bool split, bool acc) {  // dB = A^T G
    const int64_t oa = ints[static_cast<size_t>(o)], ob = ints[static_cast<size_t>(B + o)];
    gemm(split, MatMap<T>(gb + ob, K, N), ConstMatMap<T>(A + oa, M, K).transpose(),
         ConstMatMap<T>(G + o * M * N, M, N), acc);
  });
}

}  // namespace detail

/// matmul(a, b), as torch.matmul:
///   [M,K] x [K,N] -> [M,N]; [.., M, K] x [K, N] -> [.., M, N] computed as one [rows, K] GEMM;
///   [.., M, K] x [.., K, N] -> [.., M, N] with the batch dims broadcast (a [3,1,M,K] times a
///   [4,K,N] gives [3,4,M,N]), one GEMM per batch, shared among the threads when there are many;
///   a 1-D a is a row [1, K] and a 1-D b a column [K, 1], whose dim is dropped from the result
///   (1-D x 1-D is the dot product, shape []).
/// da = g b^T, db = a^T g per batch, summed over the batches a broadcast operand served.
template <class T>
Var<T> matmul(const Var<T>& a, const Var<T>& b) {
  const Shape sa = a.shape(), sb = b.shape();
  if (sa.rank() == 0 || sb.rank() == 0)
    detail::fail<ShapeError>("matmul: ", sa, " x ", sb, ": both operands need at least one dim");
  if (sa.dim(-1) != sb[sb.rank() == 1 ? 0 : sb.rank() - 2])
    detail::fail<ShapeError>("matmul: ", sa, " x ", sb, ": inner sizes differ (", sa.dim(-1),
                             " vs ", sb[sb.rank() == 1 ? 0 : sb.rank() - 2], ")");
  if (sa.rank() == 1 || sb.rank() == 1) {  // as matrices, then drop the added dim
    const Var<T> a2 = sa.rank() == 1 ? reshape(a, {1, sa[0]}) : a;
    const Var<T> b2 = sb.rank() == 1 ? reshape(b, {sb[0], 1}) : b;
    const Var<T> y = matmul(a2, b2);
    std::vector<int64_t> dims(y.shape().dims().begin(), y.shape().dims().end());
    if (sb.rank() == 1) dims.pop_back();
    if (sa.rank() == 1) dims.erase(dims.end() - (sb.rank() == 1 ? 1 : 2));
    return reshape(y, dims);
  }
  if (sb.rank() == 2) {  // leading dims of a fold into the rows of one GEMM
    Shape out = sa;
    out[out.rank() - 1] = sb[1];
    Var<T> y = a.tape().record(
        "matmul", out, {a, b},
        [](OpContext<T>& c) {
          const Tensor<T>& A = c.input(0);
          const Tensor<T>& B = c.input(1);
          const int64_t m = detail::leading_rows(A.shape()), k = B.shape()[0], n = B.shape()[1];
          const auto G = c.grad_out().matrix(m, n);
          c.add_grad_product(0, m, k, G, B.matrix(k, n).transpose());
          c.add_grad_product(1, k, n, A.matrix(m, k).transpose(), G);
        },
        Reads::inputs);
    const int64_t m = detail::leading_rows(sa), k = sb[0], n = sb[1];
    detail::gemm(y.value().matrix(m, n), a.value().matrix(m, k), b.value().matrix(k, n), false);
    return y;
  }
  const Shape out = detail::matmul_batched(sa, sb, nullptr);
  Var<T> y =
      a.tape().record("matmul", out, {a, b}, &detail::matmul_batched_backward<T>, Reads::inputs);
  const auto& in = y.node().ints;
  detail::matmul_batched(sa, sb, &y.node().ints);
  const auto B = static_cast<int64_t>(in.size() - 6) / 2;
  const int64_t M = in[2 * B + 1], K = in[2 * B + 2], N = in[2 * B + 3];
  const T* A = a.value().data();
  const T* Bm = b.value().data();
  T* Y = y.value().data();
  detail::for_each_product(B, M * N * K, [&](int64_t o, bool split) {
    detail::gemm(split, detail::MatMap<T>(Y + o * M * N, M, N),
                 detail::ConstMatMap<T>(A + in[static_cast<size_t>(o)], M, K),
                 detail::ConstMatMap<T>(Bm + in[static_cast<size_t>(B + o)], K, N), false);
  });
  return y;
}

/// The transpose of a 2-D x, [m, n] -> [n, m] (x.t()); ShapeError for other ranks.
template <class T>
Var<T> transpose(const Var<T>& x) {
  const Shape s = x.shape();
  if (s.rank() != 2)
    detail::fail<ShapeError>("transpose: ", s, " is not 2-D (", s.rank(), " dims)");
  Var<T> y = x.tape().record(
      "transpose", Shape{s[1], s[0]}, {x},
      [](OpContext<T>& c) {
        const Shape& ys = c.value().shape();
        c.add_grad_matrix(0, ys[1], ys[0], c.grad_out().matrix(ys[0], ys[1]).transpose());
      },
      Reads::none);
  y.value().matrix(s[1], s[0]) = x.value().matrix(s[0], s[1]).transpose();
  return y;
}

namespace detail {
// Checks linear's operands and returns the output shape (x's shape with the last dim = out).
inline Shape linear_shape(const Shape& x, const Shape& w, const Shape* b) {
  if (w.rank() != 2)
    fail<ShapeError>("linear: weight ", w, " must be 2-D [out_features,in_features]");
  if (x.rank() < 1) fail<ShapeError>("linear: input ", x, " must have at least one dim");
  if (x.dim(-1) != w[1])
    fail<ShapeError>("linear: input ", x, " but weight ", w, ": in_features differ (", x.dim(-1),
                     " vs ", w[1], ")");
  if (b && !(b->rank() == 1 && (*b)[0] == w[0]))
    fail<ShapeError>("linear: bias ", *b, " but weight ", w, ": expected bias [", w[0], "]");
  Shape out = x;
  out[out.rank() - 1] = w[0];
  return out;
}

// Backward of y = x w^T (+ b); the bias, when present, is input 2.
template <class T>
void linear_backward(OpContext<T>& c) {
  const Tensor<T>& X = c.input(0);
  const Tensor<T>& W = c.input(1);
  const int64_t rows = leading_rows(X.shape()), in = W.shape()[1], out = W.shape()[0];
  const auto G = c.grad_out().matrix(rows, out);
  c.add_grad_product(0, rows, in, G, W.matrix(out, in));
  c.add_grad_product(1, out, in, G.transpose(), X.matrix(rows, in));
  if (c.node().inputs.size() > 2) c.add_grad(2, G.colwise().sum().transpose().array());
}
}  // namespace detail

/// y = x w^T + b (torch.nn.functional.linear).
template <class T>
Var<T> linear(const Var<T>& x, const Var<T>& w, const Var<T>& b) {
  const Shape sx = x.shape(), sw = w.shape(), sb = b.shape();
  const Shape out = detail::linear_shape(sx, sw, &sb);
  Var<T> y = x.tape().record("linear", out, {x, w, b}, &detail::linear_backward<T>, Reads::inputs);
  const int64_t rows = detail::leading_rows(sx), in = sw[1], nout = sw[0];
  auto Y = y.value().matrix(rows, nout);
  Y.rowwise() = b.value().matrix(1, nout).row(0);
  detail::gemm(Y, x.value().matrix(rows, in), w.value().matrix(nout, in).transpose(), true);
  return y;
}

/// y = x w^T (torch.nn.functional.linear without bias).
template <class T>
Var<T> linear(const Var<T>& x, const Var<T>& w) {
  const Shape sx = x.shape(), sw = w.shape();
  const Shape out = detail::linear_shape(sx, sw, nullptr);
  Var<T> y = x.tape().record("linear", out, {x, w}, &detail::linear_backward<T>, Reads::inputs);
  const int64_t rows = detail::leading_rows(sx), in = sw[1], nout = sw[0];
  detail::gemm(y.value().matrix(rows, nout), x.value().matrix(rows, in),
               w.value().matrix(nout, in).transpose(), false);
  return y;
}

}  // namespace tapegrad
