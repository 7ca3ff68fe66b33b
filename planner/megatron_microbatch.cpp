// The micro-batch state Megatron's dynamic-CP schedulers share (megatron_microbatch.hpp).
#include "megatron_microbatch.hpp"

#include <algorithm>
#include <limits>

#include "dhp/error.hpp"

namespace dhp::detail {

int megatron_cp_size(std::int64_t tokens, std::int64_t max_tokens_per_rank) {
  DHP_CHECK(max_tokens_per_rank > 0, InvalidArgument,
            "megatron_cp_size: max_tokens_per_rank={} must be positive", max_tokens_per_rank);
  const std::int64_t ranks_needed = (tokens + max_tokens_per_rank - 1) / max_tokens_per_rank;
  int cp = 1;
  while (cp < ranks_needed) cp *= 2;
  return cp;
}

std::int64_t megatron_max_tokens(const CostModel& cost, double budget,
                                 const PlannerOptions& options, const char* strategy) {
  // Megatron's max_seqlen_per_dp_cp_rank; without one, the longest sequence one rank holds.
  const std::int64_t max_tokens = options.max_tokens_per_rank > 0
                                      ? options.max_tokens_per_rank
                                      : max_fitting_tokens(cost, 1, budget, 1);
  DHP_CHECK(max_tokens > 0, DoesNotFit,
            "{}: no token fits the {:.3g} GiB of activations per device", strategy,
            budget / (1 << 30));
  return max_tokens;
}

std::vector<int> megatron_cp_sizes(const Batch& batch, const CostModel& cost, int ranks,
                                   double budget, std::int64_t max_tokens_per_rank,
                                   const char* strategy) {
  int largest_pow2 = 1;
  while (largest_pow2 * 2 <= ranks) largest_pow2 *= 2;
  std::vector<int> cp_of(batch.samples.size());
  for (std::size_t s = 0; s < batch.samples.size(); ++s) {
    const std::int64_t tokens = batch.samples[s].llm_tokens();
    int cp = megatron_cp_size(tokens, max_tokens_per_rank);
    // The ring's KV buffers can push a sequence over memory at exactly its size: a real run
    // would OOM, so (as a user would) take the next process-group size up.
    while (cp <= largest_pow2 && rank_activation_bytes(cost, {tokens}, cp, {}) > budget) cp *= 2;
    DHP_CHECK(cp <= largest_pow2, DoesNotFit,
              "{}: sample {} (id {}) of {} tokens needs a CP group of {} ranks (power of two, {} "
              "tokens per rank) but only {} LLM ranks exist",
              strategy, s, batch.samples[s].id, tokens, cp, max_tokens_per_rank, ranks);
    cp_of[s] = cp;
  }
  return cp_of;
}

MegatronInputs::MegatronInputs(const Batch& batch, const CostModel& cost, const Layout& layout,
                               const PlannerOptions& options, const char* strategy)
    : ranks(layout.llm.ranks),
      budget(llm_activation_budget(cost, layout, batch)),
      max_tokens(megatron_max_tokens(cost, budget, options, strategy)),
      cp_of(megatron_cp_sizes(batch, cost, ranks, budget, max_tokens, strategy)),
      room(batch, cost, layout),
      samples(batch, cost, ranks) {}

MegatronSamples::MegatronSamples(const Batch& batch, const CostModel& cost, int ranks)
    : batch_(batch), cost_(cost), ranks_(ranks), bytes_(batch.samples.size()) {
  tokens_.reserve(batch.samples.size());
  for (const Sample& s : batch.samples) tokens_.push_back(s.llm_tokens());
}

double MegatronSamples::bytes(int s, int size) const {
  int k = 0;
  while ((1 << k) < size) ++k;
  const bool pow2 = (1 << k) == size;
  std::vector<double>& row = bytes_[static_cast<std::size_t>(s)];
  int largest_k = 0;
  while ((2 << largest_k) <= ranks_) ++largest_k;
  if (row.empty()) row.assign(static_cast<std::size_t>(largest_k) + 2, -1.0);
  double& slot = row[static_cast<std::size_t>(pow2 && k <= largest_k ? k : largest_k + 1)];
  if (slot < 0) slot = group_activation_bytes(cost_, batch_, {s}, size);
  return slot;
}

MegatronMicroBatch::MegatronMicroBatch(const MegatronSamples& samples, const WaveEncoderRoom& room,
                                       int ranks, double budget, double max_tokens_per_rank)
    : samples_(samples),
      room_(room),
      ranks_(ranks),
      budget_(budget),
      max_tokens_(max_tokens_per_rank) {}

const std::vector<int>& MegatronMicroBatch::groups_of_size(int size) const {
  static const std::vector<int> kNone;
  for (const auto& [s, groups] : by_size_)
    if (s == size) return groups;
  return kNone;
}

double MegatronMicroBatch::min_load() const {
  if (used_ < ranks_ || groups_.empty()) return 0;
  double least = std::numeric_limits<double>::infinity();
  for (const Group& g : groups_) least = std::min(least, g.load);
  return least;
}

bool MegatronMicroBatch::can_add(int g, int s) const {
  const Group& group = groups_[static_cast<std::size_t>(g)];
  const double tokens = static_cast<double>(samples_.tokens(s));
  if (group.tokens_per_rank + tokens / group.size > max_tokens_) return false;
  const double bytes = group.bytes + samples_.bytes(s, group.size);
  return bytes <= budget_ &&
         room_.fits(encoder_bytes_ + room_.sample_bytes(s), std::max(fullest_bytes_, bytes));
}

bool MegatronMicroBatch::can_open(int size, int s) const {
  if (free_ranks() < size) return false;
  const double bytes = samples_.bytes(s, size);
  if (bytes > budget_) return false;
  return empty() ||
         room_.fits(encoder_bytes_ + room_.sample_bytes(s), std::max(fullest_bytes_, bytes));
}

void MegatronMicroBatch::add(int g, int s) {
  Group& group = groups_[static_cast<std::size_t>(g)];
  const std::int64_t tokens = samples_.tokens(s);
  group.samples.push_back(s);
  group.tokens_per_rank += static_cast<double>(tokens) / group.size;
  group.load += workload(tokens, group.size);
  group.bytes += samples_.bytes(s, group.size);
  encoder_bytes_ += room_.sample_bytes(s);
  fullest_bytes_ = std::max(fullest_bytes_, group.bytes);
  max_load_ = std::max(max_load_, group.load);
}

void MegatronMicroBatch::open(int size, int s) {
  const std::int64_t tokens = samples_.tokens(s);
  groups_.push_back(Group{size,
                          {s},
                          static_cast<double>(tokens) / size,
                          workload(tokens, size),
                          samples_.bytes(s, size)});
  const int g = static_cast<int>(groups_.size()) - 1;
  auto it = std::find_if(by_size_.begin(), by_size_.end(),
                         [&](const auto& entry) { return entry.first == size; });
  if (it == by_size_.end()) {
    by_size_.emplace_back(size, std::vector<int>{});
    it = by_size_.end() - 1;
  }
  it->second.push_back(g);
  used_ += size;
  encoder_bytes_ += room_.sample_bytes(s);
  fullest_bytes_ = std::max(fullest_bytes_, groups_.back().bytes);
  max_load_ = std::max(max_load_, groups_.back().load);
}

bool MegatronMicroBatch::fill_by_doubling(bool near_end_stays) {
  while (used_ < ranks_) {
    int smallest_size = std::numeric_limits<int>::max();
    for (const Group& g : groups_) smallest_size = std::min(smallest_size, g.size);
    const int grown = std::min(smallest_size * 2, ranks_);
    const int gained = grown - smallest_size;
    if (groups_.empty() || used_ + gained > ranks_) return false;
    Group* chosen = nullptr;
    int offset = 0;  // groups sit on consecutive ranks in the order they opened
    for (Group& g : groups_) {
      const int last = offset + g.size - 1;
      offset += g.size;
      if (g.size != smallest_size) continue;
      if (near_end_stays && last + gained >= ranks_) continue;
      chosen = &g;
      break;
    }
    if (chosen == nullptr) return false;
    used_ += gained;
    const int g = static_cast<int>(chosen - groups_.data());
    for (auto& [size, groups] : by_size_)
      if (size == chosen->size) std::erase(groups, g);
    chosen->size = grown;
    auto it = std::find_if(by_size_.begin(), by_size_.end(),
                           [&](const auto& entry) { return entry.first == grown; });
    if (it == by_size_.end()) {
      by_size_.emplace_back(grown, std::vector<int>{});
      it = by_size_.end() - 1;
    }
    it->second.insert(std::upper_bound(it->second.begin(), it->second.end(), g), g);
    // Split over more ranks, each holds less: bytes shrink, the room only grows.
    chosen->bytes = samples_.group_bytes(chosen->samples, grown);
  }
  return true;
}

WaveDraft MegatronMicroBatch::draft() const {
  WaveDraft wave;
  for (const Group& g : groups_) wave.groups.push_back(split_group(g.size, g.samples));
  return wave;
}

}  // namespace dhp::detail
