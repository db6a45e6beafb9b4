#pragma once
// The small model and stand-in optimizer the checkpoint fuzzer loads into, shared with the seed
// generator so the seeds are valid checkpoints for it.

#include <memory>
#include <string>
#include <utility>
#include <variant>
#include <vector>

#include "tapegrad/any_tensor.hpp"
#include "tapegrad/nn/module.hpp"

namespace fuzz {

namespace tg = tapegrad;

class FuzzLinear : public tg::nn::Module<float> {
 public:
  FuzzLinear(int64_t in, int64_t out) {
    weight = register_parameter("weight", tg::Tensor<float>::zeros({out, in}));
    bias = register_parameter("bias", tg::Tensor<float>::zeros({out}));
    running_mean = register_buffer("running_mean", tg::Tensor<float>::zeros({out}));
  }
  tg::Var<float> forward(const tg::Var<float>& x) override { return x; }
  std::string name() const override { return "FuzzLinear"; }
  tg::Parameter<float> weight, bias;
  tg::Tensor<float> running_mean;
};

class FuzzNet : public tg::nn::Module<float> {
 public:
  FuzzNet() {
    register_module("0", std::make_shared<FuzzLinear>(3, 2));
    register_module("1", std::make_shared<FuzzLinear>(2, 1));
    register_parameter("scale", tg::Tensor<float>::ones({}));
  }
  tg::Var<float> forward(const tg::Var<float>& x) override { return x; }
  std::string name() const override { return "FuzzNet"; }
};

// Accepts any state whose entries are "step" (a scalar of any dtype) or "exp_avg.<k>" (float,
// of any shape).
struct FuzzOptimizer {
  tg::NamedTensors state;
  tg::NamedTensors state_dict() const { return state; }
  void load_state_dict(const tg::NamedTensors& s) {
    for (const auto& [n, t] : s)
      if (n == "step"
              ? tg::shape_of(t).numel() != 1
              : n.rfind("exp_avg.", 0) != 0 || !std::holds_alternative<tg::Tensor<float>>(t))
        throw tg::ValueError("FuzzOptimizer: unexpected state " + n);
    state = s;
  }
};

}  // namespace fuzz
