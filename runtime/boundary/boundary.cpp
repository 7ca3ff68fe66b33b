#include "dhp/boundary.hpp"

#include <algorithm>
#include <cstring>
#include <map>
#include <tuple>

#include "dhp/error.hpp"
#include "dhp/log.hpp"

namespace dhp {
namespace {

// Tags of the boundary's messages: one per wave and direction.
constexpr int kTagBase = 20000, kTagWaves = 1000;
int boundary_tag(int wave, bool backward) {
  return kTagBase + 2 * (wave % kTagWaves) + (backward ? 1 : 0);
}

// Where one sample runs in its wave: its group and sharding.
struct Placement {
  const GroupPlan* group = nullptr;
  const SequencePlan* sequence = nullptr;
  std::int64_t length = 0;
};

std::int64_t chunk_begin(std::int64_t c, std::int64_t length, int degree) {
  return c * length / (2 * static_cast<std::int64_t>(degree));
}

// Calls fn(plan rank, rows) for the ranks holding positions [begin, end) of the sequence.
template <typename Fn>
void for_each_holder(const Placement& pl, std::int64_t begin, std::int64_t end, Fn&& fn) {
  const GroupPlan& g = *pl.group;
  if (pl.sequence->sharding == Sharding::Whole) {
    if (end > begin) fn(g.ranks[static_cast<std::size_t>(pl.sequence->member)], end - begin);
    return;
  }
  const int d = g.degree();
  for (std::int64_t c = 0; c < 2 * d; ++c) {
    const std::int64_t lo = std::max(begin, chunk_begin(c, pl.length, d));
    const std::int64_t hi = std::min(end, chunk_begin(c + 1, pl.length, d));
    if (hi <= lo) continue;
    const std::int64_t member = c < d ? c : 2 * d - 1 - c;
    fn(g.ranks[static_cast<std::size_t>(member)], hi - lo);
  }
}

int holder_of(const Placement& pl, std::int64_t position) {
  int rank = -1;
  for_each_holder(pl, position, position + 1, [&](int r, std::int64_t) { rank = r; });
  return rank;
}

// Devices [first, first + n) of two module ranks: how many they share.
std::int64_t shared_devices(int a_first, int a_count, int b_first, int b_count) {
  return std::max(0, std::min(a_first + a_count, b_first + b_count) - std::max(a_first, b_first));
}

bool holds(const ModuleLayout& layout, int rank, int device) {
  const int first = layout.device_of(rank);
  return device >= first && device < first + layout.tp;
}

// The part of an item that produces token `token`.
int part_of(const std::vector<ItemPartRows>& parts, std::int64_t token) {
  const auto it = std::upper_bound(parts.begin(), parts.end(), token,
                                   [](std::int64_t t, const ItemPartRows& p) { return t < p.token_begin; });
  return static_cast<int>(it - parts.begin()) - 1;
}

// Rows of one peer, to be sorted into the canonical (item, token) order.
struct KeyedRow {
  int item = 0;
  std::int64_t token = 0;
  std::int64_t row = 0;
  bool operator<(const KeyedRow& o) const { return std::tie(item, token) < std::tie(o.item, o.token); }
};

void finish(std::map<int, std::vector<KeyedRow>>& by_peer, std::vector<int>& peers,
            std::vector<std::vector<std::int64_t>>& rows) {
  for (auto& [peer, list] : by_peer) {
    std::sort(list.begin(), list.end());
    peers.push_back(peer);
    rows.emplace_back();
    for (const KeyedRow& k : list) rows.back().push_back(k.row);
  }
}

// A request that owns the packed send buffers it reads.
class OwningRequest final : public CommRequest {
 public:
  OwningRequest(CommRequestPtr inner, std::vector<std::vector<std::byte>> buffers)
      : inner_(std::move(inner)), buffers_(std::move(buffers)) {}
  bool test() override { return inner_ == nullptr || inner_->test(); }
  void wait(std::chrono::milliseconds timeout) override {
    if (inner_ != nullptr) inner_->wait(timeout);
  }
  void wait() override {
    if (inner_ != nullptr) inner_->wait();
  }

