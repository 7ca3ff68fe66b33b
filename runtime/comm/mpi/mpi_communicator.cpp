// MPI backend: non-blocking MPI calls polled with MPI_Test against a deadline, so that a
// hung or dead peer ends in dhp::Error(Communication) instead of a hang. Communicators use
// MPI_ERRORS_RETURN: MPI errors come back as codes and are turned into messages.
//
// Counts above INT_MAX (MPI-3 counts are int; OpenMPI 4.1 has no MPI-4 `_c` calls): moves
// (send/recv, broadcast, all-gather, all-to-all-v) describe a large buffer as one derived
// datatype, blocks of max_count elements plus a remainder; reductions, whose predefined
// ops do not apply to derived datatypes, are split into calls of at most max_count
// elements. max_count is DHP_MPI_MAX_COUNT (default INT_MAX; tests set it small).
#include <mpi.h>

#include <unistd.h>
#include <algorithm>
#include <array>
#include <climits>
#include <thread>

#include <fmt/format.h>

#include "dhp/communicator.hpp"
#include "dhp/env.hpp"
#include "dhp/error.hpp"
#include "dhp/float16.hpp"
#include "dhp/log.hpp"
#include "dhp/runtime.hpp"

namespace dhp {
namespace {

using Clock = std::chrono::steady_clock;

std::string mpi_error_string(int code) {
  char text[MPI_MAX_ERROR_STRING];
  int length = 0;
  MPI_Error_string(code, text, &length);
  return fmt::format("{} (MPI error {})", std::string(text, static_cast<std::size_t>(length)),
                     code);
}

MPI_Datatype mpi_type(DataType t) {
  switch (t) {
    case DataType::F32:
      return MPI_FLOAT;
    case DataType::F64:
      return MPI_DOUBLE;
    case DataType::BF16:
      return MPI_UINT16_T;  // bits; reductions through user ops below
    case DataType::F16:
      return MPI_UINT16_T;
    case DataType::I32:
      return MPI_INT32_T;
    case DataType::I64:
      return MPI_INT64_T;
    case DataType::U8:
      return MPI_UINT8_T;
  }
  return MPI_BYTE;
}

// --- 16-bit floating reductions: MPI has no bf16/f16 types, so they travel as uint16
// and user-defined ops reduce them through float (round to nearest even on the way back).
// (conversions: dhp/float16.hpp)

template <float (*ToFloat)(std::uint16_t), std::uint16_t (*FromFloat)(float), ReduceOp Op>
void reduce_16bit(void* in, void* inout, int* len, MPI_Datatype*) {
  const auto* a = static_cast<const std::uint16_t*>(in);
  auto* b = static_cast<std::uint16_t*>(inout);
  for (int i = 0; i < *len; ++i) {
    const float x = ToFloat(a[i]), y = ToFloat(b[i]);
    const float r = Op == ReduceOp::Sum   ? x + y
                    : Op == ReduceOp::Max ? std::max(x, y)
                                          : std::min(x, y);
    b[i] = FromFloat(r);
  }
}

// Created once (after MPI_Init), never freed: MPI frees user ops at MPI_Finalize.
MPI_Op user_op(DataType type, ReduceOp op) {
  static const auto ops = [] {
    std::array<MPI_Op, 6> created{};
    MPI_User_function* functions[6] = {reduce_16bit<bf16_to_float, float_to_bf16, ReduceOp::Sum>,
                                       reduce_16bit<bf16_to_float, float_to_bf16, ReduceOp::Max>,
                                       reduce_16bit<bf16_to_float, float_to_bf16, ReduceOp::Min>,
                                       reduce_16bit<f16_to_float, float_to_f16, ReduceOp::Sum>,
                                       reduce_16bit<f16_to_float, float_to_f16, ReduceOp::Max>,
                                       reduce_16bit<f16_to_float, float_to_f16, ReduceOp::Min>};
    for (int i = 0; i < 6; ++i)
      MPI_Op_create(functions[i], /*commute=*/1, &created[static_cast<std::size_t>(i)]);
    return created;
  }();
  const std::size_t base = type == DataType::BF16 ? 0 : 3;
  return ops[base + static_cast<std::size_t>(op)];
}

MPI_Op mpi_op(DataType type, ReduceOp op) {
  if (type == DataType::BF16 || type == DataType::F16) return user_op(type, op);
  switch (op) {
    case ReduceOp::Sum:
      return MPI_SUM;
    case ReduceOp::Max:
      return MPI_MAX;
    case ReduceOp::Min:
      return MPI_MIN;
  }
  return MPI_SUM;
}

// `count` elements of `base` starting `offset` elements into the buffer, for buffers
// whose count or offset exceeds `max_count`: q blocks of max_count elements then r
// elements, displacements in bytes (MPI_Aint), extent (offset + count) elements so that
// all-gather places rank i's data at i * count. Passed with a count of 1.
class LargeType {
 public:
  LargeType(DataType element, std::int64_t count, std::int64_t offset, std::int64_t max_count) {
    const MPI_Datatype base = mpi_type(element);
    const int element_size = data_type_size(element);
    const std::int64_t blocks = count / max_count, rest = count % max_count;
    DHP_CHECK(blocks <= INT_MAX, InvalidArgument,
              "{} elements in blocks of DHP_MPI_MAX_COUNT={}: {} blocks exceed INT_MAX", count,
              max_count, blocks);
    MPI_Datatype block = MPI_DATATYPE_NULL;
    MPI_Type_contiguous(static_cast<int>(max_count), base, &block);
    const int lengths[2] = {static_cast<int>(blocks), static_cast<int>(rest)};
    const MPI_Aint displacements[2] = {offset * element_size,
                                       (offset + blocks * max_count) * element_size};
    const MPI_Datatype types[2] = {block, base};
    MPI_Datatype layout = MPI_DATATYPE_NULL;
    MPI_Type_create_struct(2, lengths, displacements, types, &layout);
    MPI_Type_create_resized(layout, 0, (offset + count) * element_size, &type_);
    MPI_Type_commit(&type_);
    MPI_Type_free(&layout);
    MPI_Type_free(&block);
  }
  // Freeing right after posting is allowed: pending operations keep the type alive.
  ~LargeType() { MPI_Type_free(&type_); }
  LargeType(const LargeType&) = delete;
  LargeType& operator=(const LargeType&) = delete;
  MPI_Datatype type() const { return type_; }

