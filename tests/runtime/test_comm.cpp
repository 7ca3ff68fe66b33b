// MPI backend: every collective and point-to-point operation against values computed by
// hand, split into sub-groups, timeouts and the plan-hash check.
#include <gtest/gtest.h>

#include <chrono>
#include <numeric>

#include "dhp/error.hpp"
#include "dhp/group_pool.hpp"
#include "runtime_test_util.hpp"

namespace dhp {
namespace {

using testing::world;

TEST(Comm, AllReduceSumMaxMin) {
  Communicator& c = world();
  const int n = c.size(), r = c.rank();
  std::vector<double> sum{static_cast<double>(r), 1.0};
  c.all_reduce(std::span<double>(sum), ReduceOp::Sum);
  EXPECT_EQ(sum[0], n * (n - 1) / 2.0);
  EXPECT_EQ(sum[1], n);
  std::int64_t mx = r * 10, mn = r * 10;
  c.all_reduce(&mx, &mx, 1, DataType::I64, ReduceOp::Max);
  c.all_reduce(&mn, &mn, 1, DataType::I64, ReduceOp::Min);
  EXPECT_EQ(mx, (n - 1) * 10);
  EXPECT_EQ(mn, 0);
  std::vector<float> in{1.5f, -2.0f}, out(2);
  c.all_reduce(in.data(), out.data(), 2, DataType::F32, ReduceOp::Sum);  // out of place
  EXPECT_EQ(out[0], 1.5f * n);
  EXPECT_EQ(in[0], 1.5f);
}

TEST(Comm, AllReduceOf16BitFloats) {
  Communicator& c = world();
  const int n = c.size();
  if (n > 4) GTEST_SKIP() << "the expected bit patterns below cover worlds of 1..4";
  // Bit patterns of 1, 2, 3, 4 in f16 and bf16.
  const std::uint16_t f16[] = {0x3C00, 0x4000, 0x4200, 0x4400};
  const std::uint16_t bf16[] = {0x3F80, 0x4000, 0x4040, 0x4080};
  const DataType types[] = {DataType::F16, DataType::BF16};
  for (int t = 0; t < 2; ++t) {
    const std::uint16_t* bits = t == 0 ? f16 : bf16;
    std::uint16_t sum = bits[0];  // every rank adds 1
    c.all_reduce(&sum, &sum, 1, types[t], ReduceOp::Sum);
    EXPECT_EQ(sum, bits[n - 1]) << to_string(types[t]);
    std::uint16_t mine[2] = {bits[c.rank()], bits[c.rank()]};  // rank r holds r + 1
    c.all_reduce(&mine[0], &mine[0], 1, types[t], ReduceOp::Max);
    c.all_reduce(&mine[1], &mine[1], 1, types[t], ReduceOp::Min);
    EXPECT_EQ(mine[0], bits[n - 1]) << to_string(types[t]);
    EXPECT_EQ(mine[1], bits[0]) << to_string(types[t]);
  }
}

TEST(Comm, ReduceScatterAllGatherBroadcast) {
  Communicator& c = world();
  const int n = c.size(), r = c.rank();
  std::vector<std::int32_t> blocks(static_cast<std::size_t>(2 * n));
  for (int i = 0; i < 2 * n; ++i) blocks[static_cast<std::size_t>(i)] = i + r;
  std::vector<std::int32_t> shard(2);
  c.reduce_scatter(blocks.data(), shard.data(), 2, DataType::I32, ReduceOp::Sum);
  const int rank_sum = n * (n - 1) / 2;
  EXPECT_EQ(shard[0], 2 * r * n + rank_sum);
  EXPECT_EQ(shard[1], (2 * r + 1) * n + rank_sum);

  const auto gathered = c.all_gather_value<std::int64_t>(100 + r);
  for (int i = 0; i < n; ++i) EXPECT_EQ(gathered[static_cast<std::size_t>(i)], 100 + i);

  std::vector<double> data(3, r == n - 1 ? 7.25 : 0.0);
  c.broadcast(data.data(), 3, DataType::F64, n - 1);
  EXPECT_EQ(data[2], 7.25);
  c.barrier();
}

TEST(Comm, AllToAllVWithUnevenAndEmptyCounts) {
  Communicator& c = world();
  const int n = c.size(), r = c.rank();
  // Rank r sends (r + dest) % 3 values to dest, each = 1000 r + dest.
  std::vector<std::int64_t> sc(n), sd(n), rc(n), rd(n);
  std::vector<std::int64_t> send;
  for (int d = 0; d < n; ++d) {
    sc[d] = (r + d) % 3;
    sd[d] = static_cast<std::int64_t>(send.size());
    for (int i = 0; i < sc[d]; ++i) send.push_back(1000 * r + d);
    rc[d] = (d + r) % 3;
    rd[d] = d == 0 ? 0 : rd[d - 1] + rc[d - 1];
  }
  std::vector<std::int64_t> recv(static_cast<std::size_t>(rd[n - 1] + rc[n - 1]) + 1, -1);
  c.all_to_all_v(send.data(), sc, sd, recv.data(), rc, rd, DataType::I64);
  for (int s = 0; s < n; ++s)
    for (int i = 0; i < rc[s]; ++i)
      EXPECT_EQ(recv[static_cast<std::size_t>(rd[s] + i)], 1000 * s + r);
}

TEST(Comm, RingExchangeOverlapsAndSendRecv) {
  Communicator& c = world();
  const int n = c.size(), r = c.rank();
  const int next = (r + 1) % n, prev = (r + n - 1) % n;
  std::vector<float> mine(5, static_cast<float>(r)), got(5, -1.f);
  const P2POp ops[] = {{P2POp::Kind::Send, next, mine.data(), 5, DataType::F32, 3},
                       {P2POp::Kind::Recv, prev, got.data(), 5, DataType::F32, 3}};
  auto request = c.exchange(ops);
  request->wait();
  EXPECT_TRUE(request->test());
  EXPECT_EQ(got[4], static_cast<float>(prev));
  // Blocking send/recv pairs, ordered to avoid a cycle: even ranks send first.
  if (n > 1) {
    std::int32_t token = r, in = -1;
    if (r % 2 == 0) {
      c.send(&token, 1, DataType::I32, next);
      c.recv(&in, 1, DataType::I32, prev);
    } else {
      c.recv(&in, 1, DataType::I32, prev);
      c.send(&token, 1, DataType::I32, next);
    }
    // An odd world size makes the last even rank and rank 0 both send first: fine, MPI
    // buffers small messages eagerly.
    EXPECT_EQ(in, prev);
  }
}

TEST(Comm, SplitIntoGroupsKnowsWorldRanks) {
  Communicator& c = world();
  const int r = c.rank();
  // Two groups, odd and even ranks, in reverse rank order.
  std::vector<int> members;
  for (int i = c.size() - 1; i >= 0; --i)
    if (i % 2 == r % 2) members.push_back(i);
  auto sub = c.split(r % 2, c.size() - r, members);
  ASSERT_NE(sub, nullptr);
  EXPECT_EQ(sub->world_ranks(), members);
  EXPECT_EQ(sub->world_ranks()[static_cast<std::size_t>(sub->rank())], r);
  EXPECT_EQ(sub->timeout(), c.timeout());
  int one = 1;
  sub->all_reduce(&one, &one, 1, DataType::I32, ReduceOp::Sum);
  EXPECT_EQ(one, static_cast<int>(members.size()));
  // color < 0: not a member of anything.
  auto rest = c.split(r == 0 ? -1 : 0, r);
  EXPECT_EQ(rest == nullptr, r == 0);
  if (rest) {
    EXPECT_EQ(rest->size(), c.size() - 1);
  }
}

TEST(Comm, UnmatchedReceiveTimesOutWithAClearError) {
  // A timeout aborts the communicator it happened on: a copy of the world takes it.
  const std::unique_ptr<Communicator> copy = world().split(0, world().rank());
  Communicator& c = *copy;
  double sink = 0;
  auto request = c.irecv(&sink, 1, DataType::F64, c.rank(), /*tag=*/999);
  const auto start = std::chrono::steady_clock::now();
  try {
    request->wait(std::chrono::milliseconds(200));
    FAIL() << "an unmatched receive completed";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::Communication);
    const std::string what = e.what();
    EXPECT_NE(what.find("did not complete within the timeout"), std::string::npos) << what;
    EXPECT_NE(what.find(fmt::format("rank {}/{}", c.rank(), c.size())), std::string::npos) << what;
    EXPECT_NE(what.find("irecv"), std::string::npos) << what;
  }
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(5));
  request.reset();  // cancels the receive
  // The next call fails at once, saying why, instead of matching a stale message.
  try {
    c.barrier();
    FAIL() << "a communicator that timed out mid-operation was still used";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::Communication);
    EXPECT_NE(std::string(e.what()).find("aborted (irecv failed: did not complete"),
              std::string::npos)
        << e.what();
  }
  EXPECT_TRUE(c.aborted());
  world().barrier();
}

TEST(Comm, PeerOutOfRangeNamesTheGroup) {
  Communicator& c = world();
  double x = 0;
  try {
    c.isend(&x, 1, DataType::F64, c.size());
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("mpi world rank"), std::string::npos) << e.what();
  }
}

TEST(Comm, PlanHashMismatchIsDetected) {
  Communicator& c = world();
  EXPECT_NO_THROW(check_same_plan(c, 0xfeedbeefcafe1234ull));
  if (c.size() == 1) return;
  try {
    check_same_plan(c, c.rank() == 1 ? 42ull : 43ull);
    FAIL() << "mismatched plans accepted";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::Communication);
    EXPECT_NE(std::string(e.what()).find("different plans"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find(c.rank() == 1 ? "000000000000002a" : "000000000000002b"),
              std::string::npos)
        << e.what();
  }
}

}  // namespace
}  // namespace dhp
