// The per-batch tables of dhp's packer: each sequence's useful ring degrees.
#include <unordered_map>

#include "dhp_packer.hpp"

namespace dhp::detail {

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

}  // namespace dhp::detail
