#pragma once
/// \file
/// Weight normalization (Salimans & Kingma 2016), as torch.nn.utils.weight_norm
/// (torch/nn/utils/weight_norm.py, aten/src/ATen/native/WeightNorm.cpp):
///
///   w = g · v / ‖v‖,   ‖v‖ = L2 norm over all dims except `dim` (norm_except_dim(v, 2, dim)),
///
/// one norm per output unit for the default dim = 0 (per row of a Dense weight [out, in], per
/// output channel of a Conv2D weight [O, C, kh, kw]); dim = -1 takes one norm over the whole
/// tensor. No epsilon (as PyTorch): a unit with v = 0 gives NaN. g has v's rank with every size
/// 1 but dim's ([out, 1] for a Dense weight [out, in]; a 0-d scalar for dim = -1).
/// Gradients, per unit r with s_r = Σ_j ∂L/∂w_rj · v_rj:
///   ∂L/∂g_r = s_r / ‖v_r‖,     ∂L/∂v_r = (g_r / ‖v_r‖) · (∂L/∂w_r − v_r · s_r / ‖v_r‖²)
///
/// weight_norm(g, v, dim) is that differentiable op. WeightNorm<T> wraps a Dense or Conv2D
/// layer: g ← ‖w‖ and v ← w at construction (so the function is unchanged), g and v are the
/// trained parameters ("weight_g", "weight_v", as PyTorch names them, and the layer's "bias"),
/// and every forward computes w on the tape then calls the layer's functional op (linear or
/// conv2d). Use the wrapper in place of the layer; remove_weight_norm bakes w back into the
/// layer's weight and returns the layer.
///
/// The Keras-style projection "renormalise each unit after the update" is the UnitNorm / MaxNorm
/// constraint of the optimizer instead (optim/constraint.hpp).

#include <cmath>
#include <memory>
#include <string>

#include "tapegrad/nn/conv2d.hpp"
#include "tapegrad/nn/dense.hpp"
#include "tapegrad/nn/module.hpp"
#include "tapegrad/ops/conv.hpp"
#include "tapegrad/ops/linalg.hpp"

namespace tapegrad::nn {

namespace detail {

// v viewed as [outer, units, inner]: unit j is the `outer` segments of length `inner` at
// (o·units + j)·inner.
struct UnitLayout {
  int64_t outer = 1, units = 1, inner = 1;
};

inline UnitLayout unit_layout(const char* who, const Shape& v, int dim) {
  UnitLayout l;
  if (dim == -1) {
    l.inner = v.numel();
    return l;
  }
  if (dim < 0 || dim >= v.rank())
    tapegrad::detail::fail<ShapeError>(who, ": dim ", dim, " out of range for a weight of shape ",
                                       v, " (use 0..", v.rank() - 1,
                                       ", or -1 for the whole tensor)");
  for (int d = 0; d < dim; ++d) l.outer *= v[d];
  l.units = v[dim];
  for (int d = dim + 1; d < v.rank(); ++d) l.inner *= v[d];
  return l;
}

// g's shape for v and dim: v's rank, size 1 except along dim; rank 0 for dim = -1.
inline Shape weight_norm_g_shape(const char* who, const Shape& v, int dim) {
  unit_layout(who, v, dim);  // validates dim
  Shape g;
  if (dim == -1) return g;
  for (int d = 0; d < v.rank(); ++d) g.push_back(d == dim ? v[d] : 1);
  return g;
}

// Σ over unit j of a·b, in double.
template <class T>
double unit_dot(const Tensor<T>& a, const Tensor<T>& b, const UnitLayout& l, int64_t j) {
  double s = 0;
  for (int64_t o = 0; o < l.outer; ++o) {
    const int64_t off = (o * l.units + j) * l.inner;
    s += (a.array().segment(off, l.inner).template cast<double>() *
          b.array().segment(off, l.inner).template cast<double>())
             .sum();
  }
  return s;
}

template <class T>
void weight_norm_backward(OpContext<T>& c) {
  const UnitLayout l{c.node().ints[0], c.node().ints[1], c.node().ints[2]};
  const Tensor<T>& g = c.input(0);
  const Tensor<T>& v = c.input(1);
  const Tensor<T>& gw = c.grad_out();
  const Tensor<T>& norms = c.saved(0);
  Tensor<T>* dg = c.needs_grad(0) ? &c.grad_in(0) : nullptr;
  Tensor<T>* dv = c.needs_grad(1) ? &c.grad_in(1) : nullptr;
  for (int64_t j = 0; j < l.units; ++j) {
    const double n = norms[j], s = unit_dot(gw, v, l, j);
    if (dg) (*dg)[j] += static_cast<T>(s / n);
    if (!dv) continue;
    const T a = static_cast<T>(double(g[j]) / n), b = static_cast<T>(s / (n * n));
    for (int64_t o = 0; o < l.outer; ++o) {
      const int64_t off = (o * l.units + j) * l.inner;
      dv->array().segment(off, l.inner) +=
          a * (gw.array().segment(off, l.inner) - b * v.array().segment(off, l.inner));
    }
  }
}

}  // namespace detail

/// PyTorch's norm_except_dim(v, 2, dim): the L2 norm of every unit, in g's shape.
template <class T>
Tensor<T> norm_except_dim(const Tensor<T>& v, int dim = 0) {
  const auto l = detail::unit_layout("norm_except_dim", v.shape(), dim);
  Tensor<T> out(detail::weight_norm_g_shape("norm_except_dim", v.shape(), dim));
  for (int64_t j = 0; j < l.units; ++j)
    out[j] = static_cast<T>(std::sqrt(detail::unit_dot(v, v, l, j)));
  return out;
}

/// w = g · v / ‖v‖ (norm over all dims except dim), differentiable in g and v.
template <class T>
Var<T> weight_norm(const Var<T>& g, const Var<T>& v, int dim = 0) {
  const Shape vs = v.shape();
  const Shape gs = detail::weight_norm_g_shape("weight_norm", vs, dim);
  if (!(g.shape() == gs))
    tapegrad::detail::fail<ShapeError>("weight_norm: g ", g.shape(), " and v ", vs, " with dim ",
                                       dim, ": expected g of shape ", gs);
  const auto l = detail::unit_layout("weight_norm", vs, dim);
  Var<T> w = v.tape().record("weight_norm", vs, {g, v}, &detail::weight_norm_backward<T>);
  Node<T>& node = w.node();
  node.ints.assign({l.outer, l.units, l.inner});
  Tensor<T>& norms = node.saved[0];
  norms.resize(Shape{l.units});
  const Tensor<T>& gv = g.value();
  const Tensor<T>& vv = v.value();
  for (int64_t j = 0; j < l.units; ++j) {
    const double n = std::sqrt(detail::unit_dot(vv, vv, l, j));
    norms[j] = static_cast<T>(n);
    const T f = static_cast<T>(double(gv[j]) / n);
    for (int64_t o = 0; o < l.outer; ++o) {
      const int64_t off = (o * l.units + j) * l.inner;
      w.value().array().segment(off, l.inner) = f * vv.array().segment(off, l.inner);
    }
  }
  return w;
}

/// Weight normalization of a Dense or Conv2D layer: w = g · v / ‖v‖, with g ("weight_g") and v
/// ("weight_v") trained in place of the layer's weight (see the file's description). The input and
/// output are the layer's.
template <class T>
class WeightNorm : public Module<T> {
 public:
  /// Wraps a Dense layer (null: ValueError); g ← ‖w‖ and v ← w, norms over all dims except dim (-1:
  /// over the whole tensor).
  explicit WeightNorm(std::shared_ptr<Dense<T>> layer, int dim = 0)
      : dense_(std::move(layer)), dim_(dim) {
    if (!dense_) tapegrad::detail::fail<ValueError>("WeightNorm: null layer");
    init(*dense_);
  }
  /// Wraps a Conv2D layer (null: ValueError); g ← ‖w‖ and v ← w, norms over all dims except dim
  /// (-1: over the whole tensor).
  explicit WeightNorm(std::shared_ptr<Conv2D<T>> layer, int dim = 0)
      : conv_(std::move(layer)), dim_(dim) {
    if (!conv_) tapegrad::detail::fail<ValueError>("WeightNorm: null layer");
    init(*conv_);
  }

