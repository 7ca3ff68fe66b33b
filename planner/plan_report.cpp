// The HTML report of one batch's plan. Every figure comes from the plan, its simulation
// (SimulationResult) or the timeline drawn from them; the page holds no script and loads
// nothing, so that it opens the same way anywhere (a CI artifact, an air-gapped cluster).
#include "dhp/plan_report.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <map>

#include "dhp/error.hpp"
#include "dhp/plan_svg.hpp"

namespace dhp {
namespace {

constexpr int kMaxLoadRows = 128;

constexpr const char* kStyle = R"(
body { font-family: sans-serif; margin: 24px; color: #111; max-width: 1240px; }
h1 { font-size: 22px; margin-bottom: 4px; } h2 { font-size: 17px; margin-top: 28px; }
p.inputs { color: #333; margin-top: 0; }
table { border-collapse: collapse; font-size: 13px; }
th, td { padding: 3px 10px; border-bottom: 1px solid #ddd; text-align: right; }
th { background: #f4f4f4; } td.l, th.l { text-align: left; }
table.kv td:first-child { text-align: left; color: #444; }
td.bar { text-align: left; white-space: nowrap; }
.track { display: inline-block; width: 160px; height: 10px; background: #f0f0f0;
  vertical-align: middle; margin-right: 6px; }
.track span { display: block; height: 100%; background: #4e79a7; }
.track span.mem { background: #8e44ad; } .track span.over { background: #c00000; }
table + table { margin-top: 14px; }
tr.subject td { font-weight: bold; } .note { color: #555; font-size: 13px; }
.error { color: #c00000; } details { margin: 10px 0; } summary { cursor: pointer; }
.picture { overflow-x: auto; }
)";

std::string percent(double fraction) { return fmt::format("{:.1f}%", 100 * fraction); }

std::string bar_cell(double value, double scale, const std::string& text,
                     const char* css_class = "") {
  const double width = scale > 0 ? std::clamp(100 * value / scale, 0.0, 100.0) : 0;
  return fmt::format(
      "<td class=\"bar\"><span class=\"track\"><span class=\"{}\" "
      "style=\"width:{:.1f}%\"></span></span>{}</td>",
      css_class, width, escape_xml(text));
}

// "CP4 x3, CP2 x1, CP1 x8": a wave's groups by degree, largest first.
std::string degree_mix(const WavePlan& wave) {
  std::map<int, int, std::greater<>> count;
  for (const GroupPlan& g : wave.groups) ++count[g.degree()];
  std::string out;
  for (const auto& [degree, n] : count)
    out += fmt::format("{}CP{} x{}", out.empty() ? "" : ", ", degree, n);
  return out;
}

std::string layout_text(const Plan& plan) {
  std::string text = fmt::format("LLM {} ranks x TP {}", plan.llm.ranks, plan.llm.tp);
  if (plan.encoder.ranks > 0)
    text += fmt::format(", encoder {} ranks x TP {}, {}", plan.encoder.ranks, plan.encoder.tp,
                        to_string(plan.placement));
  return text;
}

std::string head(const PlanReport& r) {
  return fmt::format(
      "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
      "<title>dhp plan: batch {} ({})</title><style>{}</style></head><body>\n",
      r.batch.step, escape_xml(r.subject.strategy), kStyle);
}

std::string inputs_section(const PlanReport& r) {
  std::vector<std::int64_t> tokens;
  std::size_t visuals = 0;
  for (const Sample& s : r.batch.samples) {
    tokens.push_back(s.llm_tokens());
    visuals += s.visuals.size();
  }
  std::sort(tokens.begin(), tokens.end());
  const std::int64_t longest = tokens.empty() ? 0 : tokens.back();
  const std::int64_t median = tokens.empty() ? 0 : tokens[tokens.size() / 2];
  return fmt::format(
      "<h1>Plan of batch {}: {}</h1>\n<p class=\"inputs\">cluster {} ({} devices: {} node{} x "
      "{}); model {}; {} samples, {} visual items, {} LLM tokens (median {}, longest {})</p>\n",
      r.batch.step, escape_xml(r.subject.strategy), escape_xml(r.cluster.name),
      r.cluster.world_size(), r.cluster.num_nodes, r.cluster.num_nodes == 1 ? "" : "s",
      r.cluster.devices_per_node, escape_xml(r.model.name), r.batch.samples.size(), visuals,
      r.batch.total_llm_tokens(), median, longest);
}

std::string summary_section(const StrategyRun& run) {
  const Plan& plan = run.plan;
  const SimulationResult& sim = run.simulation;
  const bool over = sim.max_peak_mem_gib > sim.mem_capacity_gib;
  std::string out = "<h2>Summary</h2>\n<table class=\"kv\">\n";
  auto row = [&](const std::string& key, const std::string& value) {
    out += fmt::format("<tr><td>{}</td><td class=\"l\">{}</td></tr>\n", key, value);
  };
  row("strategy", escape_xml(run.strategy));
  row("layout", escape_xml(layout_text(plan)));
  row("step (simulated)", fmt::format("{:.1f} ms", sim.step_ms));
  row("step (planner's estimate)",
      fmt::format("{:.1f} ms ({:+.1f}% from the simulation)", plan.estimate.step_ms,
                  sim.step_ms > 0 ? 100 * (plan.estimate.step_ms / sim.step_ms - 1) : 0.0));
  row("mean idle", percent(sim.mean_idle_fraction));
  row("peak memory",
      fmt::format("<span class=\"{}\">{:.1f} of {:.1f} GiB{}</span>", over ? "error" : "",
                  sim.max_peak_mem_gib, sim.mem_capacity_gib, over ? " (over capacity)" : ""));
  row("planner time", fmt::format("{:.2f} ms", run.planner_ms));
  out +=
      "</table>\n<table>\n<tr><th>wave</th><th class=\"l\">CP groups</th><th>sequences</th>"
      "<th>estimate (ms)</th></tr>\n";
  for (std::size_t w = 0; w < plan.waves.size(); ++w) {
    const double ms = w < plan.estimate.wave_ms.size() ? plan.estimate.wave_ms[w] : 0;
    out += fmt::format("<tr><td>{}</td><td class=\"l\">{}</td><td>{}</td><td>{:.1f}</td></tr>\n", w,
                       degree_mix(plan.waves[w]), plan.waves[w].sequences.size(), ms);
  }
  return out + "</table>\n";
}

std::string timeline_section(const StepTimeline& timeline) {
  TimelineSvgOptions options;
  options.id_prefix = "main-";
  return "<h2>Timeline</h2>\n<p class=\"note\">One row per device. Point at a bar for its "
         "samples, their tokens on that device and its times.</p>\n<div class=\"picture\">" +
         timeline_to_svg(timeline, options) + "</div>\n";
}

// Per device: what it holds (LLM tokens, sequences, encoder items) and what it costs (busy
// time, idle, peak memory), from the plan, the simulation and the timeline.
struct DeviceLoad {
  std::int64_t llm_tokens = 0;
  int sequences = 0;
  int encoder_items = 0;
  std::string role;
};

std::map<int, DeviceLoad> device_loads(const Plan& plan, const StepTimeline& timeline) {
  std::map<int, DeviceLoad> loads;
  for (int r = 0; r < plan.llm.ranks; ++r)
    for (int t = 0; t < plan.llm.tp; ++t)
      loads[plan.llm.device_of(r, t)].role = fmt::format("LLM {}", r);
  for (int r = 0; r < plan.encoder.ranks; ++r)
    for (int t = 0; t < plan.encoder.tp; ++t) {
      std::string& role = loads[plan.encoder.device_of(r, t)].role;
      role += fmt::format("{}encoder {}", role.empty() ? "" : ", ", r);
    }
  for (const Activity& a : timeline.activities) {
    if (a.kind != ActivityKind::LlmCompute) continue;
    DeviceLoad& load = loads[a.device];
    for (const SampleShare& s : a.samples) load.llm_tokens += s.tokens;
    load.sequences += static_cast<int>(a.samples.size());
  }
  for (const EncoderTask& task : plan.encoder_tasks)
    for (int t = 0; t < plan.encoder.tp; ++t)
      ++loads[plan.encoder.device_of(task.rank, t)].encoder_items;
  return loads;
}

std::string load_section(const StrategyRun& run, const StepTimeline& timeline) {
  const SimulationResult& sim = run.simulation;
  const std::map<int, DeviceLoad> loads = device_loads(run.plan, timeline);
  auto at = [](const std::vector<double>& v, int d) {
    return d >= 0 && d < static_cast<int>(v.size()) ? v[static_cast<std::size_t>(d)] : 0.0;
  };
  double busiest = 0, busy_sum = 0;
  std::int64_t most_tokens = 0;
  for (const auto& [d, load] : loads) {
    busiest = std::max(busiest, at(sim.device_busy_ms, d));
    busy_sum += at(sim.device_busy_ms, d);
    most_tokens = std::max(most_tokens, load.llm_tokens);
  }
  const double mean_busy = loads.empty() ? 0 : busy_sum / static_cast<double>(loads.size());
  std::string out = fmt::format(
      "<h2>Per-rank load</h2>\n<p class=\"note\">Busy time: compute and exposed communication "
      "in the simulated step of {:.1f} ms. Busiest device {:.1f} ms, mean {:.1f} ms "
      "(max / mean {:.3f}).{}</p>\n",
      sim.step_ms, busiest, mean_busy, mean_busy > 0 ? busiest / mean_busy : 0.0,
      loads.size() > kMaxLoadRows
          ? fmt::format(" The first {} of {} devices are listed.", kMaxLoadRows, loads.size())
          : std::string());
  out +=
      "<table>\n<tr><th>device</th><th class=\"l\">ranks</th><th>LLM tokens</th>"
      "<th>sequences</th><th>encoder items</th><th class=\"l\">busy (ms)</th><th>idle</th>"
      "<th class=\"l\">peak memory (GiB)</th></tr>\n";
  int shown = 0;
  for (const auto& [d, load] : loads) {
    if (shown++ == kMaxLoadRows) break;
    const double peak = at(sim.device_peak_mem_gib, d);
    out += fmt::format("<tr><td>{}</td><td class=\"l\">{}</td><td>{}</td><td>{}</td><td>{}</td>", d,
                       escape_xml(load.role), load.llm_tokens, load.sequences, load.encoder_items);
    out += bar_cell(at(sim.device_busy_ms, d), sim.step_ms,
                    fmt::format("{:.1f}", at(sim.device_busy_ms, d)));
    out += fmt::format("<td>{}</td>", percent(at(sim.device_idle_fraction, d)));
    out += bar_cell(peak, sim.mem_capacity_gib, fmt::format("{:.1f}", peak),
                    peak > sim.mem_capacity_gib ? "over" : "mem");
    out += "</tr>\n";
  }
  return out + "</table>\n";
}

std::string baselines_section(const PlanReport& r) {
  if (r.others.empty()) return std::string();
  std::vector<const StrategyRun*> runs = {&r.subject};
  for (const StrategyRun& run : r.others) runs.push_back(&run);
  std::stable_sort(runs.begin(), runs.end(), [](const StrategyRun* a, const StrategyRun* b) {
    if (a->error.empty() != b->error.empty()) return a->error.empty();
    return a->error.empty() && a->simulation.step_ms < b->simulation.step_ms;
  });
  double longest = 0;
  for (const StrategyRun* run : runs)
    if (run->error.empty()) longest = std::max(longest, run->simulation.step_ms);

  std::string out = fmt::format(
      "<h2>Against the other strategies</h2>\n<p class=\"note\">The same batch planned by every "
      "strategy on the same cluster and model, each simulated; fastest first. \"{} is faster by\" "
      "is that strategy's step over this plan's.</p>\n<table>\n<tr><th class=\"l\">strategy</th>"
      "<th class=\"l\">step (simulated, ms)</th><th>{} is faster by</th><th>waves</th>"
      "<th>idle</th><th>peak memory (GiB)</th><th>planner (ms)</th></tr>\n",
      escape_xml(r.subject.strategy), escape_xml(r.subject.strategy));
  for (const StrategyRun* run : runs) {
    out += fmt::format("<tr{}><td class=\"l\">{}</td>",
                       run == &r.subject ? " class=\"subject\"" : "", escape_xml(run->strategy));
    if (!run->error.empty()) {
      out += fmt::format("<td class=\"l error\" colspan=\"6\">no plan: {}</td></tr>\n",
                         escape_xml(run->error));
      continue;
    }
    const SimulationResult& sim = run->simulation;
    out += bar_cell(sim.step_ms, longest, fmt::format("{:.1f}", sim.step_ms));
    out += fmt::format(
        "<td>{:.3f}x</td><td>{}</td><td>{}</td><td>{:.1f}</td><td>{:.2f}</td></tr>\n",
        r.subject.simulation.step_ms > 0 ? sim.step_ms / r.subject.simulation.step_ms : 0.0,
        run->plan.waves.size(), percent(sim.mean_idle_fraction), sim.max_peak_mem_gib,
        run->planner_ms);
  }
  out += "</table>\n";

  // Every plan's timeline on one axis, folded: large, and the table says most of it.
  std::vector<StepTimeline> timelines;
  for (const StrategyRun* run : runs)
    if (run->error.empty()) timelines.push_back(plan_timeline(run->plan, r.batch, run->simulation));
  TimelineSvgOptions options;
  options.id_prefix = "all-";
  out +=
      "<details><summary>Every plan's timeline on one time axis</summary>\n<div "
      "class=\"picture\">" +
      timelines_to_svg(timelines, options) + "</div></details>\n";
  return out;
}

}  // namespace

StrategyRun run_strategy(const ClusterSpec& cluster, const ModelSpec& model,
                         const PlannerOptions& options, const Batch& batch) {
  StrategyRun run;
  run.strategy = to_string(options.strategy);
  const Planner planner(cluster, model, options);
  const auto start = std::chrono::steady_clock::now();
  run.plan = planner.plan(batch);
  run.planner_ms =
      std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
  run.simulation = Simulator(planner.cost_model()).run(run.plan, batch, /*record_timeline=*/true);
  return run;
}

std::vector<StrategyRun> run_other_strategies(const ClusterSpec& cluster, const ModelSpec& model,
                                              const PlannerOptions& options, const Batch& batch) {
  std::vector<StrategyRun> runs;
  for (Strategy s : all_strategies()) {
    if (s == options.strategy) continue;
    PlannerOptions other = options;
    other.strategy = s;
    try {
      runs.push_back(run_strategy(cluster, model, other, batch));
    } catch (const Error& e) {
      StrategyRun failed;
      failed.strategy = to_string(s);
      failed.error = e.message();
      runs.push_back(std::move(failed));
    }
  }
  return runs;
}

std::string plan_report_html(const PlanReport& report) {
  const StepTimeline timeline =
      plan_timeline(report.subject.plan, report.batch, report.subject.simulation);
  std::string html = head(report);
  html += inputs_section(report);
  html += summary_section(report.subject);
  html += timeline_section(timeline);
  html += load_section(report.subject, timeline);
  html += baselines_section(report);
  html +=
      "<p class=\"note\">Step times, idle time and memory are dhp's simulator's on the "
      "cluster and model above; the estimate is the planner's own.</p>\n</body></html>\n";
  return html;
}

}  // namespace dhp
