// A thin, abseil-free wrapper around sentencepiece::SentencePieceProcessor.
// sentencepiece_processor.h declares `absl::string_view` as std::string_view,
// which collides with the real Abseil, so only sp_model.cc includes it and
// this header speaks std types only.
#ifndef LITESTAGE_ENGINE_TOKENIZER_SP_MODEL_H_
#define LITESTAGE_ENGINE_TOKENIZER_SP_MODEL_H_

#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace litestage {

class SpModel {
 public:
  SpModel();
  ~SpModel();
  SpModel(const SpModel&) = delete;
  SpModel& operator=(const SpModel&) = delete;

  // Loads a serialized ModelProto. Returns "" on success, else the error.
  std::string Load(std::string_view serialized);
  // Encodes to ids. Returns "" on success, else the error.
  std::string Encode(std::string_view text, std::vector<int>* ids) const;

  int PieceCount() const;
  std::string IdToPiece(int id) const;
  int PieceToId(std::string_view piece) const;  // unk id when absent.
  bool IsControl(int id) const;
  bool IsUnknown(int id) const;
  bool IsByte(int id) const;
  int UnkId() const;
  int BosId() const;  // -1 when the model has none.
  int EosId() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace litestage

#endif  // LITESTAGE_ENGINE_TOKENIZER_SP_MODEL_H_
