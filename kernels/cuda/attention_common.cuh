// Host-side pieces shared by the attention forward and backward launchers: argument
// checks the host cannot see through dispatch, the launch grid, and the kernel parameters.
#pragma once

#include <algorithm>
#include <initializer_list>
#include <vector>

#include "common.cuh"

namespace dhp::kernels::cuda {

// Parameters of one packed attention call, as the kernels read them. Strides are in
// elements: one token row of q/out holds heads_q*head_dim, of k/v heads_kv*head_dim.
struct AttentionParams {
  const void* q;
  const void* k;
  const void* v;
  const std::int32_t* cu_seqlens_q;
  const std::int32_t* cu_seqlens_k;
  const std::int32_t* q_positions;
  const std::int32_t* k_positions;
  std::int64_t total_q;
  int heads_q;
  int heads_kv;
  float scale;       // softmax scale
  float scale_log2;  // softmax scale * log2(e): the kernels work in base 2
  bool causal;
};

inline AttentionParams make_params(const AttentionShape& shape, const PackedSeqs& seqs,
                                   const void* q, const void* k, const void* v) {
  AttentionParams p{};
  p.q = q;
  p.k = k;
  p.v = v;
  p.cu_seqlens_q = seqs.cu_seqlens_q;
  p.cu_seqlens_k = seqs.cu_seqlens_k;
  p.q_positions = seqs.q_positions;
  p.k_positions = seqs.k_positions;
  p.total_q = seqs.total_q;
  p.heads_q = shape.heads_q;
  p.heads_kv = shape.heads_kv;
  const double scale = effective_softmax_scale(shape);
  p.scale = static_cast<float>(scale);
  p.scale_log2 = static_cast<float>(scale * 1.4426950408889634);
  p.causal = shape.causal;
  return p;
}

// The longest segment, from the hint or (hint 0) by reading cu_seqlens back, which
// synchronises the stream: pass max_seqlen_q/k to avoid it.
inline Status resolve_max_seqlen(const std::int32_t* cu_seqlens, int num_seqs, int hint,
                                 cudaStream_t stream, int& max_seqlen, std::string& error) {
  if (hint > 0) {
    max_seqlen = hint;
    return Status::Ok;
  }
  std::vector<std::int32_t> host(static_cast<std::size_t>(num_seqs) + 1);
  Status s = check_cuda(cudaMemcpyAsync(host.data(), cu_seqlens, host.size() * sizeof(std::int32_t),
                                        cudaMemcpyDeviceToHost, stream),
                        "copy cu_seqlens to host", error);
  if (s != Status::Ok) return s;
  s = check_cuda(cudaStreamSynchronize(stream), "synchronise for cu_seqlens", error);
  if (s != Status::Ok) return s;
  max_seqlen = 0;
  for (int b = 0; b < num_seqs; ++b) max_seqlen = std::max(max_seqlen, host[b + 1] - host[b]);
  return Status::Ok;
}

// What both attention directions support on CUDA; the message names the offending value.
inline Status check_attention_support(DType dtype, const AttentionShape& shape, int num_seqs,
                                      std::initializer_list<const void*> tensors,
                                      std::string& error) {
  if (dtype != DType::BF16 && dtype != DType::F16)
    return fail(Status::Unsupported, error,
                std::string("CUDA attention supports bf16 and f16 only, got ") +
                    (dtype == DType::F32 ? "f32" : "f64"));
  if (shape.head_dim != 64 && shape.head_dim != 128)
    return fail(
        Status::Unsupported, error,
        "CUDA attention supports head_dim 64 and 128 only, got " + std::to_string(shape.head_dim));
  if (num_seqs > 65535)
    return fail(Status::Unsupported, error,
                "CUDA attention launches one grid row per sequence: num_seqs=" +
                    std::to_string(num_seqs) + " > 65535");
  for (const void* t : tensors)
    if (t != nullptr && !aligned16(t))
      return fail(Status::InvalidArgument, error,
                  "CUDA attention needs 16-byte aligned q/k/v/out/dout/dq/dk/dv buffers");
  return Status::Ok;
}

}  // namespace dhp::kernels::cuda
