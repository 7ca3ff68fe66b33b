// Data dispatch: every local row is the right token of the right sample (zigzag chunks
// or whole), the inverse returns the input exactly, TP groups all get the tokens, and the
// global token count is the same whatever the plan.
#include <gtest/gtest.h>

#include <random>

#include "dhp/dispatch.hpp"
#include "runtime_test_util.hpp"

namespace dhp {
namespace {

using testing::world;

constexpr std::int64_t kTokenBase = 1000000;  // token id = sample * base + position

void check_round_trip(const Plan& plan, int num_samples, std::uint64_t seed) {
  Communicator& comm = world();
  const int me = comm.rank(), n = comm.size();
  std::mt19937_64 gen(seed);
  std::vector<std::int64_t> lengths;
  std::vector<int> owners;
  for (int s = 0; s < num_samples; ++s) {
    lengths.push_back(static_cast<std::int64_t>(gen() % 23));  // includes 0 and lengths < 2d
    owners.push_back(static_cast<int>(gen() % static_cast<std::uint64_t>(n)));
  }
  for (std::size_t w = 0; w < plan.waves.size(); ++w) {
    const WaveDispatch dispatch(plan, static_cast<int>(w), lengths, owners, me, n);
    std::vector<std::int64_t> owned;
    for (int s = 0; s < num_samples; ++s)
      if (owners[static_cast<std::size_t>(s)] == me)
        for (std::int64_t p = 0; p < lengths[static_cast<std::size_t>(s)]; ++p)
          owned.push_back(s * kTokenBase + p);
    ASSERT_EQ(static_cast<std::int64_t>(owned.size()), dispatch.owned_rows());

    std::vector<std::int64_t> local(static_cast<std::size_t>(dispatch.local_rows()), -1);
    dispatch.forward(comm, owned.data(), local.data(), sizeof(std::int64_t));
    const WaveLayout& layout = dispatch.layout();
    ASSERT_EQ(layout.cu_seqlens.size(), layout.pieces.size() + 1);
    for (const LocalPiece& piece : layout.pieces) {
      EXPECT_EQ(layout.cu_seqlens[static_cast<std::size_t>(&piece - layout.pieces.data()) + 1],
                piece.offset + piece.rows);
      for (std::int64_t r = piece.offset; r < piece.offset + piece.rows; ++r) {
        const auto i = static_cast<std::size_t>(r);
        EXPECT_EQ(local[i], piece.sample * kTokenBase + layout.positions[i])
            << "wave " << w << " local row " << r << " of sample " << piece.sample;
      }
      if (piece.sharding == Sharding::Whole) {
        EXPECT_EQ(piece.rows, piece.length);
      }
    }
    // Every token of the wave is held exactly once per TP index.
    std::int64_t held = layout.plan_rank >= 0 ? dispatch.local_rows() : 0, expected = 0;
    for (const SequencePlan& seq : plan.waves[w].sequences)
      expected += lengths[static_cast<std::size_t>(seq.sample)];
    EXPECT_EQ(global_count(comm, held), expected * plan.llm.tp);

    // Inverse: negated tokens come back to exactly this wave's rows of the owner.
    for (auto& x : local) x = -x - 1;
    std::vector<std::int64_t> back = owned;
    dispatch.inverse(comm, local.data(), back.data(), sizeof(std::int64_t));
    std::size_t row = 0;
    std::vector<bool> in_wave(static_cast<std::size_t>(num_samples), false);
    for (const SequencePlan& seq : plan.waves[w].sequences)
      in_wave[static_cast<std::size_t>(seq.sample)] = true;
    for (int s = 0; s < num_samples; ++s) {
      if (owners[static_cast<std::size_t>(s)] != me) continue;
      for (std::int64_t p = 0; p < lengths[static_cast<std::size_t>(s)]; ++p, ++row) {
        EXPECT_EQ(back[row], in_wave[static_cast<std::size_t>(s)] ? -owned[row] - 1 : owned[row]);
      }
    }
    // And the round trip of the untouched rows is exact.
    dispatch.forward(comm, owned.data(), local.data(), sizeof(std::int64_t));
    back = owned;
    dispatch.inverse(comm, local.data(), back.data(), sizeof(std::int64_t));
    EXPECT_EQ(back, owned);
  }
}

TEST(Dispatch, RoundTripOverRandomPlans) {
  const int n = world().size();
  for (std::uint64_t seed = 1; seed <= 6; ++seed) {
    check_round_trip(testing::random_plan(n, 1, 0, 11, 1 + static_cast<int>(seed % 3), seed), 11,
                     seed + 100);
  }
}

TEST(Dispatch, TensorParallelGroupsAllReceiveTheTokens) {
  const int n = world().size();
  if (n % 2 != 0) GTEST_SKIP() << "needs an even world for tp = 2";
  check_round_trip(testing::random_plan(n / 2, 2, 0, 9, 2, 7), 9, 8);
}

TEST(Dispatch, EncoderOnlyRanksOwnSamplesButRunNone) {
  const int n = world().size();
  if (n < 3) GTEST_SKIP() << "needs a rank outside the LLM layout";
  check_round_trip(testing::random_plan(n - 1, 1, 1, 10, 2, 9), 10, 10);
}

TEST(Dispatch, ZigzagChunksMatchTheKernelLayout) {
  for (int degree = 1; degree <= 8; ++degree) {
    for (std::int32_t length : {0, 1, 5, 16, 17, 31}) {
      const std::int32_t cu[2] = {0, length};
      std::int64_t covered = 0;
      for (int r = 0; r < degree; ++r) {
        const auto rows = kernels::zigzag_local_rows(cu, 1, degree, r);
        std::vector<std::int32_t> cu_local(2), src(static_cast<std::size_t>(rows) + 1),
            pos(static_cast<std::size_t>(rows) + 1);
        ASSERT_EQ(kernels::zigzag_layout(cu, 1, degree, r, cu_local.data(), src.data(), pos.data()),
                  kernels::Status::Ok);
        const ZigzagChunks c = zigzag_chunks(length, degree, r);
        ASSERT_EQ(c.rows(), rows) << "L=" << length << " d=" << degree << " r=" << r;
        std::vector<std::int32_t> mine;
        for (auto p = c.begin0; p < c.end0; ++p) mine.push_back(static_cast<std::int32_t>(p));
        for (auto p = c.begin1; p < c.end1; ++p) mine.push_back(static_cast<std::int32_t>(p));
        EXPECT_EQ(mine, std::vector<std::int32_t>(pos.begin(), pos.begin() + rows));
        covered += rows;
      }
      EXPECT_EQ(covered, length);
    }
  }
}

}  // namespace
}  // namespace dhp
