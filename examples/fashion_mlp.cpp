// fashion_mlp: a 784-256-256-10 ReLU MLP trained on Fashion-MNIST with Adam (lr 1e-3, batch
// 128), 5 epochs by default; test accuracy after each epoch (about 0.88 after 5), a checkpoint
// after each epoch in --checkpoint-dir, and --resume to continue from one. --help for the flags.
#include <cstdio>
#include <exception>
#include <memory>

#include "fashion_train.hpp"
#include "tapegrad/nn/activation.hpp"
#include "tapegrad/nn/dense.hpp"
#include "tapegrad/nn/sequential.hpp"
#include "tapegrad/optim/adam.hpp"
#include "tapegrad/tapegrad.hpp"
#include "tapegrad/threads.hpp"

namespace nn = tapegrad::nn;

int main(int argc, char** argv) {
  int threads = 1;
  examples::TrainOptions o = examples::parse_train_flags(
      argc, argv, "fashion_mlp",
      "Trains a 784-256-256-10 ReLU MLP on Fashion-MNIST (Adam, lr 1e-3, batch 128).", 5,
      "constant", threads);
  o.batch_size = 128;
  o.layout = tg::io::ImageLayout::Flat;
  try {
    tg::set_num_threads(threads);
    nn::Sequential<float> model{
        std::make_shared<nn::Dense<float>>(784, 256), std::make_shared<nn::ReLU<float>>(),
        std::make_shared<nn::Dense<float>>(256, 256), std::make_shared<nn::ReLU<float>>(),
        std::make_shared<nn::Dense<float>>(256, 10)};
    std::printf("%s", model.summary({1, 784}).c_str());
    tg::optim::Adam<float> adam(model.named_parameters(), {.lr = 1e-3});
    examples::fit(model, adam, o);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
  return 0;
}
