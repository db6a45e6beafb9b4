#pragma once
// Pooling and flattening layers, as torch.nn's (equations in ops/pool.hpp):
//   MaxPool2D(kernel, stride = kernel, padding = 0)   max over each window, padding = −inf
//   AvgPool2D(kernel, stride = kernel, padding = 0)   mean over kh·kw (padding counted)
//   GlobalAvgPool2D()                                  [N,C,H,W] -> [N,C], mean over H·W
//   Flatten(start_dim = 1, end_dim = −1)               merges dims start..end into one,
//                                                      [N,C,H,W] -> [N, C·H·W] by default
// Output sizes use floor. None has parameters. Flatten returns a view sharing x's storage.

#include <cstdint>
#include <optional>
#include <sstream>
#include <string>

#include "tapegrad/nn/module.hpp"
#include "tapegrad/ops/pool.hpp"

namespace tapegrad::nn {

namespace detail {
// Checks kernel/stride/padding at construction (ValueError), so a bad layer fails when built.
inline void check_pool_args(const std::string& layer, Size2 kernel, std::optional<Size2> stride,
                            Size2 padding) {
  const Size2 s = stride.value_or(kernel);
  if (kernel.h < 1 || kernel.w < 1 || s.h < 1 || s.w < 1)
    tapegrad::detail::fail<ValueError>(layer, ": kernel and stride must be >= 1");
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

template <class T>
class MaxPool2D : public Module<T> {
 public:
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

template <class T>
class AvgPool2D : public Module<T> {
 public:
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

template <class T>
class Flatten : public Module<T> {
 public:
  explicit Flatten(int start_dim = 1, int end_dim = -1) : start_(start_dim), end_(end_dim) {}

  Var<T> forward(const Var<T>& x) override {
    const Shape s = x.shape();
    const int r = s.rank();
    const int start = start_ < 0 ? start_ + r : start_, end = end_ < 0 ? end_ + r : end_;
    if (start < 0 || start >= r || end < 0 || end >= r || start > end)
      tapegrad::detail::fail<ShapeError>(name(), ": input ", s, ": dims ", start_, "..", end_,
                                         " out of range for rank ", r);
    Shape out;
    for (int d = 0; d < start; ++d) out.push_back(s[d]);
    int64_t merged = 1;
    for (int d = start; d <= end; ++d) merged *= s[d];
    out.push_back(merged);
    for (int d = end + 1; d < r; ++d) out.push_back(s[d]);
    // A view: same storage, new shape; the gradient is the output's, reshaped (same order).
    return x.tape().record_view("flatten", x.value().reshape(out), {x},
                                [](OpContext<T>& c) { c.add_grad(0, c.grad_out().array()); });
  }
  std::string name() const override {
    return "Flatten(start_dim=" + std::to_string(start_) + ", end_dim=" + std::to_string(end_) +
           ")";
  }

 private:
  int start_, end_;
};

}  // namespace tapegrad::nn
