// DistributedDataParallel on 2 ranks against one process computing the same thing alone: each
// rank trains on its half of every batch, the reference (computed by every rank locally, without
// communication) on the whole batch; after 5 steps the parameters agree to 1e-12 (double).
#include <gtest/gtest.h>

#include <functional>
#include <memory>

#include "mpi_test_util.hpp"

namespace {
using namespace mpi_test;
using tg::Tensor;
using Model = nn::Sequential<double>;
using Opt = tg::optim::Optimizer<double>;

constexpr int64_t kBatch = 8, kHalf = kBatch / 2;
constexpr double kMaxNorm = 0.1;  // the clipping acts in some steps

std::shared_ptr<Model> mlp(uint64_t seed) {
  tg::Generator g(seed);
  auto m = std::make_shared<Model>();
  m->push_back(std::make_shared<nn::Dense<double>>(6, 16, true, g));
  m->push_back(std::make_shared<nn::Tanh<double>>());
  m->push_back(std::make_shared<nn::Dense<double>>(16, 16, true, g));
  m->push_back(std::make_shared<nn::ReLU<double>>());
  m->push_back(std::make_shared<nn::Dense<double>>(16, 4, true, g));
  return m;
}

// Convolutions, BatchNorm (in the stem and inside the blocks, where BasicBlock holds them by
// typed pointers) and a residual block with a strided 1x1 downsample.
std::shared_ptr<Model> cnn(uint64_t seed) {
  tg::Generator g(seed);
  auto m = std::make_shared<Model>();
  m->push_back(std::make_shared<nn::Conv2D<double>>(2, 4, 3, 1, 1, 1, false, g));
  m->push_back(std::make_shared<nn::BatchNorm2d<double>>(4));
  m->push_back(std::make_shared<nn::ReLU<double>>());
  m->push_back(std::make_shared<nn::BasicBlock<double>>(4, 4, 1, g));
  m->push_back(std::make_shared<nn::BasicBlock<double>>(4, 6, 2, g));
  m->push_back(std::make_shared<nn::GlobalAvgPool2D<double>>());
  m->push_back(std::make_shared<nn::Dense<double>>(6, 3, true, g));
  return m;
}

struct Data {
  Tensor<double> x;
  std::vector<int64_t> y;
};
// Step s's whole batch: the same on every rank.
Data batch(int s, const tg::Shape& sample, int64_t classes) {
  tg::Generator g(1000 + uint64_t(s));
  std::vector<int64_t> dims{kBatch};
  for (int64_t d : sample.dims()) dims.push_back(d);
  Data d{Tensor<double>::randn(tg::Shape{std::span<const int64_t>(dims)}, g), {}};
  for (int64_t i = 0; i < kBatch; ++i) d.y.push_back(int64_t(g.below(uint64_t(classes))));
  return d;
}

std::vector<Tensor<double>> buffers_of(const nn::Module<double>& m) {
  std::vector<Tensor<double>> out;
  for (const auto& [n, b] : m.named_buffers()) out.push_back(b);
  return out;
}

using MakeModel = std::function<std::shared_ptr<Model>(uint64_t)>;
using MakeOpt = std::function<std::unique_ptr<Opt>(Model&)>;

std::unique_ptr<Opt> sgd_momentum(Model& m) {
  auto o = std::make_unique<tg::optim::SGD<double>>(
      m.named_parameters(), tg::optim::SGDOptions{.lr = 0.1, .momentum = 0.9});
  o->set_clip_grad_norm(kMaxNorm).set_penalties(0, 1e-3);  // global-norm clipping and L2
  return o;
}
std::unique_ptr<Opt> adam(Model& m) {
  auto o = std::make_unique<tg::optim::Adam<double>>(m.named_parameters(),
                                                     tg::optim::AdamOptions{.lr = 0.01});
  o->set_clip_grad_norm(kMaxNorm).set_penalties(0, 1e-3);
  return o;
}

// 5 steps of the reference on whole batches and of DDP on this rank's half; every step's
// pre-clip gradient norm must agree too (the optimizer sees the averaged gradient).
void check_equivalence(const MakeModel& make, const MakeOpt& make_opt, const tg::Shape& sample,
                       int64_t classes, bool sync_bn, dist::DDPOptions ddp_options, bool attach,
                       size_t checkpoint_every = 0) {
  auto ref = make(1);
  auto ref_opt = make_opt(*ref);
  auto model = make(rank() == 0 ? 1 : 77);  // rank 1 starts elsewhere: the broadcast fixes it
  if (rank() == 1) {
    EXPECT_GT(max_abs_diff(ref->parameters(), model->parameters()), 1e-3);
  }
  if (sync_bn) {
    EXPECT_EQ(dist::convert_sync_batchnorm(*model, world()), 6);
  }
  model->checkpoint_every(checkpoint_every);  // activation checkpoints on the DDP side only
  dist::DistributedDataParallel<double> ddp(model, world(), ddp_options);
  EXPECT_EQ(max_abs_diff(ref->parameters(), model->parameters()), 0.0);
  auto opt = make_opt(*model);
  if (attach) ddp.attach(*opt);

  tg::Tape<double> tref, tape;
  int clipped = 0;
  for (int s = 0; s < 5; ++s) {
    const Data d = batch(s, sample, classes);
    tref.clear();
    ref_opt->zero_grad();
    auto lref = tg::cross_entropy((*ref)(tref.constant(d.x)), d.y);
    tref.backward(lref);
    const double nref = ref_opt->step();
    clipped += nref > kMaxNorm;

    tape.clear();
    opt->zero_grad();
    auto loss = tg::cross_entropy(ddp(tape.constant(rows(d.x, rank() * kHalf, kHalf))),
                                  rows(d.y, rank() * kHalf, kHalf));
    tape.backward(loss);
    const double n = opt->step();
    EXPECT_NEAR(n, nref, 1e-12 * nref) << "step " << s;
  }
  EXPECT_GT(clipped, 0);  // the clipping did act
  EXPECT_LE(max_abs_diff(ref->parameters(), model->parameters()), 1e-12);
  const auto rb = buffers_of(*ref), b = buffers_of(*model);
  ASSERT_EQ(rb.size(), b.size());
  for (size_t i = 0; i < b.size(); ++i) EXPECT_LE(max_abs_diff(rb[i], b[i]), 1e-12) << i;
  EXPECT_TRUE(identical_on_all_ranks(values_of(model->parameters())));
  EXPECT_TRUE(identical_on_all_ranks(b));
  EXPECT_EQ(ddp.stats().steps, 5);
}

const tg::Shape kVector{6};
const tg::Shape kImage{2, 6, 6};

TEST(DistributedDataParallel, MlpSgdMomentumMatchesOneProcess) {
  check_equivalence(mlp, sgd_momentum, kVector, 4, false, {}, true);
}
TEST(DistributedDataParallel, MlpAdamMatchesOneProcess) {
  check_equivalence(mlp, adam, kVector, 4, false, {}, false);
}
TEST(DistributedDataParallel, MlpSmallBucketsMatchOneProcess) {
  check_equivalence(mlp, adam, kVector, 4, false,
                    {.bucket_cap_mb = 1e-4, .first_bucket_cap_mb = 1e-4}, true);
}
TEST(DistributedDataParallel, MlpWithoutProgressThreadMatchesOneProcess) {
  check_equivalence(mlp, sgd_momentum, kVector, 4, false,
                    {.bucket_cap_mb = 1e-4, .first_bucket_cap_mb = 1e-4, .progress_thread = false},
                    true);
}
TEST(DistributedDataParallel, CnnSyncBatchNormSgdMomentumMatchesOneProcess) {
  check_equivalence(cnn, sgd_momentum, kImage, 3, true, {}, true);
}
TEST(DistributedDataParallel, CnnSyncBatchNormAdamMatchesOneProcess) {
  check_equivalence(cnn, adam, kImage, 3, true,
                    {.bucket_cap_mb = 1e-3, .first_bucket_cap_mb = 1e-3}, false);
}

// Activation checkpoints: the parameters inside a segment get their gradients when the sweep
// reruns it; their buckets start then or at the end of the sweep, never before.
TEST(DistributedDataParallel, MlpCheckpointedMatchesOneProcess) {
  check_equivalence(mlp, sgd_momentum, kVector, 4, false,
                    {.bucket_cap_mb = 1e-4, .first_bucket_cap_mb = 1e-4}, true, 2);
}
TEST(DistributedDataParallel, CnnSyncBatchNormCheckpointedMatchesOneProcess) {
  check_equivalence(cnn, adam, kImage, 3, true,
                    {.bucket_cap_mb = 1e-4, .first_bucket_cap_mb = 1e-4}, true, 3);
}

// Buckets: reverse registration order; the first closes at first_bucket_cap_mb, the others at
// bucket_cap_mb, each once it holds at least that much.
TEST(DistributedDataParallel, BucketAssignment) {
  dist::DistributedDataParallel<double> one(mlp(1), world());
  const std::vector<std::vector<std::string>> all{
      {"4.bias", "4.weight", "2.bias", "2.weight", "0.bias", "0.weight"}};
  EXPECT_EQ(one.bucket_names(), all);
  // 104 bytes: 4.bias (32 B) + 4.weight (512 B) close the first; then every parameter alone.
  dist::DistributedDataParallel<double> many(mlp(1), world(),
                                             {.bucket_cap_mb = 1e-4, .first_bucket_cap_mb = 1e-4});
  const std::vector<std::vector<std::string>> each{
      {"4.bias", "4.weight"}, {"2.bias"}, {"2.weight"}, {"0.bias"}, {"0.weight"}};
  EXPECT_EQ(many.bucket_names(), each);
  // First bucket 1 KB: 4.bias + 4.weight + 2.bias (672 B) + 2.weight (2 KB); the rest 25 MB.
  dist::DistributedDataParallel<double> two(mlp(1), world(), {.first_bucket_cap_mb = 1e-3});
  const std::vector<std::vector<std::string>> split{{"4.bias", "4.weight", "2.bias", "2.weight"},
                                                    {"0.bias", "0.weight"}};
  EXPECT_EQ(two.bucket_names(), split);
  EXPECT_THROW(dist::DistributedDataParallel<double>(mlp(1), world(), {.bucket_cap_mb = 0}),
               tg::ValueError);
}

// The gradient becomes a view of its bucket: the same storage, no copies.
TEST(DistributedDataParallel, GradientsAreBucketViews) {
  auto m = mlp(1);
  const auto w = m->named_parameters()[0].second;
  w.grad().fill_(3.0);
  dist::DistributedDataParallel<double> ddp(m, world());
  EXPECT_EQ(w.grad()[5], 3.0);  // kept
  const double* before = w.grad().data();
  tg::Tape<double> tape;
  auto loss =
      tg::cross_entropy(ddp(tape.constant(batch(0, kVector, 4).x)), {0, 1, 2, 3, 0, 1, 2, 3});
  tape.backward(loss);
  EXPECT_EQ(w.grad().data(), before);
}

// The communication thread: buffers summed across the ranks, in the order handed over, while
// the caller makes no MPI call (wait_all only waits on the thread); again after reset().
TEST(AllreduceWorker, SumsEachBufferInOrderOnItsThread) {
  dist::detail::AllreduceWorker<double> worker(world().comm());
  for (int pass = 0; pass < 2; ++pass) {
    const double r = rank() + 1 + pass;  // rank 0: 1 + pass, rank 1: 2 + pass
    Tensor<double> small = Tensor<double>::from({r, -10 * r, 0.5});
    Tensor<double> empty({0});
    Tensor<double> large({5000});
    for (int64_t i = 0; i < large.numel(); ++i) large[i] = r * static_cast<double>(i);
    const double before = tg::detail::now_ns() * 1e-9;
    worker.submit(small);
    worker.submit(empty);
    worker.submit(large);
    const double last = worker.wait_all();  // when the last one was summed
    EXPECT_GE(last, before);
    const double sum = 3 + 2 * pass;  // (1 + pass) + (2 + pass)
    EXPECT_EQ(small[0], sum);
    EXPECT_EQ(small[1], -10 * sum);
    EXPECT_EQ(small[2], 1.0);
    EXPECT_EQ(large[4999], sum * 4999);
    EXPECT_EQ(large[1], sum);
    worker.reset();
  }
}

// A probe between the first Dense and the rest: its backward runs after the later layers'
// and before the first layer's, and notes how many buckets have started by then.
int64_t probe_seen = -1;
const dist::DistributedDataParallel<double>* probe_ddp = nullptr;
class Probe : public nn::Module<double> {
 public:
  tg::Var<double> forward(const tg::Var<double>& x) override {
    auto y = x.tape().record(
        "probe", x.shape(), {x},
        [](tg::OpContext<double>& c) {
          probe_seen = probe_ddp->stats().buckets_launched;
          c.add_grad(0, c.grad_out().array());
        },
        tg::Reads::none);
    y.value().copy_(x.value());
    return y;
  }
  std::string name() const override { return "Probe"; }
};

// Overlap: with small buckets, the last layers' buckets start while the sweep is still on its
// way to the first layer; with one bucket nothing starts before the end.
TEST(DistributedDataParallel, BucketsStartDuringTheBackwardPass) {
  for (bool small : {true, false}) {
    auto m = mlp(1);
    auto probed = std::make_shared<Model>();
    int i = 0;
    for (const auto& layer : *m) {
      probed->push_back(layer);
      if (i++ == 0) probed->push_back(std::make_shared<Probe>());
    }
    dist::DDPOptions o;
    if (small) o = {.bucket_cap_mb = 1e-4, .first_bucket_cap_mb = 1e-4};
    dist::DistributedDataParallel<double> ddp(probed, world(), o);
    probe_ddp = &ddp;
    probe_seen = -1;
    tg::Tape<double> tape;
    const Data d = batch(0, kVector, 4);
    tape.backward(tg::cross_entropy(ddp(tape.constant(d.x)), d.y));
    EXPECT_EQ(probe_seen, small ? 3 : 0);  // [4.*], [2.bias], [2.weight] before the probe
    EXPECT_EQ(ddp.stats().buckets_launched, small ? 5 : 1);
    EXPECT_EQ(ddp.stats().launched_in_backward, small ? 5 : 1);
    EXPECT_EQ(ddp.stats().steps, 1);
    EXPECT_GE(ddp.stats().communication_seconds, 0.0);
    EXPECT_GE(ddp.stats().wait_seconds, 0.0);
    probe_ddp = nullptr;
  }
}

TEST(DistributedDataParallel, BroadcastOverwritesOtherRanksInitialWeights) {
  auto model = mlp(rank() == 0 ? 5 : 6);
  auto rank0 = mlp(5);
  const double before = max_abs_diff(rank0->parameters(), model->parameters());
  if (rank() == 1)
    EXPECT_GT(before, 1e-3);
  else
    EXPECT_EQ(before, 0.0);
  dist::DistributedDataParallel<double> ddp(model, world());
  EXPECT_EQ(max_abs_diff(rank0->parameters(), model->parameters()), 0.0);
  // Buffers too: rank 1's running statistics are replaced by rank 0's.
  auto c = cnn(1);
  for (auto& [n, b] : c->named_buffers()) b.fill_(rank() == 0 ? 0.25 : 9.0);
  dist::DistributedDataParallel<double> dc(c, world());
  for (auto& [n, b] : c->named_buffers()) EXPECT_EQ(b[0], 0.25) << n;
}

// After many steps on different data per rank (float, Adam, Dropout), the replicas are
// bit-identical.
TEST(DistributedDataParallel, ReplicasBitIdenticalAfterTwentySteps) {
  tg::Generator g(rank() == 0 ? 3 : 4);
  auto m = std::make_shared<nn::Sequential<float>>();
  m->push_back(std::make_shared<nn::Dense<float>>(10, 32, true, g));
  m->push_back(std::make_shared<nn::ReLU<float>>());
  m->push_back(std::make_shared<nn::Dropout<float>>(0.3, g));
  m->push_back(std::make_shared<nn::Dense<float>>(32, 5, true, g));
  dist::DistributedDataParallel<float> ddp(m, world(), {.first_bucket_cap_mb = 1e-3});
  tg::optim::Adam<float> opt(ddp.named_parameters(), {.lr = 1e-2});
  ddp.attach(opt);
  opt.set_clip_grad_norm(1.0);
  tg::Tape<float> tape;
  tg::Generator data(50 + uint64_t(rank()));  // each rank its own data
  for (int s = 0; s < 20; ++s) {
    tape.clear();
    opt.zero_grad();
    const Tensor<float> x = Tensor<float>::randn({6, 10}, data);
    std::vector<int64_t> y;
    for (int i = 0; i < 6; ++i) y.push_back(int64_t(data.below(5)));
    tape.backward(tg::cross_entropy(ddp(tape.constant(x)), y));
    opt.step();
  }
  EXPECT_TRUE(identical_on_all_ranks(values_of(m->parameters())));
  EXPECT_EQ(ddp.stats().steps, 20);
}

// Every Dropout gets rank_seed(rank 0's seed, rank) and rank 0's call count.
TEST(DistributedDataParallel, PerRankDropoutSeeds) {
  tg::Generator g(rank() == 0 ? 10 : 11);
  auto d = std::make_shared<nn::Dropout<double>>(0.5, g);
  auto m = std::make_shared<Model>();
  m->push_back(std::make_shared<nn::Dense<double>>(4, 4, true, g));
  m->push_back(d);
  const uint64_t own = d->seed();
  const auto seeds = world().allgather(std::to_string(own));
  const uint64_t seed0 = std::stoull(seeds[0]);
  dist::DistributedDataParallel<double> ddp(m, world());
  EXPECT_EQ(d->seed(), dist::rank_seed(seed0, rank()));
  EXPECT_EQ(d->calls(), 0u);
  const auto after = world().allgather(std::to_string(d->seed()));
  EXPECT_NE(after[0], after[1]);
  // Off: every rank keeps the seed it drew.
  auto d2 = std::make_shared<nn::Dropout<double>>(0.5, g);
  auto m2 = std::make_shared<Model>();
  m2->push_back(d2);
  m2->push_back(std::make_shared<nn::Dense<double>>(4, 4, true, g));
  const uint64_t own2 = d2->seed();
  dist::DistributedDataParallel<double> off(m2, world(), {.per_rank_dropout_seeds = false});
  EXPECT_EQ(d2->seed(), own2);
}

// A NaN in one rank's gradient is a NaN in the average: raise and skip_step decide the same on
// both ranks, before anything is modified.
TEST(DistributedDataParallel, NonFiniteGradientOnOneRankSeenByBoth) {
  for (auto policy : {tg::optim::NonFinitePolicy::raise, tg::optim::NonFinitePolicy::skip_step})
    for (bool attach : {true, false}) {
      auto m = mlp(1);
      dist::DistributedDataParallel<double> ddp(m, world());
      tg::optim::SGD<double> opt(ddp.named_parameters(), {.lr = 0.1, .momentum = 0.9});
      opt.set_nonfinite_policy(policy).set_clip_grad_norm(1.0);
      if (attach) ddp.attach(opt);
      tg::Tape<double> tape;
      auto step = [&](int s, bool nan) {
        tape.clear();
        opt.zero_grad();
        Data d = batch(s, kVector, 4);
        Tensor<double> x = rows(d.x, rank() * kHalf, kHalf);
        if (nan && rank() == 1) x[3] = NAN;
        tape.backward(tg::cross_entropy(ddp(tape.constant(x)), rows(d.y, rank() * kHalf, kHalf)));
        return error_of([&] { opt.step(); });
      };
      EXPECT_EQ(step(0, false), "");
      std::vector<Tensor<double>> before;
      for (const auto& p : m->parameters()) before.push_back(p.value().clone());
      const std::string e = step(1, true);
      if (policy == tg::optim::NonFinitePolicy::raise) {
        EXPECT_NE(e.find("non-finite gradient (NaN)"), std::string::npos) << e;
      } else {
        EXPECT_EQ(e, "");
        EXPECT_EQ(opt.skipped_steps(), 1);
      }
      for (size_t i = 0; i < before.size(); ++i)
        EXPECT_EQ(max_abs_diff(before[i], m->parameters()[i].value()), 0.0);
      EXPECT_EQ(step(2, false), "");  // training goes on, identically
      EXPECT_TRUE(identical_on_all_ranks(values_of(m->parameters())));
    }
}

// no_sync: the first micro-batch's backward only accumulates; the second averages the sums.
// Reference: one process accumulating the four quarter-batches: DDP's gradient is half of it.
TEST(DistributedDataParallel, NoSyncAccumulates) {
  auto ref = mlp(1);
  auto m = mlp(1);
  dist::DistributedDataParallel<double> ddp(m, world());
  tg::optim::SGD<double> opt(ddp.named_parameters(), {.lr = 0.1});
  ddp.attach(opt);
  const Data d = batch(0, kVector, 4);
  tg::Tape<double> tape;
  ref->zero_grad();
  for (int q = 0; q < 4; ++q) {
    tape.clear();
    tape.backward(
        tg::cross_entropy((*ref)(tape.constant(rows(d.x, 2 * q, 2))), rows(d.y, 2 * q, 2)));
  }
  opt.zero_grad();
  {
    auto guard = ddp.no_sync();
    tape.clear();
    const int q = 2 * rank();
    tape.backward(tg::cross_entropy(ddp(tape.constant(rows(d.x, 2 * q, 2))), rows(d.y, 2 * q, 2)));
  }
  EXPECT_EQ(ddp.stats().steps, 0);  // nothing averaged yet
  tape.clear();
  const int q = 2 * rank() + 1;
  tape.backward(tg::cross_entropy(ddp(tape.constant(rows(d.x, 2 * q, 2))), rows(d.y, 2 * q, 2)));
  ddp.synchronize();
  EXPECT_EQ(ddp.stats().steps, 1);
  const auto rp = ref->parameters(), p = m->parameters();
  for (size_t i = 0; i < p.size(); ++i)
    for (int64_t k = 0; k < p[i].numel(); ++k)
      EXPECT_NEAR(2 * p[i].grad()[k], rp[i].grad()[k], 1e-12);
}

// A module whose second branch only rank 0 uses, and a third that nobody uses.
class Branches : public nn::Module<double> {
 public:
  explicit Branches(tg::Generator& g) {
    a = this->register_module("a", std::make_shared<nn::Dense<double>>(6, 4, true, g));
    b = this->register_module("b", std::make_shared<nn::Dense<double>>(6, 4, true, g));
    c = this->register_module("c", std::make_shared<nn::Dense<double>>(6, 4, true, g));
  }
  tg::Var<double> forward(const tg::Var<double>& x) override {
    tg::Var<double> y = (*a)(x);
    if (use_b) y = y + (*b)(x);
    if (use_c) y = y + (*c)(x);
    return y;
  }
  std::string name() const override { return "Branches"; }
  std::shared_ptr<nn::Dense<double>> a, b, c;
  bool use_b = true, use_c = false;
};

// Unused parameters: their gradient counts as what it holds (zeros after zero_grad), so the
// average is rank 0's gradient / 2 for b and 0 for c, with no hang and no stale values.
TEST(DistributedDataParallel, UnusedParameters) {
  tg::Generator g(8);
  auto m = std::make_shared<Branches>(g);
  tg::Generator g2(8);
  Branches alone(g2);  // rank 0's replica, computed locally by every rank
  dist::DistributedDataParallel<double> ddp(m, world());
  tg::optim::SGD<double> opt(ddp.named_parameters(), {.lr = 0.1});
  tg::Tape<double> tape;
  auto local_grad_b0 = [&](const Data& d, bool use_c) {
    const auto from = m->parameters(), to = alone.parameters();
    for (size_t i = 0; i < from.size(); ++i) to[i].value().copy_(from[i].value());
    alone.use_c = use_c;
    tape.clear();
    alone.zero_grad();
    tape.backward(
        tg::cross_entropy(alone(tape.constant(rows(d.x, 0, kHalf))), rows(d.y, 0, kHalf)));
    return alone.b->weight.grad().clone();
  };
  for (int s = 0; s < 2; ++s) {
    const Data d = batch(s, kVector, 4);
    const Tensor<double> b0 = local_grad_b0(d, s == 0);
    // Step 0: c is used by everyone (its gradient becomes non-zero); step 1: by nobody.
    m->use_b = rank() == 0;
    m->use_c = s == 0;
    tape.clear();
    opt.zero_grad();
    tape.backward(tg::cross_entropy(ddp(tape.constant(rows(d.x, rank() * kHalf, kHalf))),
                                    rows(d.y, rank() * kHalf, kHalf)));
    ddp.synchronize();
    for (int64_t k = 0; k < b0.numel(); ++k) EXPECT_NEAR(m->b->weight.grad()[k], b0[k] / 2, 1e-14);
    if (s == 1)
      for (int64_t k = 0; k < m->c->weight.numel(); ++k) EXPECT_EQ(m->c->weight.grad()[k], 0.0);
    else
      EXPECT_GT(m->c->weight.grad().array().abs().maxCoeff(), 0.0);
    opt.step();
  }
  EXPECT_TRUE(identical_on_all_ranks(values_of(m->parameters())));
}

// A model that differs between the ranks: the same clear error on every rank, never a hang.
TEST(DistributedDataParallel, ShapeMismatchRaisesOnEveryRank) {
  auto m = std::make_shared<Model>();
  m->push_back(std::make_shared<nn::Dense<double>>(6, rank() == 0 ? 8 : 9));
  m->push_back(std::make_shared<nn::Dense<double>>(rank() == 0 ? 8 : 9, 2));
  const std::string e = error_of([&] { dist::DistributedDataParallel<double> ddp(m, world()); });
  EXPECT_NE(e.find("DistributedDataParallel: the ranks' models differ"), std::string::npos) << e;
  EXPECT_NE(e.find("rank 0 has parameter '0.weight' of shape [8,6]"), std::string::npos) << e;
  EXPECT_NE(e.find("rank 1 has parameter '0.weight' of shape [9,6]"), std::string::npos) << e;
  // A missing parameter, a different name, different options: the same way.
  auto n = std::make_shared<Model>();
  n->push_back(std::make_shared<nn::Dense<double>>(6, 8, rank() == 0));
  const std::string e2 = error_of([&] { dist::DistributedDataParallel<double> ddp(n, world()); });
  EXPECT_NE(e2.find("rank 0 has parameter '0.bias' of shape [8]"), std::string::npos) << e2;
  EXPECT_NE(e2.find("rank 1 has nothing"), std::string::npos) << e2;
  const std::string e3 = error_of([&] {
    dist::DistributedDataParallel<double> ddp(mlp(1), world(),
                                              {.bucket_cap_mb = rank() == 0 ? 25.0 : 10.0});
  });
  EXPECT_NE(e3.find("bucket_cap_mb=25"), std::string::npos) << e3;
  EXPECT_NE(e3.find("bucket_cap_mb=10"), std::string::npos) << e3;
  world().barrier();  // and the ranks are still in step
}

// With gradients off, the forward communicates nothing: one rank may evaluate alone.
TEST(DistributedDataParallel, ForwardWithoutGradientsIsLocal) {
  auto m = mlp(1);
  dist::DistributedDataParallel<double> ddp(m, world());
  if (rank() == 0) {
    tg::NoGradGuard no_grad;
    tg::Tape<double> tape;
    for (int i = 0; i < 3; ++i) ddp(tape.constant(batch(i, kVector, 4).x));
  }
  world().barrier();
  EXPECT_EQ(ddp.stats().steps, 0);
}

TEST(DistributedDataParallel, Misuse) {
  auto m = mlp(1);
  dist::DistributedDataParallel<double> ddp(m, world());
  dist::DistributedDataParallel<double> other(mlp(2), world());
  const Data d = batch(0, kVector, 4);
  tg::Tape<double> tape;
  ddp(tape.constant(d.x));
  // Two data-parallel models on one tape.
  EXPECT_THROW(other(tape.constant(d.x)), dist::DistributedError);
  // Differentiating one recording twice: the second backward would add into averaged gradients.
  tape.clear();
  auto loss = tg::cross_entropy(ddp(tape.constant(d.x)), d.y);
  tape.backward(loss, /*retain_graph=*/true);
  const std::string e = error_of([&] { tape.backward(loss); });
  EXPECT_NE(e.find("was computed twice for one forward"), std::string::npos) << e;
  EXPECT_EQ(ddp.name(), "DistributedDataParallel");
  EXPECT_EQ(ddp.named_parameters()[0].first, "module.0.weight");
  EXPECT_TRUE(ddp.has_progress_thread());
}

}  // namespace
