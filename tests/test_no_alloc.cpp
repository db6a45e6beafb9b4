// After its first step, a training step allocates nothing: the tape reuses its nodes' buffers,
// the optimizer its state, the loss its label storage. Proven by counting every call of the
// global operator new (replaced below for the whole test program; it counts calls, and the bytes
// held and their peak, which other tests read through test_util.hpp's heap_* functions).
//
// The models are small on purpose: Eigen's own GEMM takes its packing workspace from the stack
// below EIGEN_STACK_ALLOCATION_LIMIT (128 KiB) and from the heap above it, and that workspace
// is Eigen's, not ours. The speed benchmarks report what the large workloads allocate.
#include <gtest/gtest.h>
#include <malloc.h>

#include <atomic>
#include <cstdlib>
#include <new>

#include "tapegrad/tapegrad.hpp"

namespace {
std::atomic<long> allocations{0};
// Bytes held through operator new (as malloc_usable_size counts them), and their peak.
std::atomic<long long> heap_now{0}, heap_max{0};

void* counted(std::size_t n, std::size_t align) {
  allocations.fetch_add(1, std::memory_order_relaxed);
  if (n == 0) n = 1;
  void* p = align <= alignof(std::max_align_t)
                ? std::malloc(n)
                : std::aligned_alloc(align, (n + align - 1) / align * align);
  if (!p) throw std::bad_alloc();
  const long long now = heap_now.fetch_add(static_cast<long long>(malloc_usable_size(p))) +
                        static_cast<long long>(malloc_usable_size(p));
  for (long long m = heap_max.load(); now > m && !heap_max.compare_exchange_weak(m, now);) {
  }
  return p;
}
void release(void* p) {
  if (p) heap_now.fetch_sub(static_cast<long long>(malloc_usable_size(p)));
  std::free(p);
}
}  // namespace

namespace tapegrad::testing {
void reset_heap_peak() { heap_max.store(heap_now.load()); }
long long heap_bytes() { return heap_now.load(); }
long long heap_peak() { return heap_max.load(); }
}  // namespace tapegrad::testing

void* operator new(std::size_t n) { return counted(n, 0); }
void* operator new[](std::size_t n) { return counted(n, 0); }
void* operator new(std::size_t n, std::align_val_t a) {
  return counted(n, static_cast<std::size_t>(a));
}
void* operator new[](std::size_t n, std::align_val_t a) {
  return counted(n, static_cast<std::size_t>(a));
}
// The nothrow forms too (std::stable_sort's temporary buffer uses them): left to the
// sanitizer's allocator, their memory would reach the free() below, a mismatch ASan reports.
void* operator new(std::size_t n, const std::nothrow_t&) noexcept {
  try {
    return counted(n, 0);
  } catch (...) {
    return nullptr;
  }
}
void* operator new[](std::size_t n, const std::nothrow_t& tag) noexcept {
  return operator new(n, tag);
}
void* operator new(std::size_t n, std::align_val_t a, const std::nothrow_t&) noexcept {
  try {
    return counted(n, static_cast<std::size_t>(a));
  } catch (...) {
    return nullptr;
  }
}
void* operator new[](std::size_t n, std::align_val_t a, const std::nothrow_t& tag) noexcept {
  return operator new(n, a, tag);
}
void operator delete(void* p, const std::nothrow_t&) noexcept { release(p); }
void operator delete[](void* p, const std::nothrow_t&) noexcept { release(p); }
void operator delete(void* p, std::align_val_t, const std::nothrow_t&) noexcept { release(p); }
void operator delete[](void* p, std::align_val_t, const std::nothrow_t&) noexcept { release(p); }
void operator delete(void* p) noexcept { release(p); }
void operator delete[](void* p) noexcept { release(p); }
void operator delete(void* p, std::size_t) noexcept { release(p); }
void operator delete[](void* p, std::size_t) noexcept { release(p); }
void operator delete(void* p, std::align_val_t) noexcept { release(p); }
void operator delete[](void* p, std::align_val_t) noexcept { release(p); }
void operator delete(void* p, std::size_t, std::align_val_t) noexcept { release(p); }
void operator delete[](void* p, std::size_t, std::align_val_t) noexcept { release(p); }

