// dhp: our per-batch planner. A makespan search over per-wave target times T: for a given
// T every sequence takes the smallest ring degree that finishes it within T (and fits in
// memory); long ones open ring groups, short ones are packed best-fit into the slack of any
// rank, ring members included. Binary search on T, a few wave counts, an LPT candidate over
// the same groups, a bounded local improvement, then the waves' order; the best by estimated
// step time wins.
// See docs/algorithm.md.
#include <algorithm>
#include <cmath>
#include <limits>
#include <map>
#include <numeric>
#include <set>
#include <unordered_map>
#include <utility>

#include "baselines.hpp"
#include "dhp/error.hpp"
#include "dhp/log.hpp"
#include "internal.hpp"
#include "load_index.hpp"

namespace dhp::detail {
namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();
constexpr double kRelTolerance = 0.002;  // binary search on T stops at 0.2%
constexpr double kFirstGrowth = 0.016;   // first step above the lower bound on T: 1.6%
constexpr int kExtraWaves = 3;           // wave counts tried beyond the memory minimum
constexpr int kMemoryScan = 16;          // bins inspected for memory before opening a new one
// The LPT fill's least-loaded ranks inspected for memory before it takes any rank that fits:
// the count the ordered-set scan it replaced inspected (kMemoryScan words of 64, plus 2).
constexpr int kLptMemoryScan = kMemoryScan * 64 + 2;
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

// One useful degree of a sequence: the per-rank time falls strictly from step to step.
struct DegreeStep {
  int degree;
  double ms;
  double bytes;
  std::int64_t tokens;  // local tokens per member
};

struct SequenceInfo {
  int sample;
  double whole_ms;
  double whole_bytes;
  std::int64_t whole_tokens;
  int first_step;  // into the flat step table; steps start at the memory-minimal degree
  int num_steps;
};

// Per-batch tables computed once: the degree/time/memory steps of every sequence.
struct Tables {
  std::vector<SequenceInfo> seqs;  // sorted by decreasing work, sample index on ties
  std::vector<DegreeStep> steps;
  double budget = 0;
  std::int64_t token_limit = 0;  // local tokens per rank (PlannerOptions::max_tokens_per_rank)
  // [k]: the smallest whole-piece bytes and tokens among the sequences after the k-th: a
  // rank that cannot take that much more leaves the packer's index.
  std::vector<double> min_bytes_after;
  std::vector<std::int64_t> min_tokens_after;
  double fixed_ms = 0;        // paid once by every rank that holds anything (llm_rank_fixed_ms)
  double total_whole_ms = 0;  // every sequence's whole_ms
  int ranks = 0;
};

Tables make_tables(const Batch& batch, const CostModel& cost, const Layout& layout,
                   const PlannerOptions& options) {
  Tables t;
  t.token_limit = options.max_tokens_per_rank > 0 ? options.max_tokens_per_rank
                                                  : std::numeric_limits<std::int64_t>::max();
  t.ranks = layout.llm.ranks;
  t.budget = llm_activation_budget(cost, layout, batch);
  // Step times are marginal: a rank's load is fixed_ms + the sum of its pieces' marginal
  // times, which is exactly llm_rank_ms for whole sequences (ring exposure is nearly additive).
  t.fixed_ms = cost.llm_rank_fixed_ms();
  const int R = t.ranks;
  const int n = static_cast<int>(batch.samples.size());
  t.seqs.reserve(n);
  // Sequences of equal length share their steps: real batches repeat lengths (fixed image
  // token counts), and the cost-model calls are most of the tables' time.
  std::unordered_map<std::int64_t, int> seq_of_length;
  for (int i = 0; i < n; ++i) {
    const std::int64_t tokens = batch.samples[i].llm_tokens();
    if (const auto same = seq_of_length.find(tokens); same != seq_of_length.end()) {
      SequenceInfo s = t.seqs[same->second];
      s.sample = i;
      t.seqs.push_back(s);
      continue;
    }
    seq_of_length.emplace(tokens, static_cast<int>(t.seqs.size()));
    SequenceInfo s{i,
                   cost.llm_sequence_ms(tokens, RingSpan{1, false}) - t.fixed_ms,
                   cost.llm_activation_bytes(tokens, 1),
                   tokens,
                   static_cast<int>(t.steps.size()),
                   0};
    // Smallest degree whose activations fit (bytes fall with the degree beyond 1) and whose
    // local share stays within the token limit.
    int d_mem = 1;
    if (s.whole_bytes > t.budget || tokens > t.token_limit) {
      int lo = 2, hi = R;
      while (lo < hi) {
        const int mid = lo + (hi - lo) / 2;
        if (cost.llm_activation_bytes(tokens, mid) <= t.budget &&
            local_share(tokens, mid) <= t.token_limit)
          hi = mid;
        else
          lo = mid + 1;
      }
      d_mem = lo;
    }
    double best = kInf;
    double prev = kInf;
    const int rpn = std::max(1, layout.llm_ranks_per_node);
    for (int d = d_mem; d <= R; d = d < 2 * rpn ? d + 1 : (d / rpn + 1) * rpn) {
      // Past two nodes only whole-node multiples: the ring crosses nodes anyway, and the
      // table stays O(R / ranks per node) per sequence on large clusters.
      const double ms =
          d == 1 ? s.whole_ms : cost.llm_sequence_ms(tokens, expected_ring(d, layout)) - t.fixed_ms;
      const double bytes = d == 1 ? s.whole_bytes : cost.llm_activation_bytes(tokens, d);
      if (ms < best * (1 - 1e-9) && bytes <= t.budget && local_share(tokens, d) <= t.token_limit) {
        t.steps.push_back(DegreeStep{d, ms, bytes, local_share(tokens, d)});
        best = ms;
      }
      // Past the node boundary the ring only gets more expensive once it stops paying.
      if (d > layout.llm_ranks_per_node && ms >= prev) break;
      prev = ms;
    }
    s.num_steps = static_cast<int>(t.steps.size()) - s.first_step;
    DHP_CHECK(s.num_steps > 0, Internal, "dhp: sample {} has no degree that fits", i);
    t.seqs.push_back(s);
  }
  std::stable_sort(t.seqs.begin(), t.seqs.end(), [](const SequenceInfo& a, const SequenceInfo& b) {
    if (a.whole_ms != b.whole_ms) return a.whole_ms > b.whole_ms;
    return a.sample < b.sample;
  });
  for (const SequenceInfo& s : t.seqs) t.total_whole_ms += s.whole_ms;
  t.min_bytes_after.assign(n, kInf);
  t.min_tokens_after.assign(n, std::numeric_limits<std::int64_t>::max());
  for (int k = n - 2; k >= 0; --k) {
    t.min_bytes_after[k] = std::min(t.min_bytes_after[k + 1], t.seqs[k + 1].whole_bytes);
    t.min_tokens_after[k] = std::min(t.min_tokens_after[k + 1], t.seqs[k + 1].whole_tokens);
  }
  return t;
}

// A rank in the packing: a member of a group in a wave, with its load and activation bytes.
struct Bin {
  int wave;
  int group;
  int member;
  double load;  // fixed_ms + marginal times of its pieces; 0 while it holds nothing
  double bytes;
  std::int64_t tokens;
  int pieces;
};
struct Group {
  int wave;
  int degree;
  int first_bin;
  double split_load;
  double split_bytes;
};

enum class Fill { BestFit, Lpt };

// The packing state of one (T, W) attempt; buffers are reused between attempts.
class Packer {
 public:
  explicit Packer(const Tables& tables) : t_(tables) {}

