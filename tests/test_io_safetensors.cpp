#include <gtest/gtest.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <chrono>
#include <cmath>
#include <csignal>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <limits>
#include <string>
#include <thread>
#include <vector>

#include "tapegrad/io/idx.hpp"
#include "tapegrad/io/json.hpp"
#include "tapegrad/io/safetensors.hpp"
#include "test_util.hpp"

namespace tg = tapegrad;
namespace io = tapegrad::io;
using tapegrad::testing::error_message;
using tapegrad::testing::file_exists;
using tapegrad::testing::same_bits;
using tapegrad::testing::tmp_path;
using tapegrad::testing::write_bytes;

namespace {

std::string st_tmp(const std::string& name) { return tmp_path("tg_st_" + name); }

std::vector<uint8_t> st_read(const std::string& path) { return io::read_file_bytes(path); }

// The files next to path named "<path>.tmp-*" (AtomicFile's temporary files), sorted.
std::vector<std::string> temp_files_of(const std::string& path) {
  const auto slash = path.rfind('/');
  const std::string dir = path.substr(0, slash), prefix = path.substr(slash + 1) + ".tmp-";
  std::vector<std::string> out;
  for (const auto& e : std::filesystem::directory_iterator(dir))
    if (e.path().filename().string().starts_with(prefix)) out.push_back(e.path().string());
  std::sort(out.begin(), out.end());
  return out;
}

// A file made by hand: 8-byte little-endian length, the header text as given (no padding
// added), then data.
std::vector<uint8_t> st_file(const std::string& header, const std::vector<uint8_t>& data) {
  std::vector<uint8_t> b(8 + header.size() + data.size());
  for (int i = 0; i < 8; ++i)
    b[static_cast<size_t>(i)] = static_cast<uint8_t>(header.size() >> (8 * i));
  std::copy(header.begin(), header.end(), b.begin() + 8);
  std::copy(data.begin(), data.end(), b.begin() + 8 + static_cast<std::ptrdiff_t>(header.size()));
  return b;
}

// The IOError message of parsing bytes named "m.st", or "" if it parsed.
std::string st_error(const std::vector<uint8_t>& bytes) {
  return error_message<tg::IOError>([&] { io::parse_safetensors(bytes, "m.st"); });
}

// The message must name the file first and contain text.
#define EXPECT_ST_ERROR(bytes, text)                              \
  do {                                                            \
    const std::string msg_ = st_error(bytes);                     \
    EXPECT_EQ(msg_.rfind("m.st: ", 0), 0u) << msg_;               \
    EXPECT_NE(msg_.find(text), std::string::npos)                 \
        << "expected \"" << (text) << "\" in \"" << msg_ << "\""; \
  } while (0)

float float_bits(uint32_t u) { return std::bit_cast<float>(u); }
double double_bits(uint64_t u) { return std::bit_cast<double>(u); }

// ---- JSON ----

// Reads any JSON value into a compact text form through the pull reader (test only).
std::string walk(io::JsonReader& r) {
  using K = io::JsonReader::Kind;
  switch (r.peek()) {
    case K::Object: {
      std::string out = "{";
      r.begin_object();
      for (std::string key; r.next_member(key);) out += key + ":" + walk(r) + ",";
      return out + "}";
    }
    case K::Array: {
      std::string out = "[";
      r.begin_array();
      while (r.next_item()) out += walk(r) + ",";
      return out + "]";
    }
    case K::String:
      return "s:" + r.string();
    case K::Number:
      return "n:" + std::string(r.number());
    default:
      return r.literal() ? "true" : "false/null";
  }
}

TEST(Json, ReadsValuesEscapesAndUnicode) {
  const std::string text =
      R"( {"a": [1, -2.5e3, 0, true, false, null], "s": "q\"\\\/\b\f\n\r\t\u00e9\ud83d\ude00é"} )";
  io::JsonReader r(text, 0, "j");
  EXPECT_EQ(r.peek(), io::JsonReader::Kind::Object);
  r.begin_object();
  std::string key;
  ASSERT_TRUE(r.next_member(key));
  EXPECT_EQ(key, "a");
  EXPECT_EQ(r.key_offset(), 2u);
  EXPECT_EQ(r.peek(), io::JsonReader::Kind::Array);
  EXPECT_EQ(r.offset(), 7u);  // where the array starts
  EXPECT_EQ(walk(r), "[n:1,n:-2.5e3,n:0,true,false/null,false/null,]");
  ASSERT_TRUE(r.next_member(key));
  EXPECT_EQ(key, "s");
  EXPECT_EQ(r.string(), "q\"\\/\b\f\n\r\t\xC3\xA9\xF0\x9F\x98\x80\xC3\xA9");  // é, U+1F600, é
  EXPECT_FALSE(r.next_member(key));
  r.end();

  uint64_t x = 0;
  EXPECT_TRUE(io::JsonReader::to_u64("1", x));
  EXPECT_EQ(x, 1u);
  EXPECT_FALSE(io::JsonReader::to_u64("-2.5e3", x));  // negative with exponent: not an index
  EXPECT_FALSE(io::JsonReader::to_u64("1e3", x));
  EXPECT_FALSE(io::JsonReader::to_u64("18446744073709551616", x));  // 2^64
  EXPECT_TRUE(io::JsonReader::to_u64("18446744073709551615", x));
  EXPECT_EQ(x, UINT64_MAX);
}

