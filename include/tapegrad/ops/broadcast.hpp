#pragma once
/// \file
/// Helpers for ops (namespace tapegrad::detail): NumPy/PyTorch broadcasting of two shapes, the
/// iteration over a broadcast result, the reduction of a gradient back to an operand's shape, and
/// the normalisation of a dim argument.
///
/// Broadcasting (https://numpy.org/doc/stable/user/basics.broadcasting.html, torch "Broadcasting
/// semantics"): shapes are aligned at their last dim; two sizes fit when they are equal or one of
/// them is 1; a missing leading dim counts as 1. The result takes the larger size of each pair.
/// The gradient of an operand is the output gradient summed over the dims where the operand was
/// broadcast, for either operand (also the first) and for both at once ([3,1] + [1,4]).
///
/// Iteration: a BroadcastPlan removes dims of size 1 and merges neighbouring dims that both
/// operands walk alike, so the work is a few long rows. In each row the output is contiguous and
/// each operand is either contiguous too (a "row" operand) or one repeated element. Hence the
/// common cases are single vectorised Eigen expressions: a scalar operand gives one row with a
/// repeated element; [..,N] with [N] gives rows of N over which the [N] operand is contiguous; a
/// per-channel [C,1,1] against [N,C,H,W] gives rows of H*W with one repeated element.

#include <Eigen/Core>
#include <array>
#include <cstdint>
#include <span>
#include <type_traits>

#include "tapegrad/error.hpp"
#include "tapegrad/shape.hpp"

