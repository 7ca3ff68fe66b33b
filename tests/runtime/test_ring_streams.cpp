// The stream contract of the rings (docs/runtime.md, "Streams and synchronisation"),
// checked without a GPU: the rings run on the host implementation of RingStreams wrapped in
// a recorder that logs every event, wait, exchange and kernel with the bytes it reads and
// writes. A model of the two lanes (compute: kernels; comm: exchanges) with vector clocks
// then checks, over the whole log:
//   - every pair of operations on different lanes that touch the same bytes, one of them
//     writing, is ordered by events in log order (no race once the lanes run concurrently);
//   - the caller's inputs are produced, and its outputs consumed and inputs overwritten,
//     on the compute lane before and after the call, with nothing left unordered;
//   - every ring-block attention but the last runs while an exchange is in flight (the next
//     block's transfer overlaps it);
//   - every kernel gets max_seqlen from the host (never 0 where rows exist), and no index
//     array is uploaded for host buffers.
// Results are compared bit for bit with the public entry points.
#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <cstring>
#include <string>
#include <vector>

#include "attention/rings.hpp"
#include "dhp/cp_attention.hpp"
#include "dhp/dispatch.hpp"
#include "dhp/encoder_attention.hpp"
#include "dhp/float16.hpp"
#include "runtime_test_util.hpp"

namespace dhp {
namespace {

using testing::world;
using Lane = RingStreams::Lane;

struct Range {
  const std::byte* begin = nullptr;
  const std::byte* end = nullptr;
  bool write = false;
};

Range bytes(const void* p, std::int64_t n, bool write) {
  const auto* b = static_cast<const std::byte*>(p);
  return {b, b + n, write};
}

bool overlap(const Range& a, const Range& b) {
  return a.begin < b.end && b.begin < a.end && (a.write || b.write);
}

enum class Kind { Record, Wait, Post, Kernel, Finish, Caller };

struct Entry {
  Kind kind = Kind::Kernel;
  Lane lane = Lane::Compute;
  int event = -1;
  std::string what;
  std::vector<Range> ranges;
  bool ring_block = false;  // an attention kernel on a received KV block
};

std::int64_t elems(int rows_64, int heads, int head_dim) {
  return static_cast<std::int64_t>(rows_64) * heads * head_dim;
}

// Logs every call, then runs it on the host implementation. Kernels are launched here, on
// the compute lane's (fake) stream; what the log checks is the order against the exchanges.
class RecordingStreams final : public RingStreams {
 public:
  explicit RecordingStreams(Communicator& comm) : inner_(comm) {}

  void* stream(Lane lane) const override {
    return const_cast<char*>(lane == Lane::Compute ? &handles_[0] : &handles_[1]);
  }
  bool on_device() const override { return false; }
  Event record(Lane lane) override {
    const Event e = inner_.record(lane);
    log.push_back({Kind::Record, lane, e, "record", {}, false});
    return e;
  }
  void wait(Lane lane, Event event) override {
    log.push_back({Kind::Wait, lane, event, "wait", {}, false});
    inner_.wait(lane, event);
  }
  void post(std::span<const P2POp> ops) override {
    Entry e{Kind::Post, Lane::Comm, -1, "exchange", {}, false};
    for (const P2POp& op : ops)
      e.ranges.push_back(
          bytes(op.buffer, op.count * data_type_size(op.type), op.kind == P2POp::Kind::Recv));
    log.push_back(e);
    inner_.post(ops);
  }
  void finish() override {
    log.push_back({Kind::Finish, Lane::Compute, -1, "finish", {}, false});
    inner_.finish();
  }
  void upload(void*, const void*, std::size_t) override { ++uploads; }

