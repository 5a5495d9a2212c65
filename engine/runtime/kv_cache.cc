#include "engine/runtime/kv_cache.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "engine/util/check.h"

namespace litestage {

KvBlockManager::KvBlockManager(int64_t num_blocks, int64_t block_size,
                               bool prefix_cache)
    : num_blocks_(num_blocks),
      block_size_(block_size),
      prefix_cache_(prefix_cache) {
  LS_CHECK(num_blocks >= 0 && block_size > 0);
  free_list_.reserve(num_blocks);
  ref_counts_.assign(num_blocks, 0);
  for (int64_t b = num_blocks - 1; b >= 0; --b) {
    free_list_.push_back(static_cast<int32_t>(b));
  }
  if (prefix_cache_) {
    block_key_.assign(num_blocks, 0);
    block_previous_.assign(num_blocks, 0);
    block_skip_.assign(num_blocks, 0);
    block_tokens_.assign(num_blocks * block_size, 0);
    evictable_at_.assign(num_blocks, evictable_.end());
  }
}

SequenceId KvBlockManager::AddSequence() {
  const SequenceId id = next_id_++;
  tables_.emplace(id, Table());
  return id;
}

int32_t KvBlockManager::TakeBlock() {
  int32_t block;
  if (!free_list_.empty()) {
    block = free_list_.back();
    free_list_.pop_back();
  } else {
    LS_CHECK(!evictable_.empty());
    block = evictable_.front();
    evictable_.pop_front();
    evictable_at_[block] = evictable_.end();
    Unpublish(block);
    ++evictions_;
  }
  ref_counts_[block] = 1;
  return block;
}

void KvBlockManager::DropOwner(int32_t block) {
  if (--ref_counts_[block] > 0) return;
  if (prefix_cache_ && block_key_[block] != 0) {
    evictable_at_[block] = evictable_.insert(evictable_.end(), block);
  } else {
    free_list_.push_back(block);
  }
}

void KvBlockManager::Unpublish(int32_t block) {
  if (!prefix_cache_ || block_key_[block] == 0) return;
  auto it = key_to_block_.find(block_key_[block]);
  if (it != key_to_block_.end() && it->second == block) key_to_block_.erase(it);
  block_key_[block] = 0;
}

void KvBlockManager::InvalidateFrom(Table& table, int64_t first_block,
                                    int64_t end_block) {
  const int64_t keyed = static_cast<int64_t>(table.keys.size());
  if (!prefix_cache_ || first_block >= keyed) return;
  for (int64_t b = first_block; b < std::min(keyed, end_block); ++b) {
    // A block shared with another sequence is never rewritten (Truncate and
    // ReserveWrites refuse), so its content and key stay valid.
    if (ref_counts_[table.blocks[b]] == 1) Unpublish(table.blocks[b]);
  }
  table.keys.resize(first_block);
}

absl::Status KvBlockManager::Reserve(SequenceId sequence, int64_t num_tokens) {
  auto it = tables_.find(sequence);
  if (it == tables_.end()) {
    return absl::NotFoundError(
        absl::StrCat("KV cache: unknown sequence ", sequence));
  }
  std::vector<int32_t>& blocks = it->second.blocks;
  const int64_t needed = (num_tokens + block_size_ - 1) / block_size_;
  const int64_t extra = needed - static_cast<int64_t>(blocks.size());
  if (extra <= 0) return absl::OkStatus();
  if (extra > free_blocks()) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "KV cache full: sequence needs ", extra, " more blocks of ",
        block_size_, " tokens, ", free_blocks(), " of ", num_blocks_, " free"));
  }
  for (int64_t i = 0; i < extra; ++i) blocks.push_back(TakeBlock());
  return absl::OkStatus();
}

void KvBlockManager::Release(SequenceId sequence) {
  auto it = tables_.find(sequence);
  if (it == tables_.end()) return;
  for (int32_t block : it->second.blocks) DropOwner(block);
  tables_.erase(it);
}

SequenceId KvBlockManager::Fork(SequenceId parent, int64_t shared_tokens) {
  const std::vector<int32_t>& parent_blocks = block_table(parent);
  LS_CHECK(shared_tokens >= 0 && shared_tokens % block_size_ == 0 &&
           shared_tokens / block_size_ <=
               static_cast<int64_t>(parent_blocks.size()))
      << "cannot share " << shared_tokens << " tokens of sequence " << parent;
  Table child;
  child.blocks.assign(parent_blocks.begin(),
                      parent_blocks.begin() + shared_tokens / block_size_);
  for (int32_t block : child.blocks) ++ref_counts_[block];
  const SequenceId id = next_id_++;
  tables_.emplace(id, std::move(child));
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
  Table& table = it->second;
  std::vector<int32_t>& blocks = table.blocks;
  const int64_t keep = (num_tokens + block_size_ - 1) / block_size_;
  if (keep >= static_cast<int64_t>(blocks.size())) return absl::OkStatus();
  if (num_tokens % block_size_ != 0 && shared(blocks[keep - 1])) {
    return absl::FailedPreconditionError(absl::StrCat(
        "KV cache: sequence ", sequence, " cannot roll back to ", num_tokens,
        " tokens: that position is inside a block shared with another "
        "sequence"));
  }
  // The dropped blocks keep their content (and stay cached when
  // published); a kept block cut inside is overwritten past num_tokens by
  // the next write, so it is unpublished.
  InvalidateFrom(table, num_tokens / block_size_, keep);
  for (int64_t b = keep; b < static_cast<int64_t>(blocks.size()); ++b) {
    DropOwner(blocks[b]);
  }
  blocks.resize(keep);
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
    const std::vector<int32_t>& blocks = block_table(write.sequence);
    const int64_t first_block = write.start / block_size_;
    if (first_block < static_cast<int64_t>(blocks.size()) &&
        shared(blocks[first_block])) {
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
    // Rewriting positions that were published changes their content.
    InvalidateFrom(tables_.at(write.sequence), write.start / block_size_,
                   num_blocks_);
    const absl::Status reserved =
        Reserve(write.sequence, write.start + write.count);
    LS_CHECK(reserved.ok()) << reserved;  // Counted above.
  }
  return absl::OkStatus();
}

