// One communicator interface for every backend (MPI on CPU buffers, NCCL on CUDA buffers).
//
// Contract shared by all backends:
// - Blocking operations (all_reduce, ..., barrier, send, recv) return once the result is
//   in the receive buffer (NCCL: the backend waits for its stream). They wait at most
//   timeout(); past it they throw dhp::Error(Communication) naming the backend, the group
//   (its world ranks), this rank, the operation and the elapsed time. They never hang.
// - Non-blocking point-to-point (isend, irecv, exchange) return a CommRequest whose
//   wait() has the same timeout rule. Ring attention overlaps them with compute.
// - Every member of the communicator must call a collective with matching arguments, in
//   the same order. Point-to-point messages between two ranks are matched in issue order
//   (tags are checked by MPI and ignored by NCCL: do not rely on them for reordering).
// - Counts are in elements of `type`; buffers live on device() (host memory for CPU).
//   send == recv (same pointer) is allowed for all_reduce (in place).
// - Errors of the backend library are turned into dhp::Error(Communication) with the
//   library's message (MPI_Error_string, ncclGetErrorString + ncclGetLastError).
// - Arguments are checked before anything is posted: a bad count, peer, root or array size
//   throws dhp::Error(InvalidArgument) and leaves the communicator usable. A failure found
//   once an operation is posted (a timeout, a backend error, a request abandoned before it
//   completed because an exception unwound past it) leaves peers mid-operation, so it
//   aborts the communicator: every later call throws Error(Communication) at once, saying
//   it was aborted and why, instead of matching stale messages or hanging.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <type_traits>
#include <vector>

#include "dhp/kernels.hpp"

namespace dhp {

using kernels::Device;

// Element types moved by communicators: the kernels' floating types plus integers and
// raw bytes (layouts, positions, token ids).
enum class DataType { F32, F64, BF16, F16, I32, I64, U8 };

enum class ReduceOp { Sum, Max, Min };

const char* to_string(DataType t) noexcept;
const char* to_string(ReduceOp op) noexcept;
int data_type_size(DataType t) noexcept;
DataType data_type(kernels::DType t) noexcept;

// DataType of a C++ element type (for the typed helpers below).
template <typename T>
constexpr DataType data_type_of();
template <>
constexpr DataType data_type_of<float>() {
  return DataType::F32;
}
template <>
constexpr DataType data_type_of<double>() {
  return DataType::F64;
}
template <>
constexpr DataType data_type_of<std::int32_t>() {
  return DataType::I32;
}
template <>
constexpr DataType data_type_of<std::int64_t>() {
  return DataType::I64;
}
template <>
constexpr DataType data_type_of<std::uint8_t>() {
  return DataType::U8;
}
template <>
constexpr DataType data_type_of<std::uint64_t>() {
  return DataType::I64;
}  // bit-moves only

// A pending non-blocking operation. Destroying an incomplete request cancels it where the
// backend can (MPI_Cancel) and otherwise abandons it; the buffers must outlive the wait,
// and a request must not outlive the communicator that issued it.
class CommRequest {
 public:
  virtual ~CommRequest() = default;
  CommRequest() = default;
  CommRequest(const CommRequest&) = delete;
  CommRequest& operator=(const CommRequest&) = delete;

  // True once complete; never blocks. Throws Error(Communication) if the operation failed.
  virtual bool test() = 0;
  // Blocks until complete; throws Error(Communication) past `timeout`.
  virtual void wait(std::chrono::milliseconds timeout) = 0;
  // Same with the timeout of the communicator that issued it.
  virtual void wait() = 0;
  // Device backends (NCCL): the operation runs in the order of the communicator's stream(),
  // and the caller orders its own work after it with an event recorded there instead of
  // waiting on the host (ring attention does). The request may then be destroyed before
  // the operation completes without that counting as abandoning it; errors surface in the
  // communicator's next blocking call. Returns false where there is no such stream (host
  // backends): the request must be waited.
  virtual bool release_to_stream() noexcept { return false; }
};
using CommRequestPtr = std::unique_ptr<CommRequest>;

// One side of a batched point-to-point exchange (see Communicator::exchange).
struct P2POp {
  enum class Kind { Send, Recv };
  Kind kind = Kind::Send;
  int peer = 0;            // rank in this communicator
  void* buffer = nullptr;  // const for Send
  std::int64_t count = 0;
  DataType type = DataType::F32;
  int tag = 0;
};

class Communicator {
 public:
  virtual ~Communicator() = default;
  Communicator(const Communicator&) = delete;
  Communicator& operator=(const Communicator&) = delete;

  int rank() const { return rank_; }
  int size() const { return size_; }
  Device device() const { return device_; }
  // World rank of every member, in this communicator's rank order (the group's key).
  const std::vector<int>& world_ranks() const { return world_ranks_; }
  // "world" or "group[0,3,5]".
  const std::string& name() const { return name_; }
  // "mpi group[0,3,5] rank 1/3 (world rank 3)": what every error and log line carries.
  std::string describe() const;
  virtual const char* backend() const noexcept = 0;

  std::chrono::milliseconds timeout() const { return timeout_; }
  void set_timeout(std::chrono::milliseconds timeout);

