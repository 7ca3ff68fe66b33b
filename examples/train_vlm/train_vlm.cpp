// dhp_train_vlm: trains a small vision-language model with a new dhp plan every batch.
//
//   mpirun -np 4 build/examples/dhp_train_vlm --steps 20 --verify
//   torchrun --redirects 2 --tee 2 --no_python --nproc_per_node 4 build/examples/dhp_train_vlm
//   --steps 20 --verify
//
// Every rank plans every batch with dhp::Planner (the plan hash is checked across ranks),
// the step executor runs the plan (encoder, boundary, LLM with CP groups of any size, tensor
// parallelism, bucketed gradient sync), and AdamW steps. One JSON line per step on stdout
// (world rank 0), progress on stderr. --calibrate K refits the planner's cost model from the
// first K steps' measured events; --timeline draws the last step as measured beside the
// simulator's prediction.
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <optional>
#include <set>
#include <string>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include "dhp/command_line.hpp"
#include "dhp/env.hpp"
#include "dhp/error.hpp"
#include "dhp/group_pool.hpp"
#include "dhp/plan_svg.hpp"
#include "dhp/planner.hpp"
#include "dhp/runtime.hpp"
#include "dhp/simulator.hpp"
#include "dhp/torch.hpp"
#include "step_report.hpp"
#include "trainer.hpp"

namespace {

using Clock = std::chrono::steady_clock;

// The world under mpirun (MPI) or torchrun (its store, then Gloo).
struct Launch {
  std::unique_ptr<dhp::MpiRuntime> mpi;
  std::unique_ptr<dhp::TorchrunBootstrap> bootstrap;
  std::unique_ptr<dhp::Communicator> world;

  Launch() {
    const bool torchrun = std::getenv("OMPI_COMM_WORLD_SIZE") == nullptr &&
                          std::getenv("PMIX_RANK") == nullptr && std::getenv("RANK") != nullptr;
    if (torchrun) {
      bootstrap = std::make_unique<dhp::TorchrunBootstrap>(dhp::env::comm_timeout());
      world = dhp::gloo_world(*bootstrap);
    } else {
      mpi = std::make_unique<dhp::MpiRuntime>();
      world = mpi->world();
    }
  }
};

// The run's planning: batches, the modelled CPU cluster, the planner (rebuilt when the
// cost model is calibrated).
struct Planning {
  vlm::Config config;
  std::vector<dhp::Batch> batches;
  dhp::ClusterSpec cluster;
  dhp::PlannerOptions options;
  std::unique_ptr<dhp::Planner> planner;

  Planning(const dhp::CommandLine& cli, int world, int steps) {
    const int nodes = static_cast<int>(cli.integer("--nodes", 1, 1));
    DHP_CHECK(world % nodes == 0, InvalidArgument, "--nodes {} does not divide the world of {}",
              nodes, world);
    // The run's layout is the command line's: the model's slices follow it.
    options.layout_search = dhp::LayoutSearch::Off;
    options.llm_tp = static_cast<int>(cli.integer("--llm-tp", 1, 1));
    options.encoder_tp = static_cast<int>(cli.integer("--encoder-tp", 1, 1));
    const std::string placement =
        cli.choice("--placement", {"auto", "colocated", "disjoint"}, "auto");
    if (placement == "disjoint" || (placement == "auto" && world >= 4 && world % 2 == 0)) {
      DHP_CHECK(world >= 2, InvalidArgument, "a disjoint encoder needs two processes or more");
      options.placement = dhp::EncoderPlacement::Disjoint;
      options.encoder_devices =
          static_cast<int>(cli.integer("--encoder-devices", std::max(1, world / 3), 1));
    }
    batches = vlm::batches(config, steps + 1, static_cast<int>(cli.integer("--batch-size", 8, 1)),
                           static_cast<std::uint64_t>(cli.integer("--seed", 1)),
                           cli.real("--text-scale", 2.0), cli.real("--visual-scale", 8.0),
                           cli.integer("--max-tokens", 2048, 16));
    cluster = vlm::cpu_cluster(world, nodes,
                               vlm::choose_capacity(config, world, nodes, options, batches));
    planner = std::make_unique<dhp::Planner>(cluster, config.spec(), options);
  }

