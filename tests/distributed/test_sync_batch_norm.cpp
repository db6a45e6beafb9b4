// SyncBatchNorm on 2 ranks equals BatchNorm on the whole batch: outputs, input gradients,
// running statistics; dγ and dβ summed over the ranks equal BatchNorm's.
#include <gtest/gtest.h>

#include "mpi_test_util.hpp"

namespace {
using namespace mpi_test;
using tg::Tensor;

struct Result {
  Tensor<double> y, dx, dgamma, dbeta;
};

// loss = Σ y·W over the rows [first, first + count) of x and W.
Result run(nn::BatchNorm<double>& bn, const Tensor<double>& x, const Tensor<double>& w,
           int64_t first, int64_t count) {
  tg::Tape<double> tape;
  bn.zero_grad();
  auto xin = tape.input(rows(x, first, count));
  auto y = bn(xin);
  tape.backward(tg::sum(y * rows(w, first, count)));
  return {y.value().clone(), xin.grad().clone(), bn.weight.grad().clone(), bn.bias.grad().clone()};
}

void check_shape(const tg::Shape& s, int64_t count0) {
  const int64_t N = s[0], C = s[1];
  tg::Generator gx(7), gw(8);
  const Tensor<double> x = Tensor<double>::randn(s, gx, 0.3, 2.0);
  const Tensor<double> w = Tensor<double>::randn(s, gw);
  nn::BatchNorm<double> bn(C);
  dist::SyncBatchNorm<double> sbn(C, world());
  for (auto* m :
       {static_cast<nn::BatchNorm<double>*>(&bn), static_cast<nn::BatchNorm<double>*>(&sbn)}) {
    tg::Generator g(9);
    m->weight.value().copy_(Tensor<double>::rand({C}, g, 0.5, 1.5));
    m->bias.value().copy_(Tensor<double>::rand({C}, g, -0.5, 0.5));
  }
  // Rank 0 takes rows [0, count0), rank 1 the rest: unequal shares are fine.
  const int64_t first = rank() == 0 ? 0 : count0, count = rank() == 0 ? count0 : N - count0;
  for (int call = 0; call < 3; ++call) {  // running statistics accumulate over calls
    const Result ref = run(bn, x, w, 0, N);
    const Result got = run(sbn, x, w, first, count);
    EXPECT_LE(max_abs_diff(rows(ref.y, first, count), got.y), 1e-12) << s;
    EXPECT_LE(max_abs_diff(rows(ref.dx, first, count), got.dx), 1e-12) << s;
    Tensor<double> dg = got.dgamma.clone(), db = got.dbeta.clone();
    world().allreduce(dg);
    world().allreduce(db);
    EXPECT_LE(max_abs_diff(ref.dgamma, dg), 1e-12) << s;
    EXPECT_LE(max_abs_diff(ref.dbeta, db), 1e-12) << s;
    EXPECT_LE(max_abs_diff(bn.running_mean, sbn.running_mean), 1e-12) << s;
    EXPECT_LE(max_abs_diff(bn.running_var, sbn.running_var), 1e-12) << s;
    EXPECT_EQ(sbn.num_batches_tracked[0], call + 1.0);
    EXPECT_TRUE(
        identical_on_all_ranks(std::vector<Tensor<double>>{sbn.running_mean, sbn.running_var}));
  }
  // Eval: the running statistics, no communication (rank 0 alone).
  if (rank() == 0) {
    bn.eval();
    sbn.eval();
    const Result ref = run(bn, x, w, 0, N);
    const Result got = run(sbn, x, w, 0, count0);
    EXPECT_LE(max_abs_diff(rows(ref.y, 0, count0), got.y), 1e-12);
    EXPECT_LE(max_abs_diff(rows(ref.dx, 0, count0), got.dx), 1e-12);
  }
  world().barrier();
}

TEST(SyncBatchNorm, ImagesMatchBatchNormOnTheWholeBatch) { check_shape({8, 3, 4, 5}, 4); }
TEST(SyncBatchNorm, VectorsMatchBatchNormOnTheWholeBatch) { check_shape({8, 70}, 4); }
TEST(SyncBatchNorm, UnequalSharesMatchBatchNormOnTheWholeBatch) { check_shape({7, 3, 2, 2}, 5); }

TEST(SyncBatchNorm, ConvertInPlace) {
  auto m = std::make_shared<nn::Sequential<double>>();
  m->push_back(std::make_shared<nn::Conv2D<double>>(1, 2, 3));
  m->push_back(std::make_shared<nn::BatchNorm2d<double>>(2));
  m->push_back(std::make_shared<nn::BasicBlock<double>>(2, 4, 2));
  EXPECT_EQ(dist::convert_sync_batchnorm(*m, world()), 4);  // stem, bn1, bn2, downsample.1
  EXPECT_EQ((*m)[1]->name(), "SyncBatchNorm(2)");
  auto& block = m->at<nn::BasicBlock<double>>(2);
  EXPECT_NE(block.bn1->stats_reducer(), nullptr);
  EXPECT_EQ(block.bn1->stats_reducer(), block.bn2->stats_reducer());  // one communicator
  EXPECT_EQ(dist::SyncBatchNorm<double>(3, world()).name(), "SyncBatchNorm(3)");
  // A converted model behaves as BatchNorm on the whole batch: checked end to end in
  // test_data_parallel.cpp (CnnSyncBatchNorm*).
  // summary() runs a training forward on one rank only: it must not communicate.
  if (rank() == 0) {
    EXPECT_NE(m->summary({2, 1, 8, 8}).find("SyncBatchNorm(2)"), std::string::npos);
  }
  world().barrier();
}

// One value per channel over all ranks: the same error on both.
TEST(SyncBatchNorm, TooFewValuesRaisesOnEveryRank) {
  dist::SyncBatchNorm<double> sbn(3, world());
  tg::Tape<double> tape;
  const Tensor<double> x = Tensor<double>::ones({rank() == 0 ? 1 : 0, 3});
  const std::string e = error_of([&] { sbn(tape.constant(x)); });
  EXPECT_NE(e.find("Expected more than 1 value per channel when training"), std::string::npos) << e;
  EXPECT_NE(e.find("1 values per channel over all processes"), std::string::npos) << e;
}

}  // namespace
