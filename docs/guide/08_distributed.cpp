// Chapter 8: training on several processes with MPI (tapegrad::distributed).
// Builds as guide_08_distributed (when CMake finds MPI); ctest runs it under mpirun -np 2.
// Exits non-zero on every rank if a claim of the chapter is false.
#include <cmath>
#include <cstdio>
#include <memory>
#include <span>
#include <string>
#include <tapegrad/distributed/distributed.hpp>
#include <tapegrad/tapegrad.hpp>
#include <vector>

namespace nn = tg::nn;
namespace io = tg::io;
namespace dist = tg::distributed;
using tg::Tensor;

constexpr int64_t kSamples = 512, kGlobalBatch = 32, kEpochs = 3;

// Two interleaved spirals, the same on every rank (the data set is not split by hand: the
// sampler does that).
void make_spirals(Tensor<double>& x, std::vector<int64_t>& y) {
  tg::Generator gen(7);
  x = Tensor<double>::zeros({kSamples, 2});
  y.assign(size_t(kSamples), 0);
  const Tensor<double> noise = Tensor<double>::randn({kSamples, 2}, gen);
  for (int64_t i = 0; i < kSamples; ++i) {
    const double t = 3.0 * double(i / 2) / double(kSamples / 2), a = t * 3.0 + M_PI * double(i % 2);
    x.data()[2 * i] = t * std::cos(a) + 0.05 * noise.data()[2 * i];
    x.data()[2 * i + 1] = t * std::sin(a) + 0.05 * noise.data()[2 * i + 1];
    y[size_t(i)] = i % 2;
  }
}

std::shared_ptr<nn::Sequential<double>> make_model(uint64_t seed) {
  tg::Generator gen(seed);
  auto m = std::make_shared<nn::Sequential<double>>();
  m->push_back(std::make_shared<nn::Dense<double>>(2, 32, true, gen));
  m->push_back(std::make_shared<nn::Tanh<double>>());
  m->push_back(std::make_shared<nn::Dense<double>>(32, 32, true, gen));
  m->push_back(std::make_shared<nn::Tanh<double>>());
  m->push_back(std::make_shared<nn::Dense<double>>(32, 2, true, gen));
  return m;
}

// The largest difference of a model's parameters between the ranks (0: identical replicas).
double spread_across_ranks(nn::Module<double>& m, dist::ProcessGroup& world) {
  double spread = 0;
  for (auto& [name, p] : m.named_parameters()) {
    Tensor<double> hi = p.value().clone(), lo = p.value().clone();
    world.allreduce(hi, dist::ReduceOp::max);
    world.allreduce(lo, dist::ReduceOp::min);
    spread = std::max(spread, (hi.array() - lo.array()).abs().maxCoeff());
  }
  return spread;
}

// The global batches of one process training alone: step s takes rank 0's s-th batch, then
// rank 1's, ... (what the p processes see together).
class GlobalBatches : public io::Sampler {
 public:
  GlobalBatches(int64_t n, int p, int64_t batch_per_rank) : p_(p), b_(batch_per_rank) {
    for (int r = 0; r < p; ++r)
      shards_.push_back(std::make_shared<dist::DistributedSampler>(
          n, p, r, dist::DistributedSamplerOptions{.seed = 1}));
  }
  int64_t size() const override { return shards_[0]->size() * p_; }
  void indices(int64_t epoch, std::span<int64_t> out) const override {
    const int64_t per_rank = shards_[0]->size();
    std::vector<int64_t> shard(size_t(per_rank), 0);
    for (int r = 0; r < p_; ++r) {
      shards_[size_t(r)]->indices(epoch, shard);
      for (int64_t i = 0; i < per_rank; ++i)
        out[size_t((i / b_) * b_ * p_ + r * b_ + i % b_)] = shard[size_t(i)];
    }
  }

 private:
  int p_;
  int64_t b_;
  std::vector<std::shared_ptr<dist::DistributedSampler>> shards_;
};

