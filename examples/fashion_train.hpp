#pragma once
// The training loop the two Fashion-MNIST examples share (not part of the library): epochs over
// the 60k training images with a progress bar (loss, images/s), test accuracy on the 10k test
// images after each epoch, a checkpoint (model + optimizer state, safetensors) after each epoch,
// and resuming from one.

#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>

#include "example_util.hpp"
#include "resume_epoch.hpp"
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
    const int done = resumed_epoch(io::load_checkpoint(o.resume, model, opt), o.resume);
    first_epoch = done + 1;
    std::printf("Resumed from %s after epoch %d (test accuracy %.4f)\n", o.resume.c_str(), done,
                accuracy(model, test_loader));
    say_if_nothing_to_do(done, o.epochs);
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

// Declares the flags fashion_mlp, fashion_resnet and fashion_ddp take, into `o` and `threads`;
// --help shows the values they hold as the defaults.
inline void add_train_flags(CLI::App& app, TrainOptions& o, int& threads) {
  app.add_option("--epochs", o.epochs, "epochs to train; with --resume, the total")
      ->capture_default_str()
      ->check(positive());
  app.add_option("--data-dir", o.data_dir,
                 std::string("Fashion-MNIST folder\n(default $") +
                     tg::io::FashionMNIST::environment_variable + ", else " +
                     tg::io::FashionMNIST::default_directory + ")");
  app.add_option("--threads", threads, "threads")->capture_default_str()->check(positive());
  app.add_option("--checkpoint-dir", o.checkpoint_dir,
                 "where a checkpoint is written after every epoch (\"\" for none)")
      ->capture_default_str();
  app.add_option("--resume", o.resume, "continue from a checkpoint this program wrote");
  app.add_option("--seed", o.seed, "seed of the shuffling order")->capture_default_str();
  app.add_option("--lr-schedule", o.lr_schedule,
                 "cosine (annealed per step to 0 at the last epoch's end, over --epochs)\n"
                 "or constant")
      ->capture_default_str()
      ->check(CLI::IsMember({"cosine", "constant"}));
}

// Parses the flags of fashion_mlp and fashion_resnet (`what` describes the example); exits after
// --help (status 0) or a bad flag (status 2).
inline TrainOptions parse_train_flags(int argc, char** argv, const char* name, const char* what,
                                      int default_epochs, const char* default_schedule,
                                      int& threads) {
  TrainOptions o;
  o.name = name;
  o.epochs = default_epochs;
  o.checkpoint_dir = "checkpoints";
  o.lr_schedule = default_schedule;
  CLI::App app(what);
  add_train_flags(app, o, threads);
  if (const int rc = parse_flags(app, argc, argv); rc >= 0) std::exit(rc);
  return o;
}

}  // namespace examples
