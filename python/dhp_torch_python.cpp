// dhp._torch: thin bindings of dhp's LibTorch layer (include/dhp/torch.hpp, torch_step.hpp)
// for PyTorch: communicators from the torchrun bootstrap, the group pool, the step executor
// with a Python-subclassable model, and the runtime's stages as autograd functions
// (dispatch, context-parallel attention, the encoder/LLM boundary, tensor parallelism) and
// the gradient sync. Built against the torch of the Python it is imported in (its headers,
// its pybind11 and libtorch_python). python/dhp/torch.py is the documented API: it checks
// Python values first; these bindings check what reaches C++ again and dispatch.
//
// Lifetimes: autograd nodes keep raw pointers to their contexts (torch_step.hpp). Objects
// whose contexts a graph uses (RingAttention, WaveDispatch, Boundary, TensorParallel) are
// attached to the graph by dhp/torch.py (grad_fn.metadata), so they outlive its backward.
#include <torch/extension.h>  // first: Python.h and torch's pybind11 before anything else

#include <torch/csrc/autograd/python_variable.h>

#include <fmt/format.h>

#include <chrono>
#include <cmath>
#include <deque>
#include <list>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <tuple>
#include <vector>

#include "dhp/error.hpp"
#include "dhp/grad_sync.hpp"
#include "dhp/group_pool.hpp"
#include "dhp/io.hpp"
#include "dhp/packed_cp_attention.hpp"
#include "dhp/torch.hpp"
#include "dhp/torch_step.hpp"
#include "errors.hpp"

namespace py = pybind11;

namespace {

using dhp::Communicator;

// ---------------------------------------------------------------- values

dhp::kernels::DType dtype_from(const std::string& name) {
  if (name == "float32") return dhp::kernels::DType::F32;
  if (name == "float64") return dhp::kernels::DType::F64;
  if (name == "bfloat16") return dhp::kernels::DType::BF16;
  if (name == "float16") return dhp::kernels::DType::F16;
  DHP_THROW(InvalidArgument, "dtype={}: expected float32, float64, bfloat16 or float16", name);
}

dhp::DataType comm_type(const at::Tensor& t, const char* name) {
  switch (t.scalar_type()) {
    case at::kFloat:
      return dhp::DataType::F32;
    case at::kDouble:
      return dhp::DataType::F64;
    case at::kBFloat16:
      return dhp::DataType::BF16;
    case at::kHalf:
      return dhp::DataType::F16;
    case at::kInt:
      return dhp::DataType::I32;
    case at::kLong:
      return dhp::DataType::I64;
    case at::kByte:
      return dhp::DataType::U8;
    default:
      DHP_THROW(InvalidArgument, "{} has dtype {}; expected a float, int32, int64 or uint8 tensor",
                name, std::string(c10::toString(t.scalar_type())));
  }
}

std::string shape_of(const at::Tensor& t) {
  return t.defined() ? c10::str(t.sizes()) : std::string("undefined");
}

// A tensor a communicator reads or writes in place: contiguous, on the communicator's device.
void check_comm_tensor(const at::Tensor& t, const char* name, const Communicator& comm) {
  DHP_CHECK(t.defined(), InvalidArgument, "{} is undefined", name);
  DHP_CHECK(t.is_contiguous(), InvalidArgument,
            "{} (shape {}) is not contiguous: pass tensor.contiguous()", name, shape_of(t));
  const bool cuda = comm.device() == dhp::Device::CUDA;
  DHP_CHECK(t.is_cuda() == cuda && (cuda || t.is_cpu()), InvalidArgument,
            "{} is on {}, but {} moves {} tensors", name, t.device().str(), comm.describe(),
            cuda ? "CUDA" : "CPU");
}

dhp::ReduceOp reduce_op(const std::string& op) {
  if (op == "sum") return dhp::ReduceOp::Sum;
  if (op == "max") return dhp::ReduceOp::Max;
  if (op == "min") return dhp::ReduceOp::Min;
  DHP_THROW(InvalidArgument, "op='{}': expected 'sum', 'max' or 'min'", op);
}

dhp::CpAttention attention_kind(const std::string& name) {
  if (name == "ring") return dhp::CpAttention::Ring;
  if (name == "ulysses") return dhp::CpAttention::Ulysses;
  if (name == "ulysses_ring") return dhp::CpAttention::UlyssesRing;
  DHP_THROW(InvalidArgument, "attention='{}': expected 'ring', 'ulysses' or 'ulysses_ring'", name);
}

at::Tensor long_tensor(const std::vector<std::int64_t>& values) {
  return at::tensor(values, at::TensorOptions().dtype(at::kLong));
}

template <typename T>
at::Tensor long_tensor_of(const std::vector<T>& values) {
  return long_tensor(std::vector<std::int64_t>(values.begin(), values.end()));
}

// ---------------------------------------------------------------- world

struct WorldOwner {
  std::unique_ptr<dhp::TorchrunBootstrap> bootstrap;
  std::unique_ptr<Communicator> comm;  // destroyed before the bootstrap's store
};

std::shared_ptr<Communicator> make_world(const std::string& backend, double timeout_s, int rank,
                                         int world_size, int local_rank, int local_world_size,
                                         const std::string& master_addr, int master_port) {
  DHP_CHECK(timeout_s > 0, InvalidArgument, "timeout={} s: expected > 0", timeout_s);
  dhp::TorchrunEnv env;
  env.rank = rank;
  env.world_size = world_size;
  env.local_rank = local_rank;
  env.local_world_size = local_world_size;
  env.master_addr = master_addr;
  env.master_port = master_port;
  DHP_CHECK(world_size >= 1 && rank >= 0 && rank < world_size, InvalidArgument,
            "RANK={} outside [0, WORLD_SIZE={})", rank, world_size);
  DHP_CHECK(master_port >= 1 && master_port <= 65535, InvalidArgument,
            "MASTER_PORT={} outside [1, 65535]", master_port);
  const auto timeout = std::chrono::milliseconds(static_cast<std::int64_t>(timeout_s * 1000));
  auto owner = std::make_shared<WorldOwner>();
  owner->bootstrap = std::make_unique<dhp::TorchrunBootstrap>(env, timeout);
  if (backend == "gloo") {
    owner->comm = dhp::gloo_world(*owner->bootstrap);
  } else if (backend == "nccl") {
#ifdef DHP_HAVE_NCCL
    owner->comm = dhp::nccl_world(*owner->bootstrap);
#else
    DHP_THROW(InvalidArgument,
              "backend='nccl': this dhp was built without CUDA/NCCL (DHP_WITH_CUDA); use "
              "backend='gloo' for CPU tensors");
#endif
  } else {
    DHP_THROW(InvalidArgument, "backend='{}': expected 'gloo' or 'nccl'", backend);
  }
  Communicator* comm = owner->comm.get();
  return std::shared_ptr<Communicator>(std::move(owner), comm);
}

// ---------------------------------------------------------------- attention

dhp::CpAttentionOptions attention_options(const dhp::WaveLayout* layout, Communicator* world,
                                          dhp::GroupPool* pool, bool causal, double softmax_scale,
                                          int ranks_per_node) {
  DHP_CHECK(softmax_scale >= 0, InvalidArgument,
            "softmax_scale={}: expected > 0 (or 0 for 1/sqrt(head_dim))", softmax_scale);
  DHP_CHECK(ranks_per_node >= 0, InvalidArgument, "ranks_per_node={}: expected >= 0",
            ranks_per_node);
  dhp::CpAttentionOptions o;
  o.layout = layout;
  o.world = world;
  o.pool = pool;
  o.softmax_scale = softmax_scale;
  o.causal = causal;
  o.ranks_per_node = ranks_per_node;
  return o;
}

// Options are kept for the object's life: the autograd nodes point to them.
class OptionsStore {
 public:
  const dhp::CpAttentionOptions* keep(const dhp::CpAttentionOptions& o) {
    const auto key = std::make_tuple(o.causal, o.softmax_scale, o.pool, o.ranks_per_node);
    auto it = index_.find(key);
    if (it != index_.end()) return it->second;
    options_.push_back(o);
    index_.emplace(key, &options_.back());
    return &options_.back();
  }

