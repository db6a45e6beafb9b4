#pragma once
/// \file
/// Tensor<T>: a contiguous row-major array of float or double with a Shape. Tensor<int64_t>
/// holds integers (optimizer step counts for checkpoints, token indices for embedding) and
/// Tensor<bool> boolean masks (attention): both have the storage and shape functions, no
/// arithmetic.
/// Copies share storage (like torch.Tensor); clone() copies the data. Compute goes through
/// Eigen maps of the storage (matrix(), array()), so kernels are Eigen expressions or GEMMs.

#include <Eigen/Core>
#include <algorithm>
#include <array>
#include <cmath>
#include <cstddef>
#include <cstring>
#include <initializer_list>
#include <iomanip>
#include <limits>
#include <memory>
#include <new>
#include <ostream>
#include <span>
#include <type_traits>
#include <vector>

#include "tapegrad/error.hpp"
#include "tapegrad/random.hpp"
#include "tapegrad/shape.hpp"

namespace tapegrad {

/// A contiguous row-major array of T with a Shape, 64-byte aligned. Copies share storage (as
/// torch.Tensor); clone() copies the data. Shape mismatches throw ShapeError, invalid arguments
/// ValueError (error.hpp).
template <class T>
class Tensor {
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, double> ||
                    std::is_same_v<T, int64_t> || std::is_same_v<T, bool>,
                "tapegrad::Tensor<T>: T must be float or double (int64_t for indices and integer "
                "state, bool for masks)");

 public:
  /// The element type.
  using Scalar = T;
  /// 64-byte alignment: AVX-512 loads, and Eigen maps may assume Aligned64.
  static constexpr size_t alignment = 64;
  /// A writable Eigen row-major matrix view of the storage (matrix()).
  using MatrixMap = Eigen::Map<Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>,
                               Eigen::Aligned64>;
  /// A read-only Eigen row-major matrix view of the storage (matrix() const).
  using ConstMatrixMap =
      Eigen::Map<const Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>,
                 Eigen::Aligned64>;
  /// A writable flat Eigen array view of the storage (array()).
  using ArrayMap = Eigen::Map<Eigen::Array<T, Eigen::Dynamic, 1>, Eigen::Aligned64>;
  /// A read-only flat Eigen array view of the storage (array() const).
  using ConstArrayMap = Eigen::Map<const Eigen::Array<T, Eigen::Dynamic, 1>, Eigen::Aligned64>;

  Tensor() : shape_{0} {}  ///< an empty tensor of shape [0]; allocates nothing

  /// Uninitialised storage of the given shape; throws ShapeError for more elements than memory
  /// can address, OutOfMemoryError for more than the system gives.
  explicit Tensor(const Shape& shape) : shape_(shape) { allocate(shape); }

  // ---- creation ----
  /// Uninitialised storage of shape s.
  static Tensor empty(const Shape& s) { return Tensor(s); }
  /// All zeros.
  static Tensor zeros(const Shape& s) { return full(s, T(0)); }
  /// All ones.
  static Tensor ones(const Shape& s) { return full(s, T(1)); }
  /// Every element v.
  static Tensor full(const Shape& s, T v) {
    Tensor t(s);
    t.fill_(v);
    return t;
  }
  /// A rank-0 tensor holding v.
  static Tensor scalar(T v) { return full(Shape{}, v); }
  ///@{
  /// From values in row-major order: with the shape s (throws ShapeError if values.size() is not
  /// s.numel()), or as a rank-1 tensor.
  static Tensor from(const std::vector<T>& values, const Shape& s) {
    if (static_cast<int64_t>(values.size()) != s.numel())
      detail::fail<ShapeError>("Tensor::from: ", values.size(), " values for shape ", s, " (",
                               s.numel(), " elements)");
    Tensor t(s);
    std::copy(values.begin(), values.end(), t.data());
    return t;
  }
  static Tensor from(const std::vector<T>& values) {
    return from(values, Shape{static_cast<int64_t>(values.size())});
  }
  ///@}
  /// One-level initializer list (a vector); the List types nest as torch::tensor({{1, 2}, {3, 4}}).
  using List1 = std::initializer_list<T>;
  /// Two-level initializer list (a matrix).
  using List2 = std::initializer_list<List1>;
  /// Three-level initializer list.
  using List3 = std::initializer_list<List2>;
  /// Four-level initializer list.
  using List4 = std::initializer_list<List3>;
  ///@{
  /// From nested initializer lists, as torch::tensor({{1, 2}, {3, 4}}); throws ShapeError if the
  /// lists are ragged.
  static Tensor from(List1 l) { return from(std::vector<T>(l)); }
  static Tensor from(List2 l) { return from_nested(l); }
  static Tensor from(List3 l) { return from_nested(l); }
  static Tensor from(List4 l) { return from_nested(l); }
  ///@}

