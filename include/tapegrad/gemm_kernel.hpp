#pragma once
/// \file
/// tapegrad's own single-threaded GEMM, C = A·B or C += A·B, for operands Eigen can address
/// by pointer and strides (maps, blocks, transposes of them).
///
/// Both operands are packed (copied into contiguous panels, zero-padded to whole blocks), KC
/// steps of the reduction at a time: A in panels of MR rows, element (i, k) at [k·MR + i − i0],
/// B one panel of NR columns at a time, element (k, j) at [k·NR + j − j0]. A block of MR x NR
/// results stays in registers through a pass: each step loads NR / PS packets of B, broadcasts
/// MR values of A and does MR · NR / PS fused multiply-adds (8 x 3 AVX-512 packets: 24 FMAs from
/// 11 loads). It is the forward kernel of the convolutions (conv_kernels.hpp) on packed operands.
/// On one core of a 2-core Zen 5 (float, any of the four layouts): the deep MLPs' 128 x 256 x 256
/// at 206-241 GFLOP/s where Eigen's GEMM reached 174-190, wide-mlp's products (256 x 1024 x 784,
/// 1024 x 784 x 256, ...) at 232-263 against 172-200.
///
/// Each result is the sum over k in the same order and passes whatever the caller's cut of C
/// among threads, so its bits do not depend on the thread count.

#include <Eigen/Core>
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

