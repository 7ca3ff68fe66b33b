// Merge of partial attention results, and the ring-attention identity built from the
// kernels alone: zigzag pieces attending every rank's KV piece, merged, equal full attention
// (forward), and per-piece backwards from the final out/lse sum to the full gradients.
#include <gtest/gtest.h>

#include "attention_reference.hpp"

namespace dhp::kernels::testing {
namespace {

// out_acc/lse_acc/lse_part in the accumulator type of T, out_part in P: T, or the
// accumulator type (16-bit rings keep their partial outputs in fp32).
template <typename T, typename P = T>
Status merge(std::vector<Acc<T>>& out_acc, std::vector<Acc<T>>& lse_acc,
             const std::vector<P>& out_part, const std::vector<Acc<T>>& lse_part, std::int64_t rows,
             int heads, int head_dim) {
  MergeArgs args;
  args.dtype = dtype_of<P>();
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
  ASSERT_EQ(merge<float>(out_acc, lse_acc, out_part, lse_part, 4, 1, 2), Status::Ok)
      << last_error();
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

// A 16-bit partial merged into the fp32 accumulator: the part is read exactly (widened),
// the weights and the sum are fp32.
TEST(Merge, SixteenBitPartIntoFloatAccumulator) {
  const float nan = std::numeric_limits<float>::quiet_NaN();
  const float kNegInf = -std::numeric_limits<float>::infinity();
  for (const bool bf16 : {true, false}) {
    std::vector<float> out_acc = {nan, nan, 1, 2};
    std::vector<float> lse_acc = {kNegInf, 0.5f};
    const std::vector<double> part = {0.15625, -3.5, 3, 4};  // exact in bf16 and f16
    std::vector<std::uint16_t> bits;
    for (double x : part)
      bits.push_back(bf16 ? float_to_bf16(static_cast<float>(x))
                          : float_to_f16(static_cast<float>(x)));
    const std::vector<float> lse_part = {1.0f, 0.5f};
    MergeArgs args;
    args.dtype = bf16 ? DType::BF16 : DType::F16;
    args.rows = 2;
    args.heads = 1;
    args.head_dim = 2;
    args.out_acc = out_acc.data();
    args.lse_acc = lse_acc.data();
    args.out_part = bits.data();
    args.lse_part = lse_part.data();
    ASSERT_EQ(merge_attention_partial(args), Status::Ok) << last_error();
    EXPECT_EQ(out_acc[0], 0.15625f);  // empty accumulator row: the part, copied
    EXPECT_EQ(out_acc[1], -3.5f);
    EXPECT_EQ(lse_acc[0], 1.0f);
    EXPECT_FLOAT_EQ(out_acc[2], 2);  // equal weights: the mean
    EXPECT_FLOAT_EQ(out_acc[3], 3);
    EXPECT_FLOAT_EQ(lse_acc[1], 0.5f + std::log(2.0f));
  }
}

template <typename T>
class RingTest : public ::testing::Test {};
using FloatTypes = ::testing::Types<float, double, BF16, F16>;
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

struct RingErrors {
  double out = 0, grad = 0;  // worst scaled errors against the fp64 reference
};

// Ring attention over `degree` ranks, simulated in one process with the kernels only, the
// way the runtime runs it: partial outputs in the accumulator type (accumulator_out; fp32
// for 16-bit) merged into an accumulator-type output rounded once at the end; every
// block's gradients added into accumulator-type buffers (accumulator_grads) rounded once,
// so 16-bit error does not grow with the degree. The fp64 backward reference takes the
// ring's rounded out for delta (reference_attention's delta_out).
template <typename T>
RingErrors check_ring(const std::vector<int>& lengths, const AttentionShape& shape, int degree,
                      std::uint64_t seed) {
  SCOPED_TRACE("degree " + std::to_string(degree));
  using A = Acc<T>;
  const Batch full = make_batch(lengths, lengths);
  const int hq = shape.heads_q, hkv = shape.heads_kv, d = shape.head_dim;
  std::mt19937_64 rng(seed);
  const auto total = static_cast<std::size_t>(full.total_q());
  const auto q = cast<T>(random_vector(total * hq * d, rng));
  const auto k = cast<T>(random_vector(total * hkv * d, rng));
  const auto v = cast<T>(random_vector(total * hkv * d, rng));
  const auto dout = cast<T>(random_vector(total * hq * d, rng));
  const auto dout64 = to_double(dout);
  const Reference ref = reference_attention(full, shape, to_double(q), to_double(k), to_double(v));

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

  RingErrors errors;
  std::vector<std::vector<T>> final_out(degree);
  std::vector<std::vector<A>> final_lse(degree);
  std::vector<Gradients<A>> grads(degree);
  for (int r = 0; r < degree; ++r) {
    const auto rows = static_cast<std::int64_t>(layouts[r].src_rows.size());
    // Poisoned accumulator: lse -inf means "empty", whatever out holds.
    std::vector<A> out_acc(lq[r].size(), std::numeric_limits<A>::quiet_NaN());
    std::vector<A> lse_acc(static_cast<std::size_t>(rows * hq),
                           -std::numeric_limits<A>::infinity());
    for (int step = 0; step < degree; ++step) {
      const int j = (r - step + degree) % degree;  // the KV piece that arrives at this step
      const auto part = run_forward<T, A>(piece(r, j), shape, lq[r], lk[j], lv[j]);
      EXPECT_EQ((merge<T, A>(out_acc, lse_acc, part.out, part.lse, rows, hq, d)), Status::Ok)
          << last_error();
    }
    final_out[r] = cast<T>(to_double(out_acc));  // rounded once
    final_lse[r] = lse_acc;
    // Expected rows of the full result, in this rank's local order.
    std::vector<double> want_out, want_lse(static_cast<std::size_t>(rows * hq));
    for (const auto src : layouts[r].src_rows)
      for (int e = 0; e < hq * d; ++e) want_out.push_back(ref.out[src * hq * d + e]);
    for (int h = 0; h < hq; ++h)
      for (std::int64_t i = 0; i < rows; ++i)
        want_lse[h * rows + i] = ref.lse[h * full.total_q() + layouts[r].src_rows[i]];
    // The merges add fp32 (fp64) error only: twice the F32 (F64) part of the tolerance.
    const double merge_error = Tolerance<A>::forward;
    EXPECT_TRUE(all_close(final_out[r], want_out, Tolerance<T>::forward + merge_error, "ring out"));
    errors.out = std::max(errors.out, worst_scaled_error(final_out[r], want_out));
    EXPECT_TRUE(all_close(lse_acc, want_lse, 2 * Tolerance<A>::lse, "ring lse"));
    grads[r] = {std::vector<A>(lq[r].size(), A(0)), std::vector<A>(lk[r].size(), A(0)),
                std::vector<A>(lv[r].size(), A(0))};
  }
  // The fp64 backward, with delta from the ring's rounded out in the full layout.
  std::vector<double> out64(ref.out.size(), kNaN);
  for (int r = 0; r < degree; ++r)
    for (std::size_t i = 0; i < layouts[r].src_rows.size(); ++i)
      for (int e = 0; e < hq * d; ++e)
        out64[static_cast<std::size_t>(layouts[r].src_rows[i]) * hq * d + e] =
            static_cast<double>(final_out[r][i * hq * d + e]);
  const Reference bwd =
      reference_attention(full, shape, to_double(q), to_double(k), to_double(v), &dout64, &out64);
  // Backward: every (q piece, kv piece) pair from the final out/lse, accumulated.
  for (int r = 0; r < degree; ++r) {
    for (int j = 0; j < degree; ++j) {
      Gradients<A> into{grads[r].dq, grads[j].dk, grads[j].dv};
      const auto g = run_backward<T, A>(piece(r, j), shape, lq[r], lk[j], lv[j], final_out[r],
                                        ldout[r], final_lse[r], &into);
      grads[r].dq = g.dq;
      grads[j].dk = g.dk;
      grads[j].dv = g.dv;
    }
  }
  std::vector<T> dq(ref.out.size()), dk(k.size()), dv(v.size());
  for (int r = 0; r < degree; ++r) {
    for (std::size_t i = 0; i < layouts[r].src_rows.size(); ++i) {
      const std::size_t src = static_cast<std::size_t>(layouts[r].src_rows[i]);
      for (int e = 0; e < hq * d; ++e)  // rounded once
        dq[src * hq * d + e] = static_cast<T>(static_cast<double>(grads[r].dq[i * hq * d + e]));
      for (int e = 0; e < hkv * d; ++e) {
        dk[src * hkv * d + e] = static_cast<T>(static_cast<double>(grads[r].dk[i * hkv * d + e]));
        dv[src * hkv * d + e] = static_cast<T>(static_cast<double>(grads[r].dv[i * hkv * d + e]));
      }
    }
  }
  EXPECT_TRUE(all_close(dq, bwd.dq, Tolerance<T>::backward, "ring dq"));
  EXPECT_TRUE(all_close(dk, bwd.dk, Tolerance<T>::backward, "ring dk"));
  EXPECT_TRUE(all_close(dv, bwd.dv, Tolerance<T>::backward, "ring dv"));
  errors.grad = std::max({worst_scaled_error(dq, bwd.dq), worst_scaled_error(dk, bwd.dk),
                          worst_scaled_error(dv, bwd.dv)});
  return errors;
}

TYPED_TEST(RingTest, ZigzagPiecesMergedEqualFullAttentionForAnyDegree) {
  // Lengths not multiples of 2*degree, an empty and a one-token sequence.
  const std::vector<int> lengths = {37, 1, 0, 64, 23};
  for (const int degree : {1, 2, 3, 5, 7, 8})
    check_ring<TypeParam>(lengths, AttentionShape{4, 2, 16, 0, true}, degree, 40 + degree);
}

TYPED_TEST(RingTest, NonCausalRingWithGqa8) {
  check_ring<TypeParam>({19, 30}, AttentionShape{8, 1, 8, 0, false}, 3, 77);
}

// Long rings over long sequences, where a 16-bit accumulator would round once per step: the
// error at degree 7 and 8 stays within the one-rounding tolerance, as at degree 1.
TYPED_TEST(RingTest, LongRingOverLongSequencesKeepsOneRounding) {
  const std::vector<int> lengths = {1031, 61};
  for (const int degree : {1, 7, 8}) {
    for (const bool causal : {true, false}) {
      const RingErrors e =
          check_ring<TypeParam>(lengths, AttentionShape{2, 1, 80, 0, causal}, degree, 90 + degree);
      std::printf("%s degree %d %s: worst scaled error out %.3g, grad %.3g\n",
                  to_string(dtype_of<TypeParam>()), degree, causal ? "causal" : "full", e.out,
                  e.grad);
    }
  }
}

}  // namespace
}  // namespace dhp::kernels::testing
