#include "dhp/cost_model.hpp"

#include <gtest/gtest.h>

#include "cost_test_fixtures.hpp"
#include "dhp/error.hpp"
#include "planner/cost_terms.hpp"

namespace dhp {
namespace {

using testing::h100_cluster;
using testing::qwen2_vl_7b;
using testing::tiny_model;

TEST(CostModel, FlopsOfTinyModelByHand) {
  const CostModel cost(h100_cluster(1), tiny_model(), 1, 1);
  // Per token per layer: qkv 2*8*(8 + 2*1*4) = 256, o 2*64 = 128, mlp 2*3*8*16 = 768
  // -> 1152; two layers 2304; output layer 2*8*10 = 160. 5 tokens: 5 * 2464.
  EXPECT_DOUBLE_EQ(cost.llm_linear_flops(5), 5.0 * 2464.0);
  // Causal attention: layers * 2 * 2 * h * L^2 / 2 = 2 * 4 * 8 * 100 / 2 for L = 10.
  EXPECT_DOUBLE_EQ(cost.llm_attention_flops(10), 3200.0);
  EXPECT_DOUBLE_EQ(cost.llm_layer_qkv_flops(1) + cost.llm_layer_post_flops(1), 1152.0);
}

TEST(CostModel, EfficiencyRisesWithPieceSize) {
  const CostModel cost(h100_cluster(1), qwen2_vl_7b(), 1, 1);
  const auto& c = cost.coefficients();
  EXPECT_NEAR(cost.gemm_efficiency(c.half_efficiency_tokens), c.gemm_efficiency / 2, 1e-12);
  double previous = 0;
  for (double n : {16.0, 128.0, 1024.0, 8192.0, 65536.0}) {
    const double e = cost.attention_efficiency(n);
    EXPECT_GT(e, previous);
    EXPECT_LT(e, c.attention_efficiency);
    previous = e;
  }
}

TEST(CostModel, LongSequencesGetFasterWithRingDegree) {
  const CostModel cost(h100_cluster(2), qwen2_vl_7b(), 1, 1);
  const std::int64_t tokens = 64 * 1024;
  double previous = cost.llm_sequence_ms(tokens, {1, false});
  for (int d = 2; d <= 16; ++d) {
    const double t = cost.llm_sequence_ms(tokens, {d, d > 8});
    EXPECT_LT(t, previous) << "degree " << d;
    previous = t;
  }
}

TEST(CostModel, ShortSequencesAreSlowerSplit) {
  const CostModel cost(h100_cluster(1), qwen2_vl_7b(), 1, 1);
  const double whole = cost.llm_sequence_ms(32, {1, false});
  for (int d : {2, 3, 4, 8}) EXPECT_GT(cost.llm_sequence_ms(32, {d, false}), whole) << d;
}

TEST(CostModel, CrossingNodesIsSlower) {
  const CostModel cost(h100_cluster(2), qwen2_vl_7b(), 1, 1);
  EXPECT_GT(cost.p2p_ms(1e6, true), cost.p2p_ms(1e6, false));
  EXPECT_GT(cost.allreduce_ms(1e8, 16, true), cost.allreduce_ms(1e8, 16, false));
  EXPECT_GT(cost.llm_sequence_ms(8192, {4, true}), cost.llm_sequence_ms(8192, {4, false}));
  // Alpha-beta by hand: 8 us + 1e6 B / (50 GB/s * 0.8).
  EXPECT_NEAR(cost.p2p_ms(1e6, true), 0.008 + 1e6 / (50e9 * 0.8) * 1e3, 1e-12);
}

TEST(CostModel, WholeSequenceTimeMatchesHandFormula) {
  const CostModel cost(h100_cluster(1), qwen2_vl_7b(), 1, 1);
  const auto& c = cost.coefficients();
  const double n = 4096;
  const double flops_per_ms = 989e9;
  const double gemm = 3 * cost.llm_linear_flops(4096) /
                      (flops_per_ms * c.gemm_efficiency * n / (n + c.half_efficiency_tokens));
  const double attention =
      3 * cost.llm_attention_flops(4096) /
      (flops_per_ms * c.attention_efficiency * n / (n + c.half_efficiency_tokens));
  const double overhead = 28 * 2 * c.layer_overhead_us / 1e3;  // selective: fwd + bwd launches
  EXPECT_NEAR(cost.llm_sequence_ms(4096, {1, false}), gemm + attention + overhead, 1e-9);
}

// A rank runs all its local tokens packed through each linear layer once: one efficiency
// for the pack, one launch per layer and pass; attention stays per sequence.
TEST(CostModel, PackedRankMatchesHandFormula) {
  const CostModel cost(h100_cluster(1), qwen2_vl_7b(), 1, 1);
  const auto& c = cost.coefficients();
  const double flops_per_ms = 989e9;
  const std::int64_t a = 1000, b = 3000;
  const double n = a + b;
  const double gemm = 3 * cost.llm_linear_flops(a + b) /
                      (flops_per_ms * c.gemm_efficiency * n / (n + c.half_efficiency_tokens));
  auto attention = [&](double len) {
    return 3 * cost.llm_attention_flops(static_cast<std::int64_t>(len)) /
           (flops_per_ms * c.attention_efficiency * len / (len + c.half_efficiency_tokens));
  };
  const double overhead = 28 * 2 * c.layer_overhead_us / 1e3;
  const std::int64_t whole[] = {a, b};
  EXPECT_NEAR(cost.llm_rank_ms({}, {1, false}, whole),
              gemm + attention(a) + attention(b) + overhead, 1e-9);
}

TEST(CostModel, PackingPaysTheFixedPartOnce) {
  const CostModel cost(h100_cluster(1), qwen2_vl_7b(), 2, 1);
  const std::int64_t whole[] = {300, 2000, 9000};
  double separate = 0;
  for (std::int64_t t : whole) separate += cost.llm_sequence_ms(t, {1, false});
  const double packed = cost.llm_rank_ms({}, {1, false}, whole);
  EXPECT_LT(packed, separate);
  // Marginal costs are additive over whole sequences: the packer relies on it.
  EXPECT_NEAR(separate - packed, 2 * cost.llm_rank_fixed_ms(), 1e-9 * separate);
  EXPECT_GT(cost.llm_rank_fixed_ms(), 0);
  EXPECT_EQ(cost.llm_rank_ms({}, {1, false}, {}), 0);
}

TEST(CostModel, SinglePieceRankIsTheSequenceTime) {
  const CostModel cost(h100_cluster(2), qwen2_vl_7b(), 1, 1);
  for (std::int64_t tokens : {100, 5000, 70000}) {
    const std::int64_t one[] = {tokens};
    EXPECT_DOUBLE_EQ(cost.llm_rank_ms({}, {1, false}, one),
                     cost.llm_sequence_ms(tokens, {1, false}));
    for (RingSpan ring : {RingSpan{2, false}, RingSpan{12, true}})
      EXPECT_DOUBLE_EQ(cost.llm_rank_ms(one, ring, {}), cost.llm_sequence_ms(tokens, ring));
  }
}

TEST(CostModel, RingMemberWithWholePiecesPacksThemToo) {
  // A ring member that also holds a short sequence whole: the short one rides in the same
  // linear-layer pack (no second launch), so it costs less than alone.
  const CostModel cost(h100_cluster(1), qwen2_vl_7b(), 1, 1);
  const std::int64_t split[] = {60000};
  const std::int64_t whole[] = {500};
  const RingSpan ring{4, false};
  const double both = cost.llm_rank_ms(split, ring, whole);
  EXPECT_GT(both, cost.llm_rank_ms(split, ring, {}));
  EXPECT_LT(both, cost.llm_rank_ms(split, ring, {}) + cost.llm_sequence_ms(500, {1, false}));
}

TEST(CostModel, MemoryByHand) {
  ModelSpec model = qwen2_vl_7b();
  const CostModel cost(h100_cluster(1), model, 2, 1);
  const double params = model.llm.parameters();
  // ZeRO-1 over 8 replicas, TP 2: params/2 * (2 + 4 + 12/8).
  EXPECT_DOUBLE_EQ(cost.llm_static_bytes(8), params / 2 * (2 + 4 + 12.0 / 8));
  // Selective recompute: 34 s h per layer + fp32 logits, over TP; no ring buffers at d = 1.
  const double h = 3584;
  const double whole = (1000 * 34 * h * 28 + 1000 * 152064 * 4.0) / 2;
  EXPECT_DOUBLE_EQ(cost.llm_activation_bytes(1000, 1), whole);
  // d = 4: a quarter of the tokens plus two KV blocks of 250 tokens (4 kv heads x 128).
  const double kv_block = 250 * 2 * 4 * 128 * 2.0 / 2;
  EXPECT_DOUBLE_EQ(cost.llm_activation_bytes(1000, 4), whole / 4 + 2 * kv_block);
  EXPECT_DOUBLE_EQ(cost.capacity_bytes(), 74.0 * 1024 * 1024 * 1024);

  model.training.recompute = Recompute::None;
  const CostModel no_recompute(h100_cluster(1), model, 1, 1);
  const double per_layer = 1000 * (34 * h + 5 * 28 * 1000.0);
  EXPECT_DOUBLE_EQ(no_recompute.llm_activation_bytes(1000, 1),
                   per_layer * 28 + 1000 * 152064 * 4.0);
}

TEST(CostModel, GradSyncShrinksWithOverlapAndGrowsAcrossNodes) {
  const CostModel cost(h100_cluster(8), qwen2_vl_7b(), 1, 1);
  EXPECT_EQ(cost.grad_sync_ms(1, 1), 0.0);
  EXPECT_GT(cost.grad_sync_ms(64, 64), cost.grad_sync_ms(8, 8));
  EXPECT_NEAR(cost.grad_sync_ms(8, 0),
              cost.llm_grad_sync_full_ms(8) * (1 - cost.coefficients().grad_sync_overlap), 1e-9);
}

TEST(CostModel, EncoderItemGrowsQuadraticallyForLongVideos) {
  const CostModel cost(h100_cluster(1), qwen2_vl_7b(), 1, 1);
  const double small = cost.encoder_item_ms({4096, 1024, 1});
  const double large = cost.encoder_item_ms({65536, 16384, 16});
  EXPECT_GT(large, 16 * small);  // superlinear: attention within the item
  EXPECT_GT(cost.boundary_ms(1024, true), cost.boundary_ms(1024, false));
}

TEST(CostModel, EncoderAttentionSpansSlicesAndTiles) {
  EncoderSpec qwen = *qwen2_vl_7b().encoder;  // temporal_patch_size 2, whole images
  const VisualItem clip{9216, 2304, 16};      // 16 frames: 8 slices of 1152 patches
  EXPECT_DOUBLE_EQ(detail::encoder_attention_pairs(qwen, clip), 8.0 * 1152 * 1152);
  const VisualItem image{9216, 2304, 1};
  EXPECT_DOUBLE_EQ(detail::encoder_attention_pairs(qwen, image), 9216.0 * 9216);
  const VisualItem odd_frames{2100, 525, 3};  // 2 slices (2 + 1 frames) of 1050 patches
  EXPECT_DOUBLE_EQ(detail::encoder_attention_pairs(qwen, odd_frames), 2.0 * 1050 * 1050);
  qwen.temporal_patch_size = 0;  // the whole clip as one span
  EXPECT_DOUBLE_EQ(detail::encoder_attention_pairs(qwen, clip), 9216.0 * 9216);
  const EncoderSpec intern = *model_preset("internvl2-8b").encoder;  // 1024-patch tiles
  EXPECT_DOUBLE_EQ(detail::encoder_attention_pairs(intern, VisualItem{4096, 1024, 1}),
                   4.0 * 1024 * 1024);
  EXPECT_DOUBLE_EQ(detail::encoder_attention_pairs(intern, VisualItem{3000, 750, 1}),
                   3.0 * 1000 * 1000);
  // A clip costs less than an image of as many patches: only its attention differs.
  const CostModel cost(h100_cluster(1), qwen2_vl_7b(), 1, 1);
  EXPECT_LT(cost.encoder_item_ms(clip), cost.encoder_item_ms(image));
}

TEST(CostModel, AscendDefaultsAreLower) {
  ClusterSpec ascend = h100_cluster(8);
  ascend.device = "Ascend910B";
  const CostCoefficients a = defaults_for(ascend);
  const CostCoefficients h = defaults_for(h100_cluster(1));
  EXPECT_LT(a.gemm_efficiency, h.gemm_efficiency);
  EXPECT_LT(a.attention_efficiency, h.attention_efficiency);
}

TEST(CostModel, BadArgumentsAreErrors) {
  EXPECT_THROW(CostModel(h100_cluster(1), tiny_model(), 0, 1), Error);
  const CostModel cost(h100_cluster(1), tiny_model(), 1, 1);
  EXPECT_THROW(cost.llm_sequence_ms(0, {1, false}), Error);
  EXPECT_THROW(cost.llm_sequence_ms(10, {0, false}), Error);
  EXPECT_THROW(cost.encoder_item_ms({16, 4, 1}), Error);  // text-only model
}

}  // namespace
}  // namespace dhp
