#pragma once
/// \file
/// Conv2D: 2-D convolution layer over NCHW images, torch.nn.Conv2d (groups = 1, zero padding):
///   y = conv2d(x, W, b, stride, padding, dilation)   (cross-correlation, see ops/conv.hpp)
///   x [N, in_channels, H, W] -> y [N, out_channels, OH, OW],
///   OH = floor((H + 2·padding − dilation·(kernel − 1) − 1) / stride) + 1,
///   W [out_channels, in_channels, kh, kw], b [out_channels].
/// Kernel, stride, padding and dilation are Size2: an int for square, {h, w} for rectangular.
/// Default initialisation is PyTorch's (torch/csrc/api/src/nn/modules/conv.cpp):
///   W ~ kaiming_uniform_(a = √5) = U(±1/√fan_in),  b ~ U(±1/√fan_in),  fan_in = in·kh·kw,
/// drawn from the Generator passed in, or nn::default_generator() (seed 0; see init.hpp).

#include <cmath>
#include <cstdint>
#include <sstream>
#include <string>

#include "tapegrad/nn/init.hpp"
#include "tapegrad/nn/module.hpp"
#include "tapegrad/ops/conv.hpp"

namespace tapegrad::nn {

using tapegrad::Size2;

/// 2-D convolution layer, torch.nn.Conv2d (groups = 1, zero padding): x [N, in_channels, H, W] -> y
/// [N, out_channels, OH, OW] (equation in the file's description); an input of another rank or
/// channel count throws ShapeError.
template <class T>
class Conv2D : public Module<T> {
 public:
  /// Weights [out_channels, in_channels, kh, kw] and bias [out_channels] initialised as PyTorch's
  /// from gen; sizes below 1 (padding below 0) or above max_extent throw ValueError.
  Conv2D(int64_t in_channels, int64_t out_channels, Size2 kernel, Size2 stride = 1,
         Size2 padding = 0, Size2 dilation = 1, bool bias = true,
         Generator& gen = default_generator())
      : in_(in_channels),
        out_(out_channels),
        kernel_(kernel),
        stride_(stride),
        padding_(padding),
        dilation_(dilation),
        has_bias_(bias) {
    if (in_ < 1 || out_ < 1 || kernel.h < 1 || kernel.w < 1 || stride.h < 1 || stride.w < 1 ||
        dilation.h < 1 || dilation.w < 1 || padding.h < 0 || padding.w < 0)
      tapegrad::detail::fail<ValueError>(name(),
                                         ": channels, kernel, stride and dilation must be >= 1, "
                                         "padding >= 0");
    if (!within_extent(kernel) || !within_extent(stride) || !within_extent(padding) ||
        !within_extent(dilation))
      tapegrad::detail::fail<ValueError>(
          name(), ": kernel, stride, padding and dilation must be at most ", max_extent);
    weight = this->register_parameter("weight", Tensor<T>({out_, in_, kernel.h, kernel.w}));
    init::kaiming_uniform_(weight.value(), std::sqrt(5.0), "fan_in", "leaky_relu", gen);
    if (has_bias_) {
      const double bound = 1.0 / std::sqrt(double(init::fan_in(weight.shape())));
      this->bias = this->register_parameter("bias", Tensor<T>({out_}));
      init::uniform_(this->bias.value(), -bound, bound, gen);
    }
  }

  Parameter<T> weight;  ///< [out_channels, in_channels, kh, kw]
  Parameter<T> bias;    ///< [out_channels]; undefined when bias = false

  Var<T> forward(const Var<T>& x) override {
    const Shape s = x.shape();
    if (s.rank() != 4)
      tapegrad::detail::fail<ShapeError>(name(), ": input ", s, ": expected 4-D [N,C,H,W]");
    if (s[1] != in_)
      tapegrad::detail::fail<ShapeError>(name(), ": input ", s, ": expected ", in_,
                                         " channels, got ", s[1]);
    if (!within_extent({s[2], s[3]}))
      tapegrad::detail::fail<ShapeError>(name(), ": input ", s,
                                         ": height and width must be at most ", max_extent);
    const int64_t ekh = dilation_.h * (kernel_.h - 1) + 1, ekw = dilation_.w * (kernel_.w - 1) + 1;
    if (ekh > s[2] + 2 * padding_.h || ekw > s[3] + 2 * padding_.w)
      tapegrad::detail::fail<ShapeError>(name(), ": input ", s, ": kernel ", ekh, "x", ekw,
                                         " is larger than the ", s[2] + 2 * padding_.h, "x",
                                         s[3] + 2 * padding_.w, " padded input");
    Tape<T>& tape = x.tape();
    const Var<T> b = has_bias_ ? tape.param(bias) : Var<T>();
    return conv2d(x, tape.param(weight), b, stride_, padding_, dilation_);
  }

  /// "Conv2D(1, 16, kernel=3, padding=1)": stride, padding, dilation and bias when not default.
  std::string name() const override {
    std::ostringstream os;
    os << "Conv2D(" << in_ << ", " << out_ << ", kernel=" << kernel_;
    if (stride_ != Size2(1)) os << ", stride=" << stride_;
    if (padding_ != Size2(0)) os << ", padding=" << padding_;
    if (dilation_ != Size2(1)) os << ", dilation=" << dilation_;
    if (!has_bias_) os << ", bias=false";
    os << ")";
    return os.str();
  }

  /// Input channels.
  int64_t in_channels() const { return in_; }
  /// Output channels.
  int64_t out_channels() const { return out_; }
  /// Kernel size (kh, kw).
  Size2 kernel_size() const { return kernel_; }
  /// Stride.
  Size2 stride() const { return stride_; }
  /// Zero padding on each side.
  Size2 padding() const { return padding_; }
  /// Dilation of the kernel.
  Size2 dilation() const { return dilation_; }

 private:
  int64_t in_, out_;
  Size2 kernel_, stride_, padding_, dilation_;
  bool has_bias_;
};

}  // namespace tapegrad::nn
