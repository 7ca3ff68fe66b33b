// The one-call API: PackedCpAttention on rings of any degree and order, with the sharding
// chosen automatically or given, equals a single-process double reference forward and
// backward (f64 to 1e-12, f32 to 1e-5 relative); and choose_sharding's decisions.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>

#include "dhp/packed_cp_attention.hpp"
#include "runtime_test_util.hpp"

namespace dhp {
namespace {

using testing::world;

template <typename T>
double ring_error(const std::vector<std::int64_t>& lengths, const std::vector<int>& ring,
                  std::vector<SequenceSharding> sharding, bool causal) {
  Communicator& comm = world();
  const int hq = 2, hkv = 1, hd = 16;
  const PackedCpAttention cp(lengths, ring, comm.rank(), comm.size(), std::move(sharding));
  std::vector<std::int64_t> cu{0};
  for (auto l : lengths) cu.push_back(cu.back() + l);
  const auto rows = static_cast<std::size_t>(cu.back());
  const auto q = testing::random_values<double>(rows * hq * hd, 7),
             k = testing::random_values<double>(rows * hkv * hd, 8),
             v = testing::random_values<double>(rows * hkv * hd, 9),
             dout = testing::random_values<double>(rows * hq * hd, 10);
  const auto to_t = [](const std::vector<double>& x) { return std::vector<T>(x.begin(), x.end()); };
  const auto tq = to_t(q), tk = to_t(k), tv = to_t(v), tdout = to_t(dout);
  const auto local = static_cast<std::size_t>(cp.local_rows());
  std::vector<T> lq(local * hq * hd), lk(local * hkv * hd), lv(lk.size()), ldout(lq.size()),
      out(lq.size()), lse(local * hq), dq(lq.size()), dk(lk.size()), dv(lk.size());
  const std::int64_t qb = hq * hd * sizeof(T), kb = hkv * hd * sizeof(T);
  cp.shard(tq.data(), lq.data(), qb);
  cp.shard(tk.data(), lk.data(), kb);
  cp.shard(tv.data(), lv.data(), kb);
  cp.shard(tdout.data(), ldout.data(), qb);
  const auto dtype = std::is_same_v<T, double> ? kernels::DType::F64 : kernels::DType::F32;
  const kernels::AttentionShape shape{hq, hkv, hd, 0.0, causal};
  cp.forward(comm, dtype, shape, lq.data(), lk.data(), lv.data(), out.data(), lse.data());
  cp.backward(comm, dtype, shape, lq.data(), lk.data(), lv.data(), out.data(), lse.data(),
              ldout.data(), dq.data(), dk.data(), dv.data());
  std::vector<T> out_full(tq.size()), dk_full(tk.size());
  cp.gather(comm, out.data(), out_full.data(), qb);
  cp.gather(comm, dk.data(), dk_full.data(), kb);
  if (!cp.in_ring()) return 0;
  // Reference: full attention per sequence when not causal (a causal reference with
  // positions reversed is the same as full attention only for one row, so compute it).
  testing::Reference ref;
  if (causal) {
    ref = testing::reference_attention(cu, hq, hkv, hd, q, k, v, dout);
  } else {
    ref = testing::reference_attention_full(cu, hq, hkv, hd, q, k, v, dout);
  }
  double worst = 0, scale = 1e-300;
  for (std::size_t i = 0; i < out_full.size(); ++i) {
    worst = std::max(worst, std::abs(out_full[i] - ref.out[i]));
    scale = std::max(scale, std::abs(ref.out[i]));
  }
  for (std::size_t i = 0; i < dk_full.size(); ++i) {
    worst = std::max(worst, std::abs(dk_full[i] - ref.dk[i]));
    scale = std::max(scale, std::abs(ref.dk[i]));
  }
  return worst / scale;
}

std::vector<int> reversed_world() {
  std::vector<int> ring;
  for (int r = world().size() - 1; r >= 0; --r) ring.push_back(r);
  return ring;
}

TEST(PackedCpAttention, AutomaticShardingMatchesReference) {
  const std::vector<std::int64_t> lengths{211, 3, 1, 40, 17, 0, 64};
  EXPECT_LT(ring_error<double>(lengths, reversed_world(), {}, true), 1e-12);
  EXPECT_LT(ring_error<float>(lengths, reversed_world(), {}, true), 1e-5);
  EXPECT_LT(ring_error<double>(lengths, reversed_world(), {}, false), 1e-12);
}

TEST(PackedCpAttention, ExplicitShardingOnASubRing) {
  const int n = world().size();
  // Every other rank, in descending order; the rest sit out.
  std::vector<int> ring;
  for (int r = n - 1; r >= 0; r -= 2) ring.push_back(r);
  const int d = static_cast<int>(ring.size());
  const std::vector<std::int64_t> lengths{5, 33, 2 * d - 1, 9};
  const std::vector<SequenceSharding> mixed{SequenceSharding::zigzag(),
                                            SequenceSharding::whole(d - 1),
                                            SequenceSharding::zigzag(), SequenceSharding::whole(0)};
  EXPECT_LT(ring_error<double>(lengths, ring, mixed, true), 1e-12);
  EXPECT_LT(ring_error<float>(lengths, ring, mixed, true), 1e-5);
}

TEST(PackedCpAttention, ChooseShardingBalancesWork) {
  // Equal sequences, one per member: each whole on its own member, nothing travels.
  const auto equal = choose_sharding(std::vector<std::int64_t>{100, 100, 100, 100}, 4);
  std::vector<int> members;
  for (const auto& s : equal) {
    EXPECT_EQ(s.sharding, Sharding::Whole);
    members.push_back(s.member);
  }
  std::sort(members.begin(), members.end());
  EXPECT_EQ(members, (std::vector<int>{0, 1, 2, 3}));
  // One long sequence among short ones: the long one is split, the short ones whole.
  const auto skewed = choose_sharding(std::vector<std::int64_t>{4000, 10, 20, 30}, 3);
  EXPECT_EQ(skewed[0], SequenceSharding::zigzag());
  for (std::size_t i = 1; i < skewed.size(); ++i) EXPECT_EQ(skewed[i].sharding, Sharding::Whole);
  // Too short to give every member a chunk: never split.
  const auto tiny = choose_sharding(std::vector<std::int64_t>{5, 1}, 4);
  EXPECT_EQ(tiny[0].sharding, Sharding::Whole);
  // A ring of one holds everything whole.
  for (const auto& s : choose_sharding(std::vector<std::int64_t>{900, 3}, 1))
    EXPECT_EQ(s, SequenceSharding::whole(0));
}

}  // namespace
}  // namespace dhp
