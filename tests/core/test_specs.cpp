// Cluster and model descriptions: presets, parameter counts, validation and JSON I/O.
#include <gtest/gtest.h>

#include <cstdio>
#include <filesystem>

#include "dhp/io.hpp"
#include "expect_error.hpp"

using namespace dhp;

namespace {

bool same(const ClusterSpec& a, const ClusterSpec& b) {
  return a.name == b.name && a.device == b.device && a.num_nodes == b.num_nodes &&
         a.devices_per_node == b.devices_per_node && a.peak_tflops == b.peak_tflops &&
         a.hbm_gbs == b.hbm_gbs && a.mem_capacity_gib == b.mem_capacity_gib &&
         a.mem_reserved_gib == b.mem_reserved_gib &&
         a.intra_node.bandwidth_gbs == b.intra_node.bandwidth_gbs &&
         a.intra_node.latency_us == b.intra_node.latency_us &&
         a.inter_node.bandwidth_gbs == b.inter_node.bandwidth_gbs &&
         a.inter_node.latency_us == b.inter_node.latency_us;
}

bool same(const TransformerSpec& a, const TransformerSpec& b) {
  return a.layers == b.layers && a.hidden == b.hidden && a.heads == b.heads &&
         a.kv_heads == b.kv_heads && a.ffn_hidden == b.ffn_hidden && a.gated_mlp == b.gated_mlp &&
         a.vocab == b.vocab && a.tied_embeddings == b.tied_embeddings;
}

bool same(const ModelSpec& a, const ModelSpec& b) {
  if (a.name != b.name || !same(a.llm, b.llm) || a.encoder.has_value() != b.encoder.has_value())
    return false;
  if (a.encoder) {
    const EncoderSpec &x = *a.encoder, &y = *b.encoder;
    if (!same(x.arch, y.arch) || x.patch_size != y.patch_size ||
        x.tokens_per_llm_token != y.tokens_per_llm_token ||
        x.projector_parameters != y.projector_parameters ||
        x.temporal_patch_size != y.temporal_patch_size ||
        x.attention_tile_patches != y.attention_tile_patches)
      return false;
  }
  const TrainingSetup &s = a.training, &t = b.training;
  return s.recompute == t.recompute && s.zero_stage == t.zero_stage &&
         s.bytes_per_param == t.bytes_per_param && s.bytes_per_grad == t.bytes_per_grad &&
         s.bytes_optimizer_state == t.bytes_optimizer_state &&
         s.bytes_per_activation == t.bytes_per_activation;
}

}  // namespace

TEST(ClusterPresets, EveryPresetValidatesAndRoundTrips) {
  ASSERT_EQ(cluster_preset_names().size(), 5u);
  for (const std::string& name : cluster_preset_names()) {
    const ClusterSpec c = cluster_preset(name);
    EXPECT_EQ(c.name, name);
    EXPECT_NO_THROW(validate(c)) << name;
    EXPECT_TRUE(same(cluster_from_json(to_json(c)), c)) << name;
  }
  EXPECT_EQ(cluster_preset("h100-8").world_size(), 8);
  EXPECT_EQ(cluster_preset("h100-64").world_size(), 64);
  EXPECT_EQ(cluster_preset("h100-1024").world_size(), 1024);
  EXPECT_EQ(cluster_preset("h100-4096").world_size(), 4096);
  const ClusterSpec ascend = cluster_preset("ascend910b-64");
  EXPECT_EQ(ascend.world_size(), 64);
  EXPECT_EQ(ascend.mem_capacity_gib, 64);
  EXPECT_EQ(ascend.node_of(17), 2);
  expect_error([] { cluster_preset("h100-7"); }, ErrorKind::InvalidArgument, {"h100-7", "h100-64"});
}

TEST(ModelPresets, ParameterCountsMatchThePublishedSizes) {
  // Llama 3 70B: 70.55e9 parameters (untied embeddings).
  EXPECT_NEAR(model_preset("llama3-70b").llm.parameters(), 70.55e9, 0.01e9);
  // Qwen2-VL-7B's LLM (Qwen2-7B): 7.07e9 in its blocks + 2 x 152064 x 3584 embeddings,
  // biases left out: 7.61e9 in all.
  EXPECT_NEAR(model_preset("qwen2-vl-7b").llm.parameters(), 7.61e9, 0.01e9);
  // InternLM2.5-7B: 7.74e9.
  EXPECT_NEAR(model_preset("internvl2-8b").llm.parameters(), 7.74e9, 0.01e9);
  // Qwen2-VL's ViT: ~0.63e9; InternViT-300M: ~0.30e9.
  EXPECT_NEAR(model_preset("qwen2-vl-7b").encoder->arch.parameters(), 0.63e9, 0.01e9);
  EXPECT_NEAR(model_preset("internvl2-8b").encoder->arch.parameters(), 0.30e9, 0.01e9);
  // A hand count for the small model: 12 x (4 h^2 + 2 h ffn + 2 h) + h + 2 vocab h.
  const double h = 2048;
  EXPECT_DOUBLE_EQ(model_preset("megatron-dcp-1b").llm.parameters(),
                   12 * (4 * h * h + 2 * h * 8192 + 2 * h) + h + 2 * 32000 * h);
}

