#include "dhp/cp_attention.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cstring>
#include <exception>
#include <string>
#include <vector>

#include "attention/abort_on_unwind.hpp"
#include "attention/ring_engine.hpp"
#include "attention/ring_streams.hpp"
#include "attention/rings.hpp"
#include "dhp/error.hpp"
#include "dhp/group_pool.hpp"
#include "dhp/log.hpp"

namespace dhp {
namespace {

using kernels::DType;
using kernels::Status;

// Ring message tags (MPI checks them; messages between two ranks stay in issue order).
constexpr int kTagK = 11, kTagV = 12, kTagDK = 13, kTagDV = 14;

void check_kernel(Status status, const char* kernel, const WaveLayout& layout) {
  if (status == Status::Ok) return;
  DHP_THROW(InvalidArgument, "{} failed on world rank {} (group {}, member {}/{}): {}: {}", kernel,
            layout.group_world_ranks.empty()
                ? -1
                : layout.group_world_ranks[static_cast<std::size_t>(layout.member)],
            layout.group, layout.member, layout.degree(), kernels::status_string(status),
            kernels::last_error());
}

// A travelling KV block laid against the local sequences: per-sequence key lengths (0 for
// sequences the block has no rows of) and the block's key positions.
struct RingBlock {
  std::vector<std::int32_t> cu_seqlens_k;
  std::vector<std::int32_t> k_positions;
  std::int64_t rows = 0;
};

// Appends the rows of group member `member`'s two chunks of a Zigzag sequence.
void add_chunks(RingBlock& block, std::int64_t length, int degree, int member) {
  const ZigzagChunks c = zigzag_chunks(length, degree, member);
  for (std::int64_t r = c.begin0; r < c.end0; ++r)
    block.k_positions.push_back(static_cast<std::int32_t>(r));
  for (std::int64_t r = c.begin1; r < c.end1; ++r)
    block.k_positions.push_back(static_cast<std::int32_t>(r));
  block.rows += c.rows();
}

// The Zigzag block of ring member `member` against this rank's local pieces (its Whole
// pieces get no keys).
RingBlock ring_block(const WaveLayout& layout, int member) {
  RingBlock block;
  block.cu_seqlens_k.push_back(0);
  for (std::size_t p = 0; p < layout.pieces.size(); ++p) {
    if (p < layout.zigzag_lengths.size())
      add_chunks(block, layout.zigzag_lengths[p], layout.degree(), member);
    block.cu_seqlens_k.push_back(static_cast<std::int32_t>(block.rows));
  }
  return block;
}

// UlyssesRing: the block of node `node` (group members [node*u, node*u+u)) against the
// Ulysses-packed sequences: per Zigzag sequence, member by member, the same row order as
// the packed layout of that node (see UlyssesLayout).
RingBlock node_block(const WaveLayout& layout, int u, int node) {
  RingBlock block;
  block.cu_seqlens_k.push_back(0);
  for (std::int64_t length : layout.zigzag_lengths) {
    for (int m = 0; m < u; ++m) add_chunks(block, length, layout.degree(), node * u + m);
    block.cu_seqlens_k.push_back(static_cast<std::int32_t>(block.rows));
  }
  return block;
}

// This rank's world rank in the layout's group (-1 when idle in the wave).
int layout_world_rank(const WaveLayout& L) {
  if (L.group < 0 || L.member < 0 || L.member >= L.degree()) return -1;
  return L.group_world_ranks[static_cast<std::size_t>(L.member)];
}

// The context alone: what every rank can check, idle or not, before anything is sent.
void check_context(const CpAttentionContext& ctx, const char* op) {
  DHP_CHECK(ctx.layout != nullptr && ctx.world != nullptr, InvalidArgument,
            "{}: the context needs a layout and a world communicator", op);
  DHP_CHECK(ctx.ranks_per_node >= 0, InvalidArgument, "{}: ranks_per_node={} < 0", op,
            ctx.ranks_per_node);
  const kernels::Status support =
      kernels::check_attention_support(ctx.dtype, ctx.world->device(), ctx.shape);
  DHP_CHECK(support == kernels::Status::Ok, InvalidArgument,
            "{} on {}: {} (heads_q={}, heads_kv={}, head_dim={}, dtype {}; nothing was sent)", op,
            ctx.world->describe(), kernels::last_error(), ctx.shape.heads_q, ctx.shape.heads_kv,
            ctx.shape.head_dim, kernels::to_string(ctx.dtype));
  DHP_CHECK(ctx.shape.softmax_scale >= 0, InvalidArgument,
            "{}: softmax_scale={} < 0 (0 means 1/sqrt(head_dim))", op, ctx.shape.softmax_scale);
  DHP_CHECK(ctx.world->device() == Device::CPU || ctx.allocator != nullptr, InvalidArgument,
            "{} on {}: device buffers need ctx.allocator for the ring's temporaries (nothing was "
            "sent)",
            op, ctx.world->describe());
  const WaveLayout& L = *ctx.layout;
  DHP_CHECK(L.group < 0 || (L.member >= 0 && L.member < L.degree()), InvalidArgument,
            "{}: the layout's member {} is outside its group of {} ranks", op, L.member,
            L.degree());
  // The ring addresses peers by world rank: a communicator whose ranks are not the
  // layout's (a sub-communicator, another world) would exchange with the wrong processes.
  DHP_CHECK(L.group < 0 || ctx.world->rank() == layout_world_rank(L), InvalidArgument,
            "{}: {} is rank {} but the layout is world rank {}'s (member {} of group {})", op,
            ctx.world->describe(), ctx.world->rank(), layout_world_rank(L), L.member, L.group);
}

struct NamedBuffer {
  const char* name;
  const void* pointer;
};

// The layout's bookkeeping and the buffers of a rank that computes in the wave.
void check_layout_and_buffers(const CpAttentionContext& ctx, const char* op,
                              std::initializer_list<NamedBuffer> buffers) {
  const WaveLayout& L = *ctx.layout;
  const int me = ctx.world->rank();
  DHP_CHECK(L.cu_seqlens.size() == L.pieces.size() + 1 && L.cu_seqlens.back() == L.rows &&
                static_cast<std::int64_t>(L.positions.size()) == L.rows,
            InvalidArgument,
            "{}: world rank {}: inconsistent layout ({} pieces, {} cu_seqlens ending at {}, {} "
            "positions, {} rows): build it with WaveDispatch or PackedCpAttention",
            op, me, L.pieces.size(), L.cu_seqlens.size(),
            L.cu_seqlens.empty() ? -1 : L.cu_seqlens.back(), L.positions.size(), L.rows);
  DHP_CHECK(L.num_zigzag == static_cast<int>(L.zigzag_lengths.size()) &&
                L.num_zigzag <= static_cast<int>(L.pieces.size()) && L.zigzag_rows <= L.rows,
            InvalidArgument,
            "{}: world rank {}: layout holds {} zigzag pieces ({} rows of {}) of the group's {} "
            "zigzag sequences",
            op, me, L.num_zigzag, L.zigzag_rows, L.rows, L.zigzag_lengths.size());
  if (L.rows == 0) return;
  for (const NamedBuffer& b : buffers)
    DHP_CHECK(b.pointer != nullptr, InvalidArgument,
              "{}: world rank {}: {} is null but the rank holds {} rows (nothing was sent)", op, me,
              b.name, L.rows);
}

bool runs_ring(const WaveLayout& L) { return L.degree() > 1 && !L.zigzag_lengths.empty(); }

// This rank's place in the wave, for error messages.
std::string where(const WaveLayout& L) {
  return fmt::format(
      "world rank {} (group {}, member {}/{})",
      L.group_world_ranks.empty() ? -1 : L.group_world_ranks[static_cast<std::size_t>(L.member)],
      L.group, L.member, L.degree());
}

// What one ring runs, independent of where the rows come from (the Zigzag pieces of a
// plain ring, or the Ulysses-packed rows of a node in UlyssesRing): `peers` in ring order,
// this rank at `index`, the local rows [0, block_rows) travelling when `blocks` (ring
// member m's block against the local sequences) is given.
RingWork ring_work(const CpAttentionContext& ctx, const std::vector<int>& peers, int index,
                   std::int64_t block_rows, const std::vector<RingBlock>& blocks) {
  const WaveLayout& L = *ctx.layout;
  RingWork w;
  w.dtype = ctx.dtype;
  w.shape = ctx.shape;
  w.allocator = ctx.allocator;
  w.backends = ctx.backends;
  w.where = where(L);
  if (blocks.empty()) return w;
  const int d = static_cast<int>(peers.size());
  RingLink link;
  link.next = peers[static_cast<std::size_t>((index + 1) % d)];
  link.prev = peers[static_cast<std::size_t>((index + d - 1) % d)];
  link.degree = d;
  link.own_rows = block_rows;
  link.tag_k = kTagK;
  link.tag_v = kTagV;
  link.tag_dk = kTagDK;
  link.tag_dv = kTagDV;
  w.links.push_back(link);
  w.steps.resize(static_cast<std::size_t>(d));
  for (int step = 1; step < d; ++step) {  // the block of member index - step
    const RingBlock& b = blocks[static_cast<std::size_t>((index - step + d) % d)];
    RingStepBlock& sb = w.steps[static_cast<std::size_t>(step)];
    sb.cu_k = b.cu_seqlens_k;
    sb.k_positions = b.k_positions;
    sb.rows = b.rows;
    sb.offset = {0};
    sb.link_rows = {b.rows};
  }
  return w;
}

RingWork plain_ring(const CpAttentionContext& ctx) {
  const WaveLayout& L = *ctx.layout;
  std::vector<RingBlock> blocks;  // read only when KV travels
  if (runs_ring(L))
    for (int m = 0; m < L.degree(); ++m) blocks.push_back(ring_block(L, m));
  RingWork w = ring_work(ctx, L.group_world_ranks, L.member, L.zigzag_rows, blocks);
  w.cu = L.cu_seqlens;
  w.positions = L.positions;
  w.rows = L.rows;
  return w;
}

kernels::PackedSeqs packed(const std::vector<std::int32_t>& cu,
                           const std::vector<std::int32_t>& positions, std::int64_t rows) {
  kernels::PackedSeqs seqs;
  seqs.cu_seqlens_q = cu.data();
  seqs.cu_seqlens_k = cu.data();
  seqs.q_positions = positions.empty() ? nullptr : positions.data();
  seqs.k_positions = seqs.q_positions;
  seqs.num_seqs = static_cast<int>(cu.size()) - 1;
  seqs.total_q = rows;
  seqs.total_k = rows;
  for (std::size_t b = 0; b + 1 < cu.size(); ++b)
    seqs.max_seqlen_q = std::max(seqs.max_seqlen_q, cu[b + 1] - cu[b]);
  seqs.max_seqlen_k = seqs.max_seqlen_q;
  return seqs;
}

// Ulysses moves inside one node of a group: the node's members are group members
// [base, base + u) (all of them for plain Ulysses: base 0, u = d). Their Zigzag rows
// [0, zigzag_rows), all heads -> all of the node's rows of every Zigzag sequence for
// heads/u heads, packed per sequence, member by member. The all_to_all_v runs on the
// group's pool communicator with zero counts outside the node, so UlyssesRing needs no
// communicator beyond the one prewarm() already creates for the group.
class UlyssesLayout {
 public:
  UlyssesLayout(const CpAttentionContext& ctx, int base, int u)
      : ctx_(ctx),
        L_(*ctx.layout),
        d_(L_.degree()),
        base_(base),
        u_(u),
        group_(ctx.pool->get(L_.group_world_ranks)) {
    // CPU buffers only (lse is reshaped on the host): chosen_ulysses_degree sees to it.
    // Received rows come member by member; within a member, piece by piece.
    std::vector<std::vector<std::int64_t>> piece_offset(static_cast<std::size_t>(u_));
    std::int64_t offset = 0;
    for (int m = 0; m < u_; ++m) {
      member_rows_.push_back(0);
      for (std::int64_t length : L_.zigzag_lengths) {
        piece_offset[static_cast<std::size_t>(m)].push_back(offset);
        const std::int64_t rows = zigzag_chunks(length, d_, base_ + m).rows();
        offset += rows;
        member_rows_.back() += rows;
      }
    }
    cu_.push_back(0);
    for (std::size_t z = 0; z < L_.zigzag_lengths.size(); ++z) {
      for (int m = 0; m < u_; ++m) {
        const ZigzagChunks c = zigzag_chunks(L_.zigzag_lengths[z], d_, base_ + m);
        std::int64_t row = piece_offset[static_cast<std::size_t>(m)][z];
        for (std::int64_t p = c.begin0; p < c.end0; ++p, ++row) add_row(row, p);
        for (std::int64_t p = c.begin1; p < c.end1; ++p, ++row) add_row(row, p);
      }
      cu_.push_back(static_cast<std::int32_t>(packed_from_.size()));
    }
  }

