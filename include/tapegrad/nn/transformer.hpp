#pragma once
/// \file
/// TransformerEncoderLayer and TransformerEncoder: torch.nn's, with its submodule names,
/// parameter shapes, defaults and initialisation, so a PyTorch state_dict loads unchanged.
///
/// TransformerEncoderLayer(d_model, nhead, {dim_feedforward = 2048, dropout = 0.1,
///                         activation = relu, layer_norm_eps = 1e-5, batch_first = false,
///                         norm_first = false}):
///   children, in PyTorch's order: self_attn (MultiheadAttention(d_model, nhead, dropout)),
///   linear1 [dim_feedforward, d_model], dropout, linear2 [d_model, dim_feedforward], norm1,
///   norm2 (LayerNorm(d_model, eps)), dropout1, dropout2; with
///     sa(x) = dropout1(self_attn(x, x, x, masks))
///     ff(x) = dropout2(linear2(dropout(activation(linear1(x)))))
///   Post-LN (norm_first = false, the original Transformer's):
///     x = norm1(x + sa(x));  x = norm2(x + ff(x))
///   Pre-LN (norm_first = true):
///     x = x + sa(norm1(x));  x = x + ff(norm2(x))
///   Xiong et al. 2020 ("On Layer Normalization in the Transformer Architecture"): at
///   initialisation Post-LN's gradients are largest for the parameters near the output, so a
///   large learning rate needs a warm-up; Pre-LN's are about equal across layers and it trains
///   without one. examples/transformer_lm.cpp measures both.
///
/// TransformerEncoder(layer, num_layers, norm = nullptr): num_layers copies of `layer` under
///   "layers.0", "layers.1", ... and the optional final LayerNorm "norm". As in PyTorch (which
///   deep-copies the layer) every copy starts from the given layer's weights; each copy's
///   Dropouts get seeds of their own.
///
/// Both take masks as nn::MultiheadAttention does (EncoderMasks: mask = attn_mask [T, T],
/// src_key_padding_mask [N, T], is_causal), and square_subsequent_mask(T) builds the causal
/// float mask of nn.Transformer.generate_square_subsequent_mask.

#include <cstdint>
#include <limits>
#include <memory>
#include <sstream>
#include <string>

#include "tapegrad/nn/attention.hpp"
#include "tapegrad/nn/dense.hpp"
#include "tapegrad/nn/dropout.hpp"
#include "tapegrad/nn/layer_norm.hpp"
#include "tapegrad/nn/module.hpp"
#include "tapegrad/nn/sequential.hpp"
#include "tapegrad/ops/activation.hpp"
#include "tapegrad/ops/elementwise.hpp"

namespace tapegrad::nn {

/// The activation of the feed-forward block.
enum class TransformerActivation { relu, gelu };

/// The options of TransformerEncoderLayer, under PyTorch's names.
struct TransformerEncoderLayerOptions {
  /// Width of the feed-forward block.
  int64_t dim_feedforward = 2048;
  /// Dropout probability (attention weights, feed-forward, residual branches).
  double dropout = 0.1;
  /// The activation of the feed-forward block.
  TransformerActivation activation = TransformerActivation::relu;
  /// The epsilon of the LayerNorms.
  double layer_norm_eps = 1e-5;
  /// Whether inputs are [N, T, d_model] rather than [T, N, d_model].
  bool batch_first = false;
  /// Pre-LN (true) or Post-LN (false).
  bool norm_first = false;
};

/// The masks of an encoder's self-attention (as MultiheadAttention's).
template <class T>
struct EncoderMasks {
  AttentionMask<T> mask{};                  ///< attn_mask: [T, T] or [N*nhead, T, T]
  AttentionMask<T> src_key_padding_mask{};  ///< [N, T]
  /// Add a causal mask.
  bool is_causal = false;
};

/// The causal additive mask [n, n]: 0 on and below the diagonal, -inf above.
template <class T>
Tensor<T> square_subsequent_mask(int64_t n) {
  Tensor<T> m({n, n});
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = 0; j < n; ++j) m(i, j) = j > i ? -std::numeric_limits<T>::infinity() : T(0);
  return m;
}