  kernels::Status attention_forward(kernels::AttentionForwardArgs args,
                                    AttentionBackend* backend) override {
    const auto& s = args.shape;
    const auto& q = args.seqs;
    const int e = kernels::dtype_size(args.dtype);
    const int acc = args.dtype == kernels::DType::F64 ? 8 : 4;
    const int out_elem = args.accumulator_out ? acc : e;
    check_hints(args.seqs, "attention_forward");
    kernel("attention_forward",
           {bytes(args.q, elems(q.total_q, s.heads_q, s.head_dim) * e, false),
            bytes(args.k, elems(q.total_k, s.heads_kv, s.head_dim) * e, false),
            bytes(args.v, elems(q.total_k, s.heads_kv, s.head_dim) * e, false),
            bytes(args.out, elems(q.total_q, s.heads_q, s.head_dim) * out_elem, true),
            bytes(args.lse, q.total_q * s.heads_q * acc, true)},
           received(args.k));
    args.stream = stream(Lane::Compute);
    return backend != nullptr ? backend->forward(args) : kernels::attention_forward(args);
  }
  kernels::Status attention_backward(kernels::AttentionBackwardArgs args,
                                     AttentionBackend* backend) override {
    const auto& s = args.shape;
    const auto& q = args.seqs;
    const int e = kernels::dtype_size(args.dtype);
    const int acc = args.dtype == kernels::DType::F64 ? 8 : 4;
    const int g = args.accumulator_grads ? acc : e;
    check_hints(args.seqs, "attention_backward");
    const std::int64_t qe = elems(q.total_q, s.heads_q, s.head_dim);
    const std::int64_t ke = elems(q.total_k, s.heads_kv, s.head_dim);
    std::vector<Range> r{
        bytes(args.q, qe * e, false),    bytes(args.k, ke * e, false),
        bytes(args.v, ke * e, false),    bytes(args.out, qe * e, false),
        bytes(args.dout, qe * e, false), bytes(args.lse, q.total_q * s.heads_q * acc, false),
        bytes(args.dq, qe * g, true),    bytes(args.dk, ke * g, true),
        bytes(args.dv, ke * g, true)};
    kernel("attention_backward", std::move(r), received(args.k));
    args.stream = stream(Lane::Compute);
    return backend != nullptr ? backend->backward(args) : kernels::attention_backward(args);
  }
  kernels::Status merge(kernels::MergeArgs args) override {
    const std::int64_t n = args.rows * args.heads * args.head_dim;
    const int acc = args.dtype == kernels::DType::F64 ? 8 : 4;
    kernel("merge",
           {bytes(args.out_acc, n * acc, true),
            bytes(args.lse_acc, args.rows * args.heads * acc, true),
            bytes(args.out_part, n * kernels::dtype_size(args.dtype), false),
            bytes(args.lse_part, args.rows * args.heads * acc, false)},
           false);
    args.stream = stream(Lane::Compute);
    return kernels::merge_attention_partial(args);
  }
  kernels::Status convert(kernels::ConvertArgs args) override {
    kernel("convert",
           {bytes(args.src, args.count * kernels::dtype_size(args.src_dtype), false),
            bytes(args.dst, args.count * kernels::dtype_size(args.dst_dtype), true)},
           false);
    args.stream = stream(Lane::Compute);
    return kernels::convert_dtype(args);
  }

  // The caller's own work on its stream around the call (producers before, consumers and
  // overwriters after).
  void caller(const char* what, std::vector<Range> ranges) {
    log.push_back({Kind::Caller, Lane::Compute, -1, what, std::move(ranges), false});
  }

  std::vector<Entry> log;
  int uploads = 0;
  std::vector<std::string> hint_errors;

 private:
  void kernel(const char* what, std::vector<Range> ranges, bool ring_block) {
    log.push_back({Kind::Kernel, Lane::Compute, -1, what, std::move(ranges), ring_block});
  }
  // A KV block the ring received (any pointer the exchanges wrote into).
  bool received(const void* k) const {
    for (const Entry& e : log)
      if (e.kind == Kind::Post)
        for (const Range& r : e.ranges)
          if (r.write && r.begin == static_cast<const std::byte*>(k)) return true;
    return false;
  }
  void check_hints(const kernels::PackedSeqs& s, const char* what) {
    if ((s.total_q > 0 && s.max_seqlen_q <= 0) || (s.total_k > 0 && s.max_seqlen_k <= 0))
      hint_errors.push_back(std::string(what) + ": max_seqlen not given");
  }

