#pragma once
/// \file
/// Positional encodings: what tells a Transformer where in the sequence a token sits. Both take
/// x [T, N, d_model] (batch_first: [N, T, d_model]) and return x plus the encoding of positions
/// 0..T-1, broadcast over the batch.
///
/// SinusoidalPositionalEncoding(d_model, dropout = 0.1, max_len = 5000): the fixed encoding of
///   Vaswani et al. 2017, as PyTorch's Transformer tutorial writes it (buffer "pe" [max_len, 1,
///   d_model], child "dropout"):
///     pe[t, 0, 2i]   = sin(t / 10000^(2i / d_model))
///     pe[t, 0, 2i+1] = cos(t / 10000^(2i / d_model))
///   forward: dropout(x + pe[:T]).
/// LearnedPositionalEncoding(max_len, d_model): a trained table, parameter "weight"
///   [max_len, d_model] ~ N(0, 0.02^2) (GPT-2's initialisation); forward: x + weight[:T].

#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <sstream>
#include <string>

#include "tapegrad/nn/dropout.hpp"
#include "tapegrad/nn/init.hpp"
#include "tapegrad/nn/module.hpp"
#include "tapegrad/ops/elementwise.hpp"
#include "tapegrad/ops/shape.hpp"

namespace tapegrad::nn {

namespace detail {
// Checks x against [T, N, d] (or [N, T, d]) and returns T. The module's name is built only for
// an error message (building it costs allocations, every step).
template <class T>
int64_t positions_of(const Module<T>& who, const Shape& x, int64_t d_model, int64_t max_len,
                     bool batch_first) {
  if (x.rank() != 3 || x[2] != d_model)
    tapegrad::detail::fail<ShapeError>(who.name(), ": input ", x, ": expected ",
                                       batch_first ? "[N, T, " : "[T, N, ", d_model, "]");
  const int64_t t = batch_first ? x[1] : x[0];
  if (t > max_len)
    tapegrad::detail::fail<ShapeError>(who.name(), ": input ", x, " has ", t,
                                       " positions, max_len is ", max_len);
  return t;
}
}  // namespace detail

/// The fixed sinusoidal encoding of Vaswani et al. 2017: x [T, N, d_model] -> dropout(x + pe[:T])
/// (equations in the file's description). T above max_len or a last dim other than d_model throws
/// ShapeError.
template <class T>
class SinusoidalPositionalEncoding : public Module<T> {
 public:
  /// The table pe [max_len, 1, d_model] (buffer "pe") and the dropout layer (child "dropout").
  explicit SinusoidalPositionalEncoding(int64_t d_model, double dropout = 0.1,
                                        int64_t max_len = 5000, bool batch_first = false,
                                        Generator& gen = default_generator())
      : d_(d_model), max_len_(max_len), batch_first_(batch_first) {
    if (d_model < 1 || max_len < 0)
      tapegrad::detail::fail<ValueError>("SinusoidalPositionalEncoding(", d_model,
                                         "): need d_model >= 1 and max_len >= 0");
    Tensor<T> pe({max_len, 1, d_model});
    for (int64_t t = 0; t < max_len; ++t)
      for (int64_t i = 0; i < d_model; ++i) {
        // 10000^(-2i'/d) for the pair i' = i / 2, computed as PyTorch's div_term.
        const double div = std::exp(double(i / 2 * 2) * (-std::log(10000.0) / double(d_model)));
        pe[t * d_model + i] =
            static_cast<T>(i % 2 == 0 ? std::sin(double(t) * div) : std::cos(double(t) * div));
      }
    pe_ = this->register_buffer("pe", pe);
    dropout_ = this->register_module("dropout", std::make_shared<Dropout<T>>(dropout, gen));
  }

  Var<T> forward(const Var<T>& x) override {
    const int64_t t = detail::positions_of(*this, x.shape(), d_, max_len_, batch_first_);
    // pe[:T] copied into a buffer of this module (the copy, T x d values, keeps up with a loaded
    // checkpoint; the buffer is reused from call to call).
    window_.resize(batch_first_ ? Shape{1, t, d_} : Shape{t, 1, d_});
    if (t > 0) std::memcpy(window_.data(), pe_.data(), sizeof(T) * static_cast<size_t>(t * d_));
    return (*dropout_)(x + x.tape().constant(window_));
  }
  std::string name() const override {
    std::ostringstream os;
    os << "SinusoidalPositionalEncoding(" << d_ << ", dropout=" << dropout_->p() << ")";
    return os.str();
  }
  /// The table pe, [max_len, 1, d_model].
  const Tensor<T>& pe() const { return pe_; }

 private:
  int64_t d_, max_len_;
  bool batch_first_;
  Tensor<T> pe_, window_;
  std::shared_ptr<Dropout<T>> dropout_;
};

/// A learned position table: x [T, N, d_model] (batch_first: [N, T, d_model]) -> x + weight[:T]. T
/// above max_len or a last dim other than d_model throws ShapeError.
template <class T>
class LearnedPositionalEncoding : public Module<T> {
 public:
  /// weight [max_len, d_model] ~ N(0, 0.02²) from gen.
  LearnedPositionalEncoding(int64_t max_len, int64_t d_model, bool batch_first = false,
                            Generator& gen = default_generator())
      : d_(d_model), max_len_(max_len), batch_first_(batch_first) {
    if (d_model < 1 || max_len < 1)
      tapegrad::detail::fail<ValueError>("LearnedPositionalEncoding(", max_len, ", ", d_model,
                                         "): need max_len >= 1 and d_model >= 1");
    weight = this->register_parameter("weight", Tensor<T>({max_len, d_model}));
    init::normal_(weight.value(), 0.0, 0.02, gen);
  }

  Parameter<T> weight;  ///< [max_len, d_model]

  Var<T> forward(const Var<T>& x) override {
    const int64_t t = detail::positions_of(*this, x.shape(), d_, max_len_, batch_first_);
    const Var<T> rows =
        t == max_len_ ? x.tape().param(weight) : slice(x.tape().param(weight), 0, 0, t);
    return x + reshape(rows, batch_first_ ? Shape{1, t, d_} : Shape{t, 1, d_});
  }
  std::string name() const override {
    std::ostringstream os;
    os << "LearnedPositionalEncoding(" << max_len_ << ", " << d_ << ")";
    return os.str();
  }

 private:
  int64_t d_, max_len_;
  bool batch_first_;
};

}  // namespace tapegrad::nn
