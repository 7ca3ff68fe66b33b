// LoadIndex::fullest_fit against the scan it replaces: the fullest bin at or below a load
// whose bytes and tokens both have room. Bytes and tokens are drawn independently, so a
// subtree's least bytes and least tokens often come from different bins.
#include <gtest/gtest.h>

#include <cstdint>
#include <random>
#include <vector>

#include "planner/load_index.hpp"

namespace dhp::detail {
namespace {

int scan_fullest_fit(const std::vector<LoadEntry>& entries, double max_load, double bytes,
                     std::int64_t tokens, double budget, std::int64_t token_limit) {
  const LoadEntry* best = nullptr;
  for (const LoadEntry& e : entries) {
    if (e.load > max_load || e.bytes + bytes > budget || e.tokens + tokens > token_limit) continue;
    if (best == nullptr || ByLoadThenBin{}(*best, e)) best = &e;
  }
  return best == nullptr ? -1 : best->bin;
}

TEST(LoadIndex, FullestFitIsWhatAScanFinds) {
  std::mt19937_64 gen(7);
  int found = 0, none = 0;
  for (int trial = 0; trial < 2000; ++trial) {
    const int bins = 1 + static_cast<int>(gen() % 37);
    LoadIndex index;
    std::vector<LoadEntry> entries;
    for (int b = 0; b < bins; ++b) {
      const LoadEntry e{static_cast<double>(gen() % 17), b, static_cast<double>(gen() % 100),
                        static_cast<std::int64_t>(gen() % 100)};
      index.insert(e);
      entries.push_back(e);
    }
    for (int query = 0; query < 8; ++query) {
      const double max_load = static_cast<double>(gen() % 20);
      const double bytes = static_cast<double>(gen() % 60);
      const auto tokens = static_cast<std::int64_t>(gen() % 60);
      const int want = scan_fullest_fit(entries, max_load, bytes, tokens, 100, 100);
      ASSERT_EQ(index.fullest_fit(max_load, bytes, tokens, 100, 100), want)
          << "trial " << trial << " query " << query;
      (want < 0 ? none : found) += 1;
    }
  }
  // Both outcomes are exercised.
  EXPECT_GT(found, 1000);
  EXPECT_GT(none, 1000);
}

}  // namespace
}  // namespace dhp::detail
