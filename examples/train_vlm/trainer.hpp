// Training the small vision-language model (vlm.hpp) with dhp: one Trainer per process,
// one step per batch and plan. With verify, world rank 0 also trains the same model on one
// process (full parameters, plain PyTorch attention over whole samples) on the same batches
// and compares the loss and every parameter's gradient before each optimizer step.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "dhp/communicator.hpp"
#include "dhp/group_pool.hpp"
#include "dhp/plan.hpp"
#include "dhp/step_executor.hpp"
#include "dhp/torch_step.hpp"
#include "vlm.hpp"

namespace vlm {

// Mixed precision (dtype bfloat16 or float16), as Megatron's Float16OptimizerWithFloat16Params:
// the model's parameters are 16-bit for compute, the optimizer keeps fp32 master weights,
// steps them on the fp32 gradients (the 16-bit ones, summed over replicas in fp32, widened
// and divided by loss_scale) and copies them back rounded once. A step whose gradients are
// not finite anywhere is skipped (with a static loss scale, an overflow).
struct TrainerOptions {
  Config config;
  at::ScalarType dtype = at::kFloat;  // float32, float64, bfloat16 or float16
  double loss_scale = 1;              // static loss scale (16-bit only; 1 for float32/64)
  std::uint64_t seed = 1;             // parameters and data
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
  std::string worst_parameter;             // verify only: the parameter of max_grad_rel_err
  bool skipped = false;                    // 16-bit: gradients not finite, no optimizer step
};

// --verify's bound on the relative loss error and on every parameter's relative gradient
// error for a run in `dtype`: float64 1e-9, float32 1e-4 (against a reference in the same
// dtype); bfloat16 and float16 runs are compared with the float64 reference, their bounds
// sit above the worst errors measured over the tests' plans and seeds (docs/runtime.md).
double verify_tolerance(at::ScalarType dtype);

class Trainer {
 public:
  Trainer(dhp::Communicator& world, dhp::GroupPool& pool, TrainerOptions options);
  ~Trainer();

  // One training step: the executor runs `plan` (collective over the world), then the
  // optimizer steps. `next` (if given) is prewarmed before the step so that the step path
  // creates no communicator once the pool is warm.
  StepReport step(const dhp::Batch& batch, const dhp::Plan& plan, const dhp::Plan* next = nullptr);

  // Full gradients on world rank 0 (param_infos order): each slice from the processes of
  // module rank 0, gathered (collective). Empty on the other ranks. Mixed precision: the
  // master weights' fp32 gradients (unscaled).
  std::vector<at::Tensor> gather_gradients();

  const TrainerOptions& options() const { return options_; }
  dhp::TorchStepExecutor& executor() { return *executor_; }

 private:
  // Full tensors on world rank 0 of local(i) (this process's slice of parameter i, in
  // grad_dtype) from module rank 0's processes (collective).
  std::vector<at::Tensor> gather(const std::function<at::Tensor(std::size_t)>& local,
                                 at::ScalarType grad_dtype);

  dhp::Communicator& world_;
  TrainerOptions options_;
  dhp::EncoderSpec encoder_spec_;
  std::unique_ptr<dhp::TorchStepExecutor> executor_;
  std::unique_ptr<Model> model_;
  std::unique_ptr<StepModel> step_model_;
  std::unique_ptr<torch::optim::AdamW> optimizer_;
  bool mixed_ = false;                // 16-bit parameters with fp32 master weights
  std::vector<at::Tensor> master_;    // mixed: fp32 copies of every parameter (param_infos order)
  std::vector<char> held_;            // the parameters this process trains
  std::unique_ptr<Model> reference_;  // world rank 0 with verify
  std::unique_ptr<torch::optim::AdamW> reference_optimizer_;
  dhp::TensorParallel llm_tp_, encoder_tp_;
};

}  // namespace vlm
