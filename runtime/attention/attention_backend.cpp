#include "dhp/attention_backend.hpp"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <cmath>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "dhp/error.hpp"

namespace dhp {
namespace {

using kernels::DType;

class DhpKernelsBackend final : public AttentionBackend {
 public:
  std::string name() const override { return "dhp"; }
  std::string cannot_run(const AttentionCall& call) const override {
    if (kernels::check_attention_support(call.dtype, call.device, call.shape) ==
        kernels::Status::Ok)
      return "";
    return kernels::last_error();
  }
  kernels::Status forward(const kernels::AttentionForwardArgs& args) override {
    return kernels::attention_forward(args);
  }
  kernels::Status backward(const kernels::AttentionBackwardArgs& args) override {
    return kernels::attention_backward(args);
  }
};

// Pairs (i, j) with k_pos[j] <= q_pos[i] of one segment: sorted keys, one search per query.
double causal_pairs(const std::int32_t* q_pos, std::int64_t lq, const std::int32_t* k_pos,
                    std::int64_t lk) {
  if (q_pos == nullptr && k_pos == nullptr) {  // row indices: query i sees min(i + 1, lk)
    const std::int64_t full = std::min(lq, lk);
    return static_cast<double>(full) * static_cast<double>(full + 1) / 2 +
           static_cast<double>(lq - full) * static_cast<double>(lk);
  }
  std::vector<std::int32_t> keys(static_cast<std::size_t>(lk));
  for (std::int64_t j = 0; j < lk; ++j)
    keys[static_cast<std::size_t>(j)] = k_pos ? k_pos[j] : static_cast<std::int32_t>(j);
  std::sort(keys.begin(), keys.end());
  double pairs = 0;
  for (std::int64_t i = 0; i < lq; ++i) {
    const std::int32_t p = q_pos ? q_pos[i] : static_cast<std::int32_t>(i);
    pairs += static_cast<double>(std::upper_bound(keys.begin(), keys.end(), p) - keys.begin());
  }
  return pairs;
}

bool is_row_index(const std::int32_t* positions, std::int64_t begin, std::int64_t length) {
  if (positions == nullptr) return true;
  for (std::int64_t i = 0; i < length; ++i)
    if (positions[begin + i] != i) return false;
  return true;
}

DType parse_dtype(const std::string& name, std::size_t row) {
  if (name == "bf16") return DType::BF16;
  if (name == "f16") return DType::F16;
  if (name == "f32") return DType::F32;
  if (name == "f64") return DType::F64;
  DHP_THROW(InvalidInput, "attention timings: row {}: dtype '{}' (expected bf16, f16, f32, f64)",
            row, name);
}

}  // namespace

AttentionCall AttentionCall::of(const kernels::AttentionForwardArgs& args,
                                const std::int32_t* host_cu_q, const std::int32_t* host_cu_k,
                                const std::int32_t* host_q_pos, const std::int32_t* host_k_pos) {
  AttentionCall c;
  c.dtype = args.dtype;
  c.device = args.device;
  c.shape = args.shape;
  c.num_seqs = args.seqs.num_seqs;
  c.total_q = args.seqs.total_q;
  c.total_k = args.seqs.total_k;
  c.max_seqlen_q = args.seqs.max_seqlen_q;
  c.max_seqlen_k = args.seqs.max_seqlen_k;
  c.accumulator_results = args.accumulator_out;
  for (int b = 0; b < c.num_seqs; ++b) {
    const std::int64_t q0 = host_cu_q[b], lq = host_cu_q[b + 1] - q0;
    const std::int64_t k0 = host_cu_k[b], lk = host_cu_k[b + 1] - k0;
    c.equal_lengths = c.equal_lengths && lq == lk;
    if (!args.shape.causal) {
      c.visible_pairs += static_cast<double>(lq) * static_cast<double>(lk);
      continue;
    }
    const bool implicit = is_row_index(host_q_pos, q0, lq) && is_row_index(host_k_pos, k0, lk);
    c.explicit_positions = c.explicit_positions || !implicit;
    c.visible_pairs += implicit ? causal_pairs(nullptr, lq, nullptr, lk)
                                : causal_pairs(host_q_pos ? host_q_pos + q0 : nullptr, lq,
                                               host_k_pos ? host_k_pos + k0 : nullptr, lk);
  }
  return c;
}

std::shared_ptr<AttentionBackend> dhp_kernels_backend() {
  static const auto backend = std::make_shared<DhpKernelsBackend>();
  return backend;
}

AttentionTimings AttentionTimings::parse(const std::string& json_text) {
  nlohmann::json doc;
  try {
    doc = nlohmann::json::parse(json_text);
  } catch (const nlohmann::json::exception& e) {
    DHP_THROW(InvalidInput, "attention timings: not JSON: {}", e.what());
  }
  DHP_CHECK(doc.is_object() && doc.contains("attention") && doc["attention"].is_array(),
            InvalidInput, "attention timings: expected an object with an \"attention\" array");
  AttentionTimings out;
  std::size_t i = 0;
  for (const auto& r : doc["attention"]) {
    auto field = [&](const char* name) -> const nlohmann::json& {
      DHP_CHECK(r.is_object() && r.contains(name), InvalidInput,
                "attention timings: row {} has no \"{}\"", i, name);
      return r[name];
    };
    try {
      AttentionTiming t;
      t.backend = field("backend").get<std::string>();
      t.device = field("device").get<std::string>();
      t.dtype = parse_dtype(field("dtype").get<std::string>(), i);
      t.head_dim = field("head_dim").get<int>();
      t.heads_q = field("heads_q").get<int>();
      t.heads_kv = field("heads_kv").get<int>();
      t.causal = field("causal").get<bool>();
      t.tokens = field("tokens").get<std::int64_t>();
      t.seqs = field("seqs").get<int>();
      t.visible_pairs = field("visible_pairs").get<double>();
      t.fwd_ms = field("fwd_ms").get<double>();
      t.fwd_bwd_ms = field("fwd_bwd_ms").get<double>();
      DHP_CHECK(t.visible_pairs > 0 && t.fwd_ms > 0 && t.fwd_bwd_ms > 0, InvalidInput,
                "attention timings: row {} ({}): visible_pairs, fwd_ms and fwd_bwd_ms must be "
                "> 0",
                i, t.backend);
      out.add(std::move(t));
    } catch (const nlohmann::json::exception& e) {
      DHP_THROW(InvalidInput, "attention timings: row {}: {}", i, e.what());
    }
    ++i;
  }
  return out;
}

AttentionTimings AttentionTimings::load(const std::string& path) {
  std::ifstream in(path);
  DHP_CHECK(in.good(), InvalidInput, "attention timings: cannot read {}", path);
  std::stringstream text;
  text << in.rdbuf();
  return parse(text.str());
}

std::optional<double> AttentionTimings::estimate(const std::string& backend,
                                                 const std::string& device,
                                                 const AttentionCall& call,
                                                 bool with_backward) const {
  if (call.visible_pairs <= 0) return std::nullopt;
  const AttentionTiming* best = nullptr;
  double best_distance = 0;
  for (const AttentionTiming& r : rows_) {
    if (r.backend != backend || r.device != device || r.dtype != call.dtype ||
        r.head_dim != call.shape.head_dim || r.heads_q != call.shape.heads_q ||
        r.heads_kv != call.shape.heads_kv || r.causal != call.shape.causal)
      continue;
    const double distance = std::abs(std::log(r.visible_pairs / call.visible_pairs));
    if (distance > std::log(2.0)) continue;
    if (best == nullptr || distance < best_distance) {
      best = &r;
      best_distance = distance;
    }
  }
  if (best == nullptr) return std::nullopt;
  const double ms = with_backward ? best->fwd_bwd_ms : best->fwd_ms;
  return ms * call.visible_pairs / best->visible_pairs;
}

AttentionBackends::AttentionBackends(std::string device, AttentionTimings timings)
    : device_(std::move(device)), timings_(std::move(timings)), backends_{dhp_kernels_backend()} {}

void AttentionBackends::add(std::shared_ptr<AttentionBackend> backend) {
  DHP_CHECK(backend != nullptr, InvalidArgument, "AttentionBackends::add: null backend");
  for (const auto& b : backends_)
    DHP_CHECK(b->name() != backend->name(), InvalidArgument,
              "AttentionBackends::add: a backend named '{}' is already there", backend->name());
  backends_.push_back(std::move(backend));
}

AttentionBackends::Choice AttentionBackends::choose(const AttentionCall& call,
                                                    bool with_backward) const {
  AttentionBackend* ours = backends_.front().get();
  const auto our_time = timings_.estimate(ours->name(), device_, call, with_backward);
  Choice choice{ours, ""};
  double best = our_time.value_or(0);
  std::vector<std::string> reasons;
  for (std::size_t i = 1; i < backends_.size(); ++i) {
    AttentionBackend& vendor = *backends_[i];
    const std::string cannot = vendor.cannot_run(call);
    if (!cannot.empty()) {
      reasons.push_back(fmt::format("{} cannot run it ({})", vendor.name(), cannot));
      continue;
    }
    const auto time = timings_.estimate(vendor.name(), device_, call, with_backward);
    if (!time || !our_time) {
      reasons.push_back(
          fmt::format("no measurement of {} and dhp on {} for this shape", vendor.name(), device_));
      continue;
    }
    if (*time < best) {
      choice.backend = &vendor;
      best = *time;
    }
    reasons.push_back(
        fmt::format("{} {:.3f} ms vs dhp {:.3f} ms (measured)", vendor.name(), *time, *our_time));
  }
  choice.why = fmt::format("{}: {}", choice.backend->name(),
                           reasons.empty() ? std::string("no vendor backend")
                                           : fmt::format("{}", fmt::join(reasons, "; ")));
  return choice;
}

}  // namespace dhp
