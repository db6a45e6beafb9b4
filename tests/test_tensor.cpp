#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <limits>
#include <sstream>
#include <string>

#include "tapegrad/tensor.hpp"

namespace tg = tapegrad;

namespace {

TEST(Tensor, CreationAndAccess) {
  auto t = tg::Tensor<float>::from({{1, 2, 3}, {4, 5, 6}});
  EXPECT_EQ(t.shape(), (tg::Shape{2, 3}));
  EXPECT_EQ(t.rank(), 2);
  EXPECT_EQ(t.numel(), 6);
  EXPECT_EQ(t.at(1, 2), 6.0f);
  EXPECT_EQ(t(1, 0), 4.0f);
  EXPECT_EQ(t[4], 5.0f);
  EXPECT_THROW(t.at(2, 0), tg::ShapeError);
  EXPECT_THROW(t.at(0), tg::ShapeError);
  EXPECT_THROW(t.item(), tg::ShapeError);
  EXPECT_EQ(tg::Tensor<double>::scalar(2.5).item(), 2.5);
  EXPECT_EQ(tg::Tensor<double>::full({2, 2}, 7.0)[3], 7.0);
  EXPECT_EQ(tg::Tensor<double>::zeros({3})[2], 0.0);
  EXPECT_EQ(tg::Tensor<double>::ones({3})[1], 1.0);
  auto three = tg::Tensor<double>::from({{{1, 2}, {3, 4}}, {{5, 6}, {7, 8}}});
  EXPECT_EQ(three.shape(), (tg::Shape{2, 2, 2}));
  EXPECT_EQ(three.at(1, 0, 1), 6.0);
  EXPECT_THROW(tg::Tensor<double>::from({{1, 2}, {3}}), tg::ShapeError);
  EXPECT_THROW(tg::Tensor<double>::from(std::vector<double>{1, 2, 3}, tg::Shape{2, 2}),
               tg::ShapeError);
}

TEST(Tensor, Arange) {
  auto a = tg::Tensor<double>::arange(4);
  EXPECT_TRUE(tg::allclose(a, tg::Tensor<double>::from({0, 1, 2, 3})));
  auto b = tg::Tensor<double>::arange(1.0, 2.0, 0.25);
  EXPECT_TRUE(tg::allclose(b, tg::Tensor<double>::from({1, 1.25, 1.5, 1.75})));
  EXPECT_THROW(tg::Tensor<double>::arange(0.0, 1.0, 0.0), tg::ValueError);
  // A NaN step, or more elements than an int64_t counts, is an error, not a cast out of range.
  EXPECT_THROW(tg::Tensor<double>::arange(0.0, 1.0, std::nan("")), tg::ValueError);
  EXPECT_THROW(tg::Tensor<double>::arange(0.0, 1e300, 1.0), tg::ValueError);
  EXPECT_THROW(tg::Tensor<double>::arange(0.0, 1.0, 1e-300), tg::ValueError);
}

TEST(Tensor, SizesPastInt64OrTheAddressSpaceAreShapeErrors) {
  constexpr int64_t big = std::numeric_limits<int64_t>::max();
  // The element count overflows int64_t: the constructor and push_back say so.
  try {
    tg::Shape s{big, 2};
    FAIL() << "no error for " << s;
  } catch (const tg::ShapeError& e) {
    EXPECT_NE(std::string(e.what()).find("[9223372036854775807,2]"), std::string::npos) << e.what();
  }
  tg::Shape s{int64_t{1} << 62};
  EXPECT_THROW(s.push_back(4), tg::ShapeError);
  EXPECT_EQ(s, tg::Shape{int64_t{1} << 62});  // unchanged by the failed push_back
  // A size of 0 makes 0 elements whatever the others are.
  EXPECT_EQ((tg::Shape{0, big, big}.numel()), 0);
  EXPECT_EQ(tg::Tensor<float>(tg::Shape{0, big, big}).numel(), 0);
  // 2^62 floats fit an int64_t count but not the address space: an error naming the shape,
  // not a byte count that wraps around to a small allocation.
  try {
    tg::Tensor<float> t(tg::Shape{int64_t{1} << 62});
    FAIL() << "allocated " << t.numel() << " floats";
  } catch (const tg::ShapeError& e) {
    EXPECT_NE(std::string(e.what()).find("[4611686018427387904]"), std::string::npos) << e.what();
  }
  EXPECT_THROW(tg::Tensor<double>::zeros({int64_t{1} << 31, int64_t{1} << 31}), tg::ShapeError);
  tg::Tensor<float> t({2});
  EXPECT_THROW(t.resize(tg::Shape{int64_t{1} << 62}), tg::ShapeError);
  EXPECT_EQ(t.shape(), tg::Shape{2});
}

// 2^60 floats, 2^62 bytes: within ptrdiff_t, so not a ShapeError, but beyond the virtual address
// space of any x86-64 (2^47 or 2^57 bytes) or AArch64 machine: operator new fails whatever the
// kernel's overcommit setting. AddressSanitizer ends the process there instead of throwing.
TEST(Tensor, MemoryTheSystemCannotGiveIsAnOutOfMemoryErrorNamingTheShape) {
#ifdef __SANITIZE_ADDRESS__
  GTEST_SKIP() << "AddressSanitizer aborts on a failed operator new";
#endif
  const tg::Shape huge{int64_t{1} << 30, int64_t{1} << 30};
  try {
    tg::Tensor<float> t(huge);
    FAIL() << "allocated " << t.numel() << " floats";
  } catch (const tg::OutOfMemoryError& e) {
    const std::string what = e.what();
    EXPECT_NE(what.find("[1073741824,1073741824]"), std::string::npos) << what;
    EXPECT_NE(what.find("4611686018427387904 bytes"), std::string::npos) << what;
  }
  tg::Tensor<float> t = tg::Tensor<float>::full({2}, 5.0f);
  EXPECT_THROW(t.resize(huge), tg::OutOfMemoryError);
  EXPECT_EQ(t.shape(), tg::Shape{2});  // unchanged
  EXPECT_EQ(t[1], 5.0f);
}

TEST(Tensor, CopiesShareStorageAndCloneDoesNot) {
  auto a = tg::Tensor<float>::zeros({4});
  auto b = a;
  auto c = a.clone();
  b[0] = 3;
  EXPECT_EQ(a[0], 3.0f);
  EXPECT_EQ(c[0], 0.0f);
  EXPECT_TRUE(a.shares_storage(b));
  EXPECT_FALSE(a.shares_storage(c));
}

TEST(Tensor, ReshapeInfersOneDimension) {
  auto a = tg::Tensor<double>::arange(12);
  auto b = a.reshape({3, -1});
  EXPECT_EQ(b.shape(), (tg::Shape{3, 4}));
  EXPECT_TRUE(b.shares_storage(a));
  EXPECT_EQ(b.at(2, 1), 9.0);
  EXPECT_THROW(a.reshape({5, -1}), tg::ShapeError);
  EXPECT_THROW(a.reshape({-1, -1}), tg::ShapeError);
  EXPECT_THROW(a.reshape({2, 5}), tg::ShapeError);
  EXPECT_THROW(a.reshape({1, 1, 1, 1, 1, 1, 6}), tg::ShapeError);  // rank 7
  EXPECT_THROW((tg::Shape{1, 1, 1, 1, 1, 1, 1}), tg::ShapeError);
  // Sizes whose product passes int64_t: an error, not a wrapped product that divides 12.
  constexpr int64_t big = std::numeric_limits<int64_t>::max();
  EXPECT_THROW(a.reshape({big, 2, -1}), tg::ShapeError);
  EXPECT_THROW(a.reshape({int64_t{1} << 62, 4, 3}), tg::ShapeError);
}

TEST(Tensor, EigenViewsWriteThrough) {
  auto t = tg::Tensor<double>::zeros({2, 3});
  t.matrix()(1, 2) = 5;
  EXPECT_EQ(t.at(1, 2), 5.0);
  t.array() += 1;
  EXPECT_EQ(t.at(0, 0), 1.0);
  EXPECT_EQ(t.matrix().rows(), 2);
  EXPECT_EQ(t.matrix().cols(), 3);
  auto m = tg::Tensor<double>::zeros({2, 3, 4}).matrix();
  EXPECT_EQ(m.rows(), 6);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(t.data()) % 64, 0u);
  EXPECT_THROW(t.matrix(4, 2), tg::ShapeError);
}