TEST(Json, RejectsWhatStrictJsonRejects) {
  auto error = [](const std::string& t) {
    return error_message<tg::IOError>([&] {
      io::JsonReader r(t, 100, "j");
      r.skip_value();
      r.end();
    });
  };
  EXPECT_EQ(error(R"({"a":1,})"),
            "j: JSON syntax error at byte 107: expected a string key, found '}'");
  EXPECT_EQ(
      error(R"([1,2)"),
      "j: JSON syntax error at byte 104: expected ']' or ',' in an array, found end of the header");
  EXPECT_NE(error("[01]").find("at byte 102: expected ']' or ','"), std::string::npos);
  EXPECT_NE(error("[NaN]").find("expected a value"), std::string::npos);
  EXPECT_NE(error("[1.]").find("expected a digit after '.'"), std::string::npos);
  EXPECT_NE(error("\"a\nb\"").find("control character"), std::string::npos);
  EXPECT_NE(error("\"\\ud800\"").find("high surrogate without a low surrogate"), std::string::npos);
  EXPECT_NE(error("\"\\udc00\"").find("lone low surrogate"), std::string::npos);
  EXPECT_NE(error("\"\xC0\xAF\"").find("invalid UTF-8"), std::string::npos);      // overlong '/'
  EXPECT_NE(error("\"\xED\xA0\x80\"").find("invalid UTF-8"), std::string::npos);  // surrogate
  EXPECT_NE(error("\"\\x\"").find("invalid escape"), std::string::npos);
  EXPECT_NE(error("[1] x").find("at byte 104: unexpected 'x' after the JSON value"),
            std::string::npos);
  EXPECT_NE(error("tru").find("invalid literal"), std::string::npos);
  EXPECT_NE(error(std::string(100, '[') + std::string(100, ']')).find("nesting deeper than 64"),
            std::string::npos);
  EXPECT_NE(error("").find("expected a value"), std::string::npos);
  EXPECT_NE(error("{\"a\" 1}").find("at byte 105: expected ':' after an object key"),
            std::string::npos);
}

// ---- safetensors: writing ----

TEST(Safetensors, WritesTheReferenceByteLayout) {
  // Built by hand following the format: {"__metadata__":...,"a":{...}} padded with spaces to a
  // multiple of 8, its length as 8 little-endian bytes, then 1.0f and -2.0f little-endian.
  const std::string path = st_tmp("layout.safetensors");
  io::save_safetensors<float>(path, {{"a", tg::Tensor<float>::from({1.0f, -2.0f})}},
                              {{"k", "v\"1"}});
  std::string header =
      R"({"__metadata__":{"k":"v\"1"},"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})";
  ASSERT_EQ(header.size(), 82u);
  header.append(6, ' ');  // 82 -> 88
  const std::vector<uint8_t> expected =
      st_file(header, {0x00, 0x00, 0x80, 0x3f, 0x00, 0x00, 0x00, 0xc0});
  EXPECT_EQ(st_read(path), expected);
  EXPECT_EQ(expected[0], 88);
  EXPECT_EQ(temp_files_of(path), std::vector<std::string>{});
}

