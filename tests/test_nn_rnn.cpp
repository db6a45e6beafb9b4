// nn/rnn_cell.hpp, nn/rnn.hpp and diag/through_time.hpp: PyTorch's parameter names, shapes and
// init; cell outputs against the documented equations written out with loops here (GRU's b_hn
// inside the reset product); gradcheck (double, 1e-6) of every cell and of unrolled multi-layer
// sequences w.r.t. inputs, initial states and all weights; the sequence layers against the
// cells stepped by hand, batch_first, truncated BPTT, dL/dh_t per step; and the exploding_rnn
// demo's claims on a small deterministic setup (sequence length 30).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "tapegrad/diag/gradcheck.hpp"
#include "tapegrad/diag/through_time.hpp"
#include "tapegrad/nn/dense.hpp"
#include "tapegrad/nn/init.hpp"
#include "tapegrad/nn/rnn.hpp"
#include "tapegrad/nn/rnn_cell.hpp"
#include "tapegrad/ops/elementwise.hpp"
#include "tapegrad/ops/loss.hpp"
#include "tapegrad/ops/reduce.hpp"
#include "tapegrad/ops/shape.hpp"
#include "tapegrad/optim/adam.hpp"
#include "tapegrad/optim/sgd.hpp"

namespace tg = tapegrad;
namespace nn = tapegrad::nn;
namespace diag = tapegrad::diag;
using TD = tg::Tensor<double>;
using VD = tg::Var<double>;
using Vars = std::vector<VD>;

namespace {

template <class E>
void expect_error(const std::function<void()>& f, const std::vector<std::string>& parts) {
  try {
    f();
    ADD_FAILURE() << "no exception";
  } catch (const E& e) {
    for (const auto& p : parts)
      EXPECT_NE(std::string(e.what()).find(p), std::string::npos) << e.what() << " lacks " << p;
  } catch (const std::exception& e) {
    ADD_FAILURE() << "wrong exception type: " << e.what();
  }
}

double sig(double v) { return 1 / (1 + std::exp(-v)); }

// y[n][j] = b[j] + sum_k x[n][k] w[j][k], with plain loops (b may be undefined).
std::vector<std::vector<double>> affine(const TD& x, const tg::Parameter<double>& w,
                                        const tg::Parameter<double>& b) {
  const int64_t N = x.size(0), K = x.size(1), J = w.shape()[0];
  std::vector<std::vector<double>> y(static_cast<size_t>(N), std::vector<double>(J, 0.0));
  for (int64_t n = 0; n < N; ++n)
    for (int64_t j = 0; j < J; ++j) {
      double v = b.defined() ? b.value()[j] : 0.0;
      for (int64_t k = 0; k < K; ++k) v += x[n * K + k] * w.value()[j * K + k];
      y[static_cast<size_t>(n)][static_cast<size_t>(j)] = v;
    }
  return y;
}

// The documented equations of one step, from x, h, c and the cell's parameters.
struct RefStep {
  std::vector<double> h, c;  // [N*H]
};
RefStep ref_rnn(const nn::RNNCell<double>& m, const TD& x, const TD& h, bool relu) {
  const auto a = affine(x, m.weight_ih, m.bias_ih), b = affine(h, m.weight_hh, m.bias_hh);
  RefStep r;
  for (size_t n = 0; n < a.size(); ++n)
    for (size_t j = 0; j < a[n].size(); ++j) {
      const double v = a[n][j] + b[n][j];
      r.h.push_back(relu ? std::max(v, 0.0) : std::tanh(v));
    }
  return r;
}
RefStep ref_lstm(const nn::LSTMCell<double>& m, const TD& x, const TD& h, const TD& c) {
  const auto a = affine(x, m.weight_ih, m.bias_ih), b = affine(h, m.weight_hh, m.bias_hh);
  const int64_t H = m.hidden_size();
  RefStep r;
  for (size_t n = 0; n < a.size(); ++n)
    for (int64_t k = 0; k < H; ++k) {
      auto pre = [&](int64_t gate) { return a[n][gate * H + k] + b[n][gate * H + k]; };
      const double i = sig(pre(0)), f = sig(pre(1)), g = std::tanh(pre(2)), o = sig(pre(3));
      const double cn = f * c[static_cast<int64_t>(n) * H + k] + i * g;
      r.c.push_back(cn);
      r.h.push_back(o * std::tanh(cn));
    }
  return r;
}
RefStep ref_gru(const nn::GRUCell<double>& m, const TD& x, const TD& h) {
  const auto a = affine(x, m.weight_ih, m.bias_ih), b = affine(h, m.weight_hh, m.bias_hh);
  const int64_t H = m.hidden_size();
  RefStep r;
  for (size_t n = 0; n < a.size(); ++n)
    for (int64_t k = 0; k < H; ++k) {
      const double rg = sig(a[n][k] + b[n][k]), z = sig(a[n][H + k] + b[n][H + k]);
      const double nn = std::tanh(a[n][2 * H + k] + rg * b[n][2 * H + k]);  // b_hn inside r(.)
      r.h.push_back((1 - z) * nn + z * h[static_cast<int64_t>(n) * H + k]);
    }
  return r;
}

void expect_values(const TD& got, const std::vector<double>& want, double tol = 1e-12) {
  ASSERT_EQ(got.numel(), static_cast<int64_t>(want.size()));
  for (int64_t i = 0; i < got.numel(); ++i)
    EXPECT_NEAR(got[i], want[static_cast<size_t>(i)], tol) << "element " << i;
}

std::vector<std::string> names_of(const nn::Module<double>& m) {
  std::vector<std::string> out;
  for (const auto& [n, p] : m.named_parameters()) out.push_back(n);
  return out;
}

// Everything a sequence layer returns, flattened into one Var for gradcheck.
VD flat(const nn::RNNOutput<double>& o) {
  Vars parts{tg::reshape(o.output, {-1}), tg::reshape(o.state.h, {-1})};
  if (o.state.c.defined()) parts.push_back(tg::reshape(o.state.c, {-1}));
  return tg::concat(parts);
}

}  // namespace