 private:
  MPI_Datatype type_ = MPI_DATATYPE_NULL;
};

// Sleeps a little between polls once an operation is clearly not immediate: with more
// processes than cores (mpirun --oversubscribe) spinning would starve the peers we wait for.
void poll_pause(int polls) {
  if (polls < 64) return;
  if (polls < 1024) {
    std::this_thread::yield();
    return;
  }
  std::this_thread::sleep_for(std::chrono::microseconds(50));
}

class MpiCommunicator;

class MpiRequest final : public CommRequest {
 public:
  // collective: a non-blocking collective, which MPI forbids cancelling or freeing while
  // active (an abandoned one is left to MPI, and the communicator is aborted).
  MpiRequest(MpiCommunicator& comm, const char* op, std::vector<MPI_Request> requests,
             bool collective = false)
      : comm_(comm), op_(op), requests_(std::move(requests)), collective_(collective) {}
  ~MpiRequest() override;
  bool test() override;
  void wait(std::chrono::milliseconds timeout) override;
  void wait() override;

 private:
  MpiCommunicator& comm_;
  const char* op_;
  std::vector<MPI_Request> requests_;
  bool collective_ = false;
  bool done_ = false;
};

class MpiCommunicator final : public Communicator {
 public:
  // `max_count`: DHP_MPI_MAX_COUNT, read once for the world; split() hands its own down.
  MpiCommunicator(MPI_Comm comm, std::vector<int> world_ranks, std::chrono::milliseconds timeout,
                  std::string name, std::int64_t max_count)
      : Communicator(comm_rank(comm), comm_size(comm), Device::CPU, std::move(world_ranks), timeout,
                     std::move(name)),
        comm_(comm),
        max_count_(max_count) {}

  ~MpiCommunicator() override {
    // MPI_Comm_free is collective in spirit but local in practice (deferred until pending
    // operations finish); after an abort or a dead peer we skip it and let MPI_Abort clean up.
    int finalized = 0;
    MPI_Finalized(&finalized);
    if (!aborted_ && !finalized && comm_ != MPI_COMM_NULL) MPI_Comm_free(&comm_);
  }

  const char* backend() const noexcept override { return "mpi"; }

