#include "dhp/grad_sync.hpp"

#include "dhp/error.hpp"

namespace dhp {

void sync_gradients(Communicator& replicas, void* grads, std::int64_t count, DataType type) {
  DHP_CHECK(count >= 0, InvalidArgument, "{}: sync_gradients count {} < 0", replicas.describe(),
            count);
  if (replicas.size() == 1 || count == 0) return;
  replicas.all_reduce(grads, grads, count, type, ReduceOp::Sum);
}

void sync_gradient_shards(Communicator& replicas, const void* grads, void* shard,
                          std::int64_t shard_count, DataType type) {
  DHP_CHECK(shard_count >= 0, InvalidArgument, "{}: sync_gradient_shards shard count {} < 0",
            replicas.describe(), shard_count);
  replicas.reduce_scatter(grads, shard, shard_count, type, ReduceOp::Sum);
}

}  // namespace dhp
