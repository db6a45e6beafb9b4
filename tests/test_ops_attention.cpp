// ops/attention.hpp: the fused scaled-dot-product attention against the formula written out with
// loops here (softmax(scale q k^T + masks) v), causal and boolean/additive masks with
// broadcasting, fully masked rows, gradcheck (double, 1e-6) with masks, causal, dropout (the masks
// replayed from the seed) and q = k = v, results independent of the thread count, empty shapes,
// buffers reused across steps, and errors naming the op and the shapes.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <string>
#include <utility>
#include <vector>

#include "tapegrad/diag/gradcheck.hpp"
#include "tapegrad/ops/attention.hpp"
#include "tapegrad/ops/reduce.hpp"
#include "tapegrad/threads.hpp"
#include "test_util.hpp"

namespace tg = tapegrad;
using TD = tg::Tensor<double>;
using VD = tg::Var<double>;
using Vars = std::vector<VD>;
using tapegrad::testing::error_message;
using tapegrad::testing::expect_error_exact;
using tapegrad::testing::randn;

namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();

// The formula with loops, for q [B, L, E], k [B, S, E], v [B, S, Ev]; mask(b, i, j) returns the
// additive term (-inf removes), applied after the scale.
template <class Mask>
TD reference(const TD& q, const TD& k, const TD& v, double scale, bool causal, Mask mask) {
  const int64_t B = q.size(0), L = q.size(1), E = q.size(2), S = k.size(1), Ev = v.size(2);
  TD out = TD::zeros({B, L, Ev});
  for (int64_t b = 0; b < B; ++b)
    for (int64_t i = 0; i < L; ++i) {
      std::vector<double> a(static_cast<size_t>(S));
      double mx = -kInf;
      for (int64_t j = 0; j < S; ++j) {
        double s = 0;
        for (int64_t e = 0; e < E; ++e) s += q(b, i, e) * k(b, j, e);
        s = s * scale + mask(b, i, j);
        if (causal && j > i) s = -kInf;
        a[static_cast<size_t>(j)] = s;
        mx = std::max(mx, s);
      }
      if (mx == -kInf) continue;  // no key: zeros
      double sum = 0;
      for (double& x : a) sum += (x = std::exp(x - mx));
      for (int64_t j = 0; j < S; ++j)
        for (int64_t e = 0; e < Ev; ++e)
          out(b, i, e) += a[static_cast<size_t>(j)] / sum * v(b, j, e);
    }
  return out;
}

TD run(const TD& q, const TD& k, const TD& v, const tg::AttentionOptions<double>& o) {
  tg::Tape<double> tape;
  return tg::scaled_dot_product_attention(tape.constant(q), tape.constant(k), tape.constant(v), o)
      .value()
      .clone();
}

void expect_close(const TD& got, const TD& want, double tol = 1e-12) {
  ASSERT_EQ(got.shape(), want.shape());
  for (int64_t i = 0; i < got.numel(); ++i) EXPECT_NEAR(got[i], want[i], tol) << "element " << i;
}

}  // namespace

TEST(Attention, ValuesMatchTheFormula) {
  const TD q = randn({2, 3, 4}, 1), k = randn({2, 5, 4}, 2), v = randn({2, 5, 3}, 3);
  const auto none = [](int64_t, int64_t, int64_t) { return 0.0; };
  expect_close(run(q, k, v, {}), reference(q, k, v, 0.5, false, none));  // scale 1/sqrt(4)
  expect_close(run(q, k, v, {.scale = 0.3}), reference(q, k, v, 0.3, false, none));
  expect_close(run(q, k, v, {.is_causal = true}), reference(q, k, v, 0.5, true, none));
}

