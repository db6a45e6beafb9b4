#pragma once
/// \file
/// Elementwise ops: operators + - * / with broadcasting, unary -, and exp, log, sqrt, pow, abs,
/// clamp, square. Each forward is an Eigen array expression with its backward right beside it.
///
/// Operands: (Var, Var), (Var, Tensor) and (Tensor, Var) (the Tensor enters the tape as a
/// constant), and (Var, scalar) / (scalar, Var) (the scalar is kept in the node: no extra node).
/// Shapes broadcast as in PyTorch (see ops/broadcast.hpp); a broadcast operand's gradient is
/// summed over the dims it was broadcast along.
///
/// Derivatives (PyTorch tools/autograd/derivatives.yaml):
///   a + b: (g, g)       a - b: (g, -g)      a * b: (g b, g a)      a / b: (g / b, -g a / b^2)
///   exp: g exp(x)       log: g / x          sqrt: g / (2 sqrt(x))  square: 2 x g
///   pow(x, p): g p x^(p-1), and 0 when p == 0 (PyTorch masks it, so 0^-1 gives no NaN)
///   abs: g sign(x), with sign(0) = 0
///   clamp(x, lo, hi) = min(max(x, lo), hi): g where lo <= x <= hi (bounds included), else 0
///
/// These are free functions in namespace tapegrad found by argument-dependent lookup. Inside
/// namespace tapegrad, call the std:: versions of exp, log, sqrt, pow, abs explicitly.

#include <Eigen/Core>
#include <cmath>
#include <type_traits>

#include "tapegrad/ops/broadcast.hpp"
#include "tapegrad/tape.hpp"

