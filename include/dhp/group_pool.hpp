// Pool of group communicators, keyed by the ordered list of the group's ranks in the
// parent (world) communicator, created by splitting the parent.
//
// Creation is collective over the parent: every parent rank calls acquire()/prewarm()
// with the same arguments in the same order. Each rank keeps the same bookkeeping for
// every group (including the ones it is not in, where it holds no communicator), so that
// every decision - which groups are missing, which are evicted - is identical on all
// ranks without communication. All missing groups of one partition (disjoint groups, one
// wave's) are created by a single split.
//
// Ring context parallelism needs no group communicator (P2P on the parent with global
// ranks); only collectives inside a group (Ulysses all-to-all, sub-group reductions) use
// the pool. Least-recently-used groups are destroyed past `capacity`.
#pragma once

#include <cstdint>
#include <list>
#include <map>
#include <memory>
#include <vector>

#include "dhp/communicator.hpp"
#include "dhp/plan.hpp"

namespace dhp {

struct GroupPoolStats {
  std::int64_t hits = 0;       // groups requested and found
  std::int64_t misses = 0;     // groups requested and created
  std::int64_t creations = 0;  // groups created (== misses; prewarm counts too)
  std::int64_t splits = 0;     // split calls on the parent (one per partition with a miss)
  std::int64_t destroyed = 0;  // groups evicted past the capacity
  double creation_ms = 0;      // wall time spent in splits on this rank
};

class GroupPool {
 public:
  // capacity: most groups kept (0: env::group_pool_size()).
  explicit GroupPool(Communicator& parent, int capacity = 0);
  ~GroupPool();
  GroupPool(const GroupPool&) = delete;
  GroupPool& operator=(const GroupPool&) = delete;

  // Collective over the parent. `partition`: disjoint groups of parent ranks (each in ring
  // / key order). Makes every group exist (one split for all missing ones) and marks them
  // most recently used. Throws InvalidArgument for overlapping groups or ranks out of range.
  void acquire(const std::vector<std::vector<int>>& partition);
  // The communicator of `ranks` (which must contain this rank and have been acquired);
  // never creates one. Throws InvalidArgument naming the group otherwise.
  Communicator& get(const std::vector<int>& ranks);
  bool contains(const std::vector<int>& ranks) const { return entries_.count(ranks) != 0; }

  // Collective: acquires every group of `plan` that needs a communicator (Ulysses and
  // UlyssesRing groups of degree > 1), wave by wave, mapped to parent ranks through the
  // plan's LLM layout (one partition per wave and TP index).
  void prewarm(const Plan& plan);

  const GroupPoolStats& stats() const { return stats_; }
  std::size_t size() const { return entries_.size(); }
  int capacity() const { return capacity_; }
  Communicator& parent() { return parent_; }

 private:
  struct Entry {
    std::unique_ptr<Communicator> comm;  // null where this rank is not a member
    std::list<std::vector<int>>::iterator lru;
  };
  void evict(const std::vector<std::vector<int>>& keep);

  Communicator& parent_;
  int capacity_;
  std::map<std::vector<int>, Entry> entries_;
  std::list<std::vector<int>> lru_;  // front = most recently used
  GroupPoolStats stats_;
};

// The parent-rank partitions that prewarm(plan) acquires: for each wave and TP index, the
// groups that need a communicator.
std::vector<std::vector<std::vector<int>>> communicator_partitions(const Plan& plan);

// Collective over `world`: all-reduces min and max of the plan hash; throws
// Error(Communication) naming the local hash and the min/max when ranks disagree.
void check_same_plan(Communicator& world, std::uint64_t plan_hash);
void check_same_plan(Communicator& world, const Plan& plan);

}  // namespace dhp
