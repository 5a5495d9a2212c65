// ServerMetrics: exact values after known observations, bounded labels,
// and the text checked by two independent parsers (promtool and the Python
// prometheus_client); StartMetricsServer serving /metrics over HTTP and
// failing with a Status (not a crash) on a taken port. The HTTP server's
// limits are tested in metrics_http_test.cc.
#include "server/metrics.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <map>
#include <sstream>
#include <string>
#include <utility>

#include "absl/status/status.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/common/run_command.h"
#include "tests/common/scoped_temp_dir.h"

namespace litestage {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

constexpr char kInstallHint[] =
    "run scripts/install-deps.sh (Debian packages prometheus, "
    "python3-prometheus-client)";

// "name{labels}" -> value for every sample line of the text format.
std::map<std::string, double> ParseSamples(const std::string& text) {
  std::map<std::string, double> samples;
  std::istringstream lines(text);
  std::string line;
  while (std::getline(lines, line)) {
    if (line.empty() || line[0] == '#') continue;
    const size_t space = line.rfind(' ');
    EXPECT_NE(space, std::string::npos) << "malformed sample line: " << line;
    if (space == std::string::npos) continue;
    samples[line.substr(0, space)] = std::stod(line.substr(space + 1));
  }
  return samples;
}

using ::litestage::testing::CommandResult;
using ::litestage::testing::RunCommand;

std::string WriteTempFile(const std::string& name, const std::string& text) {
  // Removed with the process's scratch directory at exit.
  const std::string path = litestage::testing::ProcessTempDir().path() +
                           "/metrics_test_" + std::to_string(getpid()) + "_" +
                           name;
  std::ofstream out(path, std::ios::binary);
  out << text;
  EXPECT_TRUE(out.good()) << "cannot write " << path;
  return path;
}

const std::map<std::string, std::vector<std::string>> kPipelines = {
    {"tinythinker", {"recall", "analysis", "summary"}},
    {"direct", {"answer"}},
};

StageRecord RecallRecord() {
  StageRecord record;
  record.name = "recall";
  record.sublayers.attention_executed = 120;
  record.sublayers.attention_skipped = 24;
  record.sublayers.mlp_executed = 108;
  record.sublayers.mlp_skipped = 36;
  // Binary-exact values so sums compare exactly.
  record.seconds = 0.75;
  record.prefill_seconds = 0.25;
  record.decode_seconds = 0.5;
  record.early_exits = 2;
  record.generated_tokens = 30;
  record.prompt_tokens = 100;
  record.cached_prompt_tokens = 64;
  return record;
}

// The known set of observations the value tests check.
void ObserveKnownSet(ServerMetrics& metrics) {
  metrics.ObserveStage("tinythinker", RecallRecord());
  StageRecord recall2 = RecallRecord();
  recall2.seconds = 3;
  recall2.prefill_seconds = 1;
  recall2.decode_seconds = 2;
  recall2.early_exits = 0;
  metrics.ObserveStage("tinythinker", recall2);

  StageRecord analysis;
  analysis.name = "analysis";
  analysis.sublayers.attention_executed = 40;
  analysis.sublayers.mlp_executed = 40;
  analysis.seconds = 120;
  analysis.generated_tokens = 7;
  metrics.ObserveStage("tinythinker", analysis);

  metrics.SetStageSkipRatio("tinythinker", "recall", "even:4", 0.25);
  metrics.ObserveRequest("Reason", "OK", 0.5);
  metrics.ObserveRequest("Reason", "OK", 2);
  metrics.ObserveRequest("Reason", "INVALID_ARGUMENT", 0.001);
  metrics.ObserveTimeToFirstToken(0.02);
  metrics.ObserveInterTokenLatency(0.0625);
  metrics.ObserveInterTokenLatency(0.0625);
  metrics.ObserveBatchSize(3);
  metrics.SetQueueDepth(5);
  metrics.SetRequestsRunning(2);
  metrics.SetKvCacheUsage(0.5);
  metrics.SetPrefixCache(12, 3);
  metrics.SetPrefixCache(10, 5);  // Evictions are a running total.
}

class ServerMetricsTest : public ::testing::Test {
 protected:
  std::shared_ptr<prometheus::Registry> registry_ =
      std::make_shared<prometheus::Registry>();
  ServerMetrics metrics_{registry_, {"stories260K", "cpu", "f32"}, kPipelines};
};

TEST_F(ServerMetricsTest, ExactValuesAfterKnownObservations) {
  ObserveKnownSet(metrics_);
  const std::map<std::string, double> samples =
      ParseSamples(metrics_.Serialize());
  const std::map<std::string, double> expected = {
      {R"(litestage_sublayers_total{action="executed",kind="attention",pipeline="tinythinker",stage="recall"})",
       240},
      {R"(litestage_sublayers_total{action="skipped",kind="attention",pipeline="tinythinker",stage="recall"})",
       48},
      {R"(litestage_sublayers_total{action="executed",kind="mlp",pipeline="tinythinker",stage="recall"})",
       216},
      {R"(litestage_sublayers_total{action="skipped",kind="mlp",pipeline="tinythinker",stage="recall"})",
       72},
      {R"(litestage_sublayers_total{action="skipped",kind="mlp",pipeline="tinythinker",stage="analysis"})",
       0},
      {R"(litestage_sublayers_total{action="executed",kind="mlp",pipeline="tinythinker",stage="analysis"})",
       40},
      {R"(litestage_stage_early_exits_total{pipeline="tinythinker",stage="recall"})",
       2},
      {R"(litestage_stage_generated_tokens_total{pipeline="tinythinker",stage="recall"})",
       60},
      {R"(litestage_stage_generated_tokens_total{pipeline="tinythinker",stage="analysis"})",
       7},
      {R"(litestage_stage_latency_seconds_count{pipeline="tinythinker",stage="recall"})",
       2},
      {R"(litestage_stage_latency_seconds_sum{pipeline="tinythinker",stage="recall"})",
       3.75},
      {R"(litestage_stage_latency_seconds_bucket{pipeline="tinythinker",stage="recall",le="0.5"})",
       0},
      {R"(litestage_stage_latency_seconds_bucket{pipeline="tinythinker",stage="recall",le="1"})",
       1},
      {R"(litestage_stage_latency_seconds_bucket{pipeline="tinythinker",stage="recall",le="2.5"})",
       1},
      {R"(litestage_stage_latency_seconds_bucket{pipeline="tinythinker",stage="recall",le="5"})",
       2},
      {R"(litestage_stage_latency_seconds_bucket{pipeline="tinythinker",stage="recall",le="+Inf"})",
       2},
      {R"(litestage_stage_latency_seconds_bucket{pipeline="tinythinker",stage="analysis",le="100"})",
       0},
      {R"(litestage_stage_latency_seconds_bucket{pipeline="tinythinker",stage="analysis",le="250"})",
       1},
      {R"(litestage_stage_prefill_seconds_sum{pipeline="tinythinker",stage="recall"})",
       1.25},
      {R"(litestage_stage_decode_seconds_sum{pipeline="tinythinker",stage="recall"})",
       2.5},
      {R"(litestage_stage_skip_ratio{pipeline="tinythinker",profile="even:4",stage="recall"})",
       0.25},
      {R"(litestage_requests_total{code="OK",method="Reason"})", 2},
      {R"(litestage_requests_total{code="INVALID_ARGUMENT",method="Reason"})",
       1},
      {R"(litestage_request_latency_seconds_count{method="Reason"})", 3},
      {R"(litestage_request_latency_seconds_sum{method="Reason"})", 2.501},
      {R"(litestage_request_latency_seconds_bucket{method="Reason",le="0.001"})",
       1},
      {R"(litestage_request_latency_seconds_bucket{method="Reason",le="0.5"})",
       2},
      {R"(litestage_time_to_first_token_seconds_count)", 1},
      {R"(litestage_time_to_first_token_seconds_bucket{le="0.01"})", 0},
      {R"(litestage_time_to_first_token_seconds_bucket{le="0.025"})", 1},
      {R"(litestage_inter_token_latency_seconds_sum)", 0.125},
      {R"(litestage_inter_token_latency_seconds_bucket{le="0.05"})", 0},
      {R"(litestage_inter_token_latency_seconds_bucket{le="0.075"})", 2},
      {R"(litestage_batch_size_bucket{le="2"})", 0},
      {R"(litestage_batch_size_bucket{le="4"})", 1},
      {R"(litestage_batch_size_bucket{le="256"})", 1},
      {R"(litestage_queue_depth)", 5},
      {R"(litestage_requests_running)", 2},
      {R"(litestage_kv_cache_usage_ratio)", 0.5},
      {R"(litestage_prefix_cache_tokens_total{pipeline="tinythinker",result="hit",stage="recall"})",
       128},
      {R"(litestage_prefix_cache_tokens_total{pipeline="tinythinker",result="computed",stage="recall"})",
       72},
      {R"(litestage_prefix_cache_tokens_total{pipeline="tinythinker",result="hit",stage="analysis"})",
       0},
      {R"(litestage_prefix_cache_blocks)", 10},
      {R"(litestage_prefix_cache_evictions_total)", 5},
      {R"(litestage_model_info{backend="cpu",dtype="f32",model="stories260K"})",
       1},
  };
  for (const auto& [series, value] : expected) {
    auto it = samples.find(series);
    ASSERT_NE(it, samples.end()) << "missing series " << series << "\n"
                                 << metrics_.Serialize();
    EXPECT_NEAR(it->second, value, 1e-12) << series;
  }
}

TEST_F(ServerMetricsTest, EveryStageSeriesExistsAtZeroBeforeObservations) {
  const std::string text = metrics_.Serialize();
  const std::map<std::string, double> samples = ParseSamples(text);
  for (const auto& [pipeline, stages] : kPipelines) {
    for (const std::string& stage : stages) {
      const std::string ps =
          "pipeline=\"" + pipeline + "\",stage=\"" + stage + "\"";
      for (const char* kind : {"attention", "mlp"}) {
        for (const char* action : {"executed", "skipped"}) {
          const std::string series =
              std::string("litestage_sublayers_total{action=\"") + action +
              "\",kind=\"" + kind + "\"," + ps + "}";
          ASSERT_TRUE(samples.contains(series)) << series << "\n" << text;
          EXPECT_EQ(samples.at(series), 0) << series;
        }
      }
      for (const char* name : {"litestage_stage_early_exits_total",
                               "litestage_stage_generated_tokens_total",
                               "litestage_stage_latency_seconds_count",
                               "litestage_stage_prefill_seconds_count",
                               "litestage_stage_decode_seconds_count"}) {
        const std::string series = std::string(name) + "{" + ps + "}";
        ASSERT_TRUE(samples.contains(series)) << series << "\n" << text;
        EXPECT_EQ(samples.at(series), 0) << series;
      }
    }
  }
  EXPECT_EQ(
      samples.at(
          R"(litestage_model_info{backend="cpu",dtype="f32",model="stories260K"})"),
      1);
}

// prometheus-cpp prints HELP/TYPE only for families with a series; the
// request-labelled ones get theirs from the known set.
TEST_F(ServerMetricsTest, EveryMetricHasHelpAndType) {
  ObserveKnownSet(metrics_);
  const std::string text = metrics_.Serialize();
  for (const char* name :
       {"litestage_stage_latency_seconds", "litestage_stage_prefill_seconds",
        "litestage_stage_decode_seconds", "litestage_sublayers_total",
        "litestage_stage_skip_ratio", "litestage_stage_early_exits_total",
        "litestage_stage_generated_tokens_total",
        "litestage_request_latency_seconds",
        "litestage_time_to_first_token_seconds",
        "litestage_inter_token_latency_seconds", "litestage_requests_total",
        "litestage_queue_depth", "litestage_requests_running",
        "litestage_kv_cache_usage_ratio", "litestage_batch_size",
        "litestage_model_info"}) {
    EXPECT_THAT(text, HasSubstr(std::string("# HELP ") + name + " "));
    EXPECT_THAT(text, HasSubstr(std::string("# TYPE ") + name + " "));
  }
}

TEST_F(ServerMetricsTest, UnknownPipelineOrStageCreatesNoSeries) {
  const std::string before = metrics_.Serialize();
  StageRecord unknown_stage = RecallRecord();
  unknown_stage.name = "bogus_stage";
  metrics_.ObserveStage("tinythinker", unknown_stage);
  metrics_.ObserveStage("bogus_pipeline", RecallRecord());
  // A stage of another pipeline is not a stage of this one.
  StageRecord answer = RecallRecord();
  answer.name = "answer";
  metrics_.ObserveStage("tinythinker", answer);
  metrics_.SetStageSkipRatio("bogus_pipeline", "recall", "full", 0.5);
  metrics_.SetStageSkipRatio("tinythinker", "bogus_stage", "full", 0.5);
  const std::string after = metrics_.Serialize();
  EXPECT_THAT(after, Not(HasSubstr("bogus")));
  EXPECT_THAT(after,
              Not(HasSubstr(R"(pipeline="tinythinker",stage="answer")")));
  EXPECT_EQ(before, after);
}

TEST_F(ServerMetricsTest, SkipRatioProfilesAreCapped) {
  for (size_t i = 0; i < ServerMetrics::kMaxSkipRatioProfiles + 10; ++i) {
    metrics_.SetStageSkipRatio("tinythinker", "recall",
                               "even:" + std::to_string(i), 0.5);
  }
  // Re-setting a known profile still works after the cap.
  metrics_.SetStageSkipRatio("tinythinker", "recall", "even:0", 0.125);
  size_t series = 0;
  for (const auto& [name, value] : ParseSamples(metrics_.Serialize())) {
    if (name.starts_with("litestage_stage_skip_ratio{")) ++series;
  }
  EXPECT_EQ(series, ServerMetrics::kMaxSkipRatioProfiles);
  EXPECT_EQ(
      ParseSamples(metrics_.Serialize())
          .at(R"(litestage_stage_skip_ratio{pipeline="tinythinker",profile="even:0",stage="recall"})"),
      0.125);
}

TEST_F(ServerMetricsTest, PromtoolAcceptsTheText) {
  ObserveKnownSet(metrics_);
  const CommandResult which = RunCommand("command -v promtool");
  ASSERT_EQ(which.exit_code, 0)
      << "promtool not found; " << kInstallHint << "\n"
      << which.output;
  const std::string path = WriteTempFile("promtool.txt", metrics_.Serialize());
  const CommandResult check =
      RunCommand("promtool check metrics < '" + path + "'");
  EXPECT_EQ(check.exit_code, 0) << "promtool check metrics failed:\n"
                                << check.output;
  // Lint findings are printed even when they would not fail the check.
  EXPECT_EQ(check.output, "") << check.output;
  std::remove(path.c_str());
}

TEST_F(ServerMetricsTest, PythonPrometheusClientParsesTheText) {
  ObserveKnownSet(metrics_);
  const std::string text = metrics_.Serialize();
  const size_t sample_lines = ParseSamples(text).size();
  const std::string text_path = WriteTempFile("python.txt", text);
  const std::string script_path = WriteTempFile("parse.py", R"(
import sys
try:
    from prometheus_client.parser import text_string_to_metric_families
except ImportError as e:
    print("IMPORT_ERROR", e)
    sys.exit(2)
text = open(sys.argv[1]).read()
families = list(text_string_to_metric_families(text))
samples = 0
for family in families:
    assert family.type != "unknown", family.name
    assert family.documentation, family.name
    assert family.samples, family.name
    samples += len(family.samples)
print(len(families), samples)
)");
  const CommandResult result =
      RunCommand("/usr/bin/python3 '" + script_path + "' '" + text_path + "'");
  ASSERT_NE(result.exit_code, 2)
      << "python3-prometheus-client missing; " << kInstallHint << "\n"
      << result.output;
  ASSERT_EQ(result.exit_code, 0) << result.output;
  EXPECT_EQ(result.output, "19 " + std::to_string(sample_lines) + "\n");
  std::remove(text_path.c_str());
  std::remove(script_path.c_str());
}

// A blocking HTTP/1.0 GET on 127.0.0.1:`port`; the whole response.
std::string HttpGet(int port, const std::string& path) {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) return "socket() failed";
  timeval timeout{5, 0};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof(timeout));
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_port = htons(static_cast<uint16_t>(port));
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (connect(fd, reinterpret_cast<sockaddr*>(&address), sizeof(address)) !=
      0) {
    close(fd);
    return "connect() failed";
  }
  const std::string request =
      "GET " + path + " HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n";
  if (send(fd, request.data(), request.size(), 0) !=
      static_cast<ssize_t>(request.size())) {
    close(fd);
    return "send() failed";
  }
  std::string response;
  char buffer[4096];
  ssize_t n;
  while ((n = recv(fd, buffer, sizeof(buffer), 0)) > 0) {
    response.append(buffer, static_cast<size_t>(n));
  }
  close(fd);
  return response;
}

