// Chapter 1: tensors, the tape and backward.
// Builds as guide_01_tape; exits non-zero if a claim of the chapter is false.
#include <cmath>
#include <cstdio>
#include <iostream>
#include <tapegrad/tapegrad.hpp>

static int failures = 0;
static void check(bool ok, const char* claim) {
  std::printf("%s %s\n", ok ? "[ok]    " : "[FAILED]", claim);
  failures += !ok;
}

int main() {
  using tg::Tensor;
  using tg::Var;

  // Tensors: row-major storage shared between copies; clone() copies the data.
  auto a = Tensor<double>::from({{1, 2, 3}, {4, 5, 6}});
  Tensor<double> shared = a;
  Tensor<double> copy = a.clone();
  shared(0, 0) = 10;
  std::cout << "a = " << a << "\n";
  check(a(0, 0) == 10 && copy(0, 0) == 1, "a copy shares storage, clone() copies");

  // The tape records every op; backward is one reverse sweep. d/dx sum(x * x) = 2x.
  tg::Tape<double> tape;
  Var<double> x = tape.input(copy);
  Var<double> y = tg::sum(x * x);
  tape.backward(y);
  std::cout << "y = " << y.item() << ", dy/dx = " << x.grad() << "\n";
  check((x.grad().array() == 2 * copy.array()).all(), "d/dx sum(x^2) = 2x");

  // A parameter lives outside the tape; backward adds into its grad().
  // L = sum(sigmoid(z)), z = x wᵀ. Keep the gradient of the intermediate z with retain_grad().
  tg::Parameter<double> w(Tensor<double>::from({{0.5, -1.0, 0.25}}));  // [out 1, in 3]
  tape.clear();  // forget the nodes, keep their buffers
  Var<double> z = tg::linear(tape.constant(copy), tape.param(w));  // [2, 1]
  z.retain_grad();
  Var<double> h = tg::sigmoid(z);
  tape.backward(tg::sum(h));
  std::cout << "z = " << z.value() << "\ndL/dz = " << z.grad() << "\ndL/dw = " << w.grad() << "\n";
  // The chain rule by hand: dL/dz = s(z)(1 - s(z)), dL/dw = sum over rows of dL/dz · x.
  double err = 0;
  for (int r = 0; r < 2; ++r) {
    const double s = 1 / (1 + std::exp(-z.value()(r, 0)));
    err = std::max(err, std::abs(z.grad()(r, 0) - s * (1 - s)));
  }
  for (int j = 0; j < 3; ++j) {
    const double g = z.grad()(0, 0) * copy(0, j) + z.grad()(1, 0) * copy(1, j);
    err = std::max(err, std::abs(w.grad()(0, j) - g));
  }
  check(err < 1e-15, "dL/dz = s(z)(1 - s(z)) and dL/dw = sum_rows dL/dz * x");

  // An intermediate value's gradient is freed once used, unless retained (PyTorch's rule).
  try {
    h.grad();
    check(false, "grad() of a non-retained intermediate throws");
  } catch (const tg::TapeError& e) {
    std::cout << "h.grad(): " << e.what() << "\n";
    check(true, "grad() of a non-retained intermediate throws");
  }

  // Gradients add up over backward calls until zero_grad(), as in PyTorch.
  const double g0 = w.grad()(0, 0);
  tape.clear();
  tape.backward(tg::sum(tg::sigmoid(tg::linear(tape.constant(copy), tape.param(w)))));
  check(w.grad()(0, 0) == 2 * g0, "a second backward adds into w.grad()");
  w.zero_grad();
  check(w.grad()(0, 0) == 0, "zero_grad() clears it");

  // Under NoGradGuard ops compute values but record no backward (torch.no_grad()).
  {
    tg::NoGradGuard no_grad;
    tape.clear();
    Var<double> p = tg::linear(tape.constant(copy), tape.param(w));
    check(!p.requires_grad(), "under NoGradGuard nothing requires a gradient");
  }

  // Errors name the op and the shapes.
  try {
    tape.clear();
    tg::matmul(tape.constant(copy), tape.constant(copy));
  } catch (const tg::ShapeError& e) {
    std::cout << "matmul: " << e.what() << "\n";
  }

  // Every op's backward is checked against central finite differences (in double).
  auto r = tg::gradcheck(
      [](tg::Tape<double>&, const std::vector<Var<double>>& v) {
        return tg::sum(tg::tanh(v[0]) * v[1]);
      },
      {a, copy});
  std::cout << r << "\n";
  check(r.ok, "gradcheck: tanh and * agree with finite differences");
  return failures == 0 ? 0 : 1;
}
