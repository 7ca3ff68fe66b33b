// The dhp packer's index of open ranks ("bins") ordered by (load, bin). It answers, in the
// packer's order: the fullest bins at or below a load (best fit), the least-loaded bins
// (LPT), and "the fullest bin at or below a load that still has the memory and tokens for a
// piece" without a scan over every bin.
//
// Loads fall into buckets of equal width over [0, span) (the packer's makespan target),
// each a vector sorted by (load, bin), mostly short, so a placement (erase + insert of one
// bin) moves a few entries of one vector (the bucket of load 0 holds every free rank under
// LPT; it is only ever taken from the front, which is O(1)): a balanced tree's node relinking was a
// third of the planner's time at 4096 ranks. Equal loads are common (repeated lengths), which is
// why a bucket is sorted rather than hashed further. Each bucket keeps the least bytes and least
// tokens of its bins, and so does each word of 64 buckets (recomputed when read after an
// erase), so fullest_fit skips what cannot fit. Any load is placed correctly (past span:
// the last bucket); span only decides the speed.
#pragma once

#include <algorithm>
#include <bit>
#include <cassert>
#include <cstddef>
#include <cstdint>
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

class LoadIndex {
 public:
  // Empty, for about `entries` bins with loads mostly in [0, span).
  void reset(int entries, double span) {
    for (std::size_t w = 0; w < words_.size(); ++w)
      for (std::uint64_t word = words_[w]; word != 0; word &= word - 1)
        buckets_[w * 64 + std::countr_zero(word)].clear();
    const int want = std::clamp(2 * entries, 64, 1 << 16);
    const int count = static_cast<int>(std::bit_ceil(static_cast<unsigned>(want)));
    if (count > static_cast<int>(buckets_.size())) buckets_.resize(count);
    count_ = count;
    inv_width_ = span > 0 && span < std::numeric_limits<double>::infinity()
                     ? count / span
                     : 0.0;  // no span: one bucket (slow, still correct)
    least_.assign(count, Least{});
    words_.assign(count / 64, 0);
    word_least_.assign(count / 64, Least{});
    std::fill(bucket_of_.begin(), bucket_of_.end(), -1);
    size_ = 0;
  }

  int size() const { return size_; }

  void insert(const LoadEntry& e) {
    if (e.bin >= static_cast<int>(entry_.size())) {
      entry_.resize(e.bin + 1);
      bucket_of_.resize(e.bin + 1, -1);
    }
    const int b = bucket(e.load);
    entry_[e.bin] = e;
    bucket_of_[e.bin] = b;
    buckets_[b].insert(e);
    words_[b / 64] |= std::uint64_t{1} << (b % 64);
    least_[b].add(e);  // a stale summary stays stale: it is recomputed when read
    word_least_[b / 64].add(e);
    ++size_;
  }

  // True when the bin was indexed (bins that can take no later piece leave the index).
  bool erase(int bin) {
    if (bin >= static_cast<int>(bucket_of_.size()) || bucket_of_[bin] < 0) return false;
    const int b = bucket_of_[bin];
    bucket_of_[bin] = -1;
    buckets_[b].erase(entry_[bin]);
    if (buckets_[b].empty()) words_[b / 64] &= ~(std::uint64_t{1} << (b % 64));
    least_[b].stale = true;
    word_least_[b / 64].stale = true;
    --size_;
    return true;
  }

  // Visits the bins with load <= max_load from the fullest down, in (load, bin) order, at
  // most `limit` of them; the first for which fits(bin) holds, or -1.
  template <class Fits>
  int scan_down(double max_load, int limit, Fits fits) const {
    int visited = 0;
    const LoadEntry bound{max_load, std::numeric_limits<int>::max(), 0, 0};
    for (int b = last_nonempty(bucket(max_load)); b >= 0; b = last_nonempty(b - 1)) {
      const Bucket& v = buckets_[b];
      for (auto it = std::upper_bound(v.begin(), v.end(), bound, ByLoadThenBin{});
           it != v.begin();) {
        --it;
        if (visited++ == limit) return -1;
        if (fits(it->bin)) return it->bin;
      }
    }
    return -1;
  }

  // Visits the bins from the least loaded up, at most `limit`; the first that fits, or -1.
  template <class Fits>
  int scan_up(int limit, Fits fits) const {
    int visited = 0;
    for (int b = first_nonempty(0); b >= 0; b = first_nonempty(b + 1)) {
      for (const LoadEntry& e : buckets_[b]) {
        if (visited++ == limit) return -1;
        if (fits(e.bin)) return e.bin;
      }
    }
    return -1;
  }

