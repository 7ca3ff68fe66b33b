// Data dispatch: moves every sample of a wave from the rank that loaded it (its *owner*)
// to the ranks that run it, as the plan shards it, with one all_to_all_v; and back.
//
// Buffers are row-major, one row per token, `row_bytes` per row (token ids: 8 bytes;
// hidden states: hidden * dtype size). Two layouts:
// - owned: the samples this rank loaded (all waves), in increasing sample index, each
//   sample's rows in sequence order;
// - local: what this rank runs in the wave, as pieces (WaveLayout::pieces): first the
//   pieces of its group's Zigzag sequences, then its Whole sequences, each in plan order.
//   A Zigzag piece of a sequence of length L in a group of degree d held by member r is
//   chunk r then chunk 2d-1-r, chunk c = rows [floor(c*L/(2d)), floor((c+1)*L/(2d))) (the
//   kernels' zigzag_layout semantics; any L, chunks may be empty).
//
// Ranks. A plan rank is one TP group of `tp` processes: plan rank r of the LLM layout is
// world ranks layout.device_of(r, t), t in [0, tp). Every process of a TP group receives
// the same tokens (TP collectives inside a layer are the trainer's business); the inverse
// returns rows from tp index 0 only. The world communicator's rank must equal the device
// index (one process per device).
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "dhp/communicator.hpp"
#include "dhp/plan.hpp"

namespace dhp {

struct LocalPiece {
  int sequence = 0;  // index into WavePlan::sequences
  int sample = 0;
  Sharding sharding = Sharding::Whole;
  std::int64_t length = 0;  // the whole sequence's length
  std::int64_t offset = 0;  // first local row
  std::int64_t rows = 0;
};

// What one process runs in one wave. Pure bookkeeping from the plan, identical in
// meaning on every rank.
struct WaveLayout {
  int plan_rank = -1;  // -1: this process is not an LLM rank
  int tp_index = 0;
  int group = -1;                      // index into WavePlan::groups; -1: idle in this wave
  std::vector<int> group_world_ranks;  // ring order, processes with this tp_index
  int member = 0;                      // index of this rank in group_world_ranks
  CpAttention attention = CpAttention::Ring;

  std::vector<LocalPiece> pieces;  // Zigzag pieces first (prefix), then Whole
  int num_zigzag = 0;
  std::int64_t zigzag_rows = 0;              // local rows [0, zigzag_rows) are the Zigzag pieces
  std::vector<std::int64_t> zigzag_lengths;  // the group's Zigzag sequence lengths, in order
  std::vector<std::int32_t> cu_seqlens;      // [pieces + 1]
  std::vector<std::int32_t> positions;       // [rows], true position in the sequence
  std::int64_t rows = 0;

  int degree() const { return static_cast<int>(group_world_ranks.size()); }
};

// Rows [begin, end) of the two zigzag chunks member `member` of `degree` holds.
struct ZigzagChunks {
  std::int64_t begin0 = 0, end0 = 0, begin1 = 0, end1 = 0;
  std::int64_t rows() const { return (end0 - begin0) + (end1 - begin1); }
};
ZigzagChunks zigzag_chunks(std::int64_t length, int degree, int member);

// What world rank `world_rank` runs in wave `wave` of `plan` (pure bookkeeping, no
// communication). sample_lengths: LLM tokens of every sample of the batch. Checks the
// wave the same way on every rank (groups, ranks, members; a Zigzag sequence must have
// member -1) and throws InvalidArgument naming the sample, group or rank.
WaveLayout wave_layout(const Plan& plan, int wave, std::span<const std::int64_t> sample_lengths,
                       int world_rank, int world_size);

class WaveDispatch {
 public:
  // sample_lengths: LLM tokens of every sample of the batch; sample_owners: world rank
  // that loaded each sample. Both known to every rank. Throws InvalidArgument naming the
  // sample / rank that is out of range.
  WaveDispatch(const Plan& plan, int wave, std::span<const std::int64_t> sample_lengths,
               std::span<const int> sample_owners, int world_rank, int world_size);

  const WaveLayout& layout() const { return layout_; }
  // Rows of the owned buffer (every sample this rank loaded, all waves).
  std::int64_t owned_rows() const { return owned_rows_; }
  std::int64_t local_rows() const { return layout_.rows; }

  // owned -> local (collective over `world`: every rank calls it).
  void forward(Communicator& world, const void* owned, void* local, std::int64_t row_bytes) const;
  // local -> owned: writes this wave's rows of the owned buffer, leaves the others.
  void inverse(Communicator& world, const void* local, void* owned, std::int64_t row_bytes) const;
  // Rows forward() sends to other processes (rows staying on this one are copied).
  std::int64_t rows_sent_to_others() const;

 private:
  WaveLayout layout_;
  std::int64_t owned_rows_ = 0;
  int world_rank_ = 0;
  int world_size_ = 0;
  // Forward: rows of the owned buffer sent to each world rank, concatenated in rank order;
  // rows received from each rank (in rank order) and the local row each one lands on.
  std::vector<std::int64_t> send_counts_, recv_counts_;
  std::vector<std::int64_t> send_rows_;      // owned row of each sent row
  std::vector<std::int64_t> recv_to_local_;  // local row of each received row
  // Inverse: only tp index 0 sends back, so the reverse traffic has its own counts.
  std::vector<std::int64_t> back_send_counts_, back_recv_counts_;
  std::vector<std::int64_t> back_send_rows_;  // local row of each row sent back
  std::vector<std::int64_t> back_recv_rows_;  // owned row of each row received back
};

// Sum of `local_count` over the world (one all_reduce): the global number of loss tokens
// of the step. Per-token losses divided by it give the same loss whatever the plan.
std::int64_t global_count(Communicator& world, std::int64_t local_count);

}  // namespace dhp
