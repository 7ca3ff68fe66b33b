// RankHeap against the ordered set it replaces in the encoder assignment: after random key
// raises and removals, a walk in order visits the ranks in (key, rank) order, and stops
// where told.
// Keys are drawn from a few values so that ties (ordered by rank) are common.
#include <gtest/gtest.h>

#include <random>
#include <set>
#include <utility>
#include <vector>

#include "planner/rank_heap.hpp"

namespace dhp::detail {
namespace {

TEST(RankHeap, WalksInKeyThenRankOrder) {
  std::mt19937_64 gen(11);
  RankHeap heap;  // reused, as the plan assembly reuses it per wave
  for (int trial = 0; trial < 500; ++trial) {
    const int ranks = 1 + static_cast<int>(gen() % 41);
    std::vector<double> keys(ranks);
    for (double& k : keys) k = static_cast<double>(gen() % 5);
    heap.reset(keys);
    std::set<std::pair<double, int>> want;
    for (int e = 0; e < ranks; ++e) want.insert({keys[e], e});
    for (int step = 0; step < 20; ++step) {
      const int e = static_cast<int>(gen() % ranks);
      const bool present = heap.contains(e);
      ASSERT_EQ(present, want.count({keys[e], e}) == 1);
      want.erase({keys[e], e});
      keys[e] += static_cast<double>(gen() % 3);
      heap.raise(e, keys[e]);
      if (present && gen() % 4 == 0)
        heap.remove(e);  // it can take nothing more
      else if (present)
        want.insert({keys[e], e});
      if (want.empty()) break;
      const std::size_t stop = gen() % (ranks + 1);  // visits before the walk stops
      std::vector<int> seen;
      heap.visit_in_order([&](int r) {
        seen.push_back(r);
        return seen.size() < stop;
      });
      std::vector<int> expected;
      for (const auto& [k, r] : want) {
        expected.push_back(r);
        if (expected.size() == std::max<std::size_t>(stop, 1)) break;
      }
      ASSERT_EQ(seen, expected) << "trial " << trial << " step " << step;
      ASSERT_DOUBLE_EQ(heap.key(e), keys[e]);
    }
  }
}

}  // namespace
}  // namespace dhp::detail