TEST(Tensor, SeededRandomIsReproducible) {
  tg::Generator g1(42), g2(42), g3(43);
  auto a = tg::Tensor<double>::randn({1000}, g1);
  auto b = tg::Tensor<double>::randn({1000}, g2);
  auto c = tg::Tensor<double>::randn({1000}, g3);
  EXPECT_TRUE(tg::allclose(a, b, 0, 0));
  EXPECT_FALSE(tg::allclose(a, c));
  // Moments of 1000 standard normals: mean within 4 sigma/sqrt(n), variance near 1.
  const double mean = a.array().mean();
  const double var = (a.array() - mean).square().mean();
  EXPECT_NEAR(mean, 0.0, 4 / std::sqrt(1000.0));
  EXPECT_NEAR(var, 1.0, 0.15);
  tg::Generator g4(7);
  auto u = tg::Tensor<float>::rand({1000}, g4, -2.0f, 3.0f);
  EXPECT_GE(u.array().minCoeff(), -2.0f);
  EXPECT_LT(u.array().maxCoeff(), 3.0f);
  // As torch.normal and uniform_: a negative or NaN spread, or bounds the wrong way round, throw.
  EXPECT_THROW(tg::Tensor<double>::randn({2}, g4, 0.0, -1.0), tg::ValueError);
  EXPECT_THROW(tg::Tensor<double>::randn({2}, g4, 0.0, std::nan("")), tg::ValueError);
  EXPECT_THROW(tg::Tensor<double>::randn({2}, g4, INFINITY, 1.0), tg::ValueError);
  EXPECT_THROW(tg::Tensor<float>::rand({2}, g4, 1.0f, 0.0f), tg::ValueError);
  EXPECT_THROW(tg::Tensor<float>::rand({2}, g4, -INFINITY, 0.0f), tg::ValueError);
  // The first numbers of seed 0 are fixed forever (same on every machine).
  tg::Generator g5(0);
  EXPECT_EQ(g5.next_u64(), 0x99EC5F36CB75F2B4ULL);
}