// ---------------------------------------------------------------- parameters and init

TEST(RNNCells, PyTorchNamesShapesAndInitRange) {
  tg::Generator gen(1);
  nn::RNNCell<double> rnn(3, 5, true, tg::RNNNonlinearity::tanh, gen);
  nn::LSTMCell<double> lstm(3, 5, true, gen);
  nn::GRUCell<double> gru(3, 5, false, gen);
  const std::vector<std::string> all{"weight_ih", "weight_hh", "bias_ih", "bias_hh"};
  EXPECT_EQ(names_of(rnn), all);
  EXPECT_EQ(names_of(lstm), all);
  EXPECT_EQ(names_of(gru), (std::vector<std::string>{"weight_ih", "weight_hh"}));
  EXPECT_EQ(lstm.weight_ih.shape(), tg::Shape({20, 3}));
  EXPECT_EQ(lstm.weight_hh.shape(), tg::Shape({20, 5}));
  EXPECT_EQ(lstm.bias_hh.shape(), tg::Shape({20}));
  EXPECT_EQ(gru.weight_ih.shape(), tg::Shape({15, 3}));
  EXPECT_EQ(rnn.weight_hh.shape(), tg::Shape({5, 5}));
  EXPECT_FALSE(gru.bias_ih.defined());
  // U(±1/sqrt(hidden)) for every parameter, the range filled.
  const double bound = 1 / std::sqrt(5.0);
  for (const auto& p : lstm.parameters()) {
    const double m = p.value().array().abs().maxCoeff();
    EXPECT_LE(m, bound);
    EXPECT_GT(m, 0.8 * bound);
  }
  EXPECT_EQ(lstm.name(), "LSTMCell(3, 5)");
  EXPECT_EQ(gru.name(), "GRUCell(3, 5, bias=false)");
  nn::RNNCell<double> relu(3, 5, true, tg::RNNNonlinearity::relu, gen);
  EXPECT_EQ(relu.name(), "RNNCell(3, 5, nonlinearity=relu)");
}

TEST(RNNLayers, PyTorchNamesPerLayerShapesAndInit) {
  tg::Generator gen(2);
  nn::LSTM<double> lstm(3, 4, {.num_layers = 2}, gen);
  EXPECT_EQ(names_of(lstm),
            (std::vector<std::string>{"weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0",
                                      "weight_ih_l1", "weight_hh_l1", "bias_ih_l1", "bias_hh_l1"}));
  EXPECT_EQ(lstm.weight_ih_l(0).shape(), tg::Shape({16, 3}));
  EXPECT_EQ(lstm.weight_ih_l(1).shape(), tg::Shape({16, 4}));  // layer 1 reads layer 0's h
  EXPECT_EQ(lstm.weight_hh_l(1).shape(), tg::Shape({16, 4}));
  EXPECT_EQ(lstm.bias_ih_l(1).shape(), tg::Shape({16}));
  for (const auto& p : lstm.parameters()) EXPECT_LE(p.value().array().abs().maxCoeff(), 0.5);
  nn::GRU<double> gru(3, 4, {.bias = false, .batch_first = true}, gen);
  EXPECT_EQ(names_of(gru), (std::vector<std::string>{"weight_ih_l0", "weight_hh_l0"}));
  EXPECT_EQ(gru.weight_hh_l(0).shape(), tg::Shape({12, 4}));
  EXPECT_FALSE(gru.bias_ih_l(0).defined());
  EXPECT_EQ(gru.name(), "GRU(3, 4, bias=false, batch_first=true)");
  nn::RNN<double> rnn(3, 4, {.num_layers = 3, .nonlinearity = tg::RNNNonlinearity::relu}, gen);
  EXPECT_EQ(rnn.name(), "RNN(3, 4, num_layers=3, nonlinearity=relu)");
  EXPECT_EQ(rnn.num_parameters(), (4 * 3 + 4 * 4 + 8) + 2 * (4 * 4 + 4 * 4 + 8));
}

// ---------------------------------------------------------------- cell values

