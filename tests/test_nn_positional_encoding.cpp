// nn/positional_encoding.hpp: the sinusoidal table against Vaswani et al.'s formula (written with
// pow here, not with the exp/log form of the code), both encodings' outputs for time-major and
// batch-first inputs, the learned table's gradient, layer gradchecks (also batch 0) and errors.
#include <gtest/gtest.h>

#include <cmath>

#include "layer_check.hpp"
#include "tapegrad/nn/positional_encoding.hpp"
#include "tapegrad/ops/reduce.hpp"
#include "test_util.hpp"

namespace tg = tapegrad;
namespace nn = tapegrad::nn;
using TD = tg::Tensor<double>;
using tapegrad::testing::expect_error_exact;
using tapegrad::testing::randn;

TEST(SinusoidalPositionalEncoding, TableFollowsTheFormula) {
  nn::SinusoidalPositionalEncoding<double> pe(6, 0.0, 50);
  const auto buffers = pe.named_buffers();
  ASSERT_EQ(buffers.size(), 1u);
  EXPECT_EQ(buffers[0].first, "pe");
  ASSERT_EQ(buffers[0].second.shape(), (tg::Shape{50, 1, 6}));
  for (int64_t t : {0, 1, 7, 49})
    for (int64_t i = 0; i < 3; ++i) {
      const double angle = double(t) / std::pow(10000.0, 2.0 * double(i) / 6.0);
      EXPECT_NEAR(pe.pe()(t, 0, 2 * i), std::sin(angle), 1e-12) << t << " " << i;
      EXPECT_NEAR(pe.pe()(t, 0, 2 * i + 1), std::cos(angle), 1e-12) << t << " " << i;
    }
  // An odd d_model: the last sine has no cosine partner.
  nn::SinusoidalPositionalEncoding<double> odd(5, 0.0, 4);
  EXPECT_NEAR(odd.pe()(3, 0, 4), std::sin(3.0 / std::pow(10000.0, 4.0 / 5.0)), 1e-12);
}

TEST(SinusoidalPositionalEncoding, AddsTheTableOverTheBatch) {
  for (bool bf : {false, true}) {
    nn::SinusoidalPositionalEncoding<double> pe(4, 0.0, 10, bf);
    const TD x = randn({3, 2, 4}, 1);  // [T=3, N=2] or [N=3, T=2]
    const TD y = tapegrad::testing::run(pe, x);
    for (int64_t a = 0; a < 3; ++a)
      for (int64_t b = 0; b < 2; ++b)
        for (int64_t e = 0; e < 4; ++e)
          EXPECT_NEAR(y(a, b, e), x(a, b, e) + pe.pe()(bf ? b : a, 0, e), 1e-15);
  }
  nn::SinusoidalPositionalEncoding<double> drop(4, 0.25, 10);
  expect_layer_gradcheck(drop, randn({3, 2, 4}, 2));  // dropout masks replayed
  drop.eval();
  expect_layer_gradcheck(drop, randn({3, 2, 4}, 3));
}

TEST(LearnedPositionalEncoding, AddsTrainedRowsAndTheirGradient) {
  tg::Generator gen(4);
  nn::LearnedPositionalEncoding<double> pe(8, 3, false, gen);
  const auto named = pe.named_parameters();
  ASSERT_EQ(named.size(), 1u);
  EXPECT_EQ(named[0].first, "weight");
  EXPECT_EQ(pe.weight.shape(), (tg::Shape{8, 3}));
  double s2 = 0;
  for (int64_t i = 0; i < 24; ++i) s2 += pe.weight.value()[i] * pe.weight.value()[i];
  EXPECT_NEAR(std::sqrt(s2 / 24), 0.02, 0.01);  // N(0, 0.02^2)
  tg::Tape<double> tape;
  const TD x = randn({5, 2, 3}, 5);
  auto y = pe(tape.constant(x));
  for (int64_t t = 0; t < 5; ++t)
    for (int64_t n = 0; n < 2; ++n)
      for (int64_t e = 0; e < 3; ++e)
        EXPECT_NEAR(y.value()(t, n, e), x(t, n, e) + pe.weight.value()(t, e), 1e-15);
  tape.backward(tg::sum(y));
  for (int64_t t = 0; t < 8; ++t)  // rows 0..4 used by both batch entries, rows 5..7 unused
    EXPECT_EQ(pe.weight.grad()(t, 1), t < 5 ? 2.0 : 0.0);
  expect_layer_gradcheck(pe, randn({4, 2, 3}, 6));
  expect_layer_gradcheck(pe, randn({8, 2, 3}, 7));  // every row: no slice
  nn::LearnedPositionalEncoding<double> bf(8, 3, true, gen);
  expect_layer_gradcheck(bf, randn({2, 4, 3}, 8));
}

TEST(PositionalEncoding, Errors) {
  nn::LearnedPositionalEncoding<double> pe(4, 3);
  nn::SinusoidalPositionalEncoding<double> s(3, 0.1, 4);
  tg::Tape<double> tape;
  expect_error_exact<tg::ShapeError>(
      [&] {
        pe(tape.constant(TD::zeros({5, 2, 3})));
      },
      "LearnedPositionalEncoding(4, 3): input [5,2,3] has 5 positions, max_len is 4");
  expect_error_exact<tg::ShapeError>(
      [&] {
        s(tape.constant(TD::zeros({2, 2, 4})));
      },
      "SinusoidalPositionalEncoding(3, dropout=0.1): input [2,2,4]: expected [T, N, 3]");
}
