// batch_norm, batch_norm_relu and layer_norm ops: gradchecks in double, values against the
// documented formulas written out here with plain loops, running statistics, and the errors.
#include <gtest/gtest.h>

#include <cmath>
#include <string>
#include <vector>

#include "tapegrad/diag/gradcheck.hpp"
#include "tapegrad/ops/activation.hpp"
#include "tapegrad/ops/norm.hpp"
#include "tapegrad/threads.hpp"
#include "test_util.hpp"

namespace tg = tapegrad;
using tapegrad::testing::expect_error_containing;
using tapegrad::testing::sample;

namespace {

using TD = tg::Tensor<double>;
using VD = tg::Var<double>;
using Inputs = std::vector<VD>;

// a + b of equal shapes, local to the test so it needs no other op file.
template <class T>
tg::Var<T> add(const tg::Var<T>& a, const tg::Var<T>& b) {
  auto y = a.tape().record("add", a.shape(), {a, b}, [](tg::OpContext<T>& c) {
    c.add_grad(0, c.grad_out().array());
    c.add_grad(1, c.grad_out().array());
  });
  y.value().array() = a.value().array() + b.value().array();
  return y;
}

// Reference batch norm over x [N,C,S] (S = H·W), in double, straight from the formulas:
// train uses the biased batch variance; eval uses the given mean and var.
struct BnRef {
  std::vector<double> y, mean, var;  // var: biased batch variance (train) or the given var
};
BnRef bn_reference(const TD& x, int64_t N, int64_t C, int64_t S, const std::vector<double>& g,
                   const std::vector<double>& b, double eps, bool training,
                   const std::vector<double>& rm = {}, const std::vector<double>& rv = {}) {
  BnRef r;
  r.y.resize(static_cast<size_t>(N * C * S));
  for (int64_t c = 0; c < C; ++c) {
    double mu = 0, var = 0;
    if (training) {
      for (int64_t n = 0; n < N; ++n)
        for (int64_t s = 0; s < S; ++s) mu += x[(n * C + c) * S + s];
      mu /= double(N * S);
      for (int64_t n = 0; n < N; ++n)
        for (int64_t s = 0; s < S; ++s) var += std::pow(x[(n * C + c) * S + s] - mu, 2);
      var /= double(N * S);  // biased
    } else {
      mu = rm[c];
      var = rv[c];
    }
    r.mean.push_back(mu);
    r.var.push_back(var);
    const double gc = g.empty() ? 1.0 : g[c], bc = b.empty() ? 0.0 : b[c];
    for (int64_t n = 0; n < N; ++n)
      for (int64_t s = 0; s < S; ++s) {
        const int64_t i = (n * C + c) * S + s;
        r.y[i] = gc * (x[i] - mu) / std::sqrt(var + eps) + bc;
      }
  }
  return r;
}

TD tensor_of(const std::vector<double>& v, const tg::Shape& s) { return TD::from(v, s); }

// ---------------------------------------------------------------- batch_norm: gradients

TEST(BatchNormOp, GradcheckTrainAffine2D) {
  auto r = tg::gradcheck(
      [](tg::Tape<double>&, const Inputs& v) {
        return tg::batch_norm(v[0], v[1], v[2], TD(), TD(), true);
      },
      {sample({5, 3}, 1), sample({3}, 2, 0.5, 1.5), sample({3}, 3)});
  EXPECT_TRUE(r) << r;
}

TEST(BatchNormOp, GradcheckTrainAffine4DWithRunningStats) {
  TD rm = TD::zeros({3}), rv = TD::ones({3});
  auto r =
      tg::gradcheck([&](tg::Tape<double>&,
                        const Inputs& v) { return tg::batch_norm(v[0], v[1], v[2], rm, rv, true); },
                    {sample({2, 3, 2, 3}, 4), sample({3}, 5, 0.5, 1.5), sample({3}, 6)});
  EXPECT_TRUE(r) << r;
}

TEST(BatchNormOp, GradcheckTrainNoAffine) {
  for (const tg::Shape s : {tg::Shape{4, 3}, tg::Shape{2, 2, 3, 2}}) {
    auto r = tg::gradcheck(
        [](tg::Tape<double>&, const Inputs& v) {
          return tg::batch_norm(v[0], VD{}, VD{}, TD(), TD(), true);
        },
        {sample(s, 7)});
    EXPECT_TRUE(r) << s << ": " << r;
  }
}

TEST(BatchNormOp, GradcheckTrainGammaOnlyAndBetaOnly) {
  auto rg = tg::gradcheck(
      [](tg::Tape<double>&, const Inputs& v) {
        return tg::batch_norm(v[0], v[1], VD{}, TD(), TD(), true);
      },
      {sample({2, 2, 2, 2}, 8), sample({2}, 9, 0.5, 1.5)});
  EXPECT_TRUE(rg) << rg;
  auto rb = tg::gradcheck(
      [](tg::Tape<double>&, const Inputs& v) {
        return tg::batch_norm(v[0], VD{}, v[1], TD(), TD(), true);
      },
      {sample({4, 2}, 10), sample({2}, 11)});
  EXPECT_TRUE(rb) << rb;
}

TEST(BatchNormOp, GradcheckEval) {
  TD rm = tensor_of({0.3, -0.2, 0.1}, {3}), rv = tensor_of({0.5, 1.5, 2.0}, {3});
  for (const tg::Shape s : {tg::Shape{4, 3}, tg::Shape{2, 3, 2, 2}}) {
    auto r = tg::gradcheck(
        [&](tg::Tape<double>&, const Inputs& v) {
          return tg::batch_norm(v[0], v[1], v[2], rm, rv, false);
        },
        {sample(s, 12), sample({3}, 13, 0.5, 1.5), sample({3}, 14)});
    EXPECT_TRUE(r) << s << ": " << r;
    auto r2 = tg::gradcheck(
        [&](tg::Tape<double>&, const Inputs& v) {
          return tg::batch_norm(v[0], VD{}, VD{}, rm, rv, false);
        },
        {sample(s, 15)});
    EXPECT_TRUE(r2) << s << " no affine: " << r2;
  }
  // eval leaves the running statistics alone
  EXPECT_TRUE(tg::allclose(rm, tensor_of({0.3, -0.2, 0.1}, {3})));
  EXPECT_TRUE(tg::allclose(rv, tensor_of({0.5, 1.5, 2.0}, {3})));
}

TEST(BatchNormOp, GradcheckAccumulatesIntoAnInputUsedTwice) {
  // x feeds batch_norm twice: the second backward must add to, not overwrite, x's gradient.
  auto r = tg::gradcheck(
      [](tg::Tape<double>&, const Inputs& v) {
        return add(tg::batch_norm(v[0], v[1], v[2], TD(), TD(), true),
                   tg::batch_norm(v[0], v[1], VD{}, TD(), TD(), true));
      },
      {sample({3, 2, 2, 2}, 16), sample({2}, 17, 0.5, 1.5), sample({2}, 18)});
  EXPECT_TRUE(r) << r;
}

// ---------------------------------------------------------------- batch_norm: values

TEST(BatchNormOp, TrainValuesAndRunningStatsByHand) {
  // One channel, values 1, 2, 3, 6: mean 3, biased var (4+1+0+9)/4 = 3.5, unbiased 14/3.
  tg::Tape<double> tape;
  TD rm = TD::zeros({1}), rv = TD::ones({1}), nbt = TD::zeros({});
  auto x = tape.constant(tensor_of({1, 2, 3, 6}, {4, 1}));
  auto y = tg::batch_norm(x, VD{}, VD{}, rm, rv, true, 0.1, 0.0, nbt);
  const double sd = std::sqrt(3.5);
  EXPECT_NEAR(y.value()[0], -2 / sd, 1e-12);
  EXPECT_NEAR(y.value()[1], -1 / sd, 1e-12);
  EXPECT_NEAR(y.value()[2], 0.0, 1e-12);
  EXPECT_NEAR(y.value()[3], 3 / sd, 1e-12);
  EXPECT_NEAR(rm[0], 0.9 * 0 + 0.1 * 3, 1e-12);
  EXPECT_NEAR(rv[0], 0.9 * 1 + 0.1 * 14.0 / 3.0, 1e-12);
  EXPECT_EQ(nbt.item(), 1.0);
}

TEST(BatchNormOp, TrainValues4DAgainstFormula) {
  const int64_t N = 3, C = 2, S = 6;
  TD xt = sample({N, C, 2, 3}, 20);
  std::vector<double> g = {1.5, -0.5}, b = {0.25, 2.0};
  tg::Tape<double> tape;
  auto y = tg::batch_norm(tape.constant(xt), tape.constant(tensor_of(g, {2})),
                          tape.constant(tensor_of(b, {2})), TD(), TD(), true, 0.1, 1e-3);
  auto ref = bn_reference(xt, N, C, S, g, b, 1e-3, true);
  for (int64_t i = 0; i < xt.numel(); ++i) EXPECT_NEAR(y.value()[i], ref.y[i], 1e-12) << i;
}

TEST(BatchNormOp, EvalUsesGivenRunningStats) {
  // y = γ(x − rm)/√(rv + eps) + β, written out for x = [[1, 4], [3, 0]].
  tg::Tape<double> tape;
  TD rm = tensor_of({1.0, 2.0}, {2}), rv = tensor_of({4.0, 0.25}, {2});
  auto y = tg::batch_norm(tape.constant(tensor_of({1, 4, 3, 0}, {2, 2})),
                          tape.constant(tensor_of({2.0, 3.0}, {2})),
                          tape.constant(tensor_of({0.5, -1.0}, {2})), rm, rv, false, 0.1, 0.0);
  EXPECT_NEAR(y.value()[0], 2 * (1 - 1) / 2.0 + 0.5, 1e-12);
  EXPECT_NEAR(y.value()[1], 3 * (4 - 2) / 0.5 - 1.0, 1e-12);
  EXPECT_NEAR(y.value()[2], 2 * (3 - 1) / 2.0 + 0.5, 1e-12);
  EXPECT_NEAR(y.value()[3], 3 * (0 - 2) / 0.5 - 1.0, 1e-12);
}

TEST(BatchNormOp, CumulativeAverageWhenMomentumIsNone) {
  // momentum = nullopt: m = 1/num_batches_tracked, so after k batches the running mean is the
  // plain average of the k batch means (starting from 0 with weight 1 − 1/1 = 0).
  TD rm = TD::zeros({1}), rv = TD::ones({1}), nbt = TD::zeros({});
  const std::vector<std::vector<double>> batches = {{1, 3}, {2, 6}, {-4, 0}};
  double mean_sum = 0, var_sum = 0;
  for (const auto& v : batches) {
    tg::Tape<double> tape;
    tg::batch_norm(tape.constant(tensor_of(v, {2, 1})), VD{}, VD{}, rm, rv, true, std::nullopt,
                   1e-5, nbt);
    mean_sum += (v[0] + v[1]) / 2;
    var_sum += std::pow(v[0] - v[1], 2) / 2;  // unbiased variance of two values
  }
  EXPECT_EQ(nbt.item(), 3.0);
  EXPECT_NEAR(rm[0], mean_sum / 3, 1e-12);
  EXPECT_NEAR(rv[0], var_sum / 3, 1e-12);
}

TEST(BatchNormOp, BackwardMatchesFormulaOnLargeParallelInput) {
  // Above parallel_threshold (both layouts), with 2 threads: forward against the reference and
  // backward against SEMANTICS' closed form dx = (1/n)·rstd·(n·dx̂ − Σdx̂ − x̂·Σ(dx̂·x̂)).
  tg::set_num_threads(2);
  for (const auto& dims : {std::vector<int64_t>{4, 8, 32, 33}, std::vector<int64_t>{600, 70}}) {
    const tg::Shape shape{std::span<const int64_t>(dims)};
    const int64_t N = dims[0], C = dims[1], S = shape.numel() / (N * C);
    ASSERT_GT(shape.numel(), tg::parallel_threshold);
    TD xt = sample(shape, 30), dyt = sample(shape, 31);
    std::vector<double> g(C), b(C);
    for (int64_t c = 0; c < C; ++c) g[c] = 0.5 + 0.1 * c, b[c] = 0.2 * c - 0.3;
    tg::Tape<double> tape;
    tg::Parameter<double> gp(tensor_of(g, {C})), bp(tensor_of(b, {C}));
    auto x = tape.input(xt);
    auto y = tg::batch_norm(x, tape.param(gp), tape.param(bp), TD(), TD(), true);
    tape.backward(y, dyt);
    auto ref = bn_reference(xt, N, C, S, g, b, 1e-5, true);
    const double n = double(N * S);
    for (int64_t c = 0; c < C; ++c) {
      const double rstd = 1 / std::sqrt(ref.var[c] + 1e-5);
      double sdy = 0, sdyxh = 0;
      for (int64_t k = 0; k < N; ++k)
        for (int64_t s = 0; s < S; ++s) {
          const int64_t i = (k * C + c) * S + s;
          sdy += dyt[i];
          sdyxh += dyt[i] * (xt[i] - ref.mean[c]) * rstd;
        }
      EXPECT_NEAR(gp.grad()[c], sdyxh, 1e-9);
      EXPECT_NEAR(bp.grad()[c], sdy, 1e-9);
      for (int64_t k = 0; k < N; ++k)
        for (int64_t s = 0; s < S; ++s) {
          const int64_t i = (k * C + c) * S + s;
          const double xh = (xt[i] - ref.mean[c]) * rstd;
          const double dx = rstd / n * (n * dyt[i] * g[c] - sdy * g[c] - xh * sdyxh * g[c]);
          ASSERT_NEAR(y.value()[i], ref.y[i], 1e-12) << shape << " " << i;
          ASSERT_NEAR(x.grad()[i], dx, 1e-10) << shape << " " << i;
        }
    }
  }
  tg::set_num_threads(1);
}

TEST(BatchNormOp, FloatMatchesDoubleFormula) {
  const int64_t N = 8, C = 4, S = 9;
  TD xt = sample({N, C, 3, 3}, 40);
  tg::Tape<float> tape;
  tg::Tensor<float> rm = tg::Tensor<float>::zeros({C}), rv = tg::Tensor<float>::ones({C});
  auto y = tg::batch_norm(tape.constant(xt.to<float>()), tg::Var<float>{}, tg::Var<float>{}, rm, rv,
                          true);
  auto ref = bn_reference(xt, N, C, S, {}, {}, 1e-5, true);
  for (int64_t i = 0; i < xt.numel(); ++i) EXPECT_NEAR(y.value()[i], ref.y[i], 1e-5) << i;
  for (int64_t c = 0; c < C; ++c) {
    EXPECT_NEAR(rm[c], 0.1 * ref.mean[c], 1e-6);
    EXPECT_NEAR(rv[c], 0.9 + 0.1 * ref.var[c] * 72.0 / 71.0, 1e-6);
  }
}

TEST(BatchNormOp, ImagesGiveTheSameBitsAtOneAndTwoThreadsAndExactStatisticsFarFromZero) {
  // float [16, 8, 32, 33], values 1000 + N(0, 1) per channel c scaled by (c + 1): large enough
  // to run on both threads, where the slices are cut in memory order, while one thread goes
  // channel by channel. Same bits either way (values, all gradients, running statistics); the
  // statistics, from per-slice sums combined per channel, against the double formula: a
  // one-pass Σx² in float would lose the variance here entirely (mean² / var = 1e6 / (c+1)²).
  const int64_t N = 16, C = 8, S = 32 * 33;
  const tg::Shape shape{N, C, 32, 33};
  const TD noise = sample(shape, 50), dyt = sample(shape, 51);
  TD xd(shape);
  for (int64_t i = 0; i < xd.numel(); ++i) xd[i] = 1000.0 + noise[i] * double((i / S) % C + 1);
  const tg::Tensor<float> xf = xd.to<float>();
  struct Run {
    tg::Tensor<float> y, dx, dg, db, rm, rv;
  };
  auto run = [&](int threads, bool relu) {
    tg::set_num_threads(threads);
    Run r{{}, {}, {}, {}, tg::Tensor<float>::zeros({C}), tg::Tensor<float>::ones({C})};
    tg::Parameter<float> g(tg::Tensor<float>::full({C}, 1.5f)),
        b(tg::Tensor<float>::full({C}, 0.25f));
    tg::Tape<float> tape;
    auto x = tape.input(xf);
    auto y = (relu ? tg::batch_norm_relu<float>
                   : tg::batch_norm<float>)(x, tape.param(g), tape.param(b), r.rm, r.rv, true, 1.0,
                                            1e-5, tg::Tensor<float>(), nullptr);
    tape.backward(y, dyt.to<float>());
    r.y = y.value().clone();
    r.dx = x.grad().clone();
    r.dg = g.grad().clone();
    r.db = b.grad().clone();
    tg::set_num_threads(1);
    return r;
  };
  auto same_bits = [](const tg::Tensor<float>& a, const tg::Tensor<float>& b, const char* what) {
    ASSERT_EQ(a.numel(), b.numel()) << what;
    for (int64_t i = 0; i < a.numel(); ++i) ASSERT_EQ(a[i], b[i]) << what << " " << i;
  };
  for (bool relu : {false, true}) {
    const Run one = run(1, relu), two = run(2, relu);
    same_bits(one.y, two.y, "y");
    same_bits(one.dx, two.dx, "dx");
    same_bits(one.dg, two.dg, "dgamma");
    same_bits(one.db, two.db, "dbeta");
    same_bits(one.rm, two.rm, "running_mean");
    same_bits(one.rv, two.rv, "running_var");
  }
  const Run r = run(2, false);
  const auto ref = bn_reference(xf.to<double>(), N, C, S, {}, {}, 1e-5, true);
  const double n = double(N * S);
  for (int64_t c = 0; c < C; ++c) {
    EXPECT_NEAR(r.rm[c], ref.mean[c], 1e-4) << c;  // momentum 1: the batch's own statistics
    EXPECT_NEAR(r.rv[c], ref.var[c] * n / (n - 1), 1e-5 * ref.var[c]) << c;
  }
}

TEST(BatchNormOp, SteadyStateReusesBuffers) {
  tg::Tape<float> tape;
  tg::Parameter<float> g(tg::Tensor<float>::ones({4})), b(tg::Tensor<float>::zeros({4}));
  tg::Tensor<float> xt = tg::Tensor<float>::ones({3, 4, 2, 2});
  xt[5] = 2.0f;
  const float* saved = nullptr;
  for (int step = 0; step < 3; ++step) {
    tape.clear();
    auto y = tg::batch_norm(tape.input(xt), tape.param(g), tape.param(b), tg::Tensor<float>(),
                            tg::Tensor<float>(), true);
    tape.backward(y, tg::Tensor<float>::ones(y.shape()));
    if (step == 0)
      saved = y.node().saved[0].data();
    else
      EXPECT_EQ(saved, y.node().saved[0].data());
  }
}

// ---------------------------------------------------------------- batch_norm_relu

TEST(BatchNormReluOp, GradcheckTrainAndEval) {
  TD rm = tensor_of({0.3, -0.2, 0.1}, {3}), rv = tensor_of({0.5, 1.5, 2.0}, {3});
  for (const tg::Shape s : {tg::Shape{5, 3}, tg::Shape{2, 3, 2, 3}}) {
    for (bool training : {true, false}) {
      auto r = tg::gradcheck(
          [&](tg::Tape<double>&, const Inputs& v) {
            return tg::batch_norm_relu(v[0], v[1], v[2], rm, rv, training);
          },
          {sample(s, 50), sample({3}, 51, 0.5, 1.5), sample({3}, 52)});
      EXPECT_TRUE(r) << s << " training " << training << ": " << r;
      auto r2 = tg::gradcheck(
          [&](tg::Tape<double>&, const Inputs& v) {
            return tg::batch_norm_relu(v[0], VD{}, VD{}, TD(), TD(), true);
          },
          {sample(s, 53)});
      EXPECT_TRUE(r2) << s << " no affine: " << r2;
    }
  }
}

TEST(BatchNormReluOp, GradcheckAccumulatesIntoAnInputUsedTwice) {
  auto r = tg::gradcheck(
      [](tg::Tape<double>&, const Inputs& v) {
        return add(tg::batch_norm_relu(v[0], v[1], v[2], TD(), TD(), true),
                   tg::batch_norm(v[0], v[1], VD{}, TD(), TD(), true));
      },
      {sample({3, 2, 2, 2}, 54), sample({2}, 55, 0.5, 1.5), sample({2}, 56)});
  EXPECT_TRUE(r) << r;
}

// The fused op against relu(batch_norm(x)) in float, below and above parallel_threshold, both
// layouts, training and eval, 1 and 2 threads: the same values and running statistics bit for
// bit, the same gradients up to the order of the sums.
TEST(BatchNormReluOp, MatchesTheUnfusedOps) {
  using TF = tg::Tensor<float>;
  for (int threads : {1, 2}) {
    tg::set_num_threads(threads);
    for (const tg::Shape s :
         {tg::Shape{4, 3, 5, 6}, tg::Shape{16, 8, 20, 20}, tg::Shape{7, 5}, tg::Shape{600, 70}}) {
      const int64_t C = s[1];
      for (bool training : {true, false}) {
        const TF xt = sample(s, 60).to<float>(), dyt = sample(s, 61).to<float>();
        const TF g0 = sample({C}, 62, 0.5, 1.5).to<float>(), b0 = sample({C}, 63).to<float>();
        struct Run {
          TF y, dx, dg, db, rm, rv, nbt;
        };
        auto run = [&](bool fused) {
          Run r{TF(),
                TF(),
                TF(),
                TF(),
                sample({C}, 64).to<float>(),
                sample({C}, 65, 0.5, 2).to<float>(),
                TF::zeros({})};
          tg::Parameter<float> g(g0.clone()), b(b0.clone());
          tg::Tape<float> tape;
          auto x = tape.input(xt);
          auto y = fused ? tg::batch_norm_relu(x, tape.param(g), tape.param(b), r.rm, r.rv,
                                               training, 0.1, 1e-5, r.nbt)
                         : tg::relu(tg::batch_norm(x, tape.param(g), tape.param(b), r.rm, r.rv,
                                                   training, 0.1, 1e-5, r.nbt));
          tape.backward(y, dyt);
          r.y = y.value().clone();
          r.dx = x.grad().clone();
          r.dg = g.grad().clone();
          r.db = b.grad().clone();
          return r;
        };
        const Run f = run(true), u = run(false);
        const std::string what =
            s.str() + (training ? " train" : " eval") + " threads " + std::to_string(threads);
        for (int64_t i = 0; i < xt.numel(); ++i) {
          ASSERT_EQ(f.y[i], u.y[i]) << what << " y " << i;
          ASSERT_NEAR(f.dx[i], u.dx[i], 1e-5 * (1 + std::abs(u.dx[i]))) << what << " dx " << i;
        }
        for (int64_t c = 0; c < C; ++c) {
          EXPECT_NEAR(f.dg[c], u.dg[c], 1e-4 * (1 + std::abs(u.dg[c]))) << what << " dgamma";
          EXPECT_NEAR(f.db[c], u.db[c], 1e-4 * (1 + std::abs(u.db[c]))) << what << " dbeta";
          EXPECT_EQ(f.rm[c], u.rm[c]) << what << " running_mean";
          EXPECT_EQ(f.rv[c], u.rv[c]) << what << " running_var";
        }
        EXPECT_EQ(f.nbt.item(), u.nbt.item()) << what;
      }
    }
  }
  tg::set_num_threads(1);
}

TEST(BatchNormReluOp, ErrorsNameTheOp) {
  tg::Tape<double> tape;
  expect_error_containing<tg::ValueError>(
      [&] {
        tg::batch_norm_relu(tape.constant(TD::ones({1, 3})), VD{}, VD{}, TD(), TD(), true);
      },
      {"batch_norm_relu", "Expected more than 1 value per channel when training"});
}

// ---------------------------------------------------------------- batch_norm: errors

TEST(BatchNormOp, OneValuePerChannelInTrainingIsAnError) {
  tg::Tape<double> tape;
  auto x = tape.constant(TD::ones({1, 3}));
  expect_error_containing<tg::ValueError>(
      [&] { tg::batch_norm(x, VD{}, VD{}, TD(), TD(), true); },
      {"batch_norm", "Expected more than 1 value per channel when training", "[1,3]"});
  auto x4 = tape.constant(TD::ones({1, 3, 1, 1}));
  expect_error_containing<tg::ValueError>([&] { tg::batch_norm(x4, VD{}, VD{}, TD(), TD(), true); },
                                          {"batch_norm", "[1,3,1,1]"});
  // eval with one sample is fine
  auto y = tg::batch_norm(x, VD{}, VD{}, TD::zeros({3}), TD::ones({3}), false, 0.1, 0.0);
  EXPECT_DOUBLE_EQ(y.value()[1], 1.0);
}

TEST(BatchNormOp, ImagesWithoutPixelsGiveEmptyOutputAndZeroParameterGradients) {
  // [2, 3, 0, 0]: no values, as an empty batch (PyTorch: empty output, running statistics
  // unchanged); backward reads no row of x and adds nothing to gamma's and beta's gradients.
  for (const bool training : {true, false}) {
    tg::Tape<double> tape;
    TD gamma = TD::full({3}, 2.0), beta = TD::full({3}, 0.5);
    TD rm = TD::full({3}, 0.25), rv = TD::full({3}, 4.0);
    auto x = tape.input(TD::zeros({2, 3, 0, 0}));
    auto g = tape.input(gamma), b = tape.input(beta);
    auto y = tg::batch_norm(x, g, b, rm, rv, training);
    EXPECT_EQ(y.shape(), (tg::Shape{2, 3, 0, 0}));
    tape.backward(y, TD::ones(y.shape()));
    EXPECT_EQ(x.grad().shape(), (tg::Shape{2, 3, 0, 0}));
    EXPECT_TRUE(tg::allclose(g.grad(), TD::zeros({3}), 0, 0)) << training;
    EXPECT_TRUE(tg::allclose(b.grad(), TD::zeros({3}), 0, 0)) << training;
    EXPECT_TRUE(tg::allclose(rm, TD::full({3}, 0.25), 0, 0)) << training;
    EXPECT_TRUE(tg::allclose(rv, TD::full({3}, 4.0), 0, 0)) << training;
  }
}

TEST(BatchNormOp, ShapeAndArgumentErrors) {
  tg::Tape<double> tape;
  auto x = tape.constant(TD::ones({4, 3, 2, 2}));
  expect_error_containing<tg::ShapeError>(
      [&] { tg::batch_norm(tape.constant(TD::ones({4})), VD{}, VD{}, TD(), TD(), true); },
      {"batch_norm", "[4]"});
  expect_error_containing<tg::ShapeError>(
      [&] { tg::batch_norm(x, tape.constant(TD::ones({4})), VD{}, TD(), TD(), true); },
      {"batch_norm", "[4,3,2,2]", "weight", "[4]"});
  expect_error_containing<tg::ShapeError>(
      [&] {
        tg::batch_norm(x, VD{}, tape.constant(TD::ones({3, 1})), TD(), TD(), true);
      },
      {"batch_norm", "[4,3,2,2]", "bias", "[3,1]"});
  expect_error_containing<tg::ShapeError>(
      [&] { tg::batch_norm(x, VD{}, VD{}, TD::zeros({2}), TD::ones({2}), true); },
      {"batch_norm", "[4,3,2,2]", "running_mean", "[2]"});
  expect_error_containing<tg::ValueError>([&] { tg::batch_norm(x, VD{}, VD{}, TD(), TD(), false); },
                                          {"batch_norm", "[4,3,2,2]", "running_mean"});
  expect_error_containing<tg::ValueError>(
      [&] { tg::batch_norm(x, VD{}, VD{}, TD::zeros({3}), TD::ones({3}), true, std::nullopt); },
      {"batch_norm", "[4,3,2,2]", "num_batches_tracked"});
  // NaN, infinite or negative eps and a momentum outside [0, 1] (the layers check them too)
  const double nan = std::nan(""), inf = INFINITY;
  for (const double eps : {nan, inf, -1.0})
    expect_error_containing<tg::ValueError>(
        [&] { tg::batch_norm(x, VD{}, VD{}, TD::zeros({3}), TD::ones({3}), true, 0.1, eps); },
        {"batch_norm", "eps"});
  for (const double momentum : {nan, inf, -0.1, 1.5}) {
    TD rm = TD::zeros({3}), rv = TD::ones({3});
    expect_error_containing<tg::ValueError>(
        [&] { tg::batch_norm_relu(x, VD{}, VD{}, rm, rv, true, momentum); },
        {"batch_norm_relu", "momentum"});
    EXPECT_TRUE(tg::allclose(rm, TD::zeros({3}), 0, 0));  // nothing updated
  }
  for (const double eps : {nan, inf})
    expect_error_containing<tg::ValueError>(
        [&] {
          tg::layer_norm(x, {2, 2}, VD{}, VD{}, eps);
        },
        {"layer_norm", "eps"});
  // The boundaries are valid: momentum 0 keeps the running statistics, 1 takes the batch's.
  TD rm = TD::full({3}, 7.0), rv = TD::ones({3});
  tg::batch_norm(x, VD{}, VD{}, rm, rv, true, 0.0, 0.0);
  EXPECT_TRUE(tg::allclose(rm, TD::full({3}, 7.0), 0, 0));
  tg::batch_norm(x, VD{}, VD{}, rm, rv, true, 1.0, 0.0);
  EXPECT_TRUE(tg::allclose(rm, TD::ones({3}), 0, 0));  // x is all ones
}

// ---------------------------------------------------------------- layer_norm

TEST(LayerNormOp, GradcheckAffineAndPlain) {
  auto r =
      tg::gradcheck([](tg::Tape<double>&,
                       const Inputs& v) { return tg::layer_norm(v[0], tg::Shape{5}, v[1], v[2]); },
                    {sample({3, 5}, 50), sample({5}, 51, 0.5, 1.5), sample({5}, 52)});
  EXPECT_TRUE(r) << r;
  auto r2 = tg::gradcheck(
      [](tg::Tape<double>&, const Inputs& v) {
        return tg::layer_norm(v[0], tg::Shape{2, 3});
      },
      {sample({2, 2, 2, 3}, 53)});
  EXPECT_TRUE(r2) << r2;
  auto r3 = tg::gradcheck(
      [](tg::Tape<double>&, const Inputs& v) {
        return tg::layer_norm(v[0], tg::Shape{2, 3}, v[1], VD{}, 1e-3);
      },
      {sample({3, 2, 3}, 54), sample({2, 3}, 55, 0.5, 1.5)});
  EXPECT_TRUE(r3) << r3;
  auto r4 = tg::gradcheck(
      [](tg::Tape<double>&, const Inputs& v) {
        return add(tg::layer_norm(v[0], tg::Shape{4}, VD{}, v[1]), tg::layer_norm(v[0], {4}));
      },
      {sample({3, 4}, 56), sample({4}, 57)});
  EXPECT_TRUE(r4) << r4;
}

TEST(LayerNormOp, ValuesAgainstFormula) {
  // Row [1, 2, 3, 6]: mean 3, biased var 3.5; row [0, 0, 0, 4]: mean 1, var 3.
  tg::Tape<double> tape;
  std::vector<double> g = {1, 2, 0.5, -1}, b = {0, 1, -1, 0.5};
  auto y = tg::layer_norm(tape.constant(tensor_of({1, 2, 3, 6, 0, 0, 0, 4}, {2, 4})), tg::Shape{4},
                          tape.constant(tensor_of(g, {4})), tape.constant(tensor_of(b, {4})), 0.0);
  const double x[2][4] = {{1, 2, 3, 6}, {0, 0, 0, 4}};
  const double mu[2] = {3, 1}, var[2] = {3.5, 3};
  for (int r = 0; r < 2; ++r)
    for (int j = 0; j < 4; ++j)
      EXPECT_NEAR(y.value()[r * 4 + j], g[j] * (x[r][j] - mu[r]) / std::sqrt(var[r]) + b[j], 1e-12);
}

TEST(LayerNormOp, BackwardMatchesFormulaOnLargeParallelInput) {
  tg::set_num_threads(2);
  const int64_t R = 130, D = 256;
  TD xt = sample({R, D}, 60), dyt = sample({R, D}, 61), gt = sample({D}, 62, 0.5, 1.5),
     bt = sample({D}, 63);
  tg::Parameter<double> gp(gt), bp(bt);
  tg::Tape<double> tape;
  auto x = tape.input(xt);
  auto y = tg::layer_norm(x, tg::Shape{D}, tape.param(gp), tape.param(bp));
  tape.backward(y, dyt);
  std::vector<double> dg(D, 0), db(D, 0);
  for (int64_t r = 0; r < R; ++r) {
    double mu = 0, var = 0;
    for (int64_t j = 0; j < D; ++j) mu += xt[r * D + j];
    mu /= D;
    for (int64_t j = 0; j < D; ++j) var += std::pow(xt[r * D + j] - mu, 2);
    var /= D;
    const double rstd = 1 / std::sqrt(var + 1e-5);
    double s1 = 0, s2 = 0;  // Σdx̂, Σdx̂·x̂ with dx̂ = dy·γ
    for (int64_t j = 0; j < D; ++j) {
      const double xh = (xt[r * D + j] - mu) * rstd, dxh = dyt[r * D + j] * gt[j];
      ASSERT_NEAR(y.value()[r * D + j], gt[j] * xh + bt[j], 1e-12);
      s1 += dxh;
      s2 += dxh * xh;
      dg[j] += dyt[r * D + j] * xh;
      db[j] += dyt[r * D + j];
    }
    for (int64_t j = 0; j < D; ++j) {
      const double xh = (xt[r * D + j] - mu) * rstd, dxh = dyt[r * D + j] * gt[j];
      ASSERT_NEAR(x.grad()[r * D + j], rstd / D * (D * dxh - s1 - xh * s2), 1e-10);
    }
  }
  for (int64_t j = 0; j < D; ++j) {
    EXPECT_NEAR(gp.grad()[j], dg[j], 1e-9);
    EXPECT_NEAR(bp.grad()[j], db[j], 1e-9);
  }
  tg::set_num_threads(1);
}

TEST(LayerNormOp, Errors) {
  tg::Tape<double> tape;
  auto x = tape.constant(TD::ones({20, 5, 9}));
  expect_error_containing<tg::ShapeError>([&] { tg::layer_norm(x, tg::Shape{10}); },
                                          {"layer_norm", "[10]", "[*,10]", "[20,5,9]"});
  expect_error_containing<tg::ShapeError>(
      [&] {
        tg::layer_norm(x, tg::Shape{4, 9});
      },
      {"layer_norm", "[*,4,9]", "[20,5,9]"});
  expect_error_containing<tg::ShapeError>(
      [&] { tg::layer_norm(x, tg::Shape{9}, tape.constant(TD::ones({5}))); },
      {"layer_norm", "weight", "[5]", "[9]"});
  expect_error_containing<tg::ShapeError>(
      [&] {
        tg::layer_norm(x, tg::Shape{5, 9}, VD{}, tape.constant(TD::ones({9})));
      },
      {"layer_norm", "bias", "[9]", "[5,9]"});
}

}  // namespace

