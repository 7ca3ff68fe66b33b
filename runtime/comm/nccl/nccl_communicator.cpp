// NCCL backend: see include/dhp/nccl.hpp for the behaviour, docs/runtime_gpu.md for usage.
#include "dhp/nccl.hpp"

#include <cuda_runtime.h>
#include <fmt/format.h>
#include <nccl.h>

#include <algorithm>
#include <cstring>
#include <thread>
#include <tuple>

#include "dhp/error.hpp"
#include "dhp/log.hpp"

// ncclCommSplit and ncclConfig_t::splitShare appeared in NCCL 2.18.
#if !defined(NCCL_VERSION_CODE) || NCCL_VERSION_CODE < NCCL_VERSION(2, 18, 0)
#error "dhp's NCCL backend needs NCCL >= 2.18 (ncclCommSplit with splitShare)"
#endif

namespace dhp {
namespace {

using Clock = std::chrono::steady_clock;

static_assert(sizeof(ncclUniqueId) == sizeof(NcclUniqueId::bytes),
              "NcclUniqueId must hold an ncclUniqueId");

ncclDataType_t nccl_type(DataType t) {
  switch (t) {
    case DataType::F32:
      return ncclFloat32;
    case DataType::F64:
      return ncclFloat64;
    case DataType::BF16:
      return ncclBfloat16;
    case DataType::F16:
      return ncclFloat16;
    case DataType::I32:
      return ncclInt32;
    case DataType::I64:
      return ncclInt64;
    case DataType::U8:
      return ncclUint8;
  }
  return ncclUint8;
}

ncclRedOp_t nccl_op(ReduceOp op) {
  switch (op) {
    case ReduceOp::Sum:
      return ncclSum;
    case ReduceOp::Max:
      return ncclMax;
    case ReduceOp::Min:
      return ncclMin;
  }
  return ncclSum;
}

// What the user should check for each NCCL failure.
const char* nccl_hint(ncclResult_t r) {
  switch (r) {
    case ncclUnhandledCudaError:
      return "a CUDA call inside NCCL failed: check the GPU is healthy (nvidia-smi) and that "
             "no earlier kernel faulted (rerun with CUDA_LAUNCH_BLOCKING=1)";
    case ncclSystemError:
      return "a system call or the network failed: check NCCL_SOCKET_IFNAME / NCCL_IB_HCA name "
             "interfaces every node can reach, that no firewall blocks the ports, and rerun "
             "with NCCL_DEBUG=WARN to see the failing call";
    case ncclInternalError:
      return "NCCL's internal state is broken: rerun with NCCL_DEBUG=INFO and report it";
    case ncclInvalidArgument:
      return "an argument is invalid: null or host buffer given to a CUDA communicator, "
             "count, root or peer out of range";
    case ncclInvalidUsage:
      return "the calls do not match across ranks or the communicator is used wrongly (wrong "
             "device, after abort): every rank must issue the same operations in the same "
             "order; rerun with NCCL_DEBUG=WARN";
    case ncclRemoteError:
      return "a peer failed or disconnected: read the other ranks' logs first";
    default:
      return "rerun with NCCL_DEBUG=WARN for details";
  }
}

std::string nccl_message(ncclResult_t r, ncclComm_t comm) {
  const char* last = ncclGetLastError(comm);
  return fmt::format("{} (ncclResult {}); NCCL says: {}; {}", ncclGetErrorString(r),
                     static_cast<int>(r), (last && *last) ? last : "nothing more", nccl_hint(r));
}

std::string cuda_message(cudaError_t e) {
  return fmt::format("CUDA error {} ({})", cudaGetErrorName(e), cudaGetErrorString(e));
}

// Throws a Communication error outside a communicator (before one exists).
void check_cuda(cudaError_t e, const char* what) {
  if (e != cudaSuccess) DHP_THROW(Communication, "nccl: {} failed: {}", what, cuda_message(e));
}

ncclConfig_t nonblocking_config(bool split_share) {
  ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
  config.blocking = 0;
  if (split_share) config.splitShare = 1;
  return config;
}

class NcclCommunicator final : public Communicator {
 public:
  NcclCommunicator(ncclComm_t comm, int cuda_device, int rank, int size,
                   std::vector<int> world_ranks, std::chrono::milliseconds timeout,
                   std::string name)
      : Communicator(rank, size, Device::CUDA, std::move(world_ranks), timeout, std::move(name)),
        comm_(comm),
        cuda_device_(cuda_device) {
    check_cuda(cudaSetDevice(cuda_device_), "cudaSetDevice");
    // Non-blocking: NCCL's kernels must not serialise with the legacy default stream.
    check_cuda(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking), "cudaStreamCreate");
  }

