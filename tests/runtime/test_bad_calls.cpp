// A caught argument error leaves the communicator usable: every public runtime entry
// point refuses bad arguments on every rank before it posts anything, and the next, valid
// call on the same communicator gives the right result. Two different bad calls in a row
// are no worse. A failure that can only be found mid-exchange aborts the communicator, and
// the next call on it fails at once instead of hanging.
#include <gtest/gtest.h>

#include <chrono>
#include <functional>
#include <memory>
#include <string>

#include "dhp/cp_attention.hpp"
#include "dhp/dispatch.hpp"
#include "dhp/error.hpp"
#include "dhp/grad_sync.hpp"
#include "dhp/group_pool.hpp"
#include "dhp/packed_cp_attention.hpp"
#include "runtime_test_util.hpp"

namespace dhp {
namespace {

using testing::world;

// Runs `call`, which must throw InvalidArgument whose message contains `expected`.
void expect_invalid(const std::function<void()>& call, const std::string& expected) {
  try {
    call();
    ADD_FAILURE() << "accepted; expected an error containing '" << expected << "'";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::InvalidArgument) << e.what();
    EXPECT_NE(std::string(e.what()).find(expected), std::string::npos) << e.what();
  }
}

// A packed batch with a sequence longer than the ring, a short one and one of length 1.
const std::vector<std::int64_t> kLengths{29, 7, 1, 13};
constexpr int kHeadsQ = 4, kHeadsKv = 2, kHeadDim = 8;

struct Tensors {
  std::vector<double> q, k, v, dout;
};

Tensors full_tensors() {
  std::int64_t total = 0;
  for (auto l : kLengths) total += l;
  const auto rows = static_cast<std::size_t>(total);
  return {testing::random_values<double>(rows * kHeadsQ * kHeadDim, 41),
          testing::random_values<double>(rows * kHeadsKv * kHeadDim, 42),
          testing::random_values<double>(rows * kHeadsKv * kHeadDim, 43),
          testing::random_values<double>(rows * kHeadsQ * kHeadDim, 44)};
}

std::vector<int> whole_world_ring() {
  std::vector<int> ring(static_cast<std::size_t>(world().size()));
  for (int r = 0; r < world().size(); ++r) ring[static_cast<std::size_t>(r)] = r;
  return ring;
}

// The valid call: ring attention over the whole world through the one-call API, forward
// and backward, compared with the single-process double reference on every rank.
void expect_valid_ring_attention(Communicator& comm, const std::vector<int>& ring,
                                 GroupPool* pool = nullptr,
                                 CpAttention attention = CpAttention::Ring) {
  const PackedCpAttention cp(kLengths, ring, comm.rank(), comm.size(), {}, attention);
  const Tensors full = full_tensors();
  std::vector<std::int64_t> cu{0};
  for (auto l : kLengths) cu.push_back(cu.back() + l);
  const auto ref =
      testing::reference_attention(cu, kHeadsQ, kHeadsKv, kHeadDim, full.q, full.k, full.v,
                                   full.dout);
  const auto rows = static_cast<std::size_t>(cp.local_rows());
  const std::int64_t q_row = kHeadsQ * kHeadDim * 8, kv_row = kHeadsKv * kHeadDim * 8;
  std::vector<double> q(rows * kHeadsQ * kHeadDim), k(rows * kHeadsKv * kHeadDim), v(k.size()),
      dout(q.size()), out(q.size()), lse(rows * kHeadsQ), dq(q.size()), dk(k.size()), dv(k.size());
  cp.shard(full.q.data(), q.data(), q_row);
  cp.shard(full.k.data(), k.data(), kv_row);
  cp.shard(full.v.data(), v.data(), kv_row);
  cp.shard(full.dout.data(), dout.data(), q_row);
  const kernels::AttentionShape shape{kHeadsQ, kHeadsKv, kHeadDim, 0.0, true};
  cp.forward(comm, kernels::DType::F64, shape, q.data(), k.data(), v.data(), out.data(),
             lse.data(), pool);
  cp.backward(comm, kernels::DType::F64, shape, q.data(), k.data(), v.data(), out.data(),
              lse.data(), dout.data(), dq.data(), dk.data(), dv.data(), pool);
  std::vector<double> out_full(full.q.size()), dq_full(full.q.size()), dk_full(full.k.size()),
      dv_full(full.k.size());
  cp.gather(comm, out.data(), out_full.data(), q_row);
  cp.gather(comm, dq.data(), dq_full.data(), q_row);
  cp.gather(comm, dk.data(), dk_full.data(), kv_row);
  cp.gather(comm, dv.data(), dv_full.data(), kv_row);
  if (!cp.in_ring()) return;
  const auto max_err = [](const std::vector<double>& a, const std::vector<double>& b) {
    double worst = 0;
    for (std::size_t i = 0; i < a.size(); ++i) worst = std::max(worst, std::abs(a[i] - b[i]));
    return worst;
  };
  EXPECT_LT(max_err(out_full, ref.out), 1e-12) << "rank " << comm.rank();
  EXPECT_LT(max_err(dq_full, ref.dq), 1e-12) << "rank " << comm.rank();
  EXPECT_LT(max_err(dk_full, ref.dk), 1e-12) << "rank " << comm.rank();
  EXPECT_LT(max_err(dv_full, ref.dv), 1e-12) << "rank " << comm.rank();
}

// One bad forward with the tensors of a valid call, `spoil` applied to its arguments.
struct ForwardCall {
  kernels::AttentionShape shape{kHeadsQ, kHeadsKv, kHeadDim, 0.0, true};
  bool null_q = false;
};

void bad_forward(Communicator& comm, const ForwardCall& call) {
  const PackedCpAttention cp(kLengths, whole_world_ring(), comm.rank(), comm.size());
  const auto rows = static_cast<std::size_t>(cp.local_rows()) + 1;
  std::vector<double> buf(rows * 64, 0.5), lse(rows * 8);
  cp.forward(comm, kernels::DType::F64, call.shape, call.null_q ? nullptr : buf.data(), buf.data(),
             buf.data(), buf.data(), lse.data());
}

TEST(BadCalls, CpAttentionShapeErrorsLeaveTheCommunicatorUsable) {
  Communicator& comm = world();
  ForwardCall heads;
  heads.shape.heads_q = 3;
  expect_invalid([&] { bad_forward(comm, heads); }, "is not a multiple of heads_kv");
  expect_valid_ring_attention(comm, whole_world_ring());

  ForwardCall no_dim;
  no_dim.shape.head_dim = 0;
  expect_invalid([&] { bad_forward(comm, no_dim); }, "head_dim=0");
  expect_valid_ring_attention(comm, whole_world_ring());

  ForwardCall default_shape;
  default_shape.shape = kernels::AttentionShape{};
  expect_invalid([&] { bad_forward(comm, default_shape); }, "heads_q=0");
  expect_valid_ring_attention(comm, whole_world_ring());

  ForwardCall negative_scale;
  negative_scale.shape.softmax_scale = -1;
  expect_invalid([&] { bad_forward(comm, negative_scale); }, "softmax_scale=-1");
  expect_valid_ring_attention(comm, whole_world_ring());
  EXPECT_FALSE(comm.aborted());
}

TEST(BadCalls, NullBuffersNamedAndTwoBadCallsInARow) {
  Communicator& comm = world();
  ForwardCall null_q;
  null_q.null_q = true;
  ForwardCall heads;
  heads.shape.heads_q = 5;
  // Two different bad calls back to back, then a valid one.
  expect_invalid([&] { bad_forward(comm, null_q); }, "q is null");
  expect_invalid([&] { bad_forward(comm, heads); }, "heads_q=5");
  expect_valid_ring_attention(comm, whole_world_ring());

  // Backward with a null dq.
  const PackedCpAttention cp(kLengths, whole_world_ring(), comm.rank(), comm.size());
  const auto rows = static_cast<std::size_t>(cp.local_rows()) + 1;
  std::vector<double> buf(rows * 64, 0.5), lse(rows * 8);
  const kernels::AttentionShape shape{kHeadsQ, kHeadsKv, kHeadDim, 0.0, true};
  expect_invalid(
      [&] {
        cp.backward(comm, kernels::DType::F64, shape, buf.data(), buf.data(), buf.data(),
                    buf.data(), lse.data(), buf.data(), nullptr, buf.data(), buf.data());
      },
      "dq is null");
  expect_valid_ring_attention(comm, whole_world_ring());
}

TEST(BadCalls, UlyssesWithoutItsGroupThenWithIt) {
  Communicator& comm = world();
  if (comm.size() < 2) GTEST_SKIP() << "needs two ranks";
  GroupPool pool(comm);
  // A ring of two: 2 divides both the 4 query heads and the 2 KV heads.
  const std::vector<int> ring{comm.size() - 1, 0};
  const PackedCpAttention cp(kLengths, ring, comm.rank(), comm.size(), {}, CpAttention::Ulysses);
  if (cp.in_ring())  // ranks outside the ring have nothing to do, and nothing to refuse
    expect_invalid([&] { expect_valid_ring_attention(comm, ring, &pool, CpAttention::Ulysses); },
                   "has no communicator in the pool");
  EXPECT_TRUE(!cp.in_ring() || uses_ulysses(cp.layout(), {kHeadsQ, kHeadsKv, kHeadDim, 0, true}));
  pool.prewarm(cp.plan());
  expect_valid_ring_attention(comm, ring, &pool, CpAttention::Ulysses);
  expect_valid_ring_attention(comm, whole_world_ring());
}

TEST(BadCalls, DispatchRefusesBadPlansAndBuffersThenMoves) {
  Communicator& comm = world();
  const int n = comm.size();
  const std::vector<std::int64_t> lengths{5, 9, 2};
  const std::vector<int> owners{0, n - 1, n / 2};
  Plan plan = testing::one_wave_plan(n, {n}, 3, [](int) { return true; });
  if (n > 1) {
    Plan member_zero = plan;
    member_zero.waves[0].sequences[0].member = 0;  // zigzag with a member
    expect_invalid([&] { WaveDispatch(member_zero, 0, lengths, owners, comm.rank(), n); },
                   "is zigzag-split over its group but has member 0");
  }
  const WaveDispatch dispatch(plan, 0, lengths, owners, comm.rank(), n);
  std::vector<std::int64_t> owned;
  for (std::size_t s = 0; s < lengths.size(); ++s)
    if (owners[s] == comm.rank())
      for (std::int64_t t = 0; t < lengths[s]; ++t) owned.push_back(100 * static_cast<int>(s) + t);
  std::vector<std::int64_t> local(static_cast<std::size_t>(dispatch.local_rows()) + 1);
  if (!owned.empty()) {
    try {
      dispatch.forward(comm, nullptr, local.data(), 8);
      ADD_FAILURE() << "a null source buffer was accepted";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("source buffer is null"), std::string::npos);
    }
  }
  // Every rank must take part in the collective the ranks above refused to start: ranks
  // that own nothing made no call, so the bad call only refused on owners, before the
  // all_to_all_v. The next forward on every rank is then matched correctly.
  expect_invalid([&] { dispatch.forward(comm, owned.data(), local.data(), 0); }, "row_bytes=0");
  dispatch.forward(comm, owned.data(), local.data(), 8);
  const WaveLayout& L = dispatch.layout();
  for (const LocalPiece& piece : L.pieces)
    for (std::int64_t r = 0; r < piece.rows; ++r) {
      const auto row = static_cast<std::size_t>(piece.offset + r);
      EXPECT_EQ(local[row], 100 * piece.sample + L.positions[row]);
    }
  std::vector<std::int64_t> back(owned.size(), -1);
  dispatch.inverse(comm, local.data(), back.data(), 8);
  EXPECT_EQ(back, owned);
}

