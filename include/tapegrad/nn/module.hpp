#pragma once
/// \file
/// Module<T>: the base of every layer, as torch::nn::Module. A module owns Parameters
/// (trained), buffers (state saved with the model but never optimised, e.g. BatchNorm's
/// running statistics) and child modules, each under a name; named_parameters() and
/// named_buffers() join the names with dots ("0.weight", "block1.bn1.running_mean").
///
/// Call a module with operator() (not forward()) so that summary() can see it.

#include <algorithm>
#include <cstdint>
#include <iomanip>
#include <memory>
#include <ostream>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "tapegrad/tape.hpp"

namespace tapegrad::nn {

template <class T>
class Module;

namespace detail {
// While summary() runs, every module call appends a row here.
struct SummaryRow {
  int depth;
  std::string name;
  Shape output;
  int64_t params;
};
inline thread_local std::vector<SummaryRow>* summary_rows = nullptr;
inline thread_local int summary_depth = 0;
}  // namespace detail

/// The base of every layer, as torch::nn::Module: owns named Parameters, buffers and child modules;
/// call it with operator(). Not copyable.
template <class T>
class Module {
 public:
  Module() = default;
  virtual ~Module() = default;
  Module(const Module&) = delete;  ///< parameters are handles: a copy would share them silently
  Module& operator=(const Module&) = delete;

  /// The layer's computation on the tape of x. Input and output shapes are the layer's own (see
  /// each layer); a wrong input shape throws ShapeError.
  virtual Var<T> forward(const Var<T>& x) = 0;
  /// A short description for summaries, e.g. "Dense(784, 256)".
  virtual std::string name() const = 0;
  /// Whether forward() may write its output over its input's buffer when the caller allows it
  /// (the node's handed_on mark, set by Sequential): the in-place activation layers.
  virtual bool writes_over_input() const { return false; }

  /// Calls forward(x) (and, while summary() runs, records the call's output shape).
  Var<T> operator()(const Var<T>& x) {
    if (detail::summary_rows == nullptr) return forward(x);
    const size_t row = detail::summary_rows->size();
    detail::summary_rows->push_back({detail::summary_depth, name(), Shape{}, num_parameters()});
    ++detail::summary_depth;
    Var<T> y = forward(x);
    --detail::summary_depth;
    (*detail::summary_rows)[row].output = y.shape();
    return y;
  }

  // ---- parameters, buffers, children ----
  /// The parameters of this module and its children, by dotted name ("0.weight"), in registration
  /// order.
  std::vector<std::pair<std::string, Parameter<T>>> named_parameters() const {
    std::vector<std::pair<std::string, Parameter<T>>> out;
    collect_parameters("", out);
    return out;
  }
  /// The parameters of named_parameters(), without names.
  std::vector<Parameter<T>> parameters() const {
    std::vector<Parameter<T>> out;
    for (auto& [n, p] : named_parameters()) out.push_back(p);
    return out;
  }
  /// The buffers of this module and its children, by dotted name ("bn1.running_mean"); they share
  /// storage with the module's.
  std::vector<std::pair<std::string, Tensor<T>>> named_buffers() const {
    std::vector<std::pair<std::string, Tensor<T>>> out;
    collect_buffers("", out);
    return out;
  }
  /// The direct children, by name, in registration order.
  const std::vector<std::pair<std::string, std::shared_ptr<Module>>>& named_children() const {
    return children_;
  }
  /// f(module) for this module and every module below it, depth first (torch.nn.Module.apply).
  template <class F>
  void apply(F&& f) {
    f(*this);
    for (auto& [n, c] : children_) c->apply(f);
  }
  ///@{
  /// This module (named "") and every module below it, depth first, by dotted name (PyTorch's
  /// named_modules()).
  std::vector<std::pair<std::string, Module*>> named_modules() {
    std::vector<std::pair<std::string, Module*>> out;
    collect_modules(this, "", out);
    return out;
  }
  std::vector<std::pair<std::string, const Module*>> named_modules() const {
    std::vector<std::pair<std::string, const Module*>> out;
    collect_modules(this, "", out);
    return out;
  }
  ///@}

  ///@{
  /// Extra state, as torch.nn.Module.get_extra_state / set_extra_state: what a module must keep
  /// beyond its parameters and buffers to continue exactly (Dropout: the position of its random
  /// stream), as a short text, "" for none. set_extra_state() takes what get_extra_state()
  /// gave, or throws ValueError and changes nothing. Checkpoints keep it in their metadata
  /// under "<module name>._extra_state", PyTorch's state_dict key.
  virtual std::string get_extra_state() const { return {}; }
  virtual void set_extra_state(const std::string& state) {
    if (!state.empty())
      tapegrad::detail::fail<ValueError>(name(), ".set_extra_state: this module has none");
  }
  ///@}
  /// Total number of parameter elements.
  int64_t num_parameters() const {
    int64_t n = 0;
    for (auto& [name, p] : named_parameters()) n += p.numel();
    return n;
  }
  /// Marks every parameter's gradient zero (Parameter::zero_grad()).
  void zero_grad() {
    for (auto& p : parameters()) p.zero_grad();
  }