  Parameter<T> weight_g;  ///< g: v's rank, size 1 except along dim
  Parameter<T> weight_v;  ///< v: the weight's shape
  Parameter<T> bias;      ///< shares its values with the layer's bias; undefined without one

  Var<T> forward(const Var<T>& x) override {
    Tape<T>& tape = x.tape();
    if (dense_ && (x.rank() < 1 || x.size(-1) != dense_->in_features()))
      tapegrad::detail::fail<ShapeError>(name(), ": input ", x.shape(), ": expected ",
                                         dense_->in_features(), " features");
    if (conv_ && (x.rank() != 4 || x.size(1) != conv_->in_channels()))
      tapegrad::detail::fail<ShapeError>(name(), ": input ", x.shape(), ": expected [N,",
                                         conv_->in_channels(), ",H,W]");
    const Var<T> w = weight_norm(tape.param(weight_g), tape.param(weight_v), dim_);
    const Var<T> b = bias.defined() ? tape.param(bias) : Var<T>();
    if (dense_) return bias.defined() ? linear(x, w, b) : linear(x, w);
    return conv2d(x, w, b, conv_->stride(), conv_->padding(), conv_->dilation());
  }

  std::string name() const override {
    return "WeightNorm(" + (dense_ ? dense_->name() : conv_->name()) + ")";
  }

  /// The dim the norms are not taken over (-1: one norm over the whole tensor).
  int dim() const { return dim_; }
  /// The weight g · v / ‖v‖ now, as a new tensor (no tape).
  Tensor<T> weight() const {
    Tape<T> tape;
    NoGradGuard no_grad;
    return weight_norm(tape.constant(weight_g.value()), tape.constant(weight_v.value()), dim_)
        .value()
        .clone();
  }
  ///@{
  /// The wrapped layer: one of these is set.
  const std::shared_ptr<Dense<T>>& dense() const { return dense_; }
  const std::shared_ptr<Conv2D<T>>& conv() const { return conv_; }
  std::shared_ptr<Module<T>> layer() const {
    if (dense_) return dense_;
    return conv_;
  }
  ///@}

 private:
  template <class L>
  void init(L& layer) {
    const Tensor<T>& w = layer.weight.value();
    weight_g = this->register_parameter("weight_g", norm_except_dim(w, dim_));
    weight_v = this->register_parameter("weight_v", w.clone());
    if (layer.bias.defined()) bias = this->register_parameter("bias", layer.bias.value());
  }

  std::shared_ptr<Dense<T>> dense_;
  std::shared_ptr<Conv2D<T>> conv_;
  int dim_;
};

/// torch.nn.utils.remove_weight_norm: writes w = g · v / ‖v‖ into the wrapped layer's weight
/// (in place) and returns the layer, whose bias already holds the trained values.
template <class T>
std::shared_ptr<Module<T>> remove_weight_norm(const WeightNorm<T>& wn) {
  const Tensor<T> w = wn.weight();
  if (wn.dense())
    wn.dense()->weight.value().copy_(w);
  else
    wn.conv()->weight.value().copy_(w);
  return wn.layer();
}

}  // namespace tapegrad::nn
