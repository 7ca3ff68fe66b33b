// Local moves on dhp's best drafts: a sample to another group, a ring cut in two, two groups
// merged into one ring. Each gives new drafts for the estimate to judge.
#include <algorithm>
#include <utility>

#include "baselines.hpp"
#include "dhp_candidates.hpp"

namespace dhp::detail {
namespace {

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

}  // namespace

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

}  // namespace dhp::detail
