// Attention speed, float, at 1 and 2 threads (the argument), the shapes of the transformer-lm
// workload (batch 32, 4 heads of 32, sequence 64, causal):
//   BM_Attention/<t>          the fused scaled_dot_product_attention op, forward + backward, on
//                             q, k, v [32, 4, 64, 32]
//   BM_AttentionUnfused/<t>   the same function from general ops: batched matmul, the causal
//                             mask added, softmax, batched matmul (what the fused op replaces)
//   BM_EncoderLayer/<t>       one TransformerEncoderLayer(128, 4, ff 512, dropout 0, Post-LN) on
//                             [64, 32, 128], causal: zero_grad, forward, backward
// Run: bench_attention --benchmark_repetitions=5 --benchmark_report_aggregates_only=true

#include "tapegrad/ops/attention.hpp"

#include <benchmark/benchmark.h>

#include <cmath>

#include "tapegrad/nn/transformer.hpp"
#include "tapegrad/ops/activation.hpp"
#include "tapegrad/ops/elementwise.hpp"
#include "tapegrad/ops/linalg.hpp"
#include "tapegrad/ops/shape.hpp"
#include "tapegrad/threads.hpp"

namespace tg = tapegrad;
namespace nn = tapegrad::nn;
using TF = tg::Tensor<float>;

namespace {

constexpr int64_t kBatch = 32, kHeads = 4, kSeq = 64, kHeadDim = 32;

struct Inputs {
  TF q, k, v, seed;
  Inputs() {
    tg::Generator g(1);
    const tg::Shape s{kBatch, kHeads, kSeq, kHeadDim};
    q = TF::randn(s, g), k = TF::randn(s, g), v = TF::randn(s, g), seed = TF::randn(s, g);
  }
};

void BM_Attention(benchmark::State& state) {
  tg::set_num_threads(static_cast<int>(state.range(0)));
  const Inputs in;
  tg::Tape<float> tape;
  for (auto _ : state) {
    tape.clear();
    auto q = tape.input(in.q), k = tape.input(in.k), v = tape.input(in.v);
    auto y = tg::scaled_dot_product_attention(q, k, v, {.is_causal = true});
    tape.backward(y, in.seed);
    benchmark::DoNotOptimize(q.grad().data());
  }
}

void BM_AttentionUnfused(benchmark::State& state) {
  tg::set_num_threads(static_cast<int>(state.range(0)));
  const Inputs in;
  TF causal({kSeq, kSeq});
  for (int64_t i = 0; i < kSeq; ++i)
    for (int64_t j = 0; j < kSeq; ++j) causal(i, j) = j > i ? -INFINITY : 0.0f;
  const float scale = 1.0f / std::sqrt(float(kHeadDim));
  tg::Tape<float> tape;
  for (auto _ : state) {
    tape.clear();
    auto q = tape.input(in.q), k = tape.input(in.k), v = tape.input(in.v);
    auto scores = tg::matmul(q, tg::transpose(k, -2, -1)) * scale + causal;
    auto y = tg::matmul(tg::softmax(scores, -1), v);
    tape.backward(y, in.seed);
    benchmark::DoNotOptimize(q.grad().data());
  }
}

void BM_EncoderLayer(benchmark::State& state) {
  tg::set_num_threads(static_cast<int>(state.range(0)));
  tg::Generator g(2);
  nn::TransformerEncoderLayer<float> layer(128, 4, {.dim_feedforward = 512, .dropout = 0.0}, g);
  const TF x = TF::randn({kSeq, kBatch, 128}, g), seed = TF::randn({kSeq, kBatch, 128}, g);
  tg::Tape<float> tape;
  for (auto _ : state) {
    tape.clear();
    layer.zero_grad();
    auto y = layer.forward(tape.input(x), {.is_causal = true});
    tape.backward(y, seed);
    benchmark::DoNotOptimize(layer.linear1->weight.grad().data());
  }
}

}  // namespace

BENCHMARK(BM_Attention)->Arg(1)->Arg(2)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_AttentionUnfused)->Arg(1)->Arg(2)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_EncoderLayer)->Arg(1)->Arg(2)->Unit(benchmark::kMillisecond)->UseRealTime();

BENCHMARK_MAIN();
