// exact: the optimal single-wave plan over dhp's plan space for small instances, by
// enumerating the group degrees (integer partitions of the ranks) and branch-and-bound over
// where each sequence goes (split over a group, or whole on one member).
#include <algorithm>
#include <functional>
#include <limits>
#include <numeric>

#include "dhp/error.hpp"
#include "internal.hpp"

namespace dhp::detail {
namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();

// Non-increasing integer partitions of `total`.
void partitions(int total, int max_part, std::vector<int>& current,
                std::vector<std::vector<int>>& out) {
  if (total == 0) {
    out.push_back(current);
    return;
  }
  for (int p = std::min(total, max_part); p >= 1; --p) {
    current.push_back(p);
    partitions(total - p, p, current, out);
    current.pop_back();
  }
}

struct Piece {
  int sample;
  double whole_ms;
  double whole_bytes;
  std::vector<double> split_ms;     // [degree]
  std::vector<double> split_bytes;  // [degree]
};

class Search {
 public:
  Search(std::vector<Piece> pieces, double budget, double fixed_ms, bool prune)
      : pieces_(std::move(pieces)), budget_(budget), fixed_ms_(fixed_ms), prune_(prune) {}

  void run(const std::vector<int>& degrees, double& best, WaveDraft& best_wave, long long& nodes) {
    degrees_ = degrees;
    first_rank_.assign(degrees.size(), 0);
    int ranks = 0;
    for (std::size_t g = 0; g < degrees.size(); ++g) {
      first_rank_[g] = ranks;
      ranks += degrees[g];
    }
    load_.assign(ranks, 0.0);
    bytes_.assign(ranks, 0.0);
    group_used_.assign(degrees.size(), 0);
    whole_count_.assign(ranks, 0);
    where_.assign(pieces_.size(), {-1, -1});
    best_ = &best;
    best_wave_ = &best_wave;
    nodes_ = &nodes;
    recurse(0, 0.0);
  }

 private:
  void recurse(std::size_t k, double makespan) {
    ++*nodes_;
    if (prune_ && makespan >= *best_) return;
    if (k == pieces_.size()) {
      if (makespan < *best_) {
        *best_ = makespan;
        record();
      }
      return;
    }
    const Piece& p = pieces_[k];
    for (std::size_t g = 0; g < degrees_.size(); ++g) {
      // Identical empty groups are interchangeable: only the first of them is tried.
      if (prune_ && !group_used_[g] && g > 0 && degrees_[g - 1] == degrees_[g] &&
          !group_used_[g - 1])
        continue;
      const int d = degrees_[g];
      const int r0 = first_rank_[g];
      if (d > 1) {  // split over the whole group
        bool fits = true;
        double span = makespan;
        for (int m = 0; m < d; ++m) {
          fits = fits && bytes_[r0 + m] + p.split_bytes[d] <= budget_;
          span = std::max(span, load_[r0 + m] + p.split_ms[d] + fixed_ms_);
        }
        if (fits) {
          for (int m = 0; m < d; ++m) {
            load_[r0 + m] += p.split_ms[d];
            bytes_[r0 + m] += p.split_bytes[d];
          }
          ++group_used_[g];
          where_[k] = {static_cast<int>(g), -1};
          recurse(k + 1, span);
          --group_used_[g];
          for (int m = 0; m < d; ++m) {
            load_[r0 + m] -= p.split_ms[d];
            bytes_[r0 + m] -= p.split_bytes[d];
          }
        }
      }
      for (int m = 0; m < d; ++m) {  // whole on one member
        // Members without whole pieces are interchangeable: try the first one only.
        if (prune_ && m > 0 && whole_count_[r0 + m] == 0 && whole_count_[r0 + m - 1] == 0) continue;
        const int r = r0 + m;
        if (bytes_[r] + p.whole_bytes > budget_) continue;
        load_[r] += p.whole_ms;
        bytes_[r] += p.whole_bytes;
        ++whole_count_[r];
        ++group_used_[g];
        where_[k] = {static_cast<int>(g), m};
        recurse(k + 1, std::max(makespan, load_[r] + fixed_ms_));
        --group_used_[g];
        --whole_count_[r];
        load_[r] -= p.whole_ms;
        bytes_[r] -= p.whole_bytes;
      }
    }
  }

  void record() {
    WaveDraft wave;
    wave.groups.resize(degrees_.size());
    for (std::size_t g = 0; g < degrees_.size(); ++g) {
      wave.groups[g].degree = degrees_[g];
      wave.groups[g].whole.resize(degrees_[g]);
    }
    for (std::size_t k = 0; k < pieces_.size(); ++k) {
      auto [g, m] = where_[k];
      if (m < 0)
        wave.groups[g].split.push_back(pieces_[k].sample);
      else
        wave.groups[g].whole[m].push_back(pieces_[k].sample);
    }
    std::erase_if(wave.groups, holds_no_sample);
    *best_wave_ = std::move(wave);
  }

