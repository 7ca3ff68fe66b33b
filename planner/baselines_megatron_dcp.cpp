// Megatron Core dynamic (hybrid) context parallelism, as published: every sequence gets a
// power-of-two CP size from its length, sequences are placed greedily, longest first, on
// aligned power-of-two sub-groups of the DP x CP ranks, and what does not fit the
// per-rank token limit waits for the next micro-batch. See docs/baselines.md.
#include <algorithm>
#include <limits>
#include <numeric>

#include "baselines.hpp"
#include "dhp/error.hpp"
#include "dhp/log.hpp"

namespace dhp::detail {

int megatron_cp_size(std::int64_t tokens, std::int64_t max_tokens_per_rank) {
  DHP_CHECK(max_tokens_per_rank > 0, InvalidArgument,
            "megatron_cp_size: max_tokens_per_rank={} must be positive", max_tokens_per_rank);
  const std::int64_t ranks_needed = (tokens + max_tokens_per_rank - 1) / max_tokens_per_rank;
  int cp = 1;
  while (cp < ranks_needed) cp *= 2;
  return cp;
}

namespace {

// One sub-group of a micro-batch: `degree` ranks sharing every sequence placed on it.
struct SubGroup {
  int degree = 1;
  std::vector<int> samples;
  std::int64_t tokens_per_rank = 0;  // sum of ceil(L / degree) of its sequences
  double load_ms = 0;                // estimated time of its sequences, per rank
  double bytes = 0;                  // activations per device (a sum over its sequences)
};

}  // namespace

std::vector<WaveDraft> megatron_dcp_waves(const Batch& batch, const CostModel& cost,
                                          const Layout& layout, const PlannerOptions& options) {
  const int ranks = layout.llm.ranks;
  const double budget = llm_activation_budget(cost, layout, batch);
  int largest_pow2 = 1;
  while (largest_pow2 * 2 <= ranks) largest_pow2 *= 2;

  // Megatron's max_seqlen_per_dp_cp_rank; without one, the longest sequence one rank holds.
  const std::int64_t max_tokens = options.max_tokens_per_rank > 0
                                      ? options.max_tokens_per_rank
                                      : max_fitting_tokens(cost, 1, budget, 1);
  DHP_CHECK(max_tokens > 0, DoesNotFit,
            "megatron_dcp: no token fits the {:.3g} GiB of activations per device",
            budget / (1 << 30));

  const int num_samples = static_cast<int>(batch.samples.size());
  std::vector<int> cp_of(num_samples);
  std::vector<double> work_ms(num_samples);
  for (int s = 0; s < num_samples; ++s) {
    const std::int64_t tokens = batch.samples[s].llm_tokens();
    int cp = megatron_cp_size(tokens, max_tokens);
    // The ring's KV buffers can push a sequence over memory at exactly its size: a real
    // run would OOM, so (as a user would) take the next process-group size up.
    while (cp <= largest_pow2 && rank_activation_bytes(cost, {tokens}, cp, {}) > budget) cp *= 2;
    DHP_CHECK(cp <= largest_pow2, DoesNotFit,
              "megatron_dcp: sample {} (id {}) of {} tokens needs a CP group of {} ranks "
              "(power of two, {} tokens per rank) but only {} LLM ranks exist",
              s, batch.samples[s].id, tokens, cp, max_tokens, ranks);
    cp_of[s] = cp;
    work_ms[s] = cost.llm_sequence_ms(tokens, expected_ring(cp, layout));
  }

  // Longest first (Megatron's buckets are in decreasing CP size); ties keep batch order.
  std::vector<int> pending(num_samples);
  std::iota(pending.begin(), pending.end(), 0);
  std::stable_sort(pending.begin(), pending.end(), [&](int a, int b) {
    return batch.samples[a].llm_tokens() > batch.samples[b].llm_tokens();
  });

  std::vector<WaveDraft> waves;
  while (!pending.empty()) {
    std::vector<SubGroup> groups;
    std::vector<int> deferred;
    int used_ranks = 0;
    for (int s : pending) {
      const std::int64_t tokens = batch.samples[s].llm_tokens();
      const int cp = cp_of[s];
      const double bytes = group_activation_bytes(cost, batch, {s}, cp);
      // Sizes arrive in non-increasing order, so opening groups at the next free offset
      // keeps every group aligned (a cp=4 group starts at a multiple of 4).
      if (used_ranks + cp <= ranks) {
        groups.push_back(SubGroup{cp, {s}, local_share(tokens, cp), work_ms[s], bytes});
        used_ranks += cp;
        continue;
      }
      // No free ranks left for it: the least-loaded group of its size that stays within
      // the per-rank token limit and memory.
      int chosen = -1;
      for (int g = 0; g < static_cast<int>(groups.size()); ++g) {
        const SubGroup& group = groups[g];
        if (group.degree != cp || group.tokens_per_rank + local_share(tokens, cp) > max_tokens ||
            group.bytes + bytes > budget) {
          continue;
        }
        if (chosen < 0 || group.load_ms < groups[chosen].load_ms) chosen = g;
      }
      if (chosen < 0) {
        deferred.push_back(s);  // overflow waits for the next micro-batch
        continue;
      }
      SubGroup& group = groups[chosen];
      group.samples.push_back(s);
      group.tokens_per_rank += local_share(tokens, cp);
      group.load_ms += work_ms[s];
      group.bytes += bytes;
    }
    DHP_CHECK(!groups.empty(), Internal,
              "megatron_dcp: a micro-batch placed none of {} pending sequences", pending.size());

    // Megatron's fill_empty_gpus: while ranks are idle, double the smallest group (its
    // sequences are then split over twice the ranks).
    for (;;) {
      const auto smallest = std::min_element(
          groups.begin(), groups.end(),
          [](const SubGroup& a, const SubGroup& b) { return a.degree < b.degree; });
      if (ranks - used_ranks < smallest->degree) break;
      used_ranks += smallest->degree;
      smallest->degree *= 2;
    }

    WaveDraft wave;
    for (SubGroup& group : groups) {
      wave.groups.push_back(split_group(group.degree, std::move(group.samples)));
    }
    waves.push_back(std::move(wave));
    pending = std::move(deferred);
  }
  DHP_LOG_DEBUG("megatron_dcp: {} sequences, max {} tokens per rank -> {} micro-batches",
                num_samples, max_tokens, waves.size());
  return limit_encoder_per_wave(batch, cost, layout, std::move(waves));
}

Plan plan_megatron_dcp(const Batch& batch, const CostModel& cost, const Layout& layout,
                       const PlannerOptions& options) {
  check_batch_fits(batch, cost, layout);  // megatron_dcp_waves's callers have checked already
  return build_plan(to_string(Strategy::MegatronDcp), batch, cost, layout,
                    megatron_dcp_waves(batch, cost, layout, options));
}

}  // namespace dhp::detail
