#include "engine/model/fingerprint.h"

#include <algorithm>
#include <optional>

#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/strip.h"
#include "engine/util/fnv1a.h"

namespace litestage {
namespace {

// %.17g round-trips every double, so equal configs print equally.
std::string Number(double value) { return absl::StrFormat("%.17g", value); }

const char* RopeScalingName(RopeScaling::Type type) {
  switch (type) {
    case RopeScaling::Type::kNone:
      return "none";
    case RopeScaling::Type::kLlama3:
      return "llama3";
    case RopeScaling::Type::kLinear:
      return "linear";
  }
  return "?";
}

}  // namespace

std::string CanonicalConfigText(const ModelConfig& c) {
  std::string text;
  const auto field = [&text](absl::string_view key, const auto& value) {
    absl::StrAppend(&text, key, "=", value, "\n");
  };
  field("architecture", c.architecture);
  field("family", ModelFamilyName(c.family));
  field("vocab_size", c.vocab_size);
  field("hidden_size", c.hidden_size);
  field("intermediate_size", c.intermediate_size);
  field("num_hidden_layers", c.num_hidden_layers);
  field("num_attention_heads", c.num_attention_heads);
  field("num_key_value_heads", c.num_key_value_heads);
  field("head_dim", c.head_dim);
  field("max_position_embeddings", c.max_position_embeddings);
  field("rms_norm_eps", Number(c.rms_norm_eps));
  field("rope_theta", Number(c.rope_theta));
  field("rope_scaling", RopeScalingName(c.rope_scaling.type));
  if (c.rope_scaling.type != RopeScaling::Type::kNone) {
    field("rope_scaling.factor", Number(c.rope_scaling.factor));
    field("rope_scaling.low_freq_factor",
          Number(c.rope_scaling.low_freq_factor));
    field("rope_scaling.high_freq_factor",
          Number(c.rope_scaling.high_freq_factor));
    field("rope_scaling.original_max_position_embeddings",
          c.rope_scaling.original_max_position_embeddings);
  }
  field("attention_bias", c.attention_bias ? "true" : "false");
  field("qk_norm", c.qk_norm ? "true" : "false");
  field("tie_word_embeddings", c.tie_word_embeddings ? "true" : "false");
  field("sliding_window", c.sliding_window);
  return text;
}

void SortSourceTensors(std::vector<SourceTensor>& tensors) {
  std::sort(tensors.begin(), tensors.end(),
            [](const SourceTensor& a, const SourceTensor& b) {
              return a.name < b.name;
            });
}

ModelFingerprint ComputeModelFingerprint(const ModelWeights& weights) {
  const ModelConfig& config = weights.config;
  ModelFingerprint fingerprint;
  fingerprint.architecture = config.architecture;
  fingerprint.num_hidden_layers = config.num_hidden_layers;
  fingerprint.hidden_size = config.hidden_size;
  fingerprint.config_hash = Fnv1a64(CanonicalConfigText(config));
  std::string table;
  if (weights.synthetic) {
    // Random weights are defined by their generator, not by files.
    table = absl::StrCat(weights.source, " seed=", weights.synthetic_seed);
  } else {
    for (const SourceTensor& tensor : weights.source_tensors) {
      absl::StrAppend(&table, tensor.name, " ", tensor.dtype, " [",
                      absl::StrJoin(tensor.shape, ","), "]\n");
    }
  }
  fingerprint.tensor_hash = Fnv1a64(table);
  return fingerprint;
}

std::string ModelFingerprint::ToString() const {
  return absl::StrFormat("%s/%dx%d/config=%016x/tensors=%016x", architecture,
                         num_hidden_layers, hidden_size, config_hash,
                         tensor_hash);
}

absl::StatusOr<ModelFingerprint> ParseModelFingerprint(absl::string_view text) {
  const auto malformed = [&](absl::string_view why) {
    return absl::InvalidArgumentError(
        absl::StrCat("malformed model fingerprint '", text, "': ", why,
                     " (expected ARCHITECTURE/LAYERSxHIDDEN/config=<16 hex>/"
                     "tensors=<16 hex>)"));
  };
  // Split from the right: the architecture is whatever precedes the sizes.
  absl::string_view rest = text;
  const auto take_last = [&rest]() -> std::optional<absl::string_view> {
    const size_t slash = rest.rfind('/');
    if (slash == absl::string_view::npos) return std::nullopt;
    absl::string_view last = rest.substr(slash + 1);
    rest = rest.substr(0, slash);
    return last;
  };
  const auto parse_hash = [](absl::string_view field, absl::string_view prefix,
                             uint64_t* hash) {
    if (!absl::ConsumePrefix(&field, prefix) || field.size() != 16) {
      return false;
    }
    for (char c : field) {
      if (!absl::ascii_isdigit(c) && !(c >= 'a' && c <= 'f')) return false;
    }
    return absl::SimpleHexAtoi(field, hash);
  };

  ModelFingerprint fingerprint;
  const std::optional<absl::string_view> tensors = take_last();
  const std::optional<absl::string_view> config = take_last();
  const std::optional<absl::string_view> sizes = take_last();
  if (!tensors || !config || !sizes) return malformed("too few '/' fields");
  if (!parse_hash(*tensors, "tensors=", &fingerprint.tensor_hash)) {
    return malformed("bad tensors= hash");
  }
  if (!parse_hash(*config, "config=", &fingerprint.config_hash)) {
    return malformed("bad config= hash");
  }
  const size_t x = sizes->find('x');
  if (x == absl::string_view::npos ||
      !absl::SimpleAtoi(sizes->substr(0, x), &fingerprint.num_hidden_layers) ||
      !absl::SimpleAtoi(sizes->substr(x + 1), &fingerprint.hidden_size)) {
    return malformed("bad LAYERSxHIDDEN sizes");
  }
  if (fingerprint.num_hidden_layers <= 0 || fingerprint.hidden_size <= 0) {
    return malformed("sizes must be positive");
  }
  if (rest.empty()) return malformed("empty architecture");
  fingerprint.architecture = std::string(rest);
  // SimpleAtoi accepts signs, spaces and leading zeros; the canonical
  // spelling does not.
  if (fingerprint.ToString() != text) return malformed("not canonical");
  return fingerprint;
}

}  // namespace litestage
