// MPI backend above DHP_MPI_MAX_COUNT elements (INT_MAX in production): with the limit
// set to 3, every operation takes its large-count path (chunked reductions, derived
// datatypes for moves) on buffers of a few elements, and must give exactly what the
// world communicator (default limit, plain MPI calls) gives on the same inputs. Counts at
// or below the limit appear beside them as the boundary, where the plain path runs.
#include <gtest/gtest.h>

#include <cstdlib>
#include <numeric>
#include <random>

#include "dhp/env.hpp"
#include "dhp/error.hpp"
#include "dhp/runtime.hpp"
#include "runtime_test_util.hpp"

namespace dhp {
namespace {

using testing::world;

constexpr std::int64_t kMaxCount = 3;

// A second world communicator created while DHP_MPI_MAX_COUNT=3 (collective).
Communicator& small_world() {
  static const std::unique_ptr<Communicator> comm = [] {
    setenv("DHP_MPI_MAX_COUNT", std::to_string(kMaxCount).c_str(), 1);
    auto created = mpi_world_communicator();
    unsetenv("DHP_MPI_MAX_COUNT");
    return created;
  }();
  return *comm;
}

// Small integers: sums are exact whatever order MPI reduces in.
template <typename T>
std::vector<T> integers(std::size_t n, std::uint64_t seed) {
  std::mt19937_64 gen(seed);
  std::vector<T> out(n);
  for (auto& x : out) x = static_cast<T>(static_cast<int>(gen() % 201) - 100);
  return out;
}

TEST(CommLargeCount, MaxCountOutsideRangeIsRejected) {
  setenv("DHP_MPI_MAX_COUNT", "0", 1);
  EXPECT_THROW(env::mpi_max_count(), Error);
  unsetenv("DHP_MPI_MAX_COUNT");
  EXPECT_EQ(env::mpi_max_count(), 2147483647);
}

TEST(CommLargeCount, AllReduceInChunksMatchesOneCall) {
  const int r = world().rank();
  for (std::int64_t count : {0, 1, 3, 11}) {  // empty, one chunk, exact multiple, remainder
    const auto n = static_cast<std::size_t>(count);
    const auto values = integers<double>(n, 100 + static_cast<std::uint64_t>(r));
    for (ReduceOp op : {ReduceOp::Sum, ReduceOp::Max, ReduceOp::Min}) {
      std::vector<double> want(n), got(n);
      world().all_reduce(values.data(), want.data(), count, DataType::F64, op);
      small_world().all_reduce(values.data(), got.data(), count, DataType::F64, op);
      EXPECT_EQ(got, want) << "count " << count << " op " << to_string(op) << " rank " << r;
    }
    auto in_place = integers<std::int64_t>(n, 200 + static_cast<std::uint64_t>(r));
    std::vector<std::int64_t> want(n);
    world().all_reduce(in_place.data(), want.data(), count, DataType::I64, ReduceOp::Sum);
    small_world().all_reduce(in_place.data(), in_place.data(), count, DataType::I64, ReduceOp::Sum);
    EXPECT_EQ(in_place, want) << "in place, count " << count << " rank " << r;
  }
  // bf16 goes through the user-defined op, chunk by chunk (1, 2, ... are exact in bf16).
  const std::uint16_t one = 0x3F80;
  std::vector<std::uint16_t> halves(7, one), want(7);
  world().all_reduce(halves.data(), want.data(), 7, DataType::BF16, ReduceOp::Sum);
  small_world().all_reduce(halves.data(), halves.data(), 7, DataType::BF16, ReduceOp::Sum);
  EXPECT_EQ(halves, want);
}

TEST(CommLargeCount, ReduceScatterInChunksMatchesOneCall) {
  const int n = world().size(), r = world().rank();
  for (std::int64_t block : {2, 3, 7}) {
    const auto total = static_cast<std::size_t>(block * n);
    const auto values = integers<std::int64_t>(total, 300 + static_cast<std::uint64_t>(r));
    std::vector<std::int64_t> want(static_cast<std::size_t>(block), -1), got = want;
    world().reduce_scatter(values.data(), want.data(), block, DataType::I64, ReduceOp::Sum);
    small_world().reduce_scatter(values.data(), got.data(), block, DataType::I64, ReduceOp::Sum);
    EXPECT_EQ(got, want) << "block " << block << " rank " << r;
  }
}

TEST(CommLargeCount, AllGatherAndBroadcastWithDerivedTypesMatchOneCall) {
  const int n = world().size(), r = world().rank();
  for (std::int64_t count : {3, 8}) {
    const auto values = testing::random_values<double>(static_cast<std::size_t>(count),
                                                       400 + static_cast<std::uint64_t>(r));
    std::vector<double> want(static_cast<std::size_t>(count * n), -1.0), got = want;
    world().all_gather(values.data(), want.data(), count, DataType::F64);
    small_world().all_gather(values.data(), got.data(), count, DataType::F64);
    EXPECT_EQ(got, want) << "count " << count << " rank " << r;
  }
  std::vector<std::uint8_t> bytes(10, static_cast<std::uint8_t>(r == n - 1 ? 0 : 9));
  if (r == n - 1) std::iota(bytes.begin(), bytes.end(), std::uint8_t{1});
  std::vector<std::uint8_t> want = bytes;
  world().broadcast(want.data(), 10, DataType::U8, n - 1);
  small_world().broadcast(bytes.data(), 10, DataType::U8, n - 1);
  EXPECT_EQ(bytes, want);
  EXPECT_EQ(bytes[9], 10);
}

// Uneven counts (some 0, some above the limit) and displacements with gaps: the gaps of
// the receive buffer stay untouched.
TEST(CommLargeCount, AllToAllVWithDerivedTypesMatchesOneCall) {
  const int n = world().size(), r = world().rank();
  std::vector<std::int64_t> sc(n), sd(n), rc(n), rd(n);
  auto count = [](int from, int to) -> std::int64_t { return (from + 2 * to) % 3 * 4; };
  std::int64_t send_total = 0, recv_total = 0;
  for (int d = 0; d < n; ++d) {
    sc[d] = count(r, d);
    sd[d] = send_total + 1;  // one unused element before each block
    send_total = sd[d] + sc[d];
    rc[d] = count(d, r);
    rd[d] = recv_total + 2;
    recv_total = rd[d] + rc[d];
  }
  const auto send = testing::random_values<float>(static_cast<std::size_t>(send_total),
                                                  500 + static_cast<std::uint64_t>(r));
  std::vector<float> want(static_cast<std::size_t>(recv_total + 1), -7.f), got = want;
  world().all_to_all_v(send.data(), sc, sd, want.data(), rc, rd, DataType::F32);
  small_world().all_to_all_v(send.data(), sc, sd, got.data(), rc, rd, DataType::F32);
  EXPECT_EQ(got, want) << "rank " << r;
}

// Only rank 0's own sizes cross the limit (its send block sits 10 elements into its buffer):
// every rank must still post the same collective, or the exchange fails or hangs.
TEST(CommLargeCount, AllToAllVWhereOneRankAloneCrossesTheLimit) {
  const int n = world().size(), r = world().rank();
  const int next = (r + 1) % n, prev = (r + n - 1) % n;
  std::vector<std::int64_t> sc(n, 0), sd(n, 0), rc(n, 0), rd(n, 0);
  const std::int64_t offset = r == 0 ? 10 : 0;
  sc[next] = 1;
  sd[next] = offset;
  rc[prev] = 1;
  std::vector<float> send(static_cast<std::size_t>(offset + 1), -1.f);
  send.back() = static_cast<float>(100 + r);
  std::vector<float> want(1, -7.f), got = want;
  world().all_to_all_v(send.data(), sc, sd, want.data(), rc, rd, DataType::F32);
  small_world().all_to_all_v(send.data(), sc, sd, got.data(), rc, rd, DataType::F32);
  EXPECT_EQ(want[0], static_cast<float>(100 + prev)) << "rank " << r;
  EXPECT_EQ(got, want) << "rank " << r;
}

// Ring exchange of messages above the limit next to one below it, then blocking send/recv.
TEST(CommLargeCount, PointToPointWithDerivedTypesMatchesPlainMessages) {
  const int n = world().size(), r = world().rank();
  const int next = (r + 1) % n, prev = (r + n - 1) % n;
  const auto mine = testing::random_values<double>(11, 600 + static_cast<std::uint64_t>(r));
  std::vector<std::int32_t> tag_small{r, 2 * r};
  auto ring = [&](Communicator& c) {
    std::vector<double> got(11, -1.0);
    std::vector<std::int32_t> got_small(2, -1);
    const P2POp ops[] = {
        {P2POp::Kind::Send, next, const_cast<double*>(mine.data()), 11, DataType::F64, 5},
        {P2POp::Kind::Send, next, tag_small.data(), 2, DataType::I32, 6},
        {P2POp::Kind::Recv, prev, got.data(), 11, DataType::F64, 5},
        {P2POp::Kind::Recv, prev, got_small.data(), 2, DataType::I32, 6}};
    c.exchange(ops)->wait();
    EXPECT_EQ(got_small[1], 2 * prev);
    return got;
  };
  const auto want = ring(world());
  EXPECT_EQ(ring(small_world()), want) << "rank " << r;
  EXPECT_EQ(want, testing::random_values<double>(11, 600 + static_cast<std::uint64_t>(prev)));
  if (n > 1 && r < 2) {  // ranks 0 and 1: a blocking pair
    std::vector<std::int64_t> data(7, r == 0 ? 42 : 0);
    if (r == 0) small_world().send(data.data(), 7, DataType::I64, 1, 9);
    if (r == 1) small_world().recv(data.data(), 7, DataType::I64, 0, 9);
    EXPECT_EQ(data, std::vector<std::int64_t>(7, 42));
  }
}

}  // namespace
}  // namespace dhp
