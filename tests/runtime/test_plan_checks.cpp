// Bad inputs fail with InvalidArgument on every rank before any message (so that no rank
// is left waiting): malformed groups in a plan, and a CP context whose communicator is not
// the one the layout was built for.
#include <gtest/gtest.h>

#include <string>

#include "dhp/cp_attention.hpp"
#include "dhp/dispatch.hpp"
#include "dhp/error.hpp"
#include "runtime_test_util.hpp"

namespace dhp {
namespace {

using testing::world;

std::string dispatch_error(const Plan& plan, const std::vector<std::int64_t>& lengths) {
  Communicator& comm = world();
  std::vector<int> owners(lengths.size(), 0);
  try {
    const WaveDispatch dispatch(plan, 0, lengths, owners, comm.rank(), comm.size());
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::InvalidArgument) << e.what();
    return e.what();
  }
  return "";
}

TEST(PlanChecks, MalformedGroupsFailOnEveryRank) {
  const int w = world().size();
  const std::vector<std::int64_t> lengths{4, 3};
  Plan plan = testing::one_wave_plan(w, {w}, 2, [](int) { return true; });

  Plan empty_group = plan;
  empty_group.waves[0].groups.push_back(GroupPlan{});
  EXPECT_NE(dispatch_error(empty_group, lengths).find("has no ranks"), std::string::npos);

  Plan out_of_range = plan;
  out_of_range.waves[0].groups[0].ranks.push_back(w);
  EXPECT_NE(dispatch_error(out_of_range, lengths).find("outside the LLM"), std::string::npos);

  // The last rank twice: every rank, not only the last, must refuse the plan.
  Plan twice = plan;
  twice.waves[0].groups.push_back(GroupPlan{{w - 1}, CpAttention::Ring});
  EXPECT_NE(dispatch_error(twice, lengths).find("is in groups 0 and 1"), std::string::npos);

  EXPECT_EQ(dispatch_error(plan, lengths), "");
}

TEST(PlanChecks, CpAttentionRefusesAnotherRanksLayout) {
  Communicator& comm = world();
  if (comm.size() < 2) GTEST_SKIP() << "needs two ranks";
  const std::vector<std::int64_t> lengths{6};
  const std::vector<int> owners{0};
  const Plan plan = testing::one_wave_plan(comm.size(), {comm.size()}, 1, [](int) { return true; });
  // The layout of the next rank: its ring neighbours are not this rank's.
  const WaveDispatch dispatch(plan, 0, lengths, owners, (comm.rank() + 1) % comm.size(),
                              comm.size());
  const WaveLayout& layout = dispatch.layout();
  std::vector<double> rows(static_cast<std::size_t>(layout.rows * 8 + 1)),
      lse(static_cast<std::size_t>(layout.rows + 1));
  CpAttentionContext ctx;
  ctx.dtype = kernels::DType::F64;
  ctx.shape = {1, 1, 8, 0.0, true};
  ctx.layout = &layout;
  ctx.world = &comm;
  try {
    cp_attention_forward(ctx, rows.data(), rows.data(), rows.data(), rows.data(), lse.data());
    ADD_FAILURE() << "a layout of another rank was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("but the layout is world rank"), std::string::npos)
        << e.what();
  }
}

}  // namespace
}  // namespace dhp