namespace {

namespace tg = tapegrad;
namespace nn = tapegrad::nn;

// Allocations of the steady-state steps, after `warmup` steps.
template <class Step>
long allocations_after_warmup(Step&& step, int warmup = 2, int measured = 3) {
  for (int i = 0; i < warmup; ++i) step();
  const long before = allocations.load();
  for (int i = 0; i < measured; ++i) step();
  return allocations.load() - before;
}

// One training step of a classifier: zero_grad, forward, cross-entropy, backward, clip, update.
struct Training {
  Training(std::shared_ptr<nn::Module<float>> m, tg::Shape input, bool adam) : model(m) {
    tg::Generator g(3);
    x = tg::Tensor<float>::randn(input, g);
    for (int64_t i = 0; i < input[0]; ++i) labels.push_back(static_cast<int64_t>(g.below(4)));
    if (adam)
      opt = std::make_unique<tg::optim::Adam<float>>(model->parameters());
    else
      opt = std::make_unique<tg::optim::SGD<float>>(
          model->parameters(), tg::optim::SGDOptions{.lr = 0.01, .momentum = 0.9});
    opt->set_clip_grad_norm(1.0);
  }
  void step() {
    tape.clear();
    opt->zero_grad();
    auto loss = tg::cross_entropy((*model)(tape.constant(x)), labels);
    tape.backward(loss);
    opt->step();
  }

