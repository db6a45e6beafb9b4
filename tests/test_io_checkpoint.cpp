// io/checkpoint.hpp: a model's parameters, buffers and extra state and an optimizer's state in
// one safetensors file; loading checks everything before it changes anything; a run resumed
// from a checkpoint continues bit for bit as the uninterrupted one (Dropout's random stream and
// the optimizer's int64 step counts included).
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#include "tapegrad/io/checkpoint.hpp"
#include "tapegrad/tapegrad.hpp"
#include "test_util.hpp"

namespace tg = tapegrad;
namespace io = tapegrad::io;
namespace nn = tapegrad::nn;
using tapegrad::testing::error_message;
using tapegrad::testing::same_bits;
using tapegrad::testing::tmp_path;
using tapegrad::testing::write_bytes;

namespace {

std::string st_tmp(const std::string& name) { return tmp_path("tg_ckpt_" + name); }
std::vector<uint8_t> st_read(const std::string& path) { return io::read_file_bytes(path); }

// A module with parameters, a buffer and a child, enough to check names, shapes and in-place
// loading without the real layers.
template <class T>
class TinyLinear : public tg::nn::Module<T> {
 public:
  TinyLinear(int64_t in, int64_t out, tg::Generator& g) {
    weight = this->register_parameter("weight", tg::Tensor<T>::randn({out, in}, g));
    bias = this->register_parameter("bias", tg::Tensor<T>::randn({out}, g));
    running_mean = this->register_buffer("running_mean", tg::Tensor<T>::randn({out}, g));
  }
  tg::Var<T> forward(const tg::Var<T>& x) override { return x; }
  std::string name() const override { return "TinyLinear"; }
  tg::Parameter<T> weight, bias;
  tg::Tensor<T> running_mean;
};

template <class T>
class TinyNet : public tg::nn::Module<T> {
 public:
  explicit TinyNet(uint64_t seed, int64_t hidden = 3) {
    tg::Generator g(seed);
    fc1 = this->register_module("fc1", std::make_shared<TinyLinear<T>>(4, hidden, g));
    fc2 = this->register_module("fc2", std::make_shared<TinyLinear<T>>(hidden, 2, g));
    scale = this->register_parameter("scale", tg::Tensor<T>::randn({1}, g));
  }
  tg::Var<T> forward(const tg::Var<T>& x) override { return x; }
  std::string name() const override { return "TinyNet"; }
  std::shared_ptr<TinyLinear<T>> fc1, fc2;
  tg::Parameter<T> scale;
};

// Stands in for an optimizer: a step counter and one moment buffer per parameter.
struct FakeOptimizer {
  io::NamedTensors state;
  bool refuse = false;
  io::NamedTensors state_dict() const { return state; }
  void load_state_dict(const io::NamedTensors& s) {
    if (refuse) throw tg::ValueError("FakeOptimizer: refused");
    state = s;
  }
};

template <class T>
void expect_models_equal(const tg::nn::Module<T>& a, const tg::nn::Module<T>& b) {
  const auto pa = a.named_parameters(), pb = b.named_parameters();
  ASSERT_EQ(pa.size(), pb.size());
  for (size_t i = 0; i < pa.size(); ++i)
    EXPECT_TRUE(same_bits(pa[i].second.value(), pb[i].second.value())) << pa[i].first;
  const auto ba = a.named_buffers(), bb = b.named_buffers();
  ASSERT_EQ(ba.size(), bb.size());
  for (size_t i = 0; i < ba.size(); ++i)
    EXPECT_TRUE(same_bits(ba[i].second, bb[i].second)) << ba[i].first;
}

TEST(Checkpoint, RoundTripModelAndOptimizerInPlace) {
  const std::string path = st_tmp("ckpt.safetensors");
  TinyNet<double> a(1);
  a.fc1->weight.value()[0] = std::numeric_limits<double>::quiet_NaN();
  FakeOptimizer opt_a;
  opt_a.state = {{"step", tg::Tensor<double>::scalar(7)},
                 {"exp_avg.fc1.weight", tg::Tensor<double>::full({3, 4}, 0.25)}};
  io::save_checkpoint(path, a, opt_a, {{"epoch", "3"}});

  // The file holds PyTorch state_dict names.
  const auto file = io::load_safetensors(path);
  std::vector<std::string> names;
  for (const auto& [n, t] : file.tensors) names.push_back(n);
  EXPECT_EQ(names, (std::vector<std::string>{"scale", "fc1.weight", "fc1.bias", "fc2.weight",
                                             "fc2.bias", "fc1.running_mean", "fc2.running_mean",
                                             "optimizer.step", "optimizer.exp_avg.fc1.weight"}));
  EXPECT_EQ(*file.meta("format"), "pt");

  TinyNet<double> b(2);
  const tg::Parameter<double> handle = b.fc1->weight;  // as an optimizer holds it
  const double* storage = handle.value().data();
  FakeOptimizer opt_b;
  const auto meta = io::load_checkpoint(path, b, opt_b);
  expect_models_equal<double>(a, b);
  EXPECT_EQ(handle.value().data(), storage);  // copied in place, not replaced
  EXPECT_TRUE(std::isnan(handle.value()[0]));
  ASSERT_EQ(opt_b.state.size(), 2u);
  EXPECT_EQ(opt_b.state[0].first, "step");
  EXPECT_EQ(std::get<tg::Tensor<double>>(opt_b.state[0].second).item(), 7.0);
  EXPECT_EQ(opt_b.state[1].first, "exp_avg.fc1.weight");
  EXPECT_TRUE(same_bits(std::get<tg::Tensor<double>>(opt_b.state[1].second),
                        std::get<tg::Tensor<double>>(opt_a.state[1].second)));
  bool found = false;
  for (const auto& [k, v] : meta) found = found || (k == "epoch" && v == "3");
  EXPECT_TRUE(found);

  // A model-only load of a training checkpoint ignores the optimizer's entries.
  TinyNet<double> c(3);
  io::load_checkpoint(path, c);
  expect_models_equal<double>(a, c);
}

TEST(Checkpoint, FloatModelWithoutOptimizer) {
  const std::string path = st_tmp("ckpt_float.safetensors");
  TinyNet<float> a(5), b(6);
  io::save_checkpoint(path, a);
  io::load_checkpoint(path, b);
  expect_models_equal<float>(a, b);
}

std::string load_error(const std::string& path, tg::nn::Module<float>& m) {
  return error_message<tg::IOError>([&] { io::load_checkpoint(path, m); });
}

TEST(Checkpoint, MismatchesAreListedAndNothingIsChanged) {
  const std::string path = st_tmp("ckpt_mismatch.safetensors");
  TinyNet<float> a(1);
  io::save_checkpoint(path, a);

  // Different hidden size: shapes differ; the model must be left exactly as it was.
  TinyNet<float> wide(2, 5);
  TinyNet<float> wide_copy(2, 5);
  const std::string msg = load_error(path, wide);
  EXPECT_NE(msg.find(path + ": checkpoint does not match the model: \"fc1.weight\" has shape "
                            "[3,4], the model's is [5,4]"),
            std::string::npos)
      << msg;
  EXPECT_NE(msg.find("\"fc2.weight\" has shape [2,3], the model's is [2,5]"), std::string::npos)
      << msg;
  expect_models_equal<float>(wide, wide_copy);

  // Missing and unexpected names.
  io::save_safetensors<float>(path, {{"scale", tg::Tensor<float>::zeros({1})},
                                     {"fc3.weight", tg::Tensor<float>::zeros({1})}});
  const std::string m2 = load_error(path, wide);
  EXPECT_NE(m2.find("missing fc1.weight, fc1.bias, fc2.weight, fc2.bias, fc1.running_mean, "
                    "fc2.running_mean; unexpected fc3.weight"),
            std::string::npos)
      << m2;
  expect_models_equal<float>(wide, wide_copy);

  // Wrong dtype: a double checkpoint into a float model.
  TinyNet<double> d(1);
  io::save_checkpoint(path, d);
  const std::string m3 = load_error(path, wide);
  EXPECT_NE(m3.find("\"scale\" is F64, the model's is F32"), std::string::npos) << m3;
}

TEST(Checkpoint, OptimizerRefusalLeavesModelUntouched) {
  const std::string path = st_tmp("ckpt_refuse.safetensors");
  TinyNet<double> a(1), b(2), b_copy(2);
  FakeOptimizer opt;
  opt.state = {{"step", tg::Tensor<double>::scalar(1)}};
  io::save_checkpoint(path, a, opt);
  FakeOptimizer refusing;
  refusing.refuse = true;
  EXPECT_THROW(io::load_checkpoint(path, b, refusing), tg::ValueError);
  expect_models_equal<double>(b, b_copy);
}

TEST(Checkpoint, CorruptFileIsAnIOErrorNamingIt) {
  const std::string path = st_tmp("ckpt_corrupt.safetensors");
  TinyNet<float> a(1);
  io::save_checkpoint(path, a);
  auto bytes = st_read(path);
  bytes.erase(bytes.end() - 4, bytes.end());  // lose the end of the last tensor
  write_bytes(path, bytes);
  const std::string msg = load_error(path, a);
  EXPECT_NE(msg.find(path + ": tensor \""), std::string::npos) << msg;
  EXPECT_NE(msg.find("run past the data area"), std::string::npos) << msg;
}

// ---- resuming: 10 + 10 steps equal 20 ----

// A small MLP with Dropout, trained with Adam on fixed random batches; the batch of step k
// depends only on k, so a resumed run sees the same data.
struct TrainingRun {
  std::shared_ptr<nn::Sequential<double>> model;
  std::unique_ptr<tg::optim::Adam<double>> opt;
  explicit TrainingRun(bool dropout) {
    tg::Generator g(7);
    model = std::make_shared<nn::Sequential<double>>();
    model->push_back(std::make_shared<nn::Dense<double>>(6, 16, true, g));
    model->push_back(std::make_shared<nn::ReLU<double>>());
    if (dropout) model->push_back(std::make_shared<nn::Dropout<double>>(0.3, g));
    model->push_back(std::make_shared<nn::Dense<double>>(16, 3, true, g));
    opt = std::make_unique<tg::optim::Adam<double>>(model->named_parameters(),
                                                    tg::optim::AdamOptions{.lr = 0.01});
  }
  void steps(int from, int to) {
    tg::Tape<double> tape;
    for (int k = from; k < to; ++k) {
      tg::Generator data(1000 + static_cast<uint64_t>(k));
      const auto x = tg::Tensor<double>::randn({8, 6}, data);
      std::vector<int64_t> labels(8);
      for (auto& l : labels) l = static_cast<int64_t>(data.below(3));
      tape.clear();
      opt->zero_grad();
      tape.backward(tg::cross_entropy((*model)(tape.constant(x)), labels));
      opt->step();
    }
  }
};

void expect_resume_is_exact(bool dropout) {
  const std::string path = st_tmp(dropout ? "resume_dropout.safetensors" : "resume.safetensors");
  TrainingRun straight(dropout);
  straight.steps(0, 20);

  TrainingRun first(dropout);
  first.steps(0, 10);
  io::save_checkpoint(path, *first.model, *first.opt);
  TrainingRun second(dropout);  // a new process: fresh model and optimizer, then the checkpoint
  io::load_checkpoint(path, *second.model, *second.opt);
  second.steps(10, 20);
  expect_models_equal<double>(*straight.model, *second.model);
}

TEST(CheckpointResume, TenPlusTenStepsEqualTwenty) { expect_resume_is_exact(false); }
TEST(CheckpointResume, TenPlusTenStepsEqualTwentyWithDropout) { expect_resume_is_exact(true); }

TEST(CheckpointResume, DropoutStreamIsExtraStateInTheMetadata) {
  const std::string path = st_tmp("extra.safetensors");
  TrainingRun a(true);
  a.steps(0, 3);
  auto* drop = dynamic_cast<nn::Dropout<double>*>((*a.model)[2].get());
  ASSERT_NE(drop, nullptr);
  io::save_checkpoint(path, *a.model);
  const auto file = io::load_safetensors(path);
  ASSERT_NE(file.meta("2._extra_state"), nullptr);
  EXPECT_EQ(*file.meta("2._extra_state"), "seed " + std::to_string(drop->seed()) + " calls 3");

  // A malformed extra state is an IOError naming the file; nothing changes.
  TrainingRun b(true);
  auto* drop_b = dynamic_cast<nn::Dropout<double>*>((*b.model)[2].get());
  const uint64_t seed_b = drop_b->seed();
  const auto weight_b = b.model->named_parameters()[0].second.value().clone();
  auto entries = io::detail::model_entries(*a.model);
  io::save_safetensors(path, entries, {{"2._extra_state", "seed 1 calls x"}});
  const std::string msg = error_message<tg::IOError>([&] { io::load_checkpoint(path, *b.model); });
  EXPECT_NE(msg.find(path + ": Dropout(p=0.3).set_extra_state: \"seed 1 calls x\" is not"),
            std::string::npos)
      << msg;
  EXPECT_EQ(drop_b->seed(), seed_b);
  EXPECT_TRUE(same_bits(b.model->named_parameters()[0].second.value(), weight_b));

  // Extra state for a module that has none is a mismatch.
  io::save_safetensors(path, entries, {{"0._extra_state", "x"}});
  EXPECT_NE(error_message<tg::IOError>([&] {
              io::load_checkpoint(path, *b.model);
            }).find("extra state for modules that have none: 0._extra_state"),
            std::string::npos);

  // A file without it (older tapegrad, PyTorch) loads and leaves the stream as it was.
  io::save_safetensors(path, entries);
  io::load_checkpoint(path, *b.model);
  EXPECT_EQ(drop_b->seed(), seed_b);
  EXPECT_EQ(drop_b->calls(), 0u);

  // An optimizer that refuses its state undoes the extra state already set.
  io::save_checkpoint(path, *a.model);
  FakeOptimizer refusing;
  refusing.refuse = true;
  EXPECT_THROW(io::load_checkpoint(path, *b.model, refusing), tg::ValueError);
  EXPECT_EQ(drop_b->seed(), seed_b);
  EXPECT_EQ(drop_b->calls(), 0u);
}

TEST(CheckpointResume, StepCountsAreInt64AndFloatStepsAreRead) {
  const std::string path = st_tmp("steps.safetensors");
  auto layer = std::make_shared<nn::Dense<float>>(2, 2);
  tg::optim::Adam<float> opt(layer->named_parameters(), {.lr = 1e-3});
  // 2^24 + 1 is the first integer a float cannot hold.
  const int64_t step = (int64_t{1} << 24) + 1;
  io::NamedTensors state;
  for (size_t i = 0; i < 2; ++i) {
    const std::string p = "state." + std::to_string(i) + ".";
    const auto& shape = layer->named_parameters()[i].second.shape();
    state.emplace_back(p + "step", tg::Tensor<int64_t>::scalar(step));
    state.emplace_back(p + "exp_avg", tg::Tensor<float>::zeros(shape));
    state.emplace_back(p + "exp_avg_sq", tg::Tensor<float>::zeros(shape));
  }
  opt.load_state_dict(state);
  io::save_checkpoint(path, *layer, opt);
  const auto file = io::load_safetensors(path);
  const auto* saved = file.find("optimizer.state.0.step");
  ASSERT_NE(saved, nullptr);
  ASSERT_TRUE(std::holds_alternative<tg::Tensor<int64_t>>(*saved)) << io::dtype_name(*saved);
  EXPECT_EQ(std::get<tg::Tensor<int64_t>>(*saved).item(), step);

  tg::optim::Adam<float> back(layer->named_parameters(), {.lr = 1e-3});
  io::load_checkpoint(path, *layer, back);
  EXPECT_EQ(std::get<tg::Tensor<int64_t>>(back.state_dict()[0].second).item(), step);

  // PyTorch saves "step" as a float tensor: read it too.
  io::NamedTensors entries = io::detail::model_entries(*layer);
  for (auto& [n, t] : state) {
    if (n.ends_with(".step")) t = tg::Tensor<float>::scalar(1000.0f);
    entries.emplace_back("optimizer." + n, t);
  }
  io::save_safetensors(path, entries);
  io::load_checkpoint(path, *layer, back);
  EXPECT_EQ(std::get<tg::Tensor<int64_t>>(back.state_dict()[0].second).item(), 1000);
  // ... and a buffer of the wrong dtype is the optimizer's ValueError; nothing changes.
  entries.back().second = tg::Tensor<double>::zeros({2});
  io::save_safetensors(path, entries);
  const std::string msg =
      error_message<tg::ValueError>([&] { io::load_checkpoint(path, *layer, back); });
  EXPECT_NE(msg.find("Adam.load_state_dict: 'state.1.exp_avg_sq' is F64, the optimizer's is F32"),
            std::string::npos)
      << msg;
  EXPECT_EQ(std::get<tg::Tensor<int64_t>>(back.state_dict()[0].second).item(), 1000);
}

}  // namespace