  HostRingStreams inner_;
  std::array<char, 2> handles_{};  // fake stream handles of the two lanes
};

// The two lanes as vector clocks: an operation on a lane advances that lane's component;
// record() snapshots a lane's clock, wait() merges a snapshot into a lane.
struct Checked {
  std::vector<std::string> races;
  int ring_blocks = 0, overlapped = 0;
};

Checked check_log(const std::vector<Entry>& log) {
  using Clock = std::array<int, 2>;
  auto index = [](Lane lane) { return lane == Lane::Compute ? 0 : 1; };
  std::array<Clock, 2> lane_clock{Clock{0, 0}, Clock{0, 0}};
  std::vector<Clock> events;
  struct Op {
    std::size_t entry;
    int lane;
    Clock clock;
  };
  std::vector<Op> ops;
  for (std::size_t i = 0; i < log.size(); ++i) {
    const Entry& e = log[i];
    const int l = index(e.lane);
    switch (e.kind) {
      case Kind::Record:
        if (static_cast<std::size_t>(e.event) >= events.size()) events.resize(e.event + 1);
        events[static_cast<std::size_t>(e.event)] = lane_clock[l];
        break;
      case Kind::Wait:
        for (int c = 0; c < 2; ++c)
          lane_clock[l][c] =
              std::max(lane_clock[l][c], events[static_cast<std::size_t>(e.event)][c]);
        break;
      case Kind::Finish:  // the compute lane waits for everything the comm lane queued
        for (int c = 0; c < 2; ++c) lane_clock[0][c] = std::max(lane_clock[0][c], lane_clock[1][c]);
        break;
      default:
        ++lane_clock[l][l];
        ops.push_back({i, l, lane_clock[l]});
    }
  }
  // a happens before b iff b's clock has seen a's position on a's lane.
  auto before = [](const Op& a, const Op& b) { return b.clock[a.lane] >= a.clock[a.lane]; };
  Checked out;
  for (std::size_t x = 0; x < ops.size(); ++x) {
    for (std::size_t y = x + 1; y < ops.size(); ++y) {
      const Op& a = ops[x];
      const Op& b = ops[y];
      if (a.lane == b.lane) continue;
      bool conflict = false;
      for (const Range& ra : log[a.entry].ranges)
        for (const Range& rb : log[b.entry].ranges) conflict = conflict || overlap(ra, rb);
      if (conflict && !before(a, b))
        out.races.push_back(log[a.entry].what + " #" + std::to_string(a.entry) + " and " +
                            log[b.entry].what + " #" + std::to_string(b.entry) +
                            " touch the same bytes without an event between them");
    }
  }
  // Overlap: a ring-block kernel with an exchange in flight (posted, not yet ordered before
  // or after it), for every such kernel but the last of each call.
  for (std::size_t x = 0; x < ops.size(); ++x) {
    const Entry& k = log[ops[x].entry];
    if (k.kind != Kind::Kernel || !k.ring_block) continue;
    ++out.ring_blocks;
    for (const Op& p : ops)
      if (log[p.entry].kind == Kind::Post && !before(p, ops[x]) && !before(ops[x], p)) {
        ++out.overlapped;
        break;
      }
  }
  return out;
}

template <typename T>
std::vector<T> values(std::size_t n, std::uint64_t seed) {
  return testing::random_values<T>(n, seed);
}

// Runs forward and backward of `run` (forward(streams), backward(streams)) under the
// recorder, with the caller's producers before and consumers after, and checks the log.
struct Buffers {
  std::vector<float> q, k, v, out, lse, dout, dq, dk, dv;
};

void expect_ordered(RecordingStreams& rec, const Buffers& b, int expected_blocks,
                    const char* what) {
  const Checked c = check_log(rec.log);
  for (const std::string& race : c.races) ADD_FAILURE() << what << ": " << race;
  EXPECT_TRUE(rec.hint_errors.empty()) << what << ": " << rec.hint_errors.front();
  EXPECT_EQ(rec.uploads, 0) << what << ": host buffers need no upload";
  EXPECT_EQ(c.ring_blocks, expected_blocks) << what;
  // Forward and backward each end with one block whose exchange has nothing after it.
  if (expected_blocks > 0) {
    EXPECT_GE(c.overlapped, expected_blocks - 2) << what;
  }
  (void)b;
}

std::vector<Range> all(const Buffers& b, bool write) {
  std::vector<Range> r;
  for (const auto* v : {&b.q, &b.k, &b.v, &b.out, &b.lse, &b.dout, &b.dq, &b.dk, &b.dv})
    r.push_back(bytes(v->data(), static_cast<std::int64_t>(v->size() * sizeof(float)), write));
  return r;
}

TEST(RingStreams, CpRingOrdersEveryTransferAgainstTheKernels) {
  Communicator& comm = world();
  const int w = comm.size();
  const std::vector<std::int64_t> lengths{37, 5, 2 * w + 1, 1};
  const Plan plan = testing::one_wave_plan(w, {w}, static_cast<int>(lengths.size()),
                                           [](int i) { return i != 1; });
  std::vector<int> owners;
  for (std::size_t i = 0; i < lengths.size(); ++i) owners.push_back(static_cast<int>(i) % w);
  const WaveDispatch dispatch(plan, 0, lengths, owners, comm.rank(), w);
  const WaveLayout& layout = dispatch.layout();
  const int hq = 4, hkv = 2, hd = 8;
  const auto rows = static_cast<std::size_t>(layout.rows);
  for (const kernels::DType dtype : {kernels::DType::F32, kernels::DType::BF16}) {
    SCOPED_TRACE(kernels::to_string(dtype));
    const std::size_t e = static_cast<std::size_t>(kernels::dtype_size(dtype));
    // Buffers as floats large enough for either dtype (16-bit data uses their first half).
    Buffers b;
    b.q = values<float>(rows * hq * hd, 1);
    b.k = values<float>(rows * hkv * hd, 2);
    b.v = values<float>(rows * hkv * hd, 3);
    b.dout = values<float>(rows * hq * hd, 4);
    if (e == 2)  // valid bf16 values: the float data reinterpreted has random exponents
      for (auto* v : {&b.q, &b.k, &b.v, &b.dout}) {
        std::vector<float> src = *v;
        auto* bits = reinterpret_cast<std::uint16_t*>(v->data());
        for (std::size_t i = 0; i < src.size(); ++i) bits[i] = float_to_bf16(src[i]);
      }
    b.out.assign(rows * hq * hd, 0);
    b.lse.assign(rows * hq, 0);
    b.dq.assign(rows * hq * hd, 0);
    b.dk.assign(rows * hkv * hd, 0);
    b.dv.assign(rows * hkv * hd, 0);
    CpAttentionContext ctx;
    ctx.dtype = dtype;
    ctx.shape = {hq, hkv, hd, 0.0, true};
    ctx.layout = &layout;
    ctx.world = &comm;

    RecordingStreams rec(comm);
    rec.caller("the caller's producers", all(b, true));
    cp_attention_forward(ctx, rec, b.q.data(), b.k.data(), b.v.data(), b.out.data(), b.lse.data());
    cp_attention_backward(ctx, rec, b.q.data(), b.k.data(), b.v.data(), b.out.data(), b.lse.data(),
                          b.dout.data(), b.dq.data(), b.dk.data(), b.dv.data());
    rec.caller("the caller's consumers", all(b, true));
    // Each rank of a ring of w computes w-1 received blocks forward and w-1 backward.
    const int blocks = w > 1 ? 2 * (w - 1) : 0;
    expect_ordered(rec, b, blocks, "cp ring");

    // The same results as the public entry points (host streams).
    Buffers p = b;
    cp_attention_forward(ctx, p.q.data(), p.k.data(), p.v.data(), p.out.data(), p.lse.data());
    cp_attention_backward(ctx, p.q.data(), p.k.data(), p.v.data(), p.out.data(), p.lse.data(),
                          p.dout.data(), p.dq.data(), p.dk.data(), p.dv.data());
    EXPECT_EQ(std::memcmp(p.out.data(), b.out.data(), rows * hq * hd * e), 0);
    EXPECT_EQ(std::memcmp(p.dk.data(), b.dk.data(), rows * hkv * hd * e), 0);
  }
}

// The encoder's multi-ring: item 0 cut over every rank, item 1 over all but the last in
// reverse order (a ring of another degree advancing in the same steps), a local span.
TEST(RingStreams, EncoderRingsOrderEveryTransferAgainstTheKernels) {
  Communicator& comm = world();
  const int w = comm.size();
  const int me = comm.rank();
  EncoderWave wave;
  wave.cu_seqlens = {0};
  auto add = [&](int item, std::vector<int> ring, std::vector<std::int64_t> ring_rows) {
    EncoderPiece piece;
    piece.item = item;
    const auto it = std::find(ring.begin(), ring.end(), me);
    if (ring.size() > 1 && it == ring.end()) return;
    piece.part = ring.size() > 1 ? static_cast<int>(it - ring.begin()) : 0;
    const std::int64_t rows = ring_rows[static_cast<std::size_t>(piece.part)];
    piece.ring = std::move(ring);
    piece.ring_rows = std::move(ring_rows);
    wave.sequence_piece.push_back(static_cast<int>(wave.pieces.size()));
    wave.pieces.push_back(piece);
    wave.cu_seqlens.push_back(wave.cu_seqlens.back() + static_cast<std::int32_t>(rows));
    wave.patch_rows += rows;
  };
  std::vector<int> all_ranks;
  std::vector<std::int64_t> rows0;
  for (int r = 0; r < w; ++r) {
    all_ranks.push_back(r);
    rows0.push_back(5 + 3 * r);
  }
  add(0, all_ranks, rows0);
  if (w > 2) {
    std::vector<int> ring;
    std::vector<std::int64_t> rows1;
    for (int r = w - 2; r >= 0; --r) {
      ring.push_back(r);
      rows1.push_back(4 + r);
    }
    add(1, ring, rows1);
  }
  add(2, {}, {7});  // a local span

  const int hq = 2, hkv = 2, hd = 8;
  const auto rows = static_cast<std::size_t>(wave.patch_rows);
  Buffers b;
  b.q = values<float>(rows * hq * hd, 11);
  b.k = values<float>(rows * hkv * hd, 12);
  b.v = values<float>(rows * hkv * hd, 13);
  b.dout = values<float>(rows * hq * hd, 14);
  b.out.assign(rows * hq * hd, 0);
  b.lse.assign(rows * hq, 0);
  b.dq.assign(rows * hq * hd, 0);
  b.dk.assign(rows * hkv * hd, 0);
  b.dv.assign(rows * hkv * hd, 0);
  EncoderAttentionContext ctx;
  ctx.dtype = kernels::DType::F32;
  ctx.shape = {hq, hkv, hd, 0.0, false};
  ctx.wave = &wave;
  ctx.world = &comm;

  RecordingStreams rec(comm);
  rec.caller("the caller's producers", all(b, true));
  encoder_attention_forward(ctx, rec, b.q.data(), b.k.data(), b.v.data(), b.out.data(),
                            b.lse.data());
  encoder_attention_backward(ctx, rec, b.q.data(), b.k.data(), b.v.data(), b.out.data(),
                             b.lse.data(), b.dout.data(), b.dq.data(), b.dk.data(), b.dv.data());
  rec.caller("the caller's consumers", all(b, true));
  expect_ordered(rec, b, w > 1 ? 2 * (w - 1) : 0, "encoder rings");

  Buffers p = b;
  encoder_attention_forward(ctx, p.q.data(), p.k.data(), p.v.data(), p.out.data(), p.lse.data());
  encoder_attention_backward(ctx, p.q.data(), p.k.data(), p.v.data(), p.out.data(), p.lse.data(),
                             p.dout.data(), p.dq.data(), p.dk.data(), p.dv.data());
  EXPECT_EQ(p.out, b.out);
  EXPECT_EQ(p.dk, b.dk);
}

}  // namespace
}  // namespace dhp