TEST(Attention, BooleanMaskTrueTakesPartAndBroadcasts) {
  const TD q = randn({2, 2, 3, 4}, 4), k = randn({2, 2, 5, 4}, 5), v = randn({2, 2, 5, 2}, 6);
  // [L, S] shared by every batch and head; true = the key takes part (PyTorch SDPA).
  tg::Tensor<bool> m({3, 5});
  for (int64_t i = 0; i < 15; ++i) m[i] = (i * 7) % 3 != 0;
  const TD out = run(q, k, v, {.attn_mask = m});
  const TD q3 = q.reshape({4, 3, 4}), k3 = k.reshape({4, 5, 4}), v3 = v.reshape({4, 5, 2});
  expect_close(out.reshape({4, 3, 2}),
               reference(q3, k3, v3, 0.5, false,
                         [&](int64_t, int64_t i, int64_t j) { return m(i, j) ? 0.0 : -kInf; }));
  // [2, 1, 1, 5]: a key padding mask per batch, broadcast over heads and queries, with causal.
  tg::Tensor<bool> pad({2, 1, 1, 5});
  for (int64_t i = 0; i < 10; ++i) pad[i] = !(i == 1 || i == 8);
  const TD out2 = run(q, k, v, {.attn_mask = pad, .is_causal = true});
  expect_close(out2.reshape({4, 3, 2}),
               reference(q3, k3, v3, 0.5, true, [&](int64_t b, int64_t, int64_t j) {
                 return pad[b / 2 * 5 + j] ? 0.0 : -kInf;
               }));
}

TEST(Attention, AdditiveMaskAndFullyMaskedRows) {
  const TD q = randn({2, 3, 4}, 7), k = randn({2, 4, 4}, 8), v = randn({2, 4, 3}, 9);
  TD add = randn({3, 4}, 10);
  add(1, 0) = add(1, 1) = add(1, 2) = add(1, 3) = -kInf;  // query 1 sees no key
  add(2, 3) = -kInf;
  const TD out = run(q, k, v, {.attn_mask = add});
  expect_close(out, reference(q, k, v, 0.5, false,
                              [&](int64_t, int64_t i, int64_t j) { return add(i, j); }));
  for (int64_t b = 0; b < 2; ++b)
    for (int64_t e = 0; e < 3; ++e) EXPECT_EQ(out(b, 1, e), 0.0) << "a query without keys";
  // Its gradient is zero too, and nothing is NaN.
  tg::Tape<double> tape;
  auto qv = tape.input(q), kv = tape.input(k), vv = tape.input(v);
  tape.backward(tg::sum(tg::scaled_dot_product_attention(qv, kv, vv, {.attn_mask = add})));
  for (int64_t e = 0; e < 4; ++e) EXPECT_EQ(qv.grad()(0, 1, e), 0.0);
  for (const VD* x : {&qv, &kv, &vv}) tapegrad::testing::expect_all_finite(x->grad(), "grad");
}

TEST(Attention, StableForLargeScores) {
  // Scores of +-1e4 (softmax shifted by the row maximum): finite, and all weight on the largest.
  TD q = TD::zeros({1, 1, 1});
  const TD k = TD::from({1.0, -1.0, 0.5}, {1, 3, 1}), v = TD::from({1.0, 2.0, 3.0}, {1, 3, 1});
  q[0] = 1e4;
  const TD out = run(q, k, v, {.scale = 1.0});
  EXPECT_EQ(out[0], 1.0);
  q[0] = -1e4;
  EXPECT_EQ(run(q, k, v, {.scale = 1.0})[0], 2.0);
}

TEST(Attention, Gradcheck) {
  using tapegrad::testing::expect_gradcheck;
  auto sdpa = [](tg::AttentionOptions<double> o) {
    return [o](tg::Tape<double>&, const Vars& x) {
      return tg::scaled_dot_product_attention(x[0], x[1], x[2], o);
    };
  };
  expect_gradcheck(sdpa({}), {randn({2, 3, 4}, 11), randn({2, 5, 4}, 12), randn({2, 5, 3}, 13)});
  tg::Tensor<bool> m({2, 1, 3, 3});
  for (int64_t i = 0; i < 18; ++i) m[i] = i % 4 != 1;
  m[9] = m[10] = m[11] = false;  // batch 1, query 0 sees no key
  expect_gradcheck(sdpa({.attn_mask = m, .is_causal = true}),
                   {randn({2, 2, 3, 4}, 14), randn({2, 2, 3, 4}, 15), randn({2, 2, 3, 2}, 16)});
  expect_gradcheck(sdpa({.attn_mask = randn({3, 4}, 17), .scale = 0.7}),
                   {randn({2, 3, 2}, 18), randn({2, 4, 2}, 19), randn({2, 4, 5}, 20)});
  // q = k = v: the gradients of the three roles add up in one buffer.
  expect_gradcheck(
      [](tg::Tape<double>&, const Vars& x) {
        return tg::scaled_dot_product_attention(x[0], x[0], x[0], {.is_causal = true});
      },
      {randn({2, 4, 3}, 21)});
}

