// Context-parallel attention over a packed batch in one call, for the common case: the
// sequence lengths, the world ranks of the ring and this rank; no Plan to write.
//
//   std::vector<std::int64_t> lengths{4096, 300, 17, 1200};   // the packed batch, in order
//   dhp::PackedCpAttention cp(lengths, {0, 1, 2}, world->rank(), world->size());
//   cp.shard(q_full, q.data(), row_bytes);                   // or fill q's local rows yourself
//   cp.forward(*world, dhp::kernels::DType::F64, shape, q, k, v, out, lse);
//   cp.backward(*world, dhp::kernels::DType::F64, shape, q, k, v, out, lse, dout, dq, dk, dv);
//   cp.gather(*world, out, out_full, row_bytes);             // every ring member gets it all
//
// Layouts (per rank, `local_rows()` rows in the order of `packed_rows()`):
//   q, out, dq [local_rows, heads_q, head_dim]; k, v, dk, dv [local_rows, heads_kv, head_dim];
//   lse [heads_q, local_rows] (head-major, in the accumulator type: f64 for F64, else f32).
// shape.softmax_scale = 0 means 1/sqrt(head_dim); shape.causal selects the causal mask
// (positions inside each sequence) or full attention within each sequence.
//
// Sharding. Each sequence is either zigzag-split over the whole ring (cut into 2d chunks,
// member i holding chunks i and 2d-1-i, which balances the causal work) or kept whole on
// one member. Given explicitly (one SequenceSharding per sequence) or chosen by
// choose_sharding(): sequences whose causal work exceeds a member's fair share are split,
// the rest are placed whole, longest first, on the least-loaded member, and while that
// leaves a member over 10 % above the fair share the longest whole sequence is split too.
//
// Every call checks its arguments on every rank before it sends anything: a bad shape,
// dtype or buffer throws dhp::Error(InvalidArgument) and the communicator stays usable.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "dhp/communicator.hpp"
#include "dhp/dispatch.hpp"
#include "dhp/kernels.hpp"
#include "dhp/plan.hpp"

namespace dhp {

class GroupPool;

struct SequenceSharding {
  Sharding sharding = Sharding::Zigzag;
  int member = -1;  // Whole: index into the ring of the member that holds it; Zigzag: -1

  static SequenceSharding zigzag() { return {Sharding::Zigzag, -1}; }
  static SequenceSharding whole(int member) { return {Sharding::Whole, member}; }
  bool operator==(const SequenceSharding&) const = default;
};

// The sharding PackedCpAttention chooses for `lengths` on a ring of `degree` members (see
// the header comment). Deterministic: the same on every rank.
std::vector<SequenceSharding> choose_sharding(std::span<const std::int64_t> lengths, int degree);

class PackedCpAttention {
 public:
  // lengths: every sequence of the packed batch, in packed order (the same on every rank).
  // ring: the world ranks of the ring, in ring order (distinct, in [0, world_size)).
  // world_rank need not be in the ring (forward/backward are then no-ops).
  // sharding: one per sequence, or empty for choose_sharding(lengths, ring.size()).
  // attention: Ring, or Ulysses / UlyssesRing (need a GroupPool holding the ring's group).
  // Throws InvalidArgument naming the sequence, member or rank that is out of range.
  PackedCpAttention(std::vector<std::int64_t> lengths, std::vector<int> ring, int world_rank,
                    int world_size, std::vector<SequenceSharding> sharding = {},
                    CpAttention attention = CpAttention::Ring);

  bool in_ring() const { return layout_.group >= 0; }
  const std::vector<std::int64_t>& lengths() const { return lengths_; }
  const std::vector<int>& ring() const { return ring_; }
  const std::vector<SequenceSharding>& sharding() const { return sharding_; }
  std::int64_t total_rows() const { return total_rows_; }
  std::int64_t local_rows() const { return layout_.rows; }
  // Local row i is row packed_rows()[i] of the packed batch.
  const std::vector<std::int64_t>& packed_rows() const { return packed_rows_; }
  // The single-wave plan and the layout the attention runs (for GroupPool::prewarm and the
  // lower-level calls of cp_attention.hpp).
  const Plan& plan() const { return plan_; }
  const WaveLayout& layout() const { return layout_; }

  // A packed tensor of total_rows() rows of `row_bytes` bytes (held whole by this rank) ->
  // its local rows. No communication.
  void shard(const void* packed, void* local, std::int64_t row_bytes) const;
  // Every ring member's local rows -> the whole packed tensor on every member (collective
  // over the ring's members; ranks outside the ring do nothing). Host buffers.
  void gather(Communicator& world, const void* local, void* packed, std::int64_t row_bytes) const;

  // Collective over the ring's members (see the header comment for the layouts).
  void forward(Communicator& world, kernels::DType dtype, const kernels::AttentionShape& shape,
               const void* q, const void* k, const void* v, void* out, void* lse,
               GroupPool* pool = nullptr) const;
  // dq, dk, dv are overwritten; out and lse are the forward's.
  void backward(Communicator& world, kernels::DType dtype, const kernels::AttentionShape& shape,
                const void* q, const void* k, const void* v, const void* out, const void* lse,
                const void* dout, void* dq, void* dk, void* dv, GroupPool* pool = nullptr) const;

 private:
  std::vector<std::int64_t> lengths_;
  std::vector<int> ring_;
  std::vector<SequenceSharding> sharding_;
  std::int64_t total_rows_ = 0;
  int world_size_ = 0;
  Plan plan_;
  WaveLayout layout_;
  std::vector<std::int64_t> packed_rows_;
};

}  // namespace dhp