  ///@{
  /// 0, 1, ..., n-1 and start, start+step, ... < stop, as torch.arange; throws ValueError for a
  /// step of 0, a value that is not finite, or 2^62 elements or more.
  static Tensor arange(int64_t n) { return arange(T(0), T(n), T(1)); }
  static Tensor arange(T start, T stop, T step = T(1)) {
    if (step == T(0) || !std::isfinite(start) || !std::isfinite(stop) || !std::isfinite(step))
      detail::fail<ValueError>("arange: invalid range (", start, ", ", stop, ", ", step, ")");
    const double n = std::ceil((double(stop) - double(start)) / double(step));
    // Checked in double: a count past int64_t's range cannot be converted.
    if (!(n < 0x1p62))
      detail::fail<ValueError>("arange: (", start, ", ", stop, ", ", step, ") has ", n,
                               " elements");
    Tensor t(Shape{std::max<int64_t>(0, static_cast<int64_t>(n))});
    for (int64_t i = 0; i < t.numel(); ++i) t[i] = start + T(i) * step;
    return t;
  }
  ///@}
  /// Uniform in [lo, hi) from g; throws ValueError unless lo <= hi, both finite.
  static Tensor rand(const Shape& s, Generator& g, T lo = T(0), T hi = T(1)) {
    if (!std::isfinite(lo) || !std::isfinite(hi) || lo > hi)
      detail::fail<ValueError>("rand: need finite lo <= hi, got ", lo, " and ", hi);
    Tensor t(s);
    for (int64_t i = 0; i < t.numel(); ++i) t[i] = static_cast<T>(g.uniform(lo, hi));
    return t;
  }
  /// Normal with the given mean and standard deviation from g; throws ValueError unless both
  /// are finite and stddev >= 0 (as torch.normal).
  static Tensor randn(const Shape& s, Generator& g, T mean = T(0), T stddev = T(1)) {
    if (!std::isfinite(mean) || !std::isfinite(stddev) || stddev < 0)
      detail::fail<ValueError>("randn: need a finite mean and stddev >= 0, got ", mean, " and ",
                               stddev);
    Tensor t(s);
    for (int64_t i = 0; i < t.numel(); ++i) t[i] = static_cast<T>(g.normal(mean, stddev));
    return t;
  }

  // ---- properties ----
  /// The sizes of the dimensions.
  const Shape& shape() const { return shape_; }
  /// Number of dimensions.
  int rank() const { return shape_.rank(); }
  /// Number of elements.
  int64_t numel() const { return shape_.numel(); }
  /// Size of dimension dim (negative counts from the end). Throws ShapeError if out of range.
  int64_t size(int dim) const { return shape_.dim(dim); }
  ///@{
  /// Pointer to the first element.
  T* data() { return data_.get(); }
  const T* data() const { return data_.get(); }
  ///@}
  /// True when both tensors view the same storage.
  bool shares_storage(const Tensor& o) const { return data_ == o.data_; }
  /// How many Tensors share this storage; 1 means this one alone.
  long use_count() const { return data_.use_count(); }
  /// Elements the storage can hold (at least numel()).
  int64_t capacity() const { return capacity_; }

  // ---- element access ----
  ///@{
  /// Element i of the flat row-major storage, unchecked.
  T& operator[](int64_t i) { return data_.get()[i]; }  // flat, unchecked
  const T& operator[](int64_t i) const { return data_.get()[i]; }
  ///@}
  ///@{
  /// Element at a multi-index (one index per dimension), unchecked.
  template <class... I>
  T& operator()(I... idx) {  // multi-index, unchecked
    return data_.get()[offset_unchecked(idx...)];
  }
  template <class... I>
  const T& operator()(I... idx) const {
    return data_.get()[offset_unchecked(idx...)];
  }
  ///@}
  ///@{
  /// Element at a multi-index, bounds-checked: throws ShapeError for a wrong number of indices or
  /// an index out of range.
  template <class... I>
  T& at(I... idx) {  // multi-index, bounds-checked
    return data_.get()[offset_checked({static_cast<int64_t>(idx)...})];
  }
  template <class... I>
  const T& at(I... idx) const {
    return data_.get()[offset_checked({static_cast<int64_t>(idx)...})];
  }
  ///@}
  /// The value of a one-element tensor; throws ShapeError otherwise.
  T item() const {
    if (numel() != 1)
      detail::fail<ShapeError>("item: tensor of shape ", shape_, " has ", numel(),
                               " elements, not 1");
    return data_.get()[0];
  }

