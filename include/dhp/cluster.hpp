// The modelled hardware: nodes of identical accelerators, a fast link inside a node and
// a slower one between nodes.
#pragma once

#include <string>
#include <string_view>
#include <vector>

namespace dhp {

struct LinkSpec {
  double bandwidth_gbs = 0;  // GB/s per device, per direction
  double latency_us = 0;     // one message, end to end
};

struct ClusterSpec {
  std::string name;
  std::string device = "H100";  // selects the cost model's analytic defaults
  int num_nodes = 1;
  int devices_per_node = 8;
  double peak_tflops = 989;      // dense bf16/fp16 per device
  double hbm_gbs = 3350;         // device memory bandwidth, GB/s
  double mem_capacity_gib = 80;  // device memory
  double mem_reserved_gib = 6;   // runtime, allocator fragmentation, NCCL buffers
  LinkSpec intra_node{450, 3};   // NVLink
  LinkSpec inter_node{50, 8};    // one 400 Gb/s NIC per device

  int world_size() const { return num_nodes * devices_per_node; }
  int node_of(int device) const { return device / devices_per_node; }
};

// Presets: "h100-8", "h100-64", "h100-1024", "h100-4096" (DGX H100 nodes of 8, NVLink
// inside a node, 8x400 Gb/s InfiniBand between nodes) and "ascend910b-64" (the DHP paper's
// 8 nodes of 8 Ascend 910B). Throws dhp::Error naming the known presets otherwise.
ClusterSpec cluster_preset(std::string_view name);
std::vector<std::string> cluster_preset_names();

// Throws dhp::Error (InvalidInput) when a field is out of range, naming the field and value.
void validate(const ClusterSpec& cluster);

}  // namespace dhp
