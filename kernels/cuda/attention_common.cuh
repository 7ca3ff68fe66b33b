// Host-side pieces shared by the attention forward and backward launchers: argument
// checks the host cannot see through dispatch, the launch grid, and the kernel parameters.
#pragma once

#include <algorithm>
#include <initializer_list>

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
  int head_dim;      // the data's; the kernel's tile width D >= head_dim is zero-padded
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
  p.head_dim = shape.head_dim;
  const double scale = effective_softmax_scale(shape);
  p.scale = static_cast<float>(scale);
  p.scale_log2 = static_cast<float>(scale * 1.4426950408889634);
  p.causal = shape.causal;
  return p;
}

// The head dimensions of the kernels' tiles: a head_dim (a multiple of 8, 16-byte rows)
// runs in the smallest tile that holds it, its columns past head_dim zero-filled on load
// and never stored: 72 runs in the 80 tile, 40 in the 64 one.
constexpr int kMaxHeadDim = 128;
inline int tile_head_dim(int head_dim) {
  return head_dim <= 64 ? 64 : head_dim <= 80 ? 80 : head_dim <= 96 ? 96 : 128;
}

// What both attention directions support; the message names the offending value.
inline Status check_attention_support(DType dtype, const AttentionShape& shape, int num_seqs,
                                      std::initializer_list<const void*> tensors,
                                      std::string& error) {
  if (dtype != DType::BF16 && dtype != DType::F16)
    return fail(Status::Unsupported, error,
                std::string("CUDA attention supports bf16 and f16 only, got ") +
                    (dtype == DType::F32 ? "f32" : "f64"));
  if (shape.head_dim % 8 != 0 || shape.head_dim > kMaxHeadDim)
    return fail(Status::Unsupported, error,
                "CUDA attention supports head_dim a multiple of 8 up to 128 (64, 72, 80, 96, "
                "128, ...), got " +
                    std::to_string(shape.head_dim));
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
