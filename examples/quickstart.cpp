// quickstart: a small MLP learns two interleaved spirals (a 2-D problem no straight line
// separates) with plain full-batch gradient descent, written out by hand: parameters, a tape,
// the ops linear / tanh / cross_entropy, backward, and p -= lr * grad.
// (nn::Dense, nn::Sequential and optim::SGD package the same steps.)
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <numbers>
#include <vector>

#include "tapegrad/ops/activation.hpp"
#include "tapegrad/ops/linalg.hpp"
#include "tapegrad/ops/loss.hpp"
#include "tapegrad/tapegrad.hpp"

int main() {
  // Matrices this small gain nothing from threads (and lose a lot on a busy machine).
  tg::set_num_threads(1);
  tg::Generator gen(42);  // seeded: the same data, weights and output on every machine

  // Two spirals, 200 points each: class c winds 1.5 turns out from the centre, rotated by
  // c * 180 degrees, with a little noise on the angle.
  const int64_t per_class = 200, n = 2 * per_class;
  tg::Tensor<float> x({n, 2});
  std::vector<int64_t> labels(static_cast<size_t>(n));
  for (int64_t c = 0; c < 2; ++c) {
    for (int64_t i = 0; i < per_class; ++i) {
      const double t = double(i) / double(per_class);  // 0 .. 1 along the arm
      const double r = 0.1 + 0.9 * t;
      const double angle =
          3 * std::numbers::pi * t + double(c) * std::numbers::pi + gen.normal(0.0, 0.1);
      const int64_t row = c * per_class + i;
      x(row, 0) = static_cast<float>(r * std::cos(angle));
      x(row, 1) = static_cast<float>(r * std::sin(angle));
      labels[static_cast<size_t>(row)] = c;
    }
  }

  // 2 -> 32 -> 32 -> 2, weights ~ N(0, 1/fan_in), biases 0.
  auto weight = [&](int64_t out, int64_t in) {
    return tg::Parameter<float>(
        tg::Tensor<float>::randn({out, in}, gen, 0.f, std::sqrt(1.f / float(in))));
  };
  auto bias = [](int64_t out) { return tg::Parameter<float>(tg::Tensor<float>::zeros({out})); };
  tg::Parameter<float> w1 = weight(32, 2), b1 = bias(32);
  tg::Parameter<float> w2 = weight(32, 32), b2 = bias(32);
  tg::Parameter<float> w3 = weight(2, 32), b3 = bias(2);
  const std::vector<tg::Parameter<float>> params = {w1, b1, w2, b2, w3, b3};

  tg::Tape<float> tape;  // cleared every step; its buffers are reused, so steps allocate nothing
  auto forward = [&] {
    auto h = tg::tanh(tg::linear(tape.constant(x), tape.param(w1), tape.param(b1)));
    h = tg::tanh(tg::linear(h, tape.param(w2), tape.param(b2)));
    return tg::linear(h, tape.param(w3), tape.param(b3));  // logits [n, 2]
  };

  const float lr = 0.5f;
  const int steps = 3000;
  const auto start = std::chrono::steady_clock::now();
  for (int step = 0; step <= steps; ++step) {
    tape.clear();
    for (const auto& p : params) p.zero_grad();
    auto loss = tg::cross_entropy(forward(), labels);
    tape.backward(loss);
    for (const auto& p : params) p.value().array() -= lr * p.grad().array();
    if (step % 250 == 0) std::printf("step %5d  loss %.4f\n", step, double(loss.item()));
  }
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();

  // Training accuracy: the predicted class is the larger logit.
  tg::NoGradGuard no_grad;
  tape.clear();
  const tg::Tensor<float> logits = forward().value();
  int64_t correct = 0;
  for (int64_t i = 0; i < n; ++i) {
    const int64_t predicted = logits(i, 1) > logits(i, 0) ? 1 : 0;
    correct += predicted == labels[static_cast<size_t>(i)];
  }
  std::printf("training accuracy %.3f (%lld of %lld points), %d steps in %.2f s\n",
              double(correct) / double(n), static_cast<long long>(correct),
              static_cast<long long>(n), steps, seconds);
  return 0;
}
