// libFuzzer target: arbitrary bytes as a tokenizer.model, through litestage's
// own ModelProto reader (engine/tokenizer/sp_model.h) and, when it accepts
// them, the tokenizer built on it. Invariants: no crash, hang or sanitizer
// report; a rejected file's error names it; an accepted model encodes valid
// UTF-8 to ids inside its vocabulary, and incremental detokenization equals
// Decode.
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "absl/strings/string_view.h"
#include "engine/tokenizer/sentencepiece_tokenizer.h"
#include "engine/tokenizer/sp_model.h"
#include "engine/tokenizer/tokenizer.h"
#include "engine/util/check.h"

namespace {

constexpr char kSource[] = "fuzz/tokenizer.model";

void CheckEncode(const litestage::Tokenizer& tokenizer,
                 const std::string& text) {
  auto ids = tokenizer.Encode(text, true);
  LS_CHECK(ids.ok()) << ids.status();
  for (int32_t id : *ids) {
    LS_CHECK(id >= 0 && id < tokenizer.vocab_size()) << id;
  }
  for (bool skip : {false, true}) {
    const std::string decoded = tokenizer.Decode(*ids, skip);
    litestage::IncrementalDetokenizer detokenizer(&tokenizer, skip);
    std::string streamed;
    for (int32_t id : *ids) streamed += detokenizer.Push(id);
    streamed += detokenizer.Flush();
    LS_CHECK(streamed == decoded) << "incremental decode differs";
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const absl::string_view bytes(reinterpret_cast<const char*>(data), size);
  auto model = litestage::ParseSpModel(bytes, kSource);
  auto tokenizer = litestage::LoadSentencePieceModel(bytes, kSource);
  if (!model.ok()) {
    LS_CHECK(!tokenizer.ok()) << "tokenizer accepted what the reader refused";
    LS_CHECK(absl::string_view(model.status().message()).find(kSource) !=
             absl::string_view::npos)
        << model.status();
    return 0;
  }
  if (!tokenizer.ok()) {
    LS_CHECK(absl::string_view(tokenizer.status().message()).find(kSource) !=
             absl::string_view::npos)
        << tokenizer.status();
    return 0;
  }
  LS_CHECK((*tokenizer)->vocab_size() ==
           static_cast<int32_t>(model->pieces.size()));
  for (const std::string& text :
       {std::string(""), std::string("  Hello  world \n\t<s>x</s> "),
        std::string("caf\xC3\xA9 \xE6\x97\xA5\xE6\x9C\xAC \xF0\x9F\x98\x80"),
        std::string("\xE2\x96\x81\xE2\x96\x81 <unk>12345")}) {
    CheckEncode(**tokenizer, text);
  }
  // Piece texts as input: they exercise merges and special-piece splitting.
  std::string pieces;
  for (size_t i = 0; i < model->pieces.size() && i < 64; ++i) {
    pieces += model->pieces[i].piece;
    if (i % 3 == 0) pieces += ' ';
  }
  CheckEncode(**tokenizer, pieces);
  return 0;
}