TEST(RNNCells, OutputsFollowTheDocumentedEquations) {
  tg::Generator gen(3);
  const TD x = TD::randn({2, 3}, gen), h = TD::randn({2, 4}, gen), c = TD::randn({2, 4}, gen);
  for (bool relu : {false, true}) {
    nn::RNNCell<double> m(3, 4, true, relu ? tg::RNNNonlinearity::relu : tg::RNNNonlinearity::tanh,
                          gen);
    tg::Tape<double> t;
    expect_values(m.forward(t.constant(x), t.constant(h)).value(), ref_rnn(m, x, h, relu).h);
  }
  nn::LSTMCell<double> lstm(3, 4, true, gen);
  tg::Tape<double> t;
  const auto s = lstm.forward(t.constant(x), {t.constant(h), t.constant(c)});
  const RefStep r = ref_lstm(lstm, x, h, c);
  expect_values(s.h.value(), r.h);
  expect_values(s.c.value(), r.c);
  nn::GRUCell<double> gru(3, 4, true, gen);
  expect_values(gru.forward(t.constant(x), t.constant(h)).value(), ref_gru(gru, x, h).h);
  // A zero state is what forward(x) uses.
  const TD z = TD::zeros({2, 4});
  expect_values(lstm(t.constant(x)).value(), ref_lstm(lstm, x, z, z).h);
  expect_values(gru(t.constant(x)).value(), ref_gru(gru, x, z).h);
}

TEST(RNNCells, GruResetGateMultipliesTheHiddenBiasToo) {
  // W_hh = 0, h = 0: n = tanh(W_in x + b_in + r * b_hn). Were b_hn outside the product
  // (tanh(W_in x + b_in + b_hn + r * W_hn h)) n would differ, since r != 1.
  tg::Generator gen(4);
  nn::GRUCell<double> gru(2, 3, true, gen);
  gru.weight_hh.value().zero_();
  const TD x = TD::randn({1, 2}, gen);
  tg::Tape<double> t;
  const TD y = gru.forward(t.constant(x)).value();
  const auto a = affine(x, gru.weight_ih, gru.bias_ih);
  const TD& bh = gru.bias_hh.value();
  for (int64_t k = 0; k < 3; ++k) {
    const double r = sig(a[0][k] + bh[k]), z = sig(a[0][3 + k] + bh[3 + k]);
    const double inside = (1 - z) * std::tanh(a[0][6 + k] + r * bh[6 + k]);
    const double outside = (1 - z) * std::tanh(a[0][6 + k] + bh[6 + k]);
    EXPECT_NEAR(y[k], inside, 1e-14);
    EXPECT_GT(std::abs(inside - outside), 1e-3) << "the test must tell the two placements apart";
  }
}

// ---------------------------------------------------------------- gradcheck

TEST(RNNCells, GradcheckInputsStatesAndAllWeights) {
  tg::Generator gen(5);
  const TD x = TD::randn({2, 3}, gen), h = TD::randn({2, 4}, gen), c = TD::randn({2, 4}, gen);
  for (bool relu : {false, true}) {
    nn::RNNCell<double> m(3, 4, true, relu ? tg::RNNNonlinearity::relu : tg::RNNNonlinearity::tanh,
                          gen);
    auto r = tg::gradcheck([&](tg::Tape<double>&, const Vars& v) { return m.forward(v[0], v[1]); },
                           {x, h}, m.parameters());
    EXPECT_TRUE(r) << m.name() << ": " << r;
  }
  nn::LSTMCell<double> lstm(3, 4, true, gen);
  auto rl = tg::gradcheck(
      [&](tg::Tape<double>&, const Vars& v) {
        const auto s = lstm.forward(v[0], {v[1], v[2]});
        return tg::concat({s.h, s.c});
      },
      {x, h, c}, lstm.parameters());
  EXPECT_TRUE(rl) << rl;
  nn::GRUCell<double> gru(3, 4, true, gen);
  auto rg = tg::gradcheck([&](tg::Tape<double>&, const Vars& v) { return gru.forward(v[0], v[1]); },
                          {x, h}, gru.parameters());
  EXPECT_TRUE(rg) << rg;
  nn::LSTMCell<double> nob(3, 4, false, gen);
  auto rn = tg::gradcheck(
      [&](tg::Tape<double>&, const Vars& v) {
        return nob.forward(v[0], {v[1], v[2]}).h;
      },
      {x, h, c}, nob.parameters());
  EXPECT_TRUE(rn) << rn;
}

TEST(RNNLayers, GradcheckFiveStepTwoLayerLstmInputsStatesAllWeights) {
  tg::Generator gen(6);
  nn::LSTM<double> lstm(3, 4, {.num_layers = 2}, gen);
  const TD x = TD::randn({5, 2, 3}, gen), h0 = TD::randn({2, 2, 4}, gen, 0, 0.5),
           c0 = TD::randn({2, 2, 4}, gen);
  auto r = tg::gradcheck(
      [&](tg::Tape<double>&, const Vars& v) {
        return flat(lstm.forward(v[0], {v[1], v[2]}));
      },
      {x, h0, c0}, lstm.parameters());
  EXPECT_TRUE(r) << r;
  EXPECT_EQ(r.checked, 5 * 2 * 3 + 2 * 16 + lstm.num_parameters());
}

TEST(RNNLayers, GradcheckRnnAndGruTwoLayersBatchFirst) {
  tg::Generator gen(7);
  const TD x = TD::randn({2, 4, 3}, gen), h0 = TD::randn({2, 2, 3}, gen, 0, 0.5);
  nn::GRU<double> gru(3, 3, {.num_layers = 2, .batch_first = true}, gen);
  auto rg = tg::gradcheck(
      [&](tg::Tape<double>&, const Vars& v) { return flat(gru.forward(v[0], {v[1]})); }, {x, h0},
      gru.parameters());
  EXPECT_TRUE(rg) << rg;
  nn::RNN<double> rnn(3, 3, {.num_layers = 2, .bias = false, .batch_first = true}, gen);
  auto rr = tg::gradcheck(
      [&](tg::Tape<double>&, const Vars& v) { return flat(rnn.forward(v[0], {v[1]})); }, {x, h0},
      rnn.parameters());
  EXPECT_TRUE(rr) << rr;
  nn::LSTM<double> lstm(3, 3, {.batch_first = true}, gen);  // zero initial state
  auto rl = tg::gradcheck([&](tg::Tape<double>&, const Vars& v) { return lstm(v[0]); }, {x},
                          lstm.parameters());
  EXPECT_TRUE(rl) << rl;
}