  // Places every sequence with a per-wave makespan target T over W waves. BestFit: short
  // sequences go to the fullest rank that still has room before T (fails when none). Lpt:
  // ring groups as for BestFit, then every free rank opens and short sequences go to the
  // least-loaded rank (T only decides the degrees).
  int packs() const { return packs_; }  // pack() calls so far

  bool pack(double T, int W, Fill fill) {
    ++packs_;
    reset(T, W, fill);
    const int n = static_cast<int>(t_.seqs.size());
    bool short_phase_started = false;
    for (int k = 0; k < n; ++k) {
      const SequenceInfo& s = t_.seqs[k];
      const DegreeStep* step = choose_step(s, T);
      if (step == nullptr) return false;
      if (step->degree > 1) {
        if (!place_split(k, *step, T, fill)) return false;
        continue;
      }
      if (!short_phase_started) {
        short_phase_started = true;
        if (fill == Fill::Lpt) open_all_free();
      }
      if (!place_whole(k, step->ms, step->bytes, step->tokens, T, fill)) return false;
    }
    return true;
  }

  double makespan_sum() const {
    std::vector<double> wave_max(waves_, 0.0);
    for (const Bin& b : bins_) wave_max[b.wave] = std::max(wave_max[b.wave], b.load);
    return std::accumulate(wave_max.begin(), wave_max.end(), 0.0);
  }

  // Moves whole sequences off each wave's most loaded rank onto its least loaded rank while
  // that strictly lowers the former below its load (bounded; never breaks memory).
  // Returns the number of moves: 0 means drafts() are unchanged.
  int improve(int max_moves) {
    open_all_free();
    std::vector<std::set<std::pair<double, int>>> by_load(waves_);
    for (int b = 0; b < static_cast<int>(bins_.size()); ++b)
      by_load[bins_[b].wave].insert({bins_[b].load, b});
    std::vector<std::vector<int>> on_bin(bins_.size());
    for (int k = 0; k < static_cast<int>(seq_bin_.size()); ++k)
      if (seq_bin_[k] >= 0) on_bin[seq_bin_[k]].push_back(k);
    int moves = 0;
    for (int w = 0; w < waves_ && moves < max_moves; ++w) {
      auto& set = by_load[w];
      while (moves < max_moves && set.size() >= 2) {
        const int crit = std::prev(set.end())->second;
        const int low = set.begin()->second;
        bool moved = false;
        // Largest piece first that still lowers the critical rank strictly.
        std::vector<int>& pieces = on_bin[crit];
        for (std::size_t p = 0; p < pieces.size() && !moved; ++p) {
          const SequenceInfo& s = t_.seqs[pieces[p]];
          const double new_low =
              bins_[low].load + s.whole_ms + (bins_[low].pieces == 0 ? t_.fixed_ms : 0.0);
          if (new_low >= bins_[crit].load * (1 - 1e-9)) continue;
          if (!fits(bins_[low], s.whole_bytes, s.whole_tokens)) continue;
          set.erase({bins_[crit].load, crit});
          set.erase({bins_[low].load, low});
          bins_[crit].load -= s.whole_ms;
          if (--bins_[crit].pieces == 0) bins_[crit].load = 0;
          ++bins_[low].pieces;
          bins_[crit].bytes -= s.whole_bytes;
          bins_[crit].tokens -= s.whole_tokens;
          bins_[low].tokens += s.whole_tokens;
          bins_[low].load = new_low;
          bins_[low].bytes += s.whole_bytes;
          set.insert({bins_[crit].load, crit});
          set.insert({bins_[low].load, low});
          seq_bin_[pieces[p]] = low;
          seq_group_[pieces[p]] = bins_[low].group;
          on_bin[low].push_back(pieces[p]);
          pieces.erase(pieces.begin() + static_cast<std::ptrdiff_t>(p));
          moved = true;
          ++moves;
        }
        if (!moved) break;
      }
    }
    return moves;
  }

