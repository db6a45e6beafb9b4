#pragma once
// tapegrad: the umbrella header. Includes every public header; `namespace tg = tapegrad;`
// is defined for brevity.

#include "tapegrad/error.hpp"
#include "tapegrad/parameter.hpp"
#include "tapegrad/random.hpp"
#include "tapegrad/shape.hpp"
#include "tapegrad/tape.hpp"
#include "tapegrad/tensor.hpp"
#include "tapegrad/threads.hpp"
#include "tapegrad/diag/gradcheck.hpp"
#include "tapegrad/nn/module.hpp"

namespace tapegrad {
inline constexpr int version_major = 0;
inline constexpr int version_minor = 1;
inline constexpr int version_patch = 0;
}  // namespace tapegrad

namespace tg = tapegrad;
