// The step executor with LibTorch modules (include/dhp/torch_step.hpp).
#include <torch/csrc/autograd/function_hook.h>

#include <fmt/format.h>

#include "dhp/error.hpp"
#include "dhp/log.hpp"
#include "dhp/torch_step.hpp"

namespace dhp {

// Post-accumulation hooks on one module's parameters: once armed (the last wave's
// backward), a parameter whose gradient has been accumulated is ready for its bucket.
struct TorchStepExecutor::Hooks {
  struct Ready final : public torch::autograd::FunctionPostHook {
    Ready(Hooks* owner, int gradient) : owner(owner), gradient(gradient) {}
    torch::autograd::variable_list operator()(const torch::autograd::variable_list& outputs,
                                              const torch::autograd::variable_list&) override {
      if (owner->armed && owner->buckets != nullptr) owner->buckets->ready(gradient);
      return outputs;
    }
    Hooks* owner;
    int gradient;
  };

  std::vector<at::Tensor> parameters;
  std::vector<std::shared_ptr<torch::autograd::Node>> accumulators;  // kept: hooks live on them
  GradBuckets* buckets = nullptr;
  bool armed = false;

  // The gradients in the order they become ready (the reverse of the forward).
  static std::vector<GradBuckets::Gradient> gradients(const std::vector<at::Tensor>& params) {
    std::vector<GradBuckets::Gradient> out;
    for (auto it = params.rbegin(); it != params.rend(); ++it)
      out.push_back({it->grad().data_ptr(), it->numel()});
    return out;
  }

