// The DHP paper's planner (arXiv 2602.21788): memory-aware best-fit-decreasing packing of
// sequences into atomic groups, then a 2-D dynamic program that gives every atomic group
// its number of devices so that the slowest group finishes first. Micro-batches are formed
// before the packing (so encoder memory never splits a wave after the DP); text-only batches
// take the better of that and the cut in BFD order. See docs/baselines.md.
#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <optional>

#include "baselines.hpp"
#include "dhp/error.hpp"
#include "dhp/log.hpp"

namespace dhp::detail {

std::vector<AtomicGroup> bfd_atomic_groups(const Batch& batch, const CostModel& cost, double budget,
                                           int max_degree, std::int64_t max_tokens_per_rank) {
  const std::int64_t token_limit =
      max_tokens_per_rank > 0 ? max_tokens_per_rank : std::numeric_limits<std::int64_t>::max();
  std::vector<int> order(batch.samples.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int a, int b) {
    return batch.samples[a].llm_tokens() > batch.samples[b].llm_tokens();
  });

  std::vector<AtomicGroup> groups;
  std::vector<double> group_bytes;         // per device at the group's minimal degree
  std::vector<std::int64_t> group_tokens;  // per rank at the group's minimal degree
  for (int s : order) {
    // Best fit: the group left with the least memory once it takes s. A group of degree k
    // has k * budget bytes; its sequences are split evenly, so compare per device
    // (rank_activation_bytes sums its pieces, so the running sums are exact).
    const std::int64_t tokens = batch.samples[s].llm_tokens();
    std::vector<double> alone_at(max_degree + 1, -1.0);  // bytes of s alone, per degree
    auto alone = [&](int degree) {
      if (alone_at[degree] < 0) alone_at[degree] = group_activation_bytes(cost, batch, {s}, degree);
      return alone_at[degree];
    };
    int best = -1;
    double best_left = std::numeric_limits<double>::infinity();
    for (int g = 0; g < static_cast<int>(groups.size()); ++g) {
      const int k = groups[g].min_degree;
      if (group_tokens[g] + local_share(tokens, k) > token_limit) continue;
      const double left = budget - group_bytes[g] - alone(k);
      if (left >= 0 && left < best_left) {
        best_left = left;
        best = g;
      }
    }
    if (best >= 0) {
      groups[best].samples.push_back(s);
      group_bytes[best] += alone(groups[best].min_degree);
      group_tokens[best] += local_share(tokens, groups[best].min_degree);
      continue;
    }
    // A new atomic group: the smallest degree that holds this (its first) sequence.
    int degree = 1;
    while (degree <= max_degree && (group_activation_bytes(cost, batch, {s}, degree) > budget ||
                                    local_share(tokens, degree) > token_limit)) {
      ++degree;
    }
    const Sample& sample = batch.samples[s];
    DHP_CHECK(degree <= max_degree, DoesNotFit,
              "paper_bfd_dp: sample {} (id {}) of {} tokens does not fit {:.3g} GiB of "
              "activations per device (max_tokens_per_rank={}, 0: none) even on {} ranks",
              s, sample.id, sample.llm_tokens(), budget / (1 << 30), max_tokens_per_rank,
              max_degree);
    groups.push_back(AtomicGroup{degree, {s}});
    group_bytes.push_back(group_activation_bytes(cost, batch, {s}, degree));
    group_tokens.push_back(local_share(tokens, degree));
  }
  return groups;
}

DeviceAllocation allocate_devices_dp(const std::vector<std::vector<double>>& time,
                                     const std::vector<int>& min_degree, int ranks) {
  const int num_groups = static_cast<int>(time.size());
  DHP_CHECK(static_cast<int>(min_degree.size()) == num_groups && ranks >= 0, InvalidArgument,
            "allocate_devices_dp: {} time rows, {} minimal degrees, {} ranks", num_groups,
            min_degree.size(), ranks);
  constexpr double kInf = std::numeric_limits<double>::infinity();
  // Devices the first i groups need at least; rows can skip counts below it.
  std::vector<int> needed(num_groups + 1, 0);
  for (int i = 0; i < num_groups; ++i) {
    DHP_CHECK(min_degree[i] >= 1 && static_cast<int>(time[i].size()) == ranks + 1, InvalidArgument,
              "allocate_devices_dp: group {} has min degree {} and {} times", i, min_degree[i],
              time[i].size());
    needed[i + 1] = needed[i] + min_degree[i];
  }
  DHP_CHECK(needed[num_groups] <= ranks, Internal,
            "allocate_devices_dp: the {} groups need at least {} devices, only {}", num_groups,
            needed[num_groups], ranks);

  // best[i][n]: least makespan of the first i groups on at most n devices;
  // take[i][n]: devices group i-1 gets there.
  std::vector<std::vector<double>> best(num_groups + 1, std::vector<double>(ranks + 1, kInf));
  std::vector<std::vector<int>> take(num_groups + 1, std::vector<int>(ranks + 1, 0));
  std::fill(best[0].begin(), best[0].end(), 0.0);
  for (int i = 1; i <= num_groups; ++i) {
    const std::vector<double>& group_time = time[i - 1];
    const int rest_needed = needed[num_groups] - needed[i];  // later groups' minimum
    for (int n = needed[i]; n <= ranks - rest_needed; ++n) {
      for (int m = min_degree[i - 1]; m <= n - needed[i - 1]; ++m) {
        const double makespan = std::max(best[i - 1][n - m], group_time[m]);
        if (makespan < best[i][n]) {  // strict: the fewest devices among equals
          best[i][n] = makespan;
          take[i][n] = m;
        }
      }
    }
  }
  DeviceAllocation allocation;
  allocation.makespan = best[num_groups][ranks];
  DHP_CHECK(allocation.makespan < kInf, DoesNotFit,
            "allocate_devices_dp: no allocation of {} devices fits all {} groups", ranks,
            num_groups);
  allocation.degrees.assign(num_groups, 0);
  for (int i = num_groups, n = ranks; i >= 1; --i) {
    allocation.degrees[i - 1] = take[i][n];
    n -= take[i][n];
  }
  return allocation;
}

namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();

// The paper's dynamic program over one wave's atomic groups: each group's time at every degree
// from its minimum (infinity where it does not fit memory), then the allocation.
WaveDraft allocate_wave(const Batch& batch, const CostModel& cost, const Layout& layout,
                        double budget, const std::vector<AtomicGroup>& groups) {
  const int ranks = layout.llm.ranks;
  std::vector<std::vector<double>> time;
  std::vector<int> min_degree;
  for (const AtomicGroup& group : groups) {
    std::vector<double> row(ranks + 1, kInf);
    for (int m = group.min_degree; m <= ranks; ++m) {
      // More devices than the minimum leave each fewer tokens, but check: the hard memory
      // constraint holds whatever the activation model does.
      if (group_activation_bytes(cost, batch, group.samples, m) <= budget)
        row[m] = group_llm_ms(cost, layout, batch, group.samples, m);
    }
    time.push_back(std::move(row));
    min_degree.push_back(group.min_degree);
  }
  const DeviceAllocation allocation = allocate_devices_dp(time, min_degree, ranks);
  WaveDraft wave;
  for (std::size_t j = 0; j < groups.size(); ++j)
    wave.groups.push_back(split_group(allocation.degrees[j], groups[j].samples));
  return wave;
}

// Atomic groups of the samples `members` (indices into the batch), BFD as the paper packs.
std::vector<AtomicGroup> atomic_groups_of(const Batch& batch, const std::vector<int>& members,
                                          const CostModel& cost, double budget, int ranks,
                                          std::int64_t max_tokens_per_rank) {
  Batch part;
  part.samples.reserve(members.size());
  for (int s : members) part.samples.push_back(batch.samples[s]);
  std::vector<AtomicGroup> groups =
      bfd_atomic_groups(part, cost, budget, ranks, max_tokens_per_rank);
  for (AtomicGroup& g : groups)
    for (int& s : g.samples) s = members[static_cast<std::size_t>(s)];
  return groups;
}

// Cut 1, the atomic groups of the whole batch in BFD order, a wave filled until the next
// group's minimal degree would not fit; the DP per wave.
std::vector<WaveDraft> bfd_order_cut(const Batch& batch, const CostModel& cost,
                                     const Layout& layout, double budget,
                                     const PlannerOptions& options) {
  const int ranks = layout.llm.ranks;
  const std::vector<AtomicGroup> groups =
      bfd_atomic_groups(batch, cost, budget, ranks, options.max_tokens_per_rank);
  std::vector<std::vector<AtomicGroup>> wave_groups(1);
  int wave_min_devices = 0;
  for (const AtomicGroup& g : groups) {
    if (wave_min_devices + g.min_degree > ranks) {
      wave_groups.emplace_back();
      wave_min_devices = 0;
    }
    wave_groups.back().push_back(g);
    wave_min_devices += g.min_degree;
  }
  std::vector<WaveDraft> waves;
  for (const auto& members : wave_groups)
    waves.push_back(allocate_wave(batch, cost, layout, budget, members));
  DHP_LOG_DEBUG("paper_bfd_dp (BFD-order cut): {} atomic groups in {} waves", groups.size(),
                waves.size());
  return waves;
}

