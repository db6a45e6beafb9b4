#pragma once
/// \file
/// MultiheadAttention(embed_dim, num_heads, dropout = 0, bias = true, batch_first = false):
/// torch.nn.MultiheadAttention with its parameter names, shapes, layout and initialisation, so a
/// PyTorch state_dict loads unchanged:
///   in_proj_weight [3E, E]   rows [W_q; W_k; W_v],  xavier_uniform_
///   in_proj_bias   [3E]      zeros                   (bias = true)
///   out_proj.weight [E, E], out_proj.bias [E]        Linear's default weight init, bias zeros
/// Inputs are time-major [L, N, E] (query) and [S, N, E] (key, value), or [N, L, E] and [N, S, E]
/// with batch_first. With H heads of size D = E / H:
///   q = query W_q^T + b_q,  k = key W_k^T + b_k,  v = value W_v^T + b_v
///   head h: O_h = softmax(q_h k_h^T / sqrt(D) + masks) v_h  (q_h: columns h*D .. h*D+D-1)
///   output = concat_h(O_h) W_o^T + b_o
/// Masks, PyTorch's conventions for this module (the opposite of SDPA's for booleans):
///   attn_mask         [L, S] or [N*H, L, S]: Tensor<bool>, true = this query may NOT attend to
///                     this key; or an additive float mask (-inf removes)
///   key_padding_mask  [N, S]: Tensor<bool>, true = ignore this key (padding); or additive float
///   is_causal         query i attends to keys j <= i, without a mask tensor (tapegrad builds
///                     none; PyTorch 2 treats it as a hint and wants attn_mask too)
/// A query with no key left gives a zero row (PyTorch: NaN).
/// need_weights (default true, as PyTorch) also returns the attention weights, averaged over the
/// heads ([N, L, S]) or per head ([N, H, L, S]) with average_attn_weights = false. They are for
/// reading: a constant on the tape, without gradient, and taken before the attention dropout
/// (PyTorch 1.13 returns them after it; in eval mode, where one reads them, both agree).
///
/// Speed: when query, key and value are the same Var (self-attention) one linear projects all
/// three ([L, N, 3E]); the fused attention kernel (ops/attention.hpp) reads each head's q, k, v
/// as column blocks of it and writes each head's output into its columns of [L, N, E]: no
/// reshaping, no transposing, no copies. Attention dropout is drawn inside the kernel from the
/// child Dropout's stream ("dropout"), so nn::reset_rng and checkpoints cover it.
/// Not implemented (PyTorch options): kdim/vdim, add_bias_kv, add_zero_attn, unbatched 2-D input.

#include <cmath>
#include <cstdint>
#include <memory>
#include <sstream>
#include <string>

#include "tapegrad/nn/dense.hpp"
#include "tapegrad/nn/dropout.hpp"
#include "tapegrad/nn/init.hpp"
#include "tapegrad/nn/module.hpp"
#include "tapegrad/ops/attention.hpp"
#include "tapegrad/ops/linalg.hpp"
#include "tapegrad/ops/shape.hpp"

namespace tapegrad::nn {

/// The optional arguments of MultiheadAttention::forward, under PyTorch's names.
template <class T>
struct MultiheadAttentionArgs {
  /// Padding of keys, [N, S]: Tensor<bool> (true = ignore this key) or an additive float mask.
  AttentionMask<T> key_padding_mask{};
  /// Whether to return the attention weights.
  bool need_weights = true;
  /// attn_mask, [L, S] or [N*H, L, S]: Tensor<bool> (true = may not attend) or an additive float
  /// mask.
  AttentionMask<T> attn_mask{};
  /// Average the weights over the heads ([N, L, S]) or return them per head ([N, H, L, S]).
  bool average_attn_weights = true;
  /// Add a causal mask (a query attends only to keys at or before its position).
  bool is_causal = false;
};

/// What MultiheadAttention::forward returns: the output and, when asked for, the attention weights.
template <class T>
struct MultiheadAttentionOutput {
  Var<T> output;   ///< [L, N, E] (batch_first: [N, L, E])
  Var<T> weights;  ///< [N, L, S] or [N, H, L, S]; undefined unless need_weights
};

/// Multi-head attention, torch.nn.MultiheadAttention: output = concat_h(softmax(q_h k_h^T / sqrt(D)
/// + masks) v_h) W_o^T + b_o; query [L, N, E], key and value [S, N, E] (batch_first: [N, L, E], [N,
/// S, E]). Shapes, masks and parameters in the file's description; wrong shapes throw ShapeError.
template <class T>
class MultiheadAttention : public Module<T> {
 public:
  /// embed_dim E must be divisible by num_heads (ValueError otherwise); dropout on the attention
  /// weights in training.
  MultiheadAttention(int64_t embed_dim, int64_t num_heads, double dropout = 0.0, bool bias = true,
                     bool batch_first = false, Generator& gen = default_generator())
      : e_(embed_dim), h_(num_heads), bias_(bias), batch_first_(batch_first) {
    if (embed_dim < 1 || num_heads < 1 || embed_dim % num_heads != 0)
      tapegrad::detail::fail<ValueError>("MultiheadAttention(", embed_dim, ", ", num_heads,
                                         "): embed_dim must be a positive multiple of num_heads");
    in_proj_weight = this->register_parameter("in_proj_weight", Tensor<T>({3 * e_, e_}));
    init::xavier_uniform_(in_proj_weight.value(), 1.0, gen);
    if (bias) in_proj_bias = this->register_parameter("in_proj_bias", Tensor<T>::zeros({3 * e_}));
    out_proj = this->register_module("out_proj", std::make_shared<Dense<T>>(e_, e_, bias, gen));
    if (bias) out_proj->bias.value().zero_();
    dropout_ = this->register_module("dropout", std::make_shared<Dropout<T>>(dropout, gen));
  }

