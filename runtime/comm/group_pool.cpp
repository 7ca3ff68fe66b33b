#include "dhp/group_pool.hpp"

#include <algorithm>
#include <bit>
#include <chrono>
#include <set>

#include "dhp/env.hpp"
#include "dhp/error.hpp"
#include "dhp/log.hpp"

namespace dhp {

GroupPool::GroupPool(Communicator& parent, int capacity)
    : parent_(parent), capacity_(capacity > 0 ? capacity : env::group_pool_size()) {}

GroupPool::~GroupPool() = default;

void GroupPool::acquire(const std::vector<std::vector<int>>& partition) {
  std::set<int> seen;
  for (const auto& group : partition) {
    DHP_CHECK(!group.empty(), InvalidArgument, "{}: group pool asked for an empty group",
              parent_.describe());
    for (int r : group) {
      DHP_CHECK(r >= 0 && r < parent_.size(), InvalidArgument,
                "{}: group {} has rank {} outside the parent", parent_.describe(),
                group_name(group), r);
      DHP_CHECK(seen.insert(r).second, InvalidArgument,
                "{}: rank {} is in two groups of one partition (group {})", parent_.describe(), r,
                group_name(group));
    }
  }
  // Hits and misses are counted over the whole partition, so they are the same on every rank.
  std::vector<const std::vector<int>*> missing;
  for (const auto& group : partition) {
    auto it = entries_.find(group);
    if (it != entries_.end()) {
      ++stats_.hits;
      lru_.splice(lru_.begin(), lru_, it->second.lru);
    } else {
      ++stats_.misses;
      missing.push_back(&group);
    }
  }
  if (!missing.empty()) {
    // One split creates every missing group: color = the group's index among the missing
    // ones, key = position in the group (ring order); ranks in none of them pass -1.
    int color = -1, key = 0;
    std::vector<int> members;
    for (std::size_t g = 0; g < missing.size(); ++g) {
      const auto& group = *missing[g];
      const auto pos = std::find(group.begin(), group.end(), parent_.rank());
      if (pos == group.end()) continue;
      color = static_cast<int>(g);
      key = static_cast<int>(pos - group.begin());
      for (int r : group) members.push_back(parent_.world_ranks()[static_cast<std::size_t>(r)]);
    }
    const auto start = std::chrono::steady_clock::now();
    std::unique_ptr<Communicator> created = parent_.split(color, key, members);
    stats_.creation_ms +=
        std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
    ++stats_.splits;
    stats_.creations += static_cast<std::int64_t>(missing.size());
    for (std::size_t g = 0; g < missing.size(); ++g) {
      lru_.push_front(*missing[g]);
      Entry entry;
      entry.lru = lru_.begin();
      if (static_cast<int>(g) == color) entry.comm = std::move(created);
      entries_.emplace(*missing[g], std::move(entry));
    }
    DHP_LOG_DEBUG("{}: group pool created {} groups in one split ({:.2f} ms total so far)",
                  parent_.describe(), missing.size(), stats_.creation_ms);
  }
  evict(partition);
}

void GroupPool::evict(const std::vector<std::vector<int>>& keep) {
  // Identical on every rank: the LRU order is built from the same calls everywhere.
  auto it = lru_.end();
  while (entries_.size() > static_cast<std::size_t>(capacity_) && it != lru_.begin()) {
    --it;
    if (std::find(keep.begin(), keep.end(), *it) != keep.end()) continue;
    DHP_LOG_DEBUG("{}: group pool evicts {}", parent_.describe(), group_name(*it));
    entries_.erase(*it);
    it = lru_.erase(it);
    ++stats_.destroyed;
  }
}

Communicator& GroupPool::get(const std::vector<int>& ranks) {
  auto it = entries_.find(ranks);
  DHP_CHECK(it != entries_.end(), InvalidArgument,
            "{}: group {} is not in the pool (acquire or prewarm it first)", parent_.describe(),
            group_name(ranks));
  DHP_CHECK(it->second.comm != nullptr, InvalidArgument, "{}: this rank is not a member of {}",
            parent_.describe(), group_name(ranks));
  lru_.splice(lru_.begin(), lru_, it->second.lru);
  return *it->second.comm;
}

std::vector<std::vector<std::vector<int>>> communicator_partitions(const Plan& plan) {
  std::vector<std::vector<std::vector<int>>> partitions;
  for (const WavePlan& wave : plan.waves) {
    for (int t = 0; t < plan.llm.tp; ++t) {
      std::vector<std::vector<int>> partition;
      for (const GroupPlan& group : wave.groups) {
        if (group.attention == CpAttention::Ring || group.degree() <= 1) continue;
        std::vector<int> ranks;
        for (int r : group.ranks) ranks.push_back(plan.llm.device_of(r, t));
        partition.push_back(std::move(ranks));
      }
      if (!partition.empty()) partitions.push_back(std::move(partition));
    }
  }
  return partitions;
}

void GroupPool::prewarm(const Plan& plan) {
  for (const auto& partition : communicator_partitions(plan)) acquire(partition);
}

void check_same_plan(Communicator& world, std::uint64_t plan_hash) {
  // Signed min/max of the bit pattern: equal everywhere iff min == max.
  const auto local = std::bit_cast<std::int64_t>(plan_hash);
  std::int64_t low = local, high = local;
  world.all_reduce(&low, &low, 1, DataType::I64, ReduceOp::Min);
  world.all_reduce(&high, &high, 1, DataType::I64, ReduceOp::Max);
  if (low != high) {
    const std::string message = fmt::format(
        "{}: ranks hold different plans: local plan hash {:016x}, min {:016x}, max {:016x} over "
        "the world (the planner's input or version differs between ranks)",
        world.describe(), plan_hash, std::bit_cast<std::uint64_t>(low),
        std::bit_cast<std::uint64_t>(high));
    DHP_LOG_ERROR("{}", message);
    throw Error(ErrorKind::Communication, message);
  }
}

void check_same_plan(Communicator& world, const Plan& plan) {
  check_same_plan(world, plan_hash(plan));
}

}  // namespace dhp
