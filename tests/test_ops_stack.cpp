// ops/stack.hpp: torch.stack values by index, gradients by hand and by gradcheck (double,
// 1e-6), errors by type and message.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "tapegrad/diag/gradcheck.hpp"
#include "tapegrad/ops/stack.hpp"

namespace tg = tapegrad;
using TD = tg::Tensor<double>;
using VD = tg::Var<double>;
using Vars = std::vector<VD>;

TEST(Stack, InsertsANewDimAtEachPosition) {
  tg::Generator gen(1);
  const TD a = TD::randn({2, 3}, gen), b = TD::randn({2, 3}, gen);
  tg::Tape<double> t;
  const VD va = t.constant(a), vb = t.constant(b);
  const TD s0 = tg::stack({va, vb}, 0).value();
  const TD s1 = tg::stack({va, vb}, 1).value();
  const TD s2 = tg::stack({va, vb}, -1).value();
  ASSERT_EQ(s0.shape(), tg::Shape({2, 2, 3}));
  ASSERT_EQ(s1.shape(), tg::Shape({2, 2, 3}));
  ASSERT_EQ(s2.shape(), tg::Shape({2, 3, 2}));
  for (int64_t i = 0; i < 2; ++i)
    for (int64_t j = 0; j < 3; ++j) {
      EXPECT_EQ(s0(0, i, j), a(i, j));  // s0[k][i][j] = x_k[i][j]
      EXPECT_EQ(s0(1, i, j), b(i, j));
      EXPECT_EQ(s1(i, 0, j), a(i, j));  // s1[i][k][j]
      EXPECT_EQ(s1(i, 1, j), b(i, j));
      EXPECT_EQ(s2(i, j, 0), a(i, j));  // s2[i][j][k]
      EXPECT_EQ(s2(i, j, 1), b(i, j));
    }
  const TD sc = tg::stack({t.constant(TD::scalar(4.0)), t.constant(TD::scalar(5.0))}).value();
  ASSERT_EQ(sc.shape(), tg::Shape({2}));
  EXPECT_EQ(sc[1], 5.0);
}

TEST(Stack, GradientIsEachInputsBlock) {
  tg::Tape<double> t;
  const VD a = t.input(TD::from({1.0, 2.0})), b = t.input(TD::from({3.0, 4.0}));
  const VD s = tg::stack({a, b}, 1);  // [[1,3],[2,4]]
  t.backward(s, TD::from({{10.0, 20.0}, {30.0, 40.0}}));
  EXPECT_EQ(a.grad()[0], 10.0);
  EXPECT_EQ(a.grad()[1], 30.0);
  EXPECT_EQ(b.grad()[0], 20.0);
  EXPECT_EQ(b.grad()[1], 40.0);
}

TEST(Stack, Gradcheck) {
  tg::Generator gen(2);
  for (int64_t dim : {0, 1, 2, -2}) {
    auto r =
        tg::gradcheck([dim](tg::Tape<double>&, const Vars& v) { return tg::stack(v, dim); },
                      {TD::randn({2, 3}, gen), TD::randn({2, 3}, gen), TD::randn({2, 3}, gen)});
    EXPECT_TRUE(r) << "dim " << dim << ": " << r;
  }
  // The same Var twice: both blocks add into its gradient.
  auto r = tg::gradcheck(
      [](tg::Tape<double>&, const Vars& v) {
        return tg::stack({v[0], v[0]}, 1);
      },
      {TD::randn({3, 2}, gen)});
  EXPECT_TRUE(r) << r;
}

TEST(Stack, ErrorsNameTheOpAndTheShapes) {
  tg::Tape<double> t;
  const VD a = t.constant(TD::zeros({2, 3})), b = t.constant(TD::zeros({3, 2}));
  auto message = [](auto f) {
    try {
      f();
    } catch (const tg::ShapeError& e) {
      return std::string(e.what());
    }
    return std::string("no ShapeError");
  };
  EXPECT_EQ(message([&] {
              tg::stack({a, b});
            }),
            "stack: tensor 1 has shape [3,2] but tensor 0 has [2,3]: all shapes must be equal");
  EXPECT_EQ(message([&] {
              tg::stack({a, a}, 3);
            }),
            "stack: dim 3 out of range for stacking tensors of shape [2,3] (allowed -3 to 2)");
  EXPECT_EQ(message([&] { tg::stack(Vars{}); }), "stack: no tensors to stack");
}
