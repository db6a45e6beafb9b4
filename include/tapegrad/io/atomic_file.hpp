#pragma once
/// \file
/// AtomicFile: writes a file so that readers see either the old content or the complete new
/// one, never a half-written file, also when several processes save to the same path. Data goes
/// to a temporary file of its own in the same directory, "<path>.tmp-<pid>-<random>", created
/// with O_EXCL (never someone else's file); commit() flushes it to disk (fsync), renames it over
/// `path` (atomic on POSIX: the last rename wins) and syncs the directory so the rename itself
/// survives a power cut. Destroying an uncommitted AtomicFile (an exception while writing)
/// removes the temporary file and leaves `path` as it was. A process killed while writing
/// (SIGKILL, power loss) leaves its temporary file behind: files matching "<path>.tmp-*" are
/// such leftovers and may be deleted when no save is running.
///
///   io::AtomicFile f(path);
///   f.write(header.data(), header.size());
///   f.commit();

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <string>
#include <string_view>
#include <utility>

#include "tapegrad/error.hpp"

namespace tapegrad::io {

namespace detail {
// Test hook: called after the temporary file is complete and synced, just before the rename.
// Tests set it to throw, simulating a crash between writing and renaming.
inline thread_local void (*before_rename_hook)(const std::string& tmp_path) = nullptr;
}  // namespace detail

/// Writes a file so that readers see either the old content or the complete new one (see the file's
/// description). Not copyable.
class AtomicFile {
 public:
  /// Creates the temporary file next to path; throws IOError if it cannot.
  explicit AtomicFile(std::string path) : path_(std::move(path)) {
    if (path_.empty()) tapegrad::detail::fail<IOError>("cannot write a file: the path is empty");
    struct stat st;
    if (path_.back() == '/' || (::stat(path_.c_str(), &st) == 0 && S_ISDIR(st.st_mode)))
      tapegrad::detail::fail<IOError>(path_, ": is a directory; give the path of a file");
    // A fresh name per attempt: another process may be saving to the same path right now.
    for (int attempt = 0; fd_ < 0; ++attempt) {
      tmp_ = path_ + ".tmp-" + std::to_string(::getpid()) + "-" + random_suffix();
      fd_ = ::open(tmp_.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
      if (fd_ < 0 && (errno != EEXIST || attempt == 100))
        fail_errno("cannot create the temporary file " + tmp_);
    }
  }
  AtomicFile(const AtomicFile&) = delete;
  AtomicFile& operator=(const AtomicFile&) = delete;
  ~AtomicFile() {
    if (fd_ >= 0) ::close(fd_);
    if (!committed_) ::unlink(tmp_.c_str());
  }

  /// The file the content goes to.
  const std::string& path() const { return path_; }
  /// The temporary file being written.
  const std::string& tmp_path() const { return tmp_; }

  ///@{
  /// Appends bytes to the temporary file; throws IOError on failure.
  void write(const void* data, size_t size) {
    const auto* p = static_cast<const char*>(data);
    while (size > 0) {
      const ssize_t n = ::write(fd_, p, size);
      if (n < 0) {
        if (errno == EINTR) continue;
        fail_errno("write to " + tmp_ + " failed");
      }
      p += n;
      size -= static_cast<size_t>(n);
    }
  }
  void write(std::string_view s) { write(s.data(), s.size()); }
  ///@}

  /// Makes the new content visible under path() in one step.
  void commit() {
    if (::fsync(fd_) != 0) fail_errno("fsync of " + tmp_ + " failed");
    const int fd = fd_;
    fd_ = -1;
    if (::close(fd) != 0) fail_errno("close of " + tmp_ + " failed");
    if (detail::before_rename_hook) detail::before_rename_hook(tmp_);
    if (::rename(tmp_.c_str(), path_.c_str()) != 0)
      fail_errno("cannot rename " + tmp_ + " to " + path_);
    committed_ = true;
    sync_directory();
  }

 private:
  // 8 hex digits, different for every call in every process.
  static std::string random_suffix() {
    static std::atomic<uint64_t> counter{0};
    uint64_t x =
        static_cast<uint64_t>(std::chrono::steady_clock::now().time_since_epoch().count()) ^
        (counter.fetch_add(1) * 0x9e3779b97f4a7c15ULL) ^ (static_cast<uint64_t>(::getpid()) << 32);
    x ^= x >> 31;
    x *= 0xbf58476d1ce4e5b9ULL;
    x ^= x >> 29;
    char buf[9];
    std::snprintf(buf, sizeof buf, "%08x", static_cast<unsigned>(x & 0xffffffffu));
    return buf;
  }
  [[noreturn]] void fail_errno(const std::string& what) const {
    const int e = errno;
    tapegrad::detail::fail<IOError>(path_, ": ", what, ": ", std::strerror(e));
  }
  // Best effort: some file systems refuse fsync on a directory, which is not an error here.
  void sync_directory() const {
    const auto slash = path_.find_last_of('/');
    const std::string dir =
        slash == std::string::npos ? "." : (slash == 0 ? "/" : path_.substr(0, slash));
    const int dfd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd >= 0) {
      ::fsync(dfd);
      ::close(dfd);
    }
  }

  std::string path_, tmp_;
  int fd_ = -1;
  bool committed_ = false;
};

/// Writes a whole string atomically (CSV exports, SVG plots).
inline void write_file_atomically(const std::string& path, std::string_view content) {
  AtomicFile f(path);
  f.write(content);
  f.commit();
}

}  // namespace tapegrad::io
