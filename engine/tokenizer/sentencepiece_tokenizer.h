// Tokenizer backed by a SentencePiece tokenizer.model (libsentencepiece),
// behaving like Hugging Face's slow LlamaTokenizer with legacy=True: the text
// is cut at special tokens and every other piece is encoded on its own.
#ifndef LITESTAGE_ENGINE_TOKENIZER_SENTENCEPIECE_TOKENIZER_H_
#define LITESTAGE_ENGINE_TOKENIZER_SENTENCEPIECE_TOKENIZER_H_

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "engine/tokenizer/bpe_tokenizer.h"

namespace litestage {

// Loads from the serialized model `contents`; `source` names the file in
// errors. The template starts as [BOS] when the model has a BOS piece.
absl::StatusOr<std::unique_ptr<TemplatedTokenizer>> LoadSentencePieceModel(
    absl::string_view contents, const std::string& source);

}  // namespace litestage

#endif  // LITESTAGE_ENGINE_TOKENIZER_SENTENCEPIECE_TOKENIZER_H_
