#pragma once
/// \file
/// Optimizer<T>: the base of every update rule. It owns parameter groups (each with its own lr,
/// weight decay, L1/L2 penalties and constraints) and runs step() as a documented pipeline:
///
///  -1. pre-step hooks    add_pre_step_hook(f): f() runs first, in the order added
///                         (distributed::DistributedDataParallel waits there for the gradients
///                         it averages across processes, so every stage below sees the average)
///   0. non-finite check   (policy raise / skip_step only: before anything is modified)
///   1. penalties          g += l1·sign(w) + 2·l2·w         (penalty.hpp, per group)
///   2. clipping           by global norm over ALL parameters of the optimizer, then by value
///                         (clip.hpp; the pre-clip total norm is returned by step())
///   3. update rule        the derived class: SGD, Adam, AdamW, RMSprop (their weight_decay is
///                         the rule's own, coupled or decoupled, as in PyTorch)
///   4. constraints        projections of the updated values, per group then per parameter
///                         (constraint.hpp)
///
/// Stages 1 and 2 modify p.grad() in place (as clip_grad_norm_ does): after step() the
/// gradients are the penalised, clipped ones the rule used. Parameters whose requires_grad() is
/// false are skipped entirely.
///
/// Non-finite gradients (NonFinitePolicy):
///   propagate  PyTorch's behaviour: NaN/inf flow into clipping and the update.
///   raise      NonFiniteError naming the first parameter (in optimizer order) whose gradient
///              holds a NaN or inf; nothing is modified.
///   skip_step  nothing is modified (parameters, state, gradients), skipped_steps() += 1.
///
/// State: state_dict() gives the per-parameter state as named tensors, PyTorch's names with the
/// parameter's index across all groups in order: "state.3.step" (a 0-d int64 tensor, exact to
/// 2^63 steps; load_state_dict also takes the float step PyTorch writes), "state.3.exp_avg",
/// "state.3.momentum_buffer", ... (tensors of T). load_state_dict() checks every name, dtype and
/// shape before it changes anything. Hyperparameters (lr, betas, ...) are configuration, not state:
/// they are not saved (a scheduler recomputes lr from its epoch).

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <functional>
#include <limits>
#include <optional>
#include <span>
#include <string>
#include <utility>
#include <variant>
#include <vector>

#include "tapegrad/any_tensor.hpp"
#include "tapegrad/optim/clip.hpp"
#include "tapegrad/optim/constraint.hpp"
#include "tapegrad/optim/penalty.hpp"
#include "tapegrad/parameter.hpp"
#include "tapegrad/threads.hpp"

namespace tapegrad::optim {

/// What step() does with NaN or inf gradients (see the file's description).
enum class NonFinitePolicy { propagate, raise, skip_step };

/// Parameters with their names, as Module::named_parameters() gives them.
template <class T>
using NamedParameters = std::vector<std::pair<std::string, Parameter<T>>>;

/// Named tensors of any dtype: the buffers are Tensor<T>, the step counts Tensor<int64_t>.
using StateDict = NamedTensors;

/// A set of parameters sharing hyperparameters (torch.optim param_groups).
template <class T>
struct ParamGroup {
  /// The parameters of the group.
  std::vector<Parameter<T>> params;
  std::vector<std::string> names;      ///< parallel to params, or empty (then named by index)
  std::optional<double> lr;            ///< unset: the optimizer's lr
  std::optional<double> weight_decay;  ///< unset: the optimizer's weight_decay
  double l1 = 0;                       ///< Keras L1: adds l1·sign(w) to the gradient
  double l2 = 0;                       ///< Keras L2: adds 2·l2·w to the gradient
  /// Biases and normalisation parameters: l1, l2 and weight_decay are treated as 0.
  bool exempt_from_penalties = false;
  std::vector<Constraint<T>> constraints;  ///< applied after each update to every parameter

