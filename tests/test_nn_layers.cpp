// Layers of nn/: Dense, Conv2D, pooling, Flatten, activations, Dropout, Sequential.
// Every layer goes through expect_layer_gradcheck (input and parameters, train and eval where
// they differ); values are checked against numbers written out by hand or from the formula.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <limits>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "layer_check.hpp"
#include "tapegrad/nn/activation.hpp"
#include "tapegrad/nn/conv2d.hpp"
#include "tapegrad/nn/dense.hpp"
#include "tapegrad/nn/dropout.hpp"
#include "tapegrad/nn/pool.hpp"
#include "tapegrad/nn/sequential.hpp"
#include "test_util.hpp"

namespace tg = tapegrad;
namespace nn = tapegrad::nn;
using tapegrad::testing::expect_error_containing;
using tapegrad::testing::run;

namespace {

template <class T>
void expect_within(const tg::Tensor<T>& t, double bound) {
  double m = 0;
  for (int64_t i = 0; i < t.numel(); ++i) m = std::max(m, std::abs(double(t[i])));
  EXPECT_LE(m, bound);
  EXPECT_GT(m, 0.9 * bound);  // and fills the range
}

// ---------------------------------------------------------------- Dense

TEST(Dense, ValuesFromTheFormula) {
  tg::Generator gen(1);
  nn::Dense<double> d(3, 2, true, gen);
  auto x = tg::Tensor<double>::randn({4, 3}, gen);
  auto y = run(d, x);
  ASSERT_EQ(y.shape(), tg::Shape({4, 2}));
  for (int n = 0; n < 4; ++n)
    for (int o = 0; o < 2; ++o) {
      double e = d.bias.value()[o];
      for (int i = 0; i < 3; ++i) e += x.at(n, i) * d.weight.value().at(o, i);
      EXPECT_NEAR(y.at(n, o), e, 1e-12);
    }
  nn::Dense<double> nb(3, 2, false, gen);
  EXPECT_FALSE(nb.bias.defined());
  EXPECT_EQ(nb.parameters().size(), 1u);
  auto z = run(nb, x);
  EXPECT_NEAR(z.at(1, 1),
              x.at(1, 0) * nb.weight.value().at(1, 0) + x.at(1, 1) * nb.weight.value().at(1, 1) +
                  x.at(1, 2) * nb.weight.value().at(1, 2),
              1e-12);
}

TEST(Dense, Gradcheck) {
  tg::Generator gen(2);
  nn::Dense<double> d(4, 3, true, gen);
  expect_layer_gradcheck(d, tg::Tensor<double>::randn({5, 4}, gen));
  expect_layer_gradcheck(d, tg::Tensor<double>::randn({2, 3, 4}, gen));  // leading dims
  nn::Dense<double> nb(4, 2, false, gen);
  expect_layer_gradcheck(nb, tg::Tensor<double>::randn({3, 4}, gen));
}

TEST(Dense, DefaultInitIsPyTorchs) {
  tg::Generator gen(3);
  nn::Dense<float> d(400, 300, true, gen);
  EXPECT_EQ(d.weight.shape(), tg::Shape({300, 400}));
  EXPECT_EQ(d.bias.shape(), tg::Shape({300}));
  expect_within(d.weight.value(), 1.0 / std::sqrt(400.0));  // kaiming_uniform(a=√5)
  expect_within(d.bias.value(), 1.0 / std::sqrt(400.0));
  // Without a Generator: the default one, so reseeding it reproduces the weights.
  nn::default_generator().manual_seed(11);
  nn::Dense<float> a(5, 4);
  nn::default_generator().manual_seed(11);
  nn::Dense<float> b(5, 4);
  EXPECT_TRUE(tg::allclose(a.weight.value(), b.weight.value(), 0, 0));
  EXPECT_TRUE(tg::allclose(a.bias.value(), b.bias.value(), 0, 0));
  EXPECT_EQ(a.name(), "Dense(5, 4)");
  EXPECT_EQ(nn::Dense<float>(5, 4, false).name(), "Dense(5, 4, bias=false)");
}

TEST(Dense, InFeaturesMismatch) {
  nn::Dense<float> d(784, 256);
  tg::Tape<float> tape;
  try {
    d(tape.constant(tg::Tensor<float>::zeros({32, 100})));
    FAIL();
  } catch (const tg::ShapeError& e) {
    EXPECT_STREQ(e.what(), "Dense(784, 256): input [32,100]: expected 784 features");
  }
  expect_error_containing<tg::ShapeError>(
      [&] { d(tape.constant(tg::Tensor<float>::scalar(1.0f))); }, {"Dense(784, 256)", "input []"});
  expect_error_containing<tg::ValueError>([] { nn::Dense<float>(-1, 3); }, {"Dense(-1, 3)"});
}

// ---------------------------------------------------------------- Conv2D

TEST(Conv2D, HandComputedValues) {
  // All-ones 3x3 kernel, padding 1, on an all-ones image: each output counts the pixels its
  // window covers (4 in corners, 6 on edges, 9 in the middle), plus the bias.
  nn::Conv2D<double> c(1, 2, 3, 1, 1);
  nn::init::ones_(c.weight);
  c.bias.value().copy_(tg::Tensor<double>::from({0.5, -1.0}));
  c.weight.value().at(1, 0, 1, 1) = 2.0;  // channel 1: the centre tap counts twice
  auto y = run(c, tg::Tensor<double>::ones({1, 1, 3, 3}));
  ASSERT_EQ(y.shape(), tg::Shape({1, 2, 3, 3}));
  const double counts[9] = {4, 6, 4, 6, 9, 6, 4, 6, 4};
  for (int i = 0; i < 9; ++i) {
    EXPECT_DOUBLE_EQ(y[i], counts[i] + 0.5);
    EXPECT_DOUBLE_EQ(y[9 + i], counts[i] + 1.0 - 1.0);
  }
  // Rectangular kernel {1,2}, stride {1,2}, two input channels summed: x0 + 10 x1 on pairs.
  nn::Conv2D<double> r(2, 1, {1, 2}, {1, 2}, 0, 1, false);
  nn::init::ones_(r.weight);
  r.weight.value().at(0, 1, 0, 0) = 10;
  r.weight.value().at(0, 1, 0, 1) = 10;
  auto x = tg::Tensor<double>::arange(8).reshape({1, 2, 1, 4});  // ch0 0 1 2 3, ch1 4 5 6 7
  auto z = run(r, x);
  ASSERT_EQ(z.shape(), tg::Shape({1, 1, 1, 2}));
  EXPECT_DOUBLE_EQ(z[0], 0 + 1 + 10 * (4 + 5));
  EXPECT_DOUBLE_EQ(z[1], 2 + 3 + 10 * (6 + 7));
}

TEST(Conv2D, OutputSizes) {
  tg::Tape<float> tape;
  auto x = tape.constant(tg::Tensor<float>::zeros({2, 3, 28, 28}));
  EXPECT_EQ(nn::Conv2D<float>(3, 8, 3)(x).shape(), tg::Shape({2, 8, 26, 26}));
  EXPECT_EQ(nn::Conv2D<float>(3, 8, 3, 2, 1)(x).shape(), tg::Shape({2, 8, 14, 14}));
  EXPECT_EQ(nn::Conv2D<float>(3, 8, 3, 1, 2, 2)(x).shape(), tg::Shape({2, 8, 28, 28}));
  EXPECT_EQ(nn::Conv2D<float>(3, 8, {5, 1}, {3, 1}, {0, 2})(x).shape(), tg::Shape({2, 8, 8, 32}));
}

TEST(Conv2D, Gradcheck) {
  tg::Generator gen(4);
  nn::Conv2D<double> a(2, 3, 3, 1, 1, 1, true, gen);
  expect_layer_gradcheck(a, tg::Tensor<double>::randn({2, 2, 5, 5}, gen));
  nn::Conv2D<double> b(2, 2, {2, 3}, {2, 1}, {1, 0}, {1, 2}, false, gen);
  expect_layer_gradcheck(b, tg::Tensor<double>::randn({2, 2, 6, 7}, gen));
  nn::Conv2D<double> c(3, 2, 1, 2, 0, 1, true, gen);
  expect_layer_gradcheck(c, tg::Tensor<double>::randn({1, 3, 5, 4}, gen));
}

TEST(Conv2D, DefaultInitAndName) {
  tg::Generator gen(5);
  nn::Conv2D<float> c(16, 32, 5, 1, 0, 1, true, gen);  // fan_in = 16·25 = 400
  EXPECT_EQ(c.weight.shape(), tg::Shape({32, 16, 5, 5}));
  expect_within(c.weight.value(), 1.0 / 20.0);
  expect_within(c.bias.value(), 1.0 / 20.0);
  EXPECT_EQ(c.num_parameters(), 32 * 16 * 25 + 32);
  EXPECT_EQ(c.name(), "Conv2D(16, 32, kernel=5)");
  EXPECT_EQ(nn::Conv2D<float>(1, 16, 3, 2, 1).name(),
            "Conv2D(1, 16, kernel=3, stride=2, padding=1)");
  EXPECT_EQ(nn::Conv2D<float>(1, 2, {3, 5}, 1, 0, 2, false).name(),
            "Conv2D(1, 2, kernel=(3, 5), dilation=2, bias=false)");
  expect_error_containing<tg::ValueError>([] { nn::Conv2D<float>(1, 2, 0); },
                                          {"Conv2D(1, 2, kernel=0)"});
}

TEST(Conv2D, Errors) {
  nn::Conv2D<float> c(3, 16, 3);
  tg::Tape<float> tape;
  expect_error_containing<tg::ShapeError>(
      [&] {
        c(tape.constant(tg::Tensor<float>::zeros({2, 1, 28, 28})));
      },
      {"Conv2D(3, 16, kernel=3)", "[2,1,28,28]", "expected 3 channels"});
  expect_error_containing<tg::ShapeError>(
      [&] {
        c(tape.constant(tg::Tensor<float>::zeros({3, 28, 28})));
      },
      {"Conv2D(3, 16, kernel=3)", "[3,28,28]", "4-D"});
  expect_error_containing<tg::ShapeError>(
      [&] {
        c(tape.constant(tg::Tensor<float>::zeros({1, 3, 2, 9})));
      },
      {"Conv2D(3, 16, kernel=3)", "[1,3,2,9]", "larger than the 2x9"});
  nn::Conv2D<float> d(3, 4, 3, 1, 0, 3);  // dilated kernel 7x7
  expect_error_containing<tg::ShapeError>(
      [&] {
        d(tape.constant(tg::Tensor<float>::zeros({1, 3, 6, 6})));
      },
      {"Conv2D(3, 4, kernel=3, dilation=3)", "[1,3,6,6]", "7x7"});
  // Sizes whose index arithmetic would overflow int64_t fail when the layer is built.
  constexpr int64_t big = std::numeric_limits<int64_t>::max();
  expect_error_containing<tg::ValueError>([] { nn::Conv2D<float>(1, 1, 3, 1, 0, big); },
                                          {"Conv2D(1, 1, kernel=3", "at most 2147483648"});
  expect_error_containing<tg::ValueError>([] { nn::Conv2D<float>(1, 1, 3, 1, big); },
                                          {"Conv2D(1, 1, kernel=3", "at most 2147483648"});
  expect_error_containing<tg::ShapeError>(
      [&] {
        c(tape.constant(tg::Tensor<float>::zeros({0, 3, big, 4})));
      },
      {"Conv2D(3, 16, kernel=3)", "height and width must be at most 2147483648"});
}

// ---------------------------------------------------------------- pooling, Flatten

TEST(PoolLayers, ValuesShapesAndNames) {
  auto x = tg::Tensor<double>::arange(32).reshape({1, 2, 4, 4});
  nn::MaxPool2D<double> mp(2);
  auto m = run(mp, x);
  ASSERT_EQ(m.shape(), tg::Shape({1, 2, 2, 2}));
  EXPECT_DOUBLE_EQ(m[0], 5);  // max of 0 1 4 5
  EXPECT_DOUBLE_EQ(m[7], 31);
  nn::AvgPool2D<double> ap(2, 2);
  auto a = run(ap, x);
  EXPECT_DOUBLE_EQ(a[0], 2.5);  // (0+1+4+5)/4
  EXPECT_DOUBLE_EQ(a[5], (18 + 19 + 22 + 23) / 4.0);
  nn::MaxPool2D<double> overlapping(3, 1, 1);
  EXPECT_EQ(run(overlapping, x).shape(), tg::Shape({1, 2, 4, 4}));
  EXPECT_DOUBLE_EQ(run(overlapping, x)[0], 5);
  nn::GlobalAvgPool2D<double> gp;
  auto g = run(gp, x);
  ASSERT_EQ(g.shape(), tg::Shape({1, 2}));
  EXPECT_DOUBLE_EQ(g[0], 7.5);
  EXPECT_DOUBLE_EQ(g[1], 23.5);
  EXPECT_EQ(mp.name(), "MaxPool2D(kernel=2)");
  EXPECT_EQ(ap.name(), "AvgPool2D(kernel=2)");
  EXPECT_EQ(overlapping.name(), "MaxPool2D(kernel=3, stride=1, padding=1)");
  EXPECT_EQ(nn::AvgPool2D<float>(tg::Size2{2, 3}).name(), "AvgPool2D(kernel=(2, 3))");
}

TEST(PoolLayers, Gradcheck) {
  tg::Generator gen(6);
  auto x = tg::Tensor<double>::randn({2, 2, 5, 6}, gen);
  nn::MaxPool2D<double> mp(2);
  expect_layer_gradcheck(mp, x);
  nn::MaxPool2D<double> mo(3, 2, 1);
  expect_layer_gradcheck(mo, x);
  nn::AvgPool2D<double> ap(2, 1);
  expect_layer_gradcheck(ap, x);
  nn::AvgPool2D<double> apad({3, 2}, {{2, 2}}, {1, 1});
  expect_layer_gradcheck(apad, x);
  nn::GlobalAvgPool2D<double> gp;
  expect_layer_gradcheck(gp, x);
  nn::Flatten<double> f;
  expect_layer_gradcheck(f, x);
}

TEST(PoolLayers, Errors) {
  tg::Tape<float> tape;
  auto x3 = tape.constant(tg::Tensor<float>::zeros({2, 4, 4}));
  nn::MaxPool2D<float> mp(2);
  expect_error_containing<tg::ShapeError>([&] { mp(x3); },
                                          {"MaxPool2D(kernel=2)", "[2,4,4]", "4-D"});
  nn::AvgPool2D<float> big(5);
  expect_error_containing<tg::ShapeError>(
      [&] {
        big(tape.constant(tg::Tensor<float>::zeros({1, 1, 4, 4})));
      },
      {"AvgPool2D(kernel=5)", "[1,1,4,4]", "larger than the 4x4"});
  nn::GlobalAvgPool2D<float> gp;
  expect_error_containing<tg::ShapeError>([&] { gp(x3); }, {"GlobalAvgPool2D", "[2,4,4]"});
  expect_error_containing<tg::ValueError>([] { nn::MaxPool2D<float>(2, 2, 2); },
                                          {"MaxPool2D(kernel=2, padding=2)", "half the kernel"});
  expect_error_containing<tg::ValueError>([] { nn::AvgPool2D<float>(2, 0); },
                                          {"AvgPool2D", "stride"});
  constexpr int64_t huge = std::numeric_limits<int64_t>::max();
  expect_error_containing<tg::ValueError>(
      [] { nn::MaxPool2D<float>(3, std::nullopt, tg::Size2(huge / 2 + 1)); },
      {"MaxPool2D", "at most 2147483648"});
}

TEST(FlattenLayer, ShapesViewAndGradient) {
  tg::Tape<double> tape;
  auto xt = tg::Tensor<double>::arange(24).reshape({2, 3, 2, 2});
  auto x = tape.input(xt);
  nn::Flatten<double> f;
  auto y = f(x);
  EXPECT_EQ(y.shape(), tg::Shape({2, 12}));
  EXPECT_TRUE(y.value().shares_storage(xt));  // a view, no copy
  EXPECT_DOUBLE_EQ(y.value().at(1, 0), 12);
  tape.backward(y, tg::Tensor<double>::arange(24).reshape({2, 12}));
  EXPECT_TRUE(tg::allclose(x.grad(), xt));
  EXPECT_EQ(nn::Flatten<double>(0)(x).shape(), tg::Shape({24}));
  EXPECT_EQ(nn::Flatten<double>(1, 2)(x).shape(), tg::Shape({2, 6, 2}));
  EXPECT_EQ(nn::Flatten<double>(-2)(x).shape(), tg::Shape({2, 3, 4}));
  EXPECT_EQ(f.name(), "Flatten(start_dim=1, end_dim=-1)");
  expect_error_containing<tg::ShapeError>([&] { nn::Flatten<double>(4)(x); },
                                          {"Flatten(start_dim=4, end_dim=-1)", "[2,3,2,2]"});
  expect_error_containing<tg::ShapeError>([&] { nn::Flatten<double>(2, 1)(x); },
                                          {"Flatten", "[2,3,2,2]"});
}

// ---------------------------------------------------------------- activations

TEST(ActivationLayers, ValuesAndNames) {
  auto x = tg::Tensor<double>::from({-2.0, 0.0, 1.0}).reshape({1, 3});
  nn::Sigmoid<double> s;
  nn::Tanh<double> t;
  nn::ReLU<double> r;
  nn::LeakyReLU<double> l(0.2);
  nn::GELU<double> g;
  nn::Softmax<double> sm(1);
  auto sv = run(s, x), tv = run(t, x), rv = run(r, x), lv = run(l, x), gv = run(g, x),
       smv = run(sm, x);
  EXPECT_NEAR(sv[0], 1 / (1 + std::exp(2.0)), 1e-15);
  EXPECT_DOUBLE_EQ(sv[1], 0.5);
  EXPECT_NEAR(tv[0], std::tanh(-2.0), 1e-15);
  EXPECT_DOUBLE_EQ(rv[0], 0.0);
  EXPECT_DOUBLE_EQ(rv[2], 1.0);
  EXPECT_DOUBLE_EQ(lv[0], -0.4);
  EXPECT_DOUBLE_EQ(lv[2], 1.0);
  EXPECT_NEAR(gv[2], 0.8413447460685429, 1e-12);  // 1·Φ(1)
  const double z = std::exp(-2.0) + 1 + std::exp(1.0);
  EXPECT_NEAR(smv[0], std::exp(-2.0) / z, 1e-15);
  EXPECT_NEAR(smv[2], std::exp(1.0) / z, 1e-15);
  EXPECT_EQ(r.name(), "ReLU");
  EXPECT_EQ(l.name(), "LeakyReLU(negative_slope=0.2)");
  EXPECT_EQ(nn::LeakyReLU<float>().negative_slope(), 0.01);
  EXPECT_EQ(sm.name(), "Softmax(dim=1)");
  EXPECT_EQ(nn::GELU<float>(tg::GeluApproximation::tanh).name(), "GELU(approximate='tanh')");
  EXPECT_EQ(s.num_parameters(), 0);
}

TEST(ActivationLayers, Gradcheck) {
  tg::Generator gen(7);
  auto x = tg::Tensor<double>::randn({3, 4}, gen);
  nn::Sigmoid<double> s;
  nn::Tanh<double> t;
  nn::ReLU<double> r;
  nn::LeakyReLU<double> l(0.1);
  nn::GELU<double> g;
  nn::GELU<double> gt(tg::GeluApproximation::tanh);
  nn::Softmax<double> sm0(0), sm1(-1);
  for (nn::Module<double>* m :
       std::vector<nn::Module<double>*>{&s, &t, &r, &l, &g, &gt, &sm0, &sm1})
    expect_layer_gradcheck(*m, x);
}

TEST(ActivationLayers, SoftmaxBadDimNamesTheLayer) {
  nn::Softmax<float> sm(2);
  tg::Tape<float> tape;
  expect_error_containing<tg::ShapeError>(
      [&] {
        sm(tape.constant(tg::Tensor<float>::zeros({2, 3})));
      },
      {"Softmax(dim=2)", "[2,3]"});
}

// ---------------------------------------------------------------- Dropout

TEST(Dropout, TrainZeroesAboutPAndScalesTheRest) {
  nn::Dropout<double> d(0.3);
  auto x = tg::Tensor<double>::full({200, 100}, 2.0);
  auto y = run(d, x);
  int64_t zeros = 0;
  for (int64_t i = 0; i < y.numel(); ++i) {
    if (y[i] == 0)
      ++zeros;
    else
      EXPECT_NEAR(y[i], 2.0 / 0.7, 1e-12);
  }
  // 20000 Bernoulli(0.3): std of the fraction 0.0032, so ±0.02 is > 6 sigma.
  EXPECT_NEAR(double(zeros) / double(y.numel()), 0.3, 0.02);
  EXPECT_EQ(d.calls(), 1u);
}

TEST(Dropout, EvalIsIdentityAndPZeroToo) {
  nn::Dropout<double> d(0.5);
  d.eval();
  tg::Tape<double> tape;
  auto x = tape.input(tg::Tensor<double>::from({1.0, -2.0, 3.0}));
  auto y = d(x);
  EXPECT_TRUE(tg::allclose(y.value(), x.value(), 0, 0));
  tape.backward(y, tg::Tensor<double>::from({1.0, 2.0, 3.0}));
  EXPECT_TRUE(tg::allclose(x.grad(), tg::Tensor<double>::from({1.0, 2.0, 3.0}), 0, 0));
  EXPECT_EQ(d.calls(), 0u);
  nn::Dropout<double> none(0.0);
  EXPECT_TRUE(tg::allclose(run(none, x.value()), x.value(), 0, 0));
}

TEST(Dropout, GradientIsTheScaledMask) {
  nn::Dropout<double> d(0.5);
  tg::Tape<double> tape;
  auto x = tape.input(tg::Tensor<double>::ones({64}));
  auto y = d(x);
  tape.backward(y, tg::Tensor<double>::full({64}, 3.0));
  for (int64_t i = 0; i < 64; ++i)
    EXPECT_DOUBLE_EQ(x.grad()[i], 3.0 * y.value()[i]);  // y = m/(1-p)
}

TEST(Dropout, ReproducibleAndReplayable) {
  nn::Dropout<float> d(0.5, *std::make_unique<tg::Generator>(3));
  auto x = tg::Tensor<float>::ones({256});
  auto first = run(d, x), second = run(d, x);
  EXPECT_FALSE(tg::allclose(first, second, 0, 0));  // a new mask per call
  d.reset_rng();
  EXPECT_TRUE(tg::allclose(run(d, x), first, 0, 0));  // rewound: the same masks again
  EXPECT_TRUE(tg::allclose(run(d, x), second, 0, 0));
  nn::Dropout<float> e(0.5, *std::make_unique<tg::Generator>(3));  // same construction
  EXPECT_TRUE(tg::allclose(run(e, x), first, 0, 0));
  e.manual_seed(99);
  auto reseeded = run(e, x);
  e.manual_seed(99);
  EXPECT_TRUE(tg::allclose(run(e, x), reseeded, 0, 0));
  EXPECT_FALSE(tg::allclose(reseeded, first, 0, 0));
}

TEST(Dropout, GradcheckTrainAndEval) {
  tg::Generator gen(8);
  auto x = tg::Tensor<double>::randn({4, 5}, gen);
  nn::Dropout<double> d(0.4, gen);
  expect_layer_gradcheck(d, x);  // layer_check rewinds the mask before every call
  d.eval();
  expect_layer_gradcheck(d, x);
}

TEST(Dropout, ResetRngReachesDropoutInsideContainers) {
  tg::Generator gen(12);
  auto inner = std::make_shared<nn::Sequential<double>>(
      std::make_shared<nn::Dropout<double>>(0.5, gen), std::make_shared<nn::Tanh<double>>());
  nn::Sequential<double> s{std::make_shared<nn::Dense<double>>(5, 5, true, gen), inner,
                           std::make_shared<nn::Dropout<double>>(0.3, gen)};
  auto x = tg::Tensor<double>::randn({4, 5}, gen);
  auto first = run(s, x);
  EXPECT_FALSE(tg::allclose(run(s, x), first, 0, 0));
  nn::reset_rng(s);
  EXPECT_TRUE(tg::allclose(run(s, x), first, 0, 0));
  EXPECT_EQ(s.named_parameters()[0].first, "0.weight");
  EXPECT_EQ(inner->size(), 2u);
  expect_layer_gradcheck(s, x);
}

TEST(Dropout, SummaryConsumesNoMask) {
  auto d = std::make_shared<nn::Dropout<double>>(0.5);
  nn::Sequential<double> s{d};
  const std::string sum = s.summary({2, 3});
  EXPECT_NE(sum.find("Dropout(p=0.5)"), std::string::npos) << sum;
  EXPECT_EQ(d->calls(), 0u);
}

TEST(Dropout, ProbabilityOutOfRange) {
  for (double p : {-0.1, 1.0, 1.5, double(NAN)})
    expect_error_containing<tg::ValueError>([p] { nn::Dropout<float> d(p); },
                                            {"Dropout", "[0, 1)"});
  tg::Tape<double> tape;
  tg::Generator g;
  expect_error_containing<tg::ValueError>(
      [&] { tg::dropout(tape.constant(tg::Tensor<double>::ones({2})), 1.0, true, g); },
      {"dropout", "got 1"});
}

// ---------------------------------------------------------------- Sequential

TEST(Sequential, IndexingIterationAndNames) {
  auto d0 = std::make_shared<nn::Dense<double>>(4, 3);
  nn::Sequential<double> s{d0, std::make_shared<nn::ReLU<double>>(),
                           std::make_shared<nn::Dense<double>>(3, 2)};
  s.push_back(std::make_shared<nn::Softmax<double>>(1));
  ASSERT_EQ(s.size(), 4u);
  EXPECT_EQ(s[0], d0);
  EXPECT_EQ(s[3]->name(), "Softmax(dim=1)");
  std::vector<std::string> names;
  for (const auto& m : s) names.push_back(m->name());
  EXPECT_EQ(names,
            (std::vector<std::string>{"Dense(4, 3)", "ReLU", "Dense(3, 2)", "Softmax(dim=1)"}));
  std::vector<std::string> pnames;
  for (const auto& [n, p] : s.named_parameters()) pnames.push_back(n);
  EXPECT_EQ(pnames, (std::vector<std::string>{"0.weight", "0.bias", "2.weight", "2.bias"}));
  EXPECT_EQ(s.named_children()[3].first, "3");
  EXPECT_EQ(s.num_parameters(), 4 * 3 + 3 + 3 * 2 + 2);
  EXPECT_EQ(&s.at<nn::Dense<double>>(2), s[2].get());
  EXPECT_EQ(s.at<nn::Dense<double>>(2).out_features(), 2);
  expect_error_containing<tg::ValueError>([&] { s.at<nn::Dense<double>>(1); },
                                          {"Sequential", "ReLU"});
  expect_error_containing<tg::ValueError>([&] { (void)s[4]; },
                                          {"Sequential", "index 4", "4 modules"});
  expect_error_containing<tg::ValueError>([&] { s.push_back(nullptr); }, {"Sequential", "null"});
}

TEST(Sequential, ForwardComposesAndSummaryListsChildren) {
  auto d = std::make_shared<nn::Dense<double>>(2, 2);
  nn::init::zeros_(d->weight);
  d->weight.value().at(0, 0) = 1;   // y0 = x0 + 1
  d->weight.value().at(1, 1) = -1;  // y1 = -x1 - 1
  d->bias.value().copy_(tg::Tensor<double>::from({1.0, -1.0}));
  nn::Sequential<double> s{d, std::make_shared<nn::ReLU<double>>()};
  auto y = run(s, tg::Tensor<double>::from({{2.0, 3.0}}));
  EXPECT_DOUBLE_EQ(y[0], 3.0);
  EXPECT_DOUBLE_EQ(y[1], 0.0);  // relu(-4)
  const std::string sum = s.summary({5, 2});
  EXPECT_NE(sum.find("Sequential"), std::string::npos) << sum;
  EXPECT_NE(sum.find("  Dense(2, 2)"), std::string::npos) << sum;
  EXPECT_NE(sum.find("  ReLU"), std::string::npos) << sum;
  EXPECT_NE(sum.find("[5,2]"), std::string::npos) << sum;
}

TEST(Sequential, TrainEvalReachesChildren) {
  auto drop = std::make_shared<nn::Dropout<double>>(0.5);
  nn::Sequential<double> s{std::make_shared<nn::Dense<double>>(3, 3), drop};
  s.eval();
  EXPECT_FALSE(drop->is_training());
  auto x = tg::Tensor<double>::ones({2, 3});
  EXPECT_TRUE(tg::allclose(run(s, x), run(s, x), 0, 0));  // dropout off
  EXPECT_EQ(drop->calls(), 0u);
  s.train();
  EXPECT_TRUE(drop->is_training());
}

// A small CNN: gradients of the input and of every parameter through the whole stack.
TEST(Sequential, GradcheckSmallCnn) {
  tg::Generator gen(9);
  nn::Sequential<double> s{std::make_shared<nn::Conv2D<double>>(1, 2, 3, 1, 1, 1, true, gen),
                           std::make_shared<nn::Tanh<double>>(),
                           std::make_shared<nn::MaxPool2D<double>>(2),
                           std::make_shared<nn::Conv2D<double>>(2, 3, 2, 1, 0, 1, false, gen),
                           std::make_shared<nn::AvgPool2D<double>>(2, 1),
                           std::make_shared<nn::Flatten<double>>(),
                           std::make_shared<nn::Dense<double>>(3, 2, true, gen)};
  expect_layer_gradcheck(s, tg::Tensor<double>::randn({2, 1, 6, 6}, gen));
}

// Every layer is usable in float: one training-style step through all of them.
TEST(Sequential, FloatForwardBackwardThroughEveryLayer) {
  tg::Generator gen(10);
  nn::Sequential<float> s{std::make_shared<nn::Conv2D<float>>(1, 4, 3, 1, 1, 1, true, gen),
                          std::make_shared<nn::ReLU<float>>(),
                          std::make_shared<nn::MaxPool2D<float>>(2),
                          std::make_shared<nn::Conv2D<float>>(4, 4, 3, 1, 1, 1, true, gen),
                          std::make_shared<nn::LeakyReLU<float>>(),
                          std::make_shared<nn::AvgPool2D<float>>(2),
                          std::make_shared<nn::GlobalAvgPool2D<float>>(),
                          std::make_shared<nn::Dropout<float>>(0.25, gen),
                          std::make_shared<nn::Dense<float>>(4, 8, true, gen),
                          std::make_shared<nn::GELU<float>>(),
                          std::make_shared<nn::Sigmoid<float>>(),
                          std::make_shared<nn::Tanh<float>>(),
                          std::make_shared<nn::Dense<float>>(8, 3, true, gen),
                          std::make_shared<nn::Softmax<float>>(1)};
  tg::Tape<float> tape;
  auto x = tg::Tensor<float>::randn({2, 1, 8, 8}, gen);
  auto y = s(tape.constant(x));
  ASSERT_EQ(y.shape(), tg::Shape({2, 3}));
  for (int n = 0; n < 2; ++n)
    EXPECT_NEAR(y.value().at(n, 0) + y.value().at(n, 1) + y.value().at(n, 2), 1.0f, 1e-6);
  tape.backward(y, tg::Tensor<float>::from({{1.0f, 0.0f, 0.0f}, {0.0f, 1.0f, 0.0f}}));
  for (const auto& [name, p] : s.named_parameters()) {
    bool nonzero = false;
    for (int64_t i = 0; i < p.numel(); ++i) nonzero = nonzero || p.grad()[i] != 0;
    EXPECT_TRUE(nonzero) << name;
  }
}

}  // namespace
