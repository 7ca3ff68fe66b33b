// Calibration: fit the cost model's coefficients to measured times with Eigen least squares.
//
// For a fixed half_efficiency_tokens and a fixed set of exposed ring steps, every modelled
// time is linear in five unknowns: 1/gemm_efficiency, 1/attention_efficiency, the layer
// overhead, the ring-step overhead and 1/comm_efficiency (cost_terms.hpp). We solve that
// linear problem with rows weighted by 1/measured (so the fit minimises relative error),
// re-derive which ring steps are exposed from the new coefficients until they stop changing,
// and search half_efficiency_tokens (the one non-linear unknown) on a log grid refined by
// golden-section search. Schema and method: docs/cost_model.md.
#include <Eigen/Dense>
#include <algorithm>
#include <array>
#include <cmath>
#include <nlohmann/json.hpp>

#include "cost_terms.hpp"
#include "dhp/cost_model.hpp"
#include "dhp/error.hpp"
#include "dhp/log.hpp"

namespace dhp {
namespace {

constexpr int kUnknowns = 5;

detail::CostTerms terms_of(const CostModel& cost, const Measurement& m) {
  if (m.kind == "llm_sequence")
    return detail::llm_sequence_terms(cost, m.tokens, {m.degree, m.crosses_nodes});
  if (m.kind == "encoder_item") {
    VisualItem item;
    item.patches = m.patches;
    item.llm_tokens = m.tokens;
    item.frames = m.frames;
    return detail::encoder_item_terms(cost, item);
  }
  if (m.kind == "p2p") return detail::p2p_terms(cost, m.bytes, m.crosses_nodes);
  if (m.kind == "llm_rank")
    return detail::llm_rank_terms(cost, m.split_tokens, {m.degree, m.crosses_nodes},
                                  m.whole_tokens);
  if (m.kind == "encoder_rank") {
    detail::CostTerms sum;
    for (const EncoderPartMeasurement& part : m.encoder_parts)
      sum += part.ring > 1 ? detail::encoder_shard_terms(cost, part.item, {part.ring, false})
                           : detail::encoder_item_terms(cost, part.item);
    return sum;
  }
  DHP_THROW(InvalidInput, "calibration: unknown measurement kind '{}'", m.kind);
}

std::array<double, kUnknowns> columns_of(const detail::CostTerms& t, double peak_tflops) {
  const double flops_per_ms = peak_tflops * 1e9;
  return {t.gemm_work / flops_per_ms, t.attention_work / flops_per_ms, t.layer_passes / 1e3,
          t.ring_steps / 1e3, t.link_bytes_per_gbs / 1e6};
}

std::array<double, kUnknowns> unknowns_of(const CostCoefficients& c) {
  return {1.0 / c.gemm_efficiency, 1.0 / c.attention_efficiency, c.layer_overhead_us,
          c.ring_step_overhead_us, 1.0 / c.comm_efficiency};
}

CostCoefficients with_unknowns(CostCoefficients c, const std::array<double, kUnknowns>& x) {
  c.gemm_efficiency = 1.0 / x[0];
  c.attention_efficiency = 1.0 / x[1];
  c.layer_overhead_us = x[2];
  c.ring_step_overhead_us = x[3];
  c.comm_efficiency = 1.0 / x[4];
  return c;
}

struct Fit {
  CostCoefficients coefficients;
  double mean_rel = 0;
  double max_rel = 0;
};

Fit errors_of(const ClusterSpec& cluster, const ModelSpec& model, int llm_tp, int encoder_tp,
              const CostCoefficients& coef, const std::vector<Measurement>& ms) {
  const CostModel cost(cluster, model, llm_tp, encoder_tp, coef);
  Fit fit{coef, 0, 0};
  for (const Measurement& m : ms) {
    const double modelled = detail::evaluate_ms(terms_of(cost, m), coef, cluster.peak_tflops);
    const double rel = std::abs(modelled - m.measured_ms) / m.measured_ms;
    fit.mean_rel += rel;
    fit.max_rel = std::max(fit.max_rel, rel);
  }
  fit.mean_rel /= static_cast<double>(ms.size());
  return fit;
}

// One linear least-squares solve for a fixed half_efficiency_tokens, iterated over which
// ring steps are exposed. Unknowns a measurement set does not exercise keep their start
// value; a fitted unknown that comes out non-positive is pinned to its start value and the
// rest re-solved (physical coefficients are positive).
Fit fit_for_half(const ClusterSpec& cluster, const ModelSpec& model, int llm_tp, int encoder_tp,
                 CostCoefficients start, double half, const std::vector<Measurement>& ms) {
  start.half_efficiency_tokens = half;
  CostCoefficients current = start;
  const auto initial = unknowns_of(start);
  const Eigen::Index rows = static_cast<Eigen::Index>(ms.size());
  for (int iteration = 0; iteration < 8; ++iteration) {
    const CostModel cost(cluster, model, llm_tp, encoder_tp, current);
    Eigen::MatrixXd a(rows, kUnknowns);
    Eigen::VectorXd rhs(rows);
    for (Eigen::Index r = 0; r < rows; ++r) {
      const Measurement& m = ms[static_cast<size_t>(r)];
      const detail::CostTerms t = terms_of(cost, m);
      const auto cols = columns_of(t, cluster.peak_tflops);
      const double weight = 1.0 / m.measured_ms;
      for (int k = 0; k < kUnknowns; ++k) a(r, k) = cols[k] * weight;
      rhs(r) = (m.measured_ms - t.fixed_ms) * weight;
    }
    std::array<bool, kUnknowns> free{};
    for (int k = 0; k < kUnknowns; ++k) free[k] = a.col(k).cwiseAbs().maxCoeff() > 0;
    std::array<double, kUnknowns> x = initial;
    for (int attempt = 0; attempt < kUnknowns; ++attempt) {
      std::vector<int> cols;
      Eigen::VectorXd b = rhs;
      for (int k = 0; k < kUnknowns; ++k) {
        if (free[k])
          cols.push_back(k);
        else
          b -= a.col(k) * initial[k];
      }
      if (cols.empty()) break;
      Eigen::MatrixXd sub(rows, static_cast<Eigen::Index>(cols.size()));
      Eigen::VectorXd scale(static_cast<Eigen::Index>(cols.size()));
      for (size_t j = 0; j < cols.size(); ++j) {
        const Eigen::Index jj = static_cast<Eigen::Index>(j);
        scale(jj) = a.col(cols[j]).norm();  // column scaling: the unknowns differ by 1e6
        sub.col(jj) = a.col(cols[j]) / scale(jj);
      }
      const Eigen::VectorXd y = sub.colPivHouseholderQr().solve(b);
      bool pinned = false;
      for (size_t j = 0; j < cols.size(); ++j) {
        const double value = y(static_cast<Eigen::Index>(j)) / scale(static_cast<Eigen::Index>(j));
        if (!(value > 0)) {
          free[cols[j]] = false;
          pinned = true;
        }
        x[cols[j]] = value;
      }
      if (!pinned) break;
      x = initial;
    }
    const CostCoefficients next = with_unknowns(current, x);
    const bool settled =
        std::abs(next.gemm_efficiency - current.gemm_efficiency) < 1e-9 &&
        std::abs(next.attention_efficiency - current.attention_efficiency) < 1e-9 &&
        std::abs(next.comm_efficiency - current.comm_efficiency) < 1e-9;
    current = next;
    if (settled && iteration > 0) break;
  }
  return errors_of(cluster, model, llm_tp, encoder_tp, current, ms);
}

}  // namespace

std::vector<Measurement> measurements_from_json(const std::string& text) {
  nlohmann::json doc;
  try {
    doc = nlohmann::json::parse(text);
  } catch (const nlohmann::json::exception& e) {  // syntax, or a number too large
    DHP_THROW(InvalidInput, "calibration profile: malformed JSON: {}", e.what());
  }
  DHP_CHECK(doc.is_object() && doc.contains("measurements") && doc["measurements"].is_array(),
            InvalidInput, "calibration profile: expected an object with a 'measurements' array");
  std::vector<Measurement> out;
  size_t index = 0;
  for (const auto& j : doc["measurements"]) {
    try {
      Measurement m;
      m.kind = j.at("kind").get<std::string>();
      m.measured_ms = j.at("measured_ms").get<double>();
      if (m.kind == "llm_sequence") {
        m.tokens = j.at("tokens").get<std::int64_t>();
        m.degree = j.value("degree", 1);
        m.crosses_nodes = j.value("crosses_nodes", false);
        DHP_CHECK(m.tokens >= 1 && m.degree >= 1, InvalidInput,
                  "tokens={} and degree={} must be >= 1", m.tokens, m.degree);
      } else if (m.kind == "encoder_item") {
        m.patches = j.at("patches").get<std::int64_t>();
        m.tokens = j.value("llm_tokens", std::int64_t{0});
        m.frames = j.value("frames", 1);
        DHP_CHECK(m.patches >= 1 && m.frames >= 1, InvalidInput,
                  "patches={} and frames={} must be >= 1", m.patches, m.frames);
      } else if (m.kind == "p2p") {
        m.bytes = j.at("bytes").get<double>();
        m.crosses_nodes = j.value("crosses_nodes", false);
        DHP_CHECK(m.bytes >= 0, InvalidInput, "bytes={} must be >= 0", m.bytes);
      } else if (m.kind == "llm_rank") {
        m.split_tokens = j.value("split_tokens", std::vector<std::int64_t>{});
        m.whole_tokens = j.value("whole_tokens", std::vector<std::int64_t>{});
        m.degree = j.value("degree", 1);
        m.crosses_nodes = j.value("crosses_nodes", false);
        DHP_CHECK(m.degree >= 1 && !(m.split_tokens.empty() && m.whole_tokens.empty()),
                  InvalidInput, "an llm_rank needs degree >= 1 (got {}) and some tokens", m.degree);
      } else if (m.kind == "encoder_rank") {
        for (const auto& part : j.at("parts")) {
          EncoderPartMeasurement e;
          e.item.patches = part.at("patches").get<std::int64_t>();
          e.item.llm_tokens = part.value("llm_tokens", std::int64_t{0});
          e.item.frames = part.value("frames", 1);
          e.ring = part.value("ring", 1);
          DHP_CHECK(e.item.patches >= 1 && e.item.frames >= 1 && e.ring >= 1, InvalidInput,
                    "an encoder part needs patches, frames and ring >= 1 (got {}, {}, {})",
                    e.item.patches, e.item.frames, e.ring);
          m.encoder_parts.push_back(e);
        }
        DHP_CHECK(!m.encoder_parts.empty(), InvalidInput, "an encoder_rank needs parts");
      } else {
        DHP_THROW(InvalidInput,
                  "kind '{}' is not llm_sequence, encoder_item, p2p, llm_rank or encoder_rank",
                  m.kind);
      }
      DHP_CHECK(m.measured_ms > 0, InvalidInput, "measured_ms={} must be > 0", m.measured_ms);
      out.push_back(m);
    } catch (const nlohmann::json::exception& e) {
      DHP_THROW(InvalidInput, "calibration profile: measurement {}: {}", index, e.what());
    } catch (const Error& e) {
      DHP_THROW(InvalidInput, "calibration profile: measurement {}: {}", index, e.message());
    }
    ++index;
  }
  return out;
}

CalibrationReport calibrate(const ClusterSpec& cluster, const ModelSpec& model, int llm_tp,
                            int encoder_tp, const std::vector<Measurement>& measurements) {
  DHP_CHECK(!measurements.empty(), InvalidArgument, "calibrate: no measurements");
  const CostCoefficients start = defaults_for(cluster);
  CalibrationReport report;
  report.measurements = static_cast<int>(measurements.size());
  report.mean_abs_rel_error_before =
      errors_of(cluster, model, llm_tp, encoder_tp, start, measurements).mean_rel;

  auto fit_at = [&](double log_half) {
    return fit_for_half(cluster, model, llm_tp, encoder_tp, start, std::exp(log_half),
                        measurements);
  };
  // Coarse log grid over half_efficiency_tokens in [8, 16384], then golden section.
  const double lo = std::log(8.0), hi = std::log(16384.0);
  constexpr int kGrid = 33;
  int best = 0;
  std::vector<Fit> grid;
  for (int i = 0; i < kGrid; ++i) {
    grid.push_back(fit_at(lo + (hi - lo) * i / (kGrid - 1)));
    if (grid.back().mean_rel < grid[static_cast<size_t>(best)].mean_rel) best = i;
  }
  double a = lo + (hi - lo) * std::max(best - 1, 0) / (kGrid - 1);
  double b = lo + (hi - lo) * std::min(best + 1, kGrid - 1) / (kGrid - 1);
  const double ratio = (std::sqrt(5.0) - 1.0) / 2.0;
  double c = b - ratio * (b - a), d = a + ratio * (b - a);
  Fit fc = fit_at(c), fd = fit_at(d);
  for (int i = 0; i < 30; ++i) {
    if (fc.mean_rel < fd.mean_rel) {
      b = d, d = c, fd = fc;
      c = b - ratio * (b - a);
      fc = fit_at(c);
    } else {
      a = c, c = d, fc = fd;
      d = a + ratio * (b - a);
      fd = fit_at(d);
    }
  }
  Fit result = fc.mean_rel < fd.mean_rel ? fc : fd;
  if (grid[static_cast<size_t>(best)].mean_rel < result.mean_rel)
    result = grid[static_cast<size_t>(best)];

  report.coefficients = result.coefficients;
  report.mean_abs_rel_error_after = result.mean_rel;
  report.max_abs_rel_error_after = result.max_rel;
  DHP_LOG_INFO("calibration: {} measurements, mean relative error {:.2f}% -> {:.2f}% (max {:.2f}%)",
               report.measurements, 100 * report.mean_abs_rel_error_before,
               100 * report.mean_abs_rel_error_after, 100 * report.max_abs_rel_error_after);
  return report;
}

}  // namespace dhp
