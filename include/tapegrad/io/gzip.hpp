#pragma once
/// \file
/// GzipReader: decompresses a gzip stream held in memory, a piece at a time, through zlib's
/// inflate (link with -lz). Reading piecewise lets a caller check a header before it commits
/// memory to the body, so a tiny file claiming gigabytes costs nothing.
/// Concatenated gzip members (as `cat a.gz b.gz` makes) are read as one stream, like gzip -d;
/// anything else after the last member is an error, not silently ignored.

#include <zlib.h>

#include <algorithm>
#include <cstdint>
#include <span>
#include <string>
#include <utility>

#include "tapegrad/error.hpp"

namespace tapegrad::io {

/// True when the bytes start with the gzip magic number 1f 8b.
inline bool is_gzip(std::span<const uint8_t> bytes) {
  return bytes.size() >= 2 && bytes[0] == 0x1f && bytes[1] == 0x8b;
}

/// Decompresses a gzip stream held in memory, a piece at a time (see the file's description).
/// Malformed data throws IOError.
class GzipReader {
 public:
  /// name is used in error messages (the file name).
  GzipReader(std::span<const uint8_t> in, std::string name) : in_(in), name_(std::move(name)) {
    // 16 + MAX_WBITS: expect a gzip header and trailer (CRC-32 and length are checked).
    if (inflateInit2(&z_, 16 + MAX_WBITS) != Z_OK)
      tapegrad::detail::fail<IOError>(name_, ": cannot initialise zlib");
  }
  GzipReader(const GzipReader&) = delete;
  GzipReader& operator=(const GzipReader&) = delete;
  ~GzipReader() { inflateEnd(&z_); }

  /// Fills up to n bytes of out; returns fewer only at the end of the stream.
  size_t read(uint8_t* out, size_t n) {
    size_t produced = 0;
    while (produced < n && !done_) {
      // zlib counts in 32-bit uInt: feed and drain at most 1 GiB per call.
      constexpr size_t max_chunk = size_t{1} << 30;
      if (z_.avail_in == 0 && consumed_ < in_.size()) {
        const size_t take = std::min(in_.size() - consumed_, max_chunk);
        z_.next_in = const_cast<Bytef*>(in_.data() + consumed_);
        z_.avail_in = static_cast<uInt>(take);
        consumed_ += take;
      }
      const size_t want = std::min(n - produced, max_chunk);
      z_.next_out = out + produced;
      z_.avail_out = static_cast<uInt>(want);
      const int rc = inflate(&z_, Z_NO_FLUSH);
      produced += want - z_.avail_out;
      total_out_ += want - z_.avail_out;
      if (rc == Z_STREAM_END) {
        const size_t pos = position();
        if (pos == in_.size()) {
          done_ = true;
        } else if (is_gzip(in_.subspan(pos))) {
          inflateReset(&z_);  // another member follows
        } else {
          tapegrad::detail::fail<IOError>(name_, ": ", in_.size() - pos,
                                          " bytes of trailing garbage after the gzip stream at "
                                          "byte ",
                                          pos);
        }
      } else if (rc == Z_BUF_ERROR) {
        // No progress possible with output space available: the input ended inside the stream.
        tapegrad::detail::fail<IOError>(name_, ": truncated gzip stream: input ends at byte ",
                                        in_.size(), " before the end of the compressed data");
      } else if (rc != Z_OK) {
        tapegrad::detail::fail<IOError>(name_, ": corrupt gzip data near byte ", position(), ": ",
                                        z_.msg ? z_.msg : zError(rc));
      }
    }
    return produced;
  }

  /// Whether the stream has ended.
  bool done() const { return done_; }
  /// Bytes of uncompressed output produced so far.
  uint64_t total_out() const { return total_out_; }

 private:
  // Offset in the compressed input of the next byte zlib will read.
  size_t position() const { return consumed_ - z_.avail_in; }

  std::span<const uint8_t> in_;
  std::string name_;
  z_stream z_{};
  size_t consumed_ = 0;  // input bytes handed to zlib so far
  uint64_t total_out_ = 0;
  bool done_ = false;
};

}  // namespace tapegrad::io