 private:
  std::list<dhp::CpAttentionOptions> options_;
  std::map<std::tuple<bool, double, dhp::GroupPool*, int>, const dhp::CpAttentionOptions*> index_;
};

py::object attention_result(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                            const dhp::CpAttentionOptions& options, bool with_lse) {
  if (with_lse) {
    std::pair<at::Tensor, at::Tensor> r;
    {
      py::gil_scoped_release release;
      r = dhp::cp_attention_with_lse(q, k, v, options);
    }
    return py::make_tuple(r.first, r.second);
  }
  at::Tensor out;
  {
    py::gil_scoped_release release;
    out = dhp::cp_attention(q, k, v, options);
  }
  return py::cast(out);
}

// The one-call ring API (packed_cp_attention.hpp) with autograd.
struct RingAttention {
  RingAttention(std::vector<std::int64_t> lengths, std::vector<int> ring, Communicator& world,
                std::vector<dhp::SequenceSharding> sharding, const std::string& attention,
                bool causal, double softmax_scale, dhp::GroupPool* pool, int ranks_per_node)
      : cp(std::move(lengths), std::move(ring), world.rank(), world.size(), std::move(sharding),
           attention_kind(attention)),
        world(&world),
        options(
            attention_options(&cp.layout(), &world, pool, causal, softmax_scale, ranks_per_node)) {
    DHP_CHECK(attention == "ring" || pool != nullptr, InvalidArgument,
              "attention='{}' needs a GroupPool holding the ring's group (pool=...)", attention);
  }
  dhp::PackedCpAttention cp;
  Communicator* world;
  dhp::CpAttentionOptions options;
};

std::vector<dhp::SequenceSharding> shardings_from(const std::vector<std::string>& kinds,
                                                  const std::vector<int>& members) {
  DHP_CHECK(kinds.size() == members.size(), InvalidArgument, "sharding: {} kinds for {} members",
            kinds.size(), members.size());
  std::vector<dhp::SequenceSharding> out;
  for (std::size_t i = 0; i < kinds.size(); ++i) {
    if (kinds[i] == "zigzag") {
      out.push_back(dhp::SequenceSharding::zigzag());
    } else if (kinds[i] == "whole") {
      out.push_back(dhp::SequenceSharding::whole(members[i]));
    } else {
      DHP_THROW(InvalidArgument, "sharding[{}]='{}': expected 'zigzag' or 'whole'", i, kinds[i]);
    }
  }
  return out;
}

// ---------------------------------------------------------------- dispatch

struct Dispatch {
  Dispatch(const std::string& batch_json, const std::string& plan_json, int wave,
           std::vector<int> owners, Communicator& world)
      : batch(dhp::batch_from_json(batch_json, "batch")),
        plan(dhp::plan_from_json(plan_json, "plan")),
        owners(std::move(owners)),
        world(&world) {
    dhp::validate(plan, batch, dhp::ErrorKind::InvalidArgument);
    DHP_CHECK(wave >= 0 && wave < static_cast<int>(plan.waves.size()), InvalidArgument,
              "wave={}: the plan has {} waves", wave, plan.waves.size());
    DHP_CHECK(this->owners.size() == batch.samples.size(), InvalidArgument,
              "sample_owners has {} entries for {} samples", this->owners.size(),
              batch.samples.size());
    for (const dhp::Sample& s : batch.samples) lengths.push_back(s.llm_tokens());
    dispatch.emplace(plan, wave, lengths, this->owners, world.rank(), world.size());
  }
  dhp::Batch batch;
  dhp::Plan plan;
  std::vector<std::int64_t> lengths;
  std::vector<int> owners;
  Communicator* world;
  std::optional<dhp::WaveDispatch> dispatch;
  OptionsStore options;
};

py::list pieces_of(const dhp::WaveLayout& layout) {
  py::list out;
  for (const dhp::LocalPiece& p : layout.pieces) {
    py::dict d;
    d["sequence"] = p.sequence;
    d["sample"] = p.sample;
    d["sharding"] = dhp::to_string(p.sharding);
    d["length"] = p.length;
    d["offset"] = p.offset;
    d["rows"] = p.rows;
    out.append(d);
  }
  return out;
}

// ---------------------------------------------------------------- schedule and boundary

struct Schedule {
  Schedule(const std::string& batch_json, const std::string& plan_json,
           const std::string& model_json, int world_rank, int world_size)
      : batch(dhp::batch_from_json(batch_json, "batch")),
        plan(dhp::plan_from_json(plan_json, "plan")),
        model(dhp::model_from_json(model_json, "model")) {
    dhp::validate(plan, batch, dhp::ErrorKind::InvalidArgument);
    schedule = std::make_unique<dhp::StepSchedule>(
        batch, plan, model.encoder ? &*model.encoder : nullptr, world_rank, world_size);
  }
  dhp::Batch batch;
  dhp::Plan plan;
  dhp::ModelSpec model;
  std::unique_ptr<dhp::StepSchedule> schedule;
};

struct PyBoundary {
  PyBoundary(Schedule& schedule, std::int64_t hidden, const std::string& dtype, Communicator& world)
      : schedule(&schedule), world(&world) {
    DHP_CHECK(hidden >= 1, InvalidArgument, "hidden={}: expected >= 1", hidden);
    DHP_CHECK(world.size() == schedule.schedule->world_size() &&
                  world.rank() == schedule.schedule->world_rank(),
              InvalidArgument, "the schedule was made for rank {} of {}, the world is {}",
              schedule.schedule->world_rank(), schedule.schedule->world_size(), world.describe());
    const dhp::kernels::DType kind = dtype_from(dtype);
    options = at::TensorOptions().dtype(dhp::scalar_type(kind));
    boundary = std::make_unique<dhp::Boundary>(*schedule.schedule,
                                               hidden * dhp::data_type_size(dhp::data_type(kind)));
    for (int w = 0; w < schedule.schedule->waves(); ++w) {
      dhp::BoundaryWave& bw = waves.emplace_back();
      bw.boundary = boundary.get();
      bw.world = &world;
      bw.wave = w;
      bw.produced_rows = schedule.schedule->encoder(w).token_rows;
      bw.consumed_rows = static_cast<std::int64_t>(schedule.schedule->llm(w).visuals.size());
      bw.hidden = hidden;
      bw.options = options;
    }
  }
  dhp::BoundaryWave& wave(int w) {
    DHP_CHECK(w >= 0 && w < static_cast<int>(waves.size()), InvalidArgument,
              "wave={}: the plan has {} waves", w, waves.size());
    return waves[static_cast<std::size_t>(w)];
  }
  Schedule* schedule;
  Communicator* world;
  at::TensorOptions options;
  std::unique_ptr<dhp::Boundary> boundary;
  std::deque<dhp::BoundaryWave> waves;  // stable addresses: the graph points to them
};

// ---------------------------------------------------------------- the step

// A Python subclass of dhp.torch.StepModel implements these; the executor calls them with
// the GIL released, so each call takes it.
class PyStepModel : public dhp::TorchStepModel {
 public:
  at::Tensor encode(const at::Tensor& patches, dhp::TorchEncoderContext& ctx) override {
    py::gil_scoped_acquire gil;
    return tensor_result(
        override_of("encode")(patches, py::cast(&ctx, py::return_value_policy::reference)),
        "encode");
  }
  at::Tensor llm_loss(const at::Tensor& tokens, const at::Tensor& visual,
                      const at::Tensor& visual_rows, const at::Tensor& labels,
                      dhp::TorchLlmContext& ctx) override {
    py::gil_scoped_acquire gil;
    return tensor_result(
        override_of("llm_loss")(tokens, visual, visual_rows, labels,
                                py::cast(&ctx, py::return_value_policy::reference)),
        "llm_loss");
  }
  std::vector<at::Tensor> llm_parameters() override {
    py::gil_scoped_acquire gil;
    return tensor_list(override_of("llm_parameters")(), "llm_parameters");
  }
  std::vector<at::Tensor> encoder_parameters() override {
    py::gil_scoped_acquire gil;
    return tensor_list(override_of("encoder_parameters")(), "encoder_parameters");
  }

