// Chapter 6: recurrent networks and clipping through time.
// Builds as guide_06_recurrent; exits non-zero if a claim of the chapter is false.
#include <cmath>
#include <cstdio>
#include <memory>
#include <string>
#include <tapegrad/tapegrad.hpp>
#include <vector>

namespace nn = tg::nn;
namespace diag = tg::diag;
using tg::Tensor;
using tg::Var;

static int failures = 0;
static void check(bool ok, const std::string& claim) {
  std::printf("%s %s\n", ok ? "[ok]    " : "[FAILED]", claim.c_str());
  failures += !ok;
}

constexpr int64_t T = 50, N = 16, H = 32;

// The adding problem: inputs [T, N, 2] (a value in [0, 1), a marker), target the sum of the two
// marked values. Its answer depends on steps far back in time.
void adding_problem(Tensor<float>& x, Tensor<float>& y, tg::Generator& gen) {
  x = Tensor<float>::zeros({T, N, 2});
  y = Tensor<float>::zeros({N, 1});
  for (int64_t n = 0; n < N; ++n) {
    for (int64_t t = 0; t < T; ++t) x(t, n, 0) = float(gen.uniform());
    for (int64_t t : {int64_t(gen.below(T / 2)), T / 2 + int64_t(gen.below(T / 2))}) {
      x(t, n, 1) = 1;
      y(n, 0) += x(t, n, 0);
    }
  }
}

// One forward and backward; returns ||dL/dh_t|| for every step t of the last layer.
std::vector<double> through_time(nn::RNNBase<float>& rnn, nn::Dense<float>& head,
                                 const Tensor<float>& x, const Tensor<float>& y) {
  tg::Tape<float> tape;
  std::vector<Var<float>> hs;  // h_t of the last layer, their gradients retained
  rnn.forward(tape.constant(x), {}, &hs);
  tape.backward(tg::mse_loss(head(hs.back()), y));
  return diag::grad_norms_through_time(hs);
}

int main() {
  tg::Generator gen(1);
  Tensor<float> x, y;
  adding_problem(x, y, gen);

  nn::RNN<float> rnn(2, H, {}, gen), exploding(2, H, {}, gen);
  nn::init::orthogonal_(exploding.weight_hh_l(0), 2.0, gen);  // W_hh = 2 x orthogonal
  nn::GRU<float> gru(2, H, {}, gen);
  nn::LSTM<float> lstm(2, H, {}, gen), lstm_open(2, H, {}, gen);
  // Forget-gate bias 1 in both biases (gates i, f, g, o): the cell keeps ~0.9 of itself per step.
  for (auto b : {lstm_open.bias_ih_l(0), lstm_open.bias_hh_l(0)})
    b.value().array().segment(H, H) = 1.0f;

  std::printf("%-28s %10s %10s %10s  %s\n", "model", "|dL/dh_0|", "|dL/dh_25|", "|dL/dh_49|",
              "fit over t");
  std::vector<diag::ThroughTimeFlags> flags;
  auto report = [&](const char* name, nn::RNNBase<float>& m) {
    nn::Dense<float> head(H, 1, true, gen);
    const auto norms = through_time(m, head, x, y);
    flags.push_back(diag::through_time_flags(norms));
    std::printf("%-28s %10.2e %10.2e %10.2e  %s\n", name, norms[0], norms[25], norms[49],
                flags.back().flag().c_str());
  };
  report("RNN tanh, default init", rnn);
  report("RNN tanh, W_hh = 2 x orth.", exploding);
  report("GRU, default init", gru);
  report("LSTM, default init", lstm);
  report("LSTM, forget-gate bias 1", lstm_open);
  check(flags[0].vanishing, "a tanh RNN with PyTorch's init: the gradient vanishes through time");
  check(flags[1].exploding, "W_hh = 2 x orthogonal: it explodes");
  check(flags[4].factor_per_step > flags[3].factor_per_step,
        "opening the LSTM's forget gates slows the decay per step");

  // Clipping through time: one SGD step on the exploding RNN, with and without clipping.
  for (bool clip : {false, true}) {
    tg::Generator same(7);  // the same initial weights for both runs
    nn::RNN<float> net(2, H, {}, same);
    nn::init::orthogonal_(net.weight_hh_l(0), 2.0, same);
    nn::Dense<float> head(H, 1, true, same);
    auto params = net.parameters();
    for (const auto& p : head.parameters()) params.push_back(p);
    tg::optim::SGD<float> opt(params, {.lr = 0.1});
    if (clip) opt.set_clip_grad_norm(1.0);
    through_time(net, head, x, y);
    const double total = opt.step();
    opt.zero_grad();
    const auto norms = through_time(net, head, x, y);
    const auto after = diag::through_time_flags(norms);
    std::printf("%s: gradient norm %.3g; after one step |dL/dh_0| %.2e, %s\n",
                clip ? "clipped to 1" : "unclipped   ", total, norms[0], after.flag().c_str());
    if (clip)
      check(norms[0] > 1, "after a clipped step the gradient still reaches step 0");
    else
      check(after.vanishing && norms[0] < 1e-10,
            "after one unclipped step the gradient through time vanishes");
  }
  return failures == 0 ? 0 : 1;
}
