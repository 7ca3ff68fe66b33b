// How the rings (CP attention, the encoder's attention) order their work: the contract of
// docs/runtime.md, "Streams and synchronisation".
//
// Two lanes. Compute: the kernels (attention, merge, conversions, index uploads) on the
// caller's stream. Comm: the ring's point-to-point exchanges on the communicator's stream.
// The lanes are ordered by events only: record() marks what a lane has queued so far and
// wait() makes what a lane queues next start after it. On a device nothing in here blocks
// the host, so the exchange of the next KV block runs while the current block's attention
// does. finish() ends a ring: the compute lane waits for everything posted, so the
// caller's later work on its stream sees every result and may reuse every buffer.
//
// Implementations: a device one (CUDA events on the caller's stream and the NCCL
// communicator's stream) and a host one (CPU communicators: a "stream" is the list of
// posted requests, waiting for a comm event waits those requests on the host, compute is
// synchronous). Tests decorate the host one to record the sequence of calls and check the
// ordering rules without a GPU (tests/runtime/test_ring_streams.cpp).
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "dhp/attention_backend.hpp"
#include "dhp/communicator.hpp"
#include "dhp/kernels.hpp"

namespace dhp {

class RingStreams {
 public:
  enum class Lane { Compute, Comm };
  using Event = int;  // the index of a recorded event, valid for this object's lifetime

  virtual ~RingStreams() = default;

  // The cudaStream_t of a lane; nullptr on the host.
  virtual void* stream(Lane lane) const = 0;
  // Whether buffers live on a device (index arrays must then be uploaded).
  virtual bool on_device() const = 0;
  // Marks everything queued on `lane` so far.
  virtual Event record(Lane lane) = 0;
  // What `lane` queues from now on starts once `event` has completed.
  virtual void wait(Lane lane, Event event) = 0;
  // Posts one batched exchange (Communicator::exchange) on the comm lane.
  virtual void post(std::span<const P2POp> ops) = 0;
  // The compute lane waits for everything posted so far; no request is outstanding after.
  virtual void finish() = 0;

  // Work on the compute lane. Each call sets args.stream to stream(Compute). Attention runs
  // on `backend` (null: dhp's kernels).
  virtual kernels::Status attention_forward(kernels::AttentionForwardArgs args,
                                            AttentionBackend* backend = nullptr);
  virtual kernels::Status attention_backward(kernels::AttentionBackwardArgs args,
                                             AttentionBackend* backend = nullptr);
  virtual kernels::Status merge(kernels::MergeArgs args);
  virtual kernels::Status convert(kernels::ConvertArgs args);
  // Copies `bytes` from host memory to device memory `dst` (on_device() only); the host
  // memory may be released as soon as this returns.
  virtual void upload(void* dst, const void* host_src, std::size_t bytes) = 0;
};

// The lanes of a ring on `world` whose kernels run on `compute_stream` (a cudaStream_t;
// nullptr: the legacy default stream): the device implementation when the communicator
// has a stream (NCCL), else the host one.
std::unique_ptr<RingStreams> make_ring_streams(Communicator& world, void* compute_stream);

// The host implementation, for CPU communicators (and for tests to decorate).
class HostRingStreams : public RingStreams {
 public:
  explicit HostRingStreams(Communicator& world) : world_(world) {}
  void* stream(Lane) const override { return nullptr; }
  bool on_device() const override { return false; }
  Event record(Lane lane) override;
  void wait(Lane lane, Event event) override;
  void post(std::span<const P2POp> ops) override;
  void finish() override;
  void upload(void* dst, const void* host_src, std::size_t bytes) override;

 private:
  Communicator& world_;
  std::vector<CommRequestPtr> posted_;  // in posting order
  std::size_t completed_ = 0;           // posted_[0, completed_) were waited
  std::vector<std::size_t> events_;     // comm events: how many requests they cover; compute: 0
};

}  // namespace dhp
