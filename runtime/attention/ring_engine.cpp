#include "attention/ring_engine.hpp"

#include <algorithm>
#include <cstddef>

#include "attention/scratch.hpp"
#include "dhp/error.hpp"
#include "dhp/log.hpp"

namespace dhp {
namespace {

using kernels::DType;
using kernels::Status;
using Lane = RingStreams::Lane;

bool is_16bit(DType dtype) { return dtype == DType::BF16 || dtype == DType::F16; }

// The type results accumulate in across steps: fp32 for 16-bit data, else the data type.
DType accumulation_type(DType dtype) { return is_16bit(dtype) ? DType::F32 : dtype; }

void check_kernel(Status status, const char* kernel, const RingWork& work) {
  if (status == Status::Ok) return;
  DHP_THROW(InvalidArgument, "{} failed on {}: {}: {}", kernel, work.where,
            kernels::status_string(status), kernels::last_error());
}

int longest(const std::vector<std::int32_t>& cu) {
  int most = 0;
  for (std::size_t b = 0; b + 1 < cu.size(); ++b) most = std::max(most, cu[b + 1] - cu[b]);
  return most;
}

void* at_row(const void* base, std::int64_t row, std::int64_t row_elems, std::size_t elem) {
  return static_cast<std::byte*>(const_cast<void*>(base)) +
         static_cast<std::size_t>(row * row_elems) * elem;
}

// Where the kernels read the index arrays: the host vectors themselves, or one device
// buffer filled by a single upload on the compute lane (no host synchronisation).
class Indices {
 public:
  Indices(const RingWork& work, RingStreams& streams, Scratch& scratch) {
    std::vector<const std::vector<std::int32_t>*> arrays{&work.cu, &work.positions};
    for (std::size_t s = 1; s < work.steps.size(); ++s) {
      arrays.push_back(&work.steps[s].cu_k);
      arrays.push_back(&work.steps[s].k_positions);
    }
    pointers_.assign(arrays.size(), nullptr);
    if (!streams.on_device()) {
      for (std::size_t i = 0; i < arrays.size(); ++i)
        if (!arrays[i]->empty()) pointers_[i] = arrays[i]->data();
      return;
    }
    std::vector<std::int32_t> packed;
    std::vector<std::size_t> offsets;
    for (const auto* a : arrays) {
      offsets.push_back(packed.size());
      packed.insert(packed.end(), a->begin(), a->end());
    }
    auto* device = static_cast<std::int32_t*>(scratch.bytes(packed.size() * sizeof(std::int32_t)));
    streams.upload(device, packed.data(), packed.size() * sizeof(std::int32_t));
    for (std::size_t i = 0; i < arrays.size(); ++i)
      if (!arrays[i]->empty()) pointers_[i] = device + offsets[i];
  }
  const std::int32_t* cu() const { return pointers_[0]; }
  const std::int32_t* positions() const { return pointers_[1]; }
  const std::int32_t* cu_k(int step) const { return pointers_[2 * static_cast<std::size_t>(step)]; }
  const std::int32_t* k_positions(int step) const {
    return pointers_[2 * static_cast<std::size_t>(step) + 1];
  }

