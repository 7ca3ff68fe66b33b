#include "dhp/cluster.hpp"

#include <fmt/ranges.h>

#include "dhp/error.hpp"

namespace dhp {
namespace {

// DGX H100: 8 H100 SXM per node, NVLink 4 (900 GB/s bidirectional = 450 GB/s per
// direction per GPU), one ConnectX-7 400 Gb/s (50 GB/s) InfiniBand NIC per GPU.
ClusterSpec h100_cluster(int num_nodes, std::string name) {
  ClusterSpec c;
  c.name = std::move(name);
  c.device = "H100";
  c.num_nodes = num_nodes;
  c.devices_per_node = 8;
  c.peak_tflops = 989;  // dense bf16, SXM
  c.hbm_gbs = 3350;
  c.mem_capacity_gib = 80;
  c.mem_reserved_gib = 6;
  c.intra_node = {450, 3};
  c.inter_node = {50, 8};
  return c;
}

// The DHP paper's cluster: 8 nodes of 8 Ascend 910B. Public figures (approximate; see
// docs/schemas.md): 376 TFLOP/s fp16 (910B2), 64 GiB HBM2e at ~1.6 TB/s, HCCS full mesh
// inside a node at 56 GB/s per direction per link, one 200 Gb/s RoCE NIC per device.
ClusterSpec ascend_cluster() {
  ClusterSpec c;
  c.name = "ascend910b-64";
  c.device = "Ascend910B";
  c.num_nodes = 8;
  c.devices_per_node = 8;
  c.peak_tflops = 376;
  c.hbm_gbs = 1600;
  c.mem_capacity_gib = 64;
  c.mem_reserved_gib = 6;
  c.intra_node = {56, 5};
  c.inter_node = {25, 10};
  return c;
}

}  // namespace

std::vector<std::string> cluster_preset_names() {
  return {"h100-8", "h100-64", "h100-1024", "h100-4096", "ascend910b-64"};
}

ClusterSpec cluster_preset(std::string_view name) {
  if (name == "h100-8") return h100_cluster(1, "h100-8");
  if (name == "h100-64") return h100_cluster(8, "h100-64");
  if (name == "h100-1024") return h100_cluster(128, "h100-1024");
  if (name == "h100-4096") return h100_cluster(512, "h100-4096");
  if (name == "ascend910b-64") return ascend_cluster();
  DHP_THROW(InvalidArgument, "unknown cluster preset '{}' (known: {})", name,
            fmt::join(cluster_preset_names(), ", "));
}

void validate(const ClusterSpec& c) {
  DHP_CHECK(c.num_nodes >= 1, InvalidInput, "cluster '{}': num_nodes={} must be >= 1", c.name,
            c.num_nodes);
  DHP_CHECK(c.devices_per_node >= 1, InvalidInput, "cluster '{}': devices_per_node={} must be >= 1",
            c.name, c.devices_per_node);
  DHP_CHECK(c.peak_tflops > 0, InvalidInput, "cluster '{}': peak_tflops={} must be > 0", c.name,
            c.peak_tflops);
  DHP_CHECK(c.hbm_gbs > 0, InvalidInput, "cluster '{}': hbm_gbs={} must be > 0", c.name, c.hbm_gbs);
  DHP_CHECK(c.mem_capacity_gib > 0, InvalidInput, "cluster '{}': mem_capacity_gib={} must be > 0",
            c.name, c.mem_capacity_gib);
  DHP_CHECK(c.mem_reserved_gib >= 0 && c.mem_reserved_gib < c.mem_capacity_gib, InvalidInput,
            "cluster '{}': mem_reserved_gib={} must be in [0, mem_capacity_gib={})", c.name,
            c.mem_reserved_gib, c.mem_capacity_gib);
  DHP_CHECK(c.intra_node.bandwidth_gbs > 0, InvalidInput,
            "cluster '{}': intra_node.bandwidth_gbs={} must be > 0", c.name,
            c.intra_node.bandwidth_gbs);
  DHP_CHECK(c.inter_node.bandwidth_gbs > 0, InvalidInput,
            "cluster '{}': inter_node.bandwidth_gbs={} must be > 0", c.name,
            c.inter_node.bandwidth_gbs);
  DHP_CHECK(c.intra_node.latency_us >= 0, InvalidInput,
            "cluster '{}': intra_node.latency_us={} must be >= 0", c.name, c.intra_node.latency_us);
  DHP_CHECK(c.inter_node.latency_us >= 0, InvalidInput,
            "cluster '{}': inter_node.latency_us={} must be >= 0", c.name, c.inter_node.latency_us);
}

}  // namespace dhp
