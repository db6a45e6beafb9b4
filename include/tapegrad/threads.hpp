#pragma once
/// \file
/// Threads: one switch for tapegrad's OpenMP loops and matrix products (set_num_threads), and
/// the teams that run those loops, which fall back to the calling thread while another program
/// takes our cores (detail::run_team).

#include <time.h>

#include <Eigen/Core>
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <utility>

#include "tapegrad/denormal.hpp"

#ifdef _OPENMP
#include <omp.h>
#endif

namespace tapegrad {

/// Sets the threads of tapegrad's loops and of Eigen's GEMM to n (at least 1), for the calling
/// thread (OpenMP's omp_set_num_threads; Eigen follows it unless Eigen::setNbThreads was called).
inline void set_num_threads(int n) {
  if (n < 1) n = 1;
#ifdef _OPENMP
  omp_set_num_threads(n);
#endif
}

/// The threads OpenMP loops use (1 without OpenMP).
inline int get_num_threads() {
#ifdef _OPENMP
  return omp_get_max_threads();
#else
  return 1;
#endif
}

/// Elementwise loops go parallel only above this many elements: below it, waking threads
/// costs more than the loop.
inline constexpr int64_t parallel_threshold = 1 << 15;

namespace detail {
// The calling thread's number in the current team (0 outside one): an index into per-thread
// scratch buffers and partial sums. A team that runs on the calling thread alone (see
// run_team) still numbers its shares 0, 1, ..., so each share uses the same buffers either way.
inline thread_local int team_thread = 0;
// Whether the calling thread is running a share of a team (then a loop inside it stays whole).
inline thread_local bool in_team = false;

inline int thread_index() { return team_thread; }

// Inside a team of ours or the user's own OpenMP region: a loop there stays on its thread.
inline bool inside_team() {
#ifdef _OPENMP
  return in_team || omp_in_parallel();
#else
  return in_team;
#endif
}

// Marks the calling thread as running share t of a team for its lifetime.
class TeamShare {
 public:
  explicit TeamShare(int t) : thread_(team_thread), in_team_(in_team) {
    team_thread = t;
    in_team = true;
  }
  ~TeamShare() {
    team_thread = thread_;
    in_team = in_team_;
  }
  TeamShare(const TeamShare&) = delete;
  TeamShare& operator=(const TeamShare&) = delete;

 private:
  int thread_;
  bool in_team_;
};

// Whether a loop over n elements should be split among the threads: more than one thread, n
// above parallel_threshold, and not already inside a team. Below it the loop opens no OpenMP
// region at all (each region ends in a barrier).
inline bool split_among_threads(int64_t n) {
  return n > parallel_threshold && get_num_threads() > 1 && !inside_team();
}

inline int64_t now_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

// CPU time the calling thread has run, in ns (0 where the clock is missing).
inline int64_t thread_cpu_ns() {
#ifdef CLOCK_THREAD_CPUTIME_ID
  timespec ts{};
  if (clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts) != 0) return 0;
  return int64_t{ts.tv_sec} * 1'000'000'000 + ts.tv_nsec;
#else
  return 0;
#endif
}

// Another program on our cores. Every OpenMP region ends in a barrier, so when the core of one
// of our threads is taken by another process, the others wait for that thread's next time
// slice (milliseconds) at every region, and a step of many small regions becomes many times
// slower than on one thread; and when a thread of ours shares a core, the caller runs at a
// fraction of its speed. A team is "late" when its caller waited at the barrier longer than
// running the whole team alone would have taken, or ran less than 3/4 of its own share's
// wall time (its share long enough to tell, 0.1 ms); after a late team, teams run on the calling
// thread alone for a stretch (4 ms, doubling after each late team up to 256 ms), then one
// runs in parallel again to probe; after a team on time the next stretch is half as long
// (none below 4 ms), so a machine that was freed gets both threads back within 0.3 s.
struct Contention {
  static constexpr int64_t first_stretch_ns = 4'000'000;
  static constexpr int64_t longest_stretch_ns = 256'000'000;
  // Waits below this are wake-up latencies of an idle machine, not contention.
  static constexpr int64_t tolerance_ns = 200'000;
  // Own shares at least this long are checked for the caller's CPU time.
  static constexpr int64_t cpu_checked_ns = 100'000;

  std::atomic<int64_t> alone_until{0};  // steady-clock ns: teams run on the caller until then
  std::atomic<int64_t> stretch{0};      // the next stretch's length, 0 when not backing off
  std::atomic<int64_t> late_teams{0};   // counted for tests

