// Chapter 10: moving models between tapegrad and PyTorch.
// Builds as guide_10_torch.
//   guide_10_torch          trains a small CNN, writes 10_model.safetensors (a checkpoint) and
//                           10_io.safetensors (an input x and the model's output y in eval mode),
//                           loads the checkpoint into a new model and checks its output
//   guide_10_torch check    loads 10_torch_model.safetensors (written by PyTorch through
//                           tools/torch_interop.py) and checks that the output for x in
//                           10_torch_io.safetensors is PyTorch's y
// 10_torch.py runs both directions against torch.nn. Exits non-zero if a check fails.
#include <cstdio>
#include <iostream>
#include <memory>
#include <string>
#include <tapegrad/tapegrad.hpp>

namespace nn = tg::nn;
namespace io = tg::io;
using tg::Tensor;

// The same layers as torch.nn.Sequential(Conv2d(1, 4, 3, padding=1), BatchNorm2d(4), ReLU(),
// Flatten(), Linear(144, 5)): the same state_dict names and shapes.
std::shared_ptr<nn::Sequential<float>> make_model(uint64_t seed) {
  tg::Generator gen(seed);
  return std::make_shared<nn::Sequential<float>>(
      std::make_shared<nn::Conv2D<float>>(1, 4, 3, 1, 1, 1, true, gen),
      std::make_shared<nn::BatchNorm2d<float>>(4), std::make_shared<nn::ReLU<float>>(),
      std::make_shared<nn::Flatten<float>>(),
      std::make_shared<nn::Dense<float>>(144, 5, true, gen));
}

Tensor<float> eval_output(nn::Module<float>& model, const Tensor<float>& x) {
  tg::NoGradGuard no_grad;
  tg::Tape<float> tape;
  model.eval();
  return model(tape.constant(x)).value().clone();
}

double max_difference(const Tensor<float>& a, const Tensor<float>& b) {
  return (a.array() - b.array()).abs().maxCoeff();
}

int main(int argc, char** argv) {
  if (argc > 1 && std::string(argv[1]) == "check") {  // PyTorch -> tapegrad
    auto model = make_model(99);
    io::load_checkpoint("10_torch_model.safetensors", *model);
    const io::SafetensorsFile f = io::load_safetensors("10_torch_io.safetensors");
    const auto& x = std::get<Tensor<float>>(*f.find("x"));
    const auto& y = std::get<Tensor<float>>(*f.find("y"));
    const double d = max_difference(eval_output(*model, x), y);
    std::printf("PyTorch's weights in tapegrad: largest difference from PyTorch's output %.2g\n",
                d);
    return d < 1e-5 ? 0 : 1;
  }

  // tapegrad -> file: a few Adam steps, so that the weights and BatchNorm's statistics move.
  tg::Generator gen(1);
  const auto x = Tensor<float>::randn({3, 1, 6, 6}, gen);
  const std::vector<int64_t> labels = {0, 3, 4};
  auto model = make_model(1);
  tg::optim::Adam<float> opt(model->named_parameters(), {.lr = 1e-2});
  tg::Tape<float> tape;
  for (int step = 0; step < 5; ++step) {
    tape.clear();
    opt.zero_grad();
    tape.backward(tg::cross_entropy((*model)(tape.constant(x)), labels));
    opt.step();
  }
  io::save_checkpoint("10_model.safetensors", *model, opt);
  const Tensor<float> y = eval_output(*model, x);
  io::save_safetensors<float>("10_io.safetensors", {{"x", x}, {"y", y}});

  int optimizer_entries = 0;
  for (const auto& [name, t] : io::load_safetensors("10_model.safetensors").tensors) {
    if (name.starts_with("optimizer.") && ++optimizer_entries > 3) continue;
    std::cout << "  " << name << " " << tg::dtype_name(t) << " " << tg::shape_of(t) << "\n";
  }
  std::cout << "  ... " << optimizer_entries << " optimizer entries in all\n";

  auto reloaded = make_model(2);
  io::load_checkpoint("10_model.safetensors", *reloaded);  // the model part only
  const double d = max_difference(eval_output(*reloaded, x), y);
  std::printf("reloaded in tapegrad: largest output difference %.2g\n", d);
  std::printf("%s the checkpoint restores the model exactly\n", d == 0 ? "[ok]    " : "[FAILED]");
  return d == 0 ? 0 : 1;
}
