#pragma once
/// \file
/// Pooling and flattening layers, as torch.nn's (equations in ops/pool.hpp):
///   MaxPool2D(kernel, stride = kernel, padding = 0)   max over each window, padding = −inf
///   AvgPool2D(kernel, stride = kernel, padding = 0)   mean over kh·kw (padding counted)
///   GlobalAvgPool2D()                                  [N,C,H,W] -> [N,C], mean over H·W
///   Flatten(start_dim = 1, end_dim = −1)               merges dims start..end into one,
///                                                      [N,C,H,W] -> [N, C·H·W] by default
/// Output sizes use floor. None has parameters. Flatten returns a view sharing x's storage.

#include <cstdint>
#include <optional>
#include <sstream>
#include <string>

#include "tapegrad/nn/module.hpp"
#include "tapegrad/ops/pool.hpp"
#include "tapegrad/ops/shape.hpp"

namespace tapegrad::nn {

namespace detail {
// Checks kernel/stride/padding at construction (ValueError), so a bad layer fails when built.
inline void check_pool_args(const std::string& layer, Size2 kernel, std::optional<Size2> stride,
                            Size2 padding) {
  const Size2 s = stride.value_or(kernel);
  if (kernel.h < 1 || kernel.w < 1 || s.h < 1 || s.w < 1)
    tapegrad::detail::fail<ValueError>(layer, ": kernel and stride must be >= 1");
  if (!within_extent(kernel) || !within_extent(s) || !within_extent(padding))
    tapegrad::detail::fail<ValueError>(layer, ": kernel, stride and padding must be at most ",
                                       max_extent);
  if (padding.h < 0 || padding.w < 0 || 2 * padding.h > kernel.h || 2 * padding.w > kernel.w)
    tapegrad::detail::fail<ValueError>(layer, ": padding must be between 0 and half the kernel");
}
inline std::string pool_name(const char* kind, Size2 kernel, std::optional<Size2> stride,
                             Size2 padding) {
  std::ostringstream os;
  os << kind << "(kernel=" << kernel;
  if (stride && *stride != kernel) os << ", stride=" << *stride;
  if (padding != Size2(0)) os << ", padding=" << padding;
  os << ")";
  return os.str();
}
}  // namespace detail

/// 2-D max pooling, torch.nn.MaxPool2d: [N,C,H,W] -> [N,C,OH,OW], the max over each window (padding
/// counts as −inf).
template <class T>
class MaxPool2D : public Module<T> {
 public:
  /// Window kernel, stride (default: kernel) and padding; invalid sizes throw ValueError.
  explicit MaxPool2D(Size2 kernel, std::optional<Size2> stride = std::nullopt, Size2 padding = 0)
      : kernel_(kernel), stride_(stride), padding_(padding) {
    detail::check_pool_args(name(), kernel, stride, padding);
  }
  Var<T> forward(const Var<T>& x) override {
    try {
      return max_pool2d(x, kernel_, stride_, padding_);
    } catch (const ShapeError& e) {  // name the layer too
      tapegrad::detail::fail<ShapeError>(name(), ": ", e.what());
    }
  }
  std::string name() const override {
    return detail::pool_name("MaxPool2D", kernel_, stride_, padding_);
  }

 private:
  Size2 kernel_;
  std::optional<Size2> stride_;
  Size2 padding_;
};

/// 2-D average pooling, torch.nn.AvgPool2d: [N,C,H,W] -> [N,C,OH,OW], the mean over each kh·kw
/// window (padding counted).
template <class T>
class AvgPool2D : public Module<T> {
 public:
  /// Window kernel, stride (default: kernel) and padding; invalid sizes throw ValueError.
  explicit AvgPool2D(Size2 kernel, std::optional<Size2> stride = std::nullopt, Size2 padding = 0)
      : kernel_(kernel), stride_(stride), padding_(padding) {
    detail::check_pool_args(name(), kernel, stride, padding);
  }
  Var<T> forward(const Var<T>& x) override {
    try {
      return avg_pool2d(x, kernel_, stride_, padding_);
    } catch (const ShapeError& e) {
      tapegrad::detail::fail<ShapeError>(name(), ": ", e.what());
    }
  }
  std::string name() const override {
    return detail::pool_name("AvgPool2D", kernel_, stride_, padding_);
  }

 private:
  Size2 kernel_;
  std::optional<Size2> stride_;
  Size2 padding_;
};

/// Global average pooling: [N,C,H,W] -> [N,C], the mean over H·W.
template <class T>
class GlobalAvgPool2D : public Module<T> {
 public:
  Var<T> forward(const Var<T>& x) override {
    try {
      return global_avg_pool2d(x);
    } catch (const ShapeError& e) {
      tapegrad::detail::fail<ShapeError>(name(), ": ", e.what());
    }
  }
  std::string name() const override { return "GlobalAvgPool2D"; }
};

/// Flatten, torch.nn.Flatten: merges dims start_dim..end_dim into one ([N,C,H,W] -> [N, C·H·W] by
/// default); the result shares x's storage.
template <class T>
class Flatten : public Module<T> {
 public:
  /// Merges dims start_dim..end_dim (negative counts from the end).
  explicit Flatten(int start_dim = 1, int end_dim = -1) : start_(start_dim), end_(end_dim) {}

  /// torch.flatten(x, start_dim, end_dim) from ops/shape.hpp: a view, the gradient passes through.
  Var<T> forward(const Var<T>& x) override {
    try {
      return flatten(x, start_, end_);
    } catch (const ShapeError& e) {
      tapegrad::detail::fail<ShapeError>(name(), ": ", e.what());
    }
  }
  std::string name() const override {
    return "Flatten(start_dim=" + std::to_string(start_) + ", end_dim=" + std::to_string(end_) +
           ")";
  }

 private:
  int start_, end_;
};

}  // namespace tapegrad::nn
