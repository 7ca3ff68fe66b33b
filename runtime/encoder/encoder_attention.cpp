#include "dhp/encoder_attention.hpp"

#include <algorithm>
#include <string>
#include <vector>

#include "dhp/error.hpp"
#include "attention/abort_on_unwind.hpp"
#include "attention/scratch.hpp"

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

struct Sizes {
  std::size_t elem = 0, acc = 0;
  std::int64_t q_row = 0, kv_row = 0;  // elements per row
};

Sizes sizes_of(DType dtype, const kernels::AttentionShape& shape) {
  Sizes s;
  s.elem = static_cast<std::size_t>(kernels::dtype_size(dtype));
  s.acc = dtype == DType::F64 ? 8 : 4;
  s.q_row = static_cast<std::int64_t>(shape.heads_q) * shape.head_dim;
  s.kv_row = static_cast<std::int64_t>(shape.heads_kv) * shape.head_dim;
  return s;
}

void* at_row(const void* base, std::int64_t row, std::int64_t row_elems, std::size_t elem) {
  return static_cast<std::byte*>(const_cast<void*>(base)) +
         static_cast<std::size_t>(row * row_elems) * elem;
}

void check_kernel(kernels::Status status, const char* what, const Communicator& world) {
  if (status == kernels::Status::Ok) return;
  DHP_THROW(InvalidArgument, "encoder attention: {} failed on {}: {}: {}", what, world.describe(),
            kernels::status_string(status), kernels::last_error());
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

kernels::PackedSeqs packed(const std::int32_t* cu_q, const std::int32_t* cu_k, int num_seqs,
                           std::int64_t total_q, std::int64_t total_k) {
  kernels::PackedSeqs seqs;
  seqs.cu_seqlens_q = cu_q;
  seqs.cu_seqlens_k = cu_k;
  seqs.num_seqs = num_seqs;
  seqs.total_q = total_q;
  seqs.total_k = total_k;
  return seqs;
}

// The two KV (or dK/dV) buffers the ring steps alternate between, each sized for the
// largest step.
struct PairBuffers {
  void* k[2] = {nullptr, nullptr};
  void* v[2] = {nullptr, nullptr};
};

PairBuffers pair_buffers(Scratch& scratch, const std::vector<StepBlocks>& blocks, const Sizes& sz) {
  std::int64_t most = 0;
  for (const StepBlocks& b : blocks) most = std::max(most, b.rows);
  PairBuffers p;
  const auto bytes = static_cast<std::size_t>(most * sz.kv_row) * sz.elem;
  for (int i = 0; i < 2; ++i) {
    p.k[i] = scratch.bytes(bytes);
    p.v[i] = scratch.bytes(bytes);
  }
  return p;
}

// The KV exchange of ring step `step`: each active ring sequence sends the block it held at
// the previous step (its own rows at step 1) to the next member and receives the block of
// this step from the previous one.
CommRequestPtr post_kv(Communicator& world, const std::vector<RingSequence>& rings, int step,
                       const std::vector<StepBlocks>& blocks, const void* k, const void* v,
                       const PairBuffers& buf, int into, const Sizes& sz, DType dtype) {
  std::vector<P2POp> ops;
  const StepBlocks& to = blocks[static_cast<std::size_t>(step)];
  for (std::size_t i = 0; i < rings.size(); ++i) {
    const RingSequence& r = rings[i];
    if (step >= r.degree()) continue;
    const void* send_k = nullptr;
    const void* send_v = nullptr;
    if (step == 1) {
      send_k = at_row(k, r.begin, sz.kv_row, sz.elem);
      send_v = at_row(v, r.begin, sz.kv_row, sz.elem);
    } else {
      const std::int64_t from = blocks[static_cast<std::size_t>(step - 1)].offset[i];
      send_k = at_row(buf.k[1 - into], from, sz.kv_row, sz.elem);
      send_v = at_row(buf.v[1 - into], from, sz.kv_row, sz.elem);
    }
    const std::int64_t sending = r.block_rows(step - 1) * sz.kv_row;
    const std::int64_t receiving = r.block_rows(step) * sz.kv_row;
    const DataType type = data_type(dtype);
    ops.push_back({P2POp::Kind::Send, r.next(), const_cast<void*>(send_k), sending, type,
                   ring_tag(r.item, kTagK)});
    ops.push_back({P2POp::Kind::Send, r.next(), const_cast<void*>(send_v), sending, type,
                   ring_tag(r.item, kTagV)});
    ops.push_back({P2POp::Kind::Recv, r.prev(), at_row(buf.k[into], to.offset[i], sz.kv_row, sz.elem),
                   receiving, type, ring_tag(r.item, kTagK)});
    ops.push_back({P2POp::Kind::Recv, r.prev(), at_row(buf.v[into], to.offset[i], sz.kv_row, sz.elem),
                   receiving, type, ring_tag(r.item, kTagV)});
  }
  return world.exchange(ops);
}

void convert(DType from, DType to, Device device, std::int64_t count, const void* src, void* dst,
             const Communicator& world) {
  kernels::ConvertArgs args;
  args.src_dtype = from;
  args.dst_dtype = to;
  args.device = device;
  args.count = count;
  args.src = src;
  args.dst = dst;
  args.stream = world.stream();
  check_kernel(kernels::convert_dtype(args), "convert_dtype", world);
}

bool is_accumulator_type(DType dtype) { return dtype == DType::F32 || dtype == DType::F64; }

int max_degree(const std::vector<RingSequence>& rings) {
  int most = 1;
  for (const RingSequence& r : rings) most = std::max(most, r.degree());
  return most;
}

std::vector<StepBlocks> all_step_blocks(const EncoderWave& wave,
                                        const std::vector<RingSequence>& rings, int steps) {
  std::vector<StepBlocks> blocks(static_cast<std::size_t>(steps));
  for (int s = 1; s < steps; ++s) blocks[static_cast<std::size_t>(s)] = step_blocks(wave, rings, s);
  return blocks;
}

}  // namespace

