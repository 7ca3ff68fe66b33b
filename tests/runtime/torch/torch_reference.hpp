// The LibTorch side of the adapter tests: an fp64 attention reference on whole packed
// sequences (LibTorch ops, autograd for the gradients, or explicit formulas with the
// rounded out of a 16-bit backward) and the check of cp_attention against it on one CP
// group spanning a communicator.
#pragma once

#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "dhp/dispatch.hpp"
#include "dhp/group_pool.hpp"
#include "dhp/torch.hpp"
#include "runtime_test_util.hpp"

namespace dhp::testing {

// softmax(Q K^T * scale + causal mask) V per sequence, GQA by repeating KV heads.
inline at::Tensor reference_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                      const std::vector<std::int64_t>& cu) {
  const std::int64_t group = q.size(1) / k.size(1);
  const double scale = 1.0 / std::sqrt(static_cast<double>(q.size(2)));
  std::vector<at::Tensor> outs;
  for (std::size_t s = 0; s + 1 < cu.size(); ++s) {
    const std::int64_t b = cu[s], len = cu[s + 1] - cu[s];
    const at::Tensor qs = q.narrow(0, b, len).transpose(0, 1);  // [h, L, d]
    const at::Tensor ks = k.narrow(0, b, len).repeat_interleave(group, 1).transpose(0, 1);
    const at::Tensor vs = v.narrow(0, b, len).repeat_interleave(group, 1).transpose(0, 1);
    at::Tensor scores = at::matmul(qs, ks.transpose(1, 2)) * scale;  // [h, L, L]
    const at::Tensor future = at::ones({len, len}, at::kBool).triu(1);
    scores = scores.masked_fill(future, -std::numeric_limits<double>::infinity());
    outs.push_back(at::matmul(at::softmax(scores, -1), vs).transpose(0, 1));  // [L, h, d]
  }
  return at::cat(outs, 0);
}

// The gradients of reference_attention for dout, by the explicit formulas in fp64, with
// delta = rowsum(dO * round(out)): the rounded out a 16-bit backward is given, so that the
// comparison measures the backward's own error (dV = P^T dO, dS = P (dO V^T - delta),
// dQ = scale dS K, dK = scale dS^T Q, GQA heads summed).
inline std::vector<at::Tensor> reference_gradients(const at::Tensor& q, const at::Tensor& k,
                                                   const at::Tensor& v, const at::Tensor& dout,
                                                   const std::vector<std::int64_t>& cu,
                                                   at::ScalarType rounding) {
  const std::int64_t group = q.size(1) / k.size(1);
  const double scale = 1.0 / std::sqrt(static_cast<double>(q.size(2)));
  at::Tensor dq = at::zeros_like(q), dk = at::zeros_like(k), dv = at::zeros_like(v);
  for (std::size_t s = 0; s + 1 < cu.size(); ++s) {
    const std::int64_t b = cu[s], len = cu[s + 1] - cu[s];
    const at::Tensor qs = q.narrow(0, b, len).transpose(0, 1);
    const at::Tensor ks = k.narrow(0, b, len).repeat_interleave(group, 1).transpose(0, 1);
    const at::Tensor vs = v.narrow(0, b, len).repeat_interleave(group, 1).transpose(0, 1);
    const at::Tensor dos = dout.narrow(0, b, len).transpose(0, 1);
    at::Tensor scores = at::matmul(qs, ks.transpose(1, 2)) * scale;
    scores = scores.masked_fill(at::ones({len, len}, at::kBool).triu(1),
                                -std::numeric_limits<double>::infinity());
    const at::Tensor p = at::softmax(scores, -1);                           // [h, L, L]
    const at::Tensor out = at::matmul(p, vs).to(rounding).to(at::kDouble);  // as stored
    const at::Tensor delta = (dos * out).sum(-1, true);                     // [h, L, 1]
    const at::Tensor ds = p * (at::matmul(dos, vs.transpose(1, 2)) - delta);
    const at::Tensor dqs = at::matmul(ds, ks) * scale;                  // [h, L, d]
    const at::Tensor dks = at::matmul(ds.transpose(1, 2), qs) * scale;  // [h, L, d] per q head
    const at::Tensor dvs = at::matmul(p.transpose(1, 2), dos);
    dq.narrow(0, b, len).copy_(dqs.transpose(0, 1));
    auto per_kv_head = [&](const at::Tensor& t) {  // [hq, L, d] -> [L, hkv, d]
      return t.reshape({k.size(1), group, len, q.size(2)}).sum(1).transpose(0, 1);
    };
    dk.narrow(0, b, len).copy_(per_kv_head(dks));
    dv.narrow(0, b, len).copy_(per_kv_head(dvs));
  }
  return {dq, dk, dv};
}

// The group's attention kind and, for UlyssesRing, the adapter options' node size and pool;
// the tensors' device.
struct AttentionSetup {
  CpAttention attention = CpAttention::Ring;
  int ranks_per_node = 0;
  GroupPool* pool = nullptr;
  bool prewarm = true;  // acquire the plan's groups in `pool` first
  at::Device device = at::kCPU;
};

// The largest relative error bound of one rounding to `dtype` (unit roundoff).
inline double unit_roundoff(at::ScalarType dtype) {
  return dtype == at::kBFloat16 ? 0x1p-8 : dtype == at::kHalf ? 0x1p-11 : 0.0;
}

