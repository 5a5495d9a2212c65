// Tokenizers against Hugging Face goldens (tests/golden/tokenizers, made by
// tests/reference/make_tokenizer_golden.py): ids, decoded text, incremental
// detokenization and chat templates; plus errors for malformed inputs.
#include "engine/tokenizer/tokenizer.h"

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "engine/tokenizer/pretokenize.h"
#include "engine/tokenizer/unicode.h"
#include "engine/util/json_util.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/common/scoped_temp_dir.h"

namespace litestage {
namespace {

using nlohmann::json;
using ::testing::AllOf;
using ::testing::ElementsAre;
using ::testing::HasSubstr;

const std::string kGoldenDir =
    std::string(LITESTAGE_TEST_DATA_DIR) + "/golden/tokenizers";

json ReadGolden(const std::string& path) {
  absl::StatusOr<json> golden = ReadJsonFile(path);
  EXPECT_TRUE(golden.ok()) << golden.status();
  return golden.ok() ? *golden : json::object();
}

std::vector<int32_t> Ids(const json& array) {
  return array.get<std::vector<int32_t>>();
}

std::string Escaped(const std::string& text) { return json(text).dump(); }

// True when `text` is valid UTF-8 that does not end inside a character.
bool IsCompleteUtf8(const std::string& text) {
  return unicode::RepairUtf8(text) == text &&
         unicode::CompleteUtf8PrefixLength(text) == text.size();
}

// Streams `ids` through an IncrementalDetokenizer; every piece must be whole
// UTF-8 characters, and the pieces must add up to Decode().
void ExpectIncrementalMatchesDecode(const Tokenizer& tokenizer,
                                    const std::vector<int32_t>& ids, bool skip,
                                    const std::string& context) {
  IncrementalDetokenizer detokenizer(&tokenizer, skip);
  std::string streamed;
  for (int32_t id : ids) {
    const std::string piece = detokenizer.Push(id);
    EXPECT_TRUE(IsCompleteUtf8(piece)) << context << " id " << id;
    streamed += piece;
  }
  streamed += detokenizer.Flush();
  EXPECT_EQ(streamed, tokenizer.Decode(ids, skip))
      << context << " skip=" << skip;
}

// Checks every corpus entry of an encodings.json against `tokenizer`.
void CheckEncodings(const Tokenizer& tokenizer, const json& golden) {
  ASSERT_TRUE(golden.contains("encodings"));
  ASSERT_GT(golden["encodings"].size(), 20u);
  for (const json& record : golden["encodings"]) {
    const std::string text = record["text"].get<std::string>();
    const std::string context =
        golden["tokenizer"].get<std::string>() + " " + Escaped(text);
    absl::StatusOr<std::vector<int32_t>> ids = tokenizer.Encode(text, false);
    ASSERT_TRUE(ids.ok()) << context << ": " << ids.status();
    EXPECT_EQ(*ids, Ids(record["ids"])) << context;
    absl::StatusOr<std::vector<int32_t>> with_special =
        tokenizer.Encode(text, true);
    ASSERT_TRUE(with_special.ok()) << context << ": " << with_special.status();
    const std::vector<int32_t> golden_ids = Ids(record["ids_with_special"]);
    EXPECT_EQ(*with_special, golden_ids) << context;
    EXPECT_EQ(tokenizer.Decode(golden_ids, false),
              record["decode"].get<std::string>())
        << context;
    EXPECT_EQ(tokenizer.Decode(golden_ids, true),
              record["decode_skip_special"].get<std::string>())
        << context;
    ExpectIncrementalMatchesDecode(tokenizer, golden_ids, false, context);
    ExpectIncrementalMatchesDecode(tokenizer, golden_ids, true, context);
  }
}

std::vector<ChatMessage> Messages(const json& array) {
  std::vector<ChatMessage> messages;
  for (const json& m : array) {
    messages.push_back(
        {m["role"].get<std::string>(), m["content"].get<std::string>()});
  }
  return messages;
}

// Every "chat" record renders exactly as transformers' apply_chat_template.
void CheckChat(const json& golden, size_t expected_records) {
  ASSERT_EQ(golden["chat"].size(), expected_records);
  for (const json& record : golden["chat"]) {
    absl::StatusOr<ChatTemplate> chat =
        ChatTemplate::FromTemplateText(record["template"].get<std::string>(),
                                       record["bos_token"].get<std::string>(),
                                       record["eos_token"].get<std::string>());
    ASSERT_TRUE(chat.ok()) << chat.status();
    EXPECT_EQ(chat->Render(Messages(record["messages"]),
                           record["add_generation_prompt"].get<bool>()),
              record["text"].get<std::string>())
        << record["template_name"] << " " << record["messages"].dump();
  }
}

class GoldenTokenizerTest : public ::testing::TestWithParam<std::string> {};

TEST_P(GoldenTokenizerTest, MatchesTransformers) {
  const std::string dir = kGoldenDir + "/" + GetParam();
  absl::StatusOr<std::unique_ptr<Tokenizer>> tokenizer = LoadTokenizer(dir);
  ASSERT_TRUE(tokenizer.ok()) << tokenizer.status();
  CheckEncodings(**tokenizer, ReadGolden(dir + "/encodings.json"));
}

INSTANTIATE_TEST_SUITE_P(All, GoldenTokenizerTest,
                         ::testing::Values("bytelevel", "metaspace",
                                           "metaspace_pre"));

TEST(TokenizerTest, ByteLevelSpecialIds) {
  absl::StatusOr<std::unique_ptr<Tokenizer>> tokenizer =
      LoadTokenizer(kGoldenDir + "/bytelevel");
  ASSERT_TRUE(tokenizer.ok()) << tokenizer.status();
  const Tokenizer& tok = **tokenizer;
  EXPECT_EQ(tok.bos_id(), -1);
  EXPECT_THAT(tok.eos_ids(), ElementsAre(tok.TokenToId("<|im_end|>")));
  EXPECT_EQ(tok.TokenToId("<|im_start|>"), 1);
  EXPECT_TRUE(tok.IsSpecial(1));
  // <tool_call> is an added token but not special: kept when skipping.
  const int32_t tool_call = tok.TokenToId("<tool_call>");
  ASSERT_GE(tool_call, 0);
  EXPECT_FALSE(tok.IsSpecial(tool_call));
  EXPECT_EQ(tok.Decode({tool_call}, true), "<tool_call>");
  EXPECT_EQ(tok.TokenToId("no such token"), -1);
  EXPECT_EQ(tok.vocab_size(), 642);
  EXPECT_FALSE(tok.StripsLeadingSpace());
}

TEST(TokenizerTest, MetaspaceSpecialIds) {
  absl::StatusOr<std::unique_ptr<Tokenizer>> tokenizer =
      LoadTokenizer(kGoldenDir + "/metaspace");
  ASSERT_TRUE(tokenizer.ok()) << tokenizer.status();
  EXPECT_EQ((*tokenizer)->bos_id(), 1);
  EXPECT_THAT((*tokenizer)->eos_ids(), ElementsAre(2));
  EXPECT_TRUE((*tokenizer)->StripsLeadingSpace());
  EXPECT_EQ((*tokenizer)->TokenToId("<0x0A>"), 3 + 0x0A);
}

// The hand-written GPT-2 / Qwen2 / Llama-3 regex splitters against the
// `tokenizers` library's Split pre-tokenizer.
TEST(PreTokenizeTest, SplittersMatchRegexes) {
  const json golden = ReadGolden(kGoldenDir + "/splits.json");
  ASSERT_EQ(golden.size(), 3u);
  for (const auto& [name, entry] : golden.items()) {
    std::optional<SplitPattern> pattern =
        RecognizeSplitRegex(entry["regex"].get<std::string>());
    ASSERT_TRUE(pattern.has_value()) << name;
    EXPECT_EQ(SplitRegexText(*pattern), entry["regex"].get<std::string>());
    ASSERT_GT(entry["cases"].size(), 30u);
    for (const json& record : entry["cases"]) {
      const std::string text = record["text"].get<std::string>();
      std::vector<std::string> pieces;
      for (absl::string_view piece : SplitWithPattern(text, *pattern)) {
        pieces.emplace_back(piece);
      }
      EXPECT_EQ(pieces, record["pieces"].get<std::vector<std::string>>())
          << name << " " << Escaped(text);
    }
  }
}

TEST(PreTokenizeTest, Digits) {
  std::vector<absl::string_view> grouped = SplitDigits("ab123c4", false);
  EXPECT_THAT(grouped, ElementsAre("ab", "123", "c", "4"));
  std::vector<absl::string_view> single = SplitDigits("ab123c4", true);
  EXPECT_THAT(single, ElementsAre("ab", "1", "2", "3", "c", "4"));
}

TEST(TokenizerTest, InvalidUtf8IsAnError) {
  absl::StatusOr<std::unique_ptr<Tokenizer>> tokenizer =
      LoadTokenizer(kGoldenDir + "/bytelevel");
  ASSERT_TRUE(tokenizer.ok()) << tokenizer.status();
  EXPECT_EQ((*tokenizer)->Encode("ab\xF0\x9F", false).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(IncrementalDetokenizerTest, HoldsPartialCharacters) {
  absl::StatusOr<std::unique_ptr<Tokenizer>> tokenizer =
      LoadTokenizer(kGoldenDir + "/metaspace");
  ASSERT_TRUE(tokenizer.ok()) << tokenizer.status();
  const Tokenizer& tok = **tokenizer;
  // "🦀" is not in this vocabulary: it encodes as four byte-fallback tokens.
  absl::StatusOr<std::vector<int32_t>> ids = tok.Encode("a🦀", false);
  ASSERT_TRUE(ids.ok()) << ids.status();
  ASSERT_EQ(ids->size(), 5u) << ::testing::PrintToString(*ids);
  EXPECT_EQ((*ids)[1], tok.TokenToId("<0xF0>"));
  IncrementalDetokenizer detokenizer(&tok, true);
  EXPECT_EQ(detokenizer.Push((*ids)[0]), "a");  // "▁a" loses its space.
  EXPECT_EQ(detokenizer.Push((*ids)[1]), "");
  EXPECT_EQ(detokenizer.Push((*ids)[2]), "");
  EXPECT_EQ(detokenizer.Push((*ids)[3]), "");
  EXPECT_EQ(detokenizer.Push((*ids)[4]), "🦀");
  EXPECT_EQ(detokenizer.Flush(), "");
  // A character cut short is completed with U+FFFD by Flush.
  IncrementalDetokenizer cut(&tok, true);
  EXPECT_EQ(cut.Push((*ids)[1]), "");
  EXPECT_EQ(cut.Push((*ids)[2]), "");
  EXPECT_EQ(cut.Flush(), "\xEF\xBF\xBD");
  // An invalid byte is replaced at once.
  IncrementalDetokenizer invalid(&tok, true);
  EXPECT_EQ(invalid.Push(tok.TokenToId("<0xFF>")), "\xEF\xBF\xBD");
}

TEST(ChatTemplateTest, ByteLevelGolden) {
  CheckChat(ReadGolden(kGoldenDir + "/bytelevel/encodings.json"), 12);
}

TEST(ChatTemplateTest, MetaspaceGolden) {
  CheckChat(ReadGolden(kGoldenDir + "/metaspace/encodings.json"), 12);
}

TEST(ChatTemplateTest, FromModelDir) {
  absl::StatusOr<ChatTemplate> chatml =
      ChatTemplate::FromModelDir(kGoldenDir + "/bytelevel");
  ASSERT_TRUE(chatml.ok()) << chatml.status();
  EXPECT_EQ(chatml->style(), ChatTemplate::Style::kChatML);
  EXPECT_EQ(
      chatml->default_system_prompt(),
      "You are Qwen, created by Alibaba Cloud. You are a helpful assistant.");
  absl::StatusOr<ChatTemplate> zephyr =
      ChatTemplate::FromModelDir(kGoldenDir + "/metaspace");
  ASSERT_TRUE(zephyr.ok()) << zephyr.status();
  EXPECT_EQ(zephyr->style(), ChatTemplate::Style::kZephyr);
  const std::vector<ChatMessage> messages = {{"user", "Hi"}};
  EXPECT_EQ(zephyr->Render(messages, true),
            "<|user|>\nHi</s>\n<|assistant|>\n");
  // A folder without a template is NotFound.
  const std::string empty =
      litestage::testing::ProcessTempDir().Child("tok_no_template");
  std::filesystem::create_directories(empty);
  EXPECT_EQ(ChatTemplate::FromModelDir(empty).status().code(),
            absl::StatusCode::kNotFound);
  EXPECT_EQ(
      ChatTemplate::FromTemplateText("{{ messages }}", "", "").status().code(),
      absl::StatusCode::kUnimplemented);
}

TEST(Stories260KTokenizerTest, MatchesSlowLlamaTokenizer) {
  const char* shared = std::getenv("LITESTAGE_SHARED");
  // Needs the shared model: fails, not skips, without it.
  ASSERT_NE(shared, nullptr) << "LITESTAGE_SHARED is not set";
  const std::string dir = std::string(shared) + "/models/stories260K";
  ASSERT_TRUE(std::filesystem::exists(dir + "/tokenizer.model"))
      << dir << " is missing (LITESTAGE_SHARED is set)";
  absl::StatusOr<std::unique_ptr<Tokenizer>> tokenizer = LoadTokenizer(dir);
  ASSERT_TRUE(tokenizer.ok()) << tokenizer.status();
  EXPECT_EQ((*tokenizer)->bos_id(), 1);
  EXPECT_THAT((*tokenizer)->eos_ids(), ElementsAre(2));
  EXPECT_EQ((*tokenizer)->vocab_size(), 512);
  EXPECT_TRUE((*tokenizer)->StripsLeadingSpace());
  CheckEncodings(**tokenizer,
                 ReadGolden(kGoldenDir + "/stories260K_encodings.json"));
}

TEST(ByteTokenizerTest, BytesAndSpecials) {
  std::unique_ptr<Tokenizer> tokenizer = MakeByteTokenizer(300);
  EXPECT_EQ(tokenizer->bos_id(), 256);
  EXPECT_THAT(tokenizer->eos_ids(), ElementsAre(257));
  absl::StatusOr<std::vector<int32_t>> ids = tokenizer->Encode("hé<s>", true);
  ASSERT_TRUE(ids.ok()) << ids.status();
  EXPECT_THAT(*ids, ElementsAre(256, 'h', 0xC3, 0xA9, 256));
  EXPECT_EQ(tokenizer->Decode(*ids, false), "<s>hé<s>");
  EXPECT_EQ(tokenizer->Decode(*ids, true), "hé");
  ExpectIncrementalMatchesDecode(*tokenizer, *ids, true, "byte");

  std::unique_ptr<Tokenizer> small = MakeByteTokenizer(128);
  EXPECT_EQ(small->bos_id(), -1);
  EXPECT_TRUE(small->Encode("abc", true).ok());
  EXPECT_EQ(small->Encode("é", false).status().code(),
            absl::StatusCode::kInvalidArgument);
}

// Writes `files` (name -> contents) into a fresh folder under TempDir.
std::string MakeModelDir(
    const std::string& name,
    const std::vector<std::pair<std::string, std::string>>& files) {
  // Removed with the process's scratch directory at exit.
  const std::string dir =
      litestage::testing::ProcessTempDir().Child("tok_" + name);
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  for (const auto& [file, contents] : files) {
    std::ofstream(dir + "/" + file, std::ios::binary) << contents;
  }
  return dir;
}

absl::Status LoadStatus(const std::string& name,
                        const std::string& tokenizer_json) {
  return LoadTokenizer(MakeModelDir(name, {{"tokenizer.json", tokenizer_json}}))
      .status();
}

constexpr char kDecoder[] = R"("decoder": {"type": "ByteLevel"})";

TEST(TokenizerErrorTest, MalformedTokenizerJson) {
  absl::Status bad_json = LoadStatus("bad_json", "{\"model\": {");
  EXPECT_EQ(bad_json.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(bad_json.message(), HasSubstr("tokenizer.json"));

  absl::Status no_model =
      LoadStatus("no_model", std::string("{") + kDecoder + "}");
  EXPECT_EQ(no_model.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(no_model.message(), HasSubstr("model"));

  absl::Status word_piece = LoadStatus(
      "wordpiece",
      std::string(R"({"model": {"type": "WordPiece", "vocab": {}}, )") +
          kDecoder + "}");
  EXPECT_EQ(word_piece.code(), absl::StatusCode::kUnimplemented);
  EXPECT_THAT(word_piece.message(), HasSubstr("WordPiece"));

  absl::Status bad_merge = LoadStatus(
      "bad_merge",
      std::string(
          R"({"model": {"type": "BPE", "vocab": {"a": 0, "b": 1, "ab": 2},
                                "merges": ["a b", "a zz"]}, )") +
          kDecoder + "}");
  EXPECT_EQ(bad_merge.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(bad_merge.message(), HasSubstr("zz"));

  absl::Status bad_vocab = LoadStatus(
      "bad_vocab",
      std::string(
          R"({"model": {"type": "BPE", "vocab": {"a": "x"}, "merges": []}, )") +
          kDecoder + "}");
  EXPECT_EQ(bad_vocab.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(bad_vocab.message(), HasSubstr("\"a\""));

  absl::Status bad_regex = LoadStatus(
      "bad_regex",
      std::string(R"({"model": {"type": "BPE", "vocab": {"a": 0}, "merges": []},
          "pre_tokenizer": {"type": "Split", "pattern": {"Regex": "\\w+"},
                            "behavior": "Isolated"}, )") +
          kDecoder + "}");
  EXPECT_EQ(bad_regex.code(), absl::StatusCode::kUnimplemented);
}

TEST(TokenizerErrorTest, MissingOrEmptyDirectory) {
  EXPECT_EQ(LoadTokenizer("/nonexistent/litestage/model").status().code(),
            absl::StatusCode::kNotFound);
  EXPECT_EQ(LoadTokenizer(MakeModelDir("empty", {})).status().code(),
            absl::StatusCode::kNotFound);
}

TEST(TokenizerErrorTest, BadSentencePieceModel) {
  absl::Status status =
      LoadTokenizer(MakeModelDir("bad_sp", {{"tokenizer.model",
                                             "not a protobuf \x01\x02"}}))
          .status();
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(status.message(), HasSubstr("tokenizer.model"));
}

TEST(TokenizerErrorTest, UnknownBosTokenInConfig) {
  std::ifstream in(kGoldenDir + "/bytelevel/tokenizer.json");
  std::string tokenizer_json((std::istreambuf_iterator<char>(in)),
                             std::istreambuf_iterator<char>());
  absl::Status status =
      LoadTokenizer(MakeModelDir("bad_bos",
                                 {{"tokenizer.json", tokenizer_json},
                                  {"tokenizer_config.json",
                                   R"({"bos_token": {"content": "<nope>"}})"}}))
          .status();
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(status.message(), HasSubstr("<nope>"));
}

// File-type, size and nesting bounds on every tokenizer input; each error
// names the file and the reason.
class TokenizerFileLimitsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    for (const char* name : {"tokenizer.json", "tokenizer_config.json",
                             "special_tokens_map.json"}) {
      std::filesystem::copy(kGoldenDir + "/bytelevel/" + name,
                            dir_.Child(name));
    }
    ASSERT_TRUE(LoadTokenizer(dir_.path()).ok());
  }
  void ReplaceWithFifo(const std::string& name) {
    std::filesystem::remove(dir_.Child(name));
    testing::MakeFifo(dir_.Child(name));
  }
  std::string LoadError() {
    absl::StatusOr<std::unique_ptr<Tokenizer>> tokenizer =
        LoadTokenizer(dir_.path());
    EXPECT_FALSE(tokenizer.ok());
    return tokenizer.ok() ? "" : std::string(tokenizer.status().message());
  }
  testing::ScopedTempDir dir_{"litestage_tokenizer_limits"};
};

TEST_F(TokenizerFileLimitsTest, TokenizerJsonFifoSizeAndNesting) {
  ReplaceWithFifo("tokenizer.json");
  EXPECT_EQ(LoadError(),
            dir_.Child("tokenizer.json") + ": not a regular file (fifo)");
  std::filesystem::remove(dir_.Child("tokenizer.json"));
  testing::MakeSparseFile(dir_.Child("tokenizer.json"),
                          kMaxTokenizerFileBytes + 1);
  EXPECT_THAT(LoadError(), AllOf(HasSubstr(dir_.Child("tokenizer.json")),
                                 HasSubstr("over the limit of 134217728")));
  std::ofstream(dir_.Child("tokenizer.json"), std::ios::trunc)
      << "{\"model\": " << testing::NestedJsonArrays(100'000) << "}";
  EXPECT_THAT(LoadError(), AllOf(HasSubstr(dir_.Child("tokenizer.json")),
                                 HasSubstr("nesting deeper than 64")));
}

TEST_F(TokenizerFileLimitsTest, TokenizerConfigAndSpecialTokensMap) {
  ReplaceWithFifo("tokenizer_config.json");
  EXPECT_EQ(LoadError(), dir_.Child("tokenizer_config.json") +
                             ": not a regular file (fifo)");
  EXPECT_THAT(
      std::string(ChatTemplate::FromModelDir(dir_.path()).status().message()),
      HasSubstr("tokenizer_config.json: not a regular file (fifo)"));
  std::filesystem::remove(dir_.Child("tokenizer_config.json"));
  std::ofstream(dir_.Child("tokenizer_config.json"))
      << testing::NestedJsonArrays(kMaxJsonDepth + 1);
  EXPECT_THAT(LoadError(), HasSubstr("nesting deeper"));
  std::filesystem::remove(dir_.Child("tokenizer_config.json"));
  std::filesystem::create_directory(dir_.Child("special_tokens_map.json.d"));
  std::filesystem::remove(dir_.Child("special_tokens_map.json"));
  std::filesystem::create_symlink(dir_.Child("special_tokens_map.json.d"),
                                  dir_.Child("special_tokens_map.json"));
  EXPECT_EQ(LoadError(), dir_.Child("special_tokens_map.json") +
                             ": not a regular file (directory)");
}

}  // namespace
}  // namespace litestage
