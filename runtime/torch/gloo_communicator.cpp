// The Gloo CPU backend over LibTorch's c10d::ProcessGroupGloo (include/dhp/torch.hpp): the
// CPU communicator under torchrun, where MPI is not launched. It follows the contract of
// communicator.hpp: arguments checked before anything is posted, every wait bounded by the
// timeout, a failure once posted aborts the communicator.
#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>

#include <chrono>
#include <algorithm>
#include <cstring>
#include <thread>

#include <fmt/format.h>

#include "dhp/error.hpp"
#include "dhp/log.hpp"
#include "dhp/torch.hpp"

namespace dhp {
namespace {

using Clock = std::chrono::steady_clock;

at::ScalarType gloo_type(DataType t) {
  switch (t) {
    case DataType::F32:
      return at::kFloat;
    case DataType::F64:
      return at::kDouble;
    case DataType::BF16:
      return at::kBFloat16;
    case DataType::F16:
      return at::kHalf;
    case DataType::I32:
      return at::kInt;
    case DataType::I64:
      return at::kLong;
    case DataType::U8:
      return at::kByte;
  }
  return at::kByte;
}

c10d::ReduceOp gloo_op(ReduceOp op) {
  switch (op) {
    case ReduceOp::Sum:
      return c10d::ReduceOp::SUM;
    case ReduceOp::Max:
      return c10d::ReduceOp::MAX;
    case ReduceOp::Min:
      return c10d::ReduceOp::MIN;
  }
  return c10d::ReduceOp::SUM;
}

// A host buffer seen as a 1-D tensor (not owned).
at::Tensor view(const void* data, std::int64_t count, DataType type) {
  return at::from_blob(const_cast<void*>(data), {count},
                       at::TensorOptions().dtype(gloo_type(type)));
}

std::shared_ptr<::gloo::transport::Device> loopback_or_default_device() {
  try {
    return c10d::ProcessGroupGloo::createDefaultDevice();
  } catch (const std::exception&) {
    return c10d::ProcessGroupGloo::createDeviceForHostname("127.0.0.1");
  }
}

class GlooCommunicator;

class GlooRequest final : public CommRequest {
 public:
  GlooRequest(GlooCommunicator& comm, const char* op,
              std::vector<c10::intrusive_ptr<c10d::Work>> works)
      : comm_(comm), op_(op), works_(std::move(works)) {}
  ~GlooRequest() override;
  bool test() override;
  void wait(std::chrono::milliseconds timeout) override;
  void wait() override;

 private:
  GlooCommunicator& comm_;
  const char* op_;
  std::vector<c10::intrusive_ptr<c10d::Work>> works_;
  bool done_ = false;
};

class GlooCommunicator final : public Communicator {
 public:
  GlooCommunicator(c10::intrusive_ptr<c10d::Store> store, std::string prefix, int rank, int size,
                   std::vector<int> world_ranks, std::chrono::milliseconds timeout,
                   std::string name)
      : Communicator(rank, size, Device::CPU, std::move(world_ranks), timeout, std::move(name)),
        store_(std::move(store)),
        prefix_(std::move(prefix)) {
    auto options = c10d::ProcessGroupGloo::Options::create(timeout);
    options->devices.push_back(loopback_or_default_device());
    options->threads = 2;
    auto prefixed = c10::make_intrusive<c10d::PrefixStore>(prefix_, store_);
    try {
      group_ = c10::make_intrusive<c10d::ProcessGroupGloo>(prefixed, rank, size, options);
    } catch (const std::exception& e) {
      DHP_THROW(Communication, "gloo {} rank {}/{}: creating the process group failed: {}",
                this->name(), rank, size, e.what());
    }
  }

  const char* backend() const noexcept override { return "gloo"; }