TEST(BadCalls, GradientSyncRefusesThenSums) {
  Communicator& comm = world();
  std::vector<double> grads(5, 1.0 + comm.rank());
  expect_invalid([&] { sync_gradients(comm, nullptr, 5, DataType::F64); },
                 "null gradient buffer");
  expect_invalid([&] { sync_gradients(comm, grads.data(), 5, DataType::U8); }, "of u8 gradients");
  expect_invalid([&] { sync_gradients(comm, grads.data(), -1, DataType::F64); }, "count -1");
  sync_gradients(comm, grads.data(), 5, DataType::F64);
  const double n = comm.size();
  for (double g : grads) EXPECT_DOUBLE_EQ(g, n * (n + 1) / 2);
}

TEST(BadCalls, CommunicatorArgumentErrorsLeaveItUsable) {
  Communicator& comm = world();
  double x = 1;
  expect_invalid([&] { comm.all_reduce(&x, &x, -2, DataType::F64, ReduceOp::Sum); },
                 "negative count/displacement -2");
  expect_invalid([&] { comm.isend(&x, 1, DataType::F64, comm.size()); }, "peer rank");
  expect_invalid([&] { comm.broadcast(&x, 1, DataType::F64, -1); }, "peer rank -1");
  expect_invalid([&] { comm.all_reduce(nullptr, nullptr, 3, DataType::F64, ReduceOp::Sum); },
                 "send buffer is null");
  const std::vector<std::int64_t> one{1};
  if (comm.size() > 1)
    expect_invalid([&] { comm.all_to_all_v(&x, one, one, &x, one, one, DataType::F64); },
                   "count/displacement arrays of sizes 1/1/1/1");
  comm.all_reduce(&x, &x, 1, DataType::F64, ReduceOp::Sum);
  EXPECT_DOUBLE_EQ(x, comm.size());
  EXPECT_FALSE(comm.aborted());
}

