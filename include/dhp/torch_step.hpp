// The LibTorch layer of the step executor (target dhp_torch): the runtime's stages as
// autograd functions, so that a LibTorch model's backward drives them, and an executor that
// runs a whole multimodal step with the trainer's torch modules.
//
// Autograd functions (forward -> backward):
//   encoder_attention        non-causal ring attention of a wave's packed patches -> its backward
//   dispatch_rows            rows from their owners to the plan's ranks -> the inverse move
//   copy_to_tensor_parallel  identity -> all-reduce over the TP group (Megatron's f)
//   reduce_from_tensor_parallel  all-reduce over the TP group -> identity (Megatron's g)
//   boundary_exchange        colocated: embeddings into the LLM's layout -> gradients back
//   boundary_send / boundary_receive   the two halves of the boundary for a disjoint encoder
// and cp_attention (torch.hpp) for the LLM.
//
// TorchStepExecutor runs one training step exactly as its plan says (the order of
// step_executor.hpp) with a TorchStepModel. Colocated, each wave is one backward call:
// the LLM's loss drives the LLM, the boundary and the encoder. Disjoint, the encoder's
// backward of a wave is driven by the gradients the boundary brings back, one wave behind.
// Gradients accumulate over the waves and are synchronised in buckets as soon as they are
// final (post-accumulation hooks on the parameters arm the buckets in the last wave).
#pragma once

#include <torch/torch.h>

#include <chrono>
#include <cstdint>
#include <memory>
#include <vector>

#include "dhp/boundary.hpp"
#include "dhp/dispatch.hpp"
#include "dhp/encoder_attention.hpp"
#include "dhp/step_executor.hpp"
#include "dhp/tensor_parallel.hpp"
#include "dhp/torch.hpp"

namespace dhp {

// ---------------------------------------------------------------- autograd functions

// q [patch_rows, heads_q, head_dim], k/v [patch_rows, heads_kv, head_dim] of ctx.wave,
// f32/f64 on CPU; returns out. `ctx` (and what it points to) must outlive the backward.
at::Tensor encoder_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                             const EncoderAttentionContext& ctx);

// owned [dispatch.owned_rows(), ...] -> local [dispatch.local_rows(), ...] (any float
// dtype; rows of the trailing dimensions); backward moves the gradients back with the
// inverse (from TP index 0). Collective over `world`, forward and backward.
at::Tensor dispatch_rows(const at::Tensor& owned, const WaveDispatch& dispatch,
                         Communicator& world);

at::Tensor copy_to_tensor_parallel(const at::Tensor& x, const TensorParallel& tp);
at::Tensor reduce_from_tensor_parallel(const at::Tensor& x, const TensorParallel& tp);
// Megatron's column- and row-parallel linear layers over this process's weight slices:
// y = x W_slice^T + b_slice (columns: output features), y = g(x_slice W_slice^T) + b (rows).
at::Tensor column_parallel_linear(const at::Tensor& x, const at::Tensor& weight,
                                  const at::Tensor& bias, const TensorParallel& tp);
at::Tensor row_parallel_linear(const at::Tensor& x, const at::Tensor& weight,
                               const at::Tensor& bias, const TensorParallel& tp);

// The boundary of one wave, shared by its autograd nodes; must outlive the backward.
struct BoundaryWave {
  Boundary* boundary = nullptr;
  Communicator* world = nullptr;
  int wave = 0;
  std::int64_t produced_rows = 0;  // this process's embeddings (EncoderWave::token_rows)
  std::int64_t consumed_rows = 0;  // its visual rows (LlmWave::visuals)
  std::int64_t hidden = 0;
  at::TensorOptions options;  // dtype of the embeddings
  CommRequestPtr pending;     // sends still in flight (waited by wait_pending)
  // When the node's backward began and ended (it separates, inside one backward call, the
  // LLM's backward from the boundary's and the encoder's, for the step's timeline).
  std::chrono::steady_clock::time_point backward_begin{}, backward_end{};
  bool backward_ran = false;
  void wait_pending();
};
// Colocated: embeddings [token_rows, hidden] of this process -> visual [visual rows, hidden]
// (LlmWave::visuals order). `anchor` (a scalar that requires grad) keeps the node in every
// process's graph, so that its backward runs everywhere even with no rows.
at::Tensor boundary_exchange(const at::Tensor& embeddings, const at::Tensor& anchor,
                             BoundaryWave& wave);