  // ---- shape changes (sharing storage) and copies ----
  ///@{
  /// One size may be -1: it is inferred from the others. Allocates nothing (training loops
  /// reshape every step).
  Tensor reshape(std::span<const int64_t> dims) const {
    Tensor t = *this;
    t.shape_ = infer_shape(dims);
    return t;
  }
  Tensor reshape(std::initializer_list<int64_t> dims) const {
    return reshape(std::span<const int64_t>(dims.begin(), dims.size()));
  }
  Tensor reshape(const std::vector<int64_t>& dims) const {
    return reshape(std::span<const int64_t>(dims));
  }
  Tensor reshape(const Shape& s) const { return reshape(s.dims()); }
  ///@}
  /// The same storage as one dimension of numel() elements.
  Tensor flatten() const { return reshape({numel()}); }
  /// Rows [start, start + length) of dim 0, sharing this storage (torch.narrow(0, start,
  /// length)): writes through either are seen by both. Since Eigen maps of a tensor assume
  /// 64-byte alignment, the rows must start at a multiple of 64 bytes from the storage's start
  /// (e.g. a multiple of 16 floats in a flat tensor); otherwise it throws ValueError.
  Tensor narrow(int64_t start, int64_t length) const {
    if (rank() < 1 || start < 0 || length < 0 || start + length > shape_[0])
      detail::fail<ShapeError>("narrow: rows [", start, ", ", start + length, ") of shape ",
                               shape_);
    const int64_t row = shape_[0] > 0 ? numel() / shape_[0] : 0;
    const int64_t offset = start * row;
    if ((offset * static_cast<int64_t>(sizeof(T))) % static_cast<int64_t>(alignment) != 0)
      detail::fail<ValueError>("narrow: rows from ", start, " of shape ", shape_, " start at byte ",
                               offset * static_cast<int64_t>(sizeof(T)), ", not a multiple of ",
                               alignment, " (tensors are 64-byte aligned)");
    Tensor t = *this;
    t.data_ = std::shared_ptr<T>(data_, data_.get() + offset);
    t.shape_[0] = length;
    t.capacity_ = length * row;
    return t;
  }
  /// A copy with its own storage.
  Tensor clone() const {
    Tensor t(shape_);
    if (numel()) std::memcpy(t.data(), data(), sizeof(T) * static_cast<size_t>(numel()));
    return t;
  }
  /// Sets every element to v; returns *this.
  Tensor& fill_(T v) {
    std::fill_n(data(), numel(), v);
    return *this;
  }
  /// Sets every element to zero; returns *this.
  Tensor& zero_() { return fill_(T(0)); }
  /// Copies values from a tensor with the same number of elements into this storage.
  Tensor& copy_(const Tensor& src) {
    if (src.numel() != numel()) detail::fail<ShapeError>("copy_: ", src.shape(), " into ", shape_);
    if (numel() && src.data() != data())
      std::memmove(data(), src.data(), sizeof(T) * static_cast<size_t>(numel()));
    return *this;
  }
  /// A copy converted element by element to U (static_cast).
  template <class U>
  Tensor<U> to() const {
    Tensor<U> t(shape_);
    for (int64_t i = 0; i < numel(); ++i) t[i] = static_cast<U>((*this)[i]);
    return t;
  }
  /// Gives this tensor the shape s, keeping its storage when it is large enough and not shared
  /// with another tensor; otherwise allocates. The tape uses it to reuse buffers step after step.
  void resize(const Shape& s) {
    if (s.checked_numel() > capacity_ || data_.use_count() > 1) allocate(s);
    shape_ = s;
  }

