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
#ifndef LITESTAGE_ENGINE_RUNTIME_KV_CACHE_H_
#define LITESTAGE_ENGINE_RUNTIME_KV_CACHE_H_

#include <cstdint>
#include <unordered_map>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"

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

#endif  // LITESTAGE_ENGINE_RUNTIME_KV_CACHE_H_
