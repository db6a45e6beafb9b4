#pragma once
// expect_layer_gradcheck: the one gradient test every layer goes through.
//
//   tg::nn::Dense<double> layer(3, 2);
//   expect_layer_gradcheck(layer, tg::Tensor<double>::randn({4, 3}, gen));
//   layer.eval();
//   expect_layer_gradcheck(layer, x);  // checks eval mode where it differs
//
// It runs tapegrad::gradcheck (central differences, double) of layer(x) with respect to the
// input x AND every tensor in layer.parameters(), in the layer's current mode: it never calls
// train() or eval() itself. Call the layer with operator() as users do.
//
// gradcheck calls the layer many times and needs the same function each time. Before every
// evaluation this calls nn::reset_rng(layer), which rewinds the per-call seed counter of every
// Dropout in the layer's tree (the layer itself, or inside a Sequential or block), so every
// call sees the same masks; and layer.reset_rng() too when M has such a member (a custom
// random layer: give it one that makes the next call repeat the previous masks).
// Layers with running statistics (BatchNorm in train mode) update them on every call; their
// outputs do not depend on the running values in train mode, so the check stays valid.

#include <gtest/gtest.h>

#include <vector>

#include "tapegrad/diag/gradcheck.hpp"
#include "tapegrad/nn/dropout.hpp"

template <class M>
void expect_layer_gradcheck(M& layer, const tapegrad::Tensor<double>& input, double tol = 1e-6) {
  auto f = [&layer](tapegrad::Tape<double>&, const std::vector<tapegrad::Var<double>>& x) {
    tapegrad::nn::reset_rng(layer);
    if constexpr (requires { layer.reset_rng(); }) layer.reset_rng();
    return layer(x[0]);
  };
  const auto r = tapegrad::gradcheck(f, {input}, layer.parameters(), tol);
  EXPECT_TRUE(r) << layer.name() << ": " << r;
}