  ///@{
  /// A group of the given parameters (named: the names are kept), with the optimizer's defaults.
  static ParamGroup of(const std::vector<Parameter<T>>& params) {
    ParamGroup g;
    g.params = params;
    return g;
  }
  static ParamGroup of(const NamedParameters<T>& named) {
    ParamGroup g;
    for (const auto& [n, p] : named) {
      g.names.push_back(n);
      g.params.push_back(p);
    }
    return g;
  }
  ///@}
};

/// True for what common practice exempts from weight decay: biases and normalisation scales and
/// shifts, i.e. tensors of rank <= 1, and anything whose last name component is "bias".
inline bool is_no_decay(const std::string& name, int rank) {
  if (rank <= 1) return true;
  const auto dot = name.rfind('.');
  return name.substr(dot == std::string::npos ? 0 : dot + 1) == "bias";
}

/// Splits a model's named_parameters() into {decayed, exempt}: group 0 holds the weights
/// (rank >= 2), group 1 the biases and normalisation parameters with exempt_from_penalties set.
/// Both groups are always returned (one may be empty), so the indices are fixed.
template <class T>
std::vector<ParamGroup<T>> split_decay_groups(const NamedParameters<T>& named) {
  std::vector<ParamGroup<T>> groups(2);
  groups[1].exempt_from_penalties = true;
  for (const auto& [n, p] : named) {
    auto& g = groups[is_no_decay(n, p.shape().rank()) ? 1 : 0];
    g.names.push_back(n);
    g.params.push_back(p);
  }
  return groups;
}

/// The base of every update rule: parameter groups and the step() pipeline of the file's
/// description. Not copyable.
template <class T>
class Optimizer {
 public:
  virtual ~Optimizer() = default;
  Optimizer(const Optimizer&) = delete;
  Optimizer& operator=(const Optimizer&) = delete;

  /// "SGD", "Adam", ...: the prefix of every error message.
  const std::string& name() const { return name_; }

  /// Runs the pipeline once. Returns the global gradient norm before clipping (of order
  /// norm_type when clipping by norm, else 2), after the penalties; NaN when norm tracking is off
  /// and no norm clipping is set, and for a step skipped before the norm was known.
  double step() {
    for (const auto& hook : pre_step_hooks_) hook();
    check_groups();
    collect_active();
    const bool penalties = any_penalty();
    const bool need_norm = clip_norm_.has_value() || track_norm_;
    const double p = clip_norm_ ? clip_norm_->norm_type : 2.0;
    const std::span<const Parameter<T>> grads(active_params_);
    double total = std::numeric_limits<double>::quiet_NaN();
    bool total_known = false;

    // 0. non-finite check, before anything changes. Without penalties the norm of the raw
    //    gradients is the norm clipping needs, and it is finite iff every element is.
    if (policy_ != NonFinitePolicy::propagate) {
      bool finite = true;
      if (need_norm && !penalties) {
        total = grad_norm(grads, p);
        total_known = true;
        finite = std::isfinite(total) || first_nonfinite() < 0;  // inf by overflow only
      } else {
        finite = first_nonfinite() < 0;
      }
      if (!finite) {
        const auto& s =
            slots_[static_cast<size_t>(active_[static_cast<size_t>(first_nonfinite())])];
        if (policy_ == NonFinitePolicy::raise)
          tapegrad::detail::fail<NonFiniteError>(name_, ".step: non-finite gradient (",
                                                 s.param.grad().array().hasNaN() ? "NaN" : "inf",
                                                 ") in parameter '", s.name, "' of shape ",
                                                 s.param.shape(), "; no parameter was updated");
        ++skipped_;
        last_total_norm_ = total;
        return total;
      }
    }

    // 1. penalties
    if (penalties) {
      for (size_t i : active_) {
        const auto& g = groups_[slots_[i].group];
        if (!g.exempt_from_penalties) L1L2Penalty{g.l1, g.l2}(slots_[i].param);
      }
      total_known = false;
    }

    // 2. clipping: by norm (coefficient from the pre-clip total), then by value
    if (need_norm && !total_known) total = grad_norm(grads, p);
    if (clip_norm_) clip_norm_->apply(grads, total);
    if (clip_value_) (*clip_value_)(grads);

    // 3. update rule
    for (size_t i : active_) {
      Slot& s = slots_[i];
      const auto& g = groups_[s.group];
      update(s.param, s.state, *g.lr, g.exempt_from_penalties ? 0.0 : *g.weight_decay);
    }

    // 4. constraints
    for (size_t i : active_) {
      Slot& s = slots_[i];
      for (const auto& c : groups_[s.group].constraints) c(s.param.value());
      for (const auto& c : s.constraints) c(s.param.value());
    }
    last_total_norm_ = total;
    return total;
  }

