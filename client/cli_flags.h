// The flags of litestage-cli, declared for the files of its subcommands
// (defined in cli_flags.cc, where --help finds them).
#ifndef LITESTAGE_CLIENT_CLI_FLAGS_H_
#define LITESTAGE_CLIENT_CLI_FLAGS_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/flags/declare.h"

ABSL_DECLARE_FLAG(std::string, target);
ABSL_DECLARE_FLAG(double, timeout);
ABSL_DECLARE_FLAG(bool, tls);
ABSL_DECLARE_FLAG(std::string, tls_ca);
ABSL_DECLARE_FLAG(std::string, tls_server_name);
ABSL_DECLARE_FLAG(bool, json);
ABSL_DECLARE_FLAG(std::string, question);
ABSL_DECLARE_FLAG(std::string, choices);
ABSL_DECLARE_FLAG(std::string, pipeline);
ABSL_DECLARE_FLAG(std::string, profile);
ABSL_DECLARE_FLAG(int64_t, early_exit_window);
ABSL_DECLARE_FLAG(double, early_exit_threshold);
ABSL_DECLARE_FLAG(std::string, early_exit_confidence);
ABSL_DECLARE_FLAG(int64_t, early_exit_min_tokens);
ABSL_DECLARE_FLAG(int64_t, max_new_tokens);
ABSL_DECLARE_FLAG(double, temperature);
ABSL_DECLARE_FLAG(int32_t, top_k);
ABSL_DECLARE_FLAG(double, top_p);
ABSL_DECLARE_FLAG(uint64_t, seed);
ABSL_DECLARE_FLAG(std::string, request_id);
ABSL_DECLARE_FLAG(std::string, prompt);
ABSL_DECLARE_FLAG(bool, chat);
ABSL_DECLARE_FLAG(std::vector<std::string>, stop);
ABSL_DECLARE_FLAG(std::string, stage);
ABSL_DECLARE_FLAG(bool, split_special_tokens);
ABSL_DECLARE_FLAG(bool, stream);
ABSL_DECLARE_FLAG(std::string, service);
ABSL_DECLARE_FLAG(int32_t, concurrency);
ABSL_DECLARE_FLAG(int64_t, requests);
ABSL_DECLARE_FLAG(double, duration);
ABSL_DECLARE_FLAG(std::string, questions);
ABSL_DECLARE_FLAG(int64_t, questions_limit);
ABSL_DECLARE_FLAG(std::string, method);
ABSL_DECLARE_FLAG(bool, allow_errors);

#endif  // LITESTAGE_CLIENT_CLI_FLAGS_H_
