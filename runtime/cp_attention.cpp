#include "dhp/cp_attention.hpp"

#include <cstring>
#include <vector>

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
            layout.group_world_ranks.empty() ? -1 : layout.group_world_ranks[static_cast<std::size_t>(layout.member)],
            layout.group, layout.member, layout.degree(), kernels::status_string(status),
            kernels::last_error());
}

// Scratch buffers on the tensors' device, freed at scope exit.
class Scratch {
 public:
  explicit Scratch(BufferAllocator* allocator) : allocator_(allocator) {}
  ~Scratch() {
    if (allocator_ != nullptr) {
      for (void* p : device_) allocator_->deallocate(p);
    }
  }
  Scratch(const Scratch&) = delete;
  Scratch& operator=(const Scratch&) = delete;

  void* bytes(std::size_t n) {
    if (n == 0) n = 1;  // distinct non-null pointers keep the kernels' null checks meaningful
    if (allocator_ != nullptr) {
      device_.push_back(allocator_->allocate(n));
      return device_.back();
    }
    host_.emplace_back(n);
    return host_.back().data();
  }
  // A host index array, copied to the device when there is one.
  const std::int32_t* index(const std::vector<std::int32_t>& host) {
    const std::size_t n = host.size() * sizeof(std::int32_t);
    void* p = bytes(n);
    if (n == 0) return static_cast<const std::int32_t*>(p);
    if (allocator_ != nullptr) {
      allocator_->copy_from_host(p, host.data(), n);
    } else {
      std::memcpy(p, host.data(), n);
    }
    return static_cast<const std::int32_t*>(p);
  }

 private:
  BufferAllocator* allocator_;
  std::vector<std::vector<std::byte>> host_;
  std::vector<void*> device_;
};

// The Zigzag block of ring member `member`: per-piece key lengths laid against this rank's
// local pieces (0 for its Whole pieces) and the block's key positions.
struct RingBlock {
  std::vector<std::int32_t> cu_seqlens_k;
  std::vector<std::int32_t> k_positions;
  std::int64_t rows = 0;
};

RingBlock ring_block(const WaveLayout& layout, int member) {
  RingBlock block;
  block.cu_seqlens_k.push_back(0);
  const int degree = layout.degree();
  for (std::size_t p = 0; p < layout.pieces.size(); ++p) {
    if (p < layout.zigzag_lengths.size()) {
      const ZigzagChunks c = zigzag_chunks(layout.zigzag_lengths[p], degree, member);
      for (std::int64_t r = c.begin0; r < c.end0; ++r) block.k_positions.push_back(static_cast<std::int32_t>(r));
      for (std::int64_t r = c.begin1; r < c.end1; ++r) block.k_positions.push_back(static_cast<std::int32_t>(r));
      block.rows += c.rows();
    }
    block.cu_seqlens_k.push_back(static_cast<std::int32_t>(block.rows));
  }
  return block;
}

std::int64_t max_block_rows(const WaveLayout& layout) {
  std::int64_t most = 0;
  for (int m = 0; m < layout.degree(); ++m) {
    std::int64_t rows = 0;
    for (std::int64_t length : layout.zigzag_lengths) rows += zigzag_chunks(length, layout.degree(), m).rows();
    most = std::max(most, rows);
  }
  return most;
}

struct Sizes {
  std::size_t elem = 0, acc = 0;
  std::int64_t q_row = 0, kv_row = 0;  // elements per row
};

Sizes sizes_of(const CpAttentionContext& ctx) {
  Sizes s;
  s.elem = static_cast<std::size_t>(kernels::dtype_size(ctx.dtype));
  s.acc = ctx.dtype == DType::F64 ? 8 : 4;
  s.q_row = static_cast<std::int64_t>(ctx.shape.heads_q) * ctx.shape.head_dim;
  s.kv_row = static_cast<std::int64_t>(ctx.shape.heads_kv) * ctx.shape.head_dim;
  return s;
}

