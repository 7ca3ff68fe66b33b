// NCCL backend of the Communicator (CUDA buffers), built when dhp has CUDA + NCCL
// (DHP_HAVE_NCCL). See docs/runtime_gpu.md.
//
// - Initialisation is non-blocking (ncclConfig_t::blocking = 0): nccl_world() and
//   split() return at once and the communicator finishes connecting in the background;
//   its first operation (or ready()) waits for it against timeout(). The group pool can
//   therefore create the next batch's groups while the current batch computes.
// - split() is ncclCommSplit with splitShare = 1 (the child shares the parent's channels
//   and buffers: cheap to create, many of them fit in memory).
// - Every operation runs on a CUDA stream the communicator owns (stream()); blocking
//   operations wait for it by polling cudaEventQuery and ncclCommGetAsyncError against
//   the deadline. On timeout or an asynchronous error the communicator is aborted
//   (ncclCommAbort) and Error(Communication) names the group, rank, operation and a hint.
// - isend/irecv each enqueue one kernel on that stream: a send blocks the stream until
//   its peer receives, so a pair of messages that must be in flight together (a ring
//   step, a send to self) goes through exchange(), one ncclGroupStart/End.
#pragma once

#ifdef DHP_HAVE_NCCL

#include <array>
#include <chrono>
#include <memory>

#include "dhp/communicator.hpp"

namespace dhp {

// ncclUniqueId as plain bytes, so that bootstraps (MPI, a c10d store) move it without
// including nccl.h.
struct NcclUniqueId {
  std::array<char, 128> bytes{};
};

// A fresh id (ncclGetUniqueId); one rank creates it and shares it with the others.
NcclUniqueId nccl_unique_id();

// Collective over the `size` processes that hold `id`: the world communicator on CUDA
// device `cuda_device` (cudaSetDevice is called). Non-blocking: see above.
std::unique_ptr<Communicator> nccl_world(const NcclUniqueId& id, int rank, int size,
                                         int cuda_device, std::chrono::milliseconds timeout);

// Same, with the id created on rank 0 of `bootstrap` (e.g. the MPI world) and broadcast
// over it; rank and size are bootstrap's, and so is the timeout.
std::unique_ptr<Communicator> nccl_world(Communicator& bootstrap, int cuda_device);

// Number of CUDA devices visible to this process (0 without a driver or a device).
int cuda_device_count() noexcept;

// Waits until a (possibly still initialising) NCCL communicator is usable; throws
// Error(Communication) past its timeout. A no-op for other backends.
void nccl_wait_ready(Communicator& comm);

}  // namespace dhp

#endif  // DHP_HAVE_NCCL
