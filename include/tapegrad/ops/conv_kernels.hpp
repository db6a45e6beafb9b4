#pragma once
/// \file
/// Kernels of the stride-1 convolution in ops/conv.hpp: a convolution computed on a zero-padded
/// copy of the image, without im2col and without GEMM packing.
///
/// Padded image xp [C, Hp, Wp] (Hp = H + 2·ph, Wp = W + 2·pw), flattened. An output position
/// (p, q) is m = p·Wp + q in "padded-row" numbering; tap k = (c, i, j) reads
///   xp[off_k + m],  off_k = c·Hp·Wp + i·dh·Wp + j·dw,
/// so for every tap the inputs of all positions form one contiguous run: the column matrix of
/// im2col is never built, its row k is xp shifted by off_k. Positions with q ≥ OW ("wrap"
/// columns, (kw−1)·dw per row) are computed and dropped by the caller (forward), or given a zero
/// gradient (weight gradient). The caller pads the buffers so that every kernel reads and
/// writes whole blocks (see shifted_slack()).
///
///   shifted_conv:   out[oc, m] = Σ_k wt[k, oc] · in[off_k + m]        (forward; also dx, as a
///                   convolution of the padded dy with the flipped kernel)
///   shifted_wgrad:  dw[o, k] += Σ_m g[o, m] · in[off_k + m]           (weight gradient)
///
/// Both keep a block of outputs in registers (Eigen packets: SSE, AVX or AVX-512, whatever the
/// build targets) across the whole reduction, so each loaded value feeds several FMAs. A dropped
/// wrap column's weight-gradient term is 0·x: exact for finite x (a NaN or inf in x can turn a
/// neighbouring tap's gradient into NaN, where the loss is NaN anyway).

#include <Eigen/Core>
#include <algorithm>
#include <cstdint>