  // The bin of the largest (load, bin) with load <= max_load whose bytes + `bytes` <= budget
  // and tokens + `tokens` <= token_limit; -1 if none. What a scan down from max_load finds.
  int fullest_fit(double max_load, double bytes, std::int64_t tokens, double budget,
                  std::int64_t token_limit) const {
    auto room = [&](const Least& l) {
      return l.bytes + bytes <= budget && l.tokens + tokens <= token_limit;
    };
    const LoadEntry bound{max_load, std::numeric_limits<int>::max(), 0, 0};
    const int top = bucket(max_load);
    for (int w = top / 64; w >= 0; --w) {
      std::uint64_t word = words_[w];
      if (w == top / 64 && top % 64 != 63) word &= (std::uint64_t{1} << (top % 64 + 1)) - 1;
      if (word == 0) continue;
      if (word_least_[w].stale) {
        word_least_[w] = Least{};
        for (std::uint64_t all = words_[w]; all != 0; all &= all - 1)
          word_least_[w].add(bucket_least(w * 64 + std::countr_zero(all)));
      }
      if (!room(word_least_[w])) continue;
      while (word != 0) {
        const int b = w * 64 + 63 - std::countl_zero(word);
        word &= ~(std::uint64_t{1} << (b % 64));
        if (!room(bucket_least(b))) continue;
        const Bucket& v = buckets_[b];
        for (auto it = std::upper_bound(v.begin(), v.end(), bound, ByLoadThenBin{});
             it != v.begin();) {
          --it;
          if (it->bytes + bytes <= budget && it->tokens + tokens <= token_limit) return it->bin;
        }
      }
    }
    return -1;
  }

 private:
  // A bucket's entries sorted by (load, bin) behind a gap at the front, so that taking the
  // least entry and putting one before all others are O(1): LPT takes the least-loaded bin
  // each time, and every free rank enters at load 0, one bucket for all of them.
  struct Bucket {
    std::vector<LoadEntry> v;
    std::size_t head = 0;  // v[0, head) is the gap

    std::vector<LoadEntry>::const_iterator begin() const {
      return v.begin() + static_cast<std::ptrdiff_t>(head);
    }
    std::vector<LoadEntry>::const_iterator end() const { return v.end(); }
    bool empty() const { return head == v.size(); }
    void clear() {
      v.clear();
      head = 0;
    }
    void insert(const LoadEntry& e) {
      const auto at = std::upper_bound(begin(), end(), e, ByLoadThenBin{});
      if (at == begin() && head > 0) {
        v[--head] = e;
        return;
      }
      v.insert(at, e);
    }
    void erase(const LoadEntry& e) {
      const auto at = std::lower_bound(begin(), end(), e, ByLoadThenBin{});
      assert(at != end() && at->bin == e.bin);  // a NaN load would miss
      if (at != begin()) {
        v.erase(at);
      } else if (++head == v.size()) {
        clear();
      }
    }
  };

  struct Least {  // least bytes and least tokens held by a bin of a bucket (or word)
    double bytes = std::numeric_limits<double>::infinity();
    std::int64_t tokens = std::numeric_limits<std::int64_t>::max();
    bool stale = false;  // an entry left: recompute before use
    void add(const LoadEntry& e) {
      bytes = std::min(bytes, e.bytes);
      tokens = std::min(tokens, e.tokens);
    }
    void add(const Least& l) {
      bytes = std::min(bytes, l.bytes);
      tokens = std::min(tokens, l.tokens);
    }
  };

  const Least& bucket_least(int b) const {
    if (least_[b].stale) {
      least_[b] = Least{};
      for (const LoadEntry& e : buckets_[b]) least_[b].add(e);
    }
    return least_[b];
  }
  int bucket(double load) const {
    const double x = load * inv_width_;
    if (!(x > 0)) return 0;
    return x >= count_ - 1 ? count_ - 1 : static_cast<int>(x);
  }
  // The last non-empty bucket at or below b (-1: none).
  int last_nonempty(int b) const {
    for (int w = b / 64; b >= 0 && w >= 0; --w) {
      std::uint64_t word = words_[w];
      if (w == b / 64 && b % 64 != 63) word &= (std::uint64_t{1} << (b % 64 + 1)) - 1;
      if (word != 0) return w * 64 + 63 - std::countl_zero(word);
    }
    return -1;
  }
  // The first non-empty bucket at or above b (-1: none).
  int first_nonempty(int b) const {
    for (int w = b / 64; b < count_ && w < static_cast<int>(words_.size()); ++w) {
      std::uint64_t word = words_[w];
      if (w == b / 64) word &= ~std::uint64_t{0} << (b % 64);
      if (word != 0) return w * 64 + std::countr_zero(word);
    }
    return -1;
  }

  int count_ = 0;  // buckets in use
  double inv_width_ = 0;
  int size_ = 0;
  std::vector<Bucket> buckets_;            // kept for reuse
  mutable std::vector<Least> least_;       // per bucket
  std::vector<std::uint64_t> words_;       // bit b: bucket b is non-empty
  mutable std::vector<Least> word_least_;  // per word of 64 buckets
  std::vector<LoadEntry> entry_;           // per bin, as indexed
  std::vector<int> bucket_of_;             // per bin: its bucket, -1 when not indexed
};

}  // namespace dhp::detail
