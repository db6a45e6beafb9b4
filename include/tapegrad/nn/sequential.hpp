#pragma once
// Sequential: modules applied one after another, torch.nn.Sequential.
//   nn::Sequential<float> model{std::make_shared<nn::Dense<float>>(784, 256),
//                               std::make_shared<nn::ReLU<float>>(),
//                               std::make_shared<nn::Dense<float>>(256, 10)};
//   model.push_back(std::make_shared<nn::Softmax<float>>(1));
//   auto block = std::make_shared<nn::Sequential<float>>(conv, relu);  // nested, by arguments
// Children are named "0", "1", ... so parameters read "0.weight", "2.bias". forward calls each
// child through operator() so that summary() lists them. model[i] is the i-th module;
// model.at<nn::Dense<float>>(i) the same cast to its type (ValueError if it is not one).

#include <cstddef>
#include <initializer_list>
#include <memory>
#include <string>
#include <type_traits>
#include <vector>

#include "tapegrad/nn/module.hpp"

namespace tapegrad::nn {

template <class T>
class Sequential : public Module<T> {
 public:
  using Ptr = std::shared_ptr<Module<T>>;

  Sequential() = default;
  Sequential(std::initializer_list<Ptr> modules) {
    for (const Ptr& m : modules) push_back(m);
  }
  // The same from separate arguments, so that std::make_shared<Sequential<T>>(a, b, c) works
  // (make_shared cannot forward a braced list).
  template <class... M>
  requires(sizeof...(M) > 0 && (std::is_convertible_v<std::shared_ptr<M>, Ptr> &&
                                ...)) explicit Sequential(std::shared_ptr<M>... modules) {
    (push_back(std::move(modules)), ...);
  }

  void push_back(Ptr m) {
    if (!m)
      tapegrad::detail::fail<ValueError>("Sequential: push_back of a null module at index ",
                                         layers_.size());
    layers_.push_back(this->register_module(std::to_string(layers_.size()), std::move(m)));
  }

  size_t size() const { return layers_.size(); }
  bool empty() const { return layers_.empty(); }
  const Ptr& operator[](size_t i) const {
    check_index(i);
    return layers_[i];
  }
  template <class M>
  M& at(size_t i) const {
    check_index(i);
    M* m = dynamic_cast<M*>(layers_[i].get());
    if (m == nullptr)
      tapegrad::detail::fail<ValueError>("Sequential: module ", i, " is ", layers_[i]->name(),
                                         ", not of the requested type");
    return *m;
  }
  auto begin() const { return layers_.begin(); }
  auto end() const { return layers_.end(); }

  Var<T> forward(const Var<T>& x) override {
    Var<T> y = x;
    for (const Ptr& m : layers_) y = (*m)(y);
    return y;
  }
  std::string name() const override { return "Sequential"; }

 private:
  void check_index(size_t i) const {
    if (i >= layers_.size())
      tapegrad::detail::fail<ValueError>("Sequential: index ", i, " out of range (", layers_.size(),
                                         " modules)");
  }
  std::vector<Ptr> layers_;
};

}  // namespace tapegrad::nn
