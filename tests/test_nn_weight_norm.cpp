// Weight normalization: the op against the formula and hand-derived gradients, gradcheck of
// g and v through Dense and Conv2D, the wrapper equal to the plain layer at initialisation,
// remove_weight_norm, and the constraint alternative on a real layer.
#include <gtest/gtest.h>

#include <cmath>
#include <memory>

#include "layer_check.hpp"
#include "tapegrad/diag/gradcheck.hpp"
#include "tapegrad/nn/weight_norm.hpp"
#include "tapegrad/optim/constraint.hpp"
#include "tapegrad/optim/sgd.hpp"
#include "test_util.hpp"

namespace tg = tapegrad;
namespace nn = tapegrad::nn;
using tapegrad::testing::row_norm;

TEST(NNWeightNorm, OpValueAndGradientsFromTheFormula) {
  const auto v = tg::Tensor<double>::from({{3.0, 0.0, 4.0}, {1.0, -2.0, 2.0}});  // norms 5, 3
  const auto g = tg::Tensor<double>::from(std::vector<double>{2.0, -1.5}, tg::Shape{2, 1});
  const auto gw = tg::Tensor<double>::from({{0.5, -1.0, 0.25}, {2.0, 1.0, -3.0}});
  tg::Tape<double> tape;
  auto gv = tape.input(g), vv = tape.input(v);
  auto w = nn::weight_norm(gv, vv);
  ASSERT_EQ(w.shape(), (tg::Shape{2, 3}));
  const double norms[] = {5.0, 3.0};
  for (int64_t r = 0; r < 2; ++r)
    for (int64_t c = 0; c < 3; ++c)
      EXPECT_NEAR(w.value()(r, c), g(r, 0) * v(r, c) / norms[r], 1e-15);
  tape.backward(w, gw);
  for (int64_t r = 0; r < 2; ++r) {
    double s = 0;
    for (int64_t c = 0; c < 3; ++c) s += gw(r, c) * v(r, c);
    EXPECT_NEAR(gv.grad()(r, 0), s / norms[r], 1e-15);
    for (int64_t c = 0; c < 3; ++c)
      EXPECT_NEAR(vv.grad()(r, c),
                  g(r, 0) / norms[r] * (gw(r, c) - v(r, c) * s / (norms[r] * norms[r])), 1e-15);
  }
}

TEST(NNWeightNorm, OpGradcheckForEveryDim) {
  tg::Generator gen(5);
  const auto v2 = tg::Tensor<double>::randn({3, 4}, gen);
  const auto v4 = tg::Tensor<double>::randn({3, 2, 2, 3}, gen);
  struct Case {
    tg::Tensor<double> v;
    int dim;
  } cases[] = {{v2, 0}, {v2, 1}, {v2, -1}, {v4, 0}, {v4, 2}, {v4, -1}};
  for (const auto& k : cases) {
    const auto g =
        tg::Tensor<double>::randn(nn::detail::weight_norm_g_shape("test", k.v.shape(), k.dim), gen);
    const int dim = k.dim;
    auto r = tg::gradcheck(
        [dim](tg::Tape<double>&, const std::vector<tg::Var<double>>& x) {
          return nn::weight_norm(x[0], x[1], dim);
        },
        {g, k.v});
    EXPECT_TRUE(r) << "dim " << dim << " v " << k.v.shape() << ": " << r;
  }
}

TEST(NNWeightNorm, DenseWrapperUnchangedAtInitAndGradcheck) {
  tg::Generator gen(1);
  auto dense = std::make_shared<nn::Dense<double>>(4, 3, true, gen);
  const auto x = tg::Tensor<double>::randn({5, 4}, gen);
  tg::Tape<double> tape;
  const auto plain = (*dense)(tape.constant(x)).value().clone();
  nn::WeightNorm<double> wn(dense);
  EXPECT_EQ(wn.name(), "WeightNorm(Dense(4, 3))");
  const auto named = wn.named_parameters();
  ASSERT_EQ(named.size(), 3u);
  EXPECT_EQ(named[0].first, "weight_g");
  EXPECT_EQ(named[0].second.shape(), (tg::Shape{3, 1}));
  EXPECT_EQ(named[1].first, "weight_v");
  EXPECT_EQ(named[1].second.shape(), (tg::Shape{3, 4}));
  EXPECT_EQ(named[2].first, "bias");
  for (int64_t r = 0; r < 3; ++r)
    EXPECT_NEAR(wn.weight_g.value()[r], row_norm(dense->weight.value(), r), 1e-15);
  const auto wrapped = wn(tape.constant(x)).value().clone();
  EXPECT_TRUE(tg::allclose(wrapped, plain, 1e-13, 1e-14));
  expect_layer_gradcheck(wn, x);  // input, g, v and bias

  auto nobias = std::make_shared<nn::Dense<double>>(4, 2, false, gen);
  nn::WeightNorm<double> wn2(nobias, -1);  // one norm over the whole weight
  EXPECT_EQ(wn2.weight_g.shape(), tg::Shape{});
  EXPECT_EQ(wn2.parameters().size(), 2u);
  const auto a = wn2(tape.constant(x)).value().clone();  // clone: the tape may grow below
  const auto b = (*nobias)(tape.constant(x)).value().clone();
  EXPECT_TRUE(tg::allclose(a, b, 1e-13, 1e-14));
  expect_layer_gradcheck(wn2, x);
}

