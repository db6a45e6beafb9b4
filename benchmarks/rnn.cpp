// Recurrent layers in float: the LSTM workload and what the fused cell op buys.
// One iteration = tape.clear(), forward over the whole sequence, loss = sum of the outputs,
// backward, zero_grad (no optimizer update); wall time per iteration in ms. The argument is
// the thread count (tg::set_num_threads: Eigen's GEMM and our OpenMP loops).
//
//   BM_LSTM/<t>          nn::LSTM(32, 128), sequence 50, batch 64: forward + backward
//   BM_LSTMForward/<t>   the same, forward only (no gradient recorded)
//   BM_LSTMComposed/<t>  the same LSTM written with small ops (linear, slice, sigmoid, tanh,
//                        *, +: 16 nodes per step instead of 2), to measure the fused op
//   BM_GRU/<t>           nn::GRU(32, 128), same sizes, forward + backward
//   BM_LSTMMemory/<t>    BM_LSTM's peak step memory, mem_MB, as the LibTorch peer measures it
//                        (rss.hpp; one per process: --benchmark_filter=BM_LSTMMemory/1)
//
// Medians over repetitions: bench_rnn --benchmark_repetitions=5
//   --benchmark_report_aggregates_only=true   (the machine may be shared: look at the spread)

#include "tapegrad/nn/rnn.hpp"

#include <benchmark/benchmark.h>

#include <cstdint>
#include <vector>

#include "rss.hpp"
#include "tapegrad/ops/activation.hpp"
#include "tapegrad/ops/elementwise.hpp"
#include "tapegrad/ops/reduce.hpp"
#include "tapegrad/ops/shape.hpp"
#include "tapegrad/ops/stack.hpp"
#include "tapegrad/threads.hpp"

namespace tg = tapegrad;
namespace nn = tapegrad::nn;

namespace {

constexpr int64_t kInput = 32, kHidden = 128, kSteps = 50, kBatch = 64;

tg::Tensor<float> sequence() {
  tg::Generator gen(7);
  return tg::Tensor<float>::randn({kSteps, kBatch, kInput}, gen);
}

void report(benchmark::State& state) {
  state.counters["sequences/s"] = benchmark::Counter(
      static_cast<double>(state.iterations() * kBatch), benchmark::Counter::kIsRate);
  tg::set_num_threads(1);
}

void run_layer(benchmark::State& state, nn::RNNBase<float>& layer, bool memory = false) {
  tg::set_num_threads(static_cast<int>(state.range(0)));
  const auto x = sequence();
  tg::Tape<float> tape;
  const rss::StepMemory step_memory;
  for (auto _ : state) {
    tape.clear();
    auto loss = tg::sum(layer(tape.constant(x)));
    tape.backward(loss);
    benchmark::DoNotOptimize(loss.item());
    layer.zero_grad();
  }
  if (memory) state.counters["mem_MB"] = step_memory.added_mb();
  report(state);
}

void BM_LSTM(benchmark::State& state) {
  nn::LSTM<float> lstm(kInput, kHidden);
  run_layer(state, lstm);
}

void BM_LSTMMemory(benchmark::State& state) {
  nn::LSTM<float> lstm(kInput, kHidden);
  run_layer(state, lstm, true);
}

void BM_GRU(benchmark::State& state) {
  nn::GRU<float> gru(kInput, kHidden);
  run_layer(state, gru);
}

void BM_LSTMForward(benchmark::State& state) {
  tg::set_num_threads(static_cast<int>(state.range(0)));
  nn::LSTM<float> lstm(kInput, kHidden);
  const auto x = sequence();
  tg::Tape<float> tape;
  tg::NoGradGuard no_grad;
  for (auto _ : state) {
    tape.clear();
    benchmark::DoNotOptimize(lstm(tape.constant(x)).value().data());
  }
  report(state);
}

// The LSTM equations with one op per operation (what the layer would cost without
// ops/rnn.hpp), on the same parameters.
void BM_LSTMComposed(benchmark::State& state) {
  tg::set_num_threads(static_cast<int>(state.range(0)));
  nn::LSTM<float> lstm(kInput, kHidden);
  const auto x = sequence();
  const int64_t H = kHidden;
  tg::Tape<float> tape;
  std::vector<tg::Var<float>> outs(kSteps);
  const auto zeros = tg::Tensor<float>::zeros({kBatch, H});
  for (auto _ : state) {
    tape.clear();
    const auto xp = tg::linear(tape.constant(x), tape.param(lstm.weight_ih_l(0)),
                               tape.param(lstm.bias_ih_l(0)));
    const auto w_hh = tape.param(lstm.weight_hh_l(0)), b_hh = tape.param(lstm.bias_hh_l(0));
    auto h = tape.constant(zeros), c = tape.constant(zeros);
    for (int64_t t = 0; t < kSteps; ++t) {
      const auto g =
          tg::reshape(tg::slice(xp, 0, t, t + 1), {kBatch, 4 * H}) + tg::linear(h, w_hh, b_hh);
      const auto i = tg::sigmoid(tg::slice(g, 1, 0, H));
      const auto f = tg::sigmoid(tg::slice(g, 1, H, 2 * H));
      const auto gg = tg::tanh(tg::slice(g, 1, 2 * H, 3 * H));
      const auto o = tg::sigmoid(tg::slice(g, 1, 3 * H, 4 * H));
      c = f * c + i * gg;
      h = o * tg::tanh(c);
      outs[static_cast<size_t>(t)] = h;
    }
    auto loss = tg::sum(tg::stack(outs));
    tape.backward(loss);
    benchmark::DoNotOptimize(loss.item());
    lstm.zero_grad();
  }
  report(state);
}

}  // namespace

BENCHMARK(BM_LSTM)->Arg(1)->Arg(2)->UseRealTime()->Unit(benchmark::kMillisecond);
BENCHMARK(BM_LSTMForward)->Arg(1)->Arg(2)->UseRealTime()->Unit(benchmark::kMillisecond);
BENCHMARK(BM_LSTMComposed)->Arg(1)->Arg(2)->UseRealTime()->Unit(benchmark::kMillisecond);
BENCHMARK(BM_LSTMMemory)
    ->Arg(1)
    ->Arg(2)
    ->Iterations(25)
    ->UseRealTime()
    ->Unit(benchmark::kMillisecond);
BENCHMARK(BM_GRU)->Arg(1)->Arg(2)->UseRealTime()->Unit(benchmark::kMillisecond);

BENCHMARK_MAIN();
