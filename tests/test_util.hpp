#pragma once
// Small helpers shared by the tests in tests/*.cpp (one copy instead of one per file).
//
//   #include "test_util.hpp"
//   using tapegrad::testing::expect_values;  // name each helper a file uses
//
// Files import the helpers they use one by one (using-declarations, not `using namespace`),
// so that a file's own helper of the same name (e.g. a differently behaving expect_values)
// never becomes ambiguous. Everything here is header-only and inline.
//
// Errors: expect_error_exact checks the whole message, expect_error_containing only that it
// contains every given part; both fail the test when nothing or another exception is thrown.
// error_message returns the message for tests that check it themselves.
//
// Files: tmp_path puts scratch files in TAPEGRAD_TEST_TMPDIR (CMake sets it to a directory in
// the build tree; "/tmp" when a test is built by hand).

#include <gtest/gtest.h>
#include <sys/stat.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <exception>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "tapegrad/diag/gradcheck.hpp"
#include "tapegrad/random.hpp"
#include "tapegrad/tape.hpp"
#include "tapegrad/tensor.hpp"

#ifndef TAPEGRAD_TEST_TMPDIR
#define TAPEGRAD_TEST_TMPDIR "/tmp"
#endif

namespace tapegrad::testing {

// ---------------------------------------------------------------- tensors to test with

// A tensor of shape s holding start, start + step, start + 2·step, ... in row-major order.
inline Tensor<double> seq(const Shape& s, double start = 1.0, double step = 1.0) {
  Tensor<double> t(s);
  for (int64_t i = 0; i < t.numel(); ++i) t[i] = start + step * static_cast<double>(i);
  return t;
}

// Standard normal values from Generator(seed).
inline Tensor<double> randn(const Shape& s, uint64_t seed) {
  Generator g(seed);
  return Tensor<double>::randn(s, g);
}

// Uniform values in [lo, hi) from Generator(seed).
inline Tensor<double> sample(const Shape& s, uint64_t seed, double lo = -2, double hi = 2) {
  Generator gen(seed);
  return Tensor<double>::rand(s, gen, lo, hi);
}

// The L2 norm of w's slice r along dim 0 (row r of a matrix, output unit r of a [O, ...] weight).
inline double row_norm(const Tensor<double>& w, int64_t r) {
  const int64_t n = w.numel() / w.size(0);
  double s = 0;
  for (int64_t i = 0; i < n; ++i) s += w[r * n + i] * w[r * n + i];
  return std::sqrt(s);
}

// Runs module m (any nn::Module<T>) on x as a constant on a fresh tape; returns a copy of the
// output value.
template <class M, class T>
Tensor<T> run(M& m, const Tensor<T>& x) {
  Tape<T> tape;
  return m(tape.constant(x)).value().clone();
}

// offset + amp·sin(0.37·i + salt) at flat position i: values a Python script can rebuild exactly
// (tests/reference/attention_reference.py fills PyTorch modules this way).
inline Tensor<double> sine_fill(const Shape& s, double salt, double amp = 0.5, double offset = 0) {
  Tensor<double> t(s);
  for (int64_t i = 0; i < t.numel(); ++i) t[i] = offset + amp * std::sin(0.37 * double(i) + salt);
  return t;
}

// Fills parameter k of m.named_parameters() as the reference script's fill_params: LayerNorm
// weights (norm1, norm2, norm) 1 + 0.1·sin, biases 0.1·sin, everything else 0.5·sin, salt k.
template <class M>
void sine_fill_parameters(M& m) {
  int k = 0;
  for (auto& [name, p] : m.named_parameters()) {
    const auto ends = [&](const std::string& suffix) {
      return name.size() >= suffix.size() &&
             name.compare(name.size() - suffix.size(), suffix.size(), suffix) == 0;
    };
    const bool norm = ends("norm1.weight") || ends("norm2.weight") || name == "norm.weight";
    const bool bias = name.find("bias") != std::string::npos;
    p.value().copy_(sine_fill(p.shape(), k++, norm ? 0.1 : bias ? 0.1 : 0.5, norm ? 1.0 : 0.0));
  }
}

// ---------------------------------------------------------------- value and gradient checks

// t has the given shape and its elements equal `expected` within the absolute tolerance tol.
inline void expect_values(const Tensor<double>& t, const std::vector<double>& expected,
                          const Shape& shape, double tol = 1e-12) {
  ASSERT_EQ(t.shape(), shape);
  ASSERT_EQ(t.numel(), static_cast<int64_t>(expected.size()));
  for (int64_t i = 0; i < t.numel(); ++i)
    EXPECT_NEAR(t[i], expected[static_cast<size_t>(i)], tol) << "element " << i;
}

template <class T>
void expect_all_finite(const Tensor<T>& t, const std::string& what) {
  for (int64_t i = 0; i < t.numel(); ++i)
    EXPECT_TRUE(std::isfinite(t[i])) << what << " [" << i << "] = " << t[i];
}

// tapegrad::gradcheck of f with respect to inputs and params, with its default tolerance.
template <class F>
void expect_gradcheck(F f, std::vector<Tensor<double>> inputs,
                      std::vector<Parameter<double>> params = {}) {
  const auto r = gradcheck(f, std::move(inputs), std::move(params));
  EXPECT_TRUE(r) << r;
}

// ---------------------------------------------------------------- errors

// f() throws E whose message is exactly `exact`.
template <class E, class F>
void expect_error_exact(F f, const std::string& exact) {
  try {
    f();
    ADD_FAILURE() << "no exception thrown";
  } catch (const E& e) {
    EXPECT_EQ(std::string(e.what()), exact);
  } catch (const std::exception& e) {
    ADD_FAILURE() << "wrong exception type: " << e.what();
  }
}

// f() throws E whose message contains every one of parts.
template <class E, class F>
void expect_error_containing(F f, const std::vector<std::string>& parts) {
  try {
    f();
    ADD_FAILURE() << "no exception thrown";
  } catch (const E& e) {
    const std::string what = e.what();
    for (const auto& p : parts)
      EXPECT_NE(what.find(p), std::string::npos)
          << "message \"" << what << "\" lacks \"" << p << "\"";
  } catch (const std::exception& e) {
    ADD_FAILURE() << "wrong exception type: " << e.what();
  }
}

// The message of the E that f() throws, or "" if it throws nothing (other exceptions pass).
template <class E, class F>
std::string error_message(F f) {
  try {
    f();
  } catch (const E& e) {
    return e.what();
  }
  return "";
}

// Same shape and the same bytes (NaN payloads and -0 included).
template <class T>
bool same_bits(const Tensor<T>& a, const Tensor<T>& b) {
  return a.shape() == b.shape() &&
         std::memcmp(a.data(), b.data(), sizeof(T) * static_cast<size_t>(a.numel())) == 0;
}

// ---------------------------------------------------------------- heap

// Bytes held through operator new, counted by the replacement in test_no_alloc.cpp (the whole
// test program's). To measure a peak: reset_heap_peak(), run, heap_peak() - the bytes before.
void reset_heap_peak();
long long heap_bytes();
long long heap_peak();

// ---------------------------------------------------------------- files

// TAPEGRAD_TEST_TMPDIR/name.
inline std::string tmp_path(const std::string& name) {
  return std::string(TAPEGRAD_TEST_TMPDIR) + "/" + name;
}

// Writes bytes to path (replacing it) and asserts that it worked.
inline void write_bytes(const std::string& path, const std::vector<uint8_t>& bytes) {
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  f.write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
  ASSERT_TRUE(f.good()) << path;
}

// The whole content of a text file ("" if it cannot be read).
inline std::string read_text_file(const std::string& path) {
  std::ifstream f(path);
  std::stringstream content;
  content << f.rdbuf();
  return content.str();
}

inline bool file_exists(const std::string& path) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0;
}

}  // namespace tapegrad::testing
