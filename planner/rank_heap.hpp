// The encoder ranks of a wave ordered by (key, rank), for the longest-first assignment of
// encoder_assignment.cpp: an indexed binary min-heap. Taking the first rank and raising its
// key is the common step (O(log E) moves in one array, where a balanced tree node had to be
// unlinked and relinked); walking further in order, for a rank with room or a ring's members, reads
// the heap through a small frontier without changing it. Ranks that can take nothing more
// leave it, so such walks do not pass them again and again.
#pragma once

#include <algorithm>
#include <cassert>
#include <utility>
#include <vector>

namespace dhp::detail {

class RankHeap {
 public:
  // Ranks 0..keys.size()-1 with these keys.
  void reset(const std::vector<double>& keys) {
    keys_ = keys;
    const int n = static_cast<int>(keys_.size());
    heap_.resize(n);
    pos_.resize(n);
    for (int e = 0; e < n; ++e) heap_[e] = Entry{keys_[e], e};
    std::make_heap(heap_.begin(), heap_.end(),
                   [](const Entry& a, const Entry& b) { return b < a; });
    for (int i = 0; i < n; ++i) pos_[heap_[i].rank] = i;
  }

  bool contains(int e) const { return pos_[e] >= 0; }
  double key(int e) const { return keys_[e]; }

  // A rank leaves the order (it can take nothing more); its key stays readable.
  void remove(int e) {
    const int i = pos_[e];
    const Entry last = heap_.back();
    heap_.pop_back();
    pos_[e] = -1;
    if (i == static_cast<int>(heap_.size())) return;
    heap_[i] = last;
    pos_[last.rank] = i;
    sift_up(i);
    sift_down(pos_[last.rank]);
  }

  // A rank's key grows (an item was assigned to it); a removed rank's key is only stored.
  void raise(int e, double key) {
    assert(!(key < keys_[e]));  // sift_down only: a key never falls
    keys_[e] = key;
    if (!contains(e)) return;
    heap_[pos_[e]].key = key;
    sift_down(pos_[e]);
  }

  // Calls visit(rank) in (key, rank) order until it returns false.
  template <class Visit>
  void visit_in_order(Visit visit) const {
    if (heap_.empty()) return;
    if (!visit(heap_[0].rank)) return;
    // The frontier: heap positions whose parents were visited, smallest first.
    auto later = [&](int a, int b) { return heap_[b] < heap_[a]; };
    frontier_.clear();
    auto push_children = [&](int i) {
      for (int c = 2 * i + 1; c <= 2 * i + 2 && c < static_cast<int>(heap_.size()); ++c) {
        frontier_.push_back(c);
        std::push_heap(frontier_.begin(), frontier_.end(), later);
      }
    };
    push_children(0);
    while (!frontier_.empty()) {
      std::pop_heap(frontier_.begin(), frontier_.end(), later);
      const int i = frontier_.back();
      frontier_.pop_back();
      if (!visit(heap_[i].rank)) return;
      push_children(i);
    }
  }

 private:
  // The key beside the rank: a sift compares neighbours in one array, not through rank ids.
  struct Entry {
    double key;
    int rank;
    bool operator<(const Entry& o) const { return key < o.key || (key == o.key && rank < o.rank); }
  };
  void sift_up(int i) {
    const Entry e = heap_[i];
    while (i > 0) {
      const int parent = (i - 1) / 2;
      if (!(e < heap_[parent])) break;
      heap_[i] = heap_[parent];
      pos_[heap_[i].rank] = i;
      i = parent;
    }
    heap_[i] = e;
    pos_[e.rank] = i;
  }
  void sift_down(int i) {
    const int n = static_cast<int>(heap_.size());
    const Entry e = heap_[i];
    for (;;) {
      int c = 2 * i + 1;
      if (c >= n) break;
      if (c + 1 < n && heap_[c + 1] < heap_[c]) ++c;
      if (!(heap_[c] < e)) break;
      heap_[i] = heap_[c];
      pos_[heap_[i].rank] = i;
      i = c;
    }
    heap_[i] = e;
    pos_[e.rank] = i;
  }

  std::vector<double> keys_;  // every rank's key, removed ones included
  std::vector<Entry> heap_;   // heap-ordered by (key, rank)
  std::vector<int> pos_;      // rank -> position in heap_, -1: removed
  mutable std::vector<int> frontier_;
};

}  // namespace dhp::detail
