#pragma once
/// \file
/// IDX files, the format of MNIST and Fashion-MNIST (http://yann.lecun.com/exdb/mnist/):
///   bytes 0-1  magic, always 0x0000
///   byte  2    data type: 0x08 = unsigned byte (the only type these datasets use)
///   byte  3    number of dimensions n (1..6 here: a tapegrad Shape holds at most 6)
///   then n sizes, each a 32-bit big-endian integer, then the data, row-major.
/// Files may be gzip-compressed (detected by the gzip magic 1f 8b, not by the file name).
///
/// The reader trusts nothing: every header field is checked, the data length must equal the
/// product of the sizes exactly, and every failure is an IOError naming the file, the problem and
/// the byte offset: "train-images-idx3-ubyte.gz: truncated: header says 47040000 data bytes,
/// file has 1000". Offsets in a gzip file count decompressed bytes.

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "tapegrad/error.hpp"
#include "tapegrad/io/file_bytes.hpp"
#include "tapegrad/io/gzip.hpp"
#include "tapegrad/shape.hpp"

namespace tapegrad::io {

/// A parsed IDX file: sizes and bytes.
struct IdxData {
  std::vector<int64_t> dims;  ///< sizes, outermost first: [60000, 28, 28] for MNIST images
  std::vector<uint8_t> data;  ///< row-major, numel() bytes

  /// Number of elements: the product of dims.
  int64_t numel() const {
    int64_t n = 1;
    for (int64_t d : dims) n *= d;
    return n;
  }
  /// dims as a Shape.
  Shape shape() const { return Shape{std::span<const int64_t>(dims)}; }
};

namespace detail {

// The bytes of an IDX file, raw or through gzip, read front to back.
class IdxSource {
 public:
  IdxSource(std::span<const uint8_t> bytes, const std::string& name)
      : raw_(bytes), gzip_(is_gzip(bytes)) {
    if (gzip_) inflater_.emplace(bytes, name);
  }
  size_t read(uint8_t* out, size_t n) {
    if (gzip_) return inflater_->read(out, n);
    const size_t k = std::min(n, raw_.size() - pos_);
    std::copy_n(raw_.data() + pos_, k, out);
    pos_ += k;
    return k;
  }
  // Bytes left, counted by reading them (bounded by the input for raw data and by deflate's
  // maximal ratio, about 1032:1, for gzip).
  uint64_t count_rest() {
    uint8_t scratch[1 << 14];
    uint64_t n = 0;
    for (size_t k; (k = read(scratch, sizeof scratch)) > 0;) n += k;
    return n;
  }
  // An upper bound on the total decompressed size, used to cap allocations.
  uint64_t max_size() const {
    return gzip_ ? uint64_t{raw_.size()} * 1032 + 1024 : uint64_t{raw_.size()};
  }
  bool gzip() const { return gzip_; }

 private:
  std::span<const uint8_t> raw_;
  size_t pos_ = 0;
  bool gzip_;
  std::optional<GzipReader> inflater_;
};

}  // namespace detail

/// Parses an IDX file held in memory; name is the file name used in error messages.
inline IdxData parse_idx(std::span<const uint8_t> bytes, const std::string& name) {
  using tapegrad::detail::fail;
  detail::IdxSource src(bytes, name);
  const char* after = src.gzip() ? " (after decompression)" : "";

  uint8_t head[4 + 4 * Shape::max_rank];
  const size_t got = src.read(head, 4);
  if (got < 4)
    fail<IOError>(name, ": truncated: file has ", got, " bytes", after,
                  ", an IDX header needs at least 4 (magic, type, dimension count)");
  const unsigned magic = (unsigned{head[0]} << 8) | head[1];
  if (magic != 0) {
    char hex[8];
    std::snprintf(hex, sizeof hex, "0x%04x", magic);
    fail<IOError>(name, ": bad magic ", hex, " at byte 0: an IDX file starts with 0x0000");
  }
  if (head[2] != 0x08) {
    char hex[8];
    std::snprintf(hex, sizeof hex, "0x%02x", unsigned{head[2]});
    fail<IOError>(name, ": unsupported data type ", hex,
                  " at byte 2: only 0x08 (unsigned byte) is supported");
  }
  const int ndims = head[3];
  if (ndims < 1 || ndims > Shape::max_rank)
    fail<IOError>(name, ": dimension count ", ndims, " at byte 3: expected 1 to ", Shape::max_rank);

  const size_t header = 4 + 4 * static_cast<size_t>(ndims);
  const size_t got_dims = src.read(head + 4, header - 4);
  if (got_dims < header - 4)
    fail<IOError>(name, ": truncated: the header of ", ndims, " dimensions needs ", header,
                  " bytes, file has ", 4 + got_dims, after);

  IdxData out;
  uint64_t expected = 1;
  bool overflow = false;
  for (int i = 0; i < ndims; ++i) {
    const uint8_t* p = head + 4 + 4 * i;
    const uint64_t d =
        (uint64_t{p[0]} << 24) | (uint64_t{p[1]} << 16) | (uint64_t{p[2]} << 8) | p[3];
    out.dims.push_back(static_cast<int64_t>(d));
    // d < 2^32, so checking against 2^62 / d keeps the product below 2^62.
    if (d != 0 && expected > (uint64_t{1} << 62) / d) overflow = true;
    expected *= d;
  }
  if (overflow) {
    // Written out here: a Shape of these sizes cannot exist (more elements than int64_t counts).
    std::string sizes = "[";
    for (size_t i = 0; i < out.dims.size(); ++i)
      sizes += (i ? "," : "") + std::to_string(out.dims[i]);
    fail<IOError>(name, ": truncated: header sizes ", sizes,
                  "] describe more than 2^62 data bytes, file has ", src.count_rest(), after);
  }

  // Memory follows the data actually there, not the header's claim: the buffer grows by at most
  // doubling as bytes arrive (a gzip stream may decompress to 1032 times its size).
  uint64_t have = 0;
  const uint64_t cap = std::min(expected, src.max_size());
  while (have < cap) {
    const uint64_t want = std::min(cap - have, std::max<uint64_t>(have, uint64_t{1} << 20));
    out.data.resize(static_cast<size_t>(have + want));
    const size_t got = src.read(out.data.data() + have, static_cast<size_t>(want));
    have += got;
    if (got < want) break;
  }
  out.data.resize(static_cast<size_t>(have));
  if (have < expected) {
    const uint64_t total = have + src.count_rest();
    fail<IOError>(name, ": truncated: header says ", expected, " data bytes, file has ", total,
                  " (after the ", header, "-byte header", src.gzip() ? ", decompressed" : "", ")");
  }
  const uint64_t extra = src.count_rest();
  if (extra > 0)
    fail<IOError>(name, ": ", extra, " unexpected bytes after the data at byte ", header + expected,
                  ": header says ", expected, " data bytes, file has ", expected + extra, after);
  return out;
}

/// Reads an IDX file (raw or gzip) from disk.
inline IdxData read_idx(const std::string& path) { return parse_idx(read_file_bytes(path), path); }

}  // namespace tapegrad::io
