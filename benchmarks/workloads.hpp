#pragma once
// The speed issue's workloads, built from tapegrad's layers exactly as ../shared/peers/libtorch
// builds them with LibTorch, so both programs time the same computation.
//
//   deep-mlp-relu       784 -> 20 x (Dense 256 + ReLU) -> Dense 10, batch 128
//   deep-mlp-sigmoid    same with Sigmoid
//   deep-mlp-layernorm  784 -> 20 x (Dense 256 + LayerNorm + ReLU) -> Dense 10
//   wide-mlp            784-1024-1024-10 ReLU, batch 256
//   small-resnet        conv3x3 1->16 (no bias) + BN + ReLU, 3 BasicBlocks at 16, one stride-2
//                       BasicBlock to 32, global average pool, Dense 32->10; batch 64 x 1x28x28
//   deep-mlp-relu-b1024        deep-mlp-relu at batch 1024 (the memory issue's checkpoint target)
//   deep-mlp-relu-b1024-ckpt4  the same, checkpointed every 4 layers (Sequential::
//                              checkpoint_every(8): a layer is a Dense and its ReLU)
//
// One training step = zero_grad, forward, cross-entropy, backward, clip-by-global-norm 1.0,
// SGD momentum 0.9 (lr 0.01).

#include <memory>
#include <string>
#include <vector>

#include "tapegrad/tapegrad.hpp"

namespace workloads {

namespace tg = tapegrad;
namespace nn = tapegrad::nn;
using Model = nn::Sequential<float>;

enum class Hidden { ReLU, Sigmoid, LayerNormReLU };

inline std::shared_ptr<Model> mlp(int64_t in, int64_t width, int depth, int64_t out, Hidden h) {
  auto m = std::make_shared<Model>();
  int64_t prev = in;
  for (int i = 0; i < depth; ++i) {
    m->push_back(std::make_shared<nn::Dense<float>>(prev, width));
    if (h == Hidden::LayerNormReLU) m->push_back(std::make_shared<nn::LayerNorm<float>>(width));
    if (h == Hidden::Sigmoid)
      m->push_back(std::make_shared<nn::Sigmoid<float>>());
    else
      m->push_back(std::make_shared<nn::ReLU<float>>());
    prev = width;
  }
  m->push_back(std::make_shared<nn::Dense<float>>(prev, out));
  return m;
}

inline std::shared_ptr<Model> small_resnet() {
  auto m = std::make_shared<Model>();
  m->push_back(std::make_shared<nn::Conv2D<float>>(1, 16, 3, 1, 1, 1, false));
  m->push_back(std::make_shared<nn::BatchNorm2d<float>>(16));
  m->push_back(std::make_shared<nn::ReLU<float>>());
  for (int i = 0; i < 3; ++i) m->push_back(std::make_shared<nn::BasicBlock<float>>(16, 16, 1));
  m->push_back(std::make_shared<nn::BasicBlock<float>>(16, 32, 2));
  m->push_back(std::make_shared<nn::GlobalAvgPool2D<float>>());
  m->push_back(std::make_shared<nn::Dense<float>>(32, 10));
  return m;
}

struct Workload {
  std::string name;
  std::shared_ptr<Model> model;
  tg::Tensor<float> input;
  std::vector<int64_t> labels;
};

inline Workload make(const std::string& name) {
  tg::Generator g(0);
  auto data = [&](tg::Shape s) { return tg::Tensor<float>::randn(s, g); };
  Workload w{name, nullptr, {}, {}};
  if (name == "deep-mlp-relu" || name == "deep-mlp-relu-b1024")
    w.model = mlp(784, 256, 20, 10, Hidden::ReLU);
  else if (name == "deep-mlp-relu-b1024-ckpt4") {
    w.model = mlp(784, 256, 20, 10, Hidden::ReLU);
    w.model->checkpoint_every(8);
  } else if (name == "deep-mlp-sigmoid")
    w.model = mlp(784, 256, 20, 10, Hidden::Sigmoid);
  else if (name == "deep-mlp-layernorm")
    w.model = mlp(784, 256, 20, 10, Hidden::LayerNormReLU);
  else if (name == "wide-mlp") {
    w.model = std::make_shared<Model>();
    w.model->push_back(std::make_shared<nn::Dense<float>>(784, 1024));
    w.model->push_back(std::make_shared<nn::ReLU<float>>());
    w.model->push_back(std::make_shared<nn::Dense<float>>(1024, 1024));
    w.model->push_back(std::make_shared<nn::ReLU<float>>());
    w.model->push_back(std::make_shared<nn::Dense<float>>(1024, 10));
  } else if (name == "small-resnet") {
    w.model = small_resnet();
  } else {
    tg::detail::fail<tg::ValueError>("workloads: unknown workload '", name, "'");
  }
  const int64_t batch = name == "wide-mlp"                        ? 256
                        : name == "small-resnet"                  ? 64
                        : name.starts_with("deep-mlp-relu-b1024") ? 1024
                                                                  : 128;
  w.input = name == "small-resnet" ? data({batch, 1, 28, 28}) : data({batch, 784});
  for (int64_t i = 0; i < batch; ++i) w.labels.push_back(static_cast<int64_t>(g.below(10)));
  return w;
}

// The training loop of one workload: step() runs one full training step.
class Trainer {
 public:
  explicit Trainer(Workload w)
      : w_(std::move(w)),
        opt_(w_.model->parameters(), tg::optim::SGDOptions{.lr = 0.01, .momentum = 0.9}) {
    opt_.set_clip_grad_norm(1.0);
  }
  // Returns the loss.
  float step() {
    tape_.clear();
    opt_.zero_grad();
    auto loss = tg::cross_entropy((*w_.model)(tape_.constant(w_.input)), w_.labels);
    tape_.backward(loss);
    opt_.step();
    return loss.item();
  }
  // What the tape held in the last step, and the floor backward needs (Tape::memory_stats).
  tg::TapeMemoryStats memory() const { return tape_.memory_stats(); }
  // Forward and backward only (the layers issue's benchmark).
  float forward_backward() {
    tape_.clear();
    w_.model->zero_grad();
    auto loss = tg::cross_entropy((*w_.model)(tape_.constant(w_.input)), w_.labels);
    tape_.backward(loss);
    return loss.item();
  }

 private:
  Workload w_;
  tg::Tape<float> tape_;
  tg::optim::SGD<float> opt_;
};

inline const std::vector<std::string>& names() {
  static const std::vector<std::string> all{
      "deep-mlp-relu", "deep-mlp-sigmoid",    "deep-mlp-layernorm",       "wide-mlp",
      "small-resnet",  "deep-mlp-relu-b1024", "deep-mlp-relu-b1024-ckpt4"};
  return all;
}

}  // namespace workloads
