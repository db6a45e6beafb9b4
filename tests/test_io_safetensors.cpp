#include <gtest/gtest.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include "tapegrad/io/checkpoint.hpp"
#include "tapegrad/io/json.hpp"
#include "tapegrad/io/safetensors.hpp"
#include "test_util.hpp"

namespace tg = tapegrad;
namespace io = tapegrad::io;
using tapegrad::testing::error_message;
using tapegrad::testing::file_exists;
using tapegrad::testing::tmp_path;
using tapegrad::testing::write_bytes;

namespace {

std::string st_tmp(const std::string& name) { return tmp_path("tg_st_" + name); }

std::vector<uint8_t> st_read(const std::string& path) { return io::read_file_bytes(path); }

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

template <class T>
bool same_bits(const tg::Tensor<T>& a, const tg::Tensor<T>& b) {
  return a.shape() == b.shape() &&
         std::memcmp(a.data(), b.data(), sizeof(T) * static_cast<size_t>(a.numel())) == 0;
}

// ---- JSON ----

TEST(Json, ParsesValuesEscapesAndUnicode) {
  const std::string text =
      R"( {"a": [1, -2.5e3, 0, true, false, null], "s": "q\"\\\/\b\f\n\r\t\u00e9\ud83d\ude00é"} )";
  const io::JsonValue v = io::JsonParser::parse(text, 0, "j");
  ASSERT_TRUE(v.is_object());
  ASSERT_EQ(v.members.size(), 2u);
  const auto& a = v.members[0].value;
  ASSERT_EQ(a.items.size(), 6u);
  uint64_t x = 0;
  EXPECT_TRUE(a.items[0].as_u64(x));
  EXPECT_EQ(x, 1u);
  EXPECT_FALSE(a.items[1].as_u64(x));  // negative with exponent: not an index
  EXPECT_EQ(a.items[1].text, "-2.5e3");
  EXPECT_EQ(a.items[3].kind, io::JsonValue::Kind::Bool);
  EXPECT_TRUE(a.items[3].boolean);
  EXPECT_EQ(a.items[5].kind, io::JsonValue::Kind::Null);
  EXPECT_EQ(v.members[1].value.text,
            "q\"\\/\b\f\n\r\t\xC3\xA9\xF0\x9F\x98\x80\xC3\xA9");  // é, U+1F600, é
  EXPECT_EQ(a.offset, 7u);
  io::JsonValue big;
  big.kind = io::JsonValue::Kind::Number;
  big.text = "18446744073709551616";  // 2^64
  EXPECT_FALSE(big.as_u64(x));
  big.text = "18446744073709551615";
  EXPECT_TRUE(big.as_u64(x));
  EXPECT_EQ(x, UINT64_MAX);
}

TEST(Json, RejectsWhatStrictJsonRejects) {
  auto error = [](const std::string& t) {
    return error_message<tg::IOError>([&] { io::JsonParser::parse(t, 100, "j"); });
  };
  EXPECT_EQ(error(R"({"a":1,})"),
            "j: JSON syntax error at byte 107: expected a string key, found '}'");
  EXPECT_EQ(
      error(R"([1,2)"),
      "j: JSON syntax error at byte 104: expected ']' or ',' in an array, found end of the header");
  EXPECT_EQ(error(R"({"a":1,"a":2})"), "j: JSON syntax error at byte 107: duplicate key \"a\"");
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
  EXPECT_FALSE(file_exists(path + ".tmp"));
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
  EXPECT_FALSE(file_exists(path + ".tmp"));  // cleaned up by the unwinding writer

  // A stale, half-written temporary file from a process that died: ignored by the reader,
  // overwritten by the next save.
  write_bytes(path + ".tmp", {1, 2, 3});
  EXPECT_TRUE(same_bits(std::get<tg::Tensor<float>>(*io::load_safetensors(path).find("w")), v1));
  const auto v2 = tg::Tensor<float>::from({4.0f});
  io::save_safetensors<float>(path, {{"w", v2}});
  EXPECT_TRUE(same_bits(std::get<tg::Tensor<float>>(*io::load_safetensors(path).find("w")), v2));
  EXPECT_FALSE(file_exists(path + ".tmp"));
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
                  "tensor \"a\": dtype \"F16\" is not supported (tapegrad reads F32 and F64)");
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
                  "tensor \"a\": rank 7 is above tapegrad's maximum of 6");
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

// ---- checkpoints ----

