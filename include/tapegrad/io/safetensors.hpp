#pragma once
/// \file
/// The safetensors format (https://github.com/huggingface/safetensors), so Python's
/// `safetensors.torch.load_file` reads what tapegrad writes and the other way round:
///   8 bytes      N, the header length, unsigned 64-bit little-endian
///   N bytes      a JSON object: {"__metadata__": {"key": "value", ...},          (optional)
///                                "<name>": {"dtype": "F32", "shape": [2, 3],
///                                           "data_offsets": [begin, end]}, ...}
///                padded with spaces to a multiple of 8, as the reference writer does
///   the rest     the tensors' bytes, little-endian, row-major; offsets count from here.
/// tapegrad reads and writes F32, F64 and I64. Writing goes through AtomicFile (a unique
/// temporary file, fsync, rename), so an interrupted save leaves the previous file intact.
///
/// The reader validates everything before it trusts anything (the header length against the file
/// size, JSON syntax, each entry's dtype, shape and offsets, shape product x dtype size against the
/// offsets' span, offsets inside the data area, covering it contiguously without overlap, no
/// duplicate names), and reports each failure as an IOError naming the file, the problem and,
/// where it has one, the byte. It reads the header as it goes (json.hpp's pull reader) and keeps
/// only the entries, so a hostile header costs memory of the order of its size (at most 8 times
/// it plus 1 MB: tensors are allocated only while their spans fit in the data area, and at most
/// 4096 metadata entries are read) and is rejected where its problem is (a shape's 7th
/// dimension, an entry of the wrong kind), not after it has all been parsed.

#include <algorithm>
#include <bit>
#include <cstdint>
#include <cstring>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <variant>
#include <vector>

#include "tapegrad/any_tensor.hpp"
#include "tapegrad/error.hpp"
#include "tapegrad/io/atomic_file.hpp"
#include "tapegrad/io/file_bytes.hpp"
#include "tapegrad/io/json.hpp"
#include "tapegrad/tensor.hpp"

namespace tapegrad::io {

static_assert(std::endian::native == std::endian::little,
              "tapegrad's safetensors code copies raw bytes: it needs a little-endian host");

using tapegrad::AnyTensor;
using tapegrad::dtype_name;
using tapegrad::NamedTensors;
using tapegrad::shape_of;
/// String-to-string metadata ("__metadata__"), in order.
using Metadata = std::vector<std::pair<std::string, std::string>>;

/// A parsed safetensors file: its tensors and metadata.
struct SafetensorsFile {
  NamedTensors tensors;  ///< in the order of the header
  /// The "__metadata__" entries.
  Metadata metadata;

