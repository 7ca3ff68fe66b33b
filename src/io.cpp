// JSON readers and writers. Readers carry the JSON path of what they read ("batches[3].
// samples[7].text") so that every error names where the bad value is.
#include "dhp/io.hpp"

#include <fmt/ranges.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <initializer_list>
#include <limits>
#include <sstream>

#include "closest_name.hpp"
#include "dhp/error.hpp"

namespace dhp {

using json = nlohmann::json;
using ordered_json = nlohmann::ordered_json;

std::string read_text_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  DHP_CHECK(in.good(), InvalidInput, "cannot open '{}' for reading", path);
  std::ostringstream text;
  text << in.rdbuf();
  DHP_CHECK(!in.bad(), InvalidInput, "error while reading '{}'", path);
  return text.str();
}

void write_text_file(const std::string& path, std::string_view text) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  DHP_CHECK(out.good(), InvalidInput, "cannot open '{}' for writing", path);
  out.write(text.data(), static_cast<std::streamsize>(text.size()));
  DHP_CHECK(out.good(), InvalidInput, "error while writing '{}'", path);
}

namespace {

// ---------------------------------------------------------------------------------------
// Reading helpers

json parse(std::string_view text, const char* what) {
  try {
    return json::parse(text.begin(), text.end());
  } catch (const json::parse_error& e) {
    DHP_THROW(InvalidInput, "malformed {} JSON at byte {}: {}", what, e.byte, e.what());
  } catch (const json::exception& e) {  // e.g. a number too large for a double
    DHP_THROW(InvalidInput, "malformed {} JSON: {}", what, e.what());
  }
}

std::string field_path(const std::string& path, std::string_view key) {
  return path.empty() ? std::string(key) : path + "." + std::string(key);
}

std::string index_path(const std::string& path, std::size_t index) {
  return fmt::format("{}[{}]", path, index);
}

// The value as JSON text, shortened: messages must stay readable for huge inputs.
std::string show(const json& value) {
  std::string text = value.dump();
  if (text.size() > 60) text = text.substr(0, 57) + "...";
  return text;
}

std::string where(const std::string& path) { return path.empty() ? "<root>" : path; }

void expect_object(const json& value, const std::string& path) {
  DHP_CHECK(value.is_object(), InvalidInput, "{}: expected an object, got {} {}", where(path),
            value.type_name(), show(value));
}

void expect_array(const json& value, const std::string& path) {
  DHP_CHECK(value.is_array(), InvalidInput, "{}: expected an array, got {} {}", where(path),
            value.type_name(), show(value));
}

// Rejects keys the schema does not know: a misspelt field would otherwise be ignored silently.
// The message names the closest known field (within a third of its length, at least 2
// edits), or lists the known ones.
void expect_keys(const json& obj, const std::string& path,
                 std::initializer_list<std::string_view> known) {
  for (const auto& [key, value] : obj.items()) {
    bool found = false;
    detail::ClosestName closest(key);
    for (std::string_view k : known) {
      found = found || key == k;
      closest.consider(k);
    }
    if (found) continue;
    if (!closest.best().empty())
      DHP_THROW(InvalidInput, "{}: unknown field (value {}); did you mean '{}'?",
                field_path(path, key), show(value), field_path(path, closest.best()));
    DHP_THROW(InvalidInput, "{}: unknown field (value {}); known fields: {}", field_path(path, key),
              show(value), fmt::join(known, ", "));
  }
}

const json& require(const json& obj, const std::string& path, const char* key) {
  auto it = obj.find(key);
  DHP_CHECK(it != obj.end(), InvalidInput, "missing required field '{}'", field_path(path, key));
  return *it;
}

const json* find(const json& obj, const char* key) {
  auto it = obj.find(key);
  return it == obj.end() ? nullptr : &*it;
}

// Upper bound of token / patch counts in the readers (2^40): catches garbage, allows any real
// batch, and is low enough that sums over a batch cannot overflow.
constexpr std::int64_t kMaxCount = std::int64_t{1} << 40;

std::int64_t as_int(const json& value, const std::string& path, std::int64_t min,
                    std::int64_t max = std::numeric_limits<int>::max()) {
  std::int64_t result = 0;
  if (value.is_number_integer() && !value.is_number_unsigned()) {
    result = value.get<std::int64_t>();
  } else if (value.is_number_unsigned()) {
    const auto u = value.get<std::uint64_t>();
    DHP_CHECK(u <= static_cast<std::uint64_t>(max), InvalidInput, "{}={} must be <= {}", path, u,
              max);
    result = static_cast<std::int64_t>(u);
  } else if (value.is_number_float()) {
    // Tools that write every number as a double (Python's json for numpy floats) are fine
    // as long as the value is a whole number.
    const double d = value.get<double>();
    DHP_CHECK(std::isfinite(d) && d == std::floor(d) && std::fabs(d) < 9.0e18, InvalidInput,
              "{}: expected an integer, got {}", path, show(value));
    result = static_cast<std::int64_t>(d);
  } else {
    DHP_THROW(InvalidInput, "{}: expected an integer, got {} {}", path, value.type_name(),
              show(value));
  }
  DHP_CHECK(result >= min && result <= max, InvalidInput, "{}={} must be in [{}, {}]", path, result,
            min, max);
  return result;
}

double as_double(const json& value, const std::string& path) {
  DHP_CHECK(value.is_number(), InvalidInput, "{}: expected a number, got {} {}", path,
            value.type_name(), show(value));
  const double d = value.get<double>();
  DHP_CHECK(std::isfinite(d), InvalidInput, "{}={} is not finite", path, d);
  return d;
}

double as_positive(const json& value, const std::string& path) {
  const double d = as_double(value, path);
  DHP_CHECK(d > 0, InvalidInput, "{}={} must be > 0", path, d);
  return d;
}

double as_non_negative(const json& value, const std::string& path) {
  const double d = as_double(value, path);
  DHP_CHECK(d >= 0, InvalidInput, "{}={} must be >= 0", path, d);
  return d;
}

bool as_bool(const json& value, const std::string& path) {
  DHP_CHECK(value.is_boolean(), InvalidInput, "{}: expected true or false, got {} {}", path,
            value.type_name(), show(value));
  return value.get<bool>();
}

std::string as_string(const json& value, const std::string& path) {
  DHP_CHECK(value.is_string(), InvalidInput, "{}: expected a string, got {} {}", path,
            value.type_name(), show(value));
  return value.get<std::string>();
}

// Optional field readers: leave `out` (the struct default or the preset's value) alone
// when the key is absent. `required` turns a missing key into an error.
void read_int(const json& obj, const std::string& path, const char* key, int& out, std::int64_t min,
              bool required = false) {
  const json* v = required ? &require(obj, path, key) : find(obj, key);
  if (v != nullptr) out = static_cast<int>(as_int(*v, field_path(path, key), min));
}

void read_positive(const json& obj, const std::string& path, const char* key, double& out,
                   bool required = false) {
  const json* v = required ? &require(obj, path, key) : find(obj, key);
  if (v != nullptr) out = as_positive(*v, field_path(path, key));
}

void read_non_negative(const json& obj, const std::string& path, const char* key, double& out) {
  if (const json* v = find(obj, key)) out = as_non_negative(*v, field_path(path, key));
}

void read_bool(const json& obj, const std::string& path, const char* key, bool& out) {
  if (const json* v = find(obj, key)) out = as_bool(*v, field_path(path, key));
}

void read_string(const json& obj, const std::string& path, const char* key, std::string& out,
                 bool required = false) {
  const json* v = required ? &require(obj, path, key) : find(obj, key);
  if (v != nullptr) out = as_string(*v, field_path(path, key));
}

// Re-throws a validate() failure as InvalidInput prefixed with where it was read from.
template <typename Fn>
void validate_at(const std::string& path, Fn&& fn) {
  try {
    fn();
  } catch (const Error& e) {
    DHP_THROW(InvalidInput, "{}: {}", where(path), e.message());
  }
}

// ---------------------------------------------------------------------------------------
// Enums

const char* to_string(Recompute r) {
  switch (r) {
    case Recompute::None:
      return "none";
    case Recompute::Selective:
      return "selective";
    case Recompute::Full:
      return "full";
  }
  return "unknown";
}

template <typename Enum, std::size_t N>
Enum enum_from(const json& value, const std::string& path, const Enum (&options)[N]) {
  const std::string text = as_string(value, path);
  std::string known;
  for (Enum option : options) {
    if (text == to_string(option)) return option;
    known += known.empty() ? "" : "|";
    known += to_string(option);
  }
  DHP_THROW(InvalidInput, "{}='{}': expected one of {}", path, text, known);
}

constexpr Recompute kRecomputes[] = {Recompute::None, Recompute::Selective, Recompute::Full};
constexpr EncoderPlacement kPlacements[] = {EncoderPlacement::Colocated,
                                            EncoderPlacement::Disjoint};
constexpr Sharding kShardings[] = {Sharding::Whole, Sharding::Zigzag};
constexpr CpAttention kAttentions[] = {CpAttention::Ring, CpAttention::Ulysses,
                                       CpAttention::UlyssesRing};

// ---------------------------------------------------------------------------------------
// Cluster

void read_link(const json& obj, const std::string& path, const char* key, LinkSpec& link) {
  const json* v = find(obj, key);
  if (v == nullptr) return;
  const std::string p = field_path(path, key);
  expect_object(*v, p);
  expect_keys(*v, p, {"bandwidth_gbs", "latency_us"});
  read_positive(*v, p, "bandwidth_gbs", link.bandwidth_gbs);
  read_non_negative(*v, p, "latency_us", link.latency_us);
}

ClusterSpec cluster_from(const json& obj, const std::string& path) {
  expect_object(obj, path);
  expect_keys(obj, path,
              {"preset", "name", "device", "num_nodes", "devices_per_node", "peak_tflops",
               "hbm_gbs", "mem_capacity_gib", "mem_reserved_gib", "intra_node", "inter_node"});
  ClusterSpec c;
  const json* preset = find(obj, "preset");
  if (preset != nullptr) {
    const std::string p = field_path(path, "preset");
    const std::string name = as_string(*preset, p);
    try {
      c = cluster_preset(name);
    } catch (const Error& e) {
      DHP_THROW(InvalidInput, "{}: {}", p, e.message());
    }
  }
  const bool required = preset == nullptr;
  read_string(obj, path, "name", c.name, required);
  read_string(obj, path, "device", c.device);
  read_int(obj, path, "num_nodes", c.num_nodes, 1, required);
  read_int(obj, path, "devices_per_node", c.devices_per_node, 1, required);
  read_positive(obj, path, "peak_tflops", c.peak_tflops);
  read_positive(obj, path, "hbm_gbs", c.hbm_gbs);
  read_positive(obj, path, "mem_capacity_gib", c.mem_capacity_gib);
  read_non_negative(obj, path, "mem_reserved_gib", c.mem_reserved_gib);
  read_link(obj, path, "intra_node", c.intra_node);
  read_link(obj, path, "inter_node", c.inter_node);
  validate_at(path, [&] { validate(c); });
  return c;
}

// ---------------------------------------------------------------------------------------
// Model

void read_transformer(const json& obj, const std::string& path, TransformerSpec& t, bool required,
                      bool has_vocab) {
  read_int(obj, path, "layers", t.layers, 1, required);
  read_int(obj, path, "hidden", t.hidden, 1, required);
  read_int(obj, path, "heads", t.heads, 1, required);
  if (required && find(obj, "kv_heads") == nullptr) t.kv_heads = t.heads;  // plain MHA
  read_int(obj, path, "kv_heads", t.kv_heads, 1);
  read_int(obj, path, "ffn_hidden", t.ffn_hidden, 1, required);
  read_bool(obj, path, "gated_mlp", t.gated_mlp);
  if (has_vocab) {
    read_int(obj, path, "vocab", t.vocab, 1, required);
    read_bool(obj, path, "tied_embeddings", t.tied_embeddings);
  }
}

ModelSpec model_from(const json& obj, const std::string& path) {
  expect_object(obj, path);
  expect_keys(obj, path, {"preset", "name", "llm", "encoder", "training"});
  ModelSpec m;
  const json* preset = find(obj, "preset");
  if (preset != nullptr) {
    const std::string p = field_path(path, "preset");
    const std::string name = as_string(*preset, p);
    try {
      m = model_preset(name);
    } catch (const Error& e) {
      DHP_THROW(InvalidInput, "{}: {}", p, e.message());
    }
  }
  const bool required = preset == nullptr;
  read_string(obj, path, "name", m.name, required);

  const json* llm = required ? &require(obj, path, "llm") : find(obj, "llm");
  if (llm != nullptr) {
    const std::string p = field_path(path, "llm");
    expect_object(*llm, p);
    expect_keys(*llm, p,
                {"layers", "hidden", "heads", "kv_heads", "ffn_hidden", "gated_mlp", "vocab",
                 "tied_embeddings"});
    read_transformer(*llm, p, m.llm, required, /*has_vocab=*/true);
  }

  // "encoder": null turns a multimodal preset into its text-only LLM.
  if (const json* enc = find(obj, "encoder")) {
    const std::string p = field_path(path, "encoder");
    if (enc->is_null()) {
      m.encoder.reset();
    } else {
      expect_object(*enc, p);
      expect_keys(*enc, p,
                  {"layers", "hidden", "heads", "kv_heads", "ffn_hidden", "gated_mlp", "patch_size",
                   "tokens_per_llm_token", "projector_parameters", "temporal_patch_size",
                   "attention_tile_patches"});
      const bool new_encoder = !m.encoder.has_value();
      EncoderSpec e = m.encoder.value_or(EncoderSpec{});
      if (new_encoder) e.arch.gated_mlp = false;  // ViTs use a plain GELU MLP
      read_transformer(*enc, p, e.arch, new_encoder, /*has_vocab=*/false);
      read_int(*enc, p, "patch_size", e.patch_size, 1);
      read_int(*enc, p, "tokens_per_llm_token", e.tokens_per_llm_token, 1);
      read_non_negative(*enc, p, "projector_parameters", e.projector_parameters);
      read_int(*enc, p, "temporal_patch_size", e.temporal_patch_size, 0);
      if (const json* tile = find(*enc, "attention_tile_patches"))
        e.attention_tile_patches =
            as_int(*tile, field_path(p, "attention_tile_patches"), 0, kMaxCount);
      m.encoder = e;
    }
  }

  if (const json* tr = find(obj, "training")) {
    const std::string p = field_path(path, "training");
    expect_object(*tr, p);
    expect_keys(
        *tr, p,
        {"recompute", "encoder_recompute", "encoder_span_group_patches", "zero_stage",
         "bytes_per_param", "bytes_per_grad", "bytes_optimizer_state", "bytes_per_activation"});
    TrainingSetup& t = m.training;
    if (const json* r = find(*tr, "recompute"))
      t.recompute = enum_from(*r, field_path(p, "recompute"), kRecomputes);
    if (const json* r = find(*tr, "encoder_recompute"))
      t.encoder_recompute = enum_from(*r, field_path(p, "encoder_recompute"), kRecomputes);
    if (const json* g = find(*tr, "encoder_span_group_patches"))
      t.encoder_span_group_patches =
          as_int(*g, field_path(p, "encoder_span_group_patches"), 0, kMaxCount);
    if (const json* z = find(*tr, "zero_stage"))
      t.zero_stage = static_cast<int>(as_int(*z, field_path(p, "zero_stage"), 0, 2));
    read_positive(*tr, p, "bytes_per_param", t.bytes_per_param);
    read_positive(*tr, p, "bytes_per_grad", t.bytes_per_grad);
    read_non_negative(*tr, p, "bytes_optimizer_state", t.bytes_optimizer_state);
    read_positive(*tr, p, "bytes_per_activation", t.bytes_per_activation);
  }
  validate_at(path, [&] { validate(m); });
  return m;
}

// ---------------------------------------------------------------------------------------
// Batch

Sample sample_from(const json& obj, const std::string& path, std::size_t index) {
  expect_object(obj, path);
  expect_keys(obj, path, {"id", "text", "visuals"});
  Sample s;
  s.id = static_cast<std::int64_t>(index);
  if (const json* id = find(obj, "id"))
    s.id = as_int(*id, field_path(path, "id"), std::numeric_limits<std::int64_t>::min(),
                  std::numeric_limits<std::int64_t>::max());
  s.text_tokens = as_int(require(obj, path, "text"), field_path(path, "text"), 0, kMaxCount);
  if (const json* visuals = find(obj, "visuals")) {
    const std::string vp = field_path(path, "visuals");
    expect_array(*visuals, vp);
    s.visuals.reserve(visuals->size());
    for (std::size_t i = 0; i < visuals->size(); ++i) {
      const json& v = (*visuals)[i];
      const std::string ip = index_path(vp, i);
      expect_object(v, ip);
      expect_keys(v, ip, {"patches", "tokens", "frames"});
      VisualItem item;
      item.patches = as_int(require(v, ip, "patches"), field_path(ip, "patches"), 1, kMaxCount);
      item.llm_tokens = as_int(require(v, ip, "tokens"), field_path(ip, "tokens"), 1, kMaxCount);
      if (const json* f = find(v, "frames"))
        item.frames = static_cast<int>(as_int(*f, field_path(ip, "frames"), 1));
      s.visuals.push_back(item);
    }
  }
  return s;
}

Batch batch_from(const json& obj, const std::string& path) {
  expect_object(obj, path);
  expect_keys(obj, path, {"step", "samples"});
  Batch b;
  if (const json* step = find(obj, "step"))
    b.step = as_int(*step, field_path(path, "step"), 0, std::numeric_limits<std::int64_t>::max());
  const std::string sp = field_path(path, "samples");
  const json& samples = require(obj, path, "samples");
  expect_array(samples, sp);
  b.samples.reserve(samples.size());
  for (std::size_t i = 0; i < samples.size(); ++i)
    b.samples.push_back(sample_from(samples[i], index_path(sp, i), i));
  validate_at(path, [&] { validate(b); });
  return b;
}

// ---------------------------------------------------------------------------------------
// Plan

ModuleLayout layout_from(const json& obj, const std::string& path) {
  expect_object(obj, path);
  expect_keys(obj, path, {"tp", "first_device", "ranks"});
  ModuleLayout l;
  // Bounds far above any cluster, so that device arithmetic stays within int.
  l.tp = static_cast<int>(as_int(require(obj, path, "tp"), field_path(path, "tp"), 1, 1 << 10));
  l.first_device = static_cast<int>(
      as_int(require(obj, path, "first_device"), field_path(path, "first_device"), 0, 1 << 20));
  l.ranks =
      static_cast<int>(as_int(require(obj, path, "ranks"), field_path(path, "ranks"), 0, 1 << 20));
  return l;
}

std::vector<double> doubles_from(const json& value, const std::string& path) {
  expect_array(value, path);
  std::vector<double> out;
  out.reserve(value.size());
  for (std::size_t i = 0; i < value.size(); ++i)
    out.push_back(as_double(value[i], index_path(path, i)));
  return out;
}

PlanEstimate estimate_from(const json& obj, const std::string& path) {
  expect_object(obj, path);
  expect_keys(obj, path,
              {"step_ms", "encoder_ms", "llm_ms", "grad_sync_ms", "wave_ms", "peak_mem_gib",
               "mem_capacity_gib", "layout_switch_ms"});
  PlanEstimate e;
  read_non_negative(obj, path, "step_ms", e.step_ms);
  read_non_negative(obj, path, "encoder_ms", e.encoder_ms);
  read_non_negative(obj, path, "llm_ms", e.llm_ms);
  read_non_negative(obj, path, "grad_sync_ms", e.grad_sync_ms);
  if (const json* w = find(obj, "wave_ms"))
    e.wave_ms = doubles_from(*w, field_path(path, "wave_ms"));
  if (const json* m = find(obj, "peak_mem_gib"))
    e.peak_mem_gib = doubles_from(*m, field_path(path, "peak_mem_gib"));
  read_non_negative(obj, path, "mem_capacity_gib", e.mem_capacity_gib);
  read_non_negative(obj, path, "layout_switch_ms", e.layout_switch_ms);
  return e;
}

int small_int(const json& obj, const std::string& path, const char* key, std::int64_t min) {
  return static_cast<int>(as_int(require(obj, path, key), field_path(path, key), min));
}

Plan plan_from(const json& obj, const std::string& path) {
  expect_object(obj, path);
  expect_keys(
      obj, path,
      {"strategy", "step", "placement", "llm", "encoder", "waves", "encoder_tasks", "estimate"});
  Plan plan;
  read_string(obj, path, "strategy", plan.strategy, true);
  plan.step = as_int(require(obj, path, "step"), field_path(path, "step"), 0,
                     std::numeric_limits<std::int64_t>::max());
  plan.placement =
      enum_from(require(obj, path, "placement"), field_path(path, "placement"), kPlacements);
  plan.llm = layout_from(require(obj, path, "llm"), field_path(path, "llm"));
  plan.encoder = layout_from(require(obj, path, "encoder"), field_path(path, "encoder"));

  const std::string wp = field_path(path, "waves");
  const json& waves = require(obj, path, "waves");
  expect_array(waves, wp);
  for (std::size_t w = 0; w < waves.size(); ++w) {
    const std::string p = index_path(wp, w);
    expect_object(waves[w], p);
    expect_keys(waves[w], p, {"groups", "sequences"});
    WavePlan wave;
    const std::string gp = field_path(p, "groups");
    const json& groups = require(waves[w], p, "groups");
    expect_array(groups, gp);
    for (std::size_t g = 0; g < groups.size(); ++g) {
      const std::string q = index_path(gp, g);
      expect_object(groups[g], q);
      expect_keys(groups[g], q, {"ranks", "attention"});
      GroupPlan group;
      const std::string rp = field_path(q, "ranks");
      const json& ranks = require(groups[g], q, "ranks");
      expect_array(ranks, rp);
      for (std::size_t r = 0; r < ranks.size(); ++r)
        group.ranks.push_back(static_cast<int>(as_int(ranks[r], index_path(rp, r), 0)));
      if (const json* a = find(groups[g], "attention"))
        group.attention = enum_from(*a, field_path(q, "attention"), kAttentions);
      wave.groups.push_back(std::move(group));
    }
    const std::string sp = field_path(p, "sequences");
    const json& sequences = require(waves[w], p, "sequences");
    expect_array(sequences, sp);
    for (std::size_t s = 0; s < sequences.size(); ++s) {
      const std::string q = index_path(sp, s);
      const json& sj = sequences[s];
      expect_object(sj, q);
      expect_keys(sj, q, {"sample", "group", "sharding", "member"});
      SequencePlan seq;
      seq.sample = small_int(sj, q, "sample", 0);
      seq.group = small_int(sj, q, "group", 0);
      seq.sharding = enum_from(require(sj, q, "sharding"), field_path(q, "sharding"), kShardings);
      seq.member = small_int(sj, q, "member", -1);
      wave.sequences.push_back(seq);
    }
    plan.waves.push_back(std::move(wave));
  }

  if (const json* tasks = find(obj, "encoder_tasks")) {
    const std::string tp = field_path(path, "encoder_tasks");
    expect_array(*tasks, tp);
    for (std::size_t t = 0; t < tasks->size(); ++t) {
      const std::string q = index_path(tp, t);
      const json& tj = (*tasks)[t];
      expect_object(tj, q);
      expect_keys(tj, q, {"sample", "visual", "wave", "rank", "part", "parts"});
      EncoderTask task{.sample = small_int(tj, q, "sample", 0),
                       .visual = small_int(tj, q, "visual", 0),
                       .wave = small_int(tj, q, "wave", 0),
                       .rank = small_int(tj, q, "rank", 0)};
      read_int(tj, q, "part", task.part, 0);
      read_int(tj, q, "parts", task.parts, 1);
      plan.encoder_tasks.push_back(task);
    }
  }
  if (const json* e = find(obj, "estimate"))
    plan.estimate = estimate_from(*e, field_path(path, "estimate"));
  return plan;
}

// ---------------------------------------------------------------------------------------
// Writers (ordered, so that files read in the order of the schema)

ordered_json link_json(const LinkSpec& l) {
  return {{"bandwidth_gbs", l.bandwidth_gbs}, {"latency_us", l.latency_us}};
}

void put_transformer(ordered_json& j, const TransformerSpec& t, bool has_vocab) {
  j["layers"] = t.layers;
  j["hidden"] = t.hidden;
  j["heads"] = t.heads;
  j["kv_heads"] = t.kv_heads;
  j["ffn_hidden"] = t.ffn_hidden;
  j["gated_mlp"] = t.gated_mlp;
  if (has_vocab) {
    j["vocab"] = t.vocab;
    j["tied_embeddings"] = t.tied_embeddings;
  }
}

ordered_json batch_json(const Batch& b) {
  ordered_json samples = ordered_json::array();
  for (const Sample& s : b.samples) {
    ordered_json sj = {{"id", s.id}, {"text", s.text_tokens}};
    if (!s.visuals.empty()) {
      ordered_json visuals = ordered_json::array();
      for (const VisualItem& v : s.visuals) {
        ordered_json vj = {{"patches", v.patches}, {"tokens", v.llm_tokens}};
        if (v.frames != 1) vj["frames"] = v.frames;
        visuals.push_back(std::move(vj));
      }
      sj["visuals"] = std::move(visuals);
    }
    samples.push_back(std::move(sj));
  }
  return {{"step", b.step}, {"samples", std::move(samples)}};
}

ordered_json layout_json(const ModuleLayout& l) {
  return {{"tp", l.tp}, {"first_device", l.first_device}, {"ranks", l.ranks}};
}

}  // namespace