// A module with parameters, a buffer and a child, enough to check names, shapes and in-place
// loading without the real layers.
template <class T>
class TinyLinear : public tg::nn::Module<T> {
 public:
  TinyLinear(int64_t in, int64_t out, tg::Generator& g) {
    weight = this->register_parameter("weight", tg::Tensor<T>::randn({out, in}, g));
    bias = this->register_parameter("bias", tg::Tensor<T>::randn({out}, g));
    running_mean = this->register_buffer("running_mean", tg::Tensor<T>::randn({out}, g));
  }
  tg::Var<T> forward(const tg::Var<T>& x) override { return x; }
  std::string name() const override { return "TinyLinear"; }
  tg::Parameter<T> weight, bias;
  tg::Tensor<T> running_mean;
};

template <class T>
class TinyNet : public tg::nn::Module<T> {
 public:
  explicit TinyNet(uint64_t seed, int64_t hidden = 3) {
    tg::Generator g(seed);
    fc1 = this->register_module("fc1", std::make_shared<TinyLinear<T>>(4, hidden, g));
    fc2 = this->register_module("fc2", std::make_shared<TinyLinear<T>>(hidden, 2, g));
    scale = this->register_parameter("scale", tg::Tensor<T>::randn({1}, g));
  }
  tg::Var<T> forward(const tg::Var<T>& x) override { return x; }
  std::string name() const override { return "TinyNet"; }
  std::shared_ptr<TinyLinear<T>> fc1, fc2;
  tg::Parameter<T> scale;
};

// Stands in for an optimizer: a step counter and one moment buffer per parameter.
template <class T>
struct FakeOptimizer {
  std::vector<std::pair<std::string, tg::Tensor<T>>> state;
  bool refuse = false;
  std::vector<std::pair<std::string, tg::Tensor<T>>> state_dict() const { return state; }
  void load_state_dict(const std::vector<std::pair<std::string, tg::Tensor<T>>>& s) {
    if (refuse) throw tg::ValueError("FakeOptimizer: refused");
    state = s;
  }
};

template <class T>
void expect_models_equal(const tg::nn::Module<T>& a, const tg::nn::Module<T>& b) {
  const auto pa = a.named_parameters(), pb = b.named_parameters();
  ASSERT_EQ(pa.size(), pb.size());
  for (size_t i = 0; i < pa.size(); ++i)
    EXPECT_TRUE(same_bits(pa[i].second.value(), pb[i].second.value())) << pa[i].first;
  const auto ba = a.named_buffers(), bb = b.named_buffers();
  ASSERT_EQ(ba.size(), bb.size());
  for (size_t i = 0; i < ba.size(); ++i)
    EXPECT_TRUE(same_bits(ba[i].second, bb[i].second)) << ba[i].first;
}

TEST(Checkpoint, RoundTripModelAndOptimizerInPlace) {
  const std::string path = st_tmp("ckpt.safetensors");
  TinyNet<double> a(1);
  a.fc1->weight.value()[0] = std::numeric_limits<double>::quiet_NaN();
  FakeOptimizer<double> opt_a;
  opt_a.state = {{"step", tg::Tensor<double>::scalar(7)},
                 {"exp_avg.fc1.weight", tg::Tensor<double>::full({3, 4}, 0.25)}};
  io::save_checkpoint(path, a, opt_a, {{"epoch", "3"}});

  // The file holds PyTorch state_dict names.
  const auto file = io::load_safetensors(path);
  std::vector<std::string> names;
  for (const auto& [n, t] : file.tensors) names.push_back(n);
  EXPECT_EQ(names, (std::vector<std::string>{"scale", "fc1.weight", "fc1.bias", "fc2.weight",
                                             "fc2.bias", "fc1.running_mean", "fc2.running_mean",
                                             "optimizer.step", "optimizer.exp_avg.fc1.weight"}));
  EXPECT_EQ(*file.meta("format"), "pt");

  TinyNet<double> b(2);
  const tg::Parameter<double> handle = b.fc1->weight;  // as an optimizer holds it
  const double* storage = handle.value().data();
  FakeOptimizer<double> opt_b;
  const auto meta = io::load_checkpoint(path, b, opt_b);
  expect_models_equal<double>(a, b);
  EXPECT_EQ(handle.value().data(), storage);  // copied in place, not replaced
  EXPECT_TRUE(std::isnan(handle.value()[0]));
  ASSERT_EQ(opt_b.state.size(), 2u);
  EXPECT_EQ(opt_b.state[0].first, "step");
  EXPECT_EQ(opt_b.state[0].second.item(), 7.0);
  EXPECT_EQ(opt_b.state[1].first, "exp_avg.fc1.weight");
  EXPECT_TRUE(same_bits(opt_b.state[1].second, opt_a.state[1].second));
  bool found = false;
  for (const auto& [k, v] : meta) found = found || (k == "epoch" && v == "3");
  EXPECT_TRUE(found);

  // A model-only load of a training checkpoint ignores the optimizer's entries.
  TinyNet<double> c(3);
  io::load_checkpoint(path, c);
  expect_models_equal<double>(a, c);
}

