// In-process tests of the litestage gRPC service: the server library runs
// on a free port with the synthetic tiny model and a short 3-stage pipeline
// (written by the test: tinythinker's few-shot prompt would overflow the
// tiny model's 1024-byte context), and every RPC goes through a real gRPC
// channel with the generated stubs. (~860 lines: every RPC with its error
// cases, and the prefix cache, over one in-process server fixture.)
#include "server/server.h"

#include <atomic>
#include <chrono>
#include <fstream>
#include <future>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/string_view.h"
#include "gmock/gmock.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "litestage/v1/litestage.grpc.pb.h"
#include "server/metrics.h"
#include "tests/common/scoped_temp_dir.h"

namespace litestage {
namespace {

namespace v1 = ::litestage::v1;
using ::grpc::health::v1::Health;
using ::grpc::health::v1::HealthCheckRequest;
using ::grpc::health::v1::HealthCheckResponse;
using ::testing::HasSubstr;

constexpr char kPipelineJson[] = R"json({
  "schema": "litestage.pipeline/v1",
  "name": "mini",
  "description": "three short stages for tests",
  "min_choices": 2,
  "max_choices": 4,
  "default_choices": ["yes", "no"],
  "answer_regex": "\\(([A-D])\\)",
  "stages": [
    {"name": "recall", "prompt": "Q: {question}\nFacts:", "max_new_tokens": 8},
    {"name": "analyze", "prompt": "Q: {question} {choices}\nOption {option}:",
     "max_new_tokens": 6, "fan_out": true},
    {"name": "summary",
     "prompt": "{stage.recall} {stage.analyze}\nAnswer:", "max_new_tokens": 6}
  ]
})json";

std::string PipelinePath() {
  static const std::string path = [] {
    // Removed with the process's scratch directory at exit.
    std::string p = litestage::testing::ProcessTempDir().Child(
        "litestage_server_test_mini.json");
    std::ofstream(p) << kPipelineJson;
    return p;
  }();
  return path;
}

ServerOptions TinyOptions() {
  ServerOptions options;
  options.engine.model = "synthetic:tiny";
  options.engine.backend.num_threads = 1;
  options.engine.backend.kv_cache_tokens = 16384;
  options.host = "127.0.0.1";
  options.port = 0;
  options.pipeline_files = {PipelinePath()};
  options.default_pipeline = "mini";
  options.max_new_tokens = 16;
  return options;
}

std::unique_ptr<LiteStageServer> StartReady(ServerOptions options) {
  absl::StatusOr<std::unique_ptr<LiteStageServer>> server =
      LiteStageServer::Start(std::move(options));
  EXPECT_TRUE(server.ok()) << server.status();
  if (!server.ok()) return nullptr;
  absl::Status ready = (*server)->WaitUntilReady();
  EXPECT_TRUE(ready.ok()) << ready;
  return *std::move(server);
}

std::shared_ptr<grpc::Channel> ChannelTo(const LiteStageServer& server) {
  return grpc::CreateChannel(absl::StrCat("127.0.0.1:", server.port()),
                             grpc::InsecureChannelCredentials());
}

void SetDeadline(grpc::ClientContext* context, double seconds) {
  context->set_deadline(
      std::chrono::system_clock::now() +
      std::chrono::milliseconds(static_cast<int64_t>(seconds * 1000)));
}

// Polls `condition` for up to `seconds`.
template <typename F>
bool Eventually(F condition, double seconds = 10) {
  const auto end = std::chrono::steady_clock::now() +
                   std::chrono::milliseconds(static_cast<int>(seconds * 1000));
  while (std::chrono::steady_clock::now() < end) {
    if (condition()) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  return condition();
}

HealthCheckResponse::ServingStatus HealthOf(grpc::Channel* channel,
                                            const std::string& service) {
  auto stub = Health::NewStub(
      std::shared_ptr<grpc::Channel>(channel, [](grpc::Channel*) {}));
  grpc::ClientContext context;
  SetDeadline(&context, 5);
  HealthCheckRequest request;
  request.set_service(service);
  HealthCheckResponse response;
  grpc::Status status = stub->Check(&context, request, &response);
  EXPECT_TRUE(status.ok()) << status.error_message();
  return response.status();
}

class ServerTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    server_ = StartReady(TinyOptions()).release();
  }
  static void TearDownTestSuite() {
    delete server_;
    server_ = nullptr;
  }
  void SetUp() override {
    ASSERT_NE(server_, nullptr);
    channel_ = ChannelTo(*server_);
    stub_ = v1::LiteStage::NewStub(channel_);
  }

  static LiteStageServer* server_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::LiteStage::Stub> stub_;
};
LiteStageServer* ServerTest::server_ = nullptr;