ClusterSpec cluster_from_json(std::string_view text) {
  return cluster_from(parse(text, "cluster"), "");
}
ClusterSpec cluster_from_json(std::string_view text, const std::string& root) {
  return cluster_from(parse(text, "cluster"), root);
}

ModelSpec model_from_json(std::string_view text) { return model_from(parse(text, "model"), ""); }
ModelSpec model_from_json(std::string_view text, const std::string& root) {
  return model_from(parse(text, "model"), root);
}

Batch batch_from_json(std::string_view text) { return batch_from(parse(text, "batch"), ""); }
Batch batch_from_json(std::string_view text, const std::string& root) {
  return batch_from(parse(text, "batch"), root);
}

std::vector<Batch> batches_from_json(std::string_view text) {
  const json root = parse(text, "batch stream");
  const json* list = &root;
  std::string path;
  if (root.is_object()) {
    list = &require(root, "", "batches");
    path = "batches";
  }
  expect_array(*list, path);
  std::vector<Batch> batches;
  batches.reserve(list->size());
  for (std::size_t i = 0; i < list->size(); ++i)
    batches.push_back(batch_from((*list)[i], index_path(path, i)));
  return batches;
}

Plan plan_from_json(std::string_view text) { return plan_from(parse(text, "plan"), ""); }
Plan plan_from_json(std::string_view text, const std::string& root) {
  return plan_from(parse(text, "plan"), root);
}