 private:
  py::function override_of(const char* name) {
    py::function f = py::get_override(static_cast<const dhp::TorchStepModel*>(this), name);
    if (!f) {
      DHP_THROW(InvalidArgument,
                "{}.{} is not implemented: a dhp.torch.StepModel subclass "
                "defines encode, llm_loss, llm_parameters and encoder_parameters",
                py::str(py::type::of(py::cast(this)).attr("__name__")).cast<std::string>(), name);
    }
    return f;
  }
  static at::Tensor tensor_result(const py::object& result, const char* method) {
    if (!THPVariable_Check(result.ptr())) {
      DHP_THROW(InvalidArgument, "StepModel.{} returned {}; expected a torch.Tensor", method,
                py::str(py::type::of(result).attr("__name__")).cast<std::string>());
    }
    return THPVariable_Unpack(result.ptr());
  }
  static std::vector<at::Tensor> tensor_list(const py::object& result, const char* method) {
    std::vector<at::Tensor> out;
    if (!py::isinstance<py::iterable>(result)) {
      DHP_THROW(InvalidArgument, "StepModel.{} returned {}; expected a list of tensors", method,
                py::str(py::type::of(result).attr("__name__")).cast<std::string>());
    }
    int i = 0;
    for (const py::handle item : result) {
      if (!THPVariable_Check(item.ptr())) {
        DHP_THROW(InvalidArgument, "StepModel.{}()[{}] is a {}; expected a torch.Tensor", method, i,
                  py::str(py::type::of(item).attr("__name__")).cast<std::string>());
      }
      out.push_back(THPVariable_Unpack(item.ptr()));
      ++i;
    }
    return out;
  }
};

struct PyStepExecutor {
  PyStepExecutor(Communicator& world, dhp::GroupPool& pool, const std::string& model_json,
                 const std::string& dtype, std::int64_t patch_dim, int llm_tp, int encoder_tp,
                 int ranks_per_node, double llm_softmax_scale, double encoder_softmax_scale,
                 double loss_scale)
      : model(dhp::model_from_json(model_json, "model")), llm_tp(llm_tp), encoder_tp(encoder_tp) {
    const dhp::TransformerSpec& llm = model.llm;
    DHP_CHECK(llm_tp >= 1 && llm.heads % llm_tp == 0 && llm.kv_heads % llm_tp == 0, InvalidArgument,
              "llm_tp={} must divide the LLM's {} query and {} KV heads", llm_tp, llm.heads,
              llm.kv_heads);
    DHP_CHECK(llm.hidden % llm.heads == 0, InvalidArgument,
              "model.llm.hidden={} is not a multiple of its heads={}", llm.hidden, llm.heads);
    DHP_CHECK(ranks_per_node >= 0, InvalidArgument, "ranks_per_node={}: expected >= 0",
              ranks_per_node);
    dhp::StepOptions o;
    o.dtype = dtype_from(dtype);
    DHP_CHECK(std::isfinite(loss_scale) && loss_scale > 0, InvalidArgument,
              "loss_scale={}: expected a finite number > 0", loss_scale);
    o.loss_scale = loss_scale;
    o.llm_hidden = llm.hidden;
    o.llm_attention = {llm.heads / llm_tp, llm.kv_heads / llm_tp, llm.hidden / llm.heads,
                       llm_softmax_scale, true};
    if (model.encoder) {
      const dhp::TransformerSpec& enc = model.encoder->arch;
      DHP_CHECK(encoder_tp >= 1 && enc.heads % encoder_tp == 0 && enc.kv_heads % encoder_tp == 0,
                InvalidArgument, "encoder_tp={} must divide the encoder's {} query and {} KV heads",
                encoder_tp, enc.heads, enc.kv_heads);
      DHP_CHECK(enc.hidden % enc.heads == 0, InvalidArgument,
                "model.encoder.hidden={} is not a multiple of its heads={}", enc.hidden, enc.heads);
      DHP_CHECK(patch_dim >= 1, InvalidArgument, "patch_dim={}: expected >= 1", patch_dim);
      o.patch_dim = patch_dim;
      o.encoder_attention = {enc.heads / encoder_tp, enc.kv_heads / encoder_tp,
                             enc.hidden / enc.heads, encoder_softmax_scale, false};
      o.encoder = &*model.encoder;
    }
    o.ranks_per_node = ranks_per_node;
    executor = std::make_unique<dhp::TorchStepExecutor>(world, pool, o);
  }

