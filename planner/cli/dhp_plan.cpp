// dhp_plan: plans one batch of a batch file for a cluster and a model and prints the plan
// as JSON (docs/schemas.md); optionally simulates it and draws it as SVG. With --convert
// it turns a raw length file (data/) into a batch stream file instead.
//
// Exit codes: 0 success, 1 a dhp::Error (its message on stderr), 2 bad usage.
#include <fmt/format.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "dhp/cost_model.hpp"
#include "dhp/dataset.hpp"
#include "dhp/error.hpp"
#include "dhp/io.hpp"
#include "dhp/plan_svg.hpp"
#include "dhp/planner.hpp"
#include "dhp/simulator.hpp"

namespace {

constexpr const char* kUsage = R"(usage:
  dhp_plan --cluster PRESET|FILE --model PRESET|FILE --batch FILE [options]
  dhp_plan --convert DATASET --out FILE [conversion options]

Plan one batch and print the plan as JSON (with the planner's predicted step time and
per-rank peak memory in "estimate"):
  --cluster PRESET|FILE   h100-8, h100-64, h100-1024, h100-4096, ascend910b-64, or a JSON file
  --model PRESET|FILE     qwen2-vl-7b, qwen2-vl-2b, internvl2-8b, llama3-70b,
                          megatron-dcp-1b, or a JSON file
  --batch FILE            a batch, or a batch stream ({"batches": [...]} or an array)
  --batch-index I         which batch of a stream (default 0)
  --strategy S            dhp (default), static_best, static_balanced, megatron_dcp,
                          paper_bfd_dp, exact
  --tp N                  LLM tensor-parallel degree (default: chosen by the planner)
  --encoder-tp N          encoder tensor-parallel degree (default: chosen by the planner)
  --placement P           colocated (default) or disjoint
  --encoder-devices N     devices given to the encoder (disjoint placement)
  --max-tokens-per-rank N megatron_dcp's per-rank token limit (default: from memory)
  --whole-visuals         dhp, exact: encode every image/video whole on one encoder rank
                          (default: long ones are cut across encoder ranks)
  --calibration FILE      fit the cost model to measured profiles first (fit error on stderr)
  --simulate              add "simulation": simulated step time, per-device peak memory, idle
  --svg FILE              write a picture of the simulated plan (implies simulating)
  --pretty                indented JSON

Write a batch stream from raw length data:
  --convert DATASET       activitynet, llava_cc3m, mathvista, narrativeqa, or lognormal
  --out FILE              where to write the stream
  --data FILE             the raw file (default: looked up as DHP_DATA_DIR, data/, ../shared/data)
  --batches N             number of batches (default 8)
  --batch-size M          samples per batch (default 64)
  --seed S                seed of the shuffle (default 1)
  --fps F                 video frames sampled per second (default 1)
  --tokens-per-frame N    LLM tokens per video frame (default 144)
  --per-event             activitynet: one sample per caption event instead of per video
  --tokens-per-word F     narrativeqa: tokens per word (default 1.3)
  --text-token-scale F    scale of the files' GPT-4 BPE counts (default 1.15)
  --max-text-tokens N     cap text tokens per sample (default 0: no cap)
  --mean F --sigma F --min-tokens N --max-tokens N
                          lognormal (defaults: 1024, 1.5, 128, 8192)
)";

// Bad command lines are reported with exit code 2, apart from dhp::Error's code 1.
struct UsageError {
  std::string message;
};

class Args {
 public:
  Args(int argc, char** argv) {
    for (int i = 1; i < argc; ++i) {
      std::string arg = argv[i];
      if (arg.rfind("--", 0) != 0) throw UsageError{fmt::format("unexpected argument '{}'", arg)};
      if (kFlags.count(arg)) {
        flags_.insert(arg);
      } else {
        if (i + 1 >= argc) throw UsageError{fmt::format("{} needs a value", arg)};
        values_[arg] = argv[++i];
      }
    }
  }
  bool has(const std::string& name) const { return values_.count(name) || flags_.count(name); }
  std::string get(const std::string& name) const {
    auto it = values_.find(name);
    if (it == values_.end()) throw UsageError{fmt::format("{} is required", name)};
    return it->second;
  }
  std::string get_or(const std::string& name, const std::string& fallback) const {
    return has(name) ? get(name) : fallback;
  }
  long long integer(const std::string& name, long long fallback) const {
    if (!has(name)) return fallback;
    const std::string text = get(name);
    char* end = nullptr;
    const long long v = std::strtoll(text.c_str(), &end, 10);
    if (text.empty() || *end != '\0' || v < 0)
      throw UsageError{fmt::format("{} expects a non-negative integer, got '{}'", name, text)};
    return v;
  }
  double real(const std::string& name, double fallback) const {
    if (!has(name)) return fallback;
    const std::string text = get(name);
    char* end = nullptr;
    const double v = std::strtod(text.c_str(), &end);
    if (text.empty() || *end != '\0')
      throw UsageError{fmt::format("{} expects a number, got '{}'", name, text)};
    return v;
  }
  // Every option given must be one this mode knows: a typo is an error, not a default.
  void only(const std::vector<std::string>& known) const {
    auto check = [&](const std::string& name) {
      if (std::find(known.begin(), known.end(), name) == known.end())
        throw UsageError{fmt::format("unknown or misplaced option '{}'", name)};
    };
    for (const auto& [name, _] : values_) check(name);
    for (const std::string& name : flags_) check(name);
  }