TEST(Safetensors, PlacesDoublesFirstSoEveryTensorIsAligned) {
  const std::string path = st_tmp("aligned.safetensors");
  io::NamedTensors t;
  t.emplace_back("x", tg::Tensor<float>::from({3.0f}));
  t.emplace_back("y", tg::Tensor<double>::from({0.5}));
  io::save_safetensors(path, t);
  std::string header = R"({"x":{"dtype":"F32","shape":[1],"data_offsets":[8,12]},)"
                       R"("y":{"dtype":"F64","shape":[1],"data_offsets":[0,8]}})";
  header.append((8 - header.size() % 8) % 8, ' ');
  std::vector<uint8_t> data = {0, 0, 0, 0, 0, 0, 0xe0, 0x3f, 0, 0, 0x40, 0x40};  // 0.5, 3.0f
  EXPECT_EQ(st_read(path), st_file(header, data));
}

TEST(Safetensors, RoundTripIsBitIdenticalIncludingNaNPayloads) {
  const std::string path = st_tmp("roundtrip.safetensors");
  auto f = tg::Tensor<float>::from(
      {{1.5f, -0.0f, std::numeric_limits<float>::infinity(),
        -std::numeric_limits<float>::infinity()},
       {float_bits(0x7fc00001u), float_bits(0xffa12345u), float_bits(0x00000001u), 3.25e38f}});
  auto d = tg::Tensor<double>::from({double_bits(0x7ff8000000000123ull),
                                     double_bits(0xfff4000000000001ull),
                                     std::numeric_limits<double>::infinity(), -0.0,
                                     std::numeric_limits<double>::denorm_min(), 1e308});
  auto scalar = tg::Tensor<double>::scalar(42.0);
  auto empty = tg::Tensor<float>(tg::Shape{0, 3});
  auto six = tg::Tensor<float>::full(tg::Shape{1, 2, 1, 2, 1, 2}, 7.0f);
  io::NamedTensors all = {{"f", f}, {"d", d}, {"scalar", scalar}, {"empty", empty}, {"six", six}};
  io::save_safetensors(path, all, {{"epoch", "3"}, {"note", "é"}});

  const io::SafetensorsFile file = io::load_safetensors(path);
  ASSERT_EQ(file.tensors.size(), 5u);
  for (size_t i = 0; i < all.size(); ++i) EXPECT_EQ(file.tensors[i].first, all[i].first);
  EXPECT_TRUE(same_bits(std::get<tg::Tensor<float>>(*file.find("f")), f));
  EXPECT_TRUE(same_bits(std::get<tg::Tensor<double>>(*file.find("d")), d));
  EXPECT_EQ(std::get<tg::Tensor<double>>(*file.find("scalar")).shape(), tg::Shape{});
  EXPECT_EQ(std::get<tg::Tensor<double>>(*file.find("scalar")).item(), 42.0);
  EXPECT_EQ(io::shape_of(*file.find("empty")), (tg::Shape{0, 3}));
  EXPECT_TRUE(same_bits(std::get<tg::Tensor<float>>(*file.find("six")), six));
  EXPECT_EQ(file.find("nope"), nullptr);
  ASSERT_NE(file.meta("epoch"), nullptr);
  EXPECT_EQ(*file.meta("epoch"), "3");
  EXPECT_EQ(*file.meta("note"), "é");
}

TEST(Safetensors, WriterRejectsBadNamesAndUnwritablePaths) {
  const std::string path = st_tmp("badnames.safetensors");
  auto one = tg::Tensor<float>::from({1.0f});
  EXPECT_THROW(io::save_safetensors<float>(path, {{"a", one}, {"a", one}}), tg::ValueError);
  EXPECT_THROW(io::save_safetensors<float>(path, {{"", one}}), tg::ValueError);
  EXPECT_THROW(io::save_safetensors<float>(path, {{"__metadata__", one}}), tg::ValueError);
  EXPECT_THROW(io::save_safetensors<float>(path, {{"bad\xff", one}}), tg::ValueError);
  EXPECT_THROW(io::save_safetensors<float>(path, {{"a", one}}, {{"k", "1"}, {"k", "2"}}),
               tg::ValueError);
  const std::string nodir = st_tmp("no_such_dir/x.safetensors");
  try {
    io::save_safetensors<float>(nodir, {{"a", one}});
    FAIL() << "wrote into a missing directory";
  } catch (const tg::IOError& e) {
    EXPECT_NE(std::string(e.what()).find(nodir + ": cannot create the temporary file"),
              std::string::npos)
        << e.what();
  }
}

