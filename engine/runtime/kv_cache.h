// Block bookkeeping for the KV cache: which blocks each sequence owns.
//
// Why paged blocks rather than one slab per sequence: the server admits and
// finishes sequences continuously and cannot know a sequence's final length
// up front. Fixed-size blocks (vLLM's PagedAttention layout) never fragment,
// make capacity a single token budget shared by all sequences, and let a
// sequence grow one block at a time; freeing returns whole blocks at once.
// The cost is one indirection per block in attention, which is negligible
// next to the dot products over a block of 16 positions.
//
// This class owns no K/V memory: a backend lays out the storage (host memory
// for the CPU backend, device memory for CUDA) and uses the block ids.
//
// Prefix cache (when constructed with prefix_cache = true; the anchor is
// vLLM's automatic prefix caching, SGLang's RadixAttention shares the idea):
// a full block that a sequence has written is published under a key that
// chains its tokens, the key of the block before it and the sequence's skip
// set, so equal keys mean the same K/V (the K/V of a position depend only on
// the tokens up to it and on the sub-layers executed). A later sequence with
// the same leading tokens and skip set adopts those blocks instead of
// computing them (AdoptCached): every request's few-shot prefix, and each
// stage's prompt, which starts with the previous stage's. A published block
// that no sequence holds any more stays cached and counts as free; it is
// evicted, least recently released first, only when a reservation needs
// the room. Lookups compare the stored tokens and previous key, so a hash
// collision can only alias two blocks whose previous keys collide as well.
#ifndef LITESTAGE_ENGINE_RUNTIME_KV_CACHE_H_
#define LITESTAGE_ENGINE_RUNTIME_KV_CACHE_H_

#include <cstdint>
#include <list>
#include <unordered_map>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"

namespace litestage {

using SequenceId = int64_t;

class KvBlockManager {
 public:
  KvBlockManager(int64_t num_blocks, int64_t block_size,
                 bool prefix_cache = false);

  // Registers a new, empty sequence.
  SequenceId AddSequence();

  // Makes room for positions [0, num_tokens) of `sequence`. On
  // ResourceExhausted nothing is allocated and the sequence is unchanged, so
  // the caller may free other sequences and retry.
  absl::Status Reserve(SequenceId sequence, int64_t num_tokens);

  // Returns every block of `sequence` to the free list (blocks shared with
  // another sequence stay until their last owner releases them) and forgets
  // it. Unknown ids are ignored (release is idempotent).
  void Release(SequenceId sequence);

  // A new sequence whose first `shared_tokens` positions (a multiple of the
  // block size, at most parent's capacity) are the parent's blocks, shared
  // rather than copied: prefix caching for sequences with a common prompt
  // prefix and skip set. Shared blocks are read-only: the parent has
  // written them already and the child writes from shared_tokens on.
  SequenceId Fork(SequenceId parent, int64_t shared_tokens);
  // Whether `block` belongs to more than one sequence.
  bool shared(int32_t block) const { return ref_counts_[block] > 1; }

  // Rolls `sequence` back to its first `num_tokens` positions (speculative
  // decoding rejects drafted tokens; prefix reuse keeps a prompt and drops
  // what followed): blocks wholly past them go back to the free list (or
  // lose this owner); what the last kept block holds past num_tokens is
  // overwritten by the next write. NotFound for an unknown sequence;
  // FailedPrecondition when position num_tokens lies inside a block shared
  // with another sequence (writing there would need a copy); nothing
  // changes on error. Truncating to capacity or more changes nothing.
  absl::Status Truncate(SequenceId sequence, int64_t num_tokens);

  // One forward step's cache writes: sequence `sequence` writes positions
  // [start, start + count).
  struct Write {
    SequenceId sequence = 0;
    int64_t start = 0;
    int64_t count = 0;
  };
  // Checks every write of a step and reserves room for all of them, or for
  // none: InvalidArgument ("chunk i: ...") for an unknown sequence, an empty
  // or repeated one, a start that leaves a gap after the sequence's cache
  // or one that writes into a block shared with another sequence (prefix
  // caching: shared blocks are read-only); ResourceExhausted when the free
  // blocks cannot hold them all. The one place a step is validated.
  absl::Status ReserveWrites(absl::Span<const Write> writes);

  // Blocks Reserve(sequence, num_tokens) would take from the free list.
  int64_t BlocksNeeded(SequenceId sequence, int64_t num_tokens) const;