TEST(Tensor, AllcloseSemantics) {
  auto a = tg::Tensor<double>::from({1.0, 100.0});
  auto b = tg::Tensor<double>::from({1.0 + 1e-9, 100.0 + 1e-4});
  EXPECT_TRUE(tg::allclose(a, b, 1e-5, 1e-8));
  EXPECT_FALSE(tg::allclose(a, b, 1e-7, 1e-8));
  auto n = tg::Tensor<double>::from({NAN, 1.0});
  EXPECT_FALSE(tg::allclose(n, n));
  EXPECT_FALSE(tg::allclose(a, tg::Tensor<double>::from({1.0, 100.0, 3.0})));
}

TEST(Tensor, PrintsShapeAndValuesAndSummarises) {
  std::ostringstream os;
  os << tg::Tensor<double>::from({{1, 2}, {3, 4}});
  EXPECT_EQ(os.str(),
            "tensor([[    1.0000,     2.0000],\n"
            "        [    3.0000,     4.0000]], shape=[2,2])");
  std::ostringstream big;
  big << tg::Tensor<float>::arange(2000);
  EXPECT_NE(big.str().find("..."), std::string::npos);
  EXPECT_NE(big.str().find("1999.0000"), std::string::npos);
  EXPECT_EQ(big.str().find("1000.0000"), std::string::npos);
  EXPECT_NE(big.str().find("shape=[2000]"), std::string::npos);
}

}  // namespace

TEST(Tensor, NarrowSharesStorageAtAlignedOffsets) {
  tg::Tensor<float> flat = tg::Tensor<float>::arange(64);
  tg::Tensor<float> part = flat.narrow(16, 32).reshape({4, 8});  // 16 floats = 64 bytes in
  EXPECT_EQ(part.shape(), tg::Shape({4, 8}));
  EXPECT_EQ(part[0], 16.0f);
  EXPECT_EQ(part.capacity(), 32);
  part[1] = -1.0f;
  EXPECT_EQ(flat[17], -1.0f);  // writes go through
  flat[47] = 99.0f;
  EXPECT_EQ(part[31], 99.0f);
  EXPECT_EQ(part.matrix().rows(), 4);  // Eigen maps of the view are aligned
  part.matrix().setZero();
  EXPECT_EQ(flat[16], 0.0f);
  EXPECT_EQ(flat[48], 48.0f);  // nothing beyond it
  // Rows of a matrix: 4 doubles per row, so rows start 64 bytes apart every 2 rows.
  tg::Tensor<double> m = tg::Tensor<double>::arange(24).reshape({6, 4});
  EXPECT_EQ(m.narrow(2, 3).shape(), tg::Shape({3, 4}));
  EXPECT_EQ(m.narrow(2, 3)[0], 8.0);
  EXPECT_THROW(m.narrow(1, 2), tg::ValueError);  // 32 bytes in: not aligned
  EXPECT_THROW(m.narrow(4, 3), tg::ShapeError);  // beyond the end
  EXPECT_THROW(m.narrow(-1, 1), tg::ShapeError);
  EXPECT_THROW(tg::Tensor<double>::scalar(1).narrow(0, 1), tg::ShapeError);
  // The storage lives as long as a view does.
  tg::Tensor<double> kept;
  {
    tg::Tensor<double> owner = tg::Tensor<double>::full({16}, 3.0);
    kept = owner.narrow(8, 8);
  }
  EXPECT_EQ(kept[7], 3.0);
}
