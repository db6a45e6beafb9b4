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
  examples::Flags f(argc, argv,
                    {"model", "epochs", "batch-size", "data-dir", "threads", "checkpoint-dir",
                     "resume", "seed", "lr-schedule", "bucket-cap-mb"},
                    {"help", "no-sync-bn"});
  if (f.has("help")) {
    if (env.rank() == 0)
      std::printf(
          "Usage: mpirun -np P %s [flags]\n"
          "Data-parallel training on Fashion-MNIST over MPI.\n\n"
          "  --model M            resnet (fashion_resnet's: SGD 0.05, momentum 0.9, cosine lr) or\n"
          "                       mlp (fashion_mlp's: Adam 1e-3, constant lr); default resnet\n"
          "  --epochs N           epochs (default 3 for resnet, 5 for mlp); with --resume, the "
          "total\n"
          "  --batch-size B       the global batch, split among the P processes (default 64 for\n"
          "                       resnet, 128 for mlp; must be a multiple of P)\n"
          "  --no-sync-bn         BatchNorm on each process's share alone (default: "
          "SyncBatchNorm)\n"
          "  --bucket-cap-mb X    gradient bucket size (default 25, PyTorch's)\n"
          "  --data-dir DIR       Fashion-MNIST folder (default $%s, else %s)\n"
          "  --threads N          threads per process (default 1)\n"
          "  --checkpoint-dir D   where rank 0 writes a checkpoint after every epoch (default\n"
          "                       checkpoints; \"\" for none)\n"
          "  --resume PATH        continue from a checkpoint this program wrote (every rank reads "
          "it)\n"
          "  --seed N             seed of the shuffling order (default 0)\n"
          "  --lr-schedule S      cosine or constant (default: cosine for resnet, constant for "
          "mlp)\n",
          argv[0], io::FashionMNIST::environment_variable, io::FashionMNIST::default_directory);
    return 0;
  }
  const std::string kind = f.str("model", "resnet");
  if (kind != "resnet" && kind != "mlp") throw tg::ValueError("--model must be resnet or mlp");
  const bool resnet = kind == "resnet";
  const int epochs = int(f.integer("epochs", resnet ? 3 : 5, 1));
  const int64_t global_batch = f.integer("batch-size", resnet ? 64 : 128, 1);
  const int p = env.world_size(), rank = env.rank();
  if (global_batch % p != 0)
    throw tg::ValueError("--batch-size " + std::to_string(global_batch) +
                         " is not a multiple of the " + std::to_string(p) + " processes");
  const std::string schedule = f.str("lr-schedule", resnet ? "cosine" : "constant");
  if (schedule != "cosine" && schedule != "constant")
    throw tg::ValueError("--lr-schedule must be cosine or constant");
  const std::string checkpoint_dir = f.str("checkpoint-dir", "checkpoints");
  const uint64_t seed = uint64_t(f.integer("seed", 0, 0));
  tg::set_num_threads(int(f.integer("threads", 1, 1)));
  dist::ProcessGroup& world = env.world();

  const auto layout = resnet ? io::ImageLayout::NCHW : io::ImageLayout::Flat;
  const io::FashionMNIST train_set(io::Split::Train, f.str("data-dir", ""), layout);
  const io::FashionMNIST test_set(io::Split::Test, f.str("data-dir", ""), layout);
  auto sampler = std::make_shared<dist::DistributedSampler>(
      train_set.size(), world, dist::DistributedSamplerOptions{.shuffle = true, .seed = seed});
  io::DataLoader<float> loader(train_set.images, train_set.labels,
                               io::DataLoaderOptions(global_batch / p)
                                   .normalize(examples::kFashionMean, examples::kFashionStd),
                               sampler);
  io::DataLoader<float> test_loader(
      test_set.images, test_set.labels,
      io::DataLoaderOptions(1000).normalize(examples::kFashionMean, examples::kFashionStd),
      std::make_shared<Strided>(test_set.size(), p, rank));

  auto model = make_model(kind);
  const int synced = f.has("no-sync-bn") ? 0 : dist::convert_sync_batchnorm(*model, world);
  dist::DDPOptions ddp_options;
  if (f.has("bucket-cap-mb")) ddp_options.bucket_cap_mb = std::stod(*f.get("bucket-cap-mb"));
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
        synced                ? "SyncBatchNorm"
        : f.has("no-sync-bn") ? "local BatchNorm"
                              : "no BatchNorm",
        tg::get_num_threads(), ddp.has_progress_thread() ? "on" : "off");

  int first_epoch = 1;
  if (f.has("resume")) {
    const io::Metadata meta = dist::load_checkpoint(*f.get("resume"), ddp, *opt);
    for (const auto& [k, v] : meta)
      if (k == "epoch") first_epoch = std::stoi(v) + 1;
    if (rank == 0)
      std::printf("resumed from %s after epoch %d\n", f.get("resume")->c_str(), first_epoch - 1);
  }
  if (!checkpoint_dir.empty() && rank == 0) examples::make_dirs(checkpoint_dir);
  loader.set_epoch(first_epoch - 1);
  std::unique_ptr<tg::optim::CosineAnnealingLR<float>> cosine;
  if (schedule == "cosine") {
    cosine = std::make_unique<tg::optim::CosineAnnealingLR<float>>(
        *opt, std::max<int64_t>(1, int64_t(epochs) * loader.size()));
    cosine->set_epoch(int64_t(first_epoch - 1) * loader.size());
  }

  double acc = 0;
  tg::Tape<float> tape;
  for (int epoch = first_epoch; epoch <= epochs; ++epoch) {
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
                  epochs, train_loss, acc, seconds, double(seen * p) / seconds);
      if (p > 1)
        std::printf("  allreduce %.1f s, %.0f%% hidden behind backward", s.communication_seconds,
                    100 * s.hidden_fraction());
    }
    if (!checkpoint_dir.empty()) {
      const std::string path = checkpoint_dir + "/fashion_ddp_" + kind + "_epoch" +
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
  if (rank == 0) std::printf("final test accuracy %.4f\n", acc);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  // Any exception on any rank prints its message and ends the whole job (MPI_Abort).
  return dist::run(argc, argv, [&](dist::Environment& env) { return train(env, argc, argv); });
}
