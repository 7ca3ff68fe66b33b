#include "step_report.hpp"

#include <fmt/format.h>

#include "dhp/encoder_geometry.hpp"
#include "dhp/step_schedule.hpp"

namespace vlm {
namespace {

constexpr int kFields = 5;  // kind, wave, start, end, tokens
constexpr int kTagCount = 40, kTagEvents = 41;

double duration(const std::vector<dhp::StepEvent>& events, dhp::StepEvent::Kind kind, int wave) {
  double ms = 0;
  for (const dhp::StepEvent& e : events)
    if (e.kind == kind && e.wave == wave) ms += e.end_ms - e.start_ms;
  return ms;
}

}  // namespace

std::vector<std::vector<dhp::StepEvent>> gather_events(dhp::Communicator& world,
                                                       const std::vector<dhp::StepEvent>& events) {
  std::vector<double> mine;
  for (const dhp::StepEvent& e : events)
    mine.insert(mine.end(), {static_cast<double>(e.kind), static_cast<double>(e.wave), e.start_ms,
                             e.end_ms, static_cast<double>(e.tokens)});
  std::int64_t count = static_cast<std::int64_t>(mine.size());
  if (world.rank() != 0) {
    world.send(&count, 1, dhp::DataType::I64, 0, kTagCount);
    world.send(mine.data(), count, dhp::DataType::F64, 0, kTagEvents);
    return {};
  }
  std::vector<std::vector<dhp::StepEvent>> out(static_cast<std::size_t>(world.size()));
  out[0] = events;
  for (int r = 1; r < world.size(); ++r) {
    world.recv(&count, 1, dhp::DataType::I64, r, kTagCount);
    std::vector<double> data(static_cast<std::size_t>(count));
    world.recv(data.data(), count, dhp::DataType::F64, r, kTagEvents);
    for (std::size_t i = 0; i + kFields <= data.size(); i += kFields)
      out[static_cast<std::size_t>(r)].push_back(
          {static_cast<dhp::StepEvent::Kind>(static_cast<int>(data[i])), static_cast<int>(data[i + 1]),
           data[i + 2], data[i + 3], static_cast<std::int64_t>(data[i + 4])});
  }
  return out;
}

std::vector<dhp::Measurement> step_measurements(
    const dhp::Batch& batch, const dhp::Plan& plan, const dhp::EncoderSpec& encoder,
    const std::vector<std::vector<dhp::StepEvent>>& events) {
  std::vector<dhp::Measurement> out;
  const int world = static_cast<int>(events.size());
  for (int r = 0; r < world; ++r) {
    const dhp::StepSchedule schedule(batch, plan, &encoder, r, world);
    const auto& mine = events[static_cast<std::size_t>(r)];
    for (int w = 0; w < schedule.waves(); ++w) {
      const dhp::WaveLayout& layout = schedule.llm(w).layout;
      const double llm_ms = duration(mine, dhp::StepEvent::Kind::Llm, w);
      if (schedule.runs_llm() && schedule.llm_tp_index() == 0 && layout.rows > 0 && llm_ms > 0) {
        dhp::Measurement m{.kind = "llm_rank", .degree = std::max(1, layout.degree())};
        for (std::int64_t length : layout.zigzag_lengths)
          (m.degree > 1 ? m.split_tokens : m.whole_tokens).push_back(length);
        for (const dhp::LocalPiece& piece : layout.pieces)
          if (piece.sharding == dhp::Sharding::Whole) m.whole_tokens.push_back(piece.length);
        m.measured_ms = llm_ms;
        out.push_back(m);
      }
      const dhp::EncoderWave& work = schedule.encoder(w);
      const double encoder_ms = duration(mine, dhp::StepEvent::Kind::EncoderForward, w) +
                                duration(mine, dhp::StepEvent::Kind::EncoderBackward, w);
      if (schedule.runs_encoder() && schedule.encoder_tp_index() == 0 && !work.pieces.empty() &&
          encoder_ms > 0) {
        dhp::Measurement m{.kind = "encoder_rank"};
        for (const dhp::EncoderPiece& piece : work.pieces) {
          const dhp::VisualItem& item = batch.samples[static_cast<std::size_t>(piece.sample)]
                                            .visuals[static_cast<std::size_t>(piece.visual)];
          if (piece.ring.size() > 1)
            m.encoder_parts.push_back({item, piece.parts});
          else
            m.encoder_parts.push_back({dhp::encoder_part(encoder, item, piece.part, piece.parts), 1});
        }
        m.measured_ms = encoder_ms;
        out.push_back(m);
      }
    }
  }
  return out;
}

dhp::StepTimeline measured_timeline(const dhp::Batch& batch, const dhp::Plan& plan,
                                    const dhp::EncoderSpec& encoder,
                                    const std::vector<std::vector<dhp::StepEvent>>& events) {
  dhp::StepTimeline t;
  t.clock = "measured";
  const int world = static_cast<int>(events.size());
  for (int r = 0; r < world; ++r) {
    const dhp::StepSchedule schedule(batch, plan, &encoder, r, world);
    for (const dhp::StepEvent& e : events[static_cast<std::size_t>(r)]) {
      dhp::Activity a;
      a.device = r;
      a.start_ms = e.start_ms;
      a.end_ms = e.end_ms;
      a.wave = e.wave;
      t.end_ms = std::max(t.end_ms, e.end_ms);
      switch (e.kind) {
        case dhp::StepEvent::Kind::Llm: {
          a.kind = dhp::ActivityKind::LlmCompute;
          const dhp::WaveLayout& layout = schedule.llm(e.wave).layout;
          a.group = layout.group;
          a.label = fmt::format("w{}", e.wave);
          for (const dhp::LocalPiece& p : layout.pieces)
            a.samples.push_back({batch.samples[static_cast<std::size_t>(p.sample)].id, p.rows,
                                 p.sharding == dhp::Sharding::Whole
                                     ? "whole"
                                     : fmt::format("zigzag share of {}", layout.degree())});
          break;
        }
        case dhp::StepEvent::Kind::EncoderForward:
        case dhp::StepEvent::Kind::EncoderBackward:
          a.kind = dhp::ActivityKind::Encoder;
          a.label = fmt::format("w{} {}", e.wave,
                                e.kind == dhp::StepEvent::Kind::EncoderForward ? "fwd" : "bwd");
          for (const dhp::EncoderPiece& p : schedule.encoder(e.wave).pieces)
            a.samples.push_back({batch.samples[static_cast<std::size_t>(p.sample)].id,
                                 p.rows.patches(),
                                 fmt::format("visual {}, part {} of {}", p.visual, p.part + 1, p.parts)});
          break;
        case dhp::StepEvent::Kind::Boundary:
          a.kind = dhp::ActivityKind::Boundary;
          a.label = "boundary";
          break;
        case dhp::StepEvent::Kind::Dispatch:
          a.kind = dhp::ActivityKind::Boundary;
          a.label = "inputs";
          break;
        case dhp::StepEvent::Kind::GradSync:
          a.kind = dhp::ActivityKind::GradSync;
          a.label = "sync";
          break;
      }
      t.activities.push_back(std::move(a));
    }
  }
  return t;
}

}  // namespace vlm
