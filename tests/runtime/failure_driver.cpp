// Failure scenarios for the MPI backend, run under mpirun -np 3 with a short
// DHP_COMM_TIMEOUT_S. Rank 1 fails mid-step; the survivors must end with a clear
// Communication error within the timeout, and the job must end (never hang).
//   exit: rank 1 throws in the middle of the step, catches it and calls exit(1) without
//         MPI_Finalize, while the others are inside an all_reduce.
//   hang: rank 1 never enters the all_reduce (sleeps far past the timeout).
//   boundary: a multimodal step; rank 1 dies (_exit, no MPI_Finalize) after encoding the
//         item the others consume, before the boundary moves it.
//   encoder_ring: a multimodal step with an item cut into shards over the three encoder
//         ranks; rank 1 dies before its shard joins the ring.
#include <chrono>
#include <cstdio>
#include <algorithm>
#include <cstdlib>
#include <vector>
#include <stdexcept>
#include <string>
#include <thread>

#include "dhp/error.hpp"
#include "dhp/runtime.hpp"
#include "dhp/step_executor.hpp"

namespace {

constexpr int kHidden = 4, kPatchDim = 2;

// A model that does the least a step needs: the encoder's ring attention over its patches,
// zero embeddings, a zero loss.
class MinimalModel final : public dhp::StepModel {
 public:
  MinimalModel(int rank, const std::string& scenario) : rank_(rank), scenario_(scenario) {}
  void encoder_forward(const dhp::EncoderWave& work, dhp::EncoderContext& ctx, const void*,
                       void* embeddings) override {
    if (rank_ == 1 && scenario_ == "encoder_ring") die("before its shard joins the ring");
    const auto rows = static_cast<std::size_t>(work.patch_rows);
    std::vector<double> qkv(rows * 2 + 1, 0.5), out(rows * 2 + 1), lse(rows * 2 + 1);
    dhp::encoder_attention_forward(ctx.attention, qkv.data(), qkv.data(), qkv.data(), out.data(),
                                   lse.data());
    std::fill_n(static_cast<double*>(embeddings), work.token_rows * kHidden, 0.0);
    if (rank_ == 1 && scenario_ == "boundary") die("before the boundary moves its embeddings");
  }
  void encoder_backward(const dhp::EncoderWave&, dhp::EncoderContext&, const void*) override {}
  double llm_forward_backward(const dhp::LlmWave& work, dhp::LlmContext&, const std::int64_t*,
                              const std::int64_t*, const void*, double, void* d_visual) override {
    std::fill_n(static_cast<double*>(d_visual), work.visuals.size() * kHidden, 0.0);
    return 0;
  }
  std::vector<dhp::GradBuckets::Gradient> llm_gradients() override { return {}; }
  std::vector<dhp::GradBuckets::Gradient> encoder_gradients() override { return {}; }

 private:
  static void die(const char* when) {
    std::fprintf(stderr, "rank 1: dies %s\n", when);
    std::fflush(stderr);
    std::_Exit(1);
  }
  int rank_;
  std::string scenario_;
};

// One sample whose single item is cut into 3 shards on encoder ranks 0, 1, 2 (a ring), or
// encoded whole on rank 1; its LLM sequence runs whole on rank 0.
void multimodal_step(dhp::Communicator& world, const std::string& scenario) {
  dhp::EncoderSpec encoder;
  encoder.tokens_per_llm_token = 1;
  dhp::Batch batch;
  batch.samples.push_back({7, 5, {dhp::VisualItem{.patches = 6, .llm_tokens = 6, .frames = 1}}});
  dhp::Plan plan;
  plan.llm = dhp::ModuleLayout::on_devices(0, world.size());
  plan.encoder = dhp::ModuleLayout::on_devices(0, world.size());
  dhp::WavePlan wave;
  wave.groups.push_back(dhp::GroupPlan{{0}, dhp::CpAttention::Ring});
  wave.sequences.push_back(dhp::SequencePlan::whole(0, 0, 0));
  plan.waves.push_back(wave);
  if (scenario == "encoder_ring") {
    for (int p = 0; p < 3; ++p) plan.encoder_tasks.push_back({0, 0, 0, p, p, 3});
  } else {
    plan.encoder_tasks.push_back({0, 0, 0, 1, 0, 1});
  }
  dhp::GroupPool pool(world);
  dhp::StepOptions options;
  options.dtype = dhp::kernels::DType::F64;
  options.llm_hidden = kHidden;
  options.patch_dim = kPatchDim;
  options.llm_attention = {1, 1, 2, 0.0, true};
  options.encoder_attention = {1, 1, 2, 0.0, false};
  options.encoder = &encoder;
  dhp::StepExecutor executor(world, pool, options);
  const std::vector<int> owners{0};
  std::vector<std::int64_t> tokens(11, 1), labels(11, 1);
  std::vector<double> patches(6 * kPatchDim, 0.25);
  const bool owner = world.rank() == 0;
  const dhp::StepInputs inputs{owners, owner ? tokens.data() : nullptr,
                               owner ? labels.data() : nullptr, owner ? patches.data() : nullptr};
  MinimalModel model(world.rank(), scenario);
  executor.run(batch, plan, inputs, model);
  std::printf("rank %d: the step completed (unexpected)\n", world.rank());
}

}  // namespace

int main(int argc, char** argv) {
  const std::string scenario = argc > 1 ? argv[1] : "exit";
  dhp::MpiRuntime mpi;
  auto world = mpi.world();
  const int rank = world->rank();
  try {
    if (scenario == "boundary" || scenario == "encoder_ring") {
      multimodal_step(*world, scenario);
      return 0;
    }
    double value = 1.0;
    world->all_reduce(&value, &value, 1, dhp::DataType::F64, dhp::ReduceOp::Sum);  // healthy step
    if (rank == 1 && world->size() > 1) {
      if (scenario == "exit") throw std::runtime_error("simulated failure in rank 1's step");
      std::this_thread::sleep_for(std::chrono::seconds(120));
    }
    world->all_reduce(&value, &value, 1, dhp::DataType::F64, dhp::ReduceOp::Sum);
    std::printf("rank %d: second all_reduce completed (unexpected)\n", rank);
  } catch (const dhp::Error& e) {
    std::fprintf(stderr, "rank %d: %s\n", rank, e.what());
    dhp::abort_job(2, e.what());
  } catch (const std::exception& e) {
    std::fprintf(stderr, "rank %d: %s; exiting without MPI_Finalize\n", rank, e.what());
    std::fflush(stderr);
    std::exit(1);
  }
  return 0;
}