TEST(BadCalls, PackedApiChecksItsArguments) {
  Communicator& comm = world();
  const int n = comm.size();
  expect_invalid([&] { PackedCpAttention({4, 5}, {0, 0}, comm.rank(), n); }, "in the ring twice");
  expect_invalid([&] { PackedCpAttention({4, 5}, {n}, comm.rank(), n); }, "outside [0,");
  expect_invalid([&] { PackedCpAttention({4, -5}, {0}, comm.rank(), n); }, "has length -5");
  expect_invalid(
      [&] {
        PackedCpAttention({4, 5}, {0}, comm.rank(), n,
                          {SequenceSharding::whole(0), SequenceSharding::whole(1)});
      },
      "whole on member 1 of a ring of 1");
  expect_invalid(
      [&] {
        PackedCpAttention({4}, {0}, comm.rank(), n, {SequenceSharding{Sharding::Zigzag, 0}});
      },
      "zigzag-split but names member 0");
  expect_valid_ring_attention(comm, whole_world_ring());
}

// A bad argument on one rank only: it refuses before sending, but its peers are already
// waiting on it. They time out, and a timeout mid-exchange aborts the communicator, so
// their next call fails at once, saying why, instead of hanging or matching stale data.
TEST(BadCalls, ARankLocalErrorAbortsThePeersCommunicatorWithinTheTimeout) {
  if (world().size() < 2) GTEST_SKIP() << "needs two ranks";
  const std::unique_ptr<Communicator> copy = world().split(0, world().rank());
  copy->set_timeout(std::chrono::milliseconds(400));
  ForwardCall call;
  call.null_q = copy->rank() == 0;
  const auto start = std::chrono::steady_clock::now();
  try {
    bad_forward(*copy, call);
    ADD_FAILURE() << "rank " << copy->rank() << ": the call completed";
  } catch (const Error& e) {
    if (copy->rank() == 0) {
      EXPECT_EQ(e.kind(), ErrorKind::InvalidArgument) << e.what();
      EXPECT_FALSE(copy->aborted());
    } else {
      EXPECT_EQ(e.kind(), ErrorKind::Communication) << e.what();
      EXPECT_TRUE(copy->aborted());
      const auto refused_at = std::chrono::steady_clock::now();
      try {
        copy->barrier();
        ADD_FAILURE() << "an aborted communicator ran a barrier";
      } catch (const Error& again) {
        EXPECT_NE(std::string(again.what()).find("refused: the communicator was aborted"),
                  std::string::npos)
            << again.what();
      }
      EXPECT_LT(std::chrono::steady_clock::now() - refused_at, std::chrono::milliseconds(100));
    }
  }
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(10));
  world().barrier();  // the world itself was never involved
}

}  // namespace
}  // namespace dhp
