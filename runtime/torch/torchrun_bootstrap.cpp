// torchrun bootstrap through c10d::TCPStore (see include/dhp/torch.hpp).
#include <fmt/format.h>

#include <cstdlib>
#include <cstring>
#include <exception>

#include <unistd.h>

#include "dhp/env.hpp"
#include "dhp/error.hpp"
#include "dhp/log.hpp"
#include "dhp/torch.hpp"
#ifdef DHP_HAVE_NCCL
#include "dhp/nccl.hpp"
#endif

namespace dhp {
namespace {

const char* required_variable(const char* name) {
  const char* value = std::getenv(name);
  DHP_CHECK(value != nullptr && *value != '\0', InvalidArgument,
            "torchrun bootstrap: environment variable {} is not set (launch with torchrun, or "
            "set RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT)",
            name);
  return value;
}

int int_variable(const char* name, const char* value) {
  char* end = nullptr;
  const long parsed = std::strtol(value, &end, 10);
  DHP_CHECK(end != value && *end == '\0' && parsed >= 0 && parsed <= 1 << 30, InvalidArgument,
            "torchrun bootstrap: {}='{}' is not a non-negative integer", name, value);
  return static_cast<int>(parsed);
}

int required_int(const char* name) { return int_variable(name, required_variable(name)); }

std::vector<std::uint8_t> to_bytes(const std::string& s) { return {s.begin(), s.end()}; }

}  // namespace

TorchrunEnv torchrun_env() {
  TorchrunEnv env;
  env.rank = required_int("RANK");
  env.world_size = required_int("WORLD_SIZE");
  env.local_rank = required_int("LOCAL_RANK");
  if (const char* v = std::getenv("LOCAL_WORLD_SIZE"); v != nullptr && *v != '\0') {
    env.local_world_size = int_variable("LOCAL_WORLD_SIZE", v);
  }
  env.master_addr = required_variable("MASTER_ADDR");
  env.master_port = required_int("MASTER_PORT");
  DHP_CHECK(env.world_size >= 1 && env.rank < env.world_size, InvalidArgument,
            "torchrun bootstrap: RANK={} outside [0, WORLD_SIZE={})", env.rank, env.world_size);
  DHP_CHECK(env.master_port >= 1 && env.master_port <= 65535, InvalidArgument,
            "torchrun bootstrap: MASTER_PORT={} outside [1, 65535]", env.master_port);
  return env;
}

TorchrunBootstrap::TorchrunBootstrap(std::chrono::milliseconds timeout)
    : TorchrunBootstrap(torchrun_env(), timeout) {}

TorchrunBootstrap::TorchrunBootstrap(const TorchrunEnv& env, std::chrono::milliseconds timeout)
    : env_(env), timeout_(timeout) {
  c10d::TCPStoreOptions options;
  options.port = static_cast<std::uint16_t>(env_.master_port);
  const char* agent_store = std::getenv("TORCHELASTIC_USE_AGENT_STORE");
  const bool use_agent_store = agent_store != nullptr && std::string(agent_store) == "True";
  if (use_agent_store) {
    // torchrun's agent serves MASTER_PORT: every rank is a client, per restart attempt.
    const char* attempt = std::getenv("TORCHELASTIC_RESTART_COUNT");
    prefix_ = fmt::format("dhp/attempt_{}/", attempt != nullptr ? attempt : "0");
    options.isServer = false;
  } else {
    options.isServer = env_.rank == 0;
    options.numWorkers = static_cast<std::size_t>(env_.world_size);
    options.waitWorkers = false;  // every rank checks in at the barrier below
    options.multiTenant = true;   // shared with torch.distributed's env:// store on this port
  }
  options.timeout = timeout_;
  try {
    store_ = c10::make_intrusive<c10d::TCPStore>(env_.master_addr, options);
    // LibTorch 1.13's server stops waiting for workers at the timeout without an error,
    // so every rank checks in explicitly.
    barrier("rendezvous");
  } catch (const std::exception& e) {
    DHP_THROW(Communication,
              "torchrun bootstrap rank {}/{}: rendezvous at {}:{} failed within {:.1f} s ({}): "
              "check MASTER_ADDR/MASTER_PORT are the same on every rank, that rank 0 runs and "
              "that the port is free and reachable",
              env_.rank, env_.world_size, env_.master_addr, env_.master_port,
              timeout_.count() / 1000.0, e.what());
  }
  DHP_LOG_DEBUG("torchrun bootstrap rank {}/{}: store at {}:{} ready", env_.rank, env_.world_size,
                env_.master_addr, env_.master_port);
}

TorchrunBootstrap::~TorchrunBootstrap() {
  if (!store_ || env_.world_size == 1) return;
  const std::string left_key = prefix_ + "left";
  const std::string all_left_key = prefix_ + "all_left";
  try {
    if (env_.rank != 0) {
      if (store_->add(left_key, 1) == env_.world_size - 1) store_->set(all_left_key, to_bytes("1"));
    } else {
      store_->wait({all_left_key}, timeout_);
    }
  } catch (const std::exception& e) {
    DHP_LOG_WARN("torchrun bootstrap rank {}/{}: not every rank left the store cleanly ({})",
                 env_.rank, env_.world_size, e.what());
  }
}

ProcessInfo TorchrunBootstrap::process() const {
  ProcessInfo info;
  info.world_rank = env_.rank;
  info.world_size = env_.world_size;
  info.local_rank = env_.local_rank;
  info.local_size = env_.local_world_size;
  char host[256] = {};
  if (gethostname(host, sizeof(host) - 1) == 0) info.host = host;
  return info;
}

std::vector<std::uint8_t> TorchrunBootstrap::broadcast(const std::string& key,
                                                       const std::vector<std::uint8_t>& value) {
  const std::string full_key = prefix_ + "bcast/" + key;
  try {
    if (env_.rank == 0) {
      store_->set(full_key, value);
      return value;
    }
    store_->wait({full_key}, timeout_);
    return store_->get(full_key);
  } catch (const std::exception& e) {
    DHP_THROW(Communication,
              "torchrun bootstrap rank {}/{}: broadcast of '{}' failed within {:.1f} s ({}): is "
              "rank 0 alive and at the same step?",
              env_.rank, env_.world_size, key, timeout_.count() / 1000.0, e.what());
  }
}

void TorchrunBootstrap::barrier(const std::string& name) {
  const std::string count_key = prefix_ + "barrier/" + name;
  const std::string done_key = count_key + "/done";
  try {
    // The last rank to arrive releases the others.
    if (store_->add(count_key, 1) == env_.world_size) store_->set(done_key, to_bytes("1"));
    store_->wait({done_key}, timeout_);
  } catch (const std::exception& e) {
    DHP_THROW(Communication,
              "torchrun bootstrap rank {}/{}: barrier '{}' not reached by every rank within "
              "{:.1f} s ({})",
              env_.rank, env_.world_size, name, timeout_.count() / 1000.0, e.what());
  }
}

#ifdef DHP_HAVE_NCCL
std::unique_ptr<Communicator> nccl_world(TorchrunBootstrap& bootstrap, int cuda_device) {
  std::vector<std::uint8_t> id_bytes;
  if (bootstrap.env().rank == 0) {
    const NcclUniqueId id = nccl_unique_id();
    id_bytes.assign(id.bytes.begin(), id.bytes.end());
  }
  id_bytes = bootstrap.broadcast("nccl_unique_id/world", id_bytes);
  NcclUniqueId id;
  DHP_CHECK(id_bytes.size() == id.bytes.size(), Communication,
            "torchrun bootstrap rank {}: NCCL unique id of {} bytes, expected {}",
            bootstrap.env().rank, id_bytes.size(), id.bytes.size());
  std::memcpy(id.bytes.data(), id_bytes.data(), id_bytes.size());
  const int device = cuda_device >= 0 ? cuda_device : bootstrap.env().local_rank;
  return nccl_world(id, bootstrap.env().rank, bootstrap.env().world_size, device,
                    bootstrap.timeout());
}
#endif

}  // namespace dhp