  void use_coefficients(const dhp::CostCoefficients& c) {
    options.coefficients = c;
    options.coefficients_set = true;
    planner = std::make_unique<dhp::Planner>(cluster, config.spec(), options);
  }
};

// Calibration from the run's own events, and the simulator's predictions of every step
// with the default coefficients and (once fitted) the calibrated ones.
class Calibration {
 public:
  Calibration(const Planning& planning, const dhp::Plan& plan, int steps)
      : planning_(planning), steps_(steps), defaults_(dhp::defaults_for(planning.cluster)) {
    tp_ = plan.llm.tp;
    encoder_tp_ = plan.encoder.tp;
  }
  bool active() const { return steps_ > 0; }

  // Rank 0 collects the first `steps` steps' measurements; then every rank gets the fit.
  std::optional<dhp::CostCoefficients> after_step(
      dhp::Communicator& world, int step, const dhp::Batch& batch, const dhp::Plan& plan,
      const std::vector<std::vector<dhp::StepEvent>>& events) {
    if (step >= steps_) return std::nullopt;
    const dhp::EncoderSpec encoder = *planning_.config.spec().encoder;
    if (world.rank() == 0) {
      const auto m = vlm::step_measurements(batch, plan, encoder, events);
      measurements_.insert(measurements_.end(), m.begin(), m.end());
    }
    if (step + 1 < steps_) return std::nullopt;
    std::array<double, 9> c{};
    if (world.rank() == 0) {
      report_ = dhp::calibrate(planning_.cluster, planning_.config.spec(), tp_, encoder_tp_,
                               measurements_);
      const dhp::CostCoefficients& f = report_.coefficients;
      c = {f.gemm_efficiency,        f.attention_efficiency,
           f.half_efficiency_tokens, f.layer_overhead_us,
           f.ring_step_overhead_us,  f.comm_efficiency,
           f.overlap_efficiency,     f.activation_bytes_per_token_layer,
           f.grad_sync_overlap};
    }
    world.broadcast(c.data(), static_cast<std::int64_t>(c.size()), dhp::DataType::F64, 0);
    calibrated_ = dhp::CostCoefficients{c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7], c[8]};
    return calibrated_;
  }

  // The simulated step of `plan` with the default and (if fitted) calibrated coefficients.
  std::pair<double, std::optional<double>> simulate(const dhp::Plan& plan,
                                                    const dhp::Batch& batch) const {
    const double with_defaults = simulator(defaults_).run(plan, batch).step_ms;
    if (!calibrated_) return {with_defaults, std::nullopt};
    return {with_defaults, simulator(*calibrated_).run(plan, batch).step_ms};
  }
  dhp::Simulator simulator(const dhp::CostCoefficients& c) const {
    return dhp::Simulator(
        dhp::CostModel(planning_.cluster, planning_.config.spec(), tp_, encoder_tp_, c));
  }
  const std::optional<dhp::CostCoefficients>& calibrated() const { return calibrated_; }
  const dhp::CalibrationReport& report() const { return report_; }
  int steps() const { return steps_; }
  const dhp::CostCoefficients& defaults() const { return defaults_; }

 private:
  const Planning& planning_;
  int steps_;
  dhp::CostCoefficients defaults_;
  int tp_ = 1, encoder_tp_ = 1;
  std::vector<dhp::Measurement> measurements_;
  dhp::CalibrationReport report_;
  std::optional<dhp::CostCoefficients> calibrated_;
};

std::string json_list(const std::vector<int>& v) { return fmt::format("[{}]", fmt::join(v, ",")); }

// This process's phase times, the slowest process's for each (ms).
struct PhaseTimes {
  double step = 0, dispatch = 0, encoder = 0, boundary = 0, llm = 0, grad_sync = 0;
};
PhaseTimes slowest(dhp::Communicator& world, const dhp::StepStats& s) {
  double t[6] = {s.step_ms, s.dispatch_ms, s.encoder_ms, s.boundary_ms, s.llm_ms, s.grad_sync_ms};
  world.all_reduce(t, t, 6, dhp::DataType::F64, dhp::ReduceOp::Max);
  return {t[0], t[1], t[2], t[3], t[4], t[5]};
}