void ExpectRecordConsistent(const v1::StageRecord& stage, int64_t layers) {
  int64_t prompt = 0, generated = 0;
  for (const v1::BranchRecord& branch : stage.branches()) {
    prompt += branch.prompt_tokens();
    generated += branch.generated_tokens();
  }
  EXPECT_EQ(stage.prompt_tokens(), prompt) << stage.name();
  EXPECT_EQ(stage.generated_tokens(), generated) << stage.name();
  const v1::SublayerCounts& s = stage.sublayers();
  EXPECT_EQ(s.attention_executed() + s.attention_skipped() + s.mlp_executed() +
                s.mlp_skipped(),
            2 * layers * stage.forwarded_tokens())
      << stage.name();
  EXPECT_GE(stage.seconds(), 0);
}

TEST_F(ServerTest, ReasonRunsEveryStage) {
  grpc::ClientContext context;
  SetDeadline(&context, 30);
  v1::ReasonRequest request;
  request.set_request_id("req-1");
  request.set_question("Is the sky blue?");
  v1::ReasonResponse response;
  grpc::Status status = stub_->Reason(&context, request, &response);
  ASSERT_TRUE(status.ok()) << status.error_message();
  EXPECT_EQ(response.request_id(), "req-1");
  EXPECT_EQ(response.pipeline(), "mini");
  EXPECT_EQ(response.profile(), "full");
  ASSERT_EQ(response.stages_size(), 3);
  EXPECT_EQ(response.stages(0).name(), "recall");
  EXPECT_EQ(response.stages(1).name(), "analyze");
  EXPECT_EQ(response.stages(2).name(), "summary");
  ASSERT_THAT(response.choices(), ::testing::ElementsAre("yes", "no"));
  ASSERT_EQ(response.stages(1).branches_size(), 2);
  EXPECT_EQ(response.stages(1).branches(0).option(), "A");
  EXPECT_EQ(response.stages(1).branches(1).option(), "B");
  EXPECT_EQ(response.stages(0).branches_size(), 1);
  int64_t prompt = 0, generated = 0;
  for (int i = 0; i < response.stages_size(); ++i) {
    const v1::StageRecord& stage = response.stages(i);
    EXPECT_EQ(stage.index(), i);
    ExpectRecordConsistent(stage, 2);
    EXPECT_LE(stage.generated_tokens(), 8 * stage.branches_size());
    prompt += stage.prompt_tokens();
    generated += stage.generated_tokens();
  }
  EXPECT_EQ(response.prompt_tokens(), prompt);
  EXPECT_EQ(response.generated_tokens(), generated);
  if (response.answer().empty()) {
    EXPECT_EQ(response.answer_index(), -1);
  } else {
    ASSERT_GE(response.answer_index(), 0);
    EXPECT_EQ(response.answer_text(),
              response.choices(response.answer_index()));
  }
  EXPECT_GT(response.timings().total_seconds(), 0);
  EXPECT_LE(response.timings().queue_seconds(),
            response.timings().total_seconds());
}

TEST_F(ServerTest, RequestIdIsGeneratedWhenAbsent) {
  grpc::ClientContext context;
  SetDeadline(&context, 30);
  v1::ReasonRequest request;
  request.set_question("Why?");
  request.add_choices("red");
  request.add_choices("green");
  request.add_choices("blue");
  v1::ReasonResponse response;
  ASSERT_TRUE(stub_->Reason(&context, request, &response).ok());
  EXPECT_THAT(response.request_id(), ::testing::StartsWith("ls-"));
  EXPECT_EQ(response.stages(1).branches_size(), 3);
}

TEST_F(ServerTest, ReasonStreamEventOrder) {
  grpc::ClientContext context;
  SetDeadline(&context, 30);
  v1::ReasonRequest request;
  request.set_request_id("stream-1");
  request.set_question("Can fish climb trees?");
  auto reader = stub_->ReasonStream(&context, request);
  std::vector<v1::ReasonEvent> events;
  v1::ReasonEvent event;
  while (reader->Read(&event)) events.push_back(event);
  grpc::Status status = reader->Finish();
  ASSERT_TRUE(status.ok()) << status.error_message();
  ASSERT_FALSE(events.empty());
  ASSERT_TRUE(events.back().has_result());
  const v1::ReasonResponse& result = events.back().result();
  ASSERT_EQ(result.stages_size(), 3);

  int expected_stage = 0;
  bool in_stage = false;
  std::map<std::pair<int, int>, std::string> deltas;  // (stage, branch)
  for (size_t i = 0; i + 1 < events.size(); ++i) {
    const v1::ReasonEvent& e = events[i];
    EXPECT_EQ(e.request_id(), "stream-1");
    if (e.has_stage_started()) {
      EXPECT_FALSE(in_stage);
      EXPECT_EQ(e.stage_started().stage_index(), expected_stage);
      EXPECT_EQ(e.stage_started().branches(), expected_stage == 1 ? 2 : 1);
      in_stage = true;
    } else if (e.has_delta()) {
      EXPECT_TRUE(in_stage);
      EXPECT_EQ(e.delta().stage_index(), expected_stage);
      deltas[{e.delta().stage_index(), e.delta().branch()}] += e.delta().text();
    } else if (e.has_stage_finished()) {
      EXPECT_TRUE(in_stage);
      EXPECT_EQ(e.stage_finished().index(), expected_stage);
      EXPECT_EQ(e.stage_finished().output(),
                result.stages(expected_stage).output());
      in_stage = false;
      ++expected_stage;
    } else {
      ADD_FAILURE() << "result before the end at event " << i;
    }
  }
  EXPECT_EQ(expected_stage, 3);
  // Single-branch stages: the deltas are exactly the branch text.
  EXPECT_EQ((deltas[{0, 0}]), result.stages(0).branches(0).text());
  EXPECT_EQ((deltas[{2, 0}]), result.stages(2).branches(0).text());
}