namespace tapegrad::detail {

// The shape of a op b under broadcasting; ShapeError naming the op and both shapes otherwise.
inline Shape broadcast_shape(const char* op, const Shape& a, const Shape& b) {
  const int r = a.rank() > b.rank() ? a.rank() : b.rank();
  std::array<int64_t, Shape::max_rank> dims{};
  for (int i = 0; i < r; ++i) {  // i counts from the last dim
    const int64_t da = i < a.rank() ? a[a.rank() - 1 - i] : 1;
    const int64_t db = i < b.rank() ? b[b.rank() - 1 - i] : 1;
    if (da != db && da != 1 && db != 1)
      fail<ShapeError>(op, ": shapes ", a, " and ", b, " cannot be broadcast (dim ", -1 - i, ": ",
                       da, " vs ", db, ")");
    dims[static_cast<size_t>(r - 1 - i)] = da == 1 ? db : da;
  }
  return Shape(std::span<const int64_t>(dims.data(), static_cast<size_t>(r)));
}

// A dim argument in [-rank, rank) made non-negative; ShapeError naming the op otherwise.
inline int normalize_dim(const char* op, const Shape& s, int64_t dim) {
  if (dim < -s.rank() || dim >= s.rank())
    fail<ShapeError>(op, ": dim ", dim, " out of range for shape ", s, " (rank ", s.rank(), ")");
  return static_cast<int>(dim < 0 ? dim + s.rank() : dim);
}

// A shape seen as [outer, size of dim, inner]: the layout that reductions, concat and slice use.
struct DimSplit {
  int64_t outer = 1, size = 1, inner = 1;
};
inline DimSplit split_at(const Shape& s, int dim) {
  DimSplit d;
  for (int i = 0; i < dim; ++i) d.outer *= s[i];
  d.size = s[dim];
  for (int i = dim + 1; i < s.rank(); ++i) d.inner *= s[i];
  return d;
}

// How to walk out = a op b: rows of `row` contiguous output elements; `outer` holds the sizes
// of the dims above the rows (outermost first) and sa/sb/so the strides, in elements, of a, b
// and the output along them (0 where an operand is broadcast).
struct BroadcastPlan {
  int64_t row = 1;    // elements per row
  bool a_row = true;  // a is contiguous along a row (else one element repeated)
  bool b_row = true;  // same for b
  int depth = 0;      // number of outer dims
  std::array<int64_t, Shape::max_rank> outer{}, sa{}, sb{}, so{};
  int64_t numel = 0;  // output elements
};

// Plan for out = broadcast(a, b); `out` must be broadcast_shape(a, b).
inline BroadcastPlan make_plan(const Shape& out, const Shape& a, const Shape& b) {
  BroadcastPlan p;
  p.numel = out.numel();
  // Sizes and strides of the output dims, right-aligned operands, dims of size 1 dropped.
  std::array<int64_t, Shape::max_rank> n{}, ta{}, tb{};
  int k = 0;
  int64_t stride_a = 1, stride_b = 1;
  std::array<int64_t, Shape::max_rank> raw_a{}, raw_b{};
  for (int i = out.rank() - 1; i >= 0; --i) {  // strides of a and b in their own layout
    const int ia = i - (out.rank() - a.rank()), ib = i - (out.rank() - b.rank());
    const int64_t sa = ia >= 0 ? a[ia] : 1, sb = ib >= 0 ? b[ib] : 1;
    raw_a[static_cast<size_t>(i)] = sa == 1 ? 0 : stride_a;
    raw_b[static_cast<size_t>(i)] = sb == 1 ? 0 : stride_b;
    stride_a *= sa;
    stride_b *= sb;
  }
  for (int i = 0; i < out.rank(); ++i) {
    if (out[i] == 1) continue;
    const auto u = static_cast<size_t>(i);
    if (k > 0) {  // merge with the previous kept dim when both operands walk it alike
      const auto prev = static_cast<size_t>(k - 1);
      if (ta[prev] == raw_a[u] * out[i] && tb[prev] == raw_b[u] * out[i]) {
        n[prev] *= out[i];
        ta[prev] = raw_a[u];
        tb[prev] = raw_b[u];
        continue;
      }
    }
    n[static_cast<size_t>(k)] = out[i];
    ta[static_cast<size_t>(k)] = raw_a[u];
    tb[static_cast<size_t>(k)] = raw_b[u];
    ++k;
  }
  if (k == 0) return p;  // one element
  const auto last = static_cast<size_t>(k - 1);
  p.row = n[last];
  p.a_row = ta[last] != 0;
  p.b_row = tb[last] != 0;
  p.depth = k - 1;
  int64_t so = p.row;
  for (int i = k - 2; i >= 0; --i) {
    const auto u = static_cast<size_t>(i);
    p.outer[u] = n[u];
    p.sa[u] = ta[u];
    p.sb[u] = tb[u];
    p.so[u] = so;
    so *= n[u];
  }
  return p;
}

// Calls f(out_offset, a_offset, b_offset) for each row of the plan, in row-major order.
template <class F>
void for_each_row(const BroadcastPlan& p, F&& f) {
  if (p.numel == 0) return;
  std::array<int64_t, Shape::max_rank> idx{};
  int64_t oa = 0, ob = 0, oo = 0;
  while (true) {
    f(oo, oa, ob);
    int d = p.depth - 1;
    for (; d >= 0; --d) {  // odometer over the outer dims
      const auto u = static_cast<size_t>(d);
      oa += p.sa[u];
      ob += p.sb[u];
      oo += p.so[u];
      if (++idx[u] < p.outer[u]) break;
      oa -= p.sa[u] * p.outer[u];
      ob -= p.sb[u] * p.outer[u];
      oo -= p.so[u] * p.outer[u];
      idx[u] = 0;
    }
    if (d < 0) return;
  }
}

// An operand within a row: a contiguous segment (Row) or its one repeated element.
template <bool Row, class T>
auto row_operand(const T* p, int64_t n) {
  if constexpr (Row) {
    return Eigen::Map<const Eigen::Array<T, Eigen::Dynamic, 1>>(p, n);
  } else {
    (void)n;
    return *p;
  }
}
template <class T>
auto row_segment(T* p, int64_t n) {
  return Eigen::Map<Eigen::Array<T, Eigen::Dynamic, 1>>(p, n);
}

// Calls f(std::bool_constant<a_row>, std::bool_constant<b_row>) so that the row kernel is
// compiled for the plan's case of contiguous or repeated operands.
template <class F>
void dispatch_rows(const BroadcastPlan& p, F&& f) {
  if (p.a_row && p.b_row)
    f(std::true_type{}, std::true_type{});
  else if (p.a_row)
    f(std::true_type{}, std::false_type{});
  else if (p.b_row)
    f(std::false_type{}, std::true_type{});
  else
    f(std::true_type{}, std::true_type{});  // both repeated: rows of one element
}

// dst += src summed down to dst's shape, where dst's shape broadcasts to src's shape: the
// gradient reduction of a broadcast operand. src and dst are contiguous row-major buffers.
template <class T>
void accumulate_sum_to(const T* src, const Shape& src_shape, T* dst, const Shape& dst_shape) {
  const BroadcastPlan p = make_plan(src_shape, src_shape, dst_shape);
  if (p.b_row) {
    for_each_row(p, [&](int64_t o, int64_t, int64_t od) {
      row_segment(dst + od, p.row) += row_operand<true>(src + o, p.row);
    });
  } else {
    for_each_row(p, [&](int64_t o, int64_t, int64_t od) {
      dst[od] += row_operand<true>(src + o, p.row).sum();
    });
  }
}

}  // namespace tapegrad::detail