  std::shared_ptr<nn::Module<float>> model;
  tg::Tensor<float> x;
  std::vector<int64_t> labels;
  tg::Tape<float> tape;
  std::unique_ptr<tg::optim::Optimizer<float>> opt;
};

TEST(NoAllocation, MlpStepWithReluSigmoidLayerNorm) {
  auto model = std::make_shared<nn::Sequential<float>>();
  model->push_back(std::make_shared<nn::Dense<float>>(20, 16));
  model->push_back(std::make_shared<nn::ReLU<float>>());
  model->push_back(std::make_shared<nn::Dense<float>>(16, 16));
  model->push_back(std::make_shared<nn::LayerNorm<float>>(16));
  model->push_back(std::make_shared<nn::Sigmoid<float>>());
  model->push_back(std::make_shared<nn::Dense<float>>(16, 4));
  Training t(model, {8, 20}, false);
  EXPECT_EQ(allocations_after_warmup([&] { t.step(); }), 0);
}

TEST(NoAllocation, ConvNetStepWithBatchNormAndResidualAndAdam) {
  auto model = std::make_shared<nn::Sequential<float>>();
  model->push_back(std::make_shared<nn::Conv2D<float>>(1, 4, 3, 1, 1, 1, false));
  model->push_back(std::make_shared<nn::BatchNorm2d<float>>(4));
  model->push_back(std::make_shared<nn::ReLU<float>>());
  model->push_back(std::make_shared<nn::BasicBlock<float>>(4, 4, 1));
  model->push_back(std::make_shared<nn::BasicBlock<float>>(4, 8, 2));
  model->push_back(std::make_shared<nn::MaxPool2D<float>>(2));
  model->push_back(std::make_shared<nn::GlobalAvgPool2D<float>>());
  model->push_back(std::make_shared<nn::Dense<float>>(8, 4));
  Training t(model, {2, 1, 8, 8}, true);
  EXPECT_EQ(allocations_after_warmup([&] { t.step(); }), 0);
}

// Activation checkpointing (Sequential::checkpoint_every, with Dropout replayed): the segments'
// scratch tape and the closures on the checkpoint nodes reuse their storage too.
TEST(NoAllocation, CheckpointedMlpStepWithDropout) {
  auto model = std::make_shared<nn::Sequential<float>>();
  for (int i = 0; i < 4; ++i) {
    model->push_back(std::make_shared<nn::Dense<float>>(i == 0 ? 20 : 16, 16));
    model->push_back(std::make_shared<nn::Tanh<float>>());
    model->push_back(std::make_shared<nn::Dropout<float>>(0.2));
  }
  model->push_back(std::make_shared<nn::Dense<float>>(16, 4));
  model->checkpoint_every(3);
  Training t(model, {8, 20}, true);
  EXPECT_EQ(allocations_after_warmup([&] { t.step(); }), 0);
}

// At 2 threads, with layers large enough for the parallel paths (GEMM, update, clipping norm).
TEST(NoAllocation, LargeMlpStepAtTwoThreads) {
  auto model = std::make_shared<nn::Sequential<float>>();
  model->push_back(std::make_shared<nn::Dense<float>>(300, 256));
  model->push_back(std::make_shared<nn::ReLU<float>>());
  model->push_back(std::make_shared<nn::Dense<float>>(256, 4));
  Training t(model, {128, 300}, false);
  tg::set_num_threads(2);
  const long n = allocations_after_warmup([&] { t.step(); });
  tg::set_num_threads(1);
  EXPECT_EQ(n, 0);
}

// A causal Transformer language model (Embedding, learned positions, a 2-layer encoder with
// masks, a Dense head), Post-LN and Pre-LN, at 1 and 2 threads (the attention heads shared among
// the threads).
class TinyLM : public nn::Module<float> {
 public:
  explicit TinyLM(bool norm_first) {
    tok = register_module("tok", std::make_shared<nn::Embedding<float>>(11, 16));
    pos = register_module("pos", std::make_shared<nn::LearnedPositionalEncoding<float>>(8, 16));
    nn::TransformerEncoderLayer<float> layer(
        16, 4, {.dim_feedforward = 32, .dropout = 0.1, .norm_first = norm_first});
    enc = register_module("enc", std::make_shared<nn::TransformerEncoder<float>>(layer, 2));
    head = register_module("head", std::make_shared<nn::Dense<float>>(16, 11));
  }
  tg::Var<float> forward(const tg::Var<float>& ids) override {
    auto h =
        enc->forward((*pos)((*tok)(ids)), {.src_key_padding_mask = padding, .is_causal = true});
    return tg::reshape((*head)(h), {-1, 11});
  }
  std::string name() const override { return "TinyLM"; }
  std::shared_ptr<nn::Embedding<float>> tok;
  std::shared_ptr<nn::LearnedPositionalEncoding<float>> pos;
  std::shared_ptr<nn::TransformerEncoder<float>> enc;
  std::shared_ptr<nn::Dense<float>> head;
  tg::Tensor<bool> padding = tg::Tensor<bool>::full({4, 8}, false);
};

TEST(NoAllocation, TransformerLanguageModelStep) {
  for (bool norm_first : {false, true})
    for (int threads : {1, 2}) {
      TinyLM model(norm_first);
      model.padding(1, 7) = true;
      tg::optim::Adam<float> opt(model.parameters());
      opt.set_clip_grad_norm(1.0);
      tg::Tensor<float> ids({8, 4});
      std::vector<int64_t> labels(32);
      for (int64_t i = 0; i < 32; ++i) ids[i] = float(i % 11), labels[i] = (i * 7) % 11;
      tg::Tape<float> tape;
      tg::set_num_threads(threads);
      const long n = allocations_after_warmup([&] {
        tape.clear();
        opt.zero_grad();
        auto loss = tg::cross_entropy(model(tape.constant(ids)), labels);
        tape.backward(loss);
        opt.step();
      });
      tg::set_num_threads(1);
      EXPECT_EQ(n, 0) << (norm_first ? "Pre-LN" : "Post-LN") << ", " << threads << " threads";
    }
}

// The counter itself works: a step on a fresh tape does allocate.
TEST(NoAllocation, CounterSeesTheFirstStep) {
  auto model = std::make_shared<nn::Dense<float>>(4, 4);
  Training t(model, {3, 4}, false);
  const long before = allocations.load();
  t.step();
  EXPECT_GT(allocations.load() - before, 0);
}

}  // namespace
