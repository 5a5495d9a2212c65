// The backend interface's value types and the KV memory checks every
// backend's factory uses.
#include "engine/backend/backend.h"

#include <algorithm>
#include <optional>
#include <string>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "engine/util/mapped_file.h"
#include "engine/util/status_macros.h"

namespace litestage {

SublayerCounts& SublayerCounts::operator+=(const SublayerCounts& other) {
  attention_executed += other.attention_executed;
  attention_skipped += other.attention_skipped;
  mlp_executed += other.mlp_executed;
  mlp_skipped += other.mlp_skipped;
  return *this;
}

int64_t SkipSet::num_skipped() const {
  return std::count(attention.begin(), attention.end(), true) +
         std::count(mlp.begin(), mlp.end(), true);
}

bool SkipSet::SkipsSameAs(const SkipSet& other, int64_t num_layers) const {
  for (int64_t layer = 0; layer < num_layers; ++layer) {
    if (skips_attention(layer) != other.skips_attention(layer) ||
        skips_mlp(layer) != other.skips_mlp(layer)) {
      return false;
    }
  }
  return true;
}

namespace {

// a * b, or nullopt when it does not fit in uint64.
std::optional<uint64_t> CheckedMul(uint64_t a, uint64_t b) {
  uint64_t product = 0;
  if (__builtin_mul_overflow(a, b, &product)) return std::nullopt;
  return product;
}

}  // namespace

absl::StatusOr<uint64_t> KvCacheBytesPerToken(const ModelConfig& config) {
  if (config.num_hidden_layers <= 0 || config.num_key_value_heads <= 0 ||
      config.head_dim <= 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "KV cache: layers, kv heads and head_dim must be positive, got ",
        config.num_hidden_layers, ", ", config.num_key_value_heads, ", ",
        config.head_dim));
  }
  std::optional<uint64_t> bytes = uint64_t{2 * sizeof(float)};  // K and V.
  for (const int64_t factor : {config.num_hidden_layers,
                               config.num_key_value_heads, config.head_dim}) {
    bytes = CheckedMul(*bytes, static_cast<uint64_t>(factor));
    if (!bytes) {
      return absl::InvalidArgumentError(absl::StrCat(
          "KV cache: bytes per token overflow (", config.num_hidden_layers,
          " layers x ", config.num_key_value_heads, " kv heads x ",
          config.head_dim, " head_dim x 2 x 4 bytes)"));
    }
  }
  return *bytes;
}

absl::Status CheckKvCacheFitsMemory(const ModelConfig& config,
                                    const BackendOptions& options,
                                    uint64_t available_bytes) {
  LS_ASSIGN_OR_RETURN(const uint64_t per_token, KvCacheBytesPerToken(config));
  const uint64_t tokens = static_cast<uint64_t>(options.kv_cache_tokens);
  const uint64_t block = static_cast<uint64_t>(options.kv_block_size);
  const uint64_t rounded = (tokens / block + (tokens % block != 0)) * block;
  const std::optional<uint64_t> needed = CheckedMul(rounded, per_token);
  if (!needed) {
    return absl::InvalidArgumentError(
        absl::StrCat("--kv-cache-tokens ", options.kv_cache_tokens, " x ",
                     per_token, " bytes per token overflows 64 bits"));
  }
  if (*needed > available_bytes) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "--kv-cache-tokens ", options.kv_cache_tokens, " needs ", *needed,
        " bytes of KV cache (", per_token,
        " bytes per token: ", config.num_hidden_layers, " layers x ",
        config.num_key_value_heads, " kv heads x ", config.head_dim,
        " head_dim x 2 x f32) but only ", available_bytes,
        " bytes of memory are available (MemAvailable); "
        "lower --kv-cache-tokens"));
  }
  return absl::OkStatus();
}

std::optional<uint64_t> AvailableMemoryBytes() {
  absl::StatusOr<std::string> meminfo = ReadFileToString("/proc/meminfo");
  if (!meminfo.ok()) return std::nullopt;
  for (absl::string_view line : absl::StrSplit(*meminfo, '\n')) {
    if (!absl::ConsumePrefix(&line, "MemAvailable:")) continue;
    line = absl::StripAsciiWhitespace(line);
    if (!absl::ConsumeSuffix(&line, "kB")) return std::nullopt;
    uint64_t kib = 0;
    if (!absl::SimpleAtoi(absl::StripAsciiWhitespace(line), &kib)) {
      return std::nullopt;
    }
    return CheckedMul(kib, 1024);
  }
  return std::nullopt;
}

}  // namespace litestage
