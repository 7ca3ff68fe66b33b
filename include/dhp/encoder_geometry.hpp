// How the vision encoder cuts a visual item: its attention spans (a video's temporal
// slices, an image's tiles), the parts an EncoderTask names, and the rows the runtime moves
// for each part. Shared by the planner's cost model (sizes) and the runtime (rows).
#pragma once

#include <cstdint>
#include <vector>

#include "dhp/batch.hpp"
#include "dhp/model.hpp"

namespace dhp {

// Temporal slices of a video item: ceil(frames / temporal_patch_size); 1 for an image or
// when every frame attends together (temporal_patch_size 0).
int temporal_slices(const EncoderSpec& encoder, const VisualItem& item);

// The parts of a visual item the encoder processes independently (EncoderSpec): a video's
// temporal slices, else an image's tiles; 1 when it attends across all its patches. The
// planner may give disjoint ranges of them to different encoder ranks, so that one long
// video does not hold up a wave.
int encoder_spans(const EncoderSpec& encoder, const VisualItem& item);
// Part `part` of `parts` of an item (EncoderTask): with at least `parts` spans, a range of
// whole spans (their frames, patches and LLM tokens); with one span, an equal shard of its
// patches and LLM tokens (encoder_parts_are_shards: encoded as a ring). Integer shares that
// add up to the item's. Throws InvalidArgument for 1 < spans < parts or part out of range.
VisualItem encoder_part(const EncoderSpec& encoder, const VisualItem& item, int part, int parts);
bool encoder_parts_are_shards(const EncoderSpec& encoder, const VisualItem& item, int parts);

// The rows the runtime moves and encodes for part `part` of `parts` of an item. The
// encoder merges r = tokens_per_llm_token consecutive patches into one LLM token, so an
// item must hold exactly r * llm_tokens patches. Its S = encoder_spans spans cover tokens
// [floor(T s / S), floor(T (s + 1) / S)) of its T LLM tokens and r times those patches; a
// part of a multi-span item is encoder_part's range of whole spans; a shard of a one-span
// item covers tokens [floor(T k / parts), floor(T (k + 1) / parts)). Token counts equal
// encoder_part's llm_tokens; the patch counts are the ones the merge needs.
struct ItemPartRows {
  std::int64_t token_begin = 0, token_end = 0;  // the item's LLM tokens this part produces
  std::int64_t patch_begin = 0, patch_end = 0;  // the item's patches it reads (r per token)
  // Attention sequences inside the part, as token offsets relative to token_begin (size
  // sequences + 1): one per span; a shard is one sequence whose keys span every shard.
  std::vector<std::int64_t> span_tokens;
  bool shard = false;  // a shard of a one-span item: its attention is a ring over the parts

  std::int64_t tokens() const { return token_end - token_begin; }
  std::int64_t patches() const { return patch_end - patch_begin; }
};
// Throws InvalidArgument naming the numbers when the item's patches are not
// tokens_per_llm_token x llm_tokens, or the part is out of range.
ItemPartRows item_part_rows(const EncoderSpec& encoder, const VisualItem& item, int part,
                            int parts);

}  // namespace dhp
