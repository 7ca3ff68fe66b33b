// Megatron-LM's packed-sequence training with a fixed CP size: the `dp_balanced` scheduler
// (NVIDIA/Megatron-LM, megatron/core/datasets/data_schedule.py, DpBalancedScheduler, at commit
// 192cbc3), the baseline of Megatron's published dynamic-CP benchmark. The global batch's
// sequences are packed in their data order, next fit, into packs of max_seqlen_per_dp_cp_rank x
// CP tokens; the pack count is made a multiple of DP by moving the last sequences of the last
// packs into packs of their own; micro-batch i runs packs i x DP .. i x DP + DP - 1, one per CP
// group, every sequence split over its group. See docs/baselines.md.
#include <algorithm>

#include "baselines.hpp"
#include "dhp/error.hpp"
#include "dhp/log.hpp"
#include "megatron_microbatch.hpp"

namespace dhp::detail {

std::vector<WaveDraft> megatron_dp_balanced_waves(const Batch& batch, const CostModel& cost,
                                                  const Layout& layout, int cp,
                                                  std::int64_t max_tokens_per_rank) {
  const int ranks = layout.llm.ranks;
  DHP_CHECK(cp >= 1 && ranks % cp == 0 && max_tokens_per_rank > 0, InvalidArgument,
            "megatron_dp_balanced: cp={} must divide the {} LLM ranks and max_tokens_per_rank={} "
            "be positive",
            cp, ranks, max_tokens_per_rank);
  const int dp = ranks / cp;
  const std::int64_t pack_limit = max_tokens_per_rank * cp;
  const double budget = llm_activation_budget(cost, layout, batch);
  const WaveEncoderRoom room(batch, cost, layout);

  // Next fit in data order. A pack also closes where memory would overflow (ours: Megatron's
  // packs are bounded by tokens alone), so that no micro-batch is split afterwards.
  struct Pack {
    std::vector<int> samples;
    std::int64_t tokens = 0;
    double bytes = 0;
    double encoder_bytes = 0;
  };
  std::vector<Pack> packs;
  for (int s = 0; s < static_cast<int>(batch.samples.size()); ++s) {
    const std::int64_t tokens = batch.samples[s].llm_tokens();
    const double bytes = group_activation_bytes(cost, batch, {s}, cp);
    if (tokens > pack_limit || bytes > budget) {
      DHP_THROW(DoesNotFit,
                "megatron_dp_balanced with cp={}: sample {} (id {}) of {} tokens does not fit a "
                "pack of {} tokens ({} per rank) within {:.3g} GiB of activations per device",
                cp, s, batch.samples[s].id, tokens, pack_limit, max_tokens_per_rank,
                budget / (1 << 30));
    }
    const bool fits = !packs.empty() && packs.back().tokens + tokens <= pack_limit &&
                      packs.back().bytes + bytes <= budget &&
                      room.fits((packs.back().encoder_bytes + room.sample_bytes(s)) * dp,
                                packs.back().bytes + bytes);
    if (!fits) packs.emplace_back();
    Pack& pack = packs.back();
    pack.samples.push_back(s);
    pack.tokens += tokens;
    pack.bytes += bytes;
    pack.encoder_bytes += room.sample_bytes(s);
  }
  // A multiple of DP packs: the last sequences of the last packs move into packs of their own.
  int to_move = (dp - static_cast<int>(packs.size()) % dp) % dp;
  for (int i = static_cast<int>(packs.size()) - 1; to_move > 0 && i >= 0;) {
    if (packs[i].samples.size() > 1) {
      const int s = packs[i].samples.back();
      packs[i].samples.pop_back();
      packs.push_back(Pack{{s}, batch.samples[s].llm_tokens(), 0, 0});
      --to_move;
    } else {
      --i;
    }
  }
  std::vector<WaveDraft> waves((packs.size() + dp - 1) / dp);
  for (std::size_t p = 0; p < packs.size(); ++p)
    waves[p / dp].groups.push_back(split_group(cp, std::move(packs[p].samples)));
  DHP_LOG_DEBUG("megatron_dp_balanced: cp={} dp={} -> {} packs, {} micro-batches", cp, dp,
                packs.size(), waves.size());
  return waves;
}

Plan plan_megatron_dp_balanced(const Batch& batch, const CostModel& cost, const Layout& layout,
                               const PlannerOptions& options) {
  check_batch_fits(batch, cost, layout);
  const double budget = llm_activation_budget(cost, layout, batch);
  const std::int64_t max_tokens =
      megatron_max_tokens(cost, budget, options, "megatron_dp_balanced");
  // The run's CP size: the static layout's, else the power of two that brings the batch's
  // longest sequence within the per-rank limit (how the benchmark's user set CP 4 for 8192
  // tokens at 2048 per rank), or the next size up that divides the ranks (Megatron needs
  // TP x CP to divide the world).
  int cp = 0;
  if (options.static_layout) {
    cp = options.static_layout->cp;
  } else {
    std::int64_t longest = 0;
    for (const Sample& s : batch.samples) longest = std::max(longest, s.llm_tokens());
    cp = megatron_cp_size(longest, max_tokens);
    while (cp < layout.llm.ranks && layout.llm.ranks % cp != 0) ++cp;
  }
  return build_plan(to_string(Strategy::MegatronDpBalanced), batch, cost, layout,
                    megatron_dp_balanced_waves(batch, cost, layout, cp, max_tokens));
}

}  // namespace dhp::detail
