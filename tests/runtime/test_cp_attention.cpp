// Ring context-parallel attention over the world equals a single-process reference,
// forward and backward, for every CP degree the world allows and mixed groups in a wave.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <map>
#include <string>

#include "../kernels/sixteen_bit.hpp"
#include "dhp/cp_attention.hpp"
#include "dhp/dispatch.hpp"
#include "dhp/error.hpp"
#include "dhp/group_pool.hpp"
#include "runtime_test_util.hpp"

namespace dhp {
namespace {

using testing::world;

// Partitions of the world tried besides the single group of every rank: several groups
// of different degrees coexisting in one wave.
std::vector<int> mixed_partition(int w) {
  static const std::map<int, std::vector<int>> table = {{1, {1}},          {2, {1, 1}}, {3, {2, 1}},
                                                        {4, {3, 1}},       {5, {3, 2}}, {6, {5, 1}},
                                                        {7, {3, 2, 1, 1}}, {8, {5, 3}}};
  auto it = table.find(w);
  return it != table.end() ? it->second : std::vector<int>{w};
}

template <typename T>
struct Result {
  double max_err_out = 0, max_err_grad = 0, max_ref = 0;
  // Worst |got - want| / (1 + |want|) (the kernels' tolerance metric), 16-bit cases.
  double scaled_err_out = 0, scaled_err_grad = 0;
  std::int64_t rows = 0;  // local rows compared
  bool ulysses = false;
};

// Beyond the defaults of run_case: a node size for UlyssesRing, fixed lengths, all Zigzag,
// the head size and the mask.
struct CaseOptions {
  int ranks_per_node = 0;
  std::vector<std::int64_t> lengths;  // empty: random odd lengths
  bool all_zigzag = false;
  int expected_ulysses_degree = 0;  // > 0: checked against ulysses_degree() of this rank's group
  int head_dim = 8;
  bool causal = true;
};

template <typename T>
Result<T> run_case(const std::vector<int>& groups, std::uint64_t seed, bool use_pool,
                   CpAttention attention, int hq, int hkv, const CaseOptions& options = {}) {
  Communicator& comm = world();
  const int hd = options.head_dim;
  constexpr bool k16 = !std::is_same_v<T, float> && !std::is_same_v<T, double>;
  // Odd lengths, some shorter than 2 x degree (empty chunks), one of length 1.
  std::mt19937_64 gen(seed);
  std::vector<std::int64_t> lengths = options.lengths;
  if (lengths.empty()) {
    const int n = 2 * static_cast<int>(groups.size()) + 3;
    for (int i = 0; i < n; ++i)
      lengths.push_back(i == 0 ? 1 : static_cast<std::int64_t>(gen() % 37) + 2);
  }
  const int num_seqs = static_cast<int>(lengths.size());
  std::vector<int> owners;
  for (int i = 0; i < num_seqs; ++i) owners.push_back(i % comm.size());
  const bool all_zigzag = options.all_zigzag;
  const Plan plan = testing::one_wave_plan(
      comm.size(), groups, num_seqs, [all_zigzag](int i) { return all_zigzag || i % 4 != 3; },
      attention);
  const WaveDispatch dispatch(plan, 0, lengths, owners, comm.rank(), comm.size());
  const WaveLayout& layout = dispatch.layout();

  std::vector<std::int64_t> cu{0};
  for (auto l : lengths) cu.push_back(cu.back() + l);
  const auto total = static_cast<std::size_t>(cu.back());
  // 16-bit: the reference sees the inputs as the ring does (rounded to T), and the rounded
  // out in the backward's delta.
  auto values = [&](std::size_t n, std::uint64_t s) {
    auto x = testing::random_values<double>(n, s);
    if constexpr (k16)
      for (double& e : x) e = testing::round_to<T>(e);
    return x;
  };
  const auto q = values(total * hq * hd, seed + 1);
  const auto k = values(total * hkv * hd, seed + 2);
  const auto v = values(total * hkv * hd, seed + 3);
  const auto dout = values(total * hq * hd, seed + 4);
  // The reference depends on the data, not on the groups: computed once per case.
  static std::map<std::string, testing::Reference> references;
  const std::string key = ::testing::PrintToString(lengths) + " " + std::to_string(seed) + " " +
                          std::to_string(hq) + "/" + std::to_string(hkv) + "/" +
                          std::to_string(hd) + " " + std::to_string(options.causal) + " " +
                          kernels::to_string(testing::dtype_of<T>());
  auto found = references.find(key);
  if (found == references.end())
    found = references
                .emplace(key, testing::reference_attention(cu, hq, hkv, hd, q, k, v, dout,
                                                           options.causal,
                                                           k16 ? &testing::round_to<T> : nullptr))
                .first;
  const testing::Reference& ref = found->second;

  // This rank's rows: global row of every local row.
  std::vector<std::int64_t> global_row(static_cast<std::size_t>(layout.rows));
  for (const LocalPiece& piece : layout.pieces) {
    for (std::int64_t r = 0; r < piece.rows; ++r) {
      const auto local = static_cast<std::size_t>(piece.offset + r);
      global_row[local] = cu[static_cast<std::size_t>(piece.sample)] + layout.positions[local];
    }
  }
  auto take = [&](const std::vector<double>& src, int heads) {
    std::vector<T> out(global_row.size() * static_cast<std::size_t>(heads * hd));
    for (std::size_t r = 0; r < global_row.size(); ++r)
      for (int e = 0; e < heads * hd; ++e)
        out[r * static_cast<std::size_t>(heads * hd) + static_cast<std::size_t>(e)] =
            static_cast<T>(src[static_cast<std::size_t>(global_row[r] * heads * hd + e)]);
    return out;
  };
  const auto lq = take(q, hq), lk = take(k, hkv), lv = take(v, hkv), ldout = take(dout, hq);
  std::vector<T> out(lq.size()), dq(lq.size()), dk(lk.size()), dv(lv.size());
  std::vector<testing::Acc<T>> lse(static_cast<std::size_t>(layout.rows * hq));

  GroupPool pool(comm);
  CpAttentionContext ctx;
  ctx.dtype = testing::dtype_of<T>();
  ctx.shape = {hq, hkv, hd, 0.0, options.causal};
  ctx.layout = &layout;
  ctx.world = &comm;
  ctx.ranks_per_node = options.ranks_per_node;
  if (options.expected_ulysses_degree > 0 && layout.group >= 0) {
    EXPECT_EQ(ulysses_degree(layout, ctx.shape, options.ranks_per_node),
              options.expected_ulysses_degree)
        << "rank " << comm.rank() << " ranks_per_node " << options.ranks_per_node;
  }
  if (use_pool) {
    pool.prewarm(plan);
    ctx.pool = &pool;
  }
  cp_attention_forward(ctx, lq.data(), lk.data(), lv.data(), out.data(), lse.data());
  cp_attention_backward(ctx, lq.data(), lk.data(), lv.data(), out.data(), lse.data(), ldout.data(),
                        dq.data(), dk.data(), dv.data());

  Result<T> res;
  res.rows = layout.rows;
  res.ulysses = use_pool && uses_ulysses(layout, ctx.shape);
  // The reference rows as doubles (take() rounds them to T, which 16-bit cases must not).
  auto take64 = [&](const std::vector<double>& src, int heads) {
    std::vector<double> out64;
    for (std::size_t r = 0; r < global_row.size(); ++r)
      for (int e = 0; e < heads * hd; ++e)
        out64.push_back(src[static_cast<std::size_t>(global_row[r] * heads * hd + e)]);
    return out64;
  };
  auto err = [&](const std::vector<T>& a, const std::vector<double>& b, double& worst,
                 double& scaled) {
    for (std::size_t i = 0; i < a.size(); ++i) {
      const double diff = std::abs(static_cast<double>(a[i]) - b[i]);
      if (!(diff == diff)) worst = scaled = std::numeric_limits<double>::infinity();  // NaN
      worst = std::max(worst, diff);
      scaled = std::max(scaled, diff / (1 + std::abs(b[i])));
      res.max_ref = std::max(res.max_ref, std::abs(b[i]));
    }
  };
  err(out, take64(ref.out, hq), res.max_err_out, res.scaled_err_out);
  err(dq, take64(ref.dq, hq), res.max_err_grad, res.scaled_err_grad);
  err(dk, take64(ref.dk, hkv), res.max_err_grad, res.scaled_err_grad);
  err(dv, take64(ref.dv, hkv), res.max_err_grad, res.scaled_err_grad);
  return res;
}

std::vector<std::vector<int>> partitions() {
  const int w = world().size();
  std::vector<std::vector<int>> out{{w}};
  if (mixed_partition(w) != out[0]) out.push_back(mixed_partition(w));
  return out;
}

TEST(CpAttention, RingMatchesReferenceF64) {
  for (const auto& groups : partitions()) {
    for (std::uint64_t seed : {11u, 12u}) {
      const auto r = run_case<double>(groups, seed, false, CpAttention::Ring, 4, 2);
      std::int64_t rows = r.rows;
      world().all_reduce(&rows, &rows, 1, DataType::I64, ReduceOp::Sum);
      if (world().rank() == 0) {
        std::printf("ring f64 groups %s seed %llu: %lld rows, max error out %.3g grad %.3g\n",
                    ::testing::PrintToString(groups).c_str(), static_cast<unsigned long long>(seed),
                    static_cast<long long>(rows), r.max_err_out, r.max_err_grad);
      }
      EXPECT_LE(r.max_err_out, 1e-10)
          << "groups of " << ::testing::PrintToString(groups) << " seed " << seed;
      EXPECT_LE(r.max_err_grad, 1e-10)
          << "groups of " << ::testing::PrintToString(groups) << " seed " << seed;
    }
  }
}

TEST(CpAttention, RingMatchesReferenceF32) {
  for (const auto& groups : partitions()) {
    const auto r = run_case<float>(groups, 21, false, CpAttention::Ring, 4, 4);
    const double scale = std::max(1.0, r.max_ref);
    if (world().rank() == 0) {
      std::printf("ring f32 groups %s: max error out %.3g grad %.3g (max |ref| %.3g)\n",
                  ::testing::PrintToString(groups).c_str(), r.max_err_out, r.max_err_grad,
                  r.max_ref);
    }
    EXPECT_LE(r.max_err_out, 1e-5 * scale) << ::testing::PrintToString(groups);
    EXPECT_LE(r.max_err_grad, 1e-5 * scale) << ::testing::PrintToString(groups);
  }
}

TEST(CpAttention, UlyssesMatchesReferenceWhereHeadsDivide) {
  // 8 query / 8 kv heads: degrees 1, 2, 4, 8 run Ulysses, the others fall back to the ring.
  for (const auto& groups : partitions()) {
    const auto r = run_case<double>(groups, 31, true, CpAttention::Ulysses, 8, 8);
    std::int64_t ulysses_ranks = r.ulysses ? 1 : 0;
    world().all_reduce(&ulysses_ranks, &ulysses_ranks, 1, DataType::I64, ReduceOp::Sum);
    // The single group of every rank runs Ulysses exactly when its degree divides 8 heads.
    if (groups.size() == 1 && groups[0] > 1) {
      EXPECT_EQ(ulysses_ranks, 8 % groups[0] == 0 ? groups[0] : 0);
    }
    if (world().rank() == 0) {
      std::printf("Ulysses groups %s: %lld ranks ran Ulysses, max error out %.3g grad %.3g\n",
                  ::testing::PrintToString(groups).c_str(), static_cast<long long>(ulysses_ranks),
                  r.max_err_out, r.max_err_grad);
    }
    EXPECT_LE(r.max_err_out, 1e-10) << ::testing::PrintToString(groups);
    EXPECT_LE(r.max_err_grad, 1e-10) << ::testing::PrintToString(groups);
  }
}

// UlyssesRing with a node of `ranks_per_node` consecutive world ranks (the CP context's
// ranks_per_node; the test plan's single group is in world-rank order, hence node-major):
// u = ranks_per_node members per node do Ulysses over heads, the ring runs over the
// world/u nodes. Heads 2u query / u kv (GQA), fp64 and fp32.
TEST(CpAttention, UlyssesRingMatchesReference) {
  const int w = world().size();
  std::vector<int> node_sizes;
  for (int u : {2, 3, 4}) {
    if (w % u == 0 && w / u > 1) node_sizes.push_back(u);  // 4: 2x2; 6: 3x2, 2x3; 8: 4x2, 2x4
  }
  if (node_sizes.empty()) GTEST_SKIP() << "world " << w << " has no u x r split with u, r > 1";
  for (int u : node_sizes) {
    CaseOptions options;
    options.ranks_per_node = u;
    options.expected_ulysses_degree = u;
    for (std::uint64_t seed : {41u, 42u}) {
      const auto r = run_case<double>({w}, seed, true, CpAttention::UlyssesRing, 2 * u, u, options);
      if (world().rank() == 0) {
        std::printf("UlyssesRing f64 %d nodes x %d (seed %llu): max error out %.3g grad %.3g\n",
                    w / u, u, static_cast<unsigned long long>(seed), r.max_err_out, r.max_err_grad);
      }
      EXPECT_LE(r.max_err_out, 1e-10) << "u " << u << " seed " << seed;
      EXPECT_LE(r.max_err_grad, 1e-10) << "u " << u << " seed " << seed;
    }
    const auto r = run_case<float>({w}, 43, true, CpAttention::UlyssesRing, 2 * u, u, options);
    const double scale = std::max(1.0, r.max_ref);
    if (world().rank() == 0) {
      std::printf("UlyssesRing f32 %d nodes x %d: max error out %.3g grad %.3g (max |ref| %.3g)\n",
                  w / u, u, r.max_err_out, r.max_err_grad, r.max_ref);
    }
    EXPECT_LE(r.max_err_out, 1e-5 * scale) << "u " << u;
    EXPECT_LE(r.max_err_grad, 1e-5 * scale) << "u " << u;
  }
}

// Groups whose nodes do not fit UlyssesRing run the ring and stay exact: mixed groups
// cutting across 2-rank nodes (e.g. {5, 3} at world 8, {3, 1} at world 4), and heads that
// the node size does not divide.
TEST(CpAttention, UlyssesRingFallsBackWhereNodesOrHeadsDoNotFit) {
  const int w = world().size();
  for (const auto& groups : partitions()) {
    CaseOptions options;
    options.ranks_per_node = 2;
    const auto r = run_case<double>(groups, 51, true, CpAttention::UlyssesRing, 6, 3, options);
    EXPECT_LE(r.max_err_out, 1e-10) << ::testing::PrintToString(groups);
    EXPECT_LE(r.max_err_grad, 1e-10) << ::testing::PrintToString(groups);
  }
  if (w >= 4 && w % 2 == 0) {
    // 2 | 8 heads, but 3 kv heads do not split over 2: plain ring.
    CaseOptions options;
    options.ranks_per_node = 2;
    options.expected_ulysses_degree = 1;
    const auto r = run_case<double>({w}, 52, true, CpAttention::UlyssesRing, 3, 3, options);
    EXPECT_LE(r.max_err_out, 1e-10);
    EXPECT_LE(r.max_err_grad, 1e-10);
  }
}

// Sequences much shorter than 2 x degree (a sequence of length 1 over degree 7, 3 tokens
// over degree 5: most members hold empty chunks, some hold nothing at all), an empty
// sequence, and a rank idle in the wave (the group leaves the last rank out).
TEST(CpAttention, TinySequencesAndIdleRanks) {
  const int w = world().size();
  std::vector<std::vector<int>> layouts{{w}};
  if (w > 1) layouts.push_back({w - 1});  // world rank w-1 in no group
  for (const auto& groups : layouts) {
    for (const auto& lengths : std::vector<std::vector<std::int64_t>>{{1}, {3}, {1, 3, 0, 2}}) {
      CaseOptions options;
      options.lengths = lengths;
      options.all_zigzag = true;
      const auto r = run_case<double>(groups, 61, false, CpAttention::Ring, 4, 2, options);
      EXPECT_LE(r.max_err_out, 1e-10)
          << ::testing::PrintToString(groups) << ::testing::PrintToString(lengths);
      EXPECT_LE(r.max_err_grad, 1e-10)
          << ::testing::PrintToString(groups) << ::testing::PrintToString(lengths);
      const auto u = run_case<double>(groups, 62, true, CpAttention::Ulysses, 4, 4, options);
      EXPECT_LE(u.max_err_out, 1e-10) << "Ulysses " << ::testing::PrintToString(groups);
      EXPECT_LE(u.max_err_grad, 1e-10) << "Ulysses " << ::testing::PrintToString(groups);
    }
  }
}

// bf16/f16 through the ring on CPU buffers, against the fp64 reference of the same
// (rounded) inputs: every ring degree the world allows (7 and 8 at worlds 7 and 8), mixed
// groups, long and odd lengths, head sizes of LLMs (128, causal) and vision encoders (80,
// full). The ring merges and accumulates in fp32 and rounds once, so the error stays within
// one rounding (the unit roundoff u) plus fp32 error at every degree; a 16-bit accumulator
// would round once per step and grow past it with the ring size.
template <typename T>
void check_sixteen_bit(const char* name) {
  const double bound = testing::unit_roundoff<T>() + 1e-5;
  const int w = world().size();
  for (const auto& groups : partitions()) {
    for (const auto& [hd, causal] : {std::pair{128, true}, std::pair{80, false}}) {
      CaseOptions options;
      options.lengths = {1021, 37, 1, 2 * w + 1, 300};
      options.head_dim = hd;
      options.causal = causal;
      const auto r = run_case<T>(groups, 71 + hd, false, CpAttention::Ring, 2, 1, options);
      double worst[2] = {r.scaled_err_out, r.scaled_err_grad};
      world().all_reduce(worst, worst, 2, DataType::F64, ReduceOp::Max);
      if (world().rank() == 0)
        std::printf(
            "ring %s world %d groups %s d=%d %s: worst scaled error out %.3g grad %.3g "
            "(bound %.3g)\n",
            name, w, ::testing::PrintToString(groups).c_str(), hd, causal ? "causal" : "full",
            worst[0], worst[1], bound);
      EXPECT_LE(r.scaled_err_out, bound) << name << " " << ::testing::PrintToString(groups);
      EXPECT_LE(r.scaled_err_grad, bound) << name << " " << ::testing::PrintToString(groups);
    }
  }
}

TEST(CpAttention, Bf16RingMatchesReferenceWithinOneRounding) {
  check_sixteen_bit<testing::BF16>("bf16");
}

TEST(CpAttention, F16RingMatchesReferenceWithinOneRounding) {
  check_sixteen_bit<testing::F16>("f16");
}

// 16-bit Ulysses (CPU buffers): the all-to-all moves 16-bit rows, the lse stays fp32.
TEST(CpAttention, Bf16UlyssesMatchesReference) {
  const int w = world().size();
  CaseOptions options;
  options.lengths = {301, 45, 2};
  const auto r = run_case<testing::BF16>({w}, 81, true, CpAttention::Ulysses, 8, 8, options);
  const double bound = testing::unit_roundoff<testing::BF16>() + 1e-5;
  EXPECT_EQ(r.ulysses, w > 1 && 8 % w == 0);
  EXPECT_LE(r.scaled_err_out, bound);
  EXPECT_LE(r.scaled_err_grad, bound);
}

}  // namespace
}  // namespace dhp
