// The small vision-language model (vlm.hpp): parameters, tensor-parallel slices, forward.
#include <cmath>
#include <map>

#include "dhp/error.hpp"
#include "vlm.hpp"

namespace vlm {
namespace F = torch::nn::functional;
namespace {

// Mixed precision (bf16, f16): parameters, activations and attention are 16-bit; GEMMs,
// layer norms, GELU, rotary and the loss compute in fp32 from the 16-bit values and round
// their result once to 16-bit (what tensor cores and TransformerEngine do; LibTorch's CPU
// kernels have no f16 GEMM). f32 and f64 run the plain LibTorch ops.
bool is_16bit(const at::Tensor& t) {
  return t.scalar_type() == at::kBFloat16 || t.scalar_type() == at::kHalf;
}
at::Tensor wide(const at::Tensor& t) { return t.defined() && is_16bit(t) ? t.to(at::kFloat) : t; }

// (Not named linear/layer_norm/gelu: argument-dependent lookup would also find at::'s.)
at::Tensor dense(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b = {}) {
  if (!is_16bit(x)) return F::linear(x, w, b);
  return F::linear(wide(x), wide(w), wide(b)).to(x.scalar_type());
}
at::Tensor norm(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b) {
  if (!is_16bit(x))
    return F::layer_norm(x, F::LayerNormFuncOptions({x.size(-1)}).weight(w).bias(b));
  return F::layer_norm(wide(x), F::LayerNormFuncOptions({x.size(-1)}).weight(wide(w)).bias(wide(b)))
      .to(x.scalar_type());
}
at::Tensor gelu_of(const at::Tensor& x) {
  return is_16bit(x) ? at::gelu(wide(x)).to(x.scalar_type()) : at::gelu(x);
}
at::Tensor column_linear(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b,
                         const dhp::TensorParallel& tp) {
  if (!is_16bit(x)) return dhp::column_parallel_linear(x, w, b, tp);
  return dense(dhp::copy_to_tensor_parallel(x, tp), w, b);
}
at::Tensor row_linear(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b,
                      const dhp::TensorParallel& tp) {
  if (!is_16bit(x)) return dhp::row_parallel_linear(x, w, b, tp);
  const at::Tensor y = dhp::reduce_from_tensor_parallel(dense(x, w), tp);
  return b.defined() ? y + b : y;
}

}  // namespace

dhp::ModelSpec Config::spec() const {
  dhp::ModelSpec m;
  m.name = "tiny-vlm";
  m.llm = {layers, hidden, heads, kv_heads, ffn, false, vocab};
  dhp::EncoderSpec e;
  e.arch = {encoder_layers, encoder_hidden, encoder_heads, encoder_heads, encoder_ffn, false, 0};
  e.patch_size = 4;
  e.tokens_per_llm_token = merge;
  e.temporal_patch_size = temporal_patch;
  e.projector_parameters = static_cast<double>(hidden) * (merge * encoder_hidden + 1);
  m.encoder = e;
  m.training.recompute = dhp::Recompute::None;
  m.training.encoder_recompute = dhp::Recompute::None;
  m.training.zero_stage = 0;
  m.training.bytes_per_param = 8;
  m.training.bytes_per_grad = 8;
  m.training.bytes_optimizer_state = 16;
  m.training.bytes_per_activation = 8;
  return m;
}

std::vector<ParamInfo> param_infos(const Config& c) {
  std::vector<ParamInfo> out;
  const auto add = [&](std::string name, std::vector<std::int64_t> shape, int split, bool enc) {
    out.push_back({std::move(name), std::move(shape), split, enc});
  };
  const std::int64_t E = c.encoder_hidden, H = c.hidden, d = c.hidden / c.heads;
  add("enc.patch.w", {E, c.patch_dim}, -1, true);
  add("enc.patch.b", {E}, -1, true);
  for (int l = 0; l < c.encoder_layers; ++l) {
    const std::string b = "enc." + std::to_string(l) + ".";
    add(b + "ln1.w", {E}, -1, true);
    add(b + "ln1.b", {E}, -1, true);
    // No key bias: it shifts every score of a query alike, so softmax cancels it (its
    // gradient is zero).
    add(b + "q.w", {E, E}, 0, true);
    add(b + "q.b", {E}, 0, true);
    add(b + "k.w", {E, E}, 0, true);
    add(b + "v.w", {E, E}, 0, true);
    add(b + "v.b", {E}, 0, true);
    add(b + "o.w", {E, E}, 1, true);
    add(b + "o.b", {E}, -1, true);
    add(b + "ln2.w", {E}, -1, true);
    add(b + "ln2.b", {E}, -1, true);
    add(b + "fc1.w", {c.encoder_ffn, E}, 0, true);
    add(b + "fc1.b", {c.encoder_ffn}, 0, true);
    add(b + "fc2.w", {E, c.encoder_ffn}, 1, true);
    add(b + "fc2.b", {E}, -1, true);
  }
  add("enc.ln.w", {E}, -1, true);
  add("enc.ln.b", {E}, -1, true);
  add("enc.proj.w", {H, c.merge * E}, -1, true);
  add("enc.proj.b", {H}, -1, true);
  add("llm.embed", {c.vocab, H}, -1, false);
  for (int l = 0; l < c.layers; ++l) {
    const std::string b = "llm." + std::to_string(l) + ".";
    add(b + "ln1.w", {H}, -1, false);
    add(b + "ln1.b", {H}, -1, false);
    add(b + "q.w", {c.heads * d, H}, 0, false);
    add(b + "k.w", {c.kv_heads * d, H}, 0, false);
    add(b + "v.w", {c.kv_heads * d, H}, 0, false);
    add(b + "o.w", {H, c.heads * d}, 1, false);
    add(b + "ln2.w", {H}, -1, false);
    add(b + "ln2.b", {H}, -1, false);
    add(b + "fc1.w", {c.ffn, H}, 0, false);
    add(b + "fc1.b", {c.ffn}, 0, false);
    add(b + "fc2.w", {H, c.ffn}, 1, false);
    add(b + "fc2.b", {H}, -1, false);
  }
  add("llm.ln.w", {H}, -1, false);
  add("llm.ln.b", {H}, -1, false);
  add("llm.head", {c.vocab, H}, -1, false);
  return out;
}

std::vector<at::Tensor> full_parameters(const Config& config, std::uint64_t seed) {
  auto gen = at::detail::createCPUGenerator(seed);
  const auto f64 = at::TensorOptions().dtype(at::kDouble);
  std::vector<at::Tensor> out;
  for (const ParamInfo& info : param_infos(config)) {
    const bool norm = info.name.find(".ln") != std::string::npos;
    const bool bias = info.shape.size() == 1;
    if (norm && info.name.back() == 'w') {
      out.push_back(at::ones(info.shape, f64));
    } else if (bias) {
      out.push_back(at::zeros(info.shape, f64));
    } else {
      const double fan_in = static_cast<double>(info.shape.back());
      out.push_back(at::randn(info.shape, gen, f64) / std::sqrt(fan_in));
    }
  }
  return out;
}

at::Tensor slice_parameter(const ParamInfo& info, const at::Tensor& full,
                           const dhp::TensorParallel& tp) {
  if (info.split_dim < 0 || tp.size == 1) return full;
  const dhp::FeatureRange r = tp.even_slice(full.size(info.split_dim), info.name.c_str());
  return full.slice(info.split_dim, r.begin, r.end);
}

Model::Model(Config config, std::vector<at::Tensor> params, dhp::TensorParallel encoder_tp,
             dhp::TensorParallel llm_tp)
    : config_(config),
      infos_(param_infos(config)),
      params_(std::move(params)),
      encoder_tp_(encoder_tp),
      llm_tp_(llm_tp) {
  DHP_CHECK(params_.size() == infos_.size(), InvalidArgument, "vlm: {} parameters for {}",
            params_.size(), infos_.size());
  for (std::size_t i = 0; i < infos_.size(); ++i) index_[infos_[i].name] = i;
}

void Model::set_tp(dhp::TensorParallel encoder_tp, dhp::TensorParallel llm_tp) {
  encoder_tp_ = encoder_tp;
  llm_tp_ = llm_tp;
}

const at::Tensor& Model::p(const std::string& name) const { return params_[index_.at(name)]; }

std::vector<at::Tensor> Model::encoder_parameters() const {
  std::vector<at::Tensor> out;
  for (std::size_t i = 0; i < infos_.size(); ++i)
    if (infos_[i].encoder) out.push_back(params_[i]);
  return out;
}

std::vector<at::Tensor> Model::llm_parameters() const {
  std::vector<at::Tensor> out;
  for (std::size_t i = 0; i < infos_.size(); ++i)
    if (!infos_[i].encoder) out.push_back(params_[i]);
  return out;
}

at::Tensor Model::rotary(const at::Tensor& input, const at::Tensor& positions) const {
  // 16-bit: in fp32 (a position as bf16 would be off by several), rounded once.
  if (is_16bit(input)) return rotary(wide(input), positions).to(input.scalar_type());
  const at::Tensor& x = input;
  const std::int64_t d = x.size(2), half = d / 2;
  const auto options = x.options();
  const at::Tensor inv = at::exp(at::arange(0, half, options) *
                                 (-2.0 * std::log(config_.rope_base) / static_cast<double>(d)));
  const at::Tensor angles = positions.to(x.scalar_type()).unsqueeze(1) * inv.unsqueeze(0);
  const at::Tensor cos = angles.cos().unsqueeze(1), sin = angles.sin().unsqueeze(1);
  const at::Tensor x1 = x.slice(2, 0, half), x2 = x.slice(2, half, d);
  return at::cat({x1 * cos - x2 * sin, x1 * sin + x2 * cos}, 2).contiguous();
}

at::Tensor Model::encode(const at::Tensor& patches, const Attention& attention) const {
  const Config& c = config_;
  const std::int64_t rows = patches.size(0), E = c.encoder_hidden, d = E / c.encoder_heads;
  const std::int64_t heads = c.encoder_heads / encoder_tp_.size;
  at::Tensor x = dense(patches, p("enc.patch.w"), p("enc.patch.b"));
  for (int l = 0; l < c.encoder_layers; ++l) {
    const std::string b = "enc." + std::to_string(l) + ".";
    const at::Tensor h =
        dhp::copy_to_tensor_parallel(norm(x, p(b + "ln1.w"), p(b + "ln1.b")), encoder_tp_);
    const auto project = [&](const char* m, bool bias) {
      return dense(h, p(b + m + ".w"), bias ? p(b + m + ".b") : at::Tensor())
          .view({rows, heads, d})
          .contiguous();
    };
    const at::Tensor a = attention(project("q", true), project("k", false), project("v", true))
                             .reshape({rows, heads * d});
    x = x + row_linear(a, p(b + "o.w"), p(b + "o.b"), encoder_tp_);
    const at::Tensor h2 = norm(x, p(b + "ln2.w"), p(b + "ln2.b"));
    const at::Tensor f = gelu_of(column_linear(h2, p(b + "fc1.w"), p(b + "fc1.b"), encoder_tp_));
    x = x + row_linear(f, p(b + "fc2.w"), p(b + "fc2.b"), encoder_tp_);
  }
  x = norm(x, p("enc.ln.w"), p("enc.ln.b"));
  const at::Tensor merged = x.reshape({rows / c.merge, c.merge * E});
  return dense(merged, p("enc.proj.w"), p("enc.proj.b"));
}

at::Tensor Model::llm_loss(const at::Tensor& tokens, const at::Tensor& visual,
                           const at::Tensor& visual_rows, const at::Tensor& labels,
                           const at::Tensor& positions, const Attention& attention) const {
  const Config& c = config_;
  const std::int64_t rows = tokens.size(0), H = c.hidden, d = H / c.heads;
  const std::int64_t heads = c.heads / llm_tp_.size, kv_heads = c.kv_heads / llm_tp_.size;
  const at::Tensor& embed = p("llm.embed");
  at::Tensor x = F::embedding(tokens, wide(embed));  // 16-bit: gathered, then rounded (exact)
  if (visual_rows.numel() > 0) x = x.index_put({visual_rows}, wide(visual));
  if (is_16bit(embed)) x = x.to(embed.scalar_type());
  for (int l = 0; l < c.layers; ++l) {
    const std::string b = "llm." + std::to_string(l) + ".";
    const at::Tensor h =
        dhp::copy_to_tensor_parallel(norm(x, p(b + "ln1.w"), p(b + "ln1.b")), llm_tp_);
    const at::Tensor q = rotary(dense(h, p(b + "q.w")).view({rows, heads, d}), positions);
    const at::Tensor k = rotary(dense(h, p(b + "k.w")).view({rows, kv_heads, d}), positions);
    const at::Tensor v = dense(h, p(b + "v.w")).view({rows, kv_heads, d}).contiguous();
    const at::Tensor a = attention(q, k, v).reshape({rows, heads * d});
    x = x + row_linear(a, p(b + "o.w"), at::Tensor(), llm_tp_);
    const at::Tensor h2 = norm(x, p(b + "ln2.w"), p(b + "ln2.b"));
    const at::Tensor f = gelu_of(column_linear(h2, p(b + "fc1.w"), p(b + "fc1.b"), llm_tp_));
    x = x + row_linear(f, p(b + "fc2.w"), p(b + "fc2.b"), llm_tp_);
  }
  x = norm(x, p("llm.ln.w"), p("llm.ln.b"));
  // 16-bit logits, the loss over them in fp32 (Megatron's cross entropy on .float()).
  const at::Tensor logits = wide(dense(x, p("llm.head")));
  const at::Tensor labelled = labels.ge(0).nonzero().squeeze(1);
  return F::cross_entropy(logits.index_select(0, labelled), labels.index_select(0, labelled),
                          F::CrossEntropyFuncOptions().reduction(torch::kSum));
}

at::Tensor StepModel::encode(const at::Tensor& patches, dhp::TorchEncoderContext& ctx) {
  return model_.encode(patches, [&ctx](const at::Tensor& q, const at::Tensor& k,
                                       const at::Tensor& v) { return ctx.attention(q, k, v); });
}

at::Tensor StepModel::llm_loss(const at::Tensor& tokens, const at::Tensor& visual,
                               const at::Tensor& visual_rows, const at::Tensor& labels,
                               dhp::TorchLlmContext& ctx) {
  return model_.llm_loss(tokens, visual, visual_rows, labels, ctx.positions,
                         [&ctx](const at::Tensor& q, const at::Tensor& k, const at::Tensor& v) {
                           return ctx.attention(q, k, v);
                         });
}

std::vector<at::Tensor> StepModel::llm_parameters() {
  return holds_llm ? model_.llm_parameters() : std::vector<at::Tensor>{};
}

std::vector<at::Tensor> StepModel::encoder_parameters() {
  return holds_encoder ? model_.encoder_parameters() : std::vector<at::Tensor>{};
}

}  // namespace vlm
