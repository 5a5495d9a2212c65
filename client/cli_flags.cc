// Every flag of litestage-cli with its help (docs/client.md). Flags are
// global to the binary; each subcommand reads the ones its help names.
#include "client/cli_flags.h"

#include <cstdint>
#include <string>
#include <vector>

#include "absl/flags/flag.h"

// Connection (every subcommand).
ABSL_FLAG(std::string, target, "localhost:50051",
          "Server address: host:port, or dns:///name:port to balance "
          "round_robin across every address the name resolves to");
ABSL_FLAG(double, timeout, 300.0, "Deadline of each RPC, seconds");
ABSL_FLAG(bool, tls, false, "Connect with TLS (system root certificates)");
ABSL_FLAG(std::string, tls_ca, "",
          "PEM file of root certificates to trust (implies --tls)");
ABSL_FLAG(std::string, tls_server_name, "",
          "Server name to verify the certificate against, overriding the "
          "target's host (implies --tls)");
ABSL_FLAG(bool, json, false,
          "Print the response as JSON (proto field names; stream: one line "
          "per event; bench: one report object)");

// reason, stream, bench.
ABSL_FLAG(std::string, question, "", "Question (reason, stream)");
ABSL_FLAG(std::string, choices, "",
          "Answer choices separated by '|'; empty: the pipeline's defaults");
ABSL_FLAG(std::string, pipeline, "",
          "Pipeline name; empty: the server's default (profiles: only "
          "profiles usable with this pipeline)");
ABSL_FLAG(std::string, profile, "",
          "Skip profile name (full, even:K, last:K, or one the server "
          "loaded); empty: the server's default");
ABSL_FLAG(int64_t, early_exit_window, -1,
          "Early-exit window for every stage, replacing the profile's; 0 "
          "disables early exit, -1 keeps the profile's settings");
ABSL_FLAG(double, early_exit_threshold, 0.0,
          "Early-exit threshold (with --early-exit-window)");
ABSL_FLAG(std::string, early_exit_confidence, "",
          "Early-exit confidence: max_prob (default) or max_logit");
ABSL_FLAG(int64_t, early_exit_min_tokens, 0,
          "Tokens every stage keeps before early exit may fire");
ABSL_FLAG(int64_t, max_new_tokens, 0,
          "reason/stream/bench: caps every stage's max_new_tokens; generate: "
          "tokens to generate. 0: the pipeline's or the server's default");
ABSL_FLAG(double, temperature, 0.0, "Sampling temperature; 0 is greedy");
ABSL_FLAG(int32_t, top_k, 0, "Sample among the K most likely; 0 disables");
ABSL_FLAG(double, top_p, 0.0, "Nucleus mass in (0, 1]; 0 or 1 disables");
ABSL_FLAG(uint64_t, seed, 0, "Sampling seed");
ABSL_FLAG(std::string, request_id, "",
          "Request id echoed by the server; empty: the server makes one");

// generate.
ABSL_FLAG(std::string, prompt, "", "Prompt (generate)");
ABSL_FLAG(bool, chat, false,
          "generate: format the prompt as one user turn of the chat template");
ABSL_FLAG(std::vector<std::string>, stop, {},
          "generate: comma-separated stop strings");
ABSL_FLAG(std::string, stage, "",
          "generate: the profile stage whose skip set and early exit apply");
ABSL_FLAG(bool, split_special_tokens, false,
          "generate: encode special-token text in a raw prompt as plain text "
          "(chat prompts always are)");
ABSL_FLAG(bool, stream, false,
          "generate: use GenerateStream and print tokens as they arrive");

// health.
ABSL_FLAG(std::string, service, "litestage.v1.LiteStage",
          "health: service to check; \"\" is the server's liveness");

// bench.
ABSL_FLAG(int32_t, concurrency, 1, "bench: concurrent client threads");
ABSL_FLAG(int64_t, requests, 0,
          "bench: requests to send in all; 0 with --duration 0 sends 16");
ABSL_FLAG(double, duration, 0.0,
          "bench: seconds to keep sending (with --requests: whichever ends "
          "first)");
ABSL_FLAG(std::string, questions, "",
          "bench: question file (OBQA/CSQA JSONL, StrategyQA JSON, or JSONL "
          "of {question, choices}); empty: built-in questions");
ABSL_FLAG(int64_t, questions_limit, 0,
          "bench: use the first N questions of --questions; 0: all");
ABSL_FLAG(std::string, method, "reason",
          "bench: RPC to load: reason or generate (the question as prompt)");
ABSL_FLAG(bool, allow_errors, false,
          "bench: exit 0 even when some requests failed");
