#include "dhp/packed_cp_attention.hpp"

#include <algorithm>
#include <cstring>
#include <numeric>
#include <set>

#include "dhp/cp_attention.hpp"
#include "dhp/error.hpp"

namespace dhp {
namespace {

// Causal attention work of a sequence of `length` rows (the number of (query, key) pairs).
double causal_work(std::int64_t length) {
  const auto l = static_cast<double>(length);
  return l * (l + 1) / 2;
}

// Row i of the local layout -> row of the packed batch.
std::vector<std::int64_t> packed_rows_of(const WaveLayout& layout,
                                         const std::vector<std::int64_t>& offsets) {
  std::vector<std::int64_t> rows(static_cast<std::size_t>(layout.rows));
  for (const LocalPiece& piece : layout.pieces)
    for (std::int64_t r = 0; r < piece.rows; ++r) {
      const auto local = static_cast<std::size_t>(piece.offset + r);
      rows[local] = offsets[static_cast<std::size_t>(piece.sample)] + layout.positions[local];
    }
  return rows;
}

}  // namespace

std::vector<SequenceSharding> choose_sharding(std::span<const std::int64_t> lengths, int degree) {
  DHP_CHECK(degree >= 1, InvalidArgument, "choose_sharding: ring of {} members", degree);
  const std::size_t n = lengths.size();
  std::vector<SequenceSharding> out(n, SequenceSharding::whole(0));
  if (degree == 1) return out;
  double total = 0;
  for (std::int64_t l : lengths) total += causal_work(l);
  const double fair = total / degree;
  // Longest first; ties by index so that every rank decides alike.
  std::vector<std::size_t> order(n);
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(),
                   [&](std::size_t a, std::size_t b) { return lengths[a] > lengths[b]; });
  const auto splittable = [&](std::size_t i) { return lengths[i] >= 2 * std::int64_t{degree}; };
  std::vector<char> split(n, 0);
  for (std::size_t i : order) split[i] = splittable(i) && causal_work(lengths[i]) > fair;
  for (;;) {
    // Zigzag sequences load every member equally; whole ones go to the least loaded.
    double shared = 0;
    for (std::size_t i = 0; i < n; ++i)
      if (split[i]) shared += causal_work(lengths[i]) / degree;
    std::vector<double> load(static_cast<std::size_t>(degree), shared);
    for (std::size_t i : order) {
      if (split[i]) continue;
      const auto least = static_cast<int>(std::min_element(load.begin(), load.end()) - load.begin());
      load[static_cast<std::size_t>(least)] += causal_work(lengths[i]);
      out[i] = SequenceSharding::whole(least);
    }
    const double worst = *std::max_element(load.begin(), load.end());
    const auto next = std::find_if(order.begin(), order.end(),
                                   [&](std::size_t i) { return !split[i] && splittable(i); });
    if (worst <= 1.1 * fair || next == order.end()) break;
    split[*next] = 1;
  }
  for (std::size_t i = 0; i < n; ++i)
    if (split[i]) out[i] = SequenceSharding::zigzag();
  return out;
}

PackedCpAttention::PackedCpAttention(std::vector<std::int64_t> lengths, std::vector<int> ring,
                                     int world_rank, int world_size,
                                     std::vector<SequenceSharding> sharding,
                                     CpAttention attention)
    : lengths_(std::move(lengths)),
      ring_(std::move(ring)),
      sharding_(std::move(sharding)),
      world_size_(world_size) {
  DHP_CHECK(world_size >= 1 && world_rank >= 0 && world_rank < world_size, InvalidArgument,
            "PackedCpAttention: world rank {} outside a world of {}", world_rank, world_size);
  DHP_CHECK(!ring_.empty(), InvalidArgument, "PackedCpAttention: the ring has no ranks");
  std::set<int> seen;
  for (std::size_t m = 0; m < ring_.size(); ++m) {
    DHP_CHECK(ring_[m] >= 0 && ring_[m] < world_size, InvalidArgument,
              "PackedCpAttention: ring member {} is world rank {}, outside [0, {})", m, ring_[m],
              world_size);
    DHP_CHECK(seen.insert(ring_[m]).second, InvalidArgument,
              "PackedCpAttention: world rank {} is in the ring twice (member {})", ring_[m], m);
  }
  for (std::size_t s = 0; s < lengths_.size(); ++s)
    DHP_CHECK(lengths_[s] >= 0, InvalidArgument, "PackedCpAttention: sequence {} has length {}",
              s, lengths_[s]);
  const int degree = static_cast<int>(ring_.size());
  if (sharding_.empty()) sharding_ = choose_sharding(lengths_, degree);
  DHP_CHECK(sharding_.size() == lengths_.size(), InvalidArgument,
            "PackedCpAttention: {} shardings for {} sequences", sharding_.size(), lengths_.size());
  for (std::size_t s = 0; s < sharding_.size(); ++s) {
    const SequenceSharding& sh = sharding_[s];
    if (sh.sharding == Sharding::Zigzag) {
      DHP_CHECK(sh.member == -1, InvalidArgument,
                "PackedCpAttention: sequence {} is zigzag-split but names member {} (use -1: "
                "SequenceSharding::zigzag())",
                s, sh.member);
    } else {
      DHP_CHECK(sh.member >= 0 && sh.member < degree, InvalidArgument,
                "PackedCpAttention: sequence {} is whole on member {} of a ring of {}", s,
                sh.member, degree);
    }
  }

  // One wave, one group: world ranks are plan ranks (tp 1 from device 0).
  plan_.strategy = "packed";
  plan_.llm = ModuleLayout::on_devices(0, world_size);
  WavePlan wave;
  wave.groups.push_back(GroupPlan{ring_, attention});
  for (std::size_t s = 0; s < lengths_.size(); ++s) {
    const int sample = static_cast<int>(s);
    wave.sequences.push_back(sharding_[s].sharding == Sharding::Zigzag
                                 ? SequencePlan::zigzag(sample, 0)
                                 : SequencePlan::whole(sample, 0, sharding_[s].member));
  }
  plan_.waves.push_back(std::move(wave));
  layout_ = wave_layout(plan_, 0, lengths_, world_rank, world_size);

  std::vector<std::int64_t> offsets(lengths_.size() + 1, 0);
  std::partial_sum(lengths_.begin(), lengths_.end(), offsets.begin() + 1);
  total_rows_ = offsets.back();
  packed_rows_ = packed_rows_of(layout_, offsets);
}

