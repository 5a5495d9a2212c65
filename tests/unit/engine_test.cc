// Engine and CPU backend behaviour on the synthetic `tiny` preset: batching,
// prefill chunking, KV cache accounting, sub-layer skipping, observation and
// stop conditions. Numerical agreement with transformers is in tests/golden.
// (~730 lines: one small case per engine behaviour on one fixture.)
#include "engine/runtime/engine.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <string>
#include <vector>

#include "engine/util/float16.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace litestage {
namespace {

using ::testing::HasSubstr;

std::unique_ptr<Engine> MakeTinyEngine(int64_t kv_cache_tokens = 4096,
                                       DType dtype = DType::kF32) {
  EngineOptions options;
  options.model = "synthetic:tiny";
  options.matrix_dtype = dtype;
  options.backend.num_threads = 2;
  options.backend.kv_cache_tokens = kv_cache_tokens;
  auto engine = Engine::Create(options);
  EXPECT_TRUE(engine.ok()) << engine.status();
  return engine.ok() ? *std::move(engine) : nullptr;
}

std::vector<int32_t> Tokens(int64_t n, int32_t seed) {
  std::vector<int32_t> tokens(n);
  for (int64_t i = 0; i < n; ++i)
    tokens[i] = static_cast<int32_t>((seed * 131 + i * 17) % 500);
  return tokens;
}

int32_t Argmax(const float* row, int64_t n) {
  return static_cast<int32_t>(std::max_element(row, row + n) - row);
}

float MaxAbsDiff(const std::vector<float>& a, const std::vector<float>& b) {
  EXPECT_EQ(a.size(), b.size());
  float worst = 0;
  for (size_t i = 0; i < a.size(); ++i)
    worst = std::max(worst, std::fabs(a[i] - b[i]));
  return worst;
}

GenerationRequest Greedy(std::vector<int32_t> prompt, int64_t max_new_tokens) {
  GenerationRequest request;
  request.prompt_tokens = std::move(prompt);
  request.max_new_tokens = max_new_tokens;
  request.ignore_eos = true;
  return request;
}

TEST(EngineTest, SyntheticModelIsLabelled) {
  auto engine = MakeTinyEngine();
  ASSERT_NE(engine, nullptr);
  EXPECT_TRUE(engine->weights().synthetic);
  EXPECT_THAT(engine->Describe(), HasSubstr("SYNTHETIC"));
}

TEST(EngineTest, BatchedGenerationEqualsOneAtATime) {
  auto engine = MakeTinyEngine();
  ASSERT_NE(engine, nullptr);
  std::vector<GenerationRequest> requests = {
      Greedy(Tokens(5, 1), 12), Greedy(Tokens(23, 2), 7),
      Greedy(Tokens(1, 3), 16),
      // Longer than one prefill step:
      // its chunks share steps with
      // the others' decode tokens.
      Greedy(Tokens(Engine::kMaxPrefillChunk + 150, 4), 5)};
  auto batched = engine->GenerateBatch(requests);
  ASSERT_TRUE(batched.ok()) << batched.status();
  for (size_t i = 0; i < requests.size(); ++i) {
    auto single = engine->Generate(requests[i]);
    ASSERT_TRUE(single.ok()) << single.status();
    EXPECT_EQ((*batched)[i].tokens, single->tokens) << "request " << i;
    EXPECT_EQ(static_cast<int64_t>(single->tokens.size()),
              requests[i].max_new_tokens);
    EXPECT_EQ(single->finish_reason, FinishReason::kLength);
  }
  EXPECT_EQ(engine->kv_blocks().num_sequences(), 0);
  EXPECT_EQ(engine->kv_blocks().free_blocks(),
            engine->kv_blocks().num_blocks());
}

// Decoding token by token through the KV cache must give the logits a single
// prefill over the whole sequence gives (different code paths: one row at a
// time versus 600 rows in two chunks).
TEST(EngineTest, DecodeThroughCacheMatchesChunkedPrefill) {
  auto engine = MakeTinyEngine();
  ASSERT_NE(engine, nullptr);
  const int64_t vocab = engine->config().vocab_size;
  const std::vector<int32_t> tokens = Tokens(Engine::kMaxPrefillChunk + 88, 4);
  auto prefill = engine->PromptLogits(tokens);
  ASSERT_TRUE(prefill.ok()) << prefill.status();
  ASSERT_EQ(prefill->size(), tokens.size() * vocab);

  const SequenceId sequence = engine->kv_blocks().AddSequence();
  float worst = 0;
  for (size_t t = 0; t < tokens.size(); ++t) {
    ForwardBatch batch;
    batch.chunks.push_back(SequenceChunk{absl::MakeConstSpan(&tokens[t], 1),
                                         static_cast<int64_t>(t), kNoSkip,
                                         LogitsMode::kLast});
    ForwardResult result;
    ASSERT_TRUE(engine->Forward({&sequence, 1}, &batch, &result).ok());
    for (int64_t v = 0; v < vocab; ++v) {
      worst = std::max(worst,
                       std::fabs(result.logits[v] - (*prefill)[t * vocab + v]));
    }
  }
  engine->kv_blocks().Release(sequence);
  // Same fp32 math in a different blocking order: differences are rounding.
  EXPECT_LT(worst, 1e-4f);
}

TEST(EngineTest, GreedyTokensAreArgmaxOfPromptLogits) {
  auto engine = MakeTinyEngine();
  ASSERT_NE(engine, nullptr);
  const int64_t vocab = engine->config().vocab_size;
  std::vector<int32_t> prompt = Tokens(9, 5);
  auto generated = engine->Generate(Greedy(prompt, 10));
  ASSERT_TRUE(generated.ok());
  std::vector<int32_t> all = prompt;
  all.insert(all.end(), generated->tokens.begin(), generated->tokens.end() - 1);
  auto logits = engine->PromptLogits(all);
  ASSERT_TRUE(logits.ok());
  for (size_t i = 0; i < generated->tokens.size(); ++i) {
    const int64_t row = static_cast<int64_t>(prompt.size() + i) - 1;
    EXPECT_EQ(Argmax(logits->data() + row * vocab, vocab), generated->tokens[i])
        << i;
  }
}

TEST(EngineTest, EmptySkipSetIsBitIdenticalToNoSkipping) {
  auto engine = MakeTinyEngine();
  ASSERT_NE(engine, nullptr);
  const int64_t layers = engine->config().num_hidden_layers;
  const std::vector<int32_t> tokens = Tokens(12, 6);
  auto plain = engine->PromptLogits(tokens);
  SkipSet nothing;
  nothing.attention.assign(layers, false);
  nothing.mlp.assign(layers, false);
  auto explicit_none = engine->PromptLogits(tokens, nothing);
  ASSERT_TRUE(plain.ok() && explicit_none.ok());
  EXPECT_EQ(*plain, *explicit_none);

  SkipSet skip_attention;
  skip_attention.attention = {true};
  auto skipped = engine->PromptLogits(tokens, skip_attention);
  ASSERT_TRUE(skipped.ok());
  EXPECT_GT(MaxAbsDiff(*plain, *skipped), 1e-3f);
}

// With every sub-layer skipped the model is lm_head(norm(embedding)): an
// independent reference computed here from the weights.
TEST(EngineTest, SkippingEverySublayerLeavesEmbeddingThroughHead) {
  auto engine = MakeTinyEngine();
  ASSERT_NE(engine, nullptr);
  const ModelWeights& w = engine->weights();
  const ModelConfig& c = w.config;
  SkipSet all;
  all.attention.assign(c.num_hidden_layers, true);
  all.mlp.assign(c.num_hidden_layers, true);
  const std::vector<int32_t> tokens = {3, 141, 59};
  auto logits = engine->PromptLogits(tokens, all);
  ASSERT_TRUE(logits.ok());
  ASSERT_EQ(w.embed_tokens.dtype, DType::kF32);
  for (size_t t = 0; t < tokens.size(); ++t) {
    const float* x = w.embed_tokens.f32() + tokens[t] * c.hidden_size;
    double sum_sq = 0;
    for (int64_t i = 0; i < c.hidden_size; ++i) sum_sq += double(x[i]) * x[i];
    const double inv_rms =
        1.0 / std::sqrt(sum_sq / c.hidden_size + c.rms_norm_eps);
    for (int64_t v = 0; v < c.vocab_size; ++v) {
      const float* head = w.lm_head.f32() + v * c.hidden_size;
      double expected = 0;
      for (int64_t i = 0; i < c.hidden_size; ++i) {
        expected += x[i] * inv_rms * w.norm.f32()[i] * head[i];
      }
      ASSERT_NEAR((*logits)[t * c.vocab_size + v], expected, 1e-4)
          << t << "," << v;
    }
  }
}

class CountingObserver : public SublayerObserver {
 public:
  void Observe(int64_t chunk_index, int64_t layer, SublayerKind kind,
               const float* input, const float* output, int64_t num_tokens,
               int64_t hidden_size) override {
    calls.push_back({chunk_index, layer, kind, num_tokens});
    // A residual sub-layer changes its input.
    double diff = 0;
    for (int64_t i = 0; i < num_tokens * hidden_size; ++i)
      diff += std::fabs(output[i] - input[i]);
    if (diff == 0) unchanged++;
  }
  struct Call {
    int64_t chunk, layer;
    SublayerKind kind;
    int64_t tokens;
  };
  std::vector<Call> calls;
  int unchanged = 0;
};

TEST(EngineTest, ObserverSeesEveryExecutedSublayerOfEveryChunk) {
  auto engine = MakeTinyEngine();
  ASSERT_NE(engine, nullptr);
  const int64_t layers = engine->config().num_hidden_layers;
  SkipSet skip;
  skip.attention.assign(layers, false);
  skip.attention[layers - 1] = true;
  const SequenceId a = engine->kv_blocks().AddSequence();
  const SequenceId b = engine->kv_blocks().AddSequence();
  const std::vector<int32_t> ta = Tokens(4, 1), tb = Tokens(6, 2);
  CountingObserver observer;
  ForwardBatch batch;
  batch.chunks = {
      SequenceChunk{ta, 0, kNoSkip, LogitsMode::kLast},
      SequenceChunk{tb, 0, *engine->InternSkipSet(skip), LogitsMode::kAll}};
  batch.observer = &observer;
  ForwardResult result;
  const SequenceId ab[] = {a, b};
  ASSERT_TRUE(engine->Forward(ab, &batch, &result).ok());
  // Chunk a: 2 sub-layers per layer; chunk b: one attention fewer.
  EXPECT_EQ(static_cast<int64_t>(observer.calls.size()),
            2 * layers + 2 * layers - 1);
  for (const auto& call : observer.calls) {
    EXPECT_EQ(call.tokens, call.chunk == 0 ? 4 : 6);
    EXPECT_FALSE(call.chunk == 1 && call.layer == layers - 1 &&
                 call.kind == SublayerKind::kAttention);
  }
  EXPECT_EQ(observer.unchanged, 0);
  EXPECT_EQ(result.first_logit_row, (std::vector<int64_t>{0, 1}));
  EXPECT_EQ(static_cast<int64_t>(result.logits.size()),
            7 * engine->config().vocab_size);
  engine->kv_blocks().Release(a);
  engine->kv_blocks().Release(b);
}

// A kSample chunk returns what SampleToken picks from the logits of its last
// position, for each chunk's own draw, and no logits; chunks asking for
// logits in the same step still get them. Exact against the same step asking
// kLast (the same rows through the same kernels); against each prompt alone
// within 1e-5 (other batch shapes may round differently).
TEST(EngineTest, SampledChunksReturnTheReferenceSamplersPick) {
  auto engine = MakeTinyEngine();
  ASSERT_NE(engine, nullptr);
  const int64_t vocab = engine->config().vocab_size;
  const std::vector<std::vector<int32_t>> prompts = {Tokens(5, 1), Tokens(7, 2),
                                                     Tokens(3, 3)};
  const std::vector<int32_t> scored = Tokens(4, 4);
  const std::vector<TokenDraw> draws = {TokenDraw{},
                                        TokenDraw{1.0f, 0, 1.0f, 0.37},
                                        TokenDraw{0.8f, 5, 0.9f, 0.81}};
  const auto step = [&](LogitsMode mode, ForwardResult* result) {
    std::vector<SequenceId> sequences;
    ForwardBatch batch;
    for (size_t i = 0; i < prompts.size(); ++i) {
      sequences.push_back(engine->kv_blocks().AddSequence());
      batch.chunks.push_back(SequenceChunk{prompts[i], 0, kNoSkip, mode});
      batch.chunks.back().draw = draws[i];
    }
    sequences.push_back(engine->kv_blocks().AddSequence());
    batch.chunks.push_back(SequenceChunk{scored, 0, kNoSkip, LogitsMode::kAll});
    ASSERT_TRUE(engine->Forward(sequences, &batch, result).ok());
    for (SequenceId s : sequences) engine->kv_blocks().Release(s);
  };
  ForwardResult sampled, logits;
  step(LogitsMode::kSample, &sampled);
  step(LogitsMode::kLast, &logits);
  ASSERT_EQ(sampled.sampled.size(), prompts.size() + 1);
  EXPECT_EQ(sampled.sampled.back().token, -1);  // The kAll chunk.
  EXPECT_EQ(sampled.first_logit_row.back(), 0);
  ASSERT_EQ(static_cast<int64_t>(sampled.logits.size()),
            static_cast<int64_t>(scored.size()) * vocab);
  for (size_t i = 0; i < prompts.size(); ++i) {
    SCOPED_TRACE(i);
    SamplingScratch scratch;
    TokenConfidence confidence;
    const int32_t token =
        SampleToken(logits.logits.data() + logits.first_logit_row[i] * vocab,
                    vocab, draws[i], &confidence, &scratch);
    EXPECT_EQ(sampled.sampled[i].token, token);
    EXPECT_EQ(sampled.sampled[i].confidence.max_prob, confidence.max_prob);
    EXPECT_EQ(sampled.sampled[i].confidence.max_logit, confidence.max_logit);
    EXPECT_EQ(sampled.sampled[i].confidence.entropy, confidence.entropy);

    absl::StatusOr<std::vector<float>> alone = engine->PromptLogits(prompts[i]);
    ASSERT_TRUE(alone.ok()) << alone.status();
    TokenConfidence alone_confidence;
    EXPECT_EQ(SampleToken(alone->data() + (prompts[i].size() - 1) * vocab,
                          vocab, draws[i], &alone_confidence, &scratch),
              token);
    EXPECT_NEAR(alone_confidence.max_prob, confidence.max_prob, 1e-5);
    EXPECT_NEAR(alone_confidence.max_logit, confidence.max_logit, 1e-5);
  }
  // The kAll rows are the same whichever way the other chunks asked.
  EXPECT_EQ(sampled.logits,
            std::vector<float>(logits.logits.end() - scored.size() * vocab,
                               logits.logits.end()));
}

// Teacher forcing of many sequences (shared prefixes, two skip sets,
// prompts longer than one prefill chunk) gives, row for row, the logits
// PromptLogits computes for each sequence alone.
TEST(EngineTest, ScoreContinuationsEqualsPromptLogits) {
  auto engine = MakeTinyEngine(/*kv_cache_tokens=*/8192);
  ASSERT_NE(engine, nullptr);
  const int64_t vocab = engine->config().vocab_size;
  SkipSet skip;
  skip.mlp = {false, true};
  std::vector<Engine::ScoringRequest> requests;
  const std::vector<int32_t> few_shot = Tokens(40, 3);
  for (int32_t q = 0; q < 3; ++q) {
    for (int variant = 0; variant < 2; ++variant) {
      Engine::ScoringRequest r;
      r.tokens = few_shot;
      const std::vector<int32_t> own = Tokens(10 + 7 * q, 20 + q);
      r.tokens.insert(r.tokens.end(), own.begin(), own.end());
      r.first_scored = static_cast<int64_t>(r.tokens.size()) - 3;
      const std::vector<int32_t> continuation = Tokens(5 + variant, 40 + q);
      r.tokens.insert(r.tokens.end(), continuation.begin(), continuation.end());
      if (variant == 1) r.skip = skip;
      requests.push_back(std::move(r));
    }
  }
  // Longer than kMaxPrefillChunk before and within the scored range (the
  // tiny model's context is 1024), and a request with nothing to score.
  ASSERT_EQ(engine->config().max_position_embeddings, 1024);
  Engine::ScoringRequest long_request;
  long_request.tokens = Tokens(1025, 9);  // 1024 fed
  long_request.first_scored = 400;
  requests.push_back(long_request);
  Engine::ScoringRequest unscored;
  unscored.tokens = Tokens(20, 4);
  unscored.first_scored = 20;
  requests.push_back(unscored);

  // Rows arrive in order, step by step (the long request's 625 scored rows
  // in more than one).
  std::vector<std::vector<float>> scored(requests.size());
  std::vector<int> calls(requests.size(), 0);
  const auto collect = [&](size_t i, int64_t first,
                           absl::Span<const float> rows) {
    ++calls[i];
    EXPECT_EQ(static_cast<size_t>(first * vocab), scored[i].size());
    scored[i].insert(scored[i].end(), rows.begin(), rows.end());
  };
  ASSERT_TRUE(engine->ScoreContinuations(requests, collect).ok());
  EXPECT_GT(calls[requests.size() - 2], 1);
  for (size_t i = 0; i < requests.size(); ++i) {
    SCOPED_TRACE(i);
    const Engine::ScoringRequest& r = requests[i];
    auto logits = engine->PromptLogits(r.tokens, r.skip);
    ASSERT_TRUE(logits.ok());
    const std::vector<float> expected(
        logits->begin() + (r.first_scored - 1) * vocab, logits->end() - vocab);
    // Same kernels over the same positions; only the batch composition
    // differs, which the CPU kernels do not depend on.
    EXPECT_EQ(scored[i], expected);
  }
  EXPECT_EQ(engine->kv_blocks().num_sequences(), 0);

  // Bad requests name themselves and leave nothing behind.
  Engine::ScoringRequest bad;
  bad.tokens = {1, 2, 3};
  bad.first_scored = 0;
  absl::Status status = engine->ScoreContinuations(
      {&bad, 1}, [](size_t, int64_t, absl::Span<const float>) {});
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(status.message(), HasSubstr("first_scored 0"));
  bad.first_scored = 1;
  bad.tokens[1] = static_cast<int32_t>(vocab);
  status = engine->ScoreContinuations(
      {&bad, 1}, [](size_t, int64_t, absl::Span<const float>) {});
  EXPECT_THAT(status.message(), HasSubstr("token id"));
  EXPECT_EQ(engine->kv_blocks().num_sequences(), 0);
}

TEST(EngineTest, FullCacheIsAnErrorAndLeaksNothing) {
  auto engine = MakeTinyEngine(/*kv_cache_tokens=*/32);
  ASSERT_NE(engine, nullptr);
  auto result = engine->Generate(Greedy(Tokens(40, 1), 4));
  EXPECT_EQ(result.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(std::string(result.status().message()),
              HasSubstr("KV cache full"));  // At Add: it can never fit.
  const KvBlockManager& blocks = engine->kv_blocks();
  EXPECT_EQ(blocks.free_blocks(), blocks.num_blocks());
  EXPECT_EQ(blocks.num_sequences(), 0);
  // The cache still works afterwards.
  EXPECT_TRUE(engine->Generate(Greedy(Tokens(8, 1), 4)).ok());
}

// Prefix-cached blocks are read-only: a chunk that would overwrite positions
// inside a block shared with another sequence is refused.
TEST(EngineTest, StepsRefuseWritesIntoSharedBlocks) {
  auto engine = MakeTinyEngine();
  ASSERT_NE(engine, nullptr);
  KvBlockManager& blocks = engine->kv_blocks();
  const std::vector<int32_t> tokens = Tokens(32, 9);
  const SequenceId parent = blocks.AddSequence();
  ForwardBatch batch;
  batch.chunks.push_back(SequenceChunk{tokens, 0, kNoSkip, LogitsMode::kLast});
  ForwardResult result;
  ASSERT_TRUE(engine->Forward({&parent, 1}, &batch, &result).ok());
  const SequenceId child = blocks.Fork(parent, 32);
  batch.chunks[0] = SequenceChunk{absl::MakeConstSpan(tokens).subspan(0, 4), 16,
                                  kNoSkip, LogitsMode::kLast};
  const absl::Status status = engine->Forward({&child, 1}, &batch, &result);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(status.message()), HasSubstr("shared"));
  // Appending after the shared prefix is fine.
  batch.chunks[0].start_position = 32;
  EXPECT_TRUE(engine->Forward({&child, 1}, &batch, &result).ok());
  blocks.Release(parent);
  blocks.Release(child);
  EXPECT_EQ(blocks.free_blocks(), blocks.num_blocks());
}

// Rolling a sequence back (speculative decoding, prefix reuse): after
// Truncate, feeding other tokens from the cut gives the logits of a fresh
// sequence that never saw the dropped ones.
TEST(EngineTest, TruncatedSequenceContinuesAsIfTheDroppedTokensNeverRan) {
  auto engine = MakeTinyEngine();
  ASSERT_NE(engine, nullptr);
  const int64_t vocab = engine->config().vocab_size;
  KvBlockManager& blocks = engine->kv_blocks();
  const std::vector<int32_t> first = Tokens(45, 3), other = Tokens(30, 8);
  for (const int64_t keep : {int64_t{37}, int64_t{32}}) {  // Mid-block, edge.
    SCOPED_TRACE(keep);
    const SequenceId sequence = blocks.AddSequence();
    ForwardBatch batch;
    batch.chunks.push_back(SequenceChunk{first, 0, kNoSkip, LogitsMode::kNone});
    ForwardResult result;
    ASSERT_TRUE(engine->Forward({&sequence, 1}, &batch, &result).ok());
    ASSERT_TRUE(blocks.Truncate(sequence, keep).ok());
    EXPECT_EQ(blocks.capacity(sequence), (keep + 15) / 16 * 16);
    batch.chunks[0] = SequenceChunk{other, keep, kNoSkip, LogitsMode::kAll};
    ASSERT_TRUE(engine->Forward({&sequence, 1}, &batch, &result).ok());
    blocks.Release(sequence);

    std::vector<int32_t> fresh(first.begin(), first.begin() + keep);
    fresh.insert(fresh.end(), other.begin(), other.end());
    auto expected = engine->PromptLogits(fresh);
    ASSERT_TRUE(expected.ok()) << expected.status();
    ASSERT_EQ(result.logits.size(), other.size() * vocab);
    float worst = 0;
    for (size_t i = 0; i < result.logits.size(); ++i) {
      worst = std::max(
          worst, std::fabs(result.logits[i] - (*expected)[keep * vocab + i]));
    }
    // The same rows through the same kernels, chunked differently.
    EXPECT_LT(worst, 1e-4f);
  }
  EXPECT_EQ(blocks.num_sequences(), 0);
  EXPECT_EQ(blocks.free_blocks(), blocks.num_blocks());
}

// Skip sets get one id per distinct set of skipped sub-layers, whatever
// their spelling; the id is what chunks carry to the backend.
TEST(EngineTest, SkipSetsAreInternedBySkippedSublayers) {
  auto engine = MakeTinyEngine();
  ASSERT_NE(engine, nullptr);
  ASSERT_EQ(engine->config().num_hidden_layers, 2);
  SkipSet none_spelled_out;
  none_spelled_out.attention = {false, false};
  EXPECT_EQ(*engine->InternSkipSet(SkipSet::None()), kNoSkip);
  EXPECT_EQ(*engine->InternSkipSet(none_spelled_out), kNoSkip);
  SkipSet mlp1;
  mlp1.mlp = {false, true};
  SkipSet mlp1_long = mlp1;
  mlp1_long.attention = {false, false};
  SkipSet attention0;
  attention0.attention = {true};  // Shorter than the model: the rest run.
  const SkipSetId a = *engine->InternSkipSet(mlp1);
  EXPECT_NE(a, kNoSkip);
  EXPECT_EQ(*engine->InternSkipSet(mlp1_long), a);
  const SkipSetId b = *engine->InternSkipSet(attention0);
  EXPECT_NE(b, a);
  EXPECT_NE(b, kNoSkip);
  EXPECT_EQ(*engine->InternSkipSet(mlp1), a);
  SkipSet too_long;
  too_long.mlp = {false, false, true};
  EXPECT_EQ(engine->InternSkipSet(too_long).status().code(),
            absl::StatusCode::kInvalidArgument);
  // The backend sees the id's set: the skipped MLP is counted per token.
  ForwardBatch batch;
  const std::vector<int32_t> tokens = Tokens(3, 1);
  batch.chunks.push_back(SequenceChunk{tokens, 0, a, LogitsMode::kLast});
  ForwardResult result;
  const SequenceId sequence = engine->kv_blocks().AddSequence();
  ASSERT_TRUE(engine->Forward({&sequence, 1}, &batch, &result).ok());
  engine->kv_blocks().Release(sequence);
  EXPECT_EQ(result.chunk_sublayers[0].mlp_skipped, 3);
  EXPECT_EQ(result.chunk_sublayers[0].attention_skipped, 0);
}

TEST(EngineTest, InvalidRequestsNameTheProblem) {
  auto engine = MakeTinyEngine();
  ASSERT_NE(engine, nullptr);
  auto empty = engine->Generate(Greedy({}, 4));
  EXPECT_EQ(empty.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(empty.status().message()),
              HasSubstr("prompt_tokens"));
  auto bad_id = engine->Generate(Greedy({1, 99999}, 4));
  EXPECT_EQ(bad_id.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(bad_id.status().message()), HasSubstr("99999"));
  auto too_long = engine->Generate(
      Greedy(Tokens(engine->config().max_position_embeddings, 1), 4));
  EXPECT_EQ(too_long.status().code(), absl::StatusCode::kOutOfRange);
  GenerationRequest bad_sampling = Greedy({1, 2}, 4);
  bad_sampling.sampling.top_p = 2;
  EXPECT_THAT(std::string(engine->Generate(bad_sampling).status().message()),
              HasSubstr("top_p"));
}

TEST(EngineTest, StopStringCutsTextAndStreamingMatchesResult) {
  auto engine = MakeTinyEngine();
  ASSERT_NE(engine, nullptr);
  GenerationRequest request = Greedy(Tokens(3, 9), 40);
  auto reference = engine->Generate(request);
  ASSERT_TRUE(reference.ok());
  ASSERT_GE(reference->text.size(), 12u);
  // Pick a stop string from the middle of the reference text on character
  // boundaries (synthetic bytes may form multi-byte characters).
  size_t begin = reference->text.size() / 2;
  while (begin > 0 && (reference->text[begin] & 0xC0) == 0x80) --begin;
  size_t end = begin + 1;
  while (end < reference->text.size() && (reference->text[end] & 0xC0) == 0x80)
    ++end;
  const std::string stop = reference->text.substr(begin, end - begin);
  request.stop_strings = {stop};
  std::string streamed;
  auto stopped =
      engine->Generate(request, [&](size_t index, const std::string& piece) {
        EXPECT_EQ(index, 0u);
        streamed += piece;
      });
  ASSERT_TRUE(stopped.ok());
  EXPECT_EQ(stopped->finish_reason, FinishReason::kStopString);
  const size_t first = reference->text.find(stop);
  EXPECT_EQ(stopped->text, reference->text.substr(0, first));
  EXPECT_EQ(streamed, stopped->text);
}

TEST(EngineTest, EosEndsGenerationUnlessIgnored) {
  auto engine = MakeTinyEngine();
  ASSERT_NE(engine, nullptr);
  GenerationRequest request = Greedy(Tokens(4, 2), 8);
  auto free_run = engine->Generate(request);
  ASSERT_TRUE(free_run.ok());
  // Declare the 3rd generated token an EOS: generation must stop before it.
  const int32_t eos = free_run->tokens[2];
  const_cast<Tokenizer&>(engine->tokenizer()).set_eos_ids({eos});
  request.ignore_eos = false;
  auto stopped = engine->Generate(request);
  ASSERT_TRUE(stopped.ok());
  EXPECT_EQ(stopped->finish_reason, FinishReason::kEos);
  const size_t first_eos =
      std::find(free_run->tokens.begin(), free_run->tokens.end(), eos) -
      free_run->tokens.begin();
  EXPECT_EQ(stopped->tokens,
            std::vector<int32_t>(free_run->tokens.begin(),
                                 free_run->tokens.begin() + first_eos));
}

// The engine's early exit on a real decode: with the threshold set just
// above a window mean that is lower than every earlier one, generation must
// stop exactly at that token, keeping the tokens before it.
TEST(EngineTest, EarlyExitStopsWhereTheWindowMeanFirstReachesThreshold) {
  auto engine = MakeTinyEngine();
  ASSERT_NE(engine, nullptr);
  constexpr int64_t kWindow = 4;
  // Seeded sampling: a varied confidence trace, the same tokens every run.
  GenerationRequest request = Greedy(Tokens(6, 3), 40);
  request.sampling = {.temperature = 1.0f, .seed = 7};
  auto free_run = engine->Generate(request);
  ASSERT_TRUE(free_run.ok());
  ASSERT_EQ(free_run->tokens.size(), 40u);
  std::vector<double> window_mean(free_run->tokens.size(), 2.0);
  for (size_t i = kWindow - 1; i < free_run->tokens.size(); ++i) {
    double sum = 0;
    for (size_t k = i + 1 - kWindow; k <= i; ++k)
      sum += free_run->confidences[k].max_prob;
    window_mean[i] = sum / kWindow;
  }
  // The first new record low of the window mean after token 8: a threshold
  // halfway between it and every earlier mean is crossed exactly there.
  size_t exit_at = 0;
  double earlier_min = window_mean[kWindow - 1];
  for (size_t i = kWindow; i < window_mean.size(); ++i) {
    if (i >= 8 && window_mean[i] < earlier_min) {
      exit_at = i;
      break;
    }
    earlier_min = std::min(earlier_min, window_mean[i]);
  }
  ASSERT_NE(exit_at, 0u) << "no new low in the free run; change the prompt";
  request.early_exit = {.window = kWindow,
                        .threshold = static_cast<float>(
                            (window_mean[exit_at] + earlier_min) / 2)};
  RecordProperty("exit_at", static_cast<int>(exit_at));
  ASSERT_LT(request.early_exit.threshold, earlier_min);
  ASSERT_GE(request.early_exit.threshold, window_mean[exit_at]);
  auto exited = engine->Generate(request);
  ASSERT_TRUE(exited.ok());
  EXPECT_EQ(exited->finish_reason, FinishReason::kEarlyExit);
  EXPECT_EQ(exited->tokens,
            std::vector<int32_t>(free_run->tokens.begin(),
                                 free_run->tokens.begin() + exit_at));
  EXPECT_THAT(exited->early_exit_reason, HasSubstr("over the last 4 tokens"));

  // Threshold 1 (every max_prob is <= 1): the exit fires as soon as the
  // window is full, not before; min_tokens holds it off further.
  request.early_exit = {.window = kWindow, .threshold = 1.0f};
  auto at_once = engine->Generate(request);
  ASSERT_TRUE(at_once.ok());
  EXPECT_EQ(at_once->tokens.size(), static_cast<size_t>(kWindow - 1));
  request.early_exit.min_tokens = 11;
  auto held = engine->Generate(request);
  ASSERT_TRUE(held.ok());
  EXPECT_EQ(held->tokens.size(), 11u);
  EXPECT_EQ(held->finish_reason, FinishReason::kEarlyExit);

  request.early_exit = {.window = -2};
  EXPECT_THAT(engine->Generate(request).status().message(),
              HasSubstr("early_exit.window"));
}

// A skipped attention writes no K/V at its layer; decoding through the cache
// with that skip set must still agree with a one-shot prefill of the whole
// sequence under the same skip set (greedy tokens are its argmaxes).
TEST(EngineTest, SkippedDecodeMatchesSkippedPrefill) {
  auto engine = MakeTinyEngine();
  ASSERT_NE(engine, nullptr);
  const int64_t layers = engine->config().num_hidden_layers;
  const int64_t vocab = engine->config().vocab_size;
  GenerationRequest request = Greedy(Tokens(7, 4), 12);
  request.skip.attention.assign(layers, false);
  request.skip.mlp.assign(layers, false);
  request.skip.attention[1] = true;
  request.skip.mlp[0] = true;
  auto generated = engine->Generate(request);
  ASSERT_TRUE(generated.ok());
  std::vector<int32_t> sequence = request.prompt_tokens;
  sequence.insert(sequence.end(), generated->tokens.begin(),
                  generated->tokens.end());
  auto logits = engine->PromptLogits(sequence, request.skip);
  ASSERT_TRUE(logits.ok());
  const size_t prompt = request.prompt_tokens.size();
  for (size_t i = 0; i < generated->tokens.size(); ++i) {
    EXPECT_EQ(generated->tokens[i],
              Argmax(logits->data() + (prompt - 1 + i) * vocab, vocab))
        << i;
  }
  // And the skips really change the continuation.
  auto plain = engine->Generate(Greedy(Tokens(7, 4), 12));
  ASSERT_TRUE(plain.ok());
  EXPECT_NE(plain->tokens, generated->tokens);
}

// Executed + skipped sub-layers add up to 2 x layers x tokens fed, counted
// by the backend per sequence, with different skip sets in one batch and a
// prompt long enough to be prefilled in several chunks.
TEST(EngineTest, SublayerAccountingCoversEveryForwardedToken) {
  auto engine = MakeTinyEngine();
  ASSERT_NE(engine, nullptr);
  const int64_t layers = engine->config().num_hidden_layers;
  ASSERT_GE(layers, 2);
  std::vector<GenerationRequest> requests = {Greedy(Tokens(650, 1), 5),
                                             Greedy(Tokens(9, 2), 7),
                                             Greedy(Tokens(3, 3), 4)};
  requests[1].skip.attention.assign(layers, false);
  requests[1].skip.attention[1] = true;
  requests[2].skip.mlp.assign(layers, true);
  requests[2].skip.attention.assign(layers, false);
  requests[2].skip.attention[0] = true;
  auto results = engine->GenerateBatch(requests);
  ASSERT_TRUE(results.ok());
  for (size_t i = 0; i < requests.size(); ++i) {
    const GenerationResult& r = (*results)[i];
    SCOPED_TRACE(i);
    // Finished by length: every sampled token but the last was fed back.
    EXPECT_EQ(r.forwarded_tokens,
              r.prompt_tokens + static_cast<int64_t>(r.tokens.size()) - 1);
    EXPECT_EQ(r.sublayers.total(), 2 * layers * r.forwarded_tokens);
    const int64_t skipped_attention =
        std::count(requests[i].skip.attention.begin(),
                   requests[i].skip.attention.end(), true);
    const int64_t skipped_mlp = std::count(requests[i].skip.mlp.begin(),
                                           requests[i].skip.mlp.end(), true);
    EXPECT_EQ(r.sublayers.attention_skipped,
              skipped_attention * r.forwarded_tokens);
    EXPECT_EQ(r.sublayers.mlp_skipped, skipped_mlp * r.forwarded_tokens);
    EXPECT_EQ(r.sublayers.attention_executed,
              (layers - skipped_attention) * r.forwarded_tokens);
  }
}

TEST(EngineTest, Bf16WeightsStayCloseToF32) {
  auto f32 = MakeTinyEngine(4096, DType::kF32);
  auto bf16 = MakeTinyEngine(4096, DType::kBF16);
  ASSERT_NE(f32, nullptr);
  ASSERT_NE(bf16, nullptr);
  EXPECT_EQ(bf16->weights().matrix_dtype, DType::kBF16);
  const std::vector<int32_t> tokens = Tokens(16, 3);
  auto a = f32->PromptLogits(tokens);
  auto b = bf16->PromptLogits(tokens);
  ASSERT_TRUE(a.ok() && b.ok());
  // bf16 keeps 8 mantissa bits (relative rounding 2^-9 per weight); through a
  // 2-layer model the logits move by a few 1e-3 of their scale, never more
  // than 5e-2 absolute for this preset's O(1) logits.
  const float diff = MaxAbsDiff(*a, *b);
  EXPECT_GT(diff, 0.0f);
  EXPECT_LT(diff, 5e-2f);
}

}  // namespace
}  // namespace litestage
