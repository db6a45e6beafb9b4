// The installed distributed component at work (run by install_consumer under mpiexec -n 2):
// rank r sees input r + 1; the averaged gradient of w·x is (1 + 2) / 2 = 1.5 on both ranks, and
// rank 1's initial weight is replaced by rank 0's.
#include <cstdio>
#include <tapegrad/distributed/distributed.hpp>
#include <tapegrad/tapegrad.hpp>

int main(int argc, char** argv) {
  namespace dist = tapegrad::distributed;
  return dist::run(argc, argv, [](dist::Environment& env) {
    auto dense = std::make_shared<tg::nn::Dense<double>>(1, 1, false);
    dense->weight.value()[0] = env.rank() == 0 ? 0.5 : 7.0;
    dist::DistributedDataParallel<double> ddp(dense, env.world());
    tg::Tape<double> tape;
    auto y = ddp(tape.constant(tg::Tensor<double>::full({1, 1}, env.rank() + 1.0)));
    tape.backward(tg::sum(y));
    const double g = dense->weight.grad()[0], w = dense->weight.value()[0];
    const int expected = env.world_size() == 2 && g == 1.5 && w == 0.5;
    const int ok = env.world().allreduce(expected, dist::ReduceOp::min);
    if (env.rank() == 0) std::printf("distributed consumer: gradient %g, weight %g\n", g, w);
    return ok ? 0 : 1;
  });
}