  /// Marks every parameter's gradient zero.
  void zero_grad() {
    for (auto& s : slots_) s.param.zero_grad();
  }

  /// A function step() calls before anything else (stage -1 above); hooks run in the order they
  /// were added. An exception from a hook leaves step() with nothing modified.
  void add_pre_step_hook(std::function<void()> hook) {
    if (!hook) tapegrad::detail::fail<ValueError>(name_, ".add_pre_step_hook: empty function");
    pre_step_hooks_.push_back(std::move(hook));
  }
  /// Number of pre-step hooks.
  size_t num_pre_step_hooks() const { return pre_step_hooks_.size(); }

  // ---- parameter groups ----
  /// Number of parameter groups.
  size_t num_param_groups() const { return groups_.size(); }
  /// Mutable for lr, weight_decay, l1, l2, exempt_from_penalties and constraints; the params
  /// and names of a group are fixed once added (use add_param_group for more).
  ParamGroup<T>& param_group(size_t i) { return groups_.at(i); }
  /// The group i (std::out_of_range if there is none).
  const ParamGroup<T>& param_group(size_t i) const { return groups_.at(i); }
  /// Adds a group, taking the optimizer's defaults where the group has none; throws ValueError for
  /// an undefined parameter, one already in the optimizer, names not matching params, or negative
  /// hyperparameters.
  void add_param_group(ParamGroup<T> group) {
    const size_t gi = groups_.size();
    if (!group.names.empty() && group.names.size() != group.params.size())
      tapegrad::detail::fail<ValueError>(name_, ": parameter group ", gi, " has ",
                                         group.params.size(), " params but ", group.names.size(),
                                         " names");
    if (!group.lr) group.lr = default_lr_;
    if (!group.weight_decay) group.weight_decay = default_weight_decay_;
    check_nonnegative("lr", *group.lr);
    check_nonnegative("weight_decay", *group.weight_decay);
    L1L2Penalty{group.l1, group.l2}.validate(name_.c_str());
    for (size_t k = 0; k < group.params.size(); ++k) {
      const Parameter<T>& p = group.params[k];
      if (!p.defined())
        tapegrad::detail::fail<ValueError>(name_, ": parameter ", k, " of group ", gi,
                                           " is undefined");
      for (const auto& s : slots_)
        if (s.param == p)
          tapegrad::detail::fail<ValueError>(
              name_, ": parameter '", group.names.empty() ? std::to_string(k) : group.names[k],
              "' appears in more than one parameter group");
      std::string n = group.names.empty() ? std::to_string(slots_.size()) : group.names[k];
      slots_.push_back(Slot{p, std::move(n), gi, {}, {}});
    }
    initial_lr_.push_back(*group.lr);
    groups_.push_back(std::move(group));
  }
  /// The lr of a group.
  double lr(size_t group = 0) const { return *groups_.at(group).lr; }
  /// Sets every group's lr (ValueError if negative).
  void set_lr(double lr) {
    for (size_t g = 0; g < groups_.size(); ++g) set_lr(g, lr);
  }
  /// Sets one group's lr (ValueError if negative).
  void set_lr(size_t group, double lr) {
    check_nonnegative("lr", lr);
    groups_.at(group).lr = lr;
  }
  /// The group's lr when it was added: the base a scheduler scales.
  double initial_lr(size_t group) const { return initial_lr_.at(group); }

