#include "trainer.hpp"

#include <cmath>

#include "dhp/error.hpp"

namespace vlm {
namespace {

// Where this process sits in a module layout: its rank and TP index (-1 when outside).
struct Role {
  int rank = -1, tp_index = 0;
};

Role role_in(const dhp::ModuleLayout& layout, int device) {
  const int index = device - layout.first_device;
  if (layout.ranks <= 0 || index < 0 || index >= layout.num_devices()) return {};
  return {index / layout.tp, index % layout.tp};
}

dhp::kernels::DType kernel_dtype(at::ScalarType t) {
  switch (t) {
    case at::kDouble:
      return dhp::kernels::DType::F64;
    case at::kBFloat16:
      return dhp::kernels::DType::BF16;
    case at::kHalf:
      return dhp::kernels::DType::F16;
    default:
      return dhp::kernels::DType::F32;
  }
}

bool is_16bit(at::ScalarType t) { return t == at::kBFloat16 || t == at::kHalf; }

}  // namespace

double verify_tolerance(at::ScalarType dtype) {
  switch (dtype) {
    case at::kDouble:
      return 1e-9;
    case at::kBFloat16:
      return 1e-1;
    case at::kHalf:
      return 1e-2;
    default:
      return 1e-4;
  }
}

Trainer::Trainer(dhp::Communicator& world, dhp::GroupPool& pool, TrainerOptions options)
    : world_(world), options_(std::move(options)), encoder_spec_(*options_.config.spec().encoder) {
  const Config& c = options_.config;
  DHP_CHECK(
      options_.dtype == at::kFloat || options_.dtype == at::kDouble || is_16bit(options_.dtype),
      InvalidArgument, "train_vlm: dtype {} (float32, float64, bfloat16 or float16)",
      c10::toString(options_.dtype));
  mixed_ = is_16bit(options_.dtype);
  DHP_CHECK(std::isfinite(options_.loss_scale) && options_.loss_scale > 0 &&
                (mixed_ || options_.loss_scale == 1),
            InvalidArgument,
            "train_vlm: loss scale {} with dtype {} (a positive scale, for bfloat16 or float16 "
            "only: float32 and float64 run unscaled)",
            options_.loss_scale, c10::toString(options_.dtype));
  const Role llm = role_in(options_.llm, world.rank());
  const Role enc = role_in(options_.encoder, world.rank());
  llm_tp_ = {nullptr, options_.llm.tp, std::max(0, llm.tp_index)};
  encoder_tp_ = {nullptr, options_.encoder.tp, std::max(0, enc.tp_index)};
  DHP_CHECK(c.heads % options_.llm.tp == 0 && c.kv_heads % options_.llm.tp == 0, InvalidArgument,
            "train_vlm: LLM TP {} must divide its {} query and {} KV heads", options_.llm.tp,
            c.heads, c.kv_heads);
  DHP_CHECK(c.encoder_heads % options_.encoder.tp == 0, InvalidArgument,
            "train_vlm: encoder TP {} must divide its {} heads", options_.encoder.tp,
            c.encoder_heads);

  // This process's slices of the one model every layout shares.
  const std::vector<ParamInfo> infos = param_infos(c);
  const std::vector<at::Tensor> full = full_parameters(c, options_.seed);
  std::vector<at::Tensor> params;
  for (std::size_t i = 0; i < infos.size(); ++i) {
    const dhp::TensorParallel& tp = infos[i].encoder ? encoder_tp_ : llm_tp_;
    const at::Tensor slice = slice_parameter(infos[i], full[i], tp);
    held_.push_back(infos[i].encoder ? enc.rank >= 0 : llm.rank >= 0);
    if (mixed_) {  // fp32 master weights; the model computes with them rounded to 16-bit
      master_.push_back(slice.to(at::kFloat).clone().requires_grad_(true));
      params.push_back(master_.back().detach().to(options_.dtype).requires_grad_(true));
    } else {
      params.push_back(slice.to(options_.dtype).clone().requires_grad_(true));
    }
  }
  model_ = std::make_unique<Model>(c, std::move(params), encoder_tp_, llm_tp_);
  step_model_ = std::make_unique<StepModel>(*model_);
  step_model_->holds_llm = llm.rank >= 0;
  step_model_->holds_encoder = enc.rank >= 0;
  std::vector<at::Tensor> trained;
  if (mixed_) {
    for (std::size_t i = 0; i < master_.size(); ++i)
      if (held_[i]) trained.push_back(master_[i]);
  } else {
    trained = step_model_->llm_parameters();
    for (const at::Tensor& p : step_model_->encoder_parameters()) trained.push_back(p);
  }
  const auto adamw =
      torch::optim::AdamWOptions(options_.learning_rate).weight_decay(options_.weight_decay);
  if (!trained.empty()) optimizer_ = std::make_unique<torch::optim::AdamW>(trained, adamw);

  dhp::StepOptions step;
  step.dtype = kernel_dtype(options_.dtype);
  step.loss_scale = options_.loss_scale;
  step.llm_hidden = c.hidden;
  step.patch_dim = c.patch_dim;
  const int d = c.hidden / c.heads, ed = c.encoder_hidden / c.encoder_heads;
  step.llm_attention = {c.heads / options_.llm.tp, c.kv_heads / options_.llm.tp, d, 0.0, true};
  step.encoder_attention = {c.encoder_heads / options_.encoder.tp,
                            c.encoder_heads / options_.encoder.tp, ed, 0.0, false};
  step.encoder = &encoder_spec_;
  executor_ = std::make_unique<dhp::TorchStepExecutor>(world, pool, step);

  if (options_.verify && world.rank() == 0) {
    // The reference of a 16-bit run is the same model in float64.
    const at::ScalarType ref_dtype = mixed_ ? at::kDouble : options_.dtype;
    std::vector<at::Tensor> whole;
    for (const at::Tensor& p : full) whole.push_back(p.to(ref_dtype).clone().requires_grad_(true));
    reference_ =
        std::make_unique<Model>(c, std::move(whole), dhp::TensorParallel{}, dhp::TensorParallel{});
    reference_optimizer_ = std::make_unique<torch::optim::AdamW>(reference_->parameters(), adamw);
  }
}

Trainer::~Trainer() = default;

StepReport Trainer::step(const dhp::Batch& batch, const dhp::Plan& plan, const dhp::Plan* next) {
  const auto same = [](const dhp::ModuleLayout& a, const dhp::ModuleLayout& b) {
    return a.tp == b.tp && a.first_device == b.first_device && a.ranks == b.ranks;
  };
  DHP_CHECK(
      same(plan.llm, options_.llm) && same(plan.encoder, options_.encoder) &&
          plan.placement == options_.placement,
      InvalidArgument,
      "train_vlm: step {}: the plan's layout (LLM {} ranks x tp {} from device {}, encoder {} "
      "ranks x tp {} from device {}, {}) is not the run's: the model's slices follow the "
      "run's layout",
      plan.step, plan.llm.ranks, plan.llm.tp, plan.llm.first_device, plan.encoder.ranks,
      plan.encoder.tp, plan.encoder.first_device, dhp::to_string(plan.placement));
  dhp::GroupPool& pool = executor_->core().pool();
  const std::int64_t created_before = pool.stats().creations;
  const dhp::StepGroups groups = executor_->core().groups(plan);
  model_->set_tp({groups.encoder_tp, encoder_tp_.size, encoder_tp_.index},
                 {groups.llm_tp, llm_tp_.size, llm_tp_.index});

  // The samples this process loads, in increasing index.
  std::vector<int> owners;
  std::vector<std::int64_t> tokens, labels;
  std::vector<double> patches;
  for (std::size_t s = 0; s < batch.samples.size(); ++s) {
    owners.push_back(static_cast<int>(s % static_cast<std::size_t>(world_.size())));
    if (owners.back() != world_.rank()) continue;
    const SampleData d = sample_data(options_.config, batch.samples[s], options_.seed);
    tokens.insert(tokens.end(), d.tokens.begin(), d.tokens.end());
    labels.insert(labels.end(), d.labels.begin(), d.labels.end());
    patches.insert(patches.end(), d.patches.begin(), d.patches.end());
  }
  const at::Tensor patch_tensor =
      at::tensor(patches, at::TensorOptions().dtype(at::kDouble)).to(options_.dtype).contiguous();
  const dhp::StepInputs inputs{owners, tokens.data(), labels.data(), patch_tensor.data_ptr()};

  if (mixed_) {
    for (const at::Tensor& p : model_->parameters())
      if (p.grad().defined()) p.grad().zero_();
  } else if (optimizer_ != nullptr) {
    optimizer_->zero_grad();
  }
  StepReport report;
  report.stats = executor_->run(batch, plan, inputs, *step_model_);
  report.stats.comm_created = pool.stats().creations - created_before;
  if (mixed_) {
    // The synchronised 16-bit gradients, widened and unscaled in fp32 onto the master
    // weights; any non-finite one anywhere skips the step on every process.
    std::int32_t overflow = 0;
    const std::vector<at::Tensor>& params = model_->parameters();
    for (std::size_t i = 0; i < params.size(); ++i) {
      if (!held_[i]) continue;
      master_[i].mutable_grad() = params[i].grad().to(at::kFloat) / options_.loss_scale;
      overflow |= !at::isfinite(master_[i].grad()).all().item<bool>();
    }
    world_.all_reduce(&overflow, &overflow, 1, dhp::DataType::I32, dhp::ReduceOp::Max);
    report.skipped = overflow != 0;
  }

  if (options_.verify) {
    // Mixed precision: the float64 reference restarts every step from the weights this step
    // ran with (the fp32 master weights), so each step's error is its own, not the drift of
    // two trajectories apart.
    std::vector<at::Tensor> weights;
    if (mixed_) weights = gather([&](std::size_t i) { return master_[i].detach(); }, at::kFloat);
    const std::vector<at::Tensor> grads = gather_gradients();
    if (reference_ != nullptr) {
      if (mixed_) {
        at::NoGradGuard no_grad;
        for (std::size_t i = 0; i < weights.size(); ++i)
          reference_->parameters()[i].copy_(weights[i]);
      }
      reference_optimizer_->zero_grad();
      const ReferenceResult ref = reference_step(*reference_, batch, options_.seed);
      report.ref_loss = ref.loss;
      double worst = 0;
      for (std::size_t i = 0; i < grads.size(); ++i) {
        const double norm = ref.grads[i].norm().item<double>();
        const double diff = (grads[i] - ref.grads[i]).norm().item<double>();
        const double error = norm > 0 ? diff / norm : diff;
        if (error > worst || i == 0) report.worst_parameter = param_infos(options_.config)[i].name;
        worst = std::max(worst, error);
      }
      report.max_grad_rel_err = worst;
      reference_optimizer_->step();
    }
  }
  if (optimizer_ != nullptr && !report.skipped) optimizer_->step();
  if (mixed_ && !report.skipped) {  // the master weights, rounded once, back into the model
    at::NoGradGuard no_grad;
    const std::vector<at::Tensor>& params = model_->parameters();
    for (std::size_t i = 0; i < params.size(); ++i)
      if (held_[i]) const_cast<at::Tensor&>(params[i]).copy_(master_[i]);
  }
  if (next != nullptr) executor_->prewarm(*next);  // the next step's groups, off its path
  return report;
}

std::vector<at::Tensor> Trainer::gather_gradients() {
  const std::vector<at::Tensor>& params = model_->parameters();
  if (mixed_) return gather([&](std::size_t i) { return master_[i].grad(); }, at::kFloat);
  return gather([&](std::size_t i) { return params[i].grad(); }, options_.dtype);
}

std::vector<at::Tensor> Trainer::gather(const std::function<at::Tensor(std::size_t)>& local,
                                        at::ScalarType grad_dtype) {
  const std::vector<ParamInfo> infos = param_infos(options_.config);
  std::vector<at::Tensor> out;
  const int me = world_.rank();
  for (std::size_t i = 0; i < infos.size(); ++i) {
    const dhp::ModuleLayout& layout = infos[i].encoder ? options_.encoder : options_.llm;
    const int slices = infos[i].split_dim >= 0 ? layout.tp : 1;
    std::vector<at::Tensor> parts;
    for (int t = 0; t < slices; ++t) {
      const int holder = layout.device_of(0, t);
      if (me == holder && me != 0) {
        const at::Tensor g = local(i);
        const at::Tensor send = g.contiguous();
        world_.send(send.data_ptr(), send.numel(), dhp::data_type(kernel_dtype(grad_dtype)), 0,
                    30 + t);
      } else if (me == 0) {
        if (holder == 0) {
          parts.push_back(local(i).clone());
        } else {
          std::vector<std::int64_t> shape = infos[i].shape;
          if (infos[i].split_dim >= 0)
            shape[static_cast<std::size_t>(infos[i].split_dim)] /= slices;
          at::Tensor recv = at::empty(shape, at::TensorOptions().dtype(grad_dtype));
          world_.recv(recv.data_ptr(), recv.numel(), dhp::data_type(kernel_dtype(grad_dtype)),
                      holder, 30 + t);
          parts.push_back(recv);
        }
      }
    }
    if (me == 0) out.push_back(slices > 1 ? at::cat(parts, infos[i].split_dim) : parts.front());
  }
  return out;
}

}  // namespace vlm