  Parameter<T> in_proj_weight;  ///< [3E, E]
  Parameter<T> in_proj_bias;    ///< [3E]; undefined when bias = false
  /// The output projection [E, E] (+ bias [E]), child "out_proj".
  std::shared_ptr<Dense<T>> out_proj;

  /// Self-attention without masks: the output only.
  Var<T> forward(const Var<T>& x) override {
    return forward(x, x, x, {.need_weights = false}).output;
  }

  /// Attention of query over key and value with args' masks (see MultiheadAttentionArgs); shapes as
  /// in the class description.
  MultiheadAttentionOutput<T> forward(const Var<T>& query, const Var<T>& key, const Var<T>& value,
                                      const MultiheadAttentionArgs<T>& args = {}) {
    const Shape sq = query.shape(), sk = key.shape(), sv = value.shape();
    check_inputs(sq, sk, sv);
    const bool bf = batch_first_;
    const int64_t L = bf ? sq[1] : sq[0], N = bf ? sq[0] : sq[1], S = bf ? sk[1] : sk[0];
    const int64_t D = e_ / h_;
    Tape<T>& tape = query.tape();
    const Var<T> w = tape.param(in_proj_weight);
    const Var<T> b = bias_ ? tape.param(in_proj_bias) : Var<T>();
    // Rows [from, to) of the projection (a slice only when not all three are projected at once).
    const auto project = [&](const Var<T>& x, int64_t from, int64_t to) {
      if (from == 0 && to == 3 * e_) return bias_ ? linear(x, w, b) : linear(x, w);
      const Var<T> ws = slice(w, 0, from, to);
      return bias_ ? linear(x, ws, slice(b, 0, from, to)) : linear(x, ws);
    };
    Var<T> qp, kp, vp;
    int64_t q0 = 0, k0 = 0, v0 = 0;  // columns where q, k, v start in their projections
    if (query.id() == key.id() && key.id() == value.id()) {
      qp = kp = vp = project(query, 0, 3 * e_);
      k0 = e_, v0 = 2 * e_;
    } else if (key.id() == value.id()) {
      qp = project(query, 0, e_);
      kp = vp = project(key, e_, 3 * e_);
      v0 = e_;
    } else {
      qp = project(query, 0, e_);
      kp = project(key, e_, 2 * e_);
      vp = project(value, 2 * e_, 3 * e_);
    }
    tapegrad::detail::AttentionGeometry g;
    g.lead = Shape{N, h_};
    g.inner = h_;
    g.L = L, g.S = S, g.E = D, g.Ev = D;
    g.scale = 1.0 / std::sqrt(double(D));
    g.causal = args.is_causal;
    // Head (n, h) of an operand [len, N, width] (batch-first [N, len, width]) starting at col0.
    const auto view = [&](const Var<T>& x, int64_t col0, int64_t len) {
      const int64_t width = x.size(-1);
      return bf ? tapegrad::detail::HeadView{col0, len * width, D, width}
                : tapegrad::detail::HeadView{col0, width, D, N * width};
    };
    g.q = view(qp, q0, L);
    g.k = view(kp, k0, S);
    g.v = view(vp, v0, S);
    g.o = bf ? tapegrad::detail::HeadView{0, L * e_, D, e_}
             : tapegrad::detail::HeadView{0, e_, D, N * e_};
    std::array<tapegrad::detail::MaskRef<T>, 2> masks;
    size_t n_masks = 0;
    constexpr const char* op = "MultiheadAttention";
    if (args.attn_mask.defined()) {
      const Shape& m = args.attn_mask.shape();
      if (!(m == Shape{L, S}) && !(m == Shape{N * h_, L, S}))
        tapegrad::detail::fail<ShapeError>(op, ": attn_mask of shape ", m, " for query ", sq,
                                           " and key ", sk, ": expected [", L, ",", S, "] or [",
                                           N * h_, ",", L, ",", S, "]");
      const Shape v = m.rank() == 2 ? m : Shape{N, h_, L, S};
      masks[n_masks++] = tapegrad::detail::mask_ref(op, "attn_mask", args.attn_mask, v, g, true);
    }
    if (args.key_padding_mask.defined()) {
      const Shape& m = args.key_padding_mask.shape();
      if (!(m == Shape{N, S}))
        tapegrad::detail::fail<ShapeError>(op, ": key_padding_mask of shape ", m, " for key ", sk,
                                           ": expected [", N, ",", S, "]");
      masks[n_masks++] = tapegrad::detail::mask_ref(op, "key_padding_mask", args.key_padding_mask,
                                                    Shape{N, 1, 1, S}, g, true);
    }
    Generator gen(0);
    const bool drop = dropout_->active();
    if (drop) gen = dropout_->next_generator();
    const Var<T> heads = tapegrad::detail::attention(
        "multi_head_attention", qp, kp, vp, bf ? Shape{N, L, e_} : Shape{L, N, e_}, g,
        std::span<const tapegrad::detail::MaskRef<T>>(masks.data(), n_masks),
        drop ? dropout_->p() : 0.0, &gen);
    MultiheadAttentionOutput<T> out;
    out.output = (*out_proj)(heads);
    if (args.need_weights)
      out.weights = tape.constant(head_weights(heads, N, L, S, args.average_attn_weights));
    return out;
  }