  void attach(const std::vector<at::Tensor>& params) {
    const bool same =
        params.size() == parameters.size() &&
        std::equal(params.begin(), params.end(), parameters.begin(),
                   [](const at::Tensor& a, const at::Tensor& b) { return a.is_same(b); });
    if (same) return;
    for (std::size_t i = 0; i < accumulators.size(); ++i) accumulators[i]->post_hooks().clear();
    parameters = params;
    accumulators.clear();
    const int n = static_cast<int>(params.size());
    for (int i = 0; i < n; ++i) {
      auto accumulator =
          torch::autograd::impl::grad_accumulator(params[static_cast<std::size_t>(i)]);
      DHP_CHECK(accumulator != nullptr, InvalidArgument,
                "parameter {} does not require grad: it cannot be trained or synchronised", i);
      accumulator->add_post_hook(std::make_unique<Ready>(this, n - 1 - i));
      accumulators.push_back(std::move(accumulator));
    }
  }
};

namespace {

using Clock = std::chrono::steady_clock;

// Gradients exist (zero-filled) before the step, so that their buffers are where the
// buckets read and write them.
void ensure_gradients(const std::vector<at::Tensor>& params) {
  for (const at::Tensor& p : params) {
    DHP_CHECK(p.requires_grad(), InvalidArgument, "a parameter of shape {} does not require grad",
              c10::str(p.sizes()));
    if (!p.grad().defined()) const_cast<at::Tensor&>(p).mutable_grad() = at::zeros_like(p);
    DHP_CHECK(p.grad().is_contiguous(), InvalidArgument,
              "the gradient of a parameter of shape {} is not contiguous", c10::str(p.sizes()));
  }
}

at::Tensor long_tensor(const std::vector<std::int64_t>& values) {
  return at::tensor(values, at::TensorOptions().dtype(at::kLong));
}

// Per wave: what its autograd nodes point to until the end of the step.
struct WaveState {
  BoundaryWave boundary;
  TorchEncoderContext encoder;
  TorchLlmContext llm;
  at::Tensor embeddings;  // this process's, with their graph
  at::Tensor handle;      // disjoint: boundary_send's scalar, whose backward is the encoder's
};

std::string check_embeddings(const at::Tensor& e, const EncoderWave& work, std::int64_t hidden,
                             at::ScalarType dtype, int rank, int wave) {
  if (e.defined() && e.dim() == 2 && e.size(0) == work.token_rows && e.size(1) == hidden &&
      e.scalar_type() == dtype && e.is_cpu())
    return "";
  std::string items;
  for (const EncoderPiece& p : work.pieces)
    items += fmt::format("{}sample {} visual {} part {}/{} ({} tokens)", items.empty() ? "" : ", ",
                         p.sample, p.visual, p.part, p.parts, p.rows.tokens());
  return fmt::format(
      "world rank {}: the encoder module returned {} {} embeddings for wave {}, but the plan "
      "has it encode [{}, {}] ({})",
      rank, e.defined() ? c10::str(e.sizes()) : std::string("undefined"),
      e.defined() ? std::string(c10::toString(e.scalar_type())) : std::string(), wave,
      work.token_rows, hidden, items.empty() ? "no items" : items);
}

}  // namespace

TorchStepExecutor::TorchStepExecutor(Communicator& world, GroupPool& pool, StepOptions options)
    : core_(world, pool, options),
      llm_hooks_(std::make_unique<Hooks>()),
      encoder_hooks_(std::make_unique<Hooks>()) {}

TorchStepExecutor::~TorchStepExecutor() {
  for (Hooks* hooks : {llm_hooks_.get(), encoder_hooks_.get()})
    for (auto& accumulator : hooks->accumulators) accumulator->post_hooks().clear();
}

StepStats TorchStepExecutor::run(const Batch& batch, const Plan& plan, const StepInputs& inputs,
                                 TorchStepModel& model) {
  Communicator& world = core_.world();
  const StepOptions& options = core_.options();
  const at::ScalarType dtype = scalar_type(options.dtype);
  const auto float_options = at::TensorOptions().dtype(dtype);
  const std::vector<at::Tensor> llm_params = model.llm_parameters();
  const std::vector<at::Tensor> encoder_params = model.encoder_parameters();
  ensure_gradients(llm_params);
  ensure_gradients(encoder_params);
  StepRun run = core_.begin(batch, plan, inputs, Hooks::gradients(llm_params),
                            Hooks::gradients(encoder_params));
  const StepSchedule& schedule = *run.schedule;
  StepStats& stats = run.stats;
  llm_hooks_->attach(llm_params);
  encoder_hooks_->attach(encoder_params);
  llm_hooks_->buckets = run.llm_buckets;
  encoder_hooks_->buckets = run.encoder_buckets;
  llm_hooks_->armed = encoder_hooks_->armed = false;

  const int waves = schedule.waves();
  std::vector<WaveState> state(static_cast<std::size_t>(waves));
  for (int w = 0; w < waves; ++w) {
    WaveState& s = state[static_cast<std::size_t>(w)];
    const EncoderWave& enc = schedule.encoder(w);
    const LlmWave& llm = schedule.llm(w);
    s.boundary = {run.boundary.get(),
                  &world,
                  w,
                  enc.token_rows,
                  static_cast<std::int64_t>(llm.visuals.size()),
                  options.llm_hidden,
                  float_options,
                  nullptr};
    s.encoder.wave = w;
    s.encoder.work = &enc;
    s.encoder.attention_context = {options.dtype, options.encoder_attention, &enc, &world, nullptr};
    s.encoder.tp = {run.groups.encoder_tp, plan.encoder.tp, schedule.encoder_tp_index()};
    s.encoder.merge = options.encoder != nullptr ? options.encoder->tokens_per_llm_token : 1;
    std::vector<std::int64_t> patch_positions;
    for (const EncoderPiece& piece : enc.pieces)
      for (std::int64_t p = piece.rows.patch_begin; p < piece.rows.patch_end; ++p)
        patch_positions.push_back(p);
    s.encoder.patch_positions = long_tensor(patch_positions);
    s.llm.wave = w;
    s.llm.work = &llm;
    s.llm.attention_options.layout = &llm.layout;
    s.llm.attention_options.world = &world;
    s.llm.attention_options.pool = &core_.pool();
    s.llm.attention_options.softmax_scale = options.llm_attention.softmax_scale;
    s.llm.attention_options.causal = true;
    s.llm.attention_options.ranks_per_node = options.ranks_per_node;
    s.llm.tp = {run.groups.llm_tp, plan.llm.tp, schedule.llm_tp_index()};
    s.llm.positions = long_tensor({llm.layout.positions.begin(), llm.layout.positions.end()});
    s.llm.heads = options.llm_attention.heads_q;
    s.llm.kv_heads = options.llm_attention.heads_kv;
  }

  const bool disjoint = run.disjoint;
  const auto wave_tensors = [&](int w) {
    auto& tokens = run.tokens[static_cast<std::size_t>(w)];
    auto& labels = run.labels[static_cast<std::size_t>(w)];
    const auto rows = static_cast<std::int64_t>(tokens.size());
    return std::make_pair(at::from_blob(tokens.data(), {rows}, at::kLong),
                          at::from_blob(labels.data(), {rows}, at::kLong));
  };
  int agreed = 0;  // each process agrees once per wave that every module output is sound
  double loss_sum = 0;
  for (const StepAction& action : schedule.program()) {
    const int w = action.wave;
    WaveState& s = state[static_cast<std::size_t>(w)];
    const EncoderWave& enc = schedule.encoder(w);
    const LlmWave& llm = schedule.llm(w);
    const bool last = w + 1 == waves;
    run_action(plan.step, action, [&] {
      switch (action.kind) {
        case StepActionKind::EncoderForward: {
          const auto start = Clock::now();
          const at::Tensor patches =
              enc.patch_rows > 0 ? at::from_blob(const_cast<std::byte*>(run.wave_patches(w)),
                                                 {enc.patch_rows, options.patch_dim}, float_options)
                                 : at::zeros({0, options.patch_dim}, float_options);
          s.embeddings = model.encode(patches, s.encoder);
          run.record(StepEvent::Kind::EncoderForward, w, start, enc.patch_rows, stats.encoder_ms);
          if (disjoint) {
            agree_on_errors(world, check_embeddings(s.embeddings, enc, options.llm_hidden, dtype,
                                                    world.rank(), w));
            ++agreed;
            const auto sent = Clock::now();
            s.handle = boundary_send(s.embeddings, s.boundary);
            run.record(StepEvent::Kind::Boundary, w, sent, enc.token_rows, stats.boundary_ms);
          }
          break;
        }
        case StepActionKind::LlmWave: {
          auto start = Clock::now();
          if (!s.embeddings.defined())
            s.embeddings = at::zeros({0, options.llm_hidden}, float_options);
          if (!disjoint || schedule.runs_llm()) {
            agree_on_errors(world, disjoint
                                       ? std::string()
                                       : check_embeddings(s.embeddings, enc, options.llm_hidden,
                                                          dtype, world.rank(), w));
            ++agreed;
          }
          const at::Tensor anchor = at::zeros({}, float_options).requires_grad_(true);
          const at::Tensor visual = disjoint ? boundary_receive(anchor, s.boundary)
                                             : boundary_exchange(s.embeddings, anchor, s.boundary);
          run.record(StepEvent::Kind::Boundary, w, start, s.boundary.consumed_rows,
                     stats.boundary_ms);
          start = Clock::now();
          at::Tensor total = visual.sum() * 0;  // reaches the boundary's node on every process
          if (schedule.runs_llm()) {
            std::vector<std::int64_t> rows;
            for (const VisualRow& v : llm.visuals) rows.push_back(v.local_row);
            const auto [tokens, labels] = wave_tensors(w);
            const at::Tensor loss =
                model.llm_loss(tokens, visual, long_tensor(rows), labels, s.llm);
            DHP_CHECK(loss.defined() && loss.numel() == 1, InvalidArgument,
                      "world rank {}: the LLM module returned a loss of shape {} for wave {}; "
                      "expected a scalar",
                      world.rank(), loss.defined() ? c10::str(loss.sizes()) : "undefined", w);
            loss_sum += loss.item<double>() * run.loss_scale;
            total = total + loss * run.gradient_scale;
          }
          if (last) {
            llm_hooks_->armed = true;
            encoder_hooks_->armed = !disjoint;
          }
          total.backward();
          // One backward call ran the LLM, then the boundary, then (colocated) the encoder.
          const BoundaryWave& bw = s.boundary;
          if (!bw.backward_ran) {
            run.record(StepEvent::Kind::Llm, w, start, llm.layout.rows, stats.llm_ms);
            break;
          }
          run.record(StepEvent::Kind::Llm, w, start, llm.layout.rows, stats.llm_ms,
                     bw.backward_begin);
          run.record(StepEvent::Kind::Boundary, w, bw.backward_begin, bw.consumed_rows,
                     stats.boundary_ms, bw.backward_end);
          if (!disjoint && enc.patch_rows > 0)
            run.record(StepEvent::Kind::EncoderBackward, w, bw.backward_end, enc.patch_rows,
                       stats.encoder_ms);
          break;
        }
        case StepActionKind::EncoderBackward: {
          if (!disjoint) break;  // colocated: the wave's backward call ran the encoder's too
          const auto start = Clock::now();
          if (last) encoder_hooks_->armed = true;
          s.handle.backward();
          run.record(StepEvent::Kind::Boundary, w, start, enc.token_rows, stats.boundary_ms,
                     s.boundary.backward_end);
          run.record(StepEvent::Kind::EncoderBackward, w, s.boundary.backward_end, enc.patch_rows,
                     stats.encoder_ms);
          break;
        }
      }
    });
  }
  // Processes with no share of the waves still take part in every agreement.
  for (; agreed < waves; ++agreed) agree_on_errors(world, "");
  for (WaveState& s : state) s.boundary.wait_pending();
  llm_hooks_->armed = encoder_hooks_->armed = false;
  return core_.end(run, loss_sum);
}

at::Tensor TorchLlmContext::attention(const at::Tensor& q, const at::Tensor& k,
                                      const at::Tensor& v) const {
  return cp_attention(q, k, v, attention_options);
}

at::Tensor TorchEncoderContext::attention(const at::Tensor& q, const at::Tensor& k,
                                          const at::Tensor& v) const {
  return encoder_attention(q, k, v, attention_context);
}

}  // namespace dhp
