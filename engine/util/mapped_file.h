// Read-only memory mapping of a whole file. Model weights are mapped, not
// read, so loading a model costs page-table setup and the OS shares the pages
// between processes.
#ifndef LITESTAGE_ENGINE_UTIL_MAPPED_FILE_H_
#define LITESTAGE_ENGINE_UTIL_MAPPED_FILE_H_

#include <cstddef>
#include <cstdint>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace litestage {

class MappedFile {
 public:
  // Maps `path` read-only. Errors name the path and the failing call.
  static absl::StatusOr<MappedFile> Open(const std::string& path);

  MappedFile() = default;
  MappedFile(MappedFile&& other) noexcept;
  MappedFile& operator=(MappedFile&& other) noexcept;
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;
  ~MappedFile();

  const uint8_t* data() const { return data_; }
  size_t size() const { return size_; }
  const std::string& path() const { return path_; }
  absl::string_view view() const {
    return absl::string_view(reinterpret_cast<const char*>(data_), size_);
  }

 private:
  void Reset();

  std::string path_;
  const uint8_t* data_ = nullptr;
  size_t size_ = 0;
};

// Reads a whole (small) text file such as config.json.
absl::StatusOr<std::string> ReadFileToString(const std::string& path);

}  // namespace litestage

#endif  // LITESTAGE_ENGINE_UTIL_MAPPED_FILE_H_
