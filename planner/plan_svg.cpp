// Plain-SVG picture of a simulated plan: one row per device, simulated time along x; a
// rank's events (recorded on its first device) are drawn on all of its TP devices. LLM work
// in the colour of its group (distinct hues within a wave), encoder work grey and hatched,
// ring communication as a thin dark bar under the work, waits white on the light-grey idle
// background, gradient sync at the end.
#include "dhp/plan_svg.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <map>
#include <set>
#include <string>
#include <vector>

namespace dhp {
namespace {

constexpr int kMaxRows = 128;
constexpr double kWidth = 1200;
constexpr double kLeft = 78;
constexpr double kRight = 20;
constexpr double kTop = 64;

std::string escape(const std::string& text) {
  std::string out;
  for (char c : text) {
    switch (c) {
      case '&':
        out += "&amp;";
        break;
      case '<':
        out += "&lt;";
        break;
      case '>':
        out += "&gt;";
        break;
      case '"':
        out += "&quot;";
        break;
      default:
        out += c;
    }
  }
  return out;
}

// HSL (s = 0.55, l = 0.55) to #rrggbb.
std::string hue_colour(double hue) {
  const double s = 0.55, l = 0.55;
  const double c = (1 - std::abs(2 * l - 1)) * s;
  const double hp = std::fmod(hue, 360.0) / 60.0;
  const double x = c * (1 - std::abs(std::fmod(hp, 2.0) - 1));
  double r = 0, g = 0, b = 0;
  if (hp < 1)
    r = c, g = x;
  else if (hp < 2)
    r = x, g = c;
  else if (hp < 3)
    g = c, b = x;
  else if (hp < 4)
    g = x, b = c;
  else if (hp < 5)
    r = x, b = c;
  else
    r = c, b = x;
  const double m = l - c / 2;
  auto byte = [&](double v) { return static_cast<int>(std::lround((v + m) * 255)); };
  return fmt::format("#{:02x}{:02x}{:02x}", byte(r), byte(g), byte(b));
}

// Golden-angle hues: neighbouring groups of a wave get clearly different colours, and the
// wave shifts the sequence so that group 0 of consecutive waves differ too.
std::string group_colour(int wave, int group) {
  return hue_colour(std::max(group, 0) * 137.508 + std::max(wave, 0) * 47.0);
}

// A tick step of 1, 2 or 5 times a power of ten giving about `target` ticks.
double tick_step(double span, int target) {
  if (span <= 0) return 1;
  const double raw = span / target;
  const double power = std::pow(10.0, std::floor(std::log10(raw)));
  for (double m : {1.0, 2.0, 5.0, 10.0})
    if (m * power >= raw) return m * power;
  return 10 * power;
}

// The devices an event occupies. The simulator records a rank's events on the rank's first
// device only, but a TP group works (and waits) together. Encoder work and encoder waits
// (no LLM group) belong to the encoder layout; gradient sync may be either module's, so it
// spans both where the device starts a rank of each (colocated placement).
std::vector<int> devices_of(const Plan& plan, const TimelineEvent& e) {
  std::vector<int> devices;
  auto add_rank_devices = [&](const ModuleLayout& module) {
    const int offset = e.device - module.first_device;
    if (module.tp < 1 || offset < 0 || offset >= module.num_devices() || offset % module.tp != 0)
      return;
    for (int t = 0; t < module.tp; ++t) devices.push_back(module.device_of(offset / module.tp, t));
  };
  const bool encoder = e.kind == EventKind::Encoder || (e.kind == EventKind::Wait && e.group < 0);
  if (!encoder) add_rank_devices(plan.llm);  // LLM work, its waits and the gradient sync
  if (encoder || e.kind == EventKind::GradSync) add_rank_devices(plan.encoder);
  std::sort(devices.begin(), devices.end());
  devices.erase(std::unique(devices.begin(), devices.end()), devices.end());
  if (devices.empty()) devices.push_back(e.device);  // not a rank's first device: as recorded
  return devices;
}

}  // namespace

std::string plan_to_svg(const Plan& plan, const Batch& batch, const SimulationResult& result) {
  // Every event once per device it occupies; rows: every such device, ascending.
  std::vector<TimelineEvent> events;
  for (const TimelineEvent& e : result.timeline) {
    for (int device : devices_of(plan, e)) {
      events.push_back(e);
      events.back().device = device;
    }
  }
  std::set<int> devices;
  for (const TimelineEvent& e : events) devices.insert(e.device);
  const int total_rows = static_cast<int>(devices.size());
  std::map<int, int> row_of;
  for (int d : devices) {
    if (static_cast<int>(row_of.size()) == kMaxRows) break;
    row_of[d] = static_cast<int>(row_of.size());
  }
  const int rows = std::max(1, static_cast<int>(row_of.size()));
  const double row_h = std::clamp(640.0 / rows, 4.0, 20.0);
  const double plot_w = kWidth - kLeft - kRight;
  const double plot_h = rows * row_h;
  const double height = kTop + plot_h + 92;
  const double span = std::max(result.step_ms, 1e-9);
  auto x_of = [&](double ms) { return kLeft + plot_w * std::clamp(ms / span, 0.0, 1.0); };

  std::string svg;
  svg += fmt::format(
      "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{:.0f}\" height=\"{:.0f}\" "
      "viewBox=\"0 0 {:.0f} {:.0f}\" font-family=\"sans-serif\" font-size=\"11\">\n",
      kWidth, height, kWidth, height);
  svg +=
      "<defs><pattern id=\"hatch\" width=\"6\" height=\"6\" patternUnits=\"userSpaceOnUse\" "
      "patternTransform=\"rotate(45)\"><rect width=\"6\" height=\"6\" fill=\"#9a9a9a\"/>"
      "<line x1=\"0\" y1=\"0\" x2=\"0\" y2=\"6\" stroke=\"#6a6a6a\" stroke-width=\"2\"/>"
      "</pattern><pattern id=\"dots\" width=\"4\" height=\"4\" patternUnits=\"userSpaceOnUse\">"
      "<rect width=\"4\" height=\"4\" fill=\"#ffffff\"/><circle cx=\"2\" cy=\"2\" r=\"1.2\" "
      "fill=\"#d9480f\"/></pattern></defs>\n";
  svg += fmt::format("<rect x=\"0\" y=\"0\" width=\"{:.0f}\" height=\"{:.0f}\" fill=\"white\"/>\n",
                     kWidth, height);

  // Title.
  const bool over_capacity = result.max_peak_mem_gib > result.mem_capacity_gib;
  int llm_groups = 0;
  for (const WavePlan& w : plan.waves) llm_groups += static_cast<int>(w.groups.size());
  svg += fmt::format(
      "<text x=\"{:.0f}\" y=\"20\" font-size=\"15\" font-weight=\"bold\">{} &#8212; step {:.1f} ms "
      "(simulated), idle {:.1f}%, <tspan fill=\"{}\">peak memory {:.1f} / {:.1f} "
      "GiB{}</tspan></text>\n",
      kLeft, escape(plan.strategy), result.step_ms, 100 * result.mean_idle_fraction,
      over_capacity ? "#c00000" : "#000000", result.max_peak_mem_gib, result.mem_capacity_gib,
      over_capacity ? " (OVER CAPACITY)" : "");
  std::string subtitle = fmt::format(
      "{} samples, {} waves, {} groups; LLM {} ranks x TP {}; encoder {} ranks x TP {} ({})",
      batch.samples.size(), plan.waves.size(), llm_groups, plan.llm.ranks, plan.llm.tp,
      plan.encoder.ranks, plan.encoder.tp, to_string(plan.placement));
  if (total_rows > kMaxRows)
    subtitle += fmt::format("; showing the first {} of {} rows", kMaxRows, total_rows);
  svg +=
      fmt::format("<text x=\"{:.0f}\" y=\"38\" fill=\"#333\">{}</text>\n", kLeft, escape(subtitle));

  // Row backgrounds (idle) and labels.
  const int label_every = std::max(1, static_cast<int>(std::ceil(10.0 / row_h)));
  for (const auto& [device, row] : row_of) {
    const double y = kTop + row * row_h;
    svg += fmt::format(
        "<rect x=\"{:.1f}\" y=\"{:.1f}\" width=\"{:.1f}\" height=\"{:.1f}\" fill=\"#eeeeee\"/>\n",
        kLeft, y + 0.5, plot_w, row_h - 1);
    if (row % label_every == 0)
      svg += fmt::format(
          "<text x=\"{:.0f}\" y=\"{:.1f}\" text-anchor=\"end\" font-size=\"{:.0f}\">dev "
          "{}</text>\n",
          kLeft - 6, y + row_h / 2 + 4, std::min(11.0, std::max(8.0, row_h)), device);
  }

  // Events: work first, then waits, then the thin ring-communication overlay.
  auto rect = [&](const TimelineEvent& e, double top, double h, const std::string& fill,
                  const std::string& extra) {
    const double x0 = x_of(e.start_ms), x1 = x_of(e.end_ms);
    svg += fmt::format(
        "<rect x=\"{:.2f}\" y=\"{:.2f}\" width=\"{:.2f}\" height=\"{:.2f}\" fill=\"{}\"{}>"
        "<title>dev {} wave {} group {}: {} {:.2f}-{:.2f} ms</title></rect>\n",
        x0, top, std::max(x1 - x0, 0.3), h, fill, extra, e.device, e.wave, e.group,
        to_string(e.kind), e.start_ms, e.end_ms);
  };
  for (int pass = 0; pass < 3; ++pass) {
    for (const TimelineEvent& e : events) {
      const auto it = row_of.find(e.device);
      if (it == row_of.end()) continue;
      const double y = kTop + it->second * row_h + 0.5;
      const double h = row_h - 1;
      switch (e.kind) {
        case EventKind::Compute:
          if (pass == 0) rect(e, y, h, group_colour(e.wave, e.group), "");
          break;
        case EventKind::Encoder:
          if (pass == 0) rect(e, y, h, "url(#hatch)", "");
          break;
        case EventKind::Boundary:
          if (pass == 0) rect(e, y, h, "url(#dots)", "");
          break;
        case EventKind::GradSync:
          if (pass == 0) rect(e, y, h, "#5b3a8c", "");
          break;
        case EventKind::Wait:
          if (pass == 1) rect(e, y + h * 0.15, h * 0.7, "white", " fill-opacity=\"0.85\"");
          break;
        case EventKind::RingComm:
          if (pass == 2)
            rect(e, y + h * 0.78, std::max(h * 0.22, 1.0), "#222222", " fill-opacity=\"0.55\"");
          break;
      }
    }
  }

  // Wave boundaries: waves are not globally synchronised (a rank starts its next wave as
  // soon as its devices and inputs are ready), so each row marks where its wave starts.
  for (const TimelineEvent& e : events) {
    if (e.kind != EventKind::Compute || e.wave < 0) continue;
    const auto it = row_of.find(e.device);
    if (it == row_of.end()) continue;
    const double y = kTop + it->second * row_h;
    const double x0 = x_of(e.start_ms);
    svg += fmt::format(
        "<line x1=\"{:.2f}\" y1=\"{:.1f}\" x2=\"{:.2f}\" y2=\"{:.1f}\" stroke=\"#000\" "
        "stroke-width=\"1.5\"/>\n",
        x0, y, x0, y + row_h);
    if (row_h >= 10 && x_of(e.end_ms) - x0 > 28)
      svg +=
          fmt::format("<text x=\"{:.2f}\" y=\"{:.1f}\" font-size=\"9\" fill=\"#000\">w{}</text>\n",
                      x0 + 3, y + row_h / 2 + 3, e.wave);
  }

  // Time axis.
  const double axis_y = kTop + plot_h + 4;
  svg += fmt::format(
      "<line x1=\"{:.0f}\" y1=\"{:.1f}\" x2=\"{:.0f}\" y2=\"{:.1f}\" stroke=\"#000\"/>\n", kLeft,
      axis_y, kLeft + plot_w, axis_y);
  const double step = tick_step(span, 10);
  for (double t = 0; t <= span * (1 + 1e-9); t += step) {
    const double x = x_of(t);
    svg += fmt::format(
        "<line x1=\"{:.2f}\" y1=\"{:.1f}\" x2=\"{:.2f}\" y2=\"{:.1f}\" stroke=\"#000\"/>\n", x,
        axis_y, x, axis_y + 4);
    svg += fmt::format("<text x=\"{:.2f}\" y=\"{:.1f}\" text-anchor=\"middle\">{:g}</text>\n", x,
                       axis_y + 16, t);
  }
  svg += fmt::format(
      "<text x=\"{:.0f}\" y=\"{:.1f}\" text-anchor=\"middle\">simulated time (ms)</text>\n",
      kLeft + plot_w / 2, axis_y + 32);

  // Legend.
  const double ly = axis_y + 50;
  struct Entry {
    const char* fill;
    const char* label;
  };
  const Entry entries[] = {{"#5fa8d3", "LLM compute (colour = group)"},
                           {"url(#hatch)", "encoder"},
                           {"url(#dots)", "boundary transfer (waiting for encoder outputs)"},
                           {"#222222", "ring communication"},
                           {"white", "wait (ring sync)"},
                           {"#eeeeee", "idle"},
                           {"#5b3a8c", "gradient sync"}};
  double lx = kLeft, row_y = ly;
  for (const Entry& e : entries) {
    const double w = 18 + 6.2 * static_cast<double>(std::string(e.label).size()) + 14;
    if (lx + w > kWidth - kRight) lx = kLeft, row_y += 16;  // wrap the legend
    svg += fmt::format(
        "<rect x=\"{:.0f}\" y=\"{:.0f}\" width=\"14\" height=\"10\" fill=\"{}\" "
        "stroke=\"#888\"/>\n",
        lx, row_y, e.fill);
    svg += fmt::format("<text x=\"{:.0f}\" y=\"{:.0f}\">{}</text>\n", lx + 18, row_y + 9, e.label);
    lx += w;
  }
  svg += "</svg>\n";
  return svg;
}

}  // namespace dhp
