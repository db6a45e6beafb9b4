#pragma once
/// \file
/// Shape: the sizes of a tensor's dimensions, rank 0 (a scalar) to 6, row-major.

#include <array>
#include <cstdint>
#include <initializer_list>
#include <ostream>
#include <span>
#include <string>

#include "tapegrad/error.hpp"

namespace tapegrad {

/// The sizes of a tensor's dimensions, rank 0 (a scalar) to 6. Sizes must be non-negative: a
/// negative size, a rank above 6 or more elements than int64_t counts throws ShapeError.
class Shape {
 public:
  /// The largest rank a Shape holds.
  static constexpr int max_rank = 6;

  Shape() = default;  ///< rank 0: a scalar with one element
  /// The given sizes; throws ShapeError for a negative size, more than max_rank dims or more
  /// elements than int64_t counts.
  Shape(std::initializer_list<int64_t> dims) { assign(std::span(dims.begin(), dims.size())); }
  /// The given sizes; throws ShapeError for a negative size, more than max_rank dims or more
  /// elements than int64_t counts.
  explicit Shape(std::span<const int64_t> dims) { assign(dims); }

  /// Number of dimensions.
  int rank() const { return rank_; }
  ///@{
  /// Size of dimension i (0 <= i < rank(), unchecked).
  int64_t operator[](int i) const { return dims_[static_cast<size_t>(i)]; }
  int64_t& operator[](int i) { return dims_[static_cast<size_t>(i)]; }
  ///@}
  /// Dimension counted from the end for negative i, as in PyTorch: dim(-1) is the last.
  int64_t dim(int i) const { return (*this)[normalize(i)]; }
  /// The index of dimension i in [0, rank()), counting from the end for negative i; throws
  /// ShapeError if out of range.
  int normalize(int i) const {
    if (i < -rank_ || i >= rank_)
      detail::fail<ShapeError>("dim ", i, " out of range for shape ", str());
    return i < 0 ? i + rank_ : i;
  }

  /// Number of elements: the product of the sizes (1 for rank 0). A Shape built from sizes
  /// (constructors, push_back) checks that it fits in int64_t; after operator[] changed a size,
  /// checked_numel() says.
  int64_t numel() const {
    int64_t n = 1;
    for (int i = 0; i < rank_; ++i) n *= dims_[i];
    return n;
  }
  /// numel(), or ShapeError when the product of the sizes does not fit in int64_t (a size of 0
  /// makes it 0 whatever the others are).
  int64_t checked_numel() const {
    int64_t n = 1;
    for (int i = 0; i < rank_; ++i)
      if (dims_[i] == 0) return 0;
    for (int i = 0; i < rank_; ++i)
      if (__builtin_mul_overflow(n, dims_[i], &n))
        detail::fail<ShapeError>("Shape ", str(), ": more elements than int64_t counts");
    return n;
  }
  /// The sizes as a span of rank() elements.
  std::span<const int64_t> dims() const { return {dims_.data(), static_cast<size_t>(rank_)}; }

  /// Appends a dimension of size d; throws ShapeError at max_rank, for a negative size or when
  /// the elements no longer fit in int64_t.
  void push_back(int64_t d) {
    if (rank_ == max_rank) detail::fail<ShapeError>("Shape: rank above ", max_rank);
    check_dim(d);
    Shape longer = *this;
    longer.dims_[longer.rank_++] = d;
    longer.checked_numel();
    *this = longer;
  }

  /// The sizes as text, e.g. "[2,3]".
  std::string str() const {
    std::string s = "[";
    for (int i = 0; i < rank_; ++i) {
      if (i) s += ',';
      s += std::to_string(dims_[i]);
    }
    s += ']';
    return s;
  }

  /// Same rank and sizes.
  friend bool operator==(const Shape& a, const Shape& b) {
    if (a.rank_ != b.rank_) return false;
    for (int i = 0; i < a.rank_; ++i)
      if (a.dims_[i] != b.dims_[i]) return false;
    return true;
  }
  /// Writes str().
  friend std::ostream& operator<<(std::ostream& os, const Shape& s) { return os << s.str(); }

 private:
  void assign(std::span<const int64_t> dims) {
    if (dims.size() > max_rank)
      detail::fail<ShapeError>("Shape: rank ", dims.size(), " above the maximum ", max_rank);
    rank_ = static_cast<int>(dims.size());
    for (int i = 0; i < rank_; ++i) {
      check_dim(dims[i]);
      dims_[i] = dims[i];
    }
    checked_numel();
  }
  static void check_dim(int64_t d) {
    if (d < 0) detail::fail<ShapeError>("Shape: negative size ", d);
  }

  std::array<int64_t, max_rank> dims_{};
  int rank_ = 0;
};

}  // namespace tapegrad