  // ---- train / eval, propagated to children ----
  /// Training mode (on) or evaluation mode (off), for this module and all below it: Dropout and
  /// BatchNorm behave differently.
  void train(bool on = true) {
    training_ = on;
    for (auto& [n, c] : children_) c->train(on);
  }
  /// Evaluation mode: train(false).
  void eval() { train(false); }
  /// Whether the module is in training mode (the default).
  bool is_training() const { return training_; }

  /// Runs the model once on zeros of input_shape (no gradients) and prints, like Keras'
  /// model.summary(), each module call with its output shape and parameter count.
  std::string summary(const Shape& input_shape) {
    std::vector<detail::SummaryRow> rows;
    {
      NoGradGuard no_grad;
      Tape<T> tape;
      detail::summary_rows = &rows;
      detail::summary_depth = 0;
      try {
        (*this)(tape.constant(Tensor<T>::zeros(input_shape)));
      } catch (...) {
        detail::summary_rows = nullptr;
        throw;
      }
      detail::summary_rows = nullptr;
    }
    // Columns as wide as their longest entry, so long layer names never run into the shapes.
    size_t name_w = 5, shape_w = 12;
    for (const auto& r : rows) {
      name_w = std::max(name_w, 2 * static_cast<size_t>(r.depth) + r.name.size());
      shape_w = std::max(shape_w, r.output.str().size());
    }
    const int nw = static_cast<int>(name_w + 2), sw = static_cast<int>(shape_w + 2), pw = 12;
    std::ostringstream os;
    const auto line = std::string(static_cast<size_t>(nw + sw + pw), '-') + "\n";
    os << line << std::left << std::setw(nw) << "Layer" << std::setw(sw) << "Output shape"
       << std::right << std::setw(pw) << "Params"
       << "\n"
       << line;
    for (const auto& r : rows)
      os << std::left << std::setw(nw) << (std::string(2 * r.depth, ' ') + r.name) << std::setw(sw)
         << r.output.str() << std::right << std::setw(pw) << r.params << "\n";
    os << line << "Total params: " << num_parameters() << "\n"
       << "Input shape: " << input_shape.str() << "\n";
    return os.str();
  }

 protected:
  /// Registers a parameter under name, initialised with init, and returns it.
  Parameter<T> register_parameter(std::string name, Tensor<T> init) {
    Parameter<T> p(std::move(init));
    params_.emplace_back(std::move(name), p);
    return p;
  }
  /// Replaces a registered parameter (weight normalization swaps a weight for g and v).
  void unregister_parameter(const std::string& name) {
    std::erase_if(params_, [&](auto& e) { return e.first == name; });
  }
  /// The returned tensor shares storage with the registered buffer: update it in place.
  Tensor<T> register_buffer(std::string name, Tensor<T> init) {
    buffers_.emplace_back(std::move(name), init);
    return init;
  }
  /// Registers a child module under name and returns it.
  template <class M>
  std::shared_ptr<M> register_module(std::string name, std::shared_ptr<M> m) {
    children_.emplace_back(std::move(name), m);
    return m;
  }

 private:
  void collect_parameters(const std::string& prefix,
                          std::vector<std::pair<std::string, Parameter<T>>>& out) const {
    for (auto& [n, p] : params_) out.emplace_back(prefix + n, p);
    for (auto& [n, c] : children_) c->collect_parameters(prefix + n + ".", out);
  }
  template <class M>  // Module or const Module
  static void collect_modules(M* m, const std::string& name,
                              std::vector<std::pair<std::string, M*>>& out) {
    out.emplace_back(name, m);
    for (auto& [n, c] : m->children_)
      collect_modules<M>(c.get(), name.empty() ? n : name + "." + n, out);
  }
  void collect_buffers(const std::string& prefix,
                       std::vector<std::pair<std::string, Tensor<T>>>& out) const {
    for (auto& [n, b] : buffers_) out.emplace_back(prefix + n, b);
    for (auto& [n, c] : children_) c->collect_buffers(prefix + n + ".", out);
  }

  std::vector<std::pair<std::string, Parameter<T>>> params_;
  std::vector<std::pair<std::string, Tensor<T>>> buffers_;
  std::vector<std::pair<std::string, std::shared_ptr<Module>>> children_;
  bool training_ = true;
};

}  // namespace tapegrad::nn