// Disjoint, encoder side: posts the embeddings and returns a scalar whose backward receives
// their gradients (call .backward() on it when the wave's encoder backward is due).
at::Tensor boundary_send(const at::Tensor& embeddings, BoundaryWave& wave);
// Disjoint, LLM side: the visual rows; their gradients are posted in the backward.
at::Tensor boundary_receive(const at::Tensor& anchor, BoundaryWave& wave);

// ---------------------------------------------------------------- the executor

struct TorchLlmContext {
  int wave = 0;
  const LlmWave* work = nullptr;
  CpAttentionOptions attention_options;  // causal ring / Ulysses over the wave's groups
  TensorParallel tp;
  at::Tensor positions;         // int64 [rows]: each local row's position in its sequence
  int heads = 0, kv_heads = 0;  // this process's share (options.llm_attention)
  // The wave's CP attention: q [rows, heads, dim], k/v [rows, kv_heads, dim] -> out.
  at::Tensor attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v) const;
};

struct TorchEncoderContext {
  int wave = 0;
  const EncoderWave* work = nullptr;
  EncoderAttentionContext attention_context;
  TensorParallel tp;
  at::Tensor patch_positions;  // int64 [patch_rows]: each patch's index inside its item
  int merge = 1;               // patches merged into one LLM token (consecutive rows)
  at::Tensor attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v) const;
};

// The trainer's model as LibTorch modules. Each process holds its TP slices.
class TorchStepModel {
 public:
  virtual ~TorchStepModel() = default;
  // patches [work.patch_rows, patch_dim] -> embeddings [work.token_rows, llm_hidden]; its
  // attention layers call ctx.attention.
  virtual at::Tensor encode(const at::Tensor& patches, TorchEncoderContext& ctx) = 0;
  // The LLM over this process's local rows: token ids [rows] (a visual row's id is not to be
  // read), the visual rows' embeddings [V, hidden] at local rows visual_rows [V] (int64),
  // labels [rows] (-1: no loss). Returns the sum over rows with a label of the per-token
  // loss (a scalar); the executor scales it by 1 / (the step's loss tokens).
  virtual at::Tensor llm_loss(const at::Tensor& tokens, const at::Tensor& visual,
                              const at::Tensor& visual_rows, const at::Tensor& labels,
                              TorchLlmContext& ctx) = 0;
  // The parameters whose gradients are synchronised over each module's replicas (empty
  // where the process holds no such module), in the order of the forward.
  virtual std::vector<at::Tensor> llm_parameters() = 0;
  virtual std::vector<at::Tensor> encoder_parameters() = 0;
};

class TorchStepExecutor {
 public:
  TorchStepExecutor(Communicator& world, GroupPool& pool, StepOptions options);
  ~TorchStepExecutor();
  TorchStepExecutor(const TorchStepExecutor&) = delete;
  TorchStepExecutor& operator=(const TorchStepExecutor&) = delete;

  void prewarm(const Plan& plan) { core_.prewarm(plan); }
  // Collective over the world; gradients accumulate into the parameters' .grad (create them
  // or zero them before: the executor zero-fills missing ones) and are summed over the
  // replicas when it returns.
  StepStats run(const Batch& batch, const Plan& plan, const StepInputs& inputs,
                TorchStepModel& model);
  StepExecutor& core() { return core_; }

 private:
  struct Hooks;
  StepExecutor core_;
  std::unique_ptr<Hooks> llm_hooks_, encoder_hooks_;
};

}  // namespace dhp
