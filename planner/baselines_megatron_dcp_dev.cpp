// Megatron Core dynamic context parallelism with the dev branch's packing-aware scheduler
// (NVIDIA/Megatron-LM PR #5154, "Improve default dynamic CP packing scheduler", commit
// d2e7ec5, 2026-06-26; unchanged up to d48bd6b, 2026-08-21): data_schedule_utils.py's
// next_hdp_group_packing_aware. Per micro-batch, sequences longest first; each takes the
// placement (join a group of its size within the token limit, or open one on the least-loaded
// free ranks) at any power-of-two CP size from its own up that keeps the most loaded rank
// lowest, within a cap of (longest remaining sequence) x (token limit) x 1.05 of L^2/cp work;
// a sequence with no such placement waits for the next micro-batch (the micro-batch does not
// close). Idle ranks are filled by doubling the smallest group that can grow; where none can,
// the micro-batch becomes one group of every rank holding what fits. See docs/baselines.md.
#include <algorithm>
#include <limits>
#include <numeric>
#include <optional>

#include "baselines.hpp"
#include "dhp/error.hpp"
#include "dhp/log.hpp"
#include "megatron_microbatch.hpp"

namespace dhp::detail {
namespace {

constexpr double kWorkloadCapDelta = 0.05;  // _DYNAMIC_CP_WORKLOAD_CAP_DELTA

struct Placement {
  double projected_max = 0;
  int size = 1;
  int group = -1;  // -1: a new group
};

// The best placement of sample `s` in `mb`, or nullopt when every one is over the cap.
std::optional<Placement> best_placement(const MegatronMicroBatch& mb, const Batch& batch, int s,
                                        int min_size, double cap) {
  const std::int64_t tokens = batch.samples[s].llm_tokens();
  const double current_max = mb.max_load();
  std::optional<Placement> best;
  auto consider = [&](double projected, int size, int group) {
    if (projected <= cap && (!best || projected < best->projected_max))
      best = Placement{projected, size, group};
  };
  for (int size = min_size; size <= mb.ranks(); size *= 2) {
    const double cost = MegatronMicroBatch::workload(tokens, size);
    for (int g : mb.groups_of_size(size)) {
      if (!mb.can_add(g, s)) continue;
      consider(std::max(current_max, mb.groups()[g].load + cost), size, g);
    }
    if (mb.can_open(size, s)) consider(std::max(current_max, cost), size, -1);
  }
  return best;
}

// fill_with_full_dpxcp_group: one group of every rank holding, in order, the sequences of
// `pending` that fit it; the rest wait.
std::vector<int> fill_with_one_group(MegatronMicroBatch& mb, const std::vector<int>& pending) {
  std::vector<int> left;
  for (int s : pending) {
    if (mb.empty() && mb.can_open(mb.ranks(), s)) {
      mb.open(mb.ranks(), s);
    } else if (!mb.empty() && mb.can_add(0, s)) {
      mb.add(0, s);
    } else {
      left.push_back(s);
    }
  }
  return left;
}

// next_hdp_group_packing_aware: one micro-batch from `pending` (longest first), and what
// waits for the next one.
std::pair<WaveDraft, std::vector<int>> next_micro_batch(const MegatronSamples& samples,
                                                        const WaveEncoderRoom& room, int ranks,
                                                        double budget, double max_tokens,
                                                        const std::vector<int>& pending,
                                                        const std::vector<int>& cp_of) {
  const Batch& batch = samples.batch();
  const double cap = static_cast<double>(batch.samples[pending.front()].llm_tokens()) * max_tokens *
                     (1.0 + kWorkloadCapDelta);
  MegatronMicroBatch mb(samples, room, ranks, budget, max_tokens);
  std::vector<int> left;
  mb.open(cp_of[pending.front()], pending.front());
  for (std::size_t i = 1; i < pending.size(); ++i) {
    const int s = pending[i];
    const std::optional<Placement> p = best_placement(mb, batch, s, cp_of[s], cap);
    if (!p) {
      left.push_back(s);
    } else if (p->group < 0) {
      mb.open(p->size, s);
    } else {
      mb.add(p->group, s);
    }
  }
  if (mb.fill_by_doubling(/*near_end_stays=*/true)) return {mb.draft(), std::move(left)};
  // No group can grow into the idle ranks: one group of every rank instead.
  MegatronMicroBatch whole(samples, room, ranks, budget, max_tokens);
  std::vector<int> rest = fill_with_one_group(whole, pending);
  return {whole.draft(), std::move(rest)};
}

}  // namespace

std::vector<WaveDraft> megatron_dcp_dev_waves(const Batch& batch, const CostModel& cost,
                                              const Layout& layout, const PlannerOptions& options) {
  const MegatronInputs in(batch, cost, layout, options, "megatron_dcp_dev");

  std::vector<int> pending(batch.samples.size());
  std::iota(pending.begin(), pending.end(), 0);
  std::vector<WaveDraft> waves;
  while (!pending.empty()) {
    std::stable_sort(pending.begin(), pending.end(), [&](int a, int b) {
      return batch.samples[a].llm_tokens() > batch.samples[b].llm_tokens();
    });
    auto [wave, left] = next_micro_batch(in.samples, in.room, in.ranks, in.budget,
                                         static_cast<double>(in.max_tokens), pending, in.cp_of);
    DHP_CHECK(left.size() < pending.size(), Internal,
              "megatron_dcp_dev: a micro-batch placed none of {} sequences", pending.size());
    waves.push_back(std::move(wave));
    pending = std::move(left);
  }
  DHP_LOG_DEBUG("megatron_dcp_dev: {} sequences, max {} tokens per rank -> {} micro-batches",
                batch.samples.size(), in.max_tokens, waves.size());
  return waves;
}

Plan plan_megatron_dcp_dev(const Batch& batch, const CostModel& cost, const Layout& layout,
                           const PlannerOptions& options) {
  check_batch_fits(batch, cost, layout);
  return build_plan(to_string(Strategy::MegatronDcpDev), batch, cost, layout,
                    megatron_dcp_dev_waves(batch, cost, layout, options));
}

}  // namespace dhp::detail
