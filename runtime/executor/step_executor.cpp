#include "dhp/step_executor.hpp"

#include <algorithm>
#include <array>
#include <chrono>
#include <cmath>
#include <memory>
#include <numeric>

#include <fmt/format.h>

#include "dhp/dispatch.hpp"
#include "dhp/error.hpp"
#include "dhp/item_dispatch.hpp"
#include "dhp/log.hpp"

namespace dhp {
namespace {

using Clock = std::chrono::steady_clock;

bool is_whole_world(const std::vector<int>& group, int world_size) {
  if (static_cast<int>(group.size()) != world_size) return false;
  for (int i = 0; i < world_size; ++i)
    if (group[static_cast<std::size_t>(i)] != i) return false;
  return true;
}

// The devices of every rank of a module (one group per rank: its TP processes) and of
// every TP index (one group per index: its replicas).
std::vector<std::vector<int>> tp_groups(const ModuleLayout& m) {
  std::vector<std::vector<int>> out(static_cast<std::size_t>(m.ranks));
  for (int r = 0; r < m.ranks; ++r)
    for (int t = 0; t < m.tp; ++t) out[static_cast<std::size_t>(r)].push_back(m.device_of(r, t));
  return out;
}
std::vector<std::vector<int>> replica_groups(const ModuleLayout& m) {
  std::vector<std::vector<int>> out(static_cast<std::size_t>(m.tp));
  for (int t = 0; t < m.tp; ++t)
    for (int r = 0; r < m.ranks; ++r) out[static_cast<std::size_t>(t)].push_back(m.device_of(r, t));
  return out;
}

std::uint64_t hash_owners(std::span<const int> owners) {
  std::uint64_t h = 1469598103934665603ull;  // FNV-1a
  for (int o : owners) {
    h ^= static_cast<std::uint64_t>(o) + 0x9e3779b97f4a7c15ull;
    h *= 1099511628211ull;
  }
  return h ^ owners.size();
}

// The plan and the sample owners, the same on every rank (min and max of both hashes).
void check_same_everywhere(Communicator& world, const Plan& plan, std::span<const int> owners) {
  std::uint64_t values[4] = {plan_hash(plan), hash_owners(owners), 0, 0};
  values[2] = ~values[0];
  values[3] = ~values[1];
  world.all_reduce(values, values, 4, DataType::I64, ReduceOp::Max);  // bitwise max of both
  const bool plan_differs = values[0] != plan_hash(plan) || ~values[2] != plan_hash(plan);
  const bool owners_differ = values[1] != hash_owners(owners) || ~values[3] != hash_owners(owners);
  DHP_CHECK(!plan_differs, Communication,
            "{}: ranks hold different plans for step {} (local plan hash {:016x}): every rank "
            "must plan the same batch with the same planner and options",
            world.describe(), plan.step, plan_hash(plan));
  DHP_CHECK(!owners_differ, InvalidArgument,
            "{}: ranks disagree on which rank loaded which sample (sample_owners): every rank "
            "must pass the same owners",
            world.describe());
}

double ms_since(Clock::time_point start) {
  return std::chrono::duration<double, std::milli>(Clock::now() - start).count();
}

}  // namespace

void agree_on_errors(Communicator& world, const std::string& local_error) {
  std::int64_t failed = local_error.empty() ? world.size() : world.rank();
  world.all_reduce(&failed, &failed, 1, DataType::I64, ReduceOp::Min);
  if (failed == world.size()) return;
  // The lowest failing rank's message, for every rank (only on this failure path).
  std::array<char, 1024> text{};
  if (world.rank() == failed)
    std::copy_n(local_error.begin(), std::min(local_error.size(), text.size() - 1), text.begin());
  world.broadcast(text.data(), static_cast<std::int64_t>(text.size()), DataType::U8,
                  static_cast<int>(failed));
  if (!local_error.empty()) DHP_THROW(InvalidArgument, "{}", local_error);
  DHP_THROW(InvalidArgument, "world rank {} refused the step: {}", failed, text.data());
}

const char* to_string(StepEvent::Kind kind) noexcept {
  switch (kind) {
    case StepEvent::Kind::Dispatch:
      return "dispatch";
    case StepEvent::Kind::EncoderForward:
      return "encoder forward";
    case StepEvent::Kind::Boundary:
      return "boundary";
    case StepEvent::Kind::Llm:
      return "LLM";
    case StepEvent::Kind::EncoderBackward:
      return "encoder backward";
    case StepEvent::Kind::GradSync:
      return "gradient sync";
  }
  return "?";
}

std::vector<std::vector<std::vector<int>>> step_partitions(const Plan& plan) {
  std::vector<std::vector<std::vector<int>>> out;
  const auto world = static_cast<int>(std::max<std::int64_t>(
      plan.llm.first_device + std::int64_t{plan.llm.ranks} * plan.llm.tp,
      plan.encoder.first_device + std::int64_t{plan.encoder.ranks} * plan.encoder.tp));
  const auto add = [&](std::vector<std::vector<int>> partition) {
    if (partition.empty()) return;
    if (partition.size() == 1 && is_whole_world(partition.front(), world)) return;
    out.push_back(std::move(partition));
  };
  if (plan.llm.tp > 1) add(tp_groups(plan.llm));
  if (plan.encoder.ranks > 0 && plan.encoder.tp > 1) add(tp_groups(plan.encoder));
  if (plan.llm.ranks > 1) add(replica_groups(plan.llm));
  if (plan.encoder.ranks > 1) add(replica_groups(plan.encoder));
  for (auto& p : communicator_partitions(plan)) out.push_back(std::move(p));
  return out;
}

struct StepExecutor::Impl {
  // Gradient buckets persist across steps while the replicas and the gradients stay.
  struct Buckets {
    Communicator* replicas = nullptr;
    std::vector<GradBuckets::Gradient> gradients;
    std::unique_ptr<GradBuckets> buckets;
  };
  Buckets llm, encoder;

