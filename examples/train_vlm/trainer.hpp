// Training the small vision-language model (vlm.hpp) with dhp: one Trainer per process,
// one step per batch and plan. With verify, world rank 0 also trains the same model on one
// process (full parameters, plain PyTorch attention over whole samples) on the same batches
// and compares the loss and every parameter's gradient before each optimizer step.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <vector>

#include "dhp/communicator.hpp"
#include "dhp/group_pool.hpp"
#include "dhp/plan.hpp"
#include "dhp/step_executor.hpp"
#include "dhp/torch_step.hpp"
#include "vlm.hpp"

namespace vlm {

struct TrainerOptions {
  Config config;
  at::ScalarType dtype = at::kFloat;
  std::uint64_t seed = 1;  // parameters and data
  double learning_rate = 3e-3;
  double weight_decay = 0.01;
  bool verify = false;
  // The run's module layouts (every plan must use them): the model's TP slices follow them.
  dhp::ModuleLayout llm, encoder;
  dhp::EncoderPlacement placement = dhp::EncoderPlacement::Colocated;
};

struct StepReport {
  dhp::StepStats stats;
  std::optional<double> ref_loss;          // verify only
  std::optional<double> max_grad_rel_err;  // largest ||g - g_ref|| / ||g_ref|| over parameters
};

class Trainer {
 public:
  Trainer(dhp::Communicator& world, dhp::GroupPool& pool, TrainerOptions options);
  ~Trainer();

  // One training step: the executor runs `plan` (collective over the world), then the
  // optimizer steps. `next` (if given) is prewarmed before the step so that the step path
  // creates no communicator once the pool is warm.
  StepReport step(const dhp::Batch& batch, const dhp::Plan& plan, const dhp::Plan* next = nullptr);

  // Full gradients on world rank 0 (param_infos order): each slice from the processes of
  // module rank 0, gathered (collective). Empty on the other ranks.
  std::vector<at::Tensor> gather_gradients();

  const TrainerOptions& options() const { return options_; }
  dhp::TorchStepExecutor& executor() { return *executor_; }

 private:
  dhp::Communicator& world_;
  TrainerOptions options_;
  dhp::EncoderSpec encoder_spec_;
  std::unique_ptr<dhp::TorchStepExecutor> executor_;
  std::unique_ptr<Model> model_;
  std::unique_ptr<StepModel> step_model_;
  std::unique_ptr<torch::optim::AdamW> optimizer_;
  std::unique_ptr<Model> reference_;  // world rank 0 with verify
  std::unique_ptr<torch::optim::AdamW> reference_optimizer_;
  dhp::TensorParallel llm_tp_, encoder_tp_;
};

}  // namespace vlm
