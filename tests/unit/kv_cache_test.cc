#include "engine/kv_cache.h"

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

}  // namespace
}  // namespace litestage
