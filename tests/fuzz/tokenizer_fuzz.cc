// libFuzzer target: arbitrary bytes through the tokenizer.json BPE tokenizers
// (the byte-level and the metaspace goldens). Invariants: Encode fails only
// on invalid UTF-8; ids stay inside the vocabulary; byte-level BPE decodes
// back to the (NFC) input; incremental detokenization equals Decode.
// The tokenizers come from $LITESTAGE_TOKENIZER_GOLDEN_DIR, default
// <repo>/tests/golden/tokenizers.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <string>
#include <vector>

#include "engine/tokenizer/tokenizer.h"
#include "engine/tokenizer/unicode.h"
#include "engine/util/check.h"

namespace {

std::string GoldenDir() {
  const char* dir = std::getenv("LITESTAGE_TOKENIZER_GOLDEN_DIR");
  return dir != nullptr ? dir : LITESTAGE_TEST_DATA_DIR "/golden/tokenizers";
}

std::unique_ptr<litestage::Tokenizer> Load(const std::string& name) {
  auto tokenizer = litestage::LoadTokenizer(GoldenDir() + "/" + name);
  LS_CHECK(tokenizer.ok()) << tokenizer.status();
  return *std::move(tokenizer);
}

void CheckRoundTrip(const litestage::Tokenizer& tokenizer,
                    const std::string& text, bool add_special,
                    bool expect_identity) {
  using litestage::unicode::RepairUtf8;
  auto ids = tokenizer.Encode(text, add_special);
  const bool valid = RepairUtf8(text) == text;
  LS_CHECK(ids.ok() == valid) << ids.status();
  if (!valid) return;
  for (int32_t id : *ids)
    LS_CHECK(id >= 0 && id < tokenizer.vocab_size()) << id;
  const std::string decoded = tokenizer.Decode(*ids, false);
  if (expect_identity) {
    auto normalized = litestage::unicode::Normalize(
        text, litestage::unicode::NormalForm::kNfc);
    LS_CHECK(normalized.ok());
    if (*normalized == text)
      LS_CHECK(decoded == text) << "round trip changed the text";
  }
  for (bool skip : {false, true}) {
    litestage::IncrementalDetokenizer detokenizer(&tokenizer, skip);
    std::string streamed;
    for (int32_t id : *ids) {
      const std::string piece = detokenizer.Push(id);
      LS_CHECK(RepairUtf8(piece) == piece);
      streamed += piece;
    }
    streamed += detokenizer.Flush();
    LS_CHECK(streamed == tokenizer.Decode(*ids, skip))
        << "incremental != Decode";
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const std::unique_ptr<litestage::Tokenizer> byte_level =
      Load("bytelevel");
  static const std::unique_ptr<litestage::Tokenizer> metaspace =
      Load("metaspace");
  const std::string text(reinterpret_cast<const char*>(data), size);
  CheckRoundTrip(*byte_level, text, size % 2 == 0, /*expect_identity=*/true);
  CheckRoundTrip(*metaspace, text, size % 2 == 1, /*expect_identity=*/false);
  return 0;
}
