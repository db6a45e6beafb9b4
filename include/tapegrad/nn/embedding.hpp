#pragma once
/// \file
/// Embedding(num_embeddings, embedding_dim, padding_idx): torch.nn.Embedding, a lookup table of
/// row vectors: indices of any shape -> that shape plus a last dim of embedding_dim.
///   weight [num_embeddings, embedding_dim] ~ N(0, 1)   (torch.nn.Embedding.reset_parameters),
///   the row padding_idx (if given; negative counts from the end) zero, and it gets no gradient.
/// Two ways to call it (ops/embedding.hpp has the op and its backward):
///   emb.forward(tape, ids)   ids a Tensor<int64_t>, as torch's LongTensor
///   emb(x)                   x a Var of whole numbers (rounded; so it can open a Sequential)

#include <cstdint>
#include <optional>
#include <sstream>
#include <string>

#include "tapegrad/nn/init.hpp"
#include "tapegrad/nn/module.hpp"
#include "tapegrad/ops/embedding.hpp"

namespace tapegrad::nn {

/// Lookup table of embedding_dim-wide rows, torch.nn.Embedding: indices of any shape -> that shape
/// plus a last dim of embedding_dim. An index out of [0, num_embeddings) throws ValueError.
template <class T>
class Embedding : public Module<T> {
 public:
  /// weight [num_embeddings, embedding_dim] ~ N(0, 1) from gen; the row padding_idx (negative
  /// counts from the end) is zero and gets no gradient.
  Embedding(int64_t num_embeddings, int64_t embedding_dim,
            std::optional<int64_t> padding_idx = std::nullopt, Generator& gen = default_generator())
      : num_(num_embeddings), dim_(embedding_dim) {
    if (num_embeddings < 1 || embedding_dim < 0)
      tapegrad::detail::fail<ValueError>("Embedding(", num_embeddings, ", ", embedding_dim,
                                         "): need num_embeddings >= 1 and embedding_dim >= 0");
    weight = this->register_parameter("weight", Tensor<T>({num_, dim_}));
    padding_ = tapegrad::detail::embedding_padding(weight.shape(), padding_idx);
    init::normal_(weight.value(), 0.0, 1.0, gen);
    if (padding_ >= 0)
      for (int64_t j = 0; j < dim_; ++j) weight.value()(padding_, j) = T(0);
  }

  Parameter<T> weight;  ///< [num_embeddings, embedding_dim]

  Var<T> forward(const Var<T>& indices) override {
    return embedding(indices, indices.tape().param(weight), padding());
  }
  /// The rows of weight for the indices ids, on tape.
  Var<T> forward(Tape<T>& tape, const Tensor<int64_t>& indices) {
    return embedding(indices, tape.param(weight), padding());
  }

  /// Number of rows of the table.
  int64_t num_embeddings() const { return num_; }
  /// Size of each row.
  int64_t embedding_dim() const { return dim_; }
  /// The row that is zero and gets no gradient, if any (non-negative).
  std::optional<int64_t> padding_idx() const { return padding(); }

  std::string name() const override {
    std::ostringstream os;
    os << "Embedding(" << num_ << ", " << dim_;
    if (padding_ >= 0) os << ", padding_idx=" << padding_;
    os << ")";
    return os.str();
  }

 private:
  std::optional<int64_t> padding() const {
    return padding_ >= 0 ? std::optional<int64_t>(padding_) : std::nullopt;
  }
  int64_t num_, dim_;
  int64_t padding_ = -1;
};

}  // namespace tapegrad::nn
