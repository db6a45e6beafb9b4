#pragma once
/// \file
/// Residual connections (He et al. 2016, "Deep Residual Learning" and "Identity Mappings in Deep
/// Residual Networks"): the gradient reaches early layers through the identity path, which is
/// what lets deep networks train without vanishing gradients.
///
///   Residual(body, shortcut)  y = body(x) + shortcut(x), shortcut = identity when null.
///   DenseResidual(body)       y = x + body(x), for MLPs (body must keep the shape).
///   BasicBlock(in, out, s)    ResNet v1 block (torchvision.models.resnet.BasicBlock):
///        y = relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))
///     conv1 3×3 stride s pad 1, conv2 3×3 pad 1, both without bias; shortcut = identity, or
///     when s ≠ 1 or in ≠ out a 1×1 conv (stride s, no bias) + BN named `downsample` as
///     torchvision's (children "0" and "1"), so a torchvision state dict maps name for name:
///     conv1.weight, bn1.{weight,bias,running_mean,running_var,num_batches_tracked}, conv2.*,
///     bn2.*, downsample.0.weight, downsample.1.*.
///   PreActBlock(in, out, s)   ResNet v2 block (pre-activation):
///        a = relu(bn1(x)); y = conv2(relu(bn2(conv1(a)))) + shortcut
///     shortcut = x, or, when s ≠ 1 or in ≠ out, `shortcut` = Sequential(1×1 conv stride s, no
///     bias) applied to a (as in the paper's reference code); no activation after the sum.
///
/// Shape errors name the block and the shapes involved.

#include <cstdint>
#include <memory>
#include <sstream>
#include <string>

#include "tapegrad/nn/batch_norm.hpp"
#include "tapegrad/nn/conv2d.hpp"
#include "tapegrad/nn/module.hpp"
#include "tapegrad/nn/sequential.hpp"
#include "tapegrad/ops/activation.hpp"
#include "tapegrad/ops/elementwise.hpp"

namespace tapegrad::nn {

namespace detail {
// a + b for a residual sum: the shapes must be equal (no silent broadcasting). The sum is
// written over a, the body's output, which the block alone holds (add_: when safe), unless a
// is the block's input itself (a body that returned its input).
// `who` names the block in errors; its name() is built only then (no allocation per step).
template <class T>
Var<T> residual_sum(const Module<T>& who, const char* what_a, const Var<T>& a, const char* what_b,
                    const Var<T>& b, const Var<T>& input) {
  if (!(a.shape() == b.shape()))
    tapegrad::detail::fail<ShapeError>(who.name(), ": ", what_a, " ", a.shape(), " and ", what_b,
                                       " ", b.shape(), " differ (input ", input.shape(), ")");
  return a.id() == input.id() ? a + b : add_(a, b);
}

template <class T>
void check_image_input(const Module<T>& who, const Shape& s, int64_t channels) {
  if (s.rank() != 4)
    tapegrad::detail::fail<ShapeError>(who.name(), ": input ", s, ": expected 4-D [N,C,H,W]");
  if (s[1] != channels)
    tapegrad::detail::fail<ShapeError>(who.name(), ": input ", s, " has ", s[1],
                                       " channels, expected ", channels);
}

inline void check_block_args(const char* kind, int64_t in, int64_t out, int64_t stride) {
  if (in < 1 || out < 1 || stride < 1)
    tapegrad::detail::fail<ValueError>(kind, "(", in, ", ", out, ", stride=", stride,
                                       "): channels and stride must be >= 1");
}
}  // namespace detail

/// y = body(x) + shortcut(x), shortcut = identity when null. body(x) and shortcut(x) must have the
/// same shape (ShapeError otherwise).
template <class T>
class Residual : public Module<T> {
 public:
  /// A shared pointer to a module.
  using Ptr = std::shared_ptr<Module<T>>;

