// The ring pass shared by CP attention (one ring over a group) and the encoder's attention
// (one ring per cut item, advancing together): local attention, then KV blocks travelling
// step by step with the log-sum-exp merge; backward with KV travelling ahead and the
// dK/dV accumulators following their block home. Ordered through RingStreams (kernels on
// the compute lane, exchanges on the comm lane, events between them; see
// ring_streams.hpp), so the exchange of step s+1 is in flight while step s computes.
//
// Numerics: 16-bit data (BF16/F16) merges into an fp32 output (partial outputs in fp32,
// accumulator_out) and accumulates dQ and the travelling dK/dV in fp32 (accumulator_grads,
// fp32 on the wire), each rounded to 16 bits once at the end: the error does not grow
// with the number of steps.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "attention/ring_streams.hpp"
#include "dhp/attention_backend.hpp"
#include "dhp/cp_attention.hpp"
#include "dhp/kernels.hpp"

namespace dhp {

// One ring this process belongs to: its neighbours, its degree (steps 0 .. degree-1) and
// the rows of the local buffers that travel (its own KV block; its dK/dV come home there).
struct RingLink {
  int next = 0, prev = 0;  // world ranks
  int degree = 1;
  std::int64_t own_begin = 0, own_rows = 0;
  int tag_k = 0, tag_v = 0, tag_dk = 0, tag_dv = 0;
};

// The KV block(s) held at one step s >= 1, concatenated link by link in one step buffer and
// laid against the local query sequences.
struct RingStepBlock {
  std::vector<std::int32_t> cu_k;         // [num_seqs + 1]
  std::vector<std::int32_t> k_positions;  // [rows], or empty (no positions)
  std::int64_t rows = 0;
  std::vector<std::int64_t> offset;     // [link] first row in the step buffer; -1: link done
  std::vector<std::int64_t> link_rows;  // [link]
};

struct RingWork {
  kernels::DType dtype = kernels::DType::F32;
  kernels::AttentionShape shape;
  // The local sequences: queries, and the keys of step 0.
  std::vector<std::int32_t> cu;         // [num_seqs + 1]
  std::vector<std::int32_t> positions;  // [rows], or empty (index in segment)
  std::int64_t rows = 0;
  std::vector<RingLink> links;
  std::vector<RingStepBlock> steps;  // [s] for s in [1, num_steps); [0] is unused
  BufferAllocator* allocator = nullptr;
  // Who runs each attention call: chosen per call from the measured table (null: dhp's
  // kernels for every call).
  const AttentionBackends* backends = nullptr;
  std::string where;  // "world rank 3 (group 1, member 2/3)": named by every error

  int num_seqs() const { return static_cast<int>(cu.size()) - 1; }
  int num_steps() const { return steps.empty() ? 1 : static_cast<int>(steps.size()); }
};

// out [rows, heads_q, head_dim] (dtype), lse [heads_q, rows] (accumulator type).
void ring_attention_forward(const RingWork& work, RingStreams& streams, const void* q,
                            const void* k, const void* v, void* out, void* lse);
// dq, dk, dv are overwritten; out and lse are the forward's.
void ring_attention_backward(const RingWork& work, RingStreams& streams, const void* q,
                             const void* k, const void* v, const void* out, const void* lse,
                             const void* dout, void* dq, void* dk, void* dv);

}  // namespace dhp