void encoder_attention_forward(const EncoderAttentionContext& ctx, const void* q, const void* k,
                               const void* v, void* out, void* lse) {
  constexpr const char* op = "encoder_attention_forward";
  check_call(ctx, op, {{"q", q}, {"k", k}, {"v", v}, {"out", out}, {"lse", lse}});
  const EncoderWave& wave = *ctx.wave;
  Communicator& world = *ctx.world;
  const Sizes sz = sizes_of(ctx.dtype, ctx.shape);
  const Device device = world.device();
  const auto rings = ring_sequences(wave);
  AbortOnUnwind guard(op, {rings.empty() ? nullptr : ctx.world});
  Scratch scratch(ctx.allocator);
  const int sequences = static_cast<int>(wave.cu_seqlens.size()) - 1;
  const std::int32_t* cu_local = scratch.index(wave.cu_seqlens);

  kernels::AttentionForwardArgs args;
  args.dtype = ctx.dtype;
  args.device = device;
  args.shape = ctx.shape;
  args.stream = world.stream();
  args.q = q;

  const int steps = max_degree(rings);
  const std::vector<StepBlocks> blocks = all_step_blocks(wave, rings, steps);
  PairBuffers buf;
  CommRequestPtr pending;
  if (steps > 1) {  // the first exchange overlaps the local attention
    buf = pair_buffers(scratch, blocks, sz);
    pending = post_kv(world, rings, 1, blocks, k, v, buf, 0, sz, ctx.dtype);
  }
  args.seqs = packed(cu_local, cu_local, sequences, wave.patch_rows, wave.patch_rows);
  args.k = k;
  args.v = v;
  args.out = out;
  args.lse = lse;
  check_kernel(kernels::attention_forward(args), "attention_forward (local spans)", world);
  if (steps == 1) return;

  const std::int64_t out_elems = wave.patch_rows * sz.q_row;
  void* out_acc = out;
  if (!is_accumulator_type(ctx.dtype)) {  // merge in fp32, round once at the end
    out_acc = scratch.bytes(static_cast<std::size_t>(out_elems) * sizeof(float));
    convert(ctx.dtype, DType::F32, device, out_elems, out, out_acc, world);
  }
  void* part_out = scratch.bytes(static_cast<std::size_t>(out_elems) * sz.elem);
  void* part_lse =
      scratch.bytes(static_cast<std::size_t>(wave.patch_rows * ctx.shape.heads_q) * sz.acc);
  for (int s = 1; s < steps; ++s) {
    const int cur = (s - 1) % 2;
    pending->wait();
    if (s + 1 < steps) pending = post_kv(world, rings, s + 1, blocks, k, v, buf, 1 - cur, sz, ctx.dtype);
    const StepBlocks& b = blocks[static_cast<std::size_t>(s)];
    args.seqs = packed(cu_local, scratch.index(b.cu_k), sequences, wave.patch_rows, b.rows);
    args.k = buf.k[cur];
    args.v = buf.v[cur];
    args.out = part_out;
    args.lse = part_lse;
    check_kernel(kernels::attention_forward(args), "attention_forward (ring block)", world);
    kernels::MergeArgs merge;
    merge.dtype = ctx.dtype;
    merge.device = device;
    merge.rows = wave.patch_rows;
    merge.heads = ctx.shape.heads_q;
    merge.head_dim = ctx.shape.head_dim;
    merge.out_acc = out_acc;
    merge.lse_acc = lse;
    merge.out_part = part_out;
    merge.lse_part = part_lse;
    merge.stream = world.stream();
    check_kernel(kernels::merge_attention_partial(merge), "merge_attention_partial", world);
  }
  if (out_acc != out) convert(DType::F32, ctx.dtype, device, out_elems, out_acc, out, world);
}

