// L1/L2 penalties (Keras regularizer semantics): as loss terms on the tape and as the
// optimizer's stage 1; values and gradients from the formulas written here.
#include <gtest/gtest.h>

#include "tapegrad/diag/gradcheck.hpp"
#include "tapegrad/optim/penalty.hpp"
#include "tapegrad/optim/sgd.hpp"

namespace tg = tapegrad;
namespace opt = tapegrad::optim;

namespace {

// Weights including exact zeros, with gradients already present.
std::vector<tg::Parameter<double>> weights_with_zeros() {
  tg::Parameter<double> a(tg::Tensor<double>::from({0.0, 1.5, -2.0, 0.0}));
  tg::Parameter<double> b(tg::Tensor<double>::from({{0.5, 0.0}, {-0.25, 3.0}}));
  a.grad() = tg::Tensor<double>::from({0.1, -0.2, 0.3, -0.4});
  b.grad() = tg::Tensor<double>::from({{1.0, 2.0}, {3.0, 4.0}});
  return {a, b};
}

double sign(double x) { return x > 0 ? 1 : x < 0 ? -1 : 0; }

}  // namespace

TEST(OptimPenalty, L1ValueAndGradientWithZeros) {
  auto ps = weights_with_zeros();
  for (auto& p : ps) p.zero_grad();
  tg::Tape<double> tape;
  auto pen = opt::l1_penalty(tape, ps, 0.1);
  EXPECT_EQ(pen.shape(), tg::Shape{});
  EXPECT_NEAR(pen.item(), 0.1 * (1.5 + 2.0 + 0.5 + 0.25 + 3.0), 1e-15);
  tape.backward(pen);
  const double ga[] = {0.0, 0.1, -0.1, 0.0}, gb[] = {0.1, 0.0, -0.1, 0.1};
  for (int i = 0; i < 4; ++i) {
    EXPECT_EQ(ps[0].grad()[i], ga[i]) << i;  // sign(0) = 0: no gradient at exact zeros
    EXPECT_EQ(ps[1].grad()[i], gb[i]) << i;
  }
}

TEST(OptimPenalty, L2ValueAndGradient) {
  auto ps = weights_with_zeros();
  for (auto& p : ps) p.zero_grad();
  tg::Tape<double> tape;
  auto pen = opt::l2_penalty(tape, ps, 0.2);
  EXPECT_NEAR(pen.item(), 0.2 * (2.25 + 4.0 + 0.25 + 0.0625 + 9.0), 1e-15);
  tape.backward(pen);
  for (int k = 0; k < 2; ++k)
    for (int i = 0; i < 4; ++i)
      EXPECT_DOUBLE_EQ(ps[k].grad()[i], 2 * 0.2 * ps[k].value()[i]);  // Keras: no 1/2
}

TEST(OptimPenalty, Gradcheck) {
  tg::Generator gen(7);
  std::vector<tg::Parameter<double>> ps = {
      tg::Parameter<double>(tg::Tensor<double>::rand({3, 2}, gen, 0.2, 1.0)),
      tg::Parameter<double>(tg::Tensor<double>::rand({4}, gen, -1.0, -0.2))};  // away from 0
  auto r1 = tg::gradcheck(
      [&](tg::Tape<double>& t, const auto&) { return opt::l1_penalty(t, ps, 0.3); }, {}, ps);
  EXPECT_TRUE(r1) << r1;
  auto r2 = tg::gradcheck(
      [&](tg::Tape<double>& t, const auto&) { return opt::l2_penalty(t, ps, 0.7); }, {}, ps);
  EXPECT_TRUE(r2) << r2;
}

TEST(OptimPenalty, InStepPenaltyEqualsLossTermPenalty) {
  const double l1 = 0.05, l2 = 0.2;
  // In the optimizer (lr 0: only the gradient changes).
  auto a = weights_with_zeros();
  opt::SGD<double> sgd(a, {.lr = 0.0});
  sgd.set_penalties(l1, l2);
  sgd.step();
  // As loss terms: backward adds the penalty gradient into the same starting gradients.
  auto b = weights_with_zeros();
  tg::Tape<double> tape;
  tape.backward(opt::l1_penalty(tape, b, l1));
  tape.clear();
  tape.backward(opt::l2_penalty(tape, b, l2));
  const auto start = weights_with_zeros();
  for (int k = 0; k < 2; ++k)
    for (int i = 0; i < 4; ++i) {
      const double w = start[k].value()[i];
      const double want = start[k].grad()[i] + l1 * sign(w) + 2 * l2 * w;
      EXPECT_NEAR(a[k].grad()[i], want, 1e-15) << k << "," << i;
      EXPECT_NEAR(b[k].grad()[i], want, 1e-15) << k << "," << i;
      EXPECT_EQ(a[k].value()[i], w);
    }
}

TEST(OptimPenalty, StageObjectAndFloat) {
  tg::Parameter<float> p(tg::Tensor<float>::from({0.0f, -1.0f, 2.0f}));
  opt::L1L2Penalty{0.5, 0.25}(p);
  EXPECT_EQ(p.grad()[0], 0.0f);
  EXPECT_FLOAT_EQ(p.grad()[1], -0.5f - 0.5f);
  EXPECT_FLOAT_EQ(p.grad()[2], 0.5f + 1.0f);
  tg::Tape<float> tape;
  EXPECT_FLOAT_EQ(opt::l1_penalty<float>(tape, {p}, 2.0).item(), 6.0f);
}

TEST(OptimPenalty, BadLambdaRaises) {
  auto ps = weights_with_zeros();
  tg::Tape<double> tape;
  try {
    opt::l1_penalty(tape, ps, -0.1);
    ADD_FAILURE();
  } catch (const tg::ValueError& e) {
    EXPECT_NE(std::string(e.what()).find("l1_penalty"), std::string::npos) << e.what();
  }
  EXPECT_THROW(opt::l2_penalty(tape, ps, std::nan("")), tg::ValueError);
  opt::SGD<double> sgd(ps);
  EXPECT_THROW(sgd.set_penalties(-1, 0), tg::ValueError);
}