  /// A residual connection around body; a non-null shortcut replaces the identity path. A null body
  /// throws ValueError.
  explicit Residual(Ptr body, Ptr shortcut = nullptr) {
    if (!body) tapegrad::detail::fail<ValueError>("Residual: the body is null");
    body_ = this->register_module("body", std::move(body));
    if (shortcut) shortcut_ = this->register_module("shortcut", std::move(shortcut));
  }

  Var<T> forward(const Var<T>& x) override {
    const Var<T> y = (*body_)(x);
    const Var<T> s = shortcut_ ? (*shortcut_)(x) : x;
    return detail::residual_sum<T>(*this, "body output", y,
                                   shortcut_ ? "shortcut output" : "identity shortcut", s, x);
  }
  std::string name() const override { return shortcut_ ? "Residual(shortcut)" : "Residual"; }

  /// The residual branch.
  const Ptr& body() const { return body_; }
  /// The shortcut, or null for the identity.
  const Ptr& shortcut() const { return shortcut_; }  // null: identity

 private:
  Ptr body_, shortcut_;
};

/// y = x + body(x), for MLPs: body must keep the shape (ShapeError otherwise).
template <class T>
class DenseResidual : public Module<T> {
 public:
  /// A shared pointer to a module.
  using Ptr = std::shared_ptr<Module<T>>;

  /// A residual connection around body; a null body throws ValueError.
  explicit DenseResidual(Ptr body) {
    if (!body) tapegrad::detail::fail<ValueError>("DenseResidual: the body is null");
    body_ = this->register_module("body", std::move(body));
  }

  Var<T> forward(const Var<T>& x) override {
    const Var<T> y = (*body_)(x);
    if (!(y.shape() == x.shape()))
      tapegrad::detail::fail<ShapeError>(name(), ": body (", body_->name(), ") maps ", x.shape(),
                                         " to ", y.shape(), "; x + body(x) needs the same shape");
    return y.id() == x.id() ? x + y : add_(y, x);  // on the body's output, see residual_sum
  }
  std::string name() const override { return "DenseResidual"; }
  /// The residual branch.
  const Ptr& body() const { return body_; }

 private:
  Ptr body_;
};

/// ResNet v1 block, torchvision's BasicBlock: y = relu(bn2(conv2(relu(bn1(conv1(x))))) +
/// shortcut(x)), [N, in, H, W] -> [N, out, H/s, W/s] (details in the file's description).
template <class T>
class BasicBlock : public Module<T> {
 public:
  /// in_channels -> out_channels with stride; a 1×1 conv + BN shortcut ("downsample") when stride ≠
  /// 1 or in ≠ out. Sizes below 1 throw ValueError.
  BasicBlock(int64_t in_channels, int64_t out_channels, int64_t stride = 1,
             Generator& gen = default_generator())
      : in_(in_channels), out_(out_channels), stride_(stride) {
    detail::check_block_args("BasicBlock", in_channels, out_channels, stride);
    // Registration order = torchvision's state-dict order.
    conv1 = this->register_module(
        "conv1", std::make_shared<Conv2D<T>>(in_, out_, 3, stride_, 1, 1, false, gen));
    bn1 = this->register_module("bn1", std::make_shared<BatchNorm2d<T>>(out_));
    conv2 = this->register_module("conv2",
                                  std::make_shared<Conv2D<T>>(out_, out_, 3, 1, 1, 1, false, gen));
    bn2 = this->register_module("bn2", std::make_shared<BatchNorm2d<T>>(out_));
    if (stride_ != 1 || in_ != out_) {
      auto ds = std::make_shared<Sequential<T>>();
      ds->push_back(std::make_shared<Conv2D<T>>(in_, out_, 1, stride_, 0, 1, false, gen));
      ds->push_back(std::make_shared<BatchNorm2d<T>>(out_));
      downsample = this->register_module("downsample", ds);
    }
  }

