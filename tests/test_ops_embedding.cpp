// ops/embedding.hpp: rows gathered by index (Tensor<int64_t> and whole-number Vars), the
// scatter-add backward by hand (duplicates accumulate, padding_idx gets nothing), gradcheck
// (double), and errors for bad indices and shapes.
#include <gtest/gtest.h>

#include <vector>

#include "tapegrad/diag/gradcheck.hpp"
#include "tapegrad/ops/embedding.hpp"
#include "tapegrad/ops/reduce.hpp"
#include "test_util.hpp"

namespace tg = tapegrad;
using TD = tg::Tensor<double>;
using VD = tg::Var<double>;
using tapegrad::testing::error_message;
using tapegrad::testing::expect_error_exact;
using tapegrad::testing::expect_values;
using tapegrad::testing::seq;

namespace {
tg::Tensor<int64_t> ids(std::vector<int64_t> v, tg::Shape s) {
  tg::Tensor<int64_t> t(s);
  for (size_t i = 0; i < v.size(); ++i) t[static_cast<int64_t>(i)] = v[i];
  return t;
}
}  // namespace

TEST(Embedding, GathersRowsAndScatterAddsGradients) {
  tg::Parameter<double> w(seq({4, 3}));  // row r = 3r+1, 3r+2, 3r+3
  tg::Tape<double> tape;
  auto y = tg::embedding(ids({2, 0, 2, 3}, {2, 2}), tape.param(w));
  expect_values(y.value(), {7, 8, 9, 1, 2, 3, 7, 8, 9, 10, 11, 12}, {2, 2, 3});
  tape.backward(y, seq({2, 2, 3}, 0.5, 0.5));  // g rows [.5 1 1.5] [2 2.5 3] [3.5 4 4.5] [5 5.5 6]
  // Row 2 was used twice: both gradients add up; row 1 was not used.
  expect_values(w.grad(), {2, 2.5, 3, 0, 0, 0, 4, 5, 6, 5, 5.5, 6}, {4, 3});
}

TEST(Embedding, PaddingIndexGetsNoGradient) {
  tg::Parameter<double> w(seq({4, 2}));
  for (auto pad : {int64_t{1}, int64_t{-3}}) {  // -3 counts from the end: row 1
    w.zero_grad();
    tg::Tape<double> tape;
    auto y = tg::embedding(ids({1, 3, 1, 0}, {4}), tape.param(w), pad);
    expect_values(y.value(), {3, 4, 7, 8, 3, 4, 1, 2}, {4, 2});  // the forward still reads it
    tape.backward(tg::sum(y));
    expect_values(w.grad(), {1, 1, 0, 0, 0, 0, 1, 1}, {4, 2});
  }
}

TEST(Embedding, WholeNumberVarsAsIndices) {
  tg::Parameter<double> w(seq({3, 2}));
  tg::Tape<double> tape;
  auto x = tape.input(TD::from({{2.0, 0.0}, {1.0000001, 2.0}}));  // within 1e-3: rounded
  auto y = tg::embedding(x, tape.param(w));
  expect_values(y.value(), {5, 6, 1, 2, 3, 4, 5, 6}, {2, 2, 2});
  tape.backward(tg::sum(y));
  expect_values(x.grad(), {0, 0, 0, 0}, {2, 2});  // indices carry no gradient
  expect_values(w.grad(), {1, 1, 1, 1, 2, 2}, {3, 2});
}

// Without padding_idx: the padding row's gradient is zero by definition while the output depends
// on it, so a finite-difference check cannot include it (PaddingIndexGetsNoGradient checks it).
TEST(Embedding, Gradcheck) {
  tg::Parameter<double> w(tapegrad::testing::randn({5, 3}, 1));
  const auto r = tg::gradcheck(
      [&](tg::Tape<double>& t, const std::vector<VD>&) {
        return tg::embedding(ids({4, 1, 1, 0, 4, 4}, {3, 2}), t.param(w));
      },
      {}, {w});
  EXPECT_TRUE(r) << r;
}

TEST(Embedding, EmptyIndicesAndErrors) {
  tg::Parameter<double> w(seq({3, 2}));
  tg::Tape<double> tape;
  auto e = tg::embedding(tg::Tensor<int64_t>({0, 5}), tape.param(w));
  EXPECT_EQ(e.shape(), (tg::Shape{0, 5, 2}));
  tape.backward(tg::sum(e));
  expect_values(w.grad(), {0, 0, 0, 0, 0, 0}, {3, 2});
  expect_error_exact<tg::ValueError>(
      [&] {
        tg::embedding(ids({0, 3}, {2}), tape.param(w));
      },
      "embedding: index 3 at position 1 is out of range [0, 3) for weight [3,2]");
  expect_error_exact<tg::ValueError>(
      [&] { tg::embedding(ids({-1}, {1}), tape.param(w)); },
      "embedding: index -1 at position 0 is out of range [0, 3) for weight [3,2]");
  expect_error_exact<tg::ValueError>([&] { tg::embedding(ids({0}, {1}), tape.param(w), 3); },
                                     "embedding: padding_idx 3 out of range for weight [3,2]");
  EXPECT_NE(error_message<tg::ValueError>([&] {
              tg::embedding(tape.constant(TD::from({0.5})), tape.param(w));
            }).find("not a whole number"),
            std::string::npos);
  EXPECT_NE(error_message<tg::ValueError>([&] {
              tg::embedding(tape.constant(TD::from({1e300})), tape.param(w));
            }).find("out of range"),
            std::string::npos);
  tg::Parameter<double> w3(seq({2, 2, 2}));
  expect_error_exact<tg::ShapeError>(
      [&] { tg::embedding(ids({0}, {1}), tape.param(w3)); },
      "embedding: weight [2,2,2] must be 2-D [num_embeddings, embedding_dim]");
}
