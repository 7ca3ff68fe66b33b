// When the gradient syncs end: the LLM's buckets under each rank's last backward, the
// encoder's after (or beside) it. Shared by the planner's estimate and the simulator.
#include <algorithm>

#include "internal.hpp"

namespace dhp::detail {

double llm_sync_end(std::span<const double> rank_end, std::span<const double> last_backward_ms,
                    double sync_ms, double overlap) {
  double end = 0;
  for (std::size_t r = 0; r < rank_end.size(); ++r) {
    if (rank_end[r] <= 0) continue;
    const double hidden = std::min(overlap * sync_ms, last_backward_ms[r]);
    end = std::max({end, rank_end[r], rank_end[r] + sync_ms - hidden});
  }
  return end;
}

SyncSpan encoder_sync_span(double llm_sync_end, double encoder_end, double encoder_sync_ms,
                           double overlap, bool shared_links) {
  if (!shared_links) return {encoder_end, encoder_end + encoder_sync_ms * (1.0 - overlap)};
  const double start = std::max(encoder_end, llm_sync_end);
  const double hidden =
      std::min(overlap * encoder_sync_ms, std::max(0.0, encoder_end - llm_sync_end));
  return {start, start + encoder_sync_ms - hidden};
}

}  // namespace dhp::detail