void throw_before_rename(const std::string&) { throw tg::IOError("simulated crash"); }

TEST(Safetensors, InterruptedSaveLeavesPreviousFileIntact) {
  const std::string path = st_tmp("interrupted.safetensors");
  const auto v1 = tg::Tensor<float>::from({1.0f, 2.0f, 3.0f});
  io::save_safetensors<float>(path, {{"w", v1}});
  const auto before = st_read(path);

  // A crash after the new data was written but before the rename.
  io::detail::before_rename_hook = throw_before_rename;
  EXPECT_THROW(io::save_safetensors<float>(path, {{"w", tg::Tensor<float>::zeros({1000})}}),
               tg::IOError);
  io::detail::before_rename_hook = nullptr;
  EXPECT_EQ(st_read(path), before);
  EXPECT_EQ(temp_files_of(path), std::vector<std::string>{});  // removed by the unwinding writer

  // A user's own file named like the old fixed temporary name is not touched; a temporary
  // file left by a killed process is ignored by the reader and not reused by the next save.
  write_bytes(path + ".tmp", {1, 2, 3});
  const std::string stale = path + ".tmp-1-deadbeef";
  write_bytes(stale, {4, 5});
  EXPECT_TRUE(same_bits(std::get<tg::Tensor<float>>(*io::load_safetensors(path).find("w")), v1));
  const auto v2 = tg::Tensor<float>::from({4.0f});
  io::save_safetensors<float>(path, {{"w", v2}});
  EXPECT_TRUE(same_bits(std::get<tg::Tensor<float>>(*io::load_safetensors(path).find("w")), v2));
  EXPECT_EQ(st_read(path + ".tmp"), (std::vector<uint8_t>{1, 2, 3}));
  EXPECT_EQ(temp_files_of(path), std::vector<std::string>{stale});
  std::remove(stale.c_str());
}

TEST(Safetensors, SaveRejectsEmptyAndDirectoryPaths) {
  const auto one = tg::Tensor<float>::from({1.0f});
  EXPECT_EQ(error_message<tg::IOError>([&] {
              io::save_safetensors<float>("", {{"a", one}});
            }),
            "cannot write a file: the path is empty");
  const std::string dir = tmp_path("");
  EXPECT_EQ(error_message<tg::IOError>([&] {
              io::save_safetensors<float>(dir, {{"a", one}});
            }),
            dir + ": is a directory; give the path of a file");
  const std::string dir_no_slash = tmp_path(".");
  EXPECT_EQ(error_message<tg::IOError>([&] {
              io::save_safetensors<float>(dir_no_slash, {{"a", one}});
            }),
            dir_no_slash + ": is a directory; give the path of a file");
  EXPECT_FALSE(file_exists(".tmp"));
}

// Two processes save to one path again and again while this one reads it: every load sees a
// complete file (one writer's whole content), never an empty or partial one, and every save
// lands (each writer's temporary file is its own).
TEST(Safetensors, ConcurrentSavesToOnePathAreAtomic) {
  const std::string path = st_tmp("concurrent.safetensors");
  constexpr int saves = 60;
  constexpr int64_t n = 50'000;  // 200 KB per file
  io::save_safetensors<float>(path, {{"w", tg::Tensor<float>::full({n}, 0.0f)}});
  pid_t writers[2];
  for (int w = 0; w < 2; ++w) {
    writers[w] = ::fork();
    ASSERT_GE(writers[w], 0);
    if (writers[w] == 0) {
      int failed = 0;
      for (int i = 0; i < saves; ++i) {
        try {  // every element holds the same value: a mix of two saves would show
          io::save_safetensors<float>(
              path, {{"w", tg::Tensor<float>::full({n}, float(1000 * (w + 1) + i))}});
        } catch (...) {
          ++failed;
        }
      }
      std::_Exit(failed);
    }
  }
  int loads = 0, bad = 0, running = 2;
  std::string first_error;
  while (running > 0) {
    try {
      const auto f = io::load_safetensors(path);
      const auto& t = std::get<tg::Tensor<float>>(*f.find("w"));
      bool same = t.numel() == n;
      for (int64_t i = 1; same && i < n; ++i) same = t[i] == t[0];
      if (!same) ++bad;
    } catch (const tg::Error& e) {
      if (first_error.empty()) first_error = e.what();
      ++bad;
    }
    ++loads;
    for (pid_t& p : writers) {
      int status = 0;
      if (p > 0 && ::waitpid(p, &status, WNOHANG) == p) {
        EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0)
            << "a writer's saves threw " << WEXITSTATUS(status) << " times";
        p = 0;
        --running;
      }
    }
  }
  EXPECT_EQ(bad, 0) << "of " << loads << " loads; first error: " << first_error;
  EXPECT_GT(loads, 10);
  const float last = std::get<tg::Tensor<float>>(*io::load_safetensors(path).find("w"))[0];
  EXPECT_TRUE(last == 1000 + saves - 1 || last == 2000 + saves - 1) << last;
  EXPECT_EQ(temp_files_of(path), std::vector<std::string>{});
}

