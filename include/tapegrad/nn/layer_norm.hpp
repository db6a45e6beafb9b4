#pragma once
/// \file
/// LayerNorm: normalises each sample over its last D dims (normalized_shape), as
/// torch.nn.LayerNorm: y = (x − E[x]) / √(Var[x] + eps) · γ + β with the biased variance,
/// γ (weight, = 1) and β (bias, = 0) of shape normalized_shape when elementwise_affine.
/// The same in train and eval (no running statistics). Equations and backward: ops/norm.hpp.

#include <cstdint>
#include <initializer_list>
#include <sstream>
#include <string>
#include <vector>

#include "tapegrad/nn/module.hpp"
#include "tapegrad/ops/norm.hpp"

namespace tapegrad::nn {

/// Layer normalisation, torch.nn.LayerNorm: y = (x − E[x]) / √(Var[x] + eps) · γ + β over each
/// sample's last dims (normalized_shape); an input whose trailing dims differ throws ShapeError.
template <class T>
class LayerNorm : public Module<T> {
 public:
  /// Normalises over the trailing dims normalized_shape; γ and β of that shape when
  /// elementwise_affine. Throws ValueError if normalized_shape is empty or has a size <= 0, or
  /// eps is negative or not finite.
  explicit LayerNorm(std::vector<int64_t> normalized_shape, double eps = 1e-5,
                     bool elementwise_affine = true)
      : eps_(eps), affine_(elementwise_affine) {
    if (normalized_shape.empty())
      tapegrad::detail::fail<ValueError>("LayerNorm: normalized_shape must not be empty");
    if (normalized_shape.size() > static_cast<size_t>(Shape::max_rank))
      tapegrad::detail::fail<ValueError>("LayerNorm: normalized_shape of rank ",
                                         normalized_shape.size(), " above ", Shape::max_rank);
    for (int64_t d : normalized_shape)
      if (d <= 0)
        tapegrad::detail::fail<ValueError>(
            "LayerNorm: normalized_shape sizes must be positive, got ", d);
    shape_ = Shape{std::span<const int64_t>(normalized_shape)};
    tapegrad::detail::check_norm_eps("LayerNorm", eps);  // here, not only at the first forward
    if (affine_) {
      weight = this->register_parameter("weight", Tensor<T>::ones(shape_));
      bias = this->register_parameter("bias", Tensor<T>::zeros(shape_));
    }
  }
  /// Normalises over the last dim, of size normalized_size.
  explicit LayerNorm(int64_t normalized_size, double eps = 1e-5, bool elementwise_affine = true)
      : LayerNorm(std::vector<int64_t>{normalized_size}, eps, elementwise_affine) {}
  /// LayerNorm({4, 5}): without it a braced list would also match LayerNorm(size, eps).
  explicit LayerNorm(std::initializer_list<int64_t> normalized_shape, double eps = 1e-5,
                     bool elementwise_affine = true)
      : LayerNorm(std::vector<int64_t>(normalized_shape), eps, elementwise_affine) {}

  ///@{
  /// Undefined when elementwise_affine = false.
  /// γ (weight, initially 1) and β (bias, initially 0), of shape normalized_shape; defined when
  /// elementwise_affine.
  Parameter<T> weight, bias;
  ///@}

  Var<T> forward(const Var<T>& x) override {
    const Shape s = x.shape();  // a copy: recording may move the nodes
    const int k = shape_.rank();
    bool fits = s.rank() >= k;
    for (int i = 0; fits && i < k; ++i) fits = s[s.rank() - k + i] == shape_[i];
    if (!fits) {
      std::string star = "[*";
      for (int i = 0; i < k; ++i) star += "," + std::to_string(shape_[i]);
      tapegrad::detail::fail<ShapeError>(name(), ": expected input of shape ", star, "], got ", s);
    }
    Tape<T>& tape = x.tape();
    return layer_norm(x, shape_, affine_ ? tape.param(weight) : Var<T>(),
                      affine_ ? tape.param(bias) : Var<T>(), eps_);
  }

  std::string name() const override {
    std::ostringstream os;
    os << "LayerNorm(" << shape_;
    if (eps_ != 1e-5) os << ", eps=" << eps_;
    if (!affine_) os << ", elementwise_affine=false";
    os << ")";
    return os.str();
  }

  /// The trailing dims normalised over.
  const Shape& normalized_shape() const { return shape_; }
  /// The epsilon added to the variance.
  double eps() const { return eps_; }
  /// Whether γ and β are learned.
  bool elementwise_affine() const { return affine_; }

 private:
  Shape shape_;
  double eps_;
  bool affine_;
};

}  // namespace tapegrad::nn