void encoder_attention_backward(const EncoderAttentionContext& ctx, const void* q, const void* k,
                                const void* v, const void* out, const void* lse, const void* dout,
                                void* dq, void* dk, void* dv) {
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
  const EncoderWave& wave = *ctx.wave;
  Communicator& world = *ctx.world;
  const Sizes sz = sizes_of(ctx.dtype, ctx.shape);
  const auto rings = ring_sequences(wave);
  AbortOnUnwind guard(op, {rings.empty() ? nullptr : ctx.world});
  Scratch scratch(ctx.allocator);
  const int sequences = static_cast<int>(wave.cu_seqlens.size()) - 1;
  const std::int32_t* cu_local = scratch.index(wave.cu_seqlens);

  kernels::AttentionBackwardArgs args;
  args.dtype = ctx.dtype;
  args.device = world.device();
  args.shape = ctx.shape;
  args.stream = world.stream();
  args.q = q;
  args.out = out;
  args.dout = dout;
  args.lse = lse;
  args.dq = dq;

  const int steps = max_degree(rings);
  const std::vector<StepBlocks> blocks = all_step_blocks(wave, rings, steps);
  PairBuffers kv;
  CommRequestPtr kv_pending;
  if (steps > 1) {
    kv = pair_buffers(scratch, blocks, sz);
    kv_pending = post_kv(world, rings, 1, blocks, k, v, kv, 0, sz, ctx.dtype);
  }
  args.seqs = packed(cu_local, cu_local, sequences, wave.patch_rows, wave.patch_rows);
  args.k = k;
  args.v = v;
  args.dk = dk;
  args.dv = dv;
  args.accumulate = false;
  check_kernel(kernels::attention_backward(args), "attention_backward (local spans)", world);
  if (steps == 1) return;

  // The dK/dV accumulators follow their block one hop behind it; a block's accumulator
  // comes home, complete, after its ring's last step (straight into its rows of dk/dv).
  const PairBuffers grads = pair_buffers(scratch, blocks, sz);
  const DataType type = data_type(ctx.dtype);
  std::vector<P2POp> ops;
  for (std::size_t i = 0; i < rings.size(); ++i) {
    const RingSequence& r = rings[i];
    const std::int64_t own = r.rows * sz.kv_row, incoming = r.block_rows(1) * sz.kv_row;
    const std::int64_t into = blocks[1].offset[i];
    ops.push_back({P2POp::Kind::Send, r.next(), at_row(dk, r.begin, sz.kv_row, sz.elem), own, type,
                   ring_tag(r.item, kTagDK)});
    ops.push_back({P2POp::Kind::Send, r.next(), at_row(dv, r.begin, sz.kv_row, sz.elem), own, type,
                   ring_tag(r.item, kTagDV)});
    ops.push_back({P2POp::Kind::Recv, r.prev(), at_row(grads.k[0], into, sz.kv_row, sz.elem),
                   incoming, type, ring_tag(r.item, kTagDK)});
    ops.push_back({P2POp::Kind::Recv, r.prev(), at_row(grads.v[0], into, sz.kv_row, sz.elem),
                   incoming, type, ring_tag(r.item, kTagDV)});
  }
  CommRequestPtr grad_pending = world.exchange(ops);
  args.accumulate = true;
  for (int s = 1; s < steps; ++s) {
    const int cur = (s - 1) % 2;
    kv_pending->wait();
    if (s + 1 < steps)
      kv_pending = post_kv(world, rings, s + 1, blocks, k, v, kv, 1 - cur, sz, ctx.dtype);
    grad_pending->wait();
    const StepBlocks& b = blocks[static_cast<std::size_t>(s)];
    args.seqs = packed(cu_local, scratch.index(b.cu_k), sequences, wave.patch_rows, b.rows);
    args.k = kv.k[cur];
    args.v = kv.v[cur];
    args.dk = grads.k[cur];
    args.dv = grads.v[cur];
    check_kernel(kernels::attention_backward(args), "attention_backward (ring block)", world);
    ops.clear();
    for (std::size_t i = 0; i < rings.size(); ++i) {
      const RingSequence& r = rings[i];
      if (s >= r.degree()) continue;
      const std::int64_t holding = r.block_rows(s) * sz.kv_row;
      ops.push_back({P2POp::Kind::Send, r.next(), at_row(grads.k[cur], b.offset[i], sz.kv_row, sz.elem),
                     holding, type, ring_tag(r.item, kTagDK)});
      ops.push_back({P2POp::Kind::Send, r.next(), at_row(grads.v[cur], b.offset[i], sz.kv_row, sz.elem),
                     holding, type, ring_tag(r.item, kTagDV)});
      const bool last = s + 1 == r.degree();
      void* into_k = last ? at_row(dk, r.begin, sz.kv_row, sz.elem)
                          : at_row(grads.k[1 - cur], blocks[static_cast<std::size_t>(s + 1)].offset[i],
                                   sz.kv_row, sz.elem);
      void* into_v = last ? at_row(dv, r.begin, sz.kv_row, sz.elem)
                          : at_row(grads.v[1 - cur], blocks[static_cast<std::size_t>(s + 1)].offset[i],
                                   sz.kv_row, sz.elem);
      const std::int64_t incoming = (last ? r.rows : r.block_rows(s + 1)) * sz.kv_row;
      ops.push_back({P2POp::Kind::Recv, r.prev(), into_k, incoming, type, ring_tag(r.item, kTagDK)});
      ops.push_back({P2POp::Kind::Recv, r.prev(), into_v, incoming, type, ring_tag(r.item, kTagDV)});
    }
    grad_pending = world.exchange(ops);
  }
  grad_pending->wait();
}

}  // namespace dhp