// A writer killed with SIGKILL in the middle of its saves (no handler, no destructor runs) leaves
// the file as one complete save, never a truncated or mixed one; the temporary file it was writing
// stays apart and does not disturb the next save.
TEST(Safetensors, AWriterKilledMidSaveLeavesACompleteFile) {
  const std::string path = st_tmp("killed.safetensors");
  constexpr int64_t n = int64_t{1} << 21;  // 8 MB a save: writing and syncing take milliseconds
  io::save_safetensors<float>(path, {{"w", tg::Tensor<float>::full({n}, -1.0f)}});
  for (const auto& t : temp_files_of(path)) std::remove(t.c_str());
  constexpr int rounds = 8;
  for (int round = 0; round < rounds; ++round) {
    const pid_t writer = ::fork();
    ASSERT_GE(writer, 0);
    if (writer == 0)  // saves until killed
      for (int i = 0;; ++i)
        io::save_safetensors<float>(path,
                                    {{"w", tg::Tensor<float>::full({n}, float(1000 * round + i))}});
    std::this_thread::sleep_for(std::chrono::microseconds(1500 * (round + 1)));
    ::kill(writer, SIGKILL);
    int status = 0;
    ASSERT_EQ(::waitpid(writer, &status, 0), writer);
    EXPECT_TRUE(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL);
    const auto f = io::load_safetensors(path);
    const auto& t = std::get<tg::Tensor<float>>(*f.find("w"));
    ASSERT_EQ(t.numel(), n) << "round " << round;
    for (int64_t i = 1; i < n; ++i) ASSERT_EQ(t[i], t[0]) << "round " << round << ", element " << i;
  }
  // Nearly every kill lands inside a save (the writer is always saving): its temporary remains.
  const auto left = temp_files_of(path);
  EXPECT_GE(left.size(), 1u);
  EXPECT_LE(left.size(), size_t{rounds});
  io::save_safetensors<float>(path, {{"w", tg::Tensor<float>::full({n}, 7.0f)}});
  EXPECT_EQ(std::get<tg::Tensor<float>>(*io::load_safetensors(path).find("w"))[n - 1], 7.0f);
  for (const auto& t : left) std::remove(t.c_str());
  std::remove(path.c_str());
}

// ---- safetensors: every validation of the reader ----

const std::string kOk = R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})";
const std::vector<uint8_t> k8 = {0, 0, 128, 63, 0, 0, 0, 64};

TEST(Safetensors, ReaderAcceptsUnpaddedAndWhitespaceHeaders) {
  EXPECT_EQ(st_error(st_file(kOk, k8)), "");
  EXPECT_EQ(st_error(st_file(kOk + "\n\t  ", k8)), "");
  // As the reference implementation, the header must start with '{' itself.
  EXPECT_ST_ERROR(st_file(" " + kOk, k8), "the header must start with '{'");
  const auto f = io::parse_safetensors(st_file(kOk, k8), "m.st");
  EXPECT_EQ(std::get<tg::Tensor<float>>(f.tensors[0].second)[1], 2.0f);
}