  GradBuckets* buckets_for(Buckets& b, Communicator* replicas,
                           std::vector<GradBuckets::Gradient> gradients, DataType type) {
    if (replicas == nullptr || replicas->size() == 1) return nullptr;
    const bool same =
        b.buckets != nullptr && b.replicas == replicas && b.gradients.size() == gradients.size() &&
        std::equal(
            b.gradients.begin(), b.gradients.end(), gradients.begin(),
            [](const auto& x, const auto& y) { return x.data == y.data && x.count == y.count; });
    if (!same) {
      b.buckets = std::make_unique<GradBuckets>(*replicas, gradients, type);
      b.replicas = replicas;
      b.gradients = std::move(gradients);
    }
    b.buckets->start();
    return b.buckets.get();
  }
};

StepExecutor::StepExecutor(Communicator& world, GroupPool& pool, StepOptions options)
    : world_(world), pool_(pool), options_(options), impl_(std::make_unique<Impl>()) {
  using kernels::DType;
  DHP_CHECK(options_.dtype == DType::F32 || options_.dtype == DType::F64 ||
                options_.dtype == DType::BF16 || options_.dtype == DType::F16,
            InvalidArgument,
            "step executor: dtype {} (value {}) is not a step dtype: F32, F64, BF16 or F16",
            kernels::to_string(options_.dtype), static_cast<int>(options_.dtype));
  DHP_CHECK(std::isfinite(options_.loss_scale) && options_.loss_scale > 0, InvalidArgument,
            "step executor: loss_scale={} must be finite and > 0", options_.loss_scale);
  DHP_CHECK(&pool.parent() == &world, InvalidArgument,
            "step executor: the group pool's parent is {} but the world is {}",
            pool.parent().describe(), world.describe());
  DHP_CHECK(options_.llm_hidden > 0, InvalidArgument, "step executor: llm_hidden={} must be > 0",
            options_.llm_hidden);
  DHP_CHECK(options_.encoder == nullptr || options_.patch_dim > 0, InvalidArgument,
            "step executor: patch_dim={} must be > 0 for a model with an encoder",
            options_.patch_dim);
  DHP_CHECK(options_.llm_attention.causal, InvalidArgument,
            "step executor: the LLM's attention must be causal (llm_attention.causal)");
  DHP_CHECK(!options_.encoder_attention.causal, InvalidArgument,
            "step executor: the encoder's attention is bidirectional (encoder_attention.causal "
            "must be false)");
}

StepExecutor::~StepExecutor() = default;

void StepExecutor::prewarm(const Plan& plan) {
  for (const auto& partition : step_partitions(plan)) pool_.acquire(partition);
}

StepGroups StepExecutor::groups(const Plan& plan) {
  prewarm(plan);
  const int me = world_.rank();
  const auto lookup = [&](const std::vector<int>& group) -> Communicator* {
    return is_whole_world(group, world_.size()) ? &world_ : &pool_.get(group);
  };
  StepGroups g;
  // The group of `groups` that holds this process (null when none does).
  const auto mine = [&](const std::vector<std::vector<int>>& groups) -> Communicator* {
    for (const auto& group : groups)
      if (std::find(group.begin(), group.end(), me) != group.end()) return lookup(group);
    return nullptr;
  };
  if (plan.llm.tp > 1) g.llm_tp = mine(tp_groups(plan.llm));
  if (plan.encoder.tp > 1) g.encoder_tp = mine(tp_groups(plan.encoder));
  if (plan.llm.ranks > 1) g.llm_replicas = mine(replica_groups(plan.llm));
  if (plan.encoder.ranks > 1) g.encoder_replicas = mine(replica_groups(plan.encoder));
  return g;
}

namespace {

// The step's buffers on this process, per wave.
struct WaveBuffers {
  std::vector<std::byte> embeddings, d_embeddings, visual, d_visual;
  CommRequestPtr embeddings_sent, gradients_sent;
};

std::string check_inputs(const StepSchedule& schedule, const StepInputs& inputs,
                         const StepOptions& options) {
  const Batch& batch = schedule.batch();
  if (inputs.sample_owners.size() != batch.samples.size())
    return fmt::format("step: {} sample owners for {} samples", inputs.sample_owners.size(),
                       batch.samples.size());
  std::int64_t rows = 0, patches = 0;
  for (std::size_t s = 0; s < batch.samples.size(); ++s) {
    const int owner = inputs.sample_owners[s];
    if (owner < 0 || owner >= schedule.world_size())
      return fmt::format("step: sample {} (id {}) owned by rank {} outside [0, {})", s,
                         batch.samples[s].id, owner, schedule.world_size());
    if (owner != schedule.world_rank()) continue;
    rows += batch.samples[s].llm_tokens();
    patches += batch.samples[s].encoder_patches();
  }
  if (rows > 0 && (inputs.tokens == nullptr || inputs.labels == nullptr))
    return fmt::format("step: world rank {} loaded {} LLM rows but its {} buffer is null",
                       schedule.world_rank(), rows, inputs.tokens == nullptr ? "tokens" : "labels");
  if (patches > 0 && inputs.patches == nullptr)
    return fmt::format("step: world rank {} loaded {} patches but its patches buffer is null",
                       schedule.world_rank(), patches);
  const auto support = [&](const kernels::AttentionShape& shape, const char* which) -> std::string {
    if (kernels::check_attention_support(options.dtype, Device::CPU, shape) == kernels::Status::Ok)
      return "";
    return fmt::format("step: the {} attention: {}", which, kernels::last_error());
  };
  if (schedule.runs_llm()) {
    if (auto e = support(options.llm_attention, "LLM"); !e.empty()) return e;
  }
  if (schedule.runs_encoder()) {
    if (auto e = support(options.encoder_attention, "encoder"); !e.empty()) return e;
  }
  return "";
}

// The least the inputs can move, from the plan alone: every LLM row to every process of
// the ranks that run it (token id and label), every part's patches to every process of its
// encoder rank, except where the owner is that process.
std::int64_t dispatch_min_bytes(const Plan& plan, const StepSchedule& schedule,
                                std::span<const int> owners, std::int64_t patch_bytes) {
  const ModuleLayout& llm = plan.llm;
  const std::int64_t token_row = 2 * static_cast<std::int64_t>(sizeof(std::int64_t));
  std::int64_t bytes = 0;
  const auto elsewhere = [&](const ModuleLayout& layout, int rank, int owner) {
    std::int64_t n = 0;
    for (int t = 0; t < layout.tp; ++t) n += layout.device_of(rank, t) != owner;
    return n;
  };
  for (const WavePlan& wave : plan.waves) {
    for (const SequencePlan& seq : wave.sequences) {
      const GroupPlan& group = wave.groups[static_cast<std::size_t>(seq.group)];
      const int owner = owners[static_cast<std::size_t>(seq.sample)];
      const std::int64_t length = schedule.sample_lengths()[static_cast<std::size_t>(seq.sample)];
      if (seq.sharding == Sharding::Whole) {
        bytes += length * elsewhere(llm, group.ranks[static_cast<std::size_t>(seq.member)], owner) *
                 token_row;
        continue;
      }
      for (int m = 0; m < group.degree(); ++m)
        bytes += zigzag_chunks(length, group.degree(), m).rows() *
                 elsewhere(llm, group.ranks[static_cast<std::size_t>(m)], owner) * token_row;
    }
  }
  for (const EncoderTask& task : plan.encoder_tasks) {
    const int item = schedule.first_visual()[static_cast<std::size_t>(task.sample)] + task.visual;
    const std::int64_t patches =
        schedule.item_parts(item)[static_cast<std::size_t>(task.part)].patches();
    bytes += patches *
             elsewhere(plan.encoder, task.rank, owners[static_cast<std::size_t>(task.sample)]) *
             patch_bytes;
  }
  return bytes;
}

std::int64_t count_loss_rows(const StepSchedule& schedule, const StepInputs& inputs) {
  std::int64_t rows = 0;
  for (std::size_t s = 0; s < schedule.batch().samples.size(); ++s)
    if (inputs.sample_owners[s] == schedule.world_rank()) rows += schedule.sample_lengths()[s];
  std::int64_t loss = 0;
  for (std::int64_t i = 0; i < rows; ++i) loss += inputs.labels[i] >= 0;
  return loss;
}

}  // namespace

const std::byte* StepRun::wave_patches(int wave) const {
  if (patches.empty()) return nullptr;
  return patches.data() + patch_offset[static_cast<std::size_t>(wave)] * patch_bytes;
}

void StepRun::record(StepEvent::Kind kind, int wave, Clock::time_point started, std::int64_t tokens,
                     double& total, Clock::time_point ended) {
  if (ended == Clock::time_point{}) ended = Clock::now();
  const double begin = std::chrono::duration<double, std::milli>(started - start).count();
  const double end = std::chrono::duration<double, std::milli>(ended - start).count();
  stats.events.push_back({kind, wave, begin, end, tokens});
  total += end - begin;
}

StepRun StepExecutor::begin(const Batch& batch, const Plan& plan, const StepInputs& inputs,
                            std::vector<GradBuckets::Gradient> llm_gradients,
                            std::vector<GradBuckets::Gradient> encoder_gradients) {
  StepRun run;
  run.start = Clock::now();
  // --- checks: the same plan and owners everywhere, then each rank's inputs, agreed on ---
  check_same_everywhere(world_, plan, inputs.sample_owners);
  std::string local_error;
  try {
    run.schedule =
        std::make_unique<StepSchedule>(batch, plan, options_.encoder, world_.rank(), world_.size());
    local_error = check_inputs(*run.schedule, inputs, options_);
  } catch (const Error& e) {
    local_error = e.message();
  }
  agree_on_errors(world_, local_error);
  const StepSchedule& schedule = *run.schedule;

  // --- groups (pool hits once prewarmed) and loss normalisation ---
  run.created_before = pool_.stats().creations;
  run.groups = groups(plan);
  const auto dispatch_start = Clock::now();
  run.loss_tokens = global_count(world_, count_loss_rows(schedule, inputs));
  run.loss_scale = run.loss_tokens > 0 ? 1.0 / static_cast<double>(run.loss_tokens) : 0;
  run.gradient_scale = run.loss_scale * options_.loss_scale;
  run.stats.loss_tokens = run.loss_tokens;

  // --- inputs to the processes that run them ---
  const int waves = schedule.waves();
  run.tokens.resize(static_cast<std::size_t>(waves));
  run.labels.resize(static_cast<std::size_t>(waves));
  std::int64_t sent_bytes = 0;
  for (int w = 0; w < waves; ++w) {
    const WaveDispatch dispatch(plan, w, schedule.sample_lengths(), inputs.sample_owners,
                                world_.rank(), world_.size());
    sent_bytes +=
        dispatch.rows_sent_to_others() * 2 * static_cast<std::int64_t>(sizeof(std::int64_t));
    auto& tokens = run.tokens[static_cast<std::size_t>(w)];
    auto& labels = run.labels[static_cast<std::size_t>(w)];
    tokens.resize(static_cast<std::size_t>(dispatch.local_rows()));
    labels.resize(tokens.size());
    dispatch.forward(world_, inputs.tokens, tokens.data(), sizeof(std::int64_t));
    dispatch.forward(world_, inputs.labels, labels.data(), sizeof(std::int64_t));
  }
  const auto elem = static_cast<std::int64_t>(kernels::dtype_size(options_.dtype));
  run.patch_bytes = options_.patch_dim * elem;
  run.patch_offset.assign(static_cast<std::size_t>(waves) + 1, 0);
  if (!plan.encoder_tasks.empty()) {
    const ItemDispatch items(schedule, inputs.sample_owners);
    for (int w = 0; w <= waves; ++w)
      run.patch_offset[static_cast<std::size_t>(w)] = items.wave_offset(w);
    run.patches.resize(static_cast<std::size_t>(items.local_rows() * run.patch_bytes));
    items.forward(world_, inputs.patches, run.patches.data(), run.patch_bytes);
    sent_bytes += items.rows_sent_to_others() * run.patch_bytes;
  }
  run.stats.dispatch_bytes = sent_bytes;
  run.stats.dispatch_min_bytes =
      dispatch_min_bytes(plan, schedule, inputs.sample_owners, run.patch_bytes);
  run.record(StepEvent::Kind::Dispatch, -1, dispatch_start, 0, run.stats.dispatch_ms);

  // --- gradient buckets of the modules this process holds; the boundary ---
  const DataType grad_type = data_type(options_.dtype);
  if (schedule.runs_llm())
    run.llm_buckets = impl_->buckets_for(impl_->llm, run.groups.llm_replicas,
                                         std::move(llm_gradients), grad_type);
  if (schedule.runs_encoder())
    run.encoder_buckets = impl_->buckets_for(impl_->encoder, run.groups.encoder_replicas,
                                             std::move(encoder_gradients), grad_type);
  run.boundary = std::make_unique<Boundary>(schedule, options_.llm_hidden * elem);
  run.disjoint = plan.placement == EncoderPlacement::Disjoint && plan.encoder.ranks > 0;
  return run;
}

StepStats StepExecutor::end(StepRun& run, double local_loss) {
  try {
    return settle(run, local_loss);
  } catch (const Error& e) {
    throw Error(e.kind(), fmt::format("step {}, gradient sync and totals: {}",
                                      run.schedule->plan().step, e.message()));
  }
}

StepStats StepExecutor::settle(StepRun& run, double local_loss) {
  const StepSchedule& schedule = *run.schedule;
  StepStats& stats = run.stats;
  const auto sync_start = Clock::now();
  for (GradBuckets* buckets : {run.llm_buckets, run.encoder_buckets}) {
    if (buckets == nullptr) continue;
    stats.grad_buckets_before_finish += buckets->issued_before_finish();
    buckets->finish();
  }
  run.record(StepEvent::Kind::GradSync, -1, sync_start, 0, stats.grad_sync_ms);
  // A TP group's processes all compute the same loss: count it once, from TP index 0.
  double loss = schedule.llm_tp_index() > 0 ? 0.0 : local_loss;
  world_.all_reduce(&loss, &loss, 1, DataType::F64, ReduceOp::Sum);
  stats.loss = loss;
  const BoundaryBytes& bytes = run.boundary->bytes();
  std::int64_t sent[3] = {bytes.sent_forward, bytes.sent_backward, stats.dispatch_bytes};
  world_.all_reduce(sent, sent, 3, DataType::I64, ReduceOp::Sum);
  stats.boundary = bytes;
  stats.boundary.sent_forward = sent[0];
  stats.boundary.sent_backward = sent[1];
  stats.dispatch_bytes = sent[2];
  stats.comm_created = pool_.stats().creations - run.created_before;
  stats.step_ms = ms_since(run.start);
  DHP_LOG_DEBUG("{}: step {} loss {:.6f} in {:.1f} ms ({} communicators created)",
                world_.describe(), schedule.plan().step, stats.loss, stats.step_ms,
                stats.comm_created);
  return stats;
}

StepStats StepExecutor::run(const Batch& batch, const Plan& plan, const StepInputs& inputs,
                            StepModel& model) {
  StepRun run = begin(batch, plan, inputs, model.llm_gradients(), model.encoder_gradients());
  const StepSchedule& schedule = *run.schedule;
  StepStats& stats = run.stats;
  Boundary& boundary = *run.boundary;
  const int waves = schedule.waves();
  const std::int64_t row_bytes = boundary.row_bytes();
  const bool disjoint = run.disjoint;
  std::vector<WaveBuffers> buffers(static_cast<std::size_t>(waves));
  const auto encoder_context = [&](int w) {
    EncoderContext ctx;
    ctx.wave = w;
    ctx.last_wave = w + 1 == waves;
    ctx.attention.dtype = options_.dtype;
    ctx.attention.shape = options_.encoder_attention;
    ctx.attention.wave = &schedule.encoder(w);
    ctx.attention.world = &world_;
    ctx.tp = {run.groups.encoder_tp, plan.encoder.tp, schedule.encoder_tp_index()};
    ctx.gradients = w + 1 == waves ? run.encoder_buckets : nullptr;
    return ctx;
  };
  double loss = 0;
  for (const StepAction& action : schedule.program()) {
    const int w = action.wave;
    WaveBuffers& b = buffers[static_cast<std::size_t>(w)];
    const EncoderWave& enc = schedule.encoder(w);
    const LlmWave& llm = schedule.llm(w);
    run_action(plan.step, action, [&] {
      switch (action.kind) {
        case StepActionKind::EncoderForward: {
          const auto start = Clock::now();
          b.embeddings.resize(static_cast<std::size_t>(enc.token_rows * row_bytes));
          EncoderContext ctx = encoder_context(w);
          model.encoder_forward(enc, ctx, run.wave_patches(w), b.embeddings.data());
          run.record(StepEvent::Kind::EncoderForward, w, start, enc.patch_rows, stats.encoder_ms);
          if (disjoint) {
            const auto sent = Clock::now();
            b.embeddings_sent = boundary.send_embeddings(world_, w, b.embeddings.data());
            run.record(StepEvent::Kind::Boundary, w, sent, enc.token_rows, stats.boundary_ms);
          }
          break;
        }
        case StepActionKind::LlmWave: {
          auto start = Clock::now();
          const auto visual_rows = static_cast<std::int64_t>(llm.visuals.size());
          b.visual.resize(static_cast<std::size_t>(visual_rows * row_bytes));
          b.d_visual.assign(b.visual.size(), std::byte{0});
          if (!disjoint)
            b.embeddings_sent = boundary.send_embeddings(world_, w, b.embeddings.data());
          boundary.receive_embeddings(world_, w, disjoint ? nullptr : b.embeddings.data(),
                                      b.visual.data());
          if (!disjoint) b.embeddings_sent->wait();
          run.record(StepEvent::Kind::Boundary, w, start, visual_rows, stats.boundary_ms);
          if (schedule.runs_llm()) {
            start = Clock::now();
            LlmContext ctx;
            ctx.wave = w;
            ctx.last_wave = w + 1 == waves;
            ctx.attention.dtype = options_.dtype;
            ctx.attention.shape = options_.llm_attention;
            ctx.attention.layout = &llm.layout;
            ctx.attention.world = &world_;
            ctx.attention.pool = &pool_;
            ctx.attention.ranks_per_node = options_.ranks_per_node;
            ctx.tp = {run.groups.llm_tp, plan.llm.tp, schedule.llm_tp_index()};
            ctx.gradients = ctx.last_wave ? run.llm_buckets : nullptr;
            loss +=
                model.llm_forward_backward(llm, ctx, run.tokens[static_cast<std::size_t>(w)].data(),
                                           run.labels[static_cast<std::size_t>(w)].data(),
                                           b.visual.data(), run.gradient_scale, b.d_visual.data()) /
                options_.loss_scale;
            run.record(StepEvent::Kind::Llm, w, start, llm.layout.rows, stats.llm_ms);
          }
          start = Clock::now();
          b.gradients_sent = boundary.send_gradients(world_, w, b.d_visual.data());
          if (!disjoint) {
            b.d_embeddings.resize(b.embeddings.size());
            boundary.receive_gradients(world_, w, b.d_visual.data(), b.d_embeddings.data());
            b.gradients_sent->wait();
          }
          run.record(StepEvent::Kind::Boundary, w, start, visual_rows, stats.boundary_ms);
          break;
        }
        case StepActionKind::EncoderBackward: {
          auto start = Clock::now();
          if (disjoint) {
            b.d_embeddings.resize(b.embeddings.size());
            boundary.receive_gradients(world_, w, nullptr, b.d_embeddings.data());
            b.embeddings_sent->wait();
            run.record(StepEvent::Kind::Boundary, w, start, enc.token_rows, stats.boundary_ms);
            start = Clock::now();
          }
          EncoderContext ctx = encoder_context(w);
          model.encoder_backward(enc, ctx, b.d_embeddings.data());
          run.record(StepEvent::Kind::EncoderBackward, w, start, enc.patch_rows, stats.encoder_ms);
          break;
        }
      }
    });
  }
  for (WaveBuffers& b : buffers)
    if (b.gradients_sent != nullptr) b.gradients_sent->wait();
  return end(run, loss);
}

}  // namespace dhp
