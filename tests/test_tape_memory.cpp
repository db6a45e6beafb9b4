// What the tape keeps: intermediate gradients lent by a pool only while backward needs them
// (retain_grad() to keep one), in-place activations and sums that share their input's buffer
// when that is safe (and a clear error when an overwritten value is read), memory_stats()
// against byte counts worked out by hand.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "tapegrad/tapegrad.hpp"
#include "test_util.hpp"

namespace tg = tapegrad;
namespace nn = tapegrad::nn;
using tapegrad::testing::error_message;
using tapegrad::testing::same_bits;

namespace {

using TD = tg::Tensor<double>;

// x [4,8] (an input) -> linear W1 -> relu_ -> linear W2 -> sum, in float.
struct SmallChain {
  tg::Parameter<float> w1{tg::Tensor<float>::full({8, 8}, 0.1f)};
  tg::Parameter<float> w2{tg::Tensor<float>::full({8, 8}, -0.2f)};
  tg::Tensor<float> x = tg::Tensor<float>::full({4, 8}, 1.0f);
  tg::Var<float> y1, y2, y3, loss;
  void forward(tg::Tape<float>& tape) {
    auto in = tape.input(x);
    y1 = tg::linear(in, tape.param(w1));
    y2 = tg::relu_(y1);
    y3 = tg::linear(y2, tape.param(w2));
    loss = tg::sum(y3);
  }
};

TEST(TapeMemory, IntermediateGradientsAreLentOnlyWhileNeeded) {
  SmallChain c;
  tg::Tape<float> tape;
  c.forward(tape);
  tape.backward(c.loss);
  const tg::TapeMemoryStats m = tape.memory_stats();
  // In backward: the loss's gradient (1 float) is lent, then y3's (32 floats = 128 bytes); the
  // loss's goes back; y2's is lent (in use 256: the peak) and y3's goes back; y1's reuses
  // y3's buffer, y2's goes back; x's (an input's, kept until clear()) reuses y2's, y1's goes
  // back. The pool holds 4 + 128 + 128 bytes, x's 128 of them still lent.
  EXPECT_EQ(m.peak_grads, 256);
  EXPECT_EQ(m.grad_pool, 4 + 128 + 128);
  EXPECT_EQ(m.grads, 128);
  // Values the tape owns: y1 (128, which relu_ overwrote: y2 shares it), y3 (128), the sum (4).
  EXPECT_EQ(m.values, 128 + 128 + 4);
  // Backward reads y2 (linear2's input, relu's output): y1's buffer. x is the caller's.
  EXPECT_EQ(m.needed_values, 128);
  EXPECT_EQ(m.param_grads, 2 * 64 * 4);
  EXPECT_EQ(m.kept_grads, 0);  // no retained value
  EXPECT_EQ(m.floor(), 128 + 256 + 512);
  EXPECT_NE(m.str().find("linear"), std::string::npos) << m.str();

  // Gradients are right: dL/dx = 1·W2 ... through relu (all positive: y1 = 0.8 > 0).
  // dL/dy3 = 1, dL/dy2 = 1·W2 = -0.2·8 = -1.6 per element, dL/dx = -1.6·0.1·8 = -1.28.
  EXPECT_FLOAT_EQ(tape.node(0).grad[0], -1.28f);
  tape.clear();  // x's gradient goes back
  EXPECT_EQ(tape.memory_stats().grads, 0);
}

// A gradient a caller keeps a copy of is not lent again after clear().
TEST(TapeMemory, AKeptCopyOfAGradientIsNotReused) {
  SmallChain c;
  tg::Tape<float> tape;
  c.forward(tape);
  tape.backward(c.loss);
  const tg::Tensor<float> kept = tape.node(0).grad;  // x's gradient, shared
  tape.clear();
  for (int step = 0; step < 2; ++step) {
    tape.clear();
    c.x.fill_(2.0f);
    c.forward(tape);
    tape.backward(c.loss);
  }
  for (int64_t i = 0; i < kept.numel(); ++i) ASSERT_FLOAT_EQ(kept[i], -1.28f);
}

TEST(TapeMemory, IntermediateGradReadsNeedRetainGrad) {
  SmallChain c;
  tg::Tape<float> tape;
  c.forward(tape);
  c.y3.retain_grad();
  tape.backward(c.loss);
  const std::string msg = error_message<tg::TapeError>([&] { (void)c.y1.grad(); });
  EXPECT_NE(msg.find("Var::grad: node 2 (linear) is an intermediate value"), std::string::npos)
      << msg;
  EXPECT_NE(msg.find("retain_grad()"), std::string::npos) << msg;
  const auto g = c.y3.grad();  // retained: dL/dy3 = 1
  ASSERT_EQ(g.numel(), 32);
  for (int64_t i = 0; i < g.numel(); ++i) EXPECT_EQ(g[i], 1.0f);
  EXPECT_EQ(tape.memory_stats().kept_grads, 4 * 8 * 4);  // y3's own buffer
}

TEST(TapeMemory, InPlaceReluSharesItsInputBufferAndReadingTheInputThrows) {
  SmallChain c;
  tg::Tape<float> tape;
  c.forward(tape);
  EXPECT_TRUE(c.y2.node().value.shares_storage(c.y1.node().value));
  const std::string msg = error_message<tg::TapeError>([&] { (void)c.y1.value(); });
  EXPECT_EQ(msg,
            "Var::value: the value of node 2 (linear) was overwritten by the in-place op relu "
            "(node 3) to save memory; read that op's output instead, or call "
            "tape.set_inplace(false) before recording");
  EXPECT_THROW(tg::sum(c.y1), tg::TapeError);  // as an op's input too
  EXPECT_EQ(c.y1.shape(), (tg::Shape{4, 8}));  // its shape is still there

  // set_inplace(false): two buffers, the pre-activation stays readable.
  tape.clear();
  tape.set_inplace(false);
  c.forward(tape);
  EXPECT_FALSE(c.y2.node().value.shares_storage(c.y1.node().value));
  EXPECT_FLOAT_EQ(c.y1.value()[0], 0.8f);
}

// In place only where safe: each case keeps two buffers and gives the out-of-place result.
TEST(TapeMemory, InPlaceOnlyWhereSafe) {
  tg::Generator g(1);
  const TD x0 = TD::randn({3, 5}, g);
  tg::Parameter<double> w(TD::randn({5, 5}, g));
  auto check = [&](const char* what, auto make_input, bool expect_shared) {
    tg::Tape<double> tape;
    tg::Var<double> before = make_input(tape);
    tg::Var<double> y = tg::relu_(before);
    EXPECT_EQ(y.node().value.shares_storage(before.node().value), expect_shared) << what;
  };
  check(
      "an op's output", [&](tg::Tape<double>& t) { return tg::linear(t.input(x0), t.param(w)); },
      true);
  check(
      "a leaf", [&](tg::Tape<double>& t) { return t.input(x0); }, false);
  check(
      "a value an op has read",
      [&](tg::Tape<double>& t) {
        auto h = tg::linear(t.input(x0), t.param(w));
        (void)tg::sum(h);
        return h;
      },
      false);
  check(
      "an output its own backward reads (sigmoid)",
      [&](tg::Tape<double>& t) { return tg::sigmoid(tg::linear(t.input(x0), t.param(w))); }, false);
  check(
      "a view",
      [&](tg::Tape<double>& t) {
        return tg::reshape(tg::linear(t.input(x0), t.param(w)), {5, 3});
      },
      false);
  check(
      "a retained value",
      [&](tg::Tape<double>& t) {
        auto h = tg::linear(t.input(x0), t.param(w));
        h.retain_grad();
        return h;
      },
      false);
  check(
      "a value the caller holds a copy of",
      [&](tg::Tape<double>& t) {
        auto h = tg::linear(t.input(x0), t.param(w));
        static tg::Tensor<double> held;
        held = h.value();  // shares the storage
        return h;
      },
      false);
}

// The residual pattern: relu_(add_(bn_out, shortcut)) keeps one buffer for the three values,
// and every gradient equals the out-of-place computation's bit for bit.
TEST(TapeMemory, InPlaceChainGivesTheSameGradients) {
  tg::Generator g(2);
  const TD x0 = TD::randn({4, 6}, g);
  tg::Parameter<double> w(TD::randn({6, 6}, g)), v(TD::randn({6, 6}, g));
  std::vector<TD> grads;
  for (bool in_place : {true, false}) {
    tg::Tape<double> tape;
    tape.set_inplace(in_place);
    w.zero_grad(), v.zero_grad();
    auto x = tape.input(x0);
    auto h = tg::linear(x, tape.param(w));
    auto s = tg::add_(h, x);
    auto r = tg::relu_(s);
    auto out = tg::linear(r, tape.param(v));
    tape.backward(tg::sum(tg::square(out)));
    EXPECT_EQ(r.node().value.shares_storage(h.node().value), in_place);
    grads.push_back(x.grad().clone());
    grads.push_back(w.grad().clone());
    grads.push_back(v.grad().clone());
  }
  for (size_t k = 0; k < 3; ++k) EXPECT_TRUE(same_bits(grads[k], grads[k + 3])) << k;
}

// The activation layers work in place in a Sequential (a Dense and its ReLU share a buffer),
// unless built with inplace = false.
TEST(TapeMemory, ActivationLayersInPlaceInSequential) {
  for (bool in_place : {true, false}) {
    nn::Sequential<float> model{
        std::make_shared<nn::Dense<float>>(8, 16),  std::make_shared<nn::ReLU<float>>(in_place),
        std::make_shared<nn::Dense<float>>(16, 16), std::make_shared<nn::Tanh<float>>(in_place),
        std::make_shared<nn::Dense<float>>(16, 4),  std::make_shared<nn::Sigmoid<float>>(in_place)};
    tg::Tape<float> tape;
    tg::Generator g(3);
    auto y = model(tape.constant(tg::Tensor<float>::randn({32, 8}, g)));
    tape.backward(tg::sum(y));
    // linear outputs 32·16, 32·16, 32·4 floats; with separate activation outputs twice that.
    const int64_t linear_bytes = (32 * 16 + 32 * 16 + 32 * 4) * 4;
    EXPECT_EQ(tape.memory_stats().values, (in_place ? 1 : 2) * linear_bytes + 4) << in_place;
  }
}

// Only a Sequential hands an activation layer a value to write over: a residual body that
// starts with ReLU leaves x intact for the skip connection (the vanishing demo's res-scaled
// network threw "the value of node 9 (add) was overwritten" before), and a ReLU called on a
// Var the caller still holds leaves it readable.
TEST(TapeMemory, ActivationLayersNeverWriteOverAValueSomeoneElseReads) {
  auto run = [](bool in_place) {
    tg::Generator g(5);
    auto block = [&] {
      auto body = std::make_shared<nn::Sequential<double>>();
      body->push_back(std::make_shared<nn::ReLU<double>>());
      body->push_back(std::make_shared<nn::Dense<double>>(6, 6, true, g));
      return std::make_shared<nn::DenseResidual<double>>(body);
    };
    nn::Sequential<double> model{std::make_shared<nn::Dense<double>>(4, 6, true, g), block(),
                                 block(), std::make_shared<nn::ReLU<double>>(),
                                 std::make_shared<nn::Dense<double>>(6, 2, true, g)};
    tg::Tape<double> tape;
    tape.set_inplace(in_place);
    auto x = tape.input(TD::randn({3, 4}, g));
    tape.backward(tg::sum(model(x)));
    std::vector<TD> grads{x.grad().clone()};
    for (const auto& p : model.parameters()) grads.push_back(p.grad().clone());
    return grads;
  };
  const auto expected = run(false), got = run(true);
  ASSERT_EQ(expected.size(), got.size());
  for (size_t k = 0; k < got.size(); ++k) EXPECT_TRUE(same_bits(expected[k], got[k])) << k;

  tg::Tape<float> tape;
  tg::Parameter<float> w{tg::Tensor<float>::full({3, 3}, 0.5f)};
  auto h = tg::linear(tape.input(tg::Tensor<float>::full({2, 3}, -1.0f)), tape.param(w));
  nn::ReLU<float> relu;
  auto r = relu(h);
  EXPECT_FALSE(r.node().value.shares_storage(h.node().value));
  EXPECT_FLOAT_EQ(h.value()[0], -1.5f);  // still readable
  tape.backward(tg::sum(h + r));
}

}  // namespace