  ~NcclCommunicator() override {
    if (comm_ != nullptr) {
      // Finalize flushes pending work and waits for peers; a communicator in error (or
      // not even initialised) cannot finalize, so it is aborted instead.
      if (!finalize()) ncclCommAbort(comm_);
      comm_ = nullptr;
    }
    if (scratch_ != nullptr) cudaFree(scratch_);
    if (stream_ != nullptr) cudaStreamDestroy(stream_);
  }

  const char* backend() const noexcept override { return "nccl"; }
  void* stream() const noexcept override { return stream_; }

  void all_reduce(const void* send, void* recv, std::int64_t count, DataType type,
                  ReduceOp op) override {
    enqueue("all_reduce", [&] {
      return ncclAllReduce(send, recv, static_cast<size_t>(count), nccl_type(type), nccl_op(op),
                           comm_, stream_);
    });
    wait_stream("all_reduce");
  }

  CommRequestPtr iall_reduce(const void* send, void* recv, std::int64_t count, DataType type,
                             ReduceOp op) override {
    enqueue("iall_reduce", [&] {
      return ncclAllReduce(send, recv, static_cast<size_t>(count), nccl_type(type), nccl_op(op),
                           comm_, stream_);
    });
    return record("iall_reduce");
  }

  void reduce_scatter(const void* send, void* recv, std::int64_t recv_count, DataType type,
                      ReduceOp op) override {
    enqueue("reduce_scatter", [&] {
      return ncclReduceScatter(send, recv, static_cast<size_t>(recv_count), nccl_type(type),
                               nccl_op(op), comm_, stream_);
    });
    wait_stream("reduce_scatter");
  }

  void all_gather(const void* send, void* recv, std::int64_t send_count, DataType type) override {
    enqueue("all_gather", [&] {
      return ncclAllGather(send, recv, static_cast<size_t>(send_count), nccl_type(type), comm_,
                           stream_);
    });
    wait_stream("all_gather");
  }

  void all_to_all_v(const void* send, std::span<const std::int64_t> send_counts,
                    std::span<const std::int64_t> send_displs, void* recv,
                    std::span<const std::int64_t> recv_counts,
                    std::span<const std::int64_t> recv_displs, DataType type) override {
    const auto n = static_cast<std::size_t>(size());
    if (send_counts.size() != n || send_displs.size() != n || recv_counts.size() != n ||
        recv_displs.size() != n) {
      fail_argument(
          "all_to_all_v",
          fmt::format("counts/displacements have sizes {}/{}/{}/{}, expected {} (one per rank)",
                      send_counts.size(), send_displs.size(), recv_counts.size(),
                      recv_displs.size(), n));
    }
    const std::size_t elem = static_cast<std::size_t>(data_type_size(type));
    std::vector<P2POp> ops;
    for (std::size_t p = 0; p < n; ++p) {
      if (send_counts[p] > 0) {
        ops.push_back({P2POp::Kind::Send, static_cast<int>(p),
                       const_cast<char*>(static_cast<const char*>(send)) +
                           static_cast<std::size_t>(send_displs[p]) * elem,
                       send_counts[p], type, 0});
      }
      if (recv_counts[p] > 0) {
        ops.push_back({P2POp::Kind::Recv, static_cast<int>(p),
                       static_cast<char*>(recv) + static_cast<std::size_t>(recv_displs[p]) * elem,
                       recv_counts[p], type, 0});
      }
    }
    enqueue_p2p("all_to_all_v", ops);
    wait_stream("all_to_all_v");
  }

