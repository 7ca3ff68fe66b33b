// Scratch buffers of the rings (CP attention, encoder attention) on the tensors' device.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <vector>

#include "dhp/cp_attention.hpp"

namespace dhp {

// Scratch buffers on the tensors' device, freed at scope exit.
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
  // A host index array, copied to the device when there is one.
  const std::int32_t* index(const std::vector<std::int32_t>& host) {
    const std::size_t n = host.size() * sizeof(std::int32_t);
    void* p = bytes(n);
    if (n == 0) return static_cast<const std::int32_t*>(p);
    if (allocator_ != nullptr) {
      allocator_->copy_from_host(p, host.data(), n);
    } else {
      std::memcpy(p, host.data(), n);
    }
    return static_cast<const std::int32_t*>(p);
  }

 private:
  BufferAllocator* allocator_;
  std::vector<std::vector<std::byte>> host_;
  std::vector<void*> device_;
};

}  // namespace dhp
