// Scratch buffers of the rings (CP attention, encoder attention) on the tensors' device.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "dhp/cp_attention.hpp"

namespace dhp {

// Scratch buffers on the tensors' device, freed at scope exit. Device memory is released
// while the ring's last kernels may still be queued: the allocator must be stream-ordered
// for the compute stream (cudaFree, LibTorch's caching allocator on the current stream).
class Scratch {
 public:
  explicit Scratch(BufferAllocator* allocator) : allocator_(allocator) {}
  ~Scratch() {
    if (allocator_ != nullptr) {
      for (void* p : device_) allocator_->deallocate(p);
    }
  }
  Scratch(const Scratch&) = delete;
  Scratch& operator=(const Scratch&) = delete;

  void* bytes(std::size_t n) {
    if (n == 0) n = 1;  // distinct non-null pointers keep the kernels' null checks meaningful
    if (allocator_ != nullptr) {
      device_.push_back(allocator_->allocate(n));
      return device_.back();
    }
    host_.emplace_back(n);
    return host_.back().data();
  }

 private:
  BufferAllocator* allocator_;
  std::vector<std::vector<std::byte>> host_;
  std::vector<void*> device_;
};

}  // namespace dhp
