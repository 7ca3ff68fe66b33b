#include "dhp/step_schedule.hpp"

#include <algorithm>

#include "dhp/error.hpp"
#include "dhp/log.hpp"

namespace dhp {
namespace {

std::int64_t share_end(std::int64_t total, std::int64_t k, std::int64_t of) {
  return total / of * k + total % of * k / of;
}

// Rows [begin, end) of a sequence that a local piece holds, in local order.
struct PositionRange {
  std::int64_t begin = 0, end = 0, local = 0;  // local: the local row of `begin`
};

std::vector<PositionRange> piece_ranges(const WaveLayout& layout, const LocalPiece& piece) {
  std::vector<PositionRange> out;
  for (std::int64_t r = 0; r < piece.rows;) {
    const std::int64_t local = piece.offset + r;
    const std::int64_t first = layout.positions[static_cast<std::size_t>(local)];
    std::int64_t n = 1;
    while (r + n < piece.rows &&
           layout.positions[static_cast<std::size_t>(local + n)] == first + n)
      ++n;
    out.push_back({first, first + n, local});
    r += n;
  }
  return out;
}

}  // namespace

const char* to_string(StepActionKind kind) noexcept {
  switch (kind) {
    case StepActionKind::EncoderForward:
      return "encoder forward";
    case StepActionKind::LlmWave:
      return "LLM wave";
    case StepActionKind::EncoderBackward:
      return "encoder backward";
  }
  return "?";
}

std::vector<std::int64_t> visual_token_offsets(const Sample& sample) {
  const auto v = static_cast<std::int64_t>(sample.visuals.size());
  std::vector<std::int64_t> out;
  out.reserve(sample.visuals.size());
  std::int64_t visual_before = 0;
  for (std::int64_t i = 0; i < v; ++i) {
    out.push_back(share_end(sample.text_tokens, i + 1, v + 1) + visual_before);
    visual_before += sample.visuals[static_cast<std::size_t>(i)].llm_tokens;
  }
  return out;
}

StepSchedule::StepSchedule(const Batch& batch, const Plan& plan, const EncoderSpec* encoder,
                           int world_rank, int world_size)
    : batch_(&batch), plan_(&plan), world_rank_(world_rank), world_size_(world_size) {
  DHP_CHECK(world_size >= 1 && world_rank >= 0 && world_rank < world_size, InvalidArgument,
            "step: world rank {} outside a world of {}", world_rank, world_size);
  check_plan(encoder);
  const ModuleLayout& llm = plan.llm;
  const int llm_index = world_rank - llm.first_device;
  if (llm_index >= 0 && llm_index < llm.num_devices()) {
    llm_rank_ = llm_index / llm.tp;
    llm_tp_index_ = llm_index % llm.tp;
  }
  const ModuleLayout& enc = plan.encoder;
  const int enc_index = world_rank - enc.first_device;
  if (enc.ranks > 0 && enc_index >= 0 && enc_index < enc.num_devices()) {
    encoder_rank_ = enc_index / enc.tp;
    encoder_tp_index_ = enc_index % enc.tp;
  }
  build_items(encoder);
  build_llm_waves();
  build_encoder_waves();
  build_program();
}

void StepSchedule::check_plan(const EncoderSpec* encoder) const {
  const Plan& plan = *plan_;
  const Batch& batch = *batch_;
  validate(batch);
  validate(plan, batch, ErrorKind::InvalidArgument);
  const std::int64_t llm_end =
      plan.llm.first_device + std::int64_t{plan.llm.ranks} * plan.llm.tp;
  const std::int64_t enc_end =
      plan.encoder.first_device + std::int64_t{plan.encoder.ranks} * plan.encoder.tp;
  DHP_CHECK(llm_end <= world_size_ && enc_end <= world_size_, InvalidArgument,
            "step: the plan needs devices [0, {}) (LLM {} ranks x tp {} from device {}, encoder {} "
            "ranks x tp {} from device {}) but the world has {} processes",
            std::max(llm_end, enc_end), plan.llm.ranks, plan.llm.tp, plan.llm.first_device,
            plan.encoder.ranks, plan.encoder.tp, plan.encoder.first_device, world_size_);
  DHP_CHECK(plan.encoder_tasks.empty() || encoder != nullptr, InvalidArgument,
            "step: the plan has {} encoder tasks but the model has no encoder",
            plan.encoder_tasks.size());
}

void StepSchedule::build_items(const EncoderSpec* encoder) {
  const Batch& batch = *batch_;
  const Plan& plan = *plan_;
  first_visual_ = visual_offsets(batch);
  const auto items = static_cast<std::size_t>(first_visual_.back());
  item_sample_.resize(items);
  item_position_.resize(items);
  item_parts_.resize(items);
  item_part_ranks_.resize(items);
  item_part_tasks_.resize(items);
  item_wave_.assign(items, -1);
  for (std::size_t s = 0; s < batch.samples.size(); ++s) {
    const Sample& sample = batch.samples[s];
    sample_lengths_.push_back(sample.llm_tokens());
    const auto offsets = visual_token_offsets(sample);
    for (std::size_t v = 0; v < sample.visuals.size(); ++v) {
      const auto item = static_cast<std::size_t>(first_visual_[s]) + v;
      item_sample_[item] = static_cast<int>(s);
      item_position_[item] = offsets[v];
    }
  }
  for (std::size_t t = 0; t < plan.encoder_tasks.size(); ++t) {
    const EncoderTask& task = plan.encoder_tasks[t];
    const auto item = static_cast<std::size_t>(first_visual_[task.sample] + task.visual);
    const VisualItem& visual = batch.samples[task.sample].visuals[task.visual];
    auto& parts = item_parts_[item];
    if (parts.empty()) {
      item_part_ranks_[item].assign(static_cast<std::size_t>(task.parts), -1);
      item_part_tasks_[item].assign(static_cast<std::size_t>(task.parts), -1);
      try {
        for (int p = 0; p < task.parts; ++p) parts.push_back(item_part_rows(*encoder, visual, p, task.parts));
      } catch (const Error& e) {
        DHP_THROW(InvalidArgument, "step: sample {} (id {}) visual {}: {}", task.sample,
                  batch.samples[task.sample].id, task.visual, e.message());
      }
    }
    item_part_ranks_[item][static_cast<std::size_t>(task.part)] = task.rank;
    item_part_tasks_[item][static_cast<std::size_t>(task.part)] = static_cast<int>(t);
    item_wave_[item] = task.wave;
  }
  // A ring needs distinct members: two shards of one item on one encoder rank would
  // exchange with themselves.
  for (std::size_t item = 0; item < items; ++item) {
    const auto& parts = item_parts_[item];
    if (parts.size() < 2 || !parts.front().shard) continue;
    std::vector<int> ranks = item_part_ranks_[item];
    std::sort(ranks.begin(), ranks.end());
    const auto twice = std::adjacent_find(ranks.begin(), ranks.end());
    DHP_CHECK(twice == ranks.end(), InvalidArgument,
              "step: sample {} (id {}) visual {} is cut into {} shards that run as a ring, but "
              "encoder rank {} holds two of them",
              item_sample_[item], batch.samples[item_sample_[item]].id,
              static_cast<int>(item) - first_visual_[item_sample_[item]], parts.size(), *twice);
  }
}

void StepSchedule::build_llm_waves() {
  const Plan& plan = *plan_;
  llm_.resize(plan.waves.size());
  for (std::size_t w = 0; w < plan.waves.size(); ++w) {
    LlmWave& wave = llm_[w];
    wave.layout = wave_layout(plan, static_cast<int>(w), sample_lengths_, world_rank_, world_size_);
    for (const LocalPiece& piece : wave.layout.pieces) {
      const Sample& sample = batch_->samples[static_cast<std::size_t>(piece.sample)];
      const int first = first_visual_[piece.sample];
      const auto ranges = piece_ranges(wave.layout, piece);
      for (std::size_t v = 0; v < sample.visuals.size(); ++v) {
        const int item = first + static_cast<int>(v);
        const std::int64_t begin = item_position_[item];
        const std::int64_t end = begin + sample.visuals[v].llm_tokens;
        for (const PositionRange& r : ranges)
          for (std::int64_t p = std::max(begin, r.begin); p < std::min(end, r.end); ++p)
            wave.visuals.push_back({r.local + (p - r.begin), item, p - begin});
      }
    }
    std::sort(wave.visuals.begin(), wave.visuals.end(),
              [](const VisualRow& a, const VisualRow& b) { return a.local_row < b.local_row; });
  }
}

void StepSchedule::build_encoder_waves() {
  const Plan& plan = *plan_;
  encoder_.resize(plan.waves.size());
  if (encoder_rank_ < 0) return;
  for (std::size_t t = 0; t < plan.encoder_tasks.size(); ++t) {
    const EncoderTask& task = plan.encoder_tasks[t];
    if (task.rank != encoder_rank_) continue;
    EncoderWave& wave = encoder_[static_cast<std::size_t>(task.wave)];
    EncoderPiece piece;
    piece.task = static_cast<int>(t);
    piece.sample = task.sample;
    piece.visual = task.visual;
    piece.item = first_visual_[task.sample] + task.visual;
    piece.part = task.part;
    piece.parts = task.parts;
    piece.rows = item_parts_[piece.item][static_cast<std::size_t>(task.part)];
    piece.patch_offset = wave.patch_rows;
    piece.token_offset = wave.token_rows;
    if (piece.rows.shard) {
      for (int rank : item_part_ranks_[piece.item])
        piece.ring.push_back(plan.encoder.device_of(rank, encoder_tp_index_));
      for (const ItemPartRows& part : item_parts_[piece.item])
        piece.ring_rows.push_back(part.patches());
    }
    if (wave.cu_seqlens.empty()) wave.cu_seqlens.push_back(0);
    const std::int64_t r = piece.rows.tokens() > 0 ? piece.rows.patches() / piece.rows.tokens() : 1;
    for (std::size_t s = 1; s < piece.rows.span_tokens.size(); ++s) {
      wave.cu_seqlens.push_back(
          static_cast<std::int32_t>(piece.patch_offset + r * piece.rows.span_tokens[s]));
      wave.sequence_piece.push_back(static_cast<int>(wave.pieces.size()));
    }
    wave.patch_rows += piece.rows.patches();
    wave.token_rows += piece.rows.tokens();
    wave.pieces.push_back(std::move(piece));
  }
  for (EncoderWave& wave : encoder_)
    if (wave.cu_seqlens.empty()) wave.cu_seqlens.push_back(0);
}

void StepSchedule::build_program() {
  const int w = waves();
  const bool disjoint = plan_->placement == EncoderPlacement::Disjoint && plan_->encoder.ranks > 0;
  auto add = [&](StepActionKind kind, int wave) { program_.push_back({kind, wave}); };
  if (!disjoint) {
    for (int i = 0; i < w; ++i) {
      if (runs_encoder()) add(StepActionKind::EncoderForward, i);
      add(StepActionKind::LlmWave, i);
      if (runs_encoder()) add(StepActionKind::EncoderBackward, i);
    }
    return;
  }
  if (runs_encoder()) {
    for (int i = 0; i < w; ++i) {
      add(StepActionKind::EncoderForward, i);
      if (i > 0) add(StepActionKind::EncoderBackward, i - 1);
    }
    if (w > 0) add(StepActionKind::EncoderBackward, w - 1);
  }
  if (runs_llm())
    for (int i = 0; i < w; ++i) add(StepActionKind::LlmWave, i);
}

}  // namespace dhp
