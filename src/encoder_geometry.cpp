#include "dhp/encoder_geometry.hpp"

#include <algorithm>
#include <limits>

#include "dhp/error.hpp"

namespace dhp {
namespace {

// floor(total * k / of) without overflow (total = q * of + r): shares of `total` split in
// `of` that add up, for k in [0, of].
std::int64_t share_end(std::int64_t total, std::int64_t k, std::int64_t of) {
  return total / of * k + total % of * k / of;
}

}  // namespace

int temporal_slices(const EncoderSpec& encoder, const VisualItem& item) {
  const int frames = std::max(1, item.frames);
  return encoder.temporal_patch_size > 0
             ? (frames + encoder.temporal_patch_size - 1) / encoder.temporal_patch_size
             : 1;
}

int encoder_spans(const EncoderSpec& encoder, const VisualItem& item) {
  const int slices = temporal_slices(encoder, item);
  if (slices > 1 || encoder.attention_tile_patches <= 0) return slices;
  const std::int64_t tiles =
      (item.patches + encoder.attention_tile_patches - 1) / encoder.attention_tile_patches;
  return static_cast<int>(std::clamp<std::int64_t>(tiles, 1, std::numeric_limits<int>::max()));
}

bool encoder_parts_are_shards(const EncoderSpec& encoder, const VisualItem& item, int parts) {
  return parts > 1 && encoder_spans(encoder, item) == 1;
}

VisualItem encoder_part(const EncoderSpec& encoder, const VisualItem& item, int part, int parts) {
  const int spans = encoder_spans(encoder, item);
  DHP_CHECK(parts >= 1 && part >= 0 && part < parts && (spans == 1 || parts <= spans) &&
                parts <= item.patches,
            InvalidArgument,
            "encoder part {} of {}: an item of {} patches, {} frames and {} spans is cut into at "
            "most its spans (or, with one span, its patches)",
            part, parts, item.patches, item.frames, spans);
  if (parts == 1) return item;
  // Shares [lo, hi) of `total` cut in `of`, rounded so that shares add up.
  auto share = [](std::int64_t total, std::int64_t lo, std::int64_t hi, std::int64_t of) {
    return share_end(total, hi, of) - share_end(total, lo, of);
  };
  VisualItem out;
  if (spans == 1) {  // a shard of the patches
    out.patches = share(item.patches, part, part + 1, parts);
    out.llm_tokens = share(item.llm_tokens, part, part + 1, parts);
    out.frames = item.frames;
    return out;
  }
  const int first = static_cast<int>(share(spans, 0, part, parts));
  const int count = static_cast<int>(share(spans, part, part + 1, parts));
  // Patches follow the spans (each part gets at least one, as every span has one); an item
  // with fewer patches than spans shares them by part instead (parts <= patches is checked).
  out.patches = item.patches >= spans ? share(item.patches, first, first + count, spans)
                                      : share(item.patches, part, part + 1, parts);
  out.llm_tokens = share(item.llm_tokens, first, first + count, spans);
  if (temporal_slices(encoder, item) > 1) {
    const int tps = encoder.temporal_patch_size;
    out.frames = std::min(item.frames, (first + count) * tps) - first * tps;
  } else {
    out.frames = item.frames;  // tiles of one image (or of frames that attend together)
  }
  return out;
}

ItemPartRows item_part_rows(const EncoderSpec& encoder, const VisualItem& item, int part,
                            int parts) {
  const std::int64_t r = encoder.tokens_per_llm_token, T = item.llm_tokens;
  DHP_CHECK(r >= 1 && T >= 1 && item.patches == r * T, InvalidArgument,
            "an item of {} patches and {} LLM tokens: the encoder merges {} patches into one LLM "
            "token, so it needs {} patches",
            item.patches, item.llm_tokens, r, r * T);
  const int spans = encoder_spans(encoder, item);
  DHP_CHECK(parts >= 1 && part >= 0 && part < parts && (spans == 1 || parts <= spans) &&
                parts <= T,
            InvalidArgument,
            "encoder part {} of {}: an item of {} LLM tokens and {} spans is cut into at most its "
            "spans (or, with one span, its tokens)",
            part, parts, T, spans);
  ItemPartRows rows;
  rows.shard = parts > 1 && spans == 1;
  std::int64_t first_span = 0, span_count = spans;
  if (rows.shard) {
    rows.token_begin = share_end(T, part, parts);
    rows.token_end = share_end(T, part + 1, parts);
    rows.span_tokens = {0, rows.tokens()};
  } else {
    if (parts > 1) {
      first_span = share_end(spans, part, parts);
      span_count = share_end(spans, part + 1, parts) - first_span;
    }
    rows.token_begin = share_end(T, first_span, spans);
    rows.token_end = share_end(T, first_span + span_count, spans);
    for (std::int64_t s = first_span; s <= first_span + span_count; ++s)
      rows.span_tokens.push_back(share_end(T, s, spans) - rows.token_begin);
  }
  rows.patch_begin = r * rows.token_begin;
  rows.patch_end = r * rows.token_end;
  return rows;
}

}  // namespace dhp