TEST_F(ServerTest, GenerateAndGenerateStreamAgree) {
  v1::GenerateRequest request;
  request.set_prompt("Once upon a time");
  request.set_max_new_tokens(12);
  v1::GenerateResponse unary;
  {
    grpc::ClientContext context;
    SetDeadline(&context, 30);
    grpc::Status status = stub_->Generate(&context, request, &unary);
    ASSERT_TRUE(status.ok()) << status.error_message();
  }
  EXPECT_LE(unary.generated_tokens(), 12);
  EXPECT_GT(unary.prompt_tokens(), 0);
  EXPECT_FALSE(unary.finish_reason().empty());

  grpc::ClientContext context;
  SetDeadline(&context, 30);
  auto reader = stub_->GenerateStream(&context, request);
  std::string text;
  v1::GenerateEvent event;
  std::optional<v1::GenerateResponse> result;
  while (reader->Read(&event)) {
    ASSERT_FALSE(result.has_value()) << "event after the result";
    if (event.has_delta()) {
      text += event.delta().text();
    } else {
      result = event.result();
    }
  }
  ASSERT_TRUE(reader->Finish().ok());
  ASSERT_TRUE(result.has_value());
  EXPECT_EQ(text, result->text());
  // Greedy decoding: the same text both ways.
  EXPECT_EQ(result->text(), unary.text());
  EXPECT_EQ(result->generated_tokens(), unary.generated_tokens());
}

TEST_F(ServerTest, GetServerInfoAndListProfiles) {
  grpc::ClientContext context;
  v1::ServerInfo info;
  ASSERT_TRUE(
      stub_->GetServerInfo(&context, v1::GetServerInfoRequest(), &info).ok());
  EXPECT_EQ(info.model(), "synthetic:tiny");
  EXPECT_EQ(info.num_layers(), 2);
  EXPECT_EQ(info.backend(), "cpu");
  EXPECT_FALSE(info.fingerprint().empty());
  EXPECT_EQ(info.default_pipeline(), "mini");
  EXPECT_EQ(info.default_profile(), "full");
  std::vector<std::string> pipelines;
  for (const auto& p : info.pipelines()) pipelines.push_back(p.name());
  EXPECT_THAT(pipelines,
              ::testing::UnorderedElementsAre("mini", "tinythinker"));
  EXPECT_EQ(info.limits().context_length(), 1024);
  EXPECT_EQ(info.limits().max_new_tokens(), 16);
  EXPECT_EQ(info.limits().max_batch(), 32);
  ASSERT_GE(info.profiles_size(), 1);
  EXPECT_EQ(info.profiles(0).name(), "full");

  grpc::ClientContext list_context;
  v1::ListProfilesRequest list;
  list.set_pipeline("mini");
  v1::ListProfilesResponse profiles;
  ASSERT_TRUE(stub_->ListProfiles(&list_context, list, &profiles).ok());
  ASSERT_GE(profiles.profiles_size(), 1);
  EXPECT_EQ(profiles.profiles(0).name(), "full");
  EXPECT_TRUE(profiles.profiles(0).builtin());
  ASSERT_EQ(profiles.profiles(0).stages_size(), 1);
  EXPECT_EQ(profiles.profiles(0).stages(0).skip_ratio(), 0);
}

TEST_F(ServerTest, SkippingProfileByName) {
  grpc::ClientContext context;
  SetDeadline(&context, 30);
  v1::ReasonRequest request;
  request.set_question("Is water wet?");
  request.set_profile("last:1");
  v1::ReasonResponse response;
  ASSERT_TRUE(stub_->Reason(&context, request, &response).ok());
  EXPECT_EQ(response.profile(), "last:1");
  for (const v1::StageRecord& stage : response.stages()) {
    EXPECT_EQ(stage.skipped_attention_layers(), 1);
    EXPECT_EQ(stage.skipped_mlp_layers(), 1);
    EXPECT_EQ(stage.sublayers().attention_skipped(), stage.forwarded_tokens());
  }
}

