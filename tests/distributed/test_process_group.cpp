// Environment and ProcessGroup on 2 ranks: every collective, blocking and non-blocking, on values
// whose results are known by hand.
#include <gtest/gtest.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <thread>

#include "mpi_test_util.hpp"

namespace {
using namespace mpi_test;
using dist::ReduceOp;
using tg::Tensor;

TEST(Environment, RanksAndSizes) {
  EXPECT_EQ(world_size(), 2);
  EXPECT_GE(rank(), 0);
  EXPECT_LT(rank(), 2);
  EXPECT_EQ(world().size(), 2);
  EXPECT_EQ(world().rank(), rank());
  // One machine: the local rank is the rank.
  EXPECT_EQ(env().local_size(), 2);
  EXPECT_EQ(env().local_rank(), rank());
  EXPECT_EQ(env().thread_level(), MPI_THREAD_MULTIPLE);
  // Both ranks distinct.
  const Tensor<double> r = world().allgather(Tensor<double>::scalar(rank()));
  EXPECT_EQ(r.shape(), tg::Shape({2}));
  EXPECT_EQ(r[0], 0.0);
  EXPECT_EQ(r[1], 1.0);
}

TEST(Environment, SecondEnvironmentIsRefused) {
  EXPECT_THROW(dist::Environment second, dist::DistributedError);
}

// The Environment's default must have reached Open MPI (read back through the MPI tool
// interface), unless the user set mpi_yield_when_idle to 0 (the Environment only ever sets 1).
TEST(Environment, OpenMpiYieldsWhenIdle) {
  const char* set = std::getenv("OMPI_MCA_mpi_yield_when_idle");
  const int expected = set != nullptr && std::string(set) == "0" ? 0 : 1;
  int provided = 0;
  ASSERT_EQ(MPI_T_init_thread(MPI_THREAD_SINGLE, &provided), MPI_SUCCESS);
  int index = -1;
  if (MPI_T_cvar_get_index("mpi_yield_when_idle", &index) != MPI_SUCCESS) {
    MPI_T_finalize();
    GTEST_SKIP() << "not Open MPI: no mpi_yield_when_idle";
  }
  MPI_T_cvar_handle handle;
  int count = 0;
  ASSERT_EQ(MPI_T_cvar_handle_alloc(index, nullptr, &handle, &count), MPI_SUCCESS);
  ASSERT_EQ(count, 1);
  unsigned char value[8] = {};  // a C bool in Open MPI: its first byte
  ASSERT_EQ(MPI_T_cvar_read(handle, value), MPI_SUCCESS);
  MPI_T_cvar_handle_free(&handle);
  MPI_T_finalize();
  EXPECT_EQ(value[0], expected);
}

TEST(Environment, RankSeed) {
  EXPECT_EQ(dist::rank_seed(42, 0), 42u);
  EXPECT_NE(dist::rank_seed(42, 1), 42u);
  EXPECT_NE(dist::rank_seed(42, 1), dist::rank_seed(42, 2));
  EXPECT_NE(dist::rank_seed(42, 1), dist::rank_seed(43, 1));
  EXPECT_EQ(dist::rank_seed(42, 1), dist::rank_seed(42, 1));
}

// Rank r holds [r+1, 10(r+1), -(r+1)].
Tensor<double> ranked() {
  const double v = rank() + 1;
  return Tensor<double>::from({v, 10 * v, -v});
}

TEST(ProcessGroup, AllreduceBlocking) {
  Tensor<double> t = ranked();
  world().allreduce(t);  // sum
  EXPECT_EQ(t[0], 3.0);
  EXPECT_EQ(t[1], 30.0);
  EXPECT_EQ(t[2], -3.0);
  t = ranked();
  world().allreduce(t, ReduceOp::avg);
  EXPECT_EQ(t[0], 1.5);
  EXPECT_EQ(t[1], 15.0);
  EXPECT_EQ(t[2], -1.5);
  t = ranked();
  world().allreduce(t, ReduceOp::max);
  EXPECT_EQ(t[0], 2.0);
  EXPECT_EQ(t[1], 20.0);
  EXPECT_EQ(t[2], -1.0);
  t = ranked();
  world().allreduce(t, ReduceOp::min);
  EXPECT_EQ(t[0], 1.0);
  EXPECT_EQ(t[2], -2.0);
  Tensor<float> f = Tensor<float>::full({1000}, float(rank() + 1) / 4);
  world().allreduce(f, ReduceOp::avg);
  for (int64_t i = 0; i < f.numel(); ++i) ASSERT_EQ(f[i], 0.375f);
  Tensor<int64_t> n = Tensor<int64_t>::full({2}, rank() + 5);
  world().allreduce(n, ReduceOp::sum);
  EXPECT_EQ(n[0], 11);
}

TEST(ProcessGroup, AllreduceScalars) {
  EXPECT_EQ(world().allreduce(rank() + 1), 3);
  EXPECT_EQ(world().allreduce(0.5 * (rank() + 1), ReduceOp::avg), 0.75);
  EXPECT_EQ(world().allreduce(int64_t(rank()), ReduceOp::max), 1);
  EXPECT_THROW(world().allreduce(rank(), ReduceOp::avg), tg::ValueError);
}

TEST(ProcessGroup, AllreduceNonBlocking) {
  Tensor<double> a = ranked(), b = ranked(), c = ranked();
  dist::Work wa = world().allreduce_async(a);
  dist::Work wb = world().allreduce_async(b, ReduceOp::avg);
  dist::Work wc = world().allreduce_async(c, ReduceOp::max);
  EXPECT_FALSE(wa.completed());
  // test() until done: it never blocks, and completes in a bounded time.
  const auto start = std::chrono::steady_clock::now();
  while (!wa.test()) ASSERT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(30));
  EXPECT_TRUE(wa.completed());
  wb.wait();
  wc.wait();
  wc.wait();  // a second wait returns at once
  EXPECT_EQ(a[0], 3.0);
  EXPECT_EQ(a[1], 30.0);
  EXPECT_EQ(b[0], 1.5);  // avg divides on completion
  EXPECT_EQ(b[2], -1.5);
  EXPECT_EQ(c[1], 20.0);
  // A Work destroyed while pending completes its operation first.
  Tensor<double> d = ranked();
  { dist::Work w = world().allreduce_async(d); }
  EXPECT_EQ(d[0], 3.0);
}

