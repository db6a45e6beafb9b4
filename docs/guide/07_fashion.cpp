// Chapter 7: training on Fashion-MNIST, checkpoints and resuming.
// Builds as guide_07_fashion. Exits 77 (ctest: skipped) when Fashion-MNIST is not installed,
// non-zero if a claim of the chapter is false.
#include <cstdio>
#include <cstring>
#include <iostream>
#include <memory>
#include <string>
#include <tapegrad/tapegrad.hpp>
#include <vector>

namespace nn = tg::nn;
namespace io = tg::io;
using tg::Tensor;

static int failures = 0;
static void check(bool ok, const std::string& claim) {
  std::printf("%s %s\n", ok ? "[ok]    " : "[FAILED]", claim.c_str());
  failures += !ok;
}

std::shared_ptr<nn::Sequential<float>> make_model(uint64_t seed) {
  tg::Generator gen(seed);
  return std::make_shared<nn::Sequential<float>>(
      std::make_shared<nn::Dense<float>>(784, 128, true, gen), std::make_shared<nn::ReLU<float>>(),
      std::make_shared<nn::Dense<float>>(128, 10, true, gen));
}

// One pass over the loader; returns the mean training loss.
double train_epoch(nn::Module<float>& model, tg::optim::Optimizer<float>& opt,
                   io::DataLoader<float>& loader) {
  tg::Tape<float> tape;
  double sum = 0;
  model.train();
  for (const auto& batch : loader) {
    tape.clear();
    opt.zero_grad();
    auto loss = tg::cross_entropy(model(tape.constant(batch.images)), batch.labels);
    tape.backward(loss);
    opt.step();
    sum += loss.item();
  }
  return sum / double(loader.size());
}

double accuracy(nn::Module<float>& model, io::DataLoader<float>& loader) {
  tg::NoGradGuard no_grad;
  tg::Tape<float> tape;
  model.eval();
  int64_t correct = 0;
  for (const auto& batch : loader) {
    tape.clear();
    const Tensor<float> logits = model(tape.constant(batch.images)).value();
    for (int64_t i = 0; i < batch.size(); ++i) {
      int64_t best = 0;
      for (int64_t k = 1; k < 10; ++k) best = logits(i, k) > logits(i, best) ? k : best;
      correct += best == batch.labels[size_t(i)];
    }
  }
  return double(correct) / double(loader.num_samples());
}

int main() {
  try {  // $TAPEGRAD_FASHION_MNIST_DIR, else /usr/share/datasets/fashion-mnist
    for (auto split : {io::Split::Train, io::Split::Test}) io::FashionMNIST::find_directory(split);
  } catch (const tg::IOError& e) {
    std::cout << "skipped: " << e.what() << "\n";
    return 77;
  }
  const io::FashionMNIST train(io::Split::Train, "", io::ImageLayout::Flat);
  const io::FashionMNIST test(io::Split::Test, "", io::ImageLayout::Flat);
  std::cout << "train " << train.images.shape() << ", test " << test.images.shape() << " from "
            << train.directory << "\n";

  // The first 6000 training images keep this program fast; the examples use all 60000.
  const int64_t n = 6000;
  Tensor<float> images({n, 784});
  std::memcpy(images.data(), train.images.data(), sizeof(float) * n * 784);
  const std::vector<int64_t> labels(train.labels.begin(), train.labels.begin() + n);
  const auto options = io::DataLoaderOptions(64).shuffle(true).seed(1).normalize(0.2860f, 0.3530f);
  io::DataLoader<float> loader(images, labels, options);
  io::DataLoader<float> test_loader(test.images, test.labels,
                                    io::DataLoaderOptions(1000).normalize(0.2860f, 0.3530f));

  // Three epochs, with a checkpoint after the second.
  auto model = make_model(1);
  tg::optim::Adam<float> opt(model->named_parameters(), {.lr = 1e-3});
  for (int epoch = 0; epoch < 3; ++epoch) {
    const double loss = train_epoch(*model, opt, loader);
    const double acc = accuracy(*model, test_loader);
    std::printf("epoch %d  training loss %.4f  test accuracy %.4f\n", epoch, loss, acc);
    if (epoch == 1) io::save_checkpoint("07_fashion.safetensors", *model, opt, {{"epoch", "1"}});
    if (epoch == 2) check(acc > 0.75, "3 epochs on 6000 images: test accuracy > 0.75");
  }

  // Resume: a model built differently, and a fresh optimizer, continue from the checkpoint.
  auto resumed = make_model(99);
  tg::optim::Adam<float> resumed_opt(resumed->named_parameters(), {.lr = 1e-3});
  const io::Metadata meta = io::load_checkpoint("07_fashion.safetensors", *resumed, resumed_opt);
  for (const auto& [key, value] : meta) std::cout << "  metadata " << key << " = " << value << "\n";
  io::DataLoader<float> resumed_loader(images, labels, options);
  resumed_loader.set_epoch(2);  // the shuffling of epoch 2, as in the uninterrupted run
  train_epoch(*resumed, resumed_opt, resumed_loader);
  bool same = true;
  const auto a = model->parameters(), b = resumed->parameters();
  for (size_t i = 0; i < a.size(); ++i)
    same = same && (a[i].value().array() == b[i].value().array()).all();
  check(same, "2 epochs + checkpoint + 1 resumed epoch = 3 epochs, bit for bit");
  return failures == 0 ? 0 : 1;
}
