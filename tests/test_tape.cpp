// The tape's own mechanics, with two small ops defined here so the test depends on no op file.
#include <gtest/gtest.h>

#include <cmath>
#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "tapegrad/diag/gradcheck.hpp"
#include "tapegrad/tape.hpp"
#include "test_util.hpp"

namespace tg = tapegrad;

namespace {

// y = x * x
template <class T>
tg::Var<T> square(const tg::Var<T>& x) {
  auto y = x.tape().record("square", x.shape(), {x}, [](tg::OpContext<T>& c) {
    c.add_grad(0, 2 * c.input(0).array() * c.grad_out().array());
  });
  y.value().array() = x.value().array().square();
  return y;
}

// y = a * b (same shapes)
template <class T>
tg::Var<T> times(const tg::Var<T>& a, const tg::Var<T>& b) {
  if (!(a.shape() == b.shape()))
    tg::detail::fail<tg::ShapeError>("times: ", a.shape(), " vs ", b.shape());
  auto y = a.tape().record("times", a.shape(), {a, b}, [](tg::OpContext<T>& c) {
    c.add_grad(0, c.input(1).array() * c.grad_out().array());
    c.add_grad(1, c.input(0).array() * c.grad_out().array());
  });
  y.value().array() = a.value().array() * b.value().array();
  return y;
}

TEST(Tape, ScalarBackwardAndFanOut) {
  tg::Tape<double> tape;
  auto x = tape.input(tg::Tensor<double>::scalar(3.0));
  auto y = times(square(x), x);  // x^3, x used twice
  tape.backward(y);
  EXPECT_DOUBLE_EQ(y.item(), 27.0);
  EXPECT_DOUBLE_EQ(x.grad().item(), 27.0);  // 3 x^2
}

TEST(Tape, ParameterGradAccumulatesAcrossCalls) {
  tg::Parameter<double> p(tg::Tensor<double>::from({1.0, -2.0}));
  tg::Tape<double> tape;
  for (int step = 0; step < 2; ++step) {
    tape.clear();
    auto w = tape.param(p);
    tape.backward(square(w), tg::Tensor<double>::ones({2}));
  }
  EXPECT_DOUBLE_EQ(p.grad()[0], 4.0);   // 2 * (2 * 1)
  EXPECT_DOUBLE_EQ(p.grad()[1], -8.0);  // 2 * (2 * -2)
  p.zero_grad();
  EXPECT_DOUBLE_EQ(p.grad()[1], 0.0);
}

// As in PyTorch, one recording is differentiated once: a second backward would add the same
// gradients into the parameters again (it used to, silently: 4 became 8).
TEST(Tape, SecondBackwardOfOneRecordingThrowsUnlessRetained) {
  tg::Parameter<double> p(tg::Tensor<double>::from({2.0}));
  tg::Tape<double> tape;
  auto loss = square(tape.param(p));
  tape.backward(loss, tg::Tensor<double>::ones({1}));
  EXPECT_DOUBLE_EQ(p.grad()[0], 4.0);
  const std::string msg = tapegrad::testing::error_message<tg::TapeError>(
      [&] { tape.backward(loss, tg::Tensor<double>::ones({1})); });
  EXPECT_NE(msg.find("backward: the recording from this output back was already differentiated"),
            std::string::npos)
      << msg;
  EXPECT_NE(msg.find("record each forward anew"), std::string::npos) << msg;
  EXPECT_DOUBLE_EQ(p.grad()[0], 4.0);  // unchanged

  // retain_graph = true, as PyTorch's: the next backward adds (4 + 4).
  tape.clear();
  p.zero_grad();
  loss = square(tape.param(p));
  tape.backward(loss, tg::Tensor<double>::ones({1}), /*retain_graph=*/true);
  tape.backward(loss, tg::Tensor<double>::ones({1}));
  EXPECT_DOUBLE_EQ(p.grad()[0], 8.0);
  EXPECT_THROW(tape.backward(loss, tg::Tensor<double>::ones({1})), tg::TapeError);

  // After clear(), a new recording is differentiated again.
  tape.clear();
  tape.backward(square(tape.param(p)), tg::Tensor<double>::ones({1}));
  EXPECT_DOUBLE_EQ(p.grad()[0], 12.0);

  // Two outputs of disjoint parts of one recording: each may be swept (PyTorch allows it too);
  // two losses sharing a trunk may not, and the refused one changes nothing.
  tape.clear();
  p.zero_grad();
  auto a = tape.input(tg::Tensor<double>::scalar(3.0));
  auto b = tape.input(tg::Tensor<double>::scalar(5.0));
  tape.backward(square(a));
  tape.backward(square(b));
  EXPECT_DOUBLE_EQ(a.grad().item(), 6.0);
  EXPECT_DOUBLE_EQ(b.grad().item(), 10.0);
  auto trunk = square(tape.param(p));
  auto loss1 = square(trunk), loss2 = times(trunk, trunk);
  tape.backward(loss1, tg::Tensor<double>::ones({1}));
  EXPECT_DOUBLE_EQ(p.grad()[0], 32.0);  // d(p^4)/dp = 4 p^3
  EXPECT_THROW(tape.backward(loss2, tg::Tensor<double>::ones({1})), tg::TapeError);
  EXPECT_DOUBLE_EQ(p.grad()[0], 32.0);
}

TEST(Tape, SeedGradientForNonScalar) {
  tg::Tape<double> tape;
  auto x = tape.input(tg::Tensor<double>::from({1.0, 2.0, 3.0}));
  auto y = square(x);
  tape.backward(y, tg::Tensor<double>::from({1.0, 0.5, -1.0}));
  EXPECT_TRUE(tg::allclose(x.grad(), tg::Tensor<double>::from({2.0, 2.0, -6.0})));
}

TEST(Tape, ConstantsGetNoGradientAndNoBackward) {
  tg::Tape<double> tape;
  auto c = tape.constant(tg::Tensor<double>::from({2.0}));
  auto x = tape.input(tg::Tensor<double>::from({5.0}));
  auto y = times(c, x);
  EXPECT_FALSE(square(c).requires_grad());
  tape.backward(y);
  EXPECT_DOUBLE_EQ(x.grad()[0], 2.0);
  EXPECT_DOUBLE_EQ(c.grad()[0], 0.0);
}

TEST(Tape, NoGradGuardRecordsNoBackward) {
  tg::Tape<double> tape;
  auto x = tape.input(tg::Tensor<double>::from({5.0}));
  {
    tg::NoGradGuard guard;
    EXPECT_FALSE(square(x).requires_grad());
  }
  EXPECT_TRUE(square(x).requires_grad());
}

TEST(Tape, StaleVarThrows) {
  tg::Tape<double> tape;
  auto x = tape.input(tg::Tensor<double>::from({5.0}));
  auto y = square(x);
  tape.clear();
  EXPECT_THROW(tape.backward(y), tg::TapeError);
  try {
    (void)y.value();
    FAIL();
  } catch (const tg::TapeError& e) {
    EXPECT_NE(std::string(e.what()).find("stale"), std::string::npos) << e.what();
  }
}

TEST(Tape, MixingTapesThrows) {
  tg::Tape<double> t1, t2;
  auto a = t1.input(tg::Tensor<double>::from({1.0}));
  auto b = t2.input(tg::Tensor<double>::from({1.0}));
  try {
    times(a, b);
    FAIL();
  } catch (const tg::TapeError& e) {
    EXPECT_NE(std::string(e.what()).find("times"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("two different tapes"), std::string::npos);
  }
}

TEST(Tape, NonScalarBackwardWithoutSeedThrows) {
  tg::Tape<double> tape;
  auto x = tape.input(tg::Tensor<double>::zeros({2, 3}));
  try {
    tape.backward(square(x));
    FAIL();
  } catch (const tg::TapeError& e) {
    EXPECT_NE(std::string(e.what()).find("[2,3]"), std::string::npos) << e.what();
  }
}

TEST(Tape, ClearReusesBuffers) {
  tg::Tape<float> tape;
  tg::Parameter<float> p(tg::Tensor<float>::ones({64}));
  const float* first = nullptr;
  for (int step = 0; step < 3; ++step) {
    tape.clear();
    auto y = square(square(tape.param(p)));
    tape.backward(y, tg::Tensor<float>::ones({64}));
    if (step == 0)
      first = y.value().data();
    else
      EXPECT_EQ(first, y.value().data()) << "step " << step;
  }
  EXPECT_EQ(tape.size(), 3u);
}

// An op whose output the system cannot hold (2^62 bytes: see the Tensor test) is named in the
// error, and the tape is left as it was: the failed node is not counted, recording goes on.
TEST(Tape, AnOpOutOfMemoryIsNamedAndTheTapeRecordsOn) {
#ifdef __SANITIZE_ADDRESS__
  GTEST_SKIP() << "AddressSanitizer aborts on a failed operator new";
#endif
  tg::Tape<float> tape;
  auto x = tape.input(tg::Tensor<float>::from({1.0f, 2.0f}));
  const tg::Shape huge{int64_t{1} << 30, int64_t{1} << 30};
  const std::string msg = tg::testing::error_message<tg::OutOfMemoryError>(
      [&] { tape.record("enormous", huge, {x}, [](tg::OpContext<float>&) {}); });
  EXPECT_EQ(msg.rfind("enormous: ", 0), 0u) << msg;
  EXPECT_NE(msg.find("[1073741824,1073741824]"), std::string::npos) << msg;
  EXPECT_EQ(tape.size(), 1u);
  auto y = square(x);
  tape.backward(y, tg::Tensor<float>::ones({2}));
  EXPECT_EQ(x.grad()[0], 2.0f);
  EXPECT_EQ(x.grad()[1], 4.0f);
}

// record() and constant() take references that may point into the tape's own nodes (x.shape(),
// y.value()); growing the tape must not invalidate them before they are read.
TEST(Tape, ArgumentsReferringIntoTheTapeSurviveGrowth) {
  tg::Tape<double> tape;
  auto x = tape.input(tg::Tensor<double>::from({1.0, 2.0}));
  for (int i = 0; i < 100; ++i) {
    x = square(x.tape().constant(x.value()));
    x.value().fill_(1.0);
  }
  EXPECT_EQ(x.shape(), (tg::Shape{2}));
  EXPECT_EQ(tape.size(), 201u);
}

// An op whose backward writes its input's gradient itself: y = 3x, dx = 3 dy, through
// grad_in_uninitialized (assign on the sweep's first write, add afterwards).
tg::Var<double> thrice(const tg::Var<double>& x) {
  auto y = x.tape().record("thrice", x.shape(), {x}, [](tg::OpContext<double>& c) {
    bool assign = false;
    tg::Tensor<double>& g = c.grad_in_uninitialized(0, assign);
    c.node().scalars[0] = assign ? 1 : 0;  // what the backward saw, for the test
    for (int64_t i = 0; i < g.numel(); ++i) g[i] = (assign ? 0.0 : g[i]) + 3 * c.grad_out()[i];
  });
  y.value().array() = 3 * x.value().array();
  return y;
}

TEST(OpContext, GradInUninitializedAssignsFirstThenAccumulates) {
  tg::Tape<double> tape;
  for (int step = 0; step < 2; ++step) {  // the second step reuses the stale buffers
    tape.clear();
    auto x = tape.input(tg::Tensor<double>::from({1.0, -2.0}));
    auto a = thrice(x);
    auto b = thrice(x);  // x used twice: its gradient is 3 + 3 per element
    auto y = times(a, b);
    tape.backward(y, tg::Tensor<double>::from({1.0, 1.0}));
    // d(9x²)/dx = 18x; each thrice adds 3·(the other factor) = 3·3x.
    EXPECT_DOUBLE_EQ(x.grad()[0], 18.0) << step;
    EXPECT_DOUBLE_EQ(x.grad()[1], -36.0) << step;
    // b's node runs first in the reverse sweep and assigns; a's adds.
    EXPECT_EQ(b.node().scalars[0], 1.0);
    EXPECT_EQ(a.node().scalars[0], 0.0);
  }
}

TEST(Gradcheck, PassesForCorrectOpAndFailsForWrongOne) {
  auto good = tg::gradcheck(
      [](tg::Tape<double>&, const std::vector<tg::Var<double>>& x) {
        return times(square(x[0]), x[1]);
      },
      {tg::Tensor<double>::from({0.5, -1.5, 2.0}), tg::Tensor<double>::from({1.0, 2.0, -3.0})});
  EXPECT_TRUE(good) << good;
  EXPECT_EQ(good.checked, 6);

  auto bad = tg::gradcheck(
      [](tg::Tape<double>& t, const std::vector<tg::Var<double>>& x) {
        auto y = t.record("wrong", x[0].shape(), {x[0]}, [](tg::OpContext<double>& c) {
          c.add_grad(0, 3 * c.input(0).array() * c.grad_out().array());  // should be 2x
        });
        y.value().array() = x[0].value().array().square();
        return y;
      },
      {tg::Tensor<double>::from({0.5, -1.5})});
  EXPECT_FALSE(bad);
  EXPECT_NEAR(bad.analytic / bad.numeric, 1.5, 1e-6) << bad;
}

}  // namespace

// zero_grad() only marks the gradient as zero: reading it fills in the zeros, and the next
// backward overwrites the stale buffer instead of adding into it, even when the parameter is
// used twice in the graph or is the output itself.
TEST(Tape, ZeroGradIsLazyAndReadsAsZero) {
  tg::Parameter<double> p(tg::Tensor<double>::from({1.0, -2.0}));
  tg::Tape<double> tape;
  const auto ones = tg::Tensor<double>::ones({2});
  auto backward_square = [&] {
    tape.clear();
    tape.backward(square(tape.param(p)), ones);
  };
  backward_square();
  backward_square();  // accumulates: 4 x
  p.zero_grad();
  backward_square();  // overwrites the stale 4 x: 2 x
  EXPECT_DOUBLE_EQ(p.grad()[0], 2.0);
  EXPECT_DOUBLE_EQ(p.grad()[1], -4.0);

  p.zero_grad();
  EXPECT_DOUBLE_EQ(p.grad()[0], 0.0);  // read before any backward: zeros filled in
  EXPECT_DOUBLE_EQ(p.grad()[1], 0.0);
  backward_square();
  EXPECT_DOUBLE_EQ(p.grad()[1], -4.0);

  p.zero_grad();
  tape.clear();
  auto w = tape.param(p);
  tape.backward(times(w, w), ones);  // the first write assigns, the second adds: 2 x
  EXPECT_DOUBLE_EQ(p.grad()[0], 2.0);
  EXPECT_DOUBLE_EQ(p.grad()[1], -4.0);
  EXPECT_DOUBLE_EQ(w.grad()[1], -4.0);

  p.zero_grad();
  tape.clear();
  w = tape.param(p);
  EXPECT_DOUBLE_EQ(w.grad()[0], 0.0);                      // through the tape, too
  tape.backward(w, tg::Tensor<double>::from({5.0, 6.0}));  // the parameter is the output
  EXPECT_DOUBLE_EQ(p.grad()[0], 5.0);
  EXPECT_DOUBLE_EQ(p.grad()[1], 6.0);
}

// ---- SweepListener: when each parameter's gradient is final, and the end of the sweep ----
namespace {

struct Recorder : tg::SweepListener<double> {
  std::vector<std::string> events;
  std::vector<std::pair<const void*, std::string>> names;
  std::function<void(const tg::Parameter<double>&)> on_ready;
  void gradient_ready(const tg::Parameter<double>& p) override {
    for (const auto& [k, n] : names)
      if (k == p.key()) events.push_back(n);
    if (on_ready) on_ready(p);
  }
  void sweep_done() override { events.push_back("done"); }
};

TEST(TapeListener, GradientsFinalInReverseOrderThenDone) {
  tg::Parameter<double> a(tg::Tensor<double>::from({2.0})), b(tg::Tensor<double>::from({3.0})),
      c(tg::Tensor<double>::from({5.0}));
  Recorder r;
  r.names = {{a.key(), "a"}, {b.key(), "b"}, {c.key(), "c"}};
  tg::Tape<double> tape;
  tape.set_listener(&r);
  // y = c * (b * (a * a)): a enters first, c last; a is used twice in one node.
  auto av = tape.param(a);
  auto y1 = times(av, av);
  auto y2 = times(tape.param(b), y1);
  auto x = tape.input(tg::Tensor<double>::from({1.0}));  // an input is no parameter: no event
  auto y = times(times(tape.param(c), y2), x);
  // Each event comes when the gradient is final: check the values the listener can read.
  std::vector<double> seen;
  r.on_ready = [&](const tg::Parameter<double>& p) { seen.push_back(p.grad()[0]); };
  tape.backward(y);
  EXPECT_EQ(r.events, (std::vector<std::string>{"c", "b", "a", "done"}));
  ASSERT_EQ(seen.size(), 3u);
  EXPECT_DOUBLE_EQ(seen[0], 12.0);  // d/dc = b a^2
  EXPECT_DOUBLE_EQ(seen[1], 20.0);  // d/db = c a^2
  EXPECT_DOUBLE_EQ(seen[2], 60.0);  // d/da = 2 a b c
  EXPECT_EQ(tape.listener(), &r);
}

// A parameter entered several times (a recurrent weight) is final once, at its first leaf,
// after every consumer; an unreached or later-entered parameter still gets its event, an
// untracked one none.
TEST(TapeListener, RepeatedUnreachedAndFrozenParameters) {
  tg::Parameter<double> w(tg::Tensor<double>::from({0.5})), u(tg::Tensor<double>::from({2.0})),
      f(tg::Tensor<double>::from({4.0})), late(tg::Tensor<double>::from({1.0}));
  f.set_requires_grad(false);
  Recorder r;
  r.names = {{w.key(), "w"}, {u.key(), "u"}, {f.key(), "f"}, {late.key(), "late"}};
  std::vector<double> seen;
  r.on_ready = [&](const tg::Parameter<double>& p) {
    if (p == w) seen.push_back(p.grad()[0]);
  };
  tg::Tape<double> tape;
  tape.set_listener(&r);
  auto h = tape.input(tg::Tensor<double>::from({1.0}));
  for (int t = 0; t < 3; ++t) h = times(tape.param(w), h);  // h = w^3
  auto unused = times(tape.param(u), tape.param(f));        // not on the loss's path
  (void)unused;
  auto loss = square(h);          // w^6
  auto after = tape.param(late);  // entered after the loss
  (void)after;
  tape.backward(loss);
  EXPECT_EQ(r.events, (std::vector<std::string>{"u", "w", "done"}));
  ASSERT_EQ(seen.size(), 1u);
  EXPECT_DOUBLE_EQ(seen[0], 6 * std::pow(0.5, 5));  // the whole gradient, all three uses
}

TEST(TapeListener, ClearRemovesItAndRecordingsAreUnique) {
  Recorder r;
  tg::Tape<double> tape, other;
  EXPECT_NE(tape.recording_id(), other.recording_id());
  const uint64_t first = tape.recording_id();
  tape.set_listener(&r);
  tape.clear();
  EXPECT_EQ(tape.listener(), nullptr);
  EXPECT_NE(tape.recording_id(), first);
  // No listener: nothing is called; a sweep that needs no gradient still ends with done.
  tape.set_listener(&r);
  auto x = tape.constant(tg::Tensor<double>::from({1.0}));
  tape.backward(square(x));
  EXPECT_EQ(r.events, (std::vector<std::string>{"done"}));
  // Parameter::enter_recording: first time per recording.
  tg::Parameter<double> p(tg::Tensor<double>::from({1.0}));
  EXPECT_EQ(p.last_recording(), 0u);
  tape.param(p);
  EXPECT_EQ(p.last_recording(), tape.recording_id());
  EXPECT_FALSE(p.enter_recording(tape.recording_id()));
  EXPECT_TRUE(p.enter_recording(other.recording_id()));
}

}  // namespace
