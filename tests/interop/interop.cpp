// The C++ half of the PyTorch round trip (test_torch_roundtrip.py runs it):
//   tapegrad_interop export DIR   trains a small CNN with BatchNorm and a 2-layer LSTM for a few
//                                 steps, then writes their checkpoints (model + optimizer) and,
//                                 in eval mode, an input and tapegrad's output for each
//   tapegrad_interop check DIR    loads the weights PyTorch initialised (torch_<model>.safetensors)
//                                 into the same tapegrad models and compares their outputs with
//                                 PyTorch's (torch_<model>_io.safetensors); exit 1 on a mismatch
// The models mirror torch.nn.Sequential(Conv2d(1,4,3,padding=1), BatchNorm2d(4), ReLU(),
// MaxPool2d(2), Conv2d(4,8,3,stride=2,padding=1), BatchNorm2d(8), ReLU(), Flatten(),
// Linear(32,5)) and torch.nn.LSTM(4, 6, num_layers=2), with PyTorch's state_dict names.
#include <cmath>
#include <cstdio>
#include <exception>
#include <memory>
#include <string>
#include <vector>

#include "tapegrad/tapegrad.hpp"

namespace tg = tapegrad;
namespace nn = tapegrad::nn;
namespace io = tapegrad::io;

namespace {

std::shared_ptr<nn::Sequential<float>> make_cnn(tg::Generator& g) {
  auto m = std::make_shared<nn::Sequential<float>>();
  m->push_back(std::make_shared<nn::Conv2D<float>>(1, 4, 3, 1, 1, 1, true, g));
  m->push_back(std::make_shared<nn::BatchNorm2d<float>>(4));
  m->push_back(std::make_shared<nn::ReLU<float>>());
  m->push_back(std::make_shared<nn::MaxPool2D<float>>(2));
  m->push_back(std::make_shared<nn::Conv2D<float>>(4, 8, 3, 2, 1, 1, true, g));
  m->push_back(std::make_shared<nn::BatchNorm2d<float>>(8));
  m->push_back(std::make_shared<nn::ReLU<float>>());
  m->push_back(std::make_shared<nn::Flatten<float>>());
  m->push_back(std::make_shared<nn::Dense<float>>(32, 5, true, g));
  return m;
}

std::shared_ptr<nn::LSTM<float>> make_lstm(tg::Generator& g) {
  return std::make_shared<nn::LSTM<float>>(4, 6, nn::RNNOptions{.num_layers = 2}, g);
}

const tg::Shape cnn_input{3, 1, 8, 8}, lstm_input{5, 3, 4};

// A few optimizer steps, so that weights and running statistics are not their initial values.
void train_cnn(nn::Module<float>& m, tg::optim::SGD<float>& opt, tg::Generator& g) {
  tg::Tape<float> tape;
  for (int step = 0; step < 5; ++step) {
    tape.clear();
    opt.zero_grad();
    std::vector<int64_t> labels(3);
    for (auto& l : labels) l = static_cast<int64_t>(g.below(5));
    auto x = tape.constant(tg::Tensor<float>::randn(cnn_input, g));
    tape.backward(tg::cross_entropy(m(x), labels));
    opt.step();
  }
}

void train_lstm(nn::Module<float>& m, tg::optim::Adam<float>& opt, tg::Generator& g) {
  tg::Tape<float> tape;
  for (int step = 0; step < 5; ++step) {
    tape.clear();
    opt.zero_grad();
    auto x = tape.constant(tg::Tensor<float>::randn(lstm_input, g));
    auto target = tape.constant(tg::Tensor<float>::randn({5, 3, 6}, g));
    tape.backward(tg::mse_loss(m(x), target));
    opt.step();
  }
}

// The model's output for x in eval mode.
tg::Tensor<float> eval_output(nn::Module<float>& m, const tg::Tensor<float>& x) {
  m.eval();
  tg::NoGradGuard no_grad;
  tg::Tape<float> tape;
  return m(tape.constant(x)).value().clone();
}

void write_io(const std::string& path, const tg::Tensor<float>& x, const tg::Tensor<float>& y) {
  io::save_safetensors<float>(path, {{"x", x}, {"y", y}});
}

int export_models(const std::string& dir) {
  tg::Generator g(2024);
  auto cnn = make_cnn(g);
  tg::optim::SGD<float> sgd(cnn->named_parameters(), {.lr = 0.1, .momentum = 0.9});
  train_cnn(*cnn, sgd, g);
  io::save_checkpoint(dir + "/cnn.safetensors", *cnn, sgd);
  const auto xc = tg::Tensor<float>::randn(cnn_input, g);
  write_io(dir + "/cnn_io.safetensors", xc, eval_output(*cnn, xc));

  auto lstm = make_lstm(g);
  tg::optim::Adam<float> adam(lstm->named_parameters(), {.lr = 0.01});
  train_lstm(*lstm, adam, g);
  io::save_checkpoint(dir + "/lstm.safetensors", *lstm, adam);
  const auto xl = tg::Tensor<float>::randn(lstm_input, g);
  write_io(dir + "/lstm_io.safetensors", xl, eval_output(*lstm, xl));
  return 0;
}

// Largest |a − b| / max(1, |b|).
double max_error(const tg::Tensor<float>& a, const tg::Tensor<float>& b) {
  double worst = 0;
  for (int64_t i = 0; i < a.numel(); ++i)
    worst = std::max(worst,
                     std::abs(double(a[i]) - double(b[i])) / std::max(1.0, std::abs(double(b[i]))));
  return worst;
}

bool check_model(nn::Module<float>& m, const std::string& dir, const std::string& name) {
  io::load_checkpoint(dir + "/torch_" + name + ".safetensors", m);
  const auto file = io::load_safetensors(dir + "/torch_" + name + "_io.safetensors");
  const auto& x = std::get<tg::Tensor<float>>(*file.find("x"));
  const auto& y = std::get<tg::Tensor<float>>(*file.find("y"));
  const auto mine = eval_output(m, x);
  if (!(mine.shape() == y.shape())) {
    std::printf("%s: output shape %s, PyTorch's %s\n", name.c_str(), mine.shape().str().c_str(),
                y.shape().str().c_str());
    return false;
  }
  const double err = max_error(mine, y);
  std::printf("%s: PyTorch-initialised weights, tapegrad vs PyTorch output: max error %.3g\n",
              name.c_str(), err);
  return err <= 1e-5;
}

int check_models(const std::string& dir) {
  tg::Generator g(1);  // the weights are replaced by PyTorch's
  auto cnn = make_cnn(g);
  auto lstm = make_lstm(g);
  const bool ok = check_model(*cnn, dir, "cnn") & check_model(*lstm, dir, "lstm");
  return ok ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) {
  const std::string mode = argc == 3 ? argv[1] : "";
  if (mode != "export" && mode != "check") {
    std::fprintf(stderr, "usage: tapegrad_interop export|check DIR\n");
    return 2;
  }
  try {
    tg::set_num_threads(1);
    return mode == "export" ? export_models(argv[2]) : check_models(argv[2]);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "tapegrad_interop %s: %s\n", mode.c_str(), e.what());
    return 1;
  }
}
