// fashion_ddp: data-parallel training on Fashion-MNIST over MPI (tapegrad::distributed), the
// models of fashion_resnet and fashion_mlp. Every process trains a replica on its share of each
// global batch (DistributedSampler), DistributedDataParallel averages the gradients during the
// backward pass, and the replicas take identical steps; with SyncBatchNorm (default) the BatchNorm
// statistics are those of the global batch, so p processes compute what one process computes
// with the same global batch, up to float rounding.
//
//   mpirun -np 2 build/release/examples/fashion_ddp                    # small ResNet, 3 epochs
//   mpirun -np 1 build/release/examples/fashion_ddp                    # the same, one process
//   mpirun -np 4 --hostfile hosts build/release/examples/fashion_ddp --model mlp
//   srun -n 8 build/release/examples/fashion_ddp                       # under Slurm
//
// The global batch (--batch-size, default 64 for the ResNet, 128 for the MLP) is split evenly
// among the processes. The test accuracy after each epoch is computed on the 10k test images
// shared among the processes. Rank 0 prints the progress and writes a checkpoint after each epoch
// (every rank reads it with --resume). --help for the flags.
#include <chrono>
#include <cstdio>
#include <memory>
#include <span>
#include <string>

#include "example_util.hpp"
#include "fashion_train.hpp"
#include "resume_epoch.hpp"
#include "tapegrad/distributed/distributed.hpp"
#include "tapegrad/tapegrad.hpp"

namespace nn = tapegrad::nn;
namespace io = tapegrad::io;
namespace dist = tapegrad::distributed;

namespace {

// Test images r, r + p, r + 2p, ...: disjoint shares of the test set, no padding.
class Strided : public io::Sampler {
 public:
  Strided(int64_t n, int p, int r) : n_(n), p_(p), r_(r) {}
  int64_t size() const override { return r_ < n_ ? (n_ - r_ + p_ - 1) / p_ : 0; }
  void indices(int64_t, std::span<int64_t> out) const override {
    for (size_t k = 0; k < out.size(); ++k) out[k] = r_ + int64_t(k) * p_;
  }