TEST(Safetensors, RejectsBadLengths) {
  EXPECT_ST_ERROR(std::vector<uint8_t>(5, 0), "file has 5 bytes, too short for the 8-byte header");
  auto b = st_file(kOk, k8);
  b[0] = 200;  // header length 200 > what follows
  EXPECT_ST_ERROR(b, "header length 200 at byte 0 runs past the end of the file (" +
                         std::to_string(kOk.size() + 8) + " bytes follow it)");
  b[0] = 0, b[4] = 1;  // 2^32
  EXPECT_ST_ERROR(b, "header length 4294967296 at byte 0 is above the limit");
  EXPECT_ST_ERROR(st_file("", {}), "JSON syntax error at byte 8: the header must start with '{'");
  EXPECT_ST_ERROR(st_file("[]", {}), "JSON syntax error at byte 8: the header must start with '{'");
}

TEST(Safetensors, RejectsJsonSyntaxWithByteOffset) {
  // The missing ':' is at header position 5, file byte 13.
  EXPECT_ST_ERROR(st_file(R"({"a" {}})", {}),
                  "JSON syntax error at byte 13: expected ':' after an object key, found '{'");
  EXPECT_ST_ERROR(st_file(kOk.substr(0, kOk.size() - 1), k8), "JSON syntax error at byte");
  EXPECT_ST_ERROR(st_file(kOk + "x", k8), "JSON syntax error at byte " +
                                              std::to_string(8 + kOk.size()) +
                                              ": unexpected 'x' after the JSON value");
  EXPECT_ST_ERROR(st_file(kOk + std::string(1, '\0'), k8), "unexpected byte 0x00");
}

TEST(Safetensors, RejectsBadEntries) {
  auto entry = [](const std::string& body) { return st_file("{\"a\":" + body + "}", k8); };
  EXPECT_ST_ERROR(entry("3"), "tensor \"a\": entry at byte 13 is a number");
  EXPECT_ST_ERROR(entry(R"({"dtype":"F16","shape":[4],"data_offsets":[0,8]})"),
                  "tensor \"a\": dtype \"F16\" is not supported (tapegrad reads F32, F64 and I64)");
  EXPECT_ST_ERROR(entry(R"({"dtype":32,"shape":[2],"data_offsets":[0,8]})"),
                  "tensor \"a\": dtype at byte 22 is not a string");
  EXPECT_ST_ERROR(entry(R"({"dtype":"F32","shape":[2],"data_offsets":[0,8],"x":1})"),
                  "tensor \"a\": unknown field \"x\"");
  EXPECT_ST_ERROR(entry(R"({"dtype":"F32","data_offsets":[0,8]})"),
                  "tensor \"a\": missing field \"shape\"");
  EXPECT_ST_ERROR(entry(R"({"dtype":"F32","shape":2,"data_offsets":[0,8]})"),
                  "tensor \"a\": shape at byte");
  EXPECT_ST_ERROR(entry(R"({"dtype":"F32","shape":[-2],"data_offsets":[0,8]})"),
                  "tensor \"a\": shape entry at byte 37 is not a non-negative integer");
  EXPECT_ST_ERROR(entry(R"({"dtype":"F32","shape":[2.0],"data_offsets":[0,8]})"),
                  "is not a non-negative integer");
  EXPECT_ST_ERROR(entry(R"({"dtype":"F32","shape":[1,1,1,1,1,1,2],"data_offsets":[0,8]})"),
                  "tensor \"a\": rank above tapegrad's maximum of 6 (dimension 7 at byte 49)");
  EXPECT_ST_ERROR(entry(R"({"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,8]})"),
                  "tensor \"a\": shape is too large");
  EXPECT_ST_ERROR(entry(R"({"dtype":"F32","shape":[2],"data_offsets":[0]})"),
                  "must be two non-negative integers");
  EXPECT_ST_ERROR(entry(R"({"dtype":"F32","shape":[2],"data_offsets":[8,0]})"),
                  "tensor \"a\": data_offsets [8,0]: begin after end");
  EXPECT_ST_ERROR(entry(R"({"dtype":"F32","shape":[4],"data_offsets":[0,16]})"),
                  "tensor \"a\": data_offsets [0,16] run past the data area (8 bytes)");
  EXPECT_ST_ERROR(entry(R"({"dtype":"F32","shape":[3],"data_offsets":[0,8]})"),
                  "tensor \"a\": shape [3] of F32 needs 12 bytes, data_offsets [0,8] span 8");
  EXPECT_ST_ERROR(entry(R"({"dtype":"F64","shape":[1000],"data_offsets":[0,8]})"),
                  "shape [1000] of F64 needs 8000 bytes, data_offsets [0,8] span 8");
}