TEST(ModelPresets, EveryPresetValidatesAndRoundTrips) {
  ASSERT_EQ(model_preset_names().size(), 5u);
  for (const std::string& name : model_preset_names()) {
    const ModelSpec m = model_preset(name);
    EXPECT_EQ(m.name, name);
    EXPECT_NO_THROW(validate(m)) << name;
    EXPECT_TRUE(same(model_from_json(to_json(m)), m)) << name;
  }
  EXPECT_FALSE(model_preset("llama3-70b").encoder.has_value());
  EXPECT_TRUE(model_preset("qwen2-vl-2b").encoder.has_value());
  expect_error([] { model_preset("gpt-5"); }, ErrorKind::InvalidArgument, {"gpt-5", "qwen2-vl-7b"});
}

TEST(ModelValidation, NamesTheFieldAndValue) {
  ModelSpec m = model_preset("qwen2-vl-7b");
  m.llm.kv_heads = 5;
  expect_error([&] { validate(m); }, ErrorKind::InvalidInput, {"llm.heads=28", "kv_heads=5"});
  m = model_preset("qwen2-vl-7b");
  m.encoder->arch.hidden = 1000;
  expect_error([&] { validate(m); }, ErrorKind::InvalidInput, {"encoder.hidden=1000"});
  m = model_preset("llama3-70b");
  m.training.zero_stage = 3;
  expect_error([&] { validate(m); }, ErrorKind::InvalidInput, {"zero_stage=3"});
  ClusterSpec c = cluster_preset("h100-64");
  c.mem_reserved_gib = 90;
  expect_error([&] { validate(c); }, ErrorKind::InvalidInput, {"mem_reserved_gib=90"});
}

TEST(ClusterJson, PresetWithOverrides) {
  const ClusterSpec c = cluster_from_json(
      R"({"preset": "h100-64", "num_nodes": 2, "inter_node": {"bandwidth_gbs": 25}})");
  EXPECT_EQ(c.world_size(), 16);
  EXPECT_EQ(c.inter_node.bandwidth_gbs, 25);
  EXPECT_EQ(c.inter_node.latency_us, cluster_preset("h100-64").inter_node.latency_us);
  EXPECT_EQ(c.name, "h100-64");
}

TEST(ClusterJson, BadInputsNameThePath) {
  expect_error([] { cluster_from_json(R"({"name": "x", "num_nodes": 2)"); },
               ErrorKind::InvalidInput, {"malformed", "byte"});
  // A number beyond a double's range is nlohmann's out_of_range, not a parse_error.
  expect_error([] { cluster_from_json(R"({"preset": "h100-8", "num_nodes": 1e400})"); },
               ErrorKind::InvalidInput, {"malformed", "overflow"});
  expect_error([] { cluster_from_json(R"({"name": "x", "num_nodes": 2})"); },
               ErrorKind::InvalidInput, {"devices_per_node"});
  expect_error([] { cluster_from_json(R"({"preset": "h100-9"})"); }, ErrorKind::InvalidInput,
               {"preset", "h100-9"});
  expect_error([] { cluster_from_json(R"({"preset": "h100-8", "num_nodes": "two"})"); },
               ErrorKind::InvalidInput, {"num_nodes", "\"two\""});
  expect_error([] { cluster_from_json(R"({"preset": "h100-8", "num_nodes": 0})"); },
               ErrorKind::InvalidInput, {"num_nodes=0"});
  expect_error(
      [] { cluster_from_json(R"({"preset": "h100-8", "intra_node": {"latency_us": -1}})"); },
      ErrorKind::InvalidInput, {"intra_node.latency_us=-1"});
  expect_error([] { cluster_from_json(R"({"preset": "h100-8", "num_node": 3})"); },
               ErrorKind::InvalidInput, {"num_node", "unknown"});
}

