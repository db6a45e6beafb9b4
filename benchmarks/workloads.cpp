// Training-step benchmarks of the speed issue (see workloads.hpp), at 1 and 2 threads.
//   step/<workload>/threads:<n>     one full training step; tape_MB: the most the tape held in
//                                   it, floor_MB: what backward cannot do with less (the values
//                                   it reads, saved buffers, parameter gradients, the largest
//                                   set of live intermediate gradients; Tape::memory_stats)
//   fwd_bwd/<workload>/threads:<n>  forward and backward only
//   memory/<workload>/threads:<n>   mem_MB: the peak resident set during 5 warm-up and 20 timed
//                                   steps minus the resident set before them, as the LibTorch
//                                   peer measures it; run one per process for a clean figure
//   build/release/benchmarks/bench_workloads --benchmark_repetitions=5
//       --benchmark_report_aggregates_only=true   (one command line)
#include "workloads.hpp"

#include <benchmark/benchmark.h>

#include <string>

#include "rss.hpp"

namespace {

void run_memory(benchmark::State& state, const std::string& name) {
  tapegrad::set_num_threads(static_cast<int>(state.range(0)));
  workloads::Trainer trainer(workloads::make(name));
  const rss::StepMemory memory;
  for (int i = 0; i < 5; ++i) trainer.step();
  for (auto _ : state) benchmark::DoNotOptimize(trainer.step());
  const tapegrad::TapeMemoryStats m = trainer.memory();
  state.counters["mem_MB"] = memory.added_mb();
  state.counters["tape_MB"] = double(m.peak()) / (1 << 20);
  state.counters["floor_MB"] = double(m.floor()) / (1 << 20);
}

void run_step(benchmark::State& state, const std::string& name, bool full_step) {
  tapegrad::set_num_threads(static_cast<int>(state.range(0)));
  workloads::Trainer trainer(workloads::make(name));
  for (int i = 0; i < 3; ++i) trainer.step();  // warm up: buffers, caches, thread pool
  for (auto _ : state) {
    float loss = full_step ? trainer.step() : trainer.forward_backward();
    benchmark::DoNotOptimize(loss);
  }
  const tapegrad::TapeMemoryStats m = trainer.memory();
  state.counters["tape_MB"] = double(m.peak()) / (1 << 20);
  state.counters["floor_MB"] = double(m.floor()) / (1 << 20);
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
    benchmark::RegisterBenchmark(("memory/" + name).c_str(),
                                 [name](benchmark::State& s) { run_memory(s, name); })
        ->ArgName("threads")
        ->Arg(1)
        ->Arg(2)
        ->Unit(benchmark::kMillisecond)
        ->UseRealTime()
        ->Iterations(20);
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
