#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <limits>
#include <memory>
#include <numeric>
#include <set>
#include <span>
#include <string>
#include <vector>

#include "tapegrad/io/dataloader.hpp"
#include "test_util.hpp"

namespace tg = tapegrad;
namespace io = tapegrad::io;
using tapegrad::testing::error_message;

namespace {

// n samples of shape [2, 3]; every value of sample i is 10 * i + position, label i.
struct Toy {
  tg::Tensor<float> images;
  std::vector<int64_t> labels;
};
Toy make_toy(int64_t n) {
  Toy t{tg::Tensor<float>(tg::Shape{n, 2, 3}), std::vector<int64_t>(static_cast<size_t>(n))};
  for (int64_t i = 0; i < n; ++i) {
    for (int64_t p = 0; p < 6; ++p) t.images[i * 6 + p] = float(10 * i + p);
    t.labels[static_cast<size_t>(i)] = i;
  }
  return t;
}

// The labels of every batch of one epoch, in order.
std::vector<std::vector<int64_t>> epoch_labels(io::DataLoader<float>& loader) {
  std::vector<std::vector<int64_t>> out;
  for (const auto& b : loader) out.push_back(b.labels);
  return out;
}

TEST(DataLoader, SequentialBatchesWithPartialLast) {
  Toy toy = make_toy(10);
  io::DataLoader<float> loader(toy.images, toy.labels, 4);
  EXPECT_EQ(loader.size(), 3);
  EXPECT_EQ(loader.num_samples(), 10);
  int64_t count = 0;
  for (const auto& b : loader) {
    const int64_t expect_size = count < 2 ? 4 : 2;
    EXPECT_EQ(b.index, count);
    ASSERT_EQ(b.size(), expect_size);
    EXPECT_EQ(b.images.shape(), (tg::Shape{expect_size, 2, 3}));
    for (int64_t k = 0; k < b.size(); ++k) {
      const int64_t i = count * 4 + k;
      EXPECT_EQ(b.labels[static_cast<size_t>(k)], i);
      for (int64_t p = 0; p < 6; ++p) EXPECT_EQ(b.images[k * 6 + p], float(10 * i + p));
    }
    ++count;
  }
  EXPECT_EQ(count, 3);
}

TEST(DataLoader, DropLastSkipsTheSmallBatch) {
  Toy toy = make_toy(10);
  io::DataLoader<float> loader(toy.images, toy.labels, io::DataLoaderOptions(4).drop_last(true));
  EXPECT_EQ(loader.size(), 2);
  const auto batches = epoch_labels(loader);
  ASSERT_EQ(batches.size(), 2u);
  EXPECT_EQ(batches[1], (std::vector<int64_t>{4, 5, 6, 7}));
  // Fewer samples than one batch: no batch at all with drop_last, one without.
  Toy small = make_toy(3);
  io::DataLoader<float> none(small.images, small.labels, io::DataLoaderOptions(4).drop_last(true));
  EXPECT_EQ(none.size(), 0);
  EXPECT_TRUE(epoch_labels(none).empty());
  io::DataLoader<float> one(small.images, small.labels, 4);
  EXPECT_EQ(epoch_labels(one), (std::vector<std::vector<int64_t>>{{0, 1, 2}}));
}

TEST(DataLoader, ShuffleIsAPermutationNewEachEpochAndReproducible) {
  Toy toy = make_toy(50);
  const auto opt = io::DataLoaderOptions(8).shuffle(true).seed(42);
  io::DataLoader<float> a(toy.images, toy.labels, opt), b(toy.images, toy.labels, opt);
  std::vector<std::vector<std::vector<int64_t>>> epochs;
  for (int e = 0; e < 3; ++e) {
    const auto batches = epoch_labels(a);
    std::vector<int64_t> seen;
    for (const auto& bl : batches) seen.insert(seen.end(), bl.begin(), bl.end());
    std::vector<int64_t> sorted = seen;
    std::sort(sorted.begin(), sorted.end());
    std::vector<int64_t> all(50);
    std::iota(all.begin(), all.end(), 0);
    EXPECT_EQ(sorted, all) << "epoch " << e << " is not a permutation";
    EXPECT_NE(seen, all) << "epoch " << e << " is not shuffled";
    epochs.push_back(batches);
    EXPECT_EQ(epoch_labels(b), batches) << "same seed, different order in epoch " << e;
  }
  EXPECT_NE(epochs[0], epochs[1]);
  EXPECT_NE(epochs[1], epochs[2]);
  EXPECT_EQ(a.epoch(), 3);

  // Replaying an epoch (resume) gives that epoch's order.
  a.set_epoch(1);
  EXPECT_EQ(epoch_labels(a), epochs[1]);

  // Another seed, another order.
  io::DataLoader<float> c(toy.images, toy.labels, io::DataLoaderOptions(8).shuffle(true).seed(43));
  EXPECT_NE(epoch_labels(c), epochs[0]);

  // Images follow their labels through the shuffle.
  for (const auto& batch : c)
    for (int64_t k = 0; k < batch.size(); ++k)
      EXPECT_EQ(batch.images[k * 6 + 5], float(10 * batch.labels[static_cast<size_t>(k)] + 5));
}

TEST(DataLoader, NormalizeSubtractsMeanAndDividesByStd) {
  Toy toy = make_toy(4);
  io::DataLoader<float> loader(toy.images, toy.labels,
                               io::DataLoaderOptions(4).normalize(5.0f, 2.0f));
  const auto& b = *loader.begin();
  // sample 1, position 3: raw 13 -> (13 - 5) / 2 = 4
  EXPECT_FLOAT_EQ(b.images.at(1, 1, 0), 4.0f);
  EXPECT_FLOAT_EQ(b.images.at(0, 0, 0), -2.5f);
  EXPECT_FLOAT_EQ(toy.images.at(1, 1, 0), 13.0f);  // the dataset is not modified

  tg::Tensor<double> d = toy.images.to<double>();
  io::DataLoader<double> dl(d, toy.labels, io::DataLoaderOptions(2).normalize(1, 4));
  EXPECT_DOUBLE_EQ(dl.begin()->images.at(1, 1, 2), (15.0 - 1.0) / 4.0);
}

TEST(DataLoader, ReusesItsBatchBufferAcrossBatchesAndEpochs) {
  Toy toy = make_toy(20);
  io::DataLoader<float> loader(toy.images, toy.labels, io::DataLoaderOptions(6).shuffle(true));
  const float* buffer = nullptr;
  const int64_t* labels = nullptr;
  for (int e = 0; e < 2; ++e) {
    for (const auto& b : loader) {
      if (!buffer) buffer = b.images.data(), labels = b.labels.data();
      EXPECT_EQ(b.images.data(), buffer);  // no allocation per batch, also for the last (2)
      EXPECT_EQ(b.labels.data(), labels);
    }
  }
  // A batch held by the caller is not overwritten: the loader moves to a fresh buffer.
  auto it = loader.begin();
  const tg::Tensor<float> held = it->images;
  const std::vector<float> copy(held.data(), held.data() + held.numel());
  ++it;
  EXPECT_NE(it->images.data(), held.data());
  EXPECT_TRUE(std::equal(copy.begin(), copy.end(), held.data()));
}

TEST(DataLoader, BadArguments) {
  Toy toy = make_toy(5);
  std::vector<int64_t> four(4, 0);
  try {
    io::DataLoader<float> l(toy.images, four);
    FAIL() << "mismatched labels accepted";
  } catch (const tg::ShapeError& e) {
    EXPECT_EQ(std::string(e.what()),
              "DataLoader: images of shape [5,2,3] and 4 labels: one label per image needed");
  }
  EXPECT_THROW(io::DataLoader<float>(toy.images, toy.labels, 0), tg::ValueError);
  EXPECT_THROW(
      io::DataLoader<float>(toy.images, toy.labels, io::DataLoaderOptions().normalize(0.0f, 0.0f)),
      tg::ValueError);
  io::DataLoader<float> l(toy.images, toy.labels, 2);
  EXPECT_THROW(l.load(3), tg::ValueError);
}

// A batch size above the data size gives one batch of every sample; INT64_MAX used to overflow
// (n + b - 1) / b into zero batches.
TEST(DataLoader, BatchSizeAboveTheDataSizeGivesOneBatch) {
  Toy toy = make_toy(10);
  for (int64_t b : {int64_t{11}, std::numeric_limits<int64_t>::max()}) {
    io::DataLoader<float> loader(toy.images, toy.labels, b);
    EXPECT_EQ(loader.size(), 1) << b;
    const auto batches = epoch_labels(loader);
    ASSERT_EQ(batches.size(), 1u) << b;
    std::vector<int64_t> all(10);
    std::iota(all.begin(), all.end(), 0);
    EXPECT_EQ(batches[0], all);
    io::DataLoader<float> dropping(toy.images, toy.labels,
                                   io::DataLoaderOptions(b).drop_last(true));
    EXPECT_EQ(dropping.size(), 0);
    EXPECT_TRUE(epoch_labels(dropping).empty());
  }
}

// Negative epochs are rejected (as by the LR schedulers); the largest epoch shuffles without
// overflowing, and no epoch can follow it.
TEST(DataLoader, SetEpochRejectsNegativeAndTheLastEpochDoesNotOverflow) {
  Toy toy = make_toy(10);
  io::DataLoader<float> loader(toy.images, toy.labels, io::DataLoaderOptions(4).shuffle(true));
  const std::string neg = error_message<tg::ValueError>([&] { loader.set_epoch(-3); });
  EXPECT_NE(neg.find("set_epoch"), std::string::npos) << neg;
  EXPECT_NE(neg.find("-3"), std::string::npos) << neg;
  EXPECT_EQ(loader.epoch(), 0);
  const int64_t last = std::numeric_limits<int64_t>::max();
  std::vector<int64_t> perm(10);
  io::epoch_permutation(0, last, perm);  // the seed mixing wraps in unsigned arithmetic
  std::vector<int64_t> sorted = perm;
  std::sort(sorted.begin(), sorted.end());
  std::vector<int64_t> all(10);
  std::iota(all.begin(), all.end(), 0);
  EXPECT_EQ(sorted, all);
  loader.set_epoch(last - 1);
  EXPECT_EQ(epoch_labels(loader).size(), 3u);
  EXPECT_EQ(loader.epoch(), last);
  const std::string past = error_message<tg::ValueError>([&] { loader.begin(); });
  EXPECT_NE(past.find("epoch " + std::to_string(last)), std::string::npos) << past;
  EXPECT_EQ(loader.epoch(), last);
}

// A positive std so small that 1/std overflows float would make every image NaN.
TEST(DataLoader, NormalizeRejectsAStdWhoseReciprocalOverflows) {
  Toy toy = make_toy(4);
  for (float std : {1e-40f, 1e-39f}) {
    const std::string msg = error_message<tg::ValueError>([&] {
      io::DataLoader<float>(toy.images, toy.labels, io::DataLoaderOptions(2).normalize(0.5f, std));
    });
    EXPECT_NE(msg.find("normalize"), std::string::npos) << msg;
    EXPECT_NE(msg.find("std"), std::string::npos) << msg;
  }
  // mean/std overflowing float is the same failure.
  EXPECT_THROW(io::DataLoader<float>(toy.images, toy.labels,
                                     io::DataLoaderOptions(2).normalize(1e30f, 1e-10f)),
               tg::ValueError);
  // In double the same std is fine: 1/1e-40 = 1e40.
  const tg::Tensor<double> d = toy.images.to<double>();
  io::DataLoader<double> dl(d, toy.labels, io::DataLoaderOptions(4).normalize(0.0f, 1e-40f));
  EXPECT_NEAR(dl.begin()->images.at(1, 0, 0) / 1e40, 10.0 / double(1e-40f) / 1e40, 1e-9);
}

}  // namespace