  // ---- parameters, in order across groups (the indices of state_dict) ----
  /// Number of parameters across all groups.
  size_t num_params() const { return slots_.size(); }
  /// Parameter i, in order across groups.
  const Parameter<T>& param(size_t i) const { return slots_.at(i).param; }
  /// The name of parameter i (its group's name, or its index).
  const std::string& param_name(size_t i) const { return slots_.at(i).name; }

  // ---- pipeline configuration (chainable) ----
  /// Penalties of every group not exempt from them.
  Optimizer& set_penalties(double l1, double l2) {
    L1L2Penalty{l1, l2}.validate(name_.c_str());
    for (auto& g : groups_) g.l1 = l1, g.l2 = l2;
    return *this;
  }
  /// Stage 2: clip the global gradient norm to max_norm (ValueError for a negative max_norm or an
  /// invalid norm_type).
  Optimizer& set_clip_grad_norm(double max_norm, double norm_type = 2.0) {
    GradNormClip c{max_norm, norm_type};
    c.validate(name_.c_str());
    clip_norm_ = c;
    return *this;
  }
  /// Stage 2: clamp each gradient to [−clip_value, clip_value] (ValueError if negative).
  Optimizer& set_clip_grad_value(double clip_value) {
    GradValueClip c{clip_value};
    c.validate(name_.c_str());
    clip_value_ = c;
    return *this;
  }
  /// Removes both kinds of clipping.
  Optimizer& clear_clipping() {
    clip_norm_.reset();
    clip_value_.reset();
    return *this;
  }
  /// What step() does with non-finite gradients (default propagate).
  Optimizer& set_nonfinite_policy(NonFinitePolicy policy) {
    policy_ = policy;
    return *this;
  }
  /// Whether step() computes the gradient norm when it does not clip by norm (default on: it
  /// is one read of the gradients, and the number every training log wants).
  Optimizer& set_track_grad_norm(bool on) {
    track_norm_ = on;
    return *this;
  }
  /// A constraint on one parameter, applied after its group's constraints.
  Optimizer& add_constraint(const Parameter<T>& p, Constraint<T> c) {
    for (auto& s : slots_)
      if (s.param == p) {
        s.constraints.push_back(std::move(c));
        return *this;
      }
    tapegrad::detail::fail<ValueError>(name_, ".add_constraint: the parameter of shape ", p.shape(),
                                       " is not in this optimizer");
  }

  /// The norm clipping set, if any.
  const std::optional<GradNormClip>& clip_grad_norm() const { return clip_norm_; }
  /// The value clipping set, if any.
  const std::optional<GradValueClip>& clip_grad_value() const { return clip_value_; }
  /// The non-finite policy.
  NonFinitePolicy nonfinite_policy() const { return policy_; }
  /// The value the last step() returned.
  double last_total_norm() const { return last_total_norm_; }
  /// Steps skipped under NonFinitePolicy::skip_step.
  int64_t skipped_steps() const { return skipped_; }

  // ---- state ----
  /// The per-parameter state as named tensors, PyTorch's names ("state.3.exp_avg"; see the file's
  /// description).
  StateDict state_dict() const {
    StateDict out;
    const auto names = buffer_names();
    for (size_t i = 0; i < slots_.size(); ++i) {
      const ParamState& s = slots_[i].state;
      if (!s.initialized) continue;
      const std::string prefix = "state." + std::to_string(i) + ".";
      if (has_step_count()) out.emplace_back(prefix + "step", Tensor<int64_t>::scalar(s.step));
      for (size_t k = 0; k < names.size(); ++k)
        if (names[k]) out.emplace_back(prefix + names[k], s.buf[k].clone());
    }
    return out;
  }

