// A global batch: the samples one optimizer step consumes.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace dhp {

// One image or video clip: what the encoder reads and what the LLM receives from it.
struct VisualItem {
  std::int64_t patches = 0;     // encoder input patches (all frames together)
  std::int64_t llm_tokens = 0;  // tokens it becomes in the LLM sequence
  int frames = 1;               // 1 for an image
};

struct Sample {
  std::int64_t id = 0;  // stable id from the data source (for error messages and tracing)
  std::int64_t text_tokens = 0;
  std::vector<VisualItem> visuals{};

  std::int64_t llm_tokens() const;       // text + every visual item's LLM tokens
  std::int64_t encoder_patches() const;  // sum of patches
};

struct Batch {
  std::int64_t step = 0;
  std::vector<Sample> samples;

  std::int64_t total_llm_tokens() const;
};

// Flat index of each sample's first visual item (samples' visuals in order); size n + 1, the
// last entry the batch's number of visual items.
std::vector<int> visual_offsets(const Batch& batch);

// Throws dhp::Error (InvalidInput) for an empty batch or a sample with no tokens or
// negative counts, naming the sample.
void validate(const Batch& batch);

}  // namespace dhp
