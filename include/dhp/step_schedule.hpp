// What one process does in a training step, from the batch and its plan: which LLM rows it
// runs in every wave (and which of them are visual tokens), which encoder parts it encodes
// (their patch and token rows, their attention spans, the rings of cut items), and the
// order of its work. Pure bookkeeping: the same meaning on every rank, no communication.
//
// Processes are devices: world rank d is device d. The LLM occupies devices
// [llm.first_device, + llm.ranks x llm.tp), the encoder [encoder.first_device, +
// encoder.ranks x encoder.tp); plan rank r of a module is its tp consecutive devices.
//
// A sample's LLM sequence: its T text tokens are cut into V + 1 segments (floor shares) and
// visual item v follows segment v: text_0, item_0, text_1, item_1, ..., item_{V-1}, text_V.
// The owner of a sample holds its rows in that order (token ids and labels for every row;
// a visual row's id is not read) and its items' patches, item by item.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "dhp/batch.hpp"
#include "dhp/dispatch.hpp"
#include "dhp/encoder_geometry.hpp"
#include "dhp/model.hpp"
#include "dhp/plan.hpp"

namespace dhp {

// Position in the sample's LLM sequence of each visual item's first token.
std::vector<std::int64_t> visual_token_offsets(const Sample& sample);

// One EncoderTask this process encodes in a wave.
struct EncoderPiece {
  int task = 0;  // index into Plan::encoder_tasks
  int sample = 0, visual = 0;
  int item = 0;  // flat index of the visual item (visual_offsets)
  int part = 0, parts = 1;
  ItemPartRows rows;
  std::int64_t patch_offset = 0;  // first local patch row
  std::int64_t token_offset = 0;  // first local embedding row
  // Shards of a one-span item: the world ranks holding its parts (this process's encoder
  // TP index), in part order, and each part's patch rows; the piece's attention is a
  // non-causal ring over them (this process is ring[part]).
  std::vector<int> ring;
  std::vector<std::int64_t> ring_rows;
};

// This process's encoder work in one wave: its pieces in task order, their patches packed
// (patch_rows rows) and their embeddings packed the same way (token_rows rows).
struct EncoderWave {
  std::vector<EncoderPiece> pieces;
  std::int64_t patch_rows = 0;
  std::int64_t token_rows = 0;
  // Attention sequences over the local patch rows: one per span of a piece, one per shard.
  std::vector<std::int32_t> cu_seqlens;
  std::vector<int> sequence_piece;  // [sequence] the piece it belongs to
};

// A local LLM row that holds a visual token.
struct VisualRow {
  std::int64_t local_row = 0;
  int item = 0;               // flat index
  std::int64_t token = 0;     // within the item
};

// This process's LLM work in one wave.
struct LlmWave {
  WaveLayout layout;                // rows, pieces, positions, CP group
  std::vector<VisualRow> visuals;   // ascending local_row
  std::int64_t loss_rows = 0;       // filled by the executor from the labels
};

enum class StepActionKind {
  EncoderForward,   // encode this process's pieces of the wave
  LlmWave,          // the wave's LLM forward and backward (boundary included)
  EncoderBackward,  // the encoder's backward of the wave, from the boundary's gradients
};
struct StepAction {
  StepActionKind kind = StepActionKind::LlmWave;
  int wave = 0;
};
const char* to_string(StepActionKind kind) noexcept;

class StepSchedule {
 public:
  // encoder: the model's encoder (spans, patch merge); null for a text-only model.
  // Checks the plan against the batch on every rank alike (validate() with
  // InvalidArgument; the world holds both layouts; every item holds tokens_per_llm_token
  // patches per LLM token; a cut item's parts sit on distinct encoder ranks) and throws
  // InvalidArgument naming the sample, item, task or rank and the numbers.
  StepSchedule(const Batch& batch, const Plan& plan, const EncoderSpec* encoder, int world_rank,
               int world_size);

  int world_rank() const { return world_rank_; }
  int world_size() const { return world_size_; }
  int waves() const { return static_cast<int>(llm_.size()); }
  const Plan& plan() const { return *plan_; }
  const Batch& batch() const { return *batch_; }

  // Roles: -1 where this process holds no rank of the module.
  int llm_rank() const { return llm_rank_; }
  int llm_tp_index() const { return llm_tp_index_; }
  int encoder_rank() const { return encoder_rank_; }
  int encoder_tp_index() const { return encoder_tp_index_; }
  bool runs_llm() const { return llm_rank_ >= 0; }
  bool runs_encoder() const { return encoder_rank_ >= 0; }

  const LlmWave& llm(int wave) const { return llm_[static_cast<std::size_t>(wave)]; }
  const EncoderWave& encoder(int wave) const { return encoder_[static_cast<std::size_t>(wave)]; }

  // LLM tokens of every sample; visual items in flat order (sample, visual) with the
  // position of their first token in their sample.
  const std::vector<std::int64_t>& sample_lengths() const { return sample_lengths_; }
  const std::vector<int>& first_visual() const { return first_visual_; }  // visual_offsets
  std::int64_t item_position(int item) const { return item_position_[item]; }
  // The rows of every part of an item, and the encoder rank of each part (flat item index).
  const std::vector<ItemPartRows>& item_parts(int item) const { return item_parts_[item]; }
  const std::vector<int>& item_part_ranks(int item) const { return item_part_ranks_[item]; }
  int item_wave(int item) const { return item_wave_[item]; }

  // This process's work in order: colocated, wave after wave (encode, LLM, encoder
  // backward); disjoint, the encoder one wave ahead (encode w+1 before the backward of w)
  // and the LLM wave after wave.
  const std::vector<StepAction>& program() const { return program_; }

 private:
  void check_plan(const EncoderSpec* encoder) const;
  void build_items(const EncoderSpec* encoder);
  void build_llm_waves();
  void build_encoder_waves();
  void build_program();

  const Batch* batch_;
  const Plan* plan_;
  int world_rank_, world_size_;
  int llm_rank_ = -1, llm_tp_index_ = -1, encoder_rank_ = -1, encoder_tp_index_ = -1;
  std::vector<std::int64_t> sample_lengths_;
  std::vector<int> first_visual_;
  std::vector<int> item_sample_;
  std::vector<std::int64_t> item_position_;
  std::vector<std::vector<ItemPartRows>> item_parts_;
  std::vector<std::vector<int>> item_part_ranks_;
  std::vector<std::vector<int>> item_part_tasks_;
  std::vector<int> item_wave_;
  std::vector<LlmWave> llm_;
  std::vector<EncoderWave> encoder_;
  std::vector<StepAction> program_;
};

}  // namespace dhp
