// Context-parallel ring attention over a packed batch in one call, as a C++ trainer writes
// it: every rank holds the packed q, k, v of the batch (or loads its own rows), keeps its
// shard, runs the ring forward and backward, and gathers the results back.
//
//   mpirun --oversubscribe --allow-run-as-root -np 3 ./build/examples/dhp_ring_attention
//
// It checks itself against the same attention computed by one process on the whole packed
// batch (kernels::attention_forward/backward) and exits non-zero past 1e-10.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <random>
#include <vector>

#include "dhp/error.hpp"
#include "dhp/kernels.hpp"
#include "dhp/packed_cp_attention.hpp"
#include "dhp/runtime.hpp"

namespace {

std::vector<double> random_rows(std::int64_t rows, int width, std::uint64_t seed) {
  std::mt19937_64 gen(seed);  // the same values on every rank
  std::uniform_real_distribution<double> dist(-1.0, 1.0);
  std::vector<double> out(static_cast<std::size_t>(rows * width));
  for (double& x : out) x = dist(gen);
  return out;
}

double max_abs_diff(const std::vector<double>& a, const std::vector<double>& b) {
  double worst = 0;
  for (std::size_t i = 0; i < a.size(); ++i) worst = std::max(worst, std::abs(a[i] - b[i]));
  return worst;
}

int run() {
  dhp::MpiRuntime mpi;
  const auto world = mpi.world();

  // The packed batch: one long sequence (zigzag-split over the ring), short ones (kept
  // whole on the least-loaded member), lengths that are no multiple of anything.
  const std::vector<std::int64_t> lengths{301, 17, 37, 127, 5, 1};
  std::vector<int> ring;  // every rank, in rank order; any order and any subset work
  for (int r = 0; r < world->size(); ++r) ring.push_back(r);
  const dhp::PackedCpAttention cp(lengths, ring, world->rank(), world->size());

  // Grouped-query attention: 4 query heads share 2 KV heads; softmax_scale 0 = 1/sqrt(64).
  const dhp::kernels::AttentionShape shape{.heads_q = 4, .heads_kv = 2, .head_dim = 64,
                                           .softmax_scale = 0, .causal = true};
  const int q_width = shape.heads_q * shape.head_dim, kv_width = shape.heads_kv * shape.head_dim;
  const std::int64_t total = cp.total_rows(), local = cp.local_rows();
  const auto q_full = random_rows(total, q_width, 1), k_full = random_rows(total, kv_width, 2),
             v_full = random_rows(total, kv_width, 3), dout_full = random_rows(total, q_width, 4);

  // This rank's rows: q, out [local, heads_q, dim]; k, v [local, heads_kv, dim];
  // lse [heads_q, local] (head-major).
  std::vector<double> q(local * q_width), k(local * kv_width), v(local * kv_width),
      dout(local * q_width), out(local * q_width), lse(local * shape.heads_q), dq(q.size()),
      dk(k.size()), dv(v.size());
  const std::int64_t q_row = q_width * sizeof(double), kv_row = kv_width * sizeof(double);
  cp.shard(q_full.data(), q.data(), q_row);
  cp.shard(k_full.data(), k.data(), kv_row);
  cp.shard(v_full.data(), v.data(), kv_row);
  cp.shard(dout_full.data(), dout.data(), q_row);

  const auto f64 = dhp::kernels::DType::F64;
  cp.forward(*world, f64, shape, q.data(), k.data(), v.data(), out.data(), lse.data());
  cp.backward(*world, f64, shape, q.data(), k.data(), v.data(), out.data(), lse.data(),
              dout.data(), dq.data(), dk.data(), dv.data());

  std::vector<double> out_full(q_full.size()), dq_full(q_full.size()), dk_full(k_full.size()),
      dv_full(v_full.size());
  cp.gather(*world, out.data(), out_full.data(), q_row);
  cp.gather(*world, dq.data(), dq_full.data(), q_row);
  cp.gather(*world, dk.data(), dk_full.data(), kv_row);
  cp.gather(*world, dv.data(), dv_full.data(), kv_row);

  // The same attention by one process over the whole packed batch.
  std::vector<std::int32_t> cu{0};
  for (std::int64_t l : lengths) cu.push_back(cu.back() + static_cast<std::int32_t>(l));
  dhp::kernels::PackedSeqs seqs;
  seqs.cu_seqlens_q = seqs.cu_seqlens_k = cu.data();
  seqs.num_seqs = static_cast<int>(lengths.size());
  seqs.total_q = seqs.total_k = total;
  std::vector<double> ref_out(q_full.size()), ref_lse(total * shape.heads_q),
      ref_dq(q_full.size()), ref_dk(k_full.size()), ref_dv(v_full.size());
  dhp::kernels::AttentionForwardArgs fwd;
  fwd.dtype = f64;
  fwd.shape = shape;
  fwd.seqs = seqs;
  fwd.q = q_full.data();
  fwd.k = k_full.data();
  fwd.v = v_full.data();
  fwd.out = ref_out.data();
  fwd.lse = ref_lse.data();
  dhp::kernels::AttentionBackwardArgs bwd;
  bwd.dtype = f64;
  bwd.shape = shape;
  bwd.seqs = seqs;
  bwd.q = q_full.data();
  bwd.k = k_full.data();
  bwd.v = v_full.data();
  bwd.out = ref_out.data();
  bwd.dout = dout_full.data();
  bwd.lse = ref_lse.data();
  bwd.dq = ref_dq.data();
  bwd.dk = ref_dk.data();
  bwd.dv = ref_dv.data();
  if (dhp::kernels::attention_forward(fwd) != dhp::kernels::Status::Ok ||
      dhp::kernels::attention_backward(bwd) != dhp::kernels::Status::Ok) {
    std::fprintf(stderr, "reference attention failed: %s\n", dhp::kernels::last_error());
    return 1;
  }

  const double err = std::max({max_abs_diff(out_full, ref_out), max_abs_diff(dq_full, ref_dq),
                               max_abs_diff(dk_full, ref_dk), max_abs_diff(dv_full, ref_dv)});
  int zigzag = 0;
  for (const auto& s : cp.sharding()) zigzag += s.sharding == dhp::Sharding::Zigzag;
  std::printf("rank %d/%d: %lld of %lld rows (%d of %zu sequences zigzag-split), max error vs "
              "one process %.3g\n",
              world->rank(), world->size(), static_cast<long long>(local),
              static_cast<long long>(total), zigzag, lengths.size(), err);
  return err < 1e-10 ? 0 : 1;
}

}  // namespace

int main() {
  try {
    return run();
  } catch (const dhp::Error& e) {
    std::fprintf(stderr, "%s\n", e.what());
    return 1;
  }
}
