// dhp: our per-batch planner. A makespan search over per-wave target times T: for a given
// T every sequence takes the smallest ring degree that finishes it within T (and fits in
// memory); long ones open ring groups, short ones are packed best-fit into the slack of any
// rank, ring members included (dhp_packer.hpp). Binary search on T, a few wave counts, an
// LPT candidate over the same groups, the baselines' constructions, a bounded local
// improvement, then the waves' order; the best by estimated step time wins.
// See docs/algorithm.md.
#include <algorithm>
#include <cmath>
#include <limits>
#include <optional>
#include <utility>

#include "baselines.hpp"
#include "dhp/error.hpp"
#include "dhp/log.hpp"
#include "dhp_candidates.hpp"
#include "dhp_packer.hpp"
#include "internal.hpp"

namespace dhp::detail {
namespace {

constexpr double kRelTolerance = 0.002;  // binary search on T stops at 0.2%
constexpr double kFirstGrowth = 0.016;   // first step above the lower bound on T: 1.6%
constexpr int kExtraWaves = 3;           // wave counts tried beyond the memory minimum
// The portfolio's baseline constructions (paper_bfd_dp's DP is O(K N^2)) and the LPT re-pack
// of the best-fit groups are run only up to this ranks x sequences; above it they cost
// seconds (the portfolio) or one more full pack per wave count, and did not win (scale-4096).
constexpr long long kPortfolioMaxWork = 1LL << 22;
// plan_dhp's last pass (local search) prices O(n^2) drafts per round (merging: pairs of
// groups; moves: sequences x destinations), each a full estimate of O(R + V) (ranks, visual
// items): it runs only while (R + V) x n stays within this, i.e. on small batches.
constexpr long long kLocalSearchMaxWork = 1LL << 12;
constexpr int kMergeRounds = 4;
// Moving single sequences and cutting rings, after merging: only on batches of at most
// this many sequences (a little above what the exact solver takes, kExactMaxSequences).
constexpr int kMoveMaxSequences = 16;
constexpr int kMoveRounds = 8;

struct Candidate {
  Plan plan;  // assembled by the estimate: the winner is not assembled again
  double step_ms = kInf;
  std::vector<WaveDraft> waves;  // what it was assembled from
};

// One batch's search, phase by phase (run()): the fewest waves memory allows, then per wave
// count a bisection on T and its candidates, the portfolio, local moves and the waves' order.
class DhpSearch {
 public:
  // Only plans estimated below `to_beat` are kept (another layout's best, in a layout
  // search).
  DhpSearch(const Batch& batch, const CostModel& cost, const Layout& layout,
            const PlannerOptions& options, double to_beat);
  DhpSearch(const DhpSearch&) = delete;  // the packers point into it
  DhpSearch& operator=(const DhpSearch&) = delete;

  // nullopt when no plan is estimated below `to_beat`.
  std::optional<Plan> run() &&;

 private:
  void bound_the_makespan();
  void find_min_waves();
  void search_wave_counts();
  bool search_wave_count(int W);  // false: more waves stopped paying
  bool bracket_target(int W, double lower, double& lo, double& hi);
  bool screened_out(int W, double lo, double hi);
  void bisect(int W, double& lo, double& hi);
  void consider_lpt(int W);
  bool pack_best_fit(double T, int W);
  void merge_rings();
  void move_sequences();
  void order_waves();
  void fall_back_to_more_waves();
  double price(std::vector<WaveDraft>& waves);
  void consider(std::vector<WaveDraft> waves);

  const Batch& batch_;
  const CostModel& cost_;
  const Layout& layout_;
  const PlannerOptions& options_;
  const SampleCosts sample_costs_;
  const Tables tables_;
  const int R_;
  // Two packers: the bisection packs into `packer_` and swaps it with `kept_` on success, so
  // the packing at the final T is kept instead of being packed again.
  Packer packer_a_;
  Packer packer_b_;
  Packer* packer_ = &packer_a_;
  Packer* kept_ = &packer_b_;
  const bool has_encoder_;
  const bool at_scale_;
  const long long local_search_work_;

