// Zigzag bookkeeping, row gather/scatter and the Ulysses head scatter/gather.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <numeric>
#include <random>
#include <vector>

#include "dhp/kernels.hpp"

namespace dhp::kernels {
namespace {

// Every length 0..40 in one packed batch, for every degree 1..8: each row lands on exactly
// one rank with its true position; rank r's rows are chunk r then chunk 2d-1-r, chunk c
// starting at floor(c*L/(2d)), so chunk sizes differ by at most 1.
TEST(Zigzag, CoversEveryRowOnceWithBalancedChunks) {
  std::vector<std::int32_t> cu = {0};
  for (int length = 0; length <= 40; ++length) cu.push_back(cu.back() + length);
  const int num_seqs = static_cast<int>(cu.size()) - 1;
  for (int degree = 1; degree <= 8; ++degree) {
    SCOPED_TRACE("degree " + std::to_string(degree));
    std::vector<int> owner_count(static_cast<std::size_t>(cu.back()), 0);
    for (int rank = 0; rank < degree; ++rank) {
      const std::int64_t rows = zigzag_local_rows(cu.data(), num_seqs, degree, rank);
      ASSERT_GE(rows, 0) << last_error();
      std::vector<std::int32_t> cu_local(cu.size(), -1), src(static_cast<std::size_t>(rows), -1),
          pos(static_cast<std::size_t>(rows), -1);
      ASSERT_EQ(
          zigzag_layout(cu.data(), num_seqs, degree, rank, cu_local.data(), src.data(), pos.data()),
          Status::Ok)
          << last_error();
      ASSERT_EQ(cu_local.front(), 0);
      ASSERT_EQ(cu_local.back(), rows);
      for (int s = 0; s < num_seqs; ++s) {
        const std::int64_t length = cu[s + 1] - cu[s], chunks = 2 * degree;
        const std::int64_t first_chunk = rank, second_chunk = chunks - 1 - rank;
        auto begin = [&](std::int64_t c) { return c * length / chunks; };
        std::vector<std::int32_t> want;
        for (const std::int64_t c : {first_chunk, second_chunk})
          for (std::int64_t p = begin(c); p < begin(c + 1); ++p)
            want.push_back(static_cast<std::int32_t>(p));
        const std::vector<std::int32_t> got(pos.begin() + cu_local[s],
                                            pos.begin() + cu_local[s + 1]);
        EXPECT_EQ(got, want) << "sequence of length " << length << " rank " << rank;
        for (std::int32_t i = cu_local[s]; i < cu_local[s + 1]; ++i) {
          EXPECT_EQ(src[i], cu[s] + pos[i]);
          ++owner_count[static_cast<std::size_t>(src[i])];
        }
        for (std::int64_t c = 0; c < chunks; ++c) {
          const std::int64_t size = begin(c + 1) - begin(c);
          EXPECT_TRUE(size == length / chunks || size == length / chunks + 1) << size;
        }
      }
    }
    for (std::size_t row = 0; row < owner_count.size(); ++row)
      ASSERT_EQ(owner_count[row], 1) << "row " << row;
  }
}

TEST(RowCopy, ScatterInvertsGather) {
  std::mt19937_64 rng(1);
  const int rows = 57, row_bytes = 24;
  std::vector<unsigned char> src(rows * row_bytes);
  for (auto& b : src) b = static_cast<unsigned char>(rng());
  std::vector<std::int32_t> perm(rows);
  std::iota(perm.begin(), perm.end(), 0);
  std::shuffle(perm.begin(), perm.end(), rng);
  std::vector<unsigned char> gathered(src.size(), 0), back(src.size(), 0);
  RowCopyArgs args;
  args.num_rows = rows;
  args.row_bytes = row_bytes;
  args.rows = perm.data();
  args.src = src.data();
  args.dst = gathered.data();
  ASSERT_EQ(gather_rows(args), Status::Ok) << last_error();
  for (int i = 0; i < rows; ++i)
    ASSERT_TRUE(std::equal(gathered.begin() + i * row_bytes, gathered.begin() + (i + 1) * row_bytes,
                           src.begin() + perm[i] * row_bytes));
  args.src = gathered.data();
  args.dst = back.data();
  ASSERT_EQ(scatter_rows(args), Status::Ok) << last_error();
  EXPECT_EQ(back, src);
}

TEST(RowCopy, GatherMayRepeatRows) {
  const std::vector<double> src = {0, 1, 10, 11, 20, 21};
  const std::vector<std::int32_t> rows = {2, 2, 0};
  std::vector<double> dst(6, -1);
  RowCopyArgs args;
  args.num_rows = 3;
  args.row_bytes = 2 * sizeof(double);
  args.rows = rows.data();
  args.src = src.data();
  args.dst = dst.data();
  ASSERT_EQ(gather_rows(args), Status::Ok) << last_error();
  EXPECT_EQ(dst, (std::vector<double>{20, 21, 20, 21, 0, 1}));
}

TEST(Ulysses, ScatterLayoutAndGatherInverse) {
  for (const DType dtype : {DType::F32, DType::F64, DType::BF16}) {
    for (const int degree : {1, 2, 3, 6}) {
      const int tokens = 7, heads = 6, head_dim = 5, elem = dtype_size(dtype);
      const std::size_t bytes = static_cast<std::size_t>(tokens * heads * head_dim * elem);
      std::vector<unsigned char> src(bytes), blocks(bytes, 0), back(bytes, 0);
      for (std::size_t i = 0; i < bytes; ++i) src[i] = static_cast<unsigned char>(i * 7 + 3);
      HeadScatterArgs args;
      args.dtype = dtype;
      args.tokens = tokens;
      args.heads = heads;
      args.head_dim = head_dim;
      args.degree = degree;
      args.src = src.data();
      args.dst = blocks.data();
      ASSERT_EQ(ulysses_head_scatter(args), Status::Ok) << last_error();
      // blocks[j][t][hh][:] == src[t][j*heads/degree + hh][:]
      const int local_heads = heads / degree, vec = head_dim * elem;
      for (int j = 0; j < degree; ++j)
        for (int t = 0; t < tokens; ++t)
          for (int hh = 0; hh < local_heads; ++hh) {
            const auto* b =
                &blocks[static_cast<std::size_t>(((j * tokens + t) * local_heads + hh) * vec)];
            const auto* s =
                &src[static_cast<std::size_t>((t * heads + j * local_heads + hh) * vec)];
            ASSERT_TRUE(std::equal(b, b + vec, s))
                << "block " << j << " token " << t << " head " << hh;
          }
      args.src = blocks.data();
      args.dst = back.data();
      ASSERT_EQ(ulysses_head_gather(args), Status::Ok) << last_error();
      EXPECT_EQ(back, src) << to_string(dtype) << " degree " << degree;
    }
  }
}

}  // namespace
}  // namespace dhp::kernels