struct BadReason {
  std::string label;
  std::function<void(v1::ReasonRequest*)> edit;
  grpc::StatusCode code;
  std::string field;
};

TEST_F(ServerTest, InvalidReasonRequestsNameTheField) {
  const std::vector<BadReason> cases = {
      {"empty question", [](auto* r) { r->clear_question(); },
       grpc::StatusCode::INVALID_ARGUMENT, "question"},
      {"empty choice",
       [](auto* r) {
         r->add_choices("a");
         r->add_choices("");
         r->add_choices("c");
       },
       grpc::StatusCode::INVALID_ARGUMENT, "choices[1]"},
      {"too many choices",
       [](auto* r) {
         for (int i = 0; i < 5; ++i) r->add_choices(absl::StrCat("c", i));
       },
       grpc::StatusCode::INVALID_ARGUMENT, "choices"},
      {"unknown pipeline", [](auto* r) { r->set_pipeline("nope"); },
       grpc::StatusCode::INVALID_ARGUMENT, "pipeline"},
      {"unknown profile", [](auto* r) { r->set_profile("nope"); },
       grpc::StatusCode::INVALID_ARGUMENT, "profile"},
      {"profile K too large", [](auto* r) { r->set_profile("even:9"); },
       grpc::StatusCode::INVALID_ARGUMENT, "profile"},
      {"negative temperature",
       [](auto* r) { r->mutable_sampling()->set_temperature(-1); },
       grpc::StatusCode::INVALID_ARGUMENT, "sampling.temperature"},
      {"top_p above 1", [](auto* r) { r->mutable_sampling()->set_top_p(2); },
       grpc::StatusCode::INVALID_ARGUMENT, "sampling.top_p"},
      {"negative window",
       [](auto* r) { r->mutable_early_exit()->set_window(-1); },
       grpc::StatusCode::INVALID_ARGUMENT, "early_exit.window"},
      {"bad confidence",
       [](auto* r) { r->mutable_early_exit()->set_confidence("vibes"); },
       grpc::StatusCode::INVALID_ARGUMENT, "early_exit.confidence"},
      {"max_new_tokens over limit", [](auto* r) { r->set_max_new_tokens(17); },
       grpc::StatusCode::OUT_OF_RANGE, "max_new_tokens"},
      {"negative max_new_tokens", [](auto* r) { r->set_max_new_tokens(-1); },
       grpc::StatusCode::INVALID_ARGUMENT, "max_new_tokens"},
      {"question longer than the context",
       [](auto* r) { r->set_question(std::string(1500, 'x')); },
       grpc::StatusCode::OUT_OF_RANGE, "question"},
  };
  for (const BadReason& c : cases) {
    v1::ReasonRequest request;
    request.set_question("Is it?");
    c.edit(&request);
    grpc::ClientContext context;
    SetDeadline(&context, 10);
    v1::ReasonResponse response;
    grpc::Status status = stub_->Reason(&context, request, &response);
    EXPECT_EQ(status.error_code(), c.code)
        << c.label << ": " << status.error_message();
    EXPECT_THAT(status.error_message(), HasSubstr(c.field)) << c.label;
  }
}

TEST_F(ServerTest, InvalidGenerateRequestsNameTheField) {
  struct Case {
    std::string label;
    std::function<void(v1::GenerateRequest*)> edit;
    grpc::StatusCode code;
    std::string field;
  };
  const std::vector<Case> cases = {
      {"empty prompt", [](auto* r) { r->clear_prompt(); },
       grpc::StatusCode::INVALID_ARGUMENT, "prompt"},
      {"prompt longer than the context",
       [](auto* r) { r->set_prompt(std::string(2000, 'y')); },
       grpc::StatusCode::OUT_OF_RANGE, "prompt"},
      {"empty stop", [](auto* r) { r->add_stop(""); },
       grpc::StatusCode::INVALID_ARGUMENT, "stop[0]"},
      {"over the limit", [](auto* r) { r->set_max_new_tokens(1000); },
       grpc::StatusCode::OUT_OF_RANGE, "max_new_tokens"},
      {"negative top_k", [](auto* r) { r->mutable_sampling()->set_top_k(-2); },
       grpc::StatusCode::INVALID_ARGUMENT, "sampling.top_k"},
      {"unknown profile", [](auto* r) { r->set_profile("fast"); },
       grpc::StatusCode::INVALID_ARGUMENT, "profile"},
  };
  for (const Case& c : cases) {
    v1::GenerateRequest request;
    request.set_prompt("hello");
    c.edit(&request);
    grpc::ClientContext context;
    SetDeadline(&context, 10);
    v1::GenerateResponse response;
    grpc::Status status = stub_->Generate(&context, request, &response);
    EXPECT_EQ(status.error_code(), c.code)
        << c.label << ": " << status.error_message();
    EXPECT_THAT(status.error_message(), HasSubstr(c.field)) << c.label;
  }
  grpc::ClientContext context;
  v1::ListProfilesRequest list;
  list.set_pipeline("nope");
  v1::ListProfilesResponse profiles;
  grpc::Status status = stub_->ListProfiles(&context, list, &profiles);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(status.error_message(), HasSubstr("pipeline"));
}