  // Prefix cache (no-ops returning 0 when it is off). For an empty
  // `sequence` running skip set `skip`: takes, in order, the cached blocks
  // whose keys match the leading whole blocks of `tokens`, at most
  // `max_blocks` of them, and returns how many (their positions need not be
  // computed). The caller keeps at least one prompt token to compute.
  int64_t AdoptCached(SequenceId sequence, int32_t skip,
                      absl::Span<const int32_t> tokens, int64_t max_blocks);
  // Publishes every whole block of `sequence` that `tokens` (the tokens of
  // its positions [0, tokens.size()) whose K/V are written) now covers and
  // that is not published yet. A block whose content another block already
  // holds stays private.
  void Publish(SequenceId sequence, int32_t skip,
               absl::Span<const int32_t> tokens);
  bool prefix_cache() const { return prefix_cache_; }
  // Published blocks (held by a sequence or only cached).
  int64_t cached_blocks() const {
    return static_cast<int64_t>(key_to_block_.size());
  }
  // Cached blocks no sequence holds (they count in free_blocks()).
  int64_t evictable_blocks() const {
    return static_cast<int64_t>(evictable_.size());
  }
  // Cached blocks reused for another sequence since construction.
  int64_t evictions() const { return evictions_; }

  bool Contains(SequenceId sequence) const;
  // Tokens `sequence` has room for (a multiple of block_size).
  int64_t capacity(SequenceId sequence) const;
  // Block ids of `sequence` in position order; block i holds positions
  // [i * block_size, (i + 1) * block_size).
  const std::vector<int32_t>& block_table(SequenceId sequence) const;

  int64_t block_size() const { return block_size_; }
  int64_t num_blocks() const { return num_blocks_; }
  // Blocks a reservation can take: never written, or only cached.
  int64_t free_blocks() const {
    return static_cast<int64_t>(free_list_.size() + evictable_.size());
  }
  int64_t num_sequences() const { return static_cast<int64_t>(tables_.size()); }
  double usage_ratio() const {
    return num_blocks_ == 0
               ? 0.0
               : 1.0 - static_cast<double>(free_blocks()) / num_blocks_;
  }

 private:
  using BlockKey = uint64_t;
  // Per sequence: its blocks and how far its blocks' keys are known.
  struct Table {
    std::vector<int32_t> blocks;
    // Keys of the leading blocks whose content is known (prefix cache).
    std::vector<BlockKey> keys;
  };
  static BlockKey ChainKey(BlockKey previous, int32_t skip,
                           absl::Span<const int32_t> tokens);
  // A block for a reservation: one from the free list (holding nothing
  // findable), else the least recently released cached one, unpublished.
  int32_t TakeBlock();
  // One owner fewer; a block nobody holds becomes evictable if published,
  // free otherwise.
  void DropOwner(int32_t block);
  void Unpublish(int32_t block);
  // Forgets the keys of `table` from `first_block` on, and unpublishes
  // those of its blocks in [first_block, end_block) that only it holds
  // (their content is about to change).
  void InvalidateFrom(Table& table, int64_t first_block, int64_t end_block);
  const Table& table(SequenceId sequence) const;

  int64_t num_blocks_;
  int64_t block_size_;
  bool prefix_cache_;
  SequenceId next_id_ = 1;
  std::vector<int32_t> free_list_;   // LIFO: recently freed blocks are warm.
  std::vector<int32_t> ref_counts_;  // [num_blocks] owners of each block
  std::unordered_map<SequenceId, Table> tables_;
  // Prefix cache. Per block (sized only when it is on): its key (0: not
  // published), the previous block's key, its skip set and its tokens.
  std::vector<BlockKey> block_key_;       // [num_blocks]
  std::vector<BlockKey> block_previous_;  // [num_blocks]
  std::vector<int32_t> block_skip_;       // [num_blocks]
  std::vector<int32_t> block_tokens_;     // [num_blocks, block_size]
  std::unordered_map<BlockKey, int32_t> key_to_block_;
  // Published blocks nobody holds, least recently released first.
  std::list<int32_t> evictable_;
  std::vector<std::list<int32_t>::iterator> evictable_at_;  // [num_blocks]
  int64_t evictions_ = 0;
};

}  // namespace litestage

#endif  // LITESTAGE_ENGINE_RUNTIME_KV_CACHE_H_
