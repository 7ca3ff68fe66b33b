// The baselines' cheap constructions as candidates of dhp (docs/algorithm.md, "Portfolio").
#include <algorithm>

#include "baselines.hpp"
#include "dhp/error.hpp"
#include "dhp_candidates.hpp"

namespace dhp::detail {
namespace {

// static_balanced's constructions tried per batch, at that many CP degrees.
constexpr int kBalancedCpDegrees = 4;

}  // namespace

void add_portfolio(const Batch& batch, const CostModel& cost, const Layout& layout,
                   const PlannerOptions& options, const Tables& tables,
                   const std::function<void(std::vector<WaveDraft>)>& consider) {
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
    // The CP degrees dividing the ranks from the smallest that holds the longest sequence up,
    // any integer (3 on 6 ranks), not only its doublings.
    int tried = 0;
    for (int c = cp_min; c <= R && tried < kBalancedCpDegrees; ++c) {
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

}  // namespace dhp::detail
