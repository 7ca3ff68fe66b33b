// LibTorch adapter (target dhp_torch; the core libraries never include LibTorch).
//
// 1. torchrun bootstrap: the world as torchrun describes it (RANK, WORLD_SIZE, LOCAL_RANK,
//    LOCAL_WORLD_SIZE, MASTER_ADDR, MASTER_PORT) and a c10d::TCPStore rendezvous (rank 0
//    serves it), used to share small values such as the NCCL unique id. Under torchrun the
//    CPU backend is still MPI (mpirun); the store only bootstraps NCCL.
// 2. at::Tensor <-> kernel arguments, with checks whose errors name the tensor.
// 3. cp_attention(): context-parallel attention (include/dhp/cp_attention.hpp) as a
//    torch::autograd::Function, so a C++ trainer gets autograd through it.
//
// Builds against LibTorch 1.13 and 2.x: only APIs common to both are used
// (c10d::TCPStore(host, TCPStoreOptions), Store::set/get/wait, autograd::Function).
#pragma once

#include <torch/torch.h>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "dhp/attention_backend.hpp"
#include "dhp/communicator.hpp"
#include "dhp/cp_attention.hpp"
#include "dhp/kernels.hpp"
#include "dhp/runtime.hpp"

namespace dhp {

// ---------------------------------------------------------------- torchrun bootstrap

struct TorchrunEnv {
  int rank = 0;
  int world_size = 1;
  int local_rank = 0;
  int local_world_size = 1;  // LOCAL_WORLD_SIZE, default 1 when absent
  std::string master_addr;
  int master_port = 0;
};

// Reads torchrun's variables; throws Error(InvalidArgument) naming a missing or malformed
// one (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT are required).
TorchrunEnv torchrun_env();

// Rendezvous of all ranks through a c10d::TCPStore at MASTER_ADDR:MASTER_PORT. Under
// torchrun's static rendezvous (TORCHELASTIC_USE_AGENT_STORE=True) the agent already serves
// the store there and every rank connects to it; otherwise rank 0 serves it, shared with
// any other store of the process on the same port (multi-tenant, as torch.distributed's
// env:// store is), so that dhp and a Python torch.distributed job coexist on MASTER_PORT.
// dhp's keys live under their own prefix (key_prefix()). The constructor returns once every
// rank has connected, or throws Error(Communication) past `timeout`.
class TorchrunBootstrap {
 public:
  explicit TorchrunBootstrap(std::chrono::milliseconds timeout);
  TorchrunBootstrap(const TorchrunEnv& env, std::chrono::milliseconds timeout);
  // Rank 0 serves the store: its destructor waits (at most timeout()) until every other
  // rank has destroyed its bootstrap, so that no rank loses the store mid-request.
  ~TorchrunBootstrap();
  TorchrunBootstrap(const TorchrunBootstrap&) = delete;
  TorchrunBootstrap& operator=(const TorchrunBootstrap&) = delete;

  const TorchrunEnv& env() const { return env_; }
  ProcessInfo process() const;
  c10d::Store& store() { return *store_; }
  c10::intrusive_ptr<c10d::Store> shared_store() const { return store_; }
  // The prefix of every key dhp writes ("dhp/", or per torchrun attempt on its agent's store).
  const std::string& key_prefix() const { return prefix_; }
  std::chrono::milliseconds timeout() const { return timeout_; }

  // Rank 0 publishes `value` under `key`; every rank returns it (rank 0 included). Keys
  // are single-use: give each exchange its own.
  std::vector<std::uint8_t> broadcast(const std::string& key,
                                      const std::vector<std::uint8_t>& value);
  // Returns once every rank has arrived at the barrier called `name` (single-use).
  void barrier(const std::string& name);

