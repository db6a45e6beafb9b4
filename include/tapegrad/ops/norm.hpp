#pragma once
/// \file
/// Fused normalisation ops: batch_norm and layer_norm, each a single tape node whose backward
/// is the closed form below (no chain of mean/sub/div nodes), in one or two passes per channel
/// or row. Mean and inverse standard deviation are kept in the node's saved buffers, which the
/// tape reuses step after step: no allocation in the steady state.
///
/// batch_norm (torch.nn.functional.batch_norm; torch.nn.BatchNorm2d docs), x of shape [N,C,*]:
///   per channel c over the n = N·H·W values (all dims but 1):
///   train: μ = mean, σ²_B = biased variance (÷n), x̂ = (x − μ)/√(σ²_B + eps), y = γ·x̂ + β;
///          running_mean ← (1 − m)·running_mean + m·μ,
///          running_var  ← (1 − m)·running_var + m·σ²_B·n/(n − 1)   (unbiased),
///          m = momentum, or 1/num_batches_tracked when momentum is nullopt (cumulative average);
///          num_batches_tracked += 1.
///   eval:  y = γ·(x − running_mean)/√(running_var + eps) + β.
///   backward (train), dx̂ = dy·γ:
///     dx = (1/n)·(1/√(σ²_B+eps))·(n·dx̂ − Σdx̂ − x̂·Σ(dx̂·x̂)); dγ = Σ dy·x̂; dβ = Σ dy.
///   backward (eval): dx = dy·γ/√(running_var+eps).
///
/// batch_norm_relu: relu(batch_norm(...)) in one node, one pass to write y = max(γ·x̂ + β, 0)
///   and, backward, batch_norm's backward with dy masked on the fly, dy·[y > 0] (relu'(0) = 0),
///   instead of relu's separate pass and gradient buffer. Same arguments, running statistics and
///   eval mode as batch_norm; the value is relu's of batch_norm's, the gradients batch_norm's
///   of relu's (sums in a different order: equal to rounding, not bit for bit). Its backward
///   reads x and its own output.
///
/// layer_norm (torch.nn.functional.layer_norm; torch.nn.LayerNorm docs): statistics over the
///   last D = numel(normalized_shape) values of each row, biased variance; γ, β have
///   normalized_shape; the backward is batch_norm's with n = D per row, dγ and dβ summed over
///   the rows.
///
/// Optional operands: an empty Var (`{}`) means no γ / no β; an empty Tensor (`Tensor<T>()`,
/// zero elements) means no running statistics / no batch counter.
///
/// Batch statistics over several processes (distributed::SyncBatchNorm, torch.nn.SyncBatchNorm):
/// given a BatchStatsReducer, batch_norm in training takes n, μ and σ²_B over the union of every
/// process's batch: it sums the per-channel counts and Σx over the processes, then Σ(x − μ)²
/// (the same two passes as on one batch), and its backward sums Σdy and Σdy·(x − μ) the same way
/// before it computes dx, with n the global count. dγ and dβ stay the sums over this process's
/// batch (a data-parallel trainer averages them like any gradient). Every process must call it,
/// forward and backward, in the same order; the reducer must outlive the recording.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <optional>
#include <vector>

#include "tapegrad/ops/activation.hpp"
#include "tapegrad/tape.hpp"
#include "tapegrad/threads.hpp"

namespace tapegrad {

/// Sums values over every process taking part in a synchronised batch_norm (see above).
class BatchStatsReducer {
 public:
  /// Replaces values[0..n) by their sums over the processes, identically on every process.
  virtual void sum(double* values, int64_t n) const = 0;

