// matmul, transpose, linear: values by hand and against naive loops, gradients by hand and by
// gradcheck (double, 1e-6), errors by type and message.
#include <gtest/gtest.h>

#include <array>
#include <cmath>
#include <limits>
#include <string>
#include <type_traits>
#include <vector>

#include "tapegrad/diag/gradcheck.hpp"
#include "tapegrad/gemm.hpp"
#include "tapegrad/ops/elementwise.hpp"
#include "tapegrad/ops/linalg.hpp"
#include "test_util.hpp"

namespace tg = tapegrad;
using TD = tg::Tensor<double>;
using VD = tg::Var<double>;
using Vars = std::vector<VD>;
using tapegrad::testing::expect_error_exact;
using tapegrad::testing::expect_gradcheck;
using tapegrad::testing::expect_values;
using tapegrad::testing::randn;

namespace {

// Naive C = A B for row-major A [m,k], B [k,n].
std::vector<double> naive_matmul(const TD& a, const TD& b, int64_t m, int64_t k, int64_t n) {
  std::vector<double> c(static_cast<size_t>(m * n), 0.0);
  for (int64_t i = 0; i < m; ++i)
    for (int64_t j = 0; j < n; ++j)
      for (int64_t p = 0; p < k; ++p)
        c[static_cast<size_t>(i * n + j)] += a[i * k + p] * b[p * n + j];
  return c;
}

TEST(Matmul, ValuesAndGradientsByHand) {
  tg::Tape<double> tape;
  auto a = tape.input(TD::from({{1.0, 2.0}, {3.0, 4.0}}));
  auto b = tape.input(TD::from({{5.0, 6.0, 1.0}, {7.0, 8.0, -1.0}}));
  auto y = tg::matmul(a, b);
  expect_values(y.value(), {19, 22, -1, 43, 50, -1}, {2, 3});
  tape.backward(y, TD::from({{1.0, 0.0, 2.0}, {0.0, 1.0, 0.0}}));
  // da = g b^T: row 0 = [5 + 2, 7 - 2], row 1 = [6, 8]
  expect_values(a.grad(), {7, 5, 6, 8}, {2, 2});
  // db = a^T g: [[1, 3, 2], [2, 4, 4]]
  expect_values(b.grad(), {1, 3, 2, 2, 4, 4}, {2, 3});
}

TEST(Matmul, BatchedLeftOperandFoldsIntoRows) {
  tg::Tape<double> tape;
  const TD av = randn({2, 3, 4}, 1), bv = randn({4, 5}, 2);
  auto y = tg::matmul(tape.input(av), tape.input(bv));
  EXPECT_EQ(y.shape(), (tg::Shape{2, 3, 5}));
  expect_values(y.value(), naive_matmul(av, bv, 6, 4, 5), {2, 3, 5});
}

TEST(Matmul, LargeProductMatchesNaiveLoops) {  // above Eigen's small-product threshold
  tg::Tape<double> tape;
  const TD av = randn({70, 90}, 3), bv = randn({90, 40}, 4);
  auto y = tg::matmul(tape.input(av), tape.input(bv));
  expect_values(y.value(), naive_matmul(av, bv, 70, 90, 40), {70, 40}, 1e-10);
}

// At 2 threads a large product is cut among them: by columns of the result when it is wider
// than tall (each thread packs half of the right operand), else by rows. Both cuts, with edges
// off the 16-element blocks, and the gradients (products with a transposed operand, the second
// one accumulated into the first), against naive loops.
TEST(Matmul, SplitAmongThreadsByRowsOrColumnsMatchesNaiveLoops) {
  tg::set_num_threads(2);
  for (const auto& [m, k, n] : {std::array<int64_t, 3>{40, 300, 333},     // columns
                                std::array<int64_t, 3>{333, 300, 40}}) {  // rows
    tg::Tape<double> tape;
    const TD av = randn({m, k}, 5), bv = randn({k, n}, 6), cv = randn({k, n}, 7);
    auto a = tape.input(av);
    auto y = tg::matmul(a, tape.input(bv));
    expect_values(y.value(), naive_matmul(av, bv, m, k, n), {m, n}, 1e-10);
    const TD g = randn({m, n}, 8);
    tape.backward(y + tg::matmul(a, tape.input(cv)), g);
    // da = g (b + c)^T, the two products' shares added up
    TD bc_t = TD::zeros({n, k});
    for (int64_t i = 0; i < k; ++i)
      for (int64_t j = 0; j < n; ++j) bc_t[j * k + i] = bv[i * n + j] + cv[i * n + j];
    expect_values(a.grad(), naive_matmul(g, bc_t, m, n, k), {m, k}, 1e-9);
  }
  tg::set_num_threads(1);
}

// detail::gemm on one thread, where the products of the MLPs run on tapegrad's own packed
// kernel (gemm_kernel.hpp): each operand row-major or transposed, assigned or accumulated into a
// block of a wider matrix (so ldc > n and the columns beyond it must stay untouched), in float
// and double, with row, column and reduction counts off the kernel's blocks (k = 520 takes
// three passes of 256), against naive loops. Shapes below the kernel's minimum (Eigen's path)
// and k = 0 are in the list too.
template <class T>
void expect_gemm_matches_naive_loops() {
  using Mat = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  const T tol = std::is_same_v<T, float> ? T(2e-5) : T(1e-12);
  for (const auto& [m, n, k] : {std::array<int64_t, 3>{16, 48, 1}, {17, 50, 3}, {40, 97, 70},
                                std::array<int64_t, 3>{129, 49, 520}, {64, 64, 0}, {3, 80, 5},
                                std::array<int64_t, 3>{50, 7, 9}}) {
    const TD ad = randn({m, k}, 11), bd = randn({k, n}, 12), cd = randn({m, n + 5}, 13);
    const Mat a = ad.matrix(m, k).template cast<T>(), b = bd.matrix(k, n).template cast<T>();
    const Mat at = a.transpose(), bt = b.transpose(), c0 = cd.matrix(m, n + 5).template cast<T>();
    for (int layout = 0; layout < 4; ++layout)
      for (const bool accumulate : {false, true}) {
        Mat c = c0;
        auto dst = c.leftCols(n);
        if (layout == 0) tg::detail::gemm(dst, a, b, accumulate);
        if (layout == 1) tg::detail::gemm(dst, at.transpose(), b, accumulate);
        if (layout == 2) tg::detail::gemm(dst, a, bt.transpose(), accumulate);
        if (layout == 3) tg::detail::gemm(dst, at.transpose(), bt.transpose(), accumulate);
        for (int64_t i = 0; i < m; ++i) {
          for (int64_t j = 0; j < n; ++j) {
            double want = accumulate ? double(c0(i, j)) : 0.0;
            for (int64_t p = 0; p < k; ++p) want += double(a(i, p)) * double(b(p, j));
            ASSERT_NEAR(c(i, j), want, tol * (1 + std::abs(want)))
                << m << "x" << n << "x" << k << " layout " << layout << " acc " << accumulate
                << " at " << i << "," << j;
          }
          for (int64_t j = n; j < n + 5; ++j) ASSERT_EQ(c(i, j), c0(i, j));
        }
      }
  }
}

TEST(Gemm, OwnKernelMatchesNaiveLoopsForEveryLayoutAndEdge) {
  expect_gemm_matches_naive_loops<float>();
  expect_gemm_matches_naive_loops<double>();
}

// At 2 threads detail::gemm cuts a product into blocks; each block runs the kernel chosen for
// the whole product (a 32-column block of a product 80 wide stays on the packed kernel), so the
// bits are those of one thread.
TEST(Gemm, TwoThreadsGiveOneThreadsBits) {
  using Mat = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  for (const auto& [m, n, k] : {std::array<int64_t, 3>{40, 80, 400},      // columns: 32 + 48
                                std::array<int64_t, 3>{80, 40, 400},      // rows
                                std::array<int64_t, 3>{128, 256, 256}}) {  // the deep MLPs'
    const Mat a = randn({m, k}, 21).matrix(m, k).template cast<float>();
    const Mat b = randn({k, n}, 22).matrix(k, n).template cast<float>();
    Mat one(m, n), two(m, n);
    tg::set_num_threads(1);
    tg::detail::gemm(one, a, b, false);
    tg::set_num_threads(2);
    tg::detail::gemm(two, a, b, false);
    tg::set_num_threads(1);
    EXPECT_TRUE((one.array() == two.array()).all()) << m << "x" << n << "x" << k;
  }
}

// A NaN or infinity in A's row i or B's column j reaches row i or column j of C and nothing
// else (the kernel's zero padding multiplies real values, and its results are dropped).
TEST(Gemm, NonFiniteValuesStayInTheirRowAndColumn) {
  using Mat = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  const int64_t m = 21, n = 53, k = 10;
  Mat a = Mat::Ones(m, k), b = Mat::Ones(k, n), c(m, n);
  a(20, 3) = std::numeric_limits<float>::quiet_NaN();
  b(4, 52) = std::numeric_limits<float>::infinity();
  tg::detail::gemm(c, a, b, false);
  for (int64_t i = 0; i < m; ++i)
    for (int64_t j = 0; j < n; ++j) {
      if (i == 20)
        EXPECT_TRUE(std::isnan(c(i, j))) << i << "," << j;
      else if (j == 52)
        EXPECT_EQ(c(i, j), std::numeric_limits<float>::infinity()) << i << "," << j;
      else
        EXPECT_EQ(c(i, j), float(k)) << i << "," << j;
    }
}

TEST(Matmul, Gradcheck) {
  expect_gradcheck([](tg::Tape<double>&, const Vars& x) { return tg::matmul(x[0], x[1]); },
                   {randn({3, 4}, 5), randn({4, 2}, 6)});
  expect_gradcheck([](tg::Tape<double>&, const Vars& x) { return tg::matmul(x[0], x[1]); },
                   {randn({2, 3, 4}, 7), randn({4, 2}, 8)});
  expect_gradcheck(  // the same input on both sides
      [](tg::Tape<double>&, const Vars& x) { return tg::matmul(x[0], x[0]); }, {randn({3, 3}, 9)});
}

// out[o] = a[o] b[o] for every batch o of the broadcast batch dims, with loops.
TD naive_batched(const TD& a, const TD& b, const tg::Shape& out) {
  const int ra = a.rank(), rb = b.rank(), ro = out.rank();
  const int64_t M = out[ro - 2], N = out[ro - 1], K = a.size(-1);
  TD y = TD::zeros(out);
  const int64_t batches = y.numel() / (M * N);
  for (int64_t o = 0; o < batches; ++o) {
    // Batch index digits of o over out's batch dims, mapped into a and b (size 1: index 0).
    int64_t rem = o, oa = 0, ob = 0, sa = M * K, sb = K * N;
    for (int d = ro - 3; d >= 0; --d) {
      const int64_t i = rem % out[d];
      rem /= out[d];
      const int da = d - (ro - ra), db = d - (ro - rb);
      if (da >= 0) oa += (a.size(da) == 1 ? 0 : i) * sa, sa *= a.size(da);
      if (db >= 0) ob += (b.size(db) == 1 ? 0 : i) * sb, sb *= b.size(db);
    }
    for (int64_t m = 0; m < M; ++m)
      for (int64_t n = 0; n < N; ++n)
        for (int64_t k = 0; k < K; ++k)
          y[o * M * N + m * N + n] += a[oa + m * K + k] * b[ob + k * N + n];
  }
  return y;
}

TEST(Matmul, BatchDimsBroadcastAsTorchMatmul) {
  const std::vector<std::pair<tg::Shape, tg::Shape>> cases = {
      {{2, 3, 4}, {2, 4, 5}},        // bmm
      {{3, 1, 2, 4}, {2, 4, 3}},     // [3,1] x [2] -> [3,2]
      {{2, 4}, {3, 4, 2}},           // a 2-D left operand serves every batch
      {{2, 1, 3, 4}, {1, 5, 4, 2}},  // both broadcast
  };
  const std::vector<tg::Shape> outs = {{2, 3, 5}, {3, 2, 2, 3}, {3, 2, 2}, {2, 5, 3, 2}};
  for (size_t c = 0; c < cases.size(); ++c) {
    const TD a = randn(cases[c].first, 30 + c), b = randn(cases[c].second, 40 + c);
    tg::Tape<double> tape;
    auto y = tg::matmul(tape.constant(a), tape.constant(b));
    EXPECT_EQ(y.shape(), outs[c]) << "case " << c;
    const TD want = naive_batched(a, b, outs[c]);
    for (int64_t i = 0; i < want.numel(); ++i) EXPECT_NEAR(y.value()[i], want[i], 1e-12) << c;
    expect_gradcheck([](tg::Tape<double>&, const Vars& x) { return tg::matmul(x[0], x[1]); },
                     {a, b});
  }
  // The same batched input on both sides.
  expect_gradcheck([](tg::Tape<double>&, const Vars& x) { return tg::matmul(x[0], x[0]); },
                   {randn({2, 3, 3}, 50)});
}

TEST(Matmul, OneDimensionalOperandsAsTorch) {
  tg::Tape<double> tape;
  auto m = tape.constant(TD::from({{1.0, 2.0}, {3.0, 4.0}, {5.0, 6.0}}));  // [3, 2]
  auto u = tape.constant(TD::from({1.0, -1.0}));
  auto w = tape.constant(TD::from({1.0, 0.0, 2.0}));
  expect_values(tg::matmul(m, u).value(), {-1, -1, -1}, {3});  // [3,2] x [2]
  expect_values(tg::matmul(w, m).value(), {11, 14}, {2});      // [3] x [3,2]
  expect_values(tg::matmul(u, u).value(), {2}, {});            // dot product
  auto b = tape.constant(TD::from({{{1.0, 0.0}, {0.0, 1.0}}, {{2.0, 0.0}, {0.0, 2.0}}}));
  expect_values(tg::matmul(u, b).value(), {1, -1, 2, -2}, {2, 2});  // [2] x [2,2,2]
  expect_values(tg::matmul(b, u).value(), {1, -1, 2, -2}, {2, 2});  // [2,2,2] x [2]
  expect_gradcheck([](tg::Tape<double>&, const Vars& x) { return tg::matmul(x[0], x[1]); },
                   {randn({4}, 60), randn({2, 4, 3}, 61)});
  expect_gradcheck([](tg::Tape<double>&, const Vars& x) { return tg::matmul(x[0], x[1]); },
                   {randn({4}, 62), randn({4}, 63)});
}

TEST(Matmul, EmptyBatchesAndSizes) {
  for (const auto& [sa, sb] : std::vector<std::pair<tg::Shape, tg::Shape>>{
           {{0, 3, 4}, {0, 4, 2}}, {{2, 3, 0}, {2, 0, 2}}, {{2, 0, 4}, {4, 5}}}) {
    tg::Tape<double> tape;
    auto a = tape.input(TD::ones(sa)), b = tape.input(TD::ones(sb));
    auto y = tg::matmul(a, b);
    for (int64_t i = 0; i < y.numel(); ++i) EXPECT_EQ(y.value()[i], 0.0);
    tape.backward(y, TD::ones(y.shape()));
    EXPECT_EQ(a.grad().shape(), sa);
    EXPECT_EQ(b.grad().shape(), sb);
  }
}

TEST(Matmul, ErrorsNameShapes) {
  tg::Tape<float> tape;
  auto a = tape.input(tg::Tensor<float>::zeros({32, 784}));
  auto b = tape.input(tg::Tensor<float>::zeros({256, 10}));
  expect_error_exact<tg::ShapeError>(
      [&] { tg::matmul(a, b); }, "matmul: [32,784] x [256,10]: inner sizes differ (784 vs 256)");
  auto v = tape.input(tg::Tensor<float>::zeros({10}));
  expect_error_exact<tg::ShapeError>([&] { tg::matmul(a, v); },
                                     "matmul: [32,784] x [10]: inner sizes differ (784 vs 10)");
  auto s = tape.input(tg::Tensor<float>::scalar(1));
  expect_error_exact<tg::ShapeError>([&] { tg::matmul(s, b); },
                                     "matmul: [] x [256,10]: both operands need at least one dim");
  auto a3 = tape.input(tg::Tensor<float>::zeros({2, 3, 4}));
  auto b3 = tape.input(tg::Tensor<float>::zeros({3, 4, 5}));
  expect_error_exact<tg::ShapeError>(
      [&] { tg::matmul(a3, b3); },
      "matmul: [2,3,4] x [3,4,5]: batch dims cannot be broadcast (2 vs 3)");
}

TEST(Transpose, ValuesGradientAndErrors) {
  tg::Tape<double> tape;
  auto x = tape.input(TD::from({{1.0, 2.0, 3.0}, {4.0, 5.0, 6.0}}));
  auto y = tg::transpose(x);
  expect_values(y.value(), {1, 4, 2, 5, 3, 6}, {3, 2});
  tape.backward(y, TD::from({{1.0, 2.0}, {3.0, 4.0}, {5.0, 6.0}}));
  expect_values(x.grad(), {1, 3, 5, 2, 4, 6}, {2, 3});
  expect_gradcheck([](tg::Tape<double>&, const Vars& v) { return tg::transpose(v[0]); },
                   {randn({3, 5}, 10)});
  auto r3 = tape.input(TD::zeros({2, 2, 2}));
  expect_error_exact<tg::ShapeError>([&] { tg::transpose(r3); },
                                     "transpose: [2,2,2] is not 2-D (3 dims)");
}

TEST(Linear, ValuesAndGradientsByHand) {
  tg::Parameter<double> w(TD::from({{1.0, 0.0, -1.0}, {2.0, 1.0, 0.5}}));  // [out=2, in=3]
  tg::Parameter<double> b(TD::from({0.5, -1.0}));
  tg::Tape<double> tape;
  auto x = tape.input(TD::from({{1.0, 2.0, 3.0}, {-1.0, 0.0, 2.0}}));  // [N=2, in=3]
  auto y = tg::linear(x, tape.param(w), tape.param(b));
  // row 0: [1 - 3 + 0.5, 2 + 2 + 1.5 - 1] ; row 1: [-1 - 2 + 0.5, -2 + 1 - 1]
  expect_values(y.value(), {-1.5, 4.5, -2.5, -2.0}, {2, 2});
  const TD g = TD::from({{1.0, 2.0}, {3.0, -1.0}});
  tape.backward(y, g);
  // dx = g w: row 0 = [1 + 4, 0 + 2, -1 + 1], row 1 = [3 - 2, 0 - 1, -3 - 0.5]
  expect_values(x.grad(), {5, 2, 0, 1, -1, -3.5}, {2, 3});
  // dw = g^T x: row 0 = 1*[1,2,3] + 3*[-1,0,2], row 1 = 2*[1,2,3] - 1*[-1,0,2]
  expect_values(w.grad(), {-2, 2, 9, 3, 4, 4}, {2, 3});
  expect_values(b.grad(), {4, 1}, {2});  // column sums of g

  // a second pass accumulates into the parameters' gradients
  tape.clear();
  auto y2 = tg::linear(tape.constant(TD::from({{1.0, 2.0, 3.0}, {-1.0, 0.0, 2.0}})), tape.param(w),
                       tape.param(b));
  tape.backward(y2, g);
  expect_values(w.grad(), {-4, 4, 18, 6, 8, 8}, {2, 3});
  expect_values(b.grad(), {8, 2}, {2});
}

TEST(Linear, LeadingDimsFoldAndNoBias) {
  tg::Tape<double> tape;
  const TD xv = randn({2, 3, 4}, 11), wv = randn({5, 4}, 12), bv = randn({5}, 13);
  auto y = tg::linear(tape.input(xv), tape.input(wv), tape.input(bv));
  auto y0 = tg::linear(tape.input(xv), tape.input(wv));
  EXPECT_EQ(y.shape(), (tg::Shape{2, 3, 5}));
  std::vector<double> expected, expected0;
  for (int64_t r = 0; r < 6; ++r)
    for (int64_t o = 0; o < 5; ++o) {
      double s = 0;
      for (int64_t i = 0; i < 4; ++i) s += xv[r * 4 + i] * wv[o * 4 + i];
      expected0.push_back(s);
      expected.push_back(s + bv[o]);
    }
  expect_values(y.value(), expected, {2, 3, 5});
  expect_values(y0.value(), expected0, {2, 3, 5});

  auto v = tg::linear(tape.input(TD::from({1.0, 2.0})), tape.input(TD::from({{3.0, 4.0}})));
  expect_values(v.value(), {11}, {1});  // 1-D input gives a 1-D output
}

TEST(Linear, LargeMatchesNaiveLoops) {
  tg::Tape<float> tape;
  tg::Generator gen(14);
  const auto xv = tg::Tensor<float>::randn({64, 100}, gen);
  const auto wv = tg::Tensor<float>::randn({50, 100}, gen);
  const auto bv = tg::Tensor<float>::randn({50}, gen);
  auto y = tg::linear(tape.input(xv), tape.input(wv), tape.input(bv));
  for (int64_t r = 0; r < 64; ++r)
    for (int64_t o = 0; o < 50; ++o) {
      double s = bv[o];
      for (int64_t i = 0; i < 100; ++i) s += double(xv[r * 100 + i]) * double(wv[o * 100 + i]);
      EXPECT_NEAR(y.value()[r * 50 + o], s, 1e-3) << r << "," << o;
    }
}

TEST(Linear, Gradcheck) {
  tg::Generator gen(15);
  tg::Parameter<double> w(TD::randn({3, 4}, gen)), b(TD::randn({3}, gen));
  expect_gradcheck([w, b](tg::Tape<double>& t,
                          const Vars& x) { return tg::linear(x[0], t.param(w), t.param(b)); },
                   {randn({5, 4}, 16)}, {w, b});
  expect_gradcheck([w](tg::Tape<double>& t, const Vars& x) { return tg::linear(x[0], t.param(w)); },
                   {randn({2, 2, 4}, 17)}, {w});
  expect_gradcheck(  // every operand a tape input
      [](tg::Tape<double>&, const Vars& x) { return tg::linear(x[0], x[1], x[2]); },
      {randn({4}, 18), randn({2, 4}, 19), randn({2}, 20)});
}

TEST(Linear, ErrorsNameShapes) {
  tg::Tape<float> tape;
  auto x = tape.input(tg::Tensor<float>::zeros({32, 784}));
  auto w = tape.input(tg::Tensor<float>::zeros({256, 100}));
  auto b = tape.input(tg::Tensor<float>::zeros({10}));
  expect_error_exact<tg::ShapeError>(
      [&] { tg::linear(x, w); },
      "linear: input [32,784] but weight [256,100]: in_features differ (784 vs 100)");
  auto w2 = tape.input(tg::Tensor<float>::zeros({256, 784}));
  expect_error_exact<tg::ShapeError>([&] { tg::linear(x, w2, b); },
                                     "linear: bias [10] but weight [256,784]: expected bias [256]");
  expect_error_exact<tg::ShapeError>([&] { tg::linear(x, b); },
                                     "linear: weight [10] must be 2-D [out_features,in_features]");
  auto s = tape.input(tg::Tensor<float>::scalar(1));
  expect_error_exact<tg::ShapeError>([&] { tg::linear(s, w2); },
                                     "linear: input [] must have at least one dim");
}

}  // namespace