void check_context(const CpAttentionContext& ctx, const char* op) {
  DHP_CHECK(ctx.layout != nullptr && ctx.world != nullptr, InvalidArgument,
            "{}: the context needs a layout and a world communicator", op);
  DHP_CHECK(ctx.dtype == DType::F32 || ctx.dtype == DType::F64, InvalidArgument,
            "{}: dtype {} not supported: the ring merges into the output, which must be in the "
            "accumulator type (f32 or f64)", op, kernels::to_string(ctx.dtype));
  const WaveLayout& L = *ctx.layout;
  DHP_CHECK(L.group < 0 || L.num_zigzag == static_cast<int>(L.zigzag_lengths.size()), Internal,
            "{}: layout holds {} zigzag pieces of the group's {} zigzag sequences", op,
            L.num_zigzag, L.zigzag_lengths.size());
}

bool runs_ring(const WaveLayout& L) { return L.degree() > 1 && !L.zigzag_lengths.empty(); }

// The exchange of one ring step: `sends` to the next member, `recvs` from the previous.
CommRequestPtr ring_exchange(Communicator& world, const WaveLayout& L, DType dtype,
                             std::initializer_list<std::pair<const void*, std::int64_t>> sends,
                             std::initializer_list<std::pair<void*, std::int64_t>> recvs,
                             std::initializer_list<int> tags) {
  const int d = L.degree();
  const int next = L.group_world_ranks[static_cast<std::size_t>((L.member + 1) % d)];
  const int prev = L.group_world_ranks[static_cast<std::size_t>((L.member + d - 1) % d)];
  std::vector<P2POp> ops;
  auto tag = tags.begin();
  for (const auto& [buffer, count] : sends) {
    ops.push_back({P2POp::Kind::Send, next, const_cast<void*>(buffer), count, data_type(dtype), *tag++});
  }
  tag = tags.begin();
  for (const auto& [buffer, count] : recvs) {
    ops.push_back({P2POp::Kind::Recv, prev, buffer, count, data_type(dtype), *tag++});
  }
  return world.exchange(ops);
}

kernels::PackedSeqs packed(const std::int32_t* cu_q, const std::int32_t* cu_k, const std::int32_t* q_pos,
                           const std::int32_t* k_pos, const WaveLayout& L, std::int64_t total_k) {
  kernels::PackedSeqs seqs;
  seqs.cu_seqlens_q = cu_q;
  seqs.cu_seqlens_k = cu_k;
  seqs.q_positions = q_pos;
  seqs.k_positions = k_pos;
  seqs.num_seqs = static_cast<int>(L.pieces.size());
  seqs.total_q = L.rows;
  seqs.total_k = total_k;
  return seqs;
}

void ulysses_forward(const CpAttentionContext& ctx, const void* q, const void* k, const void* v,
                     void* out, void* lse);
void ulysses_backward(const CpAttentionContext& ctx, const void* q, const void* k, const void* v,
                      const void* out, const void* lse, const void* dout, void* dq, void* dk,
                      void* dv);

}  // namespace

bool uses_ulysses(const WaveLayout& layout, const kernels::AttentionShape& shape) {
  if (layout.attention == CpAttention::Ring || layout.degree() <= 1 || layout.zigzag_lengths.empty()) return false;
  const int d = layout.degree();
  return shape.heads_kv % d == 0 && shape.heads_q % d == 0;
}