TEST(Checkpoint, FloatModelWithoutOptimizer) {
  const std::string path = st_tmp("ckpt_float.safetensors");
  TinyNet<float> a(5), b(6);
  io::save_checkpoint(path, a);
  io::load_checkpoint(path, b);
  expect_models_equal<float>(a, b);
}

std::string load_error(const std::string& path, tg::nn::Module<float>& m) {
  return error_message<tg::IOError>([&] { io::load_checkpoint(path, m); });
}

TEST(Checkpoint, MismatchesAreListedAndNothingIsChanged) {
  const std::string path = st_tmp("ckpt_mismatch.safetensors");
  TinyNet<float> a(1);
  io::save_checkpoint(path, a);

  // Different hidden size: shapes differ; the model must be left exactly as it was.
  TinyNet<float> wide(2, 5);
  TinyNet<float> wide_copy(2, 5);
  const std::string msg = load_error(path, wide);
  EXPECT_NE(msg.find(path + ": checkpoint does not match the model: \"fc1.weight\" has shape "
                            "[3,4], the model's is [5,4]"),
            std::string::npos)
      << msg;
  EXPECT_NE(msg.find("\"fc2.weight\" has shape [2,3], the model's is [2,5]"), std::string::npos)
      << msg;
  expect_models_equal<float>(wide, wide_copy);

  // Missing and unexpected names.
  io::save_safetensors<float>(path, {{"scale", tg::Tensor<float>::zeros({1})},
                                     {"fc3.weight", tg::Tensor<float>::zeros({1})}});
  const std::string m2 = load_error(path, wide);
  EXPECT_NE(m2.find("missing fc1.weight, fc1.bias, fc2.weight, fc2.bias, fc1.running_mean, "
                    "fc2.running_mean; unexpected fc3.weight"),
            std::string::npos)
      << m2;
  expect_models_equal<float>(wide, wide_copy);

  // Wrong dtype: a double checkpoint into a float model.
  TinyNet<double> d(1);
  io::save_checkpoint(path, d);
  const std::string m3 = load_error(path, wide);
  EXPECT_NE(m3.find("\"scale\" is F64, the model's is F32"), std::string::npos) << m3;
}

TEST(Checkpoint, OptimizerRefusalLeavesModelUntouched) {
  const std::string path = st_tmp("ckpt_refuse.safetensors");
  TinyNet<double> a(1), b(2), b_copy(2);
  FakeOptimizer<double> opt;
  opt.state = {{"step", tg::Tensor<double>::scalar(1)}};
  io::save_checkpoint(path, a, opt);
  FakeOptimizer<double> refusing;
  refusing.refuse = true;
  EXPECT_THROW(io::load_checkpoint(path, b, refusing), tg::ValueError);
  expect_models_equal<double>(b, b_copy);

  // An optimizer entry of the wrong dtype is reported like a model entry.
  io::NamedTensors entries;
  for (const auto& [n, p] : a.named_parameters()) entries.emplace_back(n, p.value());
  for (const auto& [n, t] : a.named_buffers()) entries.emplace_back(n, t);
  entries.emplace_back("optimizer.step", tg::Tensor<float>::scalar(1));
  io::save_safetensors(path, entries);
  FakeOptimizer<double> fresh;
  try {
    io::load_checkpoint(path, b, fresh);
    FAIL() << "F32 optimizer state accepted for a double optimizer";
  } catch (const tg::IOError& e) {
    EXPECT_NE(std::string(e.what()).find("\"optimizer.step\" is F32, the optimizer's is F64"),
              std::string::npos)
        << e.what();
  }
}

TEST(Checkpoint, CorruptFileIsAnIOErrorNamingIt) {
  const std::string path = st_tmp("ckpt_corrupt.safetensors");
  TinyNet<float> a(1);
  io::save_checkpoint(path, a);
  auto bytes = st_read(path);
  bytes.erase(bytes.end() - 4, bytes.end());  // lose the end of the last tensor
  write_bytes(path, bytes);
  const std::string msg = load_error(path, a);
  EXPECT_NE(msg.find(path + ": tensor \""), std::string::npos) << msg;
  EXPECT_NE(msg.find("run past the data area"), std::string::npos) << msg;
}

}  // namespace
