// The LibTorch autograd function around CP attention: output and gradients equal those of
// a plain LibTorch fp64 attention on the whole packed batch (odd lengths, GQA), on every
// rank of a CP group spanning the world (degree = world size, under mpirun), for the ring
// and for UlyssesRing with the adapter's ranks_per_node.
#include <gtest/gtest.h>

#include <random>

#include "dhp/dispatch.hpp"
#include "dhp/error.hpp"
#include "dhp/group_pool.hpp"
#include "dhp/torch.hpp"
#include "runtime_test_util.hpp"

namespace dhp {
namespace {

using testing::world;

// softmax(Q K^T * scale + causal mask) V per sequence, GQA by repeating KV heads.
at::Tensor reference_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
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

// The group's attention kind and, for UlyssesRing, the adapter options' node size and pool.
struct AttentionSetup {
  CpAttention attention = CpAttention::Ring;
  int ranks_per_node = 0;
  GroupPool* pool = nullptr;
  bool prewarm = true;  // acquire the plan's groups in `pool` first
};

void check_matches_reference(at::ScalarType dtype, double tolerance, std::uint64_t seed,
                             const AttentionSetup& setup = {}) {
  Communicator& comm = world();
  const int hq = 4, hkv = 2, hd = 8;
  std::mt19937_64 gen(seed);
  const int num_seqs = 5;
  std::vector<std::int64_t> lengths;  // odd lengths, one of 1
  for (int i = 0; i < num_seqs; ++i)
    lengths.push_back(i == 0 ? 1 : 2 * static_cast<std::int64_t>(gen() % 15) + 3);
  std::vector<int> owners;
  for (int i = 0; i < num_seqs; ++i) owners.push_back(i % comm.size());
  // One group over the whole world: sequences 0 and 3 Whole, the rest Zigzag.
  const Plan plan = testing::one_wave_plan(comm.size(), {comm.size()}, num_seqs,
                                           [](int i) { return i % 3 != 0; }, setup.attention);
  if (setup.pool != nullptr && setup.prewarm) setup.pool->prewarm(plan);
  const WaveDispatch dispatch(plan, 0, lengths, owners, comm.rank(), comm.size());
  const WaveLayout& layout = dispatch.layout();

  std::vector<std::int64_t> cu{0};
  for (auto l : lengths) cu.push_back(cu.back() + l);
  const std::int64_t total = cu.back();
  auto global = [&](int heads, std::uint64_t s) {
    return at::tensor(
               testing::random_values<double>(static_cast<std::size_t>(total * heads * hd), s),
               at::kDouble)
        .reshape({total, heads, hd});
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
    return t.detach().index_select(0, index).to(dtype).contiguous();
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

  auto max_error = [&](const at::Tensor& got, const at::Tensor& want) {
    return (got.to(at::kDouble) - local(want).to(at::kDouble)).abs().max().item<double>();
  };
  EXPECT_LT(max_error(out, ref), tolerance) << "out, rank " << comm.rank();
  EXPECT_LT(max_error(lq.grad(), q.grad()), tolerance) << "dq, rank " << comm.rank();
  EXPECT_LT(max_error(lk.grad(), k.grad()), tolerance) << "dk, rank " << comm.rank();
  EXPECT_LT(max_error(lv.grad(), v.grad()), tolerance) << "dv, rank " << comm.rank();
}

TEST(TorchCpAttention, MatchesLibTorchReferenceF64) {
  check_matches_reference(at::kDouble, 1e-10, 11);
}

TEST(TorchCpAttention, MatchesLibTorchReferenceF32) {
  check_matches_reference(at::kFloat, 2e-5, 12);
}

// Two nodes of 2 ranks (world 4): Ulysses over heads inside each node, the ring across
// nodes. heads_kv=2 is not divisible by 4, so only ranks_per_node=2 reaching the core
// makes this group run Ulysses at all (with 0 it would fall back to the plain ring).
TEST(TorchCpAttention, UlyssesRingWithRanksPerNodeMatchesReference) {
  if (world().size() != 4) GTEST_SKIP() << "needs world 4 (2 nodes x 2), have " << world().size();
  GroupPool pool(world());
  const AttentionSetup setup{CpAttention::UlyssesRing, 2, &pool};
  check_matches_reference(at::kDouble, 1e-10, 21, setup);
  check_matches_reference(at::kFloat, 2e-5, 22, setup);
}

// ranks_per_node reaches the core: with it, the group's Ulysses step looks its
// communicator up in the pool (before any message), so a pool that was not prewarmed is
// named in the error on every rank; with 0 the group runs the ring, which needs none.
TEST(TorchCpAttention, RanksPerNodeSelectsUlyssesRing) {
  if (world().size() != 4) GTEST_SKIP() << "needs world 4 (2 nodes x 2), have " << world().size();
  GroupPool pool(world());
  AttentionSetup setup{CpAttention::UlyssesRing, 0, &pool, false};
  check_matches_reference(at::kDouble, 1e-10, 23, setup);
  setup.ranks_per_node = 2;
  try {
    check_matches_reference(at::kDouble, 1e-10, 23, setup);
    FAIL() << "expected the Ulysses step to ask the pool for its group";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("has no communicator in the pool"), std::string::npos) << e.what();
  }
}

TEST(TorchCpAttention, RejectsBadTensorsNamingThem) {
  WaveLayout layout;
  layout.rows = 4;
  CpAttentionOptions options;
  options.layout = &layout;
  options.world = &world();
  const at::Tensor q = at::zeros({4, 2, 8}, at::kDouble);
  const at::Tensor k = at::zeros({4, 2, 8}, at::kDouble);
  try {
    cp_attention(q, k.to(at::kFloat), k, options);
    FAIL() << "expected a dtype error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("tensor k"), std::string::npos) << e.what();
  }
  try {
    cp_attention(q, k, at::zeros({4, 8, 2}, at::kDouble).transpose(1, 2), options);
    FAIL() << "expected a contiguity error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("tensor v"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("contiguous"), std::string::npos) << e.what();
  }
  EXPECT_THROW(cp_attention(at::zeros({5, 2, 8}, at::kDouble), k, k, options), Error);
}

}  // namespace
}  // namespace dhp