 private:
  static inline const std::set<std::string> kFlags = {"--whole-visuals", "--simulate", "--pretty",
                                                      "--per-event", "--help"};
  std::map<std::string, std::string> values_;
  std::set<std::string> flags_;
};

// A file holding one batch, or a stream of them: pick batch `index`.
dhp::Batch load_batch(const std::string& path, long long index) {
  const std::string text = dhp::read_text_file(path);
  const auto parsed = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
  const bool stream = parsed.is_array() || (parsed.is_object() && parsed.contains("batches"));
  if (!stream) {
    DHP_CHECK(index == 0, InvalidArgument, "--batch-index {} but {} holds a single batch", index,
              path);
    return dhp::batch_from_json(text);  // also reports malformed JSON with its position
  }
  std::vector<dhp::Batch> batches = dhp::batches_from_json(text);
  DHP_CHECK(index < static_cast<long long>(batches.size()), InvalidArgument,
            "--batch-index {} out of range: {} holds {} batches", index, path, batches.size());
  return batches[static_cast<std::size_t>(index)];
}

int run_plan(const Args& args) {
  args.only({"--cluster", "--model", "--batch", "--batch-index", "--strategy", "--tp",
             "--encoder-tp", "--placement", "--encoder-devices", "--max-tokens-per-rank",
             "--calibration", "--simulate", "--svg", "--pretty", "--whole-visuals"});
  const dhp::ClusterSpec cluster = dhp::load_cluster(args.get("--cluster"));
  const dhp::ModelSpec model = dhp::load_model(args.get("--model"));
  const dhp::Batch batch = load_batch(args.get("--batch"), args.integer("--batch-index", 0));

  dhp::PlannerOptions options;
  try {
    options.strategy = dhp::strategy_from_string(args.get_or("--strategy", "dhp"));
  } catch (const dhp::Error& e) {
    throw UsageError{e.what()};
  }
  options.llm_tp = static_cast<int>(args.integer("--tp", 0));
  options.encoder_tp = static_cast<int>(args.integer("--encoder-tp", 0));
  const std::string placement = args.get_or("--placement", "colocated");
  if (placement == "disjoint") {
    options.placement = dhp::EncoderPlacement::Disjoint;
    options.encoder_devices = static_cast<int>(args.integer("--encoder-devices", 0));
    if (options.encoder_devices <= 0)
      throw UsageError{"--placement disjoint needs --encoder-devices N (N > 0)"};
  } else if (placement == "colocated") {
    if (args.has("--encoder-devices"))
      throw UsageError{"--encoder-devices only applies to --placement disjoint"};
  } else {
    throw UsageError{fmt::format("--placement expects colocated or disjoint, got '{}'", placement)};
  }
  options.max_tokens_per_rank = args.integer("--max-tokens-per-rank", 0);
  options.split_visual_items = !args.has("--whole-visuals");

  if (args.has("--calibration")) {
    // Calibrate at the TP degrees the planner will use, then plan with the fitted model.
    const dhp::Planner probe(cluster, model, options);
    const auto measurements =
        dhp::measurements_from_json(dhp::read_text_file(args.get("--calibration")));
    const dhp::CalibrationReport report = dhp::calibrate(
        cluster, model, probe.cost_model().llm_tp(), probe.cost_model().encoder_tp(), measurements);
    fmt::print(stderr,
               "calibration: {} measurements, mean |rel. error| {:.1f}% -> {:.1f}% (max {:.1f}%)\n",
               report.measurements, 100 * report.mean_abs_rel_error_before,
               100 * report.mean_abs_rel_error_after, 100 * report.max_abs_rel_error_after);
    options.coefficients = report.coefficients;
    options.coefficients_set = true;
  }

  const dhp::Planner planner(cluster, model, options);
  const dhp::Plan plan = planner.plan(batch);

  nlohmann::json out = nlohmann::json::parse(dhp::to_json(plan, -1));
  const bool want_svg = args.has("--svg");
  if (args.has("--simulate") || want_svg) {
    const dhp::Simulator simulator(planner.cost_model());
    const dhp::SimulationResult sim = simulator.run(plan, batch, /*record_timeline=*/want_svg);
    out["simulation"] = {{"step_ms", sim.step_ms},
                         {"mean_idle_fraction", sim.mean_idle_fraction},
                         {"max_peak_mem_gib", sim.max_peak_mem_gib},
                         {"mem_capacity_gib", sim.mem_capacity_gib},
                         {"device_peak_mem_gib", sim.device_peak_mem_gib},
                         {"device_idle_fraction", sim.device_idle_fraction}};
    if (want_svg) {
      dhp::write_text_file(args.get("--svg"), dhp::plan_to_svg(plan, batch, sim));
      fmt::print(stderr, "wrote {}\n", args.get("--svg"));
    }
  }
  fmt::print("{}\n", out.dump(args.has("--pretty") ? 2 : -1));
  return 0;
}

