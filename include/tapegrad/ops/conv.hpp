#pragma once
/// \file
/// conv2d: 2-D cross-correlation of NCHW images, as torch.nn.functional.conv2d (groups = 1):
///
///   y[n,o,p,q] = b[o] + Σ_{c,i,j} w[o,c,i,j] · x[n, c, p·sh − ph + i·dh, q·sw − pw + j·dw]
///
/// with x read as 0 outside the image (zero padding) and no kernel flip. Shapes:
/// x [N,C,H,W], w [O,C,kh,kw], b [O] (optional), y [N,O,OH,OW] with
///   OH = floor((H + 2·ph − dh·(kh − 1) − 1) / sh) + 1,  OW likewise.
///
/// Kernels larger than 1x1 run on a zero-padded copy of each image with the kernels of
/// ops/conv_kernels.hpp: no column matrix, no GEMM packing (at stride 1 only when the padding is
/// at most the dilated kernel's extent minus one: 3x3 pad 1, 5x5 pad 2, ...). A strided
/// convolution first splits the padded image into sh·sw phase planes (rows a, a + sh, ...,
/// columns b, b + sw, ...), where every tap again reads one contiguous run. Backward, a few
/// images at a time:
///   dW += Σ_positions dy · (the planes shifted by each tap),   db = Σ dy,
///   dx: at stride 1 the same forward kernel on dy padded by dh·(kh−1)−ph, dw·(kw−1)−pw with the
///       kernel flipped and its in/out channels swapped (a stride-1 transposed convolution is a
///       convolution); strided, the same per phase plane of dx with that phase's taps. Nothing
///       is scattered through a column matrix.
/// Measured (float, 1 thread, batch 64, AVX-512; forward / backward ms, min of 22 steps, best of
/// 6 runs) against im2col + per-image Eigen GEMMs: 3x3 pad 1 16->16 at 28x28 2.2 / 4.9 against
/// 7.4 / 10.0; 32->32 at 14x14 2.0 / 4.4 against 4.9 / 7.2; 1->16 at 28x28 (no dx) 0.32 / 0.72
/// against 0.42 / 0.85; 3x3 stride 2 pad 1 16->32 from 28x28 1.5 / 3.7 against 3.1 / 3.8.
/// The column matrices of the whole batch (29 MB per 16-channel layer here) are not kept for
/// backward: the scratch is a few padded images per thread.
///
/// 1x1 kernels and stride-1 convolutions with larger padding use im2col + GEMM per image
/// (detail::gemm_rows, so the packed kernel of gemm_kernel.hpp when wide enough: the 1x1
/// stride-2 16->32 shortcut at 28x28, batch 64, 1 thread, forward 196-207 -> 175-177 us): col_n
/// [C·kh·kw, OH·OW] holds the receptive field of every output position, so y_n [O, OH·OW] =
/// W [O, C·kh·kw] · col_n lands directly in NCHW order (no transpose of the output). The columns
/// of the whole batch stay in the node's saved(0) for the weight gradient; backward:
///   dW = Σ_n dy_n · col_nᵀ,   db = Σ_{n,p,q} dy,   dx_n = col2im(Wᵀ · dy_n)
/// (col2im adds each column entry back to the pixel it was read from). Images run in parallel
/// (OpenMP) when the work is large; each thread has its own dW/db partial sums and scratch
/// buffers (saved(2), saved(1)), all reused across steps. 1x1 kernels with stride 1 and no
/// padding skip im2col: the image itself is the column matrix.
/// Measured (float, 1 thread, 3x3 pad 1, batch 64; forward / backward ms): per-image GEMMs
/// 0.7/1.8 (1->16 ch, 28x28), 8.9/14.5 (16->16), 6.3/10.2 (32->32, 14x14) against 1.0/1.7,
/// 12.5/22.2, 10.5/16.4 for one GEMM over the batch ([O, C·kh·kw] x [C·kh·kw, N·OH·OW]),
/// which also needs transposed copies of y and dy and a batch-sized dcol buffer.

#include <Eigen/Core>
#include <algorithm>
#include <array>
#include <cstdint>
#include <span>
#include <sstream>
#include <vector>

#include "tapegrad/ops/conv_kernels.hpp"
#include "tapegrad/ops/size2.hpp"
#include "tapegrad/tape.hpp"
#include "tapegrad/threads.hpp"