  /// The model dimension E.
  int64_t embed_dim() const { return e_; }
  /// The number of heads H.
  int64_t num_heads() const { return h_; }
  /// The size of a head, D = E / H.
  int64_t head_dim() const { return e_ / h_; }
  /// Whether inputs are [N, L, E] rather than [L, N, E].
  bool batch_first() const { return batch_first_; }
  /// The dropout probability on the attention weights.
  double dropout() const { return dropout_->p(); }

  std::string name() const override {
    std::ostringstream os;
    os << "MultiheadAttention(" << e_ << ", " << h_;
    if (dropout_->p() != 0) os << ", dropout=" << dropout_->p();
    if (!bias_) os << ", bias=false";
    if (batch_first_) os << ", batch_first=true";
    os << ")";
    return os.str();
  }

 private:
  void check_inputs(const Shape& q, const Shape& k, const Shape& v) const {
    const bool bf = batch_first_;
    const auto fail = [&](const char* why) {
      tapegrad::detail::fail<ShapeError>(name(), ": query ", q, ", key ", k, ", value ", v, ": ",
                                         why, " (layout ", bf ? "[N, L, E]" : "[L, N, E]",
                                         ", E = ", e_, ")");
    };
    if (q.rank() != 3 || k.rank() != 3 || v.rank() != 3) fail("expected 3-D inputs");
    if (q[2] != e_ || k[2] != e_ || v[2] != e_) fail("the last dim must be embed_dim");
    const int nd = bf ? 0 : 1;
    if (k[nd] != q[nd] || v[nd] != q[nd]) fail("batch sizes differ");
    if (k[1 - nd] != v[1 - nd]) fail("key and value lengths differ");
  }

  // The weights P of every head, [N*H, L, S], averaged over the heads or reshaped per head.
  Tensor<T> head_weights(const Var<T>& heads, int64_t N, int64_t L, int64_t S, bool average) {
    const Tensor<T> P = tapegrad::detail::attention_weights(heads);
    if (!average) return P.clone().reshape({N, h_, L, S});
    Tensor<T> w = Tensor<T>::zeros({N, L, S});
    for (int64_t n = 0; n < N; ++n)
      for (int64_t h = 0; h < h_; ++h)
        w.matrix(N, L * S).row(n) += P.matrix(N * h_, L * S).row(n * h_ + h);
    w.array() /= T(h_);
    return w;
  }

  int64_t e_, h_;
  bool bias_, batch_first_;
  std::shared_ptr<Dropout<T>> dropout_;
};

}  // namespace tapegrad::nn
