// reshape, flatten, concat, slice, split, permute, transpose: values by hand, views share storage,
// gradients by hand and by gradcheck (double, 1e-6), errors by type and message.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "tapegrad/diag/gradcheck.hpp"
#include "tapegrad/ops/elementwise.hpp"
#include "tapegrad/ops/shape.hpp"
#include "test_util.hpp"

namespace tg = tapegrad;
using TD = tg::Tensor<double>;
using VD = tg::Var<double>;
using Vars = std::vector<VD>;
using tapegrad::testing::expect_error_exact;
using tapegrad::testing::expect_gradcheck;
using tapegrad::testing::randn;
using tapegrad::testing::seq;

namespace {

// Exact equality: these ops only move values (test_util's expect_values has a tolerance).
void expect_values(const TD& t, const std::vector<double>& expected, const tg::Shape& shape) {
  ASSERT_EQ(t.shape(), shape);
  ASSERT_EQ(t.numel(), static_cast<int64_t>(expected.size()));
  for (int64_t i = 0; i < t.numel(); ++i)
    EXPECT_EQ(t[i], expected[static_cast<size_t>(i)]) << "element " << i;
}

// y times a fixed non-uniform weighting, so that a gradcheck sees where each element went.
VD weigh(const VD& y) {
  TD w(y.shape());
  for (int64_t i = 0; i < w.numel(); ++i) w[i] = 1.0 + 0.1 * static_cast<double>(i);
  return y * w;
}

TEST(Reshape, ViewWithInferredDimAndGradient) {
  tg::Tape<double> tape;
  auto x = tape.input(seq({2, 3}, 0));
  auto y = tg::reshape(x, {3, -1});
  EXPECT_EQ(y.shape(), (tg::Shape{3, 2}));
  EXPECT_TRUE(y.value().shares_storage(x.value()));  // no copy
  expect_values(y.value(), {0, 1, 2, 3, 4, 5}, {3, 2});
  tape.backward(y, TD::from({{1.0, 2.0}, {3.0, 4.0}, {5.0, 6.0}}));
  expect_values(x.grad(), {1, 2, 3, 4, 5, 6}, {2, 3});

  auto z = tg::reshape(x, tg::Shape{6});
  EXPECT_EQ(z.shape(), tg::Shape{6});
  auto w = tg::reshape(x, std::vector<int64_t>{1, 6, 1});
  EXPECT_EQ(w.shape(), (tg::Shape{1, 6, 1}));

  expect_gradcheck(
      [](tg::Tape<double>&, const Vars& v) {
        return weigh(tg::reshape(v[0], {-1, 2}));
      },
      {randn({2, 3, 2}, 1)});
}

TEST(Reshape, Errors) {
  tg::Tape<double> tape;
  auto x = tape.input(seq({2, 3}, 0));
  expect_error_exact<tg::ShapeError>(
      [&] {
        tg::reshape(x, {4, 2});
      },
      "reshape: [2,3] (6 elements) to [4,2] (8 elements)");
  expect_error_exact<tg::ShapeError>(
      [&] {
        tg::reshape(x, {-1, -1});
      },
      "reshape: more than one -1 in the new shape");
  expect_error_exact<tg::ShapeError>(
      [&] {
        tg::reshape(x, {4, -1});
      },
      "reshape: cannot infer -1 for [2,3] (6 elements)");
}

TEST(Flatten, TorchSemantics) {
  tg::Tape<double> tape;
  auto x = tape.input(seq({2, 3, 4}, 0));
  EXPECT_EQ(tg::flatten(x).shape(), tg::Shape{24});
  EXPECT_EQ(tg::flatten(x, 1).shape(), (tg::Shape{2, 12}));
  EXPECT_EQ(tg::flatten(x, 0, 1).shape(), (tg::Shape{6, 4}));
  EXPECT_EQ(tg::flatten(x, -2, -1).shape(), (tg::Shape{2, 12}));
  EXPECT_EQ(tg::flatten(x, 1, 1).shape(), (tg::Shape{2, 3, 4}));
  auto f = tg::flatten(x, 1);
  EXPECT_TRUE(f.value().shares_storage(x.value()));
  EXPECT_EQ(f.value().at(1, 5), 17.0);  // x[1, 1, 1]
  auto s = tape.input(TD::scalar(7.0));
  auto fs = tg::flatten(s);
  expect_values(fs.value(), {7.0}, {1});

  tape.backward(f, seq({2, 12}, 0));
  std::vector<double> expected(24);
  for (size_t i = 0; i < 24; ++i) expected[i] = static_cast<double>(i);
  expect_values(x.grad(), expected, {2, 3, 4});

  expect_gradcheck([](tg::Tape<double>&, const Vars& v) { return weigh(tg::flatten(v[0], 1)); },
                   {randn({2, 2, 3}, 2)});
}

TEST(Flatten, Errors) {
  tg::Tape<double> tape;
  auto x = tape.input(seq({2, 3, 4}, 0));
  expect_error_exact<tg::ShapeError>(
      [&] { tg::flatten(x, 2, 1); },
      "flatten: start_dim 2 comes after end_dim 1 for shape [2,3,4]");
  expect_error_exact<tg::ShapeError>([&] { tg::flatten(x, 3); },
                                     "flatten: dim 3 out of range for shape [2,3,4] (rank 3)");
  auto s = tape.input(TD::scalar(1.0));
  expect_error_exact<tg::ShapeError>([&] { tg::flatten(s, 1); },
                                     "flatten: start_dim 1, end_dim -1 out of range for shape []");
}

TEST(Concat, ValuesAlongDimsAndGradients) {
  tg::Tape<double> tape;
  auto a = tape.input(TD::from({{1.0, 2.0}, {3.0, 4.0}}));
  auto b = tape.input(TD::from({{5.0, 6.0, 7.0}, {8.0, 9.0, 10.0}}));
  auto c1 = tg::concat({a, b}, 1);
  expect_values(c1.value(), {1, 2, 5, 6, 7, 3, 4, 8, 9, 10}, {2, 5});
  auto c0 = tg::concat(std::vector<VD>{a, a}, -2);
  expect_values(c0.value(), {1, 2, 3, 4, 1, 2, 3, 4}, {4, 2});

  tape.backward(c1, TD::from({{1.0, 2.0, 3.0, 4.0, 5.0}, {6.0, 7.0, 8.0, 9.0, 10.0}}));
  expect_values(a.grad(), {1, 2, 6, 7}, {2, 2});
  expect_values(b.grad(), {3, 4, 5, 8, 9, 10}, {2, 3});

  tg::Tape<double> t2;  // the same input twice: both blocks add into its gradient
  auto x = t2.input(TD::from({1.0, 2.0}));
  auto y = tg::concat({x, x, x}, 0);
  expect_values(y.value(), {1, 2, 1, 2, 1, 2}, {6});
  t2.backward(y, TD::from({1.0, 2.0, 3.0, 4.0, 5.0, 6.0}));
  expect_values(x.grad(), {9, 12}, {2});
}

TEST(Concat, MiddleDimAndGradcheck) {
  tg::Tape<double> tape;
  auto a = tape.input(seq({2, 1, 2}, 0));  // [[[0,1]],[[2,3]]]
  auto b = tape.input(seq({2, 2, 2}, 0));  // [[[0,1],[2,3]],[[4,5],[6,7]]]
  auto c = tg::concat({a, b}, 1);
  expect_values(c.value(), {0, 1, 0, 1, 2, 3, 2, 3, 4, 5, 6, 7}, {2, 3, 2});

  for (int d : {0, 1, 2, -1})
    expect_gradcheck(
        [d](tg::Tape<double>&, const Vars& v) {
          std::vector<VD> parts;
          for (const auto& p : v) parts.push_back(p);
          return weigh(tg::concat(parts, d));
        },
        {randn(d == 0   ? tg::Shape{1, 2, 3}
               : d == 1 ? tg::Shape{2, 1, 3}
                        : tg::Shape{2, 2, 1},
               3),
         randn({2, 2, 3}, 4),
         randn(d == 0   ? tg::Shape{3, 2, 3}
               : d == 1 ? tg::Shape{2, 3, 3}
                        : tg::Shape{2, 2, 2},
               5)});
}

TEST(Concat, Errors) {
  tg::Tape<double> tape;
  auto a = tape.input(TD::zeros({2, 3}));
  auto b = tape.input(TD::zeros({3, 4}));
  auto r3 = tape.input(TD::zeros({2, 3, 1}));
  auto s = tape.input(TD::scalar(1.0));
  expect_error_exact<tg::ShapeError>(
      [&] {
        tg::concat({a, b}, 1);
      },
      "concat: tensor 1 has shape [3,4] but tensor 0 has [2,3]: sizes must match except in dim 1");
  expect_error_exact<tg::ShapeError>(
      [&] {
        tg::concat({a, r3}, 0);
      },
      "concat: tensor 1 has shape [2,3,1] but tensor 0 has [2,3]: sizes must match except in dim "
      "0");
  expect_error_exact<tg::ShapeError>(
      [&] {
        tg::concat({a, a}, 2);
      },
      "concat: dim 2 out of range for shape [2,3] (rank 2)");
  expect_error_exact<tg::ShapeError>([&] { tg::concat(std::vector<VD>{}, 0); },
                                     "concat: no tensors to concatenate");
  expect_error_exact<tg::ShapeError>(
      [&] {
        tg::concat({s, s});
      },
      "concat: tensor 0 has shape []: 0-d tensors cannot be concatenated");
  tg::Tape<double> other;
  auto o = other.input(TD::zeros({2, 3}));
  EXPECT_THROW(tg::concat({a, o}), tg::TapeError);
}

TEST(Slice, ValuesGradientsAndNegativeIndices) {
  tg::Tape<double> tape;
  auto x = tape.input(seq({3, 4}, 0));  // rows [0..3], [4..7], [8..11]
  auto s1 = tg::slice(x, 1, 1, 3);
  expect_values(s1.value(), {1, 2, 5, 6, 9, 10}, {3, 2});
  auto s0 = tg::slice(x, 0, 2, 3);
  expect_values(s0.value(), {8, 9, 10, 11}, {1, 4});
  auto neg = tg::slice(x, -1, -3, -1);  // x[:, 1:3]
  expect_values(neg.value(), {1, 2, 5, 6, 9, 10}, {3, 2});
  auto empty = tg::slice(x, 0, 1, 1);
  EXPECT_EQ(empty.shape(), (tg::Shape{0, 4}));

  tape.backward(s1, TD::from({{1.0, 2.0}, {3.0, 4.0}, {5.0, 6.0}}));
  expect_values(x.grad(), {0, 1, 2, 0, 0, 3, 4, 0, 0, 5, 6, 0}, {3, 4});

  for (int d : {0, 1, 2})
    expect_gradcheck(
        [d](tg::Tape<double>&, const Vars& v) { return weigh(tg::slice(v[0], d, 1, 3)); },
        {randn({3, 4, 3}, 6)});
  // two overlapping slices of one input: both add into its gradient
  expect_gradcheck(
      [](tg::Tape<double>&, const Vars& v) {
        return tg::concat({tg::slice(v[0], 0, 0, 2), tg::slice(v[0], 0, 1, 3)}, 1);
      },
      {randn({3, 2}, 7)});
}

TEST(Slice, Errors) {
  tg::Tape<double> tape;
  auto x = tape.input(seq({3, 4}, 0));
  expect_error_exact<tg::ShapeError>(
      [&] { tg::slice(x, 1, 2, 5); },
      "slice: [2:5] out of range for dim 1 of size 4 in shape [3,4]");
  expect_error_exact<tg::ShapeError>(
      [&] { tg::slice(x, 0, 2, 1); },
      "slice: [2:1] out of range for dim 0 of size 3 in shape [3,4]");
  expect_error_exact<tg::ShapeError>(
      [&] { tg::slice(x, 0, -4, 2); },
      "slice: [-4:2] out of range for dim 0 of size 3 in shape [3,4]");
  expect_error_exact<tg::ShapeError>([&] { tg::slice(x, 2, 0, 1); },
                                     "slice: dim 2 out of range for shape [3,4] (rank 2)");
}

TEST(Split, BySizeAndBySectionsAlongAnyDim) {
  tg::Tape<double> tape;
  auto x = tape.input(seq({2, 5}, 0));  // rows [0..4], [5..9]
  auto p = tg::split(x, 2, 1);          // sizes 2, 2, 1
  ASSERT_EQ(p.size(), 3u);
  expect_values(p[0].value(), {0, 1, 5, 6}, {2, 2});
  expect_values(p[2].value(), {4, 9}, {2, 1});
  auto q = tg::split(x, std::vector<int64_t>{1, 0, 4}, -1);
  ASSERT_EQ(q.size(), 3u);
  EXPECT_EQ(q[1].shape(), (tg::Shape{2, 0}));
  expect_values(q[2].value(), {1, 2, 3, 4, 6, 7, 8, 9}, {2, 4});
  auto r = tg::split(x, 1, 0);
  expect_values(r[1].value(), {5, 6, 7, 8, 9}, {1, 5});
  expect_gradcheck(
      [](tg::Tape<double>&, const Vars& v) {
        auto s = tg::split(v[0], std::vector<int64_t>{2, 1}, 1);
        return tg::concat({weigh(s[1]), s[0]}, 1);
      },
      {randn({2, 3, 2}, 8)});
  expect_error_exact<tg::ShapeError>(
      [&] {
        tg::split(x, std::vector<int64_t>{2, 2}, 1);
      },
      "split: sizes add up to 4 but dim 1 of shape [2,5] has 5");
  expect_error_exact<tg::ShapeError>([&] { tg::split(x, 0, 1); },
                                     "split: split_size must be positive, got 0");
}

TEST(Permute, ValuesGradientAndTranspose) {
  tg::Tape<double> tape;
  auto x = tape.input(seq({2, 3, 4}, 0));  // x[a][b][c] = 12a + 4b + c
  auto y = tg::permute(x, {2, 0, 1});      // y[c][a][b] = x[a][b][c]
  ASSERT_EQ(y.shape(), (tg::Shape{4, 2, 3}));
  for (int64_t c = 0; c < 4; ++c)
    for (int64_t a = 0; a < 2; ++a)
      for (int64_t b = 0; b < 3; ++b) EXPECT_EQ(y.value()(c, a, b), double(12 * a + 4 * b + c));
  // The gradient comes back through the inverse permutation.
  tape.backward(y, seq({4, 2, 3}, 0));  // g[c][a][b] = 6c + 3a + b
  const TD g = x.grad();
  for (int64_t a = 0; a < 2; ++a)
    for (int64_t b = 0; b < 3; ++b)
      for (int64_t c = 0; c < 4; ++c) EXPECT_EQ(g(a, b, c), double(6 * c + 3 * a + b));
  auto t = tg::transpose(x, 0, -1);  // [4, 3, 2]
  ASSERT_EQ(t.shape(), (tg::Shape{4, 3, 2}));
  EXPECT_EQ(t.value()(3, 1, 1), x.value()(1, 1, 3));
  for (auto dims : std::vector<std::vector<int64_t>>{{1, 0, 2}, {2, 1, 0}, {0, 2, 1}, {1, 2, 0}})
    expect_gradcheck(
        [dims](tg::Tape<double>&, const Vars& v) { return weigh(tg::permute(v[0], dims)); },
        {randn({2, 3, 4}, 9)});
  // Used twice: both gradients add up.
  expect_gradcheck(
      [](tg::Tape<double>&, const Vars& v) {
        return tg::permute(v[0], {1, 0}) + weigh(tg::transpose(v[0], 1, 0));
      },
      {randn({3, 3}, 10)});
  auto s = tape.input(TD::scalar(2.0));
  EXPECT_EQ(tg::permute(s, {}).value().item(), 2.0);
  EXPECT_EQ(tg::permute(tape.input(TD::zeros({0, 3})), {1, 0}).shape(), (tg::Shape{3, 0}));
}

TEST(Permute, Errors) {
  tg::Tape<double> tape;
  auto x = tape.input(seq({2, 3, 4}, 0));
  expect_error_exact<tg::ShapeError>(
      [&] {
        tg::permute(x, {0, 1});
      },
      "permute: 2 dims given for shape [2,3,4] (rank 3)");
  expect_error_exact<tg::ShapeError>(
      [&] {
        tg::permute(x, {0, 1, -2});
      },
      "permute: dim -2 repeated for shape [2,3,4]");
  expect_error_exact<tg::ShapeError>(
      [&] {
        tg::permute(x, {0, 1, 3});
      },
      "permute: dim 3 out of range for shape [2,3,4] (rank 3)");
  expect_error_exact<tg::ShapeError>([&] { tg::transpose(x, 0, 3); },
                                     "transpose: dim 3 out of range for shape [2,3,4] (rank 3)");
}

}  // namespace
