#include "dhp/grad_sync.hpp"

#include "dhp/error.hpp"

namespace dhp {
namespace {

// Everything a gradient reduction can get wrong on one rank, checked before it is posted.
void check_reduction(const Communicator& replicas, const char* op, const void* grads,
                     const void* out, std::int64_t count, DataType type) {
  DHP_CHECK(count >= 0, InvalidArgument, "{}: {} count {} < 0", replicas.describe(), op, count);
  DHP_CHECK(type != DataType::U8 && type != DataType::I32 && type != DataType::I64,
            InvalidArgument, "{}: {} of {} gradients: gradients are f32, f64, bf16 or f16",
            replicas.describe(), op, to_string(type));
  DHP_CHECK(count == 0 || (grads != nullptr && out != nullptr), InvalidArgument,
            "{}: {}: a null gradient buffer for {} elements (nothing was sent)", replicas.describe(),
            op, count);
}

}  // namespace

void sync_gradients(Communicator& replicas, void* grads, std::int64_t count, DataType type) {
  check_reduction(replicas, "sync_gradients", grads, grads, count, type);
  if (replicas.size() == 1 || count == 0) return;
  replicas.all_reduce(grads, grads, count, type, ReduceOp::Sum);
}

void sync_gradient_shards(Communicator& replicas, const void* grads, void* shard,
                          std::int64_t shard_count, DataType type) {
  check_reduction(replicas, "sync_gradient_shards", grads, shard, shard_count, type);
  replicas.reduce_scatter(grads, shard, shard_count, type, ReduceOp::Sum);
}

}  // namespace dhp
