#pragma once
/// \file
/// Checkpoints: a model's parameters and buffers, and optionally an optimizer's state, in one
/// safetensors file. Tensors are stored under the model's named_parameters() / named_buffers()
/// names, which are PyTorch's state_dict names ("0.weight", "bn1.running_mean"), so
///   torch_model.load_state_dict(safetensors.torch.load_file(path), strict=False)
/// reads the model part; the optimizer's entries are stored as "optimizer.<its name>".
///
///   io::save_checkpoint("ckpt.safetensors", model, optimizer, {{"epoch", "3"}});
///   auto meta = io::load_checkpoint("ckpt.safetensors", model, optimizer);
///
/// Modules' extra state (nn::Module::get_extra_state: Dropout's random stream) goes into the
/// metadata as "<module name>._extra_state", so a resumed run continues exactly.
///
/// Saving is atomic (see atomic_file.hpp). Loading checks everything before changing anything:
/// missing or unexpected names, dtype and shape against the model; then it copies the values
/// into the existing tensors in place, because parameters are handles an optimizer also holds.
/// A model-only load ignores "optimizer." entries (evaluating a training checkpoint). A module
/// with extra state keeps its own when the file has none for it (files written before tapegrad
/// saved it, or by PyTorch).
///
/// The optimizer is any type with
///   NamedTensors state_dict() const;   (tensors of any dtype: optim::StateDict)
///   void load_state_dict(const NamedTensors&);

#include <algorithm>
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

template <class O>
concept OptimizerState = requires(O& o, const O& c, const NamedTensors& sd) {
  { c.state_dict() } -> std::convertible_to<NamedTensors>;
  o.load_state_dict(sd);
};

/// The prefix of the optimizer's entries in a checkpoint.
inline constexpr std::string_view optimizer_prefix = "optimizer.";
/// The suffix of a module's extra state in the metadata ("<module name>._extra_state").
inline constexpr std::string_view extra_state_suffix = "_extra_state";

namespace detail {

template <class T>
NamedTensors model_entries(const nn::Module<T>& model) {
  NamedTensors out;
  for (const auto& [n, p] : model.named_parameters()) out.emplace_back(n, p.value());
  for (const auto& [n, b] : model.named_buffers()) out.emplace_back(n, b);
  return out;
}

// "a, b, c" with at most 20 names shown.
inline std::string name_list(const std::vector<std::string>& names) {
  std::string s;
  for (size_t i = 0; i < names.size() && i < 20; ++i) s += (i ? ", " : "") + names[i];
  if (names.size() > 20) s += ", ... (" + std::to_string(names.size() - 20) + " more)";
  return s;
}

// "<module name>._extra_state" ("_extra_state" for the model itself).
inline std::string extra_state_key(const std::string& module) {
  return module.empty() ? std::string(extra_state_suffix)
                        : module + "." + std::string(extra_state_suffix);
}

// The user's metadata, with "format" (what safetensors.torch.save_file writes) and every
// module's extra state.
template <class T>
Metadata full_metadata(const Metadata& metadata, const nn::Module<T>& model) {
  Metadata m;
  bool has_format = false;
  for (const auto& [k, v] : metadata) has_format = has_format || k == "format";
  if (!has_format) m.emplace_back("format", "pt");
  m.insert(m.end(), metadata.begin(), metadata.end());
  for (const auto& [n, module] : model.named_modules()) {
    std::string state = module->get_extra_state();
    if (!state.empty()) m.emplace_back(extra_state_key(n), std::move(state));
  }
  return m;
}

// Sets the modules' extra states found in the file, all or none; undo() puts the previous ones
// back (when a later stage of the load refuses).
template <class T>
class ExtraStates {
 public:
  ExtraStates(const SafetensorsFile& file, const std::string& name, nn::Module<T>& model) {
    std::vector<std::string> unexpected;
    std::vector<std::pair<nn::Module<T>*, std::string>> found;
    std::vector<std::string> keys;
    for (const auto& [n, module] : model.named_modules()) {
      std::string now = module->get_extra_state();
      if (now.empty()) continue;
      keys.push_back(extra_state_key(n));
      if (const std::string* v = file.meta(keys.back())) {
        previous_.emplace_back(module, std::move(now));
        found.emplace_back(module, *v);
      }
    }
    for (const auto& [k, v] : file.metadata)
      if ((k == extra_state_suffix || k.ends_with("." + std::string(extra_state_suffix))) &&
          std::find(keys.begin(), keys.end(), k) == keys.end())
        unexpected.push_back(k);
    if (!unexpected.empty())
      tapegrad::detail::fail<IOError>(name,
                                      ": checkpoint does not match the model: extra state "
                                      "for modules that have none: ",
                                      name_list(unexpected));
    try {
      for (auto& [module, state] : found) {
        module->set_extra_state(state);
        ++applied_;
      }
    } catch (const Error& e) {
      undo();
      tapegrad::detail::fail<IOError>(name, ": ", e.what());
    }
  }
  void undo() {
    for (size_t i = 0; i < applied_; ++i) previous_[i].first->set_extra_state(previous_[i].second);
    applied_ = 0;
  }