double train(nn::Module<double>& model, tg::optim::Optimizer<double>& opt,
             io::DataLoader<double>& loader) {
  tg::Tape<double> tape;
  double last_loss = 0;
  for (int64_t epoch = 0; epoch < kEpochs; ++epoch) {
    for (const auto& batch : loader) {
      tape.clear();
      opt.zero_grad();
      auto loss = tg::cross_entropy(model(tape.constant(batch.images)), batch.labels);
      tape.backward(loss);
      opt.step();
      last_loss = loss.item();
    }
  }
  return last_loss;
}

int main(int argc, char** argv) {
  return dist::run(argc, argv, [&](dist::Environment& env) {
    dist::ProcessGroup& world = env.world();
    const int p = env.world_size(), rank = env.rank();
    int failures = 0;
    auto check = [&](bool ok, const std::string& claim) {
      if (rank == 0) std::printf("%s %s\n", ok ? "[ok]    " : "[FAILED]", claim.c_str());
      failures += !ok;
    };
    Tensor<double> x;
    std::vector<int64_t> y;
    make_spirals(x, y);

    // Each rank initialises with its own seed; DistributedDataParallel copies rank 0's weights.
    auto model = make_model(100 + uint64_t(rank));
    const double spread_before = spread_across_ranks(*model, world);
    dist::DistributedDataParallel<double> ddp(model, world);
    tg::optim::SGD<double> opt(ddp.named_parameters(), {.lr = 0.1, .momentum = 0.9});
    opt.set_clip_grad_norm(1.0);
    ddp.attach(opt);  // step() waits for the averaged gradients
    const double spread_after = spread_across_ranks(*model, world);

    // Each rank its shard of every epoch's shuffle: kGlobalBatch / p samples per step.
    auto sampler = std::make_shared<dist::DistributedSampler>(
        kSamples, world, dist::DistributedSamplerOptions{.seed = 1});
    io::DataLoader<double> loader(x, y, io::DataLoaderOptions(kGlobalBatch / p), sampler);
    const double loss = train(ddp, opt, loader);
    const double spread_trained = spread_across_ranks(*model, world);

    // One process on the whole global batches, from rank 0's initial weights.
    auto alone = make_model(100);
    tg::optim::SGD<double> opt_alone(alone->named_parameters(), {.lr = 0.1, .momentum = 0.9});
    opt_alone.set_clip_grad_norm(1.0);
    io::DataLoader<double> global_loader(
        x, y, io::DataLoaderOptions(kGlobalBatch),
        std::make_shared<GlobalBatches>(kSamples, p, kGlobalBatch / p));
    const double loss_alone = train(*alone, opt_alone, global_loader);
    double difference = 0;
    for (size_t i = 0; i < model->parameters().size(); ++i)
      difference = std::max(difference, (model->parameters()[i].value().array() -
                                         alone->parameters()[i].value().array())
                                            .abs()
                                            .maxCoeff());

    if (rank == 0) {
      std::printf("%d processes x %lld samples = global batch %lld, %lld steps per epoch\n", p,
                  static_cast<long long>(kGlobalBatch / p), static_cast<long long>(kGlobalBatch),
                  static_cast<long long>(loader.size()));
      std::printf("weights differ across ranks: %.3g before DDP, %.3g after, %.3g after training\n",
                  spread_before, spread_after, spread_trained);
      std::printf("last batch loss: %.6f (rank 0's share), one process alone: %.6f (whole batch)\n",
                  loss, loss_alone);
      std::printf("largest weight difference, %d ranks against one process: %.3g\n", p, difference);
    }
    check(p == 1 || spread_before > 0.01, "the ranks start from different weights");
    check(spread_after == 0, "DistributedDataParallel makes them rank 0's, bit for bit");
    check(spread_trained == 0, "after training the replicas are still identical");
    check(difference < 1e-10, "p ranks on 1/p of each batch train as one process on all of it");
    // Every rank returns the same code: a rank that alone failed would leave the others' exit
    // status zero.
    Tensor<double> failed = Tensor<double>::full({1}, double(failures));
    world.allreduce(failed, dist::ReduceOp::max);
    return failed.data()[0] > 0 ? 1 : 0;
  });
}