std::string step_line(int step, const dhp::Plan& plan, int world, const vlm::StepReport& r,
                      const PhaseTimes& t, double plan_ms,
                      const std::pair<double, std::optional<double>>& simulated) {
  std::set<int> degrees;
  for (const dhp::WavePlan& w : plan.waves)
    for (const dhp::GroupPlan& g : w.groups) degrees.insert(g.degree());
  int cut = 0;
  for (const dhp::EncoderTask& task : plan.encoder_tasks) cut += task.part == 0 && task.parts > 1;
  const dhp::StepStats& s = r.stats;
  std::string line = fmt::format(
      "{{\"step\": {}, \"loss\": {:.8f}, \"plan_hash\": \"{:016x}\", \"world\": {}, "
      "\"cp_degrees\": {}, \"waves\": {}, \"cut_items\": {}, \"placement\": \"{}\", "
      "\"encoder_tp\": {}, \"llm_tp\": {}, \"comm_created\": {}, \"boundary_bytes\": {}, "
      "\"boundary_min_bytes\": {}, \"dispatch_bytes\": {}, \"dispatch_min_bytes\": {}, "
      "\"step_ms\": {:.2f}, \"plan_ms\": {:.2f}, \"dispatch_ms\": {:.2f}, \"encoder_ms\": {:.2f}, "
      "\"boundary_ms\": {:.2f}, \"llm_ms\": {:.2f}, \"grad_sync_ms\": {:.2f}, "
      "\"estimate_ms\": {:.2f}, \"simulated_ms\": {:.2f}",
      step, s.loss, dhp::plan_hash(plan), world, json_list({degrees.begin(), degrees.end()}),
      plan.waves.size(), cut, dhp::to_string(plan.placement), plan.encoder.tp, plan.llm.tp,
      s.comm_created, s.boundary.sent_forward + s.boundary.sent_backward,
      s.boundary.min_forward + s.boundary.min_backward, s.dispatch_bytes, s.dispatch_min_bytes,
      t.step, plan_ms, t.dispatch, t.encoder, t.boundary, t.llm, t.grad_sync, plan.estimate.step_ms,
      simulated.first);
  if (simulated.second)
    line += fmt::format(", \"simulated_calibrated_ms\": {:.2f}", *simulated.second);
  if (r.ref_loss)
    line += fmt::format(", \"ref_loss\": {:.8f}, \"max_grad_rel_err\": {:.3e}", *r.ref_loss,
                        *r.max_grad_rel_err);
  return line + "}";
}

// The last step as measured (every process) above the simulator's prediction of its plan.
void write_timeline(const std::string& path, const dhp::Batch& batch, const dhp::Plan& plan,
                    const std::vector<std::vector<dhp::StepEvent>>& events,
                    const Calibration& calibration, const vlm::Config& config) {
  const dhp::EncoderSpec encoder = *config.spec().encoder;
  dhp::StepTimeline measured = vlm::measured_timeline(batch, plan, encoder, events);
  measured.title = fmt::format("measured on this machine: step {:.1f} ms, {} CPU processes",
                               measured.end_ms, events.size());
  const dhp::CostCoefficients& c =
      calibration.calibrated() ? *calibration.calibrated() : calibration.defaults();
  const dhp::SimulationResult sim = calibration.simulator(c).run(plan, batch, true);
  dhp::StepTimeline simulated = dhp::plan_timeline(plan, batch, sim);
  simulated.title = fmt::format("simulated ({} cost model): step {:.1f} ms",
                                calibration.calibrated() ? "calibrated" : "default", sim.step_ms);
  std::ofstream(path) << dhp::timelines_to_svg(std::vector<dhp::StepTimeline>{measured, simulated});
}

