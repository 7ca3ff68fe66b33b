// dhp_megatron_study: why megatron_dcp beats static_balanced on the megatron-dcp-repro
// scenarios by less than Megatron's published 1.21-1.50x. It plans the scenario's batches
// with megatron_dcp and four static packings (all CP 4 and 2048 tokens per rank), runs each
// plan on the simulator and prints one fixed-schema row per (gpus, setting, variant).
// docs/benchmarks.md ("Notes on the Megatron reproduction") quotes its rows.
//
//   dhp_megatron_study                                   every scale, default coefficients
//   dhp_megatron_study --gpus 8,32 --per-gpu 4           fewer sequences per GPU
//   dhp_megatron_study --gpus 8,32 --rso 200             another ring_step_overhead_us
//
// Variants (the static ones dealing micro-batch i of every DP replica into wave i):
//   megatron_dcp  the megatron_dcp baseline's drafts
//   lpt           static_balanced's drafts: LPT on estimated time over the DP replicas
//   contig        each replica takes a contiguous slice of the batch in data order and
//                 packs it next-fit (plain packed data loading, no balancing)
//   rr-ffd        sequences dealt round-robin, first-fit decreasing within each replica
//   glob-ffd      first-fit decreasing over the whole batch, bins dealt round-robin
//                 (token-balanced, not work-balanced)
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
};

struct Options {
  std::vector<int> gpus;  // empty: every scale of the megatron-dcp-repro family
  Setting setting;
  bool json = false;
};

enum class Variant { MegatronDcp, Lpt, Contig, RoundRobinFfd, GlobalFfd };
constexpr Variant kVariants[] = {Variant::MegatronDcp, Variant::Lpt, Variant::Contig,
                                 Variant::RoundRobinFfd, Variant::GlobalFfd};

const char* variant_name(Variant v) {
  switch (v) {
    case Variant::MegatronDcp:
      return "megatron_dcp";
    case Variant::Lpt:
      return "lpt";
    case Variant::Contig:
      return "contig";
    case Variant::RoundRobinFfd:
      return "rr-ffd";
    case Variant::GlobalFfd:
      return "glob-ffd";
  }
  return "?";
}

// One (gpus, setting, variant) result: the step is the nearest-rank median over the
// batches (as dhp_bench reports it); the other figures are means over the batches.
struct Row {
  int gpus = 0;
  int sequences_per_gpu = 0;
  double half_efficiency_tokens = 0;
  double ring_step_overhead_us = 0;
  double overlap_efficiency = 0;
  std::string variant;
  double step_ms = 0;
  double step_vs_dcp = 0;     // this step / megatron_dcp's step ("megatron_dcp over this")
  double micro_batches = 0;   // waves per batch
  double fill = 0;            // batch tokens per rank per micro-batch / max_tokens_per_rank
  double busy_mean_ms = 0;    // per-device busy time (compute + exposed comm), mean
  double busy_max_ms = 0;     // ... its maximum over devices
  double busy_spread_ms = 0;  // max - mean: the plan's imbalance
  double busy_vs_dcp = 0;     // busy_mean_ms / megatron_dcp's: the work ratio
  double us_per_token = 0;    // device busy time per batch token on that device
};

// --- the static packings -------------------------------------------------------------

// Tokens a sample puts on each rank of a CP group of `cp`.
std::int64_t tokens_per_rank(const Batch& batch, int sample, int cp) {
  return (batch.samples[sample].llm_tokens() + cp - 1) / cp;
}

enum class Packing { NextFitInOrder, FirstFitDecreasing };

// Packs `samples` into micro-batches of at most `max_tokens_per_rank` tokens per rank.
// Next-fit keeps the data order and only ever fills the last micro-batch (a data loader's
// packing); first-fit decreasing places the longest first, each into the first with room.
std::vector<std::vector<int>> pack(const Batch& batch, std::vector<int> samples, int cp,
                                   std::int64_t max_tokens_per_rank, Packing packing) {
  if (packing == Packing::FirstFitDecreasing) {
    std::stable_sort(samples.begin(), samples.end(), [&](int a, int b) {
      return tokens_per_rank(batch, a, cp) > tokens_per_rank(batch, b, cp);
    });
  }
  std::vector<std::vector<int>> micro_batches;
  std::vector<std::int64_t> load;  // tokens per rank, per micro-batch
  for (int sample : samples) {
    const std::int64_t tokens = tokens_per_rank(batch, sample, cp);
    std::optional<std::size_t> target;
    if (packing == Packing::FirstFitDecreasing) {
      for (std::size_t i = 0; i < micro_batches.size() && !target; ++i)
        if (load[i] + tokens <= max_tokens_per_rank) target = i;
    } else if (!micro_batches.empty() && load.back() + tokens <= max_tokens_per_rank) {
      target = micro_batches.size() - 1;
    }
    if (!target) {
      micro_batches.emplace_back();
      load.push_back(0);
      target = micro_batches.size() - 1;
    }
    micro_batches[*target].push_back(sample);
    load[*target] += tokens;
  }
  return micro_batches;
}