TEST(StartMetricsServerTest, ServesMetricsAndFailsOnATakenPort) {
  auto registry = std::make_shared<prometheus::Registry>();
  ServerMetrics metrics(registry, {"stories260K", "cpu", "f32"}, kPipelines);
  metrics.SetQueueDepth(7);

  absl::StatusOr<std::unique_ptr<MetricsHttpServer>> server =
      StartMetricsServer("127.0.0.1:0", registry);
  ASSERT_TRUE(server.ok()) << server.status();
  const int port = (*server)->port();
  ASSERT_GT(port, 0);

  const std::string response = HttpGet(port, "/metrics");
  EXPECT_THAT(response, HasSubstr(" 200 "));
  EXPECT_THAT(response,
              HasSubstr("\r\nContent-Type: text/plain; version=0.0.4; "
                        "charset=utf-8\r\n"));
  EXPECT_THAT(response, HasSubstr("\nlitestage_queue_depth 7"));
  EXPECT_THAT(
      response,
      HasSubstr(
          R"(litestage_model_info{backend="cpu",dtype="f32",model="stories260K"} 1)"));

  // The port is taken by the first server now.
  const std::string taken = "127.0.0.1:" + std::to_string(port);
  absl::StatusOr<std::unique_ptr<MetricsHttpServer>> second =
      StartMetricsServer(taken, registry);
  ASSERT_FALSE(second.ok());
  EXPECT_EQ(second.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(std::string(second.status().message()), HasSubstr(taken));
  EXPECT_THAT(std::string(second.status().message()),
              HasSubstr(std::strerror(EADDRINUSE)));
}

TEST(StartMetricsServerTest, PortHeldByAnotherSocketIsAnError) {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  ASSERT_GE(fd, 0);
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_port = 0;
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(bind(fd, reinterpret_cast<sockaddr*>(&address), sizeof(address)),
            0);
  ASSERT_EQ(listen(fd, 1), 0);
  socklen_t length = sizeof(address);
  ASSERT_EQ(getsockname(fd, reinterpret_cast<sockaddr*>(&address), &length), 0);
  const std::string taken =
      "127.0.0.1:" + std::to_string(ntohs(address.sin_port));

  auto registry = std::make_shared<prometheus::Registry>();
  absl::StatusOr<std::unique_ptr<MetricsHttpServer>> server =
      StartMetricsServer(taken, registry);
  close(fd);
  ASSERT_FALSE(server.ok());
  EXPECT_EQ(server.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(std::string(server.status().message()), HasSubstr(taken));
  EXPECT_THAT(std::string(server.status().message()),
              HasSubstr(std::strerror(EADDRINUSE)));
}

TEST(StartMetricsServerTest, InvalidAddressIsAnError) {
  auto registry = std::make_shared<prometheus::Registry>();
  for (const std::string address :
       {"not-an-address:port", "not-an-address:9090", "127.0.0.1", "",
        "127.0.0.1:65536", "127.0.0.1:-1", "256.0.0.1:0", "[::1:0"}) {
    absl::StatusOr<std::unique_ptr<MetricsHttpServer>> server =
        StartMetricsServer(address, registry);
    ASSERT_FALSE(server.ok()) << address;
    EXPECT_EQ(server.status().code(), absl::StatusCode::kInvalidArgument)
        << server.status();
    EXPECT_THAT(std::string(server.status().message()),
                HasSubstr("\"" + address + "\""));
  }
  EXPECT_FALSE(StartMetricsServer("127.0.0.1:0", nullptr).ok());
}

// Not a local address: bind fails with the system's reason.
TEST(StartMetricsServerTest, AddressNotOnThisHostIsUnavailable) {
  auto registry = std::make_shared<prometheus::Registry>();
  absl::StatusOr<std::unique_ptr<MetricsHttpServer>> server =
      StartMetricsServer("192.0.2.1:0", registry);  // TEST-NET-1
  ASSERT_FALSE(server.ok());
  EXPECT_EQ(server.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(std::string(server.status().message()),
              HasSubstr(std::strerror(EADDRNOTAVAIL)));
}

// The spellings of a loopback address all bind.
TEST(StartMetricsServerTest, AcceptsLocalhostAndIpv6Literals) {
  auto registry = std::make_shared<prometheus::Registry>();
  for (const std::string address : {"localhost:0", "127.0.0.1:0"}) {
    absl::StatusOr<std::unique_ptr<MetricsHttpServer>> server =
        StartMetricsServer(address, registry);
    ASSERT_TRUE(server.ok()) << server.status();
    EXPECT_GT((*server)->port(), 0);
  }
  // IPv6 may be disabled on the machine; then the error must still say why.
  for (const std::string address : {"[::1]:0", "::1:0"}) {
    absl::StatusOr<std::unique_ptr<MetricsHttpServer>> server =
        StartMetricsServer(address, registry);
    if (server.ok()) {
      EXPECT_GT((*server)->port(), 0);
    } else {
      EXPECT_EQ(server.status().code(), absl::StatusCode::kUnavailable)
          << server.status();
    }
  }
}

}  // namespace
}  // namespace litestage