  std::vector<WaveDraft> drafts() const {
    std::vector<WaveDraft> waves(waves_);
    std::vector<int> draft_index(groups_.size(), -1);
    for (int g = 0; g < static_cast<int>(groups_.size()); ++g) {
      const Group& gr = groups_[g];
      GroupDraft d;
      d.degree = gr.degree;
      d.whole.resize(gr.degree);
      draft_index[g] = static_cast<int>(waves[gr.wave].groups.size());
      waves[gr.wave].groups.push_back(std::move(d));
    }
    for (int k = 0; k < static_cast<int>(t_.seqs.size()); ++k) {
      DHP_CHECK(seq_group_[k] >= 0 && seq_group_[k] < static_cast<int>(groups_.size()), Internal,
                "dhp: sequence {} unplaced (group {}) in a finished packing", k, seq_group_[k]);
      const Group& gr = groups_[seq_group_[k]];
      DHP_CHECK(seq_bin_[k] < 0 || bins_[seq_bin_[k]].member < gr.degree, Internal,
                "dhp: bin/member mismatch for sequence {}", k);
      GroupDraft& d = waves[gr.wave].groups[draft_index[seq_group_[k]]];
      if (seq_bin_[k] < 0)
        d.split.push_back(t_.seqs[k].sample);
      else
        d.whole[bins_[seq_bin_[k]].member].push_back(t_.seqs[k].sample);
    }
    // Ranks that received nothing stay unused; waves that received nothing disappear.
    std::vector<WaveDraft> out;
    for (WaveDraft& w : waves) {
      WaveDraft kept;
      for (GroupDraft& g : w.groups)
        if (!holds_no_sample(g)) kept.groups.push_back(std::move(g));
      if (!kept.groups.empty()) out.push_back(std::move(kept));
    }
    return out;
  }

 private:
  void reset(double T, int W, Fill fill) {
    // Loads stay within T under best fit; LPT (T only picks the degrees) spreads the work
    // about evenly, past T where T is short.
    target_ = fill == Fill::BestFit ? T : kInf;
    waves_ = W;
    bins_.clear();
    groups_.clear();
    const double span =
        std::isfinite(target_) ? target_ : 2 * (t_.total_whole_ms / (t_.ranks * W) + t_.fixed_ms);
    by_load_.reset(t_.ranks * W, span);
    split_groups_.clear();
    free_.assign(W, t_.ranks);
    most_free_.clear();
    for (int w = 0; w < W; ++w) most_free_.insert({-t_.ranks, w});
    seq_group_.assign(t_.seqs.size(), -1);
    seq_bin_.assign(t_.seqs.size(), -1);
  }

  // The smallest degree (from the memory minimum) whose per-rank time is within T.
  const DegreeStep* choose_step(const SequenceInfo& s, double T) const {
    const DegreeStep* first = &t_.steps[s.first_step];
    const DegreeStep* last = first + s.num_steps;
    const DegreeStep* it = std::partition_point(
        first, last, [&](const DegreeStep& d) { return d.ms + t_.fixed_ms > T; });
    return it == last ? nullptr : it;
  }

  int take_wave(int degree) {
    if (most_free_.empty()) return -1;
    const auto top = *most_free_.begin();  // key (-free, wave): most free, lowest wave
    if (-top.first < degree) return -1;
    const int w = top.second;
    most_free_.erase(most_free_.begin());
    free_[w] -= degree;
    if (free_[w] > 0) most_free_.insert({-free_[w], w});
    return w;
  }

  int open_group(int wave, int degree, double load, double bytes, std::int64_t tokens) {
    const int g = static_cast<int>(groups_.size());
    groups_.push_back(Group{wave, degree, static_cast<int>(bins_.size()), load, bytes});
    const bool holds = load > 0;
    for (int m = 0; m < degree; ++m)
      bins_.push_back(
          Bin{wave, g, m, holds ? load + t_.fixed_ms : 0.0, bytes, tokens, holds ? 1 : 0});
    return g;
  }

  void open_all_free() {
    for (int w = 0; w < waves_; ++w) {
      while (free_[w] > 0) {
        const int g = open_group(w, 1, 0.0, 0.0, 0);
        by_load_.insert(LoadEntry{0.0, groups_[g].first_bin, 0.0, 0});
        --free_[w];
      }
    }
    most_free_.clear();
  }

  bool place_split(int k, const DegreeStep& step, double T, Fill fill) {
    auto& candidates = split_groups_[step.degree];
    auto join = [&](int g) {
      Group& gr = groups_[g];
      candidates.erase({gr.split_load, g});
      gr.split_load += step.ms;
      gr.split_bytes += step.bytes;
      for (int m = 0; m < gr.degree; ++m) {
        Bin& b = bins_[gr.first_bin + m];
        const bool indexed = by_load_.erase(gr.first_bin + m);
        b.load += step.ms;
        b.bytes += step.bytes;
        b.tokens += step.tokens;
        ++b.pieces;
        if (indexed) reindex(gr.first_bin + m, k);
      }
      candidates.insert({gr.split_load, g});
      seq_group_[k] = g;
    };
    if (fill == Fill::BestFit) {
      // Join the fullest group of this degree whose members still finish within T.
      auto it =
          candidates.upper_bound({T - t_.fixed_ms - step.ms, std::numeric_limits<int>::max()});
      for (int scanned = 0; it != candidates.begin() && scanned < kMemoryScan; ++scanned) {
        --it;
        if (group_fits(it->second, step)) {
          join(it->second);
          return true;
        }
      }
    }
    const int w = take_wave(step.degree);
    if (w < 0) {
      if (fill == Fill::BestFit) return false;
      // Lpt: no free ranks left, share the least-loaded group of this degree.
      for (const auto& [load, g] : candidates) {
        if (group_fits(g, step)) {
          join(g);
          return true;
        }
      }
      return false;
    }
    const int g = open_group(w, step.degree, step.ms, step.bytes, step.tokens);
    candidates.insert({step.ms, g});
    for (int m = 0; m < step.degree; ++m) {
      const int bin = groups_[g].first_bin + m;
      by_load_.insert(LoadEntry{bins_[bin].load, bin, bins_[bin].bytes, bins_[bin].tokens});
    }
    seq_group_[k] = g;
    return true;
  }