  CommRequestPtr iall_reduce(const void* send, void* recv, std::int64_t count, DataType type,
                             ReduceOp op) override {
    const char* name = "iall_reduce";
    begin(name);
    check_reducible(name, type);
    check_buffers(name, send, recv, count);
    if (send != recv && count > 0)
      std::memcpy(recv, send, static_cast<std::size_t>(count * data_type_size(type)));
    std::vector<at::Tensor> tensors{view(recv, count, type)};
    c10d::AllreduceOptions options;
    options.reduceOp = gloo_op(op);
    options.timeout = timeout();
    return post(name, [&] { return group_->allreduce(tensors, options); });
  }

  void reduce_scatter(const void* send, void* recv, std::int64_t recv_count, DataType type,
                      ReduceOp op) override {
    // Gloo has no reduce_scatter: the whole buffer is reduced, then this rank's block kept.
    const char* name = "reduce_scatter";
    begin(name);
    check_reducible(name, type);
    check_buffers(name, send, recv, recv_count);
    const std::int64_t total = recv_count * size();
    std::vector<std::byte> full(static_cast<std::size_t>(total * data_type_size(type)));
    all_reduce(send, full.data(), total, type, op);
    std::memcpy(recv, full.data() + rank() * recv_count * data_type_size(type),
                static_cast<std::size_t>(recv_count * data_type_size(type)));
  }

  void all_gather(const void* send, void* recv, std::int64_t send_count, DataType type) override {
    const char* name = "all_gather";
    begin(name);
    check_buffers(name, send, recv, send_count);
    std::vector<std::vector<at::Tensor>> outputs(1);
    for (int r = 0; r < size(); ++r)
      outputs[0].push_back(view(static_cast<std::byte*>(recv) +
                                    r * send_count * data_type_size(type),
                                send_count, type));
    std::vector<at::Tensor> inputs{view(send, send_count, type)};
    post(name, [&] { return group_->allgather(outputs, inputs); })->wait();
  }

  void all_to_all_v(const void* send, std::span<const std::int64_t> send_counts,
                    std::span<const std::int64_t> send_displs, void* recv,
                    std::span<const std::int64_t> recv_counts,
                    std::span<const std::int64_t> recv_displs, DataType type) override {
    const char* name = "all_to_all_v";
    begin(name);
    const auto n = static_cast<std::size_t>(size());
    if (send_counts.size() != n || send_displs.size() != n || recv_counts.size() != n ||
        recv_displs.size() != n)
      fail_argument(name, fmt::format("count/displacement arrays of sizes {}/{}/{}/{}, expected {}",
                                      send_counts.size(), send_displs.size(), recv_counts.size(),
                                      recv_displs.size(), n));
    // alltoall_base takes packed blocks in rank order: pack and unpack through byte buffers.
    const std::int64_t elem = data_type_size(type);
    std::vector<std::int64_t> in_bytes(n), out_bytes(n);
    std::int64_t sending = 0, receiving = 0;
    for (std::size_t i = 0; i < n; ++i) {
      for (std::int64_t v : {send_counts[i], send_displs[i], recv_counts[i], recv_displs[i]})
        if (v < 0) fail_argument(name, fmt::format("negative count/displacement {}", v));
      in_bytes[i] = send_counts[i] * elem;
      out_bytes[i] = recv_counts[i] * elem;
      sending += in_bytes[i];
      receiving += out_bytes[i];
    }
    check_buffers(name, sending > 0 ? send : this, receiving > 0 ? recv : this, 1);
    at::Tensor in = at::empty({sending}, at::kByte), out = at::empty({receiving}, at::kByte);
    for (std::size_t i = 0, at = 0; i < n; at += static_cast<std::size_t>(in_bytes[i]), ++i)
      if (in_bytes[i] > 0)
        std::memcpy(in.data_ptr<std::uint8_t>() + at,
                    static_cast<const std::byte*>(send) + send_displs[i] * elem,
                    static_cast<std::size_t>(in_bytes[i]));
    c10d::AllToAllOptions options;
    options.timeout = timeout();
    // Gloo's work moves the count vectors out of the references it is given: pass copies.
    std::vector<std::int64_t> out_counts = out_bytes, in_counts = in_bytes;
    post(name, [&] { return group_->alltoall_base(out, in, out_counts, in_counts, options); })->wait();
    for (std::size_t i = 0, at = 0; i < n; at += static_cast<std::size_t>(out_bytes[i]), ++i)
      if (out_bytes[i] > 0)
        std::memcpy(static_cast<std::byte*>(recv) + recv_displs[i] * elem,
                    out.data_ptr<std::uint8_t>() + at, static_cast<std::size_t>(out_bytes[i]));
  }

