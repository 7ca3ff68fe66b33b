// An Entrain-like static baseline (Jang and Chowdhury, "Addressing Variable Heterogeneity in
// Distributed Multimodal Training with Entrain", arXiv 2605.27918): one model-parallel layout
// for the whole run, chosen by profiling whole batches (best_static_layout over this
// strategy's own plans), and per batch a hierarchical micro-batch assignment: the samples'
// encoder work is balanced over the micro-batches first, then each micro-batch's samples are
// spread over the DP replicas by LLM work, and a replica above the run's target defers its
// excess to the next micro-batch. Built from the paper's abstract: the natural critique of
// per-batch re-planning (a static layout with good scheduling). See docs/baselines.md.
#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>

#include "baselines.hpp"
#include "dhp/error.hpp"
#include "dhp/log.hpp"

namespace dhp::detail {
namespace {

constexpr double kDeferSlack = 0.02;  // a replica defers what lies above 1.02 x the target

// One micro-batch's replicas while samples are assigned.
struct Replica {
  std::vector<int> samples;
  double load_ms = 0;
  double bytes = 0;
  std::int64_t tokens_per_rank = 0;
};

class EntrainAssignment {
 public:
  EntrainAssignment(const Batch& batch, const CostModel& cost, const Layout& layout, int cp,
                    double budget, std::int64_t max_tokens_per_rank)
      : batch_(batch),
        cp_(cp),
        dp_(layout.llm.ranks / cp),
        budget_(budget),
        token_limit_(max_tokens_per_rank > 0 ? max_tokens_per_rank
                                             : std::numeric_limits<std::int64_t>::max()),
        room_(batch, cost, layout),
        llm_ms_(batch.samples.size()),
        encoder_ms_(batch.samples.size(), 0.0),
        bytes_(batch.samples.size()) {
    const RingSpan ring = expected_ring(cp, layout);
    for (std::size_t s = 0; s < batch.samples.size(); ++s) {
      llm_ms_[s] = cost.llm_sequence_ms(batch.samples[s].llm_tokens(), ring);
      for (const VisualItem& v : batch.samples[s].visuals)
        encoder_ms_[s] += cost.encoder_item_ms(v);
      bytes_[s] = group_activation_bytes(cost, batch, {static_cast<int>(s)}, cp);
      if (bytes_[s] > budget || local_share(batch.samples[s].llm_tokens(), cp) > token_limit_) {
        const Sample& sample = batch.samples[s];
        DHP_THROW(DoesNotFit,
                  "entrain with cp={}: sample {} (id {}) of {} tokens needs {:.3g} GiB of "
                  "activations and {} tokens per device; {:.3g} GiB and {} tokens available",
                  cp, s, sample.id, sample.llm_tokens(), bytes_[s] / (1 << 30),
                  local_share(sample.llm_tokens(), cp), budget / (1 << 30), max_tokens_per_rank);
      }
    }
  }

  // The fewest micro-batches memory allows, then more until the assignment holds.
  std::vector<WaveDraft> assign() {
    const double total_bytes = std::accumulate(bytes_.begin(), bytes_.end(), 0.0);
    int m = std::max(1, static_cast<int>(std::ceil(total_bytes / (dp_ * budget_) - 1e-9)));
    const int most = static_cast<int>(batch_.samples.size());
    for (; m <= most; ++m) {
      std::vector<std::vector<Replica>> micro_batches;
      if (try_assign(m, micro_batches)) return drafts(micro_batches);
    }
    DHP_THROW(Internal, "entrain: {} samples fit no assignment of up to {} micro-batches", most,
              most);
  }

 private:
  bool fits(const Replica& r, int s) const {
    return r.bytes + bytes_[s] <= budget_ &&
           r.tokens_per_rank + local_share(batch_.samples[s].llm_tokens(), cp_) <= token_limit_;
  }
  void put(Replica& r, int s) const {
    r.samples.push_back(s);
    r.load_ms += llm_ms_[s];
    r.bytes += bytes_[s];
    r.tokens_per_rank += local_share(batch_.samples[s].llm_tokens(), cp_);
  }
  // Whether the micro-batch of `replicas`, whose items total `encoder` bytes, still fits its
  // encoder's room with `s` on replica `r` (a micro-batch's first sample always does).
  bool room_fits(const std::vector<Replica>& replicas, double encoder, int r, int s) const {
    double fullest = replicas[r].bytes + bytes_[s];
    bool empty = true;
    for (const Replica& other : replicas) {
      fullest = std::max(fullest, other.bytes);
      empty = empty && other.samples.empty();
    }
    return empty || room_.fits(encoder + room_.sample_bytes(s), fullest);
  }
  // The least-loaded replica of a micro-batch that takes `s`, or -1.
  int least_loaded(const std::vector<Replica>& replicas, int s) const {
    int best = -1;
    for (int r = 0; r < dp_; ++r)
      if (fits(replicas[r], s) && (best < 0 || replicas[r].load_ms < replicas[best].load_ms))
        best = r;
    return best;
  }