std::string to_json(const ClusterSpec& c, int indent) {
  ordered_json j;
  j["name"] = c.name;
  j["device"] = c.device;
  j["num_nodes"] = c.num_nodes;
  j["devices_per_node"] = c.devices_per_node;
  j["peak_tflops"] = c.peak_tflops;
  j["hbm_gbs"] = c.hbm_gbs;
  j["mem_capacity_gib"] = c.mem_capacity_gib;
  j["mem_reserved_gib"] = c.mem_reserved_gib;
  j["intra_node"] = link_json(c.intra_node);
  j["inter_node"] = link_json(c.inter_node);
  return j.dump(indent);
}

std::string to_json(const ModelSpec& m, int indent) {
  ordered_json j;
  j["name"] = m.name;
  ordered_json llm;
  put_transformer(llm, m.llm, /*has_vocab=*/true);
  j["llm"] = std::move(llm);
  if (m.encoder) {
    ordered_json enc;
    put_transformer(enc, m.encoder->arch, /*has_vocab=*/false);
    enc["patch_size"] = m.encoder->patch_size;
    enc["tokens_per_llm_token"] = m.encoder->tokens_per_llm_token;
    enc["projector_parameters"] = m.encoder->projector_parameters;
    enc["temporal_patch_size"] = m.encoder->temporal_patch_size;
    enc["attention_tile_patches"] = m.encoder->attention_tile_patches;
    j["encoder"] = std::move(enc);
  } else {
    j["encoder"] = nullptr;
  }
  const TrainingSetup& t = m.training;
  j["training"] = {{"recompute", to_string(t.recompute)},
                   {"encoder_recompute", to_string(t.encoder_recompute)},
                   {"encoder_span_group_patches", t.encoder_span_group_patches},
                   {"zero_stage", t.zero_stage},
                   {"bytes_per_param", t.bytes_per_param},
                   {"bytes_per_grad", t.bytes_per_grad},
                   {"bytes_optimizer_state", t.bytes_optimizer_state},
                   {"bytes_per_activation", t.bytes_per_activation}};
  return j.dump(indent);
}

