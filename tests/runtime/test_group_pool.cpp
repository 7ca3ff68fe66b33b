// Group pool: over a stream of plans, prewarming the next plan while the current one runs
// means the step path never creates a communicator once warm (the counters prove it);
// the LRU bound destroys old groups; pool groups work for collectives.
#include <gtest/gtest.h>

#include <random>

#include "dhp/error.hpp"
#include "dhp/group_pool.hpp"
#include "runtime_test_util.hpp"

namespace dhp {
namespace {

using testing::world;

// A plan whose waves use Ulysses groups (the ones that need a communicator), built from
// one of a few partition patterns of the world, like a planner revisiting the same shapes.
Plan pattern_plan(int n, int pattern) {
  std::vector<std::vector<int>> choices = {{n}, {n - n / 2, n / 2}, {1, n - 1}, {n - 2, 2}};
  std::vector<int> sizes;
  for (int s : choices[static_cast<std::size_t>(pattern) % choices.size()])
    if (s > 0) sizes.push_back(s);
  Plan plan = testing::one_wave_plan(
      n, sizes, 6, [](int) { return true; }, CpAttention::Ulysses);
  // A second wave with the groups in the opposite order: different keys (ring order differs).
  Plan second = testing::one_wave_plan(
      n, std::vector<int>(sizes.rbegin(), sizes.rend()), 6, [](int) { return true; },
      CpAttention::Ulysses);
  plan.waves.push_back(second.waves[0]);
  return plan;
}

// What the step path does with the pool: acquire the wave's groups, then use its own group.
void run_step(GroupPool& pool, const Plan& plan) {
  Communicator& comm = world();
  for (const auto& partition : communicator_partitions(plan)) {
    pool.acquire(partition);
    for (const auto& group : partition) {
      if (std::find(group.begin(), group.end(), comm.rank()) == group.end()) continue;
      Communicator& sub = pool.get(group);
      ASSERT_EQ(sub.world_ranks(), group);
      int one = 1;
      sub.all_reduce(&one, &one, 1, DataType::I32, ReduceOp::Sum);
      EXPECT_EQ(one, static_cast<int>(group.size()));
    }
  }
}

TEST(GroupPool, NoCreationOnTheStepPathOnceWarm) {
  Communicator& comm = world();
  const int n = comm.size();
  GroupPool pool(comm, 64);
  std::mt19937_64 gen(3);  // same stream on every rank
  std::vector<Plan> stream;
  for (int t = 0; t < 24; ++t) stream.push_back(pattern_plan(n, static_cast<int>(gen() % 4)));

  pool.prewarm(stream[0]);
  std::int64_t step_path_creations = 0, creations_after_warmup = -1;
  for (std::size_t t = 0; t < stream.size(); ++t) {
    if (t + 1 < stream.size()) pool.prewarm(stream[t + 1]);  // ahead of time (between batches)
    const std::int64_t before = pool.stats().creations;
    run_step(pool, stream[t]);
    step_path_creations += pool.stats().creations - before;
    if (t == stream.size() / 2) creations_after_warmup = pool.stats().creations;
  }
  const GroupPoolStats& s = pool.stats();
  EXPECT_EQ(step_path_creations, 0);
  EXPECT_EQ(s.creations, creations_after_warmup)
      << "creations must stop once every pattern was seen";
  EXPECT_GT(s.creations, 0);
  EXPECT_GT(s.hits, s.misses);
  EXPECT_EQ(s.misses, s.creations);
  EXPECT_LE(s.splits, s.creations);
  EXPECT_EQ(s.destroyed, 0);
  if (comm.rank() == 0) {
    std::printf(
        "pool over %zu plans: hits %lld misses %lld creations %lld splits %lld destroyed %lld, "
        "%.2f ms creating\n",
        stream.size(), static_cast<long long>(s.hits), static_cast<long long>(s.misses),
        static_cast<long long>(s.creations), static_cast<long long>(s.splits),
        static_cast<long long>(s.destroyed), s.creation_ms);
  }
}

TEST(GroupPool, LeastRecentlyUsedGroupsAreDestroyedPastTheCapacity) {
  Communicator& comm = world();
  const int n = comm.size();
  if (n < 2) GTEST_SKIP() << "needs two ranks";
  GroupPool pool(comm, 2);
  // Four partitions of pairs / singletons: {0,1}, then {1,0}, then {0}, {1}, ...
  const std::vector<std::vector<std::vector<int>>> partitions = {{{0, 1}}, {{1, 0}}, {{0}, {1}}};
  for (const auto& p : partitions) pool.acquire(p);
  EXPECT_LE(pool.size(), 2u);
  EXPECT_EQ(pool.stats().creations, 4);
  EXPECT_EQ(pool.stats().destroyed, 2);
  EXPECT_FALSE(pool.contains({0, 1}));
  pool.acquire({{0, 1}});  // evicted earlier: created again
  EXPECT_EQ(pool.stats().misses, 5);
  EXPECT_TRUE(pool.contains({0, 1}));
  if (comm.rank() <= 1) {
    int x = comm.rank() + 1;
    pool.get({0, 1}).all_reduce(&x, &x, 1, DataType::I32, ReduceOp::Sum);
    EXPECT_EQ(x, 3);
  }
}

TEST(GroupPool, RejectsOverlappingGroupsAndUnknownGroups) {
  Communicator& comm = world();
  GroupPool pool(comm);
  if (comm.size() >= 2) {
    EXPECT_THROW(pool.acquire({{0, 1}, {1}}), Error);
  }
  EXPECT_THROW(pool.acquire({{comm.size()}}), Error);
  EXPECT_THROW(pool.get({0}), Error);
  EXPECT_EQ(pool.stats().creations, 0);
}

}  // namespace
}  // namespace dhp