  /// Replaces the whole state (parameters absent from `state` start afresh). Throws ValueError
  /// for an unknown or duplicate name, an index beyond num_params(), a missing partner entry, a
  /// buffer whose dtype is not T, a negative or NaN value in a second-moment buffer
  /// ("exp_avg_sq", "square_avg", ...: its square root is taken) or a step that is not an integer
  /// in [0, 2^63 − 1) (int64, or float as PyTorch saves it; step() must be able to add 1),
  /// ShapeError for a tensor whose shape differs from its parameter's; on error the current
  /// state is unchanged.
  void load_state_dict(const StateDict& state) {
    const auto names = buffer_names();
    const std::string who = name_ + ".load_state_dict";
    constexpr size_t fields = 4;  // step + up to 3 buffers
    std::vector<std::array<const AnyTensor*, fields>> found(slots_.size());
    std::vector<int64_t> steps(slots_.size(), 0);
    for (auto& f : found) f.fill(nullptr);
    for (const auto& [key, t] : state) {
      size_t index = 0, field = 0;
      parse_key(who, key, names, index, field);
      if (found[index][field])
        tapegrad::detail::fail<ValueError>(who, ": duplicate entry '", key, "'");
      const Parameter<T>& p = slots_[index].param;
      if (field == 0) {
        if (shape_of(t).rank() != 0)
          tapegrad::detail::fail<ShapeError>(who, ": '", key, "' has shape ", shape_of(t),
                                             ", expected a scalar []");
        steps[index] = step_count(who, key, t);
      } else if (!std::holds_alternative<Tensor<T>>(t)) {
        tapegrad::detail::fail<ValueError>(who, ": '", key, "' is ", dtype_name(t),
                                           ", the optimizer's is ", dtype_name<T>());
      } else if (!(shape_of(t) == p.shape())) {
        tapegrad::detail::fail<ShapeError>(who, ": '", key, "' has shape ", shape_of(t),
                                           " but parameter ", index, " ('", slots_[index].name,
                                           "') has shape ", p.shape());
      } else if (nonnegative_buffers()[field - 1]) {
        check_nonnegative_buffer(who, key, std::get<Tensor<T>>(t));
      }
      found[index][field] = &t;
    }
    for (size_t i = 0; i < found.size(); ++i) {
      bool any = false, all = true;
      for (size_t f = 0; f < fields; ++f) {
        if (!field_active(names, f)) continue;
        any = any || found[i][f];
        all = all && found[i][f];
      }
      if (any && !all)
        for (size_t f = 0; f < fields; ++f)
          if (field_active(names, f) && !found[i][f])
            tapegrad::detail::fail<ValueError>(who, ": missing 'state.", i, ".",
                                               f == 0 ? "step" : names[f - 1], "'");
    }
    for (size_t i = 0; i < found.size(); ++i) {  // validated: now apply
      ParamState& s = slots_[i].state;
      s = ParamState{};
      if (std::none_of(found[i].begin(), found[i].end(), [](auto* t) { return t != nullptr; }))
        continue;
      s.initialized = true;
      s.step = steps[i];
      for (size_t k = 0; k < names.size(); ++k)
        if (found[i][k + 1]) s.buf[k] = std::get<Tensor<T>>(*found[i][k + 1]).clone();
    }
  }

 protected:
  /// Per-parameter state of a rule: a step count and up to three buffers, allocated once.
  struct ParamState {
    /// Updates done so far.
    int64_t step = 0;
    /// Whether the buffers are allocated.
    bool initialized = false;
    /// The rule's buffers (names from buffer_names()).
    std::array<Tensor<T>, 3> buf;
  };

  /// For the rules: name for errors, the groups, and the defaults of lr and weight_decay. An empty
  /// parameter list throws ValueError.
  Optimizer(std::string name, std::vector<ParamGroup<T>> groups, double default_lr,
            double default_weight_decay)
      : name_(std::move(name)),
        default_lr_(default_lr),
        default_weight_decay_(default_weight_decay) {
    for (auto& g : groups) add_param_group(std::move(g));
    if (slots_.empty()) tapegrad::detail::fail<ValueError>(name_, ": got an empty parameter list");
  }

