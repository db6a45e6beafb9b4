// Chapter 2: layers and models.
// Builds as guide_02_layers; exits non-zero if a claim of the chapter is false.
#include <cmath>
#include <cstdio>
#include <iostream>
#include <memory>
#include <tapegrad/tapegrad.hpp>

namespace nn = tg::nn;
using tg::Tensor;
using tg::Var;

static int failures = 0;
static void check(bool ok, const char* claim) {
  std::printf("%s %s\n", ok ? "[ok]    " : "[FAILED]", claim);
  failures += !ok;
}

// A module of your own, as a torch.nn.Module subclass: register children, write forward().
class Head : public nn::Module<float> {
 public:
  Head(int64_t in, int64_t hidden, int64_t out)
      : fc1(register_module("fc1", std::make_shared<nn::Dense<float>>(in, hidden))),
        fc2(register_module("fc2", std::make_shared<nn::Dense<float>>(hidden, out))) {}
  Var<float> forward(const Var<float>& x) override { return (*fc2)(tg::relu((*fc1)(x))); }
  std::string name() const override { return "Head"; }
  std::shared_ptr<nn::Dense<float>> fc1, fc2;
};

int main() {
  nn::default_generator().manual_seed(1);  // every layer draws its initial weights from it
  nn::Sequential<float> model{
      std::make_shared<nn::Conv2D<float>>(1, 4, 3, /*stride=*/1, /*padding=*/1),
      std::make_shared<nn::BatchNorm2d<float>>(4),
      std::make_shared<nn::ReLU<float>>(),
      std::make_shared<nn::MaxPool2D<float>>(2),
      std::make_shared<nn::Flatten<float>>(),
      std::make_shared<nn::Dropout<float>>(0.25),
      std::make_shared<Head>(64, 16, 10)};
  std::cout << model.summary({1, 1, 8, 8});
  check(model.num_parameters() == (36 + 4) + (4 + 4) + (64 * 16 + 16) + (16 * 10 + 10),
        "parameter count: conv 40, batch norm 8, head 1040 + 170");

  // Parameters and buffers carry PyTorch's state_dict names.
  for (const auto& [name, p] : model.named_parameters())
    std::cout << "  parameter " << name << " " << p.shape() << "\n";
  for (const auto& [name, b] : model.named_buffers())
    std::cout << "  buffer    " << name << " " << b.shape() << "\n";
  check(model.at<Head>(6).fc1->weight.shape() == tg::Shape{16, 64},
        "a Dense weight is [out, in], as torch.nn.Linear's");

  // train(): BatchNorm uses the batch's statistics and moves its running ones; Dropout drops.
  tg::Generator gen(7);
  auto images = Tensor<float>::randn({4, 1, 8, 8}, gen, 0.5f, 1.0f);
  auto& bn = model.at<nn::BatchNorm2d<float>>(1);
  tg::Tape<float> tape;
  model.train();
  model(tape.constant(images));
  std::cout << "after one training batch: running_mean " << bn.running_mean
            << "\n  num_batches_tracked " << bn.num_batches_tracked.item() << "\n";
  check(bn.num_batches_tracked.item() == 1 && bn.running_mean[0] != 0,
        "a training forward updates BatchNorm's running statistics");

  // eval(): running statistics, no dropout. A sample's output no longer depends on its batch.
  model.eval();
  auto outputs = [&](const Tensor<float>& x) {
    tg::NoGradGuard no_grad;
    tape.clear();
    return model(tape.constant(x)).value().clone();
  };
  Tensor<float> batch_out = outputs(images);
  Tensor<float> first = Tensor<float>::from(std::vector<float>(images.data(), images.data() + 64),
                                            tg::Shape{1, 1, 8, 8});
  Tensor<float> first_out = outputs(first);
  double diff = 0;
  for (int j = 0; j < 10; ++j) diff = std::max(diff, double(std::abs(first_out[j] - batch_out[j])));
  std::cout << "eval: sample 0 alone vs in its batch, max difference " << diff << "\n";
  check(diff < 1e-6, "in eval mode a sample's output ignores its batch");
  check(!model.is_training() && !model.at<Head>(6).fc1->is_training(),
        "eval() reaches every child module");
  return failures == 0 ? 0 : 1;
}