// CP attention through the adapter on `comm` (one group of every rank) against the fp64
// LibTorch reference of the whole batch, out and gradients, on this rank's rows.
inline void check_matches_reference(Communicator& comm, at::ScalarType dtype, double tolerance,
                                    std::uint64_t seed, const AttentionSetup& setup = {}) {
  const bool sixteen_bit = unit_roundoff(dtype) > 0;
  const int hq = 4, hkv = 2, hd = sixteen_bit ? 80 : 8;
  std::mt19937_64 gen(seed);
  const int num_seqs = 5;
  std::vector<std::int64_t> lengths;  // odd lengths, one of 1
  for (int i = 0; i < num_seqs; ++i)
    lengths.push_back(i == 0 ? 1 : 2 * static_cast<std::int64_t>(gen() % 15) + 3);
  std::vector<int> owners;
  for (int i = 0; i < num_seqs; ++i) owners.push_back(i % comm.size());
  // One group over the whole world: sequences 0 and 3 Whole, the rest Zigzag.
  const Plan plan = testing::one_wave_plan(
      comm.size(), {comm.size()}, num_seqs, [](int i) { return i % 3 != 0; }, setup.attention);
  if (setup.pool != nullptr && setup.prewarm) setup.pool->prewarm(plan);
  const WaveDispatch dispatch(plan, 0, lengths, owners, comm.rank(), comm.size());
  const WaveLayout& layout = dispatch.layout();

  std::vector<std::int64_t> cu{0};
  for (auto l : lengths) cu.push_back(cu.back() + l);
  const std::int64_t total = cu.back();
  // 16-bit: the reference sees the inputs as the adapter does (rounded to the dtype).
  auto global = [&](int heads, std::uint64_t s) {
    const at::Tensor t =
        at::tensor(testing::random_values<double>(static_cast<std::size_t>(total * heads * hd), s),
                   at::kDouble)
            .reshape({total, heads, hd});
    return sixteen_bit ? t.to(dtype).to(at::kDouble) : t;
  };
  const at::Tensor q = global(hq, seed + 1).requires_grad_();
  const at::Tensor k = global(hkv, seed + 2).requires_grad_();
  const at::Tensor v = global(hkv, seed + 3).requires_grad_();
  const at::Tensor dout = global(hq, seed + 4);
  const at::Tensor ref = reference_attention(q, k, v, cu);
  ref.backward(dout);

  // Global row of every local row.
  std::vector<std::int64_t> rows(static_cast<std::size_t>(layout.rows));
  for (const LocalPiece& piece : layout.pieces)
    for (std::int64_t r = 0; r < piece.rows; ++r) {
      const auto local = static_cast<std::size_t>(piece.offset + r);
      rows[local] = cu[static_cast<std::size_t>(piece.sample)] + layout.positions[local];
    }
  const at::Tensor index = at::tensor(rows, at::kLong);
  auto local = [&](const at::Tensor& t) {
    return t.detach().index_select(0, index).to(dtype).to(setup.device).contiguous();
  };
  const at::Tensor lq = local(q).requires_grad_();
  const at::Tensor lk = local(k).requires_grad_();
  const at::Tensor lv = local(v).requires_grad_();

  CpAttentionOptions options;
  options.layout = &layout;
  options.world = &comm;
  options.pool = setup.pool;
  options.ranks_per_node = setup.ranks_per_node;
  const at::Tensor out = cp_attention(lq, lk, lv, options);
  // A loss whose gradient w.r.t. out is the reference's dout rows.
  (out * local(dout)).sum().backward();

  EXPECT_EQ(out.scalar_type(), dtype);
  EXPECT_EQ(lq.grad().scalar_type(), dtype);
  EXPECT_EQ(out.device(), setup.device);
  // |got - want| / (1 + |want|), want in fp64 (16-bit: within one rounding of it).
  auto max_error = [&](const at::Tensor& got, const at::Tensor& want) {
    const at::Tensor w = want.detach().index_select(0, index).to(at::kDouble);
    const at::Tensor g = got.detach().to(at::kCPU).to(at::kDouble);
    return ((g - w).abs() / (1 + w.abs())).max().item<double>();
  };
  std::vector<at::Tensor> want{q.grad(), k.grad(), v.grad()};
  if (sixteen_bit) want = reference_gradients(q.detach(), k.detach(), v.detach(), dout, cu, dtype);
  const double errors[4] = {max_error(out, ref), max_error(lq.grad(), want[0]),
                            max_error(lk.grad(), want[1]), max_error(lv.grad(), want[2])};
  if (comm.rank() == 0 && sixteen_bit)
    std::printf(
        "%s %s degree %d: worst scaled error out %.3g dq %.3g dk %.3g dv %.3g (bound %.3g)\n",
        setup.device.str().c_str(), std::string(c10::toString(dtype)).c_str(), comm.size(),
        errors[0], errors[1], errors[2], errors[3], tolerance);
  EXPECT_LT(errors[0], tolerance) << "out, rank " << comm.rank();
  EXPECT_LT(errors[1], tolerance) << "dq, rank " << comm.rank();
  EXPECT_LT(errors[2], tolerance) << "dk, rank " << comm.rank();
  EXPECT_LT(errors[3], tolerance) << "dv, rank " << comm.rank();
}

}  // namespace dhp::testing
