// Residual, DenseResidual, BasicBlock (ResNet v1) and PreActBlock (v2): gradchecks, outputs and
// gradients against the same computation composed from the separate layers with shared
// parameter values, torchvision names, shape errors, and the summary of a small ResNet.
#include <gtest/gtest.h>

#include <cstdlib>
#include <iostream>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "layer_check.hpp"
#include "tapegrad/nn/activation.hpp"
#include "tapegrad/nn/dense.hpp"
#include "tapegrad/nn/pool.hpp"
#include "tapegrad/nn/residual.hpp"
#include "tapegrad/nn/sequential.hpp"
#include "test_util.hpp"

namespace tg = tapegrad;
namespace nn = tapegrad::nn;
using tapegrad::testing::expect_error_containing;
using tapegrad::testing::sample;

namespace {

using TD = tg::Tensor<double>;
using VD = tg::Var<double>;

void expect_close(const TD& a, const TD& b, const std::string& what) {
  ASSERT_EQ(a.shape(), b.shape()) << what;
  EXPECT_TRUE(tg::allclose(a, b, 1e-10, 1e-12)) << what << "\n" << a << "\n" << b;
}

// Gives a BatchNorm non-trivial γ, β so that the comparisons below exercise them.
void randomize_bn(nn::BatchNorm<double>& bn, uint64_t seed) {
  bn.weight.value().copy_(sample(bn.weight.shape(), seed, 0.5, 1.5));
  bn.bias.value().copy_(sample(bn.bias.shape(), seed + 1, -0.5, 0.5));
}

// ---------------------------------------------------------------- Residual, DenseResidual

TEST(Residual, IdentityAndProjectionShortcuts) {
  auto body =
      std::make_shared<nn::Sequential<double>>(std::initializer_list<nn::Sequential<double>::Ptr>{
          std::make_shared<nn::Dense<double>>(3, 3), std::make_shared<nn::Tanh<double>>()});
  nn::Residual<double> res(body);
  expect_layer_gradcheck(res, sample({2, 3}, 1, -1, 1));
  // y = body(x) + x, composed by hand.
  const TD x = sample({2, 3}, 2, -1, 1);
  tg::Tape<double> tape;
  auto xv = tape.constant(x);
  const TD y = res(xv).value();
  const TD b = (*body)(xv).value();
  for (int64_t i = 0; i < x.numel(); ++i) EXPECT_NEAR(y[i], b[i] + x[i], 1e-14);

  auto proj = std::make_shared<nn::Dense<double>>(3, 5);
  nn::Residual<double> res2(std::make_shared<nn::Dense<double>>(3, 5), proj);
  expect_layer_gradcheck(res2, sample({2, 3}, 3, -1, 1));
  const auto names = res2.named_parameters();
  ASSERT_EQ(names.size(), 4u);
  EXPECT_EQ(names[0].first, "body.weight");
  EXPECT_EQ(names[2].first, "shortcut.weight");
  const TD y2 = res2(xv).value();
  const TD b2 = (*res2.body())(xv).value(), s2 = (*proj)(xv).value();
  for (int64_t i = 0; i < y2.numel(); ++i) EXPECT_NEAR(y2[i], b2[i] + s2[i], 1e-14);
}

TEST(Residual, ShapeMismatchIsAnError) {
  nn::Residual<double> res(std::make_shared<nn::Dense<double>>(3, 4));
  tg::Tape<double> tape;
  expect_error_containing<tg::ShapeError>(
      [&] {
        res(tape.constant(TD::ones({2, 3})));
      },
      {"Residual", "[2,4]", "[2,3]"});
  expect_error_containing<tg::ValueError>([] { nn::Residual<double> bad(nullptr); },
                                          {"Residual", "null"});
}

TEST(DenseResidual, GradcheckValuesAndErrors) {
  auto body = std::make_shared<nn::Dense<double>>(4, 4);
  nn::DenseResidual<double> res(body);
  expect_layer_gradcheck(res, sample({3, 4}, 4, -1, 1));
  const TD x = sample({3, 4}, 5, -1, 1);
  tg::Tape<double> tape;
  auto xv = tape.constant(x);
  const TD y = res(xv).value();
  const TD b = (*body)(xv).value();
  for (int64_t i = 0; i < x.numel(); ++i) EXPECT_NEAR(y[i], x[i] + b[i], 1e-14);
  EXPECT_EQ(res.named_parameters()[0].first, "body.weight");

  nn::DenseResidual<double> bad(std::make_shared<nn::Dense<double>>(3, 4));
  expect_error_containing<tg::ShapeError>(
      [&] {
        bad(tape.constant(TD::ones({2, 3})));
      },
      {"DenseResidual", "Dense(3, 4)", "[2,3]", "[2,4]"});
}

// ---------------------------------------------------------------- BasicBlock

TEST(BasicBlock, TorchvisionNamesAndParameterCounts) {
  nn::BasicBlock<float> proj(16, 32, 2);
  std::vector<std::string> names;
  for (auto& [n, p] : proj.named_parameters()) names.push_back(n);
  const std::vector<std::string> expected = {
      "conv1.weight",        "bn1.weight",          "bn1.bias",
      "conv2.weight",        "bn2.weight",          "bn2.bias",
      "downsample.0.weight", "downsample.1.weight", "downsample.1.bias"};
  EXPECT_EQ(names, expected);
  std::vector<std::string> buffers;
  for (auto& [n, b] : proj.named_buffers()) buffers.push_back(n);
  const std::vector<std::string> expected_buffers = {
      "bn1.running_mean",          "bn1.running_var",          "bn1.num_batches_tracked",
      "bn2.running_mean",          "bn2.running_var",          "bn2.num_batches_tracked",
      "downsample.1.running_mean", "downsample.1.running_var", "downsample.1.num_batches_tracked"};
  EXPECT_EQ(buffers, expected_buffers);
  // 16·32·9 + 64 + 32·32·9 + 64 + 16·32 + 64
  EXPECT_EQ(proj.num_parameters(), 4608 + 64 + 9216 + 64 + 512 + 64);
  EXPECT_EQ(proj.name(), "BasicBlock(16, 32, stride=2)");

  nn::BasicBlock<float> id(16, 16);
  EXPECT_EQ(id.downsample, nullptr);
  EXPECT_EQ(id.num_parameters(), 2 * 2304 + 2 * 32);
  EXPECT_EQ(id.named_parameters().size(), 6u);
  EXPECT_EQ(id.name(), "BasicBlock(16, 16)");
  nn::BasicBlock<float> widen(16, 32, 1);  // channels change: projection even at stride 1
  ASSERT_NE(widen.downsample, nullptr);
}

TEST(BasicBlock, GradcheckTrainAndEval) {
  nn::BasicBlock<double> blk(2, 3, 2);
  randomize_bn(*blk.bn1, 10);
  randomize_bn(*blk.bn2, 12);
  expect_layer_gradcheck(blk, sample({2, 2, 4, 4}, 14, -1, 1));
  blk.eval();
  expect_layer_gradcheck(blk, sample({2, 2, 4, 4}, 15, -1, 1));
  nn::BasicBlock<double> id(2, 2);
  randomize_bn(*id.bn2, 16);
  expect_layer_gradcheck(id, sample({2, 2, 3, 3}, 17, -1, 1));
}

// The block against the same computation built from separate layers holding the same values:
// outputs, every gradient, and the running statistics after one training step.
TEST(BasicBlock, ProjectionBlockMatchesComposedLayers) {
  nn::BasicBlock<double> blk(2, 4, 2);
  randomize_bn(*blk.bn1, 20);
  randomize_bn(*blk.bn2, 22);
  auto& ds_bn = blk.downsample->at<nn::BatchNorm2d<double>>(1);
  randomize_bn(ds_bn, 24);

  nn::Conv2D<double> c1(2, 4, 3, 2, 1, 1, false), c2(4, 4, 3, 1, 1, 1, false),
      cd(2, 4, 1, 2, 0, 1, false);
  nn::BatchNorm2d<double> b1(4), b2(4), bd(4);
  c1.weight.value().copy_(blk.conv1->weight.value());
  c2.weight.value().copy_(blk.conv2->weight.value());
  cd.weight.value().copy_(blk.downsample->at<nn::Conv2D<double>>(0).weight.value());
  for (auto [dst, src] : {std::pair{&b1, blk.bn1.get()}, std::pair{&b2, blk.bn2.get()},
                          std::pair{&bd, static_cast<nn::BatchNorm2d<double>*>(&ds_bn)}}) {
    dst->weight.value().copy_(src->weight.value());
    dst->bias.value().copy_(src->bias.value());
  }

  for (bool training : {true, false}) {
    SCOPED_TRACE(training ? "train" : "eval");
    blk.train(training);
    for (nn::Module<double>* m : std::vector<nn::Module<double>*>{&b1, &b2, &bd})
      m->train(training);
    blk.zero_grad();
    for (auto* p : {&c1.weight, &c2.weight, &cd.weight, &b1.weight, &b1.bias, &b2.weight, &b2.bias,
                    &bd.weight, &bd.bias})
      p->zero_grad();
    const TD x = sample({3, 2, 5, 5}, 30, -1, 1), seed = sample({3, 4, 3, 3}, 31, -1, 1);

    tg::Tape<double> ta;
    auto xa = ta.input(x);
    auto ya = blk(xa);
    ta.backward(ya, seed);

    tg::Tape<double> tb;
    auto xb = tb.input(x);
    auto yb = tg::relu(b2(c2(tg::relu(b1(c1(xb))))) + bd(cd(xb)));
    tb.backward(yb, seed);

    expect_close(ya.value(), yb.value(), "output");
    expect_close(xa.grad(), xb.grad(), "input grad");
    expect_close(blk.conv1->weight.grad(), c1.weight.grad(), "conv1 grad");
    expect_close(blk.conv2->weight.grad(), c2.weight.grad(), "conv2 grad");
    expect_close(blk.downsample->at<nn::Conv2D<double>>(0).weight.grad(), cd.weight.grad(),
                 "downsample conv grad");
    expect_close(blk.bn1->weight.grad(), b1.weight.grad(), "bn1 weight grad");
    expect_close(blk.bn2->bias.grad(), b2.bias.grad(), "bn2 bias grad");
    expect_close(ds_bn.weight.grad(), bd.weight.grad(), "downsample bn weight grad");
    expect_close(blk.bn1->running_mean, b1.running_mean, "bn1 running_mean");
    expect_close(blk.bn2->running_var, b2.running_var, "bn2 running_var");
    expect_close(ds_bn.running_var, bd.running_var, "downsample running_var");
  }
  EXPECT_EQ(blk.bn1->num_batches_tracked.item(), 1.0);  // the eval pass did not count
}

TEST(BasicBlock, IdentityBlockMatchesComposedLayers) {
  nn::BasicBlock<double> blk(3, 3);
  randomize_bn(*blk.bn1, 40);
  randomize_bn(*blk.bn2, 42);
  nn::Conv2D<double> c1(3, 3, 3, 1, 1, 1, false), c2(3, 3, 3, 1, 1, 1, false);
  nn::BatchNorm2d<double> b1(3), b2(3);
  c1.weight.value().copy_(blk.conv1->weight.value());
  c2.weight.value().copy_(blk.conv2->weight.value());
  b1.weight.value().copy_(blk.bn1->weight.value());
  b1.bias.value().copy_(blk.bn1->bias.value());
  b2.weight.value().copy_(blk.bn2->weight.value());
  b2.bias.value().copy_(blk.bn2->bias.value());
  const TD x = sample({2, 3, 4, 4}, 44, -1, 1), seed = sample({2, 3, 4, 4}, 45, -1, 1);
  tg::Tape<double> ta, tb;
  auto xa = ta.input(x), xb = tb.input(x);
  auto ya = blk(xa);
  auto yb = tg::relu(b2(c2(tg::relu(b1(c1(xb))))) + xb);
  ta.backward(ya, seed);
  tb.backward(yb, seed);
  expect_close(ya.value(), yb.value(), "output");
  expect_close(xa.grad(), xb.grad(), "input grad");
  expect_close(blk.conv1->weight.grad(), c1.weight.grad(), "conv1 grad");
  expect_close(blk.bn2->weight.grad(), b2.weight.grad(), "bn2 weight grad");
}

TEST(BasicBlock, Errors) {
  nn::BasicBlock<double> blk(4, 8, 2);
  tg::Tape<double> tape;
  expect_error_containing<tg::ShapeError>(
      [&] {
        blk(tape.constant(TD::ones({2, 3, 8, 8})));
      },
      {"BasicBlock(4, 8, stride=2)", "[2,3,8,8]", "3 channels", "expected 4"});
  expect_error_containing<tg::ShapeError>(
      [&] {
        blk(tape.constant(TD::ones({2, 4})));
      },
      {"BasicBlock(4, 8, stride=2)", "[2,4]", "4-D"});
  expect_error_containing<tg::ValueError>([] { nn::BasicBlock<double> bad(4, 0); },
                                          {"BasicBlock", "(4, 0"});
  expect_error_containing<tg::ValueError>([] { nn::PreActBlock<double> bad(4, 4, 0); },
                                          {"PreActBlock", "stride=0"});
}

// ---------------------------------------------------------------- PreActBlock

TEST(PreActBlock, GradcheckAndComposition) {
  nn::PreActBlock<double> blk(2, 3, 2);
  randomize_bn(*blk.bn1, 50);
  randomize_bn(*blk.bn2, 52);
  EXPECT_EQ(blk.named_parameters().back().first, "shortcut.0.weight");
  EXPECT_EQ(blk.num_parameters(), 4 + 54 + 6 + 81 + 6);
  expect_layer_gradcheck(blk, sample({2, 2, 4, 4}, 54, -1, 1));

  nn::BatchNorm2d<double> b1(2), b2(3);
  nn::Conv2D<double> c1(2, 3, 3, 2, 1, 1, false), c2(3, 3, 3, 1, 1, 1, false),
      cs(2, 3, 1, 2, 0, 1, false);
  b1.weight.value().copy_(blk.bn1->weight.value());
  b1.bias.value().copy_(blk.bn1->bias.value());
  b2.weight.value().copy_(blk.bn2->weight.value());
  b2.bias.value().copy_(blk.bn2->bias.value());
  c1.weight.value().copy_(blk.conv1->weight.value());
  c2.weight.value().copy_(blk.conv2->weight.value());
  cs.weight.value().copy_(blk.shortcut->at<nn::Conv2D<double>>(0).weight.value());
  const TD x = sample({2, 2, 5, 5}, 55, -1, 1), seed = sample({2, 3, 3, 3}, 56, -1, 1);
  blk.zero_grad();
  tg::Tape<double> ta, tb;
  auto xa = ta.input(x), xb = tb.input(x);
  auto ya = blk(xa);
  auto a = tg::relu(b1(xb));
  auto yb = c2(tg::relu(b2(c1(a)))) + cs(a);
  ta.backward(ya, seed);
  tb.backward(yb, seed);
  expect_close(ya.value(), yb.value(), "output");
  expect_close(xa.grad(), xb.grad(), "input grad");
  expect_close(blk.bn1->weight.grad(), b1.weight.grad(), "bn1 weight grad");
  expect_close(blk.shortcut->at<nn::Conv2D<double>>(0).weight.grad(), cs.weight.grad(),
               "shortcut grad");

  nn::PreActBlock<double> id(2, 2);
  EXPECT_EQ(id.shortcut, nullptr);
  expect_layer_gradcheck(id, sample({2, 2, 3, 3}, 57, -1, 1));
  // Identity: y = conv2(relu(bn2(conv1(relu(bn1(x)))))) + x, so y − x is the body alone.
  tg::Tape<double> tc;
  auto xc = tc.constant(x);
  const TD yc = id(xc).value();
  const TD body = (*id.conv2)(tg::relu((*id.bn2)((*id.conv1)(tg::relu((*id.bn1)(xc)))))).value();
  for (int64_t i = 0; i < x.numel(); ++i) EXPECT_NEAR(yc[i], body[i] + x[i], 1e-12);
}

// ---------------------------------------------------------------- a small ResNet's summary

struct Row {
  int depth;
  std::string name, shape;
  int64_t params;
};
// Parses summary() rows "<2·depth spaces><name> <shape> <params>", taking the shape as the last
// [...] so that a name wider than its column still parses.
std::vector<Row> parse_summary(const std::string& s) {
  std::vector<Row> rows;
  std::istringstream in(s);
  std::string line;
  int rules = 0;
  while (std::getline(in, line)) {
    if (line.rfind("---", 0) == 0) {
      ++rules;
      continue;
    }
    if (rules != 2) continue;  // rows sit between the 2nd and 3rd rule
    line = line.substr(0, line.find_last_not_of(' ') + 1);
    const size_t sp = line.find_last_of(' ');
    Row r;
    r.params = std::stoll(line.substr(sp + 1));
    std::string rest = line.substr(0, line.find_last_not_of(' ', sp) + 1);
    const size_t br = rest.find_last_of('[');
    r.shape = rest.substr(br);
    rest = rest.substr(0, br);
    const size_t first = rest.find_first_not_of(' ');
    r.depth = static_cast<int>(first / 2);
    r.name = rest.substr(first, rest.find_last_not_of(' ') + 1 - first);
    rows.push_back(r);
  }
  return rows;
}

TEST(ResNetSummary, SmallResNetShapesAndParameterCounts) {
  using P = nn::Sequential<float>::Ptr;
  nn::Sequential<float> net{P(std::make_shared<nn::Conv2D<float>>(1, 16, 3, 1, 1, 1, false)),
                            P(std::make_shared<nn::BatchNorm2d<float>>(16)),
                            P(std::make_shared<nn::ReLU<float>>()),
                            P(std::make_shared<nn::BasicBlock<float>>(16, 16)),
                            P(std::make_shared<nn::BasicBlock<float>>(16, 16)),
                            P(std::make_shared<nn::BasicBlock<float>>(16, 16)),
                            P(std::make_shared<nn::BasicBlock<float>>(16, 32, 2)),
                            P(std::make_shared<nn::GlobalAvgPool2D<float>>()),
                            P(std::make_shared<nn::Dense<float>>(32, 10))};
  // Counted by hand: conv3x3 without bias = in·out·9, BN(c) = 2c, Dense = in·out + out.
  const int64_t stem = 1 * 16 * 9 + 2 * 16;                                    // 176
  const int64_t block16 = 16 * 16 * 9 * 2 + 2 * 16 * 2;                        // 4672
  const int64_t block32 = 16 * 32 * 9 + 64 + 32 * 32 * 9 + 64 + 16 * 32 + 64;  // 14528
  const int64_t head = 32 * 10 + 10;                                           // 330
  const int64_t total = stem + 3 * block16 + block32 + head;                   // 29050
  ASSERT_EQ(total, 29050);
  EXPECT_EQ(net.num_parameters(), total);

  const std::string s = net.summary({2, 1, 28, 28});
  const auto rows = parse_summary(s);
  const std::string big = "[2,16,28,28]", small = "[2,32,14,14]";
  std::vector<Row> expected = {{0, "Sequential", "[2,10]", total},
                               {1, "Conv2D(1, 16, kernel=3, padding=1, bias=false)", big, 144},
                               {1, "BatchNorm2d(16)", big, 32},
                               {1, "ReLU", big, 0}};
  for (int b = 0; b < 3; ++b) {
    expected.push_back({1, "BasicBlock(16, 16)", big, block16});
    expected.push_back({2, "Conv2D(16, 16, kernel=3, padding=1, bias=false)", big, 2304});
    expected.push_back({2, "BatchNorm2d(16)", big, 32});
    expected.push_back({2, "Conv2D(16, 16, kernel=3, padding=1, bias=false)", big, 2304});
    expected.push_back({2, "BatchNorm2d(16)", big, 32});
  }
  const std::vector<Row> tail = {
      {1, "BasicBlock(16, 32, stride=2)", small, block32},
      {2, "Conv2D(16, 32, kernel=3, stride=2, padding=1, bias=false)", small, 4608},
      {2, "BatchNorm2d(32)", small, 64},
      {2, "Conv2D(32, 32, kernel=3, padding=1, bias=false)", small, 9216},
      {2, "BatchNorm2d(32)", small, 64},
      {2, "Sequential", small, 512 + 64},
      {3, "Conv2D(16, 32, kernel=1, stride=2, bias=false)", small, 512},
      {3, "BatchNorm2d(32)", small, 64},
      {1, "GlobalAvgPool2D", "[2,32]", 0},
      {1, "Dense(32, 10)", "[2,10]", 330}};
  expected.insert(expected.end(), tail.begin(), tail.end());
  ASSERT_EQ(rows.size(), expected.size()) << s;
  for (size_t i = 0; i < rows.size(); ++i) {
    EXPECT_EQ(rows[i].depth, expected[i].depth) << "row " << i << "\n" << s;
    EXPECT_EQ(rows[i].name, expected[i].name) << "row " << i;
    EXPECT_EQ(rows[i].shape, expected[i].shape) << "row " << i << " " << rows[i].name;
    EXPECT_EQ(rows[i].params, expected[i].params) << "row " << i << " " << rows[i].name;
  }
  EXPECT_NE(s.find("Total params: 29050"), std::string::npos) << s;
  if (std::getenv("TAPEGRAD_PRINT_SUMMARY")) std::cout << s;
  // summary() ran in training mode without touching the running statistics.
  for (auto& [n, b] : net.named_buffers()) {
    if (n.find("num_batches_tracked") == std::string::npos) continue;
    EXPECT_EQ(b.item(), 0.0f) << n;
  }
}

}  // namespace