  void broadcast(void* buffer, std::int64_t count, DataType type, int root) override {
    check_peer("broadcast", root);
    enqueue("broadcast", [&] {
      return ncclBroadcast(buffer, buffer, static_cast<size_t>(count), nccl_type(type), root, comm_,
                           stream_);
    });
    wait_stream("broadcast");
  }

  void barrier() override {
    // A one-element all-reduce on device memory: NCCL has no barrier.
    ensure_scratch(sizeof(std::int32_t));
    enqueue("barrier", [&] {
      return ncclAllReduce(scratch_, scratch_, 1, ncclInt32, ncclSum, comm_, stream_);
    });
    wait_stream("barrier");
  }

  CommRequestPtr isend(const void* buffer, std::int64_t count, DataType type, int peer,
                       int tag) override {
    const P2POp op{P2POp::Kind::Send, peer, const_cast<void*>(buffer), count, type, tag};
    enqueue_p2p("isend", std::span<const P2POp>(&op, 1));
    return record("isend");
  }

  CommRequestPtr irecv(void* buffer, std::int64_t count, DataType type, int peer,
                       int tag) override {
    const P2POp op{P2POp::Kind::Recv, peer, buffer, count, type, tag};
    enqueue_p2p("irecv", std::span<const P2POp>(&op, 1));
    return record("irecv");
  }

  CommRequestPtr exchange(std::span<const P2POp> ops) override {
    enqueue_p2p("exchange", ops);
    return record("exchange");
  }

  std::unique_ptr<Communicator> split(int color, int key,
                                      std::vector<int> member_world_ranks) override {
    if (color >= 0 && member_world_ranks.empty()) member_world_ranks = discover_members(color, key);
    if (color >= 0) {
      const int me = world_ranks()[static_cast<std::size_t>(rank())];
      const auto it = std::find(member_world_ranks.begin(), member_world_ranks.end(), me);
      if (it == member_world_ranks.end()) {
        fail("split", fmt::format("member_world_ranks (size {}) do not contain this rank's "
                                  "world rank {}",
                                  member_world_ranks.size(), me));
      }
    }
    ncclComm_t child = nullptr;
    ncclConfig_t config = nonblocking_config(/*split_share=*/true);
    enqueue("split", [&] {
      return ncclCommSplit(comm_, color < 0 ? NCCL_SPLIT_NOCOLOR : color, key, &child, &config);
    });
    // The parent takes part in the split: its next operation checks it has finished.
    ready_ = false;
    if (color < 0) return nullptr;
    const int child_rank =
        static_cast<int>(std::find(member_world_ranks.begin(), member_world_ranks.end(),
                                   world_ranks()[static_cast<std::size_t>(rank())]) -
                         member_world_ranks.begin());
    const int child_size = static_cast<int>(member_world_ranks.size());
    auto out =
        std::make_unique<NcclCommunicator>(child, cuda_device_, child_rank, child_size,
                                           std::move(member_world_ranks), timeout(), std::string{});
    DHP_LOG_DEBUG("{}: split started (non-blocking, splitShare=1)", out->describe());
    return out;
  }

  void abort() noexcept override {
    if (comm_ != nullptr) {
      DHP_LOG_WARN("{}: ncclCommAbort", describe());
      ncclCommAbort(comm_);
      comm_ = nullptr;
    }
    mark_aborted("abort() was called");
  }

