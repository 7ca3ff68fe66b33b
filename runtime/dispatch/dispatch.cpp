#include "dhp/dispatch.hpp"

#include <algorithm>
#include <cstring>

#include "dhp/error.hpp"
#include "dhp/log.hpp"
#include "dispatch/row_moves.hpp"

namespace dhp {
namespace {

struct RowRange {
  std::int64_t begin = 0, end = 0;
};

// The rows of sequence `seq` that plan rank `plan_rank` holds (empty if none), in local order.
std::vector<RowRange> rows_on(const WavePlan& wave, const SequencePlan& seq, std::int64_t length,
                              int plan_rank) {
  const GroupPlan& group = wave.groups[static_cast<std::size_t>(seq.group)];
  if (seq.sharding == Sharding::Whole) {
    if (group.ranks[static_cast<std::size_t>(seq.member)] != plan_rank) return {};
    return {{0, length}};
  }
  for (int m = 0; m < group.degree(); ++m) {
    if (group.ranks[static_cast<std::size_t>(m)] != plan_rank) continue;
    const ZigzagChunks c = zigzag_chunks(length, group.degree(), m);
    return {{c.begin0, c.end0}, {c.begin1, c.end1}};
  }
  return {};
}

}  // namespace

ZigzagChunks zigzag_chunks(std::int64_t length, int degree, int member) {
  const std::int64_t chunks = 2 * static_cast<std::int64_t>(degree);
  auto boundary = [&](std::int64_t c) { return c * length / chunks; };
  const std::int64_t second = chunks - 1 - member;
  return {boundary(member), boundary(member + 1), boundary(second), boundary(second + 1)};
}

namespace {

// The plan's wave checked the same way on every rank, so that a bad plan fails everywhere
// instead of only on the ranks it touches (the others would wait on them). Returns the
// group of every plan rank (-1: idle in the wave).
std::vector<int> checked_groups(const Plan& plan, int wave_index, std::size_t num_samples,
                                int world_size) {
  DHP_CHECK(wave_index >= 0 && wave_index < static_cast<int>(plan.waves.size()), InvalidArgument,
            "dispatch: wave {} outside the plan's {} waves", wave_index, plan.waves.size());
  const ModuleLayout& llm = plan.llm;
  DHP_CHECK(llm.tp >= 1 && llm.ranks >= 0 && llm.first_device >= 0 &&
                llm.first_device + std::int64_t{llm.ranks} * llm.tp <= world_size,
            InvalidArgument,
            "dispatch: LLM layout (first device {}, {} ranks x tp {}) does not fit "
            "in a world of {}",
            llm.first_device, llm.ranks, llm.tp, world_size);
  const WavePlan& wave = plan.waves[static_cast<std::size_t>(wave_index)];
  std::vector<int> group_of_rank(static_cast<std::size_t>(llm.ranks), -1);
  for (std::size_t g = 0; g < wave.groups.size(); ++g) {
    const GroupPlan& group = wave.groups[g];
    DHP_CHECK(group.degree() > 0, InvalidArgument, "dispatch: group {} of wave {} has no ranks", g,
              wave_index);
    for (int r : group.ranks) {
      DHP_CHECK(r >= 0 && r < llm.ranks, InvalidArgument,
                "dispatch: group {} of wave {} holds plan rank {} outside the LLM's [0, {})", g,
                wave_index, r, llm.ranks);
      int& owner = group_of_rank[static_cast<std::size_t>(r)];
      DHP_CHECK(owner < 0, InvalidArgument,
                "dispatch: plan rank {} is in groups {} and {} of wave {}", r, owner, g,
                wave_index);
      owner = static_cast<int>(g);
    }
  }
  for (const SequencePlan& seq : wave.sequences) {
    DHP_CHECK(seq.sample >= 0 && static_cast<std::size_t>(seq.sample) < num_samples,
              InvalidArgument, "dispatch: wave {} runs sample {} but the batch has {}", wave_index,
              seq.sample, num_samples);
    DHP_CHECK(seq.group >= 0 && seq.group < static_cast<int>(wave.groups.size()), InvalidArgument,
              "dispatch: sample {} in group {} of a wave with {} groups", seq.sample, seq.group,
              wave.groups.size());
    const int degree = wave.groups[static_cast<std::size_t>(seq.group)].degree();
    if (seq.sharding == Sharding::Zigzag) {
      DHP_CHECK(seq.member == -1, InvalidArgument,
                "dispatch: sample {} of wave {} is zigzag-split over its group but has member {} "
                "(a zigzag sequence lives on every member: use member -1, or "
                "SequencePlan::zigzag)",
                seq.sample, wave_index, seq.member);
    } else {
      DHP_CHECK(seq.member >= 0 && seq.member < degree, InvalidArgument,
                "dispatch: sample {} Whole on member {} of a group of {}", seq.sample, seq.member,
                degree);
    }
  }
  return group_of_rank;
}

WaveLayout build_layout(const Plan& plan, int wave_index, const std::vector<int>& group_of_rank,
                        std::span<const std::int64_t> sample_lengths, int world_rank) {
  const ModuleLayout& llm = plan.llm;
  const WavePlan& wave = plan.waves[static_cast<std::size_t>(wave_index)];
  WaveLayout L;
  const int llm_index = world_rank - llm.first_device;
  if (llm_index >= 0 && llm_index < llm.num_devices()) {
    L.plan_rank = llm_index / llm.tp;
    L.tp_index = llm_index % llm.tp;
  }
  // This rank's group (a rank is in at most one).
  if (L.plan_rank >= 0 && group_of_rank[static_cast<std::size_t>(L.plan_rank)] >= 0) {
    L.group = group_of_rank[static_cast<std::size_t>(L.plan_rank)];
    const GroupPlan& group = wave.groups[static_cast<std::size_t>(L.group)];
    L.member = static_cast<int>(std::find(group.ranks.begin(), group.ranks.end(), L.plan_rank) -
                                group.ranks.begin());
    L.attention = group.attention;
    for (int r : group.ranks) L.group_world_ranks.push_back(llm.device_of(r, L.tp_index));
  }
  // Local pieces: the group's Zigzag sequences first, then this rank's Whole ones.
  for (int pass = 0; pass < 2 && L.group >= 0; ++pass) {
    const Sharding wanted = pass == 0 ? Sharding::Zigzag : Sharding::Whole;
    for (std::size_t i = 0; i < wave.sequences.size(); ++i) {
      const SequencePlan& seq = wave.sequences[i];
      if (seq.sharding != wanted || seq.group != L.group) continue;
      const std::int64_t length = sample_lengths[static_cast<std::size_t>(seq.sample)];
      const auto ranges = rows_on(wave, seq, length, L.plan_rank);
      if (wanted == Sharding::Zigzag) L.zigzag_lengths.push_back(length);
      if (ranges.empty()) continue;
      LocalPiece piece{static_cast<int>(i), seq.sample, seq.sharding, length, L.rows, 0};
      for (const RowRange& r : ranges) {
        for (std::int64_t p = r.begin; p < r.end; ++p)
          L.positions.push_back(static_cast<std::int32_t>(p));
        piece.rows += r.end - r.begin;
      }
      L.rows += piece.rows;
      L.pieces.push_back(piece);
      if (wanted == Sharding::Zigzag) {
        ++L.num_zigzag;
        L.zigzag_rows = L.rows;
      }
    }
  }
  DHP_CHECK(L.rows <= INT32_MAX, InvalidArgument, "dispatch: {} local rows exceed int32 cu_seqlens",
            L.rows);
  L.cu_seqlens.push_back(0);
  for (const LocalPiece& p : L.pieces)
    L.cu_seqlens.push_back(static_cast<std::int32_t>(p.offset + p.rows));
  return L;
}

}  // namespace

WaveLayout wave_layout(const Plan& plan, int wave, std::span<const std::int64_t> sample_lengths,
                       int world_rank, int world_size) {
  DHP_CHECK(world_rank >= 0 && world_rank < world_size, InvalidArgument,
            "wave_layout: world rank {} outside [0, {})", world_rank, world_size);
  for (std::size_t s = 0; s < sample_lengths.size(); ++s)
    DHP_CHECK(sample_lengths[s] >= 0, InvalidArgument, "wave_layout: sample {} has length {}", s,
              sample_lengths[s]);
  const std::vector<int> groups = checked_groups(plan, wave, sample_lengths.size(), world_size);
  return build_layout(plan, wave, groups, sample_lengths, world_rank);
}

WaveDispatch::WaveDispatch(const Plan& plan, int wave_index,
                           std::span<const std::int64_t> sample_lengths,
                           std::span<const int> sample_owners, int world_rank, int world_size)
    : world_rank_(world_rank), world_size_(world_size) {
  DHP_CHECK(sample_lengths.size() == sample_owners.size(), InvalidArgument,
            "dispatch: {} sample lengths but {} sample owners", sample_lengths.size(),
            sample_owners.size());
  DHP_CHECK(world_rank >= 0 && world_rank < world_size, InvalidArgument,
            "dispatch: world rank {} outside [0, {})", world_rank, world_size);
  const std::size_t num_samples = sample_lengths.size();
  for (std::size_t s = 0; s < num_samples; ++s) {
    DHP_CHECK(sample_owners[s] >= 0 && sample_owners[s] < world_size, InvalidArgument,
              "dispatch: sample {} owned by rank {} outside [0, {})", s, sample_owners[s],
              world_size);
    DHP_CHECK(sample_lengths[s] >= 0, InvalidArgument, "dispatch: sample {} has length {}", s,
              sample_lengths[s]);
  }
  const std::vector<int> group_of_rank = checked_groups(plan, wave_index, num_samples, world_size);
  layout_ = build_layout(plan, wave_index, group_of_rank, sample_lengths, world_rank);
  const ModuleLayout& llm = plan.llm;
  const WavePlan& wave = plan.waves[static_cast<std::size_t>(wave_index)];
  const WaveLayout& L = layout_;

  // Owned rows: this rank's samples in increasing sample index.
  std::vector<std::int64_t> owned_offset(num_samples, -1);
  for (std::size_t s = 0; s < num_samples; ++s) {
    if (sample_owners[s] != world_rank) continue;
    owned_offset[s] = owned_rows_;
    owned_rows_ += sample_lengths[s];
  }
  const auto length_of = [&](const SequencePlan& seq) {
    return sample_lengths[static_cast<std::size_t>(seq.sample)];
  };
  std::vector<std::int64_t> piece_offset(wave.sequences.size(), -1);
  std::vector<std::int64_t> piece_rows(wave.sequences.size(), 0);
  for (const LocalPiece& piece : L.pieces) {
    piece_offset[static_cast<std::size_t>(piece.sequence)] = piece.offset;
    piece_rows[static_cast<std::size_t>(piece.sequence)] = piece.rows;
  }

  // Forward traffic. Sender order = receiver order: destination (source) rank, then the
  // wave's sequences in plan order, then the piece's rows.
  const auto n = static_cast<std::size_t>(world_size);
  send_counts_.assign(n, 0);
  recv_counts_.assign(n, 0);
  back_send_counts_.assign(n, 0);
  back_recv_counts_.assign(n, 0);
  for (int dest = 0; dest < world_size; ++dest) {
    const int dest_index = dest - llm.first_device;
    if (dest_index < 0 || dest_index >= llm.num_devices()) continue;
    const int dest_plan_rank = dest_index / llm.tp;
    for (const SequencePlan& seq : wave.sequences) {
      const auto s = static_cast<std::size_t>(seq.sample);
      if (sample_owners[s] != world_rank) continue;
      for (const RowRange& r : rows_on(wave, seq, length_of(seq), dest_plan_rank)) {
        for (std::int64_t p = r.begin; p < r.end; ++p) send_rows_.push_back(owned_offset[s] + p);
        send_counts_[static_cast<std::size_t>(dest)] += r.end - r.begin;
        if (dest_index % llm.tp != 0) continue;  // only tp index 0 returns rows
        for (std::int64_t p = r.begin; p < r.end; ++p)
          back_recv_rows_.push_back(owned_offset[s] + p);
        back_recv_counts_[static_cast<std::size_t>(dest)] += r.end - r.begin;
      }
    }
  }
  for (int source = 0; source < world_size && L.plan_rank >= 0; ++source) {
    for (std::size_t i = 0; i < wave.sequences.size(); ++i) {
      const SequencePlan& seq = wave.sequences[i];
      if (sample_owners[static_cast<std::size_t>(seq.sample)] != source || piece_offset[i] < 0)
        continue;
      const std::int64_t rows = piece_rows[i];
      for (std::int64_t k = 0; k < rows; ++k) recv_to_local_.push_back(piece_offset[i] + k);
      recv_counts_[static_cast<std::size_t>(source)] += rows;
      if (L.tp_index != 0) continue;
      for (std::int64_t k = 0; k < rows; ++k) back_send_rows_.push_back(piece_offset[i] + k);
      back_send_counts_[static_cast<std::size_t>(source)] += rows;
    }
  }
  DHP_LOG_DEBUG(
      "dispatch wave {}: world rank {} plan rank {} group {} member {}/{}: {} local rows "
      "in {} pieces ({} zigzag)",
      wave_index, world_rank, L.plan_rank, L.group, L.member, L.degree(), L.rows, L.pieces.size(),
      L.num_zigzag);
}

void WaveDispatch::forward(Communicator& world, const void* owned, void* local,
                           std::int64_t row_bytes) const {
  DHP_CHECK(world.size() == world_size_, InvalidArgument,
            "dispatch forward: {} but the dispatch was built for a world of {}", world.describe(),
            world_size_);
  move_rows(world, "dispatch forward", owned, local, row_bytes, send_counts_, send_rows_,
            recv_counts_, recv_to_local_);
}

void WaveDispatch::inverse(Communicator& world, const void* local, void* owned,
                           std::int64_t row_bytes) const {
  DHP_CHECK(world.size() == world_size_, InvalidArgument,
            "dispatch inverse: {} but the dispatch was built for a world of {}", world.describe(),
            world_size_);
  move_rows(world, "dispatch inverse", local, owned, row_bytes, back_send_counts_, back_send_rows_,
            back_recv_counts_, back_recv_rows_);
}

std::int64_t WaveDispatch::rows_sent_to_others() const {
  std::int64_t rows = 0;
  for (std::size_t r = 0; r < send_counts_.size(); ++r)
    if (static_cast<int>(r) != world_rank_) rows += send_counts_[r];
  return rows;
}

std::int64_t global_count(Communicator& world, std::int64_t local_count) {
  std::int64_t total = local_count;
  world.all_reduce(&total, &total, 1, DataType::I64, ReduceOp::Sum);
  return total;
}

}  // namespace dhp
