#pragma once
/// \file
/// Activation layers, as torch.nn's: each wraps the function of the same name in
/// ops/activation.hpp (equations and stability notes there) and has no parameters.
///   Sigmoid  1/(1 + e^−x)          Tanh     tanh x
///   ReLU     max(x, 0)             LeakyReLU(slope = 0.01)  x if x > 0 else slope·x
///   GELU     x·Φ(x) (or the tanh approximation)
///   Softmax(dim)  e^{x_i} / Σ_j e^{x_j} along dim (no default: PyTorch's implicit dim is
///                 deprecated)
///
/// Sigmoid, Tanh and ReLU work in place (as PyTorch's nn.ReLU(inplace=True)) when they safely
/// can: a Sequential hands them its previous layer's output (which nothing else reads later)
/// and no backward needs it, so a layer and its activation keep one
/// buffer between them. Any other input (a Sequential's own input, a residual block's x that
/// the skip connection adds later) is left intact. inplace = false turns it off; the functions
/// relu_, sigmoid_, tanh_ write over any input the tape allows (ops/activation.hpp).

#include <sstream>
#include <string>

#include "tapegrad/nn/module.hpp"
#include "tapegrad/ops/activation.hpp"

namespace tapegrad::nn {

/// Sigmoid layer: y = 1/(1 + e^−x), elementwise, any shape; no parameters.
template <class T>
class Sigmoid : public Module<T> {
 public:
  /// inplace: may write over its input when that is safe (see the file's description).
  explicit Sigmoid(bool inplace = true) : inplace_(inplace) {}
  Var<T> forward(const Var<T>& x) override {
    return inplace_ && x.node().handed_on ? sigmoid_(x) : sigmoid(x);
  }
  std::string name() const override { return "Sigmoid"; }
  /// Whether the layer may work in place.
  bool inplace() const { return inplace_; }
  bool writes_over_input() const override { return inplace_; }

 private:
  bool inplace_;
};

/// Tanh layer: y = tanh x, elementwise, any shape; no parameters.
template <class T>
class Tanh : public Module<T> {
 public:
  /// inplace: may write over its input when that is safe (see the file's description).
  explicit Tanh(bool inplace = true) : inplace_(inplace) {}
  Var<T> forward(const Var<T>& x) override {
    return inplace_ && x.node().handed_on ? tanh_(x) : tapegrad::tanh(x);
  }
  std::string name() const override { return "Tanh"; }
  /// Whether the layer may work in place.
  bool inplace() const { return inplace_; }
  bool writes_over_input() const override { return inplace_; }

 private:
  bool inplace_;
};

/// ReLU layer: y = max(x, 0), elementwise, any shape; no parameters.
template <class T>
class ReLU : public Module<T> {
 public:
  /// inplace: may write over its input when that is safe (see the file's description).
  explicit ReLU(bool inplace = true) : inplace_(inplace) {}
  Var<T> forward(const Var<T>& x) override {
    return inplace_ && x.node().handed_on ? relu_(x) : relu(x);
  }
  std::string name() const override { return "ReLU"; }
  /// Whether the layer may work in place.
  bool inplace() const { return inplace_; }
  bool writes_over_input() const override { return inplace_; }

 private:
  bool inplace_;
};

/// LeakyReLU layer: y = x if x > 0 else negative_slope·x, elementwise, any shape; no parameters.
template <class T>
class LeakyReLU : public Module<T> {
 public:
  /// A leaky ReLU with the given slope for negative inputs.
  explicit LeakyReLU(double negative_slope = 0.01) : slope_(negative_slope) {}
  Var<T> forward(const Var<T>& x) override { return leaky_relu(x, slope_); }
  std::string name() const override {
    std::ostringstream os;
    os << "LeakyReLU(negative_slope=" << slope_ << ")";
    return os.str();
  }
  /// The slope for negative inputs.
  double negative_slope() const { return slope_; }

 private:
  double slope_;
};

/// GELU layer: y = x·Φ(x) (or its tanh approximation), elementwise, any shape; no parameters.
template <class T>
class GELU : public Module<T> {
 public:
  /// GELU, exact (none) or with the tanh approximation.
  explicit GELU(GeluApproximation approximate = GeluApproximation::none)
      : approximate_(approximate) {}
  Var<T> forward(const Var<T>& x) override { return gelu(x, approximate_); }
  std::string name() const override {
    return approximate_ == GeluApproximation::tanh ? "GELU(approximate='tanh')" : "GELU";
  }

 private:
  GeluApproximation approximate_;
};

/// Softmax layer: y_i = e^{x_i} / Σ_j e^{x_j} along dim, any shape; no parameters.
template <class T>
class Softmax : public Module<T> {
 public:
  /// Softmax along dim (negative counts from the end); a dim out of range throws ShapeError in
  /// forward.
  explicit Softmax(int dim) : dim_(dim) {}
  Var<T> forward(const Var<T>& x) override {
    try {
      return softmax(x, dim_);
    } catch (const ShapeError& e) {  // name the layer too
      tapegrad::detail::fail<ShapeError>(name(), ": ", e.what());
    }
  }
  std::string name() const override { return "Softmax(dim=" + std::to_string(dim_) + ")"; }
  /// The dimension softmax runs along.
  int dim() const { return dim_; }

 private:
  int dim_;
};

}  // namespace tapegrad::nn