  ///@{
  /// The two 3×3 convolutions (no bias).
  std::shared_ptr<Conv2D<T>> conv1, conv2;
  ///@}
  ///@{
  /// The batch normalisations after them.
  std::shared_ptr<BatchNorm2d<T>> bn1, bn2;
  ///@}
  std::shared_ptr<Sequential<T>> downsample;  ///< null: identity shortcut

  Var<T> forward(const Var<T>& x) override {
    detail::check_image_input<T>(*this, x.shape(), in_);
    Var<T> y = bn1->forward_relu((*conv1)(x));  // relu(bn1(...)) as one op
    y = (*bn2)((*conv2)(y));
    const Var<T> s = downsample ? (*downsample)(x) : x;
    return relu_(detail::residual_sum<T>(
        *this, "body output", y, downsample ? "downsample output" : "identity shortcut", s, x));
  }

  std::string name() const override {
    std::ostringstream os;
    os << "BasicBlock(" << in_ << ", " << out_;
    if (stride_ != 1) os << ", stride=" << stride_;
    os << ")";
    return os.str();
  }

 private:
  int64_t in_, out_, stride_;
};

/// ResNet v2 (pre-activation) block: a = relu(bn1(x)); y = conv2(relu(bn2(conv1(a)))) + shortcut,
/// [N, in, H, W] -> [N, out, H/s, W/s].
template <class T>
class PreActBlock : public Module<T> {
 public:
  /// in_channels -> out_channels with stride; a 1×1 conv shortcut on a when stride ≠ 1 or in ≠ out.
  /// Sizes below 1 throw ValueError.
  PreActBlock(int64_t in_channels, int64_t out_channels, int64_t stride = 1,
              Generator& gen = default_generator())
      : in_(in_channels), out_(out_channels), stride_(stride) {
    detail::check_block_args("PreActBlock", in_channels, out_channels, stride);
    bn1 = this->register_module("bn1", std::make_shared<BatchNorm2d<T>>(in_));
    conv1 = this->register_module(
        "conv1", std::make_shared<Conv2D<T>>(in_, out_, 3, stride_, 1, 1, false, gen));
    bn2 = this->register_module("bn2", std::make_shared<BatchNorm2d<T>>(out_));
    conv2 = this->register_module("conv2",
                                  std::make_shared<Conv2D<T>>(out_, out_, 3, 1, 1, 1, false, gen));
    if (stride_ != 1 || in_ != out_) {
      auto sc = std::make_shared<Sequential<T>>();
      sc->push_back(std::make_shared<Conv2D<T>>(in_, out_, 1, stride_, 0, 1, false, gen));
      shortcut = this->register_module("shortcut", sc);
    }
  }

  ///@{
  /// The batch normalisations before each convolution.
  std::shared_ptr<BatchNorm2d<T>> bn1, bn2;
  ///@}
  ///@{
  /// The two 3×3 convolutions (no bias).
  std::shared_ptr<Conv2D<T>> conv1, conv2;
  ///@}
  std::shared_ptr<Sequential<T>> shortcut;  ///< null: identity

  Var<T> forward(const Var<T>& x) override {
    detail::check_image_input<T>(*this, x.shape(), in_);
    const Var<T> a = bn1->forward_relu(x);  // relu(bn1(x)) as one op
    const Var<T> s = shortcut ? (*shortcut)(a) : x;
    const Var<T> y = (*conv2)(bn2->forward_relu((*conv1)(a)));
    return detail::residual_sum<T>(*this, "body output", y,
                                   shortcut ? "shortcut output" : "identity shortcut", s, x);
  }

  std::string name() const override {
    std::ostringstream os;
    os << "PreActBlock(" << in_ << ", " << out_;
    if (stride_ != 1) os << ", stride=" << stride_;
    os << ")";
    return os.str();
  }

 private:
  int64_t in_, out_, stride_;
};

}  // namespace tapegrad::nn