  dhp::StepStats run(const std::string& batch_json, const std::string& plan_json,
                     const std::vector<int>& owners, const at::Tensor& tokens,
                     const at::Tensor& labels, const at::Tensor& patches,
                     dhp::TorchStepModel& step_model) {
    const dhp::Batch batch = dhp::batch_from_json(batch_json, "batch");
    const dhp::Plan plan = dhp::plan_from_json(plan_json, "plan");
    DHP_CHECK(plan.llm.tp == llm_tp && plan.encoder.tp == encoder_tp, InvalidArgument,
              "the plan has llm.tp={} and encoder.tp={}, the executor was made for llm_tp={} and "
              "encoder_tp={} (the model's slices follow them): plan with Planner(llm_tp={}, "
              "encoder_tp={})",
              plan.llm.tp, plan.encoder.tp, llm_tp, encoder_tp, llm_tp, encoder_tp);
    Communicator& world = executor->core().world();
    const dhp::StepOptions& o = executor->core().options();
    DHP_CHECK(owners.size() == batch.samples.size(), InvalidArgument,
              "sample_owners has {} entries for the batch's {} samples", owners.size(),
              batch.samples.size());
    std::int64_t rows = 0, patch_rows = 0;
    for (std::size_t s = 0; s < owners.size(); ++s) {
      DHP_CHECK(owners[s] >= 0 && owners[s] < world.size(), InvalidArgument,
                "sample_owners[{}]={}: expected a rank in [0, {})", s, owners[s], world.size());
      if (owners[s] != world.rank()) continue;
      rows += batch.samples[s].llm_tokens();
      patch_rows += batch.samples[s].encoder_patches();
    }
    const auto check_rows = [&](const at::Tensor& t, const char* name) {
      DHP_CHECK(t.defined() && t.dim() == 1 && t.size(0) == rows && t.scalar_type() == at::kLong &&
                    t.is_cpu() && t.is_contiguous(),
                InvalidArgument,
                "inputs.{} is a {} {} tensor of shape {}{}; this process (rank {}) loaded samples "
                "of {} LLM rows: expected a contiguous CPU int64 tensor of shape [{}]",
                name, t.defined() ? t.device().str() : "",
                t.defined() ? std::string(c10::toString(t.scalar_type())) : "", shape_of(t),
                t.defined() && !t.is_contiguous() ? " (not contiguous)" : "", world.rank(), rows,
                rows);
    };
    check_rows(tokens, "tokens");
    check_rows(labels, "labels");
    const at::ScalarType dtype = dhp::scalar_type(o.dtype);
    if (o.encoder != nullptr) {
      DHP_CHECK(patches.defined() && patches.dim() == 2 && patches.size(0) == patch_rows &&
                    patches.size(1) == o.patch_dim && patches.scalar_type() == dtype &&
                    patches.is_cpu() && patches.is_contiguous(),
                InvalidArgument,
                "inputs.patches is a {} {} tensor of shape {}{}; this process (rank {}) loaded "
                "samples of {} patches: expected a contiguous CPU {} tensor of shape [{}, {}]",
                patches.defined() ? patches.device().str() : "",
                patches.defined() ? std::string(c10::toString(patches.scalar_type())) : "",
                shape_of(patches),
                patches.defined() && !patches.is_contiguous() ? " (not contiguous)" : "",
                world.rank(), patch_rows, std::string(c10::toString(dtype)), patch_rows,
                o.patch_dim);
    }
    const dhp::StepInputs inputs{owners, tokens.data_ptr<std::int64_t>(),
                                 labels.data_ptr<std::int64_t>(),
                                 o.encoder != nullptr ? patches.data_ptr() : nullptr};
    py::gil_scoped_release release;
    return executor->run(batch, plan, inputs, step_model);
  }