  std::vector<Piece> pieces_;
  double budget_;
  double fixed_ms_;  // a rank that holds anything pays it once (loads are marginal times)
  bool prune_;
  std::vector<int> degrees_;
  std::vector<int> first_rank_;
  std::vector<double> load_;
  std::vector<double> bytes_;
  std::vector<int> group_used_;
  std::vector<int> whole_count_;
  std::vector<std::pair<int, int>> where_;
  double* best_ = nullptr;
  WaveDraft* best_wave_ = nullptr;
  long long* nodes_ = nullptr;
};

}  // namespace

ExactResult solve_exact_wave(const Batch& batch, const CostModel& cost, const Layout& layout,
                             bool prune, double incumbent_ms) {
  const int R = layout.llm.ranks;
  const int n = static_cast<int>(batch.samples.size());
  DHP_CHECK(R <= kExactMaxRanks && R <= layout.llm_ranks_per_node && n <= kExactMaxSequences,
            InvalidArgument,
            "exact: instance too large: {} LLM ranks ({} per node), {} sequences; the exact solver "
            "takes at most {} ranks inside one node and {} sequences",
            R, layout.llm_ranks_per_node, n, kExactMaxRanks, kExactMaxSequences);
  // Rank time = llm_rank_fixed_ms + the pieces' marginal times: exactly llm_rank_ms for
  // whole sequences; for several sequences split over one ring it adds their exposed ring
  // communication per sequence, an upper bound of the packed figure (see docs/algorithm.md).
  const double fixed = cost.llm_rank_fixed_ms();
  const SampleCosts sc = make_sample_costs(batch, cost, layout);
  std::vector<Piece> pieces;
  pieces.reserve(n);
  for (int i = 0; i < n; ++i) {
    const std::int64_t tokens = sc.tokens[i];
    // The sample's encoder items are held beside it, as dhp packs them.
    const double charge = encoder_charge_per_device(cost, layout, sc.encoder_held[i]);
    Piece p{i, cost.llm_sequence_ms(tokens, RingSpan{1, false}) - fixed,
            cost.llm_activation_bytes(tokens, 1) + charge, std::vector<double>(R + 1, kInf),
            std::vector<double>(R + 1, kInf)};
    for (int d = 2; d <= R; ++d) {
      p.split_ms[d] = cost.llm_sequence_ms(tokens, expected_ring(d, layout)) - fixed;
      p.split_bytes[d] = cost.llm_activation_bytes(tokens, d) + charge / d;
    }
    pieces.push_back(std::move(p));
  }
  // Decreasing work first: large pieces fix the makespan early and prune the most.
  std::stable_sort(pieces.begin(), pieces.end(),
                   [](const Piece& a, const Piece& b) { return a.whole_ms > b.whole_ms; });

  std::vector<std::vector<int>> all;
  std::vector<int> current;
  for (int total = prune ? R : 1; total <= R; ++total) partitions(total, total, current, all);

  ExactResult result;
  result.makespan_ms = incumbent_ms;
  Search search(std::move(pieces), llm_activation_budget(cost, layout, batch), fixed, prune);
  for (const auto& degrees : all)
    search.run(degrees, result.makespan_ms, result.wave, result.nodes);
  result.found = !result.wave.groups.empty();
  return result;
}

Plan plan_exact(const Batch& batch, const CostModel& cost, const Layout& layout,
                const PlannerOptions& options) {
  // dhp's single-wave plan (if it has one) is the first incumbent.
  double incumbent = kInf;
  WaveDraft dhp_wave;
  {
    const Plan dhp = plan_dhp(batch, cost, layout, options);
    if (dhp.waves.size() == 1) {
      incumbent = (dhp.estimate.wave_ms[0] - cost.wave_overhead_ms()) * (1 + 1e-9);
      const WavePlan& w = dhp.waves[0];
      dhp_wave.groups.resize(w.groups.size());
      for (std::size_t g = 0; g < w.groups.size(); ++g) {
        dhp_wave.groups[g].degree = w.groups[g].degree();
        dhp_wave.groups[g].whole.resize(w.groups[g].degree());
      }
      for (const SequencePlan& sp : w.sequences) {
        GroupDraft& gd = dhp_wave.groups[sp.group];
        if (sp.sharding == Sharding::Whole)
          gd.whole[sp.member].push_back(sp.sample);
        else
          gd.split.push_back(sp.sample);
      }
    }
  }
  ExactResult r = solve_exact_wave(batch, cost, layout, /*prune=*/true, incumbent);
  if (!r.found) {
    // dhp's plan is already optimal to within the tolerance; solve again from it to get a draft.
    r = solve_exact_wave(batch, cost, layout, /*prune=*/true, kInf);
  }
  DHP_CHECK(r.found, InvalidArgument,
            "exact: the {} sequences do not fit in one wave on {} LLM ranks; the exact solver "
            "plans single-wave instances only",
            batch.samples.size(), layout.llm.ranks);
  // The search prices a ring holding several split sequences at an upper bound of the packed
  // estimate, so dhp's plan can still be the better one by the estimate: keep the better.
  if (!dhp_wave.groups.empty() && estimate_step_ms(batch, cost, layout, {dhp_wave}) <
                                      estimate_step_ms(batch, cost, layout, {r.wave}))
    return build_plan("exact", batch, cost, layout, {dhp_wave});
  return build_plan("exact", batch, cost, layout, {r.wave});
}

}  // namespace dhp::detail