std::string to_json(const Batch& batch, int indent) { return batch_json(batch).dump(indent); }

std::string to_json(const std::vector<Batch>& batches, int indent) {
  ordered_json list = ordered_json::array();
  for (const Batch& b : batches) list.push_back(batch_json(b));
  ordered_json j;
  j["batches"] = std::move(list);
  return j.dump(indent);
}

std::string to_json(const Plan& plan, int indent) {
  ordered_json j;
  j["strategy"] = plan.strategy;
  j["step"] = plan.step;
  j["placement"] = to_string(plan.placement);
  j["llm"] = layout_json(plan.llm);
  j["encoder"] = layout_json(plan.encoder);
  ordered_json waves = ordered_json::array();
  for (const WavePlan& wave : plan.waves) {
    ordered_json groups = ordered_json::array();
    for (const GroupPlan& g : wave.groups)
      groups.push_back({{"ranks", g.ranks}, {"attention", to_string(g.attention)}});
    ordered_json sequences = ordered_json::array();
    for (const SequencePlan& s : wave.sequences)
      sequences.push_back({{"sample", s.sample},
                           {"group", s.group},
                           {"sharding", to_string(s.sharding)},
                           {"member", s.member}});
    waves.push_back({{"groups", std::move(groups)}, {"sequences", std::move(sequences)}});
  }
  j["waves"] = std::move(waves);
  ordered_json tasks = ordered_json::array();
  for (const EncoderTask& t : plan.encoder_tasks) {
    ordered_json task = {
        {"sample", t.sample}, {"visual", t.visual}, {"wave", t.wave}, {"rank", t.rank}};
    if (t.parts > 1) {  // absent: the whole item
      task["part"] = t.part;
      task["parts"] = t.parts;
    }
    tasks.push_back(std::move(task));
  }
  j["encoder_tasks"] = std::move(tasks);
  const PlanEstimate& e = plan.estimate;
  j["estimate"] = {{"step_ms", e.step_ms},
                   {"encoder_ms", e.encoder_ms},
                   {"llm_ms", e.llm_ms},
                   {"grad_sync_ms", e.grad_sync_ms},
                   {"wave_ms", e.wave_ms},
                   {"peak_mem_gib", e.peak_mem_gib},
                   {"mem_capacity_gib", e.mem_capacity_gib},
                   {"layout_switch_ms", e.layout_switch_ms}};
  return j.dump(indent);
}