  bool try_assign(int m, std::vector<std::vector<Replica>>& out) const;
  std::vector<WaveDraft> drafts(std::vector<std::vector<Replica>>& micro_batches) const;

  const Batch& batch_;
  const int cp_;
  const int dp_;
  const double budget_;
  const std::int64_t token_limit_;
  const WaveEncoderRoom room_;
  std::vector<double> llm_ms_;      // per sample, split over cp
  std::vector<double> encoder_ms_;  // per sample, its items whole
  std::vector<double> bytes_;       // per sample, per device at cp
};

// Level 1: samples by encoder work (then LLM work), heaviest first, each to the micro-batch
// with the least encoder work that holds it. Level 2: within a micro-batch, LPT over the
// replicas by LLM work. Level 3: a replica above the target (the mean LLM load of a
// replica-micro-batch) defers its lightest samples that bring it back to the next micro-batch.
bool EntrainAssignment::try_assign(int m, std::vector<std::vector<Replica>>& out) const {
  std::vector<int> order(batch_.samples.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int a, int b) {
    if (encoder_ms_[a] != encoder_ms_[b]) return encoder_ms_[a] > encoder_ms_[b];
    return llm_ms_[a] > llm_ms_[b];
  });
  std::vector<double> encoder_load(m, 0.0);
  std::vector<std::vector<int>> members(m);
  std::vector<double> member_bytes(m, 0.0);
  for (int s : order) {
    int best = -1;
    for (int i = 0; i < m; ++i) {
      if (member_bytes[i] + bytes_[s] > dp_ * budget_) continue;
      if (best < 0 || encoder_load[i] < encoder_load[best] ||
          (encoder_load[i] == encoder_load[best] && member_bytes[i] < member_bytes[best]))
        best = i;
    }
    if (best < 0) return false;
    encoder_load[best] += encoder_ms_[s];
    member_bytes[best] += bytes_[s];
    members[best].push_back(s);
  }
  const double target =
      std::accumulate(llm_ms_.begin(), llm_ms_.end(), 0.0) / (static_cast<double>(m) * dp_);
  out.assign(m, std::vector<Replica>(dp_));
  std::vector<int> deferred;
  for (int i = 0; i < m; ++i) {
    std::vector<int> mine = deferred;
    mine.insert(mine.end(), members[i].begin(), members[i].end());
    deferred.clear();
    std::stable_sort(mine.begin(), mine.end(),
                     [&](int a, int b) { return llm_ms_[a] > llm_ms_[b]; });
    double encoder = 0;  // the micro-batch's items
    for (int s : mine) {
      const int r = least_loaded(out[i], s);
      if (r < 0 || !room_fits(out[i], encoder, r, s)) {
        if (i + 1 == m) return false;
        deferred.push_back(s);
        continue;
      }
      put(out[i][r], s);
      encoder += room_.sample_bytes(s);
    }
    if (i + 1 == m) break;
    // Defer the excess: while a replica is above the target, its lightest sample moves on.
    for (Replica& r : out[i]) {
      while (r.samples.size() > 1 && r.load_ms > target * (1 + kDeferSlack)) {
        const auto lightest =
            std::min_element(r.samples.begin(), r.samples.end(),
                             [&](int a, int b) { return llm_ms_[a] < llm_ms_[b]; });
        if (r.load_ms - llm_ms_[*lightest] < target) break;  // moving it would undershoot
        r.load_ms -= llm_ms_[*lightest];
        r.bytes -= bytes_[*lightest];
        r.tokens_per_rank -= local_share(batch_.samples[*lightest].llm_tokens(), cp_);
        deferred.push_back(*lightest);
        r.samples.erase(lightest);
      }
    }
  }
  return deferred.empty();
}

std::vector<WaveDraft> EntrainAssignment::drafts(
    std::vector<std::vector<Replica>>& micro_batches) const {
  std::vector<WaveDraft> waves;
  for (std::vector<Replica>& replicas : micro_batches) {
    WaveDraft wave;
    for (Replica& r : replicas)
      if (!r.samples.empty()) wave.groups.push_back(split_group(cp_, std::move(r.samples)));
    if (!wave.groups.empty()) waves.push_back(std::move(wave));
  }
  return waves;
}

}  // namespace

std::vector<WaveDraft> entrain_waves(const Batch& batch, const CostModel& cost,
                                     const Layout& layout, int cp, double budget,
                                     std::int64_t max_tokens_per_rank) {
  DHP_CHECK(cp >= 1 && layout.llm.ranks % cp == 0, InvalidArgument,
            "entrain: cp={} must divide the {} LLM ranks", cp, layout.llm.ranks);
  std::vector<WaveDraft> waves =
      EntrainAssignment(batch, cost, layout, cp, budget, max_tokens_per_rank).assign();
  DHP_LOG_DEBUG("entrain: cp={} -> {} micro-batches", cp, waves.size());
  return waves;
}

}  // namespace dhp::detail
