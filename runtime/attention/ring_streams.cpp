#include "attention/ring_streams.hpp"

#include <cstring>

#include "dhp/error.hpp"

namespace dhp {

#ifdef DHP_HAVE_NCCL
// runtime/attention/device_ring_streams.cpp
std::unique_ptr<RingStreams> make_device_ring_streams(Communicator& world, void* compute_stream);
#endif

kernels::Status RingStreams::attention_forward(kernels::AttentionForwardArgs args,
                                               AttentionBackend* backend) {
  args.stream = stream(Lane::Compute);
  return backend != nullptr ? backend->forward(args) : kernels::attention_forward(args);
}

kernels::Status RingStreams::attention_backward(kernels::AttentionBackwardArgs args,
                                                AttentionBackend* backend) {
  args.stream = stream(Lane::Compute);
  return backend != nullptr ? backend->backward(args) : kernels::attention_backward(args);
}

kernels::Status RingStreams::merge(kernels::MergeArgs args) {
  args.stream = stream(Lane::Compute);
  return kernels::merge_attention_partial(args);
}

kernels::Status RingStreams::convert(kernels::ConvertArgs args) {
  args.stream = stream(Lane::Compute);
  return kernels::convert_dtype(args);
}

std::unique_ptr<RingStreams> make_ring_streams(Communicator& world, void* compute_stream) {
  if (world.stream() == nullptr) return std::make_unique<HostRingStreams>(world);
#ifdef DHP_HAVE_NCCL
  return make_device_ring_streams(world, compute_stream);
#else
  (void)compute_stream;
  DHP_THROW(InvalidArgument,
            "{} has a device stream but dhp was built without CUDA: no device ring streams",
            world.describe());
#endif
}

RingStreams::Event HostRingStreams::record(Lane lane) {
  // Compute work on the host is done when its call returns: its events are complete.
  events_.push_back(lane == Lane::Comm ? posted_.size() : 0);
  return static_cast<Event>(events_.size() - 1);
}

void HostRingStreams::wait(Lane lane, Event event) {
  DHP_CHECK(event >= 0 && static_cast<std::size_t>(event) < events_.size(), Internal,
            "ring streams: event {} was not recorded ({} recorded)", event, events_.size());
  if (lane == Lane::Comm) return;  // posts are issued after the host's compute returned
  const std::size_t covered = events_[static_cast<std::size_t>(event)];
  for (; completed_ < covered; ++completed_) posted_[completed_]->wait();
}

void HostRingStreams::post(std::span<const P2POp> ops) { posted_.push_back(world_.exchange(ops)); }

void HostRingStreams::finish() {
  for (; completed_ < posted_.size(); ++completed_) posted_[completed_]->wait();
  posted_.clear();
  completed_ = 0;
}

void HostRingStreams::upload(void*, const void*, std::size_t) {
  DHP_THROW(Internal, "ring streams: upload() on host buffers (index arrays are used in place)");
}

}  // namespace dhp
