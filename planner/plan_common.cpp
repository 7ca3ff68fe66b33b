// Shared plan machinery: module layouts, node-aware group placement, per-rank time and
// memory of a set of pieces, the fit check, and drafts -> Plan with its estimate.
#include <algorithm>
#include <cmath>
#include <iterator>
#include <limits>
#include <numeric>
#include <set>
#include <utility>

#include "dhp/error.hpp"
#include "dhp/log.hpp"
#include "internal.hpp"
#include "rank_heap.hpp"

namespace dhp::detail {
namespace {

constexpr double kGiB = 1024.0 * 1024.0 * 1024.0;

CostCoefficients coefficients_of(const ClusterSpec& cluster, const PlannerOptions& options) {
  return options.coefficients_set ? options.coefficients : defaults_for(cluster);
}

// Activation room a layout must leave at least, so that ordinary sequences can run.
constexpr std::int64_t kMinActivationTokens = 16384;

void fill_module_layouts(Layout& layout, const ClusterSpec& cluster, const ModelSpec& model,
                         const PlannerOptions& options) {
  const int world = cluster.world_size();
  const int dpn = cluster.devices_per_node;
  const bool has_encoder = model.encoder.has_value();
  layout.placement = options.placement;
  layout.split_visual_items =
      has_encoder && options.split_visual_items &&
      (options.strategy == Strategy::Dhp || options.strategy == Strategy::Exact);
  if (options.placement == EncoderPlacement::Colocated) {
    layout.llm = ModuleLayout{layout.llm_tp, 0, world / layout.llm_tp};
    layout.encoder =
        ModuleLayout{layout.encoder_tp, 0, has_encoder ? world / layout.encoder_tp : 0};
    layout.llm_ranks_per_node = std::min(dpn / layout.llm_tp, layout.llm.ranks);
    return;
  }
  const int enc_devices = options.encoder_devices;
  layout.encoder = ModuleLayout{layout.encoder_tp, 0, enc_devices / layout.encoder_tp};
  layout.llm = ModuleLayout{layout.llm_tp, enc_devices, (world - enc_devices) / layout.llm_tp};
  layout.llm_ranks_per_node = std::min(dpn / layout.llm_tp, layout.llm.ranks);
}

void validate_disjoint(const ClusterSpec& cluster, const ModelSpec& model,
                       const PlannerOptions& options, int llm_tp, int encoder_tp) {
  const int world = cluster.world_size();
  const int dpn = cluster.devices_per_node;
  const int e = options.encoder_devices;
  DHP_CHECK(model.encoder.has_value(), InvalidArgument,
            "placement=disjoint needs a model with an encoder; model '{}' is text-only",
            model.name);
  DHP_CHECK(e > 0 && e < world, InvalidArgument,
            "placement=disjoint needs 0 < encoder_devices < {} devices, got {}", world, e);
  DHP_CHECK(e % encoder_tp == 0 && e % llm_tp == 0, InvalidArgument,
            "encoder_devices={} must be a multiple of encoder tp={} and llm tp={}", e, encoder_tp,
            llm_tp);
  // Rank -> node arithmetic in place_groups assumes the LLM starts on a node boundary.
  DHP_CHECK(world <= dpn || e % dpn == 0, InvalidArgument,
            "encoder_devices={} must be a multiple of devices_per_node={} on a multi-node cluster",
            e, dpn);
}

}  // namespace

bool tp_valid(int tp, const TransformerSpec& arch, int devices_per_node) {
  const int kv = arch.kv_heads > 0 ? arch.kv_heads : arch.heads;
  auto divides = [tp](int n) { return tp > 0 && n % tp == 0; };
  return divides(arch.heads) && divides(kv) && divides(devices_per_node);
}

Layout resolve_layout(const ClusterSpec& cluster, const ModelSpec& model,
                      const PlannerOptions& options) {
  const int world = cluster.world_size();
  const int dpn = cluster.devices_per_node;
  DHP_CHECK(world >= 1 && dpn >= 1, InvalidArgument,
            "cluster '{}' has no devices: num_nodes={}, devices_per_node={}", cluster.name,
            cluster.num_nodes, cluster.devices_per_node);
  DHP_CHECK(model.llm.heads > 0, InvalidArgument, "model '{}' has llm heads={}", model.name,
            model.llm.heads);
  const bool has_encoder = model.encoder.has_value();
  const TransformerSpec* enc_arch = has_encoder ? &model.encoder->arch : nullptr;

  if (options.llm_tp > 0) {
    DHP_CHECK(tp_valid(options.llm_tp, model.llm, dpn), InvalidArgument,
              "llm_tp={} must divide heads={}, kv_heads={} and devices_per_node={}", options.llm_tp,
              model.llm.heads, model.llm.kv_heads, dpn);
  }
  if (options.encoder_tp > 0 && has_encoder) {
    DHP_CHECK(tp_valid(options.encoder_tp, *enc_arch, dpn), InvalidArgument,
              "encoder_tp={} must divide encoder heads={}, kv_heads={} and devices_per_node={}",
              options.encoder_tp, enc_arch->heads, enc_arch->kv_heads, dpn);
  }

  const CostCoefficients coef = coefficients_of(cluster, options);
  std::vector<int> llm_candidates;
  std::vector<int> encoder_candidates;
  for (int t = 1; t <= dpn; ++t) {
    if (options.llm_tp > 0 ? t == options.llm_tp : tp_valid(t, model.llm, dpn))
      llm_candidates.push_back(t);
    if (!has_encoder) continue;
    if (options.encoder_tp > 0 ? t == options.encoder_tp : tp_valid(t, *enc_arch, dpn))
      encoder_candidates.push_back(t);
  }
  if (!has_encoder) encoder_candidates = {1};
  DHP_CHECK(!llm_candidates.empty(), InvalidArgument,
            "no llm tp divides heads={}, kv_heads={} and devices_per_node={}", model.llm.heads,
            model.llm.kv_heads, dpn);
  DHP_CHECK(!encoder_candidates.empty(), InvalidArgument,
            "no encoder tp divides the encoder heads and devices_per_node={}", dpn);

  // Smallest (llm tp, encoder tp) pair, LLM first, whose static memory leaves room for
  // kMinActivationTokens of activations: small TP means less TP communication.
  double best_room = -std::numeric_limits<double>::infinity();
  Layout best_layout;
  for (int lt : llm_candidates) {
    for (int et : encoder_candidates) {
      Layout layout;
      layout.llm_tp = lt;
      layout.encoder_tp = et;
      if (options.placement == EncoderPlacement::Disjoint)
        validate_disjoint(cluster, model, options, lt, et);
      fill_module_layouts(layout, cluster, model, options);
      DHP_CHECK(layout.llm.ranks >= 1, InvalidArgument,
                "no LLM ranks: {} devices, llm tp={}, encoder_devices={}", world, lt,
                options.encoder_devices);
      const CostModel cost(cluster, model, lt, et, coef);
      const double need = cost.llm_activation_bytes(kMinActivationTokens, 1);
      Batch empty;
      const double room = llm_activation_budget(cost, layout, empty) - need;
      bool encoder_fits = true;
      if (options.placement == EncoderPlacement::Disjoint)
        encoder_fits = cost.capacity_bytes() - cost.encoder_static_bytes(layout.encoder.ranks) > 0;
      if (room >= 0 && encoder_fits) return layout;
      if (encoder_fits && room > best_room) {
        best_room = room;
        best_layout = layout;
      }
    }
  }
  // No tp leaves the comfortable room: take the one with the most activation room, if any.
  if (std::isfinite(best_room)) {
    const CostModel cost(cluster, model, best_layout.llm_tp, best_layout.encoder_tp, coef);
    Batch empty;
    if (llm_activation_budget(cost, best_layout, empty) > 0) return best_layout;
  }
  DHP_THROW(DoesNotFit,
            "model '{}' does not fit on cluster '{}' with any tp: best llm tp={} leaves {:.2f} GiB "
            "short of the {:.2f} GiB needed for {} tokens of activations",
            model.name, cluster.name, best_layout.llm_tp, -best_room / kGiB,
            CostModel(cluster, model, best_layout.llm_tp, best_layout.encoder_tp, coef)
                    .llm_activation_bytes(kMinActivationTokens, 1) /
                kGiB,
            kMinActivationTokens);
}

CostModel make_cost_model(const ClusterSpec& cluster, const ModelSpec& model, const Layout& layout,
                          const PlannerOptions& options) {
  return CostModel(cluster, model, layout.llm_tp, layout.encoder_tp,
                   coefficients_of(cluster, options));
}

RingSpan expected_ring(int degree, const Layout& layout) {
  return RingSpan{degree, degree > layout.llm_ranks_per_node};
}

bool crosses_nodes(const std::vector<int>& ranks, int ranks_per_node) {
  if (ranks.empty()) return false;
  const int node = ranks.front() / ranks_per_node;
  for (int r : ranks)
    if (r / ranks_per_node != node) return true;
  return false;
}

std::vector<std::vector<int>> place_groups(const std::vector<int>& degrees, int total_ranks,
                                           int ranks_per_node) {
  DHP_CHECK(total_ranks >= 1 && ranks_per_node >= 1, InvalidArgument,
            "place_groups: total_ranks={}, ranks_per_node={}", total_ranks, ranks_per_node);
  long long needed = 0;
  for (int d : degrees) {
    DHP_CHECK(d >= 1, Internal, "place_groups: group degree {} < 1", d);
    needed += d;
  }
  DHP_CHECK(needed <= total_ranks, Internal, "place_groups: groups need {} ranks, only {} exist",
            needed, total_ranks);

  const int nodes = (total_ranks + ranks_per_node - 1) / ranks_per_node;
  // Free ranks per node, lowest first; and an ordered index (free count, node) for best-fit.
  std::vector<std::vector<int>> free_ranks(nodes);
  for (int r = total_ranks - 1; r >= 0; --r) free_ranks[r / ranks_per_node].push_back(r);
  std::set<std::pair<int, int>> by_free;
  for (int n = 0; n < nodes; ++n) by_free.insert({static_cast<int>(free_ranks[n].size()), n});

  auto take = [&](int node, int count, std::vector<int>& out) {
    by_free.erase({static_cast<int>(free_ranks[node].size()), node});
    for (int i = 0; i < count; ++i) {
      out.push_back(free_ranks[node].back());
      free_ranks[node].pop_back();
    }
    if (!free_ranks[node].empty())
      by_free.insert({static_cast<int>(free_ranks[node].size()), node});
  };
  // Best fit: the node with the fewest free ranks that still holds `count` (lowest id on ties).
  auto best_fit_node = [&](int count) -> int {
    auto it = by_free.lower_bound({count, -1});
    return it == by_free.end() ? -1 : it->second;
  };

  std::vector<int> order(degrees.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(),
                   [&](int a, int b) { return degrees[a] > degrees[b]; });

  std::vector<std::vector<int>> result(degrees.size());
  for (int g : order) {
    int remaining = degrees[g];
    std::vector<int>& ranks = result[g];
    ranks.reserve(remaining);
    if (remaining <= ranks_per_node) {
      const int node = best_fit_node(remaining);
      if (node >= 0) {
        take(node, remaining, ranks);
        continue;
      }
    }
    // Whole free nodes first (lowest ids): a ring over k nodes then crosses k boundaries.
    while (remaining >= ranks_per_node) {
      const int node = best_fit_node(ranks_per_node);
      if (node < 0 || static_cast<int>(free_ranks[node].size()) != ranks_per_node) break;
      take(node, ranks_per_node, ranks);
      remaining -= ranks_per_node;
    }
    // The remainder inside one node if any node holds it, else from the fullest nodes.
    while (remaining > 0) {
      int node = best_fit_node(remaining);
      if (node < 0) node = std::prev(by_free.end())->second;
      const int count = std::min(remaining, static_cast<int>(free_ranks[node].size()));
      take(node, count, ranks);
      remaining -= count;
    }
    // Ring order: node by node, ranks ascending inside a node.
    std::sort(ranks.begin(), ranks.end());
  }
  return result;
}

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

double encoder_reserve_bytes(const CostModel& cost, const Layout& layout, const Batch& batch) {
  if (layout.encoder.ranks == 0) return 0;
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

void check_batch_fits(const Batch& batch, const CostModel& cost, const Layout& layout) {
  const bool has_encoder = cost.model().encoder.has_value();
  for (const Sample& s : batch.samples) {
    DHP_CHECK(has_encoder || s.visuals.empty(), InvalidInput,
              "sample id={} has {} visual items but model '{}' has no encoder", s.id,
              s.visuals.size(), cost.model().name);
  }
  const double budget = llm_activation_budget(cost, layout, batch);
  const int max_degree = layout.llm.ranks;
  for (const Sample& s : batch.samples) {
    const std::int64_t tokens = s.llm_tokens();
    if (cost.llm_activation_bytes(tokens, 1) <= budget) continue;
    const double need = cost.llm_activation_bytes(tokens, max_degree);
    DHP_CHECK(need <= budget, DoesNotFit,
              "sample id={} with {} LLM tokens needs {:.3f} GiB of activations per rank even "
              "split over all {} LLM ranks; {:.3f} GiB are available (capacity {:.2f} GiB minus "
              "parameters, gradients, optimizer state and encoder reserve)",
              s.id, tokens, need / kGiB, max_degree, budget / kGiB, cost.capacity_bytes() / kGiB);
  }
  if (layout.placement == EncoderPlacement::Disjoint && layout.encoder.ranks > 0) {
    const double enc_budget =
        cost.capacity_bytes() - cost.encoder_static_bytes(layout.encoder.ranks);
    for (const Sample& s : batch.samples) {
      for (const VisualItem& v : s.visuals) {
        const double need = cost.encoder_activation_bytes(v);
        DHP_CHECK(need <= enc_budget, DoesNotFit,
                  "sample id={}: a visual item of {} patches needs {:.3f} GiB of encoder "
                  "activations; an encoder rank has {:.3f} GiB",
                  s.id, v.patches, need / kGiB, enc_budget / kGiB);
      }
    }
  }
}

bool encoder_ring_crosses_nodes(const ClusterSpec& cluster, const ModuleLayout& encoder,
                                const std::vector<int>& ranks) {
  for (int e : ranks)
    if (cluster.node_of(encoder.device_of(e)) != cluster.node_of(encoder.device_of(ranks[0])))
      return true;
  return false;
}

SampleCosts make_sample_costs(const Batch& batch, const CostModel& cost, const Layout& layout) {
  SampleCosts sc;
  const bool has_encoder = layout.encoder.ranks > 0;
  sc.whole_bytes.reserve(batch.samples.size());
  sc.visual_offset.reserve(batch.samples.size() + 1);
  sc.tokens.reserve(batch.samples.size());
  for (int s = 0; s < static_cast<int>(batch.samples.size()); ++s) {
    const Sample& sample = batch.samples[s];
    sc.tokens.push_back(sample.llm_tokens());
    sc.whole_bytes.push_back(cost.llm_activation_bytes(sc.tokens.back(), 1));
    sc.visual_offset.push_back(static_cast<int>(sc.encoder_ms.size()));
    if (!has_encoder) continue;
    for (int v = 0; v < static_cast<int>(sample.visuals.size()); ++v) {
      const VisualItem& item = sample.visuals[v];
      sc.encoder_ms.push_back(cost.encoder_item_ms(item));
      sc.encoder_spans.push_back(encoder_spans(*cost.model().encoder, item));
      sc.visuals_longest_first.push_back(SampleCosts::Visual{
          s, v, sc.encoder_ms.back(), cost.encoder_activation_bytes(item), item.llm_tokens});
    }
  }
  sc.visual_offset.push_back(static_cast<int>(sc.encoder_ms.size()));
  // Longest first; ties by (sample, visual): the order they were pushed in.
  std::stable_sort(
      sc.visuals_longest_first.begin(), sc.visuals_longest_first.end(),
      [](const SampleCosts::Visual& a, const SampleCosts::Visual& b) { return a.ms > b.ms; });
  return sc;
}

namespace {

// One encoder task of a wave before it has a rank: a visual item, or a part of it.
struct Item {
  int sample, visual, group;
  int member;  // the group member that holds the sample whole; -1 when it is split
  double ms;
  double bytes;
  std::int64_t llm_tokens;
  int parts = 1;
  bool shards = false;  // parts of one span: a ring over `parts` encoder ranks, placed together
  int part = 0;         // which part (span ranges: one Item per part; shards: one Item for all)
};

// The encoder LPT's order: longest first, then by sample, visual and part (a total order).
bool longest_first(const Item& a, const Item& b) {
  if (a.ms != b.ms) return a.ms > b.ms;
  if (a.sample != b.sample) return a.sample < b.sample;
  if (a.visual != b.visual) return a.visual < b.visual;
  return a.part < b.part;
}

// Items longer than `share` (the wave's even share of encoder time per rank) are cut so that
// no single image or video holds up its wave: a video into ranges of its temporal slices
// (tiles), each about `share` long and encoded on its own; an image of one span into shards
// that run as a ring, as many as it takes to bring a shard to `share` (or as fast as the ring
// gets). Every part priced as what it is: its own launches, the lower efficiency of smaller
// pieces, the ring's exchange.
void split_long_items(const CostModel& cost, const Batch& batch, double share, int encoder_ranks,
                      std::vector<Item>& items) {
  const EncoderSpec& enc = *cost.model().encoder;
  const int per_node = std::max(1, cost.cluster().devices_per_node / cost.encoder_tp());
  // Shards below half_efficiency_tokens patches would run at under half efficiency.
  const auto min_patches =
      std::max<std::int64_t>(1, std::llround(cost.coefficients().half_efficiency_tokens));
  const std::size_t count = items.size();
  for (std::size_t i = 0; i < count; ++i) {
    if (!(items[i].ms > share)) continue;
    const VisualItem& v = batch.samples[items[i].sample].visuals[items[i].visual];
    const int spans = encoder_spans(enc, v);
    if (spans == 1) {
      const int most = static_cast<int>(
          std::min<std::int64_t>({encoder_ranks, 4LL * per_node, v.patches / min_patches}));
      int best_n = 1;
      double best_ms = items[i].ms;
      for (int n = 2; n <= most; ++n) {
        const double ms = cost.encoder_shard_ms(v, RingSpan{n, n > per_node});
        if (ms < best_ms) {
          best_ms = ms;
          best_n = n;
        }
        if (ms <= share) break;
      }
      if (best_n == 1) continue;
      items[i].parts = best_n;
      items[i].shards = true;
      items[i].ms = best_ms;
      items[i].bytes = cost.encoder_shard_activation_bytes(encoder_part(enc, v, 0, best_n), best_n);
      continue;
    }
    const int parts = static_cast<int>(
        std::min<double>({static_cast<double>(spans), static_cast<double>(encoder_ranks),
                          std::ceil(items[i].ms / share)}));
    if (parts < 2) continue;
    const Item whole = items[i];
    for (int p = 0; p < parts; ++p) {
      const VisualItem part = encoder_part(enc, v, p, parts);
      Item it = whole;
      it.ms = cost.encoder_item_ms(part);
      it.bytes = cost.encoder_activation_bytes(part);
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

double llm_sync_end(std::span<const double> rank_end, std::span<const double> last_backward_ms,
                    double sync_ms, double overlap) {
  double end = 0;
  for (std::size_t r = 0; r < rank_end.size(); ++r) {
    if (rank_end[r] <= 0) continue;
    const double hidden = std::min(overlap * sync_ms, last_backward_ms[r]);
    end = std::max({end, rank_end[r], rank_end[r] + sync_ms - hidden});
  }
  return end;
}

SyncSpan encoder_sync_span(double llm_sync_end, double encoder_end, double encoder_sync_ms,
                           double overlap, bool shared_links) {
  if (!shared_links) return {encoder_end, encoder_end + encoder_sync_ms * (1.0 - overlap)};
  const double start = std::max(encoder_end, llm_sync_end);
  const double hidden =
      std::min(overlap * encoder_sync_ms, std::max(0.0, encoder_end - llm_sync_end));
  return {start, start + encoder_sync_ms - hidden};
}

namespace {

// Drafts -> Plan structure plus the estimate. `check_memory`: throw when over capacity
// (build_plan); otherwise report an infeasible plan with an infinite step time.
Plan assemble(const std::string& strategy, const Batch& batch, const CostModel& cost,
              const Layout& layout, const std::vector<WaveDraft>& waves, bool check_memory,
              const SampleCosts& sc) {
  Plan plan;
  plan.strategy = strategy;
  plan.step = batch.step;
  plan.placement = layout.placement;
  plan.llm = layout.llm;
  plan.encoder = layout.encoder;
  plan.waves.resize(waves.size());

  const int R = layout.llm.ranks;
  const int rpn = std::max(1, layout.llm_ranks_per_node);
  const double capacity = cost.capacity_bytes();
  const double llm_static = cost.llm_static_bytes(R);
  const bool colocated = layout.placement == EncoderPlacement::Colocated;
  const int E = layout.encoder.ranks;
  const double enc_static = E > 0 ? cost.encoder_static_bytes(E) : 0.0;
  std::vector<double> enc_room(E);  // per encoder rank: bytes its wave's items may take
  const int world = cost.cluster().world_size();

  std::vector<double> peak_bytes(R, 0.0);
  std::vector<double> rank_ms(R);
  std::vector<double> rank_bytes(R);
  std::vector<int> rank_group(R);
  // The devices' clocks (colocated encoder, or no encoder work at all): see `chained` below.
  const bool chained = colocated || sc.encoder_ms.empty();
  // Colocated: the LLM rank on whose devices each encoder rank starts (-1: none).
  std::vector<int> colocated_rank(E, -1);
  for (int e = 0; e < E && colocated; ++e) {
    const int r = (layout.encoder.device_of(e) - layout.llm.first_device) / layout.llm.tp;
    if (r >= 0 && r < R) colocated_rank[e] = r;
  }
  std::vector<double> device_free(chained ? world : 0, 0.0);
  std::vector<double> rank_end(R, 0.0);  // when each LLM rank's last group ended
  const double backward_share = (cost.compute_passes() - 1) / cost.compute_passes();
  std::vector<double> rank_last_backward(R, 0.0);  // that group's backward (hides the grad sync)
  std::vector<double> rank_inputs(R, 0.0);         // this wave: when its last input item is encoded
  std::vector<char> rank_remote(R, 0);             // this wave: some input comes from other devices
  std::vector<double> encoder_clock(E, -1.0);
  double encoder_end = 0;
  // The previous wave's encoder backward, run after this wave's forward (see `chained`): one
  // entry per item (a ring's shards together) in the order its consumers end, the backward
  // each encoder rank owes, and the bytes of that wave's items.
  struct PendingBackward {
    std::size_t first, end;  // its tasks: one, or a ring's consecutive shards
    double ready;            // its gradients are back
    double ms;               // each task's backward
  };
  std::vector<PendingBackward> pending;
  std::vector<double> pending_ms(E, 0.0);
  std::vector<double> pending_bytes(E, 0.0);
  std::vector<double> enc_load(E);
  std::vector<double> enc_start(E);  // when each encoder rank can start, in its wave's LPT
  std::vector<double> enc_bytes(E);
  std::vector<std::int64_t> enc_sent(E);
  std::vector<double> device_bytes(world);
  std::vector<std::int64_t> split_tokens;
  std::vector<std::int64_t> whole_tokens;
  std::vector<double> enc_wave_ms(waves.size(), 0.0);
  std::vector<double> boundary_wave_ms(waves.size(), 0.0);
  bool over_capacity = false;
  double over_bytes = 0;
  int over_rank = -1;
  int over_wave = -1;

  // Every sample's wave, group and member (-1: split), then each wave's encoder items, longest
  // first: one pass over the batch's sorted visuals rather than one per wave.
  std::vector<std::size_t> wave_sequences(waves.size(), 0);
  std::vector<int> sample_wave(batch.samples.size(), -1);
  std::vector<int> sample_group(batch.samples.size());
  std::vector<int> sample_member(batch.samples.size());
  for (std::size_t w = 0; w < waves.size(); ++w) {
    for (std::size_t g = 0; g < waves[w].groups.size(); ++g) {
      const GroupDraft& gd = waves[w].groups[g];
      auto note = [&](int s, int member) {
        DHP_CHECK(s >= 0 && s < static_cast<int>(batch.samples.size()), Internal,
                  "{}: sample index {} out of range", strategy, s);
        sample_wave[s] = static_cast<int>(w);
        sample_group[s] = static_cast<int>(g);
        sample_member[s] = member;
        ++wave_sequences[w];
      };
      for (int s : gd.split) note(s, -1);
      for (std::size_t m = 0; m < gd.whole.size(); ++m)
        for (int s : gd.whole[m]) note(s, static_cast<int>(m));
    }
  }
  std::vector<std::vector<Item>> wave_items(E > 0 ? waves.size() : 0);
  std::vector<double> wave_encoder_ms(waves.size(), 0.0);
  if (E > 0) {  // each wave's items in one allocation
    std::vector<std::size_t> count(waves.size(), 0);
    for (const SampleCosts::Visual& v : sc.visuals_longest_first)
      if (sample_wave[v.sample] >= 0) ++count[sample_wave[v.sample]];
    for (std::size_t w = 0; w < waves.size(); ++w) wave_items[w].reserve(count[w]);
  }
  for (std::size_t i = 0; i < sc.visuals_longest_first.size() && E > 0; ++i) {
    const SampleCosts::Visual& v = sc.visuals_longest_first[i];
    const int w = sample_wave[v.sample];
    if (w < 0) continue;
    wave_items[w].push_back(Item{v.sample, v.visual, sample_group[v.sample],
                                 sample_member[v.sample], v.ms, v.bytes, v.llm_tokens});
    wave_encoder_ms[w] += v.ms;
  }
  plan.encoder_tasks.reserve(E > 0 ? sc.visuals_longest_first.size() : 0);  // parts add more
  std::vector<Item> cut_items;     // a wave's items cut into parts, longest first
  std::vector<Item> merged_items;  // those merged back into the wave's other items
  std::vector<double> task_ms;     // encoder time of each task of the wave
  std::vector<int> task_ring;  // per task of the wave: its ring's size at its first shard, else 1
  std::vector<std::pair<int, int>> task_consumer;  // (group, member) of each task of a wave
  std::vector<double> group_inputs;  // per group of a wave: its split sequences' items encoded
  std::vector<int> group_home;
  std::vector<double> group_end;
  std::vector<int> group_order;         // a wave's groups by when they end
  std::vector<int> group_rank;          // per group: its end's place among the wave's ends
  std::vector<std::size_t> group_slot;  // per place: where its items' backward entries go
  RankHeap by_load;                     // encoder ranks of a wave by (start + load, rank)
  std::vector<int> full;                // ranks found with no room, to leave by_load
  std::vector<double> group_least_key;  // per group: a bound on its encoder ranks' keys
  std::vector<double> min_bytes_from;   // [i]: least bytes of the wave's items i, i + 1, ...

  auto devices_free = [&](const ModuleLayout& m, int rank) {
    double t = 0;
    for (int i = 0; i < m.tp; ++i) t = std::max(t, device_free[m.device_of(rank, i)]);
    return t;
  };
  auto occupy = [&](const ModuleLayout& m, int rank, double until) {
    for (int i = 0; i < m.tp; ++i) device_free[m.device_of(rank, i)] = until;
  };
  // The previous wave's encoder backward on the devices' clocks, item by item as the
  // simulator runs it: each once its gradients are back and its ranks are free, a ring's
  // members together.
  auto run_pending_backward = [&] {
    std::fill(encoder_clock.begin(), encoder_clock.end(), -1.0);
    for (const PendingBackward& p : pending) {
      double start = p.ready;
      for (std::size_t k = p.first; k < p.end; ++k) {
        double& clock = encoder_clock[plan.encoder_tasks[k].rank];
        if (clock < 0) clock = devices_free(layout.encoder, plan.encoder_tasks[k].rank);
        start = std::max(start, clock);
      }
      for (std::size_t k = p.first; k < p.end; ++k)
        encoder_clock[plan.encoder_tasks[k].rank] = start + p.ms;
    }
    for (int e = 0; e < E; ++e) {
      if (encoder_clock[e] < 0) continue;
      occupy(layout.encoder, e, encoder_clock[e]);
      encoder_end = std::max(encoder_end, encoder_clock[e]);
    }
    pending.clear();
    std::fill(pending_ms.begin(), pending_ms.end(), 0.0);
  };

  // Bytes on encoder rank e's devices besides the wave's own items while its forward runs:
  // the previous wave's items, still waiting for their backward (colocated, with the LLM's
  // static memory and no activations then; disjoint, the encoder runs a wave ahead).
  auto held_beside_forward = [&](int e) {
    return enc_static + pending_bytes[e] + (colocated_rank[e] >= 0 ? llm_static : 0.0);
  };

  for (std::size_t w = 0; w < waves.size(); ++w) {
    const WaveDraft& draft = waves[w];
    WavePlan& wave = plan.waves[w];
    std::vector<int> degrees;
    degrees.reserve(draft.groups.size());
    for (const GroupDraft& g : draft.groups) degrees.push_back(g.degree);
    std::vector<std::vector<int>> placed = place_groups(degrees, R, rpn);

    std::fill(rank_ms.begin(), rank_ms.end(), 0.0);
    std::fill(rank_bytes.begin(), rank_bytes.end(), 0.0);
    std::fill(rank_group.begin(), rank_group.end(), -1);
    wave.groups.resize(draft.groups.size());
    wave.sequences.reserve(wave_sequences[w]);
    for (std::size_t g = 0; g < draft.groups.size(); ++g) {
      const GroupDraft& gd = draft.groups[g];
      GroupPlan& gp = wave.groups[g];
      gp.ranks = std::move(placed[g]);
      gp.attention = CpAttention::Ring;
      DHP_CHECK(gd.whole.size() <= static_cast<std::size_t>(gd.degree), Internal,
                "{}: wave {} group {} of degree {} lists {} members with whole sequences", strategy,
                w, g, gd.degree, gd.whole.size());
      const RingSpan ring{gd.degree, crosses_nodes(gp.ranks, rpn)};
      split_tokens.clear();
      double split_bytes = 0;
      for (int s : gd.split) {
        split_tokens.push_back(sc.tokens[s]);
        split_bytes += gd.degree == 1 ? sc.whole_bytes[s]
                                      : cost.llm_activation_bytes(split_tokens.back(), gd.degree);
        wave.sequences.push_back(SequencePlan{s, static_cast<int>(g), Sharding::Zigzag, -1});
      }
      GroupMemberMs member_ms(cost, split_tokens, ring);
      for (int m = 0; m < gd.degree; ++m) {
        whole_tokens.clear();
        double whole_bytes = 0;
        if (m < static_cast<int>(gd.whole.size())) {
          for (int s : gd.whole[m]) {
            whole_tokens.push_back(sc.tokens[s]);
            whole_bytes += sc.whole_bytes[s];
            wave.sequences.push_back(SequencePlan{s, static_cast<int>(g), Sharding::Whole, m});
          }
        }
        const int r = gp.ranks[m];
        rank_group[r] = static_cast<int>(g);
        rank_ms[r] = member_ms(whole_tokens);
        rank_bytes[r] = split_bytes + whole_bytes;
      }
    }
    double wave_ms = 0;
    for (int r = 0; r < R; ++r) wave_ms = std::max(wave_ms, rank_ms[r]);
    plan.estimate.wave_ms.push_back(wave_ms + cost.wave_overhead_ms());
    const std::size_t first_task = plan.encoder_tasks.size();
    task_consumer.clear();
    task_ms.clear();
    task_ring.clear();
    // Memory per device, the LLM's part: static + this wave's activations.
    std::fill(device_bytes.begin(), device_bytes.end(), 0.0);
    for (int r = 0; r < R; ++r)
      for (int t = 0; t < layout.llm.tp; ++t)
        device_bytes[layout.llm.device_of(r, t)] += llm_static + rank_bytes[r];
    // Encoder work of the wave: longest item first onto the least-loaded encoder rank; on a
    // tie prefer a rank on the devices of the consuming group (no boundary traffic); never
    // past a rank's room where any rank can take the item (else the fewest-bytes rank). The
    // room is what the wave's LLM leaves on the rank's devices (colocated): dhp packs the LLM
    // to leave at least encoder_reserve_bytes, and a wave's items are spread over all of it.
    std::fill(enc_load.begin(), enc_load.end(), 0.0);
    std::fill(enc_bytes.begin(), enc_bytes.end(), 0.0);
    std::fill(enc_sent.begin(), enc_sent.end(), 0);
    for (int e = 0; e < E; ++e) {
      double used = 0;
      for (int t = 0; t < layout.encoder.tp && colocated; ++t)
        used = std::max(used, device_bytes[layout.encoder.device_of(e, t)]);
      enc_room[e] = std::min(capacity - enc_static - used, capacity - held_beside_forward(e));
    }
    if (E > 0) {
      std::vector<Item>& items = wave_items[w];
      if (layout.split_visual_items) {
        // Only the items longer than the share are cut: a prefix; its parts merge back in.
        const double share = wave_encoder_ms[w] / E;
        const auto longer = std::partition_point(items.begin(), items.end(),
                                                 [&](const Item& it) { return it.ms > share; });
        if (longer != items.begin()) {
          cut_items.assign(items.begin(), longer);
          split_long_items(cost, batch, share, E, cut_items);
          std::sort(cut_items.begin(), cut_items.end(), longest_first);
          merged_items.clear();
          merged_items.reserve(cut_items.size() + static_cast<std::size_t>(items.end() - longer));
          std::merge(cut_items.begin(), cut_items.end(), longer, items.end(),
                     std::back_inserter(merged_items), longest_first);
          items.swap(merged_items);
        }
      }
      auto on_group_devices = [&](int e, int group) {
        return colocated_rank[e] >= 0 && rank_group[colocated_rank[e]] == group;
      };
      // Encoder ranks on each group's devices (colocated), for the tie-break: in rank order.
      std::vector<std::vector<int>> group_encoder_ranks(colocated ? wave.groups.size() : 0);
      for (int e = 0; e < E && colocated; ++e)
        if (colocated_rank[e] >= 0 && rank_group[colocated_rank[e]] >= 0)
          group_encoder_ranks[rank_group[colocated_rank[e]]].push_back(e);
      group_least_key.assign(group_encoder_ranks.size(), -std::numeric_limits<double>::infinity());
      // On the devices' clocks an encoder rank cannot start before its devices are free, and
      // before the wave's LLM they also run the previous wave's backward (after this wave's
      // forward, run_pending_backward): the key is the devices' work before the LLM wave, so
      // the longest items go where it ends first (with per-wave loads alone, rank 0 would take
      // every wave's longest item).
      for (int e = 0; e < E; ++e)
        enc_start[e] = chained ? devices_free(layout.encoder, e) + pending_ms[e] : 0.0;
      auto key = [&](int e) { return enc_start[e] + enc_load[e]; };
      // By (key, rank): the first rank in order with room finishes earliest.
      by_load.reset(enc_start);  // no load yet: the key is the start

      // `wait`: idle before the task (a ring waiting for its last member), part of the load.
      auto assign = [&](const Item& it, int e, double wait, double ms, double bytes,
                        std::int64_t tokens, int part) {
        enc_load[e] += wait + ms;
        enc_bytes[e] += bytes;
        by_load.raise(e, key(e));

        if (!on_group_devices(e, it.group)) enc_sent[e] += tokens;
        plan.encoder_tasks.push_back(
            EncoderTask{it.sample, it.visual, static_cast<int>(w), e, part, it.parts});
        task_consumer.emplace_back(it.group, it.member);
        task_ms.push_back(ms);
        task_ring.push_back(it.shards ? it.parts : 1);
      };
      // A rank without room for the smallest item still to come can take nothing more in
      // this wave: it leaves the order, so that later walks do not pass it again.
      min_bytes_from.assign(items.size() + 1, std::numeric_limits<double>::infinity());
      for (std::size_t i = items.size(); i-- > 0;)
        min_bytes_from[i] = std::min(min_bytes_from[i + 1], items[i].bytes);
      full.clear();
      auto no_room = [&](int e, double b, std::size_t i) {
        if (enc_bytes[e] + b <= enc_room[e]) return false;
        if (enc_bytes[e] + min_bytes_from[i] > enc_room[e]) full.push_back(e);
        return true;
      };
      auto drop_full = [&] {
        for (int e : full) by_load.remove(e);
        full.clear();
      };
      std::vector<int> ring;
      for (std::size_t i = 0; i < items.size(); ++i) {
        const Item& it = items[i];
        const double b = it.bytes;
        if (it.shards) {
          // A ring of it.parts ranks that start together: the first ones in order with room
          // (else the fewest-bytes ones), in rank order.
          ring.clear();
          by_load.visit_in_order([&](int e) {
            if (!no_room(e, b, i)) ring.push_back(e);
            return static_cast<int>(ring.size()) < it.parts;
          });
          drop_full();
          while (static_cast<int>(ring.size()) < it.parts) {
            int fewest = -1;
            for (int e = 0; e < E; ++e)
              if (std::find(ring.begin(), ring.end(), e) == ring.end() &&
                  (fewest < 0 || enc_bytes[e] < enc_bytes[fewest]))
                fewest = e;
            ring.push_back(fewest);
          }
          std::sort(ring.begin(), ring.end());
          const EncoderSpec& enc = *cost.model().encoder;
          const VisualItem& v = batch.samples[it.sample].visuals[it.visual];
          const RingSpan span{it.parts,
                              encoder_ring_crosses_nodes(cost.cluster(), layout.encoder, ring)};
          const double ms = cost.encoder_shard_ms(v, span);
          double start = 0;
          for (int e : ring) start = std::max(start, key(e));
          for (int p = 0; p < it.parts; ++p) {
            const VisualItem shard = encoder_part(enc, v, p, it.parts);
            assign(it, ring[p], start - key(ring[p]), ms,
                   cost.encoder_shard_activation_bytes(shard, it.parts), shard.llm_tokens, p);
          }
          continue;
        }
        int chosen = -1;
        by_load.visit_in_order([&](int e) {
          if (no_room(e, b, i)) return true;
          chosen = e;
          return false;
        });
        drop_full();
        if (chosen >= 0 && colocated && !on_group_devices(chosen, it.group) &&
            group_least_key[it.group] <= key(chosen)) {
          // Same load on the consuming group's devices: no boundary traffic. A scan that
          // finds none leaves the group's least key, a bound while keys only grow: groups of
          // hundreds of ranks are not scanned again for every item of theirs.
          double least = std::numeric_limits<double>::infinity();
          bool found = false;
          for (int e : group_encoder_ranks[it.group]) {
            if (key(e) == key(chosen) && enc_bytes[e] + b <= enc_room[e]) {
              chosen = e;
              found = true;
              break;
            }
            least = std::min(least, key(e));
          }
          if (!found) group_least_key[it.group] = least;
        }
        if (chosen < 0)
          chosen = static_cast<int>(std::min_element(enc_bytes.begin(), enc_bytes.end()) -
                                    enc_bytes.begin());
        assign(it, chosen, 0.0, it.ms, b, it.llm_tokens, it.part);
      }
      double boundary = 0;
      for (int e = 0; e < E; ++e) {
        enc_wave_ms[w] = std::max(enc_wave_ms[w], enc_load[e]);
        if (enc_sent[e] > 0)
          boundary = std::max(
              boundary, cost.boundary_ms(enc_sent[e], world > cost.cluster().devices_per_node));
      }
      boundary_wave_ms[w] = boundary;
    }

    if (chained) {
      // The wave on the devices' clocks, no barrier between waves: each encoder rank encodes
      // its items as soon as its devices are free; an LLM group starts once its members'
      // devices are free and every item they consume is encoded (plus the wave's boundary
      // transfer if any came from other devices); its ring steps keep the members together
      // until the slowest is done. An item's backward needs its consumer's gradients and runs
      // after the next wave's forward: the devices first encode what other ranks wait for.
      // A task's item is consumed by one rank (a whole sequence's holder) or by every member
      // of a group (a split sequence). Group consumers are kept per group, not per member:
      // a large group would otherwise be visited once per item.
      auto on_rank_devices = [&](int e, int r) { return colocated_rank[e] == r; };
      const double forward_share = 1.0 / cost.compute_passes();  // as the simulator splits it
      std::fill(rank_inputs.begin(), rank_inputs.end(), 0.0);
      std::fill(rank_remote.begin(), rank_remote.end(), false);
      std::fill(encoder_clock.begin(), encoder_clock.end(), -1.0);
      const std::size_t G = wave.groups.size();
      group_inputs.assign(G, 0.0);
      // The one member that gets all of the group's items on its own devices (>= 0), every
      // member gets some from other devices (kMixed), or the group consumes none (kNone).
      constexpr int kNone = -1, kMixed = -2;
      group_home.assign(G, kNone);
      group_end.assign(G, 0.0);
      for (std::size_t t = first_task; t < plan.encoder_tasks.size();) {
        // A ring's shards (consecutive tasks) start together, when the last member is free.
        const std::size_t end = t + task_ring[t - first_task];
        double start = 0;
        for (std::size_t k = t; k < end; ++k) {
          double& clock = encoder_clock[plan.encoder_tasks[k].rank];
          if (clock < 0) clock = devices_free(layout.encoder, plan.encoder_tasks[k].rank);
          start = std::max(start, clock);
        }
        for (; t < end; ++t) {
          const EncoderTask& task = plan.encoder_tasks[t];
          double& clock = encoder_clock[task.rank];
          clock = start + task_ms[t - first_task] * forward_share;
          const auto [group, member] = task_consumer[t - first_task];
          if (member >= 0) {
            const int r = wave.groups[group].ranks[member];
            rank_inputs[r] = std::max(rank_inputs[r], clock);
            if (!on_rank_devices(task.rank, r)) rank_remote[r] = true;
          } else {
            group_inputs[group] = std::max(group_inputs[group], clock);
            const int home = colocated_rank[task.rank];
            const int local = home >= 0 && rank_group[home] == group ? home : kMixed;
            int& h = group_home[group];
            h = h == kNone || h == local ? local : kMixed;
          }
        }
      }
      for (int e = 0; e < E; ++e)
        if (encoder_clock[e] >= 0) occupy(layout.encoder, e, encoder_clock[e]);
      run_pending_backward();
      for (std::size_t g = 0; g < G; ++g) {
        const GroupPlan& gp = wave.groups[g];
        double start = 0, longest = 0;
        for (int r : gp.ranks) {
          double inputs = rank_inputs[r];
          bool remote = rank_remote[r];
          if (group_home[g] != kNone) {
            inputs = std::max(inputs, group_inputs[g]);
            remote = remote || group_home[g] != r;
          }
          if (remote) inputs += boundary_wave_ms[w];
          start = std::max({start, devices_free(layout.llm, r), inputs});
          longest = std::max(longest, rank_ms[r]);
        }
        if (longest <= 0) continue;
        group_end[g] = start + longest + cost.wave_overhead_ms();
        for (int r : gp.ranks) {
          rank_end[r] = group_end[g];
          rank_last_backward[r] = longest * backward_share;
          occupy(layout.llm, r, rank_end[r]);
        }
      }
      // This wave's backward waits for the next wave's forward (run_pending_backward), item by
      // item in the simulator's order: by when the consumer group ends, then task order (groups
      // that end together share a bucket). A bucket per end, no sort of the items.
      group_order.resize(G);
      std::iota(group_order.begin(), group_order.end(), 0);
      std::sort(group_order.begin(), group_order.end(),
                [&](int a, int b) { return group_end[a] < group_end[b]; });
      group_slot.assign(G + 1, 0);
      group_rank.resize(G);
      for (std::size_t i = 0, rank = 0; i < G; ++i) {
        if (i > 0 && group_end[group_order[i]] != group_end[group_order[i - 1]]) ++rank;
        group_rank[group_order[i]] = static_cast<int>(rank);
      }
      for (std::size_t t = first_task; t < plan.encoder_tasks.size();
           t += static_cast<std::size_t>(task_ring[t - first_task]))
        ++group_slot[group_rank[task_consumer[t - first_task].first] + 1];
      std::partial_sum(group_slot.begin(), group_slot.end(), group_slot.begin());
      pending.resize(group_slot[G]);
      for (std::size_t t = first_task; t < plan.encoder_tasks.size();) {
        const std::size_t end = t + static_cast<std::size_t>(task_ring[t - first_task]);
        const int group = task_consumer[t - first_task].first;
        const std::vector<int>& members = wave.groups[group].ranks;
        // The gradient comes back from other devices unless the item's one consumer sits on
        // the encoder rank's own (a ring's shards: any of them).
        bool remote = false;
        for (std::size_t k = t; k < end; ++k) {
          const EncoderTask& task = plan.encoder_tasks[k];
          const int member = task_consumer[k - first_task].second;
          const int only = member >= 0 ? members[member] : members.size() == 1 ? members[0] : -1;
          remote = remote || !(only >= 0 && on_rank_devices(task.rank, only));
          pending_ms[task.rank] += task_ms[k - first_task] * (1 - forward_share);
        }
        pending[group_slot[group_rank[group]]++] =
            PendingBackward{t, end, group_end[group] + (remote ? boundary_wave_ms[w] : 0.0),
                            task_ms[t - first_task] * (1 - forward_share)};
        t = end;
      }
    }

    // Memory per device: the LLM's part (above), plus the encoder's on shared devices.
    for (int e = 0; e < E; ++e)
      for (int t = 0; t < layout.encoder.tp; ++t)
        device_bytes[layout.encoder.device_of(e, t)] += enc_static + enc_bytes[e];
    for (int r = 0; r < R; ++r) {
      double worst = 0;
      for (int t = 0; t < layout.llm.tp; ++t)
        worst = std::max(worst, device_bytes[layout.llm.device_of(r, t)]);
      peak_bytes[r] = std::max(peak_bytes[r], worst);
      if (worst > capacity && worst - capacity > over_bytes) {
        over_capacity = true;
        over_bytes = worst - capacity;
        over_rank = r;
        over_wave = static_cast<int>(w);
      }
    }
    for (int e = 0; e < E; ++e) {
      const int r = colocated_rank[e];  // -1 unless colocated
      const double b = held_beside_forward(e) + enc_bytes[e];
      if (r >= 0) peak_bytes[r] = std::max(peak_bytes[r], b);
      if (b > capacity && b - capacity > over_bytes) {
        over_capacity = true;
        over_bytes = b - capacity;
        over_rank = -1 - e;
        over_wave = static_cast<int>(w);
      }
    }
    pending_bytes = enc_bytes;
  }
  if (chained) run_pending_backward();

  PlanEstimate& est = plan.estimate;
  est.llm_ms = std::accumulate(est.wave_ms.begin(), est.wave_ms.end(), 0.0);
  est.encoder_ms = std::accumulate(enc_wave_ms.begin(), enc_wave_ms.end(), 0.0);
  const double overlap = cost.coefficients().grad_sync_overlap;
  const double llm_sync = cost.llm_grad_sync_full_ms(R);
  double step = 0;
  if (chained) {
    // Ranks and encoder ranks meet in the gradient sync: the LLM's buckets leave under each
    // rank's last backward as far as it lasts, and under the encoder's on shared devices.
    const double llm_done = *std::max_element(rank_end.begin(), rank_end.end());
    step = std::max(llm_done, encoder_end);
    const double sync_end = llm_sync_end(rank_end, rank_last_backward, llm_sync, overlap);
    const SyncSpan enc_sync = encoder_sync_span(
        sync_end, encoder_end, cost.encoder_grad_sync_full_ms(E), overlap, colocated);
    est.grad_sync_ms = std::max(sync_end, enc_sync.end) - step;
  } else if (!waves.empty()) {
    // Disjoint encoder: it runs one wave ahead of the LLM on its own devices.
    const double last_backward = est.wave_ms.back() * backward_share;
    est.grad_sync_ms = llm_sync - std::min(overlap * llm_sync, last_backward) +
                       cost.encoder_grad_sync_full_ms(E) * (1.0 - overlap);
    step = enc_wave_ms[0];
    for (std::size_t w = 0; w < waves.size(); ++w) {
      const double next_encoder = w + 1 < waves.size() ? enc_wave_ms[w + 1] : 0.0;
      step += std::max(est.wave_ms[w] + boundary_wave_ms[w], next_encoder);
    }
  }
  est.step_ms = step + est.grad_sync_ms;
  est.mem_capacity_gib = capacity / kGiB;
  est.peak_mem_gib.resize(R);
  for (int r = 0; r < R; ++r) est.peak_mem_gib[r] = peak_bytes[r] / kGiB;

  if (over_capacity) {
    if (check_memory) {
      if (over_rank >= 0)
        DHP_THROW(Internal,
                  "{}: LLM rank {} in wave {} needs {:.3f} GiB, over the {:.3f} GiB capacity "
                  "(a strategy handed over a draft that does not fit)",
                  strategy, over_rank, over_wave, (capacity + over_bytes) / kGiB, capacity / kGiB);
      DHP_THROW(DoesNotFit,
                "{}: encoder rank {} in wave {} needs {:.3f} GiB, over the {:.3f} GiB capacity",
                strategy, -1 - over_rank, over_wave, (capacity + over_bytes) / kGiB,
                capacity / kGiB);
    }
    est.step_ms = std::numeric_limits<double>::infinity();
  }
  return plan;
}

}  // namespace

Plan build_plan(const std::string& strategy, const Batch& batch, const CostModel& cost,
                const Layout& layout, const std::vector<WaveDraft>& waves) {
  Plan plan = assemble(strategy, batch, cost, layout, waves, /*check_memory=*/true,
                       make_sample_costs(batch, cost, layout));
  validate(plan, batch);
  return plan;
}

double estimate_step_ms(const Batch& batch, const CostModel& cost, const Layout& layout,
                        const std::vector<WaveDraft>& waves) {
  return estimate_step_ms(batch, cost, layout, waves, make_sample_costs(batch, cost, layout));
}

Plan estimate_plan(const std::string& strategy, const Batch& batch, const CostModel& cost,
                   const Layout& layout, const std::vector<WaveDraft>& waves,
                   const SampleCosts& sample_costs) {
  return assemble(strategy, batch, cost, layout, waves, /*check_memory=*/false, sample_costs);
}

double estimate_step_ms(const Batch& batch, const CostModel& cost, const Layout& layout,
                        const std::vector<WaveDraft>& waves, const SampleCosts& sample_costs) {
  return assemble("estimate", batch, cost, layout, waves, /*check_memory=*/false, sample_costs)
      .estimate.step_ms;
}

}  // namespace dhp::detail