/// One Transformer encoder layer, torch.nn.TransformerEncoderLayer: self-attention and a
/// feed-forward block, each with a residual connection, Post-LN or Pre-LN (equations in the file's
/// description). src [T, N, d_model] (batch_first: [N, T, d_model]) -> the same shape.
template <class T>
class TransformerEncoderLayer : public Module<T> {
 public:
  /// d_model must be divisible by nhead (ValueError otherwise).
  TransformerEncoderLayer(int64_t d_model, int64_t nhead,
                          TransformerEncoderLayerOptions options = {},
                          Generator& gen = default_generator())
      : d_(d_model), h_(nhead), opt_(options) {
    if (options.dim_feedforward < 1)
      tapegrad::detail::fail<ValueError>("TransformerEncoderLayer(", d_model, ", ", nhead,
                                         "): dim_feedforward must be >= 1");
    self_attn = this->register_module(
        "self_attn", std::make_shared<MultiheadAttention<T>>(d_model, nhead, options.dropout, true,
                                                             options.batch_first, gen));
    linear1 = this->register_module(
        "linear1", std::make_shared<Dense<T>>(d_model, options.dim_feedforward, true, gen));
    dropout = this->register_module("dropout", std::make_shared<Dropout<T>>(options.dropout, gen));
    linear2 = this->register_module(
        "linear2", std::make_shared<Dense<T>>(options.dim_feedforward, d_model, true, gen));
    norm1 = this->register_module("norm1",
                                  std::make_shared<LayerNorm<T>>(d_model, options.layer_norm_eps));
    norm2 = this->register_module("norm2",
                                  std::make_shared<LayerNorm<T>>(d_model, options.layer_norm_eps));
    dropout1 =
        this->register_module("dropout1", std::make_shared<Dropout<T>>(options.dropout, gen));
    dropout2 =
        this->register_module("dropout2", std::make_shared<Dropout<T>>(options.dropout, gen));
  }

  /// The self-attention, child "self_attn".
  std::shared_ptr<MultiheadAttention<T>> self_attn;
  ///@{
  /// The feed-forward block's layers [dim_feedforward, d_model] and [d_model, dim_feedforward].
  std::shared_ptr<Dense<T>> linear1, linear2;
  ///@}
  ///@{
  /// The LayerNorms around the attention and the feed-forward block.
  std::shared_ptr<LayerNorm<T>> norm1, norm2;
  ///@}
  ///@{
  /// The dropouts inside the feed-forward block and on the two residual branches.
  std::shared_ptr<Dropout<T>> dropout, dropout1, dropout2;
  ///@}

  Var<T> forward(const Var<T>& src) override { return forward(src, EncoderMasks<T>{}); }

  /// The layer applied to src with masks; wrong shapes throw ShapeError.
  Var<T> forward(const Var<T>& src, const EncoderMasks<T>& masks) {
    // The residual sums and the ReLU are written over the branch's own output when nothing
    // else needs it (add_, relu_: Tape::record_inplace), as nn::Residual and nn::ReLU do.
    Var<T> x = src;
    if (opt_.norm_first) {
      x = residual(self_attention((*norm1)(x), masks), x);
      x = residual(feed_forward((*norm2)(x)), x);
    } else {
      x = (*norm1)(residual(self_attention(x, masks), x));
      x = (*norm2)(residual(feed_forward(x), x));
    }
    return x;
  }

  /// A copy with this layer's weights and Dropouts seeded from gen (TransformerEncoder's layers).
  std::shared_ptr<TransformerEncoderLayer> clone(Generator& gen = default_generator()) const {
    auto c = std::make_shared<TransformerEncoderLayer>(d_, h_, opt_, gen);
    const auto mine = this->named_parameters();
    const auto theirs = c->named_parameters();
    for (size_t i = 0; i < mine.size(); ++i) theirs[i].second.value().copy_(mine[i].second.value());
    return c;
  }