 private:
  CommRequestPtr inner_;
  std::vector<std::vector<std::byte>> buffers_;
};

}  // namespace

Boundary::Boundary(const StepSchedule& schedule, std::int64_t row_bytes)
    : schedule_(schedule), row_bytes_(row_bytes) {
  DHP_CHECK(row_bytes > 0, InvalidArgument, "boundary: row_bytes={} must be > 0", row_bytes);
  const Plan& plan = schedule.plan();
  const Batch& batch = schedule.batch();
  routes_.resize(static_cast<std::size_t>(schedule.waves()));
  for (int w = 0; w < schedule.waves(); ++w) build(w);

  // The step's minimum, from the plan alone: every (token, destination process) that needs
  // a row it does not hold, once per direction.
  const ModuleLayout& llm = plan.llm;
  const ModuleLayout& enc = plan.encoder;
  for (std::size_t w = 0; w < plan.waves.size(); ++w) {
    const WavePlan& wave = plan.waves[w];
    for (const SequencePlan& seq : wave.sequences) {
      const Placement pl{&wave.groups[static_cast<std::size_t>(seq.group)], &seq,
                         schedule.sample_lengths()[static_cast<std::size_t>(seq.sample)]};
      const Sample& sample = batch.samples[static_cast<std::size_t>(seq.sample)];
      for (std::size_t v = 0; v < sample.visuals.size(); ++v) {
        const int item = schedule.first_visual()[static_cast<std::size_t>(seq.sample)] +
                         static_cast<int>(v);
        const std::int64_t start = schedule.item_position(item);
        const auto& parts = schedule.item_parts(item);
        for (std::size_t k = 0; k < parts.size(); ++k) {
          const int e = schedule.item_part_ranks(item)[k];
          for_each_holder(pl, start + parts[k].token_begin, start + parts[k].token_end,
                          [&](int r, std::int64_t rows) {
                            const std::int64_t shared = shared_devices(
                                llm.device_of(r), llm.tp, enc.device_of(e), enc.tp);
                            bytes_.min_forward += rows * (llm.tp - shared) * row_bytes;
                            bytes_.min_backward += rows * (enc.tp - shared) * row_bytes;
                          });
        }
      }
    }
  }
}

void Boundary::build(int w) {
  const Plan& plan = schedule_.plan();
  const WavePlan& wave = plan.waves[static_cast<std::size_t>(w)];
  const ModuleLayout& llm = plan.llm;
  const ModuleLayout& enc = plan.encoder;
  const int me = schedule_.world_rank();
  WaveRoutes& routes = routes_[static_cast<std::size_t>(w)];
  std::vector<int> sequence_of(schedule_.batch().samples.size(), -1);
  for (std::size_t i = 0; i < wave.sequences.size(); ++i)
    sequence_of[static_cast<std::size_t>(wave.sequences[i].sample)] = static_cast<int>(i);
  const auto placement = [&](int sample) {
    const SequencePlan& seq = wave.sequences[static_cast<std::size_t>(sequence_of[sample])];
    return Placement{&wave.groups[static_cast<std::size_t>(seq.group)], &seq,
                     schedule_.sample_lengths()[static_cast<std::size_t>(sample)]};
  };
  const EncoderWave& produced = schedule_.encoder(w);
  const LlmWave& consumed = schedule_.llm(w);
  routes.source_rows_forward = produced.token_rows;
  routes.source_rows_backward = static_cast<std::int64_t>(consumed.visuals.size());

  // This process's visual rows by (item, token), and its pieces by (item, part).
  std::map<std::pair<int, std::int64_t>, std::int64_t> visual_index;
  for (std::size_t i = 0; i < consumed.visuals.size(); ++i)
    visual_index[{consumed.visuals[i].item, consumed.visuals[i].token}] = static_cast<std::int64_t>(i);
  std::map<std::pair<int, int>, const EncoderPiece*> piece_of;
  for (const EncoderPiece& piece : produced.pieces) piece_of[{piece.item, piece.part}] = &piece;

  std::map<int, std::vector<KeyedRow>> fwd_send, fwd_recv, bwd_send, bwd_recv;
  // Producer side: this process's embeddings, forward out and gradients in.
  const int my_etp = schedule_.encoder_tp_index();
  for (const EncoderPiece& piece : produced.pieces) {
    const Placement pl = placement(piece.sample);
    const std::int64_t start = schedule_.item_position(piece.item);
    const int e = schedule_.item_part_ranks(piece.item)[static_cast<std::size_t>(piece.part)];
    for (std::int64_t j = piece.rows.token_begin; j < piece.rows.token_end; ++j) {
      const std::int64_t row = piece.token_offset + (j - piece.rows.token_begin);
      const int r = holder_of(pl, start + j);
      for (int t = 0; t < llm.tp; ++t) {
        const int c = llm.device_of(r, t);
        if (!holds(enc, e, c) && t % enc.tp == my_etp) fwd_send[c].push_back({piece.item, j, row});
      }
      if (holds(llm, r, me)) {
        routes.backward.local.emplace_back(visual_index.at({piece.item, j}), row);
      } else {
        bwd_recv[llm.device_of(r, my_etp % llm.tp)].push_back({piece.item, j, row});
      }
    }
  }
  // Consumer side: this process's visual rows, forward in and gradients out.
  const int my_tp = schedule_.llm_tp_index();
  for (std::size_t i = 0; i < consumed.visuals.size(); ++i) {
    const VisualRow& vr = consumed.visuals[i];
    const auto& parts = schedule_.item_parts(vr.item);
    const int k = part_of(parts, vr.token);
    const int e = schedule_.item_part_ranks(vr.item)[static_cast<std::size_t>(k)];
    const auto row = static_cast<std::int64_t>(i);
    if (holds(enc, e, me)) {
      const EncoderPiece* piece = piece_of.at({vr.item, k});
      routes.forward.local.emplace_back(
          piece->token_offset + (vr.token - piece->rows.token_begin), row);
    } else {
      fwd_recv[enc.device_of(e, my_tp % enc.tp)].push_back({vr.item, vr.token, row});
    }
    const int r = schedule_.llm_rank();
    for (int u = 0; u < enc.tp; ++u) {
      const int p = enc.device_of(e, u);
      if (!holds(llm, r, p) && u % llm.tp == my_tp) bwd_send[p].push_back({vr.item, vr.token, row});
    }
  }
  finish(fwd_send, routes.forward.send_peers, routes.forward.send_rows);
  finish(fwd_recv, routes.forward.recv_peers, routes.forward.recv_rows);
  finish(bwd_send, routes.backward.send_peers, routes.backward.send_rows);
  finish(bwd_recv, routes.backward.recv_peers, routes.backward.recv_rows);
}

void Boundary::check_world(const Communicator& world, int wave, const char* what) const {
  DHP_CHECK(world.size() == schedule_.world_size() && world.rank() == schedule_.world_rank(),
            InvalidArgument, "boundary {}: {} but the step was scheduled for world rank {}/{}",
            what, world.describe(), schedule_.world_rank(), schedule_.world_size());
  DHP_CHECK(wave >= 0 && wave < schedule_.waves(), InvalidArgument,
            "boundary {}: wave {} outside the plan's {} waves", what, wave, schedule_.waves());
  DHP_CHECK(world.device() == Device::CPU, InvalidArgument,
            "boundary {}: {} moves host rows; copy device embeddings to the host first", what,
            world.describe());
}

CommRequestPtr Boundary::post_sends(Communicator& world, const Route& route, const void* source,
                                    int tag, const char* what, std::int64_t& sent) {
  std::vector<std::vector<std::byte>> buffers;
  std::vector<P2POp> ops;
  const auto bytes = static_cast<std::size_t>(row_bytes_);
  for (std::size_t i = 0; i < route.send_peers.size(); ++i) {
    const auto& rows = route.send_rows[i];
    buffers.emplace_back(rows.size() * bytes);
    for (std::size_t r = 0; r < rows.size(); ++r)
      std::memcpy(buffers.back().data() + r * bytes,
                  static_cast<const std::byte*>(source) + rows[r] * row_bytes_, bytes);
    ops.push_back({P2POp::Kind::Send, route.send_peers[i], buffers.back().data(),
                   static_cast<std::int64_t>(buffers.back().size()), DataType::U8, tag});
    sent += static_cast<std::int64_t>(buffers.back().size());
  }
  DHP_LOG_TRACE("boundary {}: {} sends {} messages", what, world.describe(), ops.size());
  return std::make_unique<OwningRequest>(ops.empty() ? nullptr : world.exchange(ops),
                                         std::move(buffers));
}

void Boundary::receive(Communicator& world, const Route& route, const void* local_source,
                       void* dest, int tag, const char* what, std::int64_t dest_rows) {
  DHP_CHECK(dest != nullptr || dest_rows == 0, InvalidArgument,
            "boundary {}: {}: the destination is null for {} rows", what, world.describe(),
            dest_rows);
  DHP_CHECK(local_source != nullptr || route.local.empty(), InvalidArgument,
            "boundary {}: {}: {} rows come from this process itself but their source is null",
            what, world.describe(), route.local.size());
  const auto bytes = static_cast<std::size_t>(row_bytes_);
  std::vector<std::vector<std::byte>> buffers;
  std::vector<P2POp> ops;
  for (std::size_t i = 0; i < route.recv_peers.size(); ++i) {
    buffers.emplace_back(route.recv_rows[i].size() * bytes);
    ops.push_back({P2POp::Kind::Recv, route.recv_peers[i], buffers.back().data(),
                   static_cast<std::int64_t>(buffers.back().size()), DataType::U8, tag});
  }
  CommRequestPtr pending = ops.empty() ? nullptr : world.exchange(ops);
  auto* out = static_cast<std::byte*>(dest);
  for (const auto& [from, to] : route.local)
    std::memcpy(out + to * row_bytes_, static_cast<const std::byte*>(local_source) + from * row_bytes_,
                bytes);
  if (pending != nullptr) pending->wait();
  for (std::size_t i = 0; i < route.recv_peers.size(); ++i)
    for (std::size_t r = 0; r < route.recv_rows[i].size(); ++r)
      std::memcpy(out + route.recv_rows[i][r] * row_bytes_, buffers[i].data() + r * bytes, bytes);
}

CommRequestPtr Boundary::send_embeddings(Communicator& world, int wave, const void* embeddings) {
  check_world(world, wave, "send_embeddings");
  const WaveRoutes& r = routes_[static_cast<std::size_t>(wave)];
  DHP_CHECK(embeddings != nullptr || r.source_rows_forward == 0, InvalidArgument,
            "boundary send_embeddings: {}: embeddings are null for {} rows of wave {}",
            world.describe(), r.source_rows_forward, wave);
  return post_sends(world, r.forward, embeddings, boundary_tag(wave, false), "forward",
                    bytes_.sent_forward);
}

void Boundary::receive_embeddings(Communicator& world, int wave, const void* embeddings,
                                  void* visual) {
  check_world(world, wave, "receive_embeddings");
  const WaveRoutes& r = routes_[static_cast<std::size_t>(wave)];
  receive(world, r.forward, embeddings, visual, boundary_tag(wave, false), "receive_embeddings",
          r.source_rows_backward);
}

CommRequestPtr Boundary::send_gradients(Communicator& world, int wave, const void* d_visual) {
  check_world(world, wave, "send_gradients");
  const WaveRoutes& r = routes_[static_cast<std::size_t>(wave)];
  DHP_CHECK(d_visual != nullptr || r.source_rows_backward == 0, InvalidArgument,
            "boundary send_gradients: {}: gradients are null for {} rows of wave {}",
            world.describe(), r.source_rows_backward, wave);
  return post_sends(world, r.backward, d_visual, boundary_tag(wave, true), "backward",
                    bytes_.sent_backward);
}

void Boundary::receive_gradients(Communicator& world, int wave, const void* d_visual,
                                 void* d_embeddings) {
  check_world(world, wave, "receive_gradients");
  const WaveRoutes& r = routes_[static_cast<std::size_t>(wave)];
  receive(world, r.backward, d_visual, d_embeddings, boundary_tag(wave, true),
          "receive_gradients", r.source_rows_forward);
}

}  // namespace dhp
