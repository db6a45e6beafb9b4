// Training-step benchmarks of the speed issue (see workloads.hpp), at 1 and 2 threads.
// Each benchmark's name is "<workload>/threads:<n>"; the time is one full training step, and
// tape_MB the memory the tape keeps for it (values, gradients, saved tensors).
//   build/release/benchmarks/bench_workloads --benchmark_repetitions=5
//       --benchmark_report_aggregates_only=true   (one command line)
#include "workloads.hpp"

#include <benchmark/benchmark.h>

namespace {

void run_step(benchmark::State& state, const std::string& name, bool full_step) {
  tapegrad::set_num_threads(static_cast<int>(state.range(0)));
  workloads::Trainer trainer(workloads::make(name));
  for (int i = 0; i < 3; ++i) trainer.step();  // warm up: buffers, caches, thread pool
  for (auto _ : state) {
    float loss = full_step ? trainer.step() : trainer.forward_backward();
    benchmark::DoNotOptimize(loss);
  }
  state.counters["tape_MB"] = trainer.tape_bytes() * 1e-6;
}

void register_all() {
  for (const auto& name : workloads::names()) {
    for (bool full : {true, false}) {
      const std::string label = (full ? "step/" : "fwd_bwd/") + name;
      benchmark::RegisterBenchmark(label.c_str(),
                                   [name, full](benchmark::State& s) { run_step(s, name, full); })
          ->ArgName("threads")
          ->Arg(1)
          ->Arg(2)
          ->Unit(benchmark::kMillisecond)
          ->UseRealTime()
          ->MinTime(1.0);
    }
  }
}

}  // namespace

int main(int argc, char** argv) {
  register_all();
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