  // --- collectives (every member calls them, same order, matching counts) ---
  // By default the non-blocking all_reduce, waited; a backend overrides it where blocking
  // has a cheaper path.
  virtual void all_reduce(const void* send, void* recv, std::int64_t count, DataType type,
                          ReduceOp op);
  // send holds size() blocks of recv_count elements; rank i receives the reduced block i.
  virtual void reduce_scatter(const void* send, void* recv, std::int64_t recv_count, DataType type,
                              ReduceOp op) = 0;
  // recv holds size() blocks of send_count elements, block i from rank i.
  virtual void all_gather(const void* send, void* recv, std::int64_t send_count, DataType type) = 0;
  // Counts and displacements in elements, one per rank of this communicator.
  virtual void all_to_all_v(const void* send, std::span<const std::int64_t> send_counts,
                            std::span<const std::int64_t> send_displs, void* recv,
                            std::span<const std::int64_t> recv_counts,
                            std::span<const std::int64_t> recv_displs, DataType type) = 0;
  virtual void broadcast(void* buffer, std::int64_t count, DataType type, int root) = 0;
  virtual void barrier() = 0;

  // Non-blocking all_reduce (gradient buckets overlap it with the backward). The buffers
  // must stay untouched until the request is waited; every member issues the same
  // non-blocking collectives in the same order.
  virtual CommRequestPtr iall_reduce(const void* send, void* recv, std::int64_t count,
                                     DataType type, ReduceOp op) = 0;

  // --- point to point (peer = rank in this communicator) ---
  virtual CommRequestPtr isend(const void* buffer, std::int64_t count, DataType type, int peer,
                               int tag = 0) = 0;
  virtual CommRequestPtr irecv(void* buffer, std::int64_t count, DataType type, int peer,
                               int tag = 0) = 0;
  // Issues all ops together (NCCL: one ncclGroupStart/End) and returns one request for
  // all of them. A ring step is exchange({send to next, recv from prev}).
  virtual CommRequestPtr exchange(std::span<const P2POp> ops) = 0;
  void send(const void* buffer, std::int64_t count, DataType type, int peer, int tag = 0) {
    isend(buffer, count, type, peer, tag)->wait();
  }
  void recv(void* buffer, std::int64_t count, DataType type, int peer, int tag = 0) {
    irecv(buffer, count, type, peer, tag)->wait();
  }

  // --- groups ---
  // Collective over this communicator (every member calls it). Members with the same
  // color >= 0 form a new communicator ordered by (key, rank); color < 0 returns nullptr.
  // member_world_ranks: the world ranks of this rank's new group in key order when the
  // caller knows them (the group pool does), so backends need not discover them; MPI
  // checks them against what it finds. The new communicator inherits timeout() and may
  // finish initialising lazily (NCCL non-blocking split): its first operation waits.
  virtual std::unique_ptr<Communicator> split(int color, int key,
                                              std::vector<int> member_world_ranks = {}) = 0;

  // Tears the communicator down without waiting for peers: pending operations are
  // abandoned and later operations throw Error(Communication). NCCL: ncclCommAbort. MPI
  // cannot abort one communicator without ending the job (MPI_Abort kills every process
  // of it), so it only marks it aborted; see abort_job() in runtime.hpp.
  virtual void abort() noexcept = 0;
  // abort(), remembering `reason` for the errors of every later call.
  void abort_with_reason(const std::string& reason) noexcept {
    mark_aborted(reason);
    abort();
  }
  bool aborted() const noexcept { return aborted_; }
  // Why the communicator was aborted ("" while it is not).
  const std::string& abort_reason() const noexcept { return abort_reason_; }

  // CUDA stream the backend runs on (cudaStream_t), nullptr for CPU backends.
  virtual void* stream() const noexcept { return nullptr; }

  // --- typed helpers ---
  template <typename T>
  void all_reduce(std::span<T> data, ReduceOp op) {
    all_reduce(data.data(), data.data(), static_cast<std::int64_t>(data.size()),
               data_type_of<std::remove_const_t<T>>(), op);
  }
  template <typename T>
  std::vector<T> all_gather_value(const T& value) {
    std::vector<T> out(static_cast<std::size_t>(size()));
    all_gather(&value, out.data(), 1, data_type_of<T>());
    return out;
  }

 protected:
  // name: empty = group_name(world_ranks); world communicators pass "world".
  Communicator(int rank, int size, Device device, std::vector<int> world_ranks,
               std::chrono::milliseconds timeout, std::string name = {});
  // A posted operation failed: marks the communicator aborted (mark_aborted) and throws
  // Error(Communication) with describe(), the operation and what went wrong.
  [[noreturn]] void fail(const char* op, const std::string& what) const;
  // Throws Error(Communication) for an operation that did not finish within `limit`
  // (through fail: the communicator is aborted).
  [[noreturn]] void fail_timeout(const char* op, std::chrono::milliseconds elapsed,
                                 std::chrono::milliseconds limit) const;
  // A bad argument found before anything was posted: throws Error(InvalidArgument) with
  // describe(), the operation and the value; the communicator stays usable.
  [[noreturn]] void fail_argument(const char* op, const std::string& what) const;
  // Throws Error(Communication), with the reason, when the communicator was aborted.
  void check_not_aborted(const char* op) const;
  // Checks a peer / root rank is in [0, size()) (fail_argument otherwise).
  void check_peer(const char* op, int peer) const;
  // Marks the communicator unusable and remembers why (the first reason wins). Backends
  // with a library-level abort (NCCL) override abort() to call it as well.
  void mark_aborted(const std::string& reason) const noexcept;

 public:
  // A request of `op` abandoned before it completed (an exception unwound past it): its
  // peers are mid-operation and a late message would match a later call, so the
  // communicator is marked aborted. Called by the backends' request objects.
  void abandon(const char* op) const noexcept;

 protected:
  mutable bool aborted_ = false;

 private:
  int rank_;
  int size_;
  Device device_;
  std::vector<int> world_ranks_;
  std::string name_;
  std::chrono::milliseconds timeout_;
  mutable std::string abort_reason_;
};

// "group[0,3,5]" (long lists are shortened in the middle).
std::string group_name(const std::vector<int>& world_ranks);

}  // namespace dhp
