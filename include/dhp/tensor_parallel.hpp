// Tensor parallelism inside one module rank: its `tp` processes split every linear layer as
// Megatron-LM does. A column-parallel layer holds a slice of the output features (its input
// is the whole activation; its input gradient is a partial sum, all-reduced over the group);
// a row-parallel layer holds the matching slice of the input features (its output is a
// partial sum, all-reduced over the group). Attention splits by heads: a column-parallel
// q/k/v projection gives each process heads/tp query and KV heads, which is why TP must
// divide the heads.
#pragma once

#include <cstdint>

#include "dhp/communicator.hpp"

namespace dhp {

struct FeatureRange {
  std::int64_t begin = 0, end = 0;
  std::int64_t size() const { return end - begin; }
};

struct TensorParallel {
  Communicator* group = nullptr;  // the rank's tp processes in TP-index order; null when tp == 1
  int size = 1;
  int index = 0;

  // This process's slice of `features` (floor shares that add up): the output features of
  // a column-parallel layer, the input features of a row-parallel one, the heads of an
  // attention layer.
  FeatureRange slice(std::int64_t features) const;
  // The same slice, checked to be an exact split (`what` names the layer in the error).
  FeatureRange even_slice(std::int64_t features, const char* what) const;
  // In-place sum over the group (nothing when tp == 1): a row-parallel output, a
  // column-parallel input gradient.
  void all_reduce(void* data, std::int64_t count, DataType type) const;
};

}  // namespace dhp
