#pragma once
/// \file
/// Dense: a fully connected layer, torch.nn.Linear under Keras' name:
///   y = x Wᵀ + b,   x [*, in_features] -> y [*, out_features],   W [out, in], b [out]
/// computed by tapegrad::linear (one GEMM; ops/linalg.hpp).
/// Default initialisation is PyTorch's (torch/csrc/api/src/nn/modules/linear.cpp):
///   W ~ kaiming_uniform_(a = √5) = U(±1/√in_features),   b ~ U(±1/√in_features),
/// drawn from the Generator passed in, or nn::default_generator() (seed 0; see init.hpp).
/// Re-initialise with nn::init on the public `weight` and `bias` Parameters.

#include <cmath>
#include <cstdint>
#include <sstream>
#include <string>

#include "tapegrad/nn/init.hpp"
#include "tapegrad/nn/module.hpp"
#include "tapegrad/ops/linalg.hpp"

namespace tapegrad::nn {

/// Fully connected layer, torch.nn.Linear: y = x Wᵀ + b, x [*, in_features] -> y [*, out_features];
/// an input whose last dim is not in_features throws ShapeError.
template <class T>
class Dense : public Module<T> {
 public:
  /// W [out_features, in_features] and, if bias, b [out_features], initialised as PyTorch's from
  /// gen; negative sizes throw ValueError.
  Dense(int64_t in_features, int64_t out_features, bool bias = true,
        Generator& gen = default_generator())
      : in_(in_features), out_(out_features), has_bias_(bias) {
    if (in_features < 0 || out_features < 0)
      tapegrad::detail::fail<ValueError>("Dense(", in_features, ", ", out_features,
                                         "): sizes must be >= 0");
    weight = this->register_parameter("weight", Tensor<T>({out_, in_}));
    init::kaiming_uniform_(weight.value(), std::sqrt(5.0), "fan_in", "leaky_relu", gen);
    if (has_bias_) {
      const double bound = in_ > 0 ? 1.0 / std::sqrt(double(in_)) : 0.0;
      this->bias = this->register_parameter("bias", Tensor<T>({out_}));
      init::uniform_(this->bias.value(), -bound, bound, gen);
    }
  }

  Parameter<T> weight;  ///< [out_features, in_features]
  Parameter<T> bias;    ///< [out_features]; undefined when bias = false

  /// Size of the input's last dimension.
  int64_t in_features() const { return in_; }
  /// Size of the output's last dimension.
  int64_t out_features() const { return out_; }

  Var<T> forward(const Var<T>& x) override {
    if (x.rank() < 1 || x.size(-1) != in_)
      tapegrad::detail::fail<ShapeError>(name(), ": input ", x.shape(), ": expected ", in_,
                                         " features");
    Tape<T>& tape = x.tape();
    return has_bias_ ? linear(x, tape.param(weight), tape.param(bias))
                     : linear(x, tape.param(weight));
  }

  std::string name() const override {
    std::ostringstream os;
    os << "Dense(" << in_ << ", " << out_ << (has_bias_ ? "" : ", bias=false") << ")";
    return os.str();
  }

 private:
  int64_t in_, out_;
  bool has_bias_;
};

}  // namespace tapegrad::nn
