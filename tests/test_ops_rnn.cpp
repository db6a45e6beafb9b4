// ops/rnn.hpp (fused rnn_cell, lstm_cell + lstm_hidden, gru_cell) and ops/detach.hpp:
// values against the documented equations written out with loops here, gradcheck (double,
// 1e-6) of single steps and of short unrolled sequences in both row layouts, zero initial
// states, and errors by type and message.
#include <gtest/gtest.h>

#include <cmath>
#include <string>
#include <vector>

#include "tapegrad/diag/gradcheck.hpp"
#include "tapegrad/ops/detach.hpp"
#include "tapegrad/ops/elementwise.hpp"
#include "tapegrad/ops/reduce.hpp"
#include "tapegrad/ops/rnn.hpp"
#include "tapegrad/ops/shape.hpp"

namespace tg = tapegrad;
using TD = tg::Tensor<double>;
using VD = tg::Var<double>;
using Vars = std::vector<VD>;

namespace {

double sig(double v) { return 1 / (1 + std::exp(-v)); }

// pre[n][j] = xp[row(n)][j] + b[j] + sum_k h[n][k] w[j][k]  (loops, no Eigen)
std::vector<std::vector<double>> preact(const TD& xp, tg::StepRows rows, int64_t n_rows,
                                        const TD* h, const TD& w, const TD* b) {
  const int64_t gh = w.size(0), H = w.size(1);
  std::vector<std::vector<double>> out(static_cast<size_t>(n_rows), std::vector<double>(gh));
  for (int64_t n = 0; n < n_rows; ++n)
    for (int64_t j = 0; j < gh; ++j) {
      double v = xp[(rows.first + n * rows.stride) * gh + j] + (b ? (*b)[j] : 0.0);
      if (h)
        for (int64_t k = 0; k < H; ++k) v += (*h)[n * H + k] * w[j * H + k];
      out[static_cast<size_t>(n)][static_cast<size_t>(j)] = v;
    }
  return out;
}

void expect_near_all(const TD& got, const std::vector<double>& want, double tol = 1e-12) {
  ASSERT_EQ(got.numel(), static_cast<int64_t>(want.size()));
  for (int64_t i = 0; i < got.numel(); ++i)
    EXPECT_NEAR(got[i], want[static_cast<size_t>(i)], tol) << "element " << i;
}

template <class E, class F>
void expect_error(F f, const std::vector<std::string>& parts) {
  try {
    f();
    ADD_FAILURE() << "no exception thrown";
  } catch (const E& e) {
    for (const auto& p : parts)
      EXPECT_NE(std::string(e.what()).find(p), std::string::npos) << e.what() << " lacks " << p;
  }
}

struct Data {
  TD xp, h, c, w, b;
};
Data make(int64_t rows, int64_t n, int64_t H, int64_t gates, uint64_t seed) {
  tg::Generator g(seed);
  return {TD::randn({rows, gates * H}, g), TD::randn({n, H}, g, 0, 0.5), TD::randn({n, H}, g),
          TD::randn({gates * H, H}, g, 0, 0.5), TD::randn({gates * H}, g, 0, 0.5)};
}

}  // namespace

// ---------------------------------------------------------------- values

TEST(RnnCellOp, TanhAndReluFromTheFormula) {
  const int64_t N = 3, H = 4;
  Data d = make(N, N, H, 1, 1);
  for (auto nl : {tg::RNNNonlinearity::tanh, tg::RNNNonlinearity::relu}) {
    tg::Tape<double> t;
    VD y =
        tg::rnn_cell(t.constant(d.xp), {}, t.constant(d.h), t.constant(d.w), t.constant(d.b), nl);
    ASSERT_EQ(y.shape(), tg::Shape({N, H}));
    const auto pre = preact(d.xp, {0, 1, N}, N, &d.h, d.w, &d.b);
    std::vector<double> want;
    for (const auto& row : pre)
      for (double v : row)
        want.push_back(nl == tg::RNNNonlinearity::tanh ? std::tanh(v) : std::max(v, 0.0));
    expect_near_all(y.value(), want);
  }
}