  // Polls the (non-blocking) initialisation or split until done, against timeout().
  void ensure_ready(const char* op) {
    if (ready_) return;
    const auto start = Clock::now();
    for (;;) {
      ncclResult_t state = ncclSuccess;
      const ncclResult_t r = ncclCommGetAsyncError(comm_, &state);
      if (r != ncclSuccess) abort_and_fail(op, nccl_message(r, comm_));
      if (state == ncclSuccess) break;
      if (state != ncclInProgress) {
        const std::string message = nccl_message(state, comm_);
        abort_and_fail(op, fmt::format("initialisation failed: {}", message));
      }
      check_deadline(op, start, timeout());
      std::this_thread::yield();
    }
    ready_ = true;
  }

  // True once `event` has completed; throws on an asynchronous NCCL error.
  bool poll_event(cudaEvent_t event, const char* op) {
    check_not_aborted(op);
    const cudaError_t e = cudaEventQuery(event);
    if (e == cudaSuccess) return true;
    if (e != cudaErrorNotReady) abort_and_fail(op, cuda_message(e));
    ncclResult_t state = ncclSuccess;
    ncclCommGetAsyncError(comm_, &state);
    if (state != ncclSuccess && state != ncclInProgress) {
      const std::string message = nccl_message(state, comm_);
      abort_and_fail(op, message);
    }
    return false;
  }

  void wait_event(cudaEvent_t event, const char* op, std::chrono::milliseconds limit) {
    const auto start = Clock::now();
    while (!poll_event(event, op)) {
      check_deadline(op, start, limit);
      std::this_thread::yield();
    }
  }

 private:
  // A request: an event recorded on the stream after the operation.
  class Request final : public CommRequest {
   public:
    Request(NcclCommunicator& comm, cudaEvent_t event, const char* op)
        : comm_(comm), event_(event), op_(op) {}
    // Abandoned before it completed (an error unwound past it): the kernels still run on
    // the stream against buffers the caller may free, and the peers are mid-operation.
    // A request released to the stream order is not abandoned: its caller ordered its work
    // after it on the device.
    ~Request() override {
      if (!released_ && !comm_.aborted() && cudaEventQuery(event_) == cudaErrorNotReady)
        comm_.abort();
      cudaEventDestroy(event_);
    }
    bool test() override { return comm_.poll_event(event_, op_); }
    void wait(std::chrono::milliseconds timeout) override {
      comm_.wait_event(event_, op_, timeout);
    }
    void wait() override { wait(comm_.timeout()); }
    bool release_to_stream() noexcept override {
      released_ = true;
      return true;
    }

   private:
    NcclCommunicator& comm_;
    cudaEvent_t event_;
    const char* op_;
    bool released_ = false;
  };

  [[noreturn]] void abort_and_fail(const char* op, const std::string& what) {
    abort();
    fail(op, what);
  }

  void check_deadline(const char* op, Clock::time_point start, std::chrono::milliseconds limit) {
    const auto elapsed =
        std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - start);
    if (elapsed > limit) {
      abort();
      fail_timeout(op, elapsed, limit);
    }
  }

  // Issues one NCCL call; a non-blocking communicator may answer ncclInProgress, in which
  // case the call is complete once the async state leaves ncclInProgress.
  template <typename Call>
  void enqueue(const char* op, Call&& call) {
    check_not_aborted(op);
    ensure_ready(op);
    const cudaError_t e = cudaSetDevice(cuda_device_);
    if (e != cudaSuccess) abort_and_fail(op, cuda_message(e));
    const ncclResult_t r = call();
    if (r == ncclInProgress) {
      ready_ = false;
      ensure_ready(op);
    } else if (r != ncclSuccess) {
      const std::string message = nccl_message(r, comm_);
      abort_and_fail(op, message);
    }
  }

