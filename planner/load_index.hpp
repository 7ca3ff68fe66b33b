// The dhp packer's index of open ranks ("bins") ordered by load, which also answers "the
// fullest bin at or below a load that still has the memory and tokens for a piece" in
// O(log R) instead of a scan over every bin: each tree node keeps the least bytes and the
// least tokens held by any bin of its subtree, so subtrees where no bin can take the piece
// are skipped. A red-black tree from libstdc++'s policy-based data structures, which lets
// a node carry such a summary of its subtree.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <ext/pb_ds/assoc_container.hpp>
#include <ext/pb_ds/tree_policy.hpp>
#include <limits>
#include <vector>

namespace dhp::detail {

struct LoadEntry {
  double load;
  int bin;
  double bytes;         // activation bytes the bin holds
  std::int64_t tokens;  // local tokens the bin holds
};

struct ByLoadThenBin {
  bool operator()(const LoadEntry& a, const LoadEntry& b) const {
    return a.load < b.load || (a.load == b.load && a.bin < b.bin);
  }
};

// Least bytes and least tokens held by a bin of the subtree.
struct LeastHeld {
  double bytes;
  std::int64_t tokens;
};

template <class NodeConstIt, class NodeIt, class Compare, class Alloc>
struct LeastHeldUpdate {
  using metadata_type = LeastHeld;
  void operator()(NodeIt node, NodeConstIt end) {
    const LoadEntry& e = **node;
    LeastHeld least{e.bytes, e.tokens};
    for (NodeIt child : {node.get_l_child(), node.get_r_child()}) {
      if (child == end) continue;
      least.bytes = std::min(least.bytes, child.get_metadata().bytes);
      least.tokens = std::min(least.tokens, child.get_metadata().tokens);
    }
    const_cast<LeastHeld&>(node.get_metadata()) = least;
  }
  virtual NodeConstIt node_begin() const = 0;
  virtual NodeConstIt node_end() const = 0;
  virtual ~LeastHeldUpdate() = default;
};

// Tree nodes come from a per-thread free list: the packer erases and re-inserts a bin per
// placement and clears the index per attempt, and malloc/free of those nodes were ~10 % of
// the planner's time at 4096 ranks. Stateless (the tree keeps its allocator in a static).
template <class T>
struct RecycledNodes {
  using value_type = T;
  using size_type = std::size_t;
  using difference_type = std::ptrdiff_t;
  RecycledNodes() = default;
  template <class U>
  RecycledNodes(const RecycledNodes<U>&) {}

  T* allocate(std::size_t n) {
    std::vector<T*>& free_nodes = free_list().nodes;
    if (n == 1 && !free_nodes.empty()) {
      T* node = free_nodes.back();
      free_nodes.pop_back();
      return node;
    }
    return static_cast<T*>(::operator new(n * sizeof(T)));
  }
  void deallocate(T* p, std::size_t n) {
    if (n == 1)
      free_list().nodes.push_back(p);
    else
      ::operator delete(p);
  }
  bool operator==(const RecycledNodes&) const { return true; }

 private:
  struct FreeList {
    std::vector<T*> nodes;
    ~FreeList() {
      for (T* p : nodes) ::operator delete(p);
    }
  };
  static FreeList& free_list() {
    thread_local FreeList list;
    return list;
  }
};

class LoadIndex {
 public:
  using Tree = __gnu_pbds::tree<LoadEntry, __gnu_pbds::null_type, ByLoadThenBin,
                                __gnu_pbds::rb_tree_tag, LeastHeldUpdate, RecycledNodes<char>>;
  using const_iterator = Tree::const_iterator;

  void clear() { tree_.clear(); }
  void insert(const LoadEntry& e) { tree_.insert(e); }
  // True when the bin was indexed (bins that can take no later piece leave the index).
  bool erase(double load, int bin) { return tree_.erase(LoadEntry{load, bin, 0, 0}); }

  const_iterator begin() const { return tree_.begin(); }
  const_iterator end() const { return tree_.end(); }
  // First entry with load > max_load.
  const_iterator above(double max_load) const {
    return tree_.upper_bound(LoadEntry{max_load, std::numeric_limits<int>::max(), 0, 0});
  }

  // The bin of the entry with the largest (load, bin) among those with load <= max_load
  // whose bytes + `bytes` <= budget and tokens + `tokens` <= token_limit; -1 if none.
  // The same comparisons as a scan down from max_load would make, so the same bin. The
  // entries at or below max_load are the nodes where the search path for max_load turns
  // right plus their left subtrees, searched right first. A subtree's least bytes and least
  // tokens may come from different bins, so a subtree that seems to fit can hold no fit:
  // the descent then backs up. O(log R) when one limit binds; more when both do.
  int fullest_fit(double max_load, double bytes, std::int64_t tokens, double budget,
                  std::int64_t token_limit) const {
    using Node = Tree::node_const_iterator;
    const Node end = tree_.node_end();
    auto subtree_fits = [&](Node node) {
      if (node == end) return false;
      const LeastHeld& least = node.get_metadata();
      return least.bytes + bytes <= budget && least.tokens + tokens <= token_limit;
    };
    auto entry_fits = [&](Node node) {
      const LoadEntry& e = **node;
      return e.bytes + bytes <= budget && e.tokens + tokens <= token_limit;
    };
    // The rightmost fit of a subtree whose entries all have load <= max_load; -1 if none.
    auto rightmost_fit = [&](auto& self, Node node) -> int {
      if (!subtree_fits(node)) return -1;
      if (const int bin = self(self, node.get_r_child()); bin >= 0) return bin;
      if (entry_fits(node)) return (**node).bin;
      return self(self, node.get_l_child());
    };
    turns_.clear();
    for (Node node = tree_.node_begin(); node != end;) {
      if ((**node).load > max_load) {
        node = node.get_l_child();
      } else {
        turns_.push_back(node);
        node = node.get_r_child();
      }
    }
    for (auto it = turns_.rbegin(); it != turns_.rend(); ++it) {
      const Node node = *it;
      if (!subtree_fits(node)) continue;  // neither the node nor its subtrees fit
      if (entry_fits(node)) return (**node).bin;
      if (const int bin = rightmost_fit(rightmost_fit, node.get_l_child()); bin >= 0) return bin;
    }
    return -1;
  }

 private:
  Tree tree_;
  mutable std::vector<Tree::node_const_iterator> turns_;  // fullest_fit's path, reused
};

}  // namespace dhp::detail
