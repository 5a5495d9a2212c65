#include "server/wire.h"

#include <atomic>
#include <chrono>
#include <map>
#include <memory>
#include <mutex>
#include <vector>

#include "absl/strings/str_cat.h"
#include "engine/tokenizer/unicode.h"
#include "engine/util/check.h"
#include "google/protobuf/descriptor.h"
#include "google/protobuf/descriptor.pb.h"
#include "google/protobuf/dynamic_message.h"
#include "google/protobuf/stubs/logging.h"

namespace litestage {
namespace {

using google::protobuf::Descriptor;
using google::protobuf::DescriptorPool;
using google::protobuf::DescriptorProto;
using google::protobuf::FieldDescriptor;
using google::protobuf::FieldDescriptorProto;
using google::protobuf::FileDescriptor;
using google::protobuf::FileDescriptorProto;
using google::protobuf::Message;
using google::protobuf::Reflection;

std::string Flatten(const grpc::ByteBuffer& bytes) {
  grpc::Slice slice;
  // Fails only on an empty (null) buffer, which is an empty message.
  if (!bytes.DumpToSingleSlice(&slice).ok()) return std::string();
  return std::string(reinterpret_cast<const char*>(slice.begin()),
                     slice.size());
}

bool IsValidUtf8(const std::string& text) {
  return unicode::RepairUtf8(text) == text;
}

void MakeStringsBytes(DescriptorProto* message) {
  for (FieldDescriptorProto& field : *message->mutable_field()) {
    if (field.type() == FieldDescriptorProto::TYPE_STRING) {
      field.set_type(FieldDescriptorProto::TYPE_BYTES);
    }
  }
  for (DescriptorProto& nested : *message->mutable_nested_type()) {
    MakeStringsBytes(&nested);
  }
}

// Copies of proto files in which every string field is bytes: the same wire
// format, parsed without UTF-8 checks, so the offending field can be named.
class BytesTwins {
 public:
  static BytesTwins& Get() {
    static BytesTwins* twins = new BytesTwins();
    return *twins;
  }

  // A twin of `original`'s type, or null when its file cannot be copied
  // (it imports others).
  std::unique_ptr<Message> New(const Descriptor* original) {
    std::lock_guard<std::mutex> lock(mutex_);
    const FileDescriptor* file = original->file();
    auto it = files_.find(file);
    if (it == files_.end()) {
      const FileDescriptor* twin = nullptr;
      if (file->dependency_count() == 0) {
        FileDescriptorProto proto;
        file->CopyTo(&proto);
        proto.clear_service();
        for (DescriptorProto& message : *proto.mutable_message_type()) {
          MakeStringsBytes(&message);
        }
        twin = pool_.BuildFile(proto);
      }
      it = files_.emplace(file, twin).first;
    }
    if (it->second == nullptr) return nullptr;
    const Descriptor* type = pool_.FindMessageTypeByName(original->full_name());
    if (type == nullptr) return nullptr;
    return std::unique_ptr<Message>(factory_.GetPrototype(type)->New());
  }

 private:
  BytesTwins() = default;