  void enqueue_p2p(const char* op, std::span<const P2POp> ops) {
    for (const P2POp& p : ops) check_peer(op, p.peer);
    enqueue(op, [&] {
      ncclResult_t r = ncclGroupStart();
      if (r != ncclSuccess) return r;
      for (const P2POp& p : ops) {
        r = p.kind == P2POp::Kind::Send ? ncclSend(p.buffer, static_cast<size_t>(p.count),
                                                   nccl_type(p.type), p.peer, comm_, stream_)
                                        : ncclRecv(p.buffer, static_cast<size_t>(p.count),
                                                   nccl_type(p.type), p.peer, comm_, stream_);
        if (r != ncclSuccess && r != ncclInProgress) {
          ncclGroupEnd();
          return r;
        }
      }
      return ncclGroupEnd();
    });
  }

  CommRequestPtr record(const char* op) {
    cudaEvent_t event = nullptr;
    cudaError_t e = cudaEventCreateWithFlags(&event, cudaEventDisableTiming);
    if (e == cudaSuccess) e = cudaEventRecord(event, stream_);
    if (e != cudaSuccess) {
      if (event != nullptr) cudaEventDestroy(event);
      abort_and_fail(op, cuda_message(e));
    }
    return std::make_unique<Request>(*this, event, op);
  }

  void wait_stream(const char* op) { record(op)->wait(); }

  void ensure_scratch(std::size_t bytes) {
    if (scratch_bytes_ >= bytes) return;
    if (scratch_ != nullptr) cudaFree(scratch_);
    scratch_ = nullptr;
    scratch_bytes_ = 0;
    const cudaError_t e = cudaMalloc(&scratch_, bytes);
    if (e != cudaSuccess) fail("scratch allocation", cuda_message(e));
    scratch_bytes_ = bytes;
  }

  // World ranks of this rank's new group in (key, rank) order, from an all-gather of
  // every rank's (color, key, world rank).
  std::vector<int> discover_members(int color, int key) {
    const auto n = static_cast<std::size_t>(size());
    const std::int32_t mine[3] = {color, key, world_ranks()[static_cast<std::size_t>(rank())]};
    ensure_scratch(sizeof(std::int32_t) * 3 * (n + 1));
    auto* device = static_cast<std::int32_t*>(scratch_);
    cudaError_t e = cudaMemcpy(device, mine, sizeof(mine), cudaMemcpyHostToDevice);
    if (e != cudaSuccess) fail("split", cuda_message(e));
    all_gather(device, device + 3, 3, DataType::I32);
    std::vector<std::int32_t> all(3 * n);
    e = cudaMemcpy(all.data(), device + 3, sizeof(std::int32_t) * all.size(),
                   cudaMemcpyDeviceToHost);
    if (e != cudaSuccess) fail("split", cuda_message(e));
    std::vector<std::tuple<int, int, int>> members;  // (key, parent rank, world rank)
    for (std::size_t r = 0; r < n; ++r) {
      if (all[3 * r] == color)
        members.emplace_back(all[3 * r + 1], static_cast<int>(r), all[3 * r + 2]);
    }
    std::sort(members.begin(), members.end());
    std::vector<int> out;
    for (const auto& m : members) out.push_back(std::get<2>(m));
    return out;
  }

  // ncclCommFinalize, polled against timeout(); false if it failed or timed out.
  bool finalize() noexcept {
    if (cudaSetDevice(cuda_device_) != cudaSuccess) return false;
    ncclResult_t state = ncclSuccess;
    if (ncclCommGetAsyncError(comm_, &state) != ncclSuccess || state != ncclSuccess) return false;
    const ncclResult_t r = ncclCommFinalize(comm_);
    if (r != ncclSuccess && r != ncclInProgress) return false;
    // Non-blocking: finalized once the async state leaves ncclInProgress.
    const auto start = Clock::now();
    for (;;) {
      if (ncclCommGetAsyncError(comm_, &state) != ncclSuccess) return false;
      if (state == ncclSuccess) break;
      if (state != ncclInProgress || Clock::now() - start > timeout()) {
        DHP_LOG_WARN("{}: ncclCommFinalize did not finish ({}); aborting", describe(),
                     ncclGetErrorString(state));
        return false;
      }
      std::this_thread::yield();
    }
    return ncclCommDestroy(comm_) == ncclSuccess;
  }