int train(dhp::CommandLine& cli) {
  Launch launch;
  dhp::Communicator& world = *launch.world;
  const int n = world.size(), me = world.rank();
  dhp::GroupPool pool(world);
  const int steps = static_cast<int>(cli.integer("--steps", 10, 1));
  const bool verify = cli.has("--verify");
  const std::string dtype_name =
      cli.choice("--dtype", {"float32", "float64", "bfloat16", "float16"}, "float32");
  const bool mixed = dtype_name == "bfloat16" || dtype_name == "float16";
  const double loss_scale = cli.real("--loss-scale", dtype_name == "float16" ? 1024.0 : 1.0);
  DHP_CHECK(std::isfinite(loss_scale) && loss_scale > 0 && (mixed || loss_scale == 1),
            InvalidArgument,
            "--loss-scale {} with --dtype {}: a positive scale, for bfloat16 or float16 only",
            loss_scale, dtype_name);
  Planning planning(cli, n, steps);

  vlm::TrainerOptions trainer_options;
  trainer_options.config = planning.config;
  trainer_options.dtype = dtype_name == "float64"    ? at::kDouble
                          : dtype_name == "bfloat16" ? at::kBFloat16
                          : dtype_name == "float16"  ? at::kHalf
                                                     : at::kFloat;
  trainer_options.loss_scale = loss_scale;
  trainer_options.seed = static_cast<std::uint64_t>(cli.integer("--seed", 1));
  trainer_options.learning_rate = cli.real("--lr", 3e-3);
  trainer_options.verify = verify;
  dhp::Plan plan = planning.planner->plan(planning.batches[0]);
  trainer_options.llm = plan.llm;
  trainer_options.encoder = plan.encoder;
  trainer_options.placement = plan.placement;
  vlm::Trainer trainer(world, pool, trainer_options);
  trainer.executor().prewarm(plan);
  Calibration calibration(planning, plan, static_cast<int>(cli.integer("--calibrate", 0)));
  const std::string timeline = cli.value_or("--timeline", "");
  if (me == 0)
    std::fprintf(
        stderr,
        "dhp_train_vlm: %d processes, %s%s, %s, LLM %d ranks x tp %d, encoder %d ranks x "
        "tp %d, %.4f GiB per process%s\n",
        n, dtype_name.c_str(),
        mixed ? fmt::format(" (fp32 master weights, loss scale {:g})", loss_scale).c_str() : "",
        dhp::to_string(plan.placement), plan.llm.ranks, plan.llm.tp, plan.encoder.ranks,
        plan.encoder.tp, planning.cluster.mem_capacity_gib,
        verify ? ", verifying against one process" : "");

  const auto start = Clock::now();
  const double tolerance = vlm::verify_tolerance(trainer_options.dtype);
  int mismatches = 0;
  double error_default = 0, error_calibrated = 0;
  int compared = 0;
  for (int s = 0; s < steps; ++s) {
    const dhp::Batch& batch = planning.batches[static_cast<std::size_t>(s)];
    const auto plan_start = Clock::now();
    dhp::Plan next = planning.planner->plan(planning.batches[static_cast<std::size_t>(s + 1)]);
    const double plan_ms =
        std::chrono::duration<double, std::milli>(Clock::now() - plan_start).count();
    const vlm::StepReport r = trainer.step(batch, plan, &next);
    const PhaseTimes times = slowest(world, r.stats);
    std::vector<std::vector<dhp::StepEvent>> events;
    if (calibration.active() || (!timeline.empty() && s + 1 == steps))
      events = vlm::gather_events(world, r.stats.events);
    const auto simulated = calibration.simulate(plan, batch);
    if (simulated.second) {  // steps planned after the fit: the estimate error, both ways
      error_default += std::abs(simulated.first / times.step - 1);
      error_calibrated += std::abs(*simulated.second / times.step - 1);
      ++compared;
    }
    if (me == 0 && r.skipped)
      std::fprintf(stderr, "step %d: gradients not finite at loss scale %g: no optimizer step\n", s,
                   loss_scale);
    if (me == 0) {
      std::printf("%s\n", step_line(s, plan, n, r, times, plan_ms, simulated).c_str());
      std::fflush(stdout);
      if (r.ref_loss &&
          (*r.max_grad_rel_err > tolerance ||
           std::abs(r.stats.loss - *r.ref_loss) > tolerance * std::abs(*r.ref_loss))) {
        ++mismatches;
        std::fprintf(stderr,
                     "step %d: the run does not match one process (loss %.10g vs %.10g, gradient "
                     "error %.3g, tolerance %.0e)\n",
                     s, r.stats.loss, *r.ref_loss, *r.max_grad_rel_err, tolerance);
      }
      std::fprintf(stderr, "step %d/%d: loss %.4f%s (%.1f s)\n", s + 1, steps, r.stats.loss,
                   r.max_grad_rel_err
                       ? fmt::format(", gradient error {:.1e}", *r.max_grad_rel_err).c_str()
                       : "",
                   std::chrono::duration<double>(Clock::now() - start).count());
      if (!timeline.empty() && s + 1 == steps)
        write_timeline(timeline, batch, plan, events, calibration, planning.config);
    }
    if (const auto fitted = calibration.after_step(world, s, batch, plan, events)) {
      planning.use_coefficients(*fitted);
      next = planning.planner->plan(planning.batches[static_cast<std::size_t>(s + 1)]);
      if (me == 0)
        std::fprintf(stderr,
                     "calibrated from %d measurements of %d steps: their mean error %.1f%% with "
                     "the default cost model, %.1f%% fitted\n",
                     calibration.report().measurements, calibration.steps(),
                     100 * calibration.report().mean_abs_rel_error_before,
                     100 * calibration.report().mean_abs_rel_error_after);
    }
    plan = next;
  }
  if (me == 0 && compared > 0)
    std::fprintf(stderr,
                 "simulated step vs measured over the %d steps after calibration: mean error "
                 "%.1f%% with the default cost model, %.1f%% calibrated\n",
                 compared, 100 * error_default / compared, 100 * error_calibrated / compared);
  world.broadcast(&mismatches, 1, dhp::DataType::I32, 0);
  return mismatches == 0 ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) {
  dhp::CommandLine cli(
      "dhp_train_vlm",
      "mpirun -np N dhp_train_vlm [options]\n"
      "torchrun --redirects 2 --tee 2 --no_python --nproc_per_node N dhp_train_vlm [options]");
  cli.section("Training")
      .option("--steps", "K", "optimizer steps, one batch and one plan each (default 10)")
      .option("--dtype", "float32|float64|bfloat16|float16",
              "parameters and activations (default float32). bfloat16 and float16 are mixed "
              "precision: 16-bit parameters, activations, attention, boundary and dispatch; fp32 "
              "master weights in AdamW (copied back rounded once), gradients summed over "
              "replicas in fp32, attention statistics and ring merge in fp32")
      .option("--loss-scale", "S",
              "16-bit only: static loss scale; the backward starts from loss x S and the "
              "gradients are unscaled in fp32 before the optimizer; a step with non-finite "
              "gradients is skipped (default 1024 for float16, 1 for bfloat16)")
      .option("--seed", "S", "parameters, data and batches (default 1)")
      .option("--lr", "X", "AdamW learning rate (default 3e-3)")
      .option("--batch-size", "N", "samples per global batch (default 8)")
      .flag(
          "--verify",
          "world rank 0 also trains the same model on one process on the same batches; each "
          "line adds ref_loss and max_grad_rel_err (largest ||g - g_ref|| / ||g_ref||); exits 1 "
          "past 1e-9 (float64) or 1e-4 (float32); a 16-bit run is compared with the float64 "
          "reference restarted every step from the run's master weights, bound 1e-1 (bfloat16) or "
          "1e-2 (float16)")
      .section("Layout")
      .option("--placement", "auto|colocated|disjoint",
              "the encoder on the LLM's processes or on its own, one wave ahead (default auto: "
              "disjoint on an even world of 4 or more)")
      .option("--encoder-devices", "N", "disjoint: processes of the encoder (default world / 3)")
      .option("--llm-tp", "T", "LLM tensor-parallel degree (must divide its 4 and 2 heads)")
      .option("--encoder-tp", "T", "encoder tensor-parallel degree (must divide its 4 heads)")
      .option("--nodes", "N", "nodes the processes are modelled on (default 1)")
      .section("Data")
      .option("--max-tokens", "N", "longest sample after scaling (default 2048)")
      .option("--text-scale", "X", "text lengths of data/ are divided by X (default 2)")
      .option("--visual-scale", "X", "visual tokens of data/ are divided by X (default 8)")
      .section("Measuring")
      .option("--calibrate", "K",
              "fit the planner's cost model to the first K steps' measured events (every rank's "
              "LLM and encoder work per wave), then plan with it; each line has simulated_ms "
              "(default cost model) and, after the fit, simulated_calibrated_ms")
      .option("--timeline", "FILE.svg",
              "draw the last step as measured (every process) above the simulator's prediction "
              "of its plan")
      .note(
          "Batches come from ActivityNet (videos) and MathVista (images) in data/, scaled down "
          "to CPU size with the long tail kept. Output: one JSON line per step on stdout "
          "(rank 0): loss, plan hash, CP degrees, layout, communicators created, boundary and "
          "input bytes against their minimum, the slowest process's time per phase (ms), the "
          "planner's estimate and the simulated step; progress on stderr.");
  return dhp::run_tool(cli, argc, argv, [&] { return train(cli); });
}
