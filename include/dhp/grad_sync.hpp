// Gradient synchronisation over the ranks that hold replicas of a module's parameters
// (the DP x CP domain: every LLM rank of the module's layout, for one TP index).
//
// Normalisation convention: each rank's gradients are sums over its tokens of
// d(per-token loss)/d(theta) divided by the *global* number of loss tokens of the step
// (dispatch.hpp: global_count). The synchronised gradient is then the plain sum over the
// replicas - no division by the replica count - and equals the gradient of the global
// mean loss whatever the plan (how many ranks, which sequences where).
#pragma once

#include <cstdint>

#include "dhp/communicator.hpp"

namespace dhp {

// Sums `count` elements of `grads` in place over `replicas` (all members call it).
void sync_gradients(Communicator& replicas, void* grads, std::int64_t count, DataType type);

// Sharded optimizer (ZeRO-1/2): `grads` holds replicas.size() equal shards of `shard_count`
// elements; rank i receives the sum of shard i in `shard` (reduce_scatter).
void sync_gradient_shards(Communicator& replicas, const void* grads, void* shard,
                          std::int64_t shard_count, DataType type);

}  // namespace dhp
