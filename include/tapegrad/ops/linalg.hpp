#pragma once
// Matrix products: matmul, transpose, and linear (the fused op behind nn::Dense).
//
//   matmul(a, b):     [M,K] x [K,N] -> [M,N]; [B,M,K] x [K,N] -> [B,M,N] (computed as [B*M,K]).
//                     da = g b^T, db = a^T g.
//   transpose(x):     [M,N] -> [N,M]; dx = g^T.
//   linear(x, w, b):  y = x w^T + b as torch.nn.functional.linear: x [*, in] (leading dims
//                     folded into rows), w [out, in], b [out] -> y [*, out].
//                     dx = g w, dw += g^T x, db += column sums of g.
//
// linear is one op, not matmul + transpose + add: one GEMM whose output starts from the bias
// (Eigen's GEMM zero-fills its destination before accumulating, so starting from b instead
// costs nothing), and in backward two GEMMs that write straight into the gradients (a
// parameter's gradient accumulates in place) plus one vectorised column sum.
// Every GEMM goes through detail::gemm (gemm.hpp): Eigen's, split by rows among the threads
// above a size threshold (tapegrad::set_num_threads).

#include <Eigen/Core>

#include "tapegrad/error.hpp"
#include "tapegrad/gemm.hpp"
#include "tapegrad/tape.hpp"

namespace tapegrad {

namespace detail {
// Rows of a tensor seen as a matrix whose columns are its last dim (1 for a 1-D tensor).
inline int64_t leading_rows(const Shape& s) {
  int64_t r = 1;
  for (int i = 0; i + 1 < s.rank(); ++i) r *= s[i];
  return r;
}
}  // namespace detail

template <class T>
Var<T> matmul(const Var<T>& a, const Var<T>& b) {
  const Shape sa = a.shape(), sb = b.shape();
  if ((sa.rank() != 2 && sa.rank() != 3) || sb.rank() != 2)
    detail::fail<ShapeError>("matmul: ", sa, " x ", sb, ": expected [M,K] or [B,M,K] times [K,N]");
  if (sa.dim(-1) != sb[0])
    detail::fail<ShapeError>("matmul: ", sa, " x ", sb, ": inner sizes differ (", sa.dim(-1),
                             " vs ", sb[0], ")");
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

// y = x w^T + b (torch.nn.functional.linear).
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

// y = x w^T (torch.nn.functional.linear without bias).
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
