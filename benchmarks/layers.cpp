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
//   BM_ResNetOp/<op>/<phase>/<t>  one op of small-resnet at the workload's shapes (batch 64),
//                             phase fwd (forward only) or fwd_bwd (forward, then backward from a
//                             fixed output gradient into the input and the parameters): the
//                             Amdahl table of the speed issue (each op's share of the step and
//                             its speed-up from a second thread). Ops: conv3x3 1->16, 16->16,
//                             32->32, 16->32 stride 2, conv1x1 16->32 stride 2, batch_norm,
//                             relu, add at 16x28x28 and 32x14x14.
//
// Run: bench_layers --benchmark_repetitions=3 --benchmark_report_aggregates_only=true

#include <benchmark/benchmark.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
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

// One op of small-resnet: f maps the input Var (a parameter, so that backward computes its
// gradient) to the output; fwd_bwd adds backward from a fixed random output gradient.
using OpFn = std::function<tg::Var<float>(tg::Tape<float>&, const tg::Var<float>&)>;

void run_op(benchmark::State& state, const tg::Shape& in, const OpFn& f, bool backward) {
  tg::set_num_threads(static_cast<int>(state.range(0)));
  tg::Generator gen(3);
  tg::Parameter<float> x(tg::Tensor<float>::randn(in, gen));
  tg::Tape<float> tape;
  tg::Tensor<float> seed;
  auto once = [&] {
    tape.clear();
    const tg::Var<float> y = f(tape, tape.param(x));
    if (backward) {
      if (seed.numel() != y.numel()) seed = tg::Tensor<float>::randn(y.shape(), gen);
      tape.backward(y, seed);
    }
  };
  for (int i = 0; i < 3; ++i) once();
  for (auto _ : state) once();
  tg::set_num_threads(1);
}

template <class M>
OpFn module_op(std::shared_ptr<M> m) {
  return [m](tg::Tape<float>&, const tg::Var<float>& x) { return (*m)(x); };
}

void register_resnet_ops() {
  const tg::Shape a{64, 16, 28, 28}, b{64, 32, 14, 14};
  struct Op {
    const char* name;
    tg::Shape in;
    OpFn f;
  };
  tg::Generator gen(5);
  auto conv = [&](int64_t i, int64_t o, int64_t k, int64_t s) {
    return module_op(std::make_shared<nn::Conv2D<float>>(i, o, k, s, k / 2, 1, false, gen));
  };
  auto bn = [](int64_t c) { return module_op(std::make_shared<nn::BatchNorm2d<float>>(c)); };
  auto relu = [](tg::Tape<float>&, const tg::Var<float>& x) { return tg::relu(x); };
  // The residual sum's second operand: a constant of the same shape, made once per shape.
  auto add = [](const tg::Shape& s) {
    auto other = std::make_shared<tg::Tensor<float>>(tg::Tensor<float>::ones(s));
    return OpFn([other](tg::Tape<float>& t, const tg::Var<float>& x) {
      return x + t.constant(*other);
    });
  };
  const std::vector<Op> ops{
      {"conv3x3_1to16_28", {64, 1, 28, 28}, conv(1, 16, 3, 1)},
      {"conv3x3_16to16_28", a, conv(16, 16, 3, 1)},
      {"conv3x3_16to32_s2", a, conv(16, 32, 3, 2)},
      {"conv3x3_32to32_14", b, conv(32, 32, 3, 1)},
      {"conv1x1_16to32_s2", a, conv(16, 32, 1, 2)},
      {"batch_norm_16x28", a, bn(16)},
      {"batch_norm_32x14", b, bn(32)},
      {"relu_16x28", a, relu},
      {"relu_32x14", b, relu},
      {"add_16x28", a, add(a)},
      {"add_32x14", b, add(b)},
  };
  for (const Op& op : ops)
    for (bool bwd : {false, true}) {
      const std::string label = std::string("BM_ResNetOp/") + op.name + (bwd ? "/fwd_bwd" : "/fwd");
      benchmark::RegisterBenchmark(label.c_str(),
                                   [op, bwd](benchmark::State& s) { run_op(s, op.in, op.f, bwd); })
          ->ArgName("threads")
          ->Arg(1)
          ->Arg(2)
          ->UseRealTime()
          ->Unit(benchmark::kMicrosecond);
    }
}

}  // namespace

BENCHMARK(BM_DeepMLP_ReLU)->Arg(1)->Arg(2)->UseRealTime()->Unit(benchmark::kMillisecond);
BENCHMARK(BM_DeepMLP_Sigmoid)->Arg(1)->Arg(2)->UseRealTime()->Unit(benchmark::kMillisecond);
BENCHMARK(BM_DeepMLP_LayerNorm)->Arg(1)->Arg(2)->UseRealTime()->Unit(benchmark::kMillisecond);
BENCHMARK(BM_WideMLP)->Arg(1)->Arg(2)->UseRealTime()->Unit(benchmark::kMillisecond);
BENCHMARK(BM_SmallResNet)->Arg(1)->Arg(2)->UseRealTime()->Unit(benchmark::kMillisecond);

int main(int argc, char** argv) {
  register_resnet_ops();
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