namespace tapegrad {

namespace detail {

// A binary op: its value f(a, b) and the gradient terms of its operands, da and db, written
// for any mix of Eigen arrays and scalars (g: output gradient, y: output value).
struct AddOp {
  static constexpr const char* name = "add";
  static constexpr Reads reads = Reads::none;
  static auto f(const auto& a, const auto& b) { return a + b; }
  static auto da(const auto& g, const auto&, const auto&, const auto&) { return g; }
  static auto db(const auto& g, const auto&, const auto&, const auto&) { return g; }
};
struct SubOp {
  static constexpr const char* name = "sub";
  static constexpr Reads reads = Reads::none;
  static auto f(const auto& a, const auto& b) { return a - b; }
  static auto da(const auto& g, const auto&, const auto&, const auto&) { return g; }
  static auto db(const auto& g, const auto&, const auto&, const auto&) { return -g; }
};
struct MulOp {
  static constexpr const char* name = "mul";
  static constexpr Reads reads = Reads::inputs;
  static auto f(const auto& a, const auto& b) { return a * b; }
  static auto da(const auto& g, const auto&, const auto& b, const auto&) { return g * b; }
  static auto db(const auto& g, const auto& a, const auto&, const auto&) { return g * a; }
};
struct DivOp {
  static constexpr const char* name = "div";
  static constexpr Reads reads = Reads::all;
  static auto f(const auto& a, const auto& b) { return a / b; }
  static auto da(const auto& g, const auto&, const auto& b, const auto&) { return g / b; }
  // -g a / b^2 = -g y / b, with y = a / b already computed
  static auto db(const auto& g, const auto&, const auto& b, const auto& y) { return -(g * y) / b; }
};

template <class Op, class T>
void binary_backward(OpContext<T>& c) {
  const Tensor<T>& A = c.input(0);
  const Tensor<T>& B = c.input(1);
  const Tensor<T>& Y = c.value();
  const Tensor<T>& G = c.grad_out();
  if (A.shape() == B.shape()) {  // no broadcasting: one expression per operand, by slices
    // (the expressions hold maps by value: safe to return)
    c.add_grad_elementwise(0, [&](int64_t off, int64_t n) {
      return Op::da(elements(G, off, n), elements(A, off, n), elements(B, off, n),
                    elements(Y, off, n));
    });
    c.add_grad_elementwise(1, [&](int64_t off, int64_t n) {
      return Op::db(elements(G, off, n), elements(A, off, n), elements(B, off, n),
                    elements(Y, off, n));
    });
    return;
  }
  const BroadcastPlan p = make_plan(Y.shape(), A.shape(), B.shape());
  const int64_t n = p.row;
  // Zero the broadcast operands' buffers first (grad_in), then add row by row: a contiguous
  // operand gets the row's terms, a repeated one their sum.
  T* ga = c.needs_grad(0) ? c.grad_in(0).data() : nullptr;
  T* gb = c.needs_grad(1) ? c.grad_in(1).data() : nullptr;
  dispatch_rows(p, [&](auto a_row, auto b_row) {
    constexpr bool AR = decltype(a_row)::value, BR = decltype(b_row)::value;
    for_each_row(p, [&](int64_t o, int64_t oa, int64_t ob) {
      const auto g = row_operand<true>(G.data() + o, n);
      const auto y = row_operand<true>(Y.data() + o, n);
      const auto a = row_operand<AR>(A.data() + oa, n);
      const auto b = row_operand<BR>(B.data() + ob, n);
      if (ga) {
        if constexpr (AR)
          row_segment(ga + oa, n) += Op::da(g, a, b, y);
        else
          ga[oa] += Op::da(g, a, b, y).sum();
      }
      if (gb) {
        if constexpr (BR)
          row_segment(gb + ob, n) += Op::db(g, a, b, y);
        else
          gb[ob] += Op::db(g, a, b, y).sum();
      }
    });
  });
}

// With in_place (add_, sub_), the output may take over a's buffer (Tape::record_inplace) when
// it has a's shape.
template <class Op, class T>
Var<T> binary(const Var<T>& a, const Var<T>& b, bool in_place = false) {
  // Shapes are copied: recording may move the tape's nodes, and with them a.shape().
  const Shape sa = a.shape(), sb = b.shape();
  const bool same = sa == sb;
  const Shape out = same ? sa : broadcast_shape(Op::name, sa, sb);
  Var<T> y;
  bool on_a = false;
  if (in_place && out == sa)
    y = a.tape().record_inplace(Op::name, 0, {a, b}, &binary_backward<Op, T>, Op::reads, on_a);
  else
    y = a.tape().record(Op::name, out, {a, b}, &binary_backward<Op, T>, Op::reads);
  // Through the nodes: a's value may be y's buffer now (elementwise, so that is safe).
  const Tensor<T>& A = a.node().value;
  const Tensor<T>& B = b.node().value;
  Tensor<T>& Y = y.node().value;
  if (same) {  // elementwise, split among the threads when large
    for_each_slice(Y.numel(), [&](int64_t off, int64_t n) {
      elements(Y, off, n) = Op::f(elements(A, off, n), elements(B, off, n));
    });
    return y;
  }
  const BroadcastPlan p = make_plan(out, sa, sb);
  dispatch_rows(p, [&](auto a_row, auto b_row) {
    constexpr bool AR = decltype(a_row)::value, BR = decltype(b_row)::value;
    for_each_row(p, [&](int64_t o, int64_t oa, int64_t ob) {
      row_segment(Y.data() + o, p.row) =
          Op::f(row_operand<AR>(A.data() + oa, p.row), row_operand<BR>(B.data() + ob, p.row));
    });
  });
  return y;
}

// Ops with one tensor operand x and a scalar s kept in the node (scalars[0]).
template <class T>
Var<T> add_scalar(const Var<T>& x, T s) {  // x + s
  const Shape shape = x.shape();
  Var<T> y = x.tape().record(
      "add_scalar", shape, {x}, [](OpContext<T>& c) { c.add_grad(0, c.grad_out().array()); },
      Reads::none);
  y.value().array() = x.value().array() + s;
  return y;
}
template <class T>
Var<T> rsub_scalar(const Var<T>& x, T s) {  // s - x
  const Shape shape = x.shape();
  Var<T> y = x.tape().record(
      "rsub_scalar", shape, {x}, [](OpContext<T>& c) { c.add_grad(0, -c.grad_out().array()); },
      Reads::none);
  y.value().array() = s - x.value().array();
  return y;
}
template <class T>
Var<T> mul_scalar(const Var<T>& x, T s) {  // x * s
  const Shape shape = x.shape();
  Var<T> y = x.tape().record(
      "mul_scalar", shape, {x},
      [](OpContext<T>& c) { c.add_grad(0, c.grad_out().array() * static_cast<T>(c.scalar(0))); },
      Reads::none);
  y.node().scalars[0] = s;
  y.value().array() = x.value().array() * s;
  return y;
}
template <class T>
Var<T> div_scalar(const Var<T>& x, T s) {  // x / s
  const Shape shape = x.shape();
  Var<T> y = x.tape().record(
      "div_scalar", shape, {x},
      [](OpContext<T>& c) { c.add_grad(0, c.grad_out().array() / static_cast<T>(c.scalar(0))); },
      Reads::none);
  y.node().scalars[0] = s;
  y.value().array() = x.value().array() / s;
  return y;
}
template <class T>
Var<T> rdiv_scalar(const Var<T>& x, T s) {  // s / x; d/dx = -s / x^2 = -y / x
  const Shape shape = x.shape();
  Var<T> y = x.tape().record("rdiv_scalar", shape, {x}, [](OpContext<T>& c) {
    c.add_grad(0, -(c.grad_out().array() * c.value().array()) / c.input(0).array());
  });
  y.value().array() = s / x.value().array();
  return y;
}

}  // namespace detail

// ---- in place ----

/// a + b, written over a's buffer when that is safe (Tape::record_inplace: nothing has read a
/// and no backward needs it; a must not be read afterwards), else as a + b. The residual blocks
/// use it for their sums.
template <class T>
Var<T> add_(const Var<T>& a, const Var<T>& b) {
  return detail::binary<detail::AddOp>(a, b, true);
}

// ---- binary operators ----
/// S is the scalar type: std::type_identity_t keeps T deduced from the Var alone, so that
/// `x * 2` and `0.5f * x` work for Var<float> and Var<double>.
template <class T>
using ScalarOf = std::type_identity_t<T>;

///@{
/// a + b, elementwise with broadcasting (ShapeError if the shapes do not broadcast); a Tensor
/// operand enters as a constant, a scalar is added to every element.
template <class T>
Var<T> operator+(const Var<T>& a, const Var<T>& b) {
  return detail::binary<detail::AddOp>(a, b);
}
template <class T>
Var<T> operator+(const Var<T>& a, const Tensor<T>& b) {
  return a + a.tape().constant(b);
}
template <class T>
Var<T> operator+(const Tensor<T>& a, const Var<T>& b) {
  return b.tape().constant(a) + b;
}
template <class T>
Var<T> operator+(const Var<T>& a, ScalarOf<T> s) {
  return detail::add_scalar(a, s);
}
template <class T>
Var<T> operator+(ScalarOf<T> s, const Var<T>& a) {
  return detail::add_scalar(a, s);
}
///@}

///@{
/// a − b, elementwise with broadcasting (ShapeError if the shapes do not broadcast); a Tensor
/// operand enters as a constant.
template <class T>
Var<T> operator-(const Var<T>& a, const Var<T>& b) {
  return detail::binary<detail::SubOp>(a, b);
}
template <class T>
Var<T> operator-(const Var<T>& a, const Tensor<T>& b) {
  return a - a.tape().constant(b);
}
template <class T>
Var<T> operator-(const Tensor<T>& a, const Var<T>& b) {
  return b.tape().constant(a) - b;
}
template <class T>
Var<T> operator-(const Var<T>& a, ScalarOf<T> s) {
  return detail::add_scalar(a, -s);  // exact: negation does not round
}
template <class T>
Var<T> operator-(ScalarOf<T> s, const Var<T>& a) {
  return detail::rsub_scalar(a, s);
}
///@}

///@{
/// a · b, elementwise with broadcasting (ShapeError if the shapes do not broadcast); a Tensor
/// operand enters as a constant.
template <class T>
Var<T> operator*(const Var<T>& a, const Var<T>& b) {
  return detail::binary<detail::MulOp>(a, b);
}
template <class T>
Var<T> operator*(const Var<T>& a, const Tensor<T>& b) {
  return a * a.tape().constant(b);
}
template <class T>
Var<T> operator*(const Tensor<T>& a, const Var<T>& b) {
  return b.tape().constant(a) * b;
}
template <class T>
Var<T> operator*(const Var<T>& a, ScalarOf<T> s) {
  return detail::mul_scalar(a, s);
}
template <class T>
Var<T> operator*(ScalarOf<T> s, const Var<T>& a) {
  return detail::mul_scalar(a, s);
}
///@}

///@{
/// a / b, elementwise with broadcasting (ShapeError if the shapes do not broadcast); a Tensor
/// operand enters as a constant.
template <class T>
Var<T> operator/(const Var<T>& a, const Var<T>& b) {
  return detail::binary<detail::DivOp>(a, b);
}
template <class T>
Var<T> operator/(const Var<T>& a, const Tensor<T>& b) {
  return a / a.tape().constant(b);
}
template <class T>
Var<T> operator/(const Tensor<T>& a, const Var<T>& b) {
  return b.tape().constant(a) / b;
}
template <class T>
Var<T> operator/(const Var<T>& a, ScalarOf<T> s) {
  return detail::div_scalar(a, s);
}
template <class T>
Var<T> operator/(ScalarOf<T> s, const Var<T>& a) {
  return detail::rdiv_scalar(a, s);
}
///@}

// ---- unary functions ----

/// -x
template <class T>
Var<T> operator-(const Var<T>& x) {
  const Shape shape = x.shape();
  Var<T> y = x.tape().record(
      "neg", shape, {x}, [](OpContext<T>& c) { c.add_grad(0, -c.grad_out().array()); },
      Reads::none);
  y.value().array() = -x.value().array();
  return y;
}

/// e^x; d = g e^x = g y
template <class T>
Var<T> exp(const Var<T>& x) {
  const Shape shape = x.shape();
  Var<T> y = x.tape().record(
      "exp", shape, {x},
      [](OpContext<T>& c) { c.add_grad(0, c.grad_out().array() * c.value().array()); },
      Reads::output);
  y.value().array() = x.value().array().exp();
  return y;
}

/// natural logarithm; d = g / x
template <class T>
Var<T> log(const Var<T>& x) {
  const Shape shape = x.shape();
  Var<T> y = x.tape().record(
      "log", shape, {x},
      [](OpContext<T>& c) { c.add_grad(0, c.grad_out().array() / c.input(0).array()); },
      Reads::inputs);
  y.value().array() = x.value().array().log();
  return y;
}

/// square root; d = g / (2 y)
template <class T>
Var<T> sqrt(const Var<T>& x) {
  const Shape shape = x.shape();
  Var<T> y = x.tape().record(
      "sqrt", shape, {x},
      [](OpContext<T>& c) { c.add_grad(0, c.grad_out().array() / (T(2) * c.value().array())); },
      Reads::output);
  y.value().array() = x.value().array().sqrt();
  return y;
}

/// x^p for a fixed exponent p; d = g p x^(p-1), and 0 for p == 0 (torch.pow's backward)
template <class T>
Var<T> pow(const Var<T>& x, double p) {
  const Shape shape = x.shape();
  Var<T> y = x.tape().record(
      "pow", shape, {x},
      [](OpContext<T>& c) {
        const T p = static_cast<T>(c.scalar(0));
        if (p == T(0))
          c.add_grad(0, Eigen::Array<T, Eigen::Dynamic, 1>::Zero(c.grad_out().numel()));
        else if (p == T(2))
          c.add_grad(0, c.grad_out().array() * (T(2) * c.input(0).array()));
        else
          c.add_grad(0, c.grad_out().array() * (p * c.input(0).array().pow(p - T(1))));
      },
      Reads::inputs);
  y.node().scalars[0] = p;
  if (static_cast<T>(p) == T(2))
    y.value().array() = x.value().array().square();
  else
    y.value().array() = x.value().array().pow(static_cast<T>(p));
  return y;
}

/// |x|; d = g sign(x), sign(0) = 0
template <class T>
Var<T> abs(const Var<T>& x) {
  const Shape shape = x.shape();
  Var<T> y = x.tape().record(
      "abs", shape, {x},
      [](OpContext<T>& c) { c.add_grad(0, c.grad_out().array() * c.input(0).array().sign()); },
      Reads::inputs);
  y.value().array() = x.value().array().abs();
  return y;
}

/// x^2; d = 2 x g
template <class T>
Var<T> square(const Var<T>& x) {
  const Shape shape = x.shape();
  Var<T> y = x.tape().record(
      "square", shape, {x},
      [](OpContext<T>& c) { c.add_grad(0, c.grad_out().array() * (T(2) * c.input(0).array())); },
      Reads::inputs);
  y.value().array() = x.value().array().square();
  return y;
}

/// min(max(x, lo), hi), as torch.clamp: when lo > hi every element becomes hi; NaN stays NaN.
/// The gradient passes where lo <= x <= hi, the bounds included (torch's clamp_backward).
template <class T>
Var<T> clamp(const Var<T>& x, ScalarOf<T> lo, ScalarOf<T> hi) {
  const Shape shape = x.shape();
  Var<T> y = x.tape().record(
      "clamp", shape, {x},
      [](OpContext<T>& c) {
        const T lo = static_cast<T>(c.scalar(0)), hi = static_cast<T>(c.scalar(1));
        const auto x = c.input(0).array();
        c.add_grad(0, (x >= lo && x <= hi).select(c.grad_out().array(), T(0)));
      },
      Reads::inputs);
  y.node().scalars[0] = lo;
  y.node().scalars[1] = hi;
  y.value().array() = x.value().array().unaryExpr([lo, hi](T v) {
    const T m = v < lo ? lo : v;  // comparisons with NaN are false: NaN passes through
    return m > hi ? hi : m;
  });
  return y;
}

}  // namespace tapegrad
