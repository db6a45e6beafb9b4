#pragma once
// Shared fixtures of the update-rule tests (test_optim_sgd/adam/rmsprop.cpp): two parameters
// with given values, a given gradient for each of three steps, and a comparison of the
// optimizer's parameters with reference values the test computes element by element from the
// documented equations.

#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "tapegrad/parameter.hpp"

namespace optim_check {

namespace tg = tapegrad;

// Parameter k's initial element i.
inline double initial(int k, int64_t i) { return std::sin(1.3 * double(i) + 0.4 + k); }
// The gradient of parameter k's element i at step t (0, 1, 2): a large first gradient, then
// smaller ones, so that amsgrad's running maximum matters.
inline double gradient(int k, int64_t i, int t) {
  const double scale[] = {2.0, 0.1, 0.5};
  return scale[t] * std::sin(0.7 * double(i) + 1.1 * t + k) + 0.05 * (t - 1);
}

// A [2,3] and a [4] parameter.
inline std::vector<tg::Parameter<double>> make_params() {
  std::vector<tg::Parameter<double>> ps;
  const tg::Shape shapes[] = {tg::Shape{2, 3}, tg::Shape{4}};
  for (int k = 0; k < 2; ++k) {
    tg::Tensor<double> v(shapes[k]);
    for (int64_t i = 0; i < v.numel(); ++i) v[i] = initial(k, i);
    ps.emplace_back(v);
  }
  return ps;
}

inline void set_grads(const std::vector<tg::Parameter<double>>& ps, int t) {
  for (int k = 0; k < static_cast<int>(ps.size()); ++k)
    for (int64_t i = 0; i < ps[k].numel(); ++i) ps[k].grad()[i] = gradient(k, i, t);
}

// Runs three steps of opt, setting the given gradients before each.
template <class Opt>
void run_three_steps(Opt& opt, const std::vector<tg::Parameter<double>>& ps) {
  for (int t = 0; t < 3; ++t) {
    set_grads(ps, t);
    opt.step();
  }
}

// ref(k, i) gives the expected value of parameter k's element i after the three steps.
template <class Ref>
void expect_params(const std::vector<tg::Parameter<double>>& ps, Ref ref, double rtol = 1e-12) {
  for (int k = 0; k < static_cast<int>(ps.size()); ++k)
    for (int64_t i = 0; i < ps[k].numel(); ++i) {
      const double want = ref(k, i), got = ps[k].value()[i];
      EXPECT_NEAR(got, want, rtol * std::abs(want) + 1e-300) << "param " << k << " element " << i;
      EXPECT_NE(got, initial(k, i)) << "param " << k << " element " << i << " did not move";
    }
}

}  // namespace optim_check