TEST(Safetensors, RejectsGapsOverlapsDuplicatesAndBadMetadata) {
  const std::string a = R"("a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]})";
  EXPECT_ST_ERROR(
      st_file("{" + a + R"(,"b":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})", k8),
      "tensor \"b\": data_offsets [0,4] overlap tensor \"a\" [0,4]");
  EXPECT_ST_ERROR(
      st_file("{" + a + R"(,"b":{"dtype":"F32","shape":[0],"data_offsets":[6,6]}})", k8),
      "tensor \"b\": data_offsets [6,6] leave a gap after tensor \"a\" [0,4]");
  EXPECT_ST_ERROR(st_file(R"({"b":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})", k8),
                  "the data area starts with 4 bytes that no tensor uses");
  EXPECT_ST_ERROR(st_file("{" + a + "}", k8),
                  "the tensors cover 4 of the 8 data bytes: the file has 4 bytes no tensor uses");
  EXPECT_ST_ERROR(st_file("{" + a + "," + a + "}", k8), "duplicate key \"a\"");
  EXPECT_ST_ERROR(st_file(R"({"__metadata__":{"k":1},)" + kOk.substr(1), k8),
                  "metadata \"k\" at byte 29 is a number, expected a string");
  EXPECT_ST_ERROR(st_file(R"({"__metadata__":[],)" + kOk.substr(1), k8),
                  "\"__metadata__\" at byte 24 is an array");
}

TEST(Safetensors, Int64TensorsRoundTripExactly) {
  const std::string path = st_tmp("int64.safetensors");
  const int64_t big = (int64_t{1} << 53) + 1;  // not representable in a double
  auto steps = tg::Tensor<int64_t>::from({big, -3, 0});
  io::NamedTensors all = {{"f", tg::Tensor<float>::from({1.5f})}, {"steps", steps}};
  io::save_safetensors(path, all);
  const auto bytes = st_read(path);
  const std::string text(bytes.begin() + 8, bytes.end());
  EXPECT_NE(text.find(R"("steps":{"dtype":"I64","shape":[3],"data_offsets":[0,24]})"),
            std::string::npos)
      << text;
  const auto file = io::load_safetensors(path);
  const auto& back = std::get<tg::Tensor<int64_t>>(*file.find("steps"));
  EXPECT_EQ(back[0], big);
  EXPECT_EQ(back[1], -3);
  EXPECT_EQ(io::dtype_name(*file.find("steps")), std::string("I64"));
}

// ---- hostile input: bounded memory and time, devices and pipes ----

// Peak bytes the parse of bytes allocates, and its error ("" if it parsed).
std::pair<long long, std::string> parse_cost(const std::vector<uint8_t>& bytes) {
  const long long before = tapegrad::testing::heap_bytes();
  tapegrad::testing::reset_heap_peak();
  std::string error;
  { error = st_error(bytes); }
  return {tapegrad::testing::heap_peak() - before, error};
}

TEST(SafetensorsHostile, HugeShapeArrayIsRejectedAtItsSeventhItem) {
  // The probe's file: one shape array of millions of items, under the 100 MB header limit.
  // (20 MB here; the tree-building reader took about 68 bytes of memory per header byte.)
  std::string h = R"({"a":{"dtype":"F32","data_offsets":[0,4],"shape":[1)";
  h.reserve(20'000'000);
  while (h.size() < 20'000'000) h += ",1";
  h += "]}}";
  const auto bytes = st_file(h, {0, 0, 0, 0});
  const auto start = std::chrono::steady_clock::now();
  const auto [peak, error] = parse_cost(bytes);
  const double ms =
      std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
  EXPECT_NE(error.find("tensor \"a\": rank above tapegrad's maximum of 6 (dimension 7 at byte"),
            std::string::npos)
      << error;
  EXPECT_LT(peak, 64 * 1024) << "bytes allocated to reject it";
  EXPECT_LT(ms, 1000.0);  // it reads 7 items, not 10 million (generous for sanitizer builds)
}

