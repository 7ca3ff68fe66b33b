// One training step of a multimodal model, exactly as its plan says: the communicator
// groups the plan needs (from the pool), the dispatch of the step's inputs, each wave's
// encoder work (whole items, span ranges, shards in non-causal rings), the boundary that
// moves embeddings into the LLM's layout and gradients back, each wave's LLM work (CP
// groups of any degree, zigzag or whole sequences, tensor parallelism inside a rank), and
// the bucketed gradient sync, with the encoder either colocated with the LLM (encoder work
// before each wave's LLM work on the same devices) or disjoint (on its own devices, one
// wave ahead, so the two overlap).
//
// Framework-free: the trainer's model is a StepModel whose calls receive host buffers and
// the contexts their layers need (attention, tensor parallelism, gradient readiness); the
// LibTorch layer (torch_step.hpp) runs the same schedule with autograd instead.
//
//   dhp::MpiRuntime mpi;  auto world = mpi.world();  dhp::GroupPool pool(*world);
//   dhp::StepExecutor executor(*world, pool, options);
//   for each step:
//     dhp::Plan plan = planner.plan(batch);              // the same on every rank
//     executor.prewarm(next_plan);                        // groups of the next step, ahead
//     dhp::StepStats stats = executor.run(batch, plan, inputs, model);
//     optimizer step on the synchronised gradients
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "dhp/batch.hpp"
#include "dhp/boundary.hpp"
#include "dhp/communicator.hpp"
#include "dhp/cp_attention.hpp"
#include "dhp/encoder_attention.hpp"
#include "dhp/error.hpp"
#include "dhp/grad_sync.hpp"
#include "dhp/group_pool.hpp"
#include "dhp/kernels.hpp"
#include "dhp/model.hpp"
#include "dhp/plan.hpp"
#include "dhp/step_schedule.hpp"
#include "dhp/tensor_parallel.hpp"

