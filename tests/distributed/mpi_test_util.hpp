#pragma once
// Helpers of the MPI tests (tapegrad_mpi_tests, run by ctest under `mpirun -np 2`). Every rank
// runs every test; a test's collectives must be the same on every rank, so value checks use
// EXPECT_* (an ASSERT_* returning early on one rank would leave the other waiting, until
// mpirun's --timeout ends the job).

#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "tapegrad/distributed/distributed.hpp"
#include "tapegrad/tapegrad.hpp"

#ifndef TAPEGRAD_TEST_TMPDIR
#define TAPEGRAD_TEST_TMPDIR "/tmp"
#endif

namespace mpi_test {

namespace tg = tapegrad;
namespace dist = tapegrad::distributed;
namespace nn = tapegrad::nn;

// The job's Environment (created in mpi_main.cpp).
dist::Environment& env();
inline dist::ProcessGroup& world() { return env().world(); }
inline int rank() { return env().rank(); }
inline int world_size() { return env().world_size(); }

inline std::string tmp_path(const std::string& name) {
  return std::string(TAPEGRAD_TEST_TMPDIR) + "/" + name;
}

// Largest |a - b| over two parameter lists of the same shapes.
template <class T>
double max_abs_diff(const std::vector<tg::Parameter<T>>& a,
                    const std::vector<tg::Parameter<T>>& b) {
  double m = 0;
  EXPECT_EQ(a.size(), b.size());
  for (size_t i = 0; i < a.size() && i < b.size(); ++i) {
    EXPECT_EQ(a[i].shape(), b[i].shape());
    if (!(a[i].shape() == b[i].shape())) return INFINITY;
    for (int64_t k = 0; k < a[i].numel(); ++k)
      m = std::max(m, std::abs(double(a[i].value()[k]) - double(b[i].value()[k])));
  }
  return m;
}

template <class T>
double max_abs_diff(const tg::Tensor<T>& a, const tg::Tensor<T>& b) {
  EXPECT_EQ(a.shape(), b.shape());
  if (!(a.shape() == b.shape())) return INFINITY;
  double m = 0;
  for (int64_t k = 0; k < a.numel(); ++k) m = std::max(m, std::abs(double(a[k]) - double(b[k])));
  return m;
}

// True when every rank holds bit for bit the same values in these tensors.
template <class T>
bool identical_on_all_ranks(const std::vector<tg::Tensor<T>>& ts) {
  int64_t n = 0;
  for (const auto& t : ts) n += t.numel();
  tg::Tensor<T> flat(tg::Shape{n});
  int64_t off = 0;
  for (const auto& t : ts) {
    if (t.numel()) std::memcpy(flat.data() + off, t.data(), sizeof(T) * size_t(t.numel()));
    off += t.numel();
  }
  const tg::Tensor<T> all = world().allgather(flat);
  bool same = true;
  for (int r = 1; r < world_size(); ++r)
    same = same && std::memcmp(all.data(), all.data() + r * n, sizeof(T) * size_t(n)) == 0;
  return same;
}

template <class T>
std::vector<tg::Tensor<T>> values_of(const std::vector<tg::Parameter<T>>& ps) {
  std::vector<tg::Tensor<T>> out;
  for (const auto& p : ps) out.push_back(p.value());
  return out;
}

// Rows [first, first + count) of a batch, as a new tensor.
template <class T>
tg::Tensor<T> rows(const tg::Tensor<T>& t, int64_t first, int64_t count) {
  tg::Shape s = t.shape();
  const int64_t row = t.numel() / s[0];
  s[0] = count;
  tg::Tensor<T> out(s);
  std::memcpy(out.data(), t.data() + first * row, sizeof(T) * size_t(count * row));
  return out;
}

inline std::vector<int64_t> rows(const std::vector<int64_t>& v, int64_t first, int64_t count) {
  return {v.begin() + first, v.begin() + first + count};
}

// The error message of f(), or "" when it throws nothing.
template <class F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const std::exception& e) {
    return e.what();
  }
  return {};
}

}  // namespace mpi_test
