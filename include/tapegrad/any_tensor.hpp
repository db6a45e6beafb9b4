#pragma once
/// \file
/// AnyTensor: a tensor of any dtype tapegrad stores, as a state dict holds them (a model's
/// float weights, an optimizer's int64 step counts), with its safetensors dtype name.

#include <cstdint>
#include <string>
#include <utility>
#include <variant>
#include <vector>

#include "tapegrad/tensor.hpp"

namespace tapegrad {

/// A tensor of one of the dtypes a state dict holds: float, double or int64.
using AnyTensor = std::variant<Tensor<float>, Tensor<double>, Tensor<int64_t>>;
/// Named tensors in order, as a state_dict.
using NamedTensors = std::vector<std::pair<std::string, AnyTensor>>;

/// "F32", "F64" or "I64" (safetensors' names).
template <class T>
constexpr const char* dtype_name() {
  if constexpr (std::is_same_v<T, float>)
    return "F32";
  else if constexpr (std::is_same_v<T, double>)
    return "F64";
  else
    return "I64";
}
/// The safetensors dtype name of t's element type.
inline const char* dtype_name(const AnyTensor& t) {
  return std::visit(
      [](const auto& x) { return dtype_name<typename std::decay_t<decltype(x)>::Scalar>(); }, t);
}
/// The shape of t.
inline const Shape& shape_of(const AnyTensor& t) {
  return std::visit([](const auto& x) -> const Shape& { return x.shape(); }, t);
}
/// Bytes per element of t.
inline size_t element_size(const AnyTensor& t) {
  return std::visit(
      [](const auto& x) { return sizeof(typename std::decay_t<decltype(x)>::Scalar); }, t);
}

}  // namespace tapegrad
