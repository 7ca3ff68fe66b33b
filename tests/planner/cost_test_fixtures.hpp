// Hand-built cluster and model descriptions for the cost-model, calibration, simulator and
// picture tests (independent of the presets, with the real published numbers).
#pragma once

#include "dhp/cluster.hpp"
#include "dhp/model.hpp"

namespace dhp::testing {

// DGX H100 nodes: 8 GPUs, NVLink inside a node, one 400 Gb/s NIC per GPU between nodes.
inline ClusterSpec h100_cluster(int nodes) {
  ClusterSpec c;
  c.name = "test-h100";
  c.device = "H100";
  c.num_nodes = nodes;
  c.devices_per_node = 8;
  c.peak_tflops = 989;
  c.mem_capacity_gib = 80;
  c.mem_reserved_gib = 6;
  c.intra_node = {450, 3};
  c.inter_node = {50, 8};
  return c;
}

// Qwen2-VL-7B: LLM 28 layers, hidden 3584, 28 heads, 4 kv heads, SwiGLU 18944, vocab 152064;
// ViT 32 layers, hidden 1280, 16 heads, MLP 5120 (two matrices), 2x2 patch merge.
inline ModelSpec qwen2_vl_7b_by_hand() {
  ModelSpec m;
  m.name = "qwen2-vl-7b";
  m.llm = {.layers = 28,
           .hidden = 3584,
           .heads = 28,
           .kv_heads = 4,
           .ffn_hidden = 18944,
           .gated_mlp = true,
           .vocab = 152064};
  EncoderSpec e;
  e.arch = {.layers = 32,
            .hidden = 1280,
            .heads = 16,
            .kv_heads = 16,
            .ffn_hidden = 5120,
            .gated_mlp = false,
            .vocab = 0};
  e.patch_size = 14;
  e.tokens_per_llm_token = 4;
  e.projector_parameters = 5120.0 * 5120 + 5120.0 * 3584;
  m.encoder = e;
  return m;
}

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
