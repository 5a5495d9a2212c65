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
  // Maps `path` read-only. Only regular files (or symlinks to them) are
  // accepted: a FIFO, device or directory is InvalidArgument. Errors name the
  // path and the failing call or the reason.
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

// Size bounds of the files read whole into memory. Each is far above what a
// real file of that kind needs and far below what would hurt a server, so a
// wrong path (a disk image, a log) fails fast instead of exhausting memory.
// config.json, generation_config.json, profiles, pipelines, chat templates,
// TLS PEM files: real ones are a few KiB.
inline constexpr uint64_t kMaxSmallFileBytes = uint64_t{1} << 20;  // 1 MiB
// tokenizer_config.json, special_tokens_map.json, the safetensors index:
// added_tokens_decoder / weight_map list every token or tensor (hundreds of
// KiB for the largest vocabularies).
inline constexpr uint64_t kMaxMetadataFileBytes = uint64_t{16} << 20;
// tokenizer.json / tokenizer.model: the largest common vocabularies (256k
// tokens with merges) are about 35 MB.
inline constexpr uint64_t kMaxTokenizerFileBytes = uint64_t{128} << 20;
// Question datasets (JSON / JSONL): StrategyQA's dev.json is a few MB.
inline constexpr uint64_t kMaxDatasetFileBytes = uint64_t{64} << 20;

// Reads a whole regular file (or a symlink to one) of at most `max_bytes`.
// The open cannot block (O_NONBLOCK), so a FIFO is rejected rather than
// waited on; FIFOs, devices and directories are InvalidArgument "<path>: not
// a regular file (fifo)"; a larger file is InvalidArgument naming the path,
// its size and the limit.
absl::StatusOr<std::string> ReadFileToString(
    const std::string& path, uint64_t max_bytes = kMaxSmallFileBytes);

// "fifo", "directory", "character device", ... for messages.
const char* FileTypeName(unsigned mode);

}  // namespace litestage

#endif  // LITESTAGE_ENGINE_UTIL_MAPPED_FILE_H_