  // Lower bounds on the per-wave makespan: the longest sequence at its fastest degree, and
  // the least rank-time each sequence can consume, spread over every rank of every wave.
  double longest_ = 0;
  double rank_time_ = 0;
  double memory_ranks_ = 0;  // rank-waves the activations need at least
  double all_work_ = 0;      // every sequence on one rank at its first degree

  int w_min_ = 1;
  int w_max_ = 1;
  std::vector<WaveDraft> w_min_lpt_;   // the memory-only LPT packing at w_min
  double last_growth_ = kFirstGrowth;  // how far above its lower bound the previous W's T was
  Candidate best_;
  int estimates_ = 0, pruned_ = 0;  // for the debug summary
};

DhpSearch::DhpSearch(const Batch& batch, const CostModel& cost, const Layout& layout,
                     const PlannerOptions& options, double to_beat)
    : batch_(batch),
      cost_(cost),
      layout_(layout),
      options_(options),
      sample_costs_(make_sample_costs(batch, cost, layout)),
      tables_(make_tables(batch, cost, layout, options, sample_costs_)),
      R_(tables_.ranks),
      packer_a_(tables_),
      packer_b_(tables_),
      has_encoder_(layout.encoder.ranks > 0),
      at_scale_(static_cast<long long>(R_) * static_cast<long long>(tables_.seqs.size()) >
                kPortfolioMaxWork),
      local_search_work_((R_ + static_cast<long long>(sample_costs_.visuals_longest_first.size())) *
                         static_cast<long long>(tables_.seqs.size())) {
  best_.step_ms = to_beat;
}

std::optional<Plan> DhpSearch::run() && {
  const bool unbounded = !std::isfinite(best_.step_ms);
  bound_the_makespan();
  find_min_waves();
  search_wave_counts();
  if (!at_scale_)
    add_portfolio(batch_, cost_, layout_, options_, tables_,
                  [this](std::vector<WaveDraft> waves) { consider(std::move(waves)); });
  if (local_search_work_ <= kLocalSearchMaxWork) merge_rings();
  if (static_cast<int>(tables_.seqs.size()) <= kMoveMaxSequences &&
      local_search_work_ <= kLocalSearchMaxWork)
    move_sequences();
  if (!at_scale_) order_waves();
  if (best_.waves.empty() && !unbounded) return std::nullopt;
  if (!std::isfinite(best_.step_ms)) fall_back_to_more_waves();
  // A finite estimate means every rank fits (the estimate is infinite over capacity), so
  // this is build_plan's plan for the winning drafts.
  DHP_LOG_DEBUG(
      "dhp: {} samples on {} ranks: {} packs, {} full estimates ({} pruned by the "
      "bound), step {:.3f} ms in {} waves",
      batch_.samples.size(), R_, packer_a_.packs() + packer_b_.packs(), estimates_, pruned_,
      best_.step_ms, best_.plan.waves.size());
  validate(best_.plan, batch_);
  return std::move(best_.plan);
}

void DhpSearch::bound_the_makespan() {
  all_work_ = tables_.fixed_ms;
  for (const SequenceInfo& s : tables_.seqs) {
    double least = kInf;
    for (int i = 0; i < s.num_steps; ++i) {
      const DegreeStep& st = tables_.steps[s.first_step + i];
      least = std::min(least, st.degree * st.ms);
    }
    longest_ = std::max(longest_, tables_.steps[s.first_step + s.num_steps - 1].ms);
    rank_time_ += least;
    const DegreeStep& first = tables_.steps[s.first_step];
    all_work_ += first.ms;
    memory_ranks_ +=
        first.degree * std::max(first.bytes / tables_.budget,
                                static_cast<double>(first.tokens) / tables_.token_limit);
  }
}

// The fewest waves for which the memory permits a packing at all. The memory-only LPT
// packing at w_min is also that wave count's first candidate: kept.
void DhpSearch::find_min_waves() {
  int w_min = std::max(1, static_cast<int>(std::ceil(memory_ranks_ / R_ - 1e-9)));
  while (w_min <= options_.max_waves) {
    if (packer_->pack(kInf, w_min, Fill::Lpt)) {
      w_min_lpt_ = packer_->drafts();
      break;
    }
    if (packer_->pack(kInf, w_min, Fill::BestFit)) break;
    ++w_min;
  }
  DHP_CHECK(w_min <= options_.max_waves, DoesNotFit,
            "dhp: the batch of {} samples needs more than max_waves={} waves to fit in memory",
            batch_.samples.size(), options_.max_waves);
  w_min_ = w_min;
  w_max_ = std::min(options_.max_waves, w_min + kExtraWaves);
}

// Prices a candidate with the full estimate; the best so far takes its waves (a finite
// estimate: nothing more to do with them).
double DhpSearch::price(std::vector<WaveDraft>& waves) {
  ++estimates_;
  Plan plan = estimate_plan("dhp", batch_, cost_, layout_, waves, sample_costs_);
  const double ms = plan.estimate.step_ms;
  if (ms < best_.step_ms) best_ = Candidate{std::move(plan), ms, std::move(waves)};
  return ms;
}

// A new packing: skipped when its lower bound cannot beat the best; one over memory through
// the colocated encoder is priced again with visual items deferred to later waves, as the
// baselines do.
void DhpSearch::consider(std::vector<WaveDraft> waves) {
  if (waves.empty()) return;
  // Rounding slack: the bound sums in another order than the estimate.
  const double bound = step_lower_bound_ms(batch_, cost_, layout_, waves, sample_costs_);
  if (bound > best_.step_ms * (1 + 1e-9)) {
    ++pruned_;
    return;
  }
  const std::size_t count = waves.size();
  const double ms = price(waves);
  // A bound above an estimate would have pruned candidates that win: the estimate changed
  // in a way step_lower_bound_ms does not know about.
  DHP_CHECK(!(bound > ms * (1 + 1e-9)), Internal,
            "dhp: step lower bound {:.6f} ms above the estimate {:.6f} ms of {} waves", bound, ms,
            count);
  if (!std::isfinite(ms) && has_encoder_) {
    std::vector<WaveDraft> deferred =
        limit_encoder_per_wave(batch_, cost_, layout_, std::move(waves));
    price(deferred);
  }
}

void DhpSearch::search_wave_counts() {
  for (int W = w_min_; W <= w_max_; ++W)
    if (!search_wave_count(W)) break;
}

// Static-balanced-like: every sequence at its memory-minimal degree, LPT. Past w_min it is
// priced after the best-fit packing, which usually makes it unnecessary.
void DhpSearch::consider_lpt(int W) {
  if (W == w_min_)
    consider(std::move(w_min_lpt_));
  else if (packer_->pack(kInf, W, Fill::Lpt))
    consider(packer_->drafts());
}

bool DhpSearch::pack_best_fit(double T, int W) {
  if (!packer_->pack(T, W, Fill::BestFit)) return false;
  std::swap(packer_, kept_);
  return true;
}

// One wave count: the best-fit packing at the smallest feasible T (to 0.2 %) and the
// candidates around it.
bool DhpSearch::search_wave_count(int W) {
  const double best_before = best_.step_ms;
  const double lower = std::max({longest_, rank_time_ / (static_cast<double>(W) * R_), 1e-9});
  double lo = 0, hi = 0;
  if (!bracket_target(W, lower, lo, hi)) {
    consider_lpt(W);
    return true;
  }
  if (W > w_min_ && std::isfinite(best_.step_ms) && screened_out(W, lo, hi)) return false;
  bisect(W, lo, hi);
  last_growth_ = hi / lower - 1;
  // `kept_` holds the packing at hi: only a successful pack moves hi.
  kept_->improve(4 * static_cast<int>(tables_.seqs.size()));
  consider(kept_->drafts());
  // After: the bound may prune it against the best-fit packing. At scale only while no
  // candidate so far fits: there it never won (scale-4096) and costs a full estimate
  // whenever the bound cannot prune it.
  if (!at_scale_ || !std::isfinite(best_.step_ms)) consider_lpt(W);
  // The same ring groups with short sequences spread least-loaded first (not at scale,
  // where it is one more pack of every sequence and, like the portfolio, did not win).
  if (!at_scale_ && packer_->pack(hi, W, Fill::Lpt)) {
    consider(packer_->drafts());
    // No move: the same drafts, already priced.
    if (packer_->improve(4 * static_cast<int>(tables_.seqs.size())) > 0)
      consider(packer_->drafts());
  }
  DHP_LOG_DEBUG("dhp: W={} T={:.3f} ms (lower bound {:.3f}) best step {:.3f} ms", W, hi, lower,
                best_.step_ms);
  return !(W > w_min_ && !(best_.step_ms < best_before));  // more waves stopped paying
}

// Grow T from the lower bound in steps that double (the feasible T is usually a few % above
// it; past w_min the first step is where the previous W ended) until best fit packs. Past
// all work on one rank, a larger T changes nothing: best fit cannot pack this W (false).
bool DhpSearch::bracket_target(int W, double lower, double& lo, double& hi) {
  lo = lower * (1 - 1e-9);
  hi = lower;
  double growth = kFirstGrowth;
  if (W > w_min_) {
    growth = std::max(kFirstGrowth, last_growth_);
    hi = lower * (1 + growth);
    growth *= 2;
  }
  while (!pack_best_fit(hi, W)) {
    lo = hi;
    hi = lower * (1 + growth);
    growth *= 2;
    if (hi > 2 * all_work_) return false;
  }
  return true;
}

// More waves rarely pay once they cost more than the best so far: price this first feasible
// packing, optimistically as if every wave's slowest rank came down to the middle of the
// bisection's bracket [lo, hi] (lo: a T that failed to pack, or the lower bound; the
// bisection ends mid-bracket on average), and stop when even that is above the best. Not a
// proof, a screen that saves the bisection of a wave count that cannot win
// (docs/algorithm.md, step 3). It needs the full estimate: colocated waves overlap across
// devices, so no cheap bound is tight enough.
bool DhpSearch::screened_out(int W, double lo, double hi) {
  ++estimates_;
  const double first = estimate_step_ms(batch_, cost_, layout_, kept_->drafts(), sample_costs_);
  const double optimistic = first - W * (hi - lo) / 2;
  DHP_LOG_DEBUG(
      "dhp: W={} screened at T={:.3f} ms (floor {:.3f}): {:.3f} ms, optimistic {:.3f}, best "
      "{:.3f}",
      W, hi, lo, first, optimistic, best_.step_ms);
  return optimistic > best_.step_ms;
}

void DhpSearch::bisect(int W, double& lo, double& hi) {
  while (hi - lo > kRelTolerance * hi) {
    const double mid = 0.5 * (lo + hi);
    if (pack_best_fit(mid, W))
      hi = mid;
    else
      lo = mid;
  }
}

// Hill climbing on the best plan: merge a ring with another group of its wave while that
// lowers the estimate (each round tries every pair and keeps the best).
void DhpSearch::merge_rings() {
  for (int round = 0; round < kMergeRounds && std::isfinite(best_.step_ms); ++round) {
    const double before = best_.step_ms;
    const std::vector<WaveDraft> from = best_.waves;
    for (std::size_t w = 0; w < from.size(); ++w)
      for (std::size_t a = 0; a < from[w].groups.size(); ++a)
        for (std::size_t b = a + 1; b < from[w].groups.size(); ++b) {
          if (from[w].groups[a].split.empty() && from[w].groups[b].split.empty()) continue;
          std::vector<WaveDraft> merged =
              merge_groups(from, w, a, b, sample_costs_, tables_.token_limit);
          if (!merged.empty()) consider(std::move(merged));
        }
    if (!(best_.step_ms < before)) break;
  }
}

// Then single moves: a sequence to another group (split, or whole on any member, or onto a
// free rank of its wave as a group of its own), or a ring cut in two.
void DhpSearch::move_sequences() {
  std::vector<double> sample_ms(batch_.samples.size(), 0.0);
  for (const SequenceInfo& q : tables_.seqs) sample_ms[q.sample] = q.whole_ms;
  auto consider_if = [&](std::vector<WaveDraft> waves) {
    if (!waves.empty()) consider(std::move(waves));
  };
  const std::int64_t limit = tables_.token_limit;
  for (int round = 0; round < kMoveRounds && std::isfinite(best_.step_ms); ++round) {
    const double before = best_.step_ms;
    const std::vector<WaveDraft> from = best_.waves;
    for (std::size_t w = 0; w < from.size(); ++w) {
      const std::vector<GroupDraft>& groups = from[w].groups;
      int used = 0;
      for (const GroupDraft& g : groups) used += g.degree;
      for (std::size_t a = 0; a < groups.size(); ++a) {
        for (int sample : samples_of(groups[a])) {
          for (std::size_t b = 0; b <= groups.size(); ++b) {
            if (b == groups.size() && used >= R_) break;
            const int degree = b == groups.size() ? 1 : groups[b].degree;
            if (b != a && degree > 1)
              consider_if(move_sample(from, w, a, sample, b, -1, sample_costs_, limit));
            for (int m = 0; m < degree; ++m) {
              // Back onto the member it holds alone: the same draft, already the best.
              if (b == a && m < static_cast<int>(groups[a].whole.size()) &&
                  groups[a].whole[m].size() == 1 && groups[a].whole[m][0] == sample)
                continue;
              consider_if(move_sample(from, w, a, sample, b, m, sample_costs_, limit));
            }
          }
        }
        for (int k = 1; k < groups[a].degree; ++k)
          consider_if(split_ring(from, w, a, k, sample_ms, sample_costs_, limit));
      }
    }
    if (!(best_.step_ms < before)) break;
  }
}

// Last, the waves' order: the packing fills waves in no particular order, but the LLM's
// gradient sync hides under the last wave's backward, and a colocated encoder's first forward
// and last backward run beside no LLM work. Move one wave first or last while that lowers the
// estimate (2 (W - 1) candidates a round, W - 1 with two waves; at scale, W full estimates
// more than the planner time allows). Priced without the lower bound (it does not depend on
// the order, so it cannot prune them); an order that breaks memory (the items held between
// two waves) is dropped, not re-packed.
void DhpSearch::order_waves() {
  for (std::size_t round = 0; std::isfinite(best_.step_ms) && round < best_.waves.size(); ++round) {
    const double before = best_.step_ms;
    const std::vector<WaveDraft> from = best_.waves;
    const auto at = [&](std::size_t i) { return static_cast<std::ptrdiff_t>(i); };
    for (std::size_t i = 0; i < from.size(); ++i) {
      if (i + 1 < from.size()) {
        std::vector<WaveDraft> moved = from;
        std::rotate(moved.begin() + at(i), moved.begin() + at(i + 1), moved.end());
        price(moved);
      }
      if (i > 0 && from.size() > 2) {  // with two waves, the same as wave 0 moved last
        std::vector<WaveDraft> moved = from;
        std::rotate(moved.begin(), moved.begin() + at(i), moved.begin() + at(i + 1));
        price(moved);
      }
    }
    if (!(best_.step_ms < before)) break;
  }
}

// Every candidate broke memory in the full estimate (encoder reserve, fragmentation):
// memory-only packings over more waves, each priced (consider() also defers encoder items),
// until one fits; only then does build_plan see it.
void DhpSearch::fall_back_to_more_waves() {
  for (int W = w_max_ + 1; W <= options_.max_waves && !std::isfinite(best_.step_ms); ++W) {
    if (packer_->pack(kInf, W, Fill::Lpt)) consider(packer_->drafts());
    if (!std::isfinite(best_.step_ms) && packer_->pack(kInf, W, Fill::BestFit))
      consider(packer_->drafts());
  }
  DHP_CHECK(std::isfinite(best_.step_ms), DoesNotFit,
            "dhp: no packing of the {} samples into at most max_waves={} waves fits device "
            "memory (LLM activation budget {:.3f} GiB per rank)",
            batch_.samples.size(), options_.max_waves, tables_.budget / (1024.0 * 1024 * 1024));
}

}  // namespace

Plan plan_dhp(const Batch& batch, const CostModel& cost, const Layout& layout,
              const PlannerOptions& options) {
  return *DhpSearch(batch, cost, layout, options, kInf).run();
}

std::optional<Plan> plan_dhp_below(const Batch& batch, const CostModel& cost, const Layout& layout,
                                   const PlannerOptions& options, double to_beat) {
  return DhpSearch(batch, cost, layout, options, to_beat).run();
}

}  // namespace dhp::detail
