// Statistics the planner benchmarks report, shared so that every binary's "median" means
// the same thing.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <limits>
#include <vector>

namespace dhp::bench {

// Nearest-rank percentile, NaN entries (failed batches) ignored; NaN if none is left. p99 of
// 12 samples is the largest, not an interpolation past it.
inline double percentile(std::vector<double> values, double p) {
  std::erase_if(values, [](double v) { return std::isnan(v); });
  if (values.empty()) return std::numeric_limits<double>::quiet_NaN();
  std::sort(values.begin(), values.end());
  const auto rank = static_cast<std::size_t>(std::ceil(p / 100.0 * values.size()));
  return values[std::clamp<std::size_t>(rank, 1, values.size()) - 1];
}

inline double median(const std::vector<double>& values) { return percentile(values, 50); }

// Arithmetic mean, NaN entries ignored; NaN if none is left.
inline double mean(const std::vector<double>& values) {
  double sum = 0;
  std::size_t count = 0;
  for (double v : values) {
    if (std::isnan(v)) continue;
    sum += v;
    ++count;
  }
  return count == 0 ? std::numeric_limits<double>::quiet_NaN() : sum / static_cast<double>(count);
}

// Mean after dropping int(n x fraction) of the smallest and of the largest values, NaN entries
// ignored (Megatron's benchmark_dcp.sh summarises its iterations with fraction 0.1).
inline double trimmed_mean(std::vector<double> values, double fraction) {
  std::erase_if(values, [](double v) { return std::isnan(v); });
  if (values.empty()) return std::numeric_limits<double>::quiet_NaN();
  std::sort(values.begin(), values.end());
  const auto trim = static_cast<std::size_t>(static_cast<double>(values.size()) * fraction);
  if (values.size() <= 2 * trim) return mean(values);
  return mean(std::vector<double>(values.begin() + static_cast<std::ptrdiff_t>(trim),
                                  values.end() - static_cast<std::ptrdiff_t>(trim)));
}

}  // namespace dhp::bench
