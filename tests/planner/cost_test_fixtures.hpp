// Cluster and model descriptions for the cost-model, calibration, simulator and picture
// tests: the presets, plus a tiny model whose flop counts are easy to do by hand.
#pragma once

#include "dhp/cluster.hpp"
#include "dhp/model.hpp"

namespace dhp::testing {

// DGX H100 nodes of 8 (the preset's numbers), `nodes` of them.
inline ClusterSpec h100_cluster(int nodes) {
  ClusterSpec c = cluster_preset("h100-8");
  c.name = "test-h100";
  c.num_nodes = nodes;
  return c;
}

// Qwen2-VL-7B as the preset describes it (the preset's numbers are checked against the
// published configuration in tests/core).
inline ModelSpec qwen2_vl_7b() { return model_preset("qwen2-vl-7b"); }

// A tiny text model whose flop counts are easy to do by hand.
inline ModelSpec tiny_model() {
  ModelSpec m;
  m.name = "tiny";
  m.llm = {.layers = 2,
           .hidden = 8,
           .heads = 2,
           .kv_heads = 1,
           .ffn_hidden = 16,
           .gated_mlp = true,
           .vocab = 10};
  return m;
}

}  // namespace dhp::testing
