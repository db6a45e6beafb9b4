// Training-step speed of whole networks in float, for the comparison with LibTorch.
// One iteration = tape.clear(), forward, cross_entropy loss, backward, zero_grad (no optimizer
// update); the time reported is wall time per step in ms. The argument is the thread count
// (tg::set_num_threads: Eigen's GEMM and our OpenMP loops).
//
//   BM_DeepMLP_ReLU/<t>       784 → 20 × (Dense 256 + ReLU) → Dense 10, batch 128
//   BM_DeepMLP_Sigmoid/<t>    the same with Sigmoid
//   BM_DeepMLP_LayerNorm/<t>  784 → 20 × (Dense 256 → LayerNorm → ReLU) → Dense 10, batch 128
//   BM_WideMLP/<t>            784 → 1024 → 1024 → 10, ReLU, batch 256
//   BM_SmallResNet/<t>        conv3×3 1→16 + BN + ReLU, 3 × BasicBlock(16), BasicBlock(16→32,
//                             stride 2), GlobalAvgPool2D, Dense 32→10; batch 64 of 1×28×28
//
// Run: bench_layers --benchmark_repetitions=3 --benchmark_report_aggregates_only=true

#include <benchmark/benchmark.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <vector>

#include "tapegrad/nn/activation.hpp"
#include "tapegrad/nn/batch_norm.hpp"
#include "tapegrad/nn/conv2d.hpp"
#include "tapegrad/nn/dense.hpp"
#include "tapegrad/nn/layer_norm.hpp"
#include "tapegrad/nn/pool.hpp"
#include "tapegrad/nn/residual.hpp"
#include "tapegrad/nn/sequential.hpp"
#include "tapegrad/ops/loss.hpp"
#include "tapegrad/threads.hpp"

namespace tg = tapegrad;
namespace nn = tapegrad::nn;

namespace {

using Net = nn::Sequential<float>;
using Ptr = Net::Ptr;

enum class Block { relu, sigmoid, layer_norm };

std::shared_ptr<Net> deep_mlp(Block kind) {
  auto net = std::make_shared<Net>();
  int64_t in = 784;
  for (int i = 0; i < 20; ++i) {
    net->push_back(std::make_shared<nn::Dense<float>>(in, 256));
    if (kind == Block::layer_norm) net->push_back(std::make_shared<nn::LayerNorm<float>>(256));
    if (kind == Block::sigmoid)
      net->push_back(std::make_shared<nn::Sigmoid<float>>());
    else
      net->push_back(std::make_shared<nn::ReLU<float>>());
    in = 256;
  }
  net->push_back(std::make_shared<nn::Dense<float>>(256, 10));
  return net;
}

std::shared_ptr<Net> wide_mlp() {
  return std::make_shared<Net>(std::initializer_list<Ptr>{
      std::make_shared<nn::Dense<float>>(784, 1024), std::make_shared<nn::ReLU<float>>(),
      std::make_shared<nn::Dense<float>>(1024, 1024), std::make_shared<nn::ReLU<float>>(),
      std::make_shared<nn::Dense<float>>(1024, 10)});
}

std::shared_ptr<Net> small_resnet() {
  return std::make_shared<Net>(std::initializer_list<Ptr>{
      std::make_shared<nn::Conv2D<float>>(1, 16, 3, 1, 1, 1, false),
      std::make_shared<nn::BatchNorm2d<float>>(16), std::make_shared<nn::ReLU<float>>(),
      std::make_shared<nn::BasicBlock<float>>(16, 16),
      std::make_shared<nn::BasicBlock<float>>(16, 16),
      std::make_shared<nn::BasicBlock<float>>(16, 16),
      std::make_shared<nn::BasicBlock<float>>(16, 32, 2),
      std::make_shared<nn::GlobalAvgPool2D<float>>(), std::make_shared<nn::Dense<float>>(32, 10)});
}

// Times training steps of `net` on one fixed random batch of the given input shape.
void run_steps(benchmark::State& state, Net& net, const tg::Shape& input_shape) {
  tg::set_num_threads(static_cast<int>(state.range(0)));
  tg::Generator gen(7);
  const auto x = tg::Tensor<float>::randn(input_shape, gen);
  std::vector<int64_t> labels(static_cast<size_t>(input_shape[0]));
  for (auto& l : labels) l = static_cast<int64_t>(gen.below(10));
  net.train();
  tg::Tape<float> tape;
  for (auto _ : state) {
    tape.clear();
    auto loss = tg::cross_entropy(net(tape.constant(x)), labels);
    tape.backward(loss);
    benchmark::DoNotOptimize(loss.item());
    net.zero_grad();
  }
  state.counters["samples/s"] = benchmark::Counter(
      static_cast<double>(state.iterations() * input_shape[0]), benchmark::Counter::kIsRate);
  tg::set_num_threads(1);
}

void BM_DeepMLP_ReLU(benchmark::State& state) {
  auto net = deep_mlp(Block::relu);
  run_steps(state, *net, {128, 784});
}
void BM_DeepMLP_Sigmoid(benchmark::State& state) {
  auto net = deep_mlp(Block::sigmoid);
  run_steps(state, *net, {128, 784});
}
void BM_DeepMLP_LayerNorm(benchmark::State& state) {
  auto net = deep_mlp(Block::layer_norm);
  run_steps(state, *net, {128, 784});
}
void BM_WideMLP(benchmark::State& state) {
  auto net = wide_mlp();
  run_steps(state, *net, {256, 784});
}
void BM_SmallResNet(benchmark::State& state) {
  auto net = small_resnet();
  run_steps(state, *net, {64, 1, 28, 28});
}

}  // namespace

BENCHMARK(BM_DeepMLP_ReLU)->Arg(1)->Arg(2)->UseRealTime()->Unit(benchmark::kMillisecond);
BENCHMARK(BM_DeepMLP_Sigmoid)->Arg(1)->Arg(2)->UseRealTime()->Unit(benchmark::kMillisecond);
BENCHMARK(BM_DeepMLP_LayerNorm)->Arg(1)->Arg(2)->UseRealTime()->Unit(benchmark::kMillisecond);
BENCHMARK(BM_WideMLP)->Arg(1)->Arg(2)->UseRealTime()->Unit(benchmark::kMillisecond);
BENCHMARK(BM_SmallResNet)->Arg(1)->Arg(2)->UseRealTime()->Unit(benchmark::kMillisecond);

BENCHMARK_MAIN();
