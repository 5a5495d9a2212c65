// ChatTemplate: the supported chat formats, rendered without a Jinja engine.
#include <filesystem>
#include <optional>
#include <system_error>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "engine/model/gguf.h"
#include "engine/tokenizer/gguf_tokenizer.h"
#include "engine/tokenizer/tokenizer.h"
#include "engine/util/json_util.h"
#include "engine/util/mapped_file.h"
#include "engine/util/status_macros.h"

namespace litestage {
namespace {

using nlohmann::json;

constexpr absl::string_view kImStart = "<|im_start|>";
constexpr absl::string_view kImEnd = "<|im_end|>";

// The literal text of a Jinja string between "<|im_start|>system\n" and
// "<|im_end|>" (the default system prompt), if some occurrence is one plain
// literal. Templates write the newline either raw or as the escape "\n".
std::optional<std::string> ExtractDefaultSystemPrompt(absl::string_view text) {
  const std::string header = absl::StrCat(kImStart, "system");
  size_t pos = text.find(header);
  while (pos != absl::string_view::npos) {
    size_t start = pos + header.size();
    absl::string_view rest = text.substr(start);
    size_t skip = absl::StartsWith(rest, "\\n")  ? 2
                  : absl::StartsWith(rest, "\n") ? 1
                                                 : 0;
    const size_t end =
        skip > 0 ? rest.find(kImEnd, skip) : absl::string_view::npos;
    if (end != absl::string_view::npos) {
      absl::string_view body = rest.substr(skip, end - skip);
      std::string out;
      bool plain = !body.empty();
      for (size_t i = 0; plain && i < body.size(); ++i) {
        const char c = body[i];
        if (c == '\'' || c == '"' || c == '{' || c == '}') {
          plain = false;  // Leaves the string literal: not a constant prompt.
        } else if (c == '\\' && i + 1 < body.size()) {
          const char e = body[++i];
          out.push_back(e == 'n' ? '\n' : e == 't' ? '\t' : e);
        } else {
          out.push_back(c);
        }
      }
      if (plain) return out;
    }
    pos = text.find(header, pos + 1);
  }
  return std::nullopt;
}

// Python str.strip() for the whitespace templates meet.
absl::string_view StripWhitespace(absl::string_view text) {
  constexpr absl::string_view kSpace = " \t\n\r\v\f";
  const size_t begin = text.find_first_not_of(kSpace);
  if (begin == absl::string_view::npos) return absl::string_view();
  const size_t end = text.find_last_not_of(kSpace);
  return text.substr(begin, end - begin + 1);
}

}  // namespace

absl::StatusOr<ChatTemplate> ChatTemplate::FromTemplateText(
    absl::string_view template_text, std::string bos_token,
    std::string eos_token) {
  Style style;
  if (absl::StrContains(template_text, kImStart)) {
    style = Style::kChatML;
  } else if (absl::StrContains(template_text, "<|user|>")) {
    style = Style::kZephyr;
  } else if (absl::StrContains(template_text, "[INST]")) {
    style = Style::kLlama2;
  } else {
    return absl::UnimplementedError(
        "chat template is none of ChatML, Zephyr or Llama-2 [INST]");
  }
  ChatTemplate result(style, std::move(bos_token), std::move(eos_token));
  if (style == Style::kChatML) {
    result.set_default_system_prompt(
        ExtractDefaultSystemPrompt(template_text).value_or(std::string()));
  }
  return result;
}

absl::StatusOr<ChatTemplate> ChatTemplate::FromModelDir(
    const std::string& model_dir) {
  if (IsGgufPath(model_dir)) {
    LS_ASSIGN_OR_RETURN(const GgufFile file, GgufFile::Open(model_dir));
    return LoadGgufChatTemplate(file);
  }
  const std::string config_path = model_dir + "/tokenizer_config.json";
  const std::string jinja_path = model_dir + "/chat_template.jinja";
  std::error_code error;
  json config = json::object();
  // exists, not is_regular_file: a FIFO or directory here is an error the
  // reader reports, not a missing file.
  if (std::filesystem::exists(config_path, error)) {
    LS_ASSIGN_OR_RETURN(config,
                        ReadJsonFile(config_path, kMaxMetadataFileBytes));
    if (!config.is_object()) {
      return absl::InvalidArgumentError(
          absl::StrCat(config_path, ": top level is not an object"));
    }
  }
  std::string template_text;
  auto it = config.find("chat_template");
  if (it != config.end() && it->is_string()) {
    template_text = it->get<std::string>();
  } else if (it != config.end() && it->is_array()) {
    // [{"name": ..., "template": ...}]: "default" wins, else the first.
    for (const json& entry : *it) {
      if (!entry.is_object()) continue;
      LS_ASSIGN_OR_RETURN(std::string name,
                          JsonString(entry, "name", config_path, ""));
      LS_ASSIGN_OR_RETURN(std::string text,
                          JsonString(entry, "template", config_path, ""));
      if (template_text.empty() || name == "default") template_text = text;
    }
  } else if (it != config.end() && !it->is_null()) {
    return absl::InvalidArgumentError(absl::StrCat(
        config_path, ": \"chat_template\" is neither a string nor a list"));
  }
  if (template_text.empty() &&
      std::filesystem::is_regular_file(jinja_path, error)) {
    LS_ASSIGN_OR_RETURN(template_text, ReadFileToString(jinja_path));
  }
  if (template_text.empty()) {
    return absl::NotFoundError(
        absl::StrCat(model_dir, ": model has no chat template"));
  }
  auto token = [&](const char* key) -> std::string {
    auto found = config.find(key);
    if (found == config.end()) return std::string();
    if (found->is_string()) return found->get<std::string>();
    if (found->is_object()) {
      auto content = found->find("content");
      if (content != found->end() && content->is_string())
        return content->get<std::string>();
    }
    return std::string();
  };
  absl::StatusOr<ChatTemplate> result =
      FromTemplateText(template_text, token("bos_token"), token("eos_token"));
  if (!result.ok()) {
    return absl::Status(
        result.status().code(),
        absl::StrCat(config_path, ": ", result.status().message()));
  }
  return result;
}

std::string ChatTemplate::Render(absl::Span<const ChatMessage> messages,
                                 bool add_generation_prompt,
                                 std::vector<TextRange>* content_ranges) const {
  std::string out;
  // Appends message text, recording where it lies.
  auto content = [&](absl::string_view text) {
    if (content_ranges != nullptr && !text.empty()) {
      content_ranges->push_back({out.size(), out.size() + text.size()});
    }
    out.append(text.data(), text.size());
  };
  switch (style_) {
    case Style::kChatML:
      if (!default_system_prompt_.empty() && !messages.empty() &&
          messages[0].role != "system") {
        absl::StrAppend(&out, kImStart, "system\n", default_system_prompt_,
                        kImEnd, "\n");
      }
      for (const ChatMessage& message : messages) {
        absl::StrAppend(&out, kImStart, message.role, "\n");
        content(message.content);
        absl::StrAppend(&out, kImEnd, "\n");
      }
      if (add_generation_prompt) absl::StrAppend(&out, kImStart, "assistant\n");
      break;
    case Style::kZephyr:
      for (const ChatMessage& message : messages) {
        if (message.role == "user" || message.role == "system" ||
            message.role == "assistant") {
          absl::StrAppend(&out, "<|", message.role, "|>\n");
          content(message.content);
          absl::StrAppend(&out, eos_token_, "\n");
        }
      }
      if (add_generation_prompt && !messages.empty())
        absl::StrAppend(&out, "<|assistant|>\n");
      break;
    case Style::kLlama2: {
      // The system message is folded into the first user turn; the template
      // has no generation prompt.
      size_t first = 0;
      std::optional<std::string> system;
      if (!messages.empty() && messages[0].role == "system") {
        system = messages[0].content;
        first = 1;
      }
      for (size_t i = first; i < messages.size(); ++i) {
        std::string text = messages[i].content;
        if (i == first && system.has_value()) {
          text = absl::StrCat("<<SYS>>\n", *system, "\n<</SYS>>\n\n", text);
        }
        if (messages[i].role == "user") {
          absl::StrAppend(&out, bos_token_, "[INST] ");
          content(StripWhitespace(text));
          absl::StrAppend(&out, " [/INST]");
        } else if (messages[i].role == "assistant") {
          absl::StrAppend(&out, " ");
          content(StripWhitespace(text));
          absl::StrAppend(&out, " ", eos_token_);
        }
      }
      break;
    }
  }
  return out;
}

}  // namespace litestage
