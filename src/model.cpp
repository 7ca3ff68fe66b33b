#include "dhp/model.hpp"

#include <fmt/ranges.h>

#include "dhp/error.hpp"

namespace dhp {

double TransformerSpec::parameters() const {
  const double h = hidden;
  const double kv_width = static_cast<double>(kv_heads) * head_dim();
  // q and o are h x h; k and v are h x (kv_heads * head_dim) under grouped-query attention.
  const double attention = 2.0 * h * h + 2.0 * h * kv_width;
  const double mlp = (gated_mlp ? 3.0 : 2.0) * h * ffn_hidden;
  const double norms = 2.0 * h;               // one before attention, one before the MLP
  const double embeddings = 2.0 * vocab * h;  // input embedding + untied output layer
  // Biases are left out: they are below 0.1% of any preset.
  return layers * (attention + mlp + norms) + h /* final norm */ + embeddings;
}

namespace {

// Qwen2-VL's ViT (shared by 2B and 7B): 32 layers, width 1280, 16 heads, MLP 5120 with
// QuickGELU (two matrices), 14x14 patches, 2x2 patch merge into one LLM token.
EncoderSpec qwen2_vl_vit(int llm_hidden) {
  EncoderSpec e;
  e.arch = {.layers = 32,
            .hidden = 1280,
            .heads = 16,
            .kv_heads = 16,
            .ffn_hidden = 5120,
            .gated_mlp = false,
            .vocab = 0};
  e.patch_size = 14;
  e.tokens_per_llm_token = 4;
  // PatchMerger: LayerNorm(1280) + Linear(5120, 5120) + GELU + Linear(5120, llm_hidden).
  e.projector_parameters = 2.0 * 1280 + 5120.0 * 5120 + 5120 + 5120.0 * llm_hidden + llm_hidden;
  return e;
}

ModelSpec qwen2_vl_7b() {
  ModelSpec m;
  m.name = "qwen2-vl-7b";
  m.llm = {.layers = 28,
           .hidden = 3584,
           .heads = 28,
           .kv_heads = 4,
           .ffn_hidden = 18944,
           .gated_mlp = true,
           .vocab = 152064};
  m.encoder = qwen2_vl_vit(3584);
  return m;
}

ModelSpec qwen2_vl_2b() {
  ModelSpec m;
  m.name = "qwen2-vl-2b";
  m.llm = {.layers = 28,
           .hidden = 1536,
           .heads = 12,
           .kv_heads = 2,
           .ffn_hidden = 8960,
           .gated_mlp = true,
           .vocab = 151936};
  m.encoder = qwen2_vl_vit(1536);
  return m;
}

// InternVL2-8B: InternViT-300M-448px + MLP projector + InternLM2.5-7B-chat.
ModelSpec internvl2_8b() {
  ModelSpec m;
  m.name = "internvl2-8b";
  m.llm = {.layers = 32,
           .hidden = 4096,
           .heads = 32,
           .kv_heads = 8,
           .ffn_hidden = 14336,
           .gated_mlp = true,
           .vocab = 92553};
  EncoderSpec e;
  e.arch = {.layers = 24,
            .hidden = 1024,
            .heads = 16,
            .kv_heads = 16,
            .ffn_hidden = 4096,
            .gated_mlp = false,
            .vocab = 0};
  e.patch_size = 14;
  e.tokens_per_llm_token = 4;  // pixel shuffle 0.5: 2x2 patches -> one token
  e.temporal_patch_size = 1;   // every video frame is its own image
  e.attention_tile_patches = 1024;  // (448 / 14)^2 patches per tile
  // mlp1: LayerNorm(4096) + Linear(4096, 4096) + GELU + Linear(4096, 4096).
  e.projector_parameters = 2.0 * 4096 + 2.0 * (4096.0 * 4096 + 4096);
  m.encoder = e;
  return m;
}

ModelSpec llama3_70b() {
  ModelSpec m;
  m.name = "llama3-70b";
  m.llm = {.layers = 80,
           .hidden = 8192,
           .heads = 64,
           .kv_heads = 8,
           .ffn_hidden = 28672,
           .gated_mlp = true,
           .vocab = 128256};
  return m;
}

// Megatron's dynamic-CP benchmark model: 12 layers, hidden 2048, 16 heads. Megatron's
// GPT defaults apply to what the benchmark does not set: multi-head attention and a
// GELU MLP of 4 * hidden (no --swiglu).
ModelSpec megatron_dcp_1b() {
  ModelSpec m;
  m.name = "megatron-dcp-1b";
  m.llm = {.layers = 12,
           .hidden = 2048,
           .heads = 16,
           .kv_heads = 16,
           .ffn_hidden = 8192,
           .gated_mlp = false,
           .vocab = 32000};
  return m;
}

void validate_transformer(const TransformerSpec& t, std::string_view model, std::string_view part,
                          bool needs_vocab) {
  auto check_positive = [&](int value, const char* field) {
    DHP_CHECK(value > 0, InvalidInput, "model '{}': {}.{}={} must be > 0", model, part, field,
              value);
  };
  check_positive(t.layers, "layers");
  check_positive(t.hidden, "hidden");
  check_positive(t.heads, "heads");
  check_positive(t.kv_heads, "kv_heads");
  check_positive(t.ffn_hidden, "ffn_hidden");
  DHP_CHECK(t.hidden % t.heads == 0, InvalidInput,
            "model '{}': {}.hidden={} is not a multiple of {}.heads={}", model, part, t.hidden,
            part, t.heads);
  DHP_CHECK(t.heads % t.kv_heads == 0, InvalidInput,
            "model '{}': {}.heads={} is not a multiple of {}.kv_heads={}", model, part, t.heads,
            part, t.kv_heads);
  if (needs_vocab) {
    check_positive(t.vocab, "vocab");
  } else {
    DHP_CHECK(t.vocab >= 0, InvalidInput, "model '{}': {}.vocab={} must be >= 0", model, part,
              t.vocab);
  }
}

}  // namespace

std::vector<std::string> model_preset_names() {
  return {"qwen2-vl-7b", "qwen2-vl-2b", "internvl2-8b", "llama3-70b", "megatron-dcp-1b"};
}

ModelSpec model_preset(std::string_view name) {
  if (name == "qwen2-vl-7b") return qwen2_vl_7b();
  if (name == "qwen2-vl-2b") return qwen2_vl_2b();
  if (name == "internvl2-8b") return internvl2_8b();
  if (name == "llama3-70b") return llama3_70b();
  if (name == "megatron-dcp-1b") return megatron_dcp_1b();
  DHP_THROW(InvalidArgument, "unknown model preset '{}' (known: {})", name,
            fmt::join(model_preset_names(), ", "));
}

void validate(const ModelSpec& model) {
  validate_transformer(model.llm, model.name, "llm", /*needs_vocab=*/true);
  if (model.encoder) {
    const EncoderSpec& e = *model.encoder;
    validate_transformer(e.arch, model.name, "encoder", /*needs_vocab=*/false);
    DHP_CHECK(e.patch_size > 0, InvalidInput, "model '{}': encoder.patch_size={} must be > 0",
              model.name, e.patch_size);
    DHP_CHECK(e.tokens_per_llm_token >= 1, InvalidInput,
              "model '{}': encoder.tokens_per_llm_token={} must be >= 1", model.name,
              e.tokens_per_llm_token);
    DHP_CHECK(e.temporal_patch_size >= 0 && e.attention_tile_patches >= 0, InvalidInput,
              "model '{}': encoder.temporal_patch_size={} and attention_tile_patches={} must be "
              ">= 0",
              model.name, e.temporal_patch_size, e.attention_tile_patches);
    DHP_CHECK(e.projector_parameters >= 0, InvalidInput,
              "model '{}': encoder.projector_parameters={} must be >= 0", model.name,
              e.projector_parameters);
  }
  const TrainingSetup& t = model.training;
  DHP_CHECK(t.encoder_span_group_patches >= 0, InvalidInput,
            "model '{}': training.encoder_span_group_patches={} must be >= 0", model.name,
            t.encoder_span_group_patches);
  DHP_CHECK(t.zero_stage >= 0 && t.zero_stage <= 2, InvalidInput,
            "model '{}': training.zero_stage={} must be 0, 1 or 2", model.name, t.zero_stage);
  DHP_CHECK(t.bytes_per_param > 0, InvalidInput,
            "model '{}': training.bytes_per_param={} must be > 0", model.name, t.bytes_per_param);
  DHP_CHECK(t.bytes_per_grad > 0, InvalidInput,
            "model '{}': training.bytes_per_grad={} must be > 0", model.name, t.bytes_per_grad);
  DHP_CHECK(t.bytes_optimizer_state >= 0, InvalidInput,
            "model '{}': training.bytes_optimizer_state={} must be >= 0", model.name,
            t.bytes_optimizer_state);
  DHP_CHECK(t.bytes_per_activation > 0, InvalidInput,
            "model '{}': training.bytes_per_activation={} must be > 0", model.name,
            t.bytes_per_activation);
}

}  // namespace dhp
