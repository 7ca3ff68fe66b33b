// Context-parallel attention over one rank's local pieces of a wave (see dispatch.hpp),
// for all the wave's sequences at once; framework-free (plain pointers, the kernels'
// packed layout: q/out [rows, heads_q, head_dim], k/v [rows, heads_kv, head_dim],
// lse [heads_q, rows] in the accumulator type).
//
// Ring (any degree d): the local KV block (the rank's Zigzag pieces, a prefix of the local
// rows) travels d-1 steps around the group's ring on the *world* communicator (global
// ranks, so a new CP degree creates no communicator). Each step posts the exchange with
// the ring neighbours, runs the attention of every local query row against the block it
// holds (positions give exact causal masks for any chunk combination and length), waits,
// and merges the partial result with the log-sum-exp merge. Whole pieces attend locally at
// step 0. Backward runs the ring again: KV travels ahead (overlapped) and the dK/dV
// accumulators follow their block; after d-1 steps one last hop brings every block's
// dK/dV home. Gradients are computed per block from the final out and lse, so the error
// does not grow with the ring size.
//
// Ulysses (d | heads_kv and d | heads_q): one all_to_all_v over heads inside the group
// (a GroupPool sub-communicator) gives each member all rows of the group's Zigzag
// sequences for heads/d heads; local attention; the inverse all_to_all_v.
//
// UlyssesRing (degree d = u x r): the group's ring order is node-major (the planner orders
// rings node by node); a node is `ranks_per_node` consecutive world ranks. The u members
// of a node do the Ulysses all_to_all_v over heads (u | heads_kv, u | heads_q) on the
// group's pool communicator (zero counts outside the node), each then holding all of its
// node's rows for heads/u heads; the ring runs across the r nodes between the ranks with
// the same Ulysses index (P2P on the world), with KV passing and the LSE merge; then the
// inverse all_to_all_v. Groups whose heads or nodes do not fit, groups without a pool,
// and GPU buffers fall back to the ring, with a log line saying why.
//
// dtypes: F32, F64, BF16 and F16 (16-bit on the CPU too: widened to fp32 by the kernels).
// 16-bit results accumulate in fp32 across the ring and are rounded once: partial outputs
// are fp32 and merge into an fp32 output; dQ and the travelling dK/dV accumulators are
// fp32 (sent as fp32); lse is always in the accumulator type. So the error does not grow
// with the ring size, forward or backward. Buffers on CPU, or CUDA buffers (NCCL world)
// with `allocator` for the temporaries.
//
// Streams (CUDA buffers; docs/runtime.md, "Streams and synchronisation"): every kernel
// runs on `stream` (the caller's current stream), the ring's point-to-point transfers on
// the communicator's own stream, ordered with events, so that the next block's KV transfer
// runs while the current block's attention does. The calls never wait for the device on
// the host: lengths, offsets and max_seqlen come from the layout (host memory), index
// arrays reach the device with one asynchronous copy on `stream`. They return once the
// work is queued; every result is ready in `stream` order (the caller's next kernels on
// `stream` see them), and the input buffers may be reused in `stream` order too. A peer
// that dies mid-ring is reported by the communicator's next blocking call (its timeout),
// not by the ring itself. CPU buffers: the calls are synchronous.
#pragma once

#include <cstddef>
#include <memory>

#include "dhp/communicator.hpp"
#include "dhp/dispatch.hpp"
#include "dhp/kernels.hpp"

namespace dhp {

class AttentionBackends;
class GroupPool;

// Temporaries of CP attention (received KV blocks, partial outputs, index arrays) on the
// buffers' device. The default (nullptr in CpAttentionContext) uses host memory.
class BufferAllocator {
 public:
  virtual ~BufferAllocator() = default;
  virtual void* allocate(std::size_t bytes) = 0;
  virtual void deallocate(void* pointer) noexcept = 0;
  virtual void copy_from_host(void* device_dst, const void* host_src, std::size_t bytes) = 0;
};

struct CpAttentionContext {
  kernels::DType dtype = kernels::DType::F32;
  kernels::AttentionShape shape;
  const WaveLayout* layout = nullptr;
  Communicator* world = nullptr;         // ring P2P, global ranks
  GroupPool* pool = nullptr;             // Ulysses sub-communicators; null: Ulysses runs as Ring
  BufferAllocator* allocator = nullptr;  // null: host buffers
  // UlyssesRing: world ranks a and b share a node iff a / ranks_per_node == b / ranks_per_node
  // (processes per node, TP included). 0: the whole group is on one node (plain Ulysses).
  int ranks_per_node = 0;
  // CUDA buffers: the cudaStream_t the caller's work runs on (its current stream); the
  // kernels run there. nullptr: the legacy default stream. Memory from `allocator` must be
  // usable in this stream's order (cudaMalloc/cudaFree, or a caching allocator for it).
  void* stream = nullptr;
  // Attention backends and their measured table (attention_backend.hpp): each attention
  // call of the ring runs on the backend measured fastest for its shape that can run it.
  // nullptr: dhp's kernels for every call.
  const AttentionBackends* backends = nullptr;
};

// out [rows, heads_q, head_dim] (dtype), lse [heads_q, rows] (accumulator type).
void cp_attention_forward(const CpAttentionContext& ctx, const void* q, const void* k,
                          const void* v, void* out, void* lse);
// dq, dk, dv are overwritten. out and lse are the forward's.
void cp_attention_backward(const CpAttentionContext& ctx, const void* q, const void* k,
                           const void* v, const void* out, const void* lse, const void* dout,
                           void* dq, void* dk, void* dv);

// Whether the group of `layout` runs Ulysses with these heads (else the ring); for
// UlyssesRing, with the whole group taken as one node.
bool uses_ulysses(const WaveLayout& layout, const kernels::AttentionShape& shape);
// The Ulysses degree of the group of `layout`: d for Ulysses, u (members per node, the
// same on every node, consecutive in ring order) for UlyssesRing, 1 where the group runs
// the plain ring (Ring groups, heads not divisible, irregular nodes, degree 1).
int ulysses_degree(const WaveLayout& layout, const kernels::AttentionShape& shape,
                   int ranks_per_node);

}  // namespace dhp
