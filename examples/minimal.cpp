// The README's example: an MLP on Fashion-MNIST for one epoch, with clipping and a monitor.
#include <iostream>
#include <tapegrad/tapegrad.hpp>

int main() {
  namespace nn = tg::nn;
  tg::io::FashionMNIST train(tg::io::Split::Train, "", tg::io::ImageLayout::Flat);
  nn::Sequential<float> model{std::make_shared<nn::Dense<float>>(784, 256),
                              std::make_shared<nn::ReLU<float>>(),
                              std::make_shared<nn::Dense<float>>(256, 10)};
  tg::optim::Adam<float> opt(model.named_parameters(), {.lr = 1e-3});
  opt.set_clip_grad_norm(1.0);  // applied inside step(), before the update
  tg::diag::GradientMonitor<float> monitor(model);
  monitor.set_clipping(opt);  // the diagnosis then knows the clipping is on
  tg::io::DataLoader<float> loader(train.images, train.labels,
                                   tg::io::DataLoaderOptions(128).shuffle(true));
  tg::Tape<float> tape;
  for (int step = 0; const auto& batch : loader) {
    tape.clear();  // keeps the buffers: no allocation after the first step
    opt.zero_grad();
    auto loss = tg::cross_entropy(model(tape.constant(batch.images)), batch.labels);
    tape.backward(loss);
    monitor.record(step);  // per-layer gradient norms, vanishing/exploding flags
    opt.step();
    if (step++ % 100 == 0) std::cout << "step " << step - 1 << "  loss " << loss.item() << "\n";
  }
  std::cout << monitor.report() << monitor.diagnosis();
}
