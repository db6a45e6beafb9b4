// nn/embedding.hpp: PyTorch's name, shape and N(0, 1) initialisation with the padding row zeroed,
// lookups through Tensor<int64_t> and through Vars, the padding row's gradient, the layer
// gradcheck (which also runs batch 0) and errors.
#include <gtest/gtest.h>

#include <cmath>

#include "layer_check.hpp"
#include "tapegrad/nn/embedding.hpp"
#include "tapegrad/ops/reduce.hpp"
#include "test_util.hpp"

namespace tg = tapegrad;
namespace nn = tapegrad::nn;
using TD = tg::Tensor<double>;
using tapegrad::testing::expect_error_exact;

TEST(EmbeddingLayer, NamesShapeAndInitAsPyTorch) {
  tg::Generator gen(1);
  nn::Embedding<double> e(1000, 16, 3, gen);
  const auto named = e.named_parameters();
  ASSERT_EQ(named.size(), 1u);
  EXPECT_EQ(named[0].first, "weight");
  EXPECT_EQ(e.weight.shape(), (tg::Shape{1000, 16}));
  // N(0, 1) apart from the padding row, which is zero.
  double s = 0, s2 = 0;
  for (int64_t i = 0; i < e.weight.numel(); ++i) {
    if (i / 16 == 3) {
      EXPECT_EQ(e.weight.value()[i], 0.0);
      continue;
    }
    s += e.weight.value()[i];
    s2 += e.weight.value()[i] * e.weight.value()[i];
  }
  const double n = 999 * 16;
  EXPECT_NEAR(s / n, 0.0, 0.03);
  EXPECT_NEAR(std::sqrt(s2 / n), 1.0, 0.03);
  EXPECT_EQ(e.name(), "Embedding(1000, 16, padding_idx=3)");
  EXPECT_EQ(nn::Embedding<double>(5, 2, -1).padding_idx(), 4);  // counts from the end, as torch
  EXPECT_EQ(nn::Embedding<double>(5, 2).name(), "Embedding(5, 2)");
}

TEST(EmbeddingLayer, LongTensorAndVarIndicesAgree) {
  tg::Generator gen(2);
  nn::Embedding<double> e(6, 3, 0, gen);
  tg::Tensor<int64_t> ids({2, 3});
  TD idv({2, 3});
  for (int64_t i = 0; i < 6; ++i) ids[i] = (i * 5) % 6, idv[i] = double(ids[i]);
  tg::Tape<double> tape;
  const auto a = e.forward(tape, ids);
  const auto b = e(tape.constant(idv));
  ASSERT_EQ(a.shape(), (tg::Shape{2, 3, 3}));
  for (int64_t i = 0; i < 6; ++i)
    for (int64_t j = 0; j < 3; ++j) {
      EXPECT_EQ(a.value()[i * 3 + j], e.weight.value()(ids[i], j));
      EXPECT_EQ(b.value()[i * 3 + j], a.value()[i * 3 + j]);
    }
  tape.backward(tg::sum(a));
  // Index 0 (the padding row) appears once: no gradient; every other index once: ones.
  for (int64_t r = 0; r < 6; ++r)
    for (int64_t j = 0; j < 3; ++j) EXPECT_EQ(e.weight.grad()(r, j), r == 0 ? 0.0 : 1.0) << r;
}

TEST(EmbeddingLayer, Gradcheck) {
  tg::Generator gen(3);
  // padding_idx 4 is not among the indices: its row takes no part (see ops' Gradcheck test).
  nn::Embedding<double> e(7, 4, 4, gen);
  TD idx({3, 2});
  for (int64_t i = 0; i < 6; ++i) idx[i] = double((i * 3) % 7);  // 0 3 6 2 5 1
  idx[5] = idx[0];                                               // a repeated index
  expect_layer_gradcheck(e, idx);
}

TEST(EmbeddingLayer, Errors) {
  expect_error_exact<tg::ValueError>(
      [] { nn::Embedding<float>(0, 4); },
      "Embedding(0, 4): need num_embeddings >= 1 and embedding_dim >= 0");
  expect_error_exact<tg::ValueError>([] { nn::Embedding<float>(3, 4, 5); },
                                     "embedding: padding_idx 5 out of range for weight [3,4]");
  nn::Embedding<float> e(3, 2);
  tg::Tape<float> tape;
  expect_error_exact<tg::ValueError>(
      [&] {
        e(tape.constant(tg::Tensor<float>::from({1.0f, 4.0f})));
      },
      "embedding: index 4 at position 1 is out of range [0, 3) for weight [3,2]");
}
