// Small helpers shared by the planner's own tests: clusters, models and random batches.
#pragma once

#include <cstdint>
#include <random>
#include <vector>

#include "dhp/batch.hpp"
#include "dhp/cluster.hpp"
#include "dhp/model.hpp"
#include "dhp/plan.hpp"

namespace dhp::test {

inline ClusterSpec one_node(int devices) {
  ClusterSpec c = cluster_preset("h100-8");
  c.devices_per_node = devices;
  c.num_nodes = 1;
  return c;
}

// Text-only samples with lognormal lengths (long tail), clamped to [min_tokens, max_tokens].
inline Batch random_text_batch(std::uint32_t seed, int n, double mean_log, double sigma,
                               std::int64_t min_tokens, std::int64_t max_tokens) {
  std::mt19937 rng(seed);
  std::lognormal_distribution<double> len(mean_log, sigma);
  Batch b;
  b.step = seed;
  for (int i = 0; i < n; ++i) {
    Sample s;
    s.id = 1000 + i;
    s.text_tokens =
        std::clamp<std::int64_t>(static_cast<std::int64_t>(len(rng)), min_tokens, max_tokens);
    b.samples.push_back(s);
  }
  return b;
}

// Multimodal samples: a caption plus 0..3 images; one in ten also carries a short video
// clip and one in ten is a long document (up to max_long_tokens). Video clips stay short
// because the cost model keeps every encoder activation of a clip alive (no recompute).
inline Batch random_multimodal_batch(std::uint32_t seed, int n, std::int64_t max_long_tokens) {
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int> text(20, 800), images(0, 3), tenth(0, 9);
  std::uniform_int_distribution<std::int64_t> video_tokens(500, 3000),
      long_tokens(2000, max_long_tokens);
  Batch b;
  b.step = seed;
  for (int i = 0; i < n; ++i) {
    Sample s;
    s.id = 5000 + i;
    s.text_tokens = text(rng);
    for (int k = images(rng); k > 0; --k) s.visuals.push_back(VisualItem{1024, 256, 1});
    if (tenth(rng) == 0) {
      const std::int64_t t = video_tokens(rng);
      s.visuals.push_back(VisualItem{t * 4, t, static_cast<int>(t / 256) + 1});
    }
    if (tenth(rng) == 0) s.text_tokens += long_tokens(rng);
    b.samples.push_back(s);
  }
  return b;
}

// Every sample in exactly one wave and one group; returns the count of placements.
inline std::vector<int> placements_per_sample(const Plan& plan, const Batch& batch) {
  std::vector<int> count(batch.samples.size(), 0);
  for (const WavePlan& w : plan.waves)
    for (const SequencePlan& s : w.sequences) ++count.at(s.sample);
  return count;
}

}  // namespace dhp::test
