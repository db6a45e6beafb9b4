#pragma once
/// \file
/// tapegrad: the umbrella header. Includes every public header; `namespace tg = tapegrad;`
/// is defined for brevity.

// Core: tensors, the tape, parameters.
#include "tapegrad/any_tensor.hpp"
#include "tapegrad/denormal.hpp"
#include "tapegrad/error.hpp"
#include "tapegrad/parameter.hpp"
#include "tapegrad/random.hpp"
#include "tapegrad/shape.hpp"
#include "tapegrad/tape.hpp"
#include "tapegrad/tensor.hpp"
#include "tapegrad/threads.hpp"

// Differentiable ops.
#include "tapegrad/ops/activation.hpp"
#include "tapegrad/ops/attention.hpp"
#include "tapegrad/ops/checkpoint.hpp"
#include "tapegrad/ops/conv.hpp"
#include "tapegrad/ops/detach.hpp"
#include "tapegrad/ops/dropout.hpp"
#include "tapegrad/ops/elementwise.hpp"
#include "tapegrad/ops/embedding.hpp"
#include "tapegrad/ops/linalg.hpp"
#include "tapegrad/ops/loss.hpp"
#include "tapegrad/ops/masking.hpp"
#include "tapegrad/ops/norm.hpp"
#include "tapegrad/ops/pool.hpp"
#include "tapegrad/ops/reduce.hpp"
#include "tapegrad/ops/rnn.hpp"
#include "tapegrad/ops/shape.hpp"
#include "tapegrad/ops/stack.hpp"

// Layers.
#include "tapegrad/nn/activation.hpp"
#include "tapegrad/nn/attention.hpp"
#include "tapegrad/nn/batch_norm.hpp"
#include "tapegrad/nn/checkpoint.hpp"
#include "tapegrad/nn/conv2d.hpp"
#include "tapegrad/nn/dense.hpp"
#include "tapegrad/nn/dropout.hpp"
#include "tapegrad/nn/embedding.hpp"
#include "tapegrad/nn/init.hpp"
#include "tapegrad/nn/layer_norm.hpp"
#include "tapegrad/nn/module.hpp"
#include "tapegrad/nn/pool.hpp"
#include "tapegrad/nn/positional_encoding.hpp"
#include "tapegrad/nn/residual.hpp"
#include "tapegrad/nn/rnn.hpp"
#include "tapegrad/nn/rnn_cell.hpp"
#include "tapegrad/nn/sequential.hpp"
#include "tapegrad/nn/transformer.hpp"
#include "tapegrad/nn/weight_norm.hpp"

// Optimizers and the gradient remedies of their step().
#include "tapegrad/optim/adam.hpp"
#include "tapegrad/optim/clip.hpp"
#include "tapegrad/optim/constraint.hpp"
#include "tapegrad/optim/optimizer.hpp"
#include "tapegrad/optim/penalty.hpp"
#include "tapegrad/optim/rmsprop.hpp"
#include "tapegrad/optim/scheduler.hpp"
#include "tapegrad/optim/sgd.hpp"

// Diagnostics and data.
#include "tapegrad/diag/gradcheck.hpp"
#include "tapegrad/diag/monitor.hpp"
#include "tapegrad/diag/svg_plot.hpp"
#include "tapegrad/diag/through_time.hpp"
#include "tapegrad/io/checkpoint.hpp"
#include "tapegrad/io/dataloader.hpp"
#include "tapegrad/io/fashion_mnist.hpp"
#include "tapegrad/io/idx.hpp"
#include "tapegrad/io/safetensors.hpp"

namespace tapegrad {
/// The library's major version.
inline constexpr int version_major = 0;
/// The library's minor version.
inline constexpr int version_minor = 1;
/// The library's patch version.
inline constexpr int version_patch = 0;
}  // namespace tapegrad

namespace tg = tapegrad;