 private:
  std::vector<std::pair<nn::Module<T>*, std::string>> previous_;
  size_t applied_ = 0;
};

// Checks file against model (and extracts the optimizer part when opt_state is given), then
// lists the copies to make. restore() is the in-memory entry point the fuzzer also uses.
template <class T>
void match_model(const SafetensorsFile& file, const std::string& name, const nn::Module<T>& model,
                 NamedTensors* opt_state,
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
    if (n.starts_with(optimizer_prefix)) {  // its dtypes and shapes are the optimizer's to check
      if (opt_state) opt_state->emplace_back(n.substr(optimizer_prefix.size()), t);
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

///@{
/// Writes model's parameters and buffers (and optimizer's state, under "optimizer.") and metadata
/// to path, atomically; IOError on failure.
template <class T>
void save_checkpoint(const std::string& path, const nn::Module<T>& model,
                     const Metadata& metadata = {}) {
  save_safetensors(path, detail::model_entries(model), detail::full_metadata(metadata, model));
}

template <class T, class O>
requires OptimizerState<O>
void save_checkpoint(const std::string& path, const nn::Module<T>& model, const O& optimizer,
                     const Metadata& metadata = {}) {
  NamedTensors entries = detail::model_entries(model);
  for (auto& [n, t] : NamedTensors(optimizer.state_dict()))
    entries.emplace_back(std::string(optimizer_prefix) + n, std::move(t));
  save_safetensors(path, entries, detail::full_metadata(metadata, model));
}
///@}

// ---- loading from a parsed file (name is used in messages) ----

///@{
/// Restores model (and optimizer) from a parsed file, name being its name in messages; checks every
/// name, dtype and shape first (ValueError or ShapeError, nothing changed) and returns the
/// metadata.
template <class T>
Metadata restore_checkpoint(const SafetensorsFile& file, const std::string& name,
                            nn::Module<T>& model) {
  std::vector<std::pair<Tensor<T>, const Tensor<T>*>> copies;
  detail::match_model<T>(file, name, model, nullptr, copies);
  detail::ExtraStates<T> extra(file, name, model);
  for (auto& [dst, src] : copies) dst.copy_(*src);
  return file.metadata;
}

template <class T, class O>
requires OptimizerState<O> Metadata restore_checkpoint(const SafetensorsFile& file,
                                                       const std::string& name,
                                                       nn::Module<T>& model, O& optimizer) {
  std::vector<std::pair<Tensor<T>, const Tensor<T>*>> copies;
  NamedTensors state;
  detail::match_model(file, name, model, &state, copies);
  detail::ExtraStates<T> extra(file, name, model);
  try {
    optimizer.load_state_dict(state);  // may still refuse: then nothing has changed
  } catch (...) {
    extra.undo();
    throw;
  }
  for (auto& [dst, src] : copies) dst.copy_(*src);
  return file.metadata;
}
///@}

// ---- loading from disk; returns the file's metadata ----

///@{
/// Loads model (and optimizer) from path as restore_checkpoint does; IOError if the file cannot be
/// read or parsed.
template <class T>
Metadata load_checkpoint(const std::string& path, nn::Module<T>& model) {
  return restore_checkpoint(load_safetensors(path), path, model);
}

template <class T, class O>
requires OptimizerState<O> Metadata load_checkpoint(const std::string& path, nn::Module<T>& model,
                                                    O& optimizer) {
  return restore_checkpoint(load_safetensors(path), path, model, optimizer);
}
///@}

}  // namespace tapegrad::io
