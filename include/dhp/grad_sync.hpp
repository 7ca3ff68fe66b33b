// Gradient synchronisation over the ranks that hold replicas of a module's parameters
// (the DP x CP domain: every LLM rank of the module's layout, for one TP index).
//
// Normalisation convention: each rank's gradients are sums over its tokens of
// d(per-token loss)/d(theta) divided by the *global* number of loss tokens of the step
// (dispatch.hpp: global_count). The synchronised gradient is then the plain sum over the
// replicas - no division by the replica count - and equals the gradient of the global
// mean loss whatever the plan (how many ranks, which sequences where).
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "dhp/communicator.hpp"

namespace dhp {

// 16-bit gradients (bf16, f16) are never summed in 16-bit: like Megatron's fp32 main_grad
// they are widened to fp32, summed over the replicas in fp32 and rounded once on the way
// back, so the result does not depend on the number of replicas or on the reduction order
// beyond fp32 rounding.

// Sums `count` elements of `grads` in place over `replicas` (all members call it).
void sync_gradients(Communicator& replicas, void* grads, std::int64_t count, DataType type);

// Sharded optimizer (ZeRO-1/2): `grads` holds replicas.size() equal shards of `shard_count`
// elements; rank i receives the sum of shard i in `shard` (reduce_scatter).
void sync_gradient_shards(Communicator& replicas, const void* grads, void* shard,
                          std::int64_t shard_count, DataType type);

// Bucketed gradient sync overlapped with the backward, as PyTorch DDP and Megatron's DDP
// do: the gradients, registered in the order they become ready (the reverse of the
// forward), are cut into buckets of about `bucket_bytes` (DHP_GRAD_BUCKET_MB); a bucket is
// summed over the replicas with one non-blocking all-reduce as soon as its last gradient is
// ready *and every earlier bucket has been issued*, so every replica issues the same
// all-reduces in the same order whenever its own gradients become ready (a replica with
// nothing to compute issues them all at finish()). Gradients are staged in the bucket's
// flat buffer while it is in flight and copied back by finish() (16-bit gradients: staged
// and summed as fp32, rounded once when copied back).
//
// A step: start(); ready(i) as gradients become final (the last micro-batch's backward;
// optional: finish() issues what is left); finish(). Gradient buffers stay at the same
// address for the life of the object.
class GradBuckets {
 public:
  struct Gradient {
    void* data = nullptr;
    std::int64_t count = 0;
  };
  // bucket_bytes <= 0: DHP_GRAD_BUCKET_MB. Throws InvalidArgument for a null buffer, a
  // negative count or a dtype that is not a floating type.
  GradBuckets(Communicator& replicas, std::vector<Gradient> gradients, DataType type,
              std::int64_t bucket_bytes = 0);
  ~GradBuckets();
  GradBuckets(const GradBuckets&) = delete;
  GradBuckets& operator=(const GradBuckets&) = delete;

  void start();              // a new step: nothing ready, nothing issued
  void ready(int gradient);  // gradient `gradient` is final for this step
  void finish();             // issues the rest in order, waits, copies the sums back

  int num_buckets() const { return static_cast<int>(buckets_.size()); }
  // Buckets issued from ready() during the last step (before finish()).
  int issued_before_finish() const { return issued_early_; }
  Communicator& replicas() { return replicas_; }

 private:
  struct Bucket {
    int first = 0, last = 0;  // gradients [first, last)
    std::vector<std::byte> flat;
    int waiting = 0;  // gradients not ready yet this step
    CommRequestPtr request;
  };
  void issue_ready_buckets();
  DataType reduce_type() const;  // the bucket's element type on the wire (fp32 for 16-bit)

  Communicator& replicas_;
  std::vector<Gradient> gradients_;
  DataType type_;
  std::vector<Bucket> buckets_;
  std::vector<int> bucket_of_;
  std::vector<char> is_ready_;
  int next_to_issue_ = 0;
  int issued_early_ = 0;
  bool finishing_ = false;
};

}  // namespace dhp
