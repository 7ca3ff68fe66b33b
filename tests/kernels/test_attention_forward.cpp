// CPU attention forward against the naive fp64 reference on random packed batches.
#include <gtest/gtest.h>

#include "attention_reference.hpp"

namespace dhp::kernels::testing {
namespace {

struct LengthCase {
  const char* name;
  std::vector<int> q_lens, k_lens;
};

const std::vector<LengthCase>& length_cases() {
  static const std::vector<LengthCase> cases = {
      {"odd lengths", {17, 37, 127}, {17, 37, 127}},
      {"empty sequences", {0, 5, 9, 1, 0}, {3, 0, 9, 1, 0}},
      {"single token", {1}, {1}},
      {"q shorter than k", {10, 3, 70}, {20, 7, 90}},
      {"q longer than k", {20, 65}, {6, 64}},
  };
  return cases;
}

template <typename T>
class AttentionForwardTest : public ::testing::Test {};
using FloatTypes = ::testing::Types<float, double, BF16, F16>;
TYPED_TEST_SUITE(AttentionForwardTest, FloatTypes);

// Compares kernel and reference on identical (dtype-rounded) inputs, so the difference is
// the kernel's arithmetic error only.
template <typename T>
void check_forward(const Batch& batch, const AttentionShape& shape, std::uint64_t seed,
                   const std::string& label, bool print = false) {
  std::mt19937_64 rng(seed);
  const auto q = cast<T>(random_vector(
      static_cast<std::size_t>(batch.total_q() * shape.heads_q * shape.head_dim), rng));
  const auto k = cast<T>(random_vector(
      static_cast<std::size_t>(batch.total_k() * shape.heads_kv * shape.head_dim), rng));
  const auto v = cast<T>(random_vector(k.size(), rng));
  const Reference ref = reference_attention(batch, shape, to_double(q), to_double(k), to_double(v));
  const ForwardResult<T> got = run_forward(batch, shape, q, k, v);
  EXPECT_TRUE(all_close(got.out, ref.out, Tolerance<T>::forward, label + " out"));
  EXPECT_TRUE(all_close(got.lse, ref.lse, Tolerance<T>::lse, label + " lse"));
  if (print)
    std::printf("forward %s %s: worst scaled error out %.3g (tolerance %.3g), lse %.3g\n",
                to_string(dtype_of<T>()), label.c_str(), worst_scaled_error(got.out, ref.out),
                Tolerance<T>::forward, worst_scaled_error(got.lse, ref.lse));
}

TYPED_TEST(AttentionForwardTest, MatchesReferenceAcrossLengthsGqaAndMasks) {
  const int head_dims[] = {8, 16, 64};
  int variant = 0;
  for (const auto& lengths : length_cases()) {
    const Batch batch = make_batch(lengths.q_lens, lengths.k_lens);
    for (const int ratio : {1, 2, 4, 8}) {
      for (const bool causal : {true, false}) {
        AttentionShape shape;
        shape.heads_kv = ratio == 8 ? 1 : 2;
        shape.heads_q = shape.heads_kv * ratio;
        shape.head_dim = head_dims[variant++ % 3];
        shape.causal = causal;
        const std::string label = std::string(lengths.name) + " gqa=" + std::to_string(ratio) +
                                  " causal=" + std::to_string(causal) +
                                  " d=" + std::to_string(shape.head_dim);
        check_forward<TypeParam>(batch, shape, 1000 + variant, label);
      }
    }
  }
}

// The head sizes of the vision encoders and LLMs the runtime serves (SigLIP-so400m 72,
// Qwen2-VL's ViT 80, 64/96/128 elsewhere), causal (LLM) and not (encoder), on lengths
// that are no multiple of any block size.
TYPED_TEST(AttentionForwardTest, ModelHeadDimsCausalAndFull) {
  const Batch batch = make_batch({17, 37, 127}, {17, 37, 127});
  for (const int head_dim : {64, 72, 80, 96, 128}) {
    for (const bool causal : {true, false}) {
      const AttentionShape shape{4, 2, head_dim, 0, causal};
      check_forward<TypeParam>(
          batch, shape, 3000 + head_dim + causal,
          "d=" + std::to_string(head_dim) + " causal=" + std::to_string(causal), true);
    }
  }
}

TYPED_TEST(AttentionForwardTest, ExplicitSoftmaxScale) {
  const Batch batch = make_batch({33}, {33});
  AttentionShape shape{4, 2, 16, 0.37, true};
  check_forward<TypeParam>(batch, shape, 7, "scale=0.37");
}

// Explicit positions where some queries precede every key: those rows see nothing and
// must give out = 0, lse = -inf (what a ring step sees for a late KV chunk).
TYPED_TEST(AttentionForwardTest, RowsWithoutVisibleKeysGiveZeroAndMinusInfinity) {
  Batch batch = make_batch({6, 4}, {5, 3});
  batch.q_pos = {0, 1, 2, 3, 4, 5, /*seq 1*/ 10, 11, 12, 13};
  batch.k_pos = {3, 4, 5, 6, 7, /*seq 1*/ 20, 21, 22};  // seq 1: no query sees any key
  AttentionShape shape{2, 1, 8, 0, true};
  std::mt19937_64 rng(3);
  const auto q = cast<TypeParam>(random_vector(10 * 2 * 8, rng));
  const auto k = cast<TypeParam>(random_vector(8 * 8, rng));
  const auto v = cast<TypeParam>(random_vector(8 * 8, rng));
  const auto got = run_forward(batch, shape, q, k, v);
  for (int h = 0; h < 2; ++h) {
    for (int row : {0, 1, 2, 6, 7, 8, 9}) {
      EXPECT_EQ(got.lse[h * 10 + row], -std::numeric_limits<Acc<TypeParam>>::infinity()) << row;
      for (int c = 0; c < 8; ++c)
        EXPECT_EQ(static_cast<double>(got.out[(row * 2 + h) * 8 + c]), 0) << row;
    }
    EXPECT_TRUE(std::isfinite(got.lse[h * 10 + 3]));
  }
  const auto ref = reference_attention(batch, shape, to_double(q), to_double(k), to_double(v));
  EXPECT_TRUE(all_close(got.out, ref.out, Tolerance<TypeParam>::forward, "out"));
  EXPECT_TRUE(all_close(got.lse, ref.lse, Tolerance<TypeParam>::lse, "lse"));
}

// Long enough for several 64-row blocks in both directions, with positions that are
// not sorted inside a block (a zigzag piece pair), so block skipping must be exact.
TYPED_TEST(AttentionForwardTest, MultiBlockWithUnsortedPositions) {
  Batch batch = make_batch({150}, {200});
  for (int i = 0; i < 150; ++i) batch.q_pos.push_back(i < 75 ? i : 400 - i);
  for (int j = 0; j < 200; ++j) batch.k_pos.push_back((j * 37) % 211);
  AttentionShape shape{2, 2, 16, 0, true};
  check_forward<TypeParam>(batch, shape, 11, "unsorted positions");
}

TEST(AttentionForward, LargeLogitsStayFinite) {
  // Scores of order 1e3: a softmax without the running maximum would overflow even fp64.
  const Batch batch = make_batch({40}, {40});
  AttentionShape shape{1, 1, 8, 0, true};
  std::mt19937_64 rng(5);
  const auto q = cast<float>(random_vector(40 * 8, rng, 30.0));
  const auto k = cast<float>(random_vector(40 * 8, rng, 30.0));
  const auto v = cast<float>(random_vector(40 * 8, rng));
  const auto ref = reference_attention(batch, shape, to_double(q), to_double(k), to_double(v));
  const auto got = run_forward(batch, shape, q, k, v);
  EXPECT_TRUE(all_close(got.out, ref.out, 1e-4, "out"));
  EXPECT_TRUE(all_close(got.lse, ref.lse, 1e-5, "lse"));
}

}  // namespace
}  // namespace dhp::kernels::testing
