#include "engine/tokenizer/sp_model.h"

#include <sentencepiece_processor.h>

namespace litestage {

struct SpModel::Impl {
  sentencepiece::SentencePieceProcessor processor;
};

SpModel::SpModel() : impl_(std::make_unique<Impl>()) {}
SpModel::~SpModel() = default;

std::string SpModel::Load(std::string_view serialized) {
  const sentencepiece::util::Status status =
      impl_->processor.LoadFromSerializedProto(serialized);
  if (status.ok()) return std::string();
  std::string message = status.ToString();
  return message.empty() ? std::string("unknown sentencepiece error") : message;
}

std::string SpModel::Encode(std::string_view text,
                            std::vector<int>* ids) const {
  ids->clear();
  const sentencepiece::util::Status status = impl_->processor.Encode(text, ids);
  if (status.ok()) return std::string();
  std::string message = status.ToString();
  return message.empty() ? std::string("unknown sentencepiece error") : message;
}

int SpModel::PieceCount() const { return impl_->processor.GetPieceSize(); }
std::string SpModel::IdToPiece(int id) const {
  return impl_->processor.IdToPiece(id);
}
int SpModel::PieceToId(std::string_view piece) const {
  return impl_->processor.PieceToId(piece);
}
bool SpModel::IsControl(int id) const { return impl_->processor.IsControl(id); }
bool SpModel::IsUnknown(int id) const { return impl_->processor.IsUnknown(id); }
bool SpModel::IsByte(int id) const { return impl_->processor.IsByte(id); }
int SpModel::UnkId() const { return impl_->processor.unk_id(); }
int SpModel::BosId() const { return impl_->processor.bos_id(); }
int SpModel::EosId() const { return impl_->processor.eos_id(); }

}  // namespace litestage