namespace dhp {

// What the executor needs to know of the model besides the plan.
//
// Mixed precision: with dtype BF16 or F16 the step's activations, patches, embeddings
// (boundary and dispatch rows) and attention inputs and outputs are 16-bit, and so are the
// gradients the model accumulates; what stays fp32 is the attention's softmax statistics
// (lse) and ring merge, and the gradient sync (16-bit gradients are summed over the
// replicas in fp32 and rounded once, grad_sync.hpp). Master weights are the optimizer's.
struct StepOptions {
  kernels::DType dtype = kernels::DType::F32;  // activations, embeddings, patches, attention
  // Static loss scale: the backward starts from the loss times loss_scale, so the gradients
  // come out scaled by it (the optimizer unscales them, in fp32); StepStats::loss is the
  // unscaled loss. F16 needs one (e.g. 1024) to keep small gradients from flushing to zero.
  double loss_scale = 1;
  std::int64_t llm_hidden = 0;  // features of an LLM token (a boundary row)
  std::int64_t patch_dim = 0;   // features of an encoder input patch
  // Per process (heads already divided by the module's TP).
  kernels::AttentionShape llm_attention;      // causal
  kernels::AttentionShape encoder_attention;  // not causal
  const EncoderSpec* encoder = nullptr;       // spans and patch merge; null: text-only model
  int ranks_per_node = 0;                     // UlyssesRing groups (CpAttentionContext)
};

// This process's share of the step's inputs: the samples it loaded (sample_owners[s] ==
// its world rank), in increasing sample index. Every rank knows sample_owners.
struct StepInputs {
  std::span<const int> sample_owners;
  const std::int64_t* tokens = nullptr;  // [owned LLM rows] token ids (visual rows: not read)
  const std::int64_t* labels = nullptr;  // [owned LLM rows] the label of each row, -1: no loss
  const void* patches = nullptr;         // [owned patches, patch_dim] in options.dtype
};

// One timed piece of a process's step, for timelines and the cost model's calibration.
struct StepEvent {
  enum class Kind { Dispatch, EncoderForward, Boundary, Llm, EncoderBackward, GradSync };
  Kind kind = Kind::Llm;
  int wave = -1;
  double start_ms = 0, end_ms = 0;  // since the step's start on this process
  std::int64_t tokens = 0;          // LLM rows or encoder patches it covered
};
const char* to_string(StepEvent::Kind kind) noexcept;

struct StepStats {
  double loss = 0;                // global mean over the step's loss tokens
  std::int64_t loss_tokens = 0;   // global
  std::int64_t comm_created = 0;  // group communicators created during run() (pool misses)
  BoundaryBytes boundary;         // world totals: sent, and the plan's minimum
  // The step's inputs (token ids, labels, patches) sent between processes, world totals,
  // and the minimum the plan allows (every row to every process that runs it, once).
  std::int64_t dispatch_bytes = 0, dispatch_min_bytes = 0;
  // This process's time per phase and in all (ms), and its events.
  double dispatch_ms = 0, encoder_ms = 0, boundary_ms = 0, llm_ms = 0, grad_sync_ms = 0;
  double step_ms = 0;
  std::vector<StepEvent> events;
  int grad_buckets_before_finish = 0;  // buckets issued during the backward (overlapped)
};

// What an LLM wave's layers get from the executor.
struct LlmContext {
  int wave = 0;
  bool last_wave = false;        // gradients become final in this wave's backward
  CpAttentionContext attention;  // layout, world, pool, shape and dtype of the wave
  TensorParallel tp;
  GradBuckets* gradients = nullptr;  // ready(i) in the last wave's backward (optional)
};

struct EncoderContext {
  int wave = 0;
  bool last_wave = false;
  EncoderAttentionContext attention;
  TensorParallel tp;
  GradBuckets* gradients = nullptr;
};

// The trainer's model, framework-free. The executor calls each method on the processes
// that run that module, in the schedule's order; the model keeps whatever it needs between
// a wave's forward and backward (disjoint placement has two waves of the encoder in flight).
class StepModel {
 public:
  virtual ~StepModel() = default;
  // patches [work.patch_rows, patch_dim] -> embeddings [work.token_rows, llm_hidden].
  virtual void encoder_forward(const EncoderWave& work, EncoderContext& ctx, const void* patches,
                               void* embeddings) = 0;
  // Accumulates the encoder's parameter gradients of the wave from d_embeddings.
  virtual void encoder_backward(const EncoderWave& work, EncoderContext& ctx,
                                const void* d_embeddings) = 0;
  // The wave's LLM forward and backward over the local rows (work.layout): token ids, labels
  // and the visual rows' embeddings (work.visuals order) in; returns the sum over its loss
  // rows of loss x loss_scale, accumulates parameter gradients of that scaled loss, and
  // writes the gradient of the visual rows. (loss_scale includes StepOptions::loss_scale;
  // the executor divides the returned sum by it.)
  virtual double llm_forward_backward(const LlmWave& work, LlmContext& ctx,
                                      const std::int64_t* tokens, const std::int64_t* labels,
                                      const void* visual, double loss_scale, void* d_visual) = 0;
  // The gradient buffers to synchronise over each module's replicas, in the order they
  // become ready (stable addresses; empty where the process holds no such module).
  virtual std::vector<GradBuckets::Gradient> llm_gradients() = 0;
  virtual std::vector<GradBuckets::Gradient> encoder_gradients() = 0;
};

// The communicator groups of a plan's layouts (pool communicators, or the world itself).
struct StepGroups {
  Communicator* llm_tp = nullptr;        // this process's LLM rank (tp > 1)
  Communicator* encoder_tp = nullptr;    // this process's encoder rank (tp > 1)
  Communicator* llm_replicas = nullptr;  // the LLM ranks with this TP index
  Communicator* encoder_replicas = nullptr;
};

// Collective over `world`: each rank passes the error it found ("" when none); if any rank
// found one, every rank throws InvalidArgument with the message of the lowest failing rank
// (so no rank is left waiting on another that refused to go on).
void agree_on_errors(Communicator& world, const std::string& local_error);

// Runs `body`, one action of a step; a dhp::Error leaving it is rethrown (same kind) with
// the step, the wave and the action in front of its message, so that a timeout in a ring
// or at the boundary says where the step was.
template <typename Body>
void run_action(std::int64_t step, const StepAction& action, Body&& body) {
  try {
    body();
  } catch (const Error& e) {
    throw Error(e.kind(), fmt::format("step {}, wave {}, {}: {}", step, action.wave,
                                      to_string(action.kind), e.message()));
  }
}

// Every group partition (world ranks) a plan's step acquires: TP groups of both modules,
// replica groups of both modules, the plan's Ulysses groups. Collective order: as listed.
std::vector<std::vector<std::vector<int>>> step_partitions(const Plan& plan);

// A step in progress on this process: what StepExecutor::begin sets up before the waves
// (checks, groups, loss normalisation, dispatched inputs, the boundary, gradient buckets)
// and StepExecutor::end settles after them (gradient sync, loss and bytes over the world).
// run() walks the schedule between the two with a StepModel; the LibTorch executor
// (torch_step.hpp) walks the same schedule with autograd.
struct StepRun {
  using Clock = std::chrono::steady_clock;