  CommRequestPtr iall_reduce(const void* send, void* recv, std::int64_t count, DataType type,
                             ReduceOp op) override {
    const char* name = "iall_reduce";
    begin(name);
    check_reducible(name, type);
    check_count(name, count);
    check_buffer(name, "send buffer", send, count);
    check_buffer(name, "receive buffer", recv, count);
    // Chunks of at most max_count elements, all posted before waiting (MPI matches
    // collectives on one communicator in issue order).
    std::vector<MPI_Request> requests;
    for (std::int64_t offset = 0; offset < count || requests.empty(); offset += max_count_) {
      const int n = static_cast<int>(std::min(count - offset, max_count_));
      requests.emplace_back(MPI_REQUEST_NULL);
      const int code = MPI_Iallreduce(send == recv ? MPI_IN_PLACE : at(send, offset, type),
                                      at(recv, offset, type), n, mpi_type(type), mpi_op(type, op),
                                      comm_, &requests.back());
      check(name, code);  // a failure aborts the communicator (chunks already posted leak)
    }
    return std::make_unique<MpiRequest>(*this, name, std::move(requests), /*collective=*/true);
  }

  void reduce_scatter(const void* send, void* recv, std::int64_t recv_count, DataType type,
                      ReduceOp op) override {
    const char* name = "reduce_scatter";
    begin(name);
    check_reducible(name, type);
    check_count(name, recv_count);
    check_buffer(name, "send buffer", send, recv_count);
    check_buffer(name, "receive buffer", recv, recv_count);
    MPI_Request request;
    if (recv_count <= max_count_) {
      check(name, MPI_Ireduce_scatter_block(send, recv, static_cast<int>(recv_count),
                                            mpi_type(type), mpi_op(type, op), comm_, &request));
      wait_all(name, &request, 1, timeout());
      return;
    }
    // Block i reduced onto rank i, in chunks of at most max_count elements.
    std::vector<MPI_Request> requests;
    for (int root = 0; root < size(); ++root) {
      for (std::int64_t offset = 0; offset < recv_count; offset += max_count_) {
        const int n = static_cast<int>(std::min(recv_count - offset, max_count_));
        requests.emplace_back();
        check(name,
              MPI_Ireduce(at(send, root * recv_count + offset, type), at(recv, offset, type), n,
                          mpi_type(type), mpi_op(type, op), root, comm_, &requests.back()));
      }
    }
    wait_all(name, requests.data(), static_cast<int>(requests.size()), timeout());
  }

  void all_gather(const void* send, void* recv, std::int64_t send_count, DataType type) override {
    const char* name = "all_gather";
    begin(name);
    check_count(name, send_count);
    check_buffer(name, "send buffer", send, send_count);
    check_buffer(name, "receive buffer", recv, send_count);
    MPI_Request request;
    if (send_count <= max_count_) {
      const int count = static_cast<int>(send_count);
      check(name, MPI_Iallgather(send, count, mpi_type(type), recv, count, mpi_type(type), comm_,
                                 &request));
    } else {
      const LargeType block(type, send_count, 0, max_count_);
      check(name, MPI_Iallgather(send, 1, block.type(), recv, 1, block.type(), comm_, &request));
    }
    wait_all(name, &request, 1, timeout());
  }

  void all_to_all_v(const void* send, std::span<const std::int64_t> send_counts,
                    std::span<const std::int64_t> send_displs, void* recv,
                    std::span<const std::int64_t> recv_counts,
                    std::span<const std::int64_t> recv_displs, DataType type) override {
    const char* name = "all_to_all_v";
    begin(name);
    const auto n = static_cast<std::size_t>(size());
    if (send_counts.size() != n || send_displs.size() != n || recv_counts.size() != n ||
        recv_displs.size() != n) {
      fail_argument(name, fmt::format("count/displacement arrays of sizes {}/{}/{}/{}, expected {}",
                                      send_counts.size(), send_displs.size(), recv_counts.size(),
                                      recv_displs.size(), n));
    }
    // MPI_Ialltoallw on every rank, whatever its own counts: which collective a rank posts
    // must not depend on its local sizes (alltoallv on one rank and alltoallw on another is
    // erroneous). A block whose count or byte displacement exceeds an int travels as a
    // derived datatype that carries both, passed with a count of 1 at displacement 0.
    MPI_Request request;
    const int element = data_type_size(type);
    std::vector<std::unique_ptr<LargeType>> blocks;
    std::vector<int> sc(n), sd(n), rc(n), rd(n);
    std::vector<MPI_Datatype> st(n), rt(n);
    auto describe_block = [&](std::int64_t count, std::int64_t displ, int& c, int& d,
                              MPI_Datatype& t) {
      check_count(name, count);
      check_count(name, displ);
      t = mpi_type(type);
      if (count == 0) displ = 0;  // nothing moves: no type needed whatever the displacement
      if (count <= max_count_ && displ <= max_count_ && displ * element <= INT_MAX) {
        c = static_cast<int>(count);
        d = static_cast<int>(displ * element);
        return;
      }
      blocks.push_back(std::make_unique<LargeType>(type, count, displ, max_count_));
      c = 1;
      d = 0;
      t = blocks.back()->type();
    };
    std::int64_t sending = 0, receiving = 0;
    for (std::size_t i = 0; i < n; ++i) {
      for (std::int64_t value : {send_counts[i], send_displs[i], recv_counts[i], recv_displs[i]})
        check_count(name, value);
      sending += send_counts[i];
      receiving += recv_counts[i];
    }
    check_buffer(name, "send buffer", send, sending);
    check_buffer(name, "receive buffer", recv, receiving);
    for (std::size_t i = 0; i < n; ++i) {
      describe_block(send_counts[i], send_displs[i], sc[i], sd[i], st[i]);
      describe_block(recv_counts[i], recv_displs[i], rc[i], rd[i], rt[i]);
    }
    check(name, MPI_Ialltoallw(send, sc.data(), sd.data(), st.data(), recv, rc.data(), rd.data(),
                               rt.data(), comm_, &request));
    blocks.clear();
    wait_all(name, &request, 1, timeout());
  }

