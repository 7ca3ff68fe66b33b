// dhp_comm_bench: what the runtime's communication costs, in the spirit of nccl-tests:
// one harness, one fixed-schema row per (test, group size, message size).
//
//   mpirun -np 4 dhp_comm_bench [--backend mpi|nccl] [--format table|json]
//          [--tests create,pool,ring,alltoall,allreduce] [--min-bytes 65536]
//          [--max-bytes 268435456] [--iters 20] [--warmup 3]
//
// Row schema (docs/runtime_gpu.md): backend, test, world_size, group_size, bytes, iters,
// time_us (mean per iteration, the slowest rank's), algbw_gbps (bytes / time),
// busbw_gbps (algbw x the test's traffic factor, as nccl-tests defines it).
// MPI launches every run; with --backend nccl it also shares the NCCL unique id and each
// rank uses CUDA device local_rank.
#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "dhp/command_line.hpp"
#include "dhp/communicator.hpp"
#include "dhp/error.hpp"
#include "dhp/group_pool.hpp"
#include "dhp/runtime.hpp"
#ifdef DHP_HAVE_NCCL
#include <cuda_runtime.h>

#include "dhp/nccl.hpp"
#endif

namespace {

using Clock = std::chrono::steady_clock;
using dhp::DataType;
using dhp::Device;
using dhp::ReduceOp;

struct Options {
  std::string backend = "mpi";
  std::string format = "table";
  std::vector<std::string> tests{"create", "pool", "ring", "alltoall", "allreduce"};
  std::int64_t min_bytes = 64 << 10;
  std::int64_t max_bytes = 256 << 20;
  int iters = 20;
  int warmup = 3;
};

struct Row {
  std::string backend, test;
  int world_size = 0, group_size = 0;
  std::int64_t bytes = 0;
  int iters = 0;
  double time_us = 0, algbw_gbps = 0, busbw_gbps = 0;
};

void declare_options(dhp::CommandLine& cli) {
  cli.option("--backend", "B", "mpi (default) or nccl")
      .option("--format", "F", "table (default) or json (one object per line)")
      .option("--tests", "LIST",
              "which tests, comma-separated (default: create,pool,ring,\nalltoall,allreduce)")
      .option("--min-bytes", "B", "smallest message (default 65536)")
      .option("--max-bytes", "B",
              "largest message (default 268435456); sizes grow 4x from the smallest")
      .option("--iters", "N", "timed iterations per row (default 20)")
      .option("--warmup", "N", "untimed iterations first (default 3)")
      .note(
          "Rows: backend, test, world_size, group_size, bytes, iters, time_us (mean per\n"
          "iteration, the slowest rank's), algbw_gbps, busbw_gbps (as nccl-tests defines them).");
}

Options parse(const dhp::CommandLine& cli) {
  Options o;
  o.backend = cli.choice("--backend", {"mpi", "nccl"}, o.backend);
  o.format = cli.choice("--format", {"table", "json"}, o.format);
  o.tests = cli.list("--tests", o.tests);
  for (const std::string& test : o.tests)
    if (test != "create" && test != "pool" && test != "ring" && test != "alltoall" &&
        test != "allreduce")
      throw dhp::UsageError(fmt::format(
          "--tests: unknown test '{}' (known: create, pool, ring, alltoall, allreduce)", test));
  o.min_bytes = cli.integer("--min-bytes", o.min_bytes, 4);
  o.max_bytes = cli.integer("--max-bytes", o.max_bytes, 4);
  if (o.min_bytes > o.max_bytes)
    throw dhp::UsageError(
        fmt::format("--min-bytes {} is above --max-bytes {}", o.min_bytes, o.max_bytes));
  o.iters = static_cast<int>(cli.integer("--iters", o.iters, 1));
  o.warmup = static_cast<int>(cli.integer("--warmup", o.warmup, 0));
  return o;
}

// Message buffers on the communicator's device.
class Buffer {
 public:
  Buffer(std::int64_t bytes, Device device) : device_(device) {
#ifdef DHP_HAVE_NCCL
    if (device == Device::CUDA) {
      DHP_CHECK(cudaMalloc(&data_, static_cast<std::size_t>(bytes)) == cudaSuccess, Internal,
                "cudaMalloc of {} bytes failed", bytes);
      cudaMemset(data_, 0, static_cast<std::size_t>(bytes));
      return;
    }
#endif
    host_.assign(static_cast<std::size_t>(bytes), 0);
    data_ = host_.data();
  }
  ~Buffer() {
#ifdef DHP_HAVE_NCCL
    if (device_ == Device::CUDA) cudaFree(data_);
#endif
  }
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;
  void* get() { return data_; }

 private:
  Device device_;
  void* data_ = nullptr;
  std::vector<char> host_;
};

class Bench {
 public:
  Bench(Options options, dhp::Communicator& bootstrap, dhp::Communicator& world)
      : o_(std::move(options)), bootstrap_(bootstrap), world_(world) {}