  // Back into the load index unless no later whole piece can fit on it any more: not in
  // memory or under the token limit (keeps the memory scans short when they bind), nor
  // before T (best fit fills most ranks to within the shortest piece of T; they would
  // crowd the index's top bucket). Later pieces are no shorter than the last sequence's.
  void reindex(int bin, int k) {
    const Bin& b = bins_[bin];
    const bool last = k + 1 >= static_cast<int>(t_.seqs.size());
    if (last || (fits(b, t_.min_bytes_after[k],
                      t_.min_tokens_after[k] == std::numeric_limits<std::int64_t>::max()
                          ? 0
                          : t_.min_tokens_after[k]) &&
                 !(b.load > target_ - t_.seqs.back().whole_ms)))
      by_load_.insert(LoadEntry{b.load, bin, b.bytes, b.tokens});
  }

  bool fits(const Bin& b, double bytes, std::int64_t tokens) const {
    return b.bytes + bytes <= t_.budget && b.tokens + tokens <= t_.token_limit;
  }
  // Every member still holds one more split piece (members may hold whole pieces too).
  bool group_fits(int g, const DegreeStep& step) const {
    const Group& gr = groups_[g];
    for (int m = 0; m < gr.degree; ++m)
      if (!fits(bins_[gr.first_bin + m], step.bytes, step.tokens)) return false;
    return true;
  }

  bool place_whole(int k, double ms, double bytes, std::int64_t tokens, double T, Fill fill) {
    int chosen = -1;
    bool indexed = true;  // a newly opened rank enters the index only with its first piece
    if (fill == Fill::BestFit) {
      // Fullest rank that still finishes within T and has the memory.
      chosen = by_load_.scan_down(T - ms, kMemoryScan,
                                  [&](int bin) { return fits(bins_[bin], bytes, tokens); });
      if (chosen < 0) {
        const int w = take_wave(1);
        if (w >= 0) {
          chosen = groups_[open_group(w, 1, 0.0, 0.0, 0)].first_bin;
          indexed = false;
        } else {
          // No free rank: under a tight memory or token limit the fullest ranks are often
          // exhausted, so look further down before giving up on T: the fullest bin below
          // that has the room, found through the index (what a scan down would find).
          chosen = by_load_.fullest_fit(T - ms, bytes, tokens, t_.budget, t_.token_limit);
          if (chosen < 0) return false;
        }
      }
    } else {
      // Least-loaded rank with the memory; the scan is bounded, then any rank that fits.
      chosen = by_load_.scan_up(kLptMemoryScan,
                                [&](int bin) { return fits(bins_[bin], bytes, tokens); });
      if (chosen < 0) return false;
    }
    Bin& b = bins_[chosen];
    if (indexed) by_load_.erase(chosen);
    b.load += ms + (b.pieces == 0 ? t_.fixed_ms : 0.0);
    b.bytes += bytes;
    b.tokens += tokens;
    ++b.pieces;
    reindex(chosen, k);
    seq_group_[k] = b.group;
    seq_bin_[k] = chosen;
    return true;
  }

