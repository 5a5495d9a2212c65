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
#ifndef LITESTAGE_ENGINE_KV_CACHE_H_
#define LITESTAGE_ENGINE_KV_CACHE_H_

#include <cstdint>
#include <unordered_map>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace litestage {

using SequenceId = int64_t;

class KvBlockManager {
 public:
  KvBlockManager(int64_t num_blocks, int64_t block_size);

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

  // Blocks Reserve(sequence, num_tokens) would take from the free list.
  int64_t BlocksNeeded(SequenceId sequence, int64_t num_tokens) const;

  bool Contains(SequenceId sequence) const;
  // Tokens `sequence` has room for (a multiple of block_size).
  int64_t capacity(SequenceId sequence) const;
  // Block ids of `sequence` in position order; block i holds positions
  // [i * block_size, (i + 1) * block_size).
  const std::vector<int32_t>& block_table(SequenceId sequence) const;

  int64_t block_size() const { return block_size_; }
  int64_t num_blocks() const { return num_blocks_; }
  int64_t free_blocks() const {
    return static_cast<int64_t>(free_list_.size());
  }
  int64_t num_sequences() const { return static_cast<int64_t>(tables_.size()); }
  double usage_ratio() const {
    return num_blocks_ == 0
               ? 0.0
               : 1.0 - static_cast<double>(free_blocks()) / num_blocks_;
  }

 private:
  int64_t num_blocks_;
  int64_t block_size_;
  SequenceId next_id_ = 1;
  std::vector<int32_t> free_list_;   // LIFO: recently freed blocks are warm.
  std::vector<int32_t> ref_counts_;  // [num_blocks] owners of each block
  std::unordered_map<SequenceId, std::vector<int32_t>> tables_;
};

}  // namespace litestage

#endif  // LITESTAGE_ENGINE_KV_CACHE_H_
