// The identity of a model, for files made against one model (skip profiles):
// loading a profile checks that its fingerprint equals the loaded model's.
//
// The fingerprint covers what changes the computation: the architecture
// hyper-parameters and the table of tensors in the model's files (name,
// stored dtype, shape). It deliberately ignores the dtype chosen at load
// (f32 or bf16 matrices compute the same model) and does not hash weight
// bytes (that would read gigabytes at every start); a re-trained checkpoint
// with the same table is told apart by its path only.
#ifndef LITESTAGE_ENGINE_MODEL_FINGERPRINT_H_
#define LITESTAGE_ENGINE_MODEL_FINGERPRINT_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "engine/model/weights.h"

namespace litestage {

struct ModelFingerprint {
  std::string architecture;  // e.g. "LlamaForCausalLM"
  int64_t num_hidden_layers = 0;
  int64_t hidden_size = 0;
  uint64_t config_hash = 0;  // FNV-1a 64 of the canonical config text.
  uint64_t tensor_hash = 0;  // FNV-1a 64 of the sorted source tensor table.

  // "LlamaForCausalLM/5x64/config=0123456789abcdef/tensors=0123456789abcdef"
  std::string ToString() const;
  bool operator==(const ModelFingerprint& other) const = default;
};

// The inverse of ModelFingerprint::ToString (as stored in profile files).
// InvalidArgument unless `text` is exactly what ToString prints: lowercase
// 16-digit hashes, no sign or leading zeros in the sizes, a non-empty
// architecture.
absl::StatusOr<ModelFingerprint> ParseModelFingerprint(absl::string_view text);

// Stable across runs, machines and litestage versions: changing what it
// hashes invalidates every saved profile, so tests pin known values.
ModelFingerprint ComputeModelFingerprint(const ModelWeights& weights);

// The config fields the fingerprint hashes, one "key=value" per line.
std::string CanonicalConfigText(const ModelConfig& config);

// Orders a source tensor table by name, as the fingerprint requires.
void SortSourceTensors(std::vector<SourceTensor>& tensors);

}  // namespace litestage

#endif  // LITESTAGE_ENGINE_MODEL_FINGERPRINT_H_
