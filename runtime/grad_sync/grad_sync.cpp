#include "dhp/grad_sync.hpp"

#include <cstring>
#include <vector>

#include "dhp/env.hpp"
#include "dhp/error.hpp"
#include "dhp/float16.hpp"
#include "dhp/log.hpp"

namespace dhp {
namespace {

bool is_16bit(DataType type) { return type == DataType::BF16 || type == DataType::F16; }

// 16-bit gradients are reduced in fp32 (Megatron's main_grad): widened on the way in,
// rounded once on the way out.
void widen(const void* src, float* dst, std::int64_t count, DataType type) {
  const auto* h = static_cast<const std::uint16_t*>(src);
  if (type == DataType::BF16)
    for (std::int64_t i = 0; i < count; ++i) dst[i] = bf16_to_float(h[i]);
  else
    for (std::int64_t i = 0; i < count; ++i) dst[i] = f16_to_float(h[i]);
}
void narrow(const float* src, void* dst, std::int64_t count, DataType type) {
  auto* h = static_cast<std::uint16_t*>(dst);
  if (type == DataType::BF16)
    for (std::int64_t i = 0; i < count; ++i) h[i] = float_to_bf16(src[i]);
  else
    for (std::int64_t i = 0; i < count; ++i) h[i] = float_to_f16(src[i]);
}

// Everything a gradient reduction can get wrong on one rank, checked before it is posted.
void check_reduction(const Communicator& replicas, const char* op, const void* grads,
                     const void* out, std::int64_t count, DataType type) {
  DHP_CHECK(count >= 0, InvalidArgument, "{}: {} count {} < 0", replicas.describe(), op, count);
  DHP_CHECK(type != DataType::U8 && type != DataType::I32 && type != DataType::I64, InvalidArgument,
            "{}: {} of {} gradients: gradients are f32, f64, bf16 or f16", replicas.describe(), op,
            to_string(type));
  DHP_CHECK(count == 0 || (grads != nullptr && out != nullptr), InvalidArgument,
            "{}: {}: a null gradient buffer for {} elements (nothing was sent)",
            replicas.describe(), op, count);
}

}  // namespace

void sync_gradients(Communicator& replicas, void* grads, std::int64_t count, DataType type) {
  check_reduction(replicas, "sync_gradients", grads, grads, count, type);
  if (replicas.size() == 1 || count == 0) return;
  if (is_16bit(type)) {
    std::vector<float> wide(static_cast<std::size_t>(count));
    widen(grads, wide.data(), count, type);
    replicas.all_reduce(wide.data(), wide.data(), count, DataType::F32, ReduceOp::Sum);
    narrow(wide.data(), grads, count, type);
    return;
  }
  replicas.all_reduce(grads, grads, count, type, ReduceOp::Sum);
}

void sync_gradient_shards(Communicator& replicas, const void* grads, void* shard,
                          std::int64_t shard_count, DataType type) {
  check_reduction(replicas, "sync_gradient_shards", grads, shard, shard_count, type);
  if (is_16bit(type) && shard_count > 0) {
    const std::int64_t total = shard_count * replicas.size();
    std::vector<float> wide(static_cast<std::size_t>(total)),
        out(static_cast<std::size_t>(shard_count));
    widen(grads, wide.data(), total, type);
    replicas.reduce_scatter(wide.data(), out.data(), shard_count, DataType::F32, ReduceOp::Sum);
    narrow(out.data(), shard, shard_count, type);
    return;
  }
  replicas.reduce_scatter(grads, shard, shard_count, type, ReduceOp::Sum);
}

GradBuckets::GradBuckets(Communicator& replicas, std::vector<Gradient> gradients, DataType type,
                         std::int64_t bucket_bytes)
    : replicas_(replicas), gradients_(std::move(gradients)), type_(type) {
  // Buckets are cut by the gradients' own bytes; 16-bit ones are staged as fp32.
  const auto element = static_cast<std::int64_t>(data_type_size(type));
  const auto staged = static_cast<std::int64_t>(data_type_size(reduce_type()));
  for (std::size_t i = 0; i < gradients_.size(); ++i)
    check_reduction(replicas, "GradBuckets", gradients_[i].data, gradients_[i].data,
                    gradients_[i].count, type);
  if (bucket_bytes <= 0)
    bucket_bytes = static_cast<std::int64_t>(env::grad_bucket_mb() * 1024 * 1024);
  bucket_of_.resize(gradients_.size());
  for (std::size_t i = 0; i < gradients_.size();) {
    Bucket bucket;
    bucket.first = static_cast<int>(i);
    std::int64_t bytes = 0;
    do {  // at least one gradient per bucket, however large
      bytes += gradients_[i].count * element;
      bucket_of_[i] = static_cast<int>(buckets_.size());
      ++i;
    } while (i < gradients_.size() && bytes + gradients_[i].count * element <= bucket_bytes);
    bucket.last = static_cast<int>(i);
    bucket.flat.resize(static_cast<std::size_t>(bytes / element * staged));
    buckets_.push_back(std::move(bucket));
  }
  is_ready_.assign(gradients_.size(), 0);
  DHP_LOG_DEBUG("{}: {} gradients in {} buckets of at most {} bytes", replicas.describe(),
                gradients_.size(), buckets_.size(), bucket_bytes);
  start();
}

GradBuckets::~GradBuckets() {
  // A bucket still in flight (an error unwound past finish) writes into its flat buffer:
  // wait for it, and if that fails keep the buffer alive rather than free it under MPI.
  for (Bucket& b : buckets_) {
    if (b.request == nullptr) continue;
    try {
      b.request->wait();
    } catch (...) {
      new std::vector<std::byte>(std::move(b.flat));  // leaked on purpose
    }
  }
}

void GradBuckets::start() {
  std::fill(is_ready_.begin(), is_ready_.end(), 0);
  for (Bucket& b : buckets_) {
    b.waiting = b.last - b.first;
    b.request.reset();
  }
  next_to_issue_ = 0;
  issued_early_ = 0;
  finishing_ = false;
}

void GradBuckets::ready(int gradient) {
  DHP_CHECK(gradient >= 0 && gradient < static_cast<int>(gradients_.size()), InvalidArgument,
            "{}: GradBuckets::ready({}) outside [0, {})", replicas_.describe(), gradient,
            gradients_.size());
  if (is_ready_[static_cast<std::size_t>(gradient)]) return;
  is_ready_[static_cast<std::size_t>(gradient)] = 1;
  --buckets_[static_cast<std::size_t>(bucket_of_[static_cast<std::size_t>(gradient)])].waiting;
  issue_ready_buckets();
}

DataType GradBuckets::reduce_type() const { return is_16bit(type_) ? DataType::F32 : type_; }

void GradBuckets::issue_ready_buckets() {
  const DataType reduced = reduce_type();
  const auto element = static_cast<std::size_t>(data_type_size(reduced));
  while (next_to_issue_ < num_buckets()) {
    Bucket& b = buckets_[static_cast<std::size_t>(next_to_issue_)];
    if (b.waiting > 0 && !finishing_) return;
    const auto count = static_cast<std::int64_t>(b.flat.size() / element);
    // One replica: nothing to sum, the gradients stay where they are.
    if (replicas_.size() > 1) {
      std::size_t offset = 0;
      for (int g = b.first; g < b.last; ++g) {
        const Gradient& grad = gradients_[static_cast<std::size_t>(g)];
        const auto bytes = static_cast<std::size_t>(grad.count) * element;
        if (bytes == 0) continue;
        if (reduced != type_)
          widen(grad.data, reinterpret_cast<float*>(b.flat.data() + offset), grad.count, type_);
        else
          std::memcpy(b.flat.data() + offset, grad.data, bytes);
        offset += bytes;
      }
      b.request =
          replicas_.iall_reduce(b.flat.data(), b.flat.data(), count, reduced, ReduceOp::Sum);
    }
    if (!finishing_) ++issued_early_;
    ++next_to_issue_;
  }
}

void GradBuckets::finish() {
  finishing_ = true;
  issue_ready_buckets();
  const DataType reduced = reduce_type();
  const auto element = static_cast<std::size_t>(data_type_size(reduced));
  for (Bucket& b : buckets_) {
    if (b.request == nullptr) continue;  // one replica: nothing was staged
    b.request->wait();
    b.request.reset();
    std::size_t offset = 0;
    for (int g = b.first; g < b.last; ++g) {
      const Gradient& grad = gradients_[static_cast<std::size_t>(g)];
      const auto bytes = static_cast<std::size_t>(grad.count) * element;
      if (bytes == 0) continue;
      if (reduced != type_)  // the fp32 sum, rounded once
        narrow(reinterpret_cast<const float*>(b.flat.data() + offset), grad.data, grad.count,
               type_);
      else
        std::memcpy(grad.data, b.flat.data() + offset, bytes);
      offset += bytes;
    }
  }
}

}  // namespace dhp
