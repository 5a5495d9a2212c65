// Tokenizer for a SentencePiece BPE tokenizer.model, behaving like Hugging
// Face's slow LlamaTokenizer with legacy=True: the text is cut at special
// (control and unknown) pieces and every other span is encoded on its own,
// as sentencepiece's own Encode would. The file is read by sp_model.h; the
// BPE itself is the "llama" GGUF vocabulary's (gguf_tokenizer.h).
#ifndef LITESTAGE_ENGINE_TOKENIZER_SENTENCEPIECE_TOKENIZER_H_
#define LITESTAGE_ENGINE_TOKENIZER_SENTENCEPIECE_TOKENIZER_H_

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "engine/tokenizer/bpe_tokenizer.h"

namespace litestage {

// Loads from the serialized model `contents`; `source` names the file in
// errors. InvalidArgument for malformed files, Unimplemented for models
// litestage cannot tokenize exactly (non-BPE model types, a normalizer or
// denormalizer with a precompiled charsmap, treat_whitespace_as_suffix).
// The template starts as [BOS] when the model has a BOS piece.
absl::StatusOr<std::unique_ptr<TemplatedTokenizer>> LoadSentencePieceModel(
    absl::string_view contents, const std::string& source);

}  // namespace litestage

#endif  // LITESTAGE_ENGINE_TOKENIZER_SENTENCEPIECE_TOKENIZER_H_