TEST(SafetensorsHostile, MemoryStaysWithinEightTimesTheHeader) {
  // Valid and invalid headers made of the smallest entries each kind allows.
  auto many = [](const std::string& first, const std::string& item, size_t count,
                 const std::string& last) {
    std::string h = first;
    for (size_t i = 0; i < count; ++i) h += (i ? "," : "") + item + std::to_string(i) + last;
    return h;
  };
  struct Case {
    const char* what;
    std::string header;
    bool valid;
    size_t data_bytes = 0;
  };
  const std::vector<Case> cases = {
      {"200k empty tensors",
       many("{", "\"", 200'000, "\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[0,0]}") +
           "}",
       true},
      {"4096 tiny metadata entries", "{\"__metadata__\":" + many("{", "\"", 4096, "\":\"\"") + "}}",
       true},
      {"100k metadata entries", "{\"__metadata__\":" + many("{", "\"", 100'000, "\":\"\"") + "}}",
       false},
      {"a 10 MB name",
       "{\"" + std::string(10'000'000, 'n') +
           R"(":{"dtype":"F32","shape":[0],"data_offsets":[0,0]}})",
       true},
      {"overlapping spans",
       many("{", "\"", 100'000, "\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}") +
           "}",
       false, 4},
      {"an offsets array that never closes",
       R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0)" + std::string(10'000'000, ' ') + "}",
       false, 4},
  };
  for (const auto& c : cases) {
    const auto bytes = st_file(c.header, std::vector<uint8_t>(c.data_bytes, 0));
    const auto [peak, error] = parse_cost(bytes);
    EXPECT_EQ(error.empty(), c.valid) << c.what << ": " << error;
    // The constant: 4096 metadata entries of a few bytes each cost ~64 bytes apiece.
    EXPECT_LE(peak, 8 * static_cast<long long>(c.header.size()) + 1024 * 1024)
        << c.what << ": " << peak << " bytes allocated for a header of " << c.header.size();
  }
}

TEST(SafetensorsHostile, DevicesPipesAndDirectoriesAreRefusedAtOnce) {
  for (const char* dev : {"/dev/zero", "/dev/null"}) {
    const std::string msg = error_message<tg::IOError>([&] { io::load_safetensors(dev); });
    EXPECT_EQ(msg, std::string(dev) +
                       ": cannot read a character device: tapegrad reads regular files (their "
                       "size bounds what it reads)");
    EXPECT_NE(error_message<tg::IOError>([&] { io::read_idx(dev); }).find("a character device"),
              std::string::npos);
  }
  const std::string fifo = st_tmp("fifo");
  std::remove(fifo.c_str());
  ASSERT_EQ(::mkfifo(fifo.c_str(), 0600), 0);
  EXPECT_NE(error_message<tg::IOError>([&] { io::load_safetensors(fifo); }).find("a pipe"),
            std::string::npos);  // and no hang waiting for a writer
  std::remove(fifo.c_str());
  EXPECT_NE(
      error_message<tg::IOError>([&] { io::load_safetensors(tmp_path("")); }).find("a directory"),
      std::string::npos);
  EXPECT_NE(error_message<tg::IOError>([&] {
              io::load_safetensors(st_tmp("missing"));
            }).find("cannot open: No such file or directory"),
            std::string::npos);
}

TEST(SafetensorsHostile, FileLoadReadsOnlyWhatTheHeaderPromises) {
  // A header length of 84 MB in a 100-byte file: refused from the file size, nothing read.
  const std::string path = st_tmp("short.safetensors");
  auto b = st_file(kOk, k8);
  b[3] = 5;  // 5 << 24 = 83886080
  write_bytes(path, b);
  const std::string msg = error_message<tg::IOError>([&] { io::load_safetensors(path); });
  EXPECT_NE(msg.find("header length " + std::to_string((uint64_t{5} << 24) + kOk.size()) +
                     " at byte 0 runs past the end of the file"),
            std::string::npos)
      << msg;
  // The file loads without holding it whole: tensors + header, not 2 x the file.
  const std::string big = st_tmp("big.safetensors");
  io::save_safetensors<float>(big, {{"w", tg::Tensor<float>::full({1'000'000}, 2.0f)}});
  const long long before = tapegrad::testing::heap_bytes();
  tapegrad::testing::reset_heap_peak();
  {
    const auto f = io::load_safetensors(big);
    EXPECT_EQ(std::get<tg::Tensor<float>>(*f.find("w"))[999'999], 2.0f);
  }
  EXPECT_LT(tapegrad::testing::heap_peak() - before, 4'000'000 + 64 * 1024);
}

}  // namespace
