// BuildGgufTokenizer on small hand-made tokenizer.ggml.* metadata, and the
// real stories260K SentencePiece vocabulary as a GGUF (made by
// tests/reference/make_sp_gguf_fixture.py) against the independent goldens
// of tokenizer.model. The real SmolLM2 file is covered by
// tests/golden/gguf_test.cc.
#include "engine/tokenizer/gguf_tokenizer.h"

#include <cstdint>
#include <iterator>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "engine/tokenizer/tokenizer.h"
#include "engine/util/json_util.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace litestage {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

// GPT-2's byte alphabet spelling of one byte.
std::string ByteChar(int b) {
  // bytes_to_unicode: printable Latin-1 bytes map to themselves, the rest to
  // 256 + n in order.
  auto printable = [](int x) {
    return (x >= '!' && x <= '~') || (x >= 0xA1 && x <= 0xAC) ||
           (x >= 0xAE && x <= 0xFF);
  };
  int cp = b;
  if (!printable(b)) {
    int n = 0;
    for (int x = 0; x < b; ++x) n += printable(x) ? 0 : 1;
    cp = 256 + n;
  }
  std::string out;
  if (cp < 0x80) {
    out.push_back(static_cast<char>(cp));
  } else {
    out.push_back(static_cast<char>(0xC0 | (cp >> 6)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  }
  return out;
}

// Ids: 0 <|endoftext|> (control), 1 <|im_start|> (control), 2..257 the
// bytes, 258 "he", 259 "ll", 260 "hell", 261 "hello", 262 "Ġw", 263 "12",
// 264 "<think>" (user-defined).
GgufTokenizerData TinyGpt2() {
  GgufTokenizerData data;
  data.model = "gpt2";
  data.pre = "gpt-2";
  data.tokens = {"<|endoftext|>", "<|im_start|>"};
  for (int b = 0; b < 256; ++b) data.tokens.push_back(ByteChar(b));
  for (const char* t : {"he", "ll", "hell", "hello", "\xC4\xA0w", "12"}) {
    data.tokens.push_back(t);
  }
  data.tokens.push_back("<think>");
  data.merges = {"h e", "l l", "he ll", "hell o", "\xC4\xA0 w", "1 2"};
  data.token_types.assign(data.tokens.size(), 1);
  data.token_types[0] = 3;
  data.token_types[1] = 3;
  data.token_types.back() = 4;
  data.bos_id = 1;
  data.eos_id = 0;
  return data;
}

constexpr int32_t kByte0 = 2;  // Id of byte 0.
int32_t Byte(char c) { return kByte0 + static_cast<uint8_t>(c); }

TEST(GgufTokenizerTest, Gpt2MergesSpecialsAndDecode) {
  auto tokenizer = BuildGgufTokenizer(TinyGpt2(), "tiny.gguf");
  ASSERT_TRUE(tokenizer.ok()) << tokenizer.status();
  const Tokenizer& tok = **tokenizer;
  EXPECT_EQ(tok.vocab_size(), 265);
  EXPECT_EQ(tok.bos_id(), 1);
  EXPECT_THAT(tok.eos_ids(), ElementsAre(0));
  auto ids = tok.Encode("hello w<|im_start|>x<think>", false);
  ASSERT_TRUE(ids.ok()) << ids.status();
  EXPECT_THAT(*ids, ElementsAre(261, 262, 1, Byte('x'), 264));
  EXPECT_TRUE(tok.IsSpecial(1));
  EXPECT_FALSE(tok.IsSpecial(264));
  EXPECT_EQ(tok.Decode(*ids, false), "hello w<|im_start|>x<think>");
  EXPECT_EQ(tok.Decode(*ids, true), "hello wx<think>");
  // gpt2 files add no BOS unless add_bos_token says so.
  auto plain = tok.Encode("hell", true);
  ASSERT_TRUE(plain.ok());
  EXPECT_THAT(*plain, ElementsAre(260));
}

// SmolLM2's vocabulary lacks a few control bytes (0x04, 0x06, ...): HF drops
// them from the input rather than failing.
TEST(GgufTokenizerTest, BytesMissingFromTheVocabularyAreDropped) {
  GgufTokenizerData data = TinyGpt2();
  data.tokens[kByte0 + 4] = "<unused4>";
  auto tokenizer = BuildGgufTokenizer(data, "tiny.gguf");
  ASSERT_TRUE(tokenizer.ok()) << tokenizer.status();
  auto ids = (*tokenizer)->Encode("x\x04\x04y", false);
  ASSERT_TRUE(ids.ok()) << ids.status();
  EXPECT_THAT(*ids, ElementsAre(Byte('x'), Byte('y')));
}

TEST(GgufTokenizerTest, AddBosAndEosFlags) {
  GgufTokenizerData data = TinyGpt2();
  data.add_bos = true;
  data.add_eos = true;
  auto tokenizer = BuildGgufTokenizer(data, "tiny.gguf");
  ASSERT_TRUE(tokenizer.ok()) << tokenizer.status();
  auto ids = (*tokenizer)->Encode("he", true);
  ASSERT_TRUE(ids.ok());
  EXPECT_THAT(*ids, ElementsAre(1, 258, 0));
}

TEST(GgufTokenizerTest, PreTokenizerNamesChooseTheSplit) {
  // GPT-2 regex keeps " 12" together ("Ġ" + "12"); SmolLM's Digits step
  // splits every digit off, so "12" never merges.
  GgufTokenizerData data = TinyGpt2();
  auto gpt2 = BuildGgufTokenizer(data, "tiny.gguf");
  ASSERT_TRUE(gpt2.ok()) << gpt2.status();
  auto ids = (*gpt2)->Encode("a12", false);
  ASSERT_TRUE(ids.ok());
  EXPECT_THAT(*ids, ElementsAre(Byte('a'), 263));

  data.pre = "smollm";
  auto smollm = BuildGgufTokenizer(data, "tiny.gguf");
  ASSERT_TRUE(smollm.ok()) << smollm.status();
  ids = (*smollm)->Encode("a12", false);
  ASSERT_TRUE(ids.ok());
  EXPECT_THAT(*ids, ElementsAre(Byte('a'), Byte('1'), Byte('2')));

  // Llama-3 and Qwen2 split letters from digits too.
  for (const char* pre : {"llama-bpe", "qwen2"}) {
    data.pre = pre;
    auto split = BuildGgufTokenizer(data, "tiny.gguf");
    ASSERT_TRUE(split.ok()) << pre << ": " << split.status();
    ids = (*split)->Encode("hello  w", false);
    ASSERT_TRUE(ids.ok());
    EXPECT_THAT(*ids, ElementsAre(261, Byte(' '), 262)) << pre;
  }
}

TEST(GgufTokenizerTest, UnknownNamesAreUnimplemented) {
  GgufTokenizerData data = TinyGpt2();
  data.pre = "mystery-pre";
  auto result = BuildGgufTokenizer(data, "tiny.gguf");
  EXPECT_EQ(result.status().code(), absl::StatusCode::kUnimplemented);
  EXPECT_THAT(result.status().message(), HasSubstr("mystery-pre"));
  EXPECT_THAT(result.status().message(), HasSubstr("tiny.gguf"));

  data = TinyGpt2();
  data.model = "bert";
  result = BuildGgufTokenizer(data, "tiny.gguf");
  EXPECT_EQ(result.status().code(), absl::StatusCode::kUnimplemented);
  EXPECT_THAT(result.status().message(), HasSubstr("bert"));
}

TEST(GgufTokenizerTest, MalformedMetadataIsAnError) {
  GgufTokenizerData data = TinyGpt2();
  data.merges.push_back("nospace");
  auto result = BuildGgufTokenizer(data, "tiny.gguf");
  EXPECT_EQ(result.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(result.status().message(), HasSubstr("nospace"));

  data = TinyGpt2();
  data.merges.push_back("x yz");  // "yz" is no token.
  EXPECT_FALSE(BuildGgufTokenizer(data, "tiny.gguf").ok());

  data = TinyGpt2();
  data.eos_id = 100000;
  result = BuildGgufTokenizer(data, "tiny.gguf");
  EXPECT_THAT(result.status().message(), HasSubstr("eos_token_id"));

  data = TinyGpt2();
  data.token_types.pop_back();
  EXPECT_FALSE(BuildGgufTokenizer(data, "tiny.gguf").ok());

  data = TinyGpt2();
  data.tokens.clear();
  EXPECT_FALSE(BuildGgufTokenizer(data, "tiny.gguf").ok());
}

// A SentencePiece-style vocabulary: merges come from the scores.
GgufTokenizerData TinyLlama() {
  GgufTokenizerData data;
  data.model = "llama";
  data.tokens = {"<unk>", "<s>", "</s>"};
  data.scores = {0, 0, 0};
  data.token_types = {2, 3, 3};
  for (int b = 0; b < 256; ++b) {
    char name[8];
    snprintf(name, sizeof(name), "<0x%02X>", b);
    data.tokens.push_back(name);
    data.scores.push_back(0);
    data.token_types.push_back(6);
  }
  // id 259.. : pieces, higher score = merged earlier.
  const std::vector<std::pair<std::string, float>> pieces = {
      {"\xE2\x96\x81", -1},  // "▁"
      {"h", -2},
      {"e", -3},
      {"l", -4},
      {"o", -5},
      {"\xE2\x96\x81h", -6},  // "▁h"
      {"ll", -7},
      {"\xE2\x96\x81he", -8},
      {"\xE2\x96\x81hell", -9},
      {"\xE2\x96\x81hello", -10},
  };
  for (const auto& [piece, score] : pieces) {
    data.tokens.push_back(piece);
    data.scores.push_back(score);
    data.token_types.push_back(1);
  }
  data.bos_id = 1;
  data.eos_id = 2;
  data.unk_id = 0;
  return data;
}

TEST(GgufTokenizerTest, LlamaByteFallbackBpeFromScores) {
  auto tokenizer = BuildGgufTokenizer(TinyLlama(), "llama.gguf");
  ASSERT_TRUE(tokenizer.ok()) << tokenizer.status();
  const Tokenizer& tok = **tokenizer;
  EXPECT_TRUE(tok.StripsLeadingSpace());
  // BOS by default for llama vocabularies; "▁hello" merges whole; "z" has no
  // piece and falls back to its byte <0x7A>.
  auto ids = tok.Encode("hello z", true);
  ASSERT_TRUE(ids.ok()) << ids.status();
  EXPECT_THAT(*ids, ElementsAre(1, 268, 259, 3 + 'z'));
  EXPECT_EQ(tok.Decode(*ids, true), "hello z");
  auto specials = tok.Encode("</s>hello", false);
  ASSERT_TRUE(specials.ok());
  EXPECT_EQ((*specials)[0], 2);

  GgufTokenizerData data = TinyLlama();
  data.scores.pop_back();
  EXPECT_FALSE(BuildGgufTokenizer(data, "llama.gguf").ok());
}

// Corpus entries whose ids legitimately differ between tokenizer.model and
// the same vocabulary read from GGUF metadata (both differences hold for
// transformers' GGUF loader, which BuildGgufTokenizer follows; checked with
// AutoTokenizer.from_pretrained(gguf_file=stories260K_vocab.gguf), which
// gives litestage's ids on all of them):
//  * Whitespace: stories260K's normalizer_spec has remove_extra_whitespaces
//    (SentencePiece's default), so SentencePiece drops leading/trailing
//    spaces and collapses runs before encoding. GGUF carries no normalizer
//    spec for "llama" vocabularies, and neither llama.cpp's SPM tokenizer nor
//    transformers applies it: every space becomes a "▁".
//  * Text after a special token: slow LlamaTokenizer (legacy=True) encodes
//    each span between special tokens on its own, each with SentencePiece's
//    dummy "▁" prefix; the GGUF-built tokenizer prepends "▁" only at the
//    start of the text (Metaspace prepend_scheme "first").
// Decode still has to match on these.
const char* const kGgufSemanticsDiffer[] = {
    "  two leading spaces",
    "trailing spaces   ",
    "   \n\n   \t  mixed whitespace \n ",
    "def f(x):\n    return x * 2  # comment\n",
    "<s>Hello</s> world <s> again",
    " ",
    "  \n  x\ta\n\n\tb 'S 'LL I'M  'll x' 123abc \xD9\xA3\xD9\xA4 "
    "\xC2\xBD \xC2\xA0nbsp\xE3\x80\x80ideo",
    "<|im_end|>  <|im_start|> <|im_end|>\n\n",
};

// stories260K's tokenizer.model written as llama.cpp's convert_hf_to_gguf.py
// writes a SentencePiece vocabulary, checked against the ids SentencePiece
// itself gives (stories260K_encodings.json, HF slow LlamaTokenizer
// legacy=True: every special-token-free span encoded on its own).
TEST(GgufTokenizerTest, Stories260KVocabularyMatchesSentencePiece) {
  const std::string golden_dir =
      std::string(LITESTAGE_TEST_DATA_DIR) + "/golden/tokenizers";
  absl::StatusOr<std::unique_ptr<Tokenizer>> tokenizer =
      LoadTokenizer(golden_dir + "/stories260K_vocab.gguf");
  ASSERT_TRUE(tokenizer.ok()) << tokenizer.status();
  const Tokenizer& tok = **tokenizer;
  EXPECT_EQ(tok.vocab_size(), 512);
  EXPECT_EQ(tok.bos_id(), 1);
  EXPECT_THAT(tok.eos_ids(), ElementsAre(2));
  EXPECT_TRUE(tok.StripsLeadingSpace());
  absl::StatusOr<nlohmann::json> golden =
      ReadJsonFile(golden_dir + "/stories260K_encodings.json");
  ASSERT_TRUE(golden.ok()) << golden.status();
  ASSERT_TRUE(golden->contains("encodings"));
  const std::set<std::string> differ(std::begin(kGgufSemanticsDiffer),
                                     std::end(kGgufSemanticsDiffer));
  size_t ids_checked = 0;
  size_t differ_seen = 0;
  for (const nlohmann::json& record : (*golden)["encodings"]) {
    const std::string text = record["text"].get<std::string>();
    const std::string context = nlohmann::json(text).dump();
    const std::vector<int32_t> golden_ids =
        record["ids_with_special"].get<std::vector<int32_t>>();
    EXPECT_EQ(tok.Decode(golden_ids, false),
              record["decode"].get<std::string>())
        << context;
    EXPECT_EQ(tok.Decode(golden_ids, true),
              record["decode_skip_special"].get<std::string>())
        << context;
    if (differ.contains(text)) {
      ++differ_seen;
      continue;
    }
    absl::StatusOr<std::vector<int32_t>> ids = tok.Encode(text, false);
    ASSERT_TRUE(ids.ok()) << context << ": " << ids.status();
    EXPECT_EQ(*ids, record["ids"].get<std::vector<int32_t>>()) << context;
    absl::StatusOr<std::vector<int32_t>> with_special = tok.Encode(text, true);
    ASSERT_TRUE(with_special.ok()) << context << ": " << with_special.status();
    EXPECT_EQ(*with_special, golden_ids) << context;
    ++ids_checked;
  }
  // Every exclusion names a real corpus entry, and most entries are checked.
  EXPECT_EQ(differ_seen, differ.size());
  EXPECT_GE(ids_checked, 20u);
}

}  // namespace
}  // namespace litestage
