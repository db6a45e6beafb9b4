// Core op speed: GEMM throughput and the tape's per-op overhead.
//
//   BM_GemmFloat/<threads>  1024x1024x1024 tg::matmul in float; GFLOPS = 2 n^3 / wall time.
//   BM_GemmSplit/<m>/<k>/<n>/<split>  dst[m,n] = a[m,k] b[n,k]^T in float at 2 threads, the
//                           shapes of the MLP workloads; split 1 is detail::gemm's split
//                           (each thread one block of rows, or of columns when the result is
//                           wider than tall; Eigen single-threaded inside),
//                           split 0 Eigen's own parallel GEMM, which it replaced.
//   BM_TapeOverhead/flush_denormal:<0|1>
//                           on a Tape<float>: x = tanh(x * w + b) 1000 times on [16] vectors
//                           (3000 ops), then backward, then tape.clear(); us_per_op = wall time
//                           of one iteration / 3000 (forward + backward per op). Tiny tensors,
//                           so it measures recording, dispatch and the backward sweep, not math;
//                           but the gradient fades through the subnormal floats, which cost
//                           Intel CPUs an assist per vector op: flush_denormal:1 runs it under
//                           set_flush_denormal(true) (compare.sh's row is flush_denormal:0, as
//                           LibTorch's peer runs).
//
// Run with --benchmark_repetitions=5 --benchmark_report_aggregates_only=true for medians.

#include <benchmark/benchmark.h>

#include <chrono>

#include "tapegrad/denormal.hpp"
#include "tapegrad/gemm.hpp"
#include "tapegrad/ops/activation.hpp"
#include "tapegrad/ops/elementwise.hpp"
#include "tapegrad/ops/linalg.hpp"
#include "tapegrad/parameter.hpp"
#include "tapegrad/random.hpp"
#include "tapegrad/tape.hpp"
#include "tapegrad/threads.hpp"

namespace tg = tapegrad;

static void BM_GemmFloat(benchmark::State& state) {
  tg::set_num_threads(static_cast<int>(state.range(0)));
  constexpr int64_t n = 1024;
  tg::Generator gen(1);
  const auto a = tg::Tensor<float>::randn({n, n}, gen);
  const auto b = tg::Tensor<float>::randn({n, n}, gen);
  tg::Tape<float> tape;
  for (auto _ : state) {
    tape.clear();  // the output buffer is reused from the second iteration on
    auto y = tg::matmul(tape.constant(a), tape.constant(b));
    benchmark::DoNotOptimize(y.value().data());
    benchmark::ClobberMemory();
  }
  state.counters["GFLOPS"] =
      benchmark::Counter(static_cast<double>(state.iterations()) * 2.0 * n * n * n * 1e-9,
                         benchmark::Counter::kIsRate);
  tg::set_num_threads(1);
}
BENCHMARK(BM_GemmFloat)->Arg(1)->Arg(2)->UseRealTime()->Unit(benchmark::kMillisecond);

static void BM_GemmSplit(benchmark::State& state) {
  tg::set_num_threads(2);
  const int64_t m = state.range(0), k = state.range(1), n = state.range(2);
  tg::Generator gen(3);
  const auto a = tg::Tensor<float>::randn({m, k}, gen);
  const auto b = tg::Tensor<float>::randn({n, k}, gen);
  tg::Tensor<float> y({m, n});
  for (auto _ : state) {
    if (state.range(3))
      tg::detail::gemm(y.matrix(), a.matrix(), b.matrix().transpose(), false);
    else
      y.matrix().noalias() = a.matrix() * b.matrix().transpose();
    benchmark::DoNotOptimize(y.data());
    benchmark::ClobberMemory();
  }
  state.counters["GFLOPS"] =
      benchmark::Counter(static_cast<double>(state.iterations()) * 2.0 * double(m * k * n) * 1e-9,
                         benchmark::Counter::kIsRate);
  tg::set_num_threads(1);
}
BENCHMARK(BM_GemmSplit)
    ->ArgsProduct({{128}, {256}, {256}, {0, 1}})
    ->ArgsProduct({{256}, {784}, {1024}, {0, 1}})
    ->ArgsProduct({{256}, {1024}, {1024}, {0, 1}})
    ->ArgsProduct({{1024}, {1024}, {1024}, {0, 1}})
    ->UseRealTime()
    ->Unit(benchmark::kMicrosecond);

static void BM_TapeOverhead(benchmark::State& state) {
  tg::set_num_threads(1);
  tg::set_flush_denormal(state.range(0) != 0);
  constexpr int steps = 1000;
  tg::Generator gen(2);
  const auto x0 = tg::Tensor<float>::rand({16}, gen, -1.0f, 1.0f);
  tg::Parameter<float> w(tg::Tensor<float>::rand({16}, gen, -1.0f, 1.0f));
  tg::Parameter<float> b(tg::Tensor<float>::rand({16}, gen, -0.1f, 0.1f));
  const auto seed = tg::Tensor<float>::ones({16});
  tg::Tape<float> tape;
  const auto start = std::chrono::steady_clock::now();
  for (auto _ : state) {
    tape.clear();
    auto x = tape.input(x0);
    const auto wv = tape.param(w);
    const auto bv = tape.param(b);
    for (int i = 0; i < steps; ++i) x = tg::tanh(x * wv + bv);
    tape.backward(x, seed);
    benchmark::DoNotOptimize(w.grad().data());
    benchmark::ClobberMemory();
  }
  // A plain number (the library would print an inverted rate with a misleading "s" suffix).
  const std::chrono::duration<double, std::micro> elapsed =
      std::chrono::steady_clock::now() - start;
  state.counters["us_per_op"] =
      elapsed.count() / (static_cast<double>(state.iterations()) * 3 * steps);
  tg::set_flush_denormal(false);
}
BENCHMARK(BM_TapeOverhead)
    ->ArgName("flush_denormal")
    ->Arg(0)
    ->Arg(1)
    ->UseRealTime()
    ->Unit(benchmark::kMicrosecond);

BENCHMARK_MAIN();
