// at::Tensor helpers and the autograd function around CP attention (include/dhp/torch.hpp).
#include <fmt/format.h>

#ifdef DHP_TORCH_CUDA
#include <c10/cuda/CUDAStream.h>
#endif

#include "dhp/dispatch.hpp"
#include "dhp/error.hpp"
#include "dhp/torch.hpp"

namespace dhp {
namespace {

std::string sizes_string(const at::Tensor& t) {
  std::string out = "[";
  for (std::int64_t d = 0; d < t.dim(); ++d) out += fmt::format("{}{}", d ? "," : "", t.size(d));
  return out + "]";
}

std::string sizes_string(const std::vector<std::int64_t>& sizes) {
  std::string out = "[";
  for (std::size_t d = 0; d < sizes.size(); ++d) {
    out += d ? "," : "";
    out += sizes[d] < 0 ? std::string("*") : std::to_string(sizes[d]);
  }
  return out + "]";
}

// The autograd node. The options travel to backward as a pointer stored in saved_data
// (an IValue holds no arbitrary C++ object); CpAttentionOptions documents that what it
// points to must outlive backward.
struct CpAttentionFunction : public torch::autograd::Function<CpAttentionFunction> {
  static CpAttentionContext context(const at::Tensor& q, const at::Tensor& k,
                                    const CpAttentionOptions& options,
                                    TorchBufferAllocator* fallback_allocator) {
    CpAttentionContext ctx;
    ctx.dtype = kernel_dtype(q, "q");
    ctx.shape.heads_q = static_cast<int>(q.size(1));
    ctx.shape.heads_kv = static_cast<int>(k.size(1));
    ctx.shape.head_dim = static_cast<int>(q.size(2));
    ctx.shape.softmax_scale = options.softmax_scale;
    ctx.shape.causal = options.causal;
    ctx.layout = options.layout;
    ctx.world = options.world;
    ctx.pool = options.pool;
    ctx.ranks_per_node = options.ranks_per_node;
    ctx.allocator = options.allocator;
    if (ctx.allocator == nullptr && q.is_cuda()) ctx.allocator = fallback_allocator;
    ctx.stream = current_stream(q);
    ctx.backends = options.backends;
    return ctx;
  }