// An empty batch (N = 0, sequence-first and batch-first): outputs and states of batch 0, zero
// weight gradients.
TEST(RNNLayers, EmptyBatchForwardAndBackward) {
  tg::Generator gen(8);
  for (bool bf : {false, true}) {
    nn::LSTM<double> lstm(3, 4, {.num_layers = 2, .batch_first = bf}, gen);
    nn::GRU<double> gru(3, 4, {.batch_first = bf}, gen);
    nn::RNN<double> rnn(3, 4, {.batch_first = bf}, gen);
    for (nn::RNNBase<double>* m : std::initializer_list<nn::RNNBase<double>*>{&lstm, &gru, &rnn}) {
      m->zero_grad();
      tg::Tape<double> tape;
      auto x = tape.input(bf ? TD::zeros({0, 5, 3}) : TD::zeros({5, 0, 3}));
      const auto out = m->forward(x, nn::RNNState<double>{});
      EXPECT_EQ(out.output.shape(), bf ? (tg::Shape{0, 5, 4}) : (tg::Shape{5, 0, 4})) << m->name();
      EXPECT_EQ(out.state.h.shape().dim(1), 0) << m->name();
      tape.backward(tg::sum(flat(out)));
      EXPECT_EQ(x.grad().shape(), x.shape());
      for (const auto& [n, p] : m->named_parameters())
        for (int64_t i = 0; i < p.numel(); ++i)
          ASSERT_EQ(p.grad()[i], 0.0) << m->name() << " " << n;
    }
  }
}

// ---------------------------------------------------------------- sequence semantics

// A 2-layer LSTM equals its cells stepped by hand with the same weights (layer 1 reading
// layer 0's h_t), and reports h_n, c_n per layer.
TEST(RNNLayers, LstmEqualsCellsSteppedByHand) {
  tg::Generator gen(8);
  const int64_t T = 4, N = 2, F = 3, H = 5;
  nn::LSTM<double> lstm(F, H, {.num_layers = 2}, gen);
  const TD x = TD::randn({T, N, F}, gen), h0 = TD::randn({2, N, H}, gen),
           c0 = TD::randn({2, N, H}, gen);
  nn::LSTMCell<double> cell0(F, H, true, gen), cell1(H, H, true, gen);
  for (auto [cell, k] : {std::pair{&cell0, 0}, std::pair{&cell1, 1}}) {
    cell->weight_ih.value().copy_(lstm.weight_ih_l(k).value());
    cell->weight_hh.value().copy_(lstm.weight_hh_l(k).value());
    cell->bias_ih.value().copy_(lstm.bias_ih_l(k).value());
    cell->bias_hh.value().copy_(lstm.bias_hh_l(k).value());
  }
  tg::Tape<double> t;
  const auto out = lstm.forward(t.constant(x), {t.constant(h0), t.constant(c0)});
  ASSERT_EQ(out.output.shape(), tg::Shape({T, N, H}));
  ASSERT_EQ(out.state.h.shape(), tg::Shape({2, N, H}));
  ASSERT_EQ(out.state.c.shape(), tg::Shape({2, N, H}));
  // By hand, with the reference equations.
  auto layer_part = [&](const TD& s, int64_t k) {
    TD p({N, H});
    for (int64_t i = 0; i < N * H; ++i) p[i] = s[k * N * H + i];
    return p;
  };
  TD h[2] = {layer_part(h0, 0), layer_part(h0, 1)}, c[2] = {layer_part(c0, 0), layer_part(c0, 1)};
  for (int64_t s = 0; s < T; ++s) {
    TD in({N, F});
    for (int64_t i = 0; i < N * F; ++i) in[i] = x[s * N * F + i];
    for (int k = 0; k < 2; ++k) {
      const RefStep r = ref_lstm(k == 0 ? cell0 : cell1, in, h[k], c[k]);
      h[k] = TD::from(r.h, {N, H});
      c[k] = TD::from(r.c, {N, H});
      in = h[k];
    }
    for (int64_t i = 0; i < N * H; ++i)
      EXPECT_NEAR(out.output.value()[s * N * H + i], h[1][i], 1e-12) << "t " << s;
  }
  for (int k = 0; k < 2; ++k)
    for (int64_t i = 0; i < N * H; ++i) {
      EXPECT_NEAR(out.state.h.value()[k * N * H + i], h[k][i], 1e-12);
      EXPECT_NEAR(out.state.c.value()[k * N * H + i], c[k][i], 1e-12);
    }
}

