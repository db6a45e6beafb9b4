#pragma once
// The training loop the two Fashion-MNIST examples share (not part of the library): epochs over
// the 60k training images with a progress bar (loss, images/s), test accuracy on the 10k test
// images after each epoch, a checkpoint (model + optimizer state, safetensors) after each epoch,
// and resuming from one.

#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <memory>
#include <string>

#include "example_util.hpp"
#include "tapegrad/io/checkpoint.hpp"
#include "tapegrad/io/dataloader.hpp"
#include "tapegrad/io/fashion_mnist.hpp"
#include "tapegrad/nn/module.hpp"
#include "tapegrad/ops/loss.hpp"
#include "tapegrad/optim/optimizer.hpp"
#include "tapegrad/optim/scheduler.hpp"

namespace examples {

// Fashion-MNIST training-set pixel statistics (torchvision's usual Normalize values).
inline constexpr float kFashionMean = 0.2860f, kFashionStd = 0.3530f;

struct TrainOptions {
  std::string name;  // the example's name: checkpoint files are <name>_epoch<N>.safetensors
  int epochs = 1;
  int64_t batch_size = 64;
  tg::io::ImageLayout layout = tg::io::ImageLayout::NCHW;
  std::string data_dir;        // "" = $TAPEGRAD_FASHION_MNIST_DIR, else the Debian path
  std::string checkpoint_dir;  // "" = no checkpoints
  std::string resume;          // a checkpoint to continue from, or ""
  uint64_t seed = 0;           // the shuffling order
  // "cosine": lr annealed per step from its initial value to 0 at the end of the last epoch
  // (CosineAnnealingLR over all steps); "constant": the initial lr throughout.
  std::string lr_schedule = "constant";
};

// Trains `model` with `opt` as described above; returns the last test accuracy.
template <class Opt>
double fit(tg::nn::Module<float>& model, Opt& opt, const TrainOptions& o) {
  namespace io = tg::io;
  const auto t_load = std::chrono::steady_clock::now();
  const io::FashionMNIST train(io::Split::Train, o.data_dir, o.layout);
  const io::FashionMNIST test(io::Split::Test, o.data_dir, o.layout);
  std::printf("Fashion-MNIST from %s: %lld training, %lld test images (%.1f s)\n",
              train.directory.c_str(), static_cast<long long>(train.size()),
              static_cast<long long>(test.size()), seconds_since(t_load));
  if (!o.checkpoint_dir.empty()) make_dirs(o.checkpoint_dir);

  io::DataLoader<float> loader(train.images, train.labels,
                               io::DataLoaderOptions(o.batch_size)
                                   .shuffle(true)
                                   .seed(o.seed)
                                   .normalize(kFashionMean, kFashionStd));
  io::DataLoader<float> test_loader(
      test.images, test.labels, io::DataLoaderOptions(1000).normalize(kFashionMean, kFashionStd));

  int first_epoch = 1;
  if (!o.resume.empty()) {
    const io::Metadata meta = io::load_checkpoint(o.resume, model, opt);
    std::string done;
    for (const auto& [k, v] : meta)
      if (k == "epoch") done = v;
    char* end = nullptr;
    const long e = std::strtol(done.c_str(), &end, 10);
    if (done.empty() || *end != '\0' || e < 1)
      throw tg::IOError(o.resume + ": no valid \"epoch\" entry in the checkpoint's metadata");
    first_epoch = static_cast<int>(e) + 1;
    std::printf("Resumed from %s after epoch %ld (test accuracy %.4f)\n", o.resume.c_str(), e,
                accuracy(model, test_loader));
    if (first_epoch > o.epochs)
      std::printf("Nothing to do: the checkpoint already has %ld of %d epochs (raise --epochs)\n",
                  e, o.epochs);
  }
  loader.set_epoch(first_epoch - 1);  // the same shuffling as an uninterrupted run
  std::unique_ptr<tg::optim::CosineAnnealingLR<float>> schedule;
  if (o.lr_schedule == "cosine") {
    schedule = std::make_unique<tg::optim::CosineAnnealingLR<float>>(
        opt, std::max<int64_t>(1, int64_t(o.epochs) * loader.size()));
    schedule->set_epoch(int64_t(first_epoch - 1) * loader.size());  // resumes mid-schedule
  } else if (o.lr_schedule != "constant") {
    throw tg::ValueError("--lr-schedule must be cosine or constant, got '" + o.lr_schedule + "'");
  }

  double acc = NAN;
  tg::Tape<float> tape;
  for (int epoch = first_epoch; epoch <= o.epochs; ++epoch) {
    model.train();
    ProgressBar bar("epoch " + std::to_string(epoch) + "/" + std::to_string(o.epochs),
                    loader.size());
    const auto t0 = std::chrono::steady_clock::now();
    double loss_sum = 0;
    int64_t seen = 0, step = 0;
    for (const auto& batch : loader) {
      tape.clear();
      opt.zero_grad();
      auto loss = tg::cross_entropy(model(tape.constant(batch.images)), batch.labels);
      tape.backward(loss);
      opt.step();
      if (schedule) schedule->step();
      loss_sum += double(loss.item()) * double(batch.size());
      seen += batch.size();
      ++step;
      tape.clear();  // releases the batch: the loader reuses its buffer
      char info[96];
      std::snprintf(info, sizeof info, "loss %.4f  %.0f img/s", loss_sum / double(seen),
                    double(seen) / seconds_since(t0));
      bar.update(step, info);
    }
    bar.finish();
    const double train_seconds = seconds_since(t0);
    acc = accuracy(model, test_loader);
    std::printf("epoch %d/%d  train loss %.4f  test accuracy %.4f  %.1f s (%.0f img/s)", epoch,
                o.epochs, loss_sum / double(seen), acc, train_seconds,
                double(seen) / train_seconds);
    if (!o.checkpoint_dir.empty()) {
      const std::string path =
          o.checkpoint_dir + "/" + o.name + "_epoch" + std::to_string(epoch) + ".safetensors";
      char a[32];
      std::snprintf(a, sizeof a, "%.4f", acc);
      io::save_checkpoint(
          path, model, opt,
          {{"example", o.name}, {"epoch", std::to_string(epoch)}, {"test_accuracy", a}});
      std::printf("  -> %s", path.c_str());
    }
    std::printf("\n");
    std::fflush(stdout);
  }
  return acc;
}

// The flags both examples take; prints --help text with `what` describing the example.
inline TrainOptions parse_train_flags(int argc, char** argv, const char* name, const char* what,
                                      int default_epochs, const char* default_schedule,
                                      int& threads) {
  Flags f(argc, argv,
          {"epochs", "data-dir", "threads", "checkpoint-dir", "resume", "seed", "lr-schedule"},
          {"help"});
  if (f.has("help")) {
    std::printf(
        "Usage: %s [flags]\n%s\n\n"
        "  --epochs N           epochs to train (default %d); with --resume, the total\n"
        "  --data-dir DIR       Fashion-MNIST folder (default $%s, else %s)\n"
        "  --threads N          threads (default 1; more help only on an idle machine)\n"
        "  --checkpoint-dir D   where a checkpoint is written after every epoch\n"
        "                       (default checkpoints; \"\" for none)\n"
        "  --resume PATH        continue from a checkpoint this program wrote\n"
        "  --seed N             seed of the shuffling order (default 0)\n"
        "  --lr-schedule S      cosine (annealed per step to 0 at the last epoch's end, over\n"
        "                       --epochs) or constant (default %s)\n"
        "  --help               this text\n",
        name, what, default_epochs, tg::io::FashionMNIST::environment_variable,
        tg::io::FashionMNIST::default_directory, default_schedule);
    std::exit(0);
  }
  TrainOptions o;
  o.name = name;
  o.epochs = static_cast<int>(f.integer("epochs", default_epochs, 1));
  o.data_dir = f.str("data-dir", "");
  o.checkpoint_dir = f.str("checkpoint-dir", "checkpoints");
  o.resume = f.str("resume", "");
  o.seed = static_cast<uint64_t>(f.integer("seed", 0, 0));
  o.lr_schedule = f.str("lr-schedule", default_schedule);
  if (o.lr_schedule != "cosine" && o.lr_schedule != "constant") {
    std::fprintf(stderr, "error: --lr-schedule must be cosine or constant (see --help)\n");
    std::exit(2);
  }
  threads = static_cast<int>(f.integer("threads", 1, 1));
  return o;
}

}  // namespace examples
