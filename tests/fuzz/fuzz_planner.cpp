// libFuzzer target for the planner. The bytes decode into a small cluster (1-3 nodes), a
// preset model, a strategy and a small batch; the planner must either return a plan that
// satisfies the invariants (validate(), memory within capacity by its own estimate, the
// same plan when asked twice) or refuse with DoesNotFit / InvalidInput / InvalidArgument.
// Anything else aborts.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "dhp/batch.hpp"
#include "dhp/cluster.hpp"
#include "dhp/error.hpp"
#include "dhp/model.hpp"
#include "dhp/plan.hpp"
#include "dhp/planner.hpp"
#include "dhp/simulator.hpp"

namespace {

// Reads the fuzzer's bytes front to back; past the end every read is 0, so short inputs
// still decode into a (small) instance.
class ByteReader {
 public:
  ByteReader(const std::uint8_t* data, std::size_t size) : data_(data), size_(size) {}
  std::uint8_t byte() { return pos_ < size_ ? data_[pos_++] : 0; }
  std::uint16_t u16() { return static_cast<std::uint16_t>(byte() | (byte() << 8)); }
  int in_range(int lo, int hi) { return lo + byte() % (hi - lo + 1); }  // inclusive

 private:
  const std::uint8_t* data_;
  std::size_t size_;
  std::size_t pos_ = 0;
};

[[noreturn]] void invariant_broken(const std::string& what) {
  std::fprintf(stderr, "fuzz_planner: %s\n", what.c_str());
  std::abort();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  ByteReader in(data, size);

  dhp::ClusterSpec cluster = dhp::cluster_preset("h100-8");
  cluster.num_nodes = in.in_range(1, 3);
  cluster.devices_per_node = in.in_range(1, 8);
  // Smaller devices too, so that DoesNotFit and memory-bound packing get exercised.
  cluster.mem_capacity_gib = 16 + 8 * in.in_range(0, 8);
  cluster.name = "fuzz";

  const std::vector<std::string> models = dhp::model_preset_names();
  const dhp::ModelSpec model = dhp::model_preset(models[in.byte() % models.size()]);

  const std::vector<dhp::Strategy> strategies = dhp::all_strategies();
  dhp::PlannerOptions options;
  options.strategy = strategies[in.byte() % strategies.size()];
  const std::uint8_t knobs = in.byte();
  if (knobs & 1) options.llm_tp = in.in_range(1, 8);
  if ((knobs & 2) && model.encoder) {
    options.placement = dhp::EncoderPlacement::Disjoint;
    options.encoder_devices = in.in_range(1, 8);
  }
  if (options.strategy == dhp::Strategy::MegatronDcp && (knobs & 4))
    options.max_tokens_per_rank = 256 * in.in_range(1, 32);

  // The exact solver is exponential: keep its instances to what it is meant for.
  const int max_samples = options.strategy == dhp::Strategy::Exact ? 8 : 24;
  dhp::Batch batch;
  batch.step = in.byte();
  const int samples = in.in_range(1, max_samples);
  for (int i = 0; i < samples; ++i) {
    dhp::Sample s;
    s.id = i;
    // Up to ~2M tokens: from captions to sequences that fit nowhere.
    s.text_tokens = 1 + static_cast<std::int64_t>(in.u16()) * (1 + in.byte() % 32);
    const int visuals = model.encoder ? in.byte() % 3 : 0;
    for (int v = 0; v < visuals; ++v) {
      dhp::VisualItem item;
      item.frames = in.in_range(1, 16);
      item.llm_tokens = 1 + in.u16();
      item.patches = item.llm_tokens * model.encoder->tokens_per_llm_token;
      s.visuals.push_back(item);
    }
    batch.samples.push_back(std::move(s));
  }

  try {
    const dhp::Planner planner(cluster, model, options);
    const dhp::Plan plan = planner.plan(batch);
    try {
      dhp::validate(plan, batch);
    } catch (const dhp::Error& e) {
      invariant_broken(std::string("invalid plan: ") + e.what());
    }
    const double capacity = plan.estimate.mem_capacity_gib;
    for (std::size_t r = 0; r < plan.estimate.peak_mem_gib.size(); ++r) {
      if (plan.estimate.peak_mem_gib[r] > capacity * (1 + 1e-9))
        invariant_broken("rank " + std::to_string(r) + " peak " +
                         std::to_string(plan.estimate.peak_mem_gib[r]) + " GiB > capacity " +
                         std::to_string(capacity) + " GiB");
    }
    if (dhp::plan_hash(planner.plan(batch)) != dhp::plan_hash(plan))
      invariant_broken("the same batch gave two different plans");
    // The simulator must run every plan the planner returns.
    // (at the plan's TP degrees: a static layout may fix another than the default).
    const dhp::CostModel& cost = planner.cost_model();
    const dhp::Simulator simulator(dhp::CostModel(
        cluster, model, plan.llm.tp, plan.encoder.ranks > 0 ? plan.encoder.tp : cost.encoder_tp(),
        cost.coefficients()));
    const dhp::SimulationResult sim = simulator.run(plan, batch);
    if (!(sim.step_ms > 0)) invariant_broken("simulated step time " + std::to_string(sim.step_ms));
  } catch (const dhp::Error& e) {
    switch (e.kind()) {
      case dhp::ErrorKind::DoesNotFit:
      case dhp::ErrorKind::InvalidInput:
      case dhp::ErrorKind::InvalidArgument:
        break;  // a clear refusal
      default:
        invariant_broken(std::string(dhp::to_string(e.kind())) + " error: " + e.what());
    }
  }
  return 0;
}
