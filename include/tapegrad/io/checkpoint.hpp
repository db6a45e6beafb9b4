#pragma once
// Checkpoints: a model's parameters and buffers, and optionally an optimizer's state, in one
// safetensors file. Tensors are stored under the model's named_parameters() / named_buffers()
// names, which are PyTorch's state_dict names ("0.weight", "bn1.running_mean"), so
//   torch_model.load_state_dict(safetensors.torch.load_file(path), strict=False)
// reads the model part; the optimizer's entries are stored as "optimizer.<its name>".
//
//   io::save_checkpoint("ckpt.safetensors", model, optimizer, {{"epoch", "3"}});
//   auto meta = io::load_checkpoint("ckpt.safetensors", model, optimizer);
//
// Saving is atomic (see atomic_file.hpp). Loading checks everything before changing anything:
// missing or unexpected names, dtype and shape against the model; then it copies the values
// into the existing tensors in place, because parameters are handles an optimizer also holds.
// A model-only load ignores "optimizer." entries (evaluating a training checkpoint).
//
// The optimizer is any type with
//   std::vector<std::pair<std::string, Tensor<T>>> state_dict() const;
//   void load_state_dict(const std::vector<std::pair<std::string, Tensor<T>>>&);

#include <concepts>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

#include "tapegrad/error.hpp"
#include "tapegrad/io/safetensors.hpp"
#include "tapegrad/nn/module.hpp"

namespace tapegrad::io {

template <class T>
using StateDict = std::vector<std::pair<std::string, Tensor<T>>>;

template <class O, class T>
concept OptimizerState = requires(O& o, const O& c, const StateDict<T>& sd) {
  { c.state_dict() } -> std::convertible_to<StateDict<T>>;
  o.load_state_dict(sd);
};

inline constexpr std::string_view optimizer_prefix = "optimizer.";

namespace detail {

template <class T>
NamedTensors model_entries(const nn::Module<T>& model) {
  NamedTensors out;
  for (const auto& [n, p] : model.named_parameters()) out.emplace_back(n, p.value());
  for (const auto& [n, b] : model.named_buffers()) out.emplace_back(n, b);
  return out;
}

inline Metadata with_format(const Metadata& metadata) {
  for (const auto& [k, v] : metadata)
    if (k == "format") return metadata;
  Metadata m{{"format", "pt"}};  // what safetensors.torch.save_file writes
  m.insert(m.end(), metadata.begin(), metadata.end());
  return m;
}

// "a, b, c" with at most 20 names shown.
inline std::string name_list(const std::vector<std::string>& names) {
  std::string s;
  for (size_t i = 0; i < names.size() && i < 20; ++i) s += (i ? ", " : "") + names[i];
  if (names.size() > 20) s += ", ... (" + std::to_string(names.size() - 20) + " more)";
  return s;
}

// Checks file against model (and extracts the optimizer part when opt_state is given), then
// copies the values in place. restore() is the in-memory entry point the fuzzer also uses.
template <class T>
void match_model(const SafetensorsFile& file, const std::string& name, const nn::Module<T>& model,
                 StateDict<T>* opt_state,
                 std::vector<std::pair<Tensor<T>, const Tensor<T>*>>& copies) {
  NamedTensors targets = model_entries(model);
  std::unordered_map<std::string_view, const AnyTensor*> in_file;
  for (const auto& [n, t] : file.tensors) in_file.emplace(n, &t);
  std::unordered_map<std::string_view, bool> expected;
  for (const auto& [n, t] : targets) expected.emplace(n, true);

  std::vector<std::string> missing, unexpected, wrong;
  for (const auto& [n, target] : targets) {
    auto it = in_file.find(n);
    if (it == in_file.end()) {
      missing.push_back(n);
      continue;
    }
    const auto* t = std::get_if<Tensor<T>>(it->second);
    const Tensor<T>& want = std::get<Tensor<T>>(target);
    if (!t) {
      wrong.push_back("\"" + n + "\" is " + dtype_name(*it->second) + ", the model's is " +
                      dtype_name(target));
    } else if (!(t->shape() == want.shape())) {
      wrong.push_back("\"" + n + "\" has shape " + t->shape().str() + ", the model's is " +
                      want.shape().str());
    } else {
      copies.emplace_back(want, t);
    }
  }
  for (const auto& [n, t] : file.tensors) {
    if (expected.count(n)) continue;
    if (n.starts_with(optimizer_prefix)) {
      if (!opt_state) continue;
      const auto* v = std::get_if<Tensor<T>>(&t);
      if (!v) {
        wrong.push_back("\"" + n + "\" is " + dtype_name(t) + ", the optimizer's is " +
                        (sizeof(T) == 4 ? "F32" : "F64"));
        continue;
      }
      opt_state->emplace_back(n.substr(optimizer_prefix.size()), *v);
      continue;
    }
    unexpected.push_back(n);
  }
  if (!missing.empty() || !unexpected.empty()) {
    std::string msg = name + ": checkpoint does not match the model:";
    if (!missing.empty()) msg += " missing " + name_list(missing) + ";";
    if (!unexpected.empty()) msg += " unexpected " + name_list(unexpected) + ";";
    msg.pop_back();
    throw IOError(msg);
  }
  if (!wrong.empty())
    tapegrad::detail::fail<IOError>(name,
                                    ": checkpoint does not match the model: ", name_list(wrong));
}

}  // namespace detail

// ---- saving ----

template <class T>
void save_checkpoint(const std::string& path, const nn::Module<T>& model,
                     const Metadata& metadata = {}) {
  save_safetensors(path, detail::model_entries(model), detail::with_format(metadata));
}

template <class T, class O>
requires OptimizerState<O, T>
void save_checkpoint(const std::string& path, const nn::Module<T>& model, const O& optimizer,
                     const Metadata& metadata = {}) {
  NamedTensors entries = detail::model_entries(model);
  for (const auto& [n, t] : StateDict<T>(optimizer.state_dict()))
    entries.emplace_back(std::string(optimizer_prefix) + n, t);
  save_safetensors(path, entries, detail::with_format(metadata));
}

// ---- loading from a parsed file (name is used in messages) ----

template <class T>
Metadata restore_checkpoint(const SafetensorsFile& file, const std::string& name,
                            nn::Module<T>& model) {
  std::vector<std::pair<Tensor<T>, const Tensor<T>*>> copies;
  detail::match_model<T>(file, name, model, nullptr, copies);
  for (auto& [dst, src] : copies) dst.copy_(*src);
  return file.metadata;
}

template <class T, class O>
requires OptimizerState<O, T> Metadata restore_checkpoint(const SafetensorsFile& file,
                                                          const std::string& name,
                                                          nn::Module<T>& model, O& optimizer) {
  std::vector<std::pair<Tensor<T>, const Tensor<T>*>> copies;
  StateDict<T> state;
  detail::match_model(file, name, model, &state, copies);
  optimizer.load_state_dict(state);  // may still refuse; the model is untouched until it accepts
  for (auto& [dst, src] : copies) dst.copy_(*src);
  return file.metadata;
}

// ---- loading from disk; returns the file's metadata ----

template <class T>
Metadata load_checkpoint(const std::string& path, nn::Module<T>& model) {
  return restore_checkpoint(load_safetensors(path), path, model);
}

template <class T, class O>
requires OptimizerState<O, T> Metadata load_checkpoint(const std::string& path,
                                                       nn::Module<T>& model, O& optimizer) {
  return restore_checkpoint(load_safetensors(path), path, model, optimizer);
}

}  // namespace tapegrad::io