void cp_attention_forward(const CpAttentionContext& ctx, const void* q, const void* k,
                          const void* v, void* out, void* lse) {
  check_context(ctx, "cp_attention_forward");
  const WaveLayout& L = *ctx.layout;
  if (L.group < 0) return;  // idle in this wave
  const bool ulysses = ctx.pool != nullptr && ctx.world->device() == Device::CPU && uses_ulysses(L, ctx.shape);
  if (ulysses) {
    ulysses_forward(ctx, q, k, v, out, lse);
    return;
  }
  if (L.attention != CpAttention::Ring && L.degree() > 1 && !L.zigzag_lengths.empty()) {
    // UlyssesRing runs as the ring too (see the header).
    DHP_LOG_INFO("world rank {}: group {} of degree {} asked for {} (heads_q={}, heads_kv={}, {}, "
                 "{} buffers): running the ring", L.group_world_ranks[static_cast<std::size_t>(L.member)],
                 L.group, L.degree(), to_string(L.attention), ctx.shape.heads_q, ctx.shape.heads_kv,
                 ctx.pool == nullptr ? "no group pool" : "pool given",
                 ctx.world->device() == Device::CPU ? "CPU" : "CUDA");
  }
  const Sizes sz = sizes_of(ctx);
  const Device device = ctx.world->device();
  Scratch scratch(ctx.allocator);
  const std::int32_t* cu_local = scratch.index(L.cu_seqlens);
  const std::int32_t* positions = scratch.index(L.positions);

  kernels::AttentionForwardArgs args;
  args.dtype = ctx.dtype;
  args.device = device;
  args.shape = ctx.shape;
  args.stream = ctx.world->stream();

  // The first exchange goes out before the local attention so that it overlaps it.
  const int d = L.degree();
  const bool ring = runs_ring(L);
  const std::int64_t block_elems = max_block_rows(L) * sz.kv_row;
  void* kbuf[2] = {nullptr, nullptr};
  void* vbuf[2] = {nullptr, nullptr};
  CommRequestPtr pending;
  if (ring) {
    for (int b = 0; b < 2; ++b) {
      kbuf[b] = scratch.bytes(static_cast<std::size_t>(block_elems) * sz.elem);
      vbuf[b] = scratch.bytes(static_cast<std::size_t>(block_elems) * sz.elem);
    }
    const std::int64_t own = L.zigzag_rows * sz.kv_row;
    const std::int64_t incoming = ring_block(L, (L.member + d - 1) % d).rows * sz.kv_row;
    pending = ring_exchange(*ctx.world, L, ctx.dtype, {{k, own}, {v, own}},
                            {{kbuf[0], incoming}, {vbuf[0], incoming}}, {kTagK, kTagV});
  }

  args.seqs = packed(cu_local, cu_local, positions, positions, L, L.rows);
  args.q = q;
  args.k = k;
  args.v = v;
  args.out = out;
  args.lse = lse;
  check_kernel(kernels::attention_forward(args), "attention_forward (local block)", L);
  if (!ring) return;

  void* part_out = scratch.bytes(static_cast<std::size_t>(L.rows * sz.q_row) * sz.elem);
  void* part_lse = scratch.bytes(static_cast<std::size_t>(L.rows * ctx.shape.heads_q) * sz.acc);
  for (int step = 1; step < d; ++step) {
    pending->wait();
    const int cur = (step - 1) % 2;
    const int source = (L.member - step + d) % d;
    if (step + 1 < d) {
      const std::int64_t sending = ring_block(L, source).rows * sz.kv_row;
      const std::int64_t incoming = ring_block(L, (source + d - 1) % d).rows * sz.kv_row;
      pending = ring_exchange(*ctx.world, L, ctx.dtype, {{kbuf[cur], sending}, {vbuf[cur], sending}},
                              {{kbuf[1 - cur], incoming}, {vbuf[1 - cur], incoming}}, {kTagK, kTagV});
    }
    const RingBlock block = ring_block(L, source);
    args.seqs = packed(cu_local, scratch.index(block.cu_seqlens_k), positions,
                       scratch.index(block.k_positions), L, block.rows);
    args.k = kbuf[cur];
    args.v = vbuf[cur];
    args.out = part_out;
    args.lse = part_lse;
    check_kernel(kernels::attention_forward(args), "attention_forward (ring block)", L);

    kernels::MergeArgs merge;
    merge.dtype = ctx.dtype;
    merge.device = device;
    merge.rows = L.rows;
    merge.heads = ctx.shape.heads_q;
    merge.head_dim = ctx.shape.head_dim;
    merge.out_acc = out;
    merge.lse_acc = lse;
    merge.out_part = part_out;
    merge.lse_part = part_lse;
    merge.stream = args.stream;
    check_kernel(kernels::merge_attention_partial(merge), "merge_attention_partial", L);
  }
}