  std::mutex mutex_;
  DescriptorPool pool_;
  google::protobuf::DynamicMessageFactory factory_{&pool_};
  std::map<const FileDescriptor*, const FileDescriptor*> files_;
};

// The path of the first field of `twin` (a BytesTwins copy of `original`)
// that `original` declares a string and that holds invalid UTF-8; "" if none.
std::string FindInvalidUtf8(const Message& twin, const Descriptor* original,
                            const std::string& prefix) {
  const Reflection* reflection = twin.GetReflection();
  std::vector<const FieldDescriptor*> fields;
  reflection->ListFields(twin, &fields);
  for (const FieldDescriptor* field : fields) {
    const FieldDescriptor* declared =
        original->FindFieldByNumber(field->number());
    if (declared == nullptr) continue;
    const std::string name = absl::StrCat(prefix, declared->name());
    if (declared->type() == FieldDescriptor::TYPE_STRING) {
      if (field->is_repeated()) {
        for (int i = 0; i < reflection->FieldSize(twin, field); ++i) {
          if (!IsValidUtf8(reflection->GetRepeatedString(twin, field, i))) {
            return absl::StrCat(name, "[", i, "]");
          }
        }
      } else if (!IsValidUtf8(reflection->GetString(twin, field))) {
        return name;
      }
    } else if (declared->type() == FieldDescriptor::TYPE_MESSAGE) {
      if (field->is_repeated()) {
        for (int i = 0; i < reflection->FieldSize(twin, field); ++i) {
          std::string found = FindInvalidUtf8(
              reflection->GetRepeatedMessage(twin, field, i),
              declared->message_type(), absl::StrCat(name, "[", i, "]."));
          if (!found.empty()) return found;
        }
      } else {
        std::string found =
            FindInvalidUtf8(reflection->GetMessage(twin, field),
                            declared->message_type(), absl::StrCat(name, "."));
        if (!found.empty()) return found;
      }
    }
  }
  return "";
}

}  // namespace

absl::Status ParseRequest(const grpc::ByteBuffer& bytes, Message* message) {
  const std::string serialized = Flatten(bytes);
  if (message->ParseFromString(serialized)) return absl::OkStatus();
  const Descriptor* type = message->GetDescriptor();
  if (std::unique_ptr<Message> twin = BytesTwins::Get().New(type)) {
    if (twin->ParseFromString(serialized)) {
      const std::string field = FindInvalidUtf8(*twin, type, "");
      if (!field.empty()) {
        return absl::InvalidArgumentError(absl::StrCat(
            field, ": not valid UTF-8 (string fields must be UTF-8 text)"));
      }
    }
  }
  return absl::InvalidArgumentError(
      absl::StrCat("request: ", serialized.size(),
                   " bytes that are not a valid ", type->full_name(),
                   " message (malformed protobuf, or a string field that is "
                   "not valid UTF-8)"));
}

void SerializeResponse(const Message& message, grpc::ByteBuffer* bytes) {
  std::string serialized = message.SerializeAsString();
  grpc::Slice slice(std::move(serialized));
  grpc::ByteBuffer buffer(&slice, 1);
  bytes->Swap(&buffer);
}

std::string Abbreviate(absl::string_view text, size_t max_bytes) {
  if (text.size() <= max_bytes) return std::string(text);
  const size_t cut =
      unicode::CompleteUtf8PrefixLength(text.substr(0, max_bytes));
  return absl::StrCat(unicode::RepairUtf8(text.substr(0, cut)), "... (",
                      text.size(), " bytes)");
}

absl::Status CheckFieldSize(absl::string_view field, absl::string_view value,
                            size_t max_bytes) {
  if (value.size() <= max_bytes) return absl::OkStatus();
  return absl::InvalidArgumentError(absl::StrCat(
      field, ": ", value.size(), " bytes, over the limit of ", max_bytes));
}

namespace {

std::mutex log_mutex;
std::chrono::steady_clock::time_point last_log_line;  // Guarded by log_mutex.
int64_t suppressed_log_lines = 0;                     // Guarded by log_mutex.

void RateLimitedProtobufLog(google::protobuf::LogLevel level,
                            const char* filename, int line,
                            const std::string& message) {
  // ParseRequest answers these itself (INVALID_ARGUMENT naming the field,
  // counted in litestage_requests_total): one client must not fill the log.
  if (message.find("invalid UTF-8 data when parsing") != std::string::npos) {
    return;
  }
  const auto now = std::chrono::steady_clock::now();
  int64_t suppressed = 0;
  {
    std::lock_guard<std::mutex> lock(log_mutex);
    if (now - last_log_line < std::chrono::seconds(1)) {
      ++suppressed_log_lines;
      return;
    }
    last_log_line = now;
    suppressed = suppressed_log_lines;
    suppressed_log_lines = 0;
  }
  const std::string text = absl::StrCat(
      "libprotobuf ", filename, ":", line, ": ", Abbreviate(message, 512),
      suppressed > 0 ? absl::StrCat(" (", suppressed, " similar lines dropped)")
                     : "");
  if (level >= google::protobuf::LOGLEVEL_ERROR) {
    LS_LOG(ERROR) << text;
  } else {
    LS_LOG(WARNING) << text;
  }
}

}  // namespace

void InstallProtobufLogHandler() {
  static std::once_flag once;
  std::call_once(
      once, [] { google::protobuf::SetLogHandler(&RateLimitedProtobufLog); });
}

}  // namespace litestage
