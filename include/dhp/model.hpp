// The trained model: a decoder LLM and, for multimodal models, a vision encoder, with
// their real architecture numbers, plus the training setup that decides memory.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace dhp {

struct TransformerSpec {
  int layers = 0;
  int hidden = 0;
  int heads = 0;
  int kv_heads = 0;  // grouped-query attention: heads % kv_heads == 0
  int ffn_hidden = 0;
  bool gated_mlp = true;  // SwiGLU: three ffn matrices instead of two
  int vocab = 0;          // 0 for an encoder (no embedding / output layer)

  int head_dim() const { return hidden / heads; }
  // Parameters of the whole stack (attention, MLP, norms, embeddings and output layer).
  double parameters() const;
};

struct EncoderSpec {
  TransformerSpec arch;
  int patch_size = 14;
  int tokens_per_llm_token = 4;  // patches merged into one LLM token (Qwen2-VL: 2x2 = 4)
  double projector_parameters = 0;
  // What the ViT's attention spans. Qwen2-VL packs 2 frames into one 3-D patch and attends
  // within each such temporal slice of a video (cu_seqlens per slice), across a whole image;
  // InternViT encodes 448 px tiles (1024 patches) one by one.
  int temporal_patch_size = 2;              // frames per attention span; 0: all frames at once
  std::int64_t attention_tile_patches = 0;  // 0: a frame/image attends across all its patches
};

enum class Recompute { None, Selective, Full };

struct TrainingSetup {
  Recompute recompute = Recompute::Selective;  // LLM layers
  // Vision encoder layers: long videos hold hundreds of thousands of patches, so their
  // activations are recomputed in backward (only each layer's input is kept).
  Recompute encoder_recompute = Recompute::Full;
  // Where a visual item's attention spans are independent (a video's temporal slices, an
  // image's tiles), each encoder layer runs over groups of whole spans of about this many
  // patches (at least one span) instead of the whole item at once: the layer's working
  // activations are one group's. 0: the whole item at once.
  std::int64_t encoder_span_group_patches = 16384;
  // 0: every rank holds full fp32 optimizer state; 1: optimizer state sharded over the
  // data-parallel (DP x CP) ranks (Megatron's distributed optimizer); 2: grads as well.
  int zero_stage = 1;
  double bytes_per_param = 2;         // bf16 weights
  double bytes_per_grad = 4;          // fp32 gradient accumulation
  double bytes_optimizer_state = 12;  // fp32 master weights + Adam m and v
  double bytes_per_activation = 2;    // bf16 activations
};

struct ModelSpec {
  std::string name;
  TransformerSpec llm;
  std::optional<EncoderSpec> encoder;
  TrainingSetup training;
};

// Presets with real architecture numbers: "qwen2-vl-7b", "qwen2-vl-2b", "internvl2-8b",
// "llama3-70b" (text only), "megatron-dcp-1b" (12 layers, hidden 2048: the model of
// Megatron's published dynamic-CP benchmark).
ModelSpec model_preset(std::string_view name);
std::vector<std::string> model_preset_names();

void validate(const ModelSpec& model);

}  // namespace dhp
