// Where groups and rings sit on the cluster: node-aware placement of a wave's groups onto LLM
// ranks, and whether a ring (of LLM or encoder ranks) crosses a node boundary.
#include <algorithm>
#include <iterator>
#include <numeric>
#include <set>
#include <utility>

#include "dhp/error.hpp"
#include "internal.hpp"

namespace dhp::detail {

RingSpan expected_ring(int degree, const Layout& layout) {
  return RingSpan{degree, degree > layout.llm_ranks_per_node};
}

bool crosses_nodes(const std::vector<int>& ranks, int ranks_per_node) {
  if (ranks.empty()) return false;
  const int node = ranks.front() / ranks_per_node;
  for (int r : ranks)
    if (r / ranks_per_node != node) return true;
  return false;
}

std::vector<std::vector<int>> place_groups(const std::vector<int>& degrees, int total_ranks,
                                           int ranks_per_node) {
  DHP_CHECK(total_ranks >= 1 && ranks_per_node >= 1, InvalidArgument,
            "place_groups: total_ranks={}, ranks_per_node={}", total_ranks, ranks_per_node);
  long long needed = 0;
  for (int d : degrees) {
    DHP_CHECK(d >= 1, Internal, "place_groups: group degree {} < 1", d);
    needed += d;
  }
  DHP_CHECK(needed <= total_ranks, Internal, "place_groups: groups need {} ranks, only {} exist",
            needed, total_ranks);

  const int nodes = (total_ranks + ranks_per_node - 1) / ranks_per_node;
  // Free ranks per node, lowest first; and an ordered index (free count, node) for best-fit.
  std::vector<std::vector<int>> free_ranks(nodes);
  for (int r = total_ranks - 1; r >= 0; --r) free_ranks[r / ranks_per_node].push_back(r);
  std::set<std::pair<int, int>> by_free;
  for (int n = 0; n < nodes; ++n) by_free.insert({static_cast<int>(free_ranks[n].size()), n});

  auto take = [&](int node, int count, std::vector<int>& out) {
    by_free.erase({static_cast<int>(free_ranks[node].size()), node});
    for (int i = 0; i < count; ++i) {
      out.push_back(free_ranks[node].back());
      free_ranks[node].pop_back();
    }
    if (!free_ranks[node].empty())
      by_free.insert({static_cast<int>(free_ranks[node].size()), node});
  };
  // Best fit: the node with the fewest free ranks that still holds `count` (lowest id on ties).
  auto best_fit_node = [&](int count) -> int {
    auto it = by_free.lower_bound({count, -1});
    return it == by_free.end() ? -1 : it->second;
  };

  std::vector<int> order(degrees.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(),
                   [&](int a, int b) { return degrees[a] > degrees[b]; });

  std::vector<std::vector<int>> result(degrees.size());
  for (int g : order) {
    int remaining = degrees[g];
    std::vector<int>& ranks = result[g];
    ranks.reserve(remaining);
    if (remaining <= ranks_per_node) {
      const int node = best_fit_node(remaining);
      if (node >= 0) {
        take(node, remaining, ranks);
        continue;
      }
    }
    // Whole free nodes first (lowest ids): a ring over k nodes then crosses k boundaries.
    while (remaining >= ranks_per_node) {
      const int node = best_fit_node(ranks_per_node);
      if (node < 0 || static_cast<int>(free_ranks[node].size()) != ranks_per_node) break;
      take(node, ranks_per_node, ranks);
      remaining -= ranks_per_node;
    }
    // The remainder inside one node if any node holds it, else from the fullest nodes.
    while (remaining > 0) {
      int node = best_fit_node(remaining);
      if (node < 0) node = std::prev(by_free.end())->second;
      const int count = std::min(remaining, static_cast<int>(free_ranks[node].size()));
      take(node, count, ranks);
      remaining -= count;
    }
    // Ring order: node by node, ranks ascending inside a node.
    std::sort(ranks.begin(), ranks.end());
  }
  return result;
}

bool encoder_ring_crosses_nodes(const ClusterSpec& cluster, const ModuleLayout& encoder,
                                const std::vector<int>& ranks) {
  for (int e : ranks)
    if (cluster.node_of(encoder.device_of(e)) != cluster.node_of(encoder.device_of(ranks[0])))
      return true;
  return false;
}

}  // namespace dhp::detail
