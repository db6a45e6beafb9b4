#include <gtest/gtest.h>
#include <sys/stat.h>
#include <zlib.h>

#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "tapegrad/io/fashion_mnist.hpp"
#include "tapegrad/io/idx.hpp"
#include "test_util.hpp"

namespace tg = tapegrad;
namespace io = tapegrad::io;
using tapegrad::testing::error_message;
using tapegrad::testing::file_exists;
using tapegrad::testing::tmp_path;
using tapegrad::testing::write_bytes;

namespace {

std::string idx_tmp(const std::string& name) { return tmp_path("tg_idx_" + name); }

// An IDX file of unsigned bytes, built by hand: 0x0000, 0x08, ndims, big-endian sizes, data.
std::vector<uint8_t> make_idx(const std::vector<uint32_t>& dims, const std::vector<uint8_t>& data) {
  std::vector<uint8_t> b = {0, 0, 0x08, static_cast<uint8_t>(dims.size())};
  for (uint32_t d : dims) {
    b.push_back(static_cast<uint8_t>(d >> 24));
    b.push_back(static_cast<uint8_t>(d >> 16));
    b.push_back(static_cast<uint8_t>(d >> 8));
    b.push_back(static_cast<uint8_t>(d));
  }
  b.insert(b.end(), data.begin(), data.end());
  return b;
}

std::vector<uint8_t> gzip_bytes(const std::vector<uint8_t>& raw) {
  z_stream z{};
  EXPECT_EQ(deflateInit2(&z, 6, Z_DEFLATED, 16 + MAX_WBITS, 8, Z_DEFAULT_STRATEGY), Z_OK);
  std::vector<uint8_t> out(deflateBound(&z, raw.size()) + 64);
  z.next_in = const_cast<Bytef*>(raw.data());
  z.avail_in = static_cast<uInt>(raw.size());
  z.next_out = out.data();
  z.avail_out = static_cast<uInt>(out.size());
  EXPECT_EQ(deflate(&z, Z_FINISH), Z_STREAM_END);
  out.resize(z.total_out);
  deflateEnd(&z);
  return out;
}

// The IOError message of reading path, or "" if it did not throw.
std::string idx_error(const std::string& path) {
  return error_message<tg::IOError>([&] { io::read_idx(path); });
}

// The IOError message of parsing in-memory bytes named "mem.idx", or "" if it did not throw.
std::string parse_error(const std::vector<uint8_t>& b) {
  return error_message<tg::IOError>([&] { io::parse_idx(b, "mem.idx"); });
}

std::vector<uint8_t> iota_bytes(size_t n) {
  std::vector<uint8_t> v(n);
  for (size_t i = 0; i < n; ++i) v[i] = static_cast<uint8_t>(i * 7 + 3);
  return v;
}

TEST(IdxReader, ReadsRawFile) {
  const auto data = iota_bytes(24);
  const auto path = idx_tmp("raw.idx");
  write_bytes(path, make_idx({2, 3, 4}, data));
  const io::IdxData d = io::read_idx(path);
  EXPECT_EQ(d.dims, (std::vector<int64_t>{2, 3, 4}));
  EXPECT_EQ(d.shape(), (tg::Shape{2, 3, 4}));
  EXPECT_EQ(d.numel(), 24);
  EXPECT_EQ(d.data, data);
}

TEST(IdxReader, ReadsGzipFileByMagicNotName) {
  const auto data = iota_bytes(5 * 6);
  const auto path = idx_tmp("gz_without_suffix");
  write_bytes(path, gzip_bytes(make_idx({5, 6}, data)));
  const io::IdxData d = io::read_idx(path);
  EXPECT_EQ(d.dims, (std::vector<int64_t>{5, 6}));
  EXPECT_EQ(d.data, data);
}

TEST(IdxReader, ReadsConcatenatedGzipMembers) {
  const auto whole = make_idx({10}, iota_bytes(10));
  const std::vector<uint8_t> a(whole.begin(), whole.begin() + 7), b(whole.begin() + 7, whole.end());
  auto gz = gzip_bytes(a);
  const auto gz2 = gzip_bytes(b);
  gz.insert(gz.end(), gz2.begin(), gz2.end());
  const io::IdxData d = io::parse_idx(gz, "two_members.gz");
  EXPECT_EQ(d.data, iota_bytes(10));
}

TEST(IdxReader, EmptyDimensionHasNoData) {
  const io::IdxData d = io::parse_idx(make_idx({0, 28}, {}), "empty");
  EXPECT_EQ(d.numel(), 0);
  EXPECT_TRUE(d.data.empty());
}

TEST(IdxReader, TruncatedDataNamesFileAndSizes) {
  const auto path = idx_tmp("train-images-idx3-ubyte.gz");
  write_bytes(path, gzip_bytes(make_idx({60000, 28, 28}, iota_bytes(1000))));
  const std::string msg = idx_error(path);
  EXPECT_NE(msg.find(path + ": truncated: header says 47040000 data bytes, file has 1000"),
            std::string::npos)
      << msg;

  const auto raw = idx_tmp("truncated_raw");
  write_bytes(raw, make_idx({3, 4}, iota_bytes(5)));
  const std::string m2 = idx_error(raw);
  EXPECT_NE(m2.find(raw + ": truncated: header says 12 data bytes, file has 5"), std::string::npos)
      << m2;
}

TEST(IdxReader, DimensionProductLargerThanFile) {
  // 2^32-1 cubed overflows 64 bits: must be reported, not wrapped around to a small number.
  const auto path = idx_tmp("huge_dims");
  write_bytes(path, make_idx({0xFFFFFFFFu, 0xFFFFFFFFu, 0xFFFFFFFFu}, iota_bytes(16)));
  const std::string msg = idx_error(path);
  EXPECT_NE(msg.find(path + ": truncated"), std::string::npos) << msg;
  EXPECT_NE(msg.find("file has 16"), std::string::npos) << msg;
  // 4 GiB claimed, 16 bytes present: no 4 GiB allocation happens before the check fails.
  const std::string m2 = parse_error(make_idx({0xFFFFFFFFu}, iota_bytes(16)));
  EXPECT_NE(m2.find("mem.idx: truncated: header says 4294967295 data bytes, file has 16"),
            std::string::npos)
      << m2;
}

TEST(IdxReader, TrailingBytesAreAnError) {
  const std::string msg = parse_error(make_idx({2, 2}, iota_bytes(6)));
  EXPECT_NE(msg.find("mem.idx: 2 unexpected bytes after the data at byte 16: header says 4 data "
                     "bytes, file has 6"),
            std::string::npos)
      << msg;
}

TEST(IdxReader, WrongMagic) {
  auto b = make_idx({4}, iota_bytes(4));
  b[0] = 0x12, b[1] = 0x34;
  const std::string msg = parse_error(b);
  EXPECT_NE(msg.find("mem.idx: bad magic 0x1234 at byte 0"), std::string::npos) << msg;
}

TEST(IdxReader, UnsupportedTypeAndDimensionCount) {
  auto b = make_idx({4}, iota_bytes(4));
  b[2] = 0x0D;  // float32 IDX: a valid IDX type, but not one these datasets use
  EXPECT_NE(parse_error(b).find("mem.idx: unsupported data type 0x0d at byte 2"), std::string::npos)
      << parse_error(b);
  auto zero = make_idx({}, {});
  EXPECT_NE(parse_error(zero).find("mem.idx: dimension count 0 at byte 3: expected 1 to 6"),
            std::string::npos)
      << parse_error(zero);
  auto seven = make_idx({1, 1, 1, 1, 1, 1, 1}, {7});
  EXPECT_NE(parse_error(seven).find("dimension count 7 at byte 3"), std::string::npos)
      << parse_error(seven);
}

TEST(IdxReader, TruncatedHeader) {
  EXPECT_NE(parse_error({}).find("mem.idx: truncated: file has 0 bytes, an IDX header needs at "
                                 "least 4"),
            std::string::npos)
      << parse_error({});
  auto b = make_idx({3, 4, 5}, {});
  b.resize(9);  // magic, type, count, one size and a byte of the second
  EXPECT_NE(parse_error(b).find("mem.idx: truncated: the header of 3 dimensions needs 16 bytes, "
                                "file has 9"),
            std::string::npos)
      << parse_error(b);
}

TEST(IdxReader, CorruptOrTruncatedGzip) {
  const auto gz = gzip_bytes(make_idx({100}, iota_bytes(100)));
  std::vector<uint8_t> cut(gz.begin(), gz.begin() + static_cast<long>(gz.size() / 2));
  EXPECT_NE(parse_error(cut).find("mem.idx: truncated gzip stream"), std::string::npos)
      << parse_error(cut);

  auto flipped = gz;
  for (size_t i = 12; i < flipped.size() - 8; ++i) flipped[i] ^= 0x5A;
  const std::string msg = parse_error(flipped);
  EXPECT_NE(msg.find("mem.idx: "), std::string::npos) << msg;

  auto trailing = gz;
  trailing.push_back(0);
  trailing.push_back(0);
  EXPECT_NE(
      parse_error(trailing).find("2 bytes of trailing garbage after the gzip stream at byte " +
                                 std::to_string(gz.size())),
      std::string::npos)
      << parse_error(trailing);
}

TEST(IdxReader, MissingFileNamesIt) {
  const std::string path = idx_tmp("does_not_exist");
  std::remove(path.c_str());
  const std::string msg = idx_error(path);
  EXPECT_NE(msg.find(path + ": cannot open"), std::string::npos) << msg;
}

// ---- FashionMNIST ----

// Sets an environment variable for the scope of a test and restores it afterwards.
class ScopedEnv {
 public:
  ScopedEnv(const char* name, const std::string& value) : name_(name) {
    if (const char* old = std::getenv(name)) old_ = old, had_ = true;
    ::setenv(name, value.c_str(), 1);
  }
  ~ScopedEnv() {
    if (had_)
      ::setenv(name_, old_.c_str(), 1);
    else
      ::unsetenv(name_);
  }