  // ---- Eigen views (no copies) ----
  ///@{
  /// matrix(): rank >= 2 folds the leading dims into rows, the last dim is the columns;
  /// rank 1 is one row; rank 0 is 1x1.
  MatrixMap matrix() { return matrix(rows(), cols()); }
  ConstMatrixMap matrix() const { return matrix(rows(), cols()); }
  ///@}
  ///@{
  /// A view of the storage as r x c rows and columns; throws ShapeError if r * c is not numel().
  MatrixMap matrix(int64_t r, int64_t c) {
    check_view(r, c);
    return MatrixMap(data(), r, c);
  }
  ConstMatrixMap matrix(int64_t r, int64_t c) const {
    check_view(r, c);
    return ConstMatrixMap(data(), r, c);
  }
  ///@}
  ///@{
  /// The flat storage as an Eigen array of numel() elements.
  ArrayMap array() { return ArrayMap(data(), numel()); }
  ConstArrayMap array() const { return ConstArrayMap(data(), numel()); }
  ///@}

 private:
  template <class U>
  friend class Tensor;

  int64_t rows() const { return rank() >= 2 ? numel() / shape_.dim(-1) : 1; }
  int64_t cols() const { return rank() >= 1 ? shape_.dim(-1) : 1; }
  void check_view(int64_t r, int64_t c) const {
    if (r * c != numel())
      detail::fail<ShapeError>("matrix: a ", r, "x", c, " view of shape ", shape_);
  }

  void allocate(const Shape& s) {
    const int64_t n = s.checked_numel();
    // operator new throws std::bad_alloc for what memory cannot hold, but the byte count
    // would wrap around first.
    if (n > std::numeric_limits<std::ptrdiff_t>::max() / int64_t{sizeof(T)})
      detail::fail<ShapeError>("Tensor: shape ", s, " holds ", n, " elements of ", sizeof(T),
                               " bytes: more than memory can address");
    // At least one element, so data() is never null and always aligned.
    const size_t count = static_cast<size_t>(std::max<int64_t>(n, 1));
    T* p = nullptr;
    try {
      p = static_cast<T*>(::operator new (count * sizeof(T), std::align_val_t{alignment}));
    } catch (const std::bad_alloc&) {  // a bare std::bad_alloc would say nothing of the tensor
      detail::fail<OutOfMemoryError>("Tensor: out of memory for shape ", s, " (", count * sizeof(T),
                                     " bytes)");
    }
    data_ = std::shared_ptr<T>(p, [](T* q) { ::operator delete (q, std::align_val_t{alignment}); });
    capacity_ = n;
  }

  Shape infer_shape(std::span<const int64_t> dims) const {
    if (dims.size() > static_cast<size_t>(Shape::max_rank))
      detail::fail<ShapeError>("reshape: rank ", dims.size(), " above the maximum ",
                               Shape::max_rank);
    int infer = -1;
    int64_t known = 1;
    for (size_t i = 0; i < dims.size(); ++i) {
      if (dims[i] == -1) {
        if (infer >= 0) detail::fail<ShapeError>("reshape: more than one -1 in the new shape");
        infer = static_cast<int>(i);
      } else if (dims[i] < 0) {
        detail::fail<ShapeError>("reshape: negative size ", dims[i]);
      } else if (__builtin_mul_overflow(known, dims[i], &known)) {
        detail::fail<ShapeError>("reshape: ", shape_, " to sizes whose product passes int64_t");
      }
    }
    std::array<int64_t, Shape::max_rank> out{};
    std::copy(dims.begin(), dims.end(), out.begin());
    if (infer >= 0) {
      if (known == 0 || numel() % known != 0)
        detail::fail<ShapeError>("reshape: cannot infer -1 for ", shape_, " (", numel(),
                                 " elements)");
      out[static_cast<size_t>(infer)] = numel() / known;
    }
    Shape s{std::span<const int64_t>(out.data(), dims.size())};
    if (s.numel() != numel())
      detail::fail<ShapeError>("reshape: ", shape_, " (", numel(), " elements) to ", s, " (",
                               s.numel(), " elements)");
    return s;
  }

