// LoadIndex against the scans it replaces, on random bins with inserts and erases: the
// fullest bin at or below a load whose bytes and tokens both have room; the first bins
// down from a load and up from the least loaded, in (load, bin) order, with a visit limit.
// Bytes and tokens are drawn independently, so a bucket's least bytes and least tokens
// often come from different bins. Spans from far below to far above the loads put many
// entries in one bucket or spread them over many.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <random>
#include <vector>

#include "planner/load_index.hpp"

namespace dhp::detail {
namespace {

struct Query {
  double max_load, bytes;
  std::int64_t tokens;
  bool fits(const LoadEntry& e) const { return e.bytes + bytes <= 100 && e.tokens + tokens <= 100; }
};

int scan_fullest_fit(const std::vector<LoadEntry>& entries, const Query& q) {
  const LoadEntry* best = nullptr;
  for (const LoadEntry& e : entries) {
    if (e.load > q.max_load || !q.fits(e)) continue;
    if (best == nullptr || ByLoadThenBin{}(*best, e)) best = &e;
  }
  return best == nullptr ? -1 : best->bin;
}

// The first of the `limit` entries nearest below max_load (down) or from the least (up).
int scan_limited(std::vector<LoadEntry> entries, const Query& q, int limit, bool down) {
  std::sort(entries.begin(), entries.end(), ByLoadThenBin{});
  if (down) {
    std::reverse(entries.begin(), entries.end());
    std::erase_if(entries, [&](const LoadEntry& e) { return e.load > q.max_load; });
  }
  for (int i = 0; i < static_cast<int>(entries.size()) && i < limit; ++i)
    if (q.fits(entries[i])) return entries[i].bin;
  return -1;
}

TEST(LoadIndex, AnswersAsTheScansDo) {
  std::mt19937_64 gen(7);
  int found = 0, none = 0, limited = 0;
  LoadIndex index;  // reused across trials, as the packer reuses it across packs
  for (int trial = 0; trial < 2000; ++trial) {
    const int bins = 1 + static_cast<int>(gen() % 37);
    const double span = std::vector<double>{0.5, 4, 17, 200}[gen() % 4];
    // Up to 4096 buckets: queries cross words of 64 buckets.
    index.reset(static_cast<int>(gen() % 2048), span);
    std::vector<LoadEntry> entries;
    for (int b = 0; b < bins; ++b) {
      const LoadEntry e{static_cast<double>(gen() % 17), b, static_cast<double>(gen() % 100),
                        static_cast<std::int64_t>(gen() % 100)};
      index.insert(e);
      entries.push_back(e);
    }
    for (int query = 0; query < 8; ++query) {
      if (gen() % 2 == 0 && !entries.empty()) {  // a bin leaves, or comes back with a new load
        const std::size_t i = gen() % entries.size();
        ASSERT_TRUE(index.erase(entries[i].bin));
        ASSERT_FALSE(index.erase(entries[i].bin));
        if (gen() % 2 == 0) {
          entries[i].load = static_cast<double>(gen() % 17);
          index.insert(entries[i]);
        } else {
          entries.erase(entries.begin() + static_cast<std::ptrdiff_t>(i));
        }
      }
      ASSERT_EQ(index.size(), static_cast<int>(entries.size()));
      const Query q{static_cast<double>(gen() % 20), static_cast<double>(gen() % 60),
                    static_cast<std::int64_t>(gen() % 60)};
      const int want = scan_fullest_fit(entries, q);
      ASSERT_EQ(index.fullest_fit(q.max_load, q.bytes, q.tokens, 100, 100), want)
          << "trial " << trial << " query " << query;
      (want < 0 ? none : found) += 1;
      const int limit = 1 + static_cast<int>(gen() % 6);
      auto fits = [&](int bin) {
        for (const LoadEntry& e : entries)
          if (e.bin == bin) return q.fits(e);
        return false;
      };
      const int down = scan_limited(entries, q, limit, true);
      ASSERT_EQ(index.scan_down(q.max_load, limit, fits), down) << "trial " << trial;
      ASSERT_EQ(index.scan_up(limit, fits), scan_limited(entries, q, limit, false))
          << "trial " << trial;
      if (down < 0 && want >= 0) ++limited;
    }
  }
  // Every outcome is exercised, including a fit past the visit limit.
  EXPECT_GT(found, 1000);
  EXPECT_GT(none, 1000);
  EXPECT_GT(limited, 100);
}

// LPT's pattern: every free rank enters at load 0 (one bucket), the least-loaded is taken,
// loaded and put back; the index walks up in (load, bin) order throughout.
TEST(LoadIndex, TakesTheLeastLoadedInOrder) {
  LoadIndex index;
  const int bins = 300;
  index.reset(bins, 50.0);
  std::vector<double> load(bins, 0.0);
  for (int b = 0; b < bins; ++b) index.insert(LoadEntry{0.0, b, 0, 0});
  for (int step = 0; step < 5 * bins; ++step) {
    const int least = index.scan_up(1, [](int) { return true; });
    int want = 0;
    for (int b = 1; b < bins; ++b)
      if (load[b] < load[want]) want = b;
    ASSERT_EQ(least, want) << "step " << step;
    ASSERT_TRUE(index.erase(least));
    load[least] += 1 + (step * 7919) % 13;
    index.insert(LoadEntry{load[least], least, 0, 0});
    ASSERT_EQ(index.size(), bins);
  }
}

}  // namespace
}  // namespace dhp::detail