  /// The tensor of that name, or nullptr.
  const AnyTensor* find(std::string_view name) const {
    for (const auto& [n, t] : tensors)
      if (n == name) return &t;
    return nullptr;
  }
  /// The metadata value of that key, or nullptr.
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

// Where each tensor's bytes go: 8-byte (F64, I64) tensors first, so every tensor is aligned to its
// element size, as the reference writer arranges it; otherwise the order given.
inline std::vector<Placement> place(const NamedTensors& tensors) {
  std::vector<size_t> order(tensors.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = i;
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) {
    return element_size(tensors[a].second) > element_size(tensors[b].second);
  });
  std::vector<Placement> out;
  uint64_t offset = 0;
  for (size_t i : order) {
    const auto& t = tensors[i].second;
    const uint64_t bytes = static_cast<uint64_t>(shape_of(t).numel()) * element_size(t);
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

// ---- reading ----

constexpr size_t safetensors_max_metadata = 4096;  // entries of "__metadata__"

// Checks the 8-byte header length (first8 holds the file's first bytes when file_size >= 8)
// against the limit and the file size; returns it.
inline uint64_t header_length(std::span<const uint8_t> first8, uint64_t file_size,
                              const std::string& name) {
  using tapegrad::detail::fail;
  if (file_size < 8)
    fail<IOError>(name, ": file has ", file_size, " bytes, too short for the 8-byte header length");
  uint64_t n = 0;
  for (size_t i = 0; i < 8; ++i) n |= uint64_t{first8[i]} << (8 * i);
  if (n > safetensors_max_header)
    fail<IOError>(name, ": header length ", n, " at byte 0 is above the limit of ",
                  safetensors_max_header, " bytes");
  if (n > file_size - 8)
    fail<IOError>(name, ": header length ", n, " at byte 0 runs past the end of the file (",
                  file_size - 8, " bytes follow it)");
  return n;
}

// Where a tensor's bytes are in the data area, and where its name is in the file.
struct TensorSpan {
  uint64_t begin, end;
  size_t key_offset;
};

[[noreturn]] inline void fail_duplicate(const std::string& name, size_t offset,
                                        std::string_view key) {
  tapegrad::detail::fail<IOError>(name, ": JSON syntax error at byte ", offset,
                                  ": duplicate key \"", key, "\"");
}

// Reads one tensor entry {"dtype": ..., "shape": [...], "data_offsets": [b, e]} into out
// (a tensor of that dtype and shape, its storage allocated, not filled); `spanned` counts the
// bytes of all entries so far, which may never exceed the data area.
inline TensorSpan read_entry(JsonReader& r, const std::string& key, uint64_t data_size,
                             uint64_t& spanned, const std::string& name, NamedTensors& out) {
  using K = JsonReader::Kind;
  auto bad = [&](auto&&... parts) {
    tapegrad::detail::fail<IOError>(name, ": tensor \"", key,
                                    "\": ", std::forward<decltype(parts)>(parts)...);
  };
  const size_t key_offset = r.key_offset();
  if (r.peek() != K::Object)
    bad("entry at byte ", r.offset(), " is ", JsonReader::kind_name(r.peek()));
  std::string dtype;
  Shape shape;
  uint64_t numel = 1, off[2] = {0, 0};
  bool has_dtype = false, has_shape = false, has_offsets = false;
  auto once = [&](bool& seen, std::string_view field) {
    if (seen) fail_duplicate(name, r.key_offset(), field);
    seen = true;
  };
  r.begin_object();
  for (std::string field; r.next_member(field);) {
    if (field == "dtype") {
      once(has_dtype, field);
      if (r.peek() != K::String) bad("dtype at byte ", r.offset(), " is not a string");
      dtype = r.string();
      if (dtype != "F32" && dtype != "F64" && dtype != "I64")
        bad("dtype \"", dtype, "\" is not supported (tapegrad reads F32, F64 and I64)");
    } else if (field == "shape") {
      once(has_shape, field);
      if (r.peek() != K::Array) bad("shape at byte ", r.offset(), " is not an array");
      r.begin_array();
      while (r.next_item()) {
        uint64_t x = 0;
        const bool number = r.peek() == K::Number;
        const size_t at = r.offset();
        if (!number || !JsonReader::to_u64(r.number(), x))
          bad("shape entry at byte ", at, " is not a non-negative integer");
        if (shape.rank() == Shape::max_rank)
          bad("rank above tapegrad's maximum of ", Shape::max_rank, " (dimension ",
              Shape::max_rank + 1, " at byte ", at, ")");
        // Every prefix product must fit in int64: Shape::numel() multiplies left to right.
        if (x > uint64_t(INT64_MAX) || (x != 0 && numel > uint64_t(INT64_MAX) / x))
          bad("shape is too large (more than 2^63 elements)");
        numel *= x;
        shape.push_back(static_cast<int64_t>(x));
      }
    } else if (field == "data_offsets") {
      once(has_offsets, field);
      const size_t at = r.offset();
      auto wrong = [&] {
        bad("data_offsets at byte ", at, " must be two non-negative integers [begin, end]");
      };
      if (r.peek() != K::Array) wrong();
      r.begin_array();
      int count = 0;
      for (; r.next_item(); ++count)
        if (count == 2 || r.peek() != K::Number || !JsonReader::to_u64(r.number(), off[count]))
          wrong();
      if (count != 2) wrong();
    } else {
      bad("unknown field \"", field, "\" at byte ", r.key_offset());
    }
  }
  if (!has_dtype || !has_shape || !has_offsets)
    bad("missing field \"", !has_dtype ? "dtype" : !has_shape ? "shape" : "data_offsets", "\"");

  const uint64_t begin = off[0], end = off[1];
  if (begin > end) bad("data_offsets [", begin, ",", end, "]: begin after end");
  if (end > data_size)
    bad("data_offsets [", begin, ",", end, "] run past the data area (", data_size, " bytes)");
  const uint64_t elem = dtype == "F32" ? 4 : 8;
  const bool huge = numel > UINT64_MAX / elem;
  if (huge || numel * elem != end - begin)
    bad("shape ", shape, " of ", dtype, " needs ",
        huge ? std::string("more than 2^64") : std::to_string(numel * elem), " bytes, ",
        "data_offsets [", begin, ",", end, "] span ", end - begin);
  // The tensors tile the data area, so their spans add up to at most its size: checked here,
  // before the storage is allocated, so overlapping entries cannot allocate beyond the file.
  spanned += end - begin;
  if (spanned > data_size)
    bad("data_offsets [", begin, ",", end, "]: the tensors so far span ", spanned,
        " bytes, more than the data area's ", data_size, " (they overlap)");
  if (dtype == "F32")
    out.emplace_back(key, Tensor<float>(shape));
  else if (dtype == "F64")
    out.emplace_back(key, Tensor<double>(shape));
  else
    out.emplace_back(key, Tensor<int64_t>(shape));
  return {begin, end, key_offset};
}

// Reads "__metadata__": an object of strings.
inline void read_metadata(JsonReader& r, const std::string& name, Metadata& out,
                          std::vector<size_t>& key_offsets) {
  using tapegrad::detail::fail;
  if (r.peek() != JsonReader::Kind::Object)
    fail<IOError>(name, ": \"__metadata__\" at byte ", r.offset(), " is ",
                  JsonReader::kind_name(r.peek()), ", expected an object of strings");
  r.begin_object();
  for (std::string key; r.next_member(key);) {
    if (r.peek() != JsonReader::Kind::String)
      fail<IOError>(name, ": metadata \"", key, "\" at byte ", r.offset(), " is ",
                    JsonReader::kind_name(r.peek()), ", expected a string");
    if (out.size() == safetensors_max_metadata)
      fail<IOError>(name, ": more than ", safetensors_max_metadata,
                    " metadata entries (the next at byte ", r.key_offset(), ")");
    key_offsets.push_back(r.key_offset());
    out.emplace_back(std::move(key), r.string());
  }
}

// The first repeated name of a list, in file order of the repeat: throws naming it.
template <class Name>
void check_unique(size_t count, Name name_of, const std::vector<size_t>& offsets,
                  const std::string& file) {
  std::vector<size_t> order(count);
  for (size_t i = 0; i < count; ++i) order[i] = i;
  std::sort(order.begin(), order.end(), [&](size_t a, size_t b) {
    const std::string_view x = name_of(a), y = name_of(b);
    return x != y ? x < y : a < b;
  });
  size_t worst = count;  // the repeat that comes first in the file
  for (size_t k = 1; k < count; ++k)
    if (name_of(order[k]) == name_of(order[k - 1]) && (worst == count || order[k] < worst))
      worst = order[k];
  if (worst != count) fail_duplicate(file, offsets[worst], name_of(worst));
}

// The tensors must tile the data area exactly: sorted by offset, each starts where the
// previous one ended, the first at 0 and the last at the end.
inline void check_tiling(const NamedTensors& tensors, const std::vector<TensorSpan>& spans,
                         uint64_t data_size, const std::string& name) {
  using tapegrad::detail::fail;
  std::vector<size_t> order(spans.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = i;
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) {
    return spans[a].begin != spans[b].begin ? spans[a].begin < spans[b].begin
                                            : spans[a].end < spans[b].end;
  });
  uint64_t at = 0;
  const size_t none = spans.size();
  size_t prev = none;
  for (size_t i : order) {
    const TensorSpan& e = spans[i];
    if (e.begin != at) {
      if (prev != none)
        fail<IOError>(name, ": tensor \"", tensors[i].first, "\": data_offsets [", e.begin, ",",
                      e.end, "] ", e.begin < at ? "overlap" : "leave a gap after", " tensor \"",
                      tensors[prev].first, "\" [", spans[prev].begin, ",", spans[prev].end, "]");
      fail<IOError>(name, ": tensor \"", tensors[i].first, "\": data_offsets [", e.begin, ",",
                    e.end, "]: the data area starts with ", e.begin, " bytes that no tensor uses");
    }
    at = e.end;
    prev = i;
  }
  if (at != data_size)
    fail<IOError>(name, ": the tensors cover ", at, " of the ", data_size,
                  " data bytes: the file has ", data_size - at, " bytes no tensor uses");
}

// Reads and checks the header text (which starts at file byte 8) for a data area of
// data_size bytes: fills out with the metadata and with tensors of the right dtypes and shapes
// (not their values); returns where each tensor's bytes are. A text still arriving comes with
// its source (JsonReader::set_source): then its first byte must be there already.
inline std::vector<TensorSpan> read_header(std::string_view text, uint64_t data_size,
                                           const std::string& name, SafetensorsFile& out,
                                           JsonReader::Fill fill = nullptr, void* source = nullptr,
                                           size_t available = 0) {
  if (text.empty() || text[0] != '{')
    tapegrad::detail::fail<IOError>(
        name, ": JSON syntax error at byte 8: the header must start with '{'");
  JsonReader r(text, 8, name);
  if (fill) r.set_source(fill, source, available);
  std::vector<TensorSpan> spans;
  std::vector<size_t> meta_offsets;
  uint64_t spanned = 0;
  bool has_metadata = false;
  r.begin_object();
  for (std::string key; r.next_member(key);) {
    if (key == "__metadata__") {
      if (has_metadata) fail_duplicate(name, r.key_offset(), key);
      has_metadata = true;
      read_metadata(r, name, out.metadata, meta_offsets);
    } else {
      spans.push_back(read_entry(r, key, data_size, spanned, name, out.tensors));
    }
  }
  r.end();

  std::vector<size_t> tensor_offsets(spans.size());
  for (size_t i = 0; i < spans.size(); ++i) tensor_offsets[i] = spans[i].key_offset;
  check_unique(
      spans.size(), [&](size_t i) -> std::string_view { return out.tensors[i].first; },
      tensor_offsets, name);
  check_unique(
      out.metadata.size(), [&](size_t i) -> std::string_view { return out.metadata[i].first; },
      meta_offsets, name);
  check_tiling(out.tensors, spans, data_size, name);
  return spans;
}

}  // namespace detail

/// Writes tensors (of any dtypes, mixed) and optional metadata to path, atomically.
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

/// The same for tensors of one type.
template <class T>
void save_safetensors(const std::string& path,
                      const std::vector<std::pair<std::string, Tensor<T>>>& tensors,
                      const Metadata& metadata = {}) {
  NamedTensors any;
  any.reserve(tensors.size());
  for (const auto& [n, t] : tensors) any.emplace_back(n, t);  // shares storage, no copy
  save_safetensors(path, any, metadata);
}

/// Parses a safetensors file held in memory; name is the file name used in error messages.
inline SafetensorsFile parse_safetensors(std::span<const uint8_t> bytes, const std::string& name) {
  const uint64_t n = detail::header_length(bytes, bytes.size(), name);
  const std::string_view text(reinterpret_cast<const char*>(bytes.data() + 8),
                              static_cast<size_t>(n));
  const uint64_t data_size = bytes.size() - 8 - n;
  SafetensorsFile out;
  const auto spans = detail::read_header(text, data_size, name, out);
  const uint8_t* data = bytes.data() + 8 + n;
  for (size_t i = 0; i < spans.size(); ++i)
    std::visit(
        [&](auto& t) {
          if (spans[i].end > spans[i].begin)
            std::memcpy(t.data(), data + spans[i].begin,
                        static_cast<size_t>(spans[i].end - spans[i].begin));
        },
        out.tensors[i].second);
  return out;
}

/// Reads a safetensors file from disk: the length, then the header, then each tensor's bytes
/// straight into its storage, so memory is the tensors plus a small multiple of the header.
/// Only regular files (a device or a pipe has no size to check the header against).
inline SafetensorsFile load_safetensors(const std::string& path) {
  InputFile f(path);
  uint8_t len[8];
  const uint64_t size = f.size();
  f.read_at(0, len, std::min<uint64_t>(8, size));
  const uint64_t n = detail::header_length(std::span<const uint8_t>(len, 8), size, path);
  // The header is read in 1 MB pieces as the reader gets to them, into a buffer left
  // uninitialised (its untouched pages cost no memory): a hostile 94 MB header whose problem is
  // at its start costs one piece.
  struct Source {
    InputFile& file;
    char* text;
    size_t total, have;
  };
  const std::unique_ptr<char[]> text(new char[static_cast<size_t>(n) + 1]);
  Source src{f, text.get(), static_cast<size_t>(n), 0};
  auto fill = [](void* context, size_t end) -> size_t {
    auto& s = *static_cast<Source*>(context);
    const size_t upto = std::min(s.total, std::max(end, s.have + (size_t{1} << 20)));
    s.file.read_at(8 + s.have, s.text + s.have, upto - s.have);
    return s.have = upto;
  };
  fill(&src, 1);
  SafetensorsFile out;
  const auto spans = detail::read_header(std::string_view(text.get(), src.total), size - 8 - n,
                                         path, out, fill, &src, src.have);
  for (size_t i = 0; i < spans.size(); ++i)
    std::visit(
        [&](auto& t) {
          f.read_at(8 + n + spans[i].begin, t.data(),
                    static_cast<size_t>(spans[i].end - spans[i].begin));
        },
        out.tensors[i].second);
  return out;
}

}  // namespace tapegrad::io
