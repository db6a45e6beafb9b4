#pragma once
/// \file
/// gradcheck: compares the tape's gradients with central finite differences, in double.
///
///   auto r = tg::gradcheck([](tg::Tape<double>& t, const std::vector<tg::Var<double>>& x) {
///     return tg::sum(tg::tanh(x[0]) * x[1]);
///   }, {a, b});
///   EXPECT_TRUE(r) << r;   // prints the worst element: analytic vs numeric
///
/// f may return a non-scalar: the check then differentiates sum(w * f) for fixed random w, so
/// every output element takes part. Parameters named in `params` are checked too (f reaches
/// them through tape.param or a module). f must be deterministic.
/// The error of one element is |analytic - numeric| / max(1, |analytic|, |numeric|): relative
/// for large gradients, absolute for small ones.

#include <algorithm>
#include <cmath>
#include <functional>
#include <ostream>
#include <string>
#include <vector>

#include "tapegrad/tape.hpp"

namespace tapegrad {

/// The outcome of gradcheck: whether every element agreed, and the worst one.
struct GradcheckResult {
  /// Whether every element's error is within the tolerance.
  bool ok = true;
  double max_error = 0;  ///< the worst element's error (see above)
  std::string worst;     ///< "input 1 [5]" or "param 0 [3]"
  ///@{
  /// The worst element's analytic (tape) and numeric (finite-difference) gradient.
  double analytic = 0, numeric = 0;
  ///@}
  int64_t checked = 0;  ///< number of elements compared
  /// ok.
  explicit operator bool() const { return ok; }
  /// Writes "gradcheck passed/FAILED: worst ... analytic ... numeric ... error ... over ...
  /// elements".
  friend std::ostream& operator<<(std::ostream& os, const GradcheckResult& r) {
    return os << "gradcheck " << (r.ok ? "passed" : "FAILED") << ": worst " << r.worst
              << " analytic " << r.analytic << " numeric " << r.numeric << " error " << r.max_error
              << " over " << r.checked << " elements";
  }
};

/// The function gradcheck differentiates: builds its output on the tape from the input Vars.
using GradcheckFn =
    std::function<Var<double>(Tape<double>&, const std::vector<Var<double>>& inputs)>;

/// Compares the tape's gradients of f with respect to inputs and params with central differences of
/// step eps; ok when every element's error (see the file's description) is at most tolerance.
inline GradcheckResult gradcheck(const GradcheckFn& f, std::vector<Tensor<double>> inputs,
                                 std::vector<Parameter<double>> params = {},
                                 double tolerance = 1e-6, double eps = 1e-6) {
  for (auto& x : inputs) x = x.clone();  // perturbed in place below
  Tape<double> tape;
  Tensor<double> weights;  // contraction of a non-scalar output
  std::vector<Var<double>> vars;
  auto evaluate = [&](bool with_grad) {
    tape.clear();
    vars.clear();
    for (auto& x : inputs) vars.push_back(with_grad ? tape.input(x) : tape.constant(x));
    Var<double> out = f(tape, vars);
    if (weights.numel() != out.numel()) {
      Generator g(1234);
      weights = out.numel() == 1 ? Tensor<double>::ones(out.shape())
                                 : Tensor<double>::rand(out.shape(), g, 0.5, 1.5);
    }
    double v = 0;
    for (int64_t i = 0; i < out.numel(); ++i) v += weights[i] * out.value()[i];
    return std::make_pair(out, v);
  };

  for (auto& p : params) p.zero_grad();
  std::vector<Tensor<double>> analytic;
  {
    auto [out, v] = evaluate(true);
    (void)v;
    tape.backward(out, weights.reshape(out.shape()));
    for (auto& x : vars) analytic.push_back(x.grad().clone());
    for (auto& p : params) analytic.push_back(p.grad().clone());
  }

  GradcheckResult r;
  auto compare = [&](Tensor<double>& x, const Tensor<double>& a, const std::string& name) {
    for (int64_t i = 0; i < x.numel(); ++i) {
      const double saved = x[i];
      x[i] = saved + eps;
      const double up = evaluate(false).second;
      x[i] = saved - eps;
      const double down = evaluate(false).second;
      x[i] = saved;
      const double numeric = (up - down) / (2 * eps);
      const double err =
          std::abs(a[i] - numeric) / std::max({1.0, std::abs(a[i]), std::abs(numeric)});
      ++r.checked;
      if (!(err <= r.max_error) || r.worst.empty()) {  // NaN is worse than anything
        r.max_error = std::isnan(err) ? INFINITY : err;
        r.worst = name + " [" + std::to_string(i) + "]";
        r.analytic = a[i];
        r.numeric = numeric;
      }
      if (!(err <= tolerance)) r.ok = false;
    }
  };
  for (size_t k = 0; k < inputs.size(); ++k)
    compare(inputs[k], analytic[k], "input " + std::to_string(k));
  for (size_t k = 0; k < params.size(); ++k)
    compare(params[k].value(), analytic[inputs.size() + k], "param " + std::to_string(k));
  return r;
}

}  // namespace tapegrad
