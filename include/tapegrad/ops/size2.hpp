#pragma once
/// \file
/// Size2: a (height, width) pair for kernel sizes, strides, paddings and dilations of 2-D ops.
/// It converts from one integer, so `3` means 3x3 as in PyTorch's `kernel_size=3`, and `{3, 5}`
/// is a rectangular 3 (rows) x 5 (columns).

#include <cstdint>
#include <ostream>

namespace tapegrad {

/// A height and width (kernel, stride, padding, dilation): an int for both, or {h, w}.
struct Size2 {
  ///@{
  /// Height and width.
  int64_t h = 0, w = 0;
  ///@}
  constexpr Size2() = default;
  /// both by both (implicit, so that an int is a square size).
  constexpr Size2(int64_t both) : h(both), w(both) {}  // NOLINT: implicit on purpose
  /// h_ by w_.
  constexpr Size2(int64_t h_, int64_t w_) : h(h_), w(w_) {}
  /// Equal when both sizes are.
  friend constexpr bool operator==(const Size2&, const Size2&) = default;
  /// "3" when square, "(3, 5)" otherwise, as PyTorch prints kernel sizes.
  friend std::ostream& operator<<(std::ostream& os, const Size2& s) {
    if (s.h == s.w) return os << s.h;
    return os << '(' << s.h << ", " << s.w << ')';
  }
};

/// The largest kernel, stride, padding, dilation and image height or width that the convolution
/// and pooling ops take: 2^31, far above any image, so that their index arithmetic (e.g.
/// dilation * (kernel - 1) + 1, or height + 2 * padding) cannot overflow int64_t.
inline constexpr int64_t max_extent = int64_t{1} << 31;

/// Whether both sizes are at most max_extent.
constexpr bool within_extent(Size2 s) { return s.h <= max_extent && s.w <= max_extent; }

}  // namespace tapegrad