namespace tapegrad {

namespace detail {

// Geometry of one conv2d call, kept in the node's ints for backward.
struct Conv2dGeometry {
  int64_t N, C, H, W, O, kh, kw, sh, sw, ph, pw, dh, dw, OH, OW;
  int64_t K() const { return C * kh * kw; }  // rows of a column matrix
  int64_t L() const { return OH * OW; }      // output positions per image
  bool direct() const { return kh == 1 && kw == 1 && sh == 1 && sw == 1 && ph == 0 && pw == 0; }
  bool unit_stride() const { return sh == 1 && sw == 1; }
  // The padded-image kernels apply (see the top of this file): kernels larger than 1x1; at
  // stride 1 only with padding that the flipped kernel of dx can undo; wrap columns at most
  // half a row.
  bool shifted() const {
    if (kh == 1 && kw == 1) return false;  // im2col of a 1x1 is a plain (strided) copy
    if (unit_stride() && (ph > dh * (kh - 1) || pw > dw * (kw - 1))) return false;
    return Wh() - OW <= OW;
  }
  // Padded image [C, Hp, Wp], split by the stride into sh·sw phase planes [C, Hh, Wh] (plane
  // (a, b) holds padded rows a, a + sh, ... and columns b, b + sw, ...; at stride 1 the one
  // plane is the padded image). Forward and weight-gradient positions: m = p·Wh + q.
  int64_t Hp() const { return H + 2 * ph; }
  int64_t Wp() const { return W + 2 * pw; }
  int64_t Hh() const { return (Hp() + sh - 1) / sh; }
  int64_t Wh() const { return (Wp() + sw - 1) / sw; }
  int64_t phases() const { return sh * sw; }
  // Largest shift of a tap inside a plane.
  int64_t U() const { return (kh - 1) * dh / sh; }
  int64_t V() const { return (kw - 1) * dw / sw; }
  // Padded dy of the input gradient, [O, Hq, Wq]. Stride 1: padded by dh·(kh−1)−ph (rows) for
  // the flipped kernel, positions m = h·Wq + w of dx. Strided: dy at (U, V), one pass per phase
  // plane of dx, positions m = u·Wq + v of the plane.
  int64_t Hq() const { return unit_stride() ? OH + 2 * (dh * (kh - 1) - ph) : U() + Hh(); }
  int64_t Wq() const { return unit_stride() ? OW + 2 * (dw * (kw - 1) - pw) : V() + Wh(); }
  // Positions of one dx pass (before rounding up to whole blocks).
  int64_t Mdx() const { return (unit_stride() ? H : Hh()) * Wq(); }

