#pragma once
/// \file
/// 2-D pooling over NCHW images, as torch.nn.functional.max_pool2d / avg_pool2d /
/// adaptive_avg_pool2d(x, 1):
///
///   max_pool2d: y[n,c,p,q] = max over the window rows p·sh − ph + [0, kh),
///               columns q·sw − pw + [0, kw); padding counts as −inf.
///   avg_pool2d: y = (sum of the window) / (kh·kw), padding counts as 0 and is counted in the
///               divisor (PyTorch's default count_include_pad = true).
///   global_avg_pool2d: y[n,c] = mean over all H·W pixels, shape [N,C].
///
/// Output size (floor, ceil_mode = false): OH = floor((H + 2·ph − kh) / sh) + 1, OW likewise;
/// the stride defaults to the kernel size. Padding may be at most half the kernel (as PyTorch),
/// so every window holds at least one pixel.
/// Max pool gradient: each output's gradient goes to the first maximum of its window in
/// row-major order (PyTorch's rule; a NaN counts as the maximum), and overlapping windows add
/// up. The argmax of every output is kept in the node's ints for backward.
/// Planes (n, c) run in parallel (OpenMP) when the work is large: each plane's gradient is
/// written by one thread only.

#include <cmath>
#include <cstdint>
#include <limits>
#include <optional>
#include <sstream>
#include <vector>

#include "tapegrad/ops/size2.hpp"
#include "tapegrad/tape.hpp"
#include "tapegrad/threads.hpp"

