// AsyncPlanner: plans in submission order, equal to synchronous plans; errors propagate.
#include <gtest/gtest.h>

#include "dhp/error.hpp"
#include "dhp/planner.hpp"
#include "planner_test_util.hpp"

namespace dhp {
namespace {

TEST(AsyncPlanner, PlansInOrderAndMatchesSynchronousPlans) {
  const Planner sync(cluster_preset("h100-8"), model_preset("qwen2-vl-7b"));
  AsyncPlanner async(Planner(cluster_preset("h100-8"), model_preset("qwen2-vl-7b")));
  std::vector<Batch> batches;
  std::vector<std::future<Plan>> futures;
  for (std::uint32_t i = 0; i < 5; ++i) {
    batches.push_back(test::random_multimodal_batch(i + 1, 40, 6000));
    futures.push_back(async.submit(batches.back()));
  }
  for (std::size_t i = 0; i < batches.size(); ++i) {
    const Plan plan = futures[i].get();
    EXPECT_EQ(plan.step, batches[i].step);
    EXPECT_EQ(plan_hash(plan), plan_hash(sync.plan(batches[i])));
  }
}

TEST(AsyncPlanner, ErrorsComeBackThroughTheFuture) {
  AsyncPlanner async(Planner(cluster_preset("h100-8"), model_preset("qwen2-vl-7b")));
  auto bad = async.submit(Batch{});
  auto good = async.submit(test::random_multimodal_batch(3, 10, 10000));
  EXPECT_THROW(bad.get(), Error);
  EXPECT_NO_THROW(good.get());
}

TEST(AsyncPlanner, DestructorDrainsQueuedWork) {
  std::vector<std::future<Plan>> futures;
  {
    AsyncPlanner async(Planner(cluster_preset("h100-8"), model_preset("qwen2-vl-7b")));
    for (std::uint32_t i = 0; i < 3; ++i)
      futures.push_back(async.submit(test::random_multimodal_batch(i + 7, 30, 6000)));
  }
  for (auto& f : futures) EXPECT_NO_THROW(f.get());
}

}  // namespace
}  // namespace dhp
