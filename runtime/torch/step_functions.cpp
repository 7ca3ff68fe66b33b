// The runtime's stages as autograd functions (include/dhp/torch_step.hpp).
#include <cstring>

#include "dhp/error.hpp"
#include "dhp/torch_step.hpp"

namespace dhp {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// Autograd nodes keep what they need for the backward as a pointer in saved_data (an
// IValue holds no arbitrary C++ object); the callers document the lifetime.
template <typename T>
void save_pointer(AutogradContext* ctx, const char* key, const T* pointer) {
  ctx->saved_data[key] = static_cast<std::int64_t>(reinterpret_cast<std::intptr_t>(pointer));
}
template <typename T>
T* saved_pointer(AutogradContext* ctx, const char* key) {
  return reinterpret_cast<T*>(static_cast<std::intptr_t>(ctx->saved_data[key].toInt()));
}

at::Tensor contiguous_or_zeros(const at::Tensor& grad, const at::Tensor& like) {
  return grad.defined() ? grad.contiguous() : at::zeros_like(like);
}

void check_host_float(const at::Tensor& t, const char* name) {
  const kernels::DType dtype = kernel_dtype(t, name);
  DHP_CHECK(kernel_device(t, name) == kernels::Device::CPU, InvalidArgument,
            "{} is on {}; this stage moves host rows", name, t.device().str());
  (void)dtype;
}

// The caller's context, completed for CUDA tensors: the current stream, and LibTorch's
// allocator for the temporaries unless the context brings one.
EncoderAttentionContext with_device(const EncoderAttentionContext& ctx, const at::Tensor& q,
                                    TorchBufferAllocator* allocator) {
  EncoderAttentionContext out = ctx;
  if (!q.is_cuda()) return out;
  if (out.stream == nullptr) out.stream = current_stream(q);
  if (out.allocator == nullptr) out.allocator = allocator;
  return out;
}

struct EncoderAttentionFunction : public torch::autograd::Function<EncoderAttentionFunction> {
  static at::Tensor forward(AutogradContext* autograd, const at::Tensor& q, const at::Tensor& k,
                            const at::Tensor& v, const EncoderAttentionContext* ctx) {
    at::Tensor out = at::empty_like(q);
    at::Tensor lse = at::empty({q.size(1), q.size(0)}, lse_options(q));
    {
      at::NoGradGuard no_grad;
      TorchBufferAllocator allocator(q.device());
      encoder_attention_forward(with_device(*ctx, q, &allocator), q.data_ptr(), k.data_ptr(),
                                v.data_ptr(), out.data_ptr(), lse.data_ptr());
    }
    autograd->save_for_backward({q, k, v, out, lse});
    save_pointer(autograd, "ctx", ctx);
    return out;
  }
  static variable_list backward(AutogradContext* autograd, variable_list grads) {
    const auto saved = autograd->get_saved_variables();
    const at::Tensor &q = saved[0], &k = saved[1], &v = saved[2], &out = saved[3], &lse = saved[4];
    const auto* ctx = saved_pointer<const EncoderAttentionContext>(autograd, "ctx");
    // Every ring member runs the backward, even with no gradient flowing here.
    const at::Tensor dout = contiguous_or_zeros(grads[0], out);
    at::Tensor dq = at::empty_like(q), dk = at::empty_like(k), dv = at::empty_like(v);
    TorchBufferAllocator allocator(q.device());
    encoder_attention_backward(with_device(*ctx, q, &allocator), q.data_ptr(), k.data_ptr(),
                               v.data_ptr(), out.data_ptr(), lse.data_ptr(), dout.data_ptr(),
                               dq.data_ptr(), dk.data_ptr(), dv.data_ptr());
    return {dq, dk, dv, at::Tensor()};
  }
};

struct DispatchRowsFunction : public torch::autograd::Function<DispatchRowsFunction> {
  static at::Tensor forward(AutogradContext* autograd, const at::Tensor& owned,
                            const WaveDispatch* dispatch, Communicator* world) {
    std::vector<std::int64_t> sizes = owned.sizes().vec();
    sizes[0] = dispatch->local_rows();
    at::Tensor local = at::empty(sizes, owned.options());
    const at::Tensor source = owned.contiguous();
    const std::int64_t row_bytes = c10::multiply_integers(owned.sizes().slice(1)) *
                                   static_cast<std::int64_t>(owned.element_size());
    dispatch->forward(*world, source.data_ptr(), local.data_ptr(), row_bytes);
    autograd->saved_data["owned_rows"] = owned.size(0);
    autograd->saved_data["row_bytes"] = row_bytes;
    save_pointer(autograd, "dispatch", dispatch);
    save_pointer(autograd, "world", world);
    return local;
  }
  static variable_list backward(AutogradContext* autograd, variable_list grads) {
    const auto* dispatch = saved_pointer<const WaveDispatch>(autograd, "dispatch");
    auto* world = saved_pointer<Communicator>(autograd, "world");
    const at::Tensor grad = grads[0].contiguous();
    std::vector<std::int64_t> sizes = grad.sizes().vec();
    sizes[0] = autograd->saved_data["owned_rows"].toInt();
    at::Tensor owned = at::zeros(sizes, grad.options());
    dispatch->inverse(*world, grad.data_ptr(), owned.data_ptr(),
                      autograd->saved_data["row_bytes"].toInt());
    return {owned, at::Tensor(), at::Tensor()};
  }
};

// Megatron's f: identity forward, all-reduce of the input gradient over the TP group.
struct CopyToTensorParallel : public torch::autograd::Function<CopyToTensorParallel> {
  static at::Tensor forward(AutogradContext* autograd, const at::Tensor& x,
                            const TensorParallel* tp) {
    save_pointer(autograd, "tp", tp);
    return x.clone();
  }
  static variable_list backward(AutogradContext* autograd, variable_list grads) {
    const auto* tp = saved_pointer<const TensorParallel>(autograd, "tp");
    at::Tensor grad = grads[0].contiguous().clone();
    tp->all_reduce(grad.data_ptr(), grad.numel(), data_type(kernel_dtype(grad, "gradient")));
    return {grad, at::Tensor()};
  }
};

// Megatron's g: all-reduce forward, identity backward.
struct ReduceFromTensorParallel : public torch::autograd::Function<ReduceFromTensorParallel> {
  static at::Tensor forward(AutogradContext*, const at::Tensor& x, const TensorParallel* tp) {
    at::Tensor sum = x.contiguous().clone();
    tp->all_reduce(sum.data_ptr(), sum.numel(), data_type(kernel_dtype(sum, "activation")));
    return sum;
  }
  static variable_list backward(AutogradContext*, variable_list grads) {
    return {grads[0], at::Tensor()};
  }
};

// Colocated: both halves of the boundary in one node.
struct BoundaryExchangeFunction : public torch::autograd::Function<BoundaryExchangeFunction> {
  static at::Tensor forward(AutogradContext* autograd, const at::Tensor& embeddings,
                            const at::Tensor& /*anchor*/, BoundaryWave* wave) {
    const at::Tensor source = embeddings.contiguous();
    CommRequestPtr sent =
        wave->boundary->send_embeddings(*wave->world, wave->wave, source.data_ptr());
    at::Tensor visual = at::empty({wave->consumed_rows, wave->hidden}, wave->options);
    wave->boundary->receive_embeddings(*wave->world, wave->wave, source.data_ptr(),
                                       visual.data_ptr());
    sent->wait();
    save_pointer(autograd, "wave", wave);
    return visual;
  }
  static variable_list backward(AutogradContext* autograd, variable_list grads) {
    auto* wave = saved_pointer<BoundaryWave>(autograd, "wave");
    wave->backward_begin = std::chrono::steady_clock::now();
    const at::Tensor d_visual = grads[0].defined()
                                    ? grads[0].contiguous()
                                    : at::zeros({wave->consumed_rows, wave->hidden}, wave->options);
    CommRequestPtr sent =
        wave->boundary->send_gradients(*wave->world, wave->wave, d_visual.data_ptr());
    at::Tensor d_embeddings = at::zeros({wave->produced_rows, wave->hidden}, wave->options);
    wave->boundary->receive_gradients(*wave->world, wave->wave, d_visual.data_ptr(),
                                      d_embeddings.data_ptr());
    sent->wait();
    wave->backward_end = std::chrono::steady_clock::now();
    wave->backward_ran = true;
    return {d_embeddings, at::Tensor(), at::Tensor()};
  }
};

// Disjoint, encoder side: the sends in forward, the gradients' arrival in backward.
struct BoundarySendFunction : public torch::autograd::Function<BoundarySendFunction> {
  static at::Tensor forward(AutogradContext* autograd, const at::Tensor& embeddings,
                            BoundaryWave* wave) {
    const at::Tensor source = embeddings.contiguous();
    wave->pending = wave->boundary->send_embeddings(*wave->world, wave->wave, source.data_ptr());
    save_pointer(autograd, "wave", wave);
    return at::zeros({}, embeddings.options());
  }
  static variable_list backward(AutogradContext* autograd, variable_list) {
    auto* wave = saved_pointer<BoundaryWave>(autograd, "wave");
    wave->backward_begin = std::chrono::steady_clock::now();
    at::Tensor d_embeddings = at::zeros({wave->produced_rows, wave->hidden}, wave->options);
    wave->boundary->receive_gradients(*wave->world, wave->wave, nullptr, d_embeddings.data_ptr());
    wave->wait_pending();
    wave->backward_end = std::chrono::steady_clock::now();
    wave->backward_ran = true;
    return {d_embeddings, at::Tensor()};
  }
};

// Disjoint, LLM side: the rows' arrival in forward, the gradients' sends in backward.
struct BoundaryReceiveFunction : public torch::autograd::Function<BoundaryReceiveFunction> {
  static at::Tensor forward(AutogradContext* autograd, const at::Tensor& /*anchor*/,
                            BoundaryWave* wave) {
    at::Tensor visual = at::empty({wave->consumed_rows, wave->hidden}, wave->options);
    wave->boundary->receive_embeddings(*wave->world, wave->wave, nullptr, visual.data_ptr());
    save_pointer(autograd, "wave", wave);
    return visual;
  }
  static variable_list backward(AutogradContext* autograd, variable_list grads) {
    auto* wave = saved_pointer<BoundaryWave>(autograd, "wave");
    const at::Tensor d_visual = grads[0].defined()
                                    ? grads[0].contiguous()
                                    : at::zeros({wave->consumed_rows, wave->hidden}, wave->options);
    wave->backward_begin = std::chrono::steady_clock::now();
    wave->pending = wave->boundary->send_gradients(*wave->world, wave->wave, d_visual.data_ptr());
    wave->backward_end = std::chrono::steady_clock::now();
    wave->backward_ran = true;
    return {at::Tensor(), at::Tensor()};
  }
};

void check_rows(const at::Tensor& t, const char* name, std::int64_t rows, std::int64_t hidden) {
  DHP_CHECK(t.defined() && t.dim() == 2 && t.size(0) == rows && t.size(1) == hidden,
            InvalidArgument, "{} has shape {}, but the plan puts [{}, {}] rows on this process",
            name, t.defined() ? c10::str(t.sizes()) : std::string("undefined"), rows, hidden);
  check_host_float(t, name);
}

}  // namespace