  std::int64_t rows() const { return static_cast<std::int64_t>(packed_from_.size()); }
  const std::vector<std::int32_t>& cu_seqlens() const { return cu_; }
  const std::vector<std::int32_t>& positions() const { return positions_; }

  // [zigzag_rows, heads, hd] of this member -> [rows(), heads/u, hd] packed.
  std::vector<std::byte> to_packed(const void* local, int heads) const {
    const std::size_t row_bytes = block_row_bytes(heads);
    std::vector<std::byte> scattered(static_cast<std::size_t>(L_.zigzag_rows) * row_bytes * u_);
    head_move(kernels::ulysses_head_scatter, local, scattered.data(), heads);
    std::vector<std::byte> received(static_cast<std::size_t>(rows()) * row_bytes);
    exchange(scattered.data(), own_counts(heads), received.data(), member_counts(heads));
    std::vector<std::byte> packed(received.size());
    for (std::size_t p = 0; p < packed_from_.size(); ++p)
      std::memcpy(packed.data() + p * row_bytes, received.data() + packed_from_[p] * row_bytes,
                  row_bytes);
    return packed;
  }

  // Inverse of to_packed, into rows [0, zigzag_rows) of `local`.
  void from_packed(const std::vector<std::byte>& packed, void* local, int heads) const {
    const std::size_t row_bytes = block_row_bytes(heads);
    std::vector<std::byte> by_member(packed.size());
    for (std::size_t p = 0; p < packed_from_.size(); ++p)
      std::memcpy(by_member.data() + packed_from_[p] * row_bytes, packed.data() + p * row_bytes,
                  row_bytes);
    std::vector<std::byte> scattered(static_cast<std::size_t>(L_.zigzag_rows) * row_bytes * u_);
    exchange(by_member.data(), member_counts(heads), scattered.data(), own_counts(heads));
    head_move(kernels::ulysses_head_gather, scattered.data(), local, heads);
  }