namespace {

template <typename Spec, typename Preset, typename Parse>
Spec load_spec(const std::string& preset_or_path, const std::vector<std::string>& presets,
               Preset preset, Parse parse_text, const char* what) {
  for (const std::string& name : presets)
    if (name == preset_or_path) return preset(preset_or_path);
  DHP_CHECK(std::filesystem::is_regular_file(preset_or_path), InvalidArgument,
            "'{}' is neither a {} preset ({}) nor a readable file", preset_or_path, what,
            fmt::join(presets, ", "));
  try {
    return parse_text(read_text_file(preset_or_path));
  } catch (const Error& e) {
    DHP_THROW(InvalidInput, "{}: {}", preset_or_path, e.message());
  }
}

}  // namespace

ClusterSpec load_cluster(const std::string& preset_or_path) {
  return load_spec<ClusterSpec>(
      preset_or_path, cluster_preset_names(),
      [](const std::string& n) { return cluster_preset(n); },
      [](const std::string& t) { return cluster_from_json(t); }, "cluster");
}

ModelSpec load_model(const std::string& preset_or_path) {
  return load_spec<ModelSpec>(
      preset_or_path, model_preset_names(), [](const std::string& n) { return model_preset(n); },
      [](const std::string& t) { return model_from_json(t); }, "model");
}

std::vector<Batch> load_batches(const std::string& path) {
  const std::string text = read_text_file(path);
  const json parsed = json::parse(text, nullptr, /*allow_exceptions=*/false);
  const bool stream = parsed.is_array() || (parsed.is_object() && parsed.contains("batches"));
  // The readers also report malformed JSON with its position.
  return stream ? batches_from_json(text) : std::vector<Batch>{batch_from_json(text)};
}

}  // namespace dhp
