#pragma once
/// \file
/// Generator: a seeded random source whose numbers are the same on every machine and compiler.
/// std::mt19937 is portable but std::normal_distribution is not, so the distributions are ours:
/// xoshiro256** (state seeded by splitmix64), 53-bit uniforms, Box-Muller normals.

#include <cmath>
#include <cstdint>
#include <numbers>

namespace tapegrad {

/// A seeded random source whose numbers are the same on every machine and compiler: xoshiro256**
/// seeded by splitmix64.
class Generator {
 public:
  /// A generator seeded with seed.
  explicit Generator(uint64_t seed = 0) { manual_seed(seed); }

  /// Restarts the sequence from seed.
  void manual_seed(uint64_t seed) {
    uint64_t x = seed;
    for (auto& s : state_) s = splitmix64(x);
    has_spare_ = false;
  }

  /// The next 64 random bits.
  uint64_t next_u64() {
    const uint64_t result = rotl(state_[1] * 5, 7) * 9;
    const uint64_t t = state_[1] << 17;
    state_[2] ^= state_[0];
    state_[3] ^= state_[1];
    state_[1] ^= state_[2];
    state_[0] ^= state_[3];
    state_[2] ^= t;
    state_[3] = rotl(state_[3], 45);
    return result;
  }

  /// Uniform in [0, 1) with 53 random bits.
  double uniform() { return static_cast<double>(next_u64() >> 11) * 0x1.0p-53; }
  /// Uniform in [lo, hi).
  double uniform(double lo, double hi) { return lo + (hi - lo) * uniform(); }

  /// Standard normal by Box-Muller; the second value of each pair is kept for the next call.
  double normal() {
    if (has_spare_) {
      has_spare_ = false;
      return spare_;
    }
    double u1 = 0;
    while (u1 == 0) u1 = uniform();  // log(0) would be -inf
    const double u2 = uniform();
    const double r = std::sqrt(-2.0 * std::log(u1));
    const double a = 2.0 * std::numbers::pi * u2;
    spare_ = r * std::sin(a);
    has_spare_ = true;
    return r * std::cos(a);
  }
  /// Normal with the given mean and standard deviation.
  double normal(double mean, double stddev) { return mean + stddev * normal(); }

  /// Uniform integer in [0, n), without modulo bias (Lemire's method is overkill here:
  /// rejection on the top bits is simple and exact).
  uint64_t below(uint64_t n) {
    if (n <= 1) return 0;
    const uint64_t limit = UINT64_MAX - UINT64_MAX % n;
    uint64_t x;
    do x = next_u64();
    while (x >= limit);
    return x % n;
  }

 private:
  static uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }
  static uint64_t splitmix64(uint64_t& x) {
    uint64_t z = (x += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
  }

  uint64_t state_[4]{};
  double spare_ = 0;
  bool has_spare_ = false;
};

}  // namespace tapegrad
