#include <gtest/gtest.h>

#include <fstream>
#include <random>
#include <sstream>

#include "cost_test_fixtures.hpp"
#include "dhp/cost_model.hpp"
#include "dhp/error.hpp"

namespace dhp {
namespace {

using testing::h100_cluster;
using testing::qwen2_vl_7b;

// Coefficients far from the H100 defaults, to be recovered by the fit.
CostCoefficients hidden_truth() {
  CostCoefficients c;
  c.gemm_efficiency = 0.48;
  c.attention_efficiency = 0.41;
  c.half_efficiency_tokens = 700;
  c.layer_overhead_us = 40;
  c.ring_step_overhead_us = 20;
  c.comm_efficiency = 0.65;
  return c;
}

// Times a CostModel with the hidden coefficients predicts, with 0.5% seeded noise.
std::vector<Measurement> synthetic_measurements(const CostCoefficients& truth) {
  const CostModel cost(h100_cluster(2), qwen2_vl_7b(), 1, 1, truth);
  std::mt19937 rng(20260521);
  std::normal_distribution<double> noise(0.0, 0.005);
  std::vector<Measurement> out;
  auto add = [&](Measurement m, double ms) {
    m.measured_ms = ms * (1.0 + noise(rng));
    out.push_back(m);
  };
  for (std::int64_t tokens : {256, 1024, 4096, 16384, 65536}) {
    for (int degree : {1, 2, 4, 8}) {
      for (bool cross : {false, true}) {
        if (degree == 1 && cross) continue;
        add({.kind = "llm_sequence", .tokens = tokens, .degree = degree, .crosses_nodes = cross},
            cost.llm_sequence_ms(tokens, {degree, cross}));
      }
    }
  }
  for (std::int64_t patches : {256, 1024, 4096, 16384, 65536}) {
    add({.kind = "encoder_item", .tokens = patches / 4, .patches = patches},
        cost.encoder_item_ms({patches, patches / 4, 1}));
  }
  for (double bytes : {1e5, 1e6, 1e7, 1e8}) {
    for (bool cross : {false, true}) {
      add({.kind = "p2p", .crosses_nodes = cross, .bytes = bytes}, cost.p2p_ms(bytes, cross));
    }
  }
  return out;
}

TEST(Calibration, RecoversKnownCoefficients) {
  const CostCoefficients truth = hidden_truth();
  const auto measurements = synthetic_measurements(truth);
  const CalibrationReport report = calibrate(h100_cluster(2), qwen2_vl_7b(), 1, 1, measurements);
  const CostCoefficients& fit = report.coefficients;
  EXPECT_NEAR(fit.gemm_efficiency, truth.gemm_efficiency, 0.03 * truth.gemm_efficiency);
  EXPECT_NEAR(fit.attention_efficiency, truth.attention_efficiency,
              0.03 * truth.attention_efficiency);
  EXPECT_NEAR(fit.half_efficiency_tokens, truth.half_efficiency_tokens,
              0.05 * truth.half_efficiency_tokens);
  EXPECT_NEAR(fit.layer_overhead_us, truth.layer_overhead_us, 0.05 * truth.layer_overhead_us);
  EXPECT_NEAR(fit.ring_step_overhead_us, truth.ring_step_overhead_us,
              0.10 * truth.ring_step_overhead_us);
  EXPECT_NEAR(fit.comm_efficiency, truth.comm_efficiency, 0.03 * truth.comm_efficiency);
  EXPECT_EQ(report.measurements, static_cast<int>(measurements.size()));
  EXPECT_GT(report.mean_abs_rel_error_before, 0.05);
  EXPECT_LT(report.mean_abs_rel_error_after, 0.01);
  EXPECT_LT(report.max_abs_rel_error_after, 0.03);
}

// What a runtime measures: whole ranks in a wave (zigzag shares and whole sequences on a
// ring; encoder parts whole or as ring shards), with the times a model with hidden
// coefficients gives them. The fit recovers the compute coefficients.
TEST(Calibration, RecoversCoefficientsFromWholeRanks) {
  const CostCoefficients truth = hidden_truth();
  const CostModel cost(h100_cluster(2), qwen2_vl_7b(), 1, 1, truth);
  std::mt19937 rng(7);
  std::uniform_int_distribution<std::int64_t> length(64, 20000);
  std::vector<Measurement> ms;
  for (int i = 0; i < 40; ++i) {
    Measurement m{.kind = "llm_rank", .degree = 1 + i % 5};
    for (int k = 0; k < 1 + i % 3; ++k) m.whole_tokens.push_back(length(rng));
    if (m.degree > 1) m.split_tokens = {length(rng) * 4, length(rng)};
    m.measured_ms = cost.llm_rank_ms(m.split_tokens, {m.degree, false}, m.whole_tokens);
    ms.push_back(m);
    Measurement e{.kind = "encoder_rank"};
    const std::int64_t tokens = length(rng) / 4 + 1;
    e.encoder_parts.push_back({{4 * tokens, tokens, 1}, 1});
    e.encoder_parts.push_back({{16 * tokens, 4 * tokens, 1}, 1 + i % 4});
    e.measured_ms = cost.encoder_item_ms(e.encoder_parts[0].item);
    const double shard = i % 4 == 0 ? cost.encoder_item_ms(e.encoder_parts[1].item)
                                    : cost.encoder_shard_ms(e.encoder_parts[1].item,
                                                            {1 + i % 4, false});
    e.measured_ms += shard;
    ms.push_back(e);
  }
  const CalibrationReport report = calibrate(h100_cluster(2), qwen2_vl_7b(), 1, 1, ms);
  EXPECT_NEAR(report.coefficients.gemm_efficiency, truth.gemm_efficiency, 0.03 * truth.gemm_efficiency);
  EXPECT_NEAR(report.coefficients.attention_efficiency, truth.attention_efficiency,
              0.03 * truth.attention_efficiency);
  EXPECT_GT(report.mean_abs_rel_error_before, 0.05);
  EXPECT_LT(report.mean_abs_rel_error_after, 0.01);

  const auto parsed = measurements_from_json(
      R"({"measurements": [{"kind": "llm_rank", "split_tokens": [4096], "whole_tokens": [17, 300],
          "degree": 3, "measured_ms": 2.5},
         {"kind": "encoder_rank", "parts": [{"patches": 64, "llm_tokens": 16, "ring": 2}],
          "measured_ms": 1.5}]})");
  ASSERT_EQ(parsed.size(), 2u);
  EXPECT_EQ(parsed[0].whole_tokens, (std::vector<std::int64_t>{17, 300}));
  EXPECT_EQ(parsed[1].encoder_parts.front().ring, 2);
  EXPECT_THROW(measurements_from_json(R"({"measurements": [{"kind": "llm_rank", "measured_ms": 1}]})"),
               Error);
}

