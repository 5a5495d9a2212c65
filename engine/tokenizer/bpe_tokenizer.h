// Byte-pair-encoding tokenizer read from a Hugging Face tokenizer.json: the
// byte-level family (GPT-2, Qwen2, Llama-3, SmolLM2) and the SentencePiece-
// style exports with byte fallback (Llama-2, TinyLlama).
#ifndef LITESTAGE_ENGINE_TOKENIZER_BPE_TOKENIZER_H_
#define LITESTAGE_ENGINE_TOKENIZER_BPE_TOKENIZER_H_

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "engine/tokenizer/tokenizer.h"

namespace litestage {

// Tokenizers that prepend/append fixed special ids with add_special_tokens
// (the post-processor's template); LoadTokenizer adjusts them from
// tokenizer_config.json.
class TemplatedTokenizer : public Tokenizer {
 public:
  const std::vector<int32_t>& prefix_ids() const { return prefix_ids_; }
  const std::vector<int32_t>& suffix_ids() const { return suffix_ids_; }
  void set_prefix_ids(std::vector<int32_t> ids) {
    prefix_ids_ = std::move(ids);
  }
  void set_suffix_ids(std::vector<int32_t> ids) {
    suffix_ids_ = std::move(ids);
  }

 protected:
  // Wraps `ids` in the template when `add_special_tokens`.
  std::vector<int32_t> ApplyTemplate(std::vector<int32_t> ids,
                                     bool add_special_tokens) const;

 private:
  std::vector<int32_t> prefix_ids_;  // Prepended by Encode(.., true).
  std::vector<int32_t> suffix_ids_;  // Appended by Encode(.., true).
};

// Parses tokenizer.json text. `source` (the path) names the file in errors.
absl::StatusOr<std::unique_ptr<TemplatedTokenizer>> ParseTokenizerJson(
    absl::string_view json_text, const std::string& source);

}  // namespace litestage

#endif  // LITESTAGE_ENGINE_TOKENIZER_BPE_TOKENIZER_H_