  // lse [heads_q, local rows] (accumulator type) -> [heads_q/u, rows()] for this member's heads.
  template <typename Acc>
  std::vector<Acc> lse_to_packed(const Acc* lse) const {
    const int hb = ctx_.shape.heads_q / u_;
    // Row-major [rows][heads] per destination so that it moves like a token row.
    std::vector<Acc> rows_major(static_cast<std::size_t>(L_.zigzag_rows * ctx_.shape.heads_q));
    for (int j = 0; j < u_; ++j)
      for (std::int64_t r = 0; r < L_.zigzag_rows; ++r)
        for (int h = 0; h < hb; ++h)
          rows_major[static_cast<std::size_t>((j * L_.zigzag_rows + r) * hb + h)] =
              lse[static_cast<std::size_t>((j * hb + h) * L_.rows + r)];
    std::vector<Acc> received(static_cast<std::size_t>(rows() * hb));
    exchange(rows_major.data(), scale(own_rows_counts(), hb * static_cast<int>(sizeof(Acc))),
             received.data(), scale(member_rows_, hb * static_cast<int>(sizeof(Acc))));
    std::vector<Acc> packed(received.size());
    for (std::size_t p = 0; p < packed_from_.size(); ++p)
      for (int h = 0; h < hb; ++h)
        packed[static_cast<std::size_t>(h) * packed_from_.size() + p] =
            received[static_cast<std::size_t>(packed_from_[p] * hb + h)];
    return packed;
  }