TEST(Attention, DropoutIsInvertedAndReplayable) {
  const TD q = randn({3, 4, 4}, 22), k = randn({3, 6, 4}, 23), v = randn({3, 6, 2}, 24);
  // Replayed from a generator of the same seed: the same masks, so gradcheck sees one function.
  tapegrad::testing::expect_gradcheck(
      [](tg::Tape<double>&, const Vars& x) {
        tg::Generator g(5);
        return tg::scaled_dot_product_attention(x[0], x[1], x[2],
                                                {.dropout_p = 0.4, .generator = &g});
      },
      {q, k, v});
  // Averaged over many draws the dropped attention approaches the undropped one (E[M/(1-p)] = 1).
  tg::Generator g(6);
  TD mean = TD::zeros({3, 4, 2});
  const int draws = 3000;
  for (int d = 0; d < draws; ++d)
    mean.array() += run(q, k, v, {.dropout_p = 0.4, .generator = &g}).array() / double(draws);
  const TD plain = run(q, k, v, {});
  for (int64_t i = 0; i < mean.numel(); ++i) EXPECT_NEAR(mean[i], plain[i], 0.05) << i;
  // A different seed gives different masks.
  tg::Generator a(1), b(2);
  EXPECT_FALSE(tg::allclose(run(q, k, v, {.dropout_p = 0.4, .generator = &a}),
                            run(q, k, v, {.dropout_p = 0.4, .generator = &b})));
}

TEST(Attention, SameResultsAtOneAndTwoThreads) {
  // 16 heads of 64 x 64: enough work for the heads to be shared between the threads.
  tg::Generator g(25);
  using TF = tg::Tensor<float>;
  const TF q = TF::randn({4, 4, 64, 32}, g), k = TF::randn({4, 4, 64, 32}, g),
           v = TF::randn({4, 4, 64, 32}, g);
  tg::Generator seeds(3);
  auto step = [&](int threads, std::vector<TF>& out) {
    tg::set_num_threads(threads);
    tg::Tape<float> tape;
    auto qv = tape.input(q), kv = tape.input(k), vv = tape.input(v);
    tg::Generator d(9);
    auto y = tg::scaled_dot_product_attention(
        qv, kv, vv, {.dropout_p = 0.1, .is_causal = true, .generator = &d});
    tape.backward(y, TF::randn(y.shape(), seeds));
    out = {y.value().clone(), qv.grad(), kv.grad(), vv.grad()};
  };
  std::vector<TF> one, two;
  seeds.manual_seed(3);
  step(1, one);
  seeds.manual_seed(3);
  step(2, two);
  tg::set_num_threads(1);
  for (size_t i = 0; i < one.size(); ++i)
    EXPECT_TRUE(tapegrad::testing::same_bits(one[i], two[i])) << "tensor " << i;
}

TEST(Attention, EmptyShapes) {
  for (const auto& [sq, sk] : std::vector<std::pair<tg::Shape, tg::Shape>>{
           {{0, 3, 4}, {0, 5, 4}}, {{2, 0, 4}, {2, 5, 4}}, {{2, 3, 4}, {2, 0, 4}}}) {
    tg::Tape<double> tape;
    auto q = tape.input(TD::ones(sq)), k = tape.input(TD::ones(sk));
    tg::Shape sv = sk;
    sv[2] = 2;
    auto v = tape.input(TD::ones(sv));
    auto y = tg::scaled_dot_product_attention(q, k, v, {.is_causal = true});
    EXPECT_EQ(y.shape(), (tg::Shape{sq[0], sq[1], 2}));
    for (int64_t i = 0; i < y.numel(); ++i) EXPECT_EQ(y.value()[i], 0.0);  // no key: zeros
    tape.backward(tg::sum(y));
    EXPECT_EQ(q.grad().shape(), sq);
    EXPECT_EQ(k.grad().array().abs().sum(), 0.0);
  }
}