 protected:
  ~BatchStatsReducer() = default;
};

namespace detail {

// A normalisation's eps (the ops' and the layers'): finite and >= 0, written so that NaN fails
// too; an infinite eps zeroes every output. `who` names the op or layer.
inline void check_norm_eps(const char* who, double eps) {
  if (!(eps >= 0 && std::isfinite(eps)))
    fail<ValueError>(who, ": eps must be finite and >= 0, got ", eps);
}
// Batch normalisation's momentum: in [0, 1] (NaN fails too: outside it the running statistics
// turn into nonsense or NaN without a word); nullopt, the cumulative average, is valid.
inline void check_norm_momentum(const char* who, std::optional<double> momentum) {
  if (momentum && !(*momentum >= 0 && *momentum <= 1))
    fail<ValueError>(who, ": momentum must be in [0, 1], got ", *momentum);
}

template <class T>
using ColArray = Eigen::Map<Eigen::Array<T, Eigen::Dynamic, 1>>;
template <class T>
using ConstColArray = Eigen::Map<const Eigen::Array<T, Eigen::Dynamic, 1>>;
template <class T>
using ConstRowArray = Eigen::Map<const Eigen::Array<T, 1, Eigen::Dynamic>>;

// Input k of a fused op may be absent: node().ints holds its position or -1.
constexpr int64_t absent = -1;

// Channels of a [N,C] batch_norm are handled in blocks of this many contiguous columns, so
// each task works on whole SIMD vectors of a row.
constexpr int64_t bn_column_block = 64;

// Scratch for the reductions of a synchronised batch_norm: grows once, then is reused.
inline std::vector<double>& bn_reduce_buffer(size_t n) {
  thread_local std::vector<double> buffer;
  if (buffer.size() < n) buffer.resize(n);
  return buffer;
}

// Per-slice partial sums of batch_norm over [N,C,S] (two per slice of S values): grows once,
// then is reused.
inline double* bn_slice_buffer(size_t n) {
  thread_local std::vector<double> buffer;
  if (buffer.size() < n) buffer.resize(n);
  return buffer.data();
}

// The output gradient of batch_norm (dy) or, when Relu (batch_norm_relu), of the batch_norm
// inside it: dy·[y > 0] with y the op's output, as relu_backward computes it.
template <bool Relu, class Dy, class Y>
auto bn_masked(const Dy& dy, const Y& y) {
  if constexpr (Relu)
    return dy * step_positive(y);
  else
    return dy;
}

// batch_norm backward. ints: N, C, S, gamma index, beta index, training, reducer address (0:
// none), relu (1: batch_norm_relu). saved(0) = per-channel mean used, saved(1) = per-channel
// 1/√(var + eps) used; scalars[0] = the count n over all processes when a reducer took part.
template <class T, bool Relu>
void batch_norm_backward_impl(OpContext<T>& c);
template <class T>
void batch_norm_backward(OpContext<T>& c) {
  if (c.node().ints[7] != 0)
    batch_norm_backward_impl<T, true>(c);
  else
    batch_norm_backward_impl<T, false>(c);
}
template <class T, bool Relu>
void batch_norm_backward_impl(OpContext<T>& c) {
  const auto& in = c.node().ints;
  const int64_t N = in[0], C = in[1], S = in[2];
  const int gi = static_cast<int>(in[3]), bi = static_cast<int>(in[4]);
  const bool training = in[5] != 0;
  const auto* reducer = reinterpret_cast<const BatchStatsReducer*>(static_cast<intptr_t>(in[6]));
  // Values per channel: over all processes with a reducer.
  const double n = reducer ? c.scalar(0) : static_cast<double>(N * S);
  const T* mean = c.saved(0).data();
  const T* rstd = c.saved(1).data();
  const T* x = c.input(0).data();
  const T* dy = c.grad_out().data();
  const T* yv = Relu ? c.value().data() : nullptr;  // the mask's source
  // dy (masked) of the S values at offset off.
  auto grad_at = [&](int64_t off, int64_t len) {
    return bn_masked<Relu>(ConstColArray<T>(dy + off, len), ConstColArray<T>(yv + off, len));
  };
  const T* gamma = gi >= 0 ? c.input(gi).data() : nullptr;
  T* dgamma = gi >= 0 && c.needs_grad(gi) ? c.grad_in(gi).data() : nullptr;
  T* dbeta = bi >= 0 && c.needs_grad(bi) ? c.grad_in(bi).data() : nullptr;
  const bool need_dx = c.needs_grad(0);
  // Training needs Σdy and Σdy·x̂ for dx; eval only for dγ, dβ.
  const bool need_sums = (training && need_dx) || dgamma || dbeta;
  // With a reducer, dx needs the sums over all processes: every sum first, then dx.
  const bool sync = reducer != nullptr && training && need_dx;

  // dx = k1·dy + k2·x + k3 per channel. Scratch: k1, k2, k3 (3C), sums Σdy, Σdy·(x−μ) (2C).
  Tensor<T>& scratch = c.saved(2);
  scratch.resize(Shape{5 * C});
  T* k = scratch.data();
  T* sum_dy = k + 3 * C;
  T* sum_dyx = k + 4 * C;  // Σ dy·(x − μ)
  const int64_t work = N * C * S;
  // k1, k2, k3 of channel ch, once its sums are known.
  auto coefficients = [&](int64_t ch) {
    const T g = gamma ? gamma[ch] : T(1);
    const T k1 = g * rstd[ch];
    if (training) {
      // dx = k1·(dy − Σdy/n − x̂·Σ(dy·x̂)/n), x̂ = (x − μ)·rstd, expanded into k1·dy + k2·x + k3.
      const T a = sum_dyx[ch] * rstd[ch] * rstd[ch] / T(n);
      k[ch] = k1;
      k[C + ch] = -k1 * a;
      k[2 * C + ch] = k1 * (a * mean[ch] - sum_dy[ch] / T(n));
    } else {
      k[ch] = k1;
      k[C + ch] = T(0);
      k[2 * C + ch] = T(0);
    }
  };
  auto parameter_grads = [&] {
    for (int64_t ch = 0; ch < C; ++ch) {
      if (dgamma) dgamma[ch] += sum_dyx[ch] * rstd[ch];  // Σ dy·x̂
      if (dbeta) dbeta[ch] += sum_dy[ch];
    }
  };
  // This process's sums (for dγ, dβ) become the sums over all processes (for dx).
  auto reduce_sums = [&] {
    std::vector<double>& buf = bn_reduce_buffer(static_cast<size_t>(2 * C));
    for (int64_t i = 0; i < 2 * C; ++i) buf[static_cast<size_t>(i)] = sum_dy[i];
    reducer->sum(buf.data(), 2 * C);
    for (int64_t i = 0; i < 2 * C; ++i) sum_dy[i] = static_cast<T>(buf[static_cast<size_t>(i)]);
  };

  if (S > 1 && sync) {
    // [N,C,S] over several processes: all sums, their reduction, then dx.
    detail::parallel_for(C, work > parallel_threshold, [&](int64_t ch) {
      double s1 = 0, s2 = 0;
      const T mu = mean[ch];
      for (int64_t r = 0; r < N; ++r) {
        const auto g = grad_at((r * C + ch) * S, S);
        ConstColArray<T> xv(x + (r * C + ch) * S, S);
        s1 += g.sum();
        s2 += (g * (xv - mu)).sum();
      }
      sum_dy[ch] = static_cast<T>(s1);
      sum_dyx[ch] = static_cast<T>(s2);
    });
    parameter_grads();
    reduce_sums();
    bool assign = false;
    T* dx = c.grad_in_uninitialized(0, assign).data();
    detail::parallel_for(C, work > parallel_threshold, [&](int64_t ch) {
      coefficients(ch);
      const T k1 = k[ch], k2 = k[C + ch], k3 = k[2 * C + ch];
      for (int64_t r = 0; r < N; ++r) {
        const int64_t off = (r * C + ch) * S;
        const auto g = grad_at(off, S);
        ConstColArray<T> xv(x + off, S);
        ColArray<T> d(dx + off, S);
        if (assign)
          d = g * k1 + xv * k2 + k3;
        else
          d += g * k1 + xv * k2 + k3;
      }
    });
    return;
  }

  if (S > 1) {
    // [N,C,S]: per slice (S values of one image and channel) Σdy and Σdy·(x − μ), summed per
    // channel in slice order; then dx slice by slice, written straight into the gradient. Cut
    // as forward cuts them: among the threads in memory order, or on one thread channel by
    // channel (the channel's dy and x read from memory once). Same bits either way.
    const int64_t slices = N * C;
    double* part = bn_slice_buffer(static_cast<size_t>(2 * slices));
    bool assign = false;
    T* dx = need_dx ? c.grad_in_uninitialized(0, assign).data() : nullptr;
    auto slice_sums = [&](int64_t i) {
      const auto g = grad_at(i * S, S);
      ConstColArray<T> xv(x + i * S, S);
      part[2 * i] = static_cast<double>(g.sum());
      part[2 * i + 1] = static_cast<double>((g * (xv - mean[i % C])).sum());
    };
    auto channel_sums = [&](int64_t ch) {
      double s1 = 0, s2 = 0;
      for (int64_t r = 0; r < N; ++r) {
        s1 += part[2 * (r * C + ch)];
        s2 += part[2 * (r * C + ch) + 1];
      }
      sum_dy[ch] = static_cast<T>(s1);
      sum_dyx[ch] = static_cast<T>(s2);
    };
    auto slice_dx = [&](int64_t i) {
      const int64_t ch = i % C, off = i * S;
      const T k1 = k[ch], k2 = k[C + ch], k3 = k[2 * C + ch];
      const auto g = grad_at(off, S);
      ConstColArray<T> xv(x + off, S);
      ColArray<T> d(dx + off, S);
      if (training) {
        if (assign)
          d = g * k1 + xv * k2 + k3;
        else
          d += g * k1 + xv * k2 + k3;
      } else {
        if (assign)
          d = g * k1;
        else
          d += g * k1;
      }
    };
    if (split_among_threads(work)) {
      if (need_sums) {
        detail::parallel_for(slices, true, slice_sums);
        for (int64_t ch = 0; ch < C; ++ch) channel_sums(ch);
      }
      if (dx) {
        for (int64_t ch = 0; ch < C; ++ch) coefficients(ch);
        detail::parallel_for(slices, true, slice_dx);
      }
    } else {
      for (int64_t ch = 0; ch < C; ++ch) {
        if (need_sums) {
          for (int64_t r = 0; r < N; ++r) slice_sums(r * C + ch);
          channel_sums(ch);
        }
        if (!dx) continue;
        coefficients(ch);
        for (int64_t r = 0; r < N; ++r) slice_dx(r * C + ch);
      }
    }
    if (need_sums) parameter_grads();
    return;
  }

  // [N,C]: statistics down the columns, accumulated row by row (vectorised along C).
  if (need_sums) {
    ColArray<T>(sum_dy, 2 * C).setZero();
    const int64_t blocks = (C + bn_column_block - 1) / bn_column_block;
    detail::parallel_for(blocks, work > parallel_threshold, [&](int64_t b) {
      const int64_t c0 = b * bn_column_block, w = std::min(bn_column_block, C - c0);
      ColArray<T> s1(sum_dy + c0, w), s2(sum_dyx + c0, w);
      ConstColArray<T> mu(mean + c0, w);
      for (int64_t r = 0; r < N; ++r) {
        const auto g = grad_at(r * C + c0, w);
        ConstColArray<T> xv(x + r * C + c0, w);
        s1 += g;
        s2 += g * (xv - mu);
      }
    });
    parameter_grads();
    if (sync) reduce_sums();
  }
  if (!need_dx) return;
  for (int64_t ch = 0; ch < C; ++ch) coefficients(ch);
  const auto dyA =
      bn_masked<Relu>(c.grad_out().matrix(N, C).array(), c.value().matrix(N, C).array());
  const auto xA = c.input(0).matrix(N, C).array();
  ConstRowArray<T> k1(k, C), k2(k + C, C), k3(k + 2 * C, C);
  if (training)
    c.add_grad_matrix(0, N, C, ((dyA.rowwise() * k1 + xA.rowwise() * k2).rowwise() + k3).matrix());
  else
    c.add_grad_matrix(0, N, C, (dyA.rowwise() * k1).matrix());
}

// layer_norm backward. ints: R rows, D, gamma index, beta index.
// saved(0) = per-row mean, saved(1) = per-row 1/√(var + eps).
template <class T>
void layer_norm_backward(OpContext<T>& c) {
  const auto& in = c.node().ints;
  const int64_t R = in[0], D = in[1];
  const int gi = static_cast<int>(in[2]), bi = static_cast<int>(in[3]);
  const T* mean = c.saved(0).data();
  const T* rstd = c.saved(1).data();
  const auto xA = c.input(0).matrix(R, D).array();
  const auto dyA = c.grad_out().matrix(R, D).array();
  const bool has_gamma = gi >= 0;

  if ((gi >= 0 && c.needs_grad(gi)) || (bi >= 0 && c.needs_grad(bi))) {
    T* dgamma = gi >= 0 && c.needs_grad(gi) ? c.grad_in(gi).data() : nullptr;
    T* dbeta = bi >= 0 && c.needs_grad(bi) ? c.grad_in(bi).data() : nullptr;
    ColArray<T> dg(dgamma, dgamma ? D : 0), db(dbeta, dbeta ? D : 0);
    for (int64_t r = 0; r < R; ++r) {  // sums over rows: vectorised along the row
      if (dgamma) dg += dyA.row(r).transpose() * (xA.row(r).transpose() - mean[r]) * rstd[r];
      if (dbeta) db += dyA.row(r).transpose();
    }
  }
  if (!c.needs_grad(0)) return;

  // Per row, with g = dy·γ, m1 = mean(g), m2 = mean(g·x̂):
  //   dx = rstd·(g − m1 − x̂·m2) = rstd·g + (−rstd²·m2)·x + (rstd²·m2·μ − rstd·m1).
  Tensor<T>& scratch = c.saved(2);
  scratch.resize(Shape{3 * R});
  T* a = scratch.data();
  T* b = a + R;
  T* k = a + 2 * R;
  const T* gamma = has_gamma ? c.input(gi).data() : nullptr;
  detail::parallel_for(R, R * D > parallel_threshold, [&](int64_t r) {
    const auto g = dyA.row(r);
    const auto xhat = (xA.row(r) - mean[r]) * rstd[r];
    T m1, m2;
    if (gamma) {
      ConstRowArray<T> gm(gamma, D);
      m1 = (g * gm).sum() / T(D);
      m2 = (g * gm * xhat).sum() / T(D);
    } else {
      m1 = g.sum() / T(D);
      m2 = (g * xhat).sum() / T(D);
    }
    const T s = rstd[r];
    a[r] = s;
    b[r] = -s * s * m2;
    k[r] = s * s * m2 * mean[r] - s * m1;
  });
  ConstColArray<T> A(a, R), B(b, R), K(k, R);
  if (gamma) {
    ConstRowArray<T> gm(gamma, D);
    c.add_grad_matrix(
        0, R, D, (((dyA.rowwise() * gm).colwise() * A + xA.colwise() * B).colwise() + K).matrix());
  } else {
    c.add_grad_matrix(0, R, D, ((dyA.colwise() * A + xA.colwise() * B).colwise() + K).matrix());
  }
}

// batch_norm, and batch_norm_relu when relu (op = its name, in errors and on the tape).
template <class T>
Var<T> batch_norm_op(const char* op, bool relu, const Var<T>& x, const Var<T>& gamma,
                     const Var<T>& beta, Tensor<T> running_mean, Tensor<T> running_var,
                     bool training, std::optional<double> momentum, double eps,
                     Tensor<T> num_batches_tracked, const BatchStatsReducer* reducer) {
  const Shape xs = x.shape();  // a copy: recording may move the nodes
  if (xs.rank() < 2)
    fail<ShapeError>(op, ": input of shape ", xs, ": expected [N,C] or [N,C,H,W] (rank >= 2)");
  const int64_t C = xs[1];
  int64_t S = 1;
  for (int d = 2; d < xs.rank(); ++d) S *= xs[d];
  // Images without pixels hold no values: counted as no rows, so that no path (here and in
  // backward) reads a row of x.
  const int64_t N = S == 0 ? 0 : xs[0];
  auto check_channels = [&](const char* what, const Shape& s) {
    if (!(s.rank() == 1 && s[0] == C))
      fail<ShapeError>(op, ": input ", xs, " has ", C, " channels but ", what, " has shape ", s,
                       " (expected [", C, "])");
  };
  if (gamma.defined()) check_channels("weight (gamma)", gamma.shape());
  if (beta.defined()) check_channels("bias (beta)", beta.shape());
  const bool has_running = running_mean.numel() > 0 || running_var.numel() > 0;
  if (has_running) {
    check_channels("running_mean", running_mean.shape());
    check_channels("running_var", running_var.shape());
  }
  if (!training && !has_running)
    fail<ValueError>(op, ": input ", xs, ": eval mode needs running_mean and running_var");
  check_norm_eps(op, eps);
  check_norm_momentum(op, momentum);
  if (!training) reducer = nullptr;
  if (training && !reducer && N * S == 1)  // the unbiased variance n/(n−1) needs two values
    fail<ValueError>(op, ": Expected more than 1 value per channel when training, got input size ",
                     xs);
  const bool update = training && has_running && !recomputing;  // see ops/checkpoint.hpp
  if (update && !momentum && num_batches_tracked.numel() != 1)
    fail<ValueError>(op, ": input ", xs,
                     ": momentum=None (cumulative average) needs num_batches_tracked");
  if (num_batches_tracked.numel() > 1)
    fail<ShapeError>(op, ": num_batches_tracked has shape ", num_batches_tracked.shape(),
                     " (expected one element)");

  // Inputs: x, then gamma and beta when present; their positions go into ints.
  Var<T> inputs[3] = {x};
  int n_inputs = 1;
  const int64_t gi = gamma.defined() ? n_inputs : absent;
  if (gamma.defined()) inputs[n_inputs++] = gamma;
  const int64_t bi = beta.defined() ? n_inputs : absent;
  if (beta.defined()) inputs[n_inputs++] = beta;
  Var<T> out =
      x.tape().record(op, xs, std::span<const Var<T>>(inputs, static_cast<size_t>(n_inputs)),
                      &batch_norm_backward<T>, relu ? Reads::all : Reads::inputs);
  Node<T>& node = out.node();
  node.ints.assign({N, C, S, gi, bi, training ? 1 : 0,
                    static_cast<int64_t>(reinterpret_cast<intptr_t>(reducer)), relu ? 1 : 0});
  node.saved[0].resize(Shape{C});
  node.saved[1].resize(Shape{C});
  T* mean = node.saved[0].data();
  T* rstd = node.saved[1].data();

  double m = momentum.value_or(0.0);
  if (update) {
    if (num_batches_tracked.numel() == 1) num_batches_tracked[0] += T(1);
    if (!momentum) m = 1.0 / static_cast<double>(num_batches_tracked[0]);
  }
  const int64_t n = N * S;
  // An empty batch, as PyTorch: empty output, running statistics unchanged (with a reducer the
  // other processes' values count: the reductions below take part with zero sums).
  if (n == 0 && !reducer) {
    std::fill_n(mean, C, T(0));
    std::fill_n(rstd, C, T(1));
    return out;
  }
  double unbias = n > 1 ? static_cast<double>(n) / static_cast<double>(n - 1) : 1.0;
  T* rm = update ? running_mean.data() : nullptr;
  T* rv = update ? running_var.data() : nullptr;
  const T* g = gamma.defined() ? gamma.value().data() : nullptr;
  const T* b = beta.defined() ? beta.value().data() : nullptr;
  const T* xp = x.value().data();
  T* yp = out.value().data();
  const int64_t work = N * C * S;

  // Per channel once the batch variance is known: 1/√(var+eps) and the running update.
  auto finish_channel = [&](int64_t ch, double mu, double var) {
    mean[ch] = static_cast<T>(mu);
    rstd[ch] = static_cast<T>(1.0 / std::sqrt(var + eps));
    if (rm) {
      rm[ch] = static_cast<T>((1 - m) * rm[ch] + m * mu);
      rv[ch] = static_cast<T>((1 - m) * rv[ch] + m * var * unbias);
    }
  };
  if (!training) {
    for (int64_t ch = 0; ch < C; ++ch) {
      mean[ch] = running_mean[ch];
      rstd[ch] = static_cast<T>(1.0 / std::sqrt(static_cast<double>(running_var[ch]) + eps));
    }
  }
  // Statistics over all processes: count and Σx, then Σ(x − μ)² with the global μ.
  if (reducer) {
    // buf: [count, Σx per channel], then Σ(x − μ)² in place of Σx; the means after them.
    std::vector<double>& buf = bn_reduce_buffer(static_cast<size_t>(2 * C + 1));
    double* mu = buf.data() + C + 1;
    auto channel_sums = [&](auto&& value) {
      detail::parallel_for(C, work > parallel_threshold, [&](int64_t ch) {
        double s = 0;
        for (int64_t r = 0; r < N; ++r) s += value(r, ch);
        buf[static_cast<size_t>(ch + 1)] = s;
      });
    };
    buf[0] = static_cast<double>(n);
    if (S == 1)
      channel_sums([&](int64_t r, int64_t ch) { return static_cast<double>(xp[r * C + ch]); });
    else
      channel_sums([&](int64_t r, int64_t ch) {
        return static_cast<double>(ConstColArray<T>(xp + (r * C + ch) * S, S).sum());
      });
    reducer->sum(buf.data(), C + 1);
    const double total = buf[0];
    if (total <= 1)
      fail<ValueError>(op,
                       ": Expected more than 1 value per channel when training, got input size ",
                       xs, " (", total, " values per channel over all processes)");
    node.scalars[0] = total;
    unbias = total / (total - 1);
    for (int64_t ch = 0; ch < C; ++ch) {
      mu[ch] = buf[static_cast<size_t>(ch + 1)] / total;
      mean[ch] = static_cast<T>(mu[ch]);
    }
    if (S == 1)
      channel_sums([&](int64_t r, int64_t ch) {
        const double d = static_cast<double>(xp[r * C + ch] - mean[ch]);
        return d * d;
      });
    else
      channel_sums([&](int64_t r, int64_t ch) {
        return static_cast<double>(
            (ConstColArray<T>(xp + (r * C + ch) * S, S) - mean[ch]).square().sum());
      });
    reducer->sum(buf.data() + 1, C);
    for (int64_t ch = 0; ch < C; ++ch)
      finish_channel(ch, mu[ch], buf[static_cast<size_t>(ch + 1)] / total);
  }
  const bool local_stats = training && !reducer;

  if (S == 1) {
    // [N,C]: statistics down the columns, accumulated row by row (vectorised along C).
    Tensor<T>& scratch = node.saved[2];  // scale, shift
    scratch.resize(Shape{2 * C});
    T* scale = scratch.data();
    T* shift = scale + C;
    if (local_stats) {
      ColArray<T>(mean, C).setZero();
      ColArray<T>(rstd, C).setZero();  // holds Σ(x − μ)² first
      const int64_t blocks = (C + bn_column_block - 1) / bn_column_block;
      detail::parallel_for(blocks, work > parallel_threshold, [&](int64_t blk) {
        const int64_t c0 = blk * bn_column_block;
        const int64_t w = std::min(bn_column_block, C - c0);
        ColArray<T> mu(mean + c0, w), sq(rstd + c0, w);
        for (int64_t r = 0; r < N; ++r) mu += ConstColArray<T>(xp + r * C + c0, w);
        mu /= T(N);
        for (int64_t r = 0; r < N; ++r) sq += (ConstColArray<T>(xp + r * C + c0, w) - mu).square();
      });
      for (int64_t ch = 0; ch < C; ++ch)
        finish_channel(ch, mean[ch], static_cast<double>(rstd[ch]) / static_cast<double>(N));
    }
    for (int64_t ch = 0; ch < C; ++ch) {
      scale[ch] = (g ? g[ch] : T(1)) * rstd[ch];
      shift[ch] = (b ? b[ch] : T(0)) - mean[ch] * scale[ch];
    }
    ConstRowArray<T> sc(scale, C), sh(shift, C);
    const auto affine = (x.value().matrix(N, C).array().rowwise() * sc).rowwise() + sh;
    if (relu)
      out.value().matrix(N, C).array() = affine.max(T(0));
    else
      out.value().matrix(N, C).array() = affine;
    return out;
  }

  // [N,C,H,W]: statistics from per-slice partial sums (a slice: S contiguous values of one
  // image and channel). Slice i's sum and Σ(x − a_i)² about a_i, its mean rounded to T, are
  // read from L1; per channel, in slice order, μ = Σ sums / n and Σ(x − μ)² = Σ_i [Σ(x − a_i)²
  // + S((m_i − μ)² − (m_i − a_i)²)], m_i the slice's exact mean (Chan, Golub, LeVeque). On
  // several threads the slices are cut in memory order, as the elementwise ops and the
  // convolutions cut the batch, so each thread reads what it wrote; on one, channel by channel,
  // so a channel's values stay in cache from its statistics to its output. Same bits either way.
  const int64_t slices = N * C;
  const double per_slice = static_cast<double>(S);
  double* part = bn_slice_buffer(static_cast<size_t>(2 * slices));
  Tensor<T>& scratch = node.saved[2];  // scale, shift per channel
  scratch.resize(Shape{2 * C});
  T* scale = scratch.data();
  T* shift = scale + C;
  auto slice_sums = [&](int64_t i) {
    ConstColArray<T> xs(xp + i * S, S);
    const double sum = static_cast<double>(xs.sum());
    part[2 * i] = sum;
    part[2 * i + 1] = static_cast<double>((xs - static_cast<T>(sum / per_slice)).square().sum());
  };
  auto channel_stats = [&](int64_t ch) {
    if (local_stats) {
      double s = 0;
      for (int64_t r = 0; r < N; ++r) s += part[2 * (r * C + ch)];
      const double mu = s / static_cast<double>(n);
      double q = 0;
      for (int64_t r = 0; r < N; ++r) {
        const int64_t i = r * C + ch;
        const double m = part[2 * i] / per_slice;
        const double a = static_cast<double>(static_cast<T>(m));
        q += part[2 * i + 1] + per_slice * ((m - mu) * (m - mu) - (m - a) * (m - a));
      }
      finish_channel(ch, mu, std::max(q, 0.0) / static_cast<double>(n));
    }
    scale[ch] = (g ? g[ch] : T(1)) * rstd[ch];
    shift[ch] = (b ? b[ch] : T(0)) - mean[ch] * scale[ch];
  };
  auto write_slice = [&](int64_t i) {
    const auto affine = ConstColArray<T>(xp + i * S, S) * scale[i % C] + shift[i % C];
    if (relu)
      ColArray<T>(yp + i * S, S) = affine.max(T(0));
    else
      ColArray<T>(yp + i * S, S) = affine;
  };
  if (split_among_threads(work)) {
    if (local_stats) detail::parallel_for(slices, true, slice_sums);
    for (int64_t ch = 0; ch < C; ++ch) channel_stats(ch);
    detail::parallel_for(slices, true, write_slice);
  } else {
    for (int64_t ch = 0; ch < C; ++ch) {
      if (local_stats)
        for (int64_t r = 0; r < N; ++r) slice_sums(r * C + ch);
      channel_stats(ch);
      for (int64_t r = 0; r < N; ++r) write_slice(r * C + ch);
    }
  }
  return out;
}
}  // namespace detail

/// Batch normalisation of x [N,C] or [N,C,H,W] (any rank >= 2: channels are dim 1).
/// gamma, beta: [C] or empty Vars (affine = false). running_mean, running_var: [C] tensors
/// updated in place when training (empty Tensors: no running statistics; then training must be
/// true). momentum: weight of the new batch, or nullopt for the cumulative average, which needs
/// num_batches_tracked (a one-element tensor, incremented on every training call). reducer: in
/// training, the statistics over several processes (see the top of this file); nullptr: this
/// batch alone.
template <class T>
Var<T> batch_norm(const Var<T>& x, const Var<T>& gamma, const Var<T>& beta, Tensor<T> running_mean,
                  Tensor<T> running_var, bool training, std::optional<double> momentum = 0.1,
                  double eps = 1e-5, Tensor<T> num_batches_tracked = Tensor<T>(),
                  const BatchStatsReducer* reducer = nullptr) {
  return detail::batch_norm_op("batch_norm", false, x, gamma, beta, std::move(running_mean),
                               std::move(running_var), training, momentum, eps,
                               std::move(num_batches_tracked), reducer);
}

/// relu(batch_norm(...)) as one op (see the top of this file): the same arguments, running
/// statistics and errors (named batch_norm_relu).
template <class T>
Var<T> batch_norm_relu(const Var<T>& x, const Var<T>& gamma, const Var<T>& beta,
                       Tensor<T> running_mean, Tensor<T> running_var, bool training,
                       std::optional<double> momentum = 0.1, double eps = 1e-5,
                       Tensor<T> num_batches_tracked = Tensor<T>(),
                       const BatchStatsReducer* reducer = nullptr) {
  return detail::batch_norm_op("batch_norm_relu", true, x, gamma, beta, std::move(running_mean),
                               std::move(running_var), training, momentum, eps,
                               std::move(num_batches_tracked), reducer);
}

/// Layer normalisation over the trailing dims of x given by normalized_shape (rank >= 1).
/// gamma, beta: of shape normalized_shape, or empty Vars (elementwise_affine = false).
template <class T>
Var<T> layer_norm(const Var<T>& x, const Shape& normalized_shape, const Var<T>& gamma = {},
                  const Var<T>& beta = {}, double eps = 1e-5) {
  const Shape xs = x.shape();  // a copy: recording may move the nodes
  const int k = normalized_shape.rank();
  bool fits = k >= 1 && xs.rank() >= k;
  for (int i = 0; fits && i < k; ++i) fits = xs[xs.rank() - k + i] == normalized_shape[i];
  if (!fits) {
    std::string star = "[*";
    for (int i = 0; i < k; ++i) star += "," + std::to_string(normalized_shape[i]);
    detail::fail<ShapeError>("layer_norm: normalized_shape ", normalized_shape,
                             " expects input of shape ", star, "], got ", xs);
  }
  if (gamma.defined() && !(gamma.shape() == normalized_shape))
    detail::fail<ShapeError>("layer_norm: weight (gamma) has shape ", gamma.shape(),
                             ", expected normalized_shape ", normalized_shape);
  if (beta.defined() && !(beta.shape() == normalized_shape))
    detail::fail<ShapeError>("layer_norm: bias (beta) has shape ", beta.shape(),
                             ", expected normalized_shape ", normalized_shape);
  detail::check_norm_eps("layer_norm", eps);
  const int64_t D = normalized_shape.numel();
  if (D == 0) detail::fail<ShapeError>("layer_norm: empty normalized_shape ", normalized_shape);
  const int64_t R = xs.numel() / D;

  Var<T> inputs[3] = {x};
  int n_inputs = 1;
  const int64_t gi = gamma.defined() ? n_inputs : detail::absent;
  if (gamma.defined()) inputs[n_inputs++] = gamma;
  const int64_t bi = beta.defined() ? n_inputs : detail::absent;
  if (beta.defined()) inputs[n_inputs++] = beta;
  Var<T> out = x.tape().record("layer_norm", xs,
                               std::span<const Var<T>>(inputs, static_cast<size_t>(n_inputs)),
                               &detail::layer_norm_backward<T>, Reads::inputs);
  Node<T>& node = out.node();
  node.ints.assign({R, D, gi, bi});
  node.saved[0].resize(Shape{R});
  node.saved[1].resize(Shape{R});
  T* mean = node.saved[0].data();
  T* rstd = node.saved[1].data();
  const auto xA = x.value().matrix(R, D).array();
  auto yA = out.value().matrix(R, D).array();
  const T* g = gamma.defined() ? gamma.value().data() : nullptr;
  const T* b = beta.defined() ? beta.value().data() : nullptr;
  detail::parallel_for(R, R * D > parallel_threshold, [&](int64_t r) {
    const auto row = xA.row(r);
    const T mu = row.sum() / T(D);
    const T var = (row - mu).square().sum() / T(D);
    const T s = static_cast<T>(1.0 / std::sqrt(static_cast<double>(var) + eps));
    mean[r] = mu;
    rstd[r] = s;
    if (g && b)
      yA.row(r) = (row - mu) * s * detail::ConstRowArray<T>(g, D) + detail::ConstRowArray<T>(b, D);
    else if (g)
      yA.row(r) = (row - mu) * s * detail::ConstRowArray<T>(g, D);
    else if (b)
      yA.row(r) = (row - mu) * s + detail::ConstRowArray<T>(b, D);
    else
      yA.row(r) = (row - mu) * s;
  });
  return out;
}

}  // namespace tapegrad