// The value of the sample `series` (name and labels as serialized) in the
// Prometheus text `text`; -1 when absent.
double SampleValue(const std::string& text, const std::string& series) {
  const std::string prefix = series + " ";
  for (absl::string_view line : absl::StrSplit(text, '\n')) {
    if (!absl::StartsWith(line, prefix)) continue;
    double value = 0;
    return absl::SimpleAtod(line.substr(prefix.size()), &value) ? value : -1;
  }
  return -1;
}

TEST_F(ServerTest, ConcurrentRequestsAreBatched) {
  // Steps of the engine so far, and those of at most 2 sequences (one
  // request of this pipeline runs at most 2: its yes/no branches).
  const auto batch_steps = [] {
    const std::string text = server_->metrics()->Serialize();
    return std::make_pair(
        SampleValue(text, "litestage_batch_size_count"),
        SampleValue(text, R"(litestage_batch_size_bucket{le="2"})"));
  };
  ASSERT_NE(server_->metrics(), nullptr);
  const auto [steps_before, small_before] = batch_steps();
  ASSERT_GE(steps_before, 0);
  ASSERT_GE(small_before, 0);
  constexpr int kThreads = 16;
  constexpr int kPerThread = 4;
  std::atomic<int> ok{0};
  std::vector<std::string> failures(kThreads);
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      auto stub = v1::LiteStage::NewStub(ChannelTo(*server_));
      for (int i = 0; i < kPerThread; ++i) {
        grpc::ClientContext context;
        SetDeadline(&context, 60);
        v1::ReasonRequest request;
        request.set_question(absl::StrCat("Question ", t, "-", i, "?"));
        v1::ReasonResponse response;
        grpc::Status status = stub->Reason(&context, request, &response);
        if (status.ok() && response.stages_size() == 3) {
          ok.fetch_add(1);
        } else {
          failures[t] = status.error_message();
        }
      }
    });
  }
  for (std::thread& thread : threads) thread.join();
  EXPECT_EQ(ok.load(), kThreads * kPerThread)
      << ::testing::PrintToString(failures);
  EXPECT_GT(server_->max_batch_size_seen(), 2);
  // Batching is visible in litestage_batch_size: steps that ran sequences
  // of more than one request.
  const auto [steps_after, small_after] = batch_steps();
  EXPECT_GT((steps_after - steps_before) - (small_after - small_before), 0)
      << "steps " << steps_before << " -> " << steps_after
      << ", of at most 2 sequences " << small_before << " -> " << small_after;
  EXPECT_TRUE(Eventually([] { return server_->requests_in_flight() == 0; }));
}

TEST_F(ServerTest, CancellationFreesKvCache) {
  constexpr int kStreams = 6;
  std::vector<std::unique_ptr<grpc::ClientContext>> contexts;
  std::vector<std::unique_ptr<grpc::ClientReader<v1::GenerateEvent>>> readers;
  for (int i = 0; i < kStreams; ++i) {
    contexts.push_back(std::make_unique<grpc::ClientContext>());
    SetDeadline(contexts.back().get(), 30);
    v1::GenerateRequest request;
    request.set_prompt(absl::StrCat("Long story ", i));
    request.set_max_new_tokens(16);
    request.mutable_sampling()->set_temperature(1.0);
    request.mutable_sampling()->set_seed(i);
    readers.push_back(stub_->GenerateStream(contexts.back().get(), request));
  }
  // Every stream has started decoding: the KV cache holds them.
  for (auto& reader : readers) {
    v1::GenerateEvent event;
    reader->Read(&event);
  }
  for (auto& context : contexts) context->TryCancel();
  int cancelled = 0;
  for (auto& reader : readers) {
    v1::GenerateEvent event;
    while (reader->Read(&event)) {
    }
    grpc::Status status = reader->Finish();
    EXPECT_TRUE(status.ok() ||
                status.error_code() == grpc::StatusCode::CANCELLED)
        << status.error_message();
    cancelled += status.error_code() == grpc::StatusCode::CANCELLED;
  }
  EXPECT_GT(cancelled, 0);
  EXPECT_TRUE(Eventually([] {
    return server_->requests_in_flight() == 0 &&
           server_->kv_cache_usage() == 0.0;
  })) << "in flight "
      << server_->requests_in_flight() << ", kv " << server_->kv_cache_usage();
}