TEST(NNWeightNorm, Conv2DWrapperUnchangedAtInitAndGradcheck) {
  tg::Generator gen(2);
  auto conv = std::make_shared<nn::Conv2D<double>>(2, 3, 3, 2, 1, 1, true, gen);
  const auto x = tg::Tensor<double>::randn({2, 2, 5, 5}, gen);
  tg::Tape<double> tape;
  const auto plain = (*conv)(tape.constant(x)).value().clone();
  nn::WeightNorm<double> wn(conv);
  EXPECT_EQ(wn.weight_g.shape(), (tg::Shape{3, 1, 1, 1}));
  EXPECT_TRUE(tg::allclose(wn(tape.constant(x)).value(), plain, 1e-13, 1e-14));
  expect_layer_gradcheck(wn, x);
}

TEST(NNWeightNorm, TrainingMovesGAndVAndRemoveBakesTheWeight) {
  tg::Generator gen(3);
  auto dense = std::make_shared<nn::Dense<double>>(3, 2, true, gen);
  nn::WeightNorm<double> wn(dense);
  tg::optim::SGD<double> sgd(wn.named_parameters(), {.lr = 0.1});
  const auto x = tg::Tensor<double>::randn({4, 3}, gen);
  const auto g0 = wn.weight_g.value().clone();
  tg::Tape<double> tape;
  for (int step = 0; step < 3; ++step) {
    tape.clear();
    sgd.zero_grad();
    auto y = wn(tape.constant(x));
    tape.backward(y, tg::Tensor<double>::ones(y.shape()));
    sgd.step();
  }
  EXPECT_NE(wn.weight_g.value()[0], g0[0]);
  tape.clear();
  const auto wrapped = wn(tape.constant(x)).value().clone();
  auto layer = nn::remove_weight_norm(wn);
  EXPECT_EQ(layer.get(), dense.get());
  const auto baked = (*layer)(tape.constant(x)).value().clone();
  EXPECT_TRUE(tg::allclose(baked, wrapped, 1e-13, 1e-14));
  // The baked weight has row norms g.
  for (int64_t r = 0; r < 2; ++r)
    EXPECT_NEAR(row_norm(dense->weight.value(), r), std::abs(wn.weight_g.value()[r]), 1e-13);
}

TEST(NNWeightNorm, Errors) {
  tg::Tape<double> tape;
  auto v = tape.input(tg::Tensor<double>::ones({2, 3}));
  try {
    nn::weight_norm(tape.input(tg::Tensor<double>::ones({3, 1})), v);
    ADD_FAILURE();
  } catch (const tg::ShapeError& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("weight_norm"), std::string::npos) << msg;
    EXPECT_NE(msg.find("[3,1]"), std::string::npos) << msg;
    EXPECT_NE(msg.find("[2,1]"), std::string::npos) << msg;
  }
  EXPECT_THROW(nn::weight_norm(tape.input(tg::Tensor<double>::ones({2, 1})), v, 2), tg::ShapeError);
  auto dense = std::make_shared<nn::Dense<double>>(3, 2);
  nn::WeightNorm<double> wn(dense);
  try {
    wn(tape.constant(tg::Tensor<double>::ones({4, 5})));
    ADD_FAILURE();
  } catch (const tg::ShapeError& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("WeightNorm(Dense(3, 2))"), std::string::npos) << msg;
    EXPECT_NE(msg.find("[4,5]"), std::string::npos) << msg;
  }
  EXPECT_THROW(nn::WeightNorm<double>(dense, 2), tg::ShapeError);
}

TEST(NNWeightNorm, UnitAndMaxNormConstraintsOnRealLayers) {
  // The projection alternative: Keras constraints after each update keep every output unit of
  // a Dense at norm 1 and of a Conv2D at norm <= max.
  tg::Generator gen(4);
  nn::Dense<double> dense(3, 4, true, gen);
  nn::Conv2D<double> conv(2, 3, 3, 1, 1, 1, true, gen);
  tg::optim::SGD<double> sgd(
      std::vector<tg::Parameter<double>>{dense.weight, dense.bias, conv.weight, conv.bias},
      {.lr = 1.0});
  sgd.add_constraint(dense.weight, tg::optim::UnitNorm{});
  sgd.add_constraint(conv.weight, tg::optim::MaxNorm{.max_value = 0.2});
  tg::Tape<double> tape;
  const auto x = tg::Tensor<double>::randn({2, 2, 4, 4}, gen);
  const auto xd = tg::Tensor<double>::randn({5, 3}, gen);
  for (int step = 0; step < 2; ++step) {
    tape.clear();
    sgd.zero_grad();
    auto y = conv(tape.constant(x));
    tape.backward(y, tg::Tensor<double>::ones(y.shape()));
    auto z = dense(tape.constant(xd));
    tape.backward(z, tg::Tensor<double>::ones(z.shape()));
    sgd.step();
    for (int64_t r = 0; r < 4; ++r) EXPECT_NEAR(row_norm(dense.weight.value(), r), 1.0, 1e-6);
    for (int64_t o = 0; o < 3; ++o) EXPECT_LE(row_norm(conv.weight.value(), o), 0.2);
  }
}