  template <class... I>
  int64_t offset_unchecked(I... idx) const {
    const int64_t ix[] = {static_cast<int64_t>(idx)...};
    int64_t off = 0;
    for (size_t d = 0; d < sizeof...(I); ++d) off = off * shape_[static_cast<int>(d)] + ix[d];
    return off;
  }
  int64_t offset_checked(std::initializer_list<int64_t> idx) const {
    if (static_cast<int>(idx.size()) != rank())
      detail::fail<ShapeError>("at: ", idx.size(), " indices for shape ", shape_);
    int64_t off = 0;
    int d = 0;
    for (int64_t i : idx) {
      if (i < 0 || i >= shape_[d])
        detail::fail<ShapeError>("at: index ", i, " out of range for dim ", d, " of shape ",
                                 shape_);
      off = off * shape_[d++] + i;
    }
    return off;
  }

  template <class L>
  static void nested_shape(const L& l, std::vector<int64_t>& dims, size_t depth) {
    if constexpr (std::is_same_v<L, List1>) {
      if (depth == dims.size()) dims.push_back(static_cast<int64_t>(l.size()));
    } else {
      if (depth == dims.size()) dims.push_back(static_cast<int64_t>(l.size()));
      for (const auto& sub : l) nested_shape(sub, dims, depth + 1);
    }
  }
  template <class L>
  static void nested_fill(const L& l, const std::vector<int64_t>& dims, size_t depth,
                          std::vector<T>& out) {
    if (static_cast<int64_t>(l.size()) != dims[depth])
      detail::fail<ShapeError>("Tensor::from: ragged nested list (", l.size(), " vs ", dims[depth],
                               " at depth ", depth, ")");
    if constexpr (std::is_same_v<L, List1>) {
      out.insert(out.end(), l.begin(), l.end());
    } else {
      for (const auto& sub : l) nested_fill(sub, dims, depth + 1, out);
    }
  }
  template <class L>
  static Tensor from_nested(const L& l) {
    std::vector<int64_t> dims;
    nested_shape(l, dims, 0);
    std::vector<T> values;
    nested_fill(l, dims, 0, values);
    return from(values, Shape{std::span<const int64_t>(dims)});
  }

  std::shared_ptr<T> data_;
  int64_t capacity_ = 0;
  Shape shape_;
};

/// |a - b| <= atol + rtol * |b| elementwise, as torch.allclose; shapes must be equal.
/// NaN is never close to anything.
template <class T>
bool allclose(const Tensor<T>& a, const Tensor<T>& b, double rtol = 1e-5, double atol = 1e-8) {
  if (!(a.shape() == b.shape())) return false;
  for (int64_t i = 0; i < a.numel(); ++i) {
    const double x = a[i], y = b[i];
    if (x == y) continue;  // also equal infinities
    if (!(std::abs(x - y) <= atol + rtol * std::abs(y))) return false;
  }
  return true;
}

namespace detail {
// Prints one dimension of t starting at offset, PyTorch-style, eliding the middle of long
// dimensions when the tensor is summarised.
template <class T>
void print_dim(std::ostream& os, const Tensor<T>& t, int dim, int64_t offset, int64_t stride,
               bool summarise, int indent) {
  const int64_t n = t.shape()[dim];
  const int64_t inner = stride / n;
  constexpr int64_t edge = 3;
  os << '[';
  for (int64_t i = 0; i < n; ++i) {
    if (summarise && n > 2 * edge && i == edge) {
      os << (dim + 1 == t.rank() ? "..., " : "...,\n" + std::string(indent + 1, ' '));
      i = n - edge - 1;
      continue;
    }
    if (dim + 1 == t.rank()) {
      os << std::setw(10) << t[offset + i];
    } else {
      print_dim(os, t, dim + 1, offset + i * inner, inner, summarise, indent + 1);
    }
    if (i + 1 < n) os << (dim + 1 == t.rank() ? ", " : ",\n" + std::string(indent + 1, ' '));
  }
  os << ']';
}
}  // namespace detail

/// tensor([[    1.0000,     2.0000], ...], shape=[2,2]); tensors above 1000 elements show only
/// the first and last three entries of each dimension, as PyTorch does.
template <class T>
std::ostream& operator<<(std::ostream& os, const Tensor<T>& t) {
  const auto flags = os.flags();
  const auto prec = os.precision();
  os << std::fixed << std::setprecision(4) << "tensor(";
  if (t.rank() == 0) {
    os << t[0];
  } else if (t.numel() == 0) {
    os << "[]";
  } else {
    detail::print_dim(os, t, 0, 0, t.numel(), t.numel() > 1000, 7);
  }
  os << ", shape=" << t.shape() << ')';
  os.flags(flags);
  os.precision(prec);
  return os;
}

}  // namespace tapegrad
