#pragma once
// The safetensors format (https://github.com/huggingface/safetensors), so Python's
// `safetensors.torch.load_file` reads what tapegrad writes and the other way round:
//   8 bytes      N, the header length, unsigned 64-bit little-endian
//   N bytes      a JSON object: {"__metadata__": {"key": "value", ...},          (optional)
//                                "<name>": {"dtype": "F32", "shape": [2, 3],
//                                           "data_offsets": [begin, end]}, ...}
//                padded with spaces to a multiple of 8, as the reference writer does
//   the rest     the tensors' bytes, little-endian, row-major; offsets count from here.
// tapegrad reads and writes F32 and F64. Writing goes through AtomicFile: "<path>.tmp", fsync,
// rename, so an interrupted save leaves the previous file intact.
//
// The reader validates everything before it trusts anything (the header length against the file
// size, JSON syntax, each entry's dtype, shape and offsets, shape product x dtype size against the
// offsets' span, offsets inside the data area, covering it contiguously without overlap, no
// duplicate names), and reports each failure as an IOError naming the file and the problem, with
// the byte offset for JSON syntax errors.

#include <algorithm>
#include <bit>
#include <cstdint>
#include <cstring>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <variant>
#include <vector>

#include "tapegrad/error.hpp"
#include "tapegrad/io/atomic_file.hpp"
#include "tapegrad/io/file_bytes.hpp"
#include "tapegrad/io/json.hpp"
#include "tapegrad/tensor.hpp"

namespace tapegrad::io {

static_assert(std::endian::native == std::endian::little,
              "tapegrad's safetensors code copies raw bytes: it needs a little-endian host");

// A tensor of either supported dtype, as read from a file.
using AnyTensor = std::variant<Tensor<float>, Tensor<double>>;
using NamedTensors = std::vector<std::pair<std::string, AnyTensor>>;
// String-to-string metadata ("__metadata__"), in order.
using Metadata = std::vector<std::pair<std::string, std::string>>;

inline const char* dtype_name(const AnyTensor& t) {
  return std::holds_alternative<Tensor<float>>(t) ? "F32" : "F64";
}
inline const Shape& shape_of(const AnyTensor& t) {
  return std::visit([](const auto& x) -> const Shape& { return x.shape(); }, t);
}

struct SafetensorsFile {
  NamedTensors tensors;  // in the order of the header
  Metadata metadata;

  // The tensor of that name, or nullptr.
  const AnyTensor* find(std::string_view name) const {
    for (const auto& [n, t] : tensors)
      if (n == name) return &t;
    return nullptr;
  }
  // The metadata value of that key, or nullptr.
  const std::string* meta(std::string_view key) const {
    for (const auto& [k, v] : metadata)
      if (k == key) return &v;
    return nullptr;
  }
};

namespace detail {

constexpr uint64_t safetensors_max_header = 100'000'000;  // the reference implementation's limit

struct Placement {
  size_t index;  // into the tensors list
  uint64_t begin, end;
};

// Where each tensor's bytes go: 8-byte (F64) tensors first, so every tensor is aligned to its
// element size, as the reference writer arranges it; otherwise the order given.
inline std::vector<Placement> place(const NamedTensors& tensors) {
  std::vector<size_t> order(tensors.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = i;
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) {
    return std::holds_alternative<Tensor<double>>(tensors[a].second) &&
           !std::holds_alternative<Tensor<double>>(tensors[b].second);
  });
  std::vector<Placement> out;
  uint64_t offset = 0;
  for (size_t i : order) {
    const auto bytes = std::visit(
        [](const auto& t) {
          return static_cast<uint64_t>(t.numel()) *
                 sizeof(typename std::decay_t<decltype(t)>::Scalar);
        },
        tensors[i].second);
    out.push_back({i, offset, offset + bytes});
    offset += bytes;
  }
  return out;
}

// The JSON header, space-padded to a multiple of 8 bytes; throws ValueError for names that
// cannot be written (empty, duplicated, "__metadata__", not UTF-8).
inline std::string safetensors_header(const NamedTensors& tensors, const Metadata& metadata,
                                      const std::vector<Placement>& placement,
                                      const std::string& path) {
  using tapegrad::detail::fail;
  std::vector<std::string_view> names;
  for (const auto& [n, t] : tensors) {
    if (n.empty()) fail<ValueError>(path, ": a tensor has an empty name");
    if (n == "__metadata__") fail<ValueError>(path, ": \"__metadata__\" is not a tensor name");
    if (!is_valid_utf8(n)) fail<ValueError>(path, ": tensor name is not valid UTF-8");
    names.push_back(n);
  }
  std::sort(names.begin(), names.end());
  for (size_t i = 1; i < names.size(); ++i)
    if (names[i] == names[i - 1]) fail<ValueError>(path, ": two tensors named \"", names[i], "\"");
  std::vector<std::string_view> keys;
  for (const auto& [k, v] : metadata) {
    if (!is_valid_utf8(k) || !is_valid_utf8(v))
      fail<ValueError>(path, ": metadata is not valid UTF-8");
    keys.push_back(k);
  }
  std::sort(keys.begin(), keys.end());
  for (size_t i = 1; i < keys.size(); ++i)
    if (keys[i] == keys[i - 1]) fail<ValueError>(path, ": two metadata keys \"", keys[i], "\"");

  std::vector<const Placement*> where(tensors.size());
  for (const auto& p : placement) where[p.index] = &p;

  std::string h = "{";
  if (!metadata.empty()) {
    h += "\"__metadata__\":{";
    for (size_t i = 0; i < metadata.size(); ++i) {
      if (i) h += ',';
      json_append_string(h, metadata[i].first);
      h += ':';
      json_append_string(h, metadata[i].second);
    }
    h += '}';
  }
  for (size_t i = 0; i < tensors.size(); ++i) {
    if (i || !metadata.empty()) h += ',';
    json_append_string(h, tensors[i].first);
    h += ":{\"dtype\":\"";
    h += dtype_name(tensors[i].second);
    h += "\",\"shape\":[";
    const Shape& s = shape_of(tensors[i].second);
    for (int d = 0; d < s.rank(); ++d) h += (d ? "," : "") + std::to_string(s[d]);
    h += "],\"data_offsets\":[" + std::to_string(where[i]->begin) + "," +
         std::to_string(where[i]->end) + "]}";
  }
  h += '}';
  h.append((8 - h.size() % 8) % 8, ' ');
  return h;
}

}  // namespace detail

