// The LibTorch adapter on CUDA tensors, one process, one GPU, no MPI: cp_attention through
// autograd in bfloat16 and float16 (head_dim 80) on an NCCL world of one, the CUDA kernels
// on the current stream, against the fp64 LibTorch reference of the rounded inputs; also
// on a side stream made current, with the results of the default stream. Skipped, saying
// why, without a GPU or with a LibTorch built without CUDA.
#include <gtest/gtest.h>
#include <torch/cuda.h>

#ifdef DHP_TORCH_CUDA
#include <c10/cuda/CUDAFunctions.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#endif

#include <tuple>

#include "dhp/attention_backend.hpp"
#include "dhp/nccl.hpp"
#include "torch_reference.hpp"

namespace dhp {
namespace {

#define SKIP_WITHOUT_CUDA_TORCH()                                                       \
  do {                                                                                  \
    if (!torch::cuda::is_available() || cuda_device_count() == 0)                       \
      GTEST_SKIP() << "SKIPPED: no CUDA device (or a LibTorch without CUDA)";           \
    if (!kernels::built_with_cuda()) GTEST_SKIP() << "SKIPPED: dhp built without CUDA"; \
  } while (0)

std::unique_ptr<Communicator> single_gpu_world() {
  auto world = nccl_world(nccl_unique_id(), 0, 1, 0, std::chrono::seconds(60));
  nccl_wait_ready(*world);
  return world;
}

// The CUDA kernels round P and dS to 16 bits before the tensor-core products: bounded by
// the GPU kernel tests' tolerances (tests/kernels/gpu), not by one rounding.
TEST(TorchCuda, SixteenBitAutogradMatchesReference) {
  SKIP_WITHOUT_CUDA_TORCH();
  const auto world = single_gpu_world();
  testing::AttentionSetup setup;
  setup.device = at::Device(at::kCUDA, 0);
  testing::check_matches_reference(*world, at::kBFloat16, 2.5e-2, 14, setup);
  testing::check_matches_reference(*world, at::kHalf, 4e-3, 15, setup);
}

#ifdef DHP_TORCH_CUDA
// The kernels follow the current stream: run under a side stream made current, the same
// inputs give the same (deterministic forward) output as on the default stream.
TEST(TorchCuda, RunsOnTheCurrentStream) {
  SKIP_WITHOUT_CUDA_TORCH();
  const auto world = single_gpu_world();
  const std::vector<std::int64_t> lengths{300, 7, 65};
  const Plan plan = testing::one_wave_plan(1, {1}, 3, [](int) { return false; });
  const WaveDispatch dispatch(plan, 0, lengths, {0, 0, 0}, 0, 1);
  CpAttentionOptions options;
  options.layout = &dispatch.layout();
  options.world = world.get();
  const auto rows = dispatch.layout().rows;
  const auto cuda = at::TensorOptions().dtype(at::kBFloat16).device(at::kCUDA, 0);
  const at::Tensor q = at::randn({rows, 8, 80}, cuda), k = at::randn({rows, 2, 80}, cuda),
                   v = at::randn({rows, 2, 80}, cuda);
  const at::Tensor on_default = cp_attention(q, k, v, options);
  at::Tensor on_side;
  const c10::cuda::CUDAStream side = c10::cuda::getStreamFromPool(false, 0);
  c10::cuda::device_synchronize();  // the inputs, written on the default stream
  {
    const c10::cuda::CUDAStreamGuard guard(side);
    EXPECT_EQ(current_stream(q), static_cast<void*>(side.stream()));
    on_side = cp_attention(q, k, v, options);
  }
  c10::cuda::device_synchronize();
  EXPECT_TRUE(at::equal(on_default, on_side));
}

// PyTorch's varlen flash as a backend gives dhp's kernels' results (both round P to 16 bits:
// the GPU kernel tests' bf16 tolerance), forward and backward, with the lse in dhp's layout.
TEST(TorchCuda, VarlenFlashBackendMatchesDhpKernels) {
  SKIP_WITHOUT_CUDA_TORCH();
  const auto flash = torch_flash_backend();
  if (flash == nullptr) GTEST_SKIP() << "SKIPPED: LibTorch without the varlen flash kernels";
  const auto dhp_kernels = dhp_kernels_backend();
  for (const auto& [hd, hq, hkv, causal] :
       {std::tuple{80, 16, 16, false}, std::tuple{128, 28, 4, true}}) {
    SCOPED_TRACE("head_dim " + std::to_string(hd));
    const std::vector<std::int32_t> cu{0, 300, 307, 1100};
    const auto cuda = at::TensorOptions().device(at::kCUDA, 0);
    const at::Tensor cu_t = at::tensor(cu, at::kInt).to(at::kCUDA);
    const std::int64_t total = cu.back();
    const at::Tensor q = at::randn({total, hq, hd}, cuda.dtype(at::kBFloat16));
    const at::Tensor k = at::randn({total, hkv, hd}, cuda.dtype(at::kBFloat16));
    const at::Tensor v = at::randn({total, hkv, hd}, cuda.dtype(at::kBFloat16));
    const at::Tensor dout = at::randn({total, hq, hd}, cuda.dtype(at::kBFloat16));
    kernels::AttentionForwardArgs f;
    f.dtype = kernels::DType::BF16;
    f.device = kernels::Device::CUDA;
    f.shape = {hq, hkv, hd, 0.0, causal};
    f.seqs = {cu_t.data_ptr<std::int32_t>(),
              cu_t.data_ptr<std::int32_t>(),
              nullptr,
              nullptr,
              3,
              total,
              total,
              793,
              793};
    f.q = q.data_ptr();
    f.k = k.data_ptr();
    f.v = v.data_ptr();
    f.stream = current_stream(q);
    const AttentionCall call = AttentionCall::of(f, cu.data(), cu.data(), nullptr, nullptr);
    ASSERT_EQ(flash->cannot_run(call), "");
    std::vector<at::Tensor> outs;
    for (AttentionBackend* backend : {flash.get(), dhp_kernels.get()}) {
      at::Tensor out = at::empty_like(q), lse = at::empty({hq, total}, cuda.dtype(at::kFloat));
      at::Tensor dq = at::empty_like(q), dk = at::empty_like(k), dv = at::empty_like(v);
      f.out = out.data_ptr();
      f.lse = lse.data_ptr();
      ASSERT_EQ(backend->forward(f), kernels::Status::Ok) << backend->name();
      kernels::AttentionBackwardArgs b;
      b.dtype = f.dtype;
      b.device = f.device;
      b.shape = f.shape;
      b.seqs = f.seqs;
      b.q = f.q;
      b.k = f.k;
      b.v = f.v;
      b.out = f.out;
      b.dout = dout.data_ptr();
      b.lse = f.lse;
      b.dq = dq.data_ptr();
      b.dk = dk.data_ptr();
      b.dv = dv.data_ptr();
      b.stream = f.stream;
      ASSERT_EQ(backend->backward(b), kernels::Status::Ok) << backend->name();
      for (const at::Tensor& t : {out, lse, dq, dk, dv}) outs.push_back(t.to(at::kDouble));
    }
    const char* names[] = {"out", "lse", "dq", "dk", "dv"};
    for (int i = 0; i < 5; ++i) {
      const at::Tensor& a = outs[static_cast<std::size_t>(i)];
      const at::Tensor& b = outs[static_cast<std::size_t>(i + 5)];
      const double err = ((a - b).abs() / (1 + b.abs())).max().item<double>();
      EXPECT_LT(err, 4e-2) << names[i];
    }
  }
}
#endif

}  // namespace
}  // namespace dhp