void PackedCpAttention::shard(const void* packed, void* local, std::int64_t row_bytes) const {
  DHP_CHECK(row_bytes > 0, InvalidArgument, "PackedCpAttention::shard: row_bytes={} <= 0",
            row_bytes);
  if (packed_rows_.empty()) return;
  DHP_CHECK(packed != nullptr && local != nullptr, InvalidArgument,
            "PackedCpAttention::shard: a null buffer ({} local rows of {} packed)",
            packed_rows_.size(), total_rows_);
  const auto bytes = static_cast<std::size_t>(row_bytes);
  for (std::size_t i = 0; i < packed_rows_.size(); ++i)
    std::memcpy(static_cast<std::byte*>(local) + i * bytes,
                static_cast<const std::byte*>(packed) + packed_rows_[i] * row_bytes, bytes);
}

void PackedCpAttention::gather(Communicator& world, const void* local, void* packed,
                               std::int64_t row_bytes) const {
  DHP_CHECK(world.size() == world_size_ && world.device() == Device::CPU, InvalidArgument,
            "PackedCpAttention::gather: {} (built for a CPU world of {})", world.describe(),
            world_size_);
  DHP_CHECK(row_bytes > 0, InvalidArgument, "PackedCpAttention::gather: row_bytes={} <= 0",
            row_bytes);
  if (!in_ring()) return;
  DHP_CHECK((local != nullptr || packed_rows_.empty()) && (packed != nullptr || total_rows_ == 0),
            InvalidArgument,
            "PackedCpAttention::gather: world rank {}: a null buffer ({} local rows, {} packed)",
            world.rank(), packed_rows_.size(), total_rows_);
  std::vector<std::int64_t> offsets(lengths_.size() + 1, 0);
  std::partial_sum(lengths_.begin(), lengths_.end(), offsets.begin() + 1);
  // Every member's rows, known here from the plan; then one batched exchange.
  std::vector<std::vector<std::int64_t>> rows_of(ring_.size());
  std::vector<std::vector<std::byte>> received(ring_.size());
  std::vector<P2POp> ops;
  const int kTag = 21;
  for (std::size_t m = 0; m < ring_.size(); ++m) {
    if (ring_[m] == world.rank()) continue;
    rows_of[m] = packed_rows_of(wave_layout(plan_, 0, lengths_, ring_[m], world_size_), offsets);
    received[m].resize(rows_of[m].size() * static_cast<std::size_t>(row_bytes));
    ops.push_back({P2POp::Kind::Send, ring_[m], const_cast<void*>(local),
                   static_cast<std::int64_t>(packed_rows_.size()) * row_bytes, DataType::U8, kTag});
    ops.push_back({P2POp::Kind::Recv, ring_[m], received[m].data(),
                   static_cast<std::int64_t>(received[m].size()), DataType::U8, kTag});
  }
  if (!ops.empty()) world.exchange(ops)->wait();
  const auto bytes = static_cast<std::size_t>(row_bytes);
  auto* out = static_cast<std::byte*>(packed);
  for (std::size_t i = 0; i < packed_rows_.size(); ++i)
    std::memcpy(out + packed_rows_[i] * row_bytes, static_cast<const std::byte*>(local) + i * bytes,
                bytes);
  for (std::size_t m = 0; m < ring_.size(); ++m)
    for (std::size_t i = 0; i < rows_of[m].size(); ++i)
      std::memcpy(out + rows_of[m][i] * row_bytes, received[m].data() + i * bytes, bytes);
}

void PackedCpAttention::forward(Communicator& world, kernels::DType dtype,
                                const kernels::AttentionShape& shape, const void* q, const void* k,
                                const void* v, void* out, void* lse, GroupPool* pool) const {
  DHP_CHECK(world.size() == world_size_, InvalidArgument,
            "PackedCpAttention::forward: {} but built for a world of {}", world.describe(),
            world_size_);
  CpAttentionContext ctx;
  ctx.dtype = dtype;
  ctx.shape = shape;
  ctx.layout = &layout_;
  ctx.world = &world;
  ctx.pool = pool;
  cp_attention_forward(ctx, q, k, v, out, lse);
}

void PackedCpAttention::backward(Communicator& world, kernels::DType dtype,
                                 const kernels::AttentionShape& shape, const void* q,
                                 const void* k, const void* v, const void* out, const void* lse,
                                 const void* dout, void* dq, void* dk, void* dv,
                                 GroupPool* pool) const {
  DHP_CHECK(world.size() == world_size_, InvalidArgument,
            "PackedCpAttention::backward: {} but built for a world of {}", world.describe(),
            world_size_);
  CpAttentionContext ctx;
  ctx.dtype = dtype;
  ctx.shape = shape;
  ctx.layout = &layout_;
  ctx.world = &world;
  ctx.pool = pool;
  cp_attention_backward(ctx, q, k, v, out, lse, dout, dq, dk, dv);
}

}  // namespace dhp
