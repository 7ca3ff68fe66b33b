// Node-aware placement of a wave's groups onto LLM ranks (group_placement.cpp).
#include <gtest/gtest.h>

#include <set>

#include "dhp/error.hpp"
#include "dhp/simulator.hpp"
#include "planner/internal.hpp"
#include "planner_test_util.hpp"

namespace dhp {
namespace {

int nodes_spanned(const std::vector<int>& ranks, int rpn) {
  std::set<int> nodes;
  for (int r : ranks) nodes.insert(r / rpn);
  return static_cast<int>(nodes.size());
}

int boundary_crossings(const std::vector<int>& ring, int rpn) {
  if (ring.size() < 2) return 0;
  int crossings = 0;
  for (std::size_t i = 0; i < ring.size(); ++i)
    crossings += ring[i] / rpn != ring[(i + 1) % ring.size()] / rpn;
  return crossings;
}

TEST(PlaceGroups, SmallGroupsStayInsideOneNode) {
  const std::vector<int> degrees = {3, 5, 2, 6, 1, 7, 4, 4};  // 32 ranks, nodes of 8
  const auto placed = detail::place_groups(degrees, 32, 8);
  ASSERT_EQ(placed.size(), degrees.size());
  std::set<int> used;
  for (std::size_t g = 0; g < degrees.size(); ++g) {
    EXPECT_EQ(static_cast<int>(placed[g].size()), degrees[g]);
    EXPECT_EQ(nodes_spanned(placed[g], 8), 1) << "group " << g << " of degree " << degrees[g];
    for (int r : placed[g]) EXPECT_TRUE(used.insert(r).second) << "rank " << r << " reused";
  }
}

TEST(PlaceGroups, LargeRingsCrossTheFewestBoundaries) {
  const std::vector<int> degrees = {20, 8, 4};  // 64 ranks, nodes of 8
  const auto placed = detail::place_groups(degrees, 64, 8);
  // 20 ranks need 3 nodes at least; a ring over k nodes crosses k boundaries.
  EXPECT_EQ(nodes_spanned(placed[0], 8), 3);
  EXPECT_EQ(boundary_crossings(placed[0], 8), 3);
  EXPECT_EQ(nodes_spanned(placed[1], 8), 1);
  EXPECT_EQ(nodes_spanned(placed[2], 8), 1);
  EXPECT_FALSE(detail::crosses_nodes(placed[1], 8));
  EXPECT_TRUE(detail::crosses_nodes(placed[0], 8));
}

TEST(PlaceGroups, TooManyRanksIsAnError) {
  EXPECT_THROW(detail::place_groups({4, 5}, 8, 8), Error);
  EXPECT_THROW(detail::place_groups({0}, 8, 8), Error);
}

}  // namespace
}  // namespace dhp
