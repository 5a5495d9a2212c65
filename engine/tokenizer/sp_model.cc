// The protobuf wire-format reader behind ParseSpModel and the mapping of
// ModelProto fields onto SpModel.
#include "engine/tokenizer/sp_model.h"

#include <cmath>
#include <cstring>
#include <utility>

#include "absl/container/flat_hash_set.h"
#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "engine/tokenizer/unicode.h"
#include "engine/util/status_macros.h"

namespace litestage {
namespace {

// Protobuf wire types (encoding.md). 3 and 4 are the deprecated groups,
// which sentencepiece_model.proto never uses; they are rejected.
enum WireType : uint32_t {
  kVarint = 0,
  kFixed64 = 1,
  kLengthDelimited = 2,
  kStartGroup = 3,
  kEndGroup = 4,
  kFixed32 = 5,
};

// Reads one message's bytes front to back. Errors name the byte offset in
// the whole file (`base` is where this message starts) and the message.
class WireReader {
 public:
  WireReader(absl::string_view data, size_t base, absl::string_view message)
      : data_(data), base_(base), message_(message) {}

  bool done() const { return pos_ == data_.size(); }

  absl::Status ReadTag(uint32_t* field, WireType* type) {
    const size_t at = pos_;
    uint64_t tag = 0;
    LS_RETURN_IF_ERROR(ReadVarint(&tag));
    const uint64_t number = tag >> 3;
    if (number == 0 || number > 536870911) {  // 2^29 - 1.
      return Error(at, absl::StrCat("bad field number ", number));
    }
    const uint32_t wire = static_cast<uint32_t>(tag & 7);
    if (wire != kVarint && wire != kFixed64 && wire != kLengthDelimited &&
        wire != kFixed32) {
      return Error(at, absl::StrCat("field ", number, " has wire type ", wire,
                                    wire == kStartGroup || wire == kEndGroup
                                        ? " (groups are not supported)"
                                        : " (no such wire type)"));
    }
    *field = static_cast<uint32_t>(number);
    *type = static_cast<WireType>(wire);
    return absl::OkStatus();
  }

  absl::Status ReadVarint(uint64_t* value) {
    const size_t at = pos_;
    uint64_t result = 0;
    for (int shift = 0; shift < 64; shift += 7) {
      if (pos_ >= data_.size()) return Error(at, "truncated varint");
      const uint8_t byte = static_cast<uint8_t>(data_[pos_++]);
      // The tenth byte may only carry the top bit of a 64-bit value.
      if (shift == 63 && byte > 1) return Error(at, "varint overflows 64 bits");
      result |= static_cast<uint64_t>(byte & 0x7F) << shift;
      if ((byte & 0x80) == 0) {
        *value = result;
        return absl::OkStatus();
      }
    }
    return Error(at, "varint longer than 10 bytes");
  }

  absl::Status ReadFixed32(uint32_t* value) {
    if (data_.size() - pos_ < 4) return Error(pos_, "truncated fixed32");
    uint8_t b[4];
    std::memcpy(b, data_.data() + pos_, 4);
    pos_ += 4;
    *value = static_cast<uint32_t>(b[0]) | static_cast<uint32_t>(b[1]) << 8 |
             static_cast<uint32_t>(b[2]) << 16 |
             static_cast<uint32_t>(b[3]) << 24;
    return absl::OkStatus();
  }

  // A length-delimited payload; `*offset` is where it starts in the file.
  absl::Status ReadBytes(absl::string_view* bytes, size_t* offset) {
    const size_t at = pos_;
    uint64_t length = 0;
    LS_RETURN_IF_ERROR(ReadVarint(&length));
    if (length > data_.size() - pos_) {
      return Error(at, absl::StrCat("length ", length, " runs past the end (",
                                    data_.size() - pos_, " bytes left)"));
    }
    *bytes = data_.substr(pos_, static_cast<size_t>(length));
    *offset = base_ + pos_;
    pos_ += static_cast<size_t>(length);
    return absl::OkStatus();
  }

  absl::Status Skip(WireType type) {
    switch (type) {
      case kVarint: {
        uint64_t ignored;
        return ReadVarint(&ignored);
      }
      case kFixed64:
        if (data_.size() - pos_ < 8) return Error(pos_, "truncated fixed64");
        pos_ += 8;
        return absl::OkStatus();
      case kFixed32: {
        uint32_t ignored;
        return ReadFixed32(&ignored);
      }
      case kLengthDelimited: {
        absl::string_view ignored;
        size_t offset;
        return ReadBytes(&ignored, &offset);
      }
      default:
        return Error(pos_, "cannot skip a group");
    }
  }

  // A known field arrived with the wrong wire type.
  absl::Status WrongType(uint32_t field, WireType type) const {
    return Error(pos_, absl::StrCat("field ", field, " has wire type ",
                                    static_cast<uint32_t>(type),
                                    ", which its declared type cannot use"));
  }

  absl::Status Error(size_t at, absl::string_view what) const {
    return absl::InvalidArgumentError(
        absl::StrCat(what, " in ", message_, " at byte ", base_ + at));
  }

