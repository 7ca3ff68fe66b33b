// Merge of partial attention results, and the ring-attention identity built from the
// kernels alone: zigzag pieces attending every rank's KV piece, merged, equal full attention
// (forward), and per-piece backwards from the final out/lse sum to the full gradients.
#include <gtest/gtest.h>

#include "attention_reference.hpp"

namespace dhp::kernels::testing {
namespace {

template <typename T>
Status merge(std::vector<T>& out_acc, std::vector<T>& lse_acc, const std::vector<T>& out_part,
             const std::vector<T>& lse_part, std::int64_t rows, int heads, int head_dim) {
  MergeArgs args;
  args.dtype = dtype_of<T>();
  args.rows = rows;
  args.heads = heads;
  args.head_dim = head_dim;
  args.out_acc = out_acc.data();
  args.lse_acc = lse_acc.data();
  args.out_part = out_part.data();
  args.lse_part = lse_part.data();
  return merge_attention_partial(args);
}

TEST(Merge, MinusInfinityOnEitherSideNeverGivesNaN) {
  constexpr float kNegInf = -std::numeric_limits<float>::infinity();
  const float nan = std::numeric_limits<float>::quiet_NaN();
  // Four rows, one head, head_dim 2: (acc, part) lse = (-inf,-inf), (1,-inf), (-inf,2),
  // (1000,1000.5).
  std::vector<float> out_acc = {nan, nan, 3, 4, nan, nan, 1, 2};
  std::vector<float> lse_acc = {kNegInf, 1, kNegInf, 1000};
  const std::vector<float> out_part = {nan, nan, nan, nan, 5, 6, 3, 4};
  const std::vector<float> lse_part = {kNegInf, kNegInf, 2, 1000.5f};
  ASSERT_EQ(merge(out_acc, lse_acc, out_part, lse_part, 4, 1, 2), Status::Ok) << last_error();
  EXPECT_EQ(lse_acc[0], kNegInf);
  EXPECT_EQ(out_acc[0], 0);
  EXPECT_EQ(out_acc[1], 0);
  EXPECT_EQ(lse_acc[1], 1);
  EXPECT_EQ(out_acc[2], 3);
  EXPECT_EQ(out_acc[3], 4);
  EXPECT_EQ(lse_acc[2], 2);
  EXPECT_EQ(out_acc[4], 5);
  EXPECT_EQ(out_acc[5], 6);
  // exp(1000) overflows any float type: only the max-shifted form gives these values.
  const double wa = 1 / (1 + std::exp(0.5)), wb = 1 - wa;
  EXPECT_NEAR(lse_acc[3], 1000.5 + std::log1p(std::exp(-0.5)), 1e-4);
  EXPECT_NEAR(out_acc[6], wa * 1 + wb * 3, 1e-6);
  EXPECT_NEAR(out_acc[7], wa * 2 + wb * 4, 1e-6);
}

template <typename T>
class RingTest : public ::testing::Test {};
using FloatTypes = ::testing::Types<float, double>;
TYPED_TEST_SUITE(RingTest, FloatTypes);

struct RankLayout {
  std::vector<std::int32_t> cu_local, src_rows, positions;
};

RankLayout layout_of(const std::vector<std::int32_t>& cu, int degree, int rank) {
  const int num_seqs = static_cast<int>(cu.size()) - 1;
  const std::int64_t rows = zigzag_local_rows(cu.data(), num_seqs, degree, rank);
  EXPECT_GE(rows, 0) << last_error();
  RankLayout l;
  l.cu_local.resize(cu.size());
  l.src_rows.resize(static_cast<std::size_t>(rows));
  l.positions.resize(static_cast<std::size_t>(rows));
  EXPECT_EQ(zigzag_layout(cu.data(), num_seqs, degree, rank, l.cu_local.data(), l.src_rows.data(),
                          l.positions.data()),
            Status::Ok)
      << last_error();
  return l;
}

// Rows of a [total, heads, head_dim] buffer picked by `rows`, through the gather kernel.
template <typename T>
std::vector<T> gather(const std::vector<T>& src, const std::vector<std::int32_t>& rows,
                      std::int64_t row_elems) {
  std::vector<T> dst(rows.size() * static_cast<std::size_t>(row_elems), T(-7));
  RowCopyArgs args;
  args.num_rows = static_cast<std::int64_t>(rows.size());
  args.row_bytes = row_elems * static_cast<std::int64_t>(sizeof(T));
  args.rows = rows.data();
  args.src = src.data();
  args.dst = dst.data();
  EXPECT_EQ(gather_rows(args), Status::Ok) << last_error();
  return dst;
}

// Ring attention over `degree` ranks, simulated in one process with the kernels only.
template <typename T>
void check_ring(const std::vector<int>& lengths, const AttentionShape& shape, int degree,
                std::uint64_t seed) {
  SCOPED_TRACE("degree " + std::to_string(degree));
  const Batch full = make_batch(lengths, lengths);
  const int hq = shape.heads_q, hkv = shape.heads_kv, d = shape.head_dim;
  std::mt19937_64 rng(seed);
  const auto total = static_cast<std::size_t>(full.total_q());
  const auto q = cast<T>(random_vector(total * hq * d, rng));
  const auto k = cast<T>(random_vector(total * hkv * d, rng));
  const auto v = cast<T>(random_vector(total * hkv * d, rng));
  const auto dout = cast<T>(random_vector(total * hq * d, rng));
  const auto dout64 = to_double(dout);
  const Reference ref =
      reference_attention(full, shape, to_double(q), to_double(k), to_double(v), &dout64);

  std::vector<RankLayout> layouts;
  std::vector<std::vector<T>> lq, lk, lv, ldout;
  for (int r = 0; r < degree; ++r) {
    layouts.push_back(layout_of(full.cu_q, degree, r));
    lq.push_back(gather(q, layouts[r].src_rows, hq * d));
    lk.push_back(gather(k, layouts[r].src_rows, hkv * d));
    lv.push_back(gather(v, layouts[r].src_rows, hkv * d));
    ldout.push_back(gather(dout, layouts[r].src_rows, hq * d));
  }
  auto piece = [&](int r, int j) {  // rank r's queries against rank j's keys
    Batch b;
    b.cu_q = layouts[r].cu_local;
    b.cu_k = layouts[j].cu_local;
    b.q_pos = layouts[r].positions;
    b.k_pos = layouts[j].positions;
    return b;
  };

  std::vector<std::vector<T>> final_out(degree), final_lse(degree);
  std::vector<Gradients<T>> grads(degree);
  for (int r = 0; r < degree; ++r) {
    const auto rows = static_cast<std::int64_t>(layouts[r].src_rows.size());
    // Poisoned accumulator: lse -inf means "empty", whatever out holds.
    std::vector<T> out_acc(lq[r].size(), std::numeric_limits<T>::quiet_NaN());
    std::vector<T> lse_acc(static_cast<std::size_t>(rows * hq),
                           -std::numeric_limits<T>::infinity());
    for (int step = 0; step < degree; ++step) {
      const int j = (r - step + degree) % degree;  // the KV piece that arrives at this step
      const auto part = run_forward(piece(r, j), shape, lq[r], lk[j], lv[j]);
      ASSERT_EQ(merge(out_acc, lse_acc, part.out, part.lse, rows, hq, d), Status::Ok)
          << last_error();
    }
    final_out[r] = out_acc;
    final_lse[r] = lse_acc;
    // Expected rows of the full result, in this rank's local order.
    std::vector<double> want_out, want_lse(static_cast<std::size_t>(rows * hq));
    for (const auto src : layouts[r].src_rows)
      for (int e = 0; e < hq * d; ++e) want_out.push_back(ref.out[src * hq * d + e]);
    for (int h = 0; h < hq; ++h)
      for (std::int64_t i = 0; i < rows; ++i)
        want_lse[h * rows + i] = ref.lse[h * full.total_q() + layouts[r].src_rows[i]];
    EXPECT_TRUE(all_close(out_acc, want_out, 2 * Tolerance<T>::forward, "ring out"));
    EXPECT_TRUE(all_close(lse_acc, want_lse, 2 * Tolerance<T>::forward, "ring lse"));
    grads[r] = {std::vector<T>(lq[r].size(), T(0)), std::vector<T>(lk[r].size(), T(0)),
                std::vector<T>(lv[r].size(), T(0))};
  }
  // Backward: every (q piece, kv piece) pair from the final out/lse, accumulated.
  for (int r = 0; r < degree; ++r) {
    for (int j = 0; j < degree; ++j) {
      Gradients<T> into{grads[r].dq, grads[j].dk, grads[j].dv};
      const auto g = run_backward(piece(r, j), shape, lq[r], lk[j], lv[j], final_out[r], ldout[r],
                                  final_lse[r], &into);
      grads[r].dq = g.dq;
      grads[j].dk = g.dk;
      grads[j].dv = g.dv;
    }
  }
  std::vector<double> dq(ref.dq.size(), kNaN), dk(ref.dk.size(), kNaN), dv(ref.dv.size(), kNaN);
  for (int r = 0; r < degree; ++r) {
    for (std::size_t i = 0; i < layouts[r].src_rows.size(); ++i) {
      const std::size_t src = static_cast<std::size_t>(layouts[r].src_rows[i]);
      for (int e = 0; e < hq * d; ++e) dq[src * hq * d + e] = grads[r].dq[i * hq * d + e];
      for (int e = 0; e < hkv * d; ++e) {
        dk[src * hkv * d + e] = grads[r].dk[i * hkv * d + e];
        dv[src * hkv * d + e] = grads[r].dv[i * hkv * d + e];
      }
    }
  }
  EXPECT_TRUE(all_close(dq, ref.dq, Tolerance<T>::backward, "ring dq"));
  EXPECT_TRUE(all_close(dk, ref.dk, Tolerance<T>::backward, "ring dk"));
  EXPECT_TRUE(all_close(dv, ref.dv, Tolerance<T>::backward, "ring dv"));
}

TYPED_TEST(RingTest, ZigzagPiecesMergedEqualFullAttentionForAnyDegree) {
  // Lengths not multiples of 2*degree, an empty and a one-token sequence.
  const std::vector<int> lengths = {37, 1, 0, 64, 23};
  for (const int degree : {1, 2, 3, 5, 8})
    check_ring<TypeParam>(lengths, AttentionShape{4, 2, 16, 0, true}, degree, 40 + degree);
}

TYPED_TEST(RingTest, NonCausalRingWithGqa8) {
  check_ring<TypeParam>({19, 30}, AttentionShape{8, 1, 8, 0, false}, 3, 77);
}

}  // namespace
}  // namespace dhp::kernels::testing
