// The per-batch tables of dhp's packer: each sequence's useful ring degrees.
#include <unordered_map>

#include "dhp_packer.hpp"

namespace dhp::detail {
namespace {

// A sequence's bytes per member at degree d: its LLM activations' share, and its encoder
// items' charge (encoder_charge_per_device) spread over the members.
double sequence_bytes(const CostModel& cost, std::int64_t tokens, double charge, int d) {
  return cost.llm_activation_bytes(tokens, d) + charge / d;
}

// The smallest degree whose bytes fit (they fall with the degree beyond 1) and whose local
// share stays within the token limit; R + 1 when none does.
int memory_minimal_degree(const CostModel& cost, const Tables& t, const SequenceInfo& s,
                          double charge) {
  if (s.whole_bytes <= t.budget && s.whole_tokens <= t.token_limit) return 1;
  int lo = 2, hi = t.ranks;
  while (lo < hi) {
    const int mid = lo + (hi - lo) / 2;
    if (sequence_bytes(cost, s.whole_tokens, charge, mid) <= t.budget &&
        local_share(s.whole_tokens, mid) <= t.token_limit)
      hi = mid;
    else
      lo = mid + 1;
  }
  return lo;
}

// Appends the sequence's useful degrees to t.steps: from its memory-minimal degree upward,
// only those whose per-rank time strictly falls.
void add_degree_steps(const CostModel& cost, const Layout& layout, Tables& t, SequenceInfo& s,
                      double charge) {
  const std::int64_t tokens = s.whole_tokens;
  double best = kInf;
  double prev = kInf;
  const int rpn = std::max(1, layout.llm_ranks_per_node);
  const int R = t.ranks;
  for (int d = memory_minimal_degree(cost, t, s, charge); d <= R;
       d = d < 2 * rpn ? d + 1 : (d / rpn + 1) * rpn) {
    // Past two nodes only whole-node multiples: the ring crosses nodes anyway, and the
    // table stays O(R / ranks per node) per sequence on large clusters.
    const double ms =
        d == 1 ? s.whole_ms : cost.llm_sequence_ms(tokens, expected_ring(d, layout)) - t.fixed_ms;
    const double bytes = d == 1 ? s.whole_bytes : sequence_bytes(cost, tokens, charge, d);
    if (ms < best * (1 - 1e-9) && bytes <= t.budget && local_share(tokens, d) <= t.token_limit) {
      t.steps.push_back(DegreeStep{d, ms, bytes, local_share(tokens, d)});
      best = ms;
    }
    // Past the node boundary the ring only gets more expensive once it stops paying.
    if (d > layout.llm_ranks_per_node && ms >= prev) break;
    prev = ms;
  }
  s.num_steps = static_cast<int>(t.steps.size()) - s.first_step;
  DHP_CHECK(s.num_steps > 0, Internal, "dhp: sample {} has no degree that fits", s.sample);
}

// Sequences of equal length and equal encoder charge share their steps.
struct SequenceKey {
  std::int64_t tokens;
  double charge;
  bool operator==(const SequenceKey&) const = default;
};
struct SequenceKeyHash {
  std::size_t operator()(const SequenceKey& k) const {
    return std::hash<std::int64_t>()(k.tokens) ^ (std::hash<double>()(k.charge) << 1);
  }
};

}  // namespace

Tables make_tables(const Batch& batch, const CostModel& cost, const Layout& layout,
                   const PlannerOptions& options, const SampleCosts& sample_costs) {
  Tables t;
  t.token_limit = options.max_tokens_per_rank > 0 ? options.max_tokens_per_rank
                                                  : std::numeric_limits<std::int64_t>::max();
  t.ranks = layout.llm.ranks;
  t.budget = llm_activation_budget(cost, layout, batch);
  // Step times are marginal: a rank's load is fixed_ms + the sum of its pieces' marginal
  // times, which is exactly llm_rank_ms for whole sequences (ring exposure is nearly additive).
  t.fixed_ms = cost.llm_rank_fixed_ms();
  const int n = static_cast<int>(batch.samples.size());
  t.seqs.reserve(n);
  // Real batches repeat lengths (fixed image token counts), and the cost-model calls are
  // most of the tables' time.
  std::unordered_map<SequenceKey, int, SequenceKeyHash> seq_of_key;
  for (int i = 0; i < n; ++i) {
    const std::int64_t tokens = sample_costs.tokens[i];
    const double charge = encoder_charge_per_device(cost, layout, sample_costs.encoder_held[i]);
    if (const auto same = seq_of_key.find({tokens, charge}); same != seq_of_key.end()) {
      SequenceInfo s = t.seqs[same->second];
      s.sample = i;
      t.seqs.push_back(s);
      continue;
    }
    seq_of_key.emplace(SequenceKey{tokens, charge}, static_cast<int>(t.seqs.size()));
    SequenceInfo s{i,
                   cost.llm_sequence_ms(tokens, RingSpan{1, false}) - t.fixed_ms,
                   sequence_bytes(cost, tokens, charge, 1),
                   tokens,
                   static_cast<int>(t.steps.size()),
                   0};
    add_degree_steps(cost, layout, t, s, charge);
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

}  // namespace dhp::detail