TEST(ServerDeadlineTest, DeadlineExceededFreesKvCache) {
  ServerOptions options = TinyOptions();
  // A model slow enough (~100 tokens/s on one thread) that 1000 tokens can
  // never finish inside the deadline, and with a vocabulary large enough
  // that a random EOS before it is unlikely; the tiny model is too fast in
  // release builds.
  options.engine.model = "synthetic:smollm2-135m";
  options.max_new_tokens = 1000;
  std::unique_ptr<LiteStageServer> server = StartReady(options);
  ASSERT_NE(server, nullptr);
  auto stub = v1::LiteStage::NewStub(ChannelTo(*server));
  constexpr int kRequests = 4;
  std::vector<std::thread> threads;
  std::atomic<int> exceeded{0};
  for (int i = 0; i < kRequests; ++i) {
    threads.emplace_back([&, i] {
      grpc::ClientContext context;
      SetDeadline(&context, 0.3);
      v1::GenerateRequest request;
      request.set_prompt(absl::StrCat("Tell me everything ", i));
      request.set_max_new_tokens(1000);
      request.mutable_sampling()->set_temperature(1.0);
      request.mutable_sampling()->set_seed(i);
      v1::GenerateResponse response;
      grpc::Status status = stub->Generate(&context, request, &response);
      EXPECT_TRUE(status.ok() ||
                  status.error_code() == grpc::StatusCode::DEADLINE_EXCEEDED)
          << status.error_message();
      exceeded += status.error_code() == grpc::StatusCode::DEADLINE_EXCEEDED;
    });
  }
  for (std::thread& thread : threads) thread.join();
  EXPECT_GT(exceeded.load(), 0);
  EXPECT_TRUE(Eventually([&] {
    return server->requests_in_flight() == 0 && server->kv_cache_usage() == 0.0;
  }));
  const std::string metrics = server->metrics()->Serialize();
  EXPECT_THAT(metrics, HasSubstr("DEADLINE_EXCEEDED"));
}

// With the prefix cache on, a question asked again takes its prompt's
// leading blocks from the cache (the record and the metrics say how many)
// and answers exactly as a server without the cache does.
TEST(ServerPrefixCacheTest, ARepeatedQuestionReusesItsPromptAndAnswersTheSame) {
  ServerOptions cached_options = TinyOptions();
  cached_options.engine.prefix_cache = true;
  std::unique_ptr<LiteStageServer> cached = StartReady(cached_options);
  std::unique_ptr<LiteStageServer> plain = StartReady(TinyOptions());
  ASSERT_NE(cached, nullptr);
  ASSERT_NE(plain, nullptr);
  const auto reason = [](LiteStageServer& server, v1::ReasonResponse* out) {
    auto stub = v1::LiteStage::NewStub(ChannelTo(server));
    grpc::ClientContext context;
    SetDeadline(&context, 60);
    v1::ReasonRequest request;
    // ~70 byte tokens: four whole blocks of the recall prompt.
    request.set_question(
        "Which of these would let the most heat travel through a wall?");
    const grpc::Status status = stub->Reason(&context, request, out);
    EXPECT_TRUE(status.ok()) << status.error_message();
  };
  v1::ReasonResponse first, again, reference;
  reason(*cached, &first);
  reason(*cached, &again);
  reason(*plain, &reference);
  ASSERT_EQ(again.stages_size(), 3);
  ASSERT_EQ(reference.stages_size(), 3);
  EXPECT_EQ(first.stages(0).cached_prompt_tokens(), 0);
  EXPECT_GE(again.stages(0).cached_prompt_tokens(), 64);
  EXPECT_EQ(reference.stages(0).cached_prompt_tokens(), 0);
  for (int s = 0; s < 3; ++s) {
    EXPECT_EQ(again.stages(s).output(), reference.stages(s).output()) << s;
    EXPECT_EQ(first.stages(s).output(), reference.stages(s).output()) << s;
  }
  EXPECT_EQ(again.answer(), reference.answer());
  const std::string text = cached->metrics()->Serialize();
  EXPECT_GE(
      SampleValue(
          text,
          R"(litestage_prefix_cache_tokens_total{pipeline="mini",result="hit",stage="recall"})"),
      64);
  EXPECT_GT(SampleValue(text, "litestage_prefix_cache_blocks"), 0);
}

