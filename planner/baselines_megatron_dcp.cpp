// Megatron Core dynamic context parallelism as its published benchmark ran it: the
// `default_dynamic_cp` scheduler of NVIDIA/Megatron-LM at commit 192cbc3 (dev branch, 2026-06-11,
// the commit that added examples/dynamic_context_parallel and its results table),
// megatron/core/datasets/data_schedule.py (DefaultDynamicCPScheduler) and
// data_schedule_utils.py (next_hdp_group, dcp_make_buckets_equal, dcp_gpus_needed). Every
// sequence gets a power-of-two CP size from its length; one micro-batch at a time, sequences
// (longest first, in buckets of equal L^2/cp work) open groups on free ranks or join the
// least-loaded group of their size within the per-rank token limit; the micro-batch closes
// when the next sequence cannot be placed, or once the ranks' loads are within 5%; idle ranks
// are filled by doubling the smallest group. See docs/baselines.md.
#include <algorithm>
#include <deque>
#include <limits>
#include <numeric>
#include <set>

#include "baselines.hpp"
#include "dhp/error.hpp"
#include "dhp/log.hpp"
#include "megatron_microbatch.hpp"

namespace dhp::detail {
namespace {

constexpr double kBalanceDelta = 0.05;  // next_hdp_group's delta
constexpr double kBucketSlack = 1.1;  // dcp_make_buckets_equal: a bucket closes above 1.1 x target

// dcp_make_buckets_equal: the sequences (longest first) cut into as many consecutive buckets as
// there are distinct CP sizes, each of about equal L^2/cp work.
std::vector<std::deque<int>> equal_work_buckets(const Batch& batch, const std::vector<int>& order,
                                                const std::vector<int>& cp_of) {
  const std::set<int> sizes = [&] {
    std::set<int> s;
    for (int i : order) s.insert(cp_of[i]);
    return s;
  }();
  const int k = static_cast<int>(sizes.size());
  auto work = [&](int s) {
    return MegatronMicroBatch::workload(batch.samples[s].llm_tokens(), cp_of[s]);
  };
  double total = 0;
  for (int s : order) total += work(s);
  const double target = total / k;
  std::vector<std::deque<int>> buckets;
  std::deque<int> current;
  double current_work = 0;
  int remaining_k = k;
  const int n = static_cast<int>(order.size());
  for (int i = 0; i < n; ++i) {
    const double w = work(order[i]);
    if (!current.empty() && (current_work + w > target * kBucketSlack ||
                             n - i <= remaining_k - static_cast<int>(buckets.size()))) {
      buckets.push_back(std::move(current));
      current.clear();
      current_work = 0;
      --remaining_k;
    }
    current.push_back(order[i]);
    current_work += w;
  }
  if (!current.empty()) buckets.push_back(std::move(current));
  return buckets;
}

// next_hdp_group: forms one micro-batch from `pending` (longest first); returns what is left.
std::vector<int> next_micro_batch(MegatronMicroBatch& mb, const Batch& batch,
                                  const std::vector<int>& pending, const std::vector<int>& cp_of) {
  std::vector<std::deque<int>> buckets = equal_work_buckets(batch, pending, cp_of);
  int first_size = 0;
  bool check_balance = false;
  while (!buckets.empty()) {
    // The first bucket whose head has a group of its size or enough free ranks.
    int chosen = -1;
    for (int b = 0; b < static_cast<int>(buckets.size()) && chosen < 0; ++b) {
      if (buckets[b].empty()) continue;
      const int needed = cp_of[buckets[b].front()];
      if (!mb.groups_of_size(needed).empty() || mb.free_ranks() >= needed) chosen = b;
    }
    if (chosen < 0) break;
    const int s = buckets[chosen].front();
    const int needed = cp_of[s];
    if (first_size == 0) first_size = needed;

    // The least-loaded group of its size that takes it; a new group on free ranks (load 0)
    // beats any of them. Nothing: the whole micro-batch closes.
    int best = -1;
    for (int g : mb.groups_of_size(needed)) {
      if (!mb.can_add(g, s)) continue;
      if (best < 0 || mb.groups()[g].load < mb.groups()[best].load) best = g;
    }
    if (mb.free_ranks() >= needed) {
      if (!mb.can_open(needed, s)) break;  // the wave's encoder room: our addition
      mb.open(needed, s);
    } else if (best >= 0) {
      mb.add(best, s);
    } else {
      break;
    }
    buckets[chosen].pop_front();
    while (!buckets.empty() && buckets.front().empty()) buckets.erase(buckets.begin());
    if (needed < first_size) check_balance = true;
    if (check_balance && !buckets.empty() &&
        mb.max_load() - mb.min_load() <= kBalanceDelta * mb.max_load())
      break;
  }
  std::vector<int> left;
  for (const auto& bucket : buckets) left.insert(left.end(), bucket.begin(), bucket.end());
  return left;
}

}  // namespace

std::vector<WaveDraft> megatron_dcp_waves(const Batch& batch, const CostModel& cost,
                                          const Layout& layout, const PlannerOptions& options) {
  const MegatronInputs in(batch, cost, layout, options, "megatron_dcp");

  auto longest_first = [&](std::vector<int>& samples) {
    std::stable_sort(samples.begin(), samples.end(), [&](int a, int b) {
      return batch.samples[a].llm_tokens() > batch.samples[b].llm_tokens();
    });
  };
  std::vector<int> pending(batch.samples.size());
  std::iota(pending.begin(), pending.end(), 0);
  longest_first(pending);

  std::vector<WaveDraft> waves;
  while (!pending.empty()) {
    MegatronMicroBatch mb(in.samples, in.room, in.ranks, in.budget,
                          static_cast<double>(in.max_tokens));
    std::vector<int> left = next_micro_batch(mb, batch, pending, in.cp_of);
    DHP_CHECK(!mb.empty(), Internal, "megatron_dcp: a micro-batch placed none of {} sequences",
              pending.size());
    mb.fill_by_doubling();
    waves.push_back(mb.draft());
    longest_first(left);
    pending = std::move(left);
  }
  DHP_LOG_DEBUG("megatron_dcp: {} sequences, max {} tokens per rank -> {} micro-batches",
                batch.samples.size(), in.max_tokens, waves.size());
  return waves;
}

Plan plan_megatron_dcp(const Batch& batch, const CostModel& cost, const Layout& layout,
                       const PlannerOptions& options) {
  check_batch_fits(batch, cost, layout);  // megatron_dcp_waves's callers have checked already
  return build_plan(to_string(Strategy::MegatronDcp), batch, cost, layout,
                    megatron_dcp_waves(batch, cost, layout, options));
}

}  // namespace dhp::detail
