// dhp_megatron_study: where the simulator stands against Megatron's published dynamic-CP
// speedups (megatron-dcp-repro, the benchmark of examples/dynamic_context_parallel as
// published). It plans the scenario's batches with Megatron's baseline (dp_balanced at CP 4)
// and its two dynamic-CP schedulers, and static_balanced's LPT at CP 4, each on its own padded
// batch as dhp_bench does, runs each plan on the simulator and prints one fixed-schema row per
// (gpus, setting, variant): the 10% trimmed mean step (as published), its speedup over
// dp_balanced beside the published one, and the per-batch means of micro-batches, busy time and
// ring steps. It varies one coefficient at a time, to show which cost term moves the ratio.
// docs/benchmarks.md ("Notes on the Megatron reproduction") quotes its rows.
//
//   dhp_megatron_study                                   every scale, default coefficients
//   dhp_megatron_study --gpus 8,32 --rso 200             another ring_step_overhead_us
//
// Variants:
//   dp_balanced       Megatron's baseline: in-order next-fit packs of 2048 x 4 tokens, CP 4
//   megatron_dcp      the default_dynamic_cp scheduler as benchmarked (192cbc3)
//   megatron_dcp_dev  the dev branch's packing-aware scheduler (PR #5154)
//   lpt               static_balanced's drafts at CP 4: LPT on estimated time over DP replicas
#include <fmt/format.h>

#include <algorithm>
#include <climits>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <exception>
#include <iostream>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "dhp/command_line.hpp"
#include "dhp/dataset.hpp"
#include "dhp/error.hpp"
#include "dhp/simulator.hpp"
#include "planner/baselines.hpp"
#include "planner/internal.hpp"
#include "scenarios.hpp"
#include "stats.hpp"