 private:
  int64_t n_;
  int p_, r_;
};

// The accuracy over every process's share: correct and seen summed over the processes.
double accuracy(nn::Module<float>& model, io::DataLoader<float>& loader, dist::ProcessGroup& g) {
  model.eval();
  tg::NoGradGuard no_grad;
  tg::Tape<float> tape;
  int64_t correct = 0, seen = 0;
  for (const auto& batch : loader) {
    tape.clear();
    const tg::Tensor<float>& logits = model(tape.constant(batch.images)).value();
    for (int64_t i = 0; i < batch.size(); ++i)
      correct += examples::argmax_row(logits, i) == batch.labels[size_t(i)];
    seen += batch.size();
    tape.clear();
  }
  model.train();
  correct = g.allreduce(correct);
  seen = g.allreduce(seen);
  return seen ? double(correct) / double(seen) : 0.0;
}

std::shared_ptr<nn::Sequential<float>> make_model(const std::string& kind) {
  if (kind == "mlp")
    return std::make_shared<nn::Sequential<float>>(
        std::make_shared<nn::Dense<float>>(784, 256), std::make_shared<nn::ReLU<float>>(),
        std::make_shared<nn::Dense<float>>(256, 256), std::make_shared<nn::ReLU<float>>(),
        std::make_shared<nn::Dense<float>>(256, 10));
  return std::make_shared<nn::Sequential<float>>(
      std::make_shared<nn::Conv2D<float>>(1, 16, 3, 1, 1, 1, /*bias=*/false),
      std::make_shared<nn::BatchNorm2d<float>>(16), std::make_shared<nn::ReLU<float>>(),
      std::make_shared<nn::BasicBlock<float>>(16, 16),
      std::make_shared<nn::BasicBlock<float>>(16, 16),
      std::make_shared<nn::BasicBlock<float>>(16, 16),
      std::make_shared<nn::BasicBlock<float>>(16, 32, /*stride=*/2),
      std::make_shared<nn::GlobalAvgPool2D<float>>(), std::make_shared<nn::Dense<float>>(32, 10));
}

int train(dist::Environment& env, int argc, char** argv) {
  // --epochs, --batch-size and --lr-schedule: 0 or "" until parsed, their defaults depend on
  // --model.
  examples::TrainOptions o;
  o.name = "fashion_ddp";
  o.epochs = 0;
  o.checkpoint_dir = "checkpoints";
  o.lr_schedule = "";
  std::string kind = "resnet";
  int64_t global_batch = 0;
  int threads = 1;
  bool no_sync_bn = false;
  dist::DDPOptions ddp_options;
  CLI::App app(
      "Data-parallel training on Fashion-MNIST over MPI: run it as mpirun -np P fashion_ddp.");
  app.add_option("--model", kind,
                 "resnet (fashion_resnet's: SGD 0.05, momentum 0.9, cosine lr) or\n"
                 "mlp (fashion_mlp's: Adam 1e-3, constant lr)")
      ->capture_default_str()
      ->check(CLI::IsMember({"resnet", "mlp"}));
  app.add_option("--batch-size", global_batch,
                 "the global batch, split among the P processes (a multiple of P)")
      ->default_str("64 for resnet, 128 for mlp")
      ->check(examples::positive());
  app.add_flag("--no-sync-bn", no_sync_bn,
               "BatchNorm on each process's share alone (default: SyncBatchNorm)");
  app.add_option("--bucket-cap-mb", ddp_options.bucket_cap_mb, "gradient bucket size (PyTorch's)")
      ->capture_default_str()
      ->check(examples::positive());
  examples::add_train_flags(app, o, threads);
  app.get_option("--epochs")->default_str("3 for resnet, 5 for mlp");
  app.get_option("--lr-schedule")->default_str("cosine for resnet, constant for mlp");
  if (const int rc = examples::parse_flags(app, argc, argv, env.rank() == 0); rc >= 0) return rc;
  const bool resnet = kind == "resnet";
  if (o.epochs == 0) o.epochs = resnet ? 3 : 5;
  if (global_batch == 0) global_batch = resnet ? 64 : 128;
  if (o.lr_schedule.empty()) o.lr_schedule = resnet ? "cosine" : "constant";
  const int p = env.world_size(), rank = env.rank();
  if (global_batch % p != 0)
    throw tg::ValueError("--batch-size " + std::to_string(global_batch) +
                         " is not a multiple of the " + std::to_string(p) + " processes");
  tg::set_num_threads(threads);
  dist::ProcessGroup& world = env.world();

  const auto layout = resnet ? io::ImageLayout::NCHW : io::ImageLayout::Flat;
  const io::FashionMNIST train_set(io::Split::Train, o.data_dir, layout);
  const io::FashionMNIST test_set(io::Split::Test, o.data_dir, layout);
  auto sampler = std::make_shared<dist::DistributedSampler>(
      train_set.size(), world, dist::DistributedSamplerOptions{.shuffle = true, .seed = o.seed});
  io::DataLoader<float> loader(train_set.images, train_set.labels,
                               io::DataLoaderOptions(global_batch / p)
                                   .normalize(examples::kFashionMean, examples::kFashionStd),
                               sampler);
  io::DataLoader<float> test_loader(
      test_set.images, test_set.labels,
      io::DataLoaderOptions(1000).normalize(examples::kFashionMean, examples::kFashionStd),
      std::make_shared<Strided>(test_set.size(), p, rank));

  auto model = make_model(kind);
  const int synced = no_sync_bn ? 0 : dist::convert_sync_batchnorm(*model, world);
  dist::DistributedDataParallel<float> ddp(model, world, ddp_options);
  std::unique_ptr<tg::optim::Optimizer<float>> opt;
  if (resnet)
    opt = std::make_unique<tg::optim::SGD<float>>(
        ddp.named_parameters(), tg::optim::SGDOptions{.lr = 0.05, .momentum = 0.9});
  else
    opt = std::make_unique<tg::optim::Adam<float>>(ddp.named_parameters(),
                                                   tg::optim::AdamOptions{.lr = 1e-3});
  ddp.attach(*opt);
  if (rank == 0)
    std::printf(
        "fashion_ddp: %s, %d processes x %lld images = global batch %lld, %s, %d thread(s) "
        "per process, progress thread %s\n",
        kind.c_str(), p, static_cast<long long>(global_batch / p),
        static_cast<long long>(global_batch),
        synced       ? "SyncBatchNorm"
        : no_sync_bn ? "local BatchNorm"
                     : "no BatchNorm",
        tg::get_num_threads(), ddp.has_progress_thread() ? "on" : "off");

  int first_epoch = 1;
  if (!o.resume.empty()) {
    first_epoch = examples::resumed_epoch(dist::load_checkpoint(o.resume, ddp, *opt), o.resume) + 1;
    if (rank == 0)
      std::printf("resumed from %s after epoch %d\n", o.resume.c_str(), first_epoch - 1);
    if (rank == 0) examples::say_if_nothing_to_do(first_epoch - 1, o.epochs);
  }
  if (!o.checkpoint_dir.empty() && rank == 0) examples::make_dirs(o.checkpoint_dir);
  loader.set_epoch(first_epoch - 1);
  std::unique_ptr<tg::optim::CosineAnnealingLR<float>> cosine;
  if (o.lr_schedule == "cosine") {
    cosine = std::make_unique<tg::optim::CosineAnnealingLR<float>>(
        *opt, std::max<int64_t>(1, int64_t(o.epochs) * loader.size()));
    cosine->set_epoch(int64_t(first_epoch - 1) * loader.size());
  }

  double acc = 0;
  tg::Tape<float> tape;
  for (int epoch = first_epoch; epoch <= o.epochs; ++epoch) {
    model->train();
    ddp.reset_stats();
    examples::ProgressBar bar(rank == 0 ? "epoch " + std::to_string(epoch) : std::string(),
                              loader.size());
    const auto t0 = std::chrono::steady_clock::now();
    double loss_sum = 0;
    int64_t seen = 0, step = 0;
    for (const auto& batch : loader) {
      tape.clear();
      opt->zero_grad();
      auto loss = tg::cross_entropy(ddp(tape.constant(batch.images)), batch.labels);
      tape.backward(loss);
      opt->step();
      if (cosine) cosine->step();
      loss_sum += double(loss.item()) * double(batch.size());
      seen += batch.size();
      tape.clear();
      if (rank == 0) {
        char info[96];
        std::snprintf(info, sizeof info, "loss %.4f  %.0f img/s", loss_sum / double(seen),
                      double(seen * p) / examples::seconds_since(t0));
        bar.update(++step, info);
      }
    }
    bar.finish();
    const double seconds = examples::seconds_since(t0);
    const double train_loss = world.allreduce(loss_sum) / double(world.allreduce(seen));
    // The replicas' running statistics: rank 0's everywhere (equal anyway with SyncBatchNorm).
    for (auto& [n, b] : model->named_buffers()) world.broadcast(b, 0);
    acc = accuracy(*model, test_loader, world);
    const dist::DDPStats& s = ddp.stats();
    if (rank == 0) {
      std::printf("epoch %d/%d  train loss %.4f  test accuracy %.4f  %.1f s (%.0f img/s)", epoch,
                  o.epochs, train_loss, acc, seconds, double(seen * p) / seconds);
      if (p > 1)
        std::printf("  allreduce %.1f s, %.0f%% hidden behind backward", s.communication_seconds,
                    100 * s.hidden_fraction());
    }
    if (!o.checkpoint_dir.empty()) {
      const std::string path = o.checkpoint_dir + "/fashion_ddp_" + kind + "_epoch" +
                               std::to_string(epoch) + ".safetensors";
      char a[32];
      std::snprintf(a, sizeof a, "%.4f", acc);
      dist::save_checkpoint(path, ddp, *opt,
                            {{"example", "fashion_ddp"},
                             {"model", kind},
                             {"epoch", std::to_string(epoch)},
                             {"test_accuracy", a}});
      if (rank == 0) std::printf("  -> %s", path.c_str());
    }
    if (rank == 0) std::printf("\n"), std::fflush(stdout);
  }
  if (rank == 0 && first_epoch <= o.epochs) std::printf("final test accuracy %.4f\n", acc);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  // Any exception on any rank prints its message and ends the whole job (MPI_Abort).
  return dist::run(argc, argv, [&](dist::Environment& env) { return train(env, argc, argv); });
}
