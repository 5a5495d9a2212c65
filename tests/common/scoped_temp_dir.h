// Temporary directories for tests that are removed again, so test runs leave
// nothing behind in /tmp (gtest's TempDir() is shared by every run).
#ifndef LITESTAGE_TESTS_COMMON_SCOPED_TEMP_DIR_H_
#define LITESTAGE_TESTS_COMMON_SCOPED_TEMP_DIR_H_

#include <fcntl.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdint>
#include <filesystem>
#include <string>
#include <system_error>

#include "gtest/gtest.h"

namespace litestage::testing {

// A fresh directory (mkdtemp under ::testing::TempDir(), so concurrent test
// processes never collide), removed with everything in it on destruction.
class ScopedTempDir {
 public:
  explicit ScopedTempDir(const std::string& prefix = "litestage_test") {
    std::string pattern = ::testing::TempDir();
    if (!pattern.empty() && pattern.back() != '/') pattern += '/';
    pattern += prefix + ".XXXXXX";
    if (::mkdtemp(pattern.data()) == nullptr) {
      ADD_FAILURE() << "mkdtemp " << pattern << " failed";
    }
    path_ = pattern;
  }
  ScopedTempDir(const ScopedTempDir&) = delete;
  ScopedTempDir& operator=(const ScopedTempDir&) = delete;
  ~ScopedTempDir() {
    std::error_code error;  // Best effort: never throw from a destructor.
    std::filesystem::remove_all(path_, error);
  }

  const std::string& path() const { return path_; }
  // path()/name.
  std::string Child(const std::string& name) const {
    return (std::filesystem::path(path_) / name).string();
  }

 private:
  std::string path_;
};

// One directory per test process for helpers that hand out paths rather
// than owning them (MakeTempDir): created on first use and removed when the
// process exits normally (function-local static destructor).
inline const ScopedTempDir& ProcessTempDir() {
  static const ScopedTempDir dir("litestage_tests");
  return dir;
}

// Creates a FIFO at `path` (for the "not a regular file" checks: a reader
// that opened it blocking would hang the test, which ctest's timeout shows).
inline void MakeFifo(const std::string& path) {
  ASSERT_EQ(::mkfifo(path.c_str(), 0600), 0) << "mkfifo " << path;
}

// Creates a sparse file of `size` bytes (no disk blocks), for size limits.
inline void MakeSparseFile(const std::string& path, uint64_t size) {
  const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
  ASSERT_GE(fd, 0) << "open " << path;
  ASSERT_EQ(::ftruncate(fd, static_cast<off_t>(size)), 0) << path;
  ::close(fd);
}

// `depth` nested arrays: "[[[...]]]".
inline std::string NestedJsonArrays(size_t depth) {
  return std::string(depth, '[') + std::string(depth, ']');
}

}  // namespace litestage::testing

#endif  // LITESTAGE_TESTS_COMMON_SCOPED_TEMP_DIR_H_
