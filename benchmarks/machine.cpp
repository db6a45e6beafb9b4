// The machine under the benchmarks, not tapegrad: what two threads pay to talk to each other.
//
//   BM_CoreRoundTrip  two threads pinned to the first two CPUs this process may use hand a
//                     cache line back and forth; round_trip_ns = one handover there and back.
//
// Why: on a virtual machine the host may put our two vCPUs on neighbouring cores or on distant
// ones (another chiplet, whose L3 is not shared), and may move them within seconds. On the
// 2-vCPU Zen 5 of the speed issue the round trip was 70-95 ns or about 365 ns, and a 2-thread
// deep-mlp-relu step 3.0 or 4.6 ms accordingly (the 1-thread step 5.0-5.5 ms either way), since
// every layer's threads read what the other one wrote. compare.sh runs it before each 2-thread
// row, so its table tells which placement a 2-thread figure was measured on.

#include <benchmark/benchmark.h>
#include <pthread.h>
#include <sched.h>

#include <atomic>
#include <chrono>
#include <thread>
#include <vector>

namespace {

// The first two CPUs of the calling thread's affinity mask (fewer when there are fewer).
std::vector<int> first_two_cpus() {
  cpu_set_t set;
  CPU_ZERO(&set);
  std::vector<int> cpus;
  if (sched_getaffinity(0, sizeof(set), &set) != 0) return cpus;
  for (int c = 0; c < CPU_SETSIZE && cpus.size() < 2; ++c)
    if (CPU_ISSET(c, &set)) cpus.push_back(c);
  return cpus;
}

bool pin_to(std::thread::native_handle_type thread, int cpu) {
  cpu_set_t set;
  CPU_ZERO(&set);
  CPU_SET(cpu, &set);
  return pthread_setaffinity_np(thread, sizeof(set), &set) == 0;
}

void BM_CoreRoundTrip(benchmark::State& state) {
  const std::vector<int> cpus = first_two_cpus();
  if (cpus.size() < 2) {
    state.SkipWithError("needs two CPUs");
    return;
  }
  constexpr long handovers = 100'000;
  alignas(64) std::atomic<long> line{0};
  std::atomic<bool> stop{false};
  // The partner answers every odd value with the next even one until told to stop.
  std::thread partner([&] {
    while (!stop.load(std::memory_order_relaxed)) {
      const long v = line.load(std::memory_order_acquire);
      if (v & 1) line.store(v + 1, std::memory_order_release);
    }
  });
  cpu_set_t saved;
  CPU_ZERO(&saved);
  pthread_getaffinity_np(pthread_self(), sizeof(saved), &saved);
  if (!pin_to(pthread_self(), cpus[0]) || !pin_to(partner.native_handle(), cpus[1])) {
    stop = true;
    partner.join();
    pthread_setaffinity_np(pthread_self(), sizeof(saved), &saved);
    state.SkipWithError("cannot pin the threads");
    return;
  }
  double ns = 0;
  long next = 1;
  for (auto _ : state) {
    const auto start = std::chrono::steady_clock::now();
    for (long i = 0; i < handovers; ++i, next += 2) {
      line.store(next, std::memory_order_release);
      while (line.load(std::memory_order_acquire) != next + 1) {
      }
    }
    ns +=
        std::chrono::duration<double, std::nano>(std::chrono::steady_clock::now() - start).count();
  }
  stop = true;
  partner.join();
  pthread_setaffinity_np(pthread_self(), sizeof(saved), &saved);
  state.counters["round_trip_ns"] = ns / (static_cast<double>(state.iterations()) * handovers);
}
BENCHMARK(BM_CoreRoundTrip)->Iterations(5)->UseRealTime()->Unit(benchmark::kMillisecond);

}  // namespace

BENCHMARK_MAIN();