// Cut 2, micro-batches first: the batch split into the fewest micro-batches whose atomic
// groups fit the ranks and whose encoder items fit the wave's room (WaveEncoderRoom), samples
// spread over them by work (longest processing time first on each sample's rank-time at its
// minimal degree plus its encoder time); then the paper's BFD and DP within each. Encoder
// memory never has to split a wave after the DP. nullopt when no split up to one sample per
// micro-batch fits.
std::optional<std::vector<WaveDraft>> micro_batches_first(const Batch& batch, const CostModel& cost,
                                                          const Layout& layout, double budget,
                                                          const PlannerOptions& options) {
  const int ranks = layout.llm.ranks;
  const int n = static_cast<int>(batch.samples.size());
  const WaveEncoderRoom room(batch, cost, layout);
  std::vector<double> work(n, 0.0), bytes(n, 0.0);
  double total_bytes = 0, total_encoder = 0;
  for (int s = 0; s < n; ++s) {
    const std::int64_t tokens = batch.samples[s].llm_tokens();
    int d = 1;
    while (d < ranks && group_activation_bytes(cost, batch, {s}, d) > budget) ++d;
    work[s] = d * cost.llm_sequence_ms(tokens, expected_ring(d, layout));
    for (const VisualItem& v : batch.samples[s].visuals) work[s] += cost.encoder_item_ms(v);
    bytes[s] = cost.llm_activation_bytes(tokens, 1);
    total_bytes += bytes[s];
    total_encoder += room.sample_bytes(s);
  }
  std::vector<int> order(n);
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return work[a] > work[b]; });
  // Memory alone needs at least this many micro-batches.
  int m = std::max(1, static_cast<int>(std::ceil(total_bytes / (ranks * budget) - 1e-9)));
  for (; m <= n; ++m) {
    std::vector<std::vector<int>> members(m);
    std::vector<double> load(m, 0.0);
    for (int s : order) {
      const auto least = std::min_element(load.begin(), load.end()) - load.begin();
      members[least].push_back(s);
      load[least] += work[s];
    }
    std::vector<WaveDraft> waves;
    bool fits = true;
    for (const std::vector<int>& mb : members) {
      if (mb.empty()) continue;
      std::vector<AtomicGroup> groups;
      try {
        groups = atomic_groups_of(batch, mb, cost, budget, ranks, options.max_tokens_per_rank);
      } catch (const Error& e) {
        if (e.kind() != ErrorKind::DoesNotFit) throw;
        return std::nullopt;
      }
      // The room the wave's encoder gets is what the DP's allocation leaves: its groups are
      // split over at least their minimal degrees, so each device holds less than BFD packed.
      int min_devices = 0;
      double encoder = 0;
      for (const AtomicGroup& g : groups) {
        min_devices += g.min_degree;
        for (int s : g.samples) encoder += room.sample_bytes(s);
      }
      if (min_devices > ranks) {
        fits = false;
        break;
      }
      WaveDraft wave = allocate_wave(batch, cost, layout, budget, groups);
      double fullest = 0;
      for (const GroupDraft& g : wave.groups)
        fullest = std::max(fullest, group_activation_bytes(cost, batch, samples_of(g), g.degree));
      if (!room.fits(encoder, fullest)) {
        fits = false;
        break;
      }
      waves.push_back(std::move(wave));
    }
    if (fits) {
      DHP_LOG_DEBUG("paper_bfd_dp (micro-batches first): {} micro-batches (encoder {:.3g} GiB)",
                    waves.size(), total_encoder / (1 << 30));
      return waves;
    }
  }
  return std::nullopt;
}

}  // namespace

std::vector<WaveDraft> paper_bfd_dp_waves(const Batch& batch, const CostModel& cost,
                                          const Layout& layout, const PlannerOptions& options) {
  const double budget = llm_activation_budget(cost, layout, batch);
  std::optional<std::vector<WaveDraft>> first =
      micro_batches_first(batch, cost, layout, budget, options);
  const bool encoder_memory = WaveEncoderRoom(batch, cost, layout).applies();
  if (encoder_memory) {
    if (first) return std::move(*first);
    // No split holds a sample's items beside its LLM work (a sample of many large items on
    // few encoder ranks): the BFD-order cut, its waves split where the encoder overflows.
    return limit_encoder_per_wave(batch, cost, layout,
                                  bfd_order_cut(batch, cost, layout, budget, options));
  }
  // Text only: the better of the two cuts by the estimate.
  std::vector<WaveDraft> bfd = bfd_order_cut(batch, cost, layout, budget, options);
  if (!first) return bfd;
  const SampleCosts sample_costs = make_sample_costs(batch, cost, layout);
  return estimate_step_ms(batch, cost, layout, *first, sample_costs) <
                 estimate_step_ms(batch, cost, layout, bfd, sample_costs)
             ? std::move(*first)
             : std::move(bfd);
}

Plan plan_paper_bfd_dp(const Batch& batch, const CostModel& cost, const Layout& layout,
                       const PlannerOptions& options) {
  check_batch_fits(batch, cost, layout);  // paper_bfd_dp_waves's callers have checked already
  return build_plan(to_string(Strategy::PaperBfdDp), batch, cost, layout,
                    paper_bfd_dp_waves(batch, cost, layout, options));
}

}  // namespace dhp::detail
