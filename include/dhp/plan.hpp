// The plan for one global batch: a plain, serialisable value computed by the planner on
// the host and executed by the runtime (or the simulator). Every rank computes the same
// plan from the same batch; plan_hash() lets the runtime check that.
//
// Vocabulary. A *device* is one GPU. A module's *rank* is one tensor-parallel group of
// `tp` consecutive devices inside a node; the LLM ranks are split per wave into *groups*
// that run context parallelism among themselves (degree = group size, any integer).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "dhp/batch.hpp"
#include "dhp/error.hpp"

namespace dhp {

enum class EncoderPlacement {
  Colocated,  // encoder and LLM share every device; encoder runs before each wave's LLM work
  Disjoint,   // encoder on its own devices, pipelined one wave ahead of the LLM
};

enum class Sharding {
  Whole,   // the sequence lives on one member rank of its group
  Zigzag,  // split into 2*d chunks; member i holds chunks i and 2d-1-i (causal balance)
};

enum class CpAttention {
  Ring,         // KV blocks passed around the ring, point-to-point only
  Ulysses,      // all-to-all over heads; needs d | kv_heads
  UlyssesRing,  // Ulysses inside a node, ring across nodes
};

// Three ints that are easy to give in the wrong order: build one with a designated
// initialiser, ModuleLayout{.tp = 2, .first_device = 0, .ranks = 4}, or with
// ModuleLayout::on_devices(first_device, ranks, tp).
struct ModuleLayout {
  int tp = 1;            // devices per rank
  int first_device = 0;  // ranks occupy devices [first_device, first_device + ranks * tp)
  int ranks = 0;

  static ModuleLayout on_devices(int first_device, int ranks, int tp = 1) {
    return ModuleLayout{.tp = tp, .first_device = first_device, .ranks = ranks};
  }

  int device_of(int rank, int tp_index = 0) const { return first_device + rank * tp + tp_index; }
  int num_devices() const { return ranks * tp; }
};

struct GroupPlan {
  std::vector<int> ranks;  // LLM ranks in ring order; the group's CP degree is ranks.size()
  CpAttention attention = CpAttention::Ring;

  int degree() const { return static_cast<int>(ranks.size()); }
};

// Build one with SequencePlan::whole / SequencePlan::zigzag (or a designated initialiser):
// a Zigzag sequence lives on every member, so its member is -1 and validate() refuses any
// other value.
struct SequencePlan {
  int sample = 0;  // index into Batch::samples
  int group = 0;   // index into WavePlan::groups
  Sharding sharding = Sharding::Whole;
  int member = 0;  // Whole: index into the group's ranks of the rank that holds it; Zigzag: -1

  static SequencePlan whole(int sample, int group, int member) {
    return SequencePlan{.sample = sample, .group = group, .sharding = Sharding::Whole,
                        .member = member};
  }
  static SequencePlan zigzag(int sample, int group) {
    return SequencePlan{.sample = sample, .group = group, .sharding = Sharding::Zigzag,
                        .member = -1};
  }
};

struct WavePlan {
  std::vector<GroupPlan> groups;
  std::vector<SequencePlan> sequences;
};

struct EncoderTask {
  int sample = 0;  // index into Batch::samples
  int visual = 0;  // index into Sample::visuals
  int wave = 0;    // the wave whose LLM work consumes it
  int rank = 0;    // encoder rank that encodes it
  // The item is encoded in `parts` parts; this task is part `part` (encoder_part). Where the
  // item has at least `parts` independent spans (encoder_spans: a video's temporal slices,
  // an image's tiles) each part is a range of them encoded on its own; an item of a single
  // span is cut into `parts` shards of its patches that run together as a ring over their
  // encoder ranks (non-causal ring attention).
  int part = 0;
  int parts = 1;
};

// What the planner's own cost model predicts. The simulator's figures are separate.
struct PlanEstimate {
  double step_ms = 0;
  // Sums over the waves of each wave's slowest encoder rank / LLM rank. Where waves overlap
  // across devices (no encoder, or a colocated one) the step is shorter than their sum.
  double encoder_ms = 0;
  double llm_ms = 0;
  double grad_sync_ms = 0;           // exposed part
  std::vector<double> wave_ms;       // per wave, LLM part
  std::vector<double> peak_mem_gib;  // per LLM rank, highest over the waves
  double mem_capacity_gib = 0;
  // Moving weights and optimizer state into this plan's layout from the previous batch's,
  // before the step (LayoutSearch::PerBatch; not part of step_ms); 0 when it is the same.
  double layout_switch_ms = 0;
};

struct Plan {
  std::string strategy;
  std::int64_t step = 0;
  EncoderPlacement placement = EncoderPlacement::Colocated;
  ModuleLayout llm;
  ModuleLayout encoder;  // ranks == 0 for a text-only model
  std::vector<WavePlan> waves;
  std::vector<EncoderTask> encoder_tasks;
  PlanEstimate estimate;
};

// Hash of the structure (layouts, waves, groups, sequences, encoder tasks), not of the
// estimate: identical on every platform for the same plan.
std::uint64_t plan_hash(const Plan& plan);

// Checks the invariants every plan must satisfy against its batch: every sample in
// exactly one wave and one group; every visual item encoded exactly once on a valid
// encoder rank; ranks in range; no rank in two groups of a wave; Whole members in range;
// Zigzag members -1. Throws dhp::Error of `kind` naming the first violation: Internal for
// the planner's own plans (a bug), InvalidArgument where a caller hands in a plan.
void validate(const Plan& plan, const Batch& batch, ErrorKind kind = ErrorKind::Internal);

const char* to_string(EncoderPlacement p) noexcept;
const char* to_string(Sharding s) noexcept;
const char* to_string(CpAttention a) noexcept;

}  // namespace dhp