TEST(ServerOverloadTest, FullQueueReturnsUnavailable) {
  ServerOptions options = TinyOptions();
  options.max_queue = 1;
  options.max_batch = 1;
  options.max_new_tokens = 64;
  std::unique_ptr<LiteStageServer> server = StartReady(options);
  ASSERT_NE(server, nullptr);
  constexpr int kClients = 16;
  std::atomic<int> ok{0}, unavailable{0}, other{0};
  std::vector<std::thread> threads;
  for (int i = 0; i < kClients; ++i) {
    threads.emplace_back([&, i] {
      auto stub = v1::LiteStage::NewStub(ChannelTo(*server));
      grpc::ClientContext context;
      SetDeadline(&context, 30);
      v1::ReasonRequest request;
      request.set_question(absl::StrCat("Busy question ", i, "?"));
      v1::ReasonResponse response;
      grpc::Status status = stub->Reason(&context, request, &response);
      if (status.ok()) {
        ok += response.stages_size() == 3;
      } else if (status.error_code() == grpc::StatusCode::UNAVAILABLE) {
        EXPECT_THAT(status.error_message(), HasSubstr("admission queue full"));
        ++unavailable;
      } else {
        ADD_FAILURE() << status.error_message();
        ++other;
      }
    });
  }
  for (std::thread& thread : threads) thread.join();
  EXPECT_GT(ok.load(), 0);
  EXPECT_GT(unavailable.load(), 0);
  EXPECT_EQ(ok.load() + unavailable.load(), kClients);
}

TEST(ServerHealthTest, LoadingServingDraining) {
  std::promise<void> release;
  std::shared_future<void> released = release.get_future().share();
  ServerOptions options = TinyOptions();
  options.before_load = [released] { released.wait(); };
  absl::StatusOr<std::unique_ptr<LiteStageServer>> started =
      LiteStageServer::Start(options);
  ASSERT_TRUE(started.ok()) << started.status();
  LiteStageServer& server = **started;
  auto channel = ChannelTo(server);
  auto stub = v1::LiteStage::NewStub(channel);

  // Loading: alive, not ready; RPCs refused.
  EXPECT_EQ(HealthOf(channel.get(), ""), HealthCheckResponse::SERVING);
  EXPECT_EQ(HealthOf(channel.get(), kLiteStageServiceName),
            HealthCheckResponse::NOT_SERVING);
  {
    grpc::ClientContext context;
    v1::ReasonRequest request;
    request.set_question("Now?");
    v1::ReasonResponse response;
    grpc::Status status = stub->Reason(&context, request, &response);
    EXPECT_EQ(status.error_code(), grpc::StatusCode::UNAVAILABLE);
    EXPECT_THAT(status.error_message(), HasSubstr("loading model"));
  }

  release.set_value();
  ASSERT_TRUE(server.WaitUntilReady().ok());
  EXPECT_TRUE(Eventually([&] {
    return HealthOf(channel.get(), kLiteStageServiceName) ==
           HealthCheckResponse::SERVING;
  }));

  server.BeginDrain();
  EXPECT_EQ(HealthOf(channel.get(), kLiteStageServiceName),
            HealthCheckResponse::NOT_SERVING);
  EXPECT_EQ(HealthOf(channel.get(), ""), HealthCheckResponse::SERVING);
  {
    grpc::ClientContext context;
    v1::GenerateRequest request;
    request.set_prompt("late");
    v1::GenerateResponse response;
    grpc::Status status = stub->Generate(&context, request, &response);
    EXPECT_EQ(status.error_code(), grpc::StatusCode::UNAVAILABLE);
    EXPECT_THAT(status.error_message(), HasSubstr("draining"));
  }
  server.Shutdown(5);
}

TEST(ServerDrainTest, AcceptedRequestsFinishDuringDrain) {
  // Long generations, so that the requests are still running when the
  // drain starts (the pipeline's short stages finished before the first
  // poll at times).
  ServerOptions options = TinyOptions();
  options.max_new_tokens = 256;
  std::unique_ptr<LiteStageServer> server = StartReady(options);
  ASSERT_NE(server, nullptr);
  auto stub = v1::LiteStage::NewStub(ChannelTo(*server));
  constexpr int kRequests = 8;
  std::atomic<int> ok{0};
  std::vector<std::thread> threads;
  for (int i = 0; i < kRequests; ++i) {
    threads.emplace_back([&, i] {
      grpc::ClientContext context;
      SetDeadline(&context, 30);
      v1::GenerateRequest request;
      request.set_prompt(absl::StrCat("Drain ", i));
      request.set_max_new_tokens(256);
      v1::GenerateResponse response;
      ok += stub->Generate(&context, request, &response).ok();
    });
  }
  // EXPECT, not ASSERT: the threads must be joined either way.
  EXPECT_TRUE(Eventually([&] { return server->requests_in_flight() > 0; }));
  const int64_t accepted = server->requests_in_flight();
  server->Shutdown(30);
  for (std::thread& thread : threads) thread.join();
  // Every request accepted before the drain succeeded.
  EXPECT_GE(ok.load(), accepted);
}

