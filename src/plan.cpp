#include "dhp/plan.hpp"

#include <algorithm>

#include "dhp/error.hpp"

namespace dhp {

const char* to_string(EncoderPlacement p) noexcept {
  switch (p) {
    case EncoderPlacement::Colocated:
      return "colocated";
    case EncoderPlacement::Disjoint:
      return "disjoint";
  }
  return "unknown";
}

const char* to_string(Sharding s) noexcept {
  switch (s) {
    case Sharding::Whole:
      return "whole";
    case Sharding::Zigzag:
      return "zigzag";
  }
  return "unknown";
}

const char* to_string(CpAttention a) noexcept {
  switch (a) {
    case CpAttention::Ring:
      return "ring";
    case CpAttention::Ulysses:
      return "ulysses";
    case CpAttention::UlyssesRing:
      return "ulysses_ring";
  }
  return "unknown";
}

namespace {

// FNV-1a over a canonical byte sequence: every integer as 8 bytes little-endian, every
// list preceded by its length, so that the hash does not depend on the platform.
class Fnv1a {
 public:
  void add(std::int64_t value) {
    auto bits = static_cast<std::uint64_t>(value);
    for (int i = 0; i < 8; ++i) {
      add_byte(static_cast<unsigned char>(bits & 0xffu));
      bits >>= 8;
    }
  }
  void add(const std::string& text) {
    add(static_cast<std::int64_t>(text.size()));
    for (char c : text) add_byte(static_cast<unsigned char>(c));
  }
  std::uint64_t value() const { return hash_; }