TEST(Calibration, OnlyP2pMeasurementsLeaveComputeAtDefaults) {
  std::vector<Measurement> ms;
  const CostCoefficients truth = hidden_truth();
  const CostModel cost(h100_cluster(2), qwen2_vl_7b(), 1, 1, truth);
  for (double bytes : {1e6, 1e7, 1e8})
    ms.push_back({.kind = "p2p",
                  .crosses_nodes = true,
                  .bytes = bytes,
                  .measured_ms = cost.p2p_ms(bytes, true)});
  const CalibrationReport report = calibrate(h100_cluster(2), qwen2_vl_7b(), 1, 1, ms);
  EXPECT_NEAR(report.coefficients.comm_efficiency, truth.comm_efficiency, 1e-6);
  EXPECT_DOUBLE_EQ(report.coefficients.gemm_efficiency,
                   defaults_for(h100_cluster(2)).gemm_efficiency);
}

TEST(Calibration, ParsesTheDocumentedSchema) {
  const auto ms = measurements_from_json(R"({
    "device": "H100",
    "measurements": [
      {"kind": "llm_sequence", "tokens": 4096, "degree": 2, "crosses_nodes": true, "measured_ms": 310.5},
      {"kind": "encoder_item", "patches": 1024, "llm_tokens": 256, "measured_ms": 12.0},
      {"kind": "p2p", "bytes": 1048576, "measured_ms": 0.03}
    ]})");
  ASSERT_EQ(ms.size(), 3u);
  EXPECT_EQ(ms[0].tokens, 4096);
  EXPECT_EQ(ms[0].degree, 2);
  EXPECT_TRUE(ms[0].crosses_nodes);
  EXPECT_EQ(ms[1].patches, 1024);
  EXPECT_EQ(ms[1].tokens, 256);
  EXPECT_DOUBLE_EQ(ms[2].bytes, 1048576);
  EXPECT_FALSE(ms[2].crosses_nodes);
}

TEST(Calibration, BadProfilesAreErrors) {
  EXPECT_THROW(measurements_from_json("{not json"), Error);
  EXPECT_THROW(measurements_from_json(R"({"measurements": [], "scale": 1e999})"), Error);
  EXPECT_THROW(measurements_from_json(R"({"measurements": 3})"), Error);
  EXPECT_THROW(measurements_from_json(R"({"measurements": [{"kind": "gemm", "measured_ms": 1}]})"),
               Error);
  EXPECT_THROW(measurements_from_json(
                   R"({"measurements": [{"kind": "p2p", "bytes": 10, "measured_ms": 0}]})"),
               Error);
  EXPECT_THROW(
      measurements_from_json(R"({"measurements": [{"kind": "llm_sequence", "measured_ms": 1}]})"),
      Error);
  EXPECT_THROW(calibrate(h100_cluster(1), qwen2_vl_7b(), 1, 1, {}), Error);
}

TEST(Calibration, ShippedExampleProfileFits) {
  std::ifstream in(std::string(DHP_SOURCE_DIR) + "/planner/profiles/h100_qwen2vl7b_tp1.json");
  ASSERT_TRUE(in) << "planner/profiles/h100_qwen2vl7b_tp1.json missing";
  std::stringstream text;
  text << in.rdbuf();
  const auto ms = measurements_from_json(text.str());
  ASSERT_GE(ms.size(), 20u);
  // The profile is written by dhp_make_synthetic_profile from these presets.
  const CalibrationReport report =
      calibrate(cluster_preset("h100-64"), model_preset("qwen2-vl-7b"), 1, 1, ms);
  EXPECT_LT(report.mean_abs_rel_error_after, report.mean_abs_rel_error_before);
  EXPECT_LT(report.mean_abs_rel_error_after, 0.03);
}

}  // namespace
}  // namespace dhp
