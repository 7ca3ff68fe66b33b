// The LibTorch autograd function around CP attention: output and gradients equal those of
// a plain LibTorch fp64 attention on the whole packed batch (odd lengths, GQA), on every
// rank of a CP group spanning the world (degree = world size, under mpirun), for the ring
// and for UlyssesRing with the adapter's ranks_per_node; bfloat16 and float16 within one
// rounding of the fp64 reference of the rounded inputs (CUDA tensors: test_torch_cuda.cpp).
#include <gtest/gtest.h>

#include "dhp/error.hpp"
#include "torch_reference.hpp"

namespace dhp {
namespace {

using testing::world;

using testing::AttentionSetup;
using testing::unit_roundoff;

void check_matches_reference(at::ScalarType dtype, double tolerance, std::uint64_t seed,
                             const AttentionSetup& setup = {}) {
  testing::check_matches_reference(world(), dtype, tolerance, seed, setup);
}

TEST(TorchCpAttention, MatchesLibTorchReferenceF64) {
  check_matches_reference(at::kDouble, 1e-10, 11);
}

TEST(TorchCpAttention, MatchesLibTorchReferenceF32) {
  check_matches_reference(at::kFloat, 2e-5, 12);
}

// bfloat16 and float16 through autograd (head_dim 80): one rounding (the unit roundoff)
// plus fp32 error of the fp64 reference of the rounded inputs.
TEST(TorchCpAttention, SixteenBitAutogradWithinOneRounding) {
  for (const at::ScalarType dtype : {at::kBFloat16, at::kHalf})
    check_matches_reference(dtype, unit_roundoff(dtype) + 1e-5, 13);
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
    EXPECT_NE(std::string(e.what()).find("has no communicator in the pool"), std::string::npos)
        << e.what();
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