 private:
  void add_byte(unsigned char byte) {
    hash_ ^= byte;
    hash_ *= 0x100000001b3ull;
  }
  std::uint64_t hash_ = 0xcbf29ce484222325ull;
};

void add_layout(Fnv1a& h, const ModuleLayout& layout) {
  h.add(layout.tp);
  h.add(layout.first_device);
  h.add(layout.ranks);
}

}  // namespace

std::uint64_t plan_hash(const Plan& plan) {
  Fnv1a h;
  h.add(plan.strategy);
  h.add(plan.step);
  h.add(static_cast<std::int64_t>(plan.placement));
  add_layout(h, plan.llm);
  add_layout(h, plan.encoder);
  h.add(static_cast<std::int64_t>(plan.waves.size()));
  for (const WavePlan& wave : plan.waves) {
    h.add(static_cast<std::int64_t>(wave.groups.size()));
    for (const GroupPlan& group : wave.groups) {
      h.add(static_cast<std::int64_t>(group.attention));
      h.add(static_cast<std::int64_t>(group.ranks.size()));
      for (int rank : group.ranks) h.add(rank);
    }
    h.add(static_cast<std::int64_t>(wave.sequences.size()));
    for (const SequencePlan& seq : wave.sequences) {
      h.add(seq.sample);
      h.add(seq.group);
      h.add(static_cast<std::int64_t>(seq.sharding));
      h.add(seq.member);
    }
  }
  h.add(static_cast<std::int64_t>(plan.encoder_tasks.size()));
  for (const EncoderTask& task : plan.encoder_tasks) {
    h.add(task.sample);
    h.add(task.visual);
    h.add(task.wave);
    h.add(task.rank);
    if (task.parts > 1) {  // whole items hash as they did before parts existed
      h.add(task.part);
      h.add(task.parts);
    }
  }
  return h.value();
}

namespace {

// DHP_CHECK with the error kind chosen by the caller of validate().
#define PLAN_CHECK(cond, kind, ...)                                \
  do {                                                             \
    if (!(cond)) throw Error(kind, fmt::format(__VA_ARGS__));      \
  } while (0)

void validate_layouts(const Plan& plan, ErrorKind kind) {
  const ModuleLayout& llm = plan.llm;
  const ModuleLayout& enc = plan.encoder;
  PLAN_CHECK(llm.ranks >= 1 && llm.tp >= 1 && llm.first_device >= 0, kind,
            "plan '{}' step {}: llm layout ranks={} tp={} first_device={} (need ranks >= 1, "
            "tp >= 1, first_device >= 0)",
            plan.strategy, plan.step, llm.ranks, llm.tp, llm.first_device);
  PLAN_CHECK(enc.ranks >= 0 && enc.tp >= 1 && enc.first_device >= 0, kind,
            "plan '{}' step {}: encoder layout ranks={} tp={} first_device={} (need ranks >= 0, "
            "tp >= 1, first_device >= 0)",
            plan.strategy, plan.step, enc.ranks, enc.tp, enc.first_device);
  if (enc.ranks == 0) return;
  // 64-bit: a hand-built plan may hold any int.
  const std::int64_t llm_end = llm.first_device + std::int64_t{llm.ranks} * llm.tp;
  const std::int64_t enc_end = enc.first_device + std::int64_t{enc.ranks} * enc.tp;
  if (plan.placement == EncoderPlacement::Colocated) {
    PLAN_CHECK(enc.first_device >= llm.first_device && enc_end <= llm_end, kind,
              "plan '{}' step {}: colocated encoder devices [{}, {}) are not inside the LLM's "
              "devices [{}, {})",
              plan.strategy, plan.step, enc.first_device, enc_end, llm.first_device, llm_end);
  } else {
    PLAN_CHECK(enc_end <= llm.first_device || enc.first_device >= llm_end, kind,
              "plan '{}' step {}: disjoint encoder devices [{}, {}) overlap the LLM's devices "
              "[{}, {})",
              plan.strategy, plan.step, enc.first_device, enc_end, llm.first_device, llm_end);
  }
}

}  // namespace

void validate(const Plan& plan, const Batch& batch, ErrorKind kind) {
  validate_layouts(plan, kind);
  const int num_samples = static_cast<int>(batch.samples.size());
  std::vector<int> wave_of_sample(batch.samples.size(), -1);

  for (int w = 0; w < static_cast<int>(plan.waves.size()); ++w) {
    const WavePlan& wave = plan.waves[w];
    std::vector<int> group_of_rank(plan.llm.ranks, -1);
    for (int g = 0; g < static_cast<int>(wave.groups.size()); ++g) {
      const GroupPlan& group = wave.groups[g];
      PLAN_CHECK(!group.ranks.empty(), kind, "plan '{}' step {}: wave {} group {} has no ranks",
                plan.strategy, plan.step, w, g);
      for (int rank : group.ranks) {
        PLAN_CHECK(rank >= 0 && rank < plan.llm.ranks, kind,
                  "plan '{}' step {}: wave {} group {} has rank {} outside [0, {})", plan.strategy,
                  plan.step, w, g, rank, plan.llm.ranks);
        PLAN_CHECK(group_of_rank[rank] == -1, kind,
                  "plan '{}' step {}: wave {} rank {} is in group {} and group {}", plan.strategy,
                  plan.step, w, rank, group_of_rank[rank], g);
        group_of_rank[rank] = g;
      }
    }
    for (const SequencePlan& seq : wave.sequences) {
      PLAN_CHECK(seq.sample >= 0 && seq.sample < num_samples, kind,
                "plan '{}' step {}: wave {} places sample {} outside [0, {})", plan.strategy,
                plan.step, w, seq.sample, num_samples);
      PLAN_CHECK(wave_of_sample[seq.sample] == -1, kind,
                "plan '{}' step {}: sample {} is placed twice (waves {} and {})", plan.strategy,
                plan.step, seq.sample, wave_of_sample[seq.sample], w);
      wave_of_sample[seq.sample] = w;
      PLAN_CHECK(seq.group >= 0 && seq.group < static_cast<int>(wave.groups.size()), kind,
                "plan '{}' step {}: wave {} sample {} in group {} outside [0, {})", plan.strategy,
                plan.step, w, seq.sample, seq.group, wave.groups.size());
      const int degree = wave.groups[seq.group].degree();
      if (seq.sharding == Sharding::Whole) {
        PLAN_CHECK(seq.member >= 0 && seq.member < degree, kind,
                  "plan '{}' step {}: wave {} sample {} kept whole on member {} of a group of "
                  "degree {}",
                  plan.strategy, plan.step, w, seq.sample, seq.member, degree);
      } else {
        PLAN_CHECK(seq.member == -1, kind,
                  "plan '{}' step {}: wave {} sample {} is zigzag-split but has member {} "
                  "(expected -1)",
                  plan.strategy, plan.step, w, seq.sample, seq.member);
      }
    }
  }
  for (int s = 0; s < num_samples; ++s) {
    PLAN_CHECK(wave_of_sample[s] != -1, kind,
              "plan '{}' step {}: sample {} (id {}) is in no wave", plan.strategy, plan.step, s,
              batch.samples[s].id);
  }

  // Encoder work: with no encoder ranks (text-only model) there must be no tasks.
  if (plan.encoder.ranks == 0) {
    PLAN_CHECK(plan.encoder_tasks.empty(), kind,
              "plan '{}' step {}: {} encoder tasks but the encoder has no ranks", plan.strategy,
              plan.step, plan.encoder_tasks.size());
    return;
  }
  // Per visual item (flat index, samples' visuals in order), its tasks' parts: one count,
  // every part 0..parts-1 exactly once. Flat arrays: this runs for every planned batch.
  const std::vector<int> first_visual = visual_offsets(batch);
  std::vector<int> parts_of(static_cast<std::size_t>(first_visual.back()), 0);
  std::vector<int> tasks_of(parts_of.size(), 0);
  auto describe = [&](const EncoderTask& task, std::size_t t) {
    return fmt::format("plan '{}' step {}: sample {} visual {}: task {} is part {} of {}",
                       plan.strategy, plan.step, task.sample, task.visual, t, task.part,
                       task.parts);
  };
  for (std::size_t t = 0; t < plan.encoder_tasks.size(); ++t) {
    const EncoderTask& task = plan.encoder_tasks[t];
    PLAN_CHECK(task.sample >= 0 && task.sample < num_samples, kind,
              "plan '{}' step {}: encoder task {} names sample {} outside [0, {})", plan.strategy,
              plan.step, t, task.sample, num_samples);
    const int num_visuals = first_visual[task.sample + 1] - first_visual[task.sample];
    PLAN_CHECK(task.visual >= 0 && task.visual < num_visuals, kind,
              "plan '{}' step {}: encoder task {} names visual {} of sample {} outside [0, {})",
              plan.strategy, plan.step, t, task.visual, task.sample, num_visuals);
    PLAN_CHECK(task.rank >= 0 && task.rank < plan.encoder.ranks, kind,
              "plan '{}' step {}: encoder task {} on encoder rank {} outside [0, {})",
              plan.strategy, plan.step, t, task.rank, plan.encoder.ranks);
    PLAN_CHECK(task.wave == wave_of_sample[task.sample], kind,
              "plan '{}' step {}: encoder task {} (sample {} visual {}) is in wave {} but the "
              "sample runs in wave {}",
              plan.strategy, plan.step, t, task.sample, task.visual, task.wave,
              wave_of_sample[task.sample]);
    PLAN_CHECK(task.parts >= 1 && task.part >= 0 && task.part < task.parts, kind,
              "plan '{}' step {}: encoder task {} is part {} of {} parts", plan.strategy, plan.step,
              t, task.part, task.parts);
    const int item = first_visual[task.sample] + task.visual;
    PLAN_CHECK(parts_of[item] == 0 || parts_of[item] == task.parts, kind,
              "{}, but another task has a different count ({})", describe(task, t), parts_of[item]);
    parts_of[item] = task.parts;
    ++tasks_of[item];
  }
  // Each item's parts get slots [first_part[item], + parts): every slot filled once.
  std::vector<int> first_part(parts_of.size() + 1, 0);
  for (int s = 0; s < num_samples; ++s) {
    for (int v = first_visual[s]; v < first_visual[s + 1]; ++v) {
      PLAN_CHECK(tasks_of[v] > 0, kind,
                "plan '{}' step {}: sample {} (id {}) visual {} is never encoded", plan.strategy,
                plan.step, s, batch.samples[s].id, v - first_visual[s]);
      PLAN_CHECK(tasks_of[v] == parts_of[v], kind,
                "plan '{}' step {}: sample {} visual {} has {} encoder tasks for {} parts (encoded "
                "more than once, or a part missing)",
                plan.strategy, plan.step, s, v - first_visual[s], tasks_of[v], parts_of[v]);
      first_part[v + 1] = first_part[v] + parts_of[v];
    }
  }
  std::vector<char> seen(static_cast<std::size_t>(first_part.back()), 0);
  for (std::size_t t = 0; t < plan.encoder_tasks.size(); ++t) {
    const EncoderTask& task = plan.encoder_tasks[t];
    char& slot = seen[first_part[first_visual[task.sample] + task.visual] + task.part];
    PLAN_CHECK(!slot, kind, "{}, but another task has that part", describe(task, t));
    slot = 1;
  }
}

}  // namespace dhp