  void broadcast(void* buffer, std::int64_t count, DataType type, int root) override {
    const char* name = "broadcast";
    begin(name);
    check_peer(name, root);
    check_buffers(name, buffer, buffer, count);
    std::vector<at::Tensor> tensors{view(buffer, count, type)};
    c10d::BroadcastOptions options;
    options.rootRank = root;
    options.timeout = timeout();
    post(name, [&] { return group_->broadcast(tensors, options); })->wait();
  }

  void barrier() override {
    const char* name = "barrier";
    begin(name);
    c10d::BarrierOptions options;
    options.timeout = timeout();
    post(name, [&] { return group_->barrier(options); })->wait();
  }

  CommRequestPtr isend(const void* buffer, std::int64_t count, DataType type, int peer,
                       int tag) override {
    const P2POp op{P2POp::Kind::Send, peer, const_cast<void*>(buffer), count, type, tag};
    return exchange_ops("isend", std::span<const P2POp>(&op, 1));
  }
  CommRequestPtr irecv(void* buffer, std::int64_t count, DataType type, int peer,
                       int tag) override {
    const P2POp op{P2POp::Kind::Recv, peer, buffer, count, type, tag};
    return exchange_ops("irecv", std::span<const P2POp>(&op, 1));
  }
  CommRequestPtr exchange(std::span<const P2POp> ops) override {
    return exchange_ops("exchange", ops);
  }

  std::unique_ptr<Communicator> split(int color, int key,
                                      std::vector<int> member_world_ranks) override {
    const char* name = "split";
    begin(name);
    // Every parent rank learns every (color, key); the members of each color then build a
    // Gloo group on a store prefix unique to this split.
    std::int64_t mine[2] = {color, key};
    std::vector<std::int64_t> all(static_cast<std::size_t>(2 * size()));
    all_gather(mine, all.data(), 2, DataType::I64);
    const int split_index = splits_++;
    if (color < 0) return nullptr;
    std::vector<std::pair<std::int64_t, int>> members;  // (key, parent rank)
    for (int r = 0; r < size(); ++r)
      if (all[static_cast<std::size_t>(2 * r)] == color)
        members.emplace_back(all[static_cast<std::size_t>(2 * r + 1)], r);
    std::sort(members.begin(), members.end());
    std::vector<int> world;
    int new_rank = 0;
    for (std::size_t i = 0; i < members.size(); ++i) {
      world.push_back(world_ranks()[static_cast<std::size_t>(members[i].second)]);
      if (members[i].second == rank()) new_rank = static_cast<int>(i);
    }
    if (!member_world_ranks.empty() && member_world_ranks != world)
      fail(name, fmt::format("the new group is {} but the caller expected {}", group_name(world),
                             group_name(member_world_ranks)));
    return std::make_unique<GlooCommunicator>(
        store_, fmt::format("{}split{}/{}/", prefix_, split_index, color), new_rank,
        static_cast<int>(world.size()), world, timeout(), std::string());
  }

  void abort() noexcept override {
    if (!aborted_) DHP_LOG_WARN("{}: aborted", describe());
    mark_aborted("abort() was called");
  }