// Writes tensors (float and double may be mixed) and optional metadata to path, atomically.
inline void save_safetensors(const std::string& path, const NamedTensors& tensors,
                             const Metadata& metadata = {}) {
  const auto placement = detail::place(tensors);
  const std::string header = detail::safetensors_header(tensors, metadata, placement, path);
  uint8_t len[8];
  const uint64_t n = header.size();
  for (int i = 0; i < 8; ++i) len[i] = static_cast<uint8_t>(n >> (8 * i));

  AtomicFile f(path);
  f.write(len, sizeof len);
  f.write(header);
  for (const auto& p : placement)
    std::visit([&](const auto& t) { f.write(t.data(), static_cast<size_t>(p.end - p.begin)); },
               tensors[p.index].second);
  f.commit();
}

template <class T>
void save_safetensors(const std::string& path,
                      const std::vector<std::pair<std::string, Tensor<T>>>& tensors,
                      const Metadata& metadata = {}) {
  NamedTensors any;
  any.reserve(tensors.size());
  for (const auto& [n, t] : tensors) any.emplace_back(n, t);  // shares storage, no copy
  save_safetensors(path, any, metadata);
}

// Parses a safetensors file held in memory; name is the file name used in error messages.
inline SafetensorsFile parse_safetensors(std::span<const uint8_t> bytes, const std::string& name) {
  using tapegrad::detail::fail;
  if (bytes.size() < 8)
    fail<IOError>(name, ": file has ", bytes.size(),
                  " bytes, too short for the 8-byte header length");
  uint64_t n = 0;
  for (int i = 0; i < 8; ++i) n |= uint64_t{bytes[static_cast<size_t>(i)]} << (8 * i);
  const uint64_t rest = bytes.size() - 8;
  if (n > detail::safetensors_max_header)
    fail<IOError>(name, ": header length ", n, " at byte 0 is above the limit of ",
                  detail::safetensors_max_header, " bytes");
  if (n > rest)
    fail<IOError>(name, ": header length ", n, " at byte 0 runs past the end of the file (", rest,
                  " bytes follow it)");
  const std::string_view text(reinterpret_cast<const char*>(bytes.data() + 8),
                              static_cast<size_t>(n));
  if (text.empty() || text[0] != '{')
    fail<IOError>(name, ": JSON syntax error at byte 8: the header must start with '{'");
  const JsonValue root = JsonParser::parse(text, 8, name);
  const uint64_t data_size = rest - n;
  const uint8_t* data = bytes.data() + 8 + n;

  SafetensorsFile out;
  struct Entry {
    std::string name;
    bool is_f64;
    Shape shape;
    uint64_t begin, end;
  };
  std::vector<Entry> entries;
  for (const JsonMember& member : root.members) {
    const std::string& key = member.key;  // named, not bound: lambdas below capture it
    const JsonValue& v = member.value;
    if (key == "__metadata__") {
      if (!v.is_object())
        fail<IOError>(name, ": \"__metadata__\" at byte ", v.offset, " is ",
                      JsonValue::kind_name(v.kind), ", expected an object of strings");
      for (const auto& [mk, mv] : v.members) {
        if (!mv.is_string())
          fail<IOError>(name, ": metadata \"", mk, "\" at byte ", mv.offset, " is ",
                        JsonValue::kind_name(mv.kind), ", expected a string");
        out.metadata.emplace_back(mk, mv.text);
      }
      continue;
    }
    auto bad = [&](auto&&... parts) {
      fail<IOError>(name, ": tensor \"", key, "\": ", std::forward<decltype(parts)>(parts)...);
    };
    if (!v.is_object()) bad("entry at byte ", v.offset, " is ", JsonValue::kind_name(v.kind));
    const JsonValue *dtype = nullptr, *shape = nullptr, *offsets = nullptr;
    for (const auto& [f, fv] : v.members) {
      if (f == "dtype")
        dtype = &fv;
      else if (f == "shape")
        shape = &fv;
      else if (f == "data_offsets")
        offsets = &fv;
      else
        bad("unknown field \"", f, "\" at byte ", fv.offset);
    }
    if (!dtype || !shape || !offsets)
      bad("missing field \"", !dtype ? "dtype" : !shape ? "shape" : "data_offsets", "\"");

    Entry e{key, false, Shape{}, 0, 0};
    if (!dtype->is_string()) bad("dtype at byte ", dtype->offset, " is not a string");
    if (dtype->text == "F64")
      e.is_f64 = true;
    else if (dtype->text != "F32")
      bad("dtype \"", dtype->text, "\" is not supported (tapegrad reads F32 and F64)");

    if (!shape->is_array()) bad("shape at byte ", shape->offset, " is not an array");
    if (shape->items.size() > static_cast<size_t>(Shape::max_rank))
      bad("rank ", shape->items.size(), " is above tapegrad's maximum of ", Shape::max_rank);
    std::vector<int64_t> dims;
    uint64_t numel = 1;
    for (const auto& d : shape->items) {
      uint64_t x;
      if (!d.as_u64(x)) bad("shape entry at byte ", d.offset, " is not a non-negative integer");
      // Every prefix product must fit in int64: Shape::numel() multiplies left to right.
      if (x > uint64_t(INT64_MAX) || (x != 0 && numel > uint64_t(INT64_MAX) / x))
        bad("shape is too large (more than 2^63 elements)");
      numel *= x;
      dims.push_back(static_cast<int64_t>(x));
    }
    e.shape = Shape{std::span<const int64_t>(dims)};

    if (!offsets->is_array() || offsets->items.size() != 2 || !offsets->items[0].as_u64(e.begin) ||
        !offsets->items[1].as_u64(e.end))
      bad("data_offsets at byte ", offsets->offset,
          " must be two non-negative integers [begin, end]");
    if (e.begin > e.end) bad("data_offsets [", e.begin, ",", e.end, "]: begin after end");
    if (e.end > data_size)
      bad("data_offsets [", e.begin, ",", e.end, "] run past the data area (", data_size,
          " bytes)");
    const uint64_t elem = e.is_f64 ? 8 : 4;
    const bool huge = numel > UINT64_MAX / elem;
    if (huge || numel * elem != e.end - e.begin)
      bad("shape ", e.shape, " of ", dtype->text, " needs ",
          huge ? std::string("more than 2^64") : std::to_string(numel * elem), " bytes, ",
          "data_offsets [", e.begin, ",", e.end, "] span ", e.end - e.begin);
    entries.push_back(std::move(e));
  }

  // The tensors must tile the data area exactly: sorted by offset, each starts where the
  // previous one ended, the first at 0 and the last at the end.
  std::vector<const Entry*> sorted;
  for (const auto& e : entries) sorted.push_back(&e);
  std::stable_sort(sorted.begin(), sorted.end(), [](const Entry* a, const Entry* b) {
    return a->begin != b->begin ? a->begin < b->begin : a->end < b->end;
  });
  uint64_t at = 0;
  const Entry* prev = nullptr;
  for (const Entry* e : sorted) {
    if (e->begin != at) {
      if (prev)
        fail<IOError>(name, ": tensor \"", e->name, "\": data_offsets [", e->begin, ",", e->end,
                      "] ", e->begin < at ? "overlap" : "leave a gap after", " tensor \"",
                      prev->name, "\" [", prev->begin, ",", prev->end, "]");
      fail<IOError>(name, ": tensor \"", e->name, "\": data_offsets [", e->begin, ",", e->end,
                    "]: the data area starts with ", e->begin, " bytes that no tensor uses");
    }
    at = e->end;
    prev = e;
  }
  if (at != data_size)
    fail<IOError>(name, ": the tensors cover ", at, " of the ", data_size,
                  " data bytes: the file has ", data_size - at, " bytes no tensor uses");

  for (const auto& e : entries) {
    const uint8_t* src = data + e.begin;
    if (e.is_f64) {
      Tensor<double> t(e.shape);
      if (e.end > e.begin) std::memcpy(t.data(), src, static_cast<size_t>(e.end - e.begin));
      out.tensors.emplace_back(e.name, std::move(t));
    } else {
      Tensor<float> t(e.shape);
      if (e.end > e.begin) std::memcpy(t.data(), src, static_cast<size_t>(e.end - e.begin));
      out.tensors.emplace_back(e.name, std::move(t));
    }
  }
  return out;
}

// Reads a safetensors file from disk.
inline SafetensorsFile load_safetensors(const std::string& path) {
  return parse_safetensors(read_file_bytes(path), path);
}

}  // namespace tapegrad::io