  ncclComm_t comm_ = nullptr;
  int cuda_device_ = 0;
  cudaStream_t stream_ = nullptr;
  bool ready_ = false;  // non-blocking init / split finished
  void* scratch_ = nullptr;
  std::size_t scratch_bytes_ = 0;
};

}  // namespace

NcclUniqueId nccl_unique_id() {
  ncclUniqueId id;
  const ncclResult_t r = ncclGetUniqueId(&id);
  DHP_CHECK(r == ncclSuccess, Communication, "nccl: ncclGetUniqueId failed: {}",
            nccl_message(r, nullptr));
  NcclUniqueId out;
  std::memcpy(out.bytes.data(), &id, sizeof(id));
  return out;
}

std::unique_ptr<Communicator> nccl_world(const NcclUniqueId& id, int rank, int size,
                                         int cuda_device, std::chrono::milliseconds timeout) {
  DHP_CHECK(size >= 1 && rank >= 0 && rank < size, InvalidArgument,
            "nccl_world: rank {} outside [0, {})", rank, size);
  const int devices = cuda_device_count();
  DHP_CHECK(cuda_device >= 0 && cuda_device < devices, InvalidArgument,
            "nccl_world: CUDA device {} outside [0, {}) (rank {}; no CUDA device means no NCCL: "
            "use the MPI backend)",
            cuda_device, devices, rank);
  check_cuda(cudaSetDevice(cuda_device), "cudaSetDevice");
  ncclUniqueId nccl_id;
  std::memcpy(&nccl_id, id.bytes.data(), sizeof(nccl_id));
  ncclConfig_t config = nonblocking_config(/*split_share=*/false);
  ncclComm_t comm = nullptr;
  const ncclResult_t r = ncclCommInitRankConfig(&comm, size, nccl_id, rank, &config);
  if (r != ncclSuccess && r != ncclInProgress) {
    if (comm != nullptr) ncclCommAbort(comm);
    DHP_THROW(Communication, "nccl world rank {}/{}: ncclCommInitRankConfig failed: {}", rank, size,
              nccl_message(r, nullptr));
  }
  std::vector<int> world_ranks(static_cast<std::size_t>(size));
  for (int i = 0; i < size; ++i) world_ranks[static_cast<std::size_t>(i)] = i;
  DHP_LOG_DEBUG("nccl world rank {}/{} on cuda:{}: initialisation started (non-blocking)", rank,
                size, cuda_device);
  return std::make_unique<NcclCommunicator>(comm, cuda_device, rank, size, std::move(world_ranks),
                                            timeout, "world");
}

std::unique_ptr<Communicator> nccl_world(Communicator& bootstrap, int cuda_device) {
  DHP_CHECK(bootstrap.device() == Device::CPU, InvalidArgument,
            "nccl_world: the bootstrap communicator ({}) must work on host memory",
            bootstrap.describe());
  NcclUniqueId id;
  if (bootstrap.rank() == 0) id = nccl_unique_id();
  bootstrap.broadcast(id.bytes.data(), static_cast<std::int64_t>(id.bytes.size()), DataType::U8, 0);
  return nccl_world(id, bootstrap.rank(), bootstrap.size(), cuda_device, bootstrap.timeout());
}

int cuda_device_count() noexcept {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess) {
    cudaGetLastError();  // clear the sticky "no driver" error
    return 0;
  }
  return count;
}

void nccl_wait_ready(Communicator& comm) {
  if (auto* nccl = dynamic_cast<NcclCommunicator*>(&comm)) nccl->ensure_ready("wait_ready");
}

}  // namespace dhp