TEST(ModelJson, CustomModelAndPresetOverrides) {
  const ModelSpec m = model_from_json(R"({
    "name": "tiny", "llm": {"layers": 2, "hidden": 64, "heads": 4, "ffn_hidden": 128, "vocab": 100},
    "training": {"recompute": "full", "zero_stage": 2}})");
  EXPECT_EQ(m.llm.kv_heads, 4);  // defaults to heads
  EXPECT_FALSE(m.encoder.has_value());
  EXPECT_EQ(m.training.recompute, Recompute::Full);
  EXPECT_EQ(m.training.zero_stage, 2);
  EXPECT_FALSE(m.llm.tied_embeddings);
  // A shared output layer counts the vocabulary's weights once.
  ModelSpec tied = model_from_json(
      R"({"name": "tied", "llm": {"layers": 2, "hidden": 64, "heads": 4, "ffn_hidden": 128,
          "vocab": 100, "tied_embeddings": true}})");
  EXPECT_TRUE(tied.llm.tied_embeddings);
  EXPECT_DOUBLE_EQ(m.llm.parameters() - tied.llm.parameters(), 100.0 * 64);
  EXPECT_TRUE(same(model_from_json(to_json(tied)), tied));

  const ModelSpec text_only = model_from_json(R"({"preset": "qwen2-vl-7b", "encoder": null})");
  EXPECT_FALSE(text_only.encoder.has_value());
  EXPECT_EQ(text_only.llm.layers, 28);
  const ModelSpec shallow =
      model_from_json(R"({"preset": "qwen2-vl-7b", "encoder": {"layers": 8}})");
  EXPECT_EQ(shallow.encoder->arch.layers, 8);
  EXPECT_EQ(shallow.encoder->arch.hidden, 1280);
  // What the ViT's attention spans: Qwen2-VL 2-frame slices, InternViT 1024-patch tiles.
  EXPECT_EQ(shallow.encoder->temporal_patch_size, 2);
  EXPECT_EQ(shallow.encoder->attention_tile_patches, 0);
  EXPECT_EQ(model_preset("internvl2-8b").encoder->attention_tile_patches, 1024);
  const ModelSpec whole_clip = model_from_json(
      R"({"preset": "qwen2-vl-7b", "encoder": {"temporal_patch_size": 0, "attention_tile_patches": 256}})");
  EXPECT_EQ(whole_clip.encoder->temporal_patch_size, 0);
  EXPECT_EQ(whole_clip.encoder->attention_tile_patches, 256);
}

TEST(ModelJson, BadInputsNameThePath) {
  expect_error([] { model_from_json(R"({"name": "x", "llm": {"layers": 2}})"); },
               ErrorKind::InvalidInput, {"llm.hidden"});
  expect_error(
      [] { model_from_json(R"({"preset": "qwen2-vl-7b", "training": {"recompute": "some"}})"); },
      ErrorKind::InvalidInput, {"training.recompute", "some", "none|selective|full"});
  expect_error([] { model_from_json(R"({"preset": "qwen2-vl-7b", "llm": {"kv_heads": 3}})"); },
               ErrorKind::InvalidInput, {"kv_heads=3"});
  expect_error([] { model_from_json(R"({"preset": "qwen2-vl-7b", "llm": {"layers": 2.5}})"); },
               ErrorKind::InvalidInput, {"llm.layers", "integer"});
}

TEST(LoadSpecs, PresetNameOrFile) {
  EXPECT_EQ(load_cluster("h100-1024").world_size(), 1024);
  EXPECT_EQ(load_model("llama3-70b").llm.layers, 80);
  const std::string path =
      (std::filesystem::temp_directory_path() / "dhp_test_specs_cluster.json").string();
  write_text_file(path, R"({"preset": "ascend910b-64", "mem_reserved_gib": 4})");
  EXPECT_EQ(load_cluster(path).mem_reserved_gib, 4);
  write_text_file(path, R"({"preset": "ascend910b-64", "mem_reserved_gib": -4})");
  expect_error([&] { load_cluster(path); }, ErrorKind::InvalidInput, {path, "mem_reserved_gib=-4"});
  std::remove(path.c_str());
  expect_error([] { load_model("no-such-model"); }, ErrorKind::InvalidArgument,
               {"no-such-model", "llama3-70b"});
}

TEST(Examples, ShippedJsonFilesParse) {
  const std::string dir = std::string(DHP_SOURCE_DIR) + "/examples/";
  EXPECT_EQ(load_cluster(dir + "cluster.json").world_size(), 16);
  EXPECT_TRUE(load_model(dir + "model.json").encoder.has_value());
  const auto batches = batches_from_json(read_text_file(dir + "batches.json"));
  EXPECT_EQ(batches.size(), 2u);
}

TEST(Examples, ShippedPlanParsesAndHashesLikeItsSource) {
  const std::string dir = std::string(DHP_SOURCE_DIR) + "/examples/";
  const Plan plan = plan_from_json(read_text_file(dir + "plan.json"));
  EXPECT_EQ(plan.waves.size(), 2u);
  EXPECT_EQ(plan.encoder_tasks.size(), 3u);
  EXPECT_EQ(plan.estimate.peak_mem_gib.size(), 4u);
  EXPECT_EQ(plan_from_json(to_json(plan)).estimate.step_ms, 12.5);
}