  const Tables& t_;
  int packs_ = 0;  // pack() calls, for the debug summary
  int waves_ = 0;
  double target_ = kInf;  // this attempt's T under best fit; infinite for LPT
  std::vector<Bin> bins_;
  std::vector<Group> groups_;
  LoadIndex by_load_;                                             // open bins by load
  std::map<int, std::set<std::pair<double, int>>> split_groups_;  // degree -> (split load, group)
  std::vector<int> free_;
  std::set<std::pair<int, int>> most_free_;  // (-free ranks, wave)
  std::vector<int> seq_group_;
  std::vector<int> seq_bin_;  // -1: split over the group
};

// The cheap constructions of the baselines as further candidates (docs/algorithm.md,
// "Portfolio"): static_balanced's LPT at a few CP degrees, static_best's packing at the
// smallest CP that holds the longest sequence, megatron_dcp's and paper_bfd_dp's drafts. All
// are kept or dropped by the same estimate; a construction that cannot hold the batch is
// simply not a candidate.
template <typename Consider>
void add_portfolio(const Batch& batch, const CostModel& cost, const Layout& layout,
                   const PlannerOptions& options, const Tables& tables, Consider&& consider) {
  const int R = tables.ranks;
  const double budget = tables.budget;
  const std::int64_t max_tokens = options.max_tokens_per_rank;
  std::int64_t longest = 0;
  for (const Sample& s : batch.samples) longest = std::max(longest, s.llm_tokens());
  const int cp_min = smallest_cp_holding(cost, longest, R, budget, max_tokens);
  auto attempt = [&](auto&& make) {
    try {
      consider(make());
    } catch (const Error& e) {
      if (e.kind() != ErrorKind::DoesNotFit) throw;  // only "cannot hold this batch" is expected
    }
  };
  if (cp_min > 0) {
    int tried = 0;
    for (int c = cp_min; c <= R && tried < 3; c *= 2) {
      if (R % c != 0) continue;
      ++tried;
      attempt([&] { return static_balanced_waves(batch, cost, layout, c, budget, max_tokens); });
    }
    const auto packs = static_pack_candidates(cost, cp_min, budget, longest, max_tokens);
    for (std::size_t i = 0; i < packs.size() && i < 3; ++i)
      attempt([&] { return static_best_waves(batch, cost, layout, cp_min, packs[i], budget); });
  }
  attempt([&] { return megatron_dcp_waves(batch, cost, layout, options); });
  attempt([&] { return paper_bfd_dp_waves(batch, cost, layout, options); });
}

struct Candidate {
  Plan plan;  // assembled by the estimate: the winner is not assembled again
  double step_ms = kInf;
  std::vector<WaveDraft> waves;  // what it was assembled from
};

// Every member's local tokens (its share of the split sequences plus its whole ones) within
// the limit.
bool within_token_limit(const GroupDraft& g, const SampleCosts& sc, std::int64_t limit) {
  std::int64_t split = 0;
  for (int s : g.split) split += local_share(sc.tokens[s], g.degree);
  for (int m = 0; m < g.degree; ++m) {
    std::int64_t local = split;
    if (m < static_cast<int>(g.whole.size()))
      for (int s : g.whole[m]) local += sc.tokens[s];
    if (local > limit) return false;
  }
  return true;
}

// Sample `sample` moved from group a of wave w to group b: split over b (member < 0) or
// whole on b's `member`; b == the wave's group count opens a one-rank group for it. A group
// left empty goes. Empty when the token limit breaks.
std::vector<WaveDraft> move_sample(const std::vector<WaveDraft>& waves, std::size_t w,
                                   std::size_t a, int sample, std::size_t b, int member,
                                   const SampleCosts& sc, std::int64_t token_limit) {
  std::vector<WaveDraft> out = waves;
  std::vector<GroupDraft>& groups = out[w].groups;
  std::erase(groups[a].split, sample);
  for (std::vector<int>& m : groups[a].whole) std::erase(m, sample);
  if (b == groups.size()) groups.push_back(GroupDraft{1, {}, {}});
  GroupDraft& to = groups[b];
  if (member < 0) {
    to.split.push_back(sample);
  } else {
    if (static_cast<int>(to.whole.size()) <= member) to.whole.resize(member + 1);
    to.whole[member].push_back(sample);
  }
  if (!within_token_limit(to, sc, token_limit)) return {};
  if (holds_no_sample(groups[a])) groups.erase(groups.begin() + static_cast<std::ptrdiff_t>(a));
  return out;
}

// Ring a of wave w (degree d >= 2) cut into rings of degrees k and d - k, its sequences
// dealt longest first to the one with less work per rank (split over it; whole on a
// one-rank group). Empty when the token limit breaks.
std::vector<WaveDraft> split_ring(const std::vector<WaveDraft>& waves, std::size_t w, std::size_t a,
                                  int k, const std::vector<double>& sample_ms,
                                  const SampleCosts& sc, std::int64_t token_limit) {
  const GroupDraft& ring = waves[w].groups[a];
  std::vector<int> samples = samples_of(ring);
  std::stable_sort(samples.begin(), samples.end(),
                   [&](int x, int y) { return sample_ms[x] > sample_ms[y]; });
  const int degree[2] = {k, ring.degree - k};
  std::vector<int> dealt[2];
  double load[2] = {0, 0};
  for (int s : samples) {
    const int to =
        (load[0] + sample_ms[s]) / degree[0] <= (load[1] + sample_ms[s]) / degree[1] ? 0 : 1;
    load[to] += sample_ms[s];
    dealt[to].push_back(s);
  }
  std::vector<WaveDraft> out = waves;
  std::vector<GroupDraft>& groups = out[w].groups;
  groups.erase(groups.begin() + static_cast<std::ptrdiff_t>(a));
  for (int i = 0; i < 2; ++i) {
    if (dealt[i].empty()) continue;
    GroupDraft part = split_group(degree[i], std::move(dealt[i]));
    if (!within_token_limit(part, sc, token_limit)) return {};
    groups.push_back(std::move(part));
  }
  return out;
}

// Wave `w` of `waves` with groups a < b made one ring over both groups' ranks, every
// sequence of both split over it: the optimum of small instances often shares a medium
// ring between two long sequences where the packing gives each its own smallest degree
// (docs/algorithm.md, "Status"). Empty when a member's share would break the token limit.
std::vector<WaveDraft> merge_groups(const std::vector<WaveDraft>& waves, std::size_t w,
                                    std::size_t a, std::size_t b, const SampleCosts& sc,
                                    std::int64_t token_limit) {
  const GroupDraft& ga = waves[w].groups[a];
  const GroupDraft& gb = waves[w].groups[b];
  std::vector<int> samples = samples_of(ga);
  for (int s : samples_of(gb)) samples.push_back(s);
  GroupDraft merged = split_group(ga.degree + gb.degree, std::move(samples));  // degree >= 2
  if (!within_token_limit(merged, sc, token_limit)) return {};
  std::vector<WaveDraft> out = waves;
  out[w].groups[a] = std::move(merged);
  out[w].groups.erase(out[w].groups.begin() + static_cast<std::ptrdiff_t>(b));
  return out;
}

// A lower bound on estimate_step_ms of `waves`, at a fraction of its cost, that assumes
// little about how the estimate combines its parts: every rank runs its pieces one after
// the other (so the step is at least the busiest rank's LLM time plus a wave overhead per
// wave it works in); a disjoint encoder's waves take at least max(longest item, items spread
// evenly over its ranks) each; a colocated device runs its LLM and encoder work in turn (so
// the step is at least the devices' mean of both); boundary transfers cost >= 0, and
// gradient sync hides at most its overlap fraction. A candidate
// whose bound is not below the best estimate so far cannot win, so its full estimate is
// skipped. plan_dhp checks the bound against every estimate it does compute.
double step_lower_bound_ms(const Batch& batch, const CostModel& cost, const Layout& layout,
                           const std::vector<WaveDraft>& waves, const SampleCosts& sample_costs) {
  const int R = layout.llm.ranks;
  const int rpn = std::max(1, layout.llm_ranks_per_node);
  const int E = layout.encoder.ranks;
  std::vector<int> degrees;
  std::vector<std::int64_t> split_tokens;
  std::vector<std::int64_t> whole_tokens;
  std::vector<double> rank_busy_ms(R, 0.0);
  double encoder_ms = 0;       // per wave: its longest item or its items spread evenly
  double encoder_work_ms = 0;  // every item's encoder time
  for (const WaveDraft& wave : waves) {
    degrees.clear();
    for (const GroupDraft& g : wave.groups) degrees.push_back(g.degree);
    const std::vector<std::vector<int>> placed = place_groups(degrees, R, rpn);
    double encoder_total = 0;
    double encoder_longest = 0;
    auto add_encoder = [&](int sample) {
      for (int v = sample_costs.visual_offset[sample]; v < sample_costs.visual_offset[sample + 1];
           ++v) {
        encoder_total += sample_costs.encoder_ms[v];
        // A cut item's longest part is at least its even share over its parts: at most one
        // per span (a video), or one per encoder rank (ring shards of a single-span image).
        const int spans = sample_costs.encoder_spans[v];
        const int parts = !layout.split_visual_items ? 1 : spans == 1 ? E : std::min(spans, E);
        encoder_longest = std::max(encoder_longest, sample_costs.encoder_ms[v] / parts);
      }
    };
    for (std::size_t g = 0; g < wave.groups.size(); ++g) {
      const GroupDraft& group = wave.groups[g];
      const RingSpan ring{group.degree, crosses_nodes(placed[g], rpn)};
      split_tokens.clear();
      for (int s : group.split) {
        split_tokens.push_back(sample_costs.tokens[s]);
        add_encoder(s);
      }
      GroupMemberMs member_ms(cost, split_tokens, ring);
      for (int m = 0; m < group.degree; ++m) {
        whole_tokens.clear();
        if (m < static_cast<int>(group.whole.size())) {
          for (int s : group.whole[m]) {
            whole_tokens.push_back(sample_costs.tokens[s]);
            add_encoder(s);
          }
        }
        const double ms = member_ms(whole_tokens);
        if (ms > 0) rank_busy_ms[placed[g][m]] += ms + cost.wave_overhead_ms();
      }
    }
    if (E > 0) encoder_ms += std::max(encoder_longest, encoder_total / E);
    encoder_work_ms += encoder_total;
  }
  // At most the overlap fraction of each module's gradient sync hides under its backward
  // (encoder_sync_span): the LLM's ends after its slowest rank, the encoder's after both.
  const double hidden = cost.coefficients().grad_sync_overlap;  // in [0, 1] (CostModel)
  const double llm_sync_ms = (1 - hidden) * cost.llm_grad_sync_full_ms(R);
  const double encoder_sync_ms = E > 0 ? (1 - hidden) * cost.encoder_grad_sync_full_ms(E) : 0.0;
  const double llm_ms = *std::max_element(rank_busy_ms.begin(), rank_busy_ms.end());
  if (encoder_work_ms <= 0)  // no encoder work: the two syncs need not follow each other
    return std::max(llm_ms + llm_sync_ms, encoder_sync_ms);
  if (layout.placement != EncoderPlacement::Colocated)
    return std::max(llm_ms, encoder_ms) + llm_sync_ms + encoder_sync_ms;
  // Colocated: a device runs its rank's LLM work and its encoder rank's items one after the
  // other, so the step is at least the devices' average of both.
  const double busy_sum = std::accumulate(rank_busy_ms.begin(), rank_busy_ms.end(), 0.0);
  const double device_mean = (busy_sum * layout.llm.tp + encoder_work_ms * layout.encoder.tp) /
                             cost.cluster().world_size();
  return std::max(llm_ms + llm_sync_ms, device_mean) + encoder_sync_ms;
}

}  // namespace