KvBlockManager::BlockKey KvBlockManager::ChainKey(
    BlockKey previous, int32_t skip, absl::Span<const int32_t> tokens) {
  // FNV-1a over the previous key, the skip set and the tokens, then a
  // splitmix64 finish; 0 is reserved for "not published".
  uint64_t h = 0xcbf29ce484222325ull;
  const auto mix = [&h](uint64_t value) {
    for (int i = 0; i < 8; ++i) {
      h ^= (value >> (8 * i)) & 0xff;
      h *= 0x100000001b3ull;
    }
  };
  mix(previous);
  mix(static_cast<uint32_t>(skip));
  for (int32_t token : tokens) mix(static_cast<uint32_t>(token));
  h += 0x9e3779b97f4a7c15ull;
  h = (h ^ (h >> 30)) * 0xbf58476d1ce4e5b9ull;
  h = (h ^ (h >> 27)) * 0x94d049bb133111ebull;
  h ^= h >> 31;
  return h == 0 ? 1 : h;
}

int64_t KvBlockManager::AdoptCached(SequenceId sequence, int32_t skip,
                                    absl::Span<const int32_t> tokens,
                                    int64_t max_blocks) {
  if (!prefix_cache_) return 0;
  Table& table = tables_.at(sequence);
  LS_CHECK(table.blocks.empty()) << "AdoptCached on a non-empty sequence";
  const int64_t limit = std::min<int64_t>(
      max_blocks, static_cast<int64_t>(tokens.size()) / block_size_);
  BlockKey previous = 0;
  for (int64_t b = 0; b < limit; ++b) {
    const absl::Span<const int32_t> block_tokens =
        tokens.subspan(b * block_size_, block_size_);
    const BlockKey key = ChainKey(previous, skip, block_tokens);
    auto it = key_to_block_.find(key);
    if (it == key_to_block_.end()) break;
    const int32_t block = it->second;
    const int32_t* stored = block_tokens_.data() + block * block_size_;
    if (block_previous_[block] != previous || block_skip_[block] != skip ||
        !std::equal(block_tokens.begin(), block_tokens.end(), stored)) {
      break;  // A hash collision: not the same content.
    }
    if (ref_counts_[block] == 0) {
      evictable_.erase(evictable_at_[block]);
      evictable_at_[block] = evictable_.end();
    }
    ++ref_counts_[block];
    table.blocks.push_back(block);
    table.keys.push_back(key);
    previous = key;
  }
  return static_cast<int64_t>(table.blocks.size());
}

void KvBlockManager::Publish(SequenceId sequence, int32_t skip,
                             absl::Span<const int32_t> tokens) {
  if (!prefix_cache_) return;
  Table& table = tables_.at(sequence);
  const int64_t full =
      std::min<int64_t>(static_cast<int64_t>(tokens.size()) / block_size_,
                        static_cast<int64_t>(table.blocks.size()));
  for (int64_t b = static_cast<int64_t>(table.keys.size()); b < full; ++b) {
    const absl::Span<const int32_t> block_tokens =
        tokens.subspan(b * block_size_, block_size_);
    const BlockKey previous = b == 0 ? 0 : table.keys[b - 1];
    const BlockKey key = ChainKey(previous, skip, block_tokens);
    const int32_t block = table.blocks[b];
    if (block_key_[block] == 0 && key_to_block_.count(key) == 0) {
      block_key_[block] = key;
      block_previous_[block] = previous;
      block_skip_[block] = skip;
      std::copy(block_tokens.begin(), block_tokens.end(),
                block_tokens_.begin() + block * block_size_);
      key_to_block_.emplace(key, block);
    }
    table.keys.push_back(key);
  }
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

const KvBlockManager::Table& KvBlockManager::table(SequenceId sequence) const {
  auto it = tables_.find(sequence);
  LS_CHECK(it != tables_.end()) << "unknown sequence " << sequence;
  return it->second;
}

const std::vector<int32_t>& KvBlockManager::block_table(
    SequenceId sequence) const {
  return table(sequence).blocks;
}

}  // namespace litestage
