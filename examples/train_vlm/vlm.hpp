// A small vision-language model in LibTorch, trained with a new dhp plan every batch: a
// ViT-like encoder (patch embedding, bidirectional pre-norm blocks), a projector merging
// `merge` patches into one LLM token, and a decoder LLM (token embedding, causal pre-norm
// blocks with rotary positions taken from each row's true position in its sequence, an
// output layer), cross-entropy on the labelled rows. Linear layers are split Megatron-style
// over each module's tensor-parallel processes; the full parameters come from one seed, so
// every layout holds slices of the same model and a single process can train the same model
// whole (the reference of --verify and of the parity tests).
//
// The task is learnable only by looking at the images: each visual item shows one of
// `classes` prototypes (plus noise), and the text that follows an item starts with the
// item's class token and continues with a sequence derived from it.
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "dhp/batch.hpp"
#include "dhp/cluster.hpp"
#include "dhp/planner.hpp"
#include "dhp/model.hpp"
#include "dhp/tensor_parallel.hpp"
#include "dhp/torch_step.hpp"

namespace vlm {

struct Config {
  int patch_dim = 24;
  int encoder_hidden = 32, encoder_heads = 4, encoder_layers = 2, encoder_ffn = 64;
  int merge = 4;  // patches per LLM token (2 x 2)
  int hidden = 32, heads = 4, kv_heads = 2, layers = 2, ffn = 64, vocab = 64;
  int classes = 8;           // visual classes; tokens [0, classes) name them
  int temporal_patch = 2;    // frames per attention span of a video
  double rope_base = 10000;

  // The dhp model description of this model (sizes the planner's cost model reads).
  dhp::ModelSpec spec() const;
};

// One parameter: its full shape and how tensor parallelism cuts it.
struct ParamInfo {
  std::string name;
  std::vector<std::int64_t> shape;
  int split_dim = -1;  // -1: replicated; 0: column-parallel (output rows); 1: row-parallel
  bool encoder = false;
};
std::vector<ParamInfo> param_infos(const Config& config);

// The full parameters of the model for `seed` (float64), in param_infos order.
std::vector<at::Tensor> full_parameters(const Config& config, std::uint64_t seed);
// This process's slice of a full parameter.
at::Tensor slice_parameter(const ParamInfo& info, const at::Tensor& full,
                           const dhp::TensorParallel& tp);

// Attention callbacks: q [rows, heads, dim], k/v [rows, kv_heads, dim] -> out.
using Attention = std::function<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&)>;

// The model's computation over given parameters (slices for tp > 1).
class Model {
 public:
  // params: this process's slices in param_infos order, dtype of the run, requiring grad.
  Model(Config config, std::vector<at::Tensor> params, dhp::TensorParallel encoder_tp,
        dhp::TensorParallel llm_tp);

  // patches [P, patch_dim] -> embeddings [P / merge, hidden].
  at::Tensor encode(const at::Tensor& patches, const Attention& attention) const;
  // Sum of the cross-entropy over rows with a label >= 0.
  at::Tensor llm_loss(const at::Tensor& tokens, const at::Tensor& visual,
                      const at::Tensor& visual_rows, const at::Tensor& labels,
                      const at::Tensor& positions, const Attention& attention) const;

  const std::vector<at::Tensor>& parameters() const { return params_; }
  std::vector<at::Tensor> encoder_parameters() const;
  std::vector<at::Tensor> llm_parameters() const;
  const Config& config() const { return config_; }
  void set_tp(dhp::TensorParallel encoder_tp, dhp::TensorParallel llm_tp);

 private:
  const at::Tensor& p(const std::string& name) const;
  at::Tensor rotary(const at::Tensor& x, const at::Tensor& positions) const;

  Config config_;
  std::vector<ParamInfo> infos_;
  std::vector<at::Tensor> params_;
  std::map<std::string, std::size_t> index_;
  dhp::TensorParallel encoder_tp_, llm_tp_;
};

// The model behind dhp's step executor.
class StepModel final : public dhp::TorchStepModel {
 public:
  explicit StepModel(Model& model) : model_(model) {}
  at::Tensor encode(const at::Tensor& patches, dhp::TorchEncoderContext& ctx) override;
  at::Tensor llm_loss(const at::Tensor& tokens, const at::Tensor& visual,
                      const at::Tensor& visual_rows, const at::Tensor& labels,
                      dhp::TorchLlmContext& ctx) override;
  std::vector<at::Tensor> llm_parameters() override;
  std::vector<at::Tensor> encoder_parameters() override;
  bool holds_llm = true, holds_encoder = true;

 private:
  Model& model_;
};

// --- data ---

// The synthetic task's data of one whole sample (what its owner loads): token ids and
// labels for every row of its LLM sequence (visual rows: id 0), and its items' patches
// [sum of patches, patch_dim] (float64). Deterministic in (seed, sample id).
struct SampleData {
  std::vector<std::int64_t> tokens, labels;
  std::vector<double> patches;
};
SampleData sample_data(const Config& config, const dhp::Sample& sample, std::uint64_t seed);

// Batches of real length distributions (ActivityNet video clips, MathVista images from
// data/), scaled down to CPU size with the long tail kept: every text length divided by
// `text_scale`, every item's LLM tokens by `visual_scale` (at least 2), patches = merge x
// tokens, a video's frames kept (so its temporal spans are); samples capped at max_tokens.
std::vector<dhp::Batch> batches(const Config& config, int count, int samples_per_batch,
                                std::uint64_t seed, double text_scale, double visual_scale,
                                std::int64_t max_tokens);

// --- planning ---

// A modelled CPU "cluster" of `world` processes on `nodes` nodes with `capacity_gib` of memory
// each (the planner's view of this machine).
dhp::ClusterSpec cpu_cluster(int world, int nodes, double capacity_gib);
// The smallest memory (on a x1.25 grid) with which every one of `batches` plans, times 1.25:
// memory stays a binding constraint, so long samples run on CP groups. Same on every rank.
double choose_capacity(const Config& config, int world, int nodes,
                       const dhp::PlannerOptions& options, const std::vector<dhp::Batch>& batches);

// --- the single-process reference ---

struct ReferenceResult {
  double loss = 0;                 // mean over the batch's labelled rows
  std::vector<at::Tensor> grads;   // full gradients, param_infos order
};
// The model over whole samples and whole items with plain PyTorch attention (per span in
// the encoder, causal per sample in the LLM): the computation every plan must reproduce.
ReferenceResult reference_step(Model& model, const dhp::Batch& batch, std::uint64_t seed);

}  // namespace vlm