TEST(RNNLayers, BatchFirstIsTheTransposedLayout) {
  tg::Generator gen(9);
  const int64_t T = 3, N = 2, F = 2, H = 3;
  for (int mode = 0; mode < 3; ++mode) {
    tg::Generator g1(10), g2(10);  // the same weights for both layouts
    std::unique_ptr<nn::RNNBase<double>> tm, bf;
    if (mode == 0) {
      tm = std::make_unique<nn::RNN<double>>(F, H, nn::RNNOptions{.num_layers = 2}, g1);
      bf = std::make_unique<nn::RNN<double>>(
          F, H, nn::RNNOptions{.num_layers = 2, .batch_first = true}, g2);
    } else if (mode == 1) {
      tm = std::make_unique<nn::LSTM<double>>(F, H, nn::RNNOptions{.num_layers = 2}, g1);
      bf = std::make_unique<nn::LSTM<double>>(
          F, H, nn::RNNOptions{.num_layers = 2, .batch_first = true}, g2);
    } else {
      tm = std::make_unique<nn::GRU<double>>(F, H, nn::RNNOptions{.num_layers = 2}, g1);
      bf = std::make_unique<nn::GRU<double>>(
          F, H, nn::RNNOptions{.num_layers = 2, .batch_first = true}, g2);
    }
    const TD x = TD::randn({T, N, F}, gen);
    TD xb({N, T, F});
    for (int64_t s = 0; s < T; ++s)
      for (int64_t n = 0; n < N; ++n)
        for (int64_t f = 0; f < F; ++f) xb(n, s, f) = x(s, n, f);
    tg::Tape<double> t;
    const auto a = tm->forward(t.constant(x), {});
    const auto b = bf->forward(t.constant(xb), {});
    ASSERT_EQ(b.output.shape(), tg::Shape({N, T, H}));
    for (int64_t s = 0; s < T; ++s)
      for (int64_t n = 0; n < N; ++n)
        for (int64_t k = 0; k < H; ++k)
          EXPECT_NEAR(b.output.value()(n, s, k), a.output.value()(s, n, k), 1e-14);
    EXPECT_TRUE(tg::allclose(a.state.h.value(), b.state.h.value(), 0, 1e-14));  // [L, N, H]
  }
}

TEST(RNNLayers, HiddenStepsAreTheOutputsAndTheirGradIsDLossDh) {
  tg::Generator gen(11);
  const int64_t T = 4, N = 2, H = 3;
  nn::GRU<double> gru(2, H, {}, gen);
  tg::Tape<double> t;
  Vars hs;
  const auto out = gru.forward(t.constant(TD::randn({T, N, 2}, gen)), {}, &hs);
  ASSERT_EQ(hs.size(), size_t(T));
  for (int64_t s = 0; s < T; ++s)
    for (int64_t i = 0; i < N * H; ++i)
      EXPECT_EQ(hs[static_cast<size_t>(s)].value()[i], out.output.value()[s * N * H + i]);
  t.backward(tg::sum(out.output));
  // The last step's h reaches the loss only directly: dL/dh_T = 1 everywhere.
  const auto norms = diag::grad_norms_through_time(hs);
  EXPECT_NEAR(norms.back(), std::sqrt(double(N * H)), 1e-12);
  // An earlier step also feeds every later one: its gradient differs from the direct 1s.
  EXPECT_GT(std::abs(norms.front() - std::sqrt(double(N * H))), 1e-3);
}

// Truncated BPTT: a sequence run in windows of k = 3 steps, detaching the state between them,
// has the values of the full run, and a loss on the last window sends no gradient into the
// earlier windows' inputs, but the same gradient into its own window as a fresh run from the
// detached state.
TEST(RNNLayers, TruncatedBpttDetachesTheStateEveryKSteps) {
  tg::Generator gen(12);
  const int64_t T = 9, k = 3, N = 2, F = 2, H = 3;
  nn::LSTM<double> lstm(F, H, {}, gen);
  const TD x = TD::randn({T, N, F}, gen);
  tg::Tape<double> t;
  VD xv = t.input(x);
  const auto full = lstm.forward(xv, {});
  nn::RNNState<double> state;
  nn::RNNOutput<double> w;
  for (int64_t s = 0; s < T; s += k) {
    w = lstm.forward(tg::slice(xv, 0, s, s + k), nn::detach(state));
    state = w.state;
  }
  for (int64_t i = 0; i < k * N * H; ++i)
    EXPECT_NEAR(w.output.value()[i], full.output.value()[(T - k) * N * H + i], 1e-14);
  t.backward(tg::sum(w.output));
  const TD gx = xv.grad();
  for (int64_t i = 0; i < (T - k) * N * F; ++i) ASSERT_EQ(gx[i], 0.0) << "before the window";
  // The same window from a fresh tape, starting at the detached state's values.
  tg::Tape<double> t2;
  TD xw({k, N, F});
  for (int64_t i = 0; i < k * N * F; ++i) xw[i] = x[(T - k) * N * F + i];
  VD xw_v = t2.input(xw);
  tg::Tape<double> t0;  // the state entering the last window: a run over the first T-k steps
  const auto pre = [&] {
    TD xs({T - k, N, F});
    for (int64_t i = 0; i < (T - k) * N * F; ++i) xs[i] = x[i];
    return lstm.forward(t0.constant(xs), {});
  }();
  const auto w2 =
      lstm.forward(xw_v, {t2.constant(pre.state.h.value()), t2.constant(pre.state.c.value())});
  t2.backward(tg::sum(w2.output));
  const TD gw = xw_v.grad();
  for (int64_t i = 0; i < k * N * F; ++i)
    EXPECT_NEAR(gx[(T - k) * N * F + i], gw[i], 1e-13) << "inside the window";
  EXPECT_GT(gw.array().abs().maxCoeff(), 0.0);
}

