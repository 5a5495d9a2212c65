// Tokenizer interface shared by the tokenizer.json (BPE) and tokenizer.model
// (SentencePiece) implementations, plus chat formatting and incremental
// detokenization.
#ifndef LITESTAGE_ENGINE_TOKENIZER_TOKENIZER_H_
#define LITESTAGE_ENGINE_TOKENIZER_TOKENIZER_H_

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"

namespace litestage {

// Bytes [begin, end) of a text.
struct TextRange {
  size_t begin = 0;
  size_t end = 0;
};

class Tokenizer {
 public:
  virtual ~Tokenizer() = default;

  // Encodes `text`. Special/added tokens written literally in the text (e.g.
  // "<|im_start|>") map to their ids, as HF tokenizers do by default. With
  // `add_special_tokens` the tokenizer's configured prefix (BOS for Llama) is
  // prepended, matching HF `encode(text, add_special_tokens=True)`.
  absl::StatusOr<std::vector<int32_t>> Encode(absl::string_view text,
                                              bool add_special_tokens) const {
    return Encode(text, add_special_tokens, {});
  }
  // The same, except that a special token whose text overlaps a range of
  // `plain_text` is not matched there: that text is encoded as ordinary
  // text, as HF's split_special_tokens=True does. Callers mark what users
  // wrote (a question, a chat message) so that it can never become control
  // tokens; non-special added tokens are still matched everywhere. Ranges
  // must lie within `text`.
  virtual absl::StatusOr<std::vector<int32_t>> Encode(
      absl::string_view text, bool add_special_tokens,
      absl::Span<const TextRange> plain_text) const = 0;

  // Decodes ids to text like HF `decode(ids, skip_special_tokens=...)`.
  virtual std::string Decode(absl::Span<const int32_t> ids,
                             bool skip_special_tokens) const = 0;

  // The raw bytes token `id` stands for in a decoded stream (byte-level
  // tokens unmapped, "▁" as a space, <0xNN> as the byte). A token that opens
  // a sequence may lose a leading space in Decode(); see
  // StripsLeadingSpace(). Empty for special tokens when `skip_special`.
  virtual std::string TokenBytes(int32_t id, bool skip_special) const = 0;

  // True when Decode() drops one leading space from the first token
  // (SentencePiece's add_dummy_prefix / Metaspace prepend_scheme).
  virtual bool StripsLeadingSpace() const = 0;

  virtual int32_t vocab_size() const = 0;
  virtual bool IsSpecial(int32_t id) const = 0;
  // Id of a token string (special or ordinary), -1 if unknown.
  virtual int32_t TokenToId(absl::string_view token) const = 0;

  int32_t bos_id() const { return bos_id_; }
  const std::vector<int32_t>& eos_ids() const { return eos_ids_; }
  void set_bos_id(int32_t id) { bos_id_ = id; }
  void set_eos_ids(std::vector<int32_t> ids) { eos_ids_ = std::move(ids); }

 private:
  int32_t bos_id_ = -1;
  std::vector<int32_t> eos_ids_;
};

// Loads the tokenizer of a Hugging Face model directory: tokenizer.json when
// present, else tokenizer.model (SentencePiece). tokenizer_config.json and
// special_tokens_map.json supply add_bos_token, BOS/EOS and the chat template.
// BOS/EOS: bos_token of tokenizer_config.json (or special_tokens_map.json,
// else config.json bos_token_id); EOS ids: generation_config.json (else
// config.json) eos_token_id, int or list, plus the tokenizer's eos_token.
// add_bos_token / add_eos_token in tokenizer_config.json, when present,
// decide what Encode(.., add_special_tokens=true) adds (SentencePiece
// models default to BOS, as LlamaTokenizer does).
// `model_dir` may also be a .gguf file: the tokenizer comes from its
// tokenizer.ggml.* metadata (engine/tokenizer/gguf_tokenizer.h).
absl::StatusOr<std::unique_ptr<Tokenizer>> LoadTokenizer(
    const std::string& model_dir);

// A tokenizer for synthetic models without one: ids 0..255 are the raw bytes,
// 256 is BOS "<s>" and 257 EOS "</s>" when `vocab_size` has room for them.
// Ids >= 258 decode to nothing. Encode fails on a byte >= vocab_size.
std::unique_ptr<Tokenizer> MakeByteTokenizer(int32_t vocab_size);

// Turns a stream of token ids into text pieces that never end inside a UTF-8
// character: bytes of an incomplete character are held until it completes.
// Invalid sequences are replaced by U+FFFD, as HF decode() does.
class IncrementalDetokenizer {
 public:
  IncrementalDetokenizer(const Tokenizer* tokenizer, bool skip_special_tokens);
  // Returns the text that became complete with `id` (possibly empty).
  std::string Push(int32_t id);
  // Returns whatever is still held (completing with U+FFFD if cut short).
  std::string Flush();

 private:
  const Tokenizer* tokenizer_;
  bool skip_special_tokens_;
  bool first_ = true;
  std::string pending_;  // Bytes of an unfinished UTF-8 character.
};

struct ChatMessage {
  std::string role;  // "system", "user" or "assistant".
  std::string content;
};

// Chat formatting for the supported families, chosen from the chat_template in
// tokenizer_config.json: ChatML (Qwen, SmolLM), Zephyr (TinyLlama chat),
// Llama-2 [INST]. Returns the prompt text (special tokens written literally,
// to be encoded with add_special_tokens=false except BOS where the template
// writes it).
class ChatTemplate {
 public:
  enum class Style : uint8_t { kChatML, kZephyr, kLlama2 };
  // Detects the style of `model_dir`'s tokenizer_config.json chat_template.
  // NotFound when the model has no chat template.
  // Reads chat_template from tokenizer_config.json (a string, or a list of
  // {name, template} where "default" wins), else chat_template.jinja.
  // `model_dir` may also be a .gguf file (tokenizer.chat_template).
  static absl::StatusOr<ChatTemplate> FromModelDir(
      const std::string& model_dir);
  // Detects the style of Jinja `template_text`; Unimplemented when it is none
  // of the supported ones. For ChatML the default system prompt the template
  // writes when the conversation has none is extracted too.
  static absl::StatusOr<ChatTemplate> FromTemplateText(
      absl::string_view template_text, std::string bos_token,
      std::string eos_token);
  explicit ChatTemplate(Style style, std::string bos_token = "",
                        std::string eos_token = "")
      : style_(style),
        bos_token_(std::move(bos_token)),
        eos_token_(std::move(eos_token)) {}

  // Renders messages and, with `add_generation_prompt`, the assistant header.
  // `content_ranges`, when given, receives where the messages' contents lie
  // in the result (to encode them as plain text, see Tokenizer::Encode).
  std::string Render(absl::Span<const ChatMessage> messages,
                     bool add_generation_prompt,
                     std::vector<TextRange>* content_ranges = nullptr) const;
  Style style() const { return style_; }

  // ChatML only: the system message used when messages[0] is not "system"
  // (empty: none).
  const std::string& default_system_prompt() const {
    return default_system_prompt_;
  }
  void set_default_system_prompt(std::string prompt) {
    default_system_prompt_ = std::move(prompt);
  }

 private:
  Style style_;
  std::string bos_token_;
  std::string eos_token_;
  std::string default_system_prompt_;
};

}  // namespace litestage

#endif  // LITESTAGE_ENGINE_TOKENIZER_TOKENIZER_H_
