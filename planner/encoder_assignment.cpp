// Which encoder rank encodes what, per wave, for every candidate a strategy prices: the items
// that would hold up their wave cut into parts (dhp, exact), then the wave's items longest
// first onto the rank that is free first, within the room each rank's devices have.
#include <algorithm>
#include <cmath>
#include <iterator>
#include <limits>

#include "plan_assembly.hpp"

namespace dhp::detail {
namespace {

// Ranks without room an assignment walks past, in the order they finish, before it takes the
// rank with the most room instead.
constexpr int kRoomScan = 64;

// The encoder LPT's order: longest first, then by sample, visual and part (a total order).
bool longest_first(const EncoderItem& a, const EncoderItem& b) {
  if (a.ms != b.ms) return a.ms > b.ms;
  if (a.sample != b.sample) return a.sample < b.sample;
  if (a.visual != b.visual) return a.visual < b.visual;
  return a.part < b.part;
}

// Items longer than `share` (the wave's even share of encoder time per rank) are cut so that
// no single image or video holds up its wave, and items holding more than `max_held` bytes so
// that their parts find room beside the wave's LLM work: a video into ranges of its temporal
// slices (tiles), each about `share` long (and within `max_held`) and encoded on its own; an
// image of one span into shards that run as a ring, as many as it takes to bring a shard to
// `share` (or as fast as the ring gets), and at least as many as its bytes need. Every part
// priced as what it is: its own launches, the lower efficiency of smaller pieces, the ring's
// exchange.
void split_long_items(const CostModel& cost, const Batch& batch, double share, double max_held,
                      int encoder_ranks, std::vector<EncoderItem>& items) {
  const EncoderSpec& enc = *cost.model().encoder;
  const int per_node = std::max(1, cost.cluster().devices_per_node / cost.encoder_tp());
  const std::size_t count = items.size();
  for (std::size_t i = 0; i < count; ++i) {
    const bool long_item = items[i].ms > share;
    const double memory_parts = std::ceil(items[i].bytes.held / max_held);
    if (!long_item && !(memory_parts > 1)) continue;
    const VisualItem& v = batch.samples[items[i].sample].visuals[items[i].visual];
    const int spans = encoder_spans(enc, v);
    const int most = most_encoder_parts(cost, v, encoder_ranks);
    const int least = static_cast<int>(std::min<double>(most, memory_parts));
    if (spans == 1) {
      int best_n = 1;
      double best_ms = items[i].ms;
      for (int n = 2; n <= most; ++n) {
        const double ms = cost.encoder_shard_ms(v, RingSpan{n, n > per_node});
        if (ms < best_ms || n <= least) {
          best_ms = ms;
          best_n = n;
        }
        if (n >= least && ms <= share) break;
      }
      if (best_n == 1) continue;
      items[i].parts = best_n;
      items[i].shards = true;
      items[i].ms = best_ms;
      items[i].bytes = cost.encoder_shard_bytes(encoder_part(enc, v, 0, best_n), best_n);
      continue;
    }
    const int parts = std::min(
        most,
        std::max(least, static_cast<int>(std::min<double>(most, std::ceil(items[i].ms / share)))));
    if (parts < 2) continue;
    const EncoderItem whole = items[i];
    for (int p = 0; p < parts; ++p) {
      const VisualItem part = encoder_part(enc, v, p, parts);
      EncoderItem it = whole;
      it.ms = cost.encoder_item_ms(part);
      it.bytes = cost.encoder_item_bytes(part);
      it.llm_tokens = part.llm_tokens;
      it.part = p;
      it.parts = parts;
      if (p == 0)
        items[i] = it;
      else
        items.push_back(it);
    }
  }
}

}  // namespace

int most_encoder_parts(const CostModel& cost, const VisualItem& item, int encoder_ranks) {
  const int spans = encoder_spans(*cost.model().encoder, item);
  if (spans > 1) return std::min(spans, encoder_ranks);
  const int per_node = std::max(1, cost.cluster().devices_per_node / cost.encoder_tp());
  // Shards below half_efficiency_tokens patches would run at under half efficiency.
  const auto min_patches =
      std::max<std::int64_t>(1, std::llround(cost.coefficients().half_efficiency_tokens));
  return static_cast<int>(std::max<std::int64_t>(
      1, std::min<std::int64_t>({encoder_ranks, 4LL * per_node, item.patches / min_patches})));
}

// Encoder work of the wave: longest item first onto the least-loaded encoder rank; on a tie
// prefer a rank on the devices of the consuming group (no boundary traffic); never past a
// rank's room where any rank can take the item (else the fewest-bytes rank). The room is what
// the wave's LLM leaves on the rank's devices (colocated): dhp packs the LLM to leave at least
// encoder_reserve_bytes, and a wave's items are spread over all of it.
void PlanAssembler::assign_encoder_items(std::size_t w) {
  if (layout_.split_visual_items) cut_long_items(w);
  const std::vector<EncoderItem>& items = wave_items_[w];
  order_encoder_ranks(w);
  min_held_from_.assign(items.size() + 1, std::numeric_limits<double>::infinity());
  for (std::size_t i = items.size(); i-- > 0;)
    min_held_from_[i] = std::min(min_held_from_[i + 1], items[i].bytes.held);
  full_.clear();
  for (std::size_t i = 0; i < items.size(); ++i) {
    if (items[i].shards)
      assign_ring(items[i], i, w);
    else
      assign_one(items[i], i, w);
  }
  record_boundary(w);
}

// The items longer than the wave's even share are cut (a prefix: the items are longest
// first), and the items holding more than half a rank's mean room (the room its devices have
// beside the wave's LLM work): their parts merge back in.
void PlanAssembler::cut_long_items(std::size_t w) {
  std::vector<EncoderItem>& items = wave_items_[w];
  const double share = wave_encoder_ms_[w] / E_;
  double room = 0;
  for (int e = 0; e < E_; ++e) room += std::min(room_llm_[e], room_pass_[e]);
  const double max_held = room > 0 ? room / E_ / 2 : std::numeric_limits<double>::infinity();
  const auto longer = std::partition_point(items.begin(), items.end(),
                                           [&](const EncoderItem& it) { return it.ms > share; });
  cut_items_.assign(items.begin(), longer);
  auto kept = longer;
  for (auto it = longer; it != items.end(); ++it) {
    if (it->bytes.held > max_held)
      cut_items_.push_back(*it);
    else if (kept++ != it)
      *std::prev(kept) = *it;
  }
  items.erase(kept, items.end());
  if (cut_items_.empty()) return;
  split_long_items(cost_, batch_, share, max_held, E_, cut_items_);
  std::sort(cut_items_.begin(), cut_items_.end(), longest_first);
  merged_items_.clear();
  merged_items_.reserve(cut_items_.size() + static_cast<std::size_t>(items.end() - longer));
  std::merge(cut_items_.begin(), cut_items_.end(), longer, items.end(),
             std::back_inserter(merged_items_), longest_first);
  items.swap(merged_items_);
}

// The encoder ranks by when they can take the wave's first item. On the devices' clocks an
// encoder rank cannot start before its devices are free, and before the wave's LLM they also
// run the previous wave's backward (after this wave's forward, run_pending_backward): the key
// is the devices' work before the LLM wave, so the longest items go where it ends first (with
// per-wave loads alone, rank 0 would take every wave's longest item).
void PlanAssembler::order_encoder_ranks(std::size_t w) {
  // Encoder ranks on each group's devices (colocated), for the tie-break: in rank order.
  group_encoder_ranks_.resize(colocated_ ? plan_.waves[w].groups.size() : 0);
  for (std::vector<int>& ranks : group_encoder_ranks_) ranks.clear();
  for (int e = 0; e < E_ && colocated_; ++e)
    if (colocated_rank_[e] >= 0 && rank_group_[colocated_rank_[e]] >= 0)
      group_encoder_ranks_[rank_group_[colocated_rank_[e]]].push_back(e);
  group_least_key_.assign(group_encoder_ranks_.size(), -std::numeric_limits<double>::infinity());
  for (int e = 0; e < E_; ++e)
    enc_start_[e] = chained_ ? devices_free(layout_.encoder, e) + pending_ms_[e] : 0.0;
  // By (key, rank): the first rank in order with room finishes earliest.
  by_load_.reset(enc_start_);  // no load yet: the key is the start
  room_keys_.resize(E_);
  for (int e = 0; e < E_; ++e) room_keys_[e] = -free_room(e);
  by_room_.reset(room_keys_);
}

// A ring of item.parts ranks that start together: the first ones in order with room (else
// the fewest-bytes ones), in rank order.
void PlanAssembler::assign_ring(const EncoderItem& item, std::size_t i, std::size_t w) {
  const EncoderBytes& b = item.bytes;
  ring_.clear();
  int visited = 0;
  by_load_.visit_in_order([&](int e) {
    if (!no_room(e, b, i)) ring_.push_back(e);
    return static_cast<int>(ring_.size()) < item.parts && ++visited < kRoomScan + item.parts;
  });
  drop_full();
  if (static_cast<int>(ring_.size()) < item.parts) {
    // Where memory binds: the ranks with the most room that hold a shard.
    by_room_.visit_in_order([&](int e) {
      if (!fits(e, b)) return false;
      if (std::find(ring_.begin(), ring_.end(), e) == ring_.end()) ring_.push_back(e);
      return static_cast<int>(ring_.size()) < item.parts;
    });
  }
  while (static_cast<int>(ring_.size()) < item.parts) {
    int fewest = -1;
    for (int e = 0; e < E_; ++e)
      if (std::find(ring_.begin(), ring_.end(), e) == ring_.end() &&
          (fewest < 0 || enc_held_[e] < enc_held_[fewest]))
        fewest = e;
    ring_.push_back(fewest);
  }
  std::sort(ring_.begin(), ring_.end());
  const EncoderSpec& enc = *cost_.model().encoder;
  const VisualItem& v = batch_.samples[item.sample].visuals[item.visual];
  const RingSpan span{item.parts,
                      encoder_ring_crosses_nodes(cost_.cluster(), layout_.encoder, ring_)};
  const double ms = cost_.encoder_shard_ms(v, span);
  double start = 0;
  for (int e : ring_) start = std::max(start, key(e));
  for (int p = 0; p < item.parts; ++p) {
    const VisualItem shard = encoder_part(enc, v, p, item.parts);
    assign(item, ring_[p], start - key(ring_[p]), ms, cost_.encoder_shard_bytes(shard, item.parts),
           shard.llm_tokens, p, w);
  }
}

// The first rank in order with room; on a tie of keys, one on the consuming group's devices.
void PlanAssembler::assign_one(const EncoderItem& item, std::size_t i, std::size_t w) {
  const EncoderBytes& b = item.bytes;
  int chosen = -1;
  int visited = 0;
  by_load_.visit_in_order([&](int e) {
    if (no_room(e, b, i)) return ++visited < kRoomScan;
    chosen = e;
    return false;
  });
  drop_full();
  if (chosen < 0) {
    // Where memory binds, the rank with the most room, if it holds the item: a walk past
    // every rank without room, item after item, would cost O(ranks) each.
    by_room_.visit_in_order([&](int e) {
      if (fits(e, b)) chosen = e;
      return false;
    });
  }
  if (chosen >= 0 && colocated_ && !on_group_devices(chosen, item.group) &&
      group_least_key_[item.group] <= key(chosen)) {
    // Same load on the consuming group's devices: no boundary traffic. A scan that finds
    // none leaves the group's least key, a bound while keys only grow: groups of hundreds of
    // ranks are not scanned again for every item of theirs.
    double least = std::numeric_limits<double>::infinity();
    bool found = false;
    for (int e : group_encoder_ranks_[item.group]) {
      if (key(e) == key(chosen) && fits(e, b)) {
        chosen = e;
        found = true;
        break;
      }
      least = std::min(least, key(e));
    }
    if (!found) group_least_key_[item.group] = least;
  }
  if (chosen < 0)
    chosen =
        static_cast<int>(std::min_element(enc_held_.begin(), enc_held_.end()) - enc_held_.begin());
  assign(item, chosen, 0.0, item.ms, b, item.llm_tokens, item.part, w);
}

// `wait`: idle before the task (a ring waiting for its last member), part of the load.
void PlanAssembler::assign(const EncoderItem& item, int e, double wait, double ms,
                           EncoderBytes bytes, std::int64_t tokens, int part, std::size_t w) {
  enc_load_[e] += wait + ms;
  enc_held_[e] += bytes.held;
  enc_working_[e] = std::max(enc_working_[e], bytes.working);
  by_load_.raise(e, key(e));
  by_room_.raise(e, -free_room(e));

  if (!on_group_devices(e, item.group)) enc_sent_[e] += tokens;
  plan_.encoder_tasks.push_back(
      EncoderTask{item.sample, item.visual, static_cast<int>(w), e, part, item.parts});
  task_consumer_.emplace_back(item.group, item.member);
  task_ms_.push_back(ms);
  task_ring_.push_back(item.shards ? item.parts : 1);
}

// The wave's slowest encoder rank, and its boundary transfer: the most LLM tokens one
// encoder rank sends to other devices.
void PlanAssembler::record_boundary(std::size_t w) {
  double boundary = 0;
  for (int e = 0; e < E_; ++e) {
    enc_wave_ms_[w] = std::max(enc_wave_ms_[w], enc_load_[e]);
    if (enc_sent_[e] > 0)
      boundary = std::max(
          boundary, cost_.boundary_ms(enc_sent_[e], world_ > cost_.cluster().devices_per_node));
  }
  boundary_wave_ms_[w] = boundary;
}

}  // namespace dhp::detail