  void run() {
    for (const std::string& test : o_.tests) {
      if (test == "create")
        create();
      else if (test == "pool")
        pool();
      else if (test == "ring")
        sized(test, 1.0, [&](std::int64_t b) { ring(b); });
      else if (test == "alltoall")
        alltoall();
      else if (test == "allreduce")
        allreduce();
      else
        DHP_THROW(InvalidArgument, "unknown test '{}'", test);
    }
  }

  const std::vector<Row>& rows() const { return rows_; }

 private:
  // Mean seconds per call of `body` over iters (after warmup), the slowest rank's.
  double time_it(const std::function<void()>& body, int iters, int warmup) {
    for (int i = 0; i < warmup; ++i) body();
    world_.barrier();
    const auto start = Clock::now();
    for (int i = 0; i < iters; ++i) body();
    double seconds = std::chrono::duration<double>(Clock::now() - start).count() / iters;
    bootstrap_.all_reduce(&seconds, &seconds, 1, DataType::F64, ReduceOp::Max);
    return seconds;
  }

  void add(const std::string& test, int group_size, std::int64_t bytes, int iters, double seconds,
           double bus_factor) {
    Row r{o_.backend, test, world_.size(), group_size, bytes, iters, seconds * 1e6, 0, 0};
    if (bytes > 0) {
      r.algbw_gbps = static_cast<double>(bytes) / seconds / 1e9;
      r.busbw_gbps = r.algbw_gbps * bus_factor;
    }
    rows_.push_back(r);
  }

  std::vector<int> group_sizes() const {
    std::vector<int> out;
    for (int g = 1; g < world_.size(); g *= 2)
      if (world_.size() % g == 0) out.push_back(g);
    out.push_back(world_.size());
    return out;
  }

  // Split of the world into groups of g consecutive ranks (what the pool does per wave).
  void create() {
    const int iters = std::max(1, o_.iters / 4);
    for (int g : group_sizes()) {
      const int color = world_.rank() / g;
      const double split = time_it(
          [&] {
            auto group = world_.split(color, world_.rank());
            group->barrier();  // includes the (possibly lazy) initialisation
          },
          iters, 1);
      add("create_split", g, 0, iters, split, 0);
#ifdef DHP_HAVE_NCCL
      if (o_.backend == "nccl") {
        // Fresh init: each group leader makes a unique id, shared over the MPI bootstrap.
        const double fresh = time_it(
            [&] {
              dhp::NcclUniqueId id;
              if (world_.rank() % g == 0) id = dhp::nccl_unique_id();
              std::vector<dhp::NcclUniqueId> ids(static_cast<std::size_t>(world_.size()));
              bootstrap_.all_gather(&id, ids.data(), sizeof(id), DataType::U8);
              int device = 0;
              cudaGetDevice(&device);
              auto group = dhp::nccl_world(ids[static_cast<std::size_t>(color * g)],
                                           world_.rank() % g, g, device, world_.timeout());
              group->barrier();
            },
            iters, 1);
        add("create_fresh", g, 0, iters, fresh, 0);
      }
#endif
    }
  }

  // The group pool: a miss (one split for the whole partition) vs a hit.
  void pool() {
    const int iters = std::max(1, o_.iters / 4);
    for (int g : group_sizes()) {
      std::vector<std::vector<int>> partition;
      for (int first = 0; first < world_.size(); first += g) {
        partition.emplace_back();
        for (int r = first; r < first + g; ++r) partition.back().push_back(r);
      }
      const double miss = time_it(
          [&] {
            dhp::GroupPool pool(world_);
            pool.acquire(partition);
          },
          iters, 1);
      add("pool_miss", g, 0, iters, miss, 0);
      dhp::GroupPool pool(world_);
      pool.acquire(partition);
      const double hit = time_it([&] { pool.acquire(partition); }, o_.iters, 1);
      add("pool_hit", g, 0, o_.iters, hit, 0);
    }
  }

  void sized(const std::string& test, double bus_factor,
             const std::function<void(std::int64_t)>& body) {
    for (std::int64_t bytes = o_.min_bytes; bytes <= o_.max_bytes; bytes *= 4) {
      // Big messages need fewer repetitions for a stable mean.
      const int iters = bytes >= (64 << 20) ? std::max(1, o_.iters / 4) : o_.iters;
      const double seconds = time_it([&] { body(bytes); }, iters, o_.warmup);
      add(test, world_.size(), bytes, iters, seconds, bus_factor);
    }
  }