void cp_attention_backward(const CpAttentionContext& ctx, const void* q, const void* k,
                           const void* v, const void* out, const void* lse, const void* dout,
                           void* dq, void* dk, void* dv) {
  check_context(ctx, "cp_attention_backward");
  const WaveLayout& L = *ctx.layout;
  if (L.group < 0) return;
  if (ctx.pool != nullptr && ctx.world->device() == Device::CPU && uses_ulysses(L, ctx.shape)) {
    ulysses_backward(ctx, q, k, v, out, lse, dout, dq, dk, dv);
    return;
  }
  const Sizes sz = sizes_of(ctx);
  const Device device = ctx.world->device();
  Scratch scratch(ctx.allocator);
  const std::int32_t* cu_local = scratch.index(L.cu_seqlens);
  const std::int32_t* positions = scratch.index(L.positions);
  const int d = L.degree();
  const bool ring = runs_ring(L);

  kernels::AttentionBackwardArgs args;
  args.dtype = ctx.dtype;
  args.device = device;
  args.shape = ctx.shape;
  args.stream = ctx.world->stream();
  args.q = q;
  args.out = out;
  args.dout = dout;
  args.lse = lse;
  args.dq = dq;

  const std::int64_t block_elems = max_block_rows(L) * sz.kv_row;
  void* kbuf[2] = {nullptr, nullptr};
  void* vbuf[2] = {nullptr, nullptr};
  CommRequestPtr kv_pending;
  if (ring) {
    for (int b = 0; b < 2; ++b) {
      kbuf[b] = scratch.bytes(static_cast<std::size_t>(block_elems) * sz.elem);
      vbuf[b] = scratch.bytes(static_cast<std::size_t>(block_elems) * sz.elem);
    }
    const std::int64_t own = L.zigzag_rows * sz.kv_row;
    const std::int64_t incoming = ring_block(L, (L.member + d - 1) % d).rows * sz.kv_row;
    kv_pending = ring_exchange(*ctx.world, L, ctx.dtype, {{k, own}, {v, own}},
                               {{kbuf[0], incoming}, {vbuf[0], incoming}}, {kTagK, kTagV});
  }

  args.seqs = packed(cu_local, cu_local, positions, positions, L, L.rows);
  args.k = k;
  args.v = v;
  args.dk = dk;
  args.dv = dv;
  args.accumulate = false;
  check_kernel(kernels::attention_backward(args), "attention_backward (local block)", L);
  if (!ring) return;

  // dK/dV of the block held at each step; the own block's accumulator is the prefix of dk/dv.
  void* dkbuf[2] = {scratch.bytes(static_cast<std::size_t>(block_elems) * sz.elem),
                    scratch.bytes(static_cast<std::size_t>(block_elems) * sz.elem)};
  void* dvbuf[2] = {scratch.bytes(static_cast<std::size_t>(block_elems) * sz.elem),
                    scratch.bytes(static_cast<std::size_t>(block_elems) * sz.elem)};
  const std::int64_t own = L.zigzag_rows * sz.kv_row;
  std::int64_t incoming = ring_block(L, (L.member + d - 1) % d).rows * sz.kv_row;
  CommRequestPtr grad_pending = ring_exchange(*ctx.world, L, ctx.dtype, {{dk, own}, {dv, own}},
                                              {{dkbuf[0], incoming}, {dvbuf[0], incoming}},
                                              {kTagDK, kTagDV});
  args.accumulate = true;
  for (int step = 1; step < d; ++step) {
    kv_pending->wait();
    const int cur = (step - 1) % 2;
    const int source = (L.member - step + d) % d;
    const RingBlock block = ring_block(L, source);
    const std::int64_t holding = block.rows * sz.kv_row;
    if (step + 1 < d) {
      incoming = ring_block(L, (source + d - 1) % d).rows * sz.kv_row;
      kv_pending = ring_exchange(*ctx.world, L, ctx.dtype, {{kbuf[cur], holding}, {vbuf[cur], holding}},
                                 {{kbuf[1 - cur], incoming}, {vbuf[1 - cur], incoming}}, {kTagK, kTagV});
    }
    grad_pending->wait();
    args.seqs = packed(cu_local, scratch.index(block.cu_seqlens_k), positions,
                       scratch.index(block.k_positions), L, block.rows);
    args.k = kbuf[cur];
    args.v = vbuf[cur];
    args.dk = dkbuf[cur];
    args.dv = dvbuf[cur];
    check_kernel(kernels::attention_backward(args), "attention_backward (ring block)", L);
    // The accumulators follow their block; after the last step one more hop takes every
    // block's dK/dV home, straight into the prefix of dk/dv.
    const bool last = step + 1 == d;
    void* next_dk = last ? dk : dkbuf[1 - cur];
    void* next_dv = last ? dv : dvbuf[1 - cur];
    incoming = last ? own : ring_block(L, (source + d - 1) % d).rows * sz.kv_row;
    grad_pending = ring_exchange(*ctx.world, L, ctx.dtype, {{dkbuf[cur], holding}, {dvbuf[cur], holding}},
                                 {{next_dk, incoming}, {next_dv, incoming}}, {kTagDK, kTagDV});
  }
  grad_pending->wait();
}

