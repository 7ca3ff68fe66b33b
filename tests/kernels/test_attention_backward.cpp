// CPU attention backward against the naive fp64 reference and against central finite
// differences of the forward.
#include <gtest/gtest.h>

#include "attention_reference.hpp"

namespace dhp::kernels::testing {
namespace {

template <typename T>
class AttentionBackwardTest : public ::testing::Test {};
using FloatTypes = ::testing::Types<float, double, BF16, F16>;
TYPED_TEST_SUITE(AttentionBackwardTest, FloatTypes);

struct Inputs {
  std::vector<double> q, k, v, dout;
};

Inputs random_inputs(const Batch& batch, const AttentionShape& shape, std::uint64_t seed) {
  std::mt19937_64 rng(seed);
  const auto q_elems = static_cast<std::size_t>(batch.total_q() * shape.heads_q * shape.head_dim);
  const auto k_elems = static_cast<std::size_t>(batch.total_k() * shape.heads_kv * shape.head_dim);
  Inputs in;
  in.q = random_vector(q_elems, rng);
  in.k = random_vector(k_elems, rng);
  in.v = random_vector(k_elems, rng);
  in.dout = random_vector(q_elems, rng);
  return in;
}

template <typename T>
void check_backward(const Batch& batch, const AttentionShape& shape, std::uint64_t seed,
                    const std::string& label, bool print = false) {
  const Inputs in = random_inputs(batch, shape, seed);
  const auto q = cast<T>(in.q), k = cast<T>(in.k), v = cast<T>(in.v), dout = cast<T>(in.dout);
  const auto dout64 = to_double(dout);
  const Reference fwd = reference_attention(batch, shape, to_double(q), to_double(k), to_double(v));
  // The backward takes the final out and lse: feed the reference's (out rounded to T, lse
  // to the accumulator type), and give the reference's backward the same rounded out.
  const auto out = cast<T>(fwd.out);
  const auto out64 = to_double(out);
  const Reference ref =
      reference_attention(batch, shape, to_double(q), to_double(k), to_double(v), &dout64, &out64);
  const auto grads = run_backward(batch, shape, q, k, v, out, dout, cast<Acc<T>>(fwd.lse));
  const double tol = Tolerance<T>::backward;
  EXPECT_TRUE(all_close(grads.dq, ref.dq, tol, label + " dq"));
  EXPECT_TRUE(all_close(grads.dk, ref.dk, tol, label + " dk"));
  EXPECT_TRUE(all_close(grads.dv, ref.dv, tol, label + " dv"));
  if (print)
    std::printf("backward %s %s: worst scaled error dq %.3g dk %.3g dv %.3g (tolerance %.3g)\n",
                to_string(dtype_of<T>()), label.c_str(), worst_scaled_error(grads.dq, ref.dq),
                worst_scaled_error(grads.dk, ref.dk), worst_scaled_error(grads.dv, ref.dv), tol);
}

TYPED_TEST(AttentionBackwardTest, MatchesReferenceAcrossLengthsGqaAndMasks) {
  const struct {
    const char* name;
    std::vector<int> q_lens, k_lens;
  } cases[] = {
      {"odd lengths", {17, 37, 127}, {17, 37, 127}},
      {"empty sequences", {0, 5, 9, 1, 0}, {3, 0, 9, 1, 0}},
      {"single token", {1}, {1}},
      {"q shorter than k", {10, 70}, {20, 90}},
  };
  const int head_dims[] = {8, 16, 64};
  int variant = 0;
  for (const auto& c : cases) {
    const Batch batch = make_batch(c.q_lens, c.k_lens);
    for (const int ratio : {1, 2, 4, 8}) {
      for (const bool causal : {true, false}) {
        AttentionShape shape;
        shape.heads_kv = ratio == 8 ? 1 : 2;
        shape.heads_q = shape.heads_kv * ratio;
        shape.head_dim = head_dims[variant++ % 3];
        shape.causal = causal;
        check_backward<TypeParam>(batch, shape, 2000 + variant,
                                  std::string(c.name) + " gqa=" + std::to_string(ratio) +
                                      " causal=" + std::to_string(causal) +
                                      " d=" + std::to_string(shape.head_dim));
      }
    }
  }
}

TYPED_TEST(AttentionBackwardTest, ModelHeadDimsCausalAndFull) {
  const Batch batch = make_batch({17, 37, 127}, {17, 37, 127});
  for (const int head_dim : {64, 72, 80, 96, 128}) {
    for (const bool causal : {true, false}) {
      check_backward<TypeParam>(
          batch, AttentionShape{4, 2, head_dim, 0, causal}, 4000 + head_dim + causal,
          "d=" + std::to_string(head_dim) + " causal=" + std::to_string(causal), true);
    }
  }
}

TYPED_TEST(AttentionBackwardTest, RowsWithoutVisibleKeysContributeNothing) {
  Batch batch = make_batch({5}, {4});
  batch.q_pos = {0, 1, 2, 3, 4};
  batch.k_pos = {2, 3, 4, 5};  // queries 0 and 1 see nothing
  check_backward<TypeParam>(batch, AttentionShape{2, 1, 8, 0, true}, 17, "-inf rows");
}

TYPED_TEST(AttentionBackwardTest, AccumulateAddsToExistingGradients) {
  const Batch batch = make_batch({9, 13}, {9, 13});
  const AttentionShape shape{4, 2, 8, 0, true};
  const Inputs in = random_inputs(batch, shape, 23);
  using T = TypeParam;
  const auto q = cast<T>(in.q), k = cast<T>(in.k), v = cast<T>(in.v), dout = cast<T>(in.dout);
  const auto fwd = run_forward(batch, shape, q, k, v);
  const auto fresh = run_backward(batch, shape, q, k, v, fwd.out, dout, fwd.lse);
  std::mt19937_64 rng(29);
  Gradients<T> initial{cast<T>(random_vector(q.size(), rng)), cast<T>(random_vector(k.size(), rng)),
                       cast<T>(random_vector(v.size(), rng))};
  const auto summed = run_backward(batch, shape, q, k, v, fwd.out, dout, fwd.lse, &initial);
  // 16-bit: both sides are rounded results of the same fp32 block gradient, so the sum is
  // within one rounding of the summed output plus the fresh one's.
  auto expect_sum = [](const std::vector<T>& base, const std::vector<T>& add,
                       const std::vector<T>& got, const char* what) {
    std::vector<double> want(base.size());
    for (std::size_t i = 0; i < base.size(); ++i) want[i] = double(base[i]) + double(add[i]);
    EXPECT_TRUE(all_close(got, want, 2 * Tolerance<T>::forward, what));
  };
  expect_sum(initial.dq, fresh.dq, summed.dq, "dq");
  expect_sum(initial.dk, fresh.dk, summed.dk, "dk");
  expect_sum(initial.dv, fresh.dv, summed.dv, "dv");
}

// accumulator_grads: the same gradients in the accumulator type, not rounded to T, so
// adding block after block rounds nothing until the caller converts once.
TYPED_TEST(AttentionBackwardTest, AccumulatorGradsAreTheUnroundedSum) {
  using T = TypeParam;
  const Batch batch = make_batch({9, 40}, {9, 40});
  const AttentionShape shape{4, 2, 16, 0, true};
  const Inputs in = random_inputs(batch, shape, 37);
  const auto q = cast<T>(in.q), k = cast<T>(in.k), v = cast<T>(in.v), dout = cast<T>(in.dout);
  const auto fwd = run_forward(batch, shape, q, k, v);
  const auto rounded = run_backward(batch, shape, q, k, v, fwd.out, dout, fwd.lse);
  const auto wide = run_backward<T, Acc<T>>(batch, shape, q, k, v, fwd.out, dout, fwd.lse);
  // Rounding the accumulator-type gradients gives exactly the T gradients.
  for (std::size_t i = 0; i < rounded.dq.size(); ++i)
    ASSERT_EQ(static_cast<double>(static_cast<T>(wide.dq[i])), static_cast<double>(rounded.dq[i]))
        << "dq[" << i << "]";
  for (std::size_t i = 0; i < rounded.dk.size(); ++i) {
    ASSERT_EQ(static_cast<double>(static_cast<T>(wide.dk[i])), static_cast<double>(rounded.dk[i]))
        << "dk[" << i << "]";
    ASSERT_EQ(static_cast<double>(static_cast<T>(wide.dv[i])), static_cast<double>(rounded.dv[i]))
        << "dv[" << i << "]";
  }
  // Accumulating twice into them gives twice the value (no rounding in between).
  const auto twice = run_backward<T, Acc<T>>(batch, shape, q, k, v, fwd.out, dout, fwd.lse, &wide);
  for (std::size_t i = 0; i < wide.dq.size(); ++i)
    ASSERT_EQ(twice.dq[i], 2 * wide.dq[i]) << "dq[" << i << "]";
}

// d(loss)/d(x) with loss = sum(out * W): W is dout. Central differences in fp64 on a tiny
// case check the backward against the forward itself, independent of any formula.
TEST(AttentionBackward, MatchesFiniteDifferences) {
  Batch batch = make_batch({3, 5}, {4, 5});
  const AttentionShape shape{2, 1, 4, 0, true};
  const Inputs in = random_inputs(batch, shape, 31);
  const auto fwd = run_forward(batch, shape, in.q, in.k, in.v);
  const auto grads = run_backward(batch, shape, in.q, in.k, in.v, fwd.out, in.dout, fwd.lse);
  auto loss = [&](const std::vector<double>& q, const std::vector<double>& k,
                  const std::vector<double>& v) {
    const auto out = run_forward(batch, shape, q, k, v).out;
    double sum = 0;
    for (std::size_t i = 0; i < out.size(); ++i) sum += out[i] * in.dout[i];
    return sum;
  };
  constexpr double kStep = 1e-6;
  auto check = [&](const std::vector<double>& analytic, int which, const char* name) {
    for (std::size_t i = 0; i < analytic.size(); ++i) {
      std::vector<double> plus[3] = {in.q, in.k, in.v}, minus[3] = {in.q, in.k, in.v};
      plus[which][i] += kStep;
      minus[which][i] -= kStep;
      const double numeric =
          (loss(plus[0], plus[1], plus[2]) - loss(minus[0], minus[1], minus[2])) / (2 * kStep);
      EXPECT_NEAR(analytic[i], numeric, 1e-7 * (1 + std::abs(numeric))) << name << "[" << i << "]";
    }
  };
  check(grads.dq, 0, "dq");
  check(grads.dk, 1, "dk");
  check(grads.dv, 2, "dv");
}

}  // namespace
}  // namespace dhp::kernels::testing