  /// The model dimension.
  int64_t d_model() const { return d_; }
  /// The number of attention heads.
  int64_t nhead() const { return h_; }
  /// The options given at construction.
  const TransformerEncoderLayerOptions& options() const { return opt_; }

  std::string name() const override {
    std::ostringstream os;
    os << "TransformerEncoderLayer(" << d_ << ", " << h_
       << ", dim_feedforward=" << opt_.dim_feedforward;
    if (opt_.dropout != 0.1) os << ", dropout=" << opt_.dropout;
    if (opt_.activation == TransformerActivation::gelu) os << ", activation=gelu";
    if (opt_.batch_first) os << ", batch_first=true";
    if (opt_.norm_first) os << ", norm_first=true";
    os << ")";
    return os.str();
  }

 private:
  Var<T> self_attention(const Var<T>& x, const EncoderMasks<T>& m) {
    return (*dropout1)(self_attn
                           ->forward(x, x, x,
                                     {.key_padding_mask = m.src_key_padding_mask,
                                      .need_weights = false,
                                      .attn_mask = m.mask,
                                      .is_causal = m.is_causal})
                           .output);
  }
  // branch + x, on the branch's buffer when safe (never on x's: the branch read it).
  static Var<T> residual(const Var<T>& branch, const Var<T>& x) {
    return branch.id() == x.id() ? x + x : add_(branch, x);
  }
  Var<T> feed_forward(const Var<T>& x) {
    const Var<T> h = (*linear1)(x);
    const Var<T> a = opt_.activation == TransformerActivation::gelu ? gelu(h) : relu_(h);
    return (*dropout2)((*linear2)((*dropout)(a)));
  }

  int64_t d_, h_;
  TransformerEncoderLayerOptions opt_;
};

/// A stack of num_layers copies of an encoder layer, torch.nn.TransformerEncoder, with an optional
/// final LayerNorm; src [T, N, d_model] -> the same shape.
template <class T>
class TransformerEncoder : public Module<T> {
 public:
  /// num_layers copies of layer (children "layers.0", ...) and the optional final norm "norm".
  TransformerEncoder(const TransformerEncoderLayer<T>& layer, int64_t num_layers,
                     std::shared_ptr<LayerNorm<T>> norm = nullptr,
                     Generator& gen = default_generator()) {
    if (num_layers < 1)
      tapegrad::detail::fail<ValueError>("TransformerEncoder: num_layers must be >= 1, got ",
                                         num_layers);
    layers = this->register_module("layers", std::make_shared<Sequential<T>>());
    for (int64_t i = 0; i < num_layers; ++i) {
      blocks_.push_back(layer.clone(gen));
      layers->push_back(blocks_.back());
    }
    if (norm) this->norm = this->register_module("norm", std::move(norm));
  }

  std::shared_ptr<Sequential<T>> layers;  ///< "layers.0", "layers.1", ...
  std::shared_ptr<LayerNorm<T>> norm;     ///< the final LayerNorm, or null

  Var<T> forward(const Var<T>& src) override { return forward(src, EncoderMasks<T>{}); }
  /// The stack applied to src with masks; wrong shapes throw ShapeError.
  Var<T> forward(const Var<T>& src, const EncoderMasks<T>& masks) {
    Var<T> x = src;
    for (const auto& b : blocks_) x = b->forward(x, masks);
    return norm ? (*norm)(x) : x;
  }

  /// Number of layers.
  int64_t num_layers() const { return static_cast<int64_t>(blocks_.size()); }
  /// Layer i (std::out_of_range if there is none).
  TransformerEncoderLayer<T>& layer(int64_t i) const { return *blocks_.at(static_cast<size_t>(i)); }

  std::string name() const override {
    std::ostringstream os;
    os << "TransformerEncoder(num_layers=" << blocks_.size() << (norm ? ", norm" : "") << ")";
    return os.str();
  }

 private:
  std::vector<std::shared_ptr<TransformerEncoderLayer<T>>> blocks_;
};

}  // namespace tapegrad::nn