 private:
  absl::string_view data_;
  size_t base_;
  absl::string_view message_;
  size_t pos_ = 0;
};

// Each Read* consumes one field value of the expected wire type.
absl::Status ReadBool(WireReader& r, uint32_t field, WireType type, bool* out) {
  if (type != kVarint) return r.WrongType(field, type);
  uint64_t v = 0;
  LS_RETURN_IF_ERROR(r.ReadVarint(&v));
  *out = v != 0;
  return absl::OkStatus();
}

// int32 fields are written as 64-bit varints (negative ones sign-extended).
absl::Status ReadInt32(WireReader& r, uint32_t field, WireType type,
                       int32_t* out) {
  if (type != kVarint) return r.WrongType(field, type);
  uint64_t v = 0;
  LS_RETURN_IF_ERROR(r.ReadVarint(&v));
  *out = static_cast<int32_t>(static_cast<uint32_t>(v));
  return absl::OkStatus();
}

absl::Status ReadString(WireReader& r, uint32_t field, WireType type,
                        absl::string_view* out) {
  if (type != kLengthDelimited) return r.WrongType(field, type);
  size_t offset;
  return r.ReadBytes(out, &offset);
}

absl::Status ParsePiece(absl::string_view bytes, size_t base, size_t index,
                        SpPiece* piece) {
  const std::string name = absl::StrCat("pieces[", index, "]");
  WireReader r(bytes, base, name);
  while (!r.done()) {
    uint32_t field = 0;
    WireType type = kVarint;
    LS_RETURN_IF_ERROR(r.ReadTag(&field, &type));
    if (field == 1) {
      absl::string_view text;
      LS_RETURN_IF_ERROR(ReadString(r, field, type, &text));
      if (text.size() > kMaxSpPieceBytes) {
        return r.Error(
            0, absl::StrCat("piece of ", text.size(), " bytes (the limit is ",
                            kMaxSpPieceBytes, ")"));
      }
      piece->piece = std::string(text);
    } else if (field == 2) {
      if (type != kFixed32) return r.WrongType(field, type);
      uint32_t bits = 0;
      LS_RETURN_IF_ERROR(r.ReadFixed32(&bits));
      std::memcpy(&piece->score, &bits, sizeof(bits));
    } else if (field == 3) {
      int32_t value = 0;
      LS_RETURN_IF_ERROR(ReadInt32(r, field, type, &value));
      if (value < 1 || value > 6) {
        return r.Error(0, absl::StrCat("unknown piece type ", value));
      }
      piece->type = static_cast<SpPieceType>(value);
    } else {
      LS_RETURN_IF_ERROR(r.Skip(type));
    }
  }
  return absl::OkStatus();
}

absl::Status ParseTrainerSpec(absl::string_view bytes, size_t base,
                              SpModel* model) {
  WireReader r(bytes, base, "trainer_spec");
  while (!r.done()) {
    uint32_t field = 0;
    WireType type = kVarint;
    LS_RETURN_IF_ERROR(r.ReadTag(&field, &type));
    absl::string_view text;
    switch (field) {
      case 3: {
        int32_t value = 0;
        LS_RETURN_IF_ERROR(ReadInt32(r, field, type, &value));
        if (value < 1 || value > 4) {
          return r.Error(0, absl::StrCat("unknown model_type ", value));
        }
        model->model_type = static_cast<SpModelType>(value);
        break;
      }
      case 24:
        LS_RETURN_IF_ERROR(
            ReadBool(r, field, type, &model->treat_whitespace_as_suffix));
        break;
      case 35:
        LS_RETURN_IF_ERROR(ReadBool(r, field, type, &model->byte_fallback));
        break;
      case 40:
        LS_RETURN_IF_ERROR(ReadInt32(r, field, type, &model->unk_id));
        break;
      case 41:
        LS_RETURN_IF_ERROR(ReadInt32(r, field, type, &model->bos_id));
        break;
      case 42:
        LS_RETURN_IF_ERROR(ReadInt32(r, field, type, &model->eos_id));
        break;
      case 43:
        LS_RETURN_IF_ERROR(ReadInt32(r, field, type, &model->pad_id));
        break;
      case 45:
        LS_RETURN_IF_ERROR(ReadString(r, field, type, &text));
        model->unk_piece = std::string(text);
        break;
      case 46:
        LS_RETURN_IF_ERROR(ReadString(r, field, type, &text));
        model->bos_piece = std::string(text);
        break;
      case 47:
        LS_RETURN_IF_ERROR(ReadString(r, field, type, &text));
        model->eos_piece = std::string(text);
        break;
      default:
        LS_RETURN_IF_ERROR(r.Skip(type));
    }
  }
  return absl::OkStatus();
}

absl::Status ParseNormalizerSpec(absl::string_view bytes, size_t base,
                                 absl::string_view name, SpModel* model,
                                 bool denormalizer) {
  WireReader r(bytes, base, name);
  while (!r.done()) {
    uint32_t field = 0;
    WireType type = kVarint;
    LS_RETURN_IF_ERROR(r.ReadTag(&field, &type));
    absl::string_view text;
    if (denormalizer) {
      // Only a non-empty charsmap changes decoding.
      if (field == 2) {
        LS_RETURN_IF_ERROR(ReadString(r, field, type, &text));
        model->denormalizer_charsmap_size = text.size();
      } else {
        LS_RETURN_IF_ERROR(r.Skip(type));
      }
      continue;
    }
    switch (field) {
      case 1:
        LS_RETURN_IF_ERROR(ReadString(r, field, type, &text));
        model->normalizer_name = std::string(text);
        break;
      case 2:
        LS_RETURN_IF_ERROR(ReadString(r, field, type, &text));
        model->precompiled_charsmap_size = text.size();
        break;
      case 3:
        LS_RETURN_IF_ERROR(ReadBool(r, field, type, &model->add_dummy_prefix));
        break;
      case 4:
        LS_RETURN_IF_ERROR(
            ReadBool(r, field, type, &model->remove_extra_whitespaces));
        break;
      case 5:
        LS_RETURN_IF_ERROR(
            ReadBool(r, field, type, &model->escape_whitespaces));
        break;
      default:
        LS_RETURN_IF_ERROR(r.Skip(type));
    }
  }
  return absl::OkStatus();
}

// Wire-level decoding of the top-level message. ModelProto's submessages
// are one level deep and pieces two; the reader only descends into those
// known fields, so nesting cannot go deeper whatever the input says.
absl::Status ParseModelProto(absl::string_view bytes, SpModel* model) {
  WireReader r(bytes, 0, "ModelProto");
  while (!r.done()) {
    uint32_t field = 0;
    WireType type = kVarint;
    LS_RETURN_IF_ERROR(r.ReadTag(&field, &type));
    if (field != 1 && field != 2 && field != 3 && field != 5) {
      LS_RETURN_IF_ERROR(r.Skip(type));
      continue;
    }
    if (type != kLengthDelimited) return r.WrongType(field, type);
    absl::string_view sub;
    size_t base = 0;
    LS_RETURN_IF_ERROR(r.ReadBytes(&sub, &base));
    switch (field) {
      case 1:
        if (model->pieces.size() >= kMaxSpPieces) {
          return r.Error(0,
                         absl::StrCat("more than ", kMaxSpPieces, " pieces"));
        }
        model->pieces.emplace_back();
        LS_RETURN_IF_ERROR(ParsePiece(sub, base, model->pieces.size() - 1,
                                      &model->pieces.back()));
        break;
      case 2:  // A repeated submessage merges into the first, as protobuf's.
        LS_RETURN_IF_ERROR(ParseTrainerSpec(sub, base, model));
        break;
      case 3:
        LS_RETURN_IF_ERROR(
            ParseNormalizerSpec(sub, base, "normalizer_spec", model, false));
        break;
      case 5:
        LS_RETURN_IF_ERROR(
            ParseNormalizerSpec(sub, base, "denormalizer_spec", model, true));
        break;
    }
  }
  return absl::OkStatus();
}

// What sentencepiece's ModelInterface checks when it loads pieces, plus what
// litestage relies on (UTF-8 text, finite scores for sorting).
absl::Status CheckPieces(const SpModel& model) {
  if (model.pieces.empty()) {
    return absl::InvalidArgumentError("no pieces (ModelProto field 1)");
  }
  absl::flat_hash_set<absl::string_view> seen;
  int unknown = 0;
  for (size_t id = 0; id < model.pieces.size(); ++id) {
    const SpPiece& p = model.pieces[id];
    if (p.piece.empty()) {
      return absl::InvalidArgumentError(
          absl::StrCat("pieces[", id, "] is empty"));
    }
    if (unicode::RepairUtf8(p.piece) != p.piece) {
      return absl::InvalidArgumentError(
          absl::StrCat("pieces[", id, "] is not valid UTF-8"));
    }
    if (!std::isfinite(p.score)) {
      return absl::InvalidArgumentError(
          absl::StrCat("pieces[", id, "] has a non-finite score"));
    }
    if (!seen.insert(p.piece).second) {
      return absl::InvalidArgumentError(
          absl::StrCat("pieces[", id, "] \"", p.piece, "\" is a duplicate"));
    }
    if (p.type == SpPieceType::kUnknown) ++unknown;
  }
  if (unknown != 1) {
    return absl::InvalidArgumentError(absl::StrCat(
        unknown, " pieces have type UNKNOWN (sentencepiece needs exactly 1)"));
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<SpModel> ParseSpModel(absl::string_view bytes,
                                     const std::string& source) {
  const std::string prefix =
      absl::StrCat(source, ": not a valid SentencePiece model: ");
  if (bytes.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat(prefix, "the file is empty"));
  }
  if (bytes.size() > kMaxSpModelBytes) {
    return absl::InvalidArgumentError(absl::StrCat(
        prefix, bytes.size(), " bytes (the limit is ", kMaxSpModelBytes, ")"));
  }
  SpModel model;
  absl::Status status = ParseModelProto(bytes, &model);
  if (status.ok()) status = CheckPieces(model);
  if (!status.ok()) {
    return absl::InvalidArgumentError(absl::StrCat(prefix, status.message()));
  }
  return model;
}

}  // namespace litestage