Plan plan_dhp(const Batch& batch, const CostModel& cost, const Layout& layout,
              const PlannerOptions& options) {
  const Tables tables = make_tables(batch, cost, layout, options);
  const int R = tables.ranks;
  // Two packers: the bisection packs into `packer` and swaps it with `kept` on success, so
  // the packing at the final T is kept instead of being packed again.
  Packer packer_a(tables);
  Packer packer_b(tables);
  Packer* packer = &packer_a;
  Packer* kept = &packer_b;

  // Lower bounds on the per-wave makespan: the longest sequence at its fastest degree, and
  // the least rank-time each sequence can consume, spread over every rank of every wave.
  double longest = 0;
  double rank_time = 0;
  double memory_ranks = 0;            // rank-waves the activations need at least
  double all_work = tables.fixed_ms;  // every sequence on one rank at its first degree
  for (const SequenceInfo& s : tables.seqs) {
    double least = kInf;
    for (int i = 0; i < s.num_steps; ++i) {
      const DegreeStep& st = tables.steps[s.first_step + i];
      least = std::min(least, st.degree * st.ms);
    }
    longest = std::max(longest, tables.steps[s.first_step + s.num_steps - 1].ms);
    rank_time += least;
    const DegreeStep& first = tables.steps[s.first_step];
    all_work += first.ms;
    memory_ranks += first.degree * std::max(first.bytes / tables.budget,
                                            static_cast<double>(first.tokens) / tables.token_limit);
  }

  // The fewest waves for which the memory permits a packing at all.
  // The memory-only LPT packing at w_min is also that wave count's first candidate: keep it.
  int w_min = std::max(1, static_cast<int>(std::ceil(memory_ranks / R - 1e-9)));
  std::vector<WaveDraft> w_min_lpt;
  while (w_min <= options.max_waves) {
    if (packer->pack(kInf, w_min, Fill::Lpt)) {
      w_min_lpt = packer->drafts();
      break;
    }
    if (packer->pack(kInf, w_min, Fill::BestFit)) break;
    ++w_min;
  }
  DHP_CHECK(w_min <= options.max_waves, DoesNotFit,
            "dhp: the batch of {} samples needs more than max_waves={} waves to fit in memory",
            batch.samples.size(), options.max_waves);

  Candidate best;
  const SampleCosts sample_costs = make_sample_costs(batch, cost, layout);
  const bool has_encoder = layout.encoder.ranks > 0;
  int estimates = 0, pruned = 0;  // for the debug summary
  // Prices a candidate with the full estimate; the best so far takes its waves (a finite
  // estimate: nothing more to do with them).
  auto price = [&](std::vector<WaveDraft>& waves) {
    ++estimates;
    Plan plan = estimate_plan("dhp", batch, cost, layout, waves, sample_costs);
    const double ms = plan.estimate.step_ms;
    if (ms < best.step_ms) best = Candidate{std::move(plan), ms, std::move(waves)};
    return ms;
  };
  // A new packing: skipped when its lower bound cannot beat the best; one over memory through
  // the colocated encoder is priced again with visual items deferred to later waves, as the
  // baselines do.
  auto consider = [&](std::vector<WaveDraft> waves) {
    if (waves.empty()) return;
    // Rounding slack: the bound sums in another order than the estimate.
    const double bound = step_lower_bound_ms(batch, cost, layout, waves, sample_costs);
    if (bound > best.step_ms * (1 + 1e-9)) {
      ++pruned;
      return;
    }
    const std::size_t count = waves.size();
    const double ms = price(waves);
    // A bound above an estimate would have pruned candidates that win: the estimate changed
    // in a way step_lower_bound_ms does not know about.
    DHP_CHECK(!(bound > ms * (1 + 1e-9)), Internal,
              "dhp: step lower bound {:.6f} ms above the estimate {:.6f} ms of {} waves", bound, ms,
              count);
    if (!std::isfinite(ms) && has_encoder) {
      std::vector<WaveDraft> deferred =
          limit_encoder_per_wave(batch, cost, layout, std::move(waves));
      price(deferred);
    }
  };

  const int w_max = std::min(options.max_waves, w_min + kExtraWaves);
  const bool at_scale =
      static_cast<long long>(R) * static_cast<long long>(tables.seqs.size()) > kPortfolioMaxWork;
  double last_growth = kFirstGrowth;  // how far above its lower bound the previous W's T was
  for (int W = w_min; W <= w_max; ++W) {
    const double best_before = best.step_ms;
    const double lower = std::max({longest, rank_time / (static_cast<double>(W) * R), 1e-9});
    // Static-balanced-like: every sequence at its memory-minimal degree, LPT. Past w_min it
    // is priced after the screen below, which usually makes it unnecessary.
    auto consider_lpt = [&] {
      if (W == w_min)
        consider(std::move(w_min_lpt));
      else if (packer->pack(kInf, W, Fill::Lpt))
        consider(packer->drafts());
    };
    auto pack_best_fit = [&](double T) {
      if (!packer->pack(T, W, Fill::BestFit)) return false;
      std::swap(packer, kept);
      return true;
    };
    // Grow T from the lower bound in steps that double (the feasible T is usually a few %
    // above it; past w_min the first step is where the previous W ended), then bisect.
    // Past all work on one rank, a larger T changes nothing: BestFit cannot pack this W.
    double lo = lower * (1 - 1e-9);
    double hi = lower;
    double growth = kFirstGrowth;
    if (W > w_min) {
      growth = std::max(kFirstGrowth, last_growth);
      hi = lower * (1 + growth);
      growth *= 2;
    }
    bool feasible = true;
    while (!pack_best_fit(hi)) {
      lo = hi;
      hi = lower * (1 + growth);
      growth *= 2;
      if (hi > 2 * all_work) {
        feasible = false;
        break;
      }
    }
    if (!feasible) {
      consider_lpt();
      continue;
    }
    if (W > w_min && std::isfinite(best.step_ms)) {
      // More waves rarely pay once they cost more than the best so far: price this first
      // feasible packing, optimistically as if every wave's slowest rank came down to the
      // middle of the bisection's bracket [lo, hi] (lo: a T that failed to pack, or the
      // lower bound; the bisection ends mid-bracket on average), and stop when even that is
      // above the best. Not a proof, a screen that saves the bisection of a wave count that
      // cannot win (docs/algorithm.md, step 3). It needs the full estimate: colocated waves
      // overlap across devices, so no cheap bound is tight enough.
      ++estimates;
      const double first = estimate_step_ms(batch, cost, layout, kept->drafts(), sample_costs);
      const double optimistic = first - W * (hi - lo) / 2;
      DHP_LOG_DEBUG(
          "dhp: W={} screened at T={:.3f} ms (floor {:.3f}): {:.3f} ms, optimistic {:.3f}, best "
          "{:.3f}",
          W, hi, lo, first, optimistic, best.step_ms);
      if (optimistic > best.step_ms) break;
    }
    while (hi - lo > kRelTolerance * hi) {
      const double mid = 0.5 * (lo + hi);
      if (pack_best_fit(mid))
        hi = mid;
      else
        lo = mid;
    }
    last_growth = hi / lower - 1;
    // `kept` holds the packing at hi: only a successful pack moves hi.
    kept->improve(4 * static_cast<int>(tables.seqs.size()));
    consider(kept->drafts());
    // After: the bound may prune it against the best-fit packing. At scale only while no
    // candidate so far fits: there it never won (scale-4096) and costs a full estimate
    // whenever the bound cannot prune it.
    if (!at_scale || !std::isfinite(best.step_ms)) consider_lpt();
    // The same ring groups with short sequences spread least-loaded first (not at scale,
    // where it is one more pack of every sequence and, like the portfolio, did not win).
    if (!at_scale && packer->pack(hi, W, Fill::Lpt)) {
      consider(packer->drafts());
      // No move: the same drafts, already priced.
      if (packer->improve(4 * static_cast<int>(tables.seqs.size())) > 0) consider(packer->drafts());
    }
    DHP_LOG_DEBUG("dhp: W={} T={:.3f} ms (lower bound {:.3f}) best step {:.3f} ms", W, hi, lower,
                  best.step_ms);
    if (W > w_min && !(best.step_ms < best_before)) break;  // more waves stopped paying
  }
  if (!at_scale) add_portfolio(batch, cost, layout, options, tables, consider);
  const long long local_search_work =
      (R + static_cast<long long>(sample_costs.visuals_longest_first.size())) *
      static_cast<long long>(tables.seqs.size());
  if (local_search_work <= kLocalSearchMaxWork) {
    // Hill climbing on the best plan: merge a ring with another group of its wave while
    // that lowers the estimate (each round tries every pair and keeps the best).
    for (int round = 0; round < kMergeRounds && std::isfinite(best.step_ms); ++round) {
      const double before = best.step_ms;
      const std::vector<WaveDraft> from = best.waves;
      for (std::size_t w = 0; w < from.size(); ++w)
        for (std::size_t a = 0; a < from[w].groups.size(); ++a)
          for (std::size_t b = a + 1; b < from[w].groups.size(); ++b) {
            if (from[w].groups[a].split.empty() && from[w].groups[b].split.empty()) continue;
            std::vector<WaveDraft> merged =
                merge_groups(from, w, a, b, sample_costs, tables.token_limit);
            if (!merged.empty()) consider(std::move(merged));
          }
      if (!(best.step_ms < before)) break;
    }
  }
  if (static_cast<int>(tables.seqs.size()) <= kMoveMaxSequences &&
      local_search_work <= kLocalSearchMaxWork) {
    // Then single moves: a sequence to another group (split, or whole on any member, or onto
    // a free rank of its wave as a group of its own), or a ring cut in two.
    std::vector<double> sample_ms(batch.samples.size(), 0.0);
    for (const SequenceInfo& q : tables.seqs) sample_ms[q.sample] = q.whole_ms;
    for (int round = 0; round < kMoveRounds && std::isfinite(best.step_ms); ++round) {
      const double before = best.step_ms;
      const std::vector<WaveDraft> from = best.waves;
      auto consider_if = [&](std::vector<WaveDraft> waves) {
        if (!waves.empty()) consider(std::move(waves));
      };
      for (std::size_t w = 0; w < from.size(); ++w) {
        const std::vector<GroupDraft>& groups = from[w].groups;
        int used = 0;
        for (const GroupDraft& g : groups) used += g.degree;
        for (std::size_t a = 0; a < groups.size(); ++a) {
          for (int sample : samples_of(groups[a])) {
            for (std::size_t b = 0; b <= groups.size(); ++b) {
              if (b == groups.size() && used >= R) break;
              const int degree = b == groups.size() ? 1 : groups[b].degree;
              if (b != a && degree > 1)
                consider_if(
                    move_sample(from, w, a, sample, b, -1, sample_costs, tables.token_limit));
              for (int m = 0; m < degree; ++m) {
                // Back onto the member it holds alone: the same draft, already the best.
                if (b == a && m < static_cast<int>(groups[a].whole.size()) &&
                    groups[a].whole[m].size() == 1 && groups[a].whole[m][0] == sample)
                  continue;
                consider_if(
                    move_sample(from, w, a, sample, b, m, sample_costs, tables.token_limit));
              }
            }
          }
          for (int k = 1; k < groups[a].degree; ++k)
            consider_if(split_ring(from, w, a, k, sample_ms, sample_costs, tables.token_limit));
        }
      }
      if (!(best.step_ms < before)) break;
    }
  }
  if (!at_scale) {
    // Last, the waves' order: the packing fills waves in no particular order, but the LLM's
    // gradient sync hides under the last wave's backward, and a colocated encoder's first
    // forward and last backward run beside no LLM work. Move one wave first or last while
    // that lowers the estimate (2 (W - 1) candidates a round, W - 1 with two waves; at
    // scale, W full estimates more than the planner time allows). Priced without the lower
    // bound (it does not depend on the order, so it cannot prune them); an order that breaks
    // memory (the items held between two waves) is dropped, not re-packed.
    for (std::size_t round = 0; std::isfinite(best.step_ms) && round < best.waves.size(); ++round) {
      const double before = best.step_ms;
      const std::vector<WaveDraft> from = best.waves;
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
      if (!(best.step_ms < before)) break;
    }
  }
  if (!std::isfinite(best.step_ms)) {
    // Every candidate broke memory in the full estimate (encoder reserve, fragmentation):
    // memory-only packings over more waves, each priced (consider() also defers encoder
    // items), until one fits; only then does build_plan see it.
    for (int W = w_max + 1; W <= options.max_waves && !std::isfinite(best.step_ms); ++W) {
      if (packer->pack(kInf, W, Fill::Lpt)) consider(packer->drafts());
      if (!std::isfinite(best.step_ms) && packer->pack(kInf, W, Fill::BestFit))
        consider(packer->drafts());
    }
    DHP_CHECK(std::isfinite(best.step_ms), DoesNotFit,
              "dhp: no packing of the {} samples into at most max_waves={} waves fits device "
              "memory (LLM activation budget {:.3f} GiB per rank)",
              batch.samples.size(), options.max_waves, tables.budget / (1024.0 * 1024 * 1024));
  }
  // A finite estimate means every rank fits (the estimate is infinite over capacity), so
  // this is build_plan's plan for the winning drafts.
  DHP_LOG_DEBUG(
      "dhp: {} samples on {} ranks: {} packs, {} full estimates ({} pruned by the "
      "bound), step {:.3f} ms in {} waves",
      batch.samples.size(), R, packer_a.packs() + packer_b.packs(), estimates, pruned, best.step_ms,
      best.plan.waves.size());
  validate(best.plan, batch);
  return std::move(best.plan);
}

}  // namespace dhp::detail