// ---------------------------------------------------------------- batch_norm over processes

namespace {

// Stands in for k processes holding the same batch: every sum is k times this one's.
struct Replicas : tg::BatchStatsReducer {
  explicit Replicas(int k) : k(k) {}
  void sum(double* v, int64_t n) const override {
    ++calls;
    for (int64_t i = 0; i < n; ++i) v[i] *= k;
  }
  int k;
  mutable int calls = 0;
};

// k copies of x stacked along dim 0.
TD stack_copies(const TD& x, int k) {
  tg::Shape s = x.shape();
  s[0] *= k;
  TD out(s);
  for (int r = 0; r < k; ++r) std::copy(x.data(), x.data() + x.numel(), out.data() + r * x.numel());
  return out;
}

// With a reducer, batch_norm on x is batch_norm on the union of the processes' batches (here
// k = 3 copies of x): the output and dx are the whole batch's first rows, dγ and dβ this
// process's share (a third), the running statistics use the count over all of them.
void check_reduced(const tg::Shape& s) {
  const int k = 3;
  const int64_t C = s[1];
  const TD x = sample(s, 11, -1, 3), dy = sample(s, 12);
  const TD gamma = sample({C}, 13, 0.5, 1.5), beta = sample({C}, 14);
  const Replicas reducer(k);
  auto run = [&](const TD& input, const TD& seed, const tg::BatchStatsReducer* r, TD rm, TD rv) {
    tg::Tape<double> tape;
    auto xi = tape.input(input), g = tape.input(gamma), b = tape.input(beta);
    auto y = tg::batch_norm(xi, g, b, rm, rv, true, 0.1, 1e-5, TD(), r);
    tape.backward(y, seed);
    return std::vector<TD>{
        y.value().clone(), xi.grad().clone(), g.grad().clone(), b.grad().clone(), rm, rv};
  };
  const auto got = run(x, dy, &reducer, TD::zeros({C}), TD::ones({C}));
  EXPECT_EQ(reducer.calls, 3);  // Σx and count, Σ(x − μ)², the backward's two sums
  const auto all =
      run(stack_copies(x, k), stack_copies(dy, k), nullptr, TD::zeros({C}), TD::ones({C}));
  auto first_rows = [&](const TD& t) {
    TD out(s);
    std::copy(t.data(), t.data() + out.numel(), out.data());
    return out;
  };
  EXPECT_TRUE(tg::allclose(got[0], first_rows(all[0]), 0, 1e-12));
  EXPECT_TRUE(tg::allclose(got[1], first_rows(all[1]), 0, 1e-12));
  for (int64_t c = 0; c < C; ++c) {
    EXPECT_NEAR(got[2][c] * k, all[2][c], 1e-11);
    EXPECT_NEAR(got[3][c] * k, all[3][c], 1e-11);
    EXPECT_NEAR(got[4][c], all[4][c], 1e-12);  // running mean
    EXPECT_NEAR(got[5][c], all[5][c], 1e-12);  // running var, unbiased with k·n values
  }
  // In eval mode the reducer is not used.
  Replicas unused(k);
  tg::Tape<double> tape;
  tg::batch_norm(tape.input(x), VD{}, VD{}, TD::zeros({C}), TD::ones({C}), false, 0.1, 1e-5, TD(),
                 &unused);
  EXPECT_EQ(unused.calls, 0);
}

TEST(BatchNormOp, ReducedStatisticsImages) { check_reduced({4, 3, 2, 5}); }
TEST(BatchNormOp, ReducedStatisticsVectors) { check_reduced({5, 70}); }

// One value per channel here, but three over the processes: allowed; one over all: refused.
TEST(BatchNormOp, ReducedStatisticsCountOverAllProcesses) {
  tg::Tape<double> tape;
  const Replicas three(3), one(1);
  EXPECT_NO_THROW(tg::batch_norm(tape.input(sample({1, 2}, 1)), VD{}, VD{}, TD(), TD(), true, 0.1,
                                 1e-5, TD(), &three));
  expect_error_containing<tg::ValueError>(
      [&] {
        tg::batch_norm(tape.input(sample({1, 2}, 1)), VD{}, VD{}, TD(), TD(), true, 0.1, 1e-5, TD(),
                       &one);
      },
      {"Expected more than 1 value per channel when training", "over all processes"});
}

}  // namespace
