// A failing rank ends the whole job instead of leaving the others waiting. These scenarios abort
// the job on purpose, so they are DISABLED_ in the normal run; ctest runs each alone
// (expect_abort.cmake: mpirun must end with a non-zero status, within the time limit, having
// printed the failing rank's message).
#include <gtest/gtest.h>

#include <cstdio>
#include <stdexcept>
#include <thread>

#include "mpi_test_util.hpp"

namespace {
using namespace mpi_test;

// distributed::run: rank 1 throws while rank 0 waits in a barrier.
TEST(AbortScenario, DISABLED_RunAbortsOnException) {
  dist::run([] {
    if (rank() == 1) throw tg::ValueError("boom on rank 1");
    world().barrier();
    std::printf("scenario was not aborted\n");
  });
}

// The Environment's terminate handler: an exception nobody catches (here: escaping a thread's
// function) on rank 1, while rank 0 waits in an allreduce.
TEST(AbortScenario, DISABLED_UncaughtExceptionAborts) {
  if (rank() == 1) std::thread([] { throw std::runtime_error("uncaught on rank 1"); }).join();
  tg::Tensor<double> t = tg::Tensor<double>::ones({4});
  world().allreduce(t);
  std::printf("scenario was not aborted\n");
}

// In the middle of training: rank 1 fails after its backward pass started the averaging (its
// DistributedDataParallel is destroyed with buckets pending); rank 0 goes on to its next step.
TEST(AbortScenario, DISABLED_ExceptionDuringTrainingAborts) {
  dist::run([] {
    tg::Generator g(1);
    auto m = std::make_shared<nn::Sequential<double>>();
    m->push_back(std::make_shared<nn::Dense<double>>(4, 4, true, g));
    m->push_back(std::make_shared<nn::Dense<double>>(4, 2, true, g));
    dist::DistributedDataParallel<double> ddp(m, world());
    tg::optim::SGD<double> opt(ddp.named_parameters(), {.lr = 0.1});
    ddp.attach(opt);
    tg::Tape<double> tape;
    for (int s = 0; s < 3; ++s) {
      tape.clear();
      opt.zero_grad();
      tape.backward(
          tg::cross_entropy(ddp(tape.constant(tg::Tensor<double>::ones({3, 4}))), {0, 1, 0}));
      if (rank() == 1 && s == 1) throw tg::ShapeError("failure in training on rank 1");
      opt.step();
    }
    std::printf("scenario was not aborted\n");
  });
}

}  // namespace