namespace tapegrad::detail {

template <class T>
struct ShiftedKernel {
  using Packet = typename Eigen::internal::packet_traits<T>::type;
  static constexpr int64_t PS = Eigen::internal::unpacket_traits<Packet>::size;
  static constexpr int MP = 3;                 // packets per position block
  static constexpr int64_t MB = MP * PS;       // positions per block
  static constexpr int OB = PS >= 16 ? 8 : 4;  // output channels per block (forward)
  static constexpr int GO = PS >= 16 ? 4 : 2;  // output channels per block (wgrad)
  // Taps per block (wgrad). With 32 AVX-512 registers, 4 x 6 accumulators feed 24 FMAs from 10
  // loads instead of 16 from 8 (4 x 4): the taps' loads mostly split cache lines; on a 2-core
  // Zen 5 VM the 16 -> 16 channel weight gradient at 28x28 went from 79 to 130-220 GFLOP/s.
  static constexpr int GK = PS >= 16 ? 6 : 4;
  static constexpr int64_t round_up(int64_t m) { return (m + MB - 1) / MB * MB; }
};

// Elements a padded input needs after its last row: the widest tap offset into the wrap
// columns plus one position block.
template <class T>
constexpr int64_t shifted_slack(int64_t kw, int64_t dw) {
  return (kw - 1) * dw + ShiftedKernel<T>::MB;
}

// Image rows are short (28 floats in the ResNet): copied with whole packets, the last one
// overlapping the previous (libc's memmove would cost a call per row, Eigen's loops a scalar
// tail).
template <class T>
inline void copy_row(const T* src, int64_t n, T* dst) {
  using P = typename ShiftedKernel<T>::Packet;
  constexpr int64_t PS = ShiftedKernel<T>::PS;
  namespace ei = Eigen::internal;
  if (n < PS) {
    for (int64_t i = 0; i < n; ++i) dst[i] = src[i];
    return;
  }
  int64_t i = 0;
  for (; i + PS <= n; i += PS) ei::pstoreu(dst + i, ei::ploadu<P>(src + i));
  if (i < n) ei::pstoreu(dst + n - PS, ei::ploadu<P>(src + n - PS));
}
// dst = src + b over n elements (same scheme).
template <class T>
inline void copy_row_plus(const T* src, int64_t n, T b, T* dst) {
  using P = typename ShiftedKernel<T>::Packet;
  constexpr int64_t PS = ShiftedKernel<T>::PS;
  namespace ei = Eigen::internal;
  if (n < PS) {
    for (int64_t i = 0; i < n; ++i) dst[i] = src[i] + b;
    return;
  }
  const P bv = ei::pset1<P>(b);
  int64_t i = 0;
  for (; i + PS <= n; i += PS) ei::pstoreu(dst + i, ei::padd(ei::ploadu<P>(src + i), bv));
  if (i < n) ei::pstoreu(dst + n - PS, ei::padd(ei::ploadu<P>(src + n - PS), bv));
}
// dst += src over n elements (whole packets, then a scalar tail: no element twice).
template <class T>
inline void add_row(const T* src, int64_t n, T* dst) {
  using P = typename ShiftedKernel<T>::Packet;
  constexpr int64_t PS = ShiftedKernel<T>::PS;
  namespace ei = Eigen::internal;
  int64_t i = 0;
  for (; i + PS <= n; i += PS)
    ei::pstoreu(dst + i, ei::padd(ei::ploadu<P>(dst + i), ei::ploadu<P>(src + i)));
  for (; i < n; ++i) dst[i] += src[i];
}

// Copies image x [C, H, W] into the interior of xp [C, Hp, Wp] at (top, left); the padding
// around it is not touched: zeroed once per buffer, it stays zero image after image.
template <class T>
void copy_into_padded(const T* x, int64_t C, int64_t H, int64_t W, T* xp, int64_t Hp, int64_t Wp,
                      int64_t top, int64_t left) {
  for (int64_t c = 0; c < C; ++c)
    for (int64_t h = 0; h < H; ++h)
      copy_row(x + (c * H + h) * W, W, xp + (c * Hp + top + h) * Wp + left);
}

// Copies image x [C, H, W] into xp [C, Hp, Wp] at (top, left), zeros around it, and zeros
// `slack` elements after it.
template <class T>
void pad_image(const T* x, int64_t C, int64_t H, int64_t W, T* xp, int64_t Hp, int64_t Wp,
               int64_t top, int64_t left, int64_t slack) {
  std::fill(xp, xp + C * Hp * Wp + slack, T(0));
  copy_into_padded(x, C, H, W, xp, Hp, Wp, top, left);
}

template <class T, int OBn>
inline void shifted_conv_block(const T* wt, int64_t OC, int64_t oc0, const int64_t* off, int64_t K,
                               const T* in, int64_t m0, T* out, int64_t ldo) {
  using SK = ShiftedKernel<T>;
  using P = typename SK::Packet;
  namespace ei = Eigen::internal;
  constexpr int MP = SK::MP;
  constexpr int64_t PS = SK::PS;
  P acc[OBn][MP];
#pragma GCC unroll 16
  for (int o = 0; o < OBn; ++o)
#pragma GCC unroll 4
    for (int t = 0; t < MP; ++t) acc[o][t] = ei::pset1<P>(T(0));
  const T* base = in + m0;
  const T* w = wt + oc0;
  for (int64_t k = 0; k < K; ++k, w += OC) {
    const T* x = base + off[k];
    P xv[MP];
#pragma GCC unroll 4
    for (int t = 0; t < MP; ++t) xv[t] = ei::ploadu<P>(x + t * PS);
#pragma GCC unroll 16
    for (int o = 0; o < OBn; ++o) {
      const P wv = ei::pset1<P>(w[o]);
#pragma GCC unroll 4
      for (int t = 0; t < MP; ++t) acc[o][t] = ei::pmadd(wv, xv[t], acc[o][t]);
    }
  }
#pragma GCC unroll 16
  for (int o = 0; o < OBn; ++o)
#pragma GCC unroll 4
    for (int t = 0; t < MP; ++t) ei::pstoreu(out + (oc0 + o) * ldo + m0 + t * PS, acc[o][t]);
}

// out[oc·ldo + m] = Σ_{k<K} wt[k·OC + oc] · in[off[k] + m] for oc < OC, m < M (a multiple of
// ShiftedKernel<T>::MB); in must be readable up to max(off) + M.
template <class T>
void shifted_conv(const T* wt, int64_t OC, const int64_t* off, int64_t K, const T* in, int64_t M,
                  T* out, int64_t ldo) {
  using SK = ShiftedKernel<T>;
  for (int64_t m0 = 0; m0 < M; m0 += SK::MB) {
    int64_t oc0 = 0;
    for (; oc0 + SK::OB <= OC; oc0 += SK::OB)
      shifted_conv_block<T, SK::OB>(wt, OC, oc0, off, K, in, m0, out, ldo);
    for (; oc0 + 2 <= OC; oc0 += 2) shifted_conv_block<T, 2>(wt, OC, oc0, off, K, in, m0, out, ldo);
    for (; oc0 < OC; ++oc0) shifted_conv_block<T, 1>(wt, OC, oc0, off, K, in, m0, out, ldo);
  }
}

// Makes the compiler hold v in a register from here on. Without it GCC folds each tap's load
// into every FMA that uses it (vfmadd231ps (mem), ...): GO loads of the same, mostly
// cache-line-splitting, x vector instead of one, and the weight-gradient kernel was bound by
// loads (~2.5x slower per FMA than the forward kernel).
template <class P>
inline void keep_in_register(P& v) {
#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
  if constexpr (sizeof(P) >= 16) __asm__("" : "+v"(v));
#else
  (void)v;
#endif
}

template <class T, int GOn, int GKn>
inline void shifted_wgrad_block(const T* g, int64_t ldg, int64_t o0, const int64_t* off, int64_t k0,
                                const T* in, int64_t M, int64_t images, int64_t g_stride,
                                int64_t in_stride, T* dw, int64_t ldw) {
  using SK = ShiftedKernel<T>;
  using P = typename SK::Packet;
  namespace ei = Eigen::internal;
  constexpr int64_t PS = SK::PS;
  P acc[GOn][GKn];
#pragma GCC unroll 8
  for (int o = 0; o < GOn; ++o)
#pragma GCC unroll 8
    for (int k = 0; k < GKn; ++k) acc[o][k] = ei::pset1<P>(T(0));
  for (int64_t img = 0; img < images; ++img) {
    const T* xs[GKn];
    const T* gs[GOn];
#pragma GCC unroll 8
    for (int o = 0; o < GOn; ++o) gs[o] = g + img * g_stride + (o0 + o) * ldg;
#pragma GCC unroll 8
    for (int k = 0; k < GKn; ++k) xs[k] = in + img * in_stride + off[k0 + k];
    for (int64_t m = 0; m < M; m += PS) {
      P xv[GKn];
#pragma GCC unroll 8
      for (int k = 0; k < GKn; ++k) {
        xv[k] = ei::ploadu<P>(xs[k] + m);
        keep_in_register(xv[k]);
      }
#pragma GCC unroll 8
      for (int o = 0; o < GOn; ++o) {
        const P gv = ei::ploadu<P>(gs[o] + m);
#pragma GCC unroll 8
        for (int k = 0; k < GKn; ++k) acc[o][k] = ei::pmadd(gv, xv[k], acc[o][k]);
      }
    }
  }
#pragma GCC unroll 8
  for (int o = 0; o < GOn; ++o)
#pragma GCC unroll 8
    for (int k = 0; k < GKn; ++k) dw[(o0 + o) * ldw + k0 + k] += ei::predux(acc[o][k]);
}

template <class T, int GOn>
inline void shifted_wgrad_rows(const T* g, int64_t ldg, int64_t o0, const int64_t* off, int64_t K,
                               const T* in, int64_t M, int64_t images, int64_t g_stride,
                               int64_t in_stride, T* dw, int64_t ldw) {
  constexpr int GK = ShiftedKernel<T>::GK;
  int64_t k0 = 0;
  for (; k0 + GK <= K; k0 += GK)
    shifted_wgrad_block<T, GOn, GK>(g, ldg, o0, off, k0, in, M, images, g_stride, in_stride, dw,
                                    ldw);
  if constexpr (GK > 3)  // an odd channel count leaves 3 taps of a 3x3 kernel
    for (; k0 + 3 <= K; k0 += 3)
      shifted_wgrad_block<T, GOn, 3>(g, ldg, o0, off, k0, in, M, images, g_stride, in_stride, dw,
                                     ldw);
  for (; k0 < K; ++k0)
    shifted_wgrad_block<T, GOn, 1>(g, ldg, o0, off, k0, in, M, images, g_stride, in_stride, dw,
                                   ldw);
}

// dw[o·ldw + k] += Σ_{i<images} Σ_{m<M} g[i·g_stride + o·ldg + m] · in[i·in_stride + off[k] + m]
// for o < O, k < K; M a multiple of the packet size. Several images per call share each
// block's final horizontal sums (they cost as much as a few dozen FMA steps).
template <class T>
void shifted_wgrad(const T* g, int64_t ldg, int64_t O, const int64_t* off, int64_t K, const T* in,
                   int64_t M, T* dw, int64_t ldw, int64_t images = 1, int64_t g_stride = 0,
                   int64_t in_stride = 0) {
  constexpr int GO = ShiftedKernel<T>::GO;
  int64_t o0 = 0;
  for (; o0 + GO <= O; o0 += GO)
    shifted_wgrad_rows<T, GO>(g, ldg, o0, off, K, in, M, images, g_stride, in_stride, dw, ldw);
  for (; o0 < O; ++o0)
    shifted_wgrad_rows<T, 1>(g, ldg, o0, off, K, in, M, images, g_stride, in_stride, dw, ldw);
}

}  // namespace tapegrad::detail