  void broadcast(void* buffer, std::int64_t count, DataType type, int root) override {
    const char* name = "broadcast";
    begin(name);
    check_peer(name, root);
    check_count(name, count);
    check_buffer(name, "buffer", buffer, count);
    MPI_Request request;
    if (count <= max_count_) {
      check(name,
            MPI_Ibcast(buffer, static_cast<int>(count), mpi_type(type), root, comm_, &request));
    } else {
      const LargeType block(type, count, 0, max_count_);
      check(name, MPI_Ibcast(buffer, 1, block.type(), root, comm_, &request));
    }
    wait_all(name, &request, 1, timeout());
  }

  void barrier() override {
    const char* name = "barrier";
    begin(name);
    MPI_Request request;
    check(name, MPI_Ibarrier(comm_, &request));
    wait_all(name, &request, 1, timeout());
  }

  CommRequestPtr isend(const void* buffer, std::int64_t count, DataType type, int peer,
                       int tag) override {
    const P2POp op{P2POp::Kind::Send, peer, const_cast<void*>(buffer), count, type, tag};
    return post("isend", std::span<const P2POp>(&op, 1));
  }

  CommRequestPtr irecv(void* buffer, std::int64_t count, DataType type, int peer,
                       int tag) override {
    const P2POp op{P2POp::Kind::Recv, peer, buffer, count, type, tag};
    return post("irecv", std::span<const P2POp>(&op, 1));
  }

  CommRequestPtr exchange(std::span<const P2POp> ops) override { return post("exchange", ops); }

  std::unique_ptr<Communicator> split(int color, int key,
                                      std::vector<int> member_world_ranks) override {
    const char* name = "split";
    begin(name);
    // MPI_Comm_split blocks with no timeout: a non-blocking barrier first proves every
    // member is alive and has reached the split, so the split itself cannot hang on a peer.
    MPI_Request request;
    check(name, MPI_Ibarrier(comm_, &request));
    wait_all(name, &request, 1, timeout());
    MPI_Comm child = MPI_COMM_NULL;
    check(name, MPI_Comm_split(comm_, color < 0 ? MPI_UNDEFINED : color, key, &child));
    if (child == MPI_COMM_NULL) return nullptr;
    MPI_Comm_set_errhandler(child, MPI_ERRORS_RETURN);
    std::vector<int> found = world_ranks_of(child);
    if (!member_world_ranks.empty() && member_world_ranks != found) {
      MPI_Comm_free(&child);
      fail(name, fmt::format("the new group is {} but the caller expected {}", group_name(found),
                             group_name(member_world_ranks)));
    }
    return std::make_unique<MpiCommunicator>(child, std::move(found), timeout(), std::string(),
                                             max_count_);
  }

  void abort() noexcept override {
    if (!aborted_) DHP_LOG_WARN("{}: aborted", describe());
    mark_aborted("abort() was called");
  }

