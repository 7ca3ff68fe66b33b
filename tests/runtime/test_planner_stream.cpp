// The group pool on a stream of plans from dhp::Planner (a small 2-node cluster shaped
// like this world): prewarming the next plan while the current one runs leaves nothing to
// create on the step path. The planner picks ring groups; the test asks the pool for
// communicators for every group of degree > 1 (as Ulysses groups would), the worst case.
#include <gtest/gtest.h>

#include <random>

#include "dhp/group_pool.hpp"
#include "dhp/planner.hpp"
#include "runtime_test_util.hpp"

namespace dhp {
namespace {

using testing::world;

Batch random_batch(std::int64_t step, std::mt19937_64& gen) {
  Batch batch;
  batch.step = step;
  for (int s = 0; s < 12; ++s) {
    Sample sample;
    sample.id = step * 100 + s;
    // Long-tailed: mostly captions, a few long documents.
    sample.text_tokens = gen() % 6 == 0 ? 16000 + static_cast<std::int64_t>(gen() % 48000)
                                        : 200 + static_cast<std::int64_t>(gen() % 2000);
    batch.samples.push_back(sample);
  }
  return batch;
}

TEST(PlannerStream, NoCreationOnTheStepPathOnceWarm) {
  Communicator& comm = world();
  const int n = comm.size();
  ClusterSpec cluster = cluster_preset("h100-8");
  cluster.num_nodes = n % 2 == 0 && n > 2 ? 2 : 1;
  cluster.devices_per_node = n / cluster.num_nodes;
  PlannerOptions options;
  options.llm_tp = 1;
  options.encoder_tp = 1;
  const Planner planner(cluster, model_preset("qwen2-vl-2b"), options);

  std::mt19937_64 gen(17);  // the same batches on every rank
  std::vector<Plan> plans;
  for (int step = 0; step < 12; ++step) {
    Plan plan = planner.plan(random_batch(step, gen));
    for (WavePlan& wave : plan.waves)
      for (GroupPlan& group : wave.groups) group.attention = CpAttention::Ulysses;
    plans.push_back(std::move(plan));
  }
  GroupPool pool(comm);
  pool.prewarm(plans[0]);
  std::int64_t step_path_creations = 0, groups_used = 0;
  for (std::size_t t = 0; t < plans.size(); ++t) {
    check_same_plan(comm, plans[t]);
    if (t + 1 < plans.size()) pool.prewarm(plans[t + 1]);
    const std::int64_t before = pool.stats().creations;
    for (const auto& partition : communicator_partitions(plans[t])) {
      pool.acquire(partition);  // the step path
      groups_used += static_cast<std::int64_t>(partition.size());
      for (const auto& group : partition) {
        if (std::find(group.begin(), group.end(), comm.rank()) == group.end()) continue;
        int one = 1;
        pool.get(group).all_reduce(&one, &one, 1, DataType::I32, ReduceOp::Sum);
        EXPECT_EQ(one, static_cast<int>(group.size()));
      }
    }
    step_path_creations += pool.stats().creations - before;
  }
  const GroupPoolStats& s = pool.stats();
  EXPECT_EQ(step_path_creations, 0);
  EXPECT_GE(s.hits, groups_used) << "every group used on the step path is a hit";
  if (comm.rank() == 0) {
    std::printf(
        "planner stream of %zu plans on %d ranks: %lld groups used, hits %lld misses %lld "
        "creations %lld in %lld splits (%.2f ms), destroyed %lld\n",
        plans.size(), n, static_cast<long long>(groups_used), static_cast<long long>(s.hits),
        static_cast<long long>(s.misses), static_cast<long long>(s.creations),
        static_cast<long long>(s.splits), s.creation_ms, static_cast<long long>(s.destroyed));
  }
}

}  // namespace
}  // namespace dhp