// The header's recipe: windows on a fresh tape each, the state's values carried over, give the
// full run's outputs.
TEST(RNNLayers, TruncatedBpttAcrossTapeClearsCarriesTheStateValues) {
  tg::Generator gen(13);
  const int64_t T = 6, k = 2, N = 2, F = 2, H = 3;
  nn::GRU<double> gru(F, H, {.num_layers = 2}, gen);
  const TD x = TD::randn({T, N, F}, gen);
  tg::Tape<double> tape;
  const TD full = gru(tape.constant(x)).value().clone();
  TD h = TD::zeros({2, N, H});
  for (int64_t s = 0; s < T; s += k) {
    tape.clear();
    TD xw({k, N, F});
    for (int64_t i = 0; i < k * N * F; ++i) xw[i] = x[s * N * F + i];
    const auto out = gru.forward(tape.constant(xw), {tape.constant(h)});
    tape.backward(tg::sum(out.output));
    for (int64_t i = 0; i < k * N * H; ++i)
      EXPECT_NEAR(out.output.value()[i], full[s * N * H + i], 1e-14) << "window at " << s;
    h.copy_(out.state.h.value());
  }
}

TEST(RNNLayers, SummaryListsTheLayer) {
  nn::LSTM<double> lstm(3, 4, {.num_layers = 2});
  const std::string s = lstm.summary({5, 2, 3});
  EXPECT_NE(s.find("LSTM(3, 4, num_layers=2)"), std::string::npos) << s;
  EXPECT_NE(s.find("[5,2,4]"), std::string::npos) << s;
}

// ---------------------------------------------------------------- errors

TEST(RNNLayers, ErrorsNameTheLayerAndTheShapes) {
  nn::LSTM<double> lstm(3, 4, {.num_layers = 2});
  nn::GRU<double> gru(3, 4, {.batch_first = true});
  nn::LSTMCell<double> cell(3, 4);
  tg::Tape<double> t;
  const VD x = t.constant(TD::zeros({5, 2, 3}));
  expect_error<tg::ShapeError>(
      [&] {
        lstm(t.constant(TD::zeros({5, 2, 7})));
      },
      {"LSTM(3, 4, num_layers=2)", "input [5,2,7]", "expected [T,N,3]"});
  expect_error<tg::ShapeError>(
      [&] {
        gru(t.constant(TD::zeros({5, 3})));
      },
      {"GRU(3, 4, batch_first=true)", "input [5,3]", "[N,T,3]", "3-D"});
  expect_error<tg::ShapeError>(
      [&] {
        lstm.forward(x, {t.constant(TD::zeros({1, 2, 4}))});
      },
      {"LSTM(3, 4, num_layers=2)", "initial h [1,2,4]", "expected [2,2,4]"});
  expect_error<tg::ShapeError>(
      [&] {
        lstm.forward(x, {VD(), t.constant(TD::zeros({2, 3, 4}))});
      },
      {"LSTM(3, 4, num_layers=2)", "initial c [2,3,4]", "batch of 2", "expected [2,2,4]"});
  expect_error<tg::ValueError>(
      [&] {
        gru.forward(t.constant(TD::zeros({2, 5, 3})), {VD(), t.constant(TD::zeros({1, 2, 4}))});
      },
      {"GRU(3, 4, batch_first=true)", "no cell state c"});
  expect_error<tg::ValueError>(
      [&] {
        lstm(t.constant(TD::zeros({0, 2, 3})));
      },
      {"LSTM(3, 4, num_layers=2)", "[0,2,3]", "no steps"});
  expect_error<tg::ShapeError>(
      [&] {
        cell(t.constant(TD::zeros({2, 4})));
      },
      {"LSTMCell(3, 4)", "input [2,4]", "expected [N,3]"});
  expect_error<tg::ShapeError>(
      [&] {
        cell.forward(t.constant(TD::zeros({2, 3})), {t.constant(TD::zeros({3, 4}))});
      },
      {"LSTMCell(3, 4)", "h [3,4]", "expected [2,4]"});
  expect_error<tg::ValueError>([] { nn::LSTM<double>(3, 4, {.num_layers = 0}); },
                               {"LSTM(3, 4)", "num_layers must be >= 1"});
  expect_error<tg::ValueError>([] { nn::GRUCell<double>(3, 0); },
                               {"GRUCell(3, 0)", "hidden_size must be >= 1"});
  expect_error<tg::ValueError>(
      [] { nn::LSTM<double>(3, 4, {.nonlinearity = tg::RNNNonlinearity::relu}); },
      {"LSTM(3, 4)", "nonlinearity applies to nn::RNN only"});
}

// ---------------------------------------------------------------- through-time flags