// ---- a Sampler decides each epoch's order ----
namespace {

// Epoch e visits e, e+1, ... (mod n), then 0 again: repeats and omissions are allowed.
struct Rotate : io::Sampler {
  Rotate(int64_t n, int64_t count) : n(n), count(count) {}
  int64_t size() const override { return count; }
  void indices(int64_t epoch, std::span<int64_t> out) const override {
    seen_epochs.push_back(epoch);
    for (size_t k = 0; k < out.size(); ++k) out[k] = (epoch + int64_t(k)) % n;
    out[out.size() - 1] = 0;
  }
  int64_t n, count;
  mutable std::vector<int64_t> seen_epochs;
};

TEST(DataLoader, SamplerGivesTheOrderOfEachEpoch) {
  const Toy t = make_toy(6);
  auto s = std::make_shared<Rotate>(6, 5);
  io::DataLoader<float> loader(t.images, t.labels, io::DataLoaderOptions(2), s);
  EXPECT_EQ(loader.num_samples(), 6);
  EXPECT_EQ(loader.epoch_samples(), 5);
  EXPECT_EQ(loader.size(), 3);  // 2 + 2 + 1
  EXPECT_EQ(epoch_labels(loader), (std::vector<std::vector<int64_t>>{{0, 1}, {2, 3}, {0}}));
  EXPECT_EQ(epoch_labels(loader), (std::vector<std::vector<int64_t>>{{1, 2}, {3, 4}, {0}}));
  loader.set_epoch(4);  // replay: the loader passes its epoch
  EXPECT_EQ(epoch_labels(loader), (std::vector<std::vector<int64_t>>{{4, 5}, {0, 1}, {0}}));
  EXPECT_EQ(s->seen_epochs, (std::vector<int64_t>{0, 1, 4}));
  // The images follow the indices.
  loader.set_epoch(1);
  const auto& b = *loader.begin();
  EXPECT_EQ(b.images[0], 10.0f);
  EXPECT_EQ(b.images[6], 20.0f);
  io::DataLoader<float> dropping(t.images, t.labels, io::DataLoaderOptions(2).drop_last(true), s);
  EXPECT_EQ(dropping.size(), 2);
}

struct OutOfRange : io::Sampler {
  int64_t size() const override { return 2; }
  void indices(int64_t, std::span<int64_t> out) const override {
    out[0] = 1;
    out[1] = 6;
  }
};

TEST(DataLoader, SamplerErrors) {
  const Toy t = make_toy(6);
  EXPECT_THROW(io::DataLoader<float>(t.images, t.labels, io::DataLoaderOptions(2).shuffle(true),
                                     std::make_shared<Rotate>(6, 3)),
               tg::ValueError);
  io::DataLoader<float> bad(t.images, t.labels, io::DataLoaderOptions(2),
                            std::make_shared<OutOfRange>());
  try {
    bad.begin();
    ADD_FAILURE() << "no error";
  } catch (const tg::ValueError& e) {
    EXPECT_NE(std::string(e.what()).find("the sampler gave index 6"), std::string::npos);
  }
}

// epoch_permutation is the order of a shuffling loader.
TEST(DataLoader, EpochPermutationIsTheShuffledOrder) {
  const Toy t = make_toy(20);
  io::DataLoader<float> loader(t.images, t.labels, io::DataLoaderOptions(20).shuffle(true).seed(4));
  loader.set_epoch(2);
  const auto labels = loader.begin()->labels;
  std::vector<int64_t> perm(20);
  io::epoch_permutation(4, 2, perm);
  EXPECT_EQ(labels, perm);
}

}  // namespace
