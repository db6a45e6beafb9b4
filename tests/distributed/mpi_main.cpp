// main() of tapegrad_mpi_tests: an Environment for the whole run, GoogleTest on every rank.
// Rank 0 prints GoogleTest's usual output; the other ranks print only their failures, each line
// prefixed with "[rank R]". The exit status is the worst of all ranks'.
#include <gtest/gtest.h>

#include <cstdio>

#include "mpi_test_util.hpp"
#include "tapegrad/threads.hpp"

namespace {
tapegrad::distributed::Environment* the_env = nullptr;

class FailurePrinter : public ::testing::EmptyTestEventListener {
 public:
  explicit FailurePrinter(int rank) : rank_(rank) {}
  void OnTestPartResult(const ::testing::TestPartResult& r) override {
    if (!r.failed()) return;
    std::printf("[rank %d] %s:%d: Failure\n%s\n", rank_, r.file_name() ? r.file_name() : "?",
                r.line_number(), r.summary());
    std::fflush(stdout);
  }
  void OnTestEnd(const ::testing::TestInfo& info) override {
    if (info.result()->Failed())
      std::printf("[rank %d] FAILED %s.%s\n", rank_, info.test_suite_name(), info.name());
  }

 private:
  int rank_;
};
}  // namespace

tapegrad::distributed::Environment& mpi_test::env() { return *the_env; }

int main(int argc, char** argv) {
  ::testing::InitGoogleTest(&argc, argv);
  tapegrad::distributed::Environment env(argc, argv);
  the_env = &env;
  tapegrad::set_num_threads(1);  // the ranks share the machine's cores
  if (env.rank() != 0) {
    auto& listeners = ::testing::UnitTest::GetInstance()->listeners();
    delete listeners.Release(listeners.default_result_printer());
    listeners.Append(new FailurePrinter(env.rank()));
  }
  int rc = RUN_ALL_TESTS();
  rc = env.world().allreduce(rc, tapegrad::distributed::ReduceOp::max);
  return rc;
}