TEST(ThroughTime, FitsTheGeometricFactorAndFlags) {
  std::vector<double> decay, grow, flat(10, 2.0);
  for (int t = 0; t < 10; ++t) {
    decay.push_back(std::pow(0.5, 9 - t));  // the loss at the end: older steps get less
    grow.push_back(3.0 * std::pow(2.0, 9 - t));
  }
  const auto d = diag::through_time_flags(decay);
  EXPECT_NEAR(d.factor_per_step, 0.5, 1e-12);
  EXPECT_NEAR(d.span, std::pow(0.5, 9), 1e-12);
  EXPECT_NEAR(d.r2, 1.0, 1e-12);
  EXPECT_TRUE(d.vanishing);
  EXPECT_FALSE(d.exploding);
  EXPECT_EQ(d.flag().rfind("VANISHING (x0.5/step)", 0), 0u) << d.flag();
  const auto g = diag::through_time_flags(grow);
  EXPECT_NEAR(g.factor_per_step, 2.0, 1e-12);
  EXPECT_TRUE(g.exploding);
  const auto f = diag::through_time_flags(flat);
  EXPECT_NEAR(f.factor_per_step, 1.0, 1e-12);
  EXPECT_FALSE(f.any());
  EXPECT_EQ(f.flag(), "ok (x1/step)");
  // Zeros before a nonzero step (the gradient died) are left out of the fit but flag
  // vanishing; NaN flags non-finite.
  std::vector<double> cut = flat;
  cut[0] = cut[1] = 0;
  const auto c = diag::through_time_flags(cut);
  EXPECT_NEAR(c.factor_per_step, 1.0, 1e-12);
  EXPECT_EQ(c.fitted_steps, 8);
  EXPECT_EQ(c.dead_steps, 2);
  EXPECT_TRUE(c.vanishing);
  std::vector<double> tail_zero = flat;
  tail_zero.back() = 0;  // no later nonzero step: not dead, just no gradient there
  EXPECT_FALSE(diag::through_time_flags(tail_zero).any());
  cut[5] = NAN;
  EXPECT_TRUE(diag::through_time_flags(cut).non_finite);
  EXPECT_TRUE(std::isnan(diag::through_time_flags(std::vector<double>{1.0}).factor_per_step));
  // A gradient that does not pass one step back (saturated units): vanishing, factor 0.
  const auto dead = diag::through_time_flags(std::vector<double>{0, 0, 0, 0.7});
  EXPECT_TRUE(dead.vanishing);
  EXPECT_EQ(dead.factor_per_step, 0.0);
  EXPECT_EQ(dead.flag(), "VANISHING (x0/step)");
}

// A NaN ratio used to turn its flag off (a decaying gradient read "ok"), and vanishing_ratio above
// exploding_ratio set both flags: both are ValueErrors naming the option.
TEST(ThroughTime, InvalidRatiosRaise) {
  const std::vector<double> decay = {0.001, 0.01, 0.1, 1.0};
  const double nan = std::nan(""), inf = INFINITY;
  const std::vector<diag::ThroughTimeOptions> bad = {
      {.vanishing_ratio = nan},
      {.exploding_ratio = nan},
      {.vanishing_ratio = -1},
      {.exploding_ratio = -inf},
      {.vanishing_ratio = inf, .exploding_ratio = inf},
      {.vanishing_ratio = 1e3, .exploding_ratio = 1e-3},
      {.vanishing_ratio = 5, .exploding_ratio = 5}};
  for (const auto& o : bad)
    expect_error<tg::ValueError>([&] { diag::through_time_flags(decay, o); },
                                 {"through_time_flags", "vanishing_ratio", "exploding_ratio"});
  // A zero vanishing_ratio is valid: only dead steps flag vanishing then.
  EXPECT_FALSE(diag::through_time_flags(decay, {.vanishing_ratio = 0}).any());
  // An infinite exploding_ratio turns that flag off: here the norm grows 1000-fold back to t = 0.
  const std::vector<double> growth = {1.0, 0.1, 0.01, 0.001};
  EXPECT_TRUE(diag::through_time_flags(growth).exploding);
  EXPECT_FALSE(diag::through_time_flags(growth, {.exploding_ratio = inf}).exploding);
}

// ---------------------------------------------------------------- the demo's claims (T = 30)
//
// examples/exploding_rnn.cpp on a small deterministic setup: sequence length 30, hidden 16,
// batch 8, the adding problem, loss = MSE of Dense(h_T).

namespace {

constexpr int64_t kT = 30, kN = 8, kH = 16;

// A batch of the adding problem, as in the demo: x [T, N, 2] (value, marker), y [N, 1].
void adding_batch(tg::Generator& g, TD& x, TD& y) {
  x = TD::zeros({kT, kN, 2});
  y = TD({kN, 1});
  for (int64_t n = 0; n < kN; ++n) {
    for (int64_t t = 0; t < kT; ++t) x(t, n, 0) = g.uniform();
    const int64_t a = static_cast<int64_t>(g.below(kT / 2));
    const int64_t b = kT / 2 + static_cast<int64_t>(g.below(kT - kT / 2));
    x(a, n, 1) = 1, x(b, n, 1) = 1;
    y(n, 0) = x(a, n, 0) + x(b, n, 0);
  }
}

VD adding_loss(nn::RNNBase<double>& rnn, nn::Dense<double>& head, tg::Tape<double>& tape,
               const TD& x, const TD& y, Vars* hs) {
  const auto out = rnn.forward(tape.constant(x), {}, hs);
  return tg::mse_loss(head(tg::reshape(out.state.h, {kN, kH})), tape.constant(y));
}

// ||dL/dh_t||, t = 0..T-1, of one batch.
std::vector<double> norms_through_time(nn::RNNBase<double>& rnn, nn::Dense<double>& head,
                                       uint64_t seed) {
  tg::Generator g(seed);
  TD x, y;
  adding_batch(g, x, y);
  tg::Tape<double> tape;
  Vars hs;
  tape.backward(adding_loss(rnn, head, tape, x, y, &hs));
  return diag::grad_norms_through_time(hs);
}

}  // namespace