namespace tapegrad::detail {

template <class T>
struct GemmKernel {
  using Packet = typename Eigen::internal::packet_traits<T>::type;
  static constexpr int64_t PS = Eigen::internal::unpacket_traits<Packet>::size;
  static constexpr int NP = 3;                 // packets per row of a block
  static constexpr int64_t NR = NP * PS;       // columns per block
  static constexpr int MR = PS >= 16 ? 8 : 4;  // rows per block (MR x NP accumulators)
  // Reduction steps per pass: a packed B panel of KC x NR stays in L1/L2 while every A panel
  // runs over it. On a 2-core Zen 5, 256 beat 512 and no blocking (within noise on the MLPs'
  // products, 10-50 % on a 64 x 64 x 100000 product).
  static constexpr int64_t KC = 256;
};

// Scratch for the packed panels, one per thread and element type; it grows to the largest
// product seen and is then reused, so steady-state training allocates nothing here.
template <class T>
T* gemm_scratch(int which, int64_t n) {
  constexpr int64_t align = 64 / sizeof(T);
  thread_local std::vector<T> buf[2];
  std::vector<T>& b = buf[which];
  if (static_cast<int64_t>(b.size()) < n + align) b.resize(n + align);
  T* p = b.data();
  const auto misalign = reinterpret_cast<uintptr_t>(p) % 64;
  return misalign ? p + (64 - misalign) / sizeof(T) : p;
}

// Packs rows [i0, i0 + mr) of A (m x k, element (i, kk) at a[i·rs + kk·cs]) as one panel of MR
// rows, zeros past mr.
template <class T>
void pack_a_panel(const T* a, int64_t rs, int64_t cs, int64_t i0, int64_t mr, int64_t k, T* dst) {
  constexpr int MR = GemmKernel<T>::MR;
  if (rs == 1) {  // A's columns are contiguous (A is a transposed row-major matrix)
    for (int64_t kk = 0; kk < k; ++kk, dst += MR) {
      const T* src = a + kk * cs + i0;
      int64_t r = 0;
      for (; r < mr; ++r) dst[r] = src[r];
      for (; r < MR; ++r) dst[r] = T(0);
    }
    return;
  }
  for (int64_t r = 0; r < MR; ++r) {
    if (r < mr) {
      const T* src = a + (i0 + r) * rs;
      for (int64_t kk = 0; kk < k; ++kk) dst[kk * MR + r] = src[kk * cs];
    } else {
      for (int64_t kk = 0; kk < k; ++kk) dst[kk * MR + r] = T(0);
    }
  }
}

// GCC 12 flags the placeholder operand of its own AVX-512 unpack intrinsics (in Eigen's
// ptranspose) as maybe uninitialized.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
// Packs columns [j0, j0 + nr) of B (k x n, element (kk, j) at b[kk·rs + j·cs]) as one panel of
// NR >= nr columns (a multiple of the packet size), zeros past nr.
template <class T>
void pack_b_panel(const T* b, int64_t rs, int64_t cs, int64_t j0, int64_t nr, int64_t NR, int64_t k,
                  T* dst) {
  if (cs == 1) {  // B's rows are contiguous
    for (int64_t kk = 0; kk < k; ++kk, dst += NR) {
      const T* src = b + kk * rs + j0;
      if (nr == NR) {
        std::memcpy(dst, src, NR * sizeof(T));
      } else {
        int64_t c = 0;
        for (; c < nr; ++c) dst[c] = src[c];
        for (; c < NR; ++c) dst[c] = T(0);
      }
    }
    return;
  }
  // B's columns are contiguous (B is a transposed row-major matrix, e.g. a Dense weight):
  // PS x PS tiles are transposed in registers (copied element by element, column after column,
  // the packing took a quarter of the time of the product it packed for).
  int64_t c = 0;
  if constexpr (GemmKernel<T>::PS > 1) {
    using P = typename GemmKernel<T>::Packet;
    constexpr int64_t PS = GemmKernel<T>::PS;
    namespace ei = Eigen::internal;
    if (rs == 1)
      for (; c + PS <= nr; c += PS) {
        const T* src = b + (j0 + c) * cs;
        int64_t kk = 0;
        for (; kk + PS <= k; kk += PS) {
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wignored-attributes"  // P's vector attributes, as in Eigen
          ei::PacketBlock<P, PS> tile;
#pragma GCC diagnostic pop
          for (int64_t i = 0; i < PS; ++i) tile.packet[i] = ei::ploadu<P>(src + i * cs + kk);
          ei::ptranspose(tile);
          for (int64_t i = 0; i < PS; ++i) ei::pstore(dst + (kk + i) * NR + c, tile.packet[i]);
        }
        for (; kk < k; ++kk)
          for (int64_t i = 0; i < PS; ++i) dst[kk * NR + c + i] = src[i * cs + kk];
      }
  }
  for (; c < nr; ++c) {
    const T* src = b + (j0 + c) * cs;
    for (int64_t kk = 0; kk < k; ++kk) dst[kk * NR + c] = src[kk * rs];
  }
  for (; c < NR; ++c)  // zeros past nr
    for (int64_t kk = 0; kk < k; ++kk) dst[kk * NR + c] = T(0);
}

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic pop
#endif

// One block of MR rows and NPn packets of columns of C, from a packed A panel and a packed B
// panel of ldb columns; rows past mr and columns past nr are computed on the zero padding and
// not stored.
template <class T, int NPn>
inline void gemm_block(const T* ap, const T* bp, int64_t ldb, int64_t k, T* c, int64_t ldc,
                       int64_t mr, int64_t nr, bool accumulate) {
  using K = GemmKernel<T>;
  using P = typename K::Packet;
  namespace ei = Eigen::internal;
  constexpr int MR = K::MR;
  constexpr int64_t PS = K::PS;
  P acc[MR][NPn];
#pragma GCC unroll 16
  for (int r = 0; r < MR; ++r)
#pragma GCC unroll 4
    for (int t = 0; t < NPn; ++t) acc[r][t] = ei::pset1<P>(T(0));
  for (int64_t kk = 0; kk < k; ++kk, ap += MR, bp += ldb) {
    P bv[NPn];
#pragma GCC unroll 4
    for (int t = 0; t < NPn; ++t) bv[t] = ei::pload<P>(bp + t * PS);
#pragma GCC unroll 16
    for (int r = 0; r < MR; ++r) {
      const P av = ei::pset1<P>(ap[r]);
#pragma GCC unroll 4
      for (int t = 0; t < NPn; ++t) acc[r][t] = ei::pmadd(av, bv[t], acc[r][t]);
    }
  }
  // Loops over r stay unrolled with constant indices (a runtime index into acc would put the
  // accumulators on the stack for the whole reduction).
  if (nr == NPn * PS) {
#pragma GCC unroll 16
    for (int r = 0; r < MR; ++r) {
      if (r >= mr) break;
      T* cr = c + r * ldc;
#pragma GCC unroll 4
      for (int t = 0; t < NPn; ++t) {
        const P v = accumulate ? ei::padd(ei::ploadu<P>(cr + t * PS), acc[r][t]) : acc[r][t];
        ei::pstoreu(cr + t * PS, v);
      }
    }
    return;
  }
  alignas(64) T tmp[MR][NPn * PS];
#pragma GCC unroll 16
  for (int r = 0; r < MR; ++r)
#pragma GCC unroll 4
    for (int t = 0; t < NPn; ++t) ei::pstore(tmp[r] + t * PS, acc[r][t]);
  for (int64_t r = 0; r < mr; ++r) {
    T* cr = c + r * ldc;
    for (int64_t j = 0; j < nr; ++j) cr[j] = accumulate ? cr[j] + tmp[r][j] : tmp[r][j];
  }
}

// C (m x n, row-major with leading dimension ldc) = or += A · B, A m x k and B k x n given by
// pointer and row and column strides. Columns go in panels of NR; the last, narrower panel is
// packed and computed only as wide as its whole packets.
template <class T>
void gemm_packed(T* c, int64_t ldc, int64_t m, int64_t n, int64_t k, const T* a, int64_t a_rs,
                 int64_t a_cs, const T* b, int64_t b_rs, int64_t b_cs, bool accumulate) {
  using K = GemmKernel<T>;
  constexpr int64_t MR = K::MR, NR = K::NR, PS = K::PS;
  if (m <= 0 || n <= 0) return;
  if (k <= 0) {
    if (!accumulate)
      for (int64_t i = 0; i < m; ++i) std::fill(c + i * ldc, c + i * ldc + n, T(0));
    return;
  }
  const int64_t panels = (m + MR - 1) / MR;
  const int64_t kc = std::min(k, K::KC);
  T* ap = gemm_scratch<T>(0, panels * MR * kc);
  T* bp = gemm_scratch<T>(1, NR * kc);
  for (int64_t k0 = 0; k0 < k; k0 += kc) {
    const int64_t kb = std::min(kc, k - k0);
    const bool add = accumulate || k0 > 0;
    for (int64_t p = 0; p < panels; ++p)
      pack_a_panel(a + k0 * a_cs, a_rs, a_cs, p * MR, std::min(MR, m - p * MR), kb,
                   ap + p * MR * kb);
    for (int64_t j0 = 0; j0 < n; j0 += NR) {
      const int64_t nr = std::min(NR, n - j0);
      const int64_t packets = (nr + PS - 1) / PS;
      pack_b_panel(b + k0 * b_rs, b_rs, b_cs, j0, nr, packets * PS, kb, bp);
      for (int64_t p = 0; p < panels; ++p) {
        const T* a_panel = ap + p * MR * kb;
        T* c_block = c + p * MR * ldc + j0;
        const int64_t mr = std::min(MR, m - p * MR);
        if (packets == 3)
          gemm_block<T, 3>(a_panel, bp, packets * PS, kb, c_block, ldc, mr, nr, add);
        else if (packets == 2)
          gemm_block<T, 2>(a_panel, bp, packets * PS, kb, c_block, ldc, mr, nr, add);
        else
          gemm_block<T, 1>(a_panel, bp, packets * PS, kb, c_block, ldc, mr, nr, add);
      }
    }
  }
}

}  // namespace tapegrad::detail
