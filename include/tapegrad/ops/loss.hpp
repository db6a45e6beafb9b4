#pragma once
/// \file
/// Loss functions, as torch.nn.functional with reduction='mean'; each returns a scalar Var
/// (shape []).
///
///   mse_loss(pred, target)          mean_i (pred_i - target_i)^2
///   cross_entropy(logits, labels)   mean_n [ logsumexp_c(logits_nc) - logits_n,label_n ]
///   nll_loss(log_probs, labels)     mean_n [ -log_probs_n,label_n ]
///   binary_cross_entropy_with_logits(x, t)
///                                   mean_i [ max(x_i, 0) - x_i t_i + log(1 + exp(-|x_i|)) ]
///
/// cross_entropy is one fused op (log-softmax and NLL together): its backward is
/// (softmax(logits) - onehot(labels)) / N, with the softmax kept from the forward pass.
/// Labels are class indices in [0, C); they are copied into the node's `ints` (whose capacity
/// the tape keeps), so a training step allocates nothing for them.

#include <cmath>
#include <cstdint>
#include <vector>

#include "tapegrad/ops/activation.hpp"
#include "tapegrad/tape.hpp"

namespace tapegrad {

namespace detail {

template <class T>
void check_same_shape(const char* op, const Var<T>& a, const Var<T>& b, const char* what) {
  if (!(a.shape() == b.shape()))
    fail<ShapeError>(op, ": input ", a.shape(), " and ", what, " ", b.shape(),
                     " must have the same shape");
  if (a.numel() == 0) fail<ShapeError>(op, ": empty input ", a.shape());
}

// Checks logits/log-probabilities [N, C] against N labels in [0, C) and stores them in ints.
template <class T>
void check_class_labels(const char* op, const Var<T>& x, const std::vector<int64_t>& labels) {
  if (x.rank() != 2) fail<ShapeError>(op, ": expected input of shape [N, C], got ", x.shape());
  const int64_t n = x.size(0), classes = x.size(1);
  if (static_cast<int64_t>(labels.size()) != n)
    fail<ShapeError>(op, ": input ", x.shape(), " has ", n, " rows but ", labels.size(),
                     " labels were given");
  if (n == 0 || classes == 0) fail<ShapeError>(op, ": empty input ", x.shape());
  for (size_t i = 0; i < labels.size(); ++i)
    if (labels[i] < 0 || labels[i] >= classes)
      fail<ValueError>(op, ": label ", labels[i], " at index ", i, " is out of range [0, ", classes,
                       ") for input ", x.shape(), " (C = ", classes, ")");
}

}  // namespace detail

/// mse_loss(pred, target) = mean((pred - target)^2) (torch.nn.MSELoss, reduction='mean');
/// d/dpred = 2 (pred - target) / n, d/dtarget = -d/dpred.
template <class T>
Var<T> mse_loss(const Var<T>& pred, const Var<T>& target) {
  detail::check_same_shape("mse_loss", pred, target, "target");
  Var<T> y = pred.tape().record("mse_loss", Shape{}, {pred, target}, [](OpContext<T>& c) {
    const T scale = T(2) * c.grad_out()[0] / T(c.input(0).numel());
    const auto d = c.input(0).array() - c.input(1).array();
    c.add_grad(0, scale * d);
    c.add_grad(1, -scale * d);
  });
  const auto p = pred.value().array();
  const auto t = target.value().array();
  y.value()[0] = (p - t).square().sum() / T(p.size());
  return y;
}
/// target as a plain tensor (no gradient), entered as a tape constant (no copy).
template <class T>
Var<T> mse_loss(const Var<T>& pred, const Tensor<T>& target) {
  return mse_loss(pred, pred.tape().constant(target));
}

/// cross_entropy(logits [N, C], labels) = mean_n [ m_n + log sum_c exp(x_nc - m_n) - x_n,y_n ],
/// m_n = max_c x_nc (torch.nn.CrossEntropyLoss with class indices, reduction='mean');
/// d/dlogits = (softmax(x) - onehot(y)) / N.
template <class T>
Var<T> cross_entropy(const Var<T>& logits, const std::vector<int64_t>& labels) {
  detail::check_class_labels("cross_entropy", logits, labels);
  Var<T> y = logits.tape().record(
      "cross_entropy", Shape{}, {logits},
      [](OpContext<T>& c) {
        if (!c.needs_grad(0)) return;
        const Tensor<T>& p = c.saved(0);  // softmax(logits), from the forward pass
        const int64_t n = p.size(0), classes = p.size(1);
        const T scale = c.grad_out()[0] / T(n);
        c.add_grad(0, scale * p.array());
        Tensor<T>& gx = c.grad_in(0);  // already written above: no zeroing
        const auto& labels = c.node().ints;
        for (int64_t i = 0; i < n; ++i) gx[i * classes + labels[static_cast<size_t>(i)]] -= scale;
      },
      Reads::none);  // the softmax it needs is saved
  Node<T>& node = y.node();
  node.ints.assign(labels.begin(), labels.end());
  const int64_t n = logits.size(0), classes = logits.size(1);
  const bool keep = y.requires_grad();
  Tensor<T>& p = node.saved[0];
  if (keep) p.resize(Shape{n, classes});
  const T* x = logits.value().data();
  double total = 0;
  for (int64_t i = 0; i < n; ++i) {
    const detail::ConstVectorMap<T> xr(x + i * classes, classes);
    const T m = xr.maxCoeff();
    T s;
    if (keep) {
      detail::VectorMap<T> pr(p.data() + i * classes, classes);
      pr = (xr - m).exp();
      s = pr.sum();
      pr *= T(1) / s;
    } else {
      s = (xr - m).exp().sum();
    }
    total += double(m) + std::log(double(s)) - double(xr[labels[static_cast<size_t>(i)]]);
  }
  y.value()[0] = static_cast<T>(total / double(n));
  return y;
}

/// nll_loss(log_probs [N, C], labels) = -mean_n log_probs_n,y_n (torch.nn.NLLLoss,
/// reduction='mean'); d/dlog_probs = -onehot(y) / N.
template <class T>
Var<T> nll_loss(const Var<T>& log_probs, const std::vector<int64_t>& labels) {
  detail::check_class_labels("nll_loss", log_probs, labels);
  Var<T> y = log_probs.tape().record(
      "nll_loss", Shape{}, {log_probs},
      [](OpContext<T>& c) {
        if (!c.needs_grad(0)) return;
        const int64_t n = c.input(0).size(0), classes = c.input(0).size(1);
        const T scale = c.grad_out()[0] / T(n);
        Tensor<T>& gx = c.grad_in(0);
        const auto& labels = c.node().ints;
        for (int64_t i = 0; i < n; ++i) gx[i * classes + labels[static_cast<size_t>(i)]] -= scale;
      },
      Reads::none);
  y.node().ints.assign(labels.begin(), labels.end());
  const int64_t n = log_probs.size(0), classes = log_probs.size(1);
  const T* lp = log_probs.value().data();
  double total = 0;
  for (int64_t i = 0; i < n; ++i) total -= double(lp[i * classes + labels[static_cast<size_t>(i)]]);
  y.value()[0] = static_cast<T>(total / double(n));
  return y;
}

/// binary_cross_entropy_with_logits(x, t) = mean[ max(x, 0) - x t + log(1 + exp(-|x|)) ]
/// (torch.nn.BCEWithLogitsLoss, reduction='mean'): the stable form of
/// -[t log sigmoid(x) + (1 - t) log(1 - sigmoid(x))]; targets may be soft (any real t).
/// d/dx = (sigmoid(x) - t) / n, d/dt = -x / n.
template <class T>
Var<T> binary_cross_entropy_with_logits(const Var<T>& logits, const Var<T>& targets) {
  detail::check_same_shape("binary_cross_entropy_with_logits", logits, targets, "targets");
  Var<T> y = logits.tape().record(
      "binary_cross_entropy_with_logits", Shape{}, {logits, targets}, [](OpContext<T>& c) {
        const T scale = c.grad_out()[0] / T(c.input(0).numel());
        if (c.needs_grad(0)) c.add_grad(0, scale * (c.saved(0).array() - c.input(1).array()));
        c.add_grad(1, -scale * c.input(0).array());
      });
  const auto x = logits.value().array();
  const auto t = targets.value().array();
  Tensor<T>& e = y.node().saved[0];  // exp(-|x|), then sigmoid(x) for backward
  e.resize(logits.shape());
  e.array() = (-x.abs()).exp();
  y.value()[0] = (x.max(T(0)) - x * t + e.array().log1p()).sum() / T(x.size());
  if (y.requires_grad()) {
    auto s = e.array();
    s = (s + detail::step_positive(x) * (T(1) - s)) / (T(1) + s);  // as detail::sigmoid_into
  }
  return y;
}
/// The same with the targets given as a Tensor.
template <class T>
Var<T> binary_cross_entropy_with_logits(const Var<T>& logits, const Tensor<T>& targets) {
  return binary_cross_entropy_with_logits(logits, logits.tape().constant(targets));
}

}  // namespace tapegrad
