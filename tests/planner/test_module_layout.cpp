// Module layouts: TP degrees per module and colocated or disjoint ranks (module_layout.cpp).
#include <gtest/gtest.h>

#include <set>

#include "dhp/error.hpp"
#include "dhp/simulator.hpp"
#include "planner/internal.hpp"
#include "planner_test_util.hpp"

namespace dhp {
namespace {

TEST(ResolveLayout, ExplicitTpMustDivideHeads) {
  const ModelSpec model = model_preset("qwen2-vl-7b");
  PlannerOptions options;
  options.llm_tp = 3;
  try {
    detail::resolve_layout(cluster_preset("h100-8"), model, options);
    FAIL() << "tp=3 accepted";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::InvalidArgument);
    EXPECT_NE(std::string(e.what()).find("llm_tp=3"), std::string::npos) << e.what();
  }
}

TEST(ResolveLayout, AutomaticTpDividesHeadsAndNode) {
  const ModelSpec model = model_preset("llama3-70b");
  const auto layout = detail::resolve_layout(cluster_preset("h100-64"), model, {});
  EXPECT_EQ(model.llm.heads % layout.llm_tp, 0);
  EXPECT_EQ(8 % layout.llm_tp, 0);
  EXPECT_EQ(layout.llm.ranks * layout.llm_tp, 64);
  EXPECT_EQ(layout.llm_ranks_per_node, 8 / layout.llm_tp);
}

TEST(ResolveLayout, DisjointPlacesEncoderFirst) {
  PlannerOptions options;
  options.placement = EncoderPlacement::Disjoint;
  options.encoder_devices = 8;
  const auto layout =
      detail::resolve_layout(cluster_preset("h100-64"), model_preset("qwen2-vl-7b"), options);
  EXPECT_EQ(layout.encoder.first_device, 0);
  EXPECT_EQ(layout.encoder.num_devices(), 8);
  EXPECT_EQ(layout.llm.first_device, 8);
  EXPECT_EQ(layout.llm.num_devices(), 56);
  options.encoder_devices = 12;  // not a node multiple
  EXPECT_THROW(
      detail::resolve_layout(cluster_preset("h100-64"), model_preset("qwen2-vl-7b"), options),
      Error);
}

}  // namespace
}  // namespace dhp
