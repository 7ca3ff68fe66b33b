#include "dhp/tensor_parallel.hpp"

#include <string>

#include "dhp/error.hpp"

namespace dhp {

FeatureRange TensorParallel::slice(std::int64_t features) const {
  DHP_CHECK(size >= 1 && index >= 0 && index < size && features >= 0, InvalidArgument,
            "tensor parallel: slice of {} features for index {} of {}", features, index, size);
  const auto at = [&](std::int64_t k) { return features / size * k + features % size * k / size; };
  return {at(index), at(index + 1)};
}

FeatureRange TensorParallel::even_slice(std::int64_t features, const char* what) const {
  DHP_CHECK(size >= 1 && features % size == 0, InvalidArgument,
            "tensor parallel: {} has {} features, which {} processes cannot split evenly", what,
            features, size);
  return slice(features);
}

void TensorParallel::all_reduce(void* data, std::int64_t count, DataType type) const {
  if (size == 1) return;
  DHP_CHECK(group != nullptr && group->size() == size, InvalidArgument,
            "tensor parallel: {} processes but the group is {}", size,
            group == nullptr ? std::string("missing") : group->describe());
  group->all_reduce(data, data, count, type, ReduceOp::Sum);
}

}  // namespace dhp