TEST(ExplodingRnnDemo, VanillaRnnGradientDecaysGeometricallyThroughTime) {
  tg::Generator gen(21);
  nn::RNN<double> rnn(2, kH, {}, gen);  // PyTorch's default init
  nn::Dense<double> head(kH, 1, true, gen);
  const auto norms = norms_through_time(rnn, head, 1);
  const auto f = diag::through_time_flags(norms);
  EXPECT_TRUE(f.vanishing) << f.flag();
  EXPECT_LT(f.factor_per_step, 0.8);
  EXPECT_LT(norms.front() / norms.back(), 1e-3);
  EXPECT_GT(f.r2, 0.95) << "geometric: log-linear in t";
}

TEST(ExplodingRnnDemo, VanillaRnnWithLargeRecurrentWeightsGrowsGeometrically) {
  tg::Generator gen(22);
  nn::RNN<double> rnn(2, kH, {}, gen);
  nn::init::orthogonal_(rnn.weight_hh_l(0), 2.0, gen);  // the demo's rnn-sgd init
  nn::Dense<double> head(kH, 1, true, gen);
  const auto norms = norms_through_time(rnn, head, 2);
  const auto f = diag::through_time_flags(norms);
  // x1.18 per step here; over the demo's 100 steps that compounds to ~1e6 (flagged EXPLODING).
  EXPECT_GT(f.factor_per_step, 1.1) << f.flag();
  EXPECT_GT(norms.front() / norms.back(), 20.0);
  EXPECT_GT(f.r2, 0.9) << "geometric: log-linear in t";
  EXPECT_FALSE(f.vanishing);
}

// The demo's trained LSTMs pass the gradient back with a factor 0.997 per step: they learn to
// keep their forget gates open, and the cell state then carries dL/dc back multiplied by f ~ 1,
// with no weight matrix and no squashing derivative in the way. Here the gates are opened by
// hand (forget-gate bias +5: f ~ 0.99) instead of by training; with PyTorch's default init
// (f ~ 0.5) the same LSTM's gradient decays, as at the start of the demo.
TEST(ExplodingRnnDemo, LstmGradientStaysWithinBoundsThroughItsOpenForgetGate) {
  tg::Generator gen(23);
  nn::LSTM<double> lstm(2, kH, {}, gen);
  nn::Dense<double> head(kH, 1, true, gen);
  const auto closed = diag::through_time_flags(norms_through_time(lstm, head, 3));
  EXPECT_TRUE(closed.vanishing) << closed.flag();
  for (int64_t k = kH; k < 2 * kH; ++k) lstm.bias_ih_l(0).value()[k] = 5.0;  // gate f
  const auto norms = norms_through_time(lstm, head, 3);
  const auto f = diag::through_time_flags(norms);
  EXPECT_FALSE(f.any()) << f.flag();
  EXPECT_GT(f.factor_per_step, 0.9);
  EXPECT_LT(f.factor_per_step, 1.1);
  const auto [lo, hi] = std::minmax_element(norms.begin(), norms.end());
  EXPECT_LT(*hi / *lo, 100.0) << "every step within a factor 100 of every other";
}

// Clipping bounds each update: with plain SGD the step is lr * min(||g||, max_norm) (up to
// PyTorch's 1e-6), however large the exploding gradient; without clipping it is lr * ||g||.
TEST(ExplodingRnnDemo, ClippingBoundsEveryUpdate) {
  const double lr = 0.01, max_norm = 1.0;
  for (bool clip : {true, false}) {
    tg::Generator gen(24), data(5);
    nn::RNN<double> rnn(2, kH, {}, gen);
    nn::init::orthogonal_(rnn.weight_hh_l(0), 2.0, gen);
    nn::Dense<double> head(kH, 1, true, gen);
    auto params = rnn.parameters();
    for (const auto& p : head.parameters()) params.push_back(p);
    tg::optim::SGD<double> sgd(params, {.lr = lr});
    if (clip) sgd.set_clip_grad_norm(max_norm);
    double largest_grad = 0;
    for (int step = 0; step < 8; ++step) {
      TD x, y;
      adding_batch(data, x, y);
      tg::Tape<double> tape;
      sgd.zero_grad();
      tape.backward(adding_loss(rnn, head, tape, x, y, nullptr));
      std::vector<TD> before;
      for (const auto& p : params) before.push_back(p.value().clone());
      const double g = sgd.step();  // the norm before clipping
      largest_grad = std::max(largest_grad, g);
      double sq = 0;
      for (size_t k = 0; k < params.size(); ++k)
        sq += (params[k].value().array() - before[k].array()).square().sum();
      const double update = std::sqrt(sq);
      if (clip) {
        EXPECT_LE(update, lr * max_norm * (1 + 1e-9)) << "step " << step;
        EXPECT_NEAR(update, lr * std::min(g, max_norm), 1e-6 * lr) << "step " << step;
      } else {
        EXPECT_NEAR(update, lr * g, 1e-9 * lr * g) << "step " << step;
        if (step == 0) {
          EXPECT_GT(update, 10 * lr * max_norm) << "the unclipped first step is large";
        }
      }
    }
    EXPECT_GT(largest_grad, 20 * max_norm) << "the gradient exploded (so clipping had work)";
  }
}