TEST(ProcessGroup, Broadcast) {
  Tensor<double> t = ranked();
  world().broadcast(t, 1);  // rank 1's [2, 20, -2]
  EXPECT_EQ(t[0], 2.0);
  EXPECT_EQ(t[1], 20.0);
  EXPECT_EQ(t[2], -2.0);
  Tensor<float> u = Tensor<float>::full({5}, float(rank() + 7));
  dist::Work w = world().broadcast_async(u, 0);
  w.wait();
  EXPECT_EQ(u[4], 7.0f);
  EXPECT_EQ(world().broadcast(std::string(rank() == 0 ? "from zero" : "x"), 0), "from zero");
  EXPECT_THROW(world().broadcast(t, 2), tg::ValueError);
  EXPECT_THROW(world().broadcast(t, -1), tg::ValueError);
}

TEST(ProcessGroup, Allgather) {
  const Tensor<double> t = Tensor<double>::from({{rank() * 1.0, 1.0}, {2.0, rank() + 3.0}});
  const Tensor<double> all = world().allgather(t);
  EXPECT_EQ(all.shape(), tg::Shape({2, 2, 2}));
  const double expected[] = {0, 1, 2, 3, 1, 1, 2, 4};
  for (int i = 0; i < 8; ++i) EXPECT_EQ(all[i], expected[i]) << i;
  Tensor<float> out;
  dist::Work w = world().allgather_async(Tensor<float>::full({3}, float(rank())), out);
  w.wait();
  EXPECT_EQ(out.shape(), tg::Shape({2, 3}));
  EXPECT_EQ(out[2], 0.0f);
  EXPECT_EQ(out[3], 1.0f);
  const auto s = world().allgather(std::string(size_t(rank() + 1), char('a' + rank())));
  ASSERT_EQ(s.size(), 2u);
  EXPECT_EQ(s[0], "a");
  EXPECT_EQ(s[1], "bb");
}

// A barrier returns only once every rank has entered it: rank 1 writes a file, sleeps, then
// enters; rank 0, past the barrier, must see the file and must have waited.
void barrier_check(bool async) {
  const std::string path = tmp_path(std::string("barrier_") + (async ? "async" : "blocking"));
  std::remove(path.c_str());
  world().barrier();
  const auto start = std::chrono::steady_clock::now();
  if (rank() == 1) {
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
    std::ofstream(path) << "here";
  }
  if (async) {
    dist::Work w = world().barrier_async();
    w.wait();
  } else {
    world().barrier();
  }
  if (rank() == 0) {
    EXPECT_TRUE(std::ifstream(path).good());
    EXPECT_GE(std::chrono::steady_clock::now() - start, std::chrono::milliseconds(190));
  }
  world().barrier();
}
TEST(ProcessGroup, BarrierBlocking) { barrier_check(false); }
TEST(ProcessGroup, BarrierNonBlocking) { barrier_check(true); }

TEST(ProcessGroup, Errors) {
  Tensor<int64_t> n = Tensor<int64_t>::zeros({2});
  EXPECT_THROW(world().allreduce(n, ReduceOp::avg), tg::ValueError);
  EXPECT_THROW(world().allreduce_async(n, ReduceOp::avg), tg::ValueError);
}

}  // namespace