  // Polls `requests` until all complete, `limit` passes (Error naming op and elapsed
  // time), or MPI reports an error.
  void wait_all(const char* op, MPI_Request* requests, int count,
                std::chrono::milliseconds limit) const {
    const auto start = Clock::now();
    for (int polls = 0;; ++polls) {
      int done = 0;
      check(op, MPI_Testall(count, requests, &done, MPI_STATUSES_IGNORE));
      if (done) return;
      const auto elapsed =
          std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - start);
      if (elapsed >= limit) fail_timeout(op, elapsed, limit);
      poll_pause(polls);
    }
  }

  void check(const char* op, int code) const {
    if (code != MPI_SUCCESS) fail(op, mpi_error_string(code));
  }

 private:
  static int comm_rank(MPI_Comm comm) {
    int rank = 0;
    MPI_Comm_rank(comm, &rank);
    return rank;
  }
  static int comm_size(MPI_Comm comm) {
    int size = 0;
    MPI_Comm_size(comm, &size);
    return size;
  }

  void begin(const char* op) const {
    check_not_aborted(op);
    DHP_LOG_TRACE("{}: {}", describe(), op);
  }

  void check_reducible(const char* op, DataType type) const {
    if (type == DataType::U8) fail_argument(op, "u8 buffers are moved, not reduced (reduce i32)");
  }

  void check_count(const char* op, std::int64_t value) const {
    if (value < 0) fail_argument(op, fmt::format("negative count/displacement {}", value));
  }

  void check_buffer(const char* op, const char* name, const void* buffer,
                    std::int64_t count) const {
    if (count > 0 && buffer == nullptr)
      fail_argument(op, fmt::format("{} is null for {} elements", name, count));
  }

  static void* at(const void* buffer, std::int64_t offset, DataType type) {
    return static_cast<char*>(const_cast<void*>(buffer)) + offset * data_type_size(type);
  }

  CommRequestPtr post(const char* op, std::span<const P2POp> ops) {
    begin(op);
    for (const P2POp& p : ops) {  // every op checked before the first is posted
      check_peer(op, p.peer);
      check_count(op, p.count);
      check_buffer(op, p.kind == P2POp::Kind::Send ? "send buffer" : "receive buffer", p.buffer,
                   p.count);
    }
    std::vector<MPI_Request> requests(ops.size(), MPI_REQUEST_NULL);
    for (std::size_t i = 0; i < ops.size(); ++i) {
      const P2POp& p = ops[i];
      // Above max_count the message is one element of a derived datatype; both sides
      // describe the same element sequence, which is all MPI matches.
      std::unique_ptr<LargeType> block;
      int count = static_cast<int>(p.count);
      MPI_Datatype datatype = mpi_type(p.type);
      if (p.count > max_count_) {
        block = std::make_unique<LargeType>(p.type, p.count, 0, max_count_);
        count = 1;
        datatype = block->type();
      }
      const int code =
          p.kind == P2POp::Kind::Send
              ? MPI_Isend(p.buffer, count, datatype, p.peer, p.tag, comm_, &requests[i])
              : MPI_Irecv(p.buffer, count, datatype, p.peer, p.tag, comm_, &requests[i]);
      if (code != MPI_SUCCESS) {
        for (std::size_t j = 0; j < i; ++j) {
          MPI_Cancel(&requests[j]);
          MPI_Request_free(&requests[j]);
        }
        fail(op,
             fmt::format("{} peer {}: {}", p.kind == P2POp::Kind::Send ? "send to" : "recv from",
                         p.peer, mpi_error_string(code)));
      }
    }
    return std::make_unique<MpiRequest>(*this, op, std::move(requests));
  }

  static std::vector<int> world_ranks_of(MPI_Comm comm) {
    MPI_Group group, world_group;
    MPI_Comm_group(comm, &group);
    MPI_Comm_group(MPI_COMM_WORLD, &world_group);
    int n = 0;
    MPI_Group_size(group, &n);
    std::vector<int> local(static_cast<std::size_t>(n)), world(static_cast<std::size_t>(n));
    for (int i = 0; i < n; ++i) local[static_cast<std::size_t>(i)] = i;
    MPI_Group_translate_ranks(group, n, local.data(), world_group, world.data());
    MPI_Group_free(&group);
    MPI_Group_free(&world_group);
    return world;
  }