 private:
  std::vector<const std::int32_t*> pointers_;
};

struct Sizes {
  std::size_t elem = 0;  // data
  std::size_t acc = 0;   // accumulation type (lse, merged out, travelling dK/dV)
  std::int64_t q_row = 0, kv_row = 0;
};

Sizes sizes_of(const RingWork& work) {
  Sizes s;
  s.elem = static_cast<std::size_t>(kernels::dtype_size(work.dtype));
  s.acc = static_cast<std::size_t>(kernels::dtype_size(accumulation_type(work.dtype)));
  s.q_row = static_cast<std::int64_t>(work.shape.heads_q) * work.shape.head_dim;
  s.kv_row = static_cast<std::int64_t>(work.shape.heads_kv) * work.shape.head_dim;
  return s;
}

// The two buffers the ring steps alternate between (one in use, one arriving).
struct StepBuffers {
  void* a[2] = {nullptr, nullptr};
  void* b[2] = {nullptr, nullptr};
};

StepBuffers step_buffers(const RingWork& work, Scratch& scratch, std::int64_t row_elems,
                         std::size_t elem) {
  std::int64_t most = 0;
  for (std::size_t s = 1; s < work.steps.size(); ++s) most = std::max(most, work.steps[s].rows);
  StepBuffers buffers;
  const auto bytes = static_cast<std::size_t>(most * row_elems) * elem;
  for (int i = 0; i < 2; ++i) {
    buffers.a[i] = scratch.bytes(bytes);
    buffers.b[i] = scratch.bytes(bytes);
  }
  return buffers;
}

// The exchange that brings the blocks of step `s` (s >= 1) into step buffer (ka, kb) and
// sends on those of step s-1: the own rows of (own_a, own_b) at s = 1, else (prev_a,
// prev_b). Links whose ring has fewer steps take no part. Used for K/V (tags k, v) and,
// shifted one step, for the dK/dV accumulators (see the backward).
struct Pair {
  const void* a;
  const void* b;
};

void add_link_ops(std::vector<P2POp>& ops, const RingLink& link, DataType type,
                  std::int64_t row_elems, std::size_t elem, Pair send, std::int64_t send_rows,
                  void* recv_a, void* recv_b, std::int64_t recv_rows, int tag_a, int tag_b) {
  ops.push_back({P2POp::Kind::Send, link.next, const_cast<void*>(send.a), send_rows * row_elems,
                 type, tag_a});
  ops.push_back({P2POp::Kind::Send, link.next, const_cast<void*>(send.b), send_rows * row_elems,
                 type, tag_b});
  ops.push_back({P2POp::Kind::Recv, link.prev, recv_a, recv_rows * row_elems, type, tag_a});
  ops.push_back({P2POp::Kind::Recv, link.prev, recv_b, recv_rows * row_elems, type, tag_b});
  (void)elem;
}

std::vector<P2POp> kv_ops(const RingWork& work, const Sizes& sz, int s, const void* k,
                          const void* v, const StepBuffers& kv, int into) {
  std::vector<P2POp> ops;
  const DataType type = data_type(work.dtype);
  const RingStepBlock& to = work.steps[static_cast<std::size_t>(s)];
  for (std::size_t i = 0; i < work.links.size(); ++i) {
    const RingLink& link = work.links[i];
    if (s >= link.degree) continue;
    Pair send{};
    std::int64_t send_rows = 0;
    if (s == 1) {
      send = {at_row(k, link.own_begin, sz.kv_row, sz.elem),
              at_row(v, link.own_begin, sz.kv_row, sz.elem)};
      send_rows = link.own_rows;
    } else {
      const RingStepBlock& from = work.steps[static_cast<std::size_t>(s - 1)];
      send = {at_row(kv.a[1 - into], from.offset[i], sz.kv_row, sz.elem),
              at_row(kv.b[1 - into], from.offset[i], sz.kv_row, sz.elem)};
      send_rows = from.link_rows[i];
    }
    add_link_ops(ops, link, type, sz.kv_row, sz.elem, send, send_rows,
                 at_row(kv.a[into], to.offset[i], sz.kv_row, sz.elem),
                 at_row(kv.b[into], to.offset[i], sz.kv_row, sz.elem), to.link_rows[i], link.tag_k,
                 link.tag_v);
  }
  return ops;
}

// After the backward of step s (s = 0: the local pass), every link still under way sends the
// dK/dV accumulator of the block it held (own rows of the home accumulators at s = 0) on,
// and receives the next block's into grads[1 - cur]; a link whose ring ends with step s
// receives its own block's accumulator, complete, home (its rows of dk_home/dv_home).
std::vector<P2POp> grad_ops(const RingWork& work, const Sizes& sz, int s, void* dk_home,
                            void* dv_home, const StepBuffers& grads, int cur) {
  std::vector<P2POp> ops;
  const DataType type = data_type(accumulation_type(work.dtype));
  for (std::size_t i = 0; i < work.links.size(); ++i) {
    const RingLink& link = work.links[i];
    if (s >= link.degree || link.degree < 2) continue;
    Pair send{};
    std::int64_t send_rows = 0;
    if (s == 0) {
      send = {at_row(dk_home, link.own_begin, sz.kv_row, sz.acc),
              at_row(dv_home, link.own_begin, sz.kv_row, sz.acc)};
      send_rows = link.own_rows;
    } else {
      const RingStepBlock& held = work.steps[static_cast<std::size_t>(s)];
      send = {at_row(grads.a[cur], held.offset[i], sz.kv_row, sz.acc),
              at_row(grads.b[cur], held.offset[i], sz.kv_row, sz.acc)};
      send_rows = held.link_rows[i];
    }
    void* recv_a = nullptr;
    void* recv_b = nullptr;
    std::int64_t recv_rows = 0;
    if (s + 1 == link.degree) {  // the last hop: home
      recv_a = at_row(dk_home, link.own_begin, sz.kv_row, sz.acc);
      recv_b = at_row(dv_home, link.own_begin, sz.kv_row, sz.acc);
      recv_rows = link.own_rows;
    } else {
      const RingStepBlock& next = work.steps[static_cast<std::size_t>(s + 1)];
      const int into = s == 0 ? 0 : 1 - cur;
      recv_a = at_row(grads.a[into], next.offset[i], sz.kv_row, sz.acc);
      recv_b = at_row(grads.b[into], next.offset[i], sz.kv_row, sz.acc);
      recv_rows = next.link_rows[i];
    }
    add_link_ops(ops, link, type, sz.kv_row, sz.acc, send, send_rows, recv_a, recv_b, recv_rows,
                 link.tag_dk, link.tag_dv);
  }
  return ops;
}

kernels::PackedSeqs packed(const RingWork& work, const std::int32_t* cu_k,
                           const std::int32_t* k_positions, std::int64_t total_k, int max_k,
                           const Indices& idx) {
  kernels::PackedSeqs seqs;
  seqs.cu_seqlens_q = idx.cu();
  seqs.cu_seqlens_k = cu_k;
  seqs.q_positions = idx.positions();
  seqs.k_positions = k_positions;
  seqs.num_seqs = work.num_seqs();
  seqs.total_q = work.rows;
  seqs.total_k = total_k;
  seqs.max_seqlen_q = longest(work.cu);
  seqs.max_seqlen_k = max_k;
  return seqs;
}

kernels::PackedSeqs local_seqs(const RingWork& work, const Indices& idx) {
  return packed(work, idx.cu(), idx.positions(), work.rows, longest(work.cu), idx);
}

kernels::PackedSeqs step_seqs(const RingWork& work, int s, const Indices& idx) {
  const RingStepBlock& block = work.steps[static_cast<std::size_t>(s)];
  return packed(work, idx.cu_k(s), idx.k_positions(s), block.rows, longest(block.cu_k), idx);
}

// The backend of one attention call (step 0: the local keys; s >= 1: the block held at step
// s), from the measured table; null (dhp's kernels) without one. Forward and backward of a
// call ask with the same shape and the forward + backward time, so that they agree.
AttentionBackend* choose_backend(const RingWork& work, int step,
                                 const kernels::AttentionForwardArgs& shape_of_call,
                                 bool accumulate) {
  if (work.backends == nullptr) return nullptr;
  const auto host = [](const std::vector<std::int32_t>& v) {
    return v.empty() ? nullptr : v.data();
  };
  const RingStepBlock* block = step > 0 ? &work.steps[static_cast<std::size_t>(step)] : nullptr;
  AttentionCall call = AttentionCall::of(
      shape_of_call, work.cu.data(), block ? block->cu_k.data() : work.cu.data(),
      host(work.positions), block ? host(block->k_positions) : host(work.positions));
  call.accumulate = accumulate;
  const AttentionBackends::Choice choice = work.backends->choose(call, true);
  DHP_LOG_DEBUG("{}: attention step {}: {}", work.where, step, choice.why);
  return choice.backend;
}

kernels::AttentionForwardArgs shape_of(const kernels::AttentionBackwardArgs& b) {
  kernels::AttentionForwardArgs f;
  f.dtype = b.dtype;
  f.device = b.device;
  f.shape = b.shape;
  f.seqs = b.seqs;
  f.accumulator_out = b.accumulator_grads;
  return f;
}

// The KV step buffers and the first exchange (the own KV block out, step 1's in), posted
// before the local attention so that they overlap; nothing without a ring.
StepBuffers start_kv_ring(const RingWork& work, RingStreams& streams, Scratch& scratch,
                          const Sizes& sz, const void* k, const void* v) {
  if (work.num_steps() < 2) return {};
  const StepBuffers kv = step_buffers(work, scratch, sz.kv_row, sz.elem);
  streams.wait(Lane::Comm, streams.record(Lane::Compute));  // k, v are ready
  streams.post(kv_ops(work, sz, 1, k, v, kv, 0));
  return kv;
}

void convert(RingStreams& streams, const RingWork& work, DType from, DType to, std::int64_t count,
             const void* src, void* dst) {
  kernels::ConvertArgs args;
  args.src_dtype = from;
  args.dst_dtype = to;
  args.device = streams.on_device() ? Device::CUDA : Device::CPU;
  args.count = count;
  args.src = src;
  args.dst = dst;
  check_kernel(streams.convert(args), "convert_dtype", work);
}

}  // namespace

void ring_attention_forward(const RingWork& work, RingStreams& streams, const void* q,
                            const void* k, const void* v, void* out, void* lse) {
  const Sizes sz = sizes_of(work);
  const int steps = work.num_steps();
  const bool wide = is_16bit(work.dtype) && steps > 1;  // merge in fp32, round once
  Scratch scratch(work.allocator);
  const Indices idx(work, streams, scratch);

  const StepBuffers kv = start_kv_ring(work, streams, scratch, sz, k, v);
  const std::int64_t out_elems = work.rows * sz.q_row;
  void* out_acc = wide ? scratch.bytes(static_cast<std::size_t>(out_elems) * sz.acc) : out;

  kernels::AttentionForwardArgs args;
  args.dtype = work.dtype;
  args.device = streams.on_device() ? Device::CUDA : Device::CPU;
  args.shape = work.shape;
  args.seqs = local_seqs(work, idx);
  args.q = q;
  args.k = k;
  args.v = v;
  args.out = out_acc;
  args.lse = lse;
  args.accumulator_out = wide;
  check_kernel(streams.attention_forward(args, choose_backend(work, 0, args, false)),
               "attention_forward (local block)", work);
  if (steps == 1) return;

  void* part_out = scratch.bytes(static_cast<std::size_t>(out_elems) * (wide ? sz.acc : sz.elem));
  void* part_lse = scratch.bytes(static_cast<std::size_t>(work.rows * work.shape.heads_q) * sz.acc);
  kernels::MergeArgs merge;
  merge.dtype = wide ? DType::F32 : work.dtype;  // the partial outputs' type
  merge.device = args.device;
  merge.rows = work.rows;
  merge.heads = work.shape.heads_q;
  merge.head_dim = work.shape.head_dim;
  merge.out_acc = out_acc;
  merge.lse_acc = lse;
  merge.out_part = part_out;
  merge.lse_part = part_lse;
  for (int s = 1; s < steps; ++s) {
    const int cur = (s - 1) % 2;
    streams.wait(Lane::Compute, streams.record(Lane::Comm));  // block s has arrived
    if (s + 1 < steps) {  // the next block travels while this one is computed
      streams.wait(Lane::Comm, streams.record(Lane::Compute));  // kv[1 - cur] is read
      streams.post(kv_ops(work, sz, s + 1, k, v, kv, 1 - cur));
    }
    args.seqs = step_seqs(work, s, idx);
    args.k = kv.a[cur];
    args.v = kv.b[cur];
    args.out = part_out;
    args.lse = part_lse;
    check_kernel(streams.attention_forward(args, choose_backend(work, s, args, false)),
                 "attention_forward (ring block)", work);
    check_kernel(streams.merge(merge), "merge_attention_partial", work);
  }
  // Nothing to finish: the last step waited for the last exchange.
  if (wide) convert(streams, work, DType::F32, work.dtype, out_elems, out_acc, out);
}

void ring_attention_backward(const RingWork& work, RingStreams& streams, const void* q,
                             const void* k, const void* v, const void* out, const void* lse,
                             const void* dout, void* dq, void* dk, void* dv) {
  const Sizes sz = sizes_of(work);
  const int steps = work.num_steps();
  const bool wide = is_16bit(work.dtype) && steps > 1;  // accumulate in fp32, round once
  Scratch scratch(work.allocator);
  const Indices idx(work, streams, scratch);

  const StepBuffers kv = start_kv_ring(work, streams, scratch, sz, k, v);
  const std::int64_t q_elems = work.rows * sz.q_row, kv_elems = work.rows * sz.kv_row;
  auto accumulator = [&](void* data, std::int64_t elems) {
    return wide ? scratch.bytes(static_cast<std::size_t>(elems) * sz.acc) : data;
  };
  void* dq_acc = accumulator(dq, q_elems);
  void* dk_acc = accumulator(dk, kv_elems);
  void* dv_acc = accumulator(dv, kv_elems);

  kernels::AttentionBackwardArgs args;
  args.dtype = work.dtype;
  args.device = streams.on_device() ? Device::CUDA : Device::CPU;
  args.shape = work.shape;
  args.seqs = local_seqs(work, idx);
  args.q = q;
  args.k = k;
  args.v = v;
  args.out = out;
  args.dout = dout;
  args.lse = lse;
  args.dq = dq_acc;
  args.dk = dk_acc;
  args.dv = dv_acc;
  args.accumulate = false;
  args.accumulator_grads = wide;
  check_kernel(streams.attention_backward(args, choose_backend(work, 0, shape_of(args), false)),
               "attention_backward (local block)", work);
  if (steps == 1) return;

  // The dK/dV of the block held at each step follow it, one hop behind the KV blocks.
  const StepBuffers grads = step_buffers(work, scratch, sz.kv_row, sz.acc);
  streams.wait(Lane::Comm, streams.record(Lane::Compute));  // the own accumulators are written
  streams.post(grad_ops(work, sz, 0, dk_acc, dv_acc, grads, 0));
  args.accumulate = true;
  for (int s = 1; s < steps; ++s) {
    const int cur = (s - 1) % 2;
    streams.wait(Lane::Compute, streams.record(Lane::Comm));  // block s and its dK/dV arrived
    if (s + 1 < steps) {
      streams.wait(Lane::Comm, streams.record(Lane::Compute));
      streams.post(kv_ops(work, sz, s + 1, k, v, kv, 1 - cur));
    }
    args.seqs = step_seqs(work, s, idx);
    args.k = kv.a[cur];
    args.v = kv.b[cur];
    args.dk = grads.a[cur];
    args.dv = grads.b[cur];
    check_kernel(streams.attention_backward(args, choose_backend(work, s, shape_of(args), true)),
                 "attention_backward (ring block)", work);
    streams.wait(Lane::Comm, streams.record(Lane::Compute));  // grads[cur] is complete
    streams.post(grad_ops(work, sz, s, dk_acc, dv_acc, grads, cur));
  }
  streams.finish();
  if (wide) {
    convert(streams, work, DType::F32, work.dtype, q_elems, dq_acc, dq);
    convert(streams, work, DType::F32, work.dtype, kv_elems, dk_acc, dk);
    convert(streams, work, DType::F32, work.dtype, kv_elems, dv_acc, dv);
  }
}

}  // namespace dhp