void BoundaryWave::wait_pending() {
  if (pending != nullptr) pending->wait();
  pending.reset();
}

at::Tensor encoder_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                             const EncoderAttentionContext& ctx) {
  DHP_CHECK(ctx.wave != nullptr, InvalidArgument, "encoder_attention: the context has no wave");
  const kernels::DType dtype = kernel_dtype(q, "q");
  const kernels::Device device = kernel_device(q, "q");
  const std::int64_t rows = ctx.wave->patch_rows;
  check_tensor(q, "q", dtype, device, {rows, ctx.shape.heads_q, ctx.shape.head_dim});
  check_tensor(k, "k", dtype, device, {rows, ctx.shape.heads_kv, ctx.shape.head_dim});
  check_tensor(v, "v", dtype, device, {rows, ctx.shape.heads_kv, ctx.shape.head_dim});
  DHP_CHECK(dtype == ctx.dtype, InvalidArgument,
            "encoder_attention: q has dtype {} but the context says {}", kernels::to_string(dtype),
            kernels::to_string(ctx.dtype));
  return EncoderAttentionFunction::apply(q, k, v, &ctx);
}

at::Tensor dispatch_rows(const at::Tensor& owned, const WaveDispatch& dispatch,
                         Communicator& world) {
  check_host_float(owned, "dispatch_rows: owned");
  DHP_CHECK(owned.dim() >= 1 && owned.size(0) == dispatch.owned_rows(), InvalidArgument,
            "dispatch_rows: owned has shape {} but this process owns {} rows",
            c10::str(owned.sizes()), dispatch.owned_rows());
  return DispatchRowsFunction::apply(owned, &dispatch, &world);
}

