// dhp's packing: per batch, each sequence's useful ring degrees with their per-rank time and
// bytes (make_tables); per (T, W) attempt, every sequence placed with a per-wave makespan
// target T over W waves (Packer). plan_dhp (dhp_planner.cpp) searches T and W with it.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <map>
#include <numeric>
#include <set>
#include <utility>
#include <vector>

#include "dhp/error.hpp"
#include "internal.hpp"
#include "load_index.hpp"

namespace dhp::detail {

inline constexpr double kInf = std::numeric_limits<double>::infinity();
inline constexpr int kMemoryScan = 16;  // bins inspected for memory before opening a new one
// The LPT fill's least-loaded ranks inspected for memory before it takes any rank that fits:
// the count the ordered-set scan it replaced inspected (kMemoryScan words of 64, plus 2).
inline constexpr int kLptMemoryScan = kMemoryScan * 64 + 2;

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
                   const PlannerOptions& options, const SampleCosts& sample_costs);

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

}  // namespace dhp::detail