TEST(LstmCellOp, RecordHiddenAndCellStateFromTheFormula) {
  const int64_t N = 2, H = 3;
  Data d = make(N, N, H, 4, 2);
  tg::Tape<double> t;
  VD rec = tg::lstm_cell(t.constant(d.xp), {}, t.constant(d.h), t.constant(d.c), t.constant(d.w),
                         t.constant(d.b));
  VD h = tg::lstm_hidden(rec);
  VD c = tg::lstm_cell_state(rec);
  ASSERT_EQ(rec.shape(), tg::Shape({N, 5 * H}));
  const auto pre = preact(d.xp, {0, 1, N}, N, &d.h, d.w, &d.b);
  std::vector<double> want_rec, want_h, want_c;
  for (int64_t n = 0; n < N; ++n) {
    const auto& p = pre[static_cast<size_t>(n)];
    std::vector<double> i(H), f(H), g(H), o(H), cn(H);
    for (int64_t k = 0; k < H; ++k) {  // gate order i, f, g, o
      i[k] = sig(p[k]), f[k] = sig(p[H + k]), g[k] = std::tanh(p[2 * H + k]);
      o[k] = sig(p[3 * H + k]);
      cn[k] = f[k] * d.c[n * H + k] + i[k] * g[k];
    }
    for (auto* v : {&i, &f, &g, &o, &cn}) want_rec.insert(want_rec.end(), v->begin(), v->end());
    for (int64_t k = 0; k < H; ++k) want_h.push_back(o[k] * std::tanh(cn[k]));
    want_c.insert(want_c.end(), cn.begin(), cn.end());
  }
  expect_near_all(rec.value(), want_rec);
  expect_near_all(h.value(), want_h);
  expect_near_all(c.value(), want_c);
}

TEST(GruCellOp, FromTheFormulaWithBhnInsideTheResetProduct) {
  const int64_t N = 2, H = 3;
  Data d = make(N, N, H, 3, 3);
  tg::Tape<double> t;
  VD y = tg::gru_cell(t.constant(d.xp), {}, t.constant(d.h), t.constant(d.w), t.constant(d.b));
  // hp = b_hh + h W_hh^T, kept apart from xp (xp rows passed as zeros to preact).
  TD zeros = TD::zeros({N, 3 * H});
  const auto hp = preact(zeros, {0, 1, N}, N, &d.h, d.w, &d.b);
  std::vector<double> want;
  for (int64_t n = 0; n < N; ++n)
    for (int64_t k = 0; k < H; ++k) {
      const double* x = &d.xp[n * 3 * H];
      const auto& p = hp[static_cast<size_t>(n)];
      const double r = sig(x[k] + p[k]), z = sig(x[H + k] + p[H + k]);
      const double nn = std::tanh(x[2 * H + k] + r * p[2 * H + k]);
      want.push_back((1 - z) * nn + z * d.h[n * H + k]);
    }
  expect_near_all(y.value(), want);
}

TEST(CellOps, EmptyStateEqualsZeroState) {
  const int64_t N = 2, H = 3;
  Data d = make(N, N, H, 4, 4);
  TD z = TD::zeros({N, H});
  tg::Tape<double> t;
  auto xp = t.constant(d.xp), w = t.constant(d.w), b = t.constant(d.b);
  VD a = tg::lstm_cell(xp, {}, VD(), VD(), w, b);
  VD e = tg::lstm_cell(xp, {}, t.constant(z), t.constant(z), w, b);
  EXPECT_TRUE(tg::allclose(a.value(), e.value(), 0, 0));
  Data g = make(N, N, H, 3, 5);
  VD ga = tg::gru_cell(t.constant(g.xp), {}, VD(), t.constant(g.w), t.constant(g.b));
  VD ge = tg::gru_cell(t.constant(g.xp), {}, t.constant(z), t.constant(g.w), t.constant(g.b));
  EXPECT_TRUE(tg::allclose(ga.value(), ge.value(), 1e-15, 1e-15));  // (1-z)n vs n + z(0-n)
  Data r = make(N, N, H, 1, 6);
  VD ra = tg::rnn_cell(t.constant(r.xp), {}, VD(), t.constant(r.w), VD());
  VD re = tg::rnn_cell(t.constant(r.xp), {}, t.constant(z), t.constant(r.w), VD());
  EXPECT_TRUE(tg::allclose(ra.value(), re.value(), 0, 0));
}

