// dhp_plan: plans one batch of a batch file for a cluster and a model and prints the plan
// as JSON (docs/schemas.md); optionally simulates it, draws it as SVG (alone or beside
// another strategy's plan of the same batch) and writes an HTML report. With --convert it
// turns a raw length file (data/) into a batch stream file instead.
//
// Exit codes: 0 success, 1 a dhp::Error (its message on stderr), 2 bad usage.
#include <fmt/format.h>

#include <cstdio>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "dhp/command_line.hpp"
#include "dhp/cost_model.hpp"
#include "dhp/dataset.hpp"
#include "dhp/error.hpp"
#include "dhp/io.hpp"
#include "dhp/plan_report.hpp"
#include "dhp/plan_svg.hpp"
#include "dhp/planner.hpp"
#include "dhp/simulator.hpp"
#include "dhp/step_bound.hpp"

namespace {

using dhp::CommandLine;
using dhp::UsageError;

void declare_options(CommandLine& cli) {
  cli.section(
         "Plan one batch and print the plan as JSON (with the planner's predicted step time and\n"
         "per-rank peak memory in \"estimate\"):")
      .option("--cluster", "PRESET|FILE",
              "h100-8, h100-64, h100-1024, h100-4096, ascend910b-64, or a JSON file")
      .option(
          "--model", "PRESET|FILE",
          "qwen2-vl-7b, qwen2-vl-2b, internvl2-8b, llama3-70b,\nmegatron-dcp-1b, or a JSON file")
      .option("--batch", "FILE", "a batch, or a batch stream ({\"batches\": [...]} or an array)")
      .option("--batch-index", "I", "which batch of a stream (default 0)")
      .option("--strategy", "S",
              "dhp (default), static_best, static_balanced, megatron_dcp,\n"
              "megatron_dcp_dev, megatron_dp_balanced, paper_bfd_dp, entrain, exact")
      .option("--tp", "N", "LLM tensor-parallel degree (default: chosen by the planner)")
      .option("--encoder-tp", "N",
              "encoder tensor-parallel degree (default: chosen by the planner)")
      .option("--placement", "P", "colocated (default) or disjoint")
      .option("--encoder-devices", "N", "devices given to the encoder (disjoint placement)")
      .option("--max-tokens-per-rank", "N",
              "the Megatron strategies' per-rank token limit (default: from memory)")
      .flag("--whole-visuals",
            "dhp, exact: encode every image/video whole on one encoder rank\n"
            "(default: long ones are cut across encoder ranks)")
      .option("--calibration", "FILE",
              "fit the cost model to measured profiles first (fit error on stderr)")
      .flag("--simulate", "add \"simulation\": simulated step time, per-device peak memory, idle")
      .option("--svg", "FILE", "write a picture of the simulated plan (implies simulating)")
      .option("--svg-compare", "S",
              "with --svg: draw strategy S's plan of the same batch below, on one time axis")
      .option("--report", "FILE",
              "write an HTML page: summary, picture, per-rank load, and every other\n"
              "strategy's plan of the batch (plans the batch with each; implies simulating)")
      .flag("--pretty", "indented JSON");
  cli.section("Write a batch stream from raw length data:")
      .option("--convert", "DATASET",
              "activitynet, llava_cc3m, mathvista, narrativeqa, or lognormal")
      .option("--out", "FILE", "where to write the stream")
      .option("--data", "FILE",
              "the raw file (default: looked up as DHP_DATA_DIR, data/, ../shared/data)")
      .option("--batches", "N", "number of batches (default 8)")
      .option("--batch-size", "M", "samples per batch (default 64)")
      .option("--seed", "S", "seed of the shuffle (default 1)")
      .option("--fps", "F", "video frames sampled per second (default 1)")
      .option("--tokens-per-frame", "N", "LLM tokens per video frame (default 144)")
      .flag("--per-event", "activitynet: one sample per caption event instead of per video")
      .option("--tokens-per-word", "F", "narrativeqa: tokens per word (default 1.3)")
      .option("--text-token-scale", "F", "scale of the files' GPT-4 BPE counts (default 1.15)")
      .option("--max-text-tokens", "N", "cap text tokens per sample (default 0: no cap)")
      .option("--mean", "F", "lognormal: mean tokens (default 1024)")
      .option("--sigma", "F", "lognormal: sigma (default 1.5)")
      .option("--min-tokens", "N", "lognormal: shortest sample (default 128)")
      .option("--max-tokens", "N", "lognormal: longest sample (default 8192)");
}

// A batch file holding one batch or a stream of them: batch `index`.
dhp::Batch load_batch(const std::string& path, std::int64_t index) {
  std::vector<dhp::Batch> batches = dhp::load_batches(path);
  DHP_CHECK(index < static_cast<std::int64_t>(batches.size()), InvalidArgument,
            "--batch-index {} out of range: {} holds {} batch{}", index, path, batches.size(),
            batches.size() == 1 ? "" : "es");
  return batches[static_cast<std::size_t>(index)];
}

dhp::Strategy strategy_option(const CommandLine& cli, std::string_view name,
                              const std::string& fallback) {
  try {
    return dhp::strategy_from_string(cli.value_or(name, fallback));
  } catch (const dhp::Error& e) {
    throw UsageError(fmt::format("{}: {}", name, e.message()));
  }
}

dhp::PlannerOptions planner_options(const CommandLine& cli) {
  dhp::PlannerOptions options;
  options.strategy = strategy_option(cli, "--strategy", "dhp");
  options.llm_tp = static_cast<int>(cli.integer("--tp", 0));
  options.encoder_tp = static_cast<int>(cli.integer("--encoder-tp", 0));
  const std::string placement = cli.choice("--placement", {"colocated", "disjoint"}, "colocated");
  if (placement == "disjoint") {
    options.placement = dhp::EncoderPlacement::Disjoint;
    options.encoder_devices = static_cast<int>(cli.integer("--encoder-devices", 0, 1));
    if (!cli.has("--encoder-devices"))
      throw UsageError("--placement disjoint needs --encoder-devices N (N > 0)");
  } else if (cli.has("--encoder-devices")) {
    throw UsageError("--encoder-devices only applies to --placement disjoint");
  }
  options.max_tokens_per_rank = cli.integer("--max-tokens-per-rank", 0);
  options.split_visual_items = !cli.has("--whole-visuals");
  return options;
}

// Calibrates at the TP degrees the planner will use; the options then carry the fit.
void calibrate(const dhp::ClusterSpec& cluster, const dhp::ModelSpec& model,
               const std::string& path, dhp::PlannerOptions& options) {
  const dhp::Planner probe(cluster, model, options);
  const auto measurements = dhp::measurements_from_json(dhp::read_text_file(path));
  const dhp::CalibrationReport report = dhp::calibrate(
      cluster, model, probe.cost_model().llm_tp(), probe.cost_model().encoder_tp(), measurements);
  fmt::print(stderr,
             "calibration: {} measurements, mean |rel. error| {:.1f}% -> {:.1f}% (max {:.1f}%)\n",
             report.measurements, 100 * report.mean_abs_rel_error_before,
             100 * report.mean_abs_rel_error_after, 100 * report.max_abs_rel_error_after);
  options.coefficients = report.coefficients;
  options.coefficients_set = true;
}

nlohmann::json simulation_json(const dhp::SimulationResult& sim) {
  return {{"step_ms", sim.step_ms},
          {"mean_idle_fraction", sim.mean_idle_fraction},
          {"max_peak_mem_gib", sim.max_peak_mem_gib},
          {"mem_capacity_gib", sim.mem_capacity_gib},
          {"device_peak_mem_gib", sim.device_peak_mem_gib},
          {"device_idle_fraction", sim.device_idle_fraction}};
}

// --svg, with --svg-compare the other strategy's plan below on the same time axis.
void write_svg(const CommandLine& cli, const dhp::ClusterSpec& cluster, const dhp::ModelSpec& model,
               const dhp::PlannerOptions& options, const dhp::Batch& batch,
               const dhp::StrategyRun& subject) {
  std::vector<dhp::StepTimeline> timelines = {
      dhp::plan_timeline(subject.plan, batch, subject.simulation)};
  if (cli.has("--svg-compare")) {
    dhp::PlannerOptions other = options;
    other.strategy = strategy_option(cli, "--svg-compare", "");
    const dhp::StrategyRun run = dhp::run_strategy(cluster, model, other, batch);
    timelines.push_back(dhp::plan_timeline(run.plan, batch, run.simulation));
  }
  dhp::write_text_file(cli.value("--svg"), dhp::timelines_to_svg(timelines));
  fmt::print(stderr, "wrote {}\n", cli.value("--svg"));
}

int run_plan(const CommandLine& cli) {
  cli.only(
      {"--cluster", "--model", "--batch", "--batch-index", "--strategy", "--tp", "--encoder-tp",
       "--placement", "--encoder-devices", "--max-tokens-per-rank", "--calibration", "--simulate",
       "--svg", "--svg-compare", "--report", "--pretty", "--whole-visuals"},
      "when planning (it is a --convert option)");
  if (cli.has("--svg-compare") && !cli.has("--svg"))
    throw UsageError("--svg-compare needs --svg FILE (the picture it draws)");
  if (cli.has("--svg-compare")) strategy_option(cli, "--svg-compare", "");  // checked up front
  const std::string cluster_arg = cli.value("--cluster");
  const std::string model_arg = cli.value("--model");
  const std::string batch_arg = cli.value("--batch");
  dhp::PlannerOptions options = planner_options(cli);
  const dhp::ClusterSpec cluster = dhp::load_cluster(cluster_arg);
  const dhp::ModelSpec model = dhp::load_model(model_arg);
  const dhp::Batch batch = load_batch(batch_arg, cli.integer("--batch-index", 0));
  if (cli.has("--calibration")) calibrate(cluster, model, cli.value("--calibration"), options);

  const dhp::StrategyRun subject = dhp::run_strategy(cluster, model, options, batch);
  nlohmann::json out = nlohmann::json::parse(dhp::to_json(subject.plan, -1));
  if (cli.has("--simulate") || cli.has("--svg") || cli.has("--report")) {
    out["simulation"] = simulation_json(subject.simulation);
    // How far the plan is from the best possible: no plan of this batch under the layouts
    // the options leave open is estimated below the bound (docs/cli.md).
    const dhp::StepBound bound = dhp::step_lower_bound(cluster, model, batch, options);
    out["simulation"]["lower_bound_ms"] = bound.ms;
    out["simulation"]["step_over_bound"] = subject.simulation.step_ms / bound.ms;
    out["simulation"]["lower_bound_binding"] = bound.binding;
  }
  if (cli.has("--svg")) write_svg(cli, cluster, model, options, batch, subject);
  if (cli.has("--report")) {
    const dhp::PlanReport report{cluster, model, batch, subject,
                                 dhp::run_other_strategies(cluster, model, options, batch)};
    dhp::write_text_file(cli.value("--report"), dhp::plan_report_html(report));
    fmt::print(stderr, "wrote {}\n", cli.value("--report"));
  }
  fmt::print("{}\n", out.dump(cli.has("--pretty") ? 2 : -1));
  return 0;
}

std::vector<dhp::Sample> dataset_pool(const CommandLine& cli, const std::string& dataset,
                                      const dhp::DatasetAssumptions& a, int samples,
                                      std::uint64_t seed) {
  if (dataset == "lognormal")
    return dhp::lognormal_samples(samples, cli.real("--mean", 1024), cli.real("--sigma", 1.5),
                                  cli.integer("--min-tokens", 128),
                                  cli.integer("--max-tokens", 8192), seed);
  const std::string path = cli.value_or("--data", "");
  auto resolved = [&] { return path.empty() ? dhp::default_data_path(dataset) : path; };
  if (dataset == "activitynet") return dhp::load_activitynet(resolved(), a);
  if (dataset == "llava_cc3m") return dhp::load_llava_cc3m(resolved(), a);
  if (dataset == "mathvista") return dhp::load_mathvista(resolved(), a);
  if (dataset == "narrativeqa") return dhp::load_narrativeqa(resolved(), a);
  throw UsageError(fmt::format(
      "--convert expects one of activitynet, llava_cc3m, mathvista, narrativeqa, lognormal, "
      "got '{}'",
      dataset));
}

int run_convert(const CommandLine& cli) {
  cli.only({"--convert", "--out", "--data", "--batches", "--batch-size", "--seed", "--fps",
            "--tokens-per-frame", "--per-event", "--tokens-per-word", "--text-token-scale",
            "--max-text-tokens", "--mean", "--sigma", "--min-tokens", "--max-tokens"},
           "with --convert (it is a planning option)");
  const std::string dataset = cli.value("--convert");
  const std::string out_path = cli.value("--out");
  const int num_batches = static_cast<int>(cli.integer("--batches", 8, 1));
  const int batch_size = static_cast<int>(cli.integer("--batch-size", 64, 1));
  const auto seed = static_cast<std::uint64_t>(cli.integer("--seed", 1));

  dhp::DatasetAssumptions a;
  a.video_fps = cli.real("--fps", a.video_fps);
  a.video_tokens_per_frame =
      static_cast<int>(cli.integer("--tokens-per-frame", a.video_tokens_per_frame));
  a.activitynet_per_event = cli.has("--per-event");
  a.tokens_per_word = cli.real("--tokens-per-word", a.tokens_per_word);
  a.text_token_scale = cli.real("--text-token-scale", a.text_token_scale);
  a.max_text_tokens = cli.integer("--max-text-tokens", a.max_text_tokens);

  const std::vector<dhp::Sample> pool =
      dataset_pool(cli, dataset, a, num_batches * batch_size, seed);
  const std::vector<dhp::Batch> batches = dhp::make_batches(pool, num_batches, batch_size, seed);
  dhp::write_text_file(out_path, dhp::to_json(batches, -1));
  fmt::print(stderr, "wrote {} batches of {} samples from {} ({} samples in the pool) to {}\n",
             batches.size(), batch_size, dataset, pool.size(), out_path);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  CommandLine cli("dhp_plan",
                  "  dhp_plan --cluster PRESET|FILE --model PRESET|FILE --batch FILE [options]\n"
                  "  dhp_plan --convert DATASET --out FILE [conversion options]");
  declare_options(cli);
  if (argc == 1) {
    std::fputs(cli.help().c_str(), stderr);
    return 2;
  }
  return dhp::run_tool(cli, argc, argv,
                       [&] { return cli.has("--convert") ? run_convert(cli) : run_plan(cli); });
}
