// BF16/F16 attention and merge on the CPU: the inputs are widened to float (exact: every
// 16-bit value is a float), the float kernels compute with fp32 accumulation and an fp32
// lse, and each 16-bit output is rounded once, to nearest even. The CUDA kernels keep the
// same contract (fp32 accumulators, fp32 lse, one rounding), so the CPU is their reference
// and the runtime's 16-bit path (ring merge included) runs and is tested without a GPU.
#include <cstdint>
#include <vector>

#include "cpu/cpu_kernels.hpp"

namespace dhp::kernels::cpu {
namespace {

std::vector<float> widen(DType dtype, const void* src, std::int64_t count) {
  std::vector<float> out(static_cast<std::size_t>(count));
  ConvertArgs args;
  args.src_dtype = dtype;
  args.dst_dtype = DType::F32;
  args.count = count;
  args.src = src;
  args.dst = out.data();
  cpu::convert_dtype(args);
  return out;
}

void narrow(const std::vector<float>& src, DType dtype, void* dst) {
  ConvertArgs args;
  args.src_dtype = DType::F32;
  args.dst_dtype = dtype;
  args.count = static_cast<std::int64_t>(src.size());
  args.src = src.data();
  args.dst = dst;
  cpu::convert_dtype(args);
}

}  // namespace

void attention_forward_16bit(const AttentionForwardArgs& args) {
  const std::int64_t q_elems = args.seqs.total_q * args.shape.heads_q * args.shape.head_dim;
  const std::int64_t kv_elems = args.seqs.total_k * args.shape.heads_kv * args.shape.head_dim;
  const std::vector<float> q = widen(args.dtype, args.q, q_elems);
  const std::vector<float> k = widen(args.dtype, args.k, kv_elems);
  const std::vector<float> v = widen(args.dtype, args.v, kv_elems);
  AttentionForwardArgs f = args;
  f.dtype = DType::F32;
  f.q = q.data();
  f.k = k.data();
  f.v = v.data();              // lse is already float (the accumulator type)
  if (args.accumulator_out) {  // out is a float buffer
    attention_forward<float>(f);
    return;
  }
  std::vector<float> out(static_cast<std::size_t>(q_elems));
  f.out = out.data();
  attention_forward<float>(f);
  narrow(out, args.dtype, args.out);
}

void attention_backward_16bit(const AttentionBackwardArgs& args) {
  const std::int64_t q_elems = args.seqs.total_q * args.shape.heads_q * args.shape.head_dim;
  const std::int64_t kv_elems = args.seqs.total_k * args.shape.heads_kv * args.shape.head_dim;
  const std::vector<float> q = widen(args.dtype, args.q, q_elems);
  const std::vector<float> k = widen(args.dtype, args.k, kv_elems);
  const std::vector<float> v = widen(args.dtype, args.v, kv_elems);
  const std::vector<float> out = widen(args.dtype, args.out, q_elems);
  const std::vector<float> dout = widen(args.dtype, args.dout, q_elems);
  AttentionBackwardArgs f = args;
  f.dtype = DType::F32;
  f.q = q.data();
  f.k = k.data();
  f.v = v.data();
  f.out = out.data();
  f.dout = dout.data();
  if (args.accumulator_grads) {  // dq, dk, dv are float already: accumulate into them
    attention_backward<float>(f);
    return;
  }
  // 16-bit gradients: the sum (the previous value when accumulating, plus this block) is
  // formed in fp32 and rounded once.
  std::vector<float> dq, dk, dv;
  if (args.accumulate) {
    dq = widen(args.dtype, args.dq, q_elems);
    dk = widen(args.dtype, args.dk, kv_elems);
    dv = widen(args.dtype, args.dv, kv_elems);
  } else {
    dq.resize(static_cast<std::size_t>(q_elems));
    dk.resize(static_cast<std::size_t>(kv_elems));
    dv.resize(static_cast<std::size_t>(kv_elems));
  }
  f.dq = dq.data();
  f.dk = dk.data();
  f.dv = dv.data();
  attention_backward<float>(f);
  narrow(dq, args.dtype, args.dq);
  narrow(dk, args.dtype, args.dk);
  narrow(dv, args.dtype, args.dv);
}

void merge_attention_partial_16bit(const MergeArgs& args) {
  const std::vector<float> part =
      widen(args.dtype, args.out_part, args.rows * args.heads * args.head_dim);
  MergeArgs f = args;
  f.dtype = DType::F32;
  f.out_part = part.data();
  merge_attention_partial<float>(f);
}

}  // namespace dhp::kernels::cpu
