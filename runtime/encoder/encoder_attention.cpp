#include "dhp/encoder_attention.hpp"

#include <algorithm>
#include <string>
#include <vector>

#include "attention/abort_on_unwind.hpp"
#include "attention/ring_engine.hpp"
#include "attention/rings.hpp"
#include "dhp/error.hpp"

namespace dhp {
namespace {

using kernels::DType;

// Ring message tags, one set per item so that two items cut over the same pair of ranks
// never mix (items past kTagItems reuse tags; both sides then post in the same item order,
// and MPI keeps messages of one tag in order).
constexpr int kTagBase = 1000, kTagItems = 4096;
enum TagKind { kTagK = 0, kTagV = 1, kTagDK = 2, kTagDV = 3 };
int ring_tag(int item, TagKind kind) { return kTagBase + 4 * (item % kTagItems) + kind; }

// One attention sequence of this process that is a shard of a cut item.
struct RingSequence {
  int sequence = 0;  // index among the wave's attention sequences
  int item = 0;
  std::int64_t begin = 0, rows = 0;  // its local patch rows
  const std::vector<int>* peers = nullptr;
  const std::vector<std::int64_t>* part_rows = nullptr;
  int index = 0;  // this process's place in the ring (its part)

  int degree() const { return static_cast<int>(peers->size()); }
  int next() const { return (*peers)[static_cast<std::size_t>((index + 1) % degree())]; }
  int prev() const { return (*peers)[static_cast<std::size_t>((index + degree() - 1) % degree())]; }
  // Rows of the KV block held at ring step s: the one of member index - s.
  std::int64_t block_rows(int s) const {
    const int d = degree();
    return (*part_rows)[static_cast<std::size_t>(((index - s) % d + d) % d)];
  }
};

std::vector<RingSequence> ring_sequences(const EncoderWave& wave) {
  std::vector<RingSequence> out;
  for (std::size_t j = 0; j < wave.sequence_piece.size(); ++j) {
    const EncoderPiece& piece = wave.pieces[static_cast<std::size_t>(wave.sequence_piece[j])];
    if (piece.ring.size() < 2) continue;
    RingSequence r;
    r.sequence = static_cast<int>(j);
    r.item = piece.item;
    r.begin = wave.cu_seqlens[j];
    r.rows = wave.cu_seqlens[j + 1] - wave.cu_seqlens[j];
    r.peers = &piece.ring;
    r.part_rows = &piece.ring_rows;
    r.index = piece.part;
    out.push_back(r);
  }
  return out;
}

// The KV blocks held at one ring step, concatenated in ring-sequence order, laid against
// every local attention sequence (0 keys for sequences with no block at that step).
struct StepBlocks {
  std::vector<std::int32_t> cu_k;    // [sequences + 1]
  std::vector<std::int64_t> offset;  // [ring sequence] first row in the block buffer; -1: idle
  std::int64_t rows = 0;
};

StepBlocks step_blocks(const EncoderWave& wave, const std::vector<RingSequence>& rings, int step) {
  StepBlocks b;
  const std::size_t sequences = wave.cu_seqlens.size() - 1;
  std::vector<std::int64_t> keys(sequences, 0);
  b.offset.assign(rings.size(), -1);
  for (std::size_t i = 0; i < rings.size(); ++i) {
    if (step >= rings[i].degree()) continue;
    b.offset[i] = b.rows;
    keys[static_cast<std::size_t>(rings[i].sequence)] = rings[i].block_rows(step);
    b.rows += rings[i].block_rows(step);
  }
  b.cu_k.push_back(0);
  for (std::int64_t k : keys) b.cu_k.push_back(b.cu_k.back() + static_cast<std::int32_t>(k));
  return b;
}

struct NamedBuffer {
  const char* name;
  const void* pointer;
};

void check_call(const EncoderAttentionContext& ctx, const char* op,
                std::initializer_list<NamedBuffer> buffers) {
  DHP_CHECK(ctx.wave != nullptr && ctx.world != nullptr, InvalidArgument,
            "{}: the context needs the wave's encoder work and the world communicator", op);
  DHP_CHECK(!ctx.shape.causal, InvalidArgument,
            "{}: the encoder's attention is bidirectional: shape.causal must be false", op);
  DHP_CHECK(ctx.world->device() == Device::CPU || ctx.allocator != nullptr, InvalidArgument,
            "{} on {}: device buffers need ctx.allocator for the ring's temporaries (nothing was "
            "sent)",
            op, ctx.world->describe());
  const kernels::Status support =
      kernels::check_attention_support(ctx.dtype, ctx.world->device(), ctx.shape);
  DHP_CHECK(support == kernels::Status::Ok, InvalidArgument,
            "{} on {}: {} (heads_q={}, heads_kv={}, head_dim={}, dtype {}; nothing was sent)", op,
            ctx.world->describe(), kernels::last_error(), ctx.shape.heads_q, ctx.shape.heads_kv,
            ctx.shape.head_dim, kernels::to_string(ctx.dtype));
  DHP_CHECK(ctx.shape.softmax_scale >= 0, InvalidArgument,
            "{}: softmax_scale={} < 0 (0 means 1/sqrt(head_dim))", op, ctx.shape.softmax_scale);
  const EncoderWave& wave = *ctx.wave;
  DHP_CHECK(!wave.cu_seqlens.empty() && wave.cu_seqlens.back() == wave.patch_rows &&
                wave.sequence_piece.size() + 1 == wave.cu_seqlens.size(),
            InvalidArgument,
            "{}: {}: inconsistent encoder work ({} attention sequences over {} patch rows): "
            "build it with StepSchedule",
            op, ctx.world->describe(), wave.sequence_piece.size(), wave.patch_rows);
  for (const EncoderPiece& piece : wave.pieces)
    if (piece.ring.size() > 1)
      DHP_CHECK(piece.part >= 0 && piece.part < static_cast<int>(piece.ring.size()) &&
                    piece.ring[static_cast<std::size_t>(piece.part)] == ctx.world->rank() &&
                    piece.ring_rows.size() == piece.ring.size(),
                InvalidArgument,
                "{}: {} is rank {} but sample {} visual {} part {} belongs to world rank {}", op,
                ctx.world->describe(), ctx.world->rank(), piece.sample, piece.visual, piece.part,
                piece.ring.empty() ? -1 : piece.ring[static_cast<std::size_t>(piece.part)]);
  if (wave.patch_rows == 0) return;
  for (const NamedBuffer& b : buffers)
    DHP_CHECK(b.pointer != nullptr, InvalidArgument,
              "{}: {}: {} is null but the process holds {} patch rows (nothing was sent)", op,
              ctx.world->describe(), b.name, wave.patch_rows);
}

int max_degree(const std::vector<RingSequence>& rings) {
  int most = 1;
  for (const RingSequence& r : rings) most = std::max(most, r.degree());
  return most;
}

// The wave as the ring engine runs it: the local spans, one link per ring sequence (its
// own rows travel), and the blocks held at every step.
RingWork ring_work(const EncoderAttentionContext& ctx) {
  const EncoderWave& wave = *ctx.wave;
  const auto rings = ring_sequences(wave);
  RingWork w;
  w.dtype = ctx.dtype;
  w.shape = ctx.shape;
  w.cu = wave.cu_seqlens;  // no positions: non-causal
  w.rows = wave.patch_rows;
  w.allocator = ctx.allocator;
  w.backends = ctx.backends;
  w.where = ctx.world->describe();
  for (const RingSequence& r : rings) {
    RingLink link;
    link.next = r.next();
    link.prev = r.prev();
    link.degree = r.degree();
    link.own_begin = r.begin;
    link.own_rows = r.rows;
    link.tag_k = ring_tag(r.item, kTagK);
    link.tag_v = ring_tag(r.item, kTagV);
    link.tag_dk = ring_tag(r.item, kTagDK);
    link.tag_dv = ring_tag(r.item, kTagDV);
    w.links.push_back(link);
  }
  const int steps = max_degree(rings);
  if (steps > 1) w.steps.resize(static_cast<std::size_t>(steps));
  for (int s = 1; s < steps; ++s) {
    const StepBlocks b = step_blocks(wave, rings, s);
    RingStepBlock& sb = w.steps[static_cast<std::size_t>(s)];
    sb.cu_k = b.cu_k;
    sb.rows = b.rows;
    sb.offset = b.offset;
    for (const RingSequence& r : rings)
      sb.link_rows.push_back(s < r.degree() ? r.block_rows(s) : 0);
  }
  return w;
}

}  // namespace

void encoder_attention_forward(const EncoderAttentionContext& ctx, const void* q, const void* k,
                               const void* v, void* out, void* lse) {
  check_call(ctx, "encoder_attention_forward", {});
  const auto streams = make_ring_streams(*ctx.world, ctx.stream);
  encoder_attention_forward(ctx, *streams, q, k, v, out, lse);
}

void encoder_attention_backward(const EncoderAttentionContext& ctx, const void* q, const void* k,
                                const void* v, const void* out, const void* lse, const void* dout,
                                void* dq, void* dk, void* dv) {
  check_call(ctx, "encoder_attention_backward", {});
  const auto streams = make_ring_streams(*ctx.world, ctx.stream);
  encoder_attention_backward(ctx, *streams, q, k, v, out, lse, dout, dq, dk, dv);
}

void encoder_attention_forward(const EncoderAttentionContext& ctx, RingStreams& streams,
                               const void* q, const void* k, const void* v, void* out, void* lse) {
  constexpr const char* op = "encoder_attention_forward";
  check_call(ctx, op, {{"q", q}, {"k", k}, {"v", v}, {"out", out}, {"lse", lse}});
  const RingWork work = ring_work(ctx);
  AbortOnUnwind guard(op, {work.links.empty() ? nullptr : ctx.world});
  ring_attention_forward(work, streams, q, k, v, out, lse);
}

void encoder_attention_backward(const EncoderAttentionContext& ctx, RingStreams& streams,
                                const void* q, const void* k, const void* v, const void* out,
                                const void* lse, const void* dout, void* dq, void* dk, void* dv) {
  constexpr const char* op = "encoder_attention_backward";
  check_call(ctx, op,
             {{"q", q},
              {"k", k},
              {"v", v},
              {"out", out},
              {"lse", lse},
              {"dout", dout},
              {"dq", dq},
              {"dk", dk},
              {"dv", dv}});
  const RingWork work = ring_work(ctx);
  AbortOnUnwind guard(op, {work.links.empty() ? nullptr : ctx.world});
  ring_attention_backward(work, streams, q, k, v, out, lse, dout, dq, dk, dv);
}

}  // namespace dhp
