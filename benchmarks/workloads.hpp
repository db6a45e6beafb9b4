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
//   transformer-lm      Embedding(96, 128) + learned positions [64, 1, 128], 4 x
//                       TransformerEncoderLayer(128, 4 heads, ff 512, ReLU, dropout 0, Post-LN),
//                       causal, Dense(128, 96); sequence 64, batch 32, layout [T, N, E]; the
//                       loss over all 2048 positions. The peer passes the causal mask as a float
//                       [64, 64] tensor; tapegrad's is_causal computes the same function.
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
using Model = nn::Module<float>;
using Stack = nn::Sequential<float>;

enum class Hidden { ReLU, Sigmoid, LayerNormReLU };

inline std::shared_ptr<Stack> mlp(int64_t in, int64_t width, int depth, int64_t out, Hidden h) {
  auto m = std::make_shared<Stack>();
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
  auto m = std::make_shared<Stack>();
  m->push_back(std::make_shared<nn::Conv2D<float>>(1, 16, 3, 1, 1, 1, false));
  m->push_back(std::make_shared<nn::BatchNorm2d<float>>(16));
  m->push_back(std::make_shared<nn::ReLU<float>>());
  for (int i = 0; i < 3; ++i) m->push_back(std::make_shared<nn::BasicBlock<float>>(16, 16, 1));
  m->push_back(std::make_shared<nn::BasicBlock<float>>(16, 32, 2));
  m->push_back(std::make_shared<nn::GlobalAvgPool2D<float>>());
  m->push_back(std::make_shared<nn::Dense<float>>(32, 10));
  return m;
}

// The peer's CharLM: token ids [T, N] (as floats) -> logits [T * N, vocab].
class CharLM : public Model {
 public:
  CharLM(int64_t vocab, int64_t d, int64_t heads, int64_t ff, int64_t layers, int64_t seq)
      : vocab_(vocab) {
    tok = register_module("tok", std::make_shared<nn::Embedding<float>>(vocab, d));
    pos = register_parameter("pos", tg::Tensor<float>({seq, 1, d}));  // as the peer's
    nn::init::normal_(pos.value(), 0.0, 0.02);
    nn::TransformerEncoderLayer<float> layer(d, heads, {.dim_feedforward = ff, .dropout = 0.0});
    enc = register_module("enc", std::make_shared<nn::TransformerEncoder<float>>(layer, layers));
    head = register_module("head", std::make_shared<nn::Dense<float>>(d, vocab));
  }
  tg::Var<float> forward(const tg::Var<float>& ids) override {
    const tg::Var<float> h = enc->forward((*tok)(ids) + ids.tape().param(pos), {.is_causal = true});
    return tg::reshape((*head)(h), {-1, vocab_});
  }
  std::string name() const override { return "CharLM"; }

 private:
  int64_t vocab_;
  std::shared_ptr<nn::Embedding<float>> tok;
  tg::Parameter<float> pos;  // [seq, 1, d], broadcast over the batch
  std::shared_ptr<nn::TransformerEncoder<float>> enc;
  std::shared_ptr<nn::Dense<float>> head;
};

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
    auto m = mlp(784, 256, 20, 10, Hidden::ReLU);
    m->checkpoint_every(8);
    w.model = m;
  } else if (name == "deep-mlp-sigmoid")
    w.model = mlp(784, 256, 20, 10, Hidden::Sigmoid);
  else if (name == "deep-mlp-layernorm")
    w.model = mlp(784, 256, 20, 10, Hidden::LayerNormReLU);
  else if (name == "wide-mlp") {
    auto m = std::make_shared<Stack>();
    m->push_back(std::make_shared<nn::Dense<float>>(784, 1024));
    m->push_back(std::make_shared<nn::ReLU<float>>());
    m->push_back(std::make_shared<nn::Dense<float>>(1024, 1024));
    m->push_back(std::make_shared<nn::ReLU<float>>());
    m->push_back(std::make_shared<nn::Dense<float>>(1024, 10));
    w.model = m;
  } else if (name == "small-resnet") {
    w.model = small_resnet();
  } else if (name == "transformer-lm") {
    const int64_t vocab = 96, seq = 64, batch = 32;
    w.model = std::make_shared<CharLM>(vocab, 128, 4, 512, 4, seq);
    w.input = tg::Tensor<float>({seq, batch});
    for (int64_t i = 0; i < seq * batch; ++i) w.input[i] = float(g.below(vocab));
    for (int64_t i = 0; i < seq * batch; ++i)
      w.labels.push_back(static_cast<int64_t>(g.below(vocab)));
    return w;
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
      "deep-mlp-relu", "deep-mlp-sigmoid", "deep-mlp-layernorm",  "wide-mlp",
      "small-resnet",  "transformer-lm",   "deep-mlp-relu-b1024", "deep-mlp-relu-b1024-ckpt4"};
  return all;
}

}  // namespace workloads