  dhp::ModelSpec model;
  int llm_tp, encoder_tp;
  std::unique_ptr<dhp::TorchStepExecutor> executor;
};

const char* event_kind(dhp::StepEvent::Kind kind) {
  switch (kind) {
    case dhp::StepEvent::Kind::Dispatch:
      return "dispatch";
    case dhp::StepEvent::Kind::EncoderForward:
      return "encoder_forward";
    case dhp::StepEvent::Kind::Boundary:
      return "boundary";
    case dhp::StepEvent::Kind::Llm:
      return "llm";
    case dhp::StepEvent::Kind::EncoderBackward:
      return "encoder_backward";
    case dhp::StepEvent::Kind::GradSync:
      return "grad_sync";
  }
  return "unknown";
}

py::dict pool_stats(const dhp::GroupPool& pool) {
  const dhp::GroupPoolStats& s = pool.stats();
  py::dict d;
  d["hits"] = s.hits;
  d["misses"] = s.misses;
  d["creations"] = s.creations;
  d["splits"] = s.splits;
  d["destroyed"] = s.destroyed;
  d["creation_ms"] = s.creation_ms;
  return d;
}

// Communicator, world() and the group pool.
void bind_communicators(py::module_& m) {
  py::class_<Communicator, std::shared_ptr<Communicator>>(
      m, "Communicator",
      "A group of processes that run collectives together: the world (dhp.torch.world()) or a "
      "group of a GroupPool. Tensors are moved in place and must be contiguous, on the CPU for "
      "'gloo' and on the GPU for 'nccl'. Every call fails with dhp.CommunicationError instead of "
      "hanging when a peer dies or the timeout passes.")
      .def_property_readonly("rank", &Communicator::rank, "This process's rank in the group.")
      .def_property_readonly("size", &Communicator::size, "Processes in the group.")
      .def_property_readonly(
          "backend", [](const Communicator& c) { return std::string(c.backend()); },
          "'gloo' or 'nccl'.")
      .def_property_readonly("world_ranks", &Communicator::world_ranks,
                             "The world rank of every member, in this group's rank order.")
      .def_property_readonly("name", &Communicator::name, "'world' or 'group[0,3,5]'.")
      .def("__repr__", &Communicator::describe)
      .def("barrier", &Communicator::barrier, py::call_guard<py::gil_scoped_release>(),
           "Returns once every member has called it.")
      .def(
          "all_reduce",
          [](Communicator& c, at::Tensor& t, const std::string& op) {
            check_comm_tensor(t, "tensor", c);
            const dhp::DataType type = comm_type(t, "tensor");
            const dhp::ReduceOp reduce = reduce_op(op);
            py::gil_scoped_release release;
            c.all_reduce(t.data_ptr(), t.data_ptr(), t.numel(), type, reduce);
          },
          py::arg("tensor"), py::arg("op") = "sum",
          "Reduces `tensor` in place over the group: op 'sum', 'max' or 'min'.")
      .def(
          "broadcast",
          [](Communicator& c, at::Tensor& t, int root) {
            check_comm_tensor(t, "tensor", c);
            DHP_CHECK(root >= 0 && root < c.size(), InvalidArgument,
                      "root={}: expected a rank in [0, {})", root, c.size());
            const dhp::DataType type = comm_type(t, "tensor");
            py::gil_scoped_release release;
            c.broadcast(t.data_ptr(), t.numel(), type, root);
          },
          py::arg("tensor"), py::arg("root"),
          "Copies root's `tensor` into every member's, in place.")
      .def(
          "all_gather",
          [](Communicator& c, const at::Tensor& t) {
            check_comm_tensor(t, "tensor", c);
            const dhp::DataType type = comm_type(t, "tensor");
            std::vector<std::int64_t> sizes{c.size()};
            for (auto s : t.sizes()) sizes.push_back(s);
            at::Tensor out = at::empty(sizes, t.options());
            {
              py::gil_scoped_release release;
              c.all_gather(t.data_ptr(), out.data_ptr(), t.numel(), type);
            }
            return out;
          },
          py::arg("tensor"), "Every member's `tensor` stacked: a new tensor [size, *tensor.shape].")
      .def(
          "send",
          [](Communicator& c, const at::Tensor& t, int peer, int tag) {
            check_comm_tensor(t, "tensor", c);
            DHP_CHECK(peer >= 0 && peer < c.size() && peer != c.rank(), InvalidArgument,
                      "peer={}: expected another rank in [0, {})", peer, c.size());
            const dhp::DataType type = comm_type(t, "tensor");
            py::gil_scoped_release release;
            c.send(t.data_ptr(), t.numel(), type, peer, tag);
          },
          py::arg("tensor"), py::arg("peer"), py::arg("tag") = 0,
          "Sends `tensor` to rank `peer` of this group (blocking); the peer receives with the "
          "same tag.")
      .def(
          "recv",
          [](Communicator& c, at::Tensor& t, int peer, int tag) {
            check_comm_tensor(t, "tensor", c);
            DHP_CHECK(peer >= 0 && peer < c.size() && peer != c.rank(), InvalidArgument,
                      "peer={}: expected another rank in [0, {})", peer, c.size());
            const dhp::DataType type = comm_type(t, "tensor");
            py::gil_scoped_release release;
            c.recv(t.data_ptr(), t.numel(), type, peer, tag);
          },
          py::arg("tensor"), py::arg("peer"), py::arg("tag") = 0,
          "Receives into `tensor` (its shape and dtype must match the sender's) from `peer`.")
      .def(
          "abort", [](Communicator& c, const std::string& reason) { c.abort_with_reason(reason); },
          py::arg("reason"),
          "Tears the communicator down without waiting for peers; later calls raise "
          "dhp.CommunicationError naming `reason`.");

  m.def("world", &make_world, py::arg("backend"), py::arg("timeout_s"), py::arg("rank"),
        py::arg("world_size"), py::arg("local_rank"), py::arg("local_world_size"),
        py::arg("master_addr"), py::arg("master_port"));

  py::class_<dhp::GroupPool>(
      m, "GroupPool",
      "GroupPool(world, capacity=0): a bounded pool of group communicators split from "
      "`world` and keyed by their world ranks, reused across plans (capacity 0: "
      "DHP_GROUP_POOL_SIZE, default 64; the least recently used groups go first).")
      .def(py::init<Communicator&, int>(), py::arg("world"), py::arg("capacity") = 0,
           py::keep_alive<1, 2>())
      .def("acquire", &dhp::GroupPool::acquire, py::arg("partition"),
           py::call_guard<py::gil_scoped_release>(),
           "Collective over the world: makes every group of `partition` (disjoint lists of "
           "world ranks, each in ring order) exist, with one split for all that are missing.")
      .def("get", &dhp::GroupPool::get, py::arg("ranks"),
           py::return_value_policy::reference_internal, py::call_guard<py::gil_scoped_release>(),
           "The communicator of `ranks` (acquired before; it must contain this process).")
      .def("contains", &dhp::GroupPool::contains, py::arg("ranks"),
           "Whether the pool holds the group of `ranks`.")
      .def(
          "prewarm",
          [](dhp::GroupPool& pool, const std::string& plan_json) {
            const dhp::Plan plan = dhp::plan_from_json(plan_json, "plan");
            py::gil_scoped_release release;
            pool.prewarm(plan);
          },
          py::arg("plan_json"), "Collective: acquires every group a plan (JSON text) needs.")
      .def_property_readonly("stats", &pool_stats,
                             "hits, misses, creations, splits, destroyed and creation_ms (wall "
                             "milliseconds spent creating groups on this process).")
      .def_property_readonly("size", &dhp::GroupPool::size)
      .def_property_readonly("capacity", &dhp::GroupPool::capacity);
}

// Tensor-parallel groups and layers.
void bind_tensor_parallel(py::module_& m) {
  py::class_<dhp::TensorParallel>(
      m, "TensorParallel",
      "TensorParallel(group, size, index): the `size` processes that split a module's linear "
      "layers Megatron-style (group: their Communicator, None when size is 1), and this "
      "process's index among them. The executor hands one to the model as ctx.tp.")
      .def(py::init([](Communicator* group, int size, int index) {
             DHP_CHECK(size >= 1 && index >= 0 && index < size, InvalidArgument,
                       "TensorParallel(size={}, index={}): expected size >= 1 and index in "
                       "[0, size)",
                       size, index);
             DHP_CHECK(size == 1 || (group != nullptr && group->size() == size), InvalidArgument,
                       "TensorParallel(size={}): needs a group of {} processes, got {}", size, size,
                       group == nullptr ? std::string("None") : group->describe());
             DHP_CHECK(group == nullptr || group->rank() == index, InvalidArgument,
                       "TensorParallel(index={}): this process is rank {} of its group", index,
                       group == nullptr ? 0 : group->rank());
             return dhp::TensorParallel{group, size, index};
           }),
           py::arg("group"), py::arg("size"), py::arg("index"), py::keep_alive<1, 2>())
      .def_readonly("size", &dhp::TensorParallel::size)
      .def_readonly("index", &dhp::TensorParallel::index)
      .def_property_readonly(
          "group", [](const dhp::TensorParallel& tp) { return tp.group; },
          py::return_value_policy::reference)
      .def(
          "slice",
          [](const dhp::TensorParallel& tp, std::int64_t features) {
            const dhp::FeatureRange r = tp.even_slice(features, "features");
            return py::make_tuple(r.begin, r.end);
          },
          py::arg("features"));

  const auto tp_function = [&](const char* name, auto fn) {
    m.def(name, fn, py::arg("x"), py::arg("tp"), py::call_guard<py::gil_scoped_release>());
  };
  tp_function("copy_to_tensor_parallel", [](const at::Tensor& x, const dhp::TensorParallel& tp) {
    return dhp::copy_to_tensor_parallel(x, tp);
  });
  tp_function("reduce_from_tensor_parallel",
              [](const at::Tensor& x, const dhp::TensorParallel& tp) {
                return dhp::reduce_from_tensor_parallel(x, tp);
              });
  m.def(
      "column_parallel_linear",
      [](const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
         const dhp::TensorParallel& tp) {
        return dhp::column_parallel_linear(x, weight, bias.value_or(at::Tensor()), tp);
      },
      py::arg("x"), py::arg("weight"), py::arg("bias"), py::arg("tp"),
      py::call_guard<py::gil_scoped_release>());
  m.def(
      "row_parallel_linear",
      [](const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
         const dhp::TensorParallel& tp) {
        return dhp::row_parallel_linear(x, weight, bias.value_or(at::Tensor()), tp);
      },
      py::arg("x"), py::arg("weight"), py::arg("bias"), py::arg("tp"),
      py::call_guard<py::gil_scoped_release>());
}

// Bucketed gradient sync.
void bind_gradient_sync(py::module_& m) {
  m.def(
      "sync_gradients",
      [](const std::vector<at::Tensor>& grads, Communicator& group, double bucket_mb) {
        DHP_CHECK(bucket_mb >= 0, InvalidArgument, "bucket_mb={}: expected >= 0", bucket_mb);
        if (grads.empty()) return;
        const at::ScalarType type = grads.front().scalar_type();
        std::vector<dhp::GradBuckets::Gradient> list;
        for (std::size_t i = 0; i < grads.size(); ++i) {
          const at::Tensor& g = grads[i];
          const std::string name = fmt::format("gradients[{}]", i);
          check_comm_tensor(g, name.c_str(), group);
          DHP_CHECK(g.scalar_type() == type, InvalidArgument,
                    "gradients[{}] has dtype {}, gradients[0] has {}: one dtype per call", i,
                    std::string(c10::toString(g.scalar_type())), std::string(c10::toString(type)));
          list.push_back({g.data_ptr(), g.numel()});
        }
        const dhp::DataType dtype = comm_type(grads.front(), "gradients[0]");
        py::gil_scoped_release release;
        dhp::GradBuckets buckets(group, std::move(list), dtype,
                                 static_cast<std::int64_t>(bucket_mb * 1024 * 1024));
        buckets.start();
        buckets.finish();
      },
      py::arg("gradients"), py::arg("group"), py::arg("bucket_mb") = 0.0);
}

// Ring and Ulysses attention.
void bind_attention(py::module_& m) {
  py::class_<RingAttention>(m, "RingAttention")
      .def(py::init([](std::vector<std::int64_t> lengths, std::vector<int> ring,
                       Communicator& world, const std::vector<std::string>& kinds,
                       const std::vector<int>& members, const std::string& attention, bool causal,
                       double softmax_scale, dhp::GroupPool* pool, int ranks_per_node) {
             return std::make_unique<RingAttention>(std::move(lengths), std::move(ring), world,
                                                    shardings_from(kinds, members), attention,
                                                    causal, softmax_scale, pool, ranks_per_node);
           }),
           py::arg("lengths"), py::arg("ring"), py::arg("world"), py::arg("sharding_kinds"),
           py::arg("sharding_members"), py::arg("attention"), py::arg("causal"),
           py::arg("softmax_scale"), py::arg("pool"), py::arg("ranks_per_node"),
           py::keep_alive<1, 4>(), py::keep_alive<1, 11>())
      .def_property_readonly("in_ring", [](const RingAttention& r) { return r.cp.in_ring(); })
      .def_property_readonly("local_rows", [](const RingAttention& r) { return r.cp.local_rows(); })
      .def_property_readonly("total_rows", [](const RingAttention& r) { return r.cp.total_rows(); })
      .def_property_readonly("packed_rows",
                             [](const RingAttention& r) { return long_tensor(r.cp.packed_rows()); })
      .def_property_readonly(
          "positions",
          [](const RingAttention& r) { return long_tensor_of(r.cp.layout().positions); })
      .def_property_readonly("sharding",
                             [](const RingAttention& r) {
                               py::list out;
                               for (const auto& s : r.cp.sharding())
                                 out.append(py::make_tuple(dhp::to_string(s.sharding), s.member));
                               return out;
                             })
      .def(
          "gather",
          [](RingAttention& r, const at::Tensor& local) {
            DHP_CHECK(
                local.defined() && local.dim() >= 1 && local.size(0) == r.cp.local_rows() &&
                    local.is_cpu(),
                InvalidArgument, "gather: local has shape {} on {}; expected {} rows on the CPU",
                shape_of(local), local.defined() ? local.device().str() : "", r.cp.local_rows());
            const at::Tensor source = local.contiguous();
            std::vector<std::int64_t> sizes = source.sizes().vec();
            sizes[0] = r.cp.total_rows();
            at::Tensor packed = at::zeros(sizes, source.options());
            const std::int64_t row_bytes =
                source.size(0) > 0 ? source.nbytes() / source.size(0)
                                   : c10::multiply_integers(sizes.begin() + 1, sizes.end()) *
                                         static_cast<std::int64_t>(source.element_size());
            py::gil_scoped_release release;
            r.cp.gather(*r.world, source.data_ptr(), packed.data_ptr(), row_bytes);
            return packed;
          },
          py::arg("local"))
      .def(
          "__call__",
          [](RingAttention& r, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
             bool with_lse) { return attention_result(q, k, v, r.options, with_lse); },
          py::arg("q"), py::arg("k"), py::arg("v"), py::arg("with_lse") = false);
}

// A wave's dispatch of rows to the plan's ranks.
void bind_dispatch(py::module_& m) {
  py::class_<Dispatch>(m, "WaveDispatch")
      .def(py::init<const std::string&, const std::string&, int, std::vector<int>, Communicator&>(),
           py::arg("batch_json"), py::arg("plan_json"), py::arg("wave"), py::arg("sample_owners"),
           py::arg("world"), py::keep_alive<1, 6>())
      .def_property_readonly("owned_rows",
                             [](const Dispatch& d) { return d.dispatch->owned_rows(); })
      .def_property_readonly("local_rows",
                             [](const Dispatch& d) { return d.dispatch->local_rows(); })
      .def_property_readonly("plan_rank",
                             [](const Dispatch& d) { return d.dispatch->layout().plan_rank; })
      .def_property_readonly("tp_index",
                             [](const Dispatch& d) { return d.dispatch->layout().tp_index; })
      .def_property_readonly("group", [](const Dispatch& d) { return d.dispatch->layout().group; })
      .def_property_readonly(
          "group_ranks", [](const Dispatch& d) { return d.dispatch->layout().group_world_ranks; })
      .def_property_readonly("member",
                             [](const Dispatch& d) { return d.dispatch->layout().member; })
      .def_property_readonly(
          "positions",
          [](const Dispatch& d) { return long_tensor_of(d.dispatch->layout().positions); })
      .def_property_readonly(
          "cu_seqlens",
          [](const Dispatch& d) { return long_tensor_of(d.dispatch->layout().cu_seqlens); })
      .def_property_readonly("pieces",
                             [](const Dispatch& d) { return pieces_of(d.dispatch->layout()); })
      .def(
          "__call__",
          [](Dispatch& d, const at::Tensor& owned) {
            py::gil_scoped_release release;
            return dhp::dispatch_rows(owned, *d.dispatch, *d.world);
          },
          py::arg("owned"))
      .def(
          "attention",
          [](Dispatch& d, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
             bool causal, double softmax_scale, dhp::GroupPool* pool, int ranks_per_node,
             bool with_lse) {
            const dhp::CpAttentionOptions* o = d.options.keep(attention_options(
                &d.dispatch->layout(), d.world, pool, causal, softmax_scale, ranks_per_node));
            return attention_result(q, k, v, *o, with_lse);
          },
          py::arg("q"), py::arg("k"), py::arg("v"), py::arg("causal"), py::arg("softmax_scale"),
          py::arg("pool"), py::arg("ranks_per_node"), py::arg("with_lse"), py::keep_alive<1, 7>());
}

// The step's schedule and the encoder-LLM boundary.
void bind_schedule_and_boundary(py::module_& m) {
  py::class_<Schedule>(m, "StepSchedule")
      .def(py::init<const std::string&, const std::string&, const std::string&, int, int>(),
           py::arg("batch_json"), py::arg("plan_json"), py::arg("model_json"),
           py::arg("world_rank"), py::arg("world_size"))
      .def_property_readonly("waves", [](const Schedule& s) { return s.schedule->waves(); })
      .def_property_readonly("llm_rank", [](const Schedule& s) { return s.schedule->llm_rank(); })
      .def_property_readonly("encoder_rank",
                             [](const Schedule& s) { return s.schedule->encoder_rank(); })
      .def_property_readonly("llm_tp_index",
                             [](const Schedule& s) { return s.schedule->llm_tp_index(); })
      .def_property_readonly("encoder_tp_index",
                             [](const Schedule& s) { return s.schedule->encoder_tp_index(); })
      .def_property_readonly("program",
                             [](const Schedule& s) {
                               py::list out;
                               for (const dhp::StepAction& a : s.schedule->program()) {
                                 const char* kind = a.kind == dhp::StepActionKind::EncoderForward
                                                        ? "encoder_forward"
                                                    : a.kind == dhp::StepActionKind::LlmWave
                                                        ? "llm"
                                                        : "encoder_backward";
                                 out.append(py::make_tuple(kind, a.wave));
                               }
                               return out;
                             })
      .def(
          "llm_rows",
          [](const Schedule& s, int w) {
            DHP_CHECK(w >= 0 && w < s.schedule->waves(), InvalidArgument, "wave={}: {} waves", w,
                      s.schedule->waves());
            return s.schedule->llm(w).layout.rows;
          },
          py::arg("wave"))
      .def(
          "visual_rows",
          [](const Schedule& s, int w) {
            DHP_CHECK(w >= 0 && w < s.schedule->waves(), InvalidArgument, "wave={}: {} waves", w,
                      s.schedule->waves());
            std::vector<std::int64_t> rows;
            for (const dhp::VisualRow& v : s.schedule->llm(w).visuals) rows.push_back(v.local_row);
            return long_tensor(rows);
          },
          py::arg("wave"))
      .def(
          "encoder_rows",
          [](const Schedule& s, int w) {
            DHP_CHECK(w >= 0 && w < s.schedule->waves(), InvalidArgument, "wave={}: {} waves", w,
                      s.schedule->waves());
            return py::make_tuple(s.schedule->encoder(w).patch_rows,
                                  s.schedule->encoder(w).token_rows);
          },
          py::arg("wave"));

  py::class_<PyBoundary>(m, "Boundary")
      .def(py::init<Schedule&, std::int64_t, const std::string&, Communicator&>(),
           py::arg("schedule"), py::arg("hidden"), py::arg("dtype"), py::arg("world"),
           py::keep_alive<1, 2>(), py::keep_alive<1, 5>())
      .def(
          "exchange",
          [](PyBoundary& b, const at::Tensor& embeddings, const at::Tensor& anchor, int wave) {
            dhp::BoundaryWave& w = b.wave(wave);
            py::gil_scoped_release release;
            return dhp::boundary_exchange(embeddings, anchor, w);
          },
          py::arg("embeddings"), py::arg("anchor"), py::arg("wave"))
      .def(
          "send",
          [](PyBoundary& b, const at::Tensor& embeddings, int wave) {
            dhp::BoundaryWave& w = b.wave(wave);
            py::gil_scoped_release release;
            return dhp::boundary_send(embeddings, w);
          },
          py::arg("embeddings"), py::arg("wave"))
      .def(
          "receive",
          [](PyBoundary& b, const at::Tensor& anchor, int wave) {
            dhp::BoundaryWave& w = b.wave(wave);
            py::gil_scoped_release release;
            return dhp::boundary_receive(anchor, w);
          },
          py::arg("anchor"), py::arg("wave"))
      .def("wait",
           [](PyBoundary& b) {
             py::gil_scoped_release release;
             for (dhp::BoundaryWave& w : b.waves) w.wait_pending();
           })
      .def_property_readonly("bytes", [](const PyBoundary& b) {
        const dhp::BoundaryBytes& x = b.boundary->bytes();
        py::dict d;
        d["sent_forward"] = x.sent_forward;
        d["sent_backward"] = x.sent_backward;
        d["min_forward"] = x.min_forward;
        d["min_backward"] = x.min_backward;
        return d;
      });
}

// The step executor, its model interface and its results.
void bind_step_executor(py::module_& m) {
  py::class_<dhp::TorchStepModel, PyStepModel>(m, "StepModel").def(py::init<>());

  py::class_<dhp::TorchLlmContext>(
      m, "LlmContext",
      "What StepModel.llm_loss gets for one wave: rows (this process's LLM rows), positions "
      "(int64 [rows], each row's position in its sequence), heads and kv_heads (this "
      "process's share), tp, group_ranks (the wave's CP group), pieces, and attention(q, k, "
      "v): causal attention over the wave's CP group. Valid during the call only.")
      .def_readonly("wave", &dhp::TorchLlmContext::wave)
      .def_readonly("positions", &dhp::TorchLlmContext::positions)
      .def_readonly("heads", &dhp::TorchLlmContext::heads)
      .def_readonly("kv_heads", &dhp::TorchLlmContext::kv_heads)
      .def_readonly("tp", &dhp::TorchLlmContext::tp)
      .def_property_readonly("rows",
                             [](const dhp::TorchLlmContext& c) { return c.work->layout.rows; })
      .def_property_readonly(
          "group_ranks",
          [](const dhp::TorchLlmContext& c) { return c.work->layout.group_world_ranks; })
      .def_property_readonly(
          "pieces", [](const dhp::TorchLlmContext& c) { return pieces_of(c.work->layout); })
      .def(
          "attention",
          [](const dhp::TorchLlmContext& c, const at::Tensor& q, const at::Tensor& k,
             const at::Tensor& v) { return c.attention(q, k, v); },
          py::arg("q"), py::arg("k"), py::arg("v"), py::call_guard<py::gil_scoped_release>());

  py::class_<dhp::TorchEncoderContext>(
      m, "EncoderContext",
      "What StepModel.encode gets for one wave: patch_rows and token_rows (this process's "
      "patches in and embeddings out), merge (patches per token), patch_positions (int64, "
      "each patch's index in its item), heads, tp, and attention(q, k, v): attention within "
      "each item's spans, in rings over the ranks that share a cut item. Valid during the "
      "call only.")
      .def_readonly("wave", &dhp::TorchEncoderContext::wave)
      .def_readonly("patch_positions", &dhp::TorchEncoderContext::patch_positions)
      .def_readonly("merge", &dhp::TorchEncoderContext::merge)
      .def_readonly("tp", &dhp::TorchEncoderContext::tp)
      .def_property_readonly("patch_rows",
                             [](const dhp::TorchEncoderContext& c) { return c.work->patch_rows; })
      .def_property_readonly("token_rows",
                             [](const dhp::TorchEncoderContext& c) { return c.work->token_rows; })
      .def_property_readonly(
          "heads",
          [](const dhp::TorchEncoderContext& c) { return c.attention_context.shape.heads_q; })
      .def(
          "attention",
          [](const dhp::TorchEncoderContext& c, const at::Tensor& q, const at::Tensor& k,
             const at::Tensor& v) { return c.attention(q, k, v); },
          py::arg("q"), py::arg("k"), py::arg("v"), py::call_guard<py::gil_scoped_release>());

  py::class_<dhp::StepEvent>(
      m, "StepEvent",
      "One timed piece of this process's step: kind (dispatch, encoder_forward, boundary, "
      "llm, encoder_backward, grad_sync), wave, start_ms and end_ms (since the step's start), "
      "tokens (rows or patches it covered).")
      .def_property_readonly(
          "kind", [](const dhp::StepEvent& e) { return std::string(event_kind(e.kind)); })
      .def_readonly("wave", &dhp::StepEvent::wave)
      .def_readonly("start_ms", &dhp::StepEvent::start_ms)
      .def_readonly("end_ms", &dhp::StepEvent::end_ms)
      .def_readonly("tokens", &dhp::StepEvent::tokens)
      .def("__repr__", [](const dhp::StepEvent& e) {
        return fmt::format(
            "StepEvent(kind='{}', wave={}, start_ms={:.3f}, end_ms={:.3f}, tokens={})",
            event_kind(e.kind), e.wave, e.start_ms, e.end_ms, e.tokens);
      });

  py::class_<dhp::StepStats>(
      m, "StepStats",
      "A step's results: loss (the global mean over its loss tokens), loss_tokens, "
      "comm_created (communicators created during the step), boundary_bytes and "
      "boundary_min_bytes, dispatch_bytes and dispatch_min_bytes (world totals, sent and the "
      "plan's minimum), this process's "
      "dispatch_ms, encoder_ms, boundary_ms, llm_ms, grad_sync_ms and step_ms, and events.")
      .def_readonly("loss", &dhp::StepStats::loss)
      .def_readonly("loss_tokens", &dhp::StepStats::loss_tokens)
      .def_readonly("comm_created", &dhp::StepStats::comm_created)
      .def_property_readonly("boundary_bytes",
                             [](const dhp::StepStats& s) {
                               return s.boundary.sent_forward + s.boundary.sent_backward;
                             })
      .def_property_readonly(
          "boundary_min_bytes",
          [](const dhp::StepStats& s) { return s.boundary.min_forward + s.boundary.min_backward; })
      .def_readonly("dispatch_bytes", &dhp::StepStats::dispatch_bytes)
      .def_readonly("dispatch_min_bytes", &dhp::StepStats::dispatch_min_bytes)
      .def_readonly("dispatch_ms", &dhp::StepStats::dispatch_ms)
      .def_readonly("encoder_ms", &dhp::StepStats::encoder_ms)
      .def_readonly("boundary_ms", &dhp::StepStats::boundary_ms)
      .def_readonly("llm_ms", &dhp::StepStats::llm_ms)
      .def_readonly("grad_sync_ms", &dhp::StepStats::grad_sync_ms)
      .def_readonly("step_ms", &dhp::StepStats::step_ms)
      .def_readonly("events", &dhp::StepStats::events)
      .def_readonly("grad_buckets_before_finish", &dhp::StepStats::grad_buckets_before_finish)
      .def("__repr__", [](const dhp::StepStats& s) {
        return fmt::format(
            "StepStats(loss={:.6g}, loss_tokens={}, step_ms={:.2f}, comm_created={})", s.loss,
            s.loss_tokens, s.step_ms, s.comm_created);
      });

  py::class_<PyStepExecutor>(m, "StepExecutor")
      .def(py::init<Communicator&, dhp::GroupPool&, const std::string&, const std::string&,
                    std::int64_t, int, int, int, double, double, double>(),
           py::arg("world"), py::arg("pool"), py::arg("model_json"), py::arg("dtype"),
           py::arg("patch_dim"), py::arg("llm_tp"), py::arg("encoder_tp"),
           py::arg("ranks_per_node"), py::arg("llm_softmax_scale"),
           py::arg("encoder_softmax_scale"), py::arg("loss_scale") = 1.0, py::keep_alive<1, 2>(),
           py::keep_alive<1, 3>())
      .def("run", &PyStepExecutor::run, py::arg("batch_json"), py::arg("plan_json"),
           py::arg("sample_owners"), py::arg("tokens"), py::arg("labels"), py::arg("patches"),
           py::arg("model"))
      .def(
          "prewarm",
          [](PyStepExecutor& e, const std::string& plan_json) {
            const dhp::Plan plan = dhp::plan_from_json(plan_json, "plan");
            py::gil_scoped_release release;
            e.executor->prewarm(plan);
          },
          py::arg("plan_json"));
}

}  // namespace

PYBIND11_MODULE(_torch, m) {
  m.doc() = "dhp's LibTorch layer for PyTorch (use dhp.torch).";
  dhp_python::register_error_translator();
#ifdef DHP_HAVE_NCCL
  m.attr("has_nccl") = true;
#else
  m.attr("has_nccl") = false;
#endif

  bind_communicators(m);
  bind_tensor_parallel(m);
  bind_gradient_sync(m);
  bind_attention(m);
  bind_dispatch(m);
  bind_schedule_and_boundary(m);
  bind_step_executor(m);
}