// Each DP replica gets its share of the batch (a contiguous slice in data order, or every
// dp-th sequence) and packs it alone; micro-batch i of every replica runs in wave i.
std::vector<WaveDraft> per_replica_waves(const Batch& batch, int ranks, int cp,
                                         std::int64_t max_tokens_per_rank, bool contiguous,
                                         Packing packing) {
  const int dp = ranks / cp;
  const auto n = static_cast<std::int64_t>(batch.samples.size());
  std::vector<std::vector<int>> replica_samples(dp);
  for (int s = 0; s < n; ++s) {
    const auto replica = contiguous ? static_cast<int>(s * dp / n) : s % dp;
    replica_samples[replica].push_back(s);
  }
  std::vector<WaveDraft> waves;
  for (const auto& samples : replica_samples) {
    const auto micro_batches = pack(batch, samples, cp, max_tokens_per_rank, packing);
    if (waves.size() < micro_batches.size()) waves.resize(micro_batches.size());
    for (std::size_t i = 0; i < micro_batches.size(); ++i)
      waves[i].groups.push_back(dhp::detail::split_group(cp, micro_batches[i]));
  }
  return waves;
}

// One packing of the whole batch; bin i goes to replica i % dp of wave i / dp.
std::vector<WaveDraft> global_waves(const Batch& batch, int ranks, int cp,
                                    std::int64_t max_tokens_per_rank, Packing packing) {
  const int dp = ranks / cp;
  std::vector<int> all(batch.samples.size());
  for (std::size_t s = 0; s < all.size(); ++s) all[s] = static_cast<int>(s);
  const auto bins = pack(batch, all, cp, max_tokens_per_rank, packing);
  std::vector<WaveDraft> waves((bins.size() + dp - 1) / dp);
  for (std::size_t i = 0; i < bins.size(); ++i)
    waves[i / dp].groups.push_back(dhp::detail::split_group(cp, bins[i]));
  return waves;
}

// --- one scale ----------------------------------------------------------------------

std::vector<Row> run_scale(int gpus, const Setting& setting) {
  dhp::bench::ScenarioConfig config;  // 12 batches, seed 1, as dhp_bench --seed 1
  config.sequences_per_gpu = setting.sequences_per_gpu;
  const auto scenarios = dhp::bench::find_scenarios(fmt::format("megatron-dcp-repro-{}", gpus));
  const dhp::bench::ScenarioData data =
      scenarios.front()->build(config, scenarios.front()->parameter);
  const dhp::ClusterSpec& cluster = data.clusters.front();
  DHP_CHECK(data.static_balanced_layout.has_value(), Internal,
            "megatron-dcp-repro-{} names no static layout", gpus);
  const int cp = data.static_balanced_layout->cp;

  dhp::PlannerOptions options = data.options;
  options.coefficients = dhp::defaults_for(cluster);
  options.coefficients_set = true;
  if (setting.half_efficiency_tokens)
    options.coefficients.half_efficiency_tokens = *setting.half_efficiency_tokens;
  if (setting.ring_step_overhead_us)
    options.coefficients.ring_step_overhead_us = *setting.ring_step_overhead_us;
  if (setting.overlap_efficiency)
    options.coefficients.overlap_efficiency = *setting.overlap_efficiency;
  const std::int64_t max_tokens_per_rank = options.max_tokens_per_rank;

  const auto layout = dhp::detail::resolve_layout(cluster, data.model, options);
  const auto cost = dhp::detail::make_cost_model(cluster, data.model, layout, options);
  // The simulator runs on the same coefficients as the planner's estimate.
  const dhp::Simulator simulator(cost);

  const std::vector<Batch>& batches = data.batches;
  std::vector<Row> rows;
  for (Variant variant : kVariants) {
    Row row;
    row.gpus = gpus;
    row.sequences_per_gpu = static_cast<int>(batches.front().samples.size()) / gpus;
    row.half_efficiency_tokens = cost.coefficients().half_efficiency_tokens;
    row.ring_step_overhead_us = cost.coefficients().ring_step_overhead_us;
    row.overlap_efficiency = cost.coefficients().overlap_efficiency;
    row.variant = variant_name(variant);
    std::vector<double> steps;
    for (const Batch& batch : batches) {
      std::vector<WaveDraft> waves;
      switch (variant) {
        case Variant::MegatronDcp:
          waves = dhp::detail::megatron_dcp_waves(batch, cost, layout, options);
          break;
        case Variant::Lpt:
          waves = dhp::detail::static_balanced_waves(
              batch, cost, layout, cp, dhp::detail::llm_activation_budget(cost, layout, batch),
              max_tokens_per_rank);
          break;
        case Variant::Contig:
          waves = per_replica_waves(batch, gpus, cp, max_tokens_per_rank, /*contiguous=*/true,
                                    Packing::NextFitInOrder);
          break;
        case Variant::RoundRobinFfd:
          waves = per_replica_waves(batch, gpus, cp, max_tokens_per_rank, /*contiguous=*/false,
                                    Packing::FirstFitDecreasing);
          break;
        case Variant::GlobalFfd:
          waves = global_waves(batch, gpus, cp, max_tokens_per_rank, Packing::FirstFitDecreasing);
          break;
      }
      const dhp::Plan plan = dhp::detail::build_plan(row.variant, batch, cost, layout, waves);
      const dhp::SimulationResult result = simulator.run(plan, batch);
      DHP_CHECK(!result.device_busy_ms.empty(), Internal, "{} at {} GPUs: no devices simulated",
                row.variant, gpus);

      const double busy_mean = dhp::bench::mean(result.device_busy_ms);
      const double busy_max =
          *std::max_element(result.device_busy_ms.begin(), result.device_busy_ms.end());
      const double tokens_per_device = static_cast<double>(batch.total_llm_tokens()) / gpus;
      const double micro_batches = static_cast<double>(plan.waves.size());
      steps.push_back(result.step_ms);
      row.micro_batches += micro_batches;
      row.fill += tokens_per_device / micro_batches / static_cast<double>(max_tokens_per_rank);
      row.busy_mean_ms += busy_mean;
      row.busy_max_ms += busy_max;
      row.us_per_token += 1000.0 * busy_mean / tokens_per_device;
    }
    const auto n = static_cast<double>(batches.size());
    row.step_ms = dhp::bench::median(steps);
    row.micro_batches /= n;
    row.fill /= n;
    row.busy_mean_ms /= n;
    row.busy_max_ms /= n;
    row.busy_spread_ms = row.busy_max_ms - row.busy_mean_ms;
    row.us_per_token /= n;
    rows.push_back(row);
  }
  // Ratios against megatron_dcp, the first variant.
  for (Row& row : rows) {
    row.step_vs_dcp = row.step_ms / rows.front().step_ms;
    row.busy_vs_dcp = row.busy_mean_ms / rows.front().busy_mean_ms;
  }
  return rows;
}