namespace {

using dhp::Batch;
using dhp::detail::WaveDraft;

// What one invocation varies; unset coefficients keep defaults_for(cluster).
struct Setting {
  int sequences_per_gpu = 0;  // 0: the scenario's own (ScenarioConfig::sequences_per_gpu)
  std::optional<double> half_efficiency_tokens;  // --hef
  std::optional<double> ring_step_overhead_us;   // --rso
  std::optional<double> overlap_efficiency;      // --ovl
  std::optional<double> layer_overhead_us;       // --lo
};

struct Options {
  std::vector<int> gpus;  // empty: every scale of the megatron-dcp-repro family
  Setting setting;
  bool json = false;
};

enum class Variant { DpBalanced, MegatronDcp, MegatronDcpDev, Lpt };
constexpr Variant kVariants[] = {Variant::DpBalanced, Variant::MegatronDcp, Variant::MegatronDcpDev,
                                 Variant::Lpt};

const char* variant_name(Variant v) {
  switch (v) {
    case Variant::DpBalanced:
      return "dp_balanced";
    case Variant::MegatronDcp:
      return "megatron_dcp";
    case Variant::MegatronDcpDev:
      return "megatron_dcp_dev";
    case Variant::Lpt:
      return "lpt";
  }
  return "?";
}

// The strategy whose padding (ScenarioData::pad_to) a variant's batches get.
dhp::Strategy padded_as(Variant v) {
  switch (v) {
    case Variant::DpBalanced:
      return dhp::Strategy::MegatronDpBalanced;
    case Variant::MegatronDcp:
      return dhp::Strategy::MegatronDcp;
    case Variant::MegatronDcpDev:
      return dhp::Strategy::MegatronDcpDev;
    case Variant::Lpt:
      return dhp::Strategy::StaticBalanced;
  }
  return dhp::Strategy::StaticBalanced;
}

// One (gpus, setting, variant) result: the step is the 10% trimmed mean over the batches (as
// Megatron's benchmark reports it); the other figures are means over the batches.
struct Row {
  int gpus = 0;
  int sequences_per_gpu = 0;
  double half_efficiency_tokens = 0;
  double ring_step_overhead_us = 0;
  double overlap_efficiency = 0;
  double layer_overhead_us = 0;
  std::string variant;
  double step_ms = 0;
  double speedup = 0;        // dp_balanced's step / this step
  double published = 0;      // Megatron's published speedup of megatron_dcp (its row only)
  double micro_batches = 0;  // waves per batch
  double busy_mean_ms = 0;   // per-device busy time (compute + exposed comm), mean
  double busy_max_ms = 0;    // ... its maximum over devices
  double ring_groups = 0;    // groups of degree > 1 per batch, over all waves
};

// --- one scale ----------------------------------------------------------------------

std::vector<Row> run_scale(int gpus, const Setting& setting) {
  dhp::bench::ScenarioConfig config;  // 20 batches, seed 1, as dhp_bench --seed 1
  config.sequences_per_gpu = setting.sequences_per_gpu;
  const auto scenarios = dhp::bench::find_scenarios(fmt::format("megatron-dcp-repro-{}", gpus));
  const dhp::bench::ScenarioData data =
      scenarios.front()->build(config, scenarios.front()->parameter);
  const dhp::ClusterSpec& cluster = data.clusters.front();
  const auto fixed = data.fixed_layouts.find(dhp::Strategy::MegatronDpBalanced);
  DHP_CHECK(fixed != data.fixed_layouts.end(), Internal,
            "megatron-dcp-repro-{} names no static layout", gpus);
  const int cp = fixed->second.cp;

  dhp::PlannerOptions options = data.options;
  if (setting.half_efficiency_tokens)
    options.coefficients.half_efficiency_tokens = *setting.half_efficiency_tokens;
  if (setting.ring_step_overhead_us)
    options.coefficients.ring_step_overhead_us = *setting.ring_step_overhead_us;
  if (setting.overlap_efficiency)
    options.coefficients.overlap_efficiency = *setting.overlap_efficiency;
  if (setting.layer_overhead_us)
    options.coefficients.layer_overhead_us = *setting.layer_overhead_us;
  options.coefficients_set = true;
  const std::int64_t max_tokens_per_rank = options.max_tokens_per_rank;

  const auto layout = dhp::detail::resolve_layout(cluster, data.model, options);
  const auto cost = dhp::detail::make_cost_model(cluster, data.model, layout, options);
  // The simulator runs on the same coefficients as the planner's estimate.
  const dhp::Simulator simulator(cost);

  std::vector<Row> rows;
  for (Variant variant : kVariants) {
    Row row;
    row.gpus = gpus;
    row.sequences_per_gpu = static_cast<int>(data.batches.front().samples.size()) / gpus;
    row.half_efficiency_tokens = cost.coefficients().half_efficiency_tokens;
    row.ring_step_overhead_us = cost.coefficients().ring_step_overhead_us;
    row.overlap_efficiency = cost.coefficients().overlap_efficiency;
    row.layer_overhead_us = cost.coefficients().layer_overhead_us;
    row.variant = variant_name(variant);
    const auto pad = data.pad_to.find(padded_as(variant));
    std::vector<double> steps;
    for (const Batch& unpadded : data.batches) {
      Batch batch = unpadded;
      if (pad != data.pad_to.end())
        for (dhp::Sample& s : batch.samples)
          s.text_tokens += (pad->second - s.llm_tokens() % pad->second) % pad->second;
      std::vector<WaveDraft> waves;
      switch (variant) {
        case Variant::DpBalanced:
          waves =
              dhp::detail::megatron_dp_balanced_waves(batch, cost, layout, cp, max_tokens_per_rank);
          break;
        case Variant::MegatronDcp:
          waves = dhp::detail::megatron_dcp_waves(batch, cost, layout, options);
          break;
        case Variant::MegatronDcpDev:
          waves = dhp::detail::megatron_dcp_dev_waves(batch, cost, layout, options);
          break;
        case Variant::Lpt:
          waves = dhp::detail::static_balanced_waves(
              batch, cost, layout, cp, dhp::detail::llm_activation_budget(cost, layout, batch),
              max_tokens_per_rank);
          break;
      }
      const dhp::Plan plan = dhp::detail::build_plan(row.variant, batch, cost, layout, waves);
      const dhp::SimulationResult result = simulator.run(plan, batch);
      DHP_CHECK(!result.device_busy_ms.empty(), Internal, "{} at {} GPUs: no devices simulated",
                row.variant, gpus);
      steps.push_back(result.step_ms);
      row.micro_batches += static_cast<double>(plan.waves.size());
      row.busy_mean_ms += dhp::bench::mean(result.device_busy_ms);
      row.busy_max_ms +=
          *std::max_element(result.device_busy_ms.begin(), result.device_busy_ms.end());
      for (const dhp::WavePlan& wave : plan.waves)
        for (const dhp::GroupPlan& g : wave.groups) row.ring_groups += g.degree() > 1 ? 1 : 0;
    }
    const auto n = static_cast<double>(data.batches.size());
    row.step_ms = dhp::bench::trimmed_mean(steps, 0.1);
    row.micro_batches /= n;
    row.busy_mean_ms /= n;
    row.busy_max_ms /= n;
    row.ring_groups /= n;
    rows.push_back(row);
  }
  for (Row& row : rows) {
    row.speedup = rows.front().step_ms / row.step_ms;
    if (row.variant == "megatron_dcp") row.published = dhp::bench::published_dcp_speedup(gpus);
  }
  return rows;
}

// --- output and arguments -----------------------------------------------------------

void print_table(const std::vector<Row>& rows) {
  fmt::print(
      "{:>4} {:>7} {:>5} {:>5} {:>5} {:>5} {:<17} {:>8} {:>8} {:>9} {:>7} {:>8} {:>8} {:>6}\n",
      "gpus", "seq/gpu", "hef", "rso", "ovl", "lo", "variant", "step_ms", "speedup", "published",
      "mbatch", "busy_ms", "busy_max", "rings");
  for (const Row& r : rows)
    fmt::print(
        "{:>4} {:>7} {:>5g} {:>5g} {:>5g} {:>5g} {:<17} {:>8.2f} {:>8.3f} {:>9} {:>7.2f} {:>8.2f} "
        "{:>8.2f} {:>6.2f}\n",
        r.gpus, r.sequences_per_gpu, r.half_efficiency_tokens, r.ring_step_overhead_us,
        r.overlap_efficiency, r.layer_overhead_us, r.variant, r.step_ms, r.speedup,
        r.published > 0 ? fmt::format("{:.3f}", r.published) : std::string(1, '-'), r.micro_batches,
        r.busy_mean_ms, r.busy_max_ms, r.ring_groups);
}

void print_json(const std::vector<Row>& rows) {
  for (const Row& r : rows) {
    const nlohmann::ordered_json line = {
        {"gpus", r.gpus},
        {"sequences_per_gpu", r.sequences_per_gpu},
        {"half_efficiency_tokens", r.half_efficiency_tokens},
        {"ring_step_overhead_us", r.ring_step_overhead_us},
        {"overlap_efficiency", r.overlap_efficiency},
        {"layer_overhead_us", r.layer_overhead_us},
        {"variant", r.variant},
        {"step_ms", r.step_ms},
        {"speedup", r.speedup},
        {"published",
         r.published > 0 ? nlohmann::ordered_json(r.published) : nlohmann::ordered_json(nullptr)},
        {"micro_batches", r.micro_batches},
        {"busy_mean_ms", r.busy_mean_ms},
        {"busy_max_ms", r.busy_max_ms},
        {"ring_groups", r.ring_groups}};
    std::cout << line.dump() << '\n';
  }
}

void declare_options(dhp::CommandLine& cli) {
  cli.option("--gpus", "LIST", "megatron-dcp-repro scales to run, e.g. 8,32 (default: all five)")
      .option("--per-gpu", "N", "sequences per GPU per batch (default 2, the scenario's)")
      .option("--hef", "TOKENS", "half_efficiency_tokens for planner and simulator")
      .option("--rso", "US", "ring_step_overhead_us for planner and simulator")
      .option("--ovl", "FRACTION", "overlap_efficiency for planner and simulator")
      .option("--lo", "US", "layer_overhead_us for planner and simulator")
      .option("--format", "F", "table (default) or json (one object per line)")
      .note(
          "The coefficients default to the scenario's (defaults_for(cluster), no gradient sync\n"
          "overlap).");
}

Options parse(const dhp::CommandLine& cli) {
  Options options;
  for (std::int64_t gpus : cli.integer_list("--gpus", {}, 1))
    options.gpus.push_back(static_cast<int>(gpus));
  if (cli.has("--per-gpu"))
    options.setting.sequences_per_gpu = static_cast<int>(cli.integer("--per-gpu", 0, 1));
  if (cli.has("--hef")) options.setting.half_efficiency_tokens = cli.real("--hef", 0);
  if (cli.has("--rso")) options.setting.ring_step_overhead_us = cli.real("--rso", 0);
  if (cli.has("--ovl")) options.setting.overlap_efficiency = cli.real("--ovl", 0);
  if (cli.has("--lo")) options.setting.layer_overhead_us = cli.real("--lo", 0);
  options.json = cli.choice("--format", {"table", "json"}, "table") == "json";
  return options;
}

int run(Options options) {
  if (options.gpus.empty())
    for (const dhp::bench::Scenario* scale : dhp::bench::find_scenarios("megatron-dcp-repro"))
      options.gpus.push_back(scale->parameter);
  std::vector<Row> rows;
  for (int gpus : options.gpus) {
    auto scale = run_scale(gpus, options.setting);
    rows.insert(rows.end(), scale.begin(), scale.end());
  }
  if (options.json)
    print_json(rows);
  else
    print_table(rows);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  dhp::CommandLine cli(
      "dhp_megatron_study",
      "  dhp_megatron_study [--gpus 4,8,16,32,64] [--per-gpu N] [--hef TOKENS] "
      "[--rso US]\n                     [--ovl FRACTION] [--lo US] [--format table|json]");
  declare_options(cli);
  return dhp::run_tool(cli, argc, argv, [&] { return run(parse(cli)); });
}
