#include "dhp/batch.hpp"

#include "dhp/error.hpp"

namespace dhp {

std::int64_t Sample::llm_tokens() const {
  std::int64_t total = text_tokens;
  for (const VisualItem& v : visuals) total += v.llm_tokens;
  return total;
}

std::int64_t Sample::encoder_patches() const {
  std::int64_t total = 0;
  for (const VisualItem& v : visuals) total += v.patches;
  return total;
}

std::int64_t Batch::total_llm_tokens() const {
  std::int64_t total = 0;
  for (const Sample& s : samples) total += s.llm_tokens();
  return total;
}

std::vector<int> visual_offsets(const Batch& batch) {
  std::vector<int> first(batch.samples.size() + 1, 0);
  for (std::size_t s = 0; s < batch.samples.size(); ++s)
    first[s + 1] = first[s] + static_cast<int>(batch.samples[s].visuals.size());
  return first;
}

void validate(const Batch& batch) {
  DHP_CHECK(!batch.samples.empty(), InvalidInput, "batch of step {} has no samples", batch.step);
  for (std::size_t i = 0; i < batch.samples.size(); ++i) {
    const Sample& s = batch.samples[i];
    DHP_CHECK(s.text_tokens >= 0, InvalidInput,
              "batch step {}: sample {} (id {}) has text_tokens={} < 0", batch.step, i, s.id,
              s.text_tokens);
    for (std::size_t v = 0; v < s.visuals.size(); ++v) {
      const VisualItem& item = s.visuals[v];
      // A visual item that yields no patches or no tokens cannot be encoded or placed.
      DHP_CHECK(item.patches >= 1 && item.llm_tokens >= 1 && item.frames >= 1, InvalidInput,
                "batch step {}: sample {} (id {}) visual {} has patches={}, llm_tokens={}, "
                "frames={} (each must be >= 1)",
                batch.step, i, s.id, v, item.patches, item.llm_tokens, item.frames);
    }
    DHP_CHECK(s.llm_tokens() > 0, InvalidInput,
              "batch step {}: sample {} (id {}) has no tokens (text_tokens={}, {} visuals)",
              batch.step, i, s.id, s.text_tokens, s.visuals.size());
  }
}

}  // namespace dhp
