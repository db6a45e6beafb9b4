// Temporary smoke test of the build setup; delete once real tests exist.
#include <gtest/gtest.h>

#include <Eigen/Dense>

TEST(Smoke, EigenMatrixProduct) {
  Eigen::Matrix2d a;
  a << 1, 2, 3, 4;
  Eigen::Matrix2d b;
  b << 5, 6, 7, 8;
  const Eigen::Matrix2d c = a * b;
  EXPECT_DOUBLE_EQ(c(0, 0), 19.0);  // 1*5 + 2*7
  EXPECT_DOUBLE_EQ(c(0, 1), 22.0);  // 1*6 + 2*8
  EXPECT_DOUBLE_EQ(c(1, 0), 43.0);  // 3*5 + 4*7
  EXPECT_DOUBLE_EQ(c(1, 1), 50.0);  // 3*6 + 4*8
}
