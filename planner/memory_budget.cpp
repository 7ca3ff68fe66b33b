// What one rank's pieces cost (time and activation bytes), the device memory left to LLM
// activations once parameters and the encoder's share are held, and the check that every
// sample of a batch can fit at all.
#include <algorithm>
#include <string>

#include <fmt/format.h>

#include "dhp/error.hpp"
#include "internal.hpp"
#include "units.hpp"

namespace dhp::detail {
namespace {}  // namespace

double rank_llm_ms(const CostModel& cost, const std::vector<std::int64_t>& split, RingSpan ring,
                   const std::vector<std::int64_t>& whole) {
  return cost.llm_rank_ms(split, ring, whole);
}

double rank_activation_bytes(const CostModel& cost, const std::vector<std::int64_t>& split,
                             int degree, const std::vector<std::int64_t>& whole) {
  double bytes = 0;
  for (std::int64_t t : split) bytes += cost.llm_activation_bytes(t, degree);
  for (std::int64_t t : whole) bytes += cost.llm_activation_bytes(t, 1);
  return bytes;
}

int smallest_cp_holding(const CostModel& cost, std::int64_t longest, int ranks, double budget,
                        std::int64_t max_tokens) {
  for (int c = 1; c <= ranks; ++c) {
    if (ranks % c != 0 || (max_tokens > 0 && local_share(longest, c) > max_tokens)) continue;
    if (rank_activation_bytes(cost, {longest}, c, {}) <= budget) return c;
  }
  return 0;
}

double encoder_charge_per_device(const CostModel& cost, const Layout& layout, double held) {
  if (!layout.split_visual_items || layout.placement != EncoderPlacement::Colocated ||
      layout.encoder.ranks == 0)
    return 0;
  // The item's held bytes sit on each of its encoder rank's devices; spread over the LLM
  // rank's devices (colocated: the same devices, whatever the two TP degrees).
  return held * cost.encoder_tp() / cost.llm_tp();
}

double encoder_reserve_bytes(const CostModel& cost, const Layout& layout, const Batch& batch) {
  if (layout.encoder.ranks == 0 || layout.split_visual_items) return 0;
  // Room for the two largest visual items per device. The whole batch's encoder activations
  // spread over the encoder ranks would be a guarantee, but it charges every wave for every
  // other wave's items and leaves no room for the LLM on real batches. The LLM is packed to
  // leave this much; build_plan then assigns items within the room each device really has
  // (at least this) and its device-level check stays authoritative.
  double largest = 0;
  for (const Sample& s : batch.samples)
    for (const VisualItem& v : s.visuals)
      largest = std::max(largest, cost.encoder_activation_bytes(v));
  return 2.0 * largest;
}

double llm_activation_budget(const CostModel& cost, const Layout& layout, const Batch& batch) {
  double budget = cost.capacity_bytes() - cost.llm_static_bytes(layout.llm.ranks);
  if (layout.placement == EncoderPlacement::Colocated && layout.encoder.ranks > 0) {
    budget -= cost.encoder_static_bytes(layout.encoder.ranks);
    budget -= encoder_reserve_bytes(cost, layout, batch);
  }
  return budget;
}

namespace {

// What one encoder device has for items beside the parameters it holds (and, colocated, the
// LLM's): the room of an encoder pass with no other item held.
double encoder_device_room(const CostModel& cost, const Layout& layout) {
  double room = cost.capacity_bytes() - cost.encoder_static_bytes(layout.encoder.ranks);
  if (layout.placement == EncoderPlacement::Colocated)
    room -= cost.llm_static_bytes(layout.llm.ranks);
  return room;
}

// The largest piece of `item` on one encoder device: the whole item for layouts that encode
// it whole or where it fits `room` whole, else its largest part when cut into as many parts
// as the planner cuts it.
struct SmallestCut {
  int parts = 1;
  EncoderBytes bytes;
};
SmallestCut smallest_cut(const CostModel& cost, const Layout& layout, const VisualItem& item,
                         double room) {
  SmallestCut cut{1, cost.encoder_item_bytes(item)};
  if (!layout.split_visual_items || cut.bytes.peak() <= room) return cut;
  const EncoderSpec& enc = *cost.model().encoder;
  cut.parts = most_encoder_parts(cost, item, layout.encoder.ranks);
  if (cut.parts == 1) return cut;
  const bool shards = encoder_parts_are_shards(enc, item, cut.parts);
  cut.bytes = EncoderBytes{};
  for (int p = 0; p < cut.parts; ++p) {
    const VisualItem part = encoder_part(enc, item, p, cut.parts);
    const EncoderBytes b =
        shards ? cost.encoder_shard_bytes(part, cut.parts) : cost.encoder_item_bytes(part);
    if (b.peak() > cut.bytes.peak()) cut.bytes = b;
  }
  return cut;
}

// Every visual item's smallest piece fits an encoder device; where the layout encodes items
// whole, two of the largest must fit beside the LLM's smallest share (the reserve).
void check_encoder_items_fit(const Batch& batch, const CostModel& cost, const Layout& layout) {
  const double room = encoder_device_room(cost, layout);
  const int etp = cost.encoder_tp();
  for (const Sample& s : batch.samples) {
    for (std::size_t v = 0; v < s.visuals.size(); ++v) {
      const VisualItem& item = s.visuals[v];
      const SmallestCut cut = smallest_cut(cost, layout, item, room);
      DHP_CHECK(cut.bytes.peak() <= room, DoesNotFit,
                "sample id={}: visual item {} ({} patches, {} spans) needs {:.3f} GiB of "
                "encoder activations on one device at encoder tp={} ({:.3f} GiB held until its "
                "backward, {:.3f} GiB while a layer runs){}; an encoder device has {:.3f} GiB "
                "(capacity {:.2f} GiB minus parameters, gradients and optimizer state)",
                s.id, v, item.patches, encoder_spans(*cost.model().encoder, item),
                cut.bytes.peak() / kGiB, etp, cut.bytes.held / kGiB, cut.bytes.working / kGiB,
                cut.parts > 1 ? fmt::format(" even cut into {} parts", cut.parts)
                              : std::string(" encoded whole"),
                room / kGiB, cost.capacity_bytes() / kGiB);
      const bool reserved =
          !layout.split_visual_items && layout.placement == EncoderPlacement::Colocated;
      DHP_CHECK(!reserved || 2 * cut.bytes.peak() < room, DoesNotFit,
                "sample id={}: visual item {} ({} patches) needs {:.3f} GiB of encoder "
                "activations on one device at encoder tp={}, encoded whole; the LLM leaves "
                "room for two such items on every device ({:.3f} GiB), and a device has "
                "{:.3f} GiB (capacity {:.2f} GiB minus parameters, gradients and optimizer "
                "state)",
                s.id, v, item.patches, cut.bytes.peak() / kGiB, etp, 2 * cut.bytes.peak() / kGiB,
                room / kGiB, cost.capacity_bytes() / kGiB);
    }
  }
}

}  // namespace

void check_batch_fits(const Batch& batch, const CostModel& cost, const Layout& layout) {
  const bool has_encoder = cost.model().encoder.has_value();
  for (const Sample& s : batch.samples) {
    DHP_CHECK(has_encoder || s.visuals.empty(), InvalidInput,
              "sample id={} has {} visual items but model '{}' has no encoder", s.id,
              s.visuals.size(), cost.model().name);
  }
  if (layout.encoder.ranks > 0) check_encoder_items_fit(batch, cost, layout);
  const double budget = llm_activation_budget(cost, layout, batch);
  const double reserve = encoder_reserve_bytes(cost, layout, batch);
  const int max_degree = layout.llm.ranks;
  for (const Sample& s : batch.samples) {
    const std::int64_t tokens = s.llm_tokens();
    double held = 0;
    for (const VisualItem& v : s.visuals) held += cost.encoder_item_bytes(v).held;
    const double charge = encoder_charge_per_device(cost, layout, held);
    if (cost.llm_activation_bytes(tokens, 1) + charge <= budget) continue;
    const double llm = cost.llm_activation_bytes(tokens, max_degree);
    const double need = llm + charge / max_degree;
    DHP_CHECK(need <= budget, DoesNotFit,
              "sample id={} with {} LLM tokens needs {:.3f} GiB per device even split over all "
              "{} LLM ranks at tp={} ({:.3f} GiB of LLM activations{}); {:.3f} GiB are available "
              "(capacity {:.2f} GiB minus parameters, gradients and optimizer state{})",
              s.id, tokens, need / kGiB, max_degree, cost.llm_tp(), llm / kGiB,
              charge > 0 ? fmt::format(", {:.3f} GiB of its encoder items' share",
                                       charge / max_degree / kGiB)
                         : std::string(),
              budget / kGiB, cost.capacity_bytes() / kGiB,
              reserve > 0 ? fmt::format(" and a {:.3f} GiB encoder reserve", reserve / kGiB)
                          : std::string());
  }
}

}  // namespace dhp::detail