  template <typename Acc>
  void lse_from_packed(const std::vector<Acc>& packed, Acc* lse) const {
    const int hb = ctx_.shape.heads_q / u_;
    std::vector<Acc> by_member(packed.size());
    for (std::size_t p = 0; p < packed_from_.size(); ++p)
      for (int h = 0; h < hb; ++h)
        by_member[static_cast<std::size_t>(packed_from_[p] * hb + h)] =
            packed[static_cast<std::size_t>(h) * packed_from_.size() + p];
    std::vector<Acc> rows_major(static_cast<std::size_t>(L_.zigzag_rows * ctx_.shape.heads_q));
    exchange(by_member.data(), scale(member_rows_, hb * static_cast<int>(sizeof(Acc))),
             rows_major.data(), scale(own_rows_counts(), hb * static_cast<int>(sizeof(Acc))));
    for (int j = 0; j < u_; ++j)
      for (std::int64_t r = 0; r < L_.zigzag_rows; ++r)
        for (int h = 0; h < hb; ++h)
          lse[static_cast<std::size_t>((j * hb + h) * L_.rows + r)] =
              rows_major[static_cast<std::size_t>((j * L_.zigzag_rows + r) * hb + h)];
  }

 private:
  void add_row(std::int64_t received_row, std::int64_t position) {
    packed_from_.push_back(received_row);
    positions_.push_back(static_cast<std::int32_t>(position));
  }
  std::size_t block_row_bytes(int heads) const {
    return static_cast<std::size_t>(heads / u_) * static_cast<std::size_t>(ctx_.shape.head_dim) *
           static_cast<std::size_t>(kernels::dtype_size(ctx_.dtype));
  }
  std::vector<std::int64_t> own_rows_counts() const {
    return std::vector<std::int64_t>(static_cast<std::size_t>(u_), L_.zigzag_rows);
  }
  static std::vector<std::int64_t> scale(const std::vector<std::int64_t>& rows, int bytes_per_row) {
    std::vector<std::int64_t> out(rows.size());
    for (std::size_t i = 0; i < rows.size(); ++i) out[i] = rows[i] * bytes_per_row;
    return out;
  }
  std::vector<std::int64_t> own_counts(int heads) const {
    return scale(own_rows_counts(), static_cast<int>(block_row_bytes(heads)));
  }
  std::vector<std::int64_t> member_counts(int heads) const {
    return scale(member_rows_, static_cast<int>(block_row_bytes(heads)));
  }
  // Byte all_to_all_v over the group with the node's counts (`u` entries) placed at the
  // node's members and zero elsewhere; packed (displacement = prefix sum) layouts.
  void exchange(const void* send, const std::vector<std::int64_t>& node_send_bytes, void* recv,
                const std::vector<std::int64_t>& node_recv_bytes) const {
    std::vector<std::int64_t> send_bytes(static_cast<std::size_t>(d_)),
        recv_bytes(static_cast<std::size_t>(d_));
    for (int m = 0; m < u_; ++m) {
      send_bytes[static_cast<std::size_t>(base_ + m)] =
          node_send_bytes[static_cast<std::size_t>(m)];
      recv_bytes[static_cast<std::size_t>(base_ + m)] =
          node_recv_bytes[static_cast<std::size_t>(m)];
    }
    std::vector<std::int64_t> sd(send_bytes.size()), rd(recv_bytes.size());
    for (std::size_t i = 1; i < sd.size(); ++i) {
      sd[i] = sd[i - 1] + send_bytes[i - 1];
      rd[i] = rd[i - 1] + recv_bytes[i - 1];
    }
    group_.all_to_all_v(send, send_bytes, sd, recv, recv_bytes, rd, DataType::U8);
  }
  void head_move(kernels::Status (*move)(const kernels::HeadScatterArgs&), const void* src,
                 void* dst, int heads) const {
    kernels::HeadScatterArgs args;
    args.dtype = ctx_.dtype;
    args.device = Device::CPU;
    args.tokens = L_.zigzag_rows;
    args.heads = heads;
    args.head_dim = ctx_.shape.head_dim;
    args.degree = u_;
    args.src = src;
    args.dst = dst;
    check_kernel(move(args), "ulysses head scatter/gather", L_);
  }

