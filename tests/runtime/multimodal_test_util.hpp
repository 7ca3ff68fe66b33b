// Multimodal batches, hand-built plans of every shape the executor must run (CP groups of
// any degree, zigzag and whole sequences, whole items, span ranges, shards in rings,
// colocated and disjoint placements, any TP per module) and the data a sample's owner
// loads. Deterministic: the same on every rank for the same seed.
#pragma once

#include <algorithm>
#include <cstdint>
#include <numeric>
#include <random>
#include <vector>

#include "dhp/batch.hpp"
#include "dhp/encoder_geometry.hpp"
#include "dhp/model.hpp"
#include "dhp/plan.hpp"
#include "dhp/step_schedule.hpp"

namespace dhp::testing {

// A small ViT: 2 patches per LLM token, 2 frames per temporal slice.
inline EncoderSpec small_encoder_spec() {
  EncoderSpec e;
  e.arch.layers = 1;
  e.arch.hidden = 8;
  e.arch.heads = 2;
  e.arch.kv_heads = 2;
  e.arch.ffn_hidden = 16;
  e.tokens_per_llm_token = 2;
  e.temporal_patch_size = 2;
  return e;
}

// Samples of 1..max_text text tokens with up to two visual items: images (one span) and
// videos (several temporal slices); some items long enough to be cut into shards.
inline Batch multimodal_batch(int samples, std::uint64_t seed, const EncoderSpec& enc,
                              int max_text = 40) {
  std::mt19937_64 gen(seed);
  Batch batch;
  batch.step = static_cast<std::int64_t>(seed);
  for (int s = 0; s < samples; ++s) {
    Sample sample;
    sample.id = 1000 + s;
    sample.text_tokens = 1 + static_cast<std::int64_t>(gen() % static_cast<std::uint64_t>(max_text));
    const int items = static_cast<int>(gen() % 3);
    for (int v = 0; v < items; ++v) {
      VisualItem item;
      if (gen() % 2 == 0) {  // an image
        item.llm_tokens = 2 + static_cast<std::int64_t>(gen() % 14);
        item.frames = 1;
      } else {  // a video of 3..5 slices
        item.llm_tokens = 6 + static_cast<std::int64_t>(gen() % 13);
        item.frames = 5 + static_cast<int>(gen() % 6);
      }
      item.patches = enc.tokens_per_llm_token * item.llm_tokens;
      sample.visuals.push_back(item);
    }
    batch.samples.push_back(sample);
  }
  return batch;
}

struct PlanShape {
  EncoderPlacement placement = EncoderPlacement::Colocated;
  int llm_tp = 1, encoder_tp = 1;
  int encoder_devices = 0;  // disjoint: devices of the encoder (first ones); 0: half
  int waves = 2;
  bool text_only = false;
  // Group degrees of every wave, taken in turn from the LLM ranks (empty: random).
  std::vector<int> groups;
};

// A valid plan of any shape: random partitions of the LLM ranks per wave (or the given
// degrees), zigzag where the group has more than one rank (two thirds of the time), whole
// otherwise; every visual item encoded whole, in span ranges, or in shards over distinct
// encoder ranks.
inline Plan multimodal_plan(const Batch& batch, const EncoderSpec& enc, int world,
                            const PlanShape& shape, std::uint64_t seed) {
  std::mt19937_64 gen(seed);
  Plan plan;
  plan.strategy = "test";
  plan.step = batch.step;
  plan.placement = shape.placement;
  if (shape.placement == EncoderPlacement::Colocated || shape.text_only) {
    plan.llm = ModuleLayout::on_devices(0, world / shape.llm_tp, shape.llm_tp);
    if (!shape.text_only)
      plan.encoder = ModuleLayout::on_devices(0, world / shape.encoder_tp, shape.encoder_tp);
  } else {
    const int enc_devices = shape.encoder_devices > 0 ? shape.encoder_devices : world / 2;
    plan.encoder = ModuleLayout::on_devices(0, enc_devices / shape.encoder_tp, shape.encoder_tp);
    plan.llm = ModuleLayout::on_devices(enc_devices, (world - enc_devices) / shape.llm_tp,
                                        shape.llm_tp);
  }
  const int ranks = plan.llm.ranks;
  for (int w = 0; w < shape.waves; ++w) {
    WavePlan wave;
    std::vector<int> order(static_cast<std::size_t>(ranks));
    std::iota(order.begin(), order.end(), 0);
    std::shuffle(order.begin(), order.end(), gen);
    std::size_t next_degree = 0;
    for (int next = 0; next < ranks;) {
      int size = 1 + static_cast<int>(gen() % static_cast<std::uint64_t>(ranks - next));
      if (!shape.groups.empty()) size = std::min(shape.groups[next_degree++ % shape.groups.size()], ranks - next);
      GroupPlan group;
      group.ranks.assign(order.begin() + next, order.begin() + next + size);
      next += size;
      wave.groups.push_back(group);
    }
    plan.waves.push_back(wave);
  }
  for (int s = 0; s < static_cast<int>(batch.samples.size()); ++s) {
    WavePlan& wave = plan.waves[static_cast<std::size_t>(s % shape.waves)];
    const int g = static_cast<int>(gen() % wave.groups.size());
    const int degree = wave.groups[static_cast<std::size_t>(g)].degree();
    if (degree > 1 && gen() % 3 != 0) {
      wave.sequences.push_back(SequencePlan::zigzag(s, g));
    } else {
      wave.sequences.push_back(
          SequencePlan::whole(s, g, static_cast<int>(gen() % static_cast<std::uint64_t>(degree))));
    }
  }
  if (shape.text_only) return plan;
  const int enc_ranks = plan.encoder.ranks;
  for (int s = 0; s < static_cast<int>(batch.samples.size()); ++s) {
    const Sample& sample = batch.samples[static_cast<std::size_t>(s)];
    for (int v = 0; v < static_cast<int>(sample.visuals.size()); ++v) {
      const VisualItem& item = sample.visuals[static_cast<std::size_t>(v)];
      const int spans = encoder_spans(enc, item);
      int parts = 1;
      if (spans > 1) {
        parts = 1 + static_cast<int>(gen() % static_cast<std::uint64_t>(std::min(spans, 3)));
      } else if (enc_ranks > 1 && gen() % 2 == 0) {
        parts = std::min<int>({enc_ranks, static_cast<int>(item.llm_tokens),
                               2 + static_cast<int>(gen() % 3)});
      }
      std::vector<int> order(static_cast<std::size_t>(enc_ranks));
      std::iota(order.begin(), order.end(), 0);
      std::shuffle(order.begin(), order.end(), gen);
      for (int p = 0; p < parts; ++p) {
        EncoderTask task;
        task.sample = s;
        task.visual = v;
        task.wave = s % shape.waves;
        task.part = p;
        task.parts = parts;
        // Shards need distinct ranks; span ranges may share one.
        task.rank = spans == 1 ? order[static_cast<std::size_t>(p % enc_ranks)]
                               : static_cast<int>(gen() % static_cast<std::uint64_t>(enc_ranks));
        plan.encoder_tasks.push_back(task);
      }
    }
  }
  return plan;
}

// What the owner of each sample loads: token ids (a visual row's id is 0 and not read),
// labels (the next row's token where it is text, else -1; the last row -1), patches.
struct OwnedData {
  std::vector<std::int64_t> tokens, labels;
  std::vector<double> patches;  // [rows, patch_dim]
};

inline std::vector<int> round_robin_owners(const Batch& batch, int world) {
  std::vector<int> owners;
  for (std::size_t s = 0; s < batch.samples.size(); ++s)
    owners.push_back(static_cast<int>((s * 7 + 3) % static_cast<std::size_t>(world)));
  return owners;
}

// Token ids and labels of one whole sample, and its items' patches.
inline void sample_data(const Batch& batch, int s, int vocab, int patch_dim, std::uint64_t seed,
                        std::vector<std::int64_t>& tokens, std::vector<std::int64_t>& labels,
                        std::vector<double>& patches) {
  const Sample& sample = batch.samples[static_cast<std::size_t>(s)];
  std::mt19937_64 gen(seed * 7919 + static_cast<std::uint64_t>(s));
  const std::int64_t length = sample.llm_tokens();
  std::vector<char> is_text(static_cast<std::size_t>(length), 1);
  const auto offsets = visual_token_offsets(sample);
  for (std::size_t v = 0; v < sample.visuals.size(); ++v)
    for (std::int64_t t = 0; t < sample.visuals[v].llm_tokens; ++t)
      is_text[static_cast<std::size_t>(offsets[v] + t)] = 0;
  const std::size_t first = tokens.size();
  for (std::int64_t p = 0; p < length; ++p)
    tokens.push_back(is_text[static_cast<std::size_t>(p)]
                         ? static_cast<std::int64_t>(gen() % static_cast<std::uint64_t>(vocab))
                         : 0);
  for (std::int64_t p = 0; p < length; ++p)
    labels.push_back(p + 1 < length && is_text[static_cast<std::size_t>(p + 1)]
                         ? tokens[first + static_cast<std::size_t>(p + 1)]
                         : -1);
  std::uniform_real_distribution<double> dist(-1.0, 1.0);
  for (const VisualItem& item : sample.visuals)
    for (std::int64_t i = 0; i < item.patches * patch_dim; ++i) patches.push_back(dist(gen));
}

inline OwnedData owned_data(const Batch& batch, const std::vector<int>& owners, int rank, int vocab,
                            int patch_dim, std::uint64_t seed) {
  OwnedData d;
  for (int s = 0; s < static_cast<int>(batch.samples.size()); ++s)
    if (owners[static_cast<std::size_t>(s)] == rank)
      sample_data(batch, s, vocab, patch_dim, seed, d.tokens, d.labels, d.patches);
  return d;
}

}  // namespace dhp::testing