TEST(CellOps, StepRowsPickTheStepOfASequenceInBothLayouts) {
  // xp of a sequence T=3, N=2: time-major rows t*N + n, batch-first rows n*T + t.
  const int64_t T = 3, N = 2, H = 2;
  Data d = make(T * N, N, H, 1, 7);
  for (bool batch_first : {false, true}) {
    for (int64_t s = 0; s < T; ++s) {
      const tg::StepRows rows = batch_first ? tg::StepRows{s, T, N} : tg::StepRows{s * N, 1, N};
      tg::Tape<double> t;
      VD y =
          tg::rnn_cell(t.constant(d.xp), rows, t.constant(d.h), t.constant(d.w), t.constant(d.b));
      std::vector<double> want;
      for (const auto& row : preact(d.xp, rows, N, &d.h, d.w, &d.b))
        for (double v : row) want.push_back(std::tanh(v));
      expect_near_all(y.value(), want);
    }
  }
}

// ---------------------------------------------------------------- gradients

TEST(RnnCellOp, Gradcheck) {
  Data d = make(3, 3, 4, 1, 11);
  for (auto nl : {tg::RNNNonlinearity::tanh, tg::RNNNonlinearity::relu}) {
    auto r =
        tg::gradcheck([nl](tg::Tape<double>&,
                           const Vars& v) { return tg::rnn_cell(v[0], {}, v[1], v[2], v[3], nl); },
                      {d.xp, d.h, d.w, d.b});
    EXPECT_TRUE(r) << tg::nonlinearity_name(nl) << ": " << r;
  }
}

TEST(LstmCellOp, GradcheckOfRecordHiddenAndCellState) {
  Data d = make(2, 2, 3, 4, 12);
  auto r = tg::gradcheck(
      [](tg::Tape<double>&, const Vars& v) {
        VD rec = tg::lstm_cell(v[0], {}, v[1], v[2], v[3], v[4]);
        // The record's gate columns, h' and c' all carry a gradient.
        return tg::concat({tg::reshape(rec, {-1}), tg::reshape(tg::lstm_hidden(rec), {-1}),
                           tg::reshape(tg::lstm_cell_state(rec), {-1})});
      },
      {d.xp, d.h, d.c, d.w, d.b});
  EXPECT_TRUE(r) << r;
}

TEST(GruCellOp, Gradcheck) {
  Data d = make(3, 3, 2, 3, 13);
  auto r = tg::gradcheck(
      [](tg::Tape<double>&, const Vars& v) { return tg::gru_cell(v[0], {}, v[1], v[2], v[3]); },
      {d.xp, d.h, d.w, d.b});
  EXPECT_TRUE(r) << r;
}

// Three steps chained through the state, the sequence's xp shared by all steps (each step adds
// into its own rows of xp's gradient), in both layouts, with and without bias and initial state.
TEST(CellOps, GradcheckOfUnrolledSequences) {
  const int64_t T = 3, N = 2, H = 2;
  for (int gates : {1, 3, 4})
    for (bool batch_first : {false, true})
      for (bool with_state : {false, true})
        for (bool bias : {false, true}) {
          Data d = make(T * N, N, H, gates, 20 + gates);
          auto f = [=](tg::Tape<double>&, const Vars& v) {
            VD h = with_state ? v[1] : VD(), c = with_state ? v[2] : VD();
            VD b = bias ? v[4] : VD();
            Vars outs;
            for (int64_t s = 0; s < T; ++s) {
              const tg::StepRows rows =
                  batch_first ? tg::StepRows{s, T, N} : tg::StepRows{s * N, 1, N};
              if (gates == 1) {
                h = tg::rnn_cell(v[0], rows, h, v[3], b);
              } else if (gates == 3) {
                h = tg::gru_cell(v[0], rows, h, v[3], b);
              } else {
                c = tg::lstm_cell(v[0], rows, h, c, v[3], b);  // the record is the next c
                h = tg::lstm_hidden(c);
              }
              outs.push_back(h);
            }
            if (gates == 4) outs.push_back(tg::lstm_cell_state(c));
            return tg::concat(outs);
          };
          auto r = tg::gradcheck(f, {d.xp, d.h, d.c, d.w, d.b});
          EXPECT_TRUE(r) << "gates " << gates << " batch_first " << batch_first << " state "
                         << with_state << " bias " << bias << ": " << r;
        }
}