namespace {

// Ulysses moves of one group: the group's Zigzag rows [0, zigzag_rows) of every member,
// all heads -> all rows of the group's Zigzag sequences, heads/d heads, packed per sequence.
class UlyssesLayout {
 public:
  UlyssesLayout(const CpAttentionContext& ctx)
      : ctx_(ctx), L_(*ctx.layout), d_(L_.degree()), group_(ctx.pool->get(L_.group_world_ranks)) {
    DHP_CHECK(ctx.world->device() == Device::CPU, InvalidArgument,
              "Ulysses attention reshapes lse on the host and needs CPU buffers (got {})",
              ctx.world->describe());
    // Received rows come member by member; within a member, piece by piece.
    std::vector<std::vector<std::int64_t>> piece_offset(static_cast<std::size_t>(d_));
    std::int64_t offset = 0;
    for (int m = 0; m < d_; ++m) {
      member_rows_.push_back(0);
      for (std::int64_t length : L_.zigzag_lengths) {
        piece_offset[static_cast<std::size_t>(m)].push_back(offset);
        const std::int64_t rows = zigzag_chunks(length, d_, m).rows();
        offset += rows;
        member_rows_.back() += rows;
      }
    }
    cu_.push_back(0);
    for (std::size_t z = 0; z < L_.zigzag_lengths.size(); ++z) {
      for (int m = 0; m < d_; ++m) {
        const ZigzagChunks c = zigzag_chunks(L_.zigzag_lengths[z], d_, m);
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

  // [zigzag_rows, heads, hd] of this member -> [rows(), heads/d, hd] packed.
  std::vector<std::byte> to_packed(const void* local, int heads) const {
    const std::size_t row_bytes = block_row_bytes(heads);
    std::vector<std::byte> scattered(static_cast<std::size_t>(L_.zigzag_rows) * row_bytes * d_);
    head_move(kernels::ulysses_head_scatter, local, scattered.data(), heads);
    std::vector<std::byte> received(static_cast<std::size_t>(rows()) * row_bytes);
    exchange(scattered.data(), own_counts(heads), received.data(), member_counts(heads));
    std::vector<std::byte> packed(received.size());
    for (std::size_t p = 0; p < packed_from_.size(); ++p)
      std::memcpy(packed.data() + p * row_bytes, received.data() + packed_from_[p] * row_bytes, row_bytes);
    return packed;
  }

  // Inverse of to_packed, into rows [0, zigzag_rows) of `local`.
  void from_packed(const std::vector<std::byte>& packed, void* local, int heads) const {
    const std::size_t row_bytes = block_row_bytes(heads);
    std::vector<std::byte> by_member(packed.size());
    for (std::size_t p = 0; p < packed_from_.size(); ++p)
      std::memcpy(by_member.data() + packed_from_[p] * row_bytes, packed.data() + p * row_bytes, row_bytes);
    std::vector<std::byte> scattered(static_cast<std::size_t>(L_.zigzag_rows) * row_bytes * d_);
    exchange(by_member.data(), member_counts(heads), scattered.data(), own_counts(heads));
    head_move(kernels::ulysses_head_gather, scattered.data(), local, heads);
  }

  // lse [heads_q, local rows] (accumulator type) -> [heads_q/d, rows()] for this member's heads.
  template <typename Acc>
  std::vector<Acc> lse_to_packed(const Acc* lse) const {
    const int hb = ctx_.shape.heads_q / d_;
    // Row-major [rows][heads] per destination so that it moves like a token row.
    std::vector<Acc> rows_major(static_cast<std::size_t>(L_.zigzag_rows * ctx_.shape.heads_q));
    for (int j = 0; j < d_; ++j)
      for (std::int64_t r = 0; r < L_.zigzag_rows; ++r)
        for (int h = 0; h < hb; ++h)
          rows_major[static_cast<std::size_t>((j * L_.zigzag_rows + r) * hb + h)] =
              lse[static_cast<std::size_t>((j * hb + h) * L_.rows + r)];
    std::vector<Acc> received(static_cast<std::size_t>(rows() * hb));
    exchange(rows_major.data(), scale(own_rows_counts(), hb * static_cast<int>(sizeof(Acc))), received.data(),
             scale(member_rows_, hb * static_cast<int>(sizeof(Acc))));
    std::vector<Acc> packed(received.size());
    for (std::size_t p = 0; p < packed_from_.size(); ++p)
      for (int h = 0; h < hb; ++h)
        packed[static_cast<std::size_t>(h) * packed_from_.size() + p] =
            received[static_cast<std::size_t>(packed_from_[p] * hb + h)];
    return packed;
  }

  template <typename Acc>
  void lse_from_packed(const std::vector<Acc>& packed, Acc* lse) const {
    const int hb = ctx_.shape.heads_q / d_;
    std::vector<Acc> by_member(packed.size());
    for (std::size_t p = 0; p < packed_from_.size(); ++p)
      for (int h = 0; h < hb; ++h)
        by_member[static_cast<std::size_t>(packed_from_[p] * hb + h)] =
            packed[static_cast<std::size_t>(h) * packed_from_.size() + p];
    std::vector<Acc> rows_major(static_cast<std::size_t>(L_.zigzag_rows * ctx_.shape.heads_q));
    exchange(by_member.data(), scale(member_rows_, hb * static_cast<int>(sizeof(Acc))), rows_major.data(),
             scale(own_rows_counts(), hb * static_cast<int>(sizeof(Acc))));
    for (int j = 0; j < d_; ++j)
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
    return static_cast<std::size_t>(heads / d_) * static_cast<std::size_t>(ctx_.shape.head_dim) *
           static_cast<std::size_t>(kernels::dtype_size(ctx_.dtype));
  }
  std::vector<std::int64_t> own_rows_counts() const {
    return std::vector<std::int64_t>(static_cast<std::size_t>(d_), L_.zigzag_rows);
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
  // Byte all_to_all_v inside the group with packed (displacement = prefix sum) layouts.
  void exchange(const void* send, const std::vector<std::int64_t>& send_bytes, void* recv,
                const std::vector<std::int64_t>& recv_bytes) const {
    std::vector<std::int64_t> sd(send_bytes.size()), rd(recv_bytes.size());
    for (std::size_t i = 1; i < sd.size(); ++i) {
      sd[i] = sd[i - 1] + send_bytes[i - 1];
      rd[i] = rd[i - 1] + recv_bytes[i - 1];
    }
    group_.all_to_all_v(send, send_bytes, sd, recv, recv_bytes, rd, DataType::U8);
  }
  void head_move(kernels::Status (*move)(const kernels::HeadScatterArgs&), const void* src, void* dst,
                 int heads) const {
    kernels::HeadScatterArgs args;
    args.dtype = ctx_.dtype;
    args.device = Device::CPU;
    args.tokens = L_.zigzag_rows;
    args.heads = heads;
    args.head_dim = ctx_.shape.head_dim;
    args.degree = d_;
    args.src = src;
    args.dst = dst;
    check_kernel(move(args), "ulysses head scatter/gather", L_);
  }

  const CpAttentionContext& ctx_;
  const WaveLayout& L_;
  int d_;
  Communicator& group_;
  std::vector<std::int64_t> member_rows_;   // zigzag rows of each member
  std::vector<std::int64_t> packed_from_;   // received row of each packed row
  std::vector<std::int32_t> positions_;     // position of each packed row
  std::vector<std::int32_t> cu_;            // per Zigzag sequence
};

kernels::AttentionShape ulysses_shape(const CpAttentionContext& ctx) {
  kernels::AttentionShape shape = ctx.shape;
  const int d = ctx.layout->degree();
  shape.heads_q /= d;
  shape.heads_kv /= d;
  return shape;
}

kernels::PackedSeqs ulysses_seqs(const UlyssesLayout& u) {
  kernels::PackedSeqs seqs;
  seqs.cu_seqlens_q = seqs.cu_seqlens_k = u.cu_seqlens().data();
  seqs.q_positions = seqs.k_positions = u.positions().data();
  seqs.num_seqs = static_cast<int>(u.cu_seqlens().size()) - 1;
  seqs.total_q = seqs.total_k = u.rows();
  return seqs;
}

// Whole pieces attend locally; the local pass also writes (discarded) values for the
// Zigzag rows, which the Ulysses result then overwrites.
template <typename Acc>
void ulysses_forward_typed(const CpAttentionContext& ctx, const void* q, const void* k, const void* v,
                           void* out, Acc* lse) {
  const WaveLayout& L = *ctx.layout;
  kernels::AttentionForwardArgs args;
  args.dtype = ctx.dtype;
  args.device = Device::CPU;
  args.shape = ctx.shape;
  args.seqs = packed(L.cu_seqlens.data(), L.cu_seqlens.data(), L.positions.data(), L.positions.data(), L, L.rows);
  args.q = q;
  args.k = k;
  args.v = v;
  args.out = out;
  args.lse = lse;
  check_kernel(kernels::attention_forward(args), "attention_forward (local pieces)", L);

  const UlyssesLayout u(ctx);
  const auto uq = u.to_packed(q, ctx.shape.heads_q);
  const auto uk = u.to_packed(k, ctx.shape.heads_kv);
  const auto uv = u.to_packed(v, ctx.shape.heads_kv);
  std::vector<std::byte> uout(uq.size());
  std::vector<Acc> ulse(static_cast<std::size_t>(u.rows() * (ctx.shape.heads_q / L.degree())));
  args.shape = ulysses_shape(ctx);
  args.seqs = ulysses_seqs(u);
  args.q = uq.data();
  args.k = uk.data();
  args.v = uv.data();
  args.out = uout.data();
  args.lse = ulse.data();
  check_kernel(kernels::attention_forward(args), "attention_forward (Ulysses)", L);
  u.from_packed(uout, out, ctx.shape.heads_q);
  u.lse_from_packed(ulse, lse);
}

template <typename Acc>
void ulysses_backward_typed(const CpAttentionContext& ctx, const void* q, const void* k, const void* v,
                            const void* out, const Acc* lse, const void* dout, void* dq, void* dk,
                            void* dv) {
  const WaveLayout& L = *ctx.layout;
  kernels::AttentionBackwardArgs args;
  args.dtype = ctx.dtype;
  args.device = Device::CPU;
  args.shape = ctx.shape;
  args.seqs = packed(L.cu_seqlens.data(), L.cu_seqlens.data(), L.positions.data(), L.positions.data(), L, L.rows);
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

  const UlyssesLayout u(ctx);
  const int hq = ctx.shape.heads_q, hkv = ctx.shape.heads_kv;
  const auto uq = u.to_packed(q, hq), uk = u.to_packed(k, hkv), uv = u.to_packed(v, hkv);
  const auto uout = u.to_packed(out, hq), udout = u.to_packed(dout, hq);
  const auto ulse = u.lse_to_packed(lse);
  std::vector<std::byte> udq(uq.size()), udk(uk.size()), udv(uv.size());
  args.shape = ulysses_shape(ctx);
  args.seqs = ulysses_seqs(u);
  args.q = uq.data();
  args.k = uk.data();
  args.v = uv.data();
  args.out = uout.data();
  args.dout = udout.data();
  args.lse = ulse.data();
  args.dq = udq.data();
  args.dk = udk.data();
  args.dv = udv.data();
  check_kernel(kernels::attention_backward(args), "attention_backward (Ulysses)", L);
  u.from_packed(udq, dq, hq);
  u.from_packed(udk, dk, hkv);
  u.from_packed(udv, dv, hkv);
}

void ulysses_forward(const CpAttentionContext& ctx, const void* q, const void* k, const void* v,
                     void* out, void* lse) {
  if (ctx.dtype == DType::F64) {
    ulysses_forward_typed(ctx, q, k, v, out, static_cast<double*>(lse));
  } else {
    ulysses_forward_typed(ctx, q, k, v, out, static_cast<float*>(lse));
  }
}

void ulysses_backward(const CpAttentionContext& ctx, const void* q, const void* k, const void* v,
                      const void* out, const void* lse, const void* dout, void* dq, void* dk,
                      void* dv) {
  if (ctx.dtype == DType::F64) {
    ulysses_backward_typed(ctx, q, k, v, out, static_cast<const double*>(lse), dout, dq, dk, dv);
  } else {
    ulysses_backward_typed(ctx, q, k, v, out, static_cast<const float*>(lse), dout, dq, dk, dv);
  }
}

}  // namespace
}  // namespace dhp
