#include "engine/util/mapped_file.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace litestage {
namespace {

absl::Status ErrnoError(const std::string& path, const char* what) {
  const int err = errno;
  std::string message =
      absl::StrCat(path, ": ", what, ": ", std::strerror(err));
  if (err == ENOENT) return absl::NotFoundError(message);
  if (err == EACCES || err == EPERM)
    return absl::PermissionDeniedError(message);
  return absl::InternalError(message);
}

// Closes the descriptor on every return path.
class FdCloser {
 public:
  explicit FdCloser(int fd) : fd_(fd) {}
  FdCloser(const FdCloser&) = delete;
  FdCloser& operator=(const FdCloser&) = delete;
  ~FdCloser() {
    if (fd_ >= 0) ::close(fd_);
  }

 private:
  int fd_;
};

// Opens `path` for reading and checks it is a regular file. O_NONBLOCK makes
// opening a FIFO with no writer return at once instead of blocking startup
// forever; it changes nothing for regular files.
absl::StatusOr<int> OpenRegularFile(const std::string& path, struct stat* st) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_NONBLOCK | O_CLOEXEC);
  if (fd < 0) return ErrnoError(path, "open");
  if (::fstat(fd, st) != 0) {
    absl::Status status = ErrnoError(path, "fstat");
    ::close(fd);
    return status;
  }
  if (!S_ISREG(st->st_mode)) {
    ::close(fd);
    return absl::InvalidArgumentError(absl::StrCat(
        path, ": not a regular file (", FileTypeName(st->st_mode), ")"));
  }
  return fd;
}

}  // namespace

const char* FileTypeName(unsigned mode) {
  if (S_ISREG(mode)) return "regular file";
  if (S_ISDIR(mode)) return "directory";
  if (S_ISFIFO(mode)) return "fifo";
  if (S_ISCHR(mode)) return "character device";
  if (S_ISBLK(mode)) return "block device";
  if (S_ISSOCK(mode)) return "socket";
  if (S_ISLNK(mode)) return "symlink";
  return "unknown file type";
}

absl::StatusOr<MappedFile> MappedFile::Open(const std::string& path) {
  struct stat st;
  absl::StatusOr<int> opened = OpenRegularFile(path, &st);
  if (!opened.ok()) return opened.status();
  const int fd = *opened;
  MappedFile file;
  file.path_ = path;
  file.size_ = static_cast<size_t>(st.st_size);
  if (file.size_ > 0) {
    void* mapping = ::mmap(nullptr, file.size_, PROT_READ, MAP_PRIVATE, fd, 0);
    if (mapping == MAP_FAILED) {
      absl::Status status = ErrnoError(path, "mmap");
      ::close(fd);
      return status;
    }
    file.data_ = static_cast<const uint8_t*>(mapping);
  }
  ::close(fd);  // The mapping keeps the file alive.
  return file;
}

MappedFile::MappedFile(MappedFile&& other) noexcept
    : path_(std::move(other.path_)),
      data_(std::exchange(other.data_, nullptr)),
      size_(std::exchange(other.size_, 0)) {}

MappedFile& MappedFile::operator=(MappedFile&& other) noexcept {
  if (this != &other) {
    Reset();
    path_ = std::move(other.path_);
    data_ = std::exchange(other.data_, nullptr);
    size_ = std::exchange(other.size_, 0);
  }
  return *this;
}

MappedFile::~MappedFile() { Reset(); }

void MappedFile::Reset() {
  if (data_ != nullptr) {
    ::munmap(const_cast<uint8_t*>(data_), size_);
    data_ = nullptr;
    size_ = 0;
  }
}

absl::StatusOr<std::string> ReadFileToString(const std::string& path,
                                             uint64_t max_bytes) {
  struct stat st;
  absl::StatusOr<int> opened = OpenRegularFile(path, &st);
  if (!opened.ok()) return opened.status();
  FdCloser closer(*opened);
  const uint64_t size = static_cast<uint64_t>(st.st_size);
  const auto too_large = [&](uint64_t at_least) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": file is ", at_least, " bytes, over the limit of ",
                     max_bytes, " bytes for this kind of file"));
  };
  if (size > max_bytes) return too_large(size);
  // Read until EOF rather than trusting st_size (the file may grow while it
  // is read), but never past the limit.
  std::string contents;
  contents.resize(static_cast<size_t>(size));
  size_t filled = 0;
  while (true) {
    if (filled == contents.size()) {
      if (contents.size() > max_bytes) return too_large(contents.size());
      // One byte past the limit tells "at the limit" from "over it";
      // saturating so that max_bytes = UINT64_MAX cannot wrap to 0.
      const uint64_t cap = std::max(max_bytes, max_bytes + 1);
      contents.resize(static_cast<size_t>(
          std::min<uint64_t>(cap, contents.size() + (size_t{1} << 16))));
    }
    const ssize_t n =
        ::read(*opened, contents.data() + filled, contents.size() - filled);
    if (n < 0) {
      if (errno == EINTR) continue;
      return absl::DataLossError(
          absl::StrCat(path, ": read failed: ", std::strerror(errno)));
    }
    if (n == 0) break;
    filled += static_cast<size_t>(n);
  }
  if (filled > max_bytes) return too_large(filled);
  contents.resize(filled);
  return contents;
}

}  // namespace litestage