  /// The update rule for one parameter: reads p.grad(), writes p.value() and s.
  virtual void update(const Parameter<T>& p, ParamState& s, double lr, double weight_decay) = 0;
  /// The names of s.buf[0..2] in state_dict ("exp_avg", ...); nullptr marks an unused slot.
  virtual std::array<const char*, 3> buffer_names() const = 0;
  /// Whether the state has a "step" entry (SGD's has none, as in PyTorch).
  virtual bool has_step_count() const { return true; }
  /// Which of s.buf[0..2] must hold values >= 0 (second moments, whose square root the update
  /// takes): load_state_dict rejects a negative or NaN entry in them. None by default.
  virtual std::array<bool, 3> nonnegative_buffers() const { return {false, false, false}; }

  /// Allocates the used buffers, zero-filled, on a parameter's first update.
  void init_state(ParamState& s, const Parameter<T>& p) const {
    const auto names = buffer_names();
    for (size_t k = 0; k < names.size(); ++k)
      if (names[k]) s.buf[k] = Tensor<T>::zeros(p.shape());
    s.step = 0;
    s.initialized = true;
  }

  /// Throws ValueError naming what if v is negative, NaN or inf.
  void check_nonnegative(const char* what, double v) const {
    if (!(v >= 0) || std::isinf(v))
      tapegrad::detail::fail<ValueError>(name_, ": invalid ", what, " ", v,
                                         " (must be finite and >= 0)");
  }

  /// Runs f(offset, length) over [0, n) in cache-sized pieces, so that a rule's several
  /// Eigen statements over the same elements read them from cache, not memory; pieces of a large
  /// parameter are shared among the threads.
  template <class F>
  static void for_chunks(int64_t n, F&& f) {
    tapegrad::detail::for_each_chunk(n, 2048, f);
  }

 private:
  struct Slot {
    Parameter<T> param;
    std::string name;
    size_t group;
    ParamState state;
    std::vector<Constraint<T>> constraints;
  };