  MPI_Comm comm_;
  std::int64_t max_count_;  // most elements one MPI call or datatype block carries
};

MpiRequest::~MpiRequest() {
  if (done_) return;
  // Abandoned (an exception unwound past it). A receive must be cancelled *and completed*
  // before its buffer is freed, or a late message lands in freed memory; cancelling a
  // receive is local, so its completion comes at once. A send that cannot be cancelled is
  // left to finish on its own (it only reads). Either way the peers are mid-operation.
  bool pending = false;
  for (MPI_Request& r : requests_) {
    if (r == MPI_REQUEST_NULL) continue;
    int complete = 0;
    MPI_Test(&r, &complete, MPI_STATUS_IGNORE);
    if (complete) continue;
    pending = true;
    if (collective_) continue;
    MPI_Cancel(&r);
    const auto start = Clock::now();
    for (int polls = 0; !complete && Clock::now() - start < std::chrono::seconds(1); ++polls) {
      MPI_Test(&r, &complete, MPI_STATUS_IGNORE);
      poll_pause(polls);
    }
    if (!complete) MPI_Request_free(&r);
  }
  if (pending) comm_.abandon(op_);
}

bool MpiRequest::test() {
  if (done_) return true;
  int flag = 0;
  comm_.check(op_, MPI_Testall(static_cast<int>(requests_.size()), requests_.data(), &flag,
                               MPI_STATUSES_IGNORE));
  done_ = flag != 0;
  return done_;
}

void MpiRequest::wait(std::chrono::milliseconds timeout) {
  if (done_) return;
  comm_.wait_all(op_, requests_.data(), static_cast<int>(requests_.size()), timeout);
  done_ = true;
}

void MpiRequest::wait() { wait(comm_.timeout()); }

}  // namespace

std::unique_ptr<Communicator> mpi_world_communicator() {
  int initialised = 0;
  MPI_Initialized(&initialised);
  DHP_CHECK(initialised, InvalidArgument,
            "mpi_world_communicator: MPI is not initialised (create a dhp::MpiRuntime first)");
  const std::int64_t max_count = env::mpi_max_count();  // before a communicator exists to leak
  const auto timeout = env::comm_timeout();
  MPI_Comm world = MPI_COMM_NULL;
  const int code = MPI_Comm_dup(MPI_COMM_WORLD, &world);
  DHP_CHECK(code == MPI_SUCCESS, Communication, "MPI_Comm_dup(MPI_COMM_WORLD): {}",
            mpi_error_string(code));
  MPI_Comm_set_errhandler(world, MPI_ERRORS_RETURN);
  int size = 0;
  MPI_Comm_size(world, &size);
  std::vector<int> ranks(static_cast<std::size_t>(size));
  for (int i = 0; i < size; ++i) ranks[static_cast<std::size_t>(i)] = i;
  return std::make_unique<MpiCommunicator>(world, std::move(ranks), timeout, "world", max_count);
}

ProcessInfo mpi_process_info() {
  ProcessInfo info;
  MPI_Comm_rank(MPI_COMM_WORLD, &info.world_rank);
  MPI_Comm_size(MPI_COMM_WORLD, &info.world_size);
  // Processes of the same host share memory: MPI_COMM_TYPE_SHARED groups them.
  MPI_Comm local = MPI_COMM_NULL;
  MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, info.world_rank, MPI_INFO_NULL, &local);
  MPI_Comm_rank(local, &info.local_rank);
  MPI_Comm_size(local, &info.local_size);
  MPI_Comm_free(&local);
  char host[MPI_MAX_PROCESSOR_NAME];
  int length = 0;
  MPI_Get_processor_name(host, &length);
  info.host.assign(host, static_cast<std::size_t>(length));
  return info;
}

MpiRuntime::MpiRuntime() {
  int initialised = 0;
  MPI_Initialized(&initialised);
  if (!initialised) {
    const int code = MPI_Init_thread(nullptr, nullptr, MPI_THREAD_MULTIPLE, &thread_level_);
    DHP_CHECK(code == MPI_SUCCESS, Communication, "MPI_Init_thread failed: {}",
              mpi_error_string(code));
    initialised_here_ = true;
  } else {
    MPI_Query_thread(&thread_level_);
  }
  MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
  if (thread_level_ < MPI_THREAD_SERIALIZED) {
    DHP_LOG_WARN(
        "MPI provides thread level {} < MPI_THREAD_SERIALIZED: call dhp's runtime from "
        "the main thread only",
        thread_level_);
  }
  process_ = mpi_process_info();
}

MpiRuntime::~MpiRuntime() {
  int finalized = 0;
  MPI_Finalized(&finalized);
  if (initialised_here_ && !finalized) MPI_Finalize();
}

std::unique_ptr<Communicator> MpiRuntime::world() const { return mpi_world_communicator(); }

}  // namespace dhp