int run_convert(const Args& args) {
  args.only({"--convert", "--out", "--data", "--batches", "--batch-size", "--seed", "--fps",
             "--tokens-per-frame", "--per-event", "--tokens-per-word", "--text-token-scale",
             "--max-text-tokens", "--mean", "--sigma", "--min-tokens", "--max-tokens"});
  const std::string dataset = args.get("--convert");
  const std::string out_path = args.get("--out");
  const int num_batches = static_cast<int>(args.integer("--batches", 8));
  const int batch_size = static_cast<int>(args.integer("--batch-size", 64));
  const auto seed = static_cast<std::uint64_t>(args.integer("--seed", 1));
  if (num_batches < 1 || batch_size < 1)
    throw UsageError{"--batches and --batch-size must be >= 1"};

  dhp::DatasetAssumptions a;
  a.video_fps = args.real("--fps", a.video_fps);
  a.video_tokens_per_frame =
      static_cast<int>(args.integer("--tokens-per-frame", a.video_tokens_per_frame));
  a.activitynet_per_event = args.has("--per-event");
  a.tokens_per_word = args.real("--tokens-per-word", a.tokens_per_word);
  a.text_token_scale = args.real("--text-token-scale", a.text_token_scale);
  a.max_text_tokens = args.integer("--max-text-tokens", a.max_text_tokens);

  std::vector<dhp::Sample> pool;
  if (dataset == "lognormal") {
    pool = dhp::lognormal_samples(num_batches * batch_size, args.real("--mean", 1024),
                                  args.real("--sigma", 1.5), args.integer("--min-tokens", 128),
                                  args.integer("--max-tokens", 8192), seed);
  } else {
    const std::string path = args.get_or("--data", "");
    auto resolved = [&] { return path.empty() ? dhp::default_data_path(dataset) : path; };
    if (dataset == "activitynet") {
      pool = dhp::load_activitynet(resolved(), a);
    } else if (dataset == "llava_cc3m") {
      pool = dhp::load_llava_cc3m(resolved(), a);
    } else if (dataset == "mathvista") {
      pool = dhp::load_mathvista(resolved(), a);
    } else if (dataset == "narrativeqa") {
      pool = dhp::load_narrativeqa(resolved(), a);
    } else {
      throw UsageError{fmt::format(
          "unknown dataset '{}' (known: activitynet, llava_cc3m, mathvista, narrativeqa, "
          "lognormal)",
          dataset)};
    }
  }
  const std::vector<dhp::Batch> batches = dhp::make_batches(pool, num_batches, batch_size, seed);
  dhp::write_text_file(out_path, dhp::to_json(batches, -1));
  fmt::print(stderr, "wrote {} batches of {} samples from {} ({} samples in the pool) to {}\n",
             batches.size(), batch_size, dataset, pool.size(), out_path);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    const Args args(argc, argv);
    if (args.has("--help") || argc == 1) {
      std::fputs(kUsage, argc == 1 ? stderr : stdout);
      return argc == 1 ? 2 : 0;
    }
    return args.has("--convert") ? run_convert(args) : run_plan(args);
  } catch (const UsageError& e) {
    fmt::print(stderr, "dhp_plan: {}\n(see dhp_plan --help)\n", e.message);
    return 2;
  } catch (const dhp::Error& e) {
    fmt::print(stderr, "dhp_plan: {}\n", e.what());  // the message names its kind
    return 1;
  } catch (const std::exception& e) {
    // Not a dhp::Error: a bug or an environment failure (out of memory, ...).
    fmt::print(stderr, "dhp_plan: unexpected error: {}\n", e.what());
    return 1;
  }
}
