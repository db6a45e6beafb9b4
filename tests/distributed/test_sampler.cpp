// DistributedSampler: PyTorch's padding and drop_last, disjoint shards covering the data set,
// and with a DataLoader on 2 ranks the global batches of a one-process loader.
#include <gtest/gtest.h>

#include <algorithm>
#include <map>

#include "mpi_test_util.hpp"

namespace {
using namespace mpi_test;
using dist::DistributedSampler;

// Every rank's indices of one epoch, for p replicas (no communication: explicit ranks).
std::vector<std::vector<int64_t>> shards(int64_t n, int p, dist::DistributedSamplerOptions o,
                                         int64_t epoch = 0) {
  std::vector<std::vector<int64_t>> out;
  for (int r = 0; r < p; ++r) {
    DistributedSampler s(n, p, r, o);
    s.set_epoch(epoch);
    out.push_back(s.indices());
  }
  return out;
}

TEST(DistributedSampler, PaddingAsPyTorch) {
  // n = 10, p = 3, no shuffle: [0..9] padded with 0, 1 to 12; rank r takes r, r+3, ...
  const auto s = shards(10, 3, {.shuffle = false});
  EXPECT_EQ(s[0], (std::vector<int64_t>{0, 3, 6, 9}));
  EXPECT_EQ(s[1], (std::vector<int64_t>{1, 4, 7, 0}));
  EXPECT_EQ(s[2], (std::vector<int64_t>{2, 5, 8, 1}));
  EXPECT_EQ(DistributedSampler(10, 3, 0, {.shuffle = false}).total_size(), 12);
  // Padding longer than the data set repeats it: n = 2, p = 5 -> [0,1,0,1,0].
  const auto t = shards(2, 5, {.shuffle = false});
  for (int r = 0; r < 5; ++r) EXPECT_EQ(t[size_t(r)], (std::vector<int64_t>{r % 2}));
  // drop_last: cut to p * ceil((n - p) / p) = 9.
  const auto d = shards(10, 3, {.shuffle = false, .drop_last = true});
  EXPECT_EQ(d[0], (std::vector<int64_t>{0, 3, 6}));
  EXPECT_EQ(d[2], (std::vector<int64_t>{2, 5, 8}));
  EXPECT_EQ(DistributedSampler(2, 3, 0, {.drop_last = true}).size(), 0);
  EXPECT_EQ(DistributedSampler(9, 3, 0, {.drop_last = true}).size(), 3);
  EXPECT_EQ(DistributedSampler(0, 3, 1).size(), 0);
}

TEST(DistributedSampler, ShardsDisjointAndCovering) {
  for (bool drop_last : {false, true})
    for (int64_t n : {60, 61, 67}) {
      const int p = 4;
      const auto s = shards(n, p, {.shuffle = true, .seed = 5, .drop_last = drop_last}, 3);
      std::map<int64_t, int> count;
      for (const auto& shard : s) {
        EXPECT_EQ(int64_t(shard.size()), s[0].size());  // equal lengths
        for (int64_t i : shard) {
          EXPECT_GE(i, 0);
          EXPECT_LT(i, n);
          ++count[i];
        }
      }
      const int64_t total = int64_t(s[0].size()) * p;
      if (!drop_last) {
        EXPECT_EQ(int64_t(count.size()), n);    // covering
        EXPECT_EQ(total - n, (p - n % p) % p);  // only the padding repeats
        for (auto [i, c] : count) EXPECT_LE(c, 2);
      } else {
        EXPECT_EQ(int64_t(count.size()), total);  // disjoint, nothing repeated
        EXPECT_GE(total, n - p + 1);
      }
    }
}

TEST(DistributedSampler, EpochsAndSeeds) {
  DistributedSampler a(100, 2, 0, {.seed = 1});
  const auto e0 = a.indices();
  a.set_epoch(1);
  const auto e1 = a.indices();
  EXPECT_NE(e0, e1);  // a new order every epoch
  a.set_epoch(0);
  EXPECT_EQ(a.indices(), e0);  // replayable
  EXPECT_NE(DistributedSampler(100, 2, 0, {.seed = 2}).indices(), e0);
  // One replica: the permutation a shuffling DataLoader with that seed visits.
  std::vector<int64_t> perm(100);
  tg::io::epoch_permutation(1, 0, perm);
  EXPECT_EQ(DistributedSampler(100, 1, 0, {.seed = 1}).indices(), perm);
  EXPECT_THROW(DistributedSampler(10, 2, 2), tg::ValueError);
  EXPECT_THROW(DistributedSampler(10, 0, 0), tg::ValueError);
  EXPECT_THROW(DistributedSampler(-1, 2, 0), tg::ValueError);
}

TEST(DistributedSampler, OverTheGroup) {
  auto s =
      std::make_shared<DistributedSampler>(25, world(), dist::DistributedSamplerOptions{.seed = 3});
  EXPECT_EQ(s->num_replicas(), 2);
  EXPECT_EQ(s->rank(), rank());
  EXPECT_EQ(s->size(), 13);
  // The ranks' shards together: every index, one of them twice (the padding).
  const std::vector<int64_t> mine = s->indices();
  tg::Tensor<double> t(tg::Shape{13});
  for (int i = 0; i < 13; ++i) t[i] = double(mine[size_t(i)]);
  const tg::Tensor<double> all = world().allgather(t);
  std::map<int64_t, int> count;
  for (int64_t i = 0; i < all.numel(); ++i) ++count[int64_t(all[i])];
  EXPECT_EQ(count.size(), 25u);
  // Different seeds on the ranks: an error on both.
  const std::string e =
      error_of([&] { DistributedSampler bad(25, world(), {.seed = uint64_t(rank())}); });
  EXPECT_NE(e.find("DistributedSampler: the ranks disagree"), std::string::npos) << e;
}

// With a DataLoader: batch k of the two ranks together is batch k of one shuffling loader with
// twice the batch size and the same seed.
TEST(DistributedSampler, DataLoaderGlobalBatches) {
  const int64_t n = 40;
  tg::Tensor<float> images(tg::Shape{n, 3});
  std::vector<int64_t> labels;
  for (int64_t i = 0; i < n; ++i) {
    for (int j = 0; j < 3; ++j) images[i * 3 + j] = float(i);
    labels.push_back(i);
  }
  auto sampler =
      std::make_shared<DistributedSampler>(n, world(), dist::DistributedSamplerOptions{.seed = 9});
  tg::io::DataLoader<float> local(images, labels, tg::io::DataLoaderOptions(4), sampler);
  tg::io::DataLoader<float> whole(images, labels,
                                  tg::io::DataLoaderOptions(8).shuffle(true).seed(9));
  EXPECT_EQ(local.size(), 5);
  EXPECT_EQ(local.epoch_samples(), 20);
  for (int epoch = 0; epoch < 2; ++epoch) {
    auto w = whole.begin();
    for (const auto& b : local) {
      // Rank r's batch holds global positions r, r+2, ... of the whole batch.
      for (int64_t k = 0; k < b.size(); ++k)
        EXPECT_EQ(b.labels[size_t(k)], w->labels[size_t(2 * k + rank())]) << epoch;
      ++w;
    }
  }
  EXPECT_THROW(tg::io::DataLoader<float>(images, labels, tg::io::DataLoaderOptions(4).shuffle(true),
                                         sampler),
               tg::ValueError);
}

}  // namespace
