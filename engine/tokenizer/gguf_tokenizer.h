// Tokenizers described by GGUF metadata (tokenizer.ggml.*), as llama.cpp
// writes them: "gpt2" (byte-level BPE: tokens + merges + a pre-tokenizer
// name) and "llama" (SentencePiece pieces + scores, byte fallback).
//
// The metadata is turned into the tokenizer.json document Hugging Face
// transformers builds from the same file (integrations/gguf), which
// ParseTokenizerJson then reads, so GGUF and tokenizer.json models share one
// BPE implementation.
#ifndef LITESTAGE_ENGINE_TOKENIZER_GGUF_TOKENIZER_H_
#define LITESTAGE_ENGINE_TOKENIZER_GGUF_TOKENIZER_H_

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/tokenizer/bpe_tokenizer.h"
#include "engine/tokenizer/tokenizer.h"

namespace litestage {

class GgufFile;  // engine/model/gguf.h

// llama.cpp's tokenizer.ggml.token_type values.
enum class GgufTokenType : int32_t {
  kNormal = 1,
  kUnknown = 2,
  kControl = 3,      // Special token (<|im_start|>): an added special token.
  kUserDefined = 4,  // Always matched whole in text, but not special.
  kUnused = 5,
  kByte = 6,  // <0xNN> byte-fallback piece.
};

// The tokenizer.ggml.* metadata a tokenizer is built from.
struct GgufTokenizerData {
  std::string model;                 // tokenizer.ggml.model: "gpt2", "llama".
  std::string pre;                   // tokenizer.ggml.pre; "" when absent.
  std::vector<std::string> tokens;   // [vocab] token text.
  std::vector<std::string> merges;   // [n_merges] "left right" (gpt2).
  std::vector<int32_t> token_types;  // [vocab] GgufTokenType, or empty.
  std::vector<float> scores;         // [vocab] piece scores (llama), or empty.
  std::optional<int32_t> bos_id;
  std::optional<int32_t> eos_id;
  std::optional<int32_t> unk_id;
  std::optional<bool> add_bos;  // tokenizer.ggml.add_bos_token.
  std::optional<bool> add_eos;  // tokenizer.ggml.add_eos_token.
};

// Reads the tokenizer.ggml.* keys of `file`. InvalidArgument (naming the
// file and key) when a key has the wrong type; NotFound without
// tokenizer.ggml.model / tokens.
absl::StatusOr<GgufTokenizerData> ReadGgufTokenizerData(const GgufFile& file);

// Builds the tokenizer `data` describes; `source` names the file in errors.
// Unimplemented for tokenizer models other than gpt2/llama and for gpt2
// pre-tokenizer names without a known split (the message names them).
// BOS/EOS come from bos/eos ids; Encode(.., true) prepends BOS when
// add_bos_token says so (default: false for gpt2, true for llama, as
// transformers does) and appends EOS with add_eos_token.
absl::StatusOr<std::unique_ptr<Tokenizer>> BuildGgufTokenizer(
    const GgufTokenizerData& data, const std::string& source);

// How BuildLlamaVocabTokenizer prepares text and decodes.
struct LlamaVocabOptions {
  // False (GGUF, as transformers): a Metaspace pre-tokenizer turns spaces
  // into "\u2581" and prepends one at the start of the text. True
  // (tokenizer.model): Encode() receives text the caller already normalized
  // the SentencePiece way, which GGUF cannot describe (remove_extra_
  // whitespaces, add_dummy_prefix, escape_whitespaces), and only runs BPE.
  bool pre_normalized = false;
  // <0xNN> pieces stand in for characters outside the vocabulary.
  bool byte_fallback = true;
  // The decoder drops one leading space (the dummy prefix).
  bool strip_leading_space = true;
  // Only NORMAL and USER_DEFINED pieces are merge results, as in
  // sentencepiece's BPE, which never emits an UNUSED piece nor builds a
  // control/unknown/byte piece from smaller ones. transformers' GGUF
  // conversion merges into any piece, so GGUF leaves this off.
  bool sentencepiece_merges = false;
};

// The "llama" (SentencePiece-BPE) half of BuildGgufTokenizer, shared with
// tokenizer.model (engine/tokenizer/sentencepiece_tokenizer.cc) so one BPE
// implementation serves both: `data.tokens`/`scores`/`token_types`/`unk_id`
// become the tokenizer.json document transformers builds, read by
// ParseTokenizerJson. BOS/EOS and the template are left to the caller.
absl::StatusOr<std::unique_ptr<TemplatedTokenizer>> BuildLlamaVocabTokenizer(
    const GgufTokenizerData& data, const LlamaVocabOptions& options,
    const std::string& source);

// ReadGgufTokenizerData + BuildGgufTokenizer.
absl::StatusOr<std::unique_ptr<Tokenizer>> LoadGgufTokenizer(
    const GgufFile& file);

// The chat template of tokenizer.chat_template, with the BOS/EOS token text
// from the ids. NotFound when the file has none.
absl::StatusOr<ChatTemplate> LoadGgufChatTemplate(const GgufFile& file);

// True when `path` names a GGUF file (an existing regular file ending in
// ".gguf") rather than a model directory.
bool IsGgufPath(const std::string& path);

}  // namespace litestage

#endif  // LITESTAGE_ENGINE_TOKENIZER_GGUF_TOKENIZER_H_