  const CpAttentionContext& ctx_;
  const WaveLayout& L_;
  int d_;     // group degree (the Zigzag chunking)
  int base_;  // first group member of this node
  int u_;     // Ulysses degree: members of this node
  Communicator& group_;
  std::vector<std::int64_t> member_rows_;  // zigzag rows of each node member
  std::vector<std::int64_t> packed_from_;  // received row of each packed row
  std::vector<std::int32_t> positions_;    // position of each packed row
  std::vector<std::int32_t> cu_;           // per Zigzag sequence
};

// The ring across nodes of UlyssesRing, in the packed space of `u`: ranks with the same
// Ulysses index in every node, each holding its node's rows for heads/u heads. With one
// node (plain Ulysses) it is a ring of one: local attention only.
RingWork node_ring(const CpAttentionContext& ctx, const UlyssesLayout& packed_layout, int u) {
  const WaveLayout& L = *ctx.layout;
  const int nodes = L.degree() / u;
  const int node = L.member / u, index_in_node = L.member % u;
  std::vector<int> peers;
  for (int n = 0; n < nodes; ++n)
    peers.push_back(L.group_world_ranks[static_cast<std::size_t>(n * u + index_in_node)]);
  std::vector<RingBlock> blocks;
  if (nodes > 1)
    for (int n = 0; n < nodes; ++n) blocks.push_back(node_block(L, u, n));
  RingWork w = ring_work(ctx, peers, node, packed_layout.rows(), blocks);
  w.cu = packed_layout.cu_seqlens();
  w.positions = packed_layout.positions();
  w.rows = packed_layout.rows();
  w.shape.heads_q /= u;
  w.shape.heads_kv /= u;
  w.allocator = nullptr;  // packed buffers are on the host
  return w;
}

// Whole pieces attend locally; the local pass also writes (discarded) values for the
// Zigzag rows, which the Ulysses result then overwrites.
template <typename Acc>
void ulysses_forward_typed(const CpAttentionContext& ctx, int u, const void* q, const void* k,
                           const void* v, void* out, Acc* lse) {
  const WaveLayout& L = *ctx.layout;
  kernels::AttentionForwardArgs args;
  args.dtype = ctx.dtype;
  args.device = Device::CPU;
  args.shape = ctx.shape;
  args.seqs = packed(L.cu_seqlens, L.positions, L.rows);
  args.q = q;
  args.k = k;
  args.v = v;
  args.out = out;
  args.lse = lse;
  check_kernel(kernels::attention_forward(args), "attention_forward (local pieces)", L);

  const UlyssesLayout layout(ctx, L.member / u * u, u);
  const auto uq = layout.to_packed(q, ctx.shape.heads_q);
  const auto uk = layout.to_packed(k, ctx.shape.heads_kv);
  const auto uv = layout.to_packed(v, ctx.shape.heads_kv);
  std::vector<std::byte> uout(uq.size());
  std::vector<Acc> ulse(static_cast<std::size_t>(layout.rows() * (ctx.shape.heads_q / u)));
  HostRingStreams streams(*ctx.world);
  ring_attention_forward(node_ring(ctx, layout, u), streams, uq.data(), uk.data(), uv.data(),
                         uout.data(), ulse.data());
  layout.from_packed(uout, out, ctx.shape.heads_q);
  layout.lse_from_packed(ulse, lse);
}

template <typename Acc>
void ulysses_backward_typed(const CpAttentionContext& ctx, int u, const void* q, const void* k,
                            const void* v, const void* out, const Acc* lse, const void* dout,
                            void* dq, void* dk, void* dv) {
  const WaveLayout& L = *ctx.layout;
  kernels::AttentionBackwardArgs args;
  args.dtype = ctx.dtype;
  args.device = Device::CPU;
  args.shape = ctx.shape;
  args.seqs = packed(L.cu_seqlens, L.positions, L.rows);
  args.q = q;
  args.k = k;
  args.v = v;
  args.out = out;
  args.dout = dout;
  args.lse = lse;
  args.dq = dq;
  args.dk = dk;
  args.dv = dv;
  check_kernel(kernels::attention_backward(args), "attention_backward (local pieces)", L);

  const UlyssesLayout layout(ctx, L.member / u * u, u);
  const int hq = ctx.shape.heads_q, hkv = ctx.shape.heads_kv;
  const auto uq = layout.to_packed(q, hq), uk = layout.to_packed(k, hkv),
             uv = layout.to_packed(v, hkv);
  const auto uout = layout.to_packed(out, hq), udout = layout.to_packed(dout, hq);
  const auto ulse = layout.lse_to_packed(lse);
  std::vector<std::byte> udq(uq.size()), udk(uk.size()), udv(uv.size());
  HostRingStreams streams(*ctx.world);
  ring_attention_backward(node_ring(ctx, layout, u), streams, uq.data(), uk.data(), uv.data(),
                          uout.data(), ulse.data(), udout.data(), udq.data(), udk.data(),
                          udv.data());
  layout.from_packed(udq, dq, hq);
  layout.from_packed(udk, dk, hkv);
  layout.from_packed(udv, dv, hkv);
}

// The Ulysses degree this rank runs with (1: the plain ring), logging why a group that
// asked for Ulysses runs the ring.
int chosen_ulysses_degree(const CpAttentionContext& ctx, const char* op) {
  const WaveLayout& L = *ctx.layout;
  if (L.attention == CpAttention::Ring || !runs_ring(L)) return 1;
  const int u = ulysses_degree(L, ctx.shape, ctx.ranks_per_node);
  const bool usable = u > 1 && ctx.pool != nullptr && ctx.world->device() == Device::CPU;
  if (!usable) {  // every call, forward and backward: debug level
    DHP_LOG_DEBUG(
        "world rank {}: group {} of degree {} asked for {} (heads_q={}, heads_kv={}, "
        "Ulysses degree {}, ranks_per_node={}, {}, {} buffers): running the ring",
        L.group_world_ranks[static_cast<std::size_t>(L.member)], L.group, L.degree(),
        to_string(L.attention), ctx.shape.heads_q, ctx.shape.heads_kv, u, ctx.ranks_per_node,
        ctx.pool == nullptr ? "no group pool" : "pool given",
        ctx.world->device() == Device::CPU ? "CPU" : "CUDA");
    return 1;
  }
  DHP_CHECK(ctx.pool->contains(L.group_world_ranks), InvalidArgument,
            "{}: world rank {}: the {} group {} has no communicator in the pool: call "
            "GroupPool::prewarm(plan) (or acquire its groups) on every rank before the wave "
            "(nothing was sent)",
            op, layout_world_rank(L), to_string(L.attention), group_name(L.group_world_ranks));
  return u;
}

}  // namespace

int ulysses_degree(const WaveLayout& layout, const kernels::AttentionShape& shape,
                   int ranks_per_node) {
  const int d = layout.degree();
  if (layout.attention == CpAttention::Ring || d <= 1 || layout.zigzag_lengths.empty()) return 1;
  int u = d;
  if (layout.attention == CpAttention::UlyssesRing && ranks_per_node > 0) {
    // Node-major ring order: every node holds the same number u of consecutive members.
    const auto node_of = [&](int m) {
      return layout.group_world_ranks[static_cast<std::size_t>(m)] / ranks_per_node;
    };
    u = 1;
    while (u < d && node_of(u) == node_of(0)) ++u;
    if (d % u != 0) return 1;
    for (int m = 0; m < d; ++m) {
      if (node_of(m) != node_of(m / u * u)) return 1;  // a node split across runs
      if (m % u == 0 && m > 0 && node_of(m) == node_of(m - 1)) return 1;  // a run longer than u
    }
  }
  if (u <= 1 || shape.heads_kv % u != 0 || shape.heads_q % u != 0) return 1;
  return u;
}

bool uses_ulysses(const WaveLayout& layout, const kernels::AttentionShape& shape) {
  return ulysses_degree(layout, shape, 0) > 1;
}

void cp_attention_forward(const CpAttentionContext& ctx, const void* q, const void* k,
                          const void* v, void* out, void* lse) {
  check_context(ctx, "cp_attention_forward");
  const auto streams = make_ring_streams(*ctx.world, ctx.stream);
  cp_attention_forward(ctx, *streams, q, k, v, out, lse);
}

void cp_attention_backward(const CpAttentionContext& ctx, const void* q, const void* k,
                           const void* v, const void* out, const void* lse, const void* dout,
                           void* dq, void* dk, void* dv) {
  check_context(ctx, "cp_attention_backward");
  const auto streams = make_ring_streams(*ctx.world, ctx.stream);
  cp_attention_backward(ctx, *streams, q, k, v, out, lse, dout, dq, dk, dv);
}

void cp_attention_forward(const CpAttentionContext& ctx, RingStreams& streams, const void* q,
                          const void* k, const void* v, void* out, void* lse) {
  constexpr const char* op = "cp_attention_forward";
  check_context(ctx, op);
  const WaveLayout& L = *ctx.layout;
  if (L.group < 0) return;  // idle in this wave
  check_layout_and_buffers(ctx, op, {{"q", q}, {"k", k}, {"v", v}, {"out", out}, {"lse", lse}});
  const int u = chosen_ulysses_degree(ctx, op);
  AbortOnUnwind guard(op, {ctx.world, u > 1 ? &ctx.pool->get(L.group_world_ranks) : nullptr});
  if (u == 1) {
    ring_attention_forward(plain_ring(ctx), streams, q, k, v, out, lse);
  } else if (ctx.dtype == DType::F64) {
    ulysses_forward_typed(ctx, u, q, k, v, out, static_cast<double*>(lse));
  } else {
    ulysses_forward_typed(ctx, u, q, k, v, out, static_cast<float*>(lse));
  }
}

void cp_attention_backward(const CpAttentionContext& ctx, RingStreams& streams, const void* q,
                           const void* k, const void* v, const void* out, const void* lse,
                           const void* dout, void* dq, void* dk, void* dv) {
  constexpr const char* op = "cp_attention_backward";
  check_context(ctx, op);
  const WaveLayout& L = *ctx.layout;
  if (L.group < 0) return;
  check_layout_and_buffers(ctx, op,
                           {{"q", q},
                            {"k", k},
                            {"v", v},
                            {"out", out},
                            {"lse", lse},
                            {"dout", dout},
                            {"dq", dq},
                            {"dk", dk},
                            {"dv", dv}});
  const int u = chosen_ulysses_degree(ctx, op);
  AbortOnUnwind guard(op, {ctx.world, u > 1 ? &ctx.pool->get(L.group_world_ranks) : nullptr});
  if (u == 1) {
    ring_attention_backward(plain_ring(ctx), streams, q, k, v, out, lse, dout, dq, dk, dv);
  } else if (ctx.dtype == DType::F64) {
    ulysses_backward_typed(ctx, u, q, k, v, out, static_cast<const double*>(lse), dout, dq, dk, dv);
  } else {
    ulysses_backward_typed(ctx, u, q, k, v, out, static_cast<const float*>(lse), dout, dq, dk, dv);
  }
}

}  // namespace dhp