  void collect_active() {
    active_.clear();
    active_params_.clear();
    for (size_t i = 0; i < slots_.size(); ++i) {
      const Parameter<T>& p = slots_[i].param;
      if (!p.requires_grad()) continue;
      if (!(p.grad().shape() == p.value().shape()))
        tapegrad::detail::fail<ShapeError>(name_, ".step: parameter '", slots_[i].name,
                                           "' of shape ", p.shape(), " has a gradient of shape ",
                                           p.grad().shape());
      active_.push_back(i);
      active_params_.push_back(p);
    }
  }
  // param_group(i) hands out its fields for writing, so the values the constructor and
  // set_lr checked are checked again here (a NaN lr would turn every weight into NaN).
  // (No allocation unless one is wrong: step() allocates nothing.)
  void check_groups() const {
    auto ok = [](const std::optional<double>& v) { return v && *v >= 0 && !std::isinf(*v); };
    for (size_t i = 0; i < groups_.size(); ++i) {
      const ParamGroup<T>& g = groups_[i];
      if (ok(g.lr) && ok(g.weight_decay) && ok(g.l1) && ok(g.l2)) continue;
      const char* what = !ok(g.lr) ? "lr" : !ok(g.weight_decay) ? "weight_decay" : "penalty";
      tapegrad::detail::fail<ValueError>(name_, ".step: parameter group ", i, " has an invalid ",
                                         what, " (lr ", g.lr.value_or(NAN), ", weight_decay ",
                                         g.weight_decay.value_or(NAN), ", l1 ", g.l1, ", l2 ", g.l2,
                                         "; all must be finite and >= 0); nothing was updated");
    }
  }
  bool any_penalty() const {
    for (const auto& g : groups_)
      if (!g.exempt_from_penalties && (g.l1 != 0 || g.l2 != 0)) return true;
    return false;
  }
  // Position in active_ of the first parameter with a non-finite gradient, or -1.
  int64_t first_nonfinite() const {
    for (size_t k = 0; k < active_.size(); ++k)
      if (!detail::all_finite(active_params_[k].grad())) return static_cast<int64_t>(k);
    return -1;
  }
  // A step entry's value: an int64, or a float holding a non-negative integer; below INT64_MAX,
  // since the next step() adds 1 to it (a float below 2^63 is at most 2^63 − 1024).
  static int64_t step_count(const std::string& who, const std::string& key, const AnyTensor& t) {
    if (const auto* i = std::get_if<Tensor<int64_t>>(&t)) {
      if ((*i)[0] < 0 || (*i)[0] == std::numeric_limits<int64_t>::max())
        tapegrad::detail::fail<ValueError>(who, ": '", key, "' = ", (*i)[0],
                                           " is not a step count (must be in [0, 2^63 - 1))");
      return (*i)[0];
    }
    const double v = std::visit([](const auto& x) { return static_cast<double>(x[0]); }, t);
    if (!(v >= 0) || v != std::floor(v) || !(v < 0x1p63))
      tapegrad::detail::fail<ValueError>(who, ": '", key, "' = ", v, " is not a step count");
    return static_cast<int64_t>(v);
  }
  // A second-moment buffer: every value >= 0 (a negative one gives a NaN square root).
  static void check_nonnegative_buffer(const std::string& who, const std::string& key,
                                       const Tensor<T>& t) {
    for (int64_t i = 0; i < t.numel(); ++i)
      if (!(t[i] >= 0))
        tapegrad::detail::fail<ValueError>(who, ": '", key, "' holds ", t[i], " at index ", i,
                                           ": its values must be >= 0");
  }
  bool field_active(const std::array<const char*, 3>& names, size_t f) const {
    return f == 0 ? has_step_count() : names[f - 1] != nullptr;
  }
  // "state.<index>.<field>" → index and field (0 = step, k + 1 = buffer k).
  void parse_key(const std::string& who, const std::string& key,
                 const std::array<const char*, 3>& names, size_t& index, size_t& field) const {
    auto bad = [&](const char* why) {
      tapegrad::detail::fail<ValueError>(who, ": unexpected entry '", key, "' (", why, ")");
    };
    const std::string prefix = "state.";
    if (key.compare(0, prefix.size(), prefix) != 0) bad("expected state.<index>.<name>");
    const size_t dot = key.find('.', prefix.size());
    if (dot == std::string::npos || dot == prefix.size()) bad("expected state.<index>.<name>");
    const std::string digits = key.substr(prefix.size(), dot - prefix.size());
    if (digits.size() > 9 ||
        !std::all_of(digits.begin(), digits.end(), [](char c) { return c >= '0' && c <= '9'; }))
      bad("expected state.<index>.<name>");
    index = std::stoul(digits);
    if (index >= slots_.size()) bad("no parameter with that index");
    const std::string f = key.substr(dot + 1);
    for (size_t k = 0; k < 4; ++k) {
      if (!field_active(names, k)) continue;
      if (f == (k == 0 ? "step" : names[k - 1])) {
        field = k;
        return;
      }
    }
    bad("not a state entry of this optimizer with these options");
  }

  std::string name_;
  double default_lr_;
  double default_weight_decay_;
  std::vector<ParamGroup<T>> groups_;
  std::vector<double> initial_lr_;
  std::vector<Slot> slots_;
  std::vector<std::function<void()>> pre_step_hooks_;
  std::vector<size_t> active_;               // slots updated this step
  std::vector<Parameter<T>> active_params_;  // their parameters, for the clipping stages
  std::optional<GradNormClip> clip_norm_;
  std::optional<GradValueClip> clip_value_;
  NonFinitePolicy policy_ = NonFinitePolicy::propagate;
  bool track_norm_ = true;
  double last_total_norm_ = std::numeric_limits<double>::quiet_NaN();
  int64_t skipped_ = 0;
};

}  // namespace tapegrad::optim
