// bench_ddp: data-parallel training steps of the speed issue's workloads (workloads.hpp) over MPI.
// Run it under mpirun; benchmarks/ddp.sh runs the comparison of the issue (1 rank, 2 ranks,
// 1 process x 2 threads) and prints the speedups.
//
//   mpirun -np 2 build/release/benchmarks/bench_ddp --workload wide-mlp
//   mpirun -np 1 build/release/benchmarks/bench_ddp --plain --threads 2   # no DDP at all
//
// One step = zero_grad, forward, cross-entropy, backward, clip-by-global-norm 1.0, SGD momentum
// 0.9, each rank on the workload's batch (the same per-rank batch at any rank count: weak
// scaling, as the issue asks). --plain times the one-process step without DistributedDataParallel
// (the baseline); otherwise the model is wrapped in it and the optimizer attached. Rank 0 prints
// one line per workload: ms per step (the slowest rank's mean), samples per second over all
// ranks, the time of forward, backward and optimizer step, and the averaging's cost per step:
// communication (first bucket's start to last one's end) and the part the training thread waited
// for, hence the share hidden behind the backward pass.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <string>
#include <vector>

#include "tapegrad/distributed/distributed.hpp"
#include "workloads.hpp"

namespace dist = tapegrad::distributed;

namespace {

double now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

struct Options {
  std::vector<std::string> workloads{"small-resnet", "wide-mlp"};
  int steps = 0;  // 0: about 3 s of steps
  int warmup = 5;
  int threads = 1;
  bool plain = false;
  double bucket_cap_mb = 25, first_bucket_cap_mb = 1;
  bool progress_thread = true;
};

void run(dist::Environment& env, const std::string& name, const Options& o) {
  dist::ProcessGroup& world = env.world();
  workloads::Workload w = workloads::make(name);
  const int64_t batch = w.input.size(0);
  std::unique_ptr<dist::DistributedDataParallel<float>> ddp;
  if (!o.plain)
    ddp = std::make_unique<dist::DistributedDataParallel<float>>(
        w.model, world,
        dist::DDPOptions{.bucket_cap_mb = o.bucket_cap_mb,
                         .first_bucket_cap_mb = o.first_bucket_cap_mb,
                         .progress_thread = o.progress_thread});
  tg::nn::Module<float>& model = ddp ? static_cast<tg::nn::Module<float>&>(*ddp) : *w.model;
  tg::optim::SGD<float> opt(w.model->parameters(), {.lr = 0.01, .momentum = 0.9});
  opt.set_clip_grad_norm(1.0);
  if (ddp) ddp->attach(opt);
  tg::Tape<float> tape;
  double t_fwd = 0, t_bwd = 0, t_opt = 0;
  auto step = [&] {
    const double t0 = now();
    tape.clear();
    opt.zero_grad();
    auto loss = tg::cross_entropy(model(tape.constant(w.input)), w.labels);
    const double t1 = now();
    tape.backward(loss);
    const double t2 = now();
    opt.step();
    const double t3 = now();
    t_fwd += t1 - t0;
    t_bwd += t2 - t1;
    t_opt += t3 - t2;
  };
  for (int i = 0; i < o.warmup; ++i) step();
  int steps = o.steps;
  if (steps <= 0) {  // about 3 s, the same count on every rank
    const double t0 = now();
    step();
    steps = std::clamp(int(3.0 / std::max(now() - t0, 1e-4)), 5, 2000);
    steps = world.allreduce(steps, dist::ReduceOp::min);
  }
  if (ddp) ddp->reset_stats();
  t_fwd = t_bwd = t_opt = 0;
  world.barrier();
  const double start = now();
  for (int i = 0; i < steps; ++i) step();
  const double mine = now() - start;
  const double elapsed = world.allreduce(mine, dist::ReduceOp::max);
  const int p = env.world_size();
  const double comm =
      ddp ? world.allreduce(ddp->stats().communication_seconds, dist::ReduceOp::avg) : 0.0;
  const double wait = ddp ? world.allreduce(ddp->stats().wait_seconds, dist::ReduceOp::avg) : 0.0;
  t_fwd = world.allreduce(t_fwd, dist::ReduceOp::avg);
  t_bwd = world.allreduce(t_bwd, dist::ReduceOp::avg);
  t_opt = world.allreduce(t_opt, dist::ReduceOp::avg);
  int64_t grad_bytes = 0;
  for (const auto& prm : w.model->parameters()) grad_bytes += prm.numel() * int64_t(sizeof(float));
  if (env.rank() == 0) {
    const double ms = 1e3 / steps;
    std::printf(
        "%-13s %-5s ranks %d threads %d batch/rank %4lld  %8.2f ms/step  %9.1f samples/s  "
        "fwd %7.2f bwd %7.2f opt %6.2f ms  comm %6.2f wait %6.2f ms/step  hidden %5.1f%%  "
        "grad %.2f MB  steps %d\n",
        name.c_str(), o.plain ? "plain" : "ddp", p, tg::get_num_threads(),
        static_cast<long long>(batch), elapsed * ms, double(p * batch * steps) / elapsed,
        t_fwd * ms, t_bwd * ms, t_opt * ms, comm * ms, wait * ms,
        comm > 0 ? 100 * (1 - wait / comm) : 0.0, double(grad_bytes) / (1 << 20), steps);
    std::fflush(stdout);
  }
}

}  // namespace

int main(int argc, char** argv) {
  return dist::run(argc, argv, [&](dist::Environment& env) {
    Options o;
    for (int i = 1; i < argc; ++i) {
      const std::string a = argv[i];
      auto value = [&]() -> std::string {
        if (i + 1 >= argc) throw tg::ValueError(a + " needs a value");
        return argv[++i];
      };
      if (a == "--workload") {
        const std::string v = value();
        o.workloads = v == "all" ? std::vector<std::string>{"small-resnet", "wide-mlp"}
                                 : std::vector<std::string>{v};
      } else if (a == "--steps") {
        o.steps = std::stoi(value());
      } else if (a == "--warmup") {
        o.warmup = std::stoi(value());
      } else if (a == "--threads") {
        o.threads = std::stoi(value());
      } else if (a == "--plain") {
        o.plain = true;
      } else if (a == "--bucket-cap-mb") {
        o.bucket_cap_mb = std::stod(value());
      } else if (a == "--first-bucket-cap-mb") {
        o.first_bucket_cap_mb = std::stod(value());
      } else if (a == "--no-progress-thread") {
        o.progress_thread = false;
      } else if (a == "--help") {
        if (env.rank() == 0)
          std::printf(
              "Usage: mpirun -np P %s [--workload small-resnet|wide-mlp|all] [--steps N]\n"
              "       [--warmup N] [--threads N] [--plain] [--bucket-cap-mb X]\n"
              "       [--first-bucket-cap-mb X] [--no-progress-thread]\n",
              argv[0]);
        return 0;
      } else {
        throw tg::ValueError("unknown argument " + a + " (see --help)");
      }
    }
    tg::set_num_threads(o.threads);
    for (const auto& name : o.workloads) run(env, name, o);
    return 0;
  });
}
