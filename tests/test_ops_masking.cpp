// ops/masking.hpp: masked_fill's values and gradient by hand, its broadcasting and errors, a
// gradcheck (double), and the masked softmax it feeds (rows with every score removed give zeros,
// with boolean and with additive masks).
#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "tapegrad/diag/gradcheck.hpp"
#include "tapegrad/ops/activation.hpp"
#include "tapegrad/ops/elementwise.hpp"
#include "tapegrad/ops/masking.hpp"
#include "test_util.hpp"

namespace tg = tapegrad;
using TD = tg::Tensor<double>;
using VD = tg::Var<double>;
using tapegrad::testing::expect_error_exact;
using tapegrad::testing::expect_values;
using tapegrad::testing::seq;

TEST(MaskedFill, ValuesGradientAndBroadcasting) {
  tg::Tape<double> tape;
  auto x = tape.input(seq({2, 3}));
  // A [3] mask broadcast over the rows.
  auto y = tg::masked_fill(x, tg::Tensor<bool>::from({false, true, false}), -7.0);
  expect_values(y.value(), {1, -7, 3, 4, -7, 6}, {2, 3});
  tape.backward(y, seq({2, 3}, 10));
  expect_values(x.grad(), {10, 0, 12, 13, 0, 15}, {2, 3});
  // A [2, 1] mask broadcast over the columns, and a full one.
  auto z = tg::masked_fill(tape.constant(seq({2, 3})),
                           tg::Tensor<bool>::from({true, false}, {2, 1}), 0.5);
  expect_values(z.value(), {0.5, 0.5, 0.5, 4, 5, 6}, {2, 3});
  const auto r = tg::gradcheck(
      [](tg::Tape<double>&, const std::vector<VD>& v) {
        return tg::masked_fill(v[0], tg::Tensor<bool>::from({{true, false}, {false, false}}), 2.0);
      },
      {tapegrad::testing::randn({3, 2, 2}, 1)});
  EXPECT_TRUE(r) << r;
}

TEST(MaskedFill, MaskMustBroadcastToTheInput) {
  tg::Tape<double> tape;
  auto x = tape.input(seq({2, 3}));
  expect_error_exact<tg::ShapeError>(
      [&] {
        tg::masked_fill(x, tg::Tensor<bool>({2, 2, 3}), 0.0);
      },
      "masked_fill: mask [2,2,3] does not broadcast to the input's shape [2,3]");
  expect_error_exact<tg::ShapeError>(
      [&] { tg::masked_fill(x, tg::Tensor<bool>({2}), 0.0); },
      "masked_fill: shapes [2,3] and [2] cannot be broadcast (dim -1: 3 vs 2)");
}

// softmax(masked_fill(scores, mask, -inf)) and softmax(scores + additive mask): a row with every
// score removed is zero and passes no gradient; the others are the softmax of what is left.
TEST(MaskedSoftmax, FullyMaskedRowsGiveZerosNotNaN) {
  const double inf = INFINITY;
  const TD scores = TD::from({{1.0, 2.0, 3.0}, {0.5, -1.0, 2.0}});
  const auto mask = tg::Tensor<bool>::from({{false, true, false}, {true, true, true}});
  const TD additive = TD::from({{0.0, -inf, 0.0}, {-inf, -inf, -inf}});
  const double e = std::exp(2.0);  // row 0 keeps [1, 3]: softmax = [1, e^2] / (1 + e^2)
  for (bool boolean : {true, false}) {
    for (int dim : {1, 0}) {  // along the rows, and along the columns of the transposed layout
      tg::Tape<double> tape;
      auto x = tape.input(dim == 1 ? scores : TD::from({{1.0, 0.5}, {2.0, -1.0}, {3.0, 2.0}}));
      tg::Var<double> m;
      if (dim == 1)
        m = boolean ? tg::masked_fill(x, mask, -inf) : x + additive;
      else
        m = boolean
                ? tg::masked_fill(
                      x, tg::Tensor<bool>::from({{false, true}, {true, true}, {false, true}}), -inf)
                : x + TD::from({{0.0, -inf}, {-inf, -inf}, {0.0, -inf}});
      auto y = tg::softmax(m, dim);
      tape.backward(y, seq(y.shape()));
      const std::vector<double> want =
          dim == 1 ? std::vector<double>{1 / (1 + e), 0, e / (1 + e), 0, 0, 0}
                   : std::vector<double>{1 / (1 + e), 0, 0, 0, e / (1 + e), 0};
      expect_values(y.value(), want, y.shape(), 1e-15);
      const TD g = x.grad();
      for (int64_t i = 0; i < g.numel(); ++i) EXPECT_TRUE(std::isfinite(g[i])) << i;
      // The masked-out row's gradient is zero.
      if (dim == 1)
        for (int64_t j = 0; j < 3; ++j) EXPECT_EQ(g(1, j), 0.0);
      else
        for (int64_t i = 0; i < 3; ++i) EXPECT_EQ(g(i, 1), 0.0);
    }
  }
}
