#pragma once
/// \file
/// InputFile: a regular file opened for reading, its size known before anything is read, so a
/// reader can check a header against it and read only what the header promises; read_at()
/// reads exactly the bytes asked for or throws. Devices, pipes and directories are refused with
/// an IOError naming the file: /dev/zero or a FIFO would otherwise be read forever.
/// read_file_bytes: a whole regular file in memory (the IDX reader parses from memory, so the
/// same code serves files and fuzzers).

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <cstring>
#include <string>
#include <utility>
#include <vector>

#include "tapegrad/error.hpp"

namespace tapegrad::io {

/// A regular file opened for reading, its size known before anything is read (see the file's
/// description). Not copyable.
class InputFile {
 public:
  /// Opens path; throws IOError if it cannot be opened or is not a regular file.
  explicit InputFile(std::string path) : path_(std::move(path)) {
    // O_NONBLOCK: opening a FIFO must not wait for a writer; it is refused below anyway.
    fd_ = ::open(path_.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
    if (fd_ < 0) fail_errno("cannot open");
    struct stat st;
    if (::fstat(fd_, &st) != 0) fail_errno("cannot stat");
    if (!S_ISREG(st.st_mode)) {
      const char* kind = S_ISDIR(st.st_mode)    ? "a directory"
                         : S_ISCHR(st.st_mode)  ? "a character device"
                         : S_ISBLK(st.st_mode)  ? "a block device"
                         : S_ISFIFO(st.st_mode) ? "a pipe"
                         : S_ISSOCK(st.st_mode) ? "a socket"
                                                : "not a regular file";
      ::close(fd_);
      tapegrad::detail::fail<IOError>(path_, ": cannot read ", kind,
                                      ": tapegrad reads regular files (their size bounds what "
                                      "it reads)");
    }
    size_ = static_cast<uint64_t>(st.st_size);
  }
  InputFile(const InputFile&) = delete;
  InputFile& operator=(const InputFile&) = delete;
  ~InputFile() {
    if (fd_ >= 0) ::close(fd_);
  }

  /// The file's path.
  const std::string& path() const { return path_; }
  /// The size when the file was opened.
  uint64_t size() const { return size_; }

  /// Reads exactly n bytes at offset into out.
  void read_at(uint64_t offset, void* out, size_t n) {
    auto* p = static_cast<char*>(out);
    size_t done = 0;
    while (done < n) {
      const ssize_t k = ::pread(fd_, p + done, n - done, static_cast<off_t>(offset + done));
      if (k < 0) {
        if (errno == EINTR) continue;
        fail_errno("read error at byte " + std::to_string(offset + done));
      }
      if (k == 0)
        tapegrad::detail::fail<IOError>(path_, ": file ends at byte ", offset + done, " while ", n,
                                        " bytes at byte ", offset, " were expected (it was ", size_,
                                        " bytes when opened: changed while being read?)");
      done += static_cast<size_t>(k);
    }
  }

 private:
  [[noreturn]] void fail_errno(const std::string& what) {
    const int e = errno;
    if (fd_ >= 0) ::close(fd_);
    fd_ = -1;
    tapegrad::detail::fail<IOError>(path_, ": ", what, ": ", std::strerror(e));
  }

  std::string path_;
  int fd_ = -1;
  uint64_t size_ = 0;
};

/// The whole regular file at path in memory; IOError on failure.
inline std::vector<uint8_t> read_file_bytes(const std::string& path) {
  InputFile f(path);
  std::vector<uint8_t> bytes(static_cast<size_t>(f.size()));
  f.read_at(0, bytes.data(), bytes.size());
  return bytes;
}

}  // namespace tapegrad::io
