#pragma once
/// \file
/// Flushing subnormal ("denormal") numbers to zero (torch.set_flush_denormal).
///
/// A vanishing gradient passes through the subnormal range (below 1.2e-38 in float) on its way
/// to zero, and on Intel CPUs every operation that reads or writes a subnormal takes a microcode
/// assist of about a hundred cycles: on a 2-vCPU Intel Xeon with AVX-512, benchmarks/core.cpp's
/// BM_TapeOverhead (1000 layers of tanh(x * w + b) on 16 elements, whose gradient fades through
/// that range) took 0.128-0.133 µs per op, 0.083-0.085 with flushing on.

#if defined(__SSE__) || defined(_M_X64)
#include <xmmintrin.h>
/// 1 where the CPU can flush subnormal numbers to zero (x86-64, through MXCSR), else 0.
#define TAPEGRAD_HAS_FLUSH_DENORMAL 1
#else
/// 0: this CPU has no mode that flushes subnormal numbers to zero.
#define TAPEGRAD_HAS_FLUSH_DENORMAL 0
#endif

namespace tapegrad {

namespace detail {
// MXCSR's flush-to-zero (results) and denormals-are-zero (operands) bits.
inline constexpr unsigned flush_denormal_bits = 0x8040;

// The calling thread's flush bits (0 where the CPU has none).
inline unsigned denormal_mode() {
#if TAPEGRAD_HAS_FLUSH_DENORMAL
  return _mm_getcsr() & flush_denormal_bits;
#else
  return 0;
#endif
}

inline void set_denormal_mode(unsigned bits) {
#if TAPEGRAD_HAS_FLUSH_DENORMAL
  _mm_setcsr((_mm_getcsr() & ~flush_denormal_bits) | bits);
#else
  (void)bits;
#endif
}

// Gives the thread that runs a team's share the flush mode of the thread that started the team
// while it lives, then restores the thread's own: a result is then the same whichever thread
// computed it, and an OpenMP thread the user's own code shares is left as it was.
class FollowDenormalMode {
 public:
  explicit FollowDenormalMode(unsigned caller)
      : own_(denormal_mode()), changed_(own_ != caller) {
    if (changed_) set_denormal_mode(caller);
  }
  ~FollowDenormalMode() {
    if (changed_) set_denormal_mode(own_);
  }
  FollowDenormalMode(const FollowDenormalMode&) = delete;
  FollowDenormalMode& operator=(const FollowDenormalMode&) = delete;

 private:
  unsigned own_;
  bool changed_;
};
}  // namespace detail

/// Flushes subnormal floats and doubles to zero (on) or keeps them (off) on the calling thread,
/// and so in every op it runs: subnormal operands read as zero, subnormal results are zero.
/// tapegrad's parallel loops run in the mode of the thread that calls them, whichever threads
/// compute them. Returns false, changing nothing, where the CPU has no such mode (x86-64 has
/// it), as torch.set_flush_denormal.
inline bool set_flush_denormal(bool on) {
  if (!TAPEGRAD_HAS_FLUSH_DENORMAL) return false;
  detail::set_denormal_mode(on ? detail::flush_denormal_bits : 0u);
  return true;
}

}  // namespace tapegrad
