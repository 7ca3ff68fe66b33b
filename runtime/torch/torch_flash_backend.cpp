// PyTorch's FlashAttention-2 variable-length kernels as an attention backend
// (include/dhp/attention_backend.hpp), for CUDA buffers with a LibTorch 2.x built with
// CUDA: at::_flash_attention_forward / _backward over the packed batch in one call, on the
// caller's stream. Not run yet on a GPU: runtime_torch_cuda checks it against dhp's kernels
// there (scripts/gpu_check.sh).
#include <torch/version.h>

#include <cmath>

#include "dhp/error.hpp"
#include "dhp/torch.hpp"

#if defined(DHP_TORCH_CUDA) && TORCH_VERSION_MAJOR >= 2
#include <ATen/ops/_flash_attention_backward.h>
#include <ATen/ops/_flash_attention_forward.h>
#include <c10/cuda/CUDAFunctions.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#endif

namespace dhp {

#if defined(DHP_TORCH_CUDA) && TORCH_VERSION_MAJOR >= 2
namespace {

class TorchVarlenFlash final : public AttentionBackend {
 public:
  std::string name() const override { return "torch_varlen_flash"; }

  std::string cannot_run(const AttentionCall& c) const override {
    if (c.device != kernels::Device::CUDA) return "CPU buffers";
    if (c.dtype != kernels::DType::BF16 && c.dtype != kernels::DType::F16)
      return "dtype " + std::string(kernels::to_string(c.dtype)) + " (bf16 and f16 only)";
    if (c.shape.head_dim % 8 != 0 || c.shape.head_dim > 256)
      return "head_dim " + std::to_string(c.shape.head_dim);
    if (c.explicit_positions) return "a mask by explicit positions";
    if (c.shape.causal && !c.equal_lengths)
      return "a causal mask over query and key segments of different lengths";
    if (c.accumulator_results || c.accumulate) return "fp32 results or accumulation";
    return "";
  }

  kernels::Status forward(const kernels::AttentionForwardArgs& a) override {
    const Call c(a.dtype, a.shape, a.seqs, a.stream);
    const auto [out, lse, rng, unused, mask] = at::_flash_attention_forward(
        c.tensor(a.q, a.seqs.total_q, a.shape.heads_q),
        c.tensor(a.k, a.seqs.total_k, a.shape.heads_kv),
        c.tensor(a.v, a.seqs.total_k, a.shape.heads_kv), c.cu_q, c.cu_k, a.seqs.max_seqlen_q,
        a.seqs.max_seqlen_k, 0.0, a.shape.causal, false, c.scale);
    DHP_CHECK(lse.dim() == 2 && lse.size(0) == a.shape.heads_q && lse.size(1) == a.seqs.total_q,
              Internal,
              "torch_varlen_flash: this PyTorch returns the log-sum-exp as {}, not [heads_q={}, "
              "total_q={}]: remove the backend for it",
              c10::str(lse.sizes()), a.shape.heads_q, a.seqs.total_q);
    c.tensor(a.out, a.seqs.total_q, a.shape.heads_q).copy_(out);
    at::from_blob(a.lse, {a.shape.heads_q, a.seqs.total_q}, c.floats).copy_(lse);
    return kernels::Status::Ok;
  }

  kernels::Status backward(const kernels::AttentionBackwardArgs& a) override {
    const Call c(a.dtype, a.shape, a.seqs, a.stream);
    const std::int64_t tq = a.seqs.total_q, tk = a.seqs.total_k;
    // No dropout: the random state is not read (defined tensors all the same).
    const at::Tensor rng = at::zeros({2}, at::TensorOptions().dtype(at::kLong));
    const at::Tensor unused = at::zeros({0}, at::TensorOptions().dtype(at::kLong));
    const auto [dq, dk, dv] = at::_flash_attention_backward(
        c.tensor(a.dout, tq, a.shape.heads_q), c.tensor(a.q, tq, a.shape.heads_q),
        c.tensor(a.k, tk, a.shape.heads_kv), c.tensor(a.v, tk, a.shape.heads_kv),
        c.tensor(a.out, tq, a.shape.heads_q),
        at::from_blob(const_cast<void*>(a.lse), {a.shape.heads_q, tq}, c.floats), c.cu_q, c.cu_k,
        a.seqs.max_seqlen_q, a.seqs.max_seqlen_k, 0.0, a.shape.causal, rng, unused, c.scale);
    c.tensor(a.dq, tq, a.shape.heads_q).copy_(dq);
    c.tensor(a.dk, tk, a.shape.heads_kv).copy_(dk);
    c.tensor(a.dv, tk, a.shape.heads_kv).copy_(dv);
    return kernels::Status::Ok;
  }

 private:
  // The call's buffers as tensors on the current device, its stream made current.
  struct Call {
    Call(kernels::DType dtype, const kernels::AttentionShape& shape, const kernels::PackedSeqs& s,
         void* stream)
        : device(at::kCUDA, c10::cuda::current_device()),
          guard(
              c10::cuda::getStreamFromExternal(static_cast<cudaStream_t>(stream), device.index())),
          data(at::TensorOptions()
                   .dtype(dtype == kernels::DType::BF16 ? at::kBFloat16 : at::kHalf)
                   .device(device)),
          floats(at::TensorOptions().dtype(at::kFloat).device(device)),
          cu_q(at::from_blob(const_cast<std::int32_t*>(s.cu_seqlens_q), {s.num_seqs + 1},
                             at::TensorOptions().dtype(at::kInt).device(device))),
          cu_k(at::from_blob(const_cast<std::int32_t*>(s.cu_seqlens_k), {s.num_seqs + 1},
                             at::TensorOptions().dtype(at::kInt).device(device))),
          head_dim(shape.head_dim),
          scale(shape.softmax_scale != 0 ? shape.softmax_scale
                                         : 1.0 / std::sqrt(static_cast<double>(shape.head_dim))) {}
    at::Tensor tensor(const void* p, std::int64_t rows, int heads) const {
      return at::from_blob(const_cast<void*>(p), {rows, heads, head_dim}, data);
    }
    at::Device device;
    c10::cuda::CUDAStreamGuard guard;
    at::TensorOptions data, floats;
    at::Tensor cu_q, cu_k;
    int head_dim;
    double scale;
  };
};

}  // namespace

std::shared_ptr<AttentionBackend> torch_flash_backend() {
  return std::make_shared<TorchVarlenFlash>();
}
#else
std::shared_ptr<AttentionBackend> torch_flash_backend() { return nullptr; }
#endif

}  // namespace dhp
