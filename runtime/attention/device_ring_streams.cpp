// The device implementation of RingStreams (ring_streams.hpp): CUDA events between the
// caller's stream (compute) and the communicator's stream (comm). Nothing here blocks the
// host: wait() is cudaStreamWaitEvent, upload() is cudaMemcpyAsync from pageable memory
// (staged by the driver before it returns), posted exchanges are handed to the stream
// order (CommRequest::release_to_stream) instead of being waited.
#ifdef DHP_HAVE_NCCL

#include <cuda_runtime.h>

#include <string>
#include <vector>

#include "attention/ring_streams.hpp"
#include "dhp/error.hpp"

namespace dhp {
namespace {

class DeviceRingStreams final : public RingStreams {
 public:
  DeviceRingStreams(Communicator& world, void* compute_stream)
      : world_(world),
        compute_(static_cast<cudaStream_t>(compute_stream)),
        comm_(static_cast<cudaStream_t>(world.stream())) {}

  ~DeviceRingStreams() override {
    // Destroying an event that is still pending is allowed: its resources are released
    // once it completes.
    for (cudaEvent_t e : events_) cudaEventDestroy(e);
  }

  void* stream(Lane lane) const override { return lane == Lane::Compute ? compute_ : comm_; }
  bool on_device() const override { return true; }

  Event record(Lane lane) override {
    cudaEvent_t event = nullptr;
    check(cudaEventCreateWithFlags(&event, cudaEventDisableTiming), "cudaEventCreate");
    events_.push_back(event);
    check(cudaEventRecord(event, lane == Lane::Compute ? compute_ : comm_), "cudaEventRecord");
    return static_cast<Event>(events_.size() - 1);
  }

  void wait(Lane lane, Event event) override {
    DHP_CHECK(event >= 0 && static_cast<std::size_t>(event) < events_.size(), Internal,
              "ring streams: event {} was not recorded ({} recorded)", event, events_.size());
    check(cudaStreamWaitEvent(lane == Lane::Compute ? compute_ : comm_,
                              events_[static_cast<std::size_t>(event)], 0),
          "cudaStreamWaitEvent");
  }

  void post(std::span<const P2POp> ops) override {
    CommRequestPtr request = world_.exchange(ops);
    DHP_CHECK(request->release_to_stream(), Internal,
              "{}: a device ring needs exchanges ordered on the communicator's stream",
              world_.describe());
  }

  void finish() override { wait(Lane::Compute, record(Lane::Comm)); }

  void upload(void* dst, const void* host_src, std::size_t bytes) override {
    if (bytes == 0) return;
    check(cudaMemcpyAsync(dst, host_src, bytes, cudaMemcpyHostToDevice, compute_),
          "cudaMemcpyAsync (ring index arrays)");
  }

 private:
  void check(cudaError_t e, const char* what) const {
    if (e != cudaSuccess)
      DHP_THROW(Communication, "{}: ring streams: {} failed: {} ({})", world_.describe(), what,
                cudaGetErrorName(e), cudaGetErrorString(e));
  }

  Communicator& world_;
  cudaStream_t compute_;
  cudaStream_t comm_;
  std::vector<cudaEvent_t> events_;
};

}  // namespace

std::unique_ptr<RingStreams> make_device_ring_streams(Communicator& world, void* compute_stream) {
  return std::make_unique<DeviceRingStreams>(world, compute_stream);
}

}  // namespace dhp

#endif  // DHP_HAVE_NCCL
