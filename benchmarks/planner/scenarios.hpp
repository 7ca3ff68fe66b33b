// Benchmark scenarios of dhp_bench: a cluster, a model and a stream of global batches,
// each built from the real length data (data/) or a stated synthetic distribution.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "dhp/batch.hpp"
#include "dhp/cluster.hpp"
#include "dhp/model.hpp"
#include "dhp/planner.hpp"

namespace dhp::bench {

struct ScenarioConfig {
  int batches = 0;  // 0: the scenario's own default
  bool quick = false;
  std::uint64_t seed = 1;
  int sequences_per_gpu = 0;  // megatron-dcp-repro only; 0: kReproSequencesPerGpu
};

// megatron-dcp-repro's sequences per GPU per global batch (Megatron's benchmark setup).
inline constexpr int kReproSequencesPerGpu = 16;

// What a scenario resolves to. Most scenarios run every batch on one cluster; small-exact
// draws a cluster per instance, so each batch names its cluster.
struct ScenarioData {
  ModelSpec model;
  std::vector<ClusterSpec> clusters;
  std::vector<Batch> batches;
  std::vector<int> cluster_of_batch;  // index into clusters, per batch
  PlannerOptions options;             // strategy is set per run
  std::vector<Strategy> strategies;   // which strategies this scenario runs
  // static_balanced's layout when the scenario reproduces a published setup whose CP is
  // fixed by a rule (Megatron: CP sized so the longest sequence fits max tokens per rank);
  // otherwise static_balanced takes the CP of the run-wide static_best layout.
  std::optional<StaticLayout> static_balanced_layout;
  // megatron_dcp's and paper_bfd_dp's module layouts chosen once per run by best_run_layout
  // (it plans a sample of the batches under every layout), as static_best's and
  // static_balanced's are by best_static_layout. Off where a baseline's plan takes seconds
  // and only planner time is measured: there they keep the planner's default layout.
  bool search_baseline_layouts = true;
};

struct Scenario {
  std::string name;
  std::string family;  // --scenario matches the name or the family (megatron-dcp-repro)
  std::string description;
  ScenarioData (*build)(const ScenarioConfig& config, int parameter) = nullptr;
  int parameter = 0;  // e.g. the GPU count of a megatron-dcp-repro scale
};

const std::vector<Scenario>& all_scenarios();

// Scenarios whose name or family equals `name`; throws dhp::Error naming the known ones.
std::vector<const Scenario*> find_scenarios(const std::string& name);

}  // namespace dhp::bench