  // One ring step: send `bytes` to the next rank while receiving from the previous one.
  void ring(std::int64_t bytes) {
    if (!send_ || send_bytes_ != bytes) {
      send_ = std::make_unique<Buffer>(bytes, world_.device());
      recv_ = std::make_unique<Buffer>(bytes, world_.device());
      send_bytes_ = bytes;
    }
    const int n = world_.size();
    const dhp::P2POp ops[] = {
        {dhp::P2POp::Kind::Send, (world_.rank() + 1) % n, send_->get(), bytes, DataType::U8, 0},
        {dhp::P2POp::Kind::Recv, (world_.rank() + n - 1) % n, recv_->get(), bytes, DataType::U8,
         0}};
    world_.exchange(ops)->wait();
  }

  void alltoall() {
    const int n = world_.size();
    sized("alltoall", static_cast<double>(n - 1) / n, [&](std::int64_t bytes) {
      const std::int64_t per_peer = bytes / n;
      if (!send_ || send_bytes_ != bytes) {
        send_ = std::make_unique<Buffer>(bytes, world_.device());
        recv_ = std::make_unique<Buffer>(bytes, world_.device());
        send_bytes_ = bytes;
      }
      std::vector<std::int64_t> counts(static_cast<std::size_t>(n), per_peer), displs;
      for (int p = 0; p < n; ++p) displs.push_back(p * per_peer);
      world_.all_to_all_v(send_->get(), counts, displs, recv_->get(), counts, displs, DataType::U8);
    });
  }

  void allreduce() {
    const int n = world_.size();
    sized("allreduce", 2.0 * (n - 1) / n, [&](std::int64_t bytes) {
      if (!send_ || send_bytes_ != bytes) {
        send_ = std::make_unique<Buffer>(bytes, world_.device());
        recv_ = std::make_unique<Buffer>(bytes, world_.device());
        send_bytes_ = bytes;
      }
      world_.all_reduce(send_->get(), recv_->get(), bytes / 4, DataType::F32, ReduceOp::Sum);
    });
  }

  Options o_;
  dhp::Communicator& bootstrap_;  // MPI: timings are reduced on host memory
  dhp::Communicator& world_;      // the backend measured
  std::vector<Row> rows_;
  std::unique_ptr<Buffer> send_, recv_;
  std::int64_t send_bytes_ = 0;
};

void print(const std::vector<Row>& rows, const std::string& format) {
  if (format == "json") {
    nlohmann::ordered_json out = nlohmann::ordered_json::array();  // keys in schema order
    for (const Row& r : rows) {
      out.push_back({{"backend", r.backend},
                     {"test", r.test},
                     {"world_size", r.world_size},
                     {"group_size", r.group_size},
                     {"bytes", r.bytes},
                     {"iters", r.iters},
                     {"time_us", r.time_us},
                     {"algbw_gbps", r.algbw_gbps},
                     {"busbw_gbps", r.busbw_gbps}});
    }
    std::printf("%s\n", out.dump(2).c_str());
    return;
  }
  std::printf("%-8s %-13s %5s %5s %12s %6s %14s %10s %10s\n", "backend", "test", "world", "group",
              "bytes", "iters", "time_us", "algbw_GB/s", "busbw_GB/s");
  for (const Row& r : rows) {
    std::printf("%-8s %-13s %5d %5d %12lld %6d %14.1f %10.3f %10.3f\n", r.backend.c_str(),
                r.test.c_str(), r.world_size, r.group_size, static_cast<long long>(r.bytes),
                r.iters, r.time_us, r.algbw_gbps, r.busbw_gbps);
  }
}

// After MPI starts, an error on one rank aborts the job: the other ranks would wait forever.
int run(const Options& options) {
  try {
    dhp::MpiRuntime mpi;
    auto bootstrap = mpi.world();
    std::unique_ptr<dhp::Communicator> nccl;
    dhp::Communicator* world = bootstrap.get();
    if (options.backend == "nccl") {
#ifdef DHP_HAVE_NCCL
      nccl = dhp::nccl_world(*bootstrap, mpi.process().local_rank);
      dhp::nccl_wait_ready(*nccl);
      world = nccl.get();
#else
      DHP_THROW(InvalidArgument, "--backend nccl: dhp was built without CUDA/NCCL");
#endif
    }
    Bench bench(options, *bootstrap, *world);
    bench.run();
    if (bootstrap->rank() == 0) print(bench.rows(), options.format);
    nccl.reset();
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "dhp_comm_bench: %s\n", e.what());
    dhp::abort_job(1, e.what());
  }
}

}  // namespace

int main(int argc, char** argv) {
  dhp::CommandLine cli(
      "dhp_comm_bench",
      "  mpirun -np N dhp_comm_bench [--backend mpi|nccl] [--format table|json]\n"
      "         [--tests create,pool,ring,alltoall,allreduce] [--min-bytes B] [--max-bytes B]\n"
      "         [--iters N] [--warmup N]");
  declare_options(cli);
  return dhp::run_tool(cli, argc, argv, [&] { return run(parse(cli)); });
}