namespace tapegrad {

namespace detail {

// Geometry of one pooling call, stored at the front of the node's ints.
struct Pool2dGeometry {
  int64_t planes, H, W, kh, kw, sh, sw, ph, pw, OH, OW;
  static constexpr size_t count = 11;
  void store(std::vector<int64_t>& v) const {
    v.assign({planes, H, W, kh, kw, sh, sw, ph, pw, OH, OW});
  }
  static Pool2dGeometry load(const std::vector<int64_t>& v) {
    return {v[0], v[1], v[2], v[3], v[4], v[5], v[6], v[7], v[8], v[9], v[10]};
  }
  // Window of output (p, q) clipped to the image: rows [r0, r1), columns [c0, c1).
  void window(int64_t p, int64_t q, int64_t& r0, int64_t& r1, int64_t& c0, int64_t& c1) const {
    r0 = p * sh - ph;
    c0 = q * sw - pw;
    r1 = std::min(r0 + kh, H);
    c1 = std::min(c0 + kw, W);
    r0 = std::max<int64_t>(r0, 0);
    c0 = std::max<int64_t>(c0, 0);
  }
  int64_t work() const { return planes * OH * OW * kh * kw; }
};

inline Pool2dGeometry pool2d_geometry(const char* op, const Shape& x, Size2 kernel,
                                      std::optional<Size2> stride_opt, Size2 padding) {
  const Size2 stride = stride_opt.value_or(kernel);
  auto where = [&] {
    std::ostringstream os;
    os << op << ": input " << x << ", kernel " << kernel << ", stride " << stride << ", padding "
       << padding;
    return os.str();
  };
  if (x.rank() != 4)
    detail::fail<ShapeError>(where(), ": input must be 4-D [N,C,H,W], got rank ", x.rank());
  if (kernel.h < 1 || kernel.w < 1 || stride.h < 1 || stride.w < 1)
    detail::fail<ValueError>(where(), ": kernel and stride must be >= 1");
  if (!within_extent(kernel) || !within_extent(stride) || !within_extent(padding) ||
      !within_extent({x[2], x[3]}))
    detail::fail<ValueError>(
        where(), ": kernel, stride, padding, height and width must be at most ", max_extent);
  if (padding.h < 0 || padding.w < 0 || 2 * padding.h > kernel.h || 2 * padding.w > kernel.w)
    detail::fail<ValueError>(where(), ": padding must be between 0 and half the kernel");
  const int64_t H = x[2], W = x[3];
  if (kernel.h > H + 2 * padding.h || kernel.w > W + 2 * padding.w)
    detail::fail<ShapeError>(where(), ": kernel ", kernel.h, "x", kernel.w, " is larger than the ",
                             H + 2 * padding.h, "x", W + 2 * padding.w, " padded input");
  return {x[0] * x[1],
          H,
          W,
          kernel.h,
          kernel.w,
          stride.h,
          stride.w,
          padding.h,
          padding.w,
          (H + 2 * padding.h - kernel.h) / stride.h + 1,
          (W + 2 * padding.w - kernel.w) / stride.w + 1};
}

}  // namespace detail

/// Max pooling; stride defaults to the kernel size.
template <class T>
Var<T> max_pool2d(const Var<T>& x, Size2 kernel, std::optional<Size2> stride = std::nullopt,
                  Size2 padding = 0) {
  const auto g = detail::pool2d_geometry("max_pool2d", x.shape(), kernel, stride, padding);
  Var<T> y = x.tape().record(
      "max_pool2d", Shape{x.size(0), x.size(1), g.OH, g.OW}, {x},
      [](OpContext<T>& c) {
        const auto g = detail::Pool2dGeometry::load(c.node().ints);
        const int64_t* arg = c.node().ints.data() + g.count;
        const T* dy = c.grad_out().data();
        T* dx = c.grad_in(0).data();
        const int64_t hw = g.H * g.W, L = g.OH * g.OW;
        detail::parallel_for(g.planes, g.planes * L > parallel_threshold, [&](int64_t pl) {
          for (int64_t k = pl * L; k < (pl + 1) * L; ++k) dx[pl * hw + arg[k]] += dy[k];
        });
      },
      Reads::none);  // the maxima's positions are in ints
  auto& ints = y.node().ints;
  g.store(ints);
  const int64_t L = g.OH * g.OW, hw = g.H * g.W;
  ints.resize(g.count + static_cast<size_t>(g.planes * L));
  int64_t* arg = ints.data() + g.count;
  const T* xd = x.value().data();
  T* yd = y.value().data();
  detail::parallel_for(g.planes, g.work() > parallel_threshold, [&](int64_t pl) {
    const T* xp = xd + pl * hw;
    for (int64_t p = 0; p < g.OH; ++p)
      for (int64_t q = 0; q < g.OW; ++q) {
        int64_t r0, r1, c0, c1;
        g.window(p, q, r0, r1, c0, c1);
        int64_t best_at = r0 * g.W + c0;
        T best = xp[best_at];
        for (int64_t r = r0; r < r1; ++r)
          for (int64_t s = c0; s < c1; ++s) {
            const T v = xp[r * g.W + s];
            if (v > best || (std::isnan(v) && !std::isnan(best))) {
              best = v;
              best_at = r * g.W + s;
            }
          }
        const int64_t k = pl * L + p * g.OW + q;
        yd[k] = best;
        arg[k] = best_at;
      }
  });
  return y;
}

/// Average pooling with count_include_pad = true; stride defaults to the kernel size.
template <class T>
Var<T> avg_pool2d(const Var<T>& x, Size2 kernel, std::optional<Size2> stride = std::nullopt,
                  Size2 padding = 0) {
  const auto g = detail::pool2d_geometry("avg_pool2d", x.shape(), kernel, stride, padding);
  Var<T> y = x.tape().record(
      "avg_pool2d", Shape{x.size(0), x.size(1), g.OH, g.OW}, {x},
      [](OpContext<T>& c) {
        const auto g = detail::Pool2dGeometry::load(c.node().ints);
        const T scale = T(1) / T(g.kh * g.kw);
        const T* dy = c.grad_out().data();
        T* dx = c.grad_in(0).data();
        const int64_t hw = g.H * g.W, L = g.OH * g.OW;
        detail::parallel_for(g.planes, g.work() > parallel_threshold, [&](int64_t pl) {
          T* dxp = dx + pl * hw;
          for (int64_t p = 0; p < g.OH; ++p)
            for (int64_t q = 0; q < g.OW; ++q) {
              int64_t r0, r1, c0, c1;
              g.window(p, q, r0, r1, c0, c1);
              const T d = dy[pl * L + p * g.OW + q] * scale;
              for (int64_t r = r0; r < r1; ++r)
                for (int64_t s = c0; s < c1; ++s) dxp[r * g.W + s] += d;
            }
        });
      },
      Reads::none);
  g.store(y.node().ints);
  const T scale = T(1) / T(g.kh * g.kw);
  const int64_t L = g.OH * g.OW, hw = g.H * g.W;
  const T* xd = x.value().data();
  T* yd = y.value().data();
  detail::parallel_for(g.planes, g.work() > parallel_threshold, [&](int64_t pl) {
    const T* xp = xd + pl * hw;
    for (int64_t p = 0; p < g.OH; ++p)
      for (int64_t q = 0; q < g.OW; ++q) {
        int64_t r0, r1, c0, c1;
        g.window(p, q, r0, r1, c0, c1);
        T sum = 0;
        for (int64_t r = r0; r < r1; ++r)
          for (int64_t s = c0; s < c1; ++s) sum += xp[r * g.W + s];
        yd[pl * L + p * g.OW + q] = sum * scale;
      }
  });
  return y;
}

/// Mean over H and W of every plane: [N,C,H,W] -> [N,C] (adaptive_avg_pool2d(x, 1) flattened).
template <class T>
Var<T> global_avg_pool2d(const Var<T>& x) {
  if (x.rank() != 4)
    detail::fail<ShapeError>("global_avg_pool2d: input ", x.shape(),
                             ": input must be 4-D [N,C,H,W], got rank ", x.rank());
  if (x.size(2) * x.size(3) == 0)
    detail::fail<ShapeError>("global_avg_pool2d: input ", x.shape(), ": empty image");
  const int64_t planes = x.size(0) * x.size(1);
  Var<T> y = x.tape().record(
      "global_avg_pool2d", Shape{x.size(0), x.size(1)}, {x},
      [](OpContext<T>& c) {
        const int64_t planes = c.value().numel();
        const int64_t hw = c.input(0).numel() / std::max<int64_t>(planes, 1);
        c.add_grad_matrix(0, planes, hw,
                          (c.grad_out().matrix(planes, 1) * (T(1) / T(hw))).replicate(1, hw));
      },
      Reads::none);
  const int64_t hw = x.size(2) * x.size(3);
  y.value().matrix(planes, 1).noalias() = x.value().matrix(planes, hw).rowwise().mean();
  return y;
}

}  // namespace tapegrad
