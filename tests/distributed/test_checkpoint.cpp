// Checkpoints of data-parallel training: rank 0 writes, every rank reads, and 10 + 10 steps
// with a restart in between give bit for bit the 20 uninterrupted steps (with Dropout, whose
// per-rank streams resume too). Failures reach every rank as the same error.
#include <gtest/gtest.h>
#include <sys/stat.h>

#include <cstdio>

#include "mpi_test_util.hpp"

namespace {
using namespace mpi_test;
using tg::Tensor;

std::shared_ptr<nn::Sequential<float>> model(uint64_t seed) {
  tg::Generator g(seed);
  auto m = std::make_shared<nn::Sequential<float>>();
  m->push_back(std::make_shared<nn::Dense<float>>(8, 16, true, g));
  m->push_back(std::make_shared<nn::ReLU<float>>());
  m->push_back(std::make_shared<nn::Dropout<float>>(0.25, g));
  m->push_back(std::make_shared<nn::Dense<float>>(16, 3, true, g));
  return m;
}

struct Training {
  std::shared_ptr<nn::Sequential<float>> m;
  std::unique_ptr<dist::DistributedDataParallel<float>> ddp;
  std::unique_ptr<tg::optim::Adam<float>> opt;
  explicit Training(uint64_t seed) : m(model(seed)) {
    ddp = std::make_unique<dist::DistributedDataParallel<float>>(m, world());
    opt = std::make_unique<tg::optim::Adam<float>>(ddp->named_parameters(),
                                                   tg::optim::AdamOptions{.lr = 1e-2});
    ddp->attach(*opt);
  }
  void steps(int from, int to) {
    tg::Tape<float> tape;
    for (int s = from; s < to; ++s) {
      tg::Generator g(uint64_t(100 * s + rank()));  // each rank its own data, per step
      const Tensor<float> x = Tensor<float>::randn({5, 8}, g);
      std::vector<int64_t> y;
      for (int i = 0; i < 5; ++i) y.push_back(int64_t(g.below(3)));
      tape.clear();
      opt->zero_grad();
      tape.backward(tg::cross_entropy((*ddp)(tape.constant(x)), y));
      opt->step();
    }
  }
};

TEST(DistributedCheckpoint, ResumeEqualsUninterrupted) {
  const std::string path = tmp_path("ddp_resume.safetensors");
  Training straight(1);
  straight.steps(0, 20);

  Training first(1);
  first.steps(0, 10);
  dist::save_checkpoint(path, *first.ddp, *first.opt, {{"step", "10"}});
  struct stat st {};
  EXPECT_EQ(stat(path.c_str(), &st), 0);  // complete on every rank's return

  Training second(rank() == 0 ? 2 : 3);  // a fresh start, other weights and Dropout seeds
  const tg::io::Metadata meta = dist::load_checkpoint(path, *second.ddp, *second.opt);
  bool found = false;
  for (const auto& [k, v] : meta) found = found || (k == "step" && v == "10");
  EXPECT_TRUE(found);
  second.steps(10, 20);
  const auto a = straight.m->parameters(), b = second.m->parameters();
  for (size_t i = 0; i < a.size(); ++i)
    for (int64_t k = 0; k < a[i].numel(); ++k) ASSERT_EQ(a[i].value()[k], b[i].value()[k]) << i;
  EXPECT_TRUE(identical_on_all_ranks(values_of(b)));
  // The file is a one-process checkpoint: names without "module.".
  auto plain = model(5);
  tg::io::load_checkpoint(path, *plain);
  EXPECT_EQ(plain->parameters()[0].value()[0], first.m->parameters()[0].value()[0]);
  world().barrier();
  if (rank() == 0) std::remove(path.c_str());
}

TEST(DistributedCheckpoint, FailuresReachEveryRank) {
  Training run(1);
  // Rank 0 cannot write: both ranks throw its error.
  const std::string e = error_of(
      [&] { dist::save_checkpoint(tmp_path("no_such_dir/x.safetensors"), *run.ddp, *run.opt); });
  EXPECT_NE(e.find("save_checkpoint (rank 0)"), std::string::npos) << e;
  // Only rank 1 cannot read (its path does not exist): both throw, naming rank 1.
  const std::string good = tmp_path("ddp_failures.safetensors");
  dist::save_checkpoint(good, *run.ddp);
  const std::string e2 =
      error_of([&] { dist::load_checkpoint(rank() == 0 ? good : good + ".missing", *run.ddp); });
  EXPECT_NE(e2.find("load_checkpoint: failed on rank 1:"), std::string::npos) << e2;
  world().barrier();
  if (rank() == 0) std::remove(good.c_str());
}

}  // namespace