  void store(std::vector<int64_t>& v) const {
    v.assign({N, C, H, W, O, kh, kw, sh, sw, ph, pw, dh, dw, OH, OW});
  }
  static Conv2dGeometry load(const std::vector<int64_t>& v) {
    return {v[0], v[1], v[2],  v[3],  v[4],  v[5],  v[6], v[7],
            v[8], v[9], v[10], v[11], v[12], v[13], v[14]};
  }
};

// Output positions o in [0, out) whose input index o·stride + offset lies in [0, size):
// the half-open range [lo, hi).
inline void conv_valid_range(int64_t offset, int64_t stride, int64_t size, int64_t out, int64_t& lo,
                             int64_t& hi) {
  lo = offset >= 0 ? 0 : (-offset + stride - 1) / stride;
  hi = size - offset <= 0 ? 0 : (size - offset - 1) / stride + 1;
  hi = std::min(hi, out);
  lo = std::min(lo, hi);
}

// col [K, L] of one image x [C, H, W]: row (c, i, j), column (p, q) = x[c, p·sh−ph+i·dh,
// q·sw−pw+j·dw] or 0.
template <class T>
void im2col(const T* x, T* col, const Conv2dGeometry& g) {
  const int64_t L = g.L();
  for (int64_t c = 0; c < g.C; ++c)
    for (int64_t i = 0; i < g.kh; ++i) {
      int64_t p_lo, p_hi;
      conv_valid_range(i * g.dh - g.ph, g.sh, g.H, g.OH, p_lo, p_hi);
      for (int64_t j = 0; j < g.kw; ++j) {
        T* row = col + ((c * g.kh + i) * g.kw + j) * L;
        const int64_t col_off = j * g.dw - g.pw;
        int64_t q_lo, q_hi;
        conv_valid_range(col_off, g.sw, g.W, g.OW, q_lo, q_hi);
        std::fill(row, row + p_lo * g.OW, T(0));
        for (int64_t p = p_lo; p < p_hi; ++p) {
          const T* xr = x + (c * g.H + p * g.sh - g.ph + i * g.dh) * g.W + col_off;
          T* r = row + p * g.OW;
          std::fill(r, r + q_lo, T(0));
          if (g.sw == 1)
            std::copy(xr + q_lo, xr + q_hi, r + q_lo);
          else
            for (int64_t q = q_lo; q < q_hi; ++q) r[q] = xr[q * g.sw];
          std::fill(r + q_hi, r + g.OW, T(0));
        }
        std::fill(row + p_hi * g.OW, row + L, T(0));
      }
    }
}

// The adjoint of im2col: adds every entry of col [K, L] into the pixel of dx [C, H, W] it
// was read from (padding entries are dropped).
template <class T>
void col2im_add(const T* col, T* dx, const Conv2dGeometry& g) {
  const int64_t L = g.L();
  for (int64_t c = 0; c < g.C; ++c)
    for (int64_t i = 0; i < g.kh; ++i) {
      int64_t p_lo, p_hi;
      conv_valid_range(i * g.dh - g.ph, g.sh, g.H, g.OH, p_lo, p_hi);
      for (int64_t j = 0; j < g.kw; ++j) {
        const T* row = col + ((c * g.kh + i) * g.kw + j) * L;
        const int64_t col_off = j * g.dw - g.pw;
        int64_t q_lo, q_hi;
        conv_valid_range(col_off, g.sw, g.W, g.OW, q_lo, q_hi);
        for (int64_t p = p_lo; p < p_hi; ++p) {
          T* xr = dx + (c * g.H + p * g.sh - g.ph + i * g.dh) * g.W + col_off;
          const T* r = row + p * g.OW;
          if (g.sw == 1)
            for (int64_t q = q_lo; q < q_hi; ++q) xr[q] += r[q];
          else
            for (int64_t q = q_lo; q < q_hi; ++q) xr[q * g.sw] += r[q];
        }
      }
    }
}

template <class T>
using RowMajorMap = Eigen::Map<Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>>;
template <class T>
using ConstRowMajorMap =
    Eigen::Map<const Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>>;

template <class T>
void conv2d_backward(OpContext<T>& c);

// node.ints of a conv2d: the geometry (15 values), the path (1 = padded-image kernels), then for
// that path the tap offsets of the forward (K = C·kh·kw, into the phase planes), then those of
// dx into the padded dy: at stride 1, O·kh·kw taps (o, i', j') of the flipped kernel; strided,
// for each phase plane (a, b) of dx in turn, its number of taps and their offsets, the taps
// (o, i, j) with i·dh ≡ a (mod sh), j·dw ≡ b (mod sw) in (o, i, j) order.
inline constexpr size_t conv_path_at = 15, conv_offsets_at = 16;

inline bool conv_tap_in_phase(const Conv2dGeometry& g, int64_t i, int64_t j, int64_t a, int64_t b) {
  return (i * g.dh) % g.sh == a && (j * g.dw) % g.sw == b;
}

inline void conv_shifted_offsets(const Conv2dGeometry& g, std::vector<int64_t>& ints) {
  const int64_t Hh = g.Hh(), Wh = g.Wh(), plane = g.C * Hh * Wh, Hq = g.Hq(), Wq = g.Wq();
  for (int64_t c = 0; c < g.C; ++c)
    for (int64_t i = 0; i < g.kh; ++i)
      for (int64_t j = 0; j < g.kw; ++j) {
        const int64_t a = (i * g.dh) % g.sh, b = (j * g.dw) % g.sw;
        ints.push_back((a * g.sw + b) * plane + c * Hh * Wh + (i * g.dh / g.sh) * Wh +
                       j * g.dw / g.sw);
      }
  if (g.unit_stride()) {
    for (int64_t o = 0; o < g.O; ++o)
      for (int64_t i = 0; i < g.kh; ++i)
        for (int64_t j = 0; j < g.kw; ++j) ints.push_back(o * Hq * Wq + i * g.dh * Wq + j * g.dw);
    return;
  }
  for (int64_t a = 0; a < g.sh; ++a)
    for (int64_t b = 0; b < g.sw; ++b) {
      const size_t count_at = ints.size();
      ints.push_back(0);
      for (int64_t o = 0; o < g.O; ++o)
        for (int64_t i = 0; i < g.kh; ++i)
          for (int64_t j = 0; j < g.kw; ++j)
            if (conv_tap_in_phase(g, i, j, a, b)) {
              ints.push_back(o * Hq * Wq + (g.U() - i * g.dh / g.sh) * Wq +
                             (g.V() - j * g.dw / g.sw));
              ++ints[count_at];
            }
    }
}

// Columns v of a phase plane with column offset b whose image column v·sw + b − pw lies in
// [0, W): the half-open range [v0, v1).
inline void conv_phase_columns(const Conv2dGeometry& g, int64_t b, int64_t& v0, int64_t& v1) {
  v0 = g.pw > b ? (g.pw - b + g.sw - 1) / g.sw : 0;
  const int64_t last = g.W - 1 + g.pw - b;  // largest v·sw with an image column
  v1 = last >= 0 ? std::min(g.Wh(), last / g.sw + 1) : 0;
  v0 = std::min(v0, v1);
}

// Copies image x [C, H, W] into the phase planes of its padded copy (see Conv2dGeometry); the
// padding positions are not touched (zeroed once per buffer).
template <class T>
void copy_into_phases(const T* x, T* buf, const Conv2dGeometry& g) {
  const int64_t Hh = g.Hh(), Wh = g.Wh();
  if (g.unit_stride()) return copy_into_padded(x, g.C, g.H, g.W, buf, Hh, Wh, g.ph, g.pw);
  for (int64_t a = 0; a < g.sh; ++a)
    for (int64_t b = 0; b < g.sw; ++b) {
      bool used = false;  // a plane no tap reads stays zero
      for (int64_t i = 0; i < g.kh; ++i)
        for (int64_t j = 0; j < g.kw; ++j) used = used || conv_tap_in_phase(g, i, j, a, b);
      if (!used) continue;
      int64_t v0, v1;
      conv_phase_columns(g, b, v0, v1);
      T* plane = buf + (a * g.sw + b) * g.C * Hh * Wh;
      for (int64_t c = 0; c < g.C; ++c)
        for (int64_t u = 0; u < Hh; ++u) {
          const int64_t h = u * g.sh + a - g.ph;
          if (h < 0 || h >= g.H) continue;
          const T* xr = x + (c * g.H + h) * g.W + (v0 * g.sw + b - g.pw);
          T* dst = plane + (c * Hh + u) * Wh;
          for (int64_t v = v0; v < v1; ++v) dst[v] = xr[(v - v0) * g.sw];
        }
    }
}

// Scratch sizes rounded to 64 floats, so that every buffer starts on a cache line.
inline int64_t conv_round(int64_t n) { return (n + 63) / 64 * 64; }

// Forward on padded images (the top of this file). Scratch saved(0): wᵀ [K, O], then per
// thread the padded image (its padding zeroed once per call, then only the interior is
// rewritten image after image) and the output in padded-row numbering.
template <class T>
void conv2d_shifted_forward(const Tensor<T>& x, const Tensor<T>& w, const T* bias, Tensor<T>& y,
                            Node<T>& node, const Conv2dGeometry& g) {
  using SK = ShiftedKernel<T>;
  const int64_t K = g.K(), O = g.O, L = g.L(), Wh = g.Wh(), chw = g.C * g.H * g.W;
  const int64_t Mpad = SK::round_up(g.OH * Wh);
  const int64_t wsz = conv_round(K * O);
  const int64_t xsz = conv_round(g.phases() * g.C * g.Hh() * Wh + shifted_slack<T>(g.kw, g.dw));
  const int64_t per_thread = xsz + conv_round(O * Mpad);
  const bool parallel = g.N * K * L > parallel_threshold;
  const int threads = parallel ? get_num_threads() : 1;
  Tensor<T>& scratch = node.saved[0];
  scratch.resize(Shape{wsz + threads * per_thread});
  T* wt = scratch.data();
  const T* wd = w.data();
  for (int64_t o = 0; o < O; ++o)
    for (int64_t k = 0; k < K; ++k) wt[k * O + o] = wd[o * K + k];
  for (int t = 0; t < threads; ++t) std::fill_n(wt + wsz + t * per_thread, xsz, T(0));
  const int64_t* off = node.ints.data() + conv_offsets_at;
  const T* xd = x.data();
  T* yd = y.data();
  detail::parallel_for(g.N, parallel, [&](int64_t n) {
    T* xp = scratch.data() + wsz + thread_index() * per_thread;
    T* yb = xp + xsz;
    copy_into_phases(xd + n * chw, xp, g);
    shifted_conv(wt, O, off, K, xp, Mpad, yb, Mpad);
    T* yn = yd + n * O * L;
    for (int64_t o = 0; o < O; ++o) {
      const T bo = bias ? bias[o] : T(0);
      for (int64_t p = 0; p < g.OH; ++p)
        copy_row_plus(yb + o * Mpad + p * Wh, g.OW, bo, yn + (o * g.OH + p) * g.OW);
    }
  });
}

// One thread's scratch of the padded-image backward, which handles `images` images at a time,
// in this order (absent parts take no room): for dW, per image, the phase planes of x, then per
// image dy in the planes' position numbering (zero in the wrap columns and the tail); for dx
// the padded dy and dx in its position numbering. All but the last are zeroed once per call;
// images then rewrite only their interiors.
inline constexpr int64_t conv_wgrad_images = 4;
struct ConvShiftedScratch {
  int64_t xp = 0, g = 0, dp = 0, dx = 0;  // sizes, per image for xp and g
  int64_t images = 1;
  int64_t zeroed() const { return images * (xp + g) + dp; }
  int64_t total() const { return zeroed() + dx; }
};
template <class T>
ConvShiftedScratch conv_shifted_scratch(const Conv2dGeometry& g, bool need_w, bool need_x) {
  using SK = ShiftedKernel<T>;
  const int64_t slack = shifted_slack<T>(g.kw, g.dw);
  ConvShiftedScratch s;
  // Several images per weight-gradient call only for small images: each call ends in
  // horizontal sums (worth ~15 FMA steps per block), but more images per call no longer keep
  // dy's rows in L1. Measured (16->16 at 28x28: 1 image; 32->32 at 14x14: 4, backward -18 %).
  const int64_t positions = SK::round_up(g.OH * g.Wh());
  // At least one image per call, also for an empty batch (then no call is made).
  const int64_t most = std::max<int64_t>(1, std::min(conv_wgrad_images, g.N));
  s.images = std::clamp<int64_t>(1024 / positions, 1, most);
  if (need_w) {
    s.xp = conv_round(g.phases() * g.C * g.Hh() * g.Wh() + slack);
    s.g = conv_round(g.O * SK::round_up(g.OH * g.Wh()));
  }
  if (need_x) {
    s.dp = conv_round(g.O * g.Hq() * g.Wq() + slack);
    s.dx = conv_round(g.C * SK::round_up(g.Mdx()));
  }
  return s;
}

// Input gradient of one image on the padded-image path into dxn [C, H, W] (assigned or added,
// per assign_dx); dp and dxb: the thread's padded-dy and output buffers.
template <class T>
void conv2d_shifted_dx_image(const Conv2dGeometry& g, const int64_t* dx_off, const T* dyn,
                             const T* wflip, T* dxn, bool assign_dx, T* dp, T* dxb) {
  using SK = ShiftedKernel<T>;
  const int64_t O = g.O, C = g.C, Hq = g.Hq(), Wq = g.Wq();
  const int64_t Mpad2 = SK::round_up(g.Mdx());
  if (g.unit_stride()) {
    copy_into_padded(dyn, O, g.OH, g.OW, dp, Hq, Wq, g.dh * (g.kh - 1) - g.ph,
                     g.dw * (g.kw - 1) - g.pw);
    shifted_conv(wflip, C, dx_off, O * g.kh * g.kw, dp, Mpad2, dxb, Mpad2);
    for (int64_t c = 0; c < C; ++c)
      for (int64_t h = 0; h < g.H; ++h) {
        const T* src = dxb + c * Mpad2 + h * Wq;
        T* dst = dxn + (c * g.H + h) * g.W;
        if (assign_dx)
          copy_row(src, g.W, dst);
        else
          add_row(src, g.W, dst);
      }
    return;
  }
  // Strided: dx's phase plane (a, b) (pixels h + ph ≡ a mod sh, w + pw ≡ b mod sw) is a stride-1
  // transposed convolution of dy with the taps of that phase; a plane without taps is zero.
  copy_into_padded(dyn, O, g.OH, g.OW, dp, Hq, Wq, g.U(), g.V());
  const int64_t Hh = g.Hh();
  for (int64_t a = 0; a < g.sh; ++a)
    for (int64_t b = 0; b < g.sw; ++b) {
      const int64_t taps = *dx_off++;
      if (taps > 0) shifted_conv(wflip, C, dx_off, taps, dp, Mpad2, dxb, Mpad2);
      if (taps == 0 && !assign_dx) continue;
      int64_t v0, v1;
      conv_phase_columns(g, b, v0, v1);
      for (int64_t c = 0; c < C; ++c)
        for (int64_t u = 0; u < Hh; ++u) {
          const int64_t h = u * g.sh + a - g.ph;
          if (h < 0 || h >= g.H) continue;
          T* dst = dxn + (c * g.H + h) * g.W + (v0 * g.sw + b - g.pw);
          const T* src = dxb + c * Mpad2 + u * Wq;
          for (int64_t v = v0; v < v1; ++v) {
            const T d = taps > 0 ? src[v] : T(0);
            T& e = dst[(v - v0) * g.sw];
            e = assign_dx ? d : e + d;
          }
        }
      dx_off += taps;
      wflip += taps * C;
    }
}

// The padded-image backward of `images` consecutive images (x, dy, dx at their first): adds
// their dW into dw_part [O, K] (when given) and writes their input gradients into dx (when
// given; assigned or added, per assign_dx). wflip: the dx taps' weights in the order of their
// offsets, [taps, C]: at stride 1 the kernel flipped with in/out channels swapped, strided
// phase after phase.
template <class T>
void conv2d_shifted_backward_images(const Conv2dGeometry& g, const ConvShiftedScratch& sz,
                                    const int64_t* off, const T* x, const T* dy, int64_t images,
                                    const T* wflip, T* dw_part, T* dx, bool assign_dx, T* scratch) {
  using SK = ShiftedKernel<T>;
  const int64_t K = g.K(), O = g.O, Wh = g.Wh();
  const int64_t chw = g.C * g.H * g.W, ohw = O * g.OH * g.OW;
  const int64_t Mpad = SK::round_up(g.OH * Wh);
  T* xp = scratch;
  T* gb = xp + sz.images * sz.xp;
  T* dp = gb + sz.images * sz.g;
  T* dxb = dp + sz.dp;
  if (dw_part) {
    for (int64_t i = 0; i < images; ++i) {
      copy_into_phases(x + i * chw, xp + i * sz.xp, g);
      for (int64_t o = 0; o < O; ++o)
        for (int64_t p = 0; p < g.OH; ++p)
          copy_row(dy + i * ohw + (o * g.OH + p) * g.OW, g.OW, gb + i * sz.g + o * Mpad + p * Wh);
    }
    shifted_wgrad(gb, Mpad, O, off, K, xp, Mpad, dw_part, K, images, sz.g, sz.xp);
  }
  if (!dx) return;
  for (int64_t i = 0; i < images; ++i)
    conv2d_shifted_dx_image(g, off + K, dy + i * ohw, wflip, dx + i * chw, assign_dx, dp, dxb);
}

}  // namespace detail

/// y = conv2d(x, w, b) with per-dimension stride, zero padding and dilation (see the top of this
/// file). Pass an empty Var (`{}`) as b for no bias, or use the overload without b.
template <class T>
Var<T> conv2d(const Var<T>& x, const Var<T>& w, const Var<T>& b, Size2 stride = 1,
              Size2 padding = 0, Size2 dilation = 1) {
  const bool has_bias = b.defined();
  auto shapes = [&] {
    std::ostringstream os;
    os << "conv2d: input " << x.shape() << ", weight " << w.shape();
    if (has_bias) os << ", bias " << b.shape();
    return os.str();
  };
  if (x.rank() != 4)
    detail::fail<ShapeError>(shapes(), ": input must be 4-D [N,C,H,W], got rank ", x.rank());
  if (w.rank() != 4)
    detail::fail<ShapeError>(shapes(), ": weight must be 4-D [O,C,kh,kw], got rank ", w.rank());
  if (x.size(1) != w.size(1))
    detail::fail<ShapeError>(shapes(), ": input has ", x.size(1), " channels, weight expects ",
                             w.size(1));
  if (has_bias && (b.rank() != 1 || b.size(0) != w.size(0)))
    detail::fail<ShapeError>(shapes(), ": bias must be [", w.size(0), "]");
  if (stride.h < 1 || stride.w < 1 || dilation.h < 1 || dilation.w < 1 || padding.h < 0 ||
      padding.w < 0)
    detail::fail<ValueError>(shapes(), ": stride ", stride, " and dilation ", dilation,
                             " must be >= 1, padding ", padding, " >= 0");
  if (!within_extent(stride) || !within_extent(padding) || !within_extent(dilation) ||
      !within_extent({w.size(2), w.size(3)}) || !within_extent({x.size(2), x.size(3)}))
    detail::fail<ValueError>(shapes(), ": stride ", stride, ", padding ", padding, ", dilation ",
                             dilation, ", kernel and image sizes must be at most ", max_extent);
  detail::Conv2dGeometry g{x.size(0), x.size(1),  x.size(2),  x.size(3), w.size(0),
                           w.size(2), w.size(3),  stride.h,   stride.w,  padding.h,
                           padding.w, dilation.h, dilation.w, 0,         0};
  const int64_t ekh = g.dh * (g.kh - 1) + 1, ekw = g.dw * (g.kw - 1) + 1;  // dilated kernel
  if (ekh > g.H + 2 * g.ph || ekw > g.W + 2 * g.pw)
    detail::fail<ShapeError>(shapes(), ": kernel ", ekh, "x", ekw, " (dilated) is larger than the ",
                             g.H + 2 * g.ph, "x", g.W + 2 * g.pw, " padded input");
  g.OH = (g.H + 2 * g.ph - ekh) / g.sh + 1;
  g.OW = (g.W + 2 * g.pw - ekw) / g.sw + 1;

  const std::array<Var<T>, 3> ins{x, w, b};
  Var<T> y = x.tape().record(
      "conv2d", Shape{g.N, g.O, g.OH, g.OW}, std::span<const Var<T>>(ins.data(), has_bias ? 3 : 2),
      [](OpContext<T>& c) { detail::conv2d_backward(c); }, Reads::inputs);
  Node<T>& node = y.node();
  g.store(node.ints);
  node.ints.push_back(g.shifted() ? 1 : 0);
  if (g.shifted()) {
    detail::conv_shifted_offsets(g, node.ints);
    detail::conv2d_shifted_forward(x.value(), w.value(), has_bias ? b.value().data() : nullptr,
                                   y.value(), node, g);
    return y;
  }

  const int64_t K = g.K(), L = g.L(), chw = g.C * g.H * g.W;
  const bool direct = g.direct();
  T* col = nullptr;
  if (!direct) {
    node.saved[0].resize(Shape{g.N, K, L});
    col = node.saved[0].data();
  }
  const T* xd = x.value().data();
  T* yd = y.value().data();
  const auto wm = w.value().matrix(g.O, K);
  const T* bd = has_bias ? b.value().data() : nullptr;
  detail::parallel_for(g.N, g.N * K * L > parallel_threshold, [&](int64_t n) {
    const T* cn = xd + n * chw;
    if (!direct) {
      detail::im2col(xd + n * chw, col + n * K * L, g);
      cn = col + n * K * L;
    }
    detail::RowMajorMap<T> yn(yd + n * g.O * L, g.O, L);
    detail::gemm_rows(yn, wm, detail::ConstRowMajorMap<T>(cn, K, L), false);
    if (bd) yn.colwise() += Eigen::Map<const Eigen::Matrix<T, Eigen::Dynamic, 1>>(bd, g.O);
  });
  return y;
}

/// conv2d without bias.
template <class T>
Var<T> conv2d(const Var<T>& x, const Var<T>& w, Size2 stride = 1, Size2 padding = 0,
              Size2 dilation = 1) {
  return conv2d(x, w, Var<T>(), stride, padding, dilation);
}

namespace detail {

template <class T>
void conv2d_backward(OpContext<T>& c) {
  const auto g = Conv2dGeometry::load(c.node().ints);
  const int64_t K = g.K(), L = g.L(), OK = g.O * K, chw = g.C * g.H * g.W;
  const bool has_bias = c.node().inputs.size() == 3;
  const bool need_x = c.needs_grad(0), need_w = c.needs_grad(1);
  const bool need_b = has_bias && c.needs_grad(2);
  const bool direct = g.direct();
  const bool parallel = g.N * K * L > parallel_threshold;
  const int threads = parallel ? get_num_threads() : 1;

  const T* dy = c.grad_out().data();
  // Per-thread partial sums: dW [O, K] then db [O].
  Tensor<T>& part = c.saved(2);
  if (need_w || need_b) {
    part.resize(Shape{threads, OK + g.O});
    part.zero_();
  }
  const bool shifted = c.node().ints[conv_path_at] == 1;
  // Every path writes every element of dx, assigning on the sweep's first write (col2im
  // scatters: then each image's dx is zeroed first, inside the parallel loop).
  bool assign_dx = false;
  T* dx = need_x ? c.grad_in_uninitialized(0, assign_dx).data() : nullptr;

  if (shifted) {
    // Padded-image kernels. Scratch saved(1): the flipped kernel, then one block per thread.
    const int64_t KK = g.kh * g.kw;
    const int64_t wsz = need_x ? conv_round(g.O * KK * g.C) : 0;
    const ConvShiftedScratch sz = conv_shifted_scratch<T>(g, need_w, need_x);
    Tensor<T>& scratch = c.saved(1);
    scratch.resize(Shape{wsz + threads * sz.total()});
    T* wflip = scratch.data();
    const T* wd = c.input(1).data();
    if (need_x && g.unit_stride()) {  // wflip[(o, i', j'), c] = W[o, c, kh−1−i', kw−1−j']
      for (int64_t o = 0; o < g.O; ++o)
        for (int64_t ci = 0; ci < g.C; ++ci)
          for (int64_t i = 0; i < g.kh; ++i)
            for (int64_t j = 0; j < g.kw; ++j)
              wflip[(o * KK + (g.kh - 1 - i) * g.kw + (g.kw - 1 - j)) * g.C + ci] =
                  wd[((o * g.C + ci) * g.kh + i) * g.kw + j];
    } else if (need_x) {  // phase after phase, taps (o, i, j) in order: W[o, c, i, j]
      T* wp = wflip;
      for (int64_t a = 0; a < g.sh; ++a)
        for (int64_t b = 0; b < g.sw; ++b)
          for (int64_t o = 0; o < g.O; ++o)
            for (int64_t i = 0; i < g.kh; ++i)
              for (int64_t j = 0; j < g.kw; ++j) {
                if (!conv_tap_in_phase(g, i, j, a, b)) continue;
                for (int64_t ci = 0; ci < g.C; ++ci)
                  wp[ci] = wd[((o * g.C + ci) * g.kh + i) * g.kw + j];
                wp += g.C;
              }
    }
    for (int t = 0; t < threads; ++t) std::fill_n(wflip + wsz + t * sz.total(), sz.zeroed(), T(0));
    const int64_t* off = c.node().ints.data() + conv_offsets_at;
    const T* xd = c.input(0).data();
    const int64_t chunks = (g.N + sz.images - 1) / sz.images;
    detail::parallel_for(chunks, parallel, [&](int64_t ch) {
      const int t = thread_index();
      T* pt = part.data() + t * (OK + g.O);
      const int64_t n0 = ch * sz.images, images = std::min(sz.images, g.N - n0);
      conv2d_shifted_backward_images(g, sz, off, xd + n0 * chw, dy + n0 * g.O * L, images, wflip,
                                     need_w ? pt : nullptr, need_x ? dx + n0 * chw : nullptr,
                                     assign_dx, scratch.data() + wsz + t * sz.total());
      if (need_b)
        for (int64_t n = n0; n < n0 + images; ++n)
          Eigen::Map<Eigen::Matrix<T, Eigen::Dynamic, 1>>(pt + OK, g.O) +=
              ConstRowMajorMap<T>(dy + n * g.O * L, g.O, L).rowwise().sum();
    });
  } else {
    const T* cols = direct ? c.input(0).data() : c.saved(0).data();
    const auto wm = c.input(1).matrix(g.O, K);
    Tensor<T>& dcol = c.saved(1);
    if (need_x && !direct) dcol.resize(Shape{threads, K, L});
    detail::parallel_for(g.N, parallel, [&](int64_t n) {
      const int t = thread_index();
      ConstRowMajorMap<T> dyn(dy + n * g.O * L, g.O, L);
      ConstRowMajorMap<T> cn(cols + n * (direct ? chw : K * L), K, L);
      T* pt = part.data() + t * (OK + g.O);
      if (need_w) {
        RowMajorMap<T> dw(pt, g.O, K);
        gemm_rows(dw, dyn, cn.transpose(), true);
      }
      if (need_b)
        Eigen::Map<Eigen::Matrix<T, Eigen::Dynamic, 1>>(pt + OK, g.O) += dyn.rowwise().sum();
      if (need_x) {
        if (direct) {
          RowMajorMap<T> dxn(dx + n * chw, K, L);
          gemm_rows(dxn, wm.transpose(), dyn, !assign_dx);
        } else {
          RowMajorMap<T> dc(dcol.data() + t * K * L, K, L);
          gemm_rows(dc, wm.transpose(), dyn, false);
          if (assign_dx) std::fill_n(dx + n * chw, chw, T(0));
          col2im_add(dc.data(), dx + n * chw, g);
        }
      }
    });
  }
  if (need_w || need_b) {
    auto p = part.matrix(threads, OK + g.O);
    for (int t = 1; t < threads; ++t) p.row(0) += p.row(t);
    if (need_w) c.add_grad(1, p.row(0).head(OK).transpose().array());
    if (need_b) c.add_grad(2, p.row(0).segment(OK, g.O).transpose().array());
  }
}

}  // namespace detail

}  // namespace tapegrad