 private:
  TorchrunEnv env_;
  std::chrono::milliseconds timeout_;
  std::string prefix_ = "dhp/";
  c10::intrusive_ptr<c10d::TCPStore> store_;
};

// The world of the torchrun ranks on Gloo (CPU buffers): c10d::ProcessGroupGloo on the
// bootstrap's store, the CPU backend under torchrun (mpirun is not involved). Splits build
// Gloo groups on prefixes of the same store. It keeps the contract of communicator.hpp.
std::unique_ptr<Communicator> gloo_world(TorchrunBootstrap& bootstrap);

#ifdef DHP_HAVE_NCCL
// The NCCL world over the torchrun ranks: rank 0 creates the unique id and shares it
// through the store. cuda_device < 0: LOCAL_RANK.
std::unique_ptr<Communicator> nccl_world(TorchrunBootstrap& bootstrap, int cuda_device = -1);
#endif

// ---------------------------------------------------------------- tensors

// The kernels' dtype / device of `t`; Error(InvalidArgument) naming `name` otherwise.
kernels::DType kernel_dtype(const at::Tensor& t, const char* name);
kernels::Device kernel_device(const at::Tensor& t, const char* name);
at::ScalarType scalar_type(kernels::DType dtype);
// Options of an lse tensor for queries `q`: the accumulator type (float64 for float64 q,
// float32 for float32, bfloat16 and float16), q's device.
at::TensorOptions lse_options(const at::Tensor& q);
// The current CUDA stream (cudaStream_t) of a CUDA tensor's device, where dhp's kernels
// run (the CP context's `stream`); nullptr for CPU tensors or a LibTorch without CUDA.
void* current_stream(const at::Tensor& t);

// Checks `t` is defined, contiguous, has `dtype`, lives on `device` and has `sizes`
// (-1: any); the error names the tensor and the wrong value.
void check_tensor(const at::Tensor& t, const char* name, kernels::DType dtype,
                  kernels::Device device, const std::vector<std::int64_t>& sizes);

// Temporaries of CP attention allocated as LibTorch tensors on one device (CUDA tensors
// go through LibTorch's caching allocator).
class TorchBufferAllocator final : public BufferAllocator {
 public:
  explicit TorchBufferAllocator(at::Device device) : device_(device) {}
  void* allocate(std::size_t bytes) override;
  void deallocate(void* pointer) noexcept override;
  void copy_from_host(void* device_dst, const void* host_src, std::size_t bytes) override;

 private:
  at::Device device_;
  std::unordered_map<void*, at::Tensor> live_;
};

// ---------------------------------------------------------------- CP attention

// What cp_attention needs besides the tensors. Everything pointed to must outlive the
// backward pass (the autograd graph keeps the pointers, not copies).
struct CpAttentionOptions {
  const WaveLayout* layout = nullptr;
  Communicator* world = nullptr;
  GroupPool* pool = nullptr;             // null: Ulysses groups run as Ring
  BufferAllocator* allocator = nullptr;  // null: host buffers, or LibTorch's for CUDA tensors
  double softmax_scale = 0;              // 0: 1/sqrt(head_dim)
  bool causal = true;
  // UlyssesRing groups: processes per node, TP included (CpAttentionContext::ranks_per_node).
  // 0: the whole group is on one node (plain Ulysses).
  int ranks_per_node = 0;
  // Attention backends chosen per call from a measured table (CpAttentionContext::backends;
  // e.g. dhp's kernels and torch_flash_backend()). nullptr: dhp's kernels.
  const AttentionBackends* backends = nullptr;
};

// PyTorch's FlashAttention-2 variable-length kernels (at::_flash_attention_forward and
// _backward, the packed batch in one call, on the caller's stream) as the attention
// backend "torch_varlen_flash", the name scripts/attention_vs_sdpa.py measures it under.
// For LibTorch 2.x built with CUDA; nullptr otherwise. It runs only what it can express
// (AttentionBackend::cannot_run): CUDA bf16/f16, head_dim a multiple of 8 up to 256, no
// explicit-position mask, equal query and key lengths under a causal mask, results in the
// data type, no accumulation. Not yet run on a GPU (runtime_torch_cuda checks it there).
std::shared_ptr<AttentionBackend> torch_flash_backend();

// q [rows, heads_q, head_dim], k/v [rows, heads_kv, head_dim] (rows = layout->rows),
// float32, float64, bfloat16 or float16 (16-bit: fp32 accumulation, see cp_attention.hpp),
// contiguous, same device. Returns out [rows, heads_q, head_dim]; backward gives dq, dk,
// dv. CUDA tensors: the kernels run on the current CUDA stream, forward and backward,
// without waiting for the device. Collective: every rank of the wave calls it (and its
// backward) together.
at::Tensor cp_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                        const CpAttentionOptions& options);
// The same, also returning the log-sum-exp of every query row and head: lse [heads_q, rows]
// in q's dtype (the accumulator type of float32 and float64), not differentiable. out's
// backward is cp_attention's.
std::pair<at::Tensor, at::Tensor> cp_attention_with_lse(const at::Tensor& q, const at::Tensor& k,
                                                        const at::Tensor& v,
                                                        const CpAttentionOptions& options);

}  // namespace dhp
