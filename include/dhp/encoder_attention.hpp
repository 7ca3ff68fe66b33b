// The vision encoder's attention over one process's packed patches of a wave (an
// EncoderWave of step_schedule.hpp): full, non-causal attention inside each attention span
// (a video's temporal slice, an image's tile, a whole image); a shard of a cut item attends
// to every shard of its item through a ring over the encoder ranks that hold them, the KV
// blocks passed point-to-point on the world communicator and the partial results merged
// with the log-sum-exp merge. Several items cut over different rings advance together,
// one ring step at a time, so one call serves every shard this process holds.
//
// Layouts: q, out [patch_rows, heads_q, head_dim]; k, v [patch_rows, heads_kv, head_dim];
// lse [heads_q, patch_rows] in the accumulator type (f64 for F64, f32 otherwise). With
// encoder tensor parallelism, heads are this process's share and the ring runs between the
// processes of the same TP index.
//
// Collective over the processes that hold shards of the same items: every encoder process
// of the wave calls forward (and backward) once per attention layer, in the same order.
// Arguments are checked before anything is sent (InvalidArgument leaves the communicator
// usable); a failure once the ring is under way aborts the world communicator.
//
// dtypes and streams as for CP attention (cp_attention.hpp): F32, F64, BF16, F16 (16-bit
// merged and accumulated in fp32, rounded once); with CUDA buffers the kernels run on
// `stream`, the transfers on the communicator's stream, ordered by events, and nothing
// waits for the device on the host.
#pragma once

#include "dhp/communicator.hpp"
#include "dhp/cp_attention.hpp"
#include "dhp/kernels.hpp"
#include "dhp/step_schedule.hpp"

namespace dhp {

struct EncoderAttentionContext {
  kernels::DType dtype = kernels::DType::F32;
  kernels::AttentionShape shape;  // causal must be false
  const EncoderWave* wave = nullptr;
  Communicator* world = nullptr;
  BufferAllocator* allocator = nullptr;  // null: host buffers
  void* stream = nullptr;  // CUDA: the caller's cudaStream_t (CpAttentionContext::stream)
  const AttentionBackends* backends = nullptr;  // as CpAttentionContext::backends
};

void encoder_attention_forward(const EncoderAttentionContext& ctx, const void* q, const void* k,
                               const void* v, void* out, void* lse);
// dq, dk, dv are overwritten; out and lse are the forward's.
void encoder_attention_backward(const EncoderAttentionContext& ctx, const void* q, const void* k,
                                const void* v, const void* out, const void* lse, const void* dout,
                                void* dq, void* dk, void* dv);

}  // namespace dhp