  // Returns {out, lse}; lse is not differentiable (its gradient is ignored).
  static torch::autograd::variable_list forward(torch::autograd::AutogradContext* autograd,
                                                const at::Tensor& q, const at::Tensor& k,
                                                const at::Tensor& v,
                                                const CpAttentionOptions* options) {
    TorchBufferAllocator allocator(q.device());
    const CpAttentionContext ctx = context(q, k, *options, &allocator);
    at::Tensor out = at::empty_like(q);
    at::Tensor lse = at::empty({q.size(1), q.size(0)}, lse_options(q));
    {
      at::NoGradGuard no_grad;
      cp_attention_forward(ctx, q.data_ptr(), k.data_ptr(), v.data_ptr(), out.data_ptr(),
                           lse.data_ptr());
    }
    autograd->save_for_backward({q, k, v, out, lse});
    autograd->saved_data["options"] =
        static_cast<std::int64_t>(reinterpret_cast<std::intptr_t>(options));
    autograd->mark_non_differentiable({lse});
    return {out, lse};
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* autograd,
                                                 torch::autograd::variable_list grad_outputs) {
    const auto saved = autograd->get_saved_variables();
    const at::Tensor& q = saved[0];
    const at::Tensor& k = saved[1];
    const at::Tensor& v = saved[2];
    const at::Tensor& out = saved[3];
    const at::Tensor& lse = saved[4];
    const auto* options = reinterpret_cast<const CpAttentionOptions*>(
        static_cast<std::intptr_t>(autograd->saved_data["options"].toInt()));
    // Every rank must run the backward collectively, even with no gradient flowing here.
    at::Tensor dout =
        grad_outputs[0].defined() ? grad_outputs[0].contiguous() : at::zeros_like(out);
    check_tensor(dout, "grad of cp_attention output", kernel_dtype(q, "q"), kernel_device(q, "q"),
                 {q.size(0), q.size(1), q.size(2)});
    TorchBufferAllocator allocator(q.device());
    const CpAttentionContext ctx = context(q, k, *options, &allocator);
    at::Tensor dq = at::empty_like(q);
    at::Tensor dk = at::empty_like(k);
    at::Tensor dv = at::empty_like(v);
    cp_attention_backward(ctx, q.data_ptr(), k.data_ptr(), v.data_ptr(), out.data_ptr(),
                          lse.data_ptr(), dout.data_ptr(), dq.data_ptr(), dk.data_ptr(),
                          dv.data_ptr());
    return {dq, dk, dv, at::Tensor()};
  }
};

}  // namespace

at::TensorOptions lse_options(const at::Tensor& q) {
  return q.options().dtype(q.scalar_type() == at::kDouble ? at::kDouble : at::kFloat);
}

void* current_stream(const at::Tensor& t) {
#ifdef DHP_TORCH_CUDA
  if (t.is_cuda()) return c10::cuda::getCurrentCUDAStream(t.device().index()).stream();
#endif
  (void)t;
  return nullptr;
}

kernels::DType kernel_dtype(const at::Tensor& t, const char* name) {
  DHP_CHECK(t.defined(), InvalidArgument, "tensor {} is undefined", name);
  switch (t.scalar_type()) {
    case at::kFloat:
      return kernels::DType::F32;
    case at::kDouble:
      return kernels::DType::F64;
    case at::kBFloat16:
      return kernels::DType::BF16;
    case at::kHalf:
      return kernels::DType::F16;
    default:
      DHP_THROW(InvalidArgument,
                "tensor {} has dtype {}; expected float32, float64, bfloat16 or "
                "float16",
                name, std::string(c10::toString(t.scalar_type())));
  }
}

kernels::Device kernel_device(const at::Tensor& t, const char* name) {
  DHP_CHECK(t.defined(), InvalidArgument, "tensor {} is undefined", name);
  if (t.is_cpu()) return kernels::Device::CPU;
  if (t.is_cuda()) return kernels::Device::CUDA;
  DHP_THROW(InvalidArgument, "tensor {} is on device {}; expected cpu or cuda", name,
            t.device().str());
}

at::ScalarType scalar_type(kernels::DType dtype) {
  switch (dtype) {
    case kernels::DType::F32:
      return at::kFloat;
    case kernels::DType::F64:
      return at::kDouble;
    case kernels::DType::BF16:
      return at::kBFloat16;
    case kernels::DType::F16:
      return at::kHalf;
  }
  return at::kFloat;
}

void check_tensor(const at::Tensor& t, const char* name, kernels::DType dtype,
                  kernels::Device device, const std::vector<std::int64_t>& sizes) {
  const kernels::DType actual_dtype = kernel_dtype(t, name);
  DHP_CHECK(actual_dtype == dtype, InvalidArgument, "tensor {} has dtype {}, expected {}", name,
            kernels::to_string(actual_dtype), kernels::to_string(dtype));
  const kernels::Device actual_device = kernel_device(t, name);
  DHP_CHECK(actual_device == device, InvalidArgument, "tensor {} is on {}, expected {}", name,
            t.device().str(), device == kernels::Device::CUDA ? "cuda" : "cpu");
  bool sizes_match = t.dim() == static_cast<std::int64_t>(sizes.size());
  for (std::size_t d = 0; sizes_match && d < sizes.size(); ++d) {
    sizes_match = sizes[d] < 0 || t.size(static_cast<std::int64_t>(d)) == sizes[d];
  }
  DHP_CHECK(sizes_match, InvalidArgument, "tensor {} has shape {}, expected {}", name,
            sizes_string(t), sizes_string(sizes));
  DHP_CHECK(t.is_contiguous(), InvalidArgument,
            "tensor {} (shape {}) is not contiguous: call .contiguous() first", name,
            sizes_string(t));
}

void* TorchBufferAllocator::allocate(std::size_t bytes) {
  at::Tensor buffer = at::empty({static_cast<std::int64_t>(bytes)},
                                at::TensorOptions().dtype(at::kByte).device(device_));
  void* pointer = buffer.data_ptr();
  live_.emplace(pointer, std::move(buffer));
  return pointer;
}

void TorchBufferAllocator::deallocate(void* pointer) noexcept { live_.erase(pointer); }

void TorchBufferAllocator::copy_from_host(void* device_dst, const void* host_src,
                                          std::size_t bytes) {
  const auto n = static_cast<std::int64_t>(bytes);
  at::Tensor host = at::from_blob(const_cast<void*>(host_src), {n}, at::kByte);
  at::Tensor device =
      at::from_blob(device_dst, {n}, at::TensorOptions().dtype(at::kByte).device(device_));
  device.copy_(host);
}

namespace {

torch::autograd::variable_list checked_cp_attention(const at::Tensor& q, const at::Tensor& k,
                                                    const at::Tensor& v,
                                                    const CpAttentionOptions& options) {
  DHP_CHECK(options.layout != nullptr && options.world != nullptr, InvalidArgument,
            "cp_attention: options.layout and options.world must be set");
  const kernels::DType dtype = kernel_dtype(q, "q");
  const kernels::Device device = kernel_device(q, "q");
  const std::int64_t rows = options.layout->rows;
  DHP_CHECK(q.dim() == 3, InvalidArgument,
            "tensor q has shape {}, expected [rows, heads_q, "
            "head_dim]",
            sizes_string(q));
  check_tensor(q, "q", dtype, device, {rows, -1, -1});
  check_tensor(k, "k", dtype, device, {rows, -1, q.size(2)});
  check_tensor(v, "v", dtype, device, {rows, k.size(1), q.size(2)});
  DHP_CHECK(q.size(1) % k.size(1) == 0, InvalidArgument,
            "cp_attention: heads_q={} (q) is not a multiple of heads_kv={} (k)", q.size(1),
            k.size(1));
  return CpAttentionFunction::apply(q, k, v, &options);
}

}  // namespace

at::Tensor cp_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                        const CpAttentionOptions& options) {
  return checked_cp_attention(q, k, v, options)[0];
}

std::pair<at::Tensor, at::Tensor> cp_attention_with_lse(const at::Tensor& q, const at::Tensor& k,
                                                        const at::Tensor& v,
                                                        const CpAttentionOptions& options) {
  const auto outputs = checked_cp_attention(q, k, v, options);
  return {outputs[0], outputs[1]};
}

}  // namespace dhp