  // Waits for `works` against `limit`; a failure or a timeout aborts the communicator.
  // (Gloo's send and receive complete only inside wait(), which takes the timeout.)
  void wait_works(const char* op, std::vector<c10::intrusive_ptr<c10d::Work>>& works,
                  std::chrono::milliseconds limit) {
    const auto start = Clock::now();
    for (auto& work : works) {
      const auto elapsed =
          std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - start);
      bool completed = false;
      try {
        completed = work->wait(std::max(limit - elapsed, std::chrono::milliseconds(1)));
      } catch (const std::exception& e) {
        const auto now =
            std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - start);
        if (now >= limit) fail_timeout(op, now, limit);
        fail(op, e.what());
      }
      if (!completed) {
        fail_timeout(op, std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - start),
                     limit);
      }
    }
  }

 private:
  void begin(const char* op) const {
    check_not_aborted(op);
    DHP_LOG_TRACE("{}: {}", describe(), op);
  }
  void check_reducible(const char* op, DataType type) const {
    if (type == DataType::U8) fail_argument(op, "u8 buffers are moved, not reduced (reduce i32)");
  }
  void check_buffers(const char* op, const void* a, const void* b, std::int64_t count) const {
    if (count < 0) fail_argument(op, fmt::format("negative count/displacement {}", count));
    if (count > 0 && (a == nullptr || b == nullptr))
      fail_argument(op, fmt::format("a null buffer for {} elements", count));
  }

  template <typename Post>
  CommRequestPtr post(const char* op, Post&& call) {
    std::vector<c10::intrusive_ptr<c10d::Work>> works;
    try {
      works.push_back(call());
    } catch (const std::exception& e) {
      fail(op, e.what());
    }
    return std::make_unique<GlooRequest>(*this, op, std::move(works));
  }

  CommRequestPtr exchange_ops(const char* op, std::span<const P2POp> ops) {
    begin(op);
    for (const P2POp& p : ops) {  // every op checked before the first is posted
      check_peer(op, p.peer);
      check_buffers(op, p.buffer, p.buffer, p.count);
    }
    std::vector<c10::intrusive_ptr<c10d::Work>> works;
    try {
      for (const P2POp& p : ops) {
        std::vector<at::Tensor> tensors{view(p.buffer, p.count, p.type)};
        works.push_back(p.kind == P2POp::Kind::Send ? group_->send(tensors, p.peer, p.tag)
                                                     : group_->recv(tensors, p.peer, p.tag));
      }
    } catch (const std::exception& e) {
      GlooRequest posted(*this, op, std::move(works));
      fail(op, e.what());
    }
    return std::make_unique<GlooRequest>(*this, op, std::move(works));
  }

  c10::intrusive_ptr<c10d::Store> store_;
  std::string prefix_;
  c10::intrusive_ptr<c10d::ProcessGroupGloo> group_;
  int splits_ = 0;
};

GlooRequest::~GlooRequest() {
  if (done_) return;
  bool pending = false;
  for (auto& work : works_) pending = pending || !work->isCompleted();
  if (!pending) return;
  // Gloo cannot cancel: give the operations a moment to finish (their buffers may be freed
  // right after), then give up on the communicator.
  const auto start = Clock::now();
  for (auto& work : works_)
    while (!work->isCompleted() && Clock::now() - start < std::chrono::seconds(1))
      std::this_thread::sleep_for(std::chrono::microseconds(100));
  comm_.abandon(op_);
}

bool GlooRequest::test() {
  if (done_) return true;
  for (auto& work : works_)
    if (!work->isCompleted()) return false;
  wait(std::chrono::milliseconds(0));
  return true;
}

void GlooRequest::wait(std::chrono::milliseconds timeout) {
  if (done_) return;
  comm_.wait_works(op_, works_, std::max(timeout, std::chrono::milliseconds(1)));
  done_ = true;
}

void GlooRequest::wait() { wait(comm_.timeout()); }

}  // namespace

std::unique_ptr<Communicator> gloo_world(TorchrunBootstrap& bootstrap) {
  const TorchrunEnv& env = bootstrap.env();
  std::vector<int> ranks(static_cast<std::size_t>(env.world_size));
  for (int r = 0; r < env.world_size; ++r) ranks[static_cast<std::size_t>(r)] = r;
  return std::make_unique<GlooCommunicator>(
      bootstrap.shared_store(), bootstrap.key_prefix() + "gloo/",
      env.rank, env.world_size, std::move(ranks), bootstrap.timeout(), "world");
}

}  // namespace dhp
