// Single-query attention over a paged KV cache (one head).
#ifndef LITESTAGE_ENGINE_BACKENDS_CPU_ATTENTION_H_
#define LITESTAGE_ENGINE_BACKENDS_CPU_ATTENTION_H_

#include <cstdint>

namespace litestage::cpu {

// out = sum_p softmax_p(scale * q . k_p) * v_p over positions p in
// [begin_pos, end_pos). Position p is row (p % block_size) of
// key_blocks[p / block_size] (and of value_blocks[p / block_size]).
//   q: [head_dim] f32
//   key_blocks, value_blocks: [end_pos / block_size rounded up] pointers, each
//     to a [block_size, head_dim] f32 block of this KV head.
//   scores_scratch: [end_pos] f32, overwritten (only [begin_pos, end_pos)).
//   out: [head_dim] f32; zero when begin_pos >= end_pos.
void AttentionHead(const float* q, const float* const* key_blocks,
                   const float* const* value_blocks, int64_t block_size,
                   int64_t begin_pos, int64_t end_pos, int64_t head_dim,
                   float scale, float* scores_scratch, float* out);

// The same with double accumulation and no scratch: the test reference.
void AttentionHeadReference(const float* q, const float* const* key_blocks,
                            const float* const* value_blocks,
                            int64_t block_size, int64_t begin_pos,
                            int64_t end_pos, int64_t head_dim, float scale,
                            float* out);

}  // namespace litestage::cpu

#endif  // LITESTAGE_ENGINE_BACKENDS_CPU_ATTENTION_H_