TEST(Attention, BuffersAreReusedAcrossSteps) {
  tg::Tape<float> tape;
  tg::Generator g(26);
  const auto x = tg::Tensor<float>::randn({2, 8, 4}, g);
  std::vector<const float*> first;
  for (int step = 0; step < 3; ++step) {
    tape.clear();
    auto q = tape.input(x);
    auto y = tg::scaled_dot_product_attention(q, q, q, {.is_causal = true});
    tape.backward(tg::sum(y));
    const std::vector<const float*> now = {y.value().data(), y.node().saved[0].data(),
                                           y.node().saved[1].data()};
    if (step == 0)
      first = now;
    else
      EXPECT_EQ(first, now) << "step " << step;
  }
}

TEST(Attention, ErrorsNameTheOpAndShapes) {
  tg::Tape<double> tape;
  auto q = tape.input(TD::zeros({2, 3, 4})), k = tape.input(TD::zeros({2, 5, 4}));
  auto v = tape.input(TD::zeros({2, 5, 3})), k3 = tape.input(TD::zeros({2, 5, 3}));
  auto flat = tape.input(TD::zeros({5, 4}));
  expect_error_exact<tg::ShapeError>(
      [&] { tg::scaled_dot_product_attention(q, flat, v); },
      "scaled_dot_product_attention: query [2,3,4], key [5,4], value [2,5,3]: expected [..., L, "
      "E], [..., S, E], [..., S, Ev] of one rank >= 2");
  expect_error_exact<tg::ShapeError>(
      [&] { tg::scaled_dot_product_attention(q, k3, v); },
      "scaled_dot_product_attention: query [2,3,4], key [2,5,3], value [2,5,3]: query and key "
      "embedding sizes differ");
  expect_error_exact<tg::ShapeError>(
      [&] { tg::scaled_dot_product_attention(q, k, q); },
      "scaled_dot_product_attention: query [2,3,4], key [2,5,4], value [2,3,4]: key and value "
      "lengths differ");
  auto q1 = tape.input(TD::zeros({1, 3, 4}));
  expect_error_exact<tg::ShapeError>(
      [&] { tg::scaled_dot_product_attention(q1, k, v); },
      "scaled_dot_product_attention: query [1,3,4], key [2,5,4], value [2,5,3]: leading dims "
      "differ");
  expect_error_exact<tg::ShapeError>(
      [&] {
        tg::scaled_dot_product_attention(q, k, v, {.attn_mask = TD::zeros({3, 3})});
      },
      "scaled_dot_product_attention: attn_mask of shape [3,3] does not broadcast to the scores "
      "[2,3,5]");
  EXPECT_NE(error_message<tg::ValueError>([&] {
              tg::scaled_dot_product_attention(q, k, v, {.dropout_p = 0.1});
            }).find("needs a Generator"),
            std::string::npos);
  tg::Generator g(1);
  EXPECT_NE(error_message<tg::ValueError>([&] {
              tg::scaled_dot_product_attention(q, k, v, {.dropout_p = 1.0, .generator = &g});
            }).find("[0, 1)"),
            std::string::npos);
  // A scale that is not finite makes every score NaN or every weight 0: an error instead.
  const std::vector<std::pair<double, std::string>> bad_scales{
      {std::nan(""), "nan"}, {-INFINITY, "-inf"}, {INFINITY, "inf"}};
  for (const auto& [scale, text] : bad_scales)
    expect_error_exact<tg::ValueError>(
        [&] { tg::scaled_dot_product_attention(q, k, v, {.scale = scale}); },
        "scaled_dot_product_attention: scale must be finite, got " + text);
}
