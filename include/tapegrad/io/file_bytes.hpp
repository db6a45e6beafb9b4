#pragma once
// read_file_bytes: a whole file in memory, or an IOError naming the file and the OS's reason.
// The readers (IDX, safetensors) parse from memory, so the same code serves files and fuzzers.

#include <sys/stat.h>

#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "tapegrad/error.hpp"

namespace tapegrad::io {

inline std::vector<uint8_t> read_file_bytes(const std::string& path) {
  std::FILE* f = std::fopen(path.c_str(), "rb");
  if (!f) tapegrad::detail::fail<IOError>(path, ": cannot open: ", std::strerror(errno));
  std::vector<uint8_t> bytes;
  struct stat st;
  if (::fstat(fileno(f), &st) == 0 && S_ISREG(st.st_mode) && st.st_size > 0)
    bytes.reserve(static_cast<size_t>(st.st_size));
  uint8_t chunk[1 << 16];
  // Read in chunks rather than trusting a size from fseek/ftell: works for pipes and for files
  // that change while being read.
  for (;;) {
    const size_t n = std::fread(chunk, 1, sizeof chunk, f);
    bytes.insert(bytes.end(), chunk, chunk + n);
    if (n < sizeof chunk) break;
  }
  const bool failed = std::ferror(f) != 0;
  const int e = errno;
  std::fclose(f);
  if (failed) tapegrad::detail::fail<IOError>(path, ": read error: ", std::strerror(e));
  return bytes;
}

}  // namespace tapegrad::io