  std::unique_ptr<StepSchedule> schedule;
  StepGroups groups;
  std::int64_t loss_tokens = 0;  // global
  double loss_scale = 0;         // 1 / loss_tokens
  double gradient_scale = 0;     // options.loss_scale / loss_tokens: the backward's seed
  std::vector<std::vector<std::int64_t>> tokens, labels;  // per wave, the local LLM rows
  std::vector<std::byte> patches;                         // every wave's local patches
  std::vector<std::int64_t> patch_offset;                 // [waves + 1] first local patch row
  std::int64_t patch_bytes = 0;                           // bytes of one patch row
  std::unique_ptr<Boundary> boundary;
  GradBuckets* llm_buckets = nullptr;  // null: nothing to sync (one replica, or no module)
  GradBuckets* encoder_buckets = nullptr;
  bool disjoint = false;
  StepStats stats;
  Clock::time_point start;
  std::int64_t created_before = 0;

  // This process's patches of `wave` (null when it has none).
  const std::byte* wave_patches(int wave) const;
  // Adds an event [started, ended) of this process (ended: now when not given) and its
  // duration to `total`.
  void record(StepEvent::Kind kind, int wave, Clock::time_point started, std::int64_t tokens,
              double& total, Clock::time_point ended = {});
};

class StepExecutor {
 public:
  StepExecutor(Communicator& world, GroupPool& pool, StepOptions options);
  ~StepExecutor();
  StepExecutor(const StepExecutor&) = delete;
  StepExecutor& operator=(const StepExecutor&) = delete;

  // Collective over the world: creates (or refreshes) every group `plan` needs. Call it for
  // the next plan while the current step runs, so that run() creates none.
  void prewarm(const Plan& plan);
  // Collective over the world. Checks the plan on every rank (plan-hash agreement, the
  // plan against the batch, the inputs against the plan) before anything else moves.
  StepStats run(const Batch& batch, const Plan& plan, const StepInputs& inputs, StepModel& model);

  // The parts of run() around the waves, for executors that walk the schedule themselves.
  // The gradient lists are the model's (StepModel::llm_gradients / encoder_gradients).
  StepRun begin(const Batch& batch, const Plan& plan, const StepInputs& inputs,
                std::vector<GradBuckets::Gradient> llm_gradients,
                std::vector<GradBuckets::Gradient> encoder_gradients);
  // Collective: waits the gradient sync, sums the loss (`local_loss`: this process's sum of
  // scaled per-token losses) and the boundary bytes over the world.
  StepStats end(StepRun& run, double local_loss);

  const StepOptions& options() const { return options_; }
  Communicator& world() { return world_; }
  GroupPool& pool() { return pool_; }
  // The groups of `plan` for this process (acquiring them: collective).
  StepGroups groups(const Plan& plan);

 private:
  StepStats settle(StepRun& run, double local_loss);

  struct Impl;
  Communicator& world_;
  GroupPool& pool_;
  StepOptions options_;
  std::unique_ptr<Impl> impl_;
};

}  // namespace dhp