  bool backing_off(int64_t now) const { return now < alone_until.load(std::memory_order_relaxed); }
  // A team started at `start` by a caller whose own share ended at `own_end` (having run on a
  // core for own_cpu ns of it) and whose barrier released it at `end`, with `threads` shares.
  void judge(int64_t start, int64_t own_end, int64_t end, int threads, int64_t own_cpu) {
    const int64_t own = own_end - start, waited = end - own_end;
    const bool slowed = own >= cpu_checked_ns && own_cpu > 0 && 4 * own_cpu < 3 * own;
    if (!slowed && waited <= own * (threads - 1) + tolerance_ns) {
      // On time: back off again for half as long, down to not at all.
      const int64_t half = stretch.load(std::memory_order_relaxed) / 2;
      stretch.store(half < first_stretch_ns ? 0 : half, std::memory_order_relaxed);
      if (half >= first_stretch_ns) alone_until.store(end + half, std::memory_order_relaxed);
      return;
    }
    late_teams.fetch_add(1, std::memory_order_relaxed);
    const int64_t s = std::clamp(2 * stretch.load(std::memory_order_relaxed), first_stretch_ns,
                                 longest_stretch_ns);
    stretch.store(s, std::memory_order_relaxed);
    alone_until.store(end + s, std::memory_order_relaxed);
  }
};

inline Contention& contention() {
  static Contention c;
  return c;
}

// One thread for the calling thread's OpenMP regions, Eigen's GEMM among them, while it lives
// (OpenMP's per-thread setting, so other threads are not affected). Eigen multiplies on one
// thread inside an OpenMP region; a team that runs on the calling thread alone does the same,
// so that it computes the same bits either way.
class OneThread {
 public:
  OneThread() : threads_(get_num_threads()) { set_num_threads(1); }
  ~OneThread() { set_num_threads(threads_); }
  OneThread(const OneThread&) = delete;
  OneThread& operator=(const OneThread&) = delete;

 private:
  int threads_;
};

// Runs body(t, threads) for t = 0 .. threads - 1, one share per OpenMP thread; on the calling
// thread alone, share after share, while backing off from contention (Contention) or inside
// another team (nested: one share, body(0, 1), as OpenMP runs a nested region). The shares and
// their numbers are the same either way, and every share runs in the caller's flush-denormal
// mode (denormal.hpp), so the results are too.
template <class F>
void run_team(int threads, F&& body) {
  if (inside_team() || threads <= 1) {
    body(0, 1);
    return;
  }
  Contention& c = contention();
  const int64_t start = now_ns();
  if (c.backing_off(start)) {
    OneThread one;
    for (int t = 0; t < threads; ++t) {
      TeamShare share(t);
      body(t, threads);
    }
    return;
  }
#ifdef _OPENMP
  const int64_t start_cpu = thread_cpu_ns();
  const unsigned denormals = denormal_mode();
  int64_t own_end = start, own_cpu = 0;
  int team = 1;
#pragma omp parallel num_threads(threads)
  {
    const int t = omp_get_thread_num();
    {
      FollowDenormalMode mode(denormals);
      TeamShare share(t);
      body(t, omp_get_num_threads());
    }
    if (t == 0) {
      own_end = now_ns();
      own_cpu = thread_cpu_ns() - start_cpu;
      team = omp_get_num_threads();
    }
  }
  if (team > 1) c.judge(start, own_end, now_ns(), team, own_cpu);
#else
  for (int t = 0; t < threads; ++t) {
    TeamShare share(t);
    body(t, threads);
  }
#endif
}

// Share t of `threads` of [0, n) as OpenMP's schedule(static) cuts it: contiguous, the first
// n % threads shares one longer.
inline std::pair<int64_t, int64_t> static_share(int64_t n, int t, int threads) {
  const int64_t q = n / threads, r = n % threads;
  const int64_t lo = t * q + std::min<int64_t>(t, r);
  return {lo, lo + q + (t < r ? 1 : 0)};
}

// for (i = 0; i < n; ++i) f(i), the iterations cut among the threads as OpenMP's
// schedule(static) when `parallel` (run_team: on the calling thread alone under contention),
// else in order on the calling thread (share 0).
template <class F>
void parallel_for(int64_t n, bool parallel, F&& f) {
  if (!parallel || get_num_threads() <= 1 || inside_team() || n <= 1) {
    for (int64_t i = 0; i < n; ++i) f(i);
    return;
  }
  run_team(get_num_threads(), [&](int t, int threads) {
    const auto [lo, hi] = static_share(n, t, threads);
    for (int64_t i = lo; i < hi; ++i) f(i);
  });
}

// Runs f(offset, length) over [0, n) in pieces of `chunk` elements, on every thread when
// split_among_threads(n). Each piece is one call on one thread, so what f computes per piece
// does not depend on the thread count (reductions: one partial result per piece, combined in
// piece order).
template <class F>
void for_each_chunk(int64_t n, int64_t chunk, F&& f) {
  const int64_t pieces = (n + chunk - 1) / chunk;
  parallel_for(pieces, split_among_threads(n),
               [&](int64_t i) { f(i * chunk, std::min(chunk, n - i * chunk)); });
}

// Runs f(offset, length) over [0, n) for an elementwise loop (every output element a function
// of the same element of the inputs, no reduction): one call for the whole range when it is
// small, else one contiguous slice per thread (slice bounds on multiples of 64 elements, whole
// cache lines of floats). The result does not depend on how [0, n) was cut.
template <class F>
void for_each_slice(int64_t n, F&& f) {
  if (!split_among_threads(n)) {
    if (n > 0) f(int64_t(0), n);
    return;
  }
  run_team(get_num_threads(), [&](int t, int nt) {
    const int64_t per = (n + nt - 1) / nt;
    const int64_t step = (per + 63) / 64 * 64;
    const int64_t lo = std::min(n, t * step), hi = std::min(n, lo + step);
    if (hi > lo) f(lo, hi - lo);
  });
}
}  // namespace detail

}  // namespace tapegrad
