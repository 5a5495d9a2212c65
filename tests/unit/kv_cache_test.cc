#include "engine/runtime/kv_cache.h"

#include <numeric>
#include <vector>

#include "gtest/gtest.h"

namespace litestage {
namespace {

TEST(KvBlockManagerTest, ReservesWholeBlocksAndReleasesThem) {
  KvBlockManager blocks(/*num_blocks=*/4, /*block_size=*/16);
  const SequenceId a = blocks.AddSequence();
  ASSERT_TRUE(blocks.Reserve(a, 1).ok());
  EXPECT_EQ(blocks.capacity(a), 16);
  ASSERT_TRUE(blocks.Reserve(a, 17).ok());
  EXPECT_EQ(blocks.capacity(a), 32);
  EXPECT_EQ(blocks.free_blocks(), 2);
  EXPECT_DOUBLE_EQ(blocks.usage_ratio(), 0.5);
  blocks.Release(a);
  EXPECT_EQ(blocks.free_blocks(), 4);
  EXPECT_FALSE(blocks.Contains(a));
  blocks.Release(a);  // Idempotent.
  EXPECT_EQ(blocks.free_blocks(), 4);
}

TEST(KvBlockManagerTest, ExhaustionChangesNothing) {
  KvBlockManager blocks(3, 8);
  const SequenceId a = blocks.AddSequence();
  const SequenceId b = blocks.AddSequence();
  ASSERT_TRUE(blocks.Reserve(a, 16).ok());
  const absl::Status status = blocks.Reserve(b, 17);  // Needs 3, 1 free.
  EXPECT_EQ(status.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(blocks.capacity(b), 0);
  EXPECT_EQ(blocks.free_blocks(), 1);
  blocks.Release(a);
  EXPECT_TRUE(blocks.Reserve(b, 17).ok());
}

TEST(KvBlockManagerTest, ForkSharesWholePrefixBlocksUntilLastOwnerLeaves) {
  KvBlockManager blocks(8, 4);
  const SequenceId parent = blocks.AddSequence();
  ASSERT_TRUE(blocks.Reserve(parent, 10).ok());  // 3 blocks
  const SequenceId child = blocks.Fork(parent, 8);
  EXPECT_EQ(blocks.capacity(child), 8);
  EXPECT_EQ(std::vector<int32_t>(blocks.block_table(parent).begin(),
                                 blocks.block_table(parent).begin() + 2),
            blocks.block_table(child));
  EXPECT_TRUE(blocks.shared(blocks.block_table(child)[0]));
  EXPECT_FALSE(blocks.shared(blocks.block_table(parent)[2]));
  EXPECT_EQ(blocks.free_blocks(), 5);           // Nothing copied.
  ASSERT_TRUE(blocks.Reserve(child, 12).ok());  // Its own third block.
  EXPECT_EQ(blocks.free_blocks(), 4);
  blocks.Release(parent);
  // The shared two stay with the child; the parent's own block is free.
  EXPECT_EQ(blocks.free_blocks(), 5);
  EXPECT_FALSE(blocks.shared(blocks.block_table(child)[0]));
  blocks.Release(child);
  EXPECT_EQ(blocks.free_blocks(), 8);
}

TEST(KvBlockManagerTest, SequencesNeverShareBlocks) {
  KvBlockManager blocks(8, 4);
  const SequenceId a = blocks.AddSequence();
  const SequenceId b = blocks.AddSequence();
  ASSERT_TRUE(blocks.Reserve(a, 12).ok());
  ASSERT_TRUE(blocks.Reserve(b, 12).ok());
  for (int32_t x : blocks.block_table(a)) {
    for (int32_t y : blocks.block_table(b)) EXPECT_NE(x, y);
  }
  EXPECT_EQ(blocks.Reserve(12345, 1).code(), absl::StatusCode::kNotFound);
}

TEST(KvBlockManagerTest, TruncateReturnsTheBlocksPastTheKeptPositions) {
  KvBlockManager blocks(8, 4);
  const SequenceId a = blocks.AddSequence();
  ASSERT_TRUE(blocks.Reserve(a, 14).ok());  // 4 blocks.
  const std::vector<int32_t> before = blocks.block_table(a);
  ASSERT_TRUE(blocks.Truncate(a, 5).ok());  // Positions 0..4: 2 blocks.
  EXPECT_EQ(blocks.capacity(a), 8);
  EXPECT_EQ(blocks.free_blocks(), 6);
  EXPECT_EQ(blocks.block_table(a),
            (std::vector<int32_t>{before[0], before[1]}));
  ASSERT_TRUE(blocks.Truncate(a, 100).ok());  // Past capacity: no change.
  EXPECT_EQ(blocks.capacity(a), 8);
  ASSERT_TRUE(blocks.Truncate(a, 0).ok());
  EXPECT_EQ(blocks.capacity(a), 0);
  EXPECT_EQ(blocks.free_blocks(), 8);
  EXPECT_EQ(blocks.Truncate(999, 0).code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(blocks.Truncate(a, -1).code(), absl::StatusCode::kInvalidArgument);
}

TEST(KvBlockManagerTest, TruncateKeepsSharedBlocksReadOnly) {
  KvBlockManager blocks(8, 4);
  const SequenceId parent = blocks.AddSequence();
  ASSERT_TRUE(blocks.Reserve(parent, 8).ok());
  const SequenceId child = blocks.Fork(parent, 8);
  ASSERT_TRUE(blocks.Reserve(child, 12).ok());
  // Inside a shared block: the child would have to write into it.
  const absl::Status inside = blocks.Truncate(child, 6);
  EXPECT_EQ(inside.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(blocks.capacity(child), 12);
  // At a block boundary the shared block is only given up.
  ASSERT_TRUE(blocks.Truncate(child, 4).ok());
  EXPECT_EQ(blocks.capacity(child), 4);
  EXPECT_TRUE(blocks.shared(blocks.block_table(child)[0]));
  EXPECT_FALSE(blocks.shared(blocks.block_table(parent)[1]));
  blocks.Release(parent);
  blocks.Release(child);
  EXPECT_EQ(blocks.free_blocks(), 8);
}

TEST(KvBlockManagerTest, ReserveWritesChecksTheWholeStepFirst) {
  KvBlockManager blocks(4, 4);
  const SequenceId a = blocks.AddSequence();
  const SequenceId b = blocks.AddSequence();
  using W = KvBlockManager::Write;
  // Together they need 5 blocks: neither is reserved.
  const W too_much[] = {W{a, 0, 8}, W{b, 0, 12}};
  EXPECT_EQ(blocks.ReserveWrites(too_much).code(),
            absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(blocks.free_blocks(), 4);
  const W fits[] = {W{a, 0, 8}, W{b, 0, 4}};
  ASSERT_TRUE(blocks.ReserveWrites(fits).ok());
  EXPECT_EQ(blocks.free_blocks(), 1);

  const W gap[] = {W{a, 9, 1}};
  EXPECT_EQ(blocks.ReserveWrites(gap).code(),
            absl::StatusCode::kInvalidArgument);
  const W twice[] = {W{a, 8, 1}, W{a, 9, 1}};
  EXPECT_EQ(blocks.ReserveWrites(twice).code(),
            absl::StatusCode::kInvalidArgument);
  const W empty[] = {W{a, 8, 0}};
  EXPECT_EQ(blocks.ReserveWrites(empty).code(),
            absl::StatusCode::kInvalidArgument);
  const W unknown[] = {W{77, 0, 1}};
  EXPECT_EQ(blocks.ReserveWrites(unknown).code(),
            absl::StatusCode::kInvalidArgument);
  const SequenceId child = blocks.Fork(a, 8);
  const W into_shared[] = {W{child, 4, 2}};
  EXPECT_EQ(blocks.ReserveWrites(into_shared).code(),
            absl::StatusCode::kInvalidArgument);
  const W after_shared[] = {W{child, 8, 2}};
  EXPECT_TRUE(blocks.ReserveWrites(after_shared).ok());
  EXPECT_EQ(blocks.free_blocks(), 0);
}

// Prefix cache: tokens 0, 1, 2, ... of length n (distinct per offset).
std::vector<int32_t> Count(int64_t n, int32_t first = 0) {
  std::vector<int32_t> tokens(n);
  std::iota(tokens.begin(), tokens.end(), first);
  return tokens;
}

TEST(KvPrefixCacheTest, PublishedBlocksServeTheSameTokensAndSkipSetOnly) {
  KvBlockManager kv(/*num_blocks=*/8, /*block_size=*/16, /*prefix_cache=*/true);
  const std::vector<int32_t> tokens = Count(40);
  const SequenceId a = kv.AddSequence();
  ASSERT_TRUE(kv.Reserve(a, 40).ok());
  kv.Publish(a, /*skip=*/0, tokens);  // Two whole blocks; the third is partial.
  EXPECT_EQ(kv.cached_blocks(), 2);
  const std::vector<int32_t> a_blocks = kv.block_table(a);
  kv.Release(a);
  // Released but cached: still counted free, and findable.
  EXPECT_EQ(kv.free_blocks(), 8);
  EXPECT_EQ(kv.evictable_blocks(), 2);

  const SequenceId b = kv.AddSequence();
  EXPECT_EQ(kv.AdoptCached(b, 0, tokens, /*max_blocks=*/10), 2);
  EXPECT_EQ(kv.block_table(b),
            std::vector<int32_t>(a_blocks.begin(), a_blocks.begin() + 2));
  EXPECT_EQ(kv.evictable_blocks(), 0);  // Held again.
  EXPECT_EQ(kv.free_blocks(), 6);
  kv.Release(b);

  const SequenceId other_skip = kv.AddSequence();
  EXPECT_EQ(kv.AdoptCached(other_skip, 1, tokens, 10), 0);
  std::vector<int32_t> second_differs = tokens;
  second_differs[20] = 999;
  const SequenceId c = kv.AddSequence();
  EXPECT_EQ(kv.AdoptCached(c, 0, second_differs, 10), 1);
  std::vector<int32_t> first_differs = tokens;
  first_differs[3] = 999;
  const SequenceId d = kv.AddSequence();
  EXPECT_EQ(kv.AdoptCached(d, 0, first_differs, 10), 0);
  const SequenceId capped = kv.AddSequence();
  EXPECT_EQ(kv.AdoptCached(capped, 0, tokens, 1), 1);
}

TEST(KvPrefixCacheTest, OffMeansNothingIsCached) {
  KvBlockManager kv(8, 16);
  const SequenceId a = kv.AddSequence();
  ASSERT_TRUE(kv.Reserve(a, 32).ok());
  kv.Publish(a, 0, Count(32));
  EXPECT_EQ(kv.cached_blocks(), 0);
  kv.Release(a);
  const SequenceId b = kv.AddSequence();
  EXPECT_EQ(kv.AdoptCached(b, 0, Count(32), 10), 0);
}

TEST(KvPrefixCacheTest, EvictsTheLeastRecentlyReleasedCachedBlockWhenFull) {
  KvBlockManager kv(4, 16, true);
  const std::vector<int32_t> first = Count(32), second = Count(32, 100);
  for (const std::vector<int32_t>* tokens : {&first, &second}) {
    const SequenceId s = kv.AddSequence();
    ASSERT_TRUE(kv.Reserve(s, 32).ok());
    kv.Publish(s, 0, *tokens);
    kv.Release(s);
  }
  EXPECT_EQ(kv.evictable_blocks(), 4);
  EXPECT_EQ(kv.free_blocks(), 4);
  // All four blocks are cached; a reservation takes the one released first
  // (the first sequence's first block), breaking that chain at its head.
  const SequenceId taker = kv.AddSequence();
  ASSERT_TRUE(kv.Reserve(taker, 16).ok());
  EXPECT_EQ(kv.evictions(), 1);
  EXPECT_EQ(kv.cached_blocks(), 3);
  const SequenceId again_first = kv.AddSequence();
  EXPECT_EQ(kv.AdoptCached(again_first, 0, first, 10), 0);
  const SequenceId again_second = kv.AddSequence();
  EXPECT_EQ(kv.AdoptCached(again_second, 0, second, 10), 2);
  // Held blocks are never evicted: 1 free (the first's orphaned second
  // block), 2 held by again_second, 1 by taker.
  EXPECT_EQ(kv.free_blocks(), 1);
  const SequenceId greedy = kv.AddSequence();
  EXPECT_EQ(kv.Reserve(greedy, 32).code(),
            absl::StatusCode::kResourceExhausted);
}

TEST(KvPrefixCacheTest, RollingBackUnpublishesOnlyTheBlockCutInside) {
  KvBlockManager kv(8, 16, true);
  const std::vector<int32_t> tokens = Count(48);
  const SequenceId a = kv.AddSequence();
  ASSERT_TRUE(kv.Reserve(a, 48).ok());
  kv.Publish(a, 0, tokens);
  ASSERT_EQ(kv.cached_blocks(), 3);
  // Keep 20 positions: block 1 will be overwritten past position 20, block
  // 2 is dropped with its content intact.
  ASSERT_TRUE(kv.Truncate(a, 20).ok());
  EXPECT_EQ(kv.cached_blocks(), 2);
  EXPECT_EQ(kv.evictable_blocks(), 1);
  const SequenceId b = kv.AddSequence();
  EXPECT_EQ(kv.AdoptCached(b, 0, tokens, 10), 1);  // Block 1's key is gone.
  // Writing again from position 20 and publishing gives block 1 a new key.
  std::vector<int32_t> rewritten = tokens;
  rewritten.resize(32);
  rewritten[25] = 777;
  ASSERT_TRUE(kv.ReserveWrites({{a, 20, 12}}).ok());
  kv.Publish(a, 0, rewritten);
  const SequenceId c = kv.AddSequence();
  EXPECT_EQ(kv.AdoptCached(c, 0, rewritten, 10), 2);
}

TEST(KvPrefixCacheTest, RewritingPublishedPositionsUnpublishesThem) {
  KvBlockManager kv(8, 16, true);
  const SequenceId a = kv.AddSequence();
  ASSERT_TRUE(kv.Reserve(a, 32).ok());
  kv.Publish(a, 0, Count(32));
  ASSERT_TRUE(kv.ReserveWrites({{a, 16, 5}}).ok());
  EXPECT_EQ(kv.cached_blocks(), 1);
  const SequenceId b = kv.AddSequence();
  EXPECT_EQ(kv.AdoptCached(b, 0, Count(32), 10), 1);
}

TEST(KvPrefixCacheTest, TheSameContentComputedTwiceIsPublishedOnce) {
  KvBlockManager kv(8, 16, true);
  const SequenceId a = kv.AddSequence(), b = kv.AddSequence();
  ASSERT_TRUE(kv.Reserve(a, 32).ok());
  ASSERT_TRUE(kv.Reserve(b, 32).ok());
  kv.Publish(a, 0, Count(32));
  kv.Publish(b, 0, Count(32));
  EXPECT_EQ(kv.cached_blocks(), 2);
  kv.Release(b);  // Its copies were never published: free, not cached.
  EXPECT_EQ(kv.evictable_blocks(), 0);
  kv.Release(a);
  EXPECT_EQ(kv.evictable_blocks(), 2);
  // A fork's shared blocks keep the parent's keys; its own are published.
  const SequenceId parent = kv.AddSequence();
  EXPECT_EQ(kv.AdoptCached(parent, 0, Count(32), 10), 2);
  const SequenceId child = kv.Fork(parent, 32);
  ASSERT_TRUE(kv.Reserve(child, 48).ok());
  kv.Publish(child, 0, Count(48));
  EXPECT_EQ(kv.cached_blocks(), 3);
}

}  // namespace
}  // namespace litestage
