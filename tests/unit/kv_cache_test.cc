#include "engine/runtime/kv_cache.h"

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

}  // namespace
}  // namespace litestage
