// dhp_train_vlm: trains a small vision-language model with a new dhp plan every batch.
//
//   mpirun -np 4 build/examples/dhp_train_vlm --steps 20 --verify
//   torchrun --no_python --nproc_per_node 4 build/examples/dhp_train_vlm --steps 20 --verify
//
// Every rank plans every batch with dhp::Planner (the plan hash is checked across ranks),
// the step executor runs the plan (encoder, boundary, LLM with CP groups of any size, tensor
// parallelism, bucketed gradient sync), and AdamW steps. One JSON line per step on stdout
// (world rank 0), progress on stderr.
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <set>
#include <string>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include "dhp/command_line.hpp"
#include "dhp/env.hpp"
#include "dhp/error.hpp"
#include "dhp/group_pool.hpp"
#include "dhp/planner.hpp"
#include "dhp/runtime.hpp"
#include "dhp/torch.hpp"
#include "trainer.hpp"

namespace {

using Clock = std::chrono::steady_clock;

std::string json_list(const std::vector<int>& v) { return fmt::format("[{}]", fmt::join(v, ",")); }

int train(dhp::CommandLine& cli) {
  // --- launcher: mpirun (MPI) or torchrun (c10d store + Gloo) ---
  std::unique_ptr<dhp::MpiRuntime> mpi;
  std::unique_ptr<dhp::TorchrunBootstrap> bootstrap;
  std::unique_ptr<dhp::Communicator> world;
  const bool torchrun = std::getenv("OMPI_COMM_WORLD_SIZE") == nullptr &&
                        std::getenv("PMIX_RANK") == nullptr && std::getenv("RANK") != nullptr;
  if (torchrun) {
    bootstrap = std::make_unique<dhp::TorchrunBootstrap>(dhp::env::comm_timeout());
    world = dhp::gloo_world(*bootstrap);
  } else {
    mpi = std::make_unique<dhp::MpiRuntime>();
    world = mpi->world();
  }
  const int n = world->size(), me = world->rank();
  dhp::GroupPool pool(*world);

  // --- the run ---
  vlm::Config config;
  const int steps = static_cast<int>(cli.integer("--steps", 10, 1));
  const std::uint64_t seed = static_cast<std::uint64_t>(cli.integer("--seed", 1));
  const bool verify = cli.has("--verify");
  const std::string dtype_name = cli.choice("--dtype", {"float32", "float64"}, "float32");
  const std::string placement = cli.choice("--placement", {"auto", "colocated", "disjoint"}, "auto");
  const int nodes = static_cast<int>(cli.integer("--nodes", 1, 1));
  DHP_CHECK(n % nodes == 0, InvalidArgument, "--nodes {} does not divide the world of {}", nodes, n);
  dhp::PlannerOptions options;
  options.llm_tp = static_cast<int>(cli.integer("--llm-tp", 1, 1));
  options.encoder_tp = static_cast<int>(cli.integer("--encoder-tp", 1, 1));
  const bool disjoint = placement == "disjoint" || (placement == "auto" && n >= 4 && n % 2 == 0);
  if (disjoint) {
    DHP_CHECK(n >= 2, InvalidArgument, "a disjoint encoder needs two processes or more");
    options.placement = dhp::EncoderPlacement::Disjoint;
    options.encoder_devices = static_cast<int>(cli.integer("--encoder-devices", std::max(1, n / 3), 1));
  }
  const std::vector<dhp::Batch> data = vlm::batches(
      config, steps + 1, static_cast<int>(cli.integer("--batch-size", 8, 1)), seed,
      cli.real("--text-scale", 2.0), cli.real("--visual-scale", 8.0),
      cli.integer("--max-tokens", 2048, 16));
  const double capacity = vlm::choose_capacity(config, n, nodes, options, data);
  const dhp::Planner planner(vlm::cpu_cluster(n, nodes, capacity), config.spec(), options);

  vlm::TrainerOptions trainer_options;
  trainer_options.config = config;
  trainer_options.dtype = dtype_name == "float64" ? at::kDouble : at::kFloat;
  trainer_options.seed = seed;
  trainer_options.learning_rate = cli.real("--lr", 3e-3);
  trainer_options.verify = verify;
  dhp::Plan plan = planner.plan(data[0]);
  trainer_options.llm = plan.llm;
  trainer_options.encoder = plan.encoder;
  trainer_options.placement = plan.placement;
  vlm::Trainer trainer(*world, pool, trainer_options);
  trainer.executor().prewarm(plan);
  if (me == 0)
    std::fprintf(stderr,
                 "dhp_train_vlm: %d processes, %s, %s, LLM %d ranks x tp %d, encoder %d ranks x tp "
                 "%d, %.4f GiB per process%s\n",
                 n, dtype_name.c_str(), dhp::to_string(plan.placement), plan.llm.ranks,
                 plan.llm.tp, plan.encoder.ranks, plan.encoder.tp, capacity,
                 verify ? ", verifying against one process" : "");

  const auto start = Clock::now();
  const double tolerance = dtype_name == "float64" ? 1e-9 : 1e-4;
  int mismatches = 0;
  for (int s = 0; s < steps; ++s) {
    const auto plan_start = Clock::now();
    const dhp::Plan next = planner.plan(data[static_cast<std::size_t>(s + 1)]);
    const double plan_ms = std::chrono::duration<double, std::milli>(Clock::now() - plan_start).count();
    const vlm::StepReport r = trainer.step(data[static_cast<std::size_t>(s)], plan, &next);
    double step_ms = r.stats.step_ms;
    world->all_reduce(&step_ms, &step_ms, 1, dhp::DataType::F64, dhp::ReduceOp::Max);
    if (me == 0) {
      std::set<int> degrees;
      for (const dhp::WavePlan& w : plan.waves)
        for (const dhp::GroupPlan& g : w.groups) degrees.insert(g.degree());
      int cut = 0;
      for (const dhp::EncoderTask& t : plan.encoder_tasks) cut += t.part == 0 && t.parts > 1;
      std::string line = fmt::format(
          "{{\"step\": {}, \"loss\": {:.8f}, \"plan_hash\": \"{:016x}\", \"world\": {}, "
          "\"cp_degrees\": {}, \"waves\": {}, \"cut_items\": {}, \"placement\": \"{}\", "
          "\"encoder_tp\": {}, \"llm_tp\": {}, \"comm_created\": {}, \"boundary_bytes\": {}, "
          "\"boundary_min_bytes\": {}, \"step_ms\": {:.2f}, \"plan_ms\": {:.2f}",
          s, r.stats.loss, dhp::plan_hash(plan), n,
          json_list({degrees.begin(), degrees.end()}), plan.waves.size(), cut,
          dhp::to_string(plan.placement), plan.encoder.tp, plan.llm.tp, r.stats.comm_created,
          r.stats.boundary.sent_forward + r.stats.boundary.sent_backward,
          r.stats.boundary.min_forward + r.stats.boundary.min_backward, step_ms, plan_ms);
      if (r.ref_loss) {
        line += fmt::format(", \"ref_loss\": {:.8f}, \"max_grad_rel_err\": {:.3e}", *r.ref_loss,
                            *r.max_grad_rel_err);
        if (*r.max_grad_rel_err > tolerance ||
            std::abs(r.stats.loss - *r.ref_loss) > tolerance * std::abs(*r.ref_loss)) {
          ++mismatches;
          std::fprintf(stderr,
                       "step %d: the run does not match one process (loss %.10g vs %.10g, "
                       "gradient error %.3g, tolerance %.0e)\n",
                       s, r.stats.loss, *r.ref_loss, *r.max_grad_rel_err, tolerance);
        }
      }
      std::printf("%s}\n", line.c_str());
      std::fflush(stdout);
      std::fprintf(stderr, "step %d/%d: loss %.4f%s (%.1f s)\n", s + 1, steps, r.stats.loss,
                   r.max_grad_rel_err ? fmt::format(", gradient error {:.1e}", *r.max_grad_rel_err).c_str() : "",
                   std::chrono::duration<double>(Clock::now() - start).count());
    }
    plan = next;
  }
  world->broadcast(&mismatches, 1, dhp::DataType::I32, 0);
  return mismatches == 0 ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) {
  dhp::CommandLine cli(
      "dhp_train_vlm",
      "mpirun -np N dhp_train_vlm [options]\n"
      "torchrun --no_python --nproc_per_node N dhp_train_vlm [options]");
  cli.section("Training")
      .option("--steps", "K", "optimizer steps, one batch and one plan each (default 10)")
      .option("--dtype", "float32|float64", "parameters and activations (default float32)")
      .option("--seed", "S", "parameters, data and batches (default 1)")
      .option("--lr", "X", "AdamW learning rate (default 3e-3)")
      .option("--batch-size", "N", "samples per global batch (default 8)")
      .flag("--verify",
            "world rank 0 also trains the same model on one process on the same batches; each "
            "line adds ref_loss and max_grad_rel_err (largest ||g - g_ref|| / ||g_ref||); exits 1 "
            "past 1e-9 (float64) or 1e-4 (float32)")
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
      .note("Batches come from ActivityNet (videos) and MathVista (images) in data/, scaled down "
            "to CPU size with the long tail kept. Output: one JSON line per step on stdout "
            "(rank 0); progress on stderr.");
  return dhp::run_tool(cli, argc, argv, [&] { return train(cli); });
}