at::Tensor copy_to_tensor_parallel(const at::Tensor& x, const TensorParallel& tp) {
  if (tp.size == 1) return x;
  check_host_float(x, "copy_to_tensor_parallel: x");
  return CopyToTensorParallel::apply(x, &tp);
}

at::Tensor reduce_from_tensor_parallel(const at::Tensor& x, const TensorParallel& tp) {
  if (tp.size == 1) return x;
  check_host_float(x, "reduce_from_tensor_parallel: x");
  return ReduceFromTensorParallel::apply(x, &tp);
}

at::Tensor column_parallel_linear(const at::Tensor& x, const at::Tensor& weight,
                                  const at::Tensor& bias, const TensorParallel& tp) {
  return torch::nn::functional::linear(copy_to_tensor_parallel(x, tp), weight, bias);
}

at::Tensor row_parallel_linear(const at::Tensor& x, const at::Tensor& weight,
                               const at::Tensor& bias, const TensorParallel& tp) {
  at::Tensor y = reduce_from_tensor_parallel(torch::nn::functional::linear(x, weight), tp);
  return bias.defined() ? y + bias : y;
}

at::Tensor boundary_exchange(const at::Tensor& embeddings, const at::Tensor& anchor,
                             BoundaryWave& wave) {
  check_rows(embeddings, "the encoder's embeddings", wave.produced_rows, wave.hidden);
  return BoundaryExchangeFunction::apply(embeddings, anchor, &wave);
}

at::Tensor boundary_send(const at::Tensor& embeddings, BoundaryWave& wave) {
  check_rows(embeddings, "the encoder's embeddings", wave.produced_rows, wave.hidden);
  return BoundarySendFunction::apply(embeddings, &wave);
}

at::Tensor boundary_receive(const at::Tensor& anchor, BoundaryWave& wave) {
  return BoundaryReceiveFunction::apply(anchor, &wave);
}

}  // namespace dhp
