// The bytes of the litestage.v1 RPCs and the bounds on what crosses them.
//
// The service takes requests as raw gRPC ByteBuffers and parses them here, so
// that a request protobuf refuses to parse (invalid UTF-8 in a string field,
// malformed bytes) is answered INVALID_ARGUMENT with a message naming the
// field, and counted like every other answer. With generated message types
// gRPC answers such a request UNIMPLEMENTED with an empty message before any
// handler runs, and libprotobuf logs an ERROR line per call.
//
// Everything a client sends is bounded (docs/server.md, "Limits"), and no
// message echoes client text unbounded: Abbreviate() cuts it.
#ifndef LITESTAGE_SERVER_WIRE_H_
#define LITESTAGE_SERVER_WIRE_H_

#include <cstddef>
#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "google/protobuf/message.h"
#include "grpcpp/support/byte_buffer.h"

namespace litestage {

// Bounds on request fields, in bytes of UTF-8 unless said otherwise. Why
// each value: docs/server.md, "Limits".
inline constexpr int64_t kMaxRequestBytes = 1 << 20;  // Whole message.
inline constexpr size_t kMaxRequestIdBytes = 128;     // request_id.
inline constexpr size_t kMaxNameBytes = 128;  // pipeline, profile, stage.
inline constexpr size_t kMaxQuestionBytes = 32 << 10;  // question.
inline constexpr size_t kMaxChoiceBytes = 4 << 10;     // each choice.
inline constexpr size_t kMaxPromptBytes = 256 << 10;   // Generate prompt.
inline constexpr int kMaxStopStrings = 16;             // Generate stop.
inline constexpr size_t kMaxStopBytes = 256;           // each stop string.
// What Abbreviate() keeps of client text quoted in a message.
inline constexpr size_t kMaxEchoBytes = 64;

// Parses `bytes` into `message`. InvalidArgument naming the field for a
// string field that is not valid UTF-8 ("choices[1]: not valid UTF-8"), or
// saying the bytes are not a `message` type at all.
absl::Status ParseRequest(const grpc::ByteBuffer& bytes,
                          google::protobuf::Message* message);

// Serializes `message` into `bytes`.
void SerializeResponse(const google::protobuf::Message& message,
                       grpc::ByteBuffer* bytes);

// `text` cut to at most `max_bytes` at a UTF-8 character boundary, with "..."
// and the original length appended when cut, for quoting client input in
// error messages and logs.
std::string Abbreviate(absl::string_view text,
                       size_t max_bytes = kMaxEchoBytes);

// InvalidArgument "field: N bytes, over the limit of M" when `value` is
// longer than `max_bytes`.
absl::Status CheckFieldSize(absl::string_view field, absl::string_view value,
                            size_t max_bytes);

// Routes libprotobuf's log lines through the server's log, at most one line
// per second (the rest counted and reported with the next one), and drops
// the "invalid UTF-8 when parsing" lines ParseRequest answers itself, so
// that malformed requests cannot flood the log. Idempotent.
void InstallProtobufLogHandler();

}  // namespace litestage

#endif  // LITESTAGE_SERVER_WIRE_H_