 private:
  const char* name_;
  std::string old_;
  bool had_ = false;
};

// A tiny Fashion-MNIST look-alike: n images whose pixel i of item k is (k * 784 + i) % 256.
std::string make_tiny_fashion(const std::string& dirname, const std::vector<uint8_t>& labels,
                              bool gzip) {
  const std::string dir = idx_tmp(dirname);
  ::mkdir(dir.c_str(), 0755);
  const auto n = static_cast<uint32_t>(labels.size());
  std::vector<uint8_t> pixels(n * 784);
  for (size_t i = 0; i < pixels.size(); ++i) pixels[i] = static_cast<uint8_t>(i % 256);
  auto im = make_idx({n, 28, 28}, pixels), lb = make_idx({n}, labels);
  const std::string sfx = gzip ? ".gz" : "";
  write_bytes(dir + "/train-images-idx3-ubyte" + sfx, gzip ? gzip_bytes(im) : im);
  write_bytes(dir + "/train-labels-idx1-ubyte" + sfx, gzip ? gzip_bytes(lb) : lb);
  return dir;
}

TEST(FashionMNIST, ExplicitDirectoryAndLayouts) {
  const std::string dir = make_tiny_fashion("fm_raw", {3, 0, 9}, false);
  io::FashionMNIST ds(io::Split::Train, dir);
  EXPECT_EQ(ds.directory, dir);
  EXPECT_EQ(ds.size(), 3);
  EXPECT_EQ(ds.images.shape(), (tg::Shape{3, 1, 28, 28}));
  EXPECT_EQ(ds.labels, (std::vector<int64_t>{3, 0, 9}));
  // item 1, row 2, column 5 is flat byte 784 + 61 = 845, i.e. 845 % 256 = 77.
  EXPECT_FLOAT_EQ(ds.images.at(1, 0, 2, 5), 77.0f / 255.0f);
  EXPECT_FLOAT_EQ(ds.images.at(0, 0, 9, 3), 1.0f);
  EXPECT_FLOAT_EQ(ds.images.at(0, 0, 0, 0), 0.0f);

  io::FashionMNIST flat(io::Split::Train, dir, io::ImageLayout::Flat);
  EXPECT_EQ(flat.images.shape(), (tg::Shape{3, 784}));
  EXPECT_FLOAT_EQ(flat.images.at(1, 61), 77.0f / 255.0f);
  EXPECT_EQ(io::FashionMNIST::class_names[9], "Ankle boot");
}

TEST(FashionMNIST, EnvironmentVariableOverridesDefault) {
  const std::string dir = make_tiny_fashion("fm_env", {1, 2}, true);
  ScopedEnv env(io::FashionMNIST::environment_variable, dir);
  io::FashionMNIST ds(io::Split::Train);
  EXPECT_EQ(ds.directory, dir);
  EXPECT_EQ(ds.labels, (std::vector<int64_t>{1, 2}));
  // The explicit argument beats the environment.
  const std::string other = make_tiny_fashion("fm_arg", {4}, false);
  EXPECT_EQ(io::FashionMNIST(io::Split::Train, other).labels, (std::vector<int64_t>{4}));
}

TEST(FashionMNIST, MissingFilesSayWhereAndWhatToInstall) {
  const std::string dir = idx_tmp("fm_nowhere");
  try {
    io::FashionMNIST ds(io::Split::Test, dir);
    FAIL() << "no error for a directory without the files";
  } catch (const tg::IOError& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("t10k-images-idx3-ubyte[.gz], t10k-labels-idx1-ubyte[.gz] not found"),
              std::string::npos)
        << msg;
    EXPECT_NE(msg.find("searched " + dir + " (the directory argument)"), std::string::npos) << msg;
    EXPECT_NE(msg.find("sudo apt-get install dataset-fashion-mnist"), std::string::npos) << msg;
    EXPECT_NE(msg.find("TAPEGRAD_FASHION_MNIST_DIR"), std::string::npos) << msg;
  }
}