// --- output and arguments -----------------------------------------------------------

void print_table(const std::vector<Row>& rows) {
  fmt::print(
      "{:>4} {:>7} {:>5} {:>5} {:>5} {:<13} {:>8} {:>8} {:>7} {:>5} {:>8} {:>8} {:>7} {:>8} "
      "{:>6}\n",
      "gpus", "seq/gpu", "hef", "rso", "ovl", "variant", "step_ms", "step/dcp", "mbatch", "fill",
      "busy_ms", "busy_max", "spread", "busy/dcp", "us/tok");
  for (const Row& r : rows)
    fmt::print(
        "{:>4} {:>7} {:>5g} {:>5g} {:>5g} {:<13} {:>8.2f} {:>8.3f} {:>7.2f} {:>5.2f} "
        "{:>8.2f} {:>8.2f} {:>7.2f} {:>8.3f} {:>6.2f}\n",
        r.gpus, r.sequences_per_gpu, r.half_efficiency_tokens, r.ring_step_overhead_us,
        r.overlap_efficiency, r.variant, r.step_ms, r.step_vs_dcp, r.micro_batches, r.fill,
        r.busy_mean_ms, r.busy_max_ms, r.busy_spread_ms, r.busy_vs_dcp, r.us_per_token);
}

void print_json(const std::vector<Row>& rows) {
  for (const Row& r : rows) {
    const nlohmann::ordered_json line = {{"gpus", r.gpus},
                                         {"sequences_per_gpu", r.sequences_per_gpu},
                                         {"half_efficiency_tokens", r.half_efficiency_tokens},
                                         {"ring_step_overhead_us", r.ring_step_overhead_us},
                                         {"overlap_efficiency", r.overlap_efficiency},
                                         {"variant", r.variant},
                                         {"step_ms", r.step_ms},
                                         {"step_vs_dcp", r.step_vs_dcp},
                                         {"micro_batches", r.micro_batches},
                                         {"fill", r.fill},
                                         {"busy_mean_ms", r.busy_mean_ms},
                                         {"busy_max_ms", r.busy_max_ms},
                                         {"busy_spread_ms", r.busy_spread_ms},
                                         {"busy_vs_dcp", r.busy_vs_dcp},
                                         {"us_per_token", r.us_per_token}};
    std::cout << line.dump() << '\n';
  }
}

void declare_options(dhp::CommandLine& cli) {
  cli.option("--gpus", "LIST", "megatron-dcp-repro scales to run, e.g. 8,32 (default: all five)")
      .option("--per-gpu", "N", "sequences per GPU per batch (default 16, the scenario's)")
      .option("--hef", "TOKENS", "half_efficiency_tokens for planner and simulator")
      .option("--rso", "US", "ring_step_overhead_us for planner and simulator")
      .option("--ovl", "FRACTION", "overlap_efficiency for planner and simulator")
      .option("--format", "F", "table (default) or json (one object per line)")
      .note("The coefficients default to defaults_for(cluster).");
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
  dhp::CommandLine cli("dhp_megatron_study",
                       "  dhp_megatron_study [--gpus 4,8,16,32,64] [--per-gpu N] [--hef TOKENS] "
                       "[--rso US]\n                     [--ovl FRACTION] [--format table|json]");
  declare_options(cli);
  return dhp::run_tool(cli, argc, argv, [&] { return run(parse(cli)); });
}
