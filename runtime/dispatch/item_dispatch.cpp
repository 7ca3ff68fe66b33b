#include "dhp/item_dispatch.hpp"

#include "dhp/error.hpp"
#include "dispatch/row_moves.hpp"

namespace dhp {

ItemDispatch::ItemDispatch(const StepSchedule& schedule, std::span<const int> sample_owners)
    : world_rank_(schedule.world_rank()), world_size_(schedule.world_size()) {
  const Batch& batch = schedule.batch();
  const Plan& plan = schedule.plan();
  const int me = schedule.world_rank();
  DHP_CHECK(sample_owners.size() == batch.samples.size(), InvalidArgument,
            "item dispatch: {} sample owners for {} samples", sample_owners.size(),
            batch.samples.size());
  for (std::size_t s = 0; s < sample_owners.size(); ++s)
    DHP_CHECK(sample_owners[s] >= 0 && sample_owners[s] < world_size_, InvalidArgument,
              "item dispatch: sample {} owned by rank {} outside [0, {})", s, sample_owners[s],
              world_size_);
  // Owned rows of every item this process loaded.
  const std::size_t items = static_cast<std::size_t>(schedule.first_visual().back());
  std::vector<std::int64_t> owned_offset(items, -1);
  for (std::size_t s = 0; s < batch.samples.size(); ++s) {
    if (sample_owners[s] != me) continue;
    for (std::size_t v = 0; v < batch.samples[s].visuals.size(); ++v) {
      owned_offset[static_cast<std::size_t>(schedule.first_visual()[s]) + v] = owned_rows_;
      owned_rows_ += batch.samples[s].visuals[v].patches;
    }
  }
  wave_offset_.push_back(0);
  for (int w = 0; w < schedule.waves(); ++w)
    wave_offset_.push_back(wave_offset_.back() + schedule.encoder(w).patch_rows);

  // Sender order = receiver order: peer, then task order, then rows. One pass over the
  // tasks per side, rows collected per peer.
  const auto n = static_cast<std::size_t>(world_size_);
  const ModuleLayout& enc = plan.encoder;
  std::vector<std::vector<std::int64_t>> to(n), from(n);
  std::vector<std::int64_t> local_offset(plan.encoder_tasks.size(), -1);
  for (int w = 0; w < schedule.waves(); ++w)
    for (const EncoderPiece& piece : schedule.encoder(w).pieces)
      local_offset[static_cast<std::size_t>(piece.task)] = wave_offset(w) + piece.patch_offset;
  for (std::size_t t = 0; t < plan.encoder_tasks.size(); ++t) {
    const EncoderTask& task = plan.encoder_tasks[t];
    const int owner = sample_owners[static_cast<std::size_t>(task.sample)];
    const int item = schedule.first_visual()[static_cast<std::size_t>(task.sample)] + task.visual;
    const ItemPartRows& rows = schedule.item_parts(item)[static_cast<std::size_t>(task.part)];
    if (owner == me) {
      for (int u = 0; u < enc.tp; ++u) {
        auto& out = to[static_cast<std::size_t>(enc.device_of(task.rank, u))];
        for (std::int64_t p = rows.patch_begin; p < rows.patch_end; ++p)
          out.push_back(owned_offset[static_cast<std::size_t>(item)] + p);
      }
    }
    if (local_offset[t] >= 0) {
      auto& in = from[static_cast<std::size_t>(owner)];
      for (std::int64_t k = 0; k < rows.patches(); ++k) in.push_back(local_offset[t] + k);
    }
  }
  for (std::size_t peer = 0; peer < n; ++peer) {
    send_counts_.push_back(static_cast<std::int64_t>(to[peer].size()));
    send_rows_.insert(send_rows_.end(), to[peer].begin(), to[peer].end());
    recv_counts_.push_back(static_cast<std::int64_t>(from[peer].size()));
    recv_rows_.insert(recv_rows_.end(), from[peer].begin(), from[peer].end());
  }
}

std::int64_t ItemDispatch::rows_sent_to_others() const {
  std::int64_t rows = 0;
  for (std::size_t r = 0; r < send_counts_.size(); ++r)
    if (static_cast<int>(r) != world_rank_) rows += send_counts_[r];
  return rows;
}

void ItemDispatch::forward(Communicator& world, const void* owned, void* local,
                           std::int64_t row_bytes) const {
  DHP_CHECK(world.size() == world_size_, InvalidArgument,
            "item dispatch: {} but the dispatch was built for a world of {}", world.describe(),
            world_size_);
  move_rows(world, "item dispatch", owned, local, row_bytes, send_counts_, send_rows_,
            recv_counts_, recv_rows_);
}

}  // namespace dhp
