// Chapter 9: speed and memory: threads, BLAS, what the tape keeps, in-place ops, activation
// checkpointing.
// Builds as guide_09_speed_memory; exits non-zero if a claim of the chapter is false.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <iostream>
#include <memory>
#include <string>
#include <tapegrad/tapegrad.hpp>
#include <vector>

namespace nn = tg::nn;
using tg::Tensor;
using tg::Var;

static int failures = 0;
static void check(bool ok, const std::string& claim) {
  std::printf("%s %s\n", ok ? "[ok]    " : "[FAILED]", claim.c_str());
  failures += !ok;
}

// 784 -> 16 x (Dense 256 + ReLU) -> 10, the same weights every time.
std::shared_ptr<nn::Sequential<float>> make_model() {
  tg::Generator gen(1);
  auto m = std::make_shared<nn::Sequential<float>>();
  for (int l = 0; l < 16; ++l) {
    m->push_back(std::make_shared<nn::Dense<float>>(l == 0 ? 784 : 256, 256, true, gen));
    m->push_back(std::make_shared<nn::ReLU<float>>());
  }
  m->push_back(std::make_shared<nn::Dense<float>>(256, 10, true, gen));
  return m;
}

tg::Generator data_gen(2);
const auto images = Tensor<float>::randn({512, 784}, data_gen);
const std::vector<int64_t> labels(512, 3);

struct Step {
  std::vector<Tensor<float>> grads;
  tg::TapeMemoryStats memory;
  double ms;
};

// One training step's forward and backward; the gradients, what the tape held and the time.
Step step(nn::Sequential<float>& model, tg::Tape<float>& tape) {
  const auto t0 = std::chrono::steady_clock::now();
  tape.clear();
  model.zero_grad();
  tape.backward(tg::cross_entropy(model(tape.constant(images)), labels));
  Step s{{}, tape.memory_stats(), 0};
  s.ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
  for (const auto& p : model.parameters()) s.grads.push_back(p.grad().clone());
  return s;
}

bool same(const Step& a, const Step& b) {
  for (size_t i = 0; i < a.grads.size(); ++i)
    if (!(a.grads[i].array() == b.grads[i].array()).all()) return false;
  return true;
}

int main() {
#ifdef EIGEN_USE_BLAS
  std::cout << "matrix products: the system BLAS (TAPEGRAD_USE_BLAS=ON)\n";
#else
  std::cout << "matrix products: tapegrad's kernel and Eigen (TAPEGRAD_USE_BLAS=OFF)\n";
#endif
  auto model = make_model();
  tg::Tape<float> tape;
  std::vector<Step> by_threads;
  bool repeatable = true;
  for (int threads : {1, 2}) {
    tg::set_num_threads(threads);           // tapegrad's loops and matrix products
    const Step first = step(*model, tape);  // also allocates the tape's buffers, once
    by_threads.push_back(step(*model, tape));
    repeatable = repeatable && same(first, by_threads.back());
    std::printf("%d thread(s): %.1f ms per forward + backward\n", threads, by_threads.back().ms);
  }
  check(repeatable, "at a given thread count, every run gives bitwise the same gradients");
  double worst = 0;  // 1 vs 2 threads: the same up to rounding
  for (size_t i = 0; i < by_threads[0].grads.size(); ++i) {
    const auto a = by_threads[0].grads[i].array(), b = by_threads[1].grads[i].array();
    worst = std::max(worst, double(((a - b).abs() / (b.abs().max(1e-3f))).maxCoeff()));
  }
  std::printf("1 vs 2 threads: largest relative difference %.2g\n", worst);
  check(worst < 1e-3, "1 and 2 threads agree to rounding");
  tg::set_num_threads(1);

  const Step plain = by_threads[0];
  std::cout << plain.memory.str();
  tape.set_inplace(false);  // ReLU gets a buffer of its own
  const Step copies = step(*model, tape);
  tape.set_inplace(true);
  auto mb = [](int64_t bytes) { return double(bytes) / (1 << 20); };
  std::printf("in-place ReLU: values %.1f MB; without: %.1f MB\n", mb(plain.memory.values),
              mb(copies.memory.values));
  check(plain.memory.values < copies.memory.values && same(plain, copies),
        "in-place ReLU holds less and computes the same gradients");

  // Activation checkpointing: keep every 8th layer's output, recompute the rest in backward.
  auto checkpointed = make_model();
  checkpointed->checkpoint_every(8);
  tg::Tape<float> tape2;
  step(*checkpointed, tape2);
  const Step ckpt = step(*checkpointed, tape2);
  std::printf("peak: plain %.1f MB, checkpoint_every(8) %.1f MB; time %.1f ms vs %.1f ms\n",
              mb(plain.memory.peak()), mb(ckpt.memory.peak()), plain.ms, ckpt.ms);
  check(ckpt.memory.peak() < plain.memory.peak() && same(plain, ckpt),
        "checkpoint_every(8): less memory, bitwise the same gradients");

  // The same by hand for any piece of a forward pass: tg::checkpoint(segment, inputs...).
  auto& first = *(*model)[0];
  tape.clear();
  model->zero_grad();
  Var<float> h = tg::checkpoint([&](const Var<float>& x) { return tg::relu(first(x)); },
                                tape.constant(images));
  for (size_t i = 2; i < model->size(); ++i) h = (*(*model)[i])(h);
  tape.backward(tg::cross_entropy(h, labels));
  check((model->parameters()[0].grad().array() == plain.grads[0].array()).all(),
        "tg::checkpoint around the first layer: the same gradient for its weight");
  return failures == 0 ? 0 : 1;
}