// ---------------------------------------------------------------- errors

TEST(CellOps, ErrorsNameTheOpAndTheShapes) {
  Data d = make(2, 2, 3, 4, 30);
  tg::Tape<double> t;
  auto xp = t.constant(d.xp), h = t.constant(d.h), c = t.constant(d.c), w = t.constant(d.w),
       b = t.constant(d.b);
  expect_error<tg::ShapeError>(
      [&] {
        tg::lstm_cell(xp, {}, h, c, t.constant(TD({12, 4})), b);
      },
      {"lstm_cell", "weight_hh [12,4]", "[4*hidden_size, hidden_size]"});
  expect_error<tg::ShapeError>(
      [&] {
        tg::gru_cell(xp, {}, h, t.constant(TD({9, 3})), VD());
      },
      {"gru_cell", "input projection [2,12]", "weight_hh [9,3]", "9"});
  expect_error<tg::ShapeError>(
      [&] {
        tg::lstm_cell(xp, {1, 1, 2}, h, c, w, b);
      },
      {"lstm_cell", "step rows {first 1, stride 1, count 2}", "2 rows [2,12]"});
  expect_error<tg::ShapeError>(
      [&] {
        tg::lstm_cell(xp, {}, t.constant(TD({2, 4})), c, w, b);
      },
      {"lstm_cell", "h [2,4]", "weight_hh [12,3]", "expected [2,3]"});
  expect_error<tg::ShapeError>(
      [&] {
        tg::lstm_cell(xp, {}, h, t.constant(TD({3, 3})), w, b);
      },
      {"lstm_cell", "c [3,3]", "expected [2,3]"});
  expect_error<tg::ShapeError>([&] { tg::lstm_cell(xp, {}, h, c, w, t.constant(TD({3}))); },
                               {"lstm_cell", "bias_hh [3]", "expected [12]"});
  expect_error<tg::ShapeError>([&] { tg::lstm_hidden(h); },
                               {"lstm_hidden", "[2,3]", "lstm_cell record"});
  expect_error<tg::ShapeError>(
      [&] {
        tg::rnn_cell(t.constant(TD({2, 3})), {}, VD(), t.constant(TD({6, 3})), VD());
      },
      {"rnn_cell", "weight_hh [6,3]", "[1*hidden_size, hidden_size]"});
  tg::Tape<double> other;
  expect_error<tg::TapeError>([&] { tg::lstm_cell(xp, {}, other.constant(d.h), c, w, b); },
                              {"lstm_cell", "two different tapes"});
}

// ---------------------------------------------------------------- detach

TEST(Detach, SameValuesNoGradientThrough) {
  tg::Tape<double> t;
  VD x = t.input(TD::from({1.0, 2.0, 3.0}));
  VD y = x * 2.0;
  VD dy = tg::detach(y);
  EXPECT_FALSE(dy.requires_grad());
  EXPECT_TRUE(dy.value().shares_storage(y.value()));
  EXPECT_EQ(dy.value()[2], 6.0);
  // loss = sum(x * detach(2x)): d/dx = 2x only (the detached factor is a constant).
  t.backward(tg::sum(x * dy));
  expect_near_all(x.grad(), {2.0, 4.0, 6.0}, 0);
}

TEST(Detach, StopsTheGradientOfARecurrence) {
  // h_{t+1} = tanh(xp_t + h_t W^T): detaching h_2 leaves steps 0 and 1 without gradient.
  const int64_t T = 4, N = 1, H = 2;
  Data d = make(T * N, N, H, 1, 40);
  tg::Tape<double> t;
  VD xp = t.input(d.xp), w = t.input(d.w);
  VD h;
  for (int64_t s = 0; s < T; ++s) {
    if (s == 2) h = tg::detach(h);
    h = tg::rnn_cell(xp, {s * N, 1, N}, h, w, VD());
  }
  t.backward(tg::sum(h));
  const TD g = xp.grad();
  for (int64_t k = 0; k < 2 * N * H; ++k) EXPECT_EQ(g[k], 0.0) << "row of step < 2";
  for (int64_t k = 2 * N * H; k < T * N * H; ++k) EXPECT_NE(g[k], 0.0) << "row of step >= 2";
}
