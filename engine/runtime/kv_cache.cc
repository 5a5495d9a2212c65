#include "engine/runtime/kv_cache.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "engine/util/check.h"

namespace litestage {

KvBlockManager::KvBlockManager(int64_t num_blocks, int64_t block_size)
    : num_blocks_(num_blocks), block_size_(block_size) {
  LS_CHECK(num_blocks >= 0 && block_size > 0);
  free_list_.reserve(num_blocks);
  ref_counts_.assign(num_blocks, 0);
  for (int64_t b = num_blocks - 1; b >= 0; --b) {
    free_list_.push_back(static_cast<int32_t>(b));
  }
}

SequenceId KvBlockManager::AddSequence() {
  const SequenceId id = next_id_++;
  tables_.emplace(id, std::vector<int32_t>());
  return id;
}

absl::Status KvBlockManager::Reserve(SequenceId sequence, int64_t num_tokens) {
  auto it = tables_.find(sequence);
  if (it == tables_.end()) {
    return absl::NotFoundError(
        absl::StrCat("KV cache: unknown sequence ", sequence));
  }
  std::vector<int32_t>& table = it->second;
  const int64_t needed = (num_tokens + block_size_ - 1) / block_size_;
  const int64_t extra = needed - static_cast<int64_t>(table.size());
  if (extra <= 0) return absl::OkStatus();
  if (extra > free_blocks()) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "KV cache full: sequence needs ", extra, " more blocks of ",
        block_size_, " tokens, ", free_blocks(), " of ", num_blocks_, " free"));
  }
  for (int64_t i = 0; i < extra; ++i) {
    table.push_back(free_list_.back());
    ref_counts_[free_list_.back()] = 1;
    free_list_.pop_back();
  }
  return absl::OkStatus();
}

void KvBlockManager::Release(SequenceId sequence) {
  auto it = tables_.find(sequence);
  if (it == tables_.end()) return;
  for (int32_t block : it->second) {
    if (--ref_counts_[block] == 0) free_list_.push_back(block);
  }
  tables_.erase(it);
}

SequenceId KvBlockManager::Fork(SequenceId parent, int64_t shared_tokens) {
  const std::vector<int32_t>& parent_table = block_table(parent);
  LS_CHECK(shared_tokens >= 0 && shared_tokens % block_size_ == 0 &&
           shared_tokens / block_size_ <=
               static_cast<int64_t>(parent_table.size()))
      << "cannot share " << shared_tokens << " tokens of sequence " << parent;
  std::vector<int32_t> table(
      parent_table.begin(), parent_table.begin() + shared_tokens / block_size_);
  for (int32_t block : table) ++ref_counts_[block];
  const SequenceId id = next_id_++;
  tables_.emplace(id, std::move(table));
  return id;
}

absl::Status KvBlockManager::Truncate(SequenceId sequence, int64_t num_tokens) {
  auto it = tables_.find(sequence);
  if (it == tables_.end()) {
    return absl::NotFoundError(
        absl::StrCat("KV cache: unknown sequence ", sequence));
  }
  if (num_tokens < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("KV cache: cannot keep ", num_tokens, " tokens"));
  }
  std::vector<int32_t>& table = it->second;
  const int64_t keep = (num_tokens + block_size_ - 1) / block_size_;
  if (keep >= static_cast<int64_t>(table.size())) return absl::OkStatus();
  if (num_tokens % block_size_ != 0 && shared(table[keep - 1])) {
    return absl::FailedPreconditionError(absl::StrCat(
        "KV cache: sequence ", sequence, " cannot roll back to ", num_tokens,
        " tokens: that position is inside a block shared with another "
        "sequence"));
  }
  for (int64_t b = keep; b < static_cast<int64_t>(table.size()); ++b) {
    if (--ref_counts_[table[b]] == 0) free_list_.push_back(table[b]);
  }
  table.resize(keep);
  return absl::OkStatus();
}

absl::Status KvBlockManager::ReserveWrites(absl::Span<const Write> writes) {
  int64_t blocks_needed = 0;
  for (size_t c = 0; c < writes.size(); ++c) {
    const Write& write = writes[c];
    if (!Contains(write.sequence)) {
      return absl::InvalidArgumentError(
          absl::StrCat("chunk ", c, ": unknown sequence ", write.sequence));
    }
    if (write.count <= 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("chunk ", c, ": no tokens"));
    }
    for (size_t d = 0; d < c; ++d) {
      if (writes[d].sequence == write.sequence) {
        return absl::InvalidArgumentError(
            absl::StrCat("chunk ", c, ": sequence ", write.sequence,
                         " already has chunk ", d, " in this step"));
      }
    }
    if (write.start < 0 || write.start > capacity(write.sequence)) {
      return absl::InvalidArgumentError(
          absl::StrCat("chunk ", c, ": start position ", write.start,
                       " leaves a gap in the sequence's cache"));
    }
    const std::vector<int32_t>& table = block_table(write.sequence);
    const int64_t first_block = write.start / block_size_;
    if (first_block < static_cast<int64_t>(table.size()) &&
        shared(table[first_block])) {
      return absl::InvalidArgumentError(
          absl::StrCat("chunk ", c, ": start position ", write.start,
                       " writes into a KV block shared with another sequence"));
    }
    blocks_needed += BlocksNeeded(write.sequence, write.start + write.count);
  }
  if (blocks_needed > free_blocks()) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "KV cache full: step needs ", blocks_needed, " blocks of ", block_size_,
        " tokens, ", free_blocks(), " of ", num_blocks_, " free"));
  }
  for (const Write& write : writes) {
    const absl::Status reserved =
        Reserve(write.sequence, write.start + write.count);
    LS_CHECK(reserved.ok()) << reserved;  // Counted above.
  }
  return absl::OkStatus();
}

int64_t KvBlockManager::BlocksNeeded(SequenceId sequence,
                                     int64_t num_tokens) const {
  const int64_t needed = (num_tokens + block_size_ - 1) / block_size_;
  return std::max<int64_t>(
      0, needed - static_cast<int64_t>(block_table(sequence).size()));
}

bool KvBlockManager::Contains(SequenceId sequence) const {
  return tables_.count(sequence) != 0;
}

int64_t KvBlockManager::capacity(SequenceId sequence) const {
  return static_cast<int64_t>(block_table(sequence).size()) * block_size_;
}

const std::vector<int32_t>& KvBlockManager::block_table(
    SequenceId sequence) const {
  auto it = tables_.find(sequence);
  LS_CHECK(it != tables_.end()) << "unknown sequence " << sequence;
  return it->second;
}

}  // namespace litestage