// A shipped profile (profiles/*.json, compiled in) is offered without any
// flag exactly when it was made for the loaded model and its pipeline is
// served; --shipped-profiles=false turns them off.
std::string ShippedProfileJson(const std::string& name,
                               const std::string& fingerprint) {
  return absl::StrCat(R"({"schema": "litestage.profile/v1", "name": ")", name,
                      R"(", "model": {"architecture": "LlamaForCausalLM",
  "num_layers": 2, "hidden_size": 64, "fingerprint": ")",
                      fingerprint, R"("}, "pipeline": "mini", "stages": {
  "recall": {"skip": ["attention.1"]}, "analyze": {"skip": []},
  "summary": {"skip": ["mlp.0"]}}})");
}

std::vector<std::string> ListedProfiles(LiteStageServer& server) {
  auto stub = v1::LiteStage::NewStub(ChannelTo(server));
  grpc::ClientContext context;
  SetDeadline(&context, 10);
  v1::ListProfilesResponse profiles;
  EXPECT_TRUE(
      stub->ListProfiles(&context, v1::ListProfilesRequest(), &profiles).ok());
  std::vector<std::string> names;
  for (const v1::ProfileInfo& info : profiles.profiles()) {
    names.push_back(info.name());
  }
  return names;
}

TEST(ServerShippedProfilesTest, OfferedForTheirModelOnly) {
  ServerOptions options = TinyOptions();
  absl::StatusOr<std::unique_ptr<Engine>> engine =
      Engine::Create(options.engine);
  ASSERT_TRUE(engine.ok()) << engine.status();
  ASSERT_EQ((*engine)->config().num_hidden_layers, 2);
  ASSERT_EQ((*engine)->config().hidden_size, 64);
  const std::string fingerprint = (*engine)->fingerprint().ToString();
  const std::string other =
      absl::StrCat("LlamaForCausalLM/2x64/config=", std::string(16, '0'),
                   "/tensors=", std::string(16, '0'));
  ASSERT_NE(fingerprint, other);
  options.shipped_profiles_override = std::vector<ShippedProfile>{
      {"profiles/tiny.json", ShippedProfileJson("tiny-shipped", fingerprint)},
      {"profiles/other.json", ShippedProfileJson("other-model", other)}};
  {
    std::unique_ptr<LiteStageServer> server = StartReady(options);
    ASSERT_NE(server, nullptr);
    const std::vector<std::string> names = ListedProfiles(*server);
    EXPECT_THAT(names, ::testing::Contains("tiny-shipped"));
    EXPECT_THAT(names, ::testing::Not(::testing::Contains("other-model")));
    // Requests use it by name; its skips are applied per stage.
    auto stub = v1::LiteStage::NewStub(ChannelTo(*server));
    grpc::ClientContext context;
    SetDeadline(&context, 30);
    v1::ReasonRequest request;
    request.set_question("Is ice cold?");
    request.set_profile("tiny-shipped");
    v1::ReasonResponse response;
    const grpc::Status status = stub->Reason(&context, request, &response);
    ASSERT_TRUE(status.ok()) << status.error_message();
    ASSERT_EQ(response.stages_size(), 3);
    EXPECT_GT(response.stages(0).sublayers().attention_skipped(), 0);
    EXPECT_EQ(response.stages(0).sublayers().mlp_skipped(), 0);
    EXPECT_EQ(response.stages(2).sublayers().attention_skipped(), 0);
    EXPECT_GT(response.stages(2).sublayers().mlp_skipped(), 0);
    server->Shutdown(5);
  }
  options.shipped_profiles = false;
  std::unique_ptr<LiteStageServer> server = StartReady(options);
  ASSERT_NE(server, nullptr);
  EXPECT_THAT(ListedProfiles(*server),
              ::testing::Not(::testing::Contains("tiny-shipped")));
  server->Shutdown(5);
}

TEST(ServerStartTest, BadOptionsFail) {
  ServerOptions options = TinyOptions();
  options.default_pipeline = "missing";
  EXPECT_FALSE(LiteStageServer::Start(options).ok());
  options = TinyOptions();
  options.profile_files = {"/nonexistent/profile.json"};
  absl::StatusOr<std::unique_ptr<LiteStageServer>> server =
      LiteStageServer::Start(options);
  ASSERT_FALSE(server.ok());
  EXPECT_THAT(std::string(server.status().message()),
              HasSubstr("/nonexistent/profile.json"));
  options = TinyOptions();
  options.engine.model = "synthetic:nope";
  server = LiteStageServer::Start(options);
  ASSERT_TRUE(server.ok()) << server.status();  // Listens before loading.
  EXPECT_FALSE((*server)->WaitUntilReady().ok());
}

}  // namespace
}  // namespace litestage
