// Dispatch of the encoder's inputs: every visual item's patches go from the process that
// loaded its sample (the sample's owner) to every process of the encoder rank that encodes
// each of its parts (EncoderTask), for all the waves of a step with one all_to_all_v.
//
// Owned layout: the samples this process loaded, in increasing sample index, each
// sample's items in order, each item's patches in order (rows of `row_bytes` bytes: the
// patch size x the dtype size). Local layout: wave after wave, each wave's EncoderWave
// pieces in order (StepSchedule), a piece's patches [patch_begin, patch_end) of its item.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "dhp/communicator.hpp"
#include "dhp/step_schedule.hpp"

namespace dhp {

class ItemDispatch {
 public:
  // sample_owners: the world rank that loaded each sample (the same on every rank).
  ItemDispatch(const StepSchedule& schedule, std::span<const int> sample_owners);

  std::int64_t owned_rows() const { return owned_rows_; }
  std::int64_t local_rows() const { return wave_offset_.back(); }
  // First local row of wave w's patches (w == waves: local_rows()).
  std::int64_t wave_offset(int wave) const { return wave_offset_[static_cast<std::size_t>(wave)]; }

  // owned -> local, collective over the world. Host buffers.
  void forward(Communicator& world, const void* owned, void* local, std::int64_t row_bytes) const;
  // Rows forward() sends to other processes.
  std::int64_t rows_sent_to_others() const;

 private:
  int world_rank_ = 0;
  int world_size_ = 0;
  std::int64_t owned_rows_ = 0;
  std::vector<std::int64_t> wave_offset_;
  std::vector<std::int64_t> send_counts_, recv_counts_, send_rows_, recv_rows_;
};

}  // namespace dhp
