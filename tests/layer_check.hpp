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
//
// Before the gradcheck it runs the layer on an empty batch (the input with its first dimension
// set to 0): forward and backward must work, give an output of batch 0 with the other
// dimensions of the full batch's output, leave every parameter's gradient zero and every buffer
// (running statistics) finite (what BatchNorm does with them is its own test's).

#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "tapegrad/diag/gradcheck.hpp"
#include "tapegrad/nn/dropout.hpp"
#include "tapegrad/ops/reduce.hpp"

template <class M>
void expect_empty_batch_works(M& layer, const tapegrad::Tensor<double>& input) {
  namespace tg = tapegrad;
  if (input.rank() == 0) return;
  tg::Shape empty = input.shape();
  empty[0] = 0;
  // Buffers are put back afterwards, so the gradcheck sees the layer as the caller left it.
  std::vector<tg::Tensor<double>> saved;
  for (const auto& [n, b] : layer.named_buffers()) saved.push_back(b.clone());
  tg::Shape full_out;
  {
    tg::NoGradGuard no_grad;
    tg::Tape<double> tape;
    full_out = layer(tape.constant(input)).shape();
  }
  for (auto& p : layer.parameters()) p.zero_grad();
  tg::Tape<double> tape;
  auto x = tape.input(tg::Tensor<double>::zeros(empty));
  tg::Var<double> y;
  ASSERT_NO_THROW(y = layer(x)) << layer.name() << " on an empty batch " << empty;
  tg::Shape want = full_out;
  want[0] = 0;
  EXPECT_EQ(y.shape(), want) << layer.name() << " on an empty batch " << empty;
  ASSERT_NO_THROW(tape.backward(tg::sum(y))) << layer.name() << " backward on " << empty;
  EXPECT_EQ(x.grad().shape(), empty) << layer.name();
  for (const auto& [n, p] : layer.named_parameters()) {
    const auto g = p.grad();
    for (int64_t i = 0; i < g.numel(); ++i)
      ASSERT_EQ(g[i], 0.0) << layer.name() << ": gradient of " << n << " [" << i
                           << "] after an empty batch";
  }
  for (const auto& [n, b] : layer.named_buffers())
    for (int64_t i = 0; i < b.numel(); ++i)
      ASSERT_TRUE(std::isfinite(b[i])) << layer.name() << ": buffer " << n << " [" << i
                                       << "] = " << b[i] << " after an empty batch";
  size_t k = 0;
  for (auto& [n, b] : layer.named_buffers()) b.copy_(saved[k++]);
}

template <class M>
void expect_layer_gradcheck(M& layer, const tapegrad::Tensor<double>& input, double tol = 1e-6) {
  expect_empty_batch_works(layer, input);
  auto f = [&layer](tapegrad::Tape<double>&, const std::vector<tapegrad::Var<double>>& x) {
    tapegrad::nn::reset_rng(layer);
    if constexpr (requires { layer.reset_rng(); }) layer.reset_rng();
    return layer(x[0]);
  };
  const auto r = tapegrad::gradcheck(f, {input}, layer.parameters(), tol);
  EXPECT_TRUE(r) << layer.name() << ": " << r;
}