TEST(FashionMNIST, BadLabelAndMismatchedCounts) {
  const std::string dir = make_tiny_fashion("fm_badlabel", {1, 10}, false);
  try {
    io::FashionMNIST ds(io::Split::Train, dir);
    FAIL() << "label 10 accepted";
  } catch (const tg::IOError& e) {
    EXPECT_NE(std::string(e.what()).find("train-labels-idx1-ubyte: label 10 of item 1 at byte 9"),
              std::string::npos)
        << e.what();
  }
  write_bytes(dir + "/train-labels-idx1-ubyte", make_idx({3}, {1, 2, 3}));
  EXPECT_THROW(io::FashionMNIST(io::Split::Train, dir), tg::IOError);
}

TEST(FashionMNIST, RealFilesFromDebianPackage) {
  const std::string dir = io::FashionMNIST::default_directory;
  if (!file_exists(dir + "/train-labels-idx1-ubyte.gz"))
    GTEST_SKIP() << "dataset-fashion-mnist is not installed";
  ScopedEnv env(io::FashionMNIST::environment_variable, "");  // empty: use the default
  for (auto split : {io::Split::Train, io::Split::Test}) {
    io::FashionMNIST ds(split);
    const int64_t n = split == io::Split::Train ? 60000 : 10000;
    EXPECT_EQ(ds.directory, dir);
    ASSERT_EQ(ds.size(), n);
    EXPECT_EQ(ds.images.shape(), (tg::Shape{n, 1, 28, 28}));
    // Fashion-MNIST is balanced: n / 10 items of each class.
    std::vector<int64_t> count(10, 0);
    for (int64_t y : ds.labels) {
      ASSERT_GE(y, 0);
      ASSERT_LE(y, 9);
      ++count[static_cast<size_t>(y)];
    }
    for (int64_t c : count) EXPECT_EQ(c, n / 10);
    EXPECT_EQ(ds.labels[0], 9);  // both splits start with an ankle boot
    EXPECT_GE(ds.images.array().minCoeff(), 0.0f);
    EXPECT_LE(ds.images.array().maxCoeff(), 1.0f);
    EXPECT_EQ(ds.images.array().maxCoeff(), 1.0f);
  }
}

}  // namespace
