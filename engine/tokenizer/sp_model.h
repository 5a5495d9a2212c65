// Reads a SentencePiece tokenizer.model, a serialized sentencepiece.ModelProto
// (sentencepiece_model.proto), with a small protobuf wire-format reader of our
// own. litestage used to link libsentencepiece for this, whose bundled
// protobuf runtime clashed with the libprotobuf the server links; the model
// file only needs a handful of fields, so we decode them ourselves.
//
// Only the fields that change how text is tokenized are kept. Everything the
// reader does not know is skipped; every length is checked against the bytes
// left, and the file size, piece count and piece length are bounded, so any
// input yields a model or an error, never a crash.
#ifndef LITESTAGE_ENGINE_TOKENIZER_SP_MODEL_H_
#define LITESTAGE_ENGINE_TOKENIZER_SP_MODEL_H_

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace litestage {

// ModelProto.SentencePiece.Type.
enum class SpPieceType : int32_t {
  kNormal = 1,
  kUnknown = 2,
  kControl = 3,
  kUserDefined = 4,
  kUnused = 5,
  kByte = 6,
};

// TrainerSpec.ModelType.
enum class SpModelType : int32_t {
  kUnigram = 1,
  kBpe = 2,
  kWord = 3,
  kChar = 4,
};

struct SpPiece {
  std::string piece;                        // Field 1.
  float score = 0;                          // Field 2.
  SpPieceType type = SpPieceType::kNormal;  // Field 3.
};

// The parts of a ModelProto litestage reads; defaults are the .proto's.
struct SpModel {
  std::vector<SpPiece> pieces;  // ModelProto field 1.

  // trainer_spec (ModelProto field 2).
  SpModelType model_type = SpModelType::kUnigram;  // 3.
  bool treat_whitespace_as_suffix = false;         // 24.
  bool byte_fallback = false;                      // 35.
  int32_t unk_id = 0;                              // 40.
  int32_t bos_id = 1;                              // 41.
  int32_t eos_id = 2;                              // 42.
  int32_t pad_id = -1;                             // 43.
  std::string unk_piece = "<unk>";                 // 45.
  std::string bos_piece = "<s>";                   // 46.
  std::string eos_piece = "</s>";                  // 47.

  // normalizer_spec (ModelProto field 3).
  std::string normalizer_name;           // 1.
  size_t precompiled_charsmap_size = 0;  // 2 (its bytes are not kept).
  bool add_dummy_prefix = true;          // 3.
  bool remove_extra_whitespaces = true;  // 4.
  bool escape_whitespaces = true;        // 5.

  // denormalizer_spec (ModelProto field 5): only whether it maps anything.
  size_t denormalizer_charsmap_size = 0;
};

// Bounds on what ParseSpModel accepts. Real models: Llama 2 is 500 KB with
// 32000 pieces, Gemma's 4 MB with 256000; pieces are at most a few dozen
// bytes (user-defined symbols can be longer).
inline constexpr size_t kMaxSpModelBytes = size_t{64} << 20;
inline constexpr size_t kMaxSpPieces = size_t{1} << 20;
inline constexpr size_t kMaxSpPieceBytes = 4096;

// Decodes `bytes`. InvalidArgument for anything that is not a well-formed
// ModelProto within the bounds above (truncated or overlong varints, lengths
// past the end, wrong wire types for known fields, unknown enum values,
// empty/duplicate/non-UTF-8 pieces, non-finite scores, no unknown piece).
// Every message starts with `source` (the file path).
absl::StatusOr<SpModel> ParseSpModel(absl::string_view bytes,
                                     const std::string& source);

}  // namespace litestage

#endif  // LITESTAGE_ENGINE_TOKENIZER_SP_MODEL_H_
