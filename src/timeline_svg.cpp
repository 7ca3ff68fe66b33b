// Plain-SVG drawing of step timelines: one row per device, time along x. Every kind of
// activity has one style used by both the bars and the legend (kKinds), so that a
// swatch always looks like the bars it explains. LLM work takes its CP group's colour from
// a palette of saturated hues; encoder work is grey and hatched, gradient sync dark and
// cross-hatched, so neither can be taken for a group. Ring communication is a dark strip
// under the work, waits a white inset, idle time the light-grey row background.
#include "dhp/timeline.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <map>
#include <set>
#include <string>
#include <vector>

namespace dhp {
namespace {

constexpr double kLeft = 78;
constexpr double kRight = 20;
constexpr const char* kIdleFill = "#eeeeee";
constexpr int kTooltipSamples = 40;  // sample lines per tooltip before "... and N more"

// Saturated hues, none grey or dark; consecutive entries differ clearly, and a wave shifts
// the start so that group 0 of consecutive waves differ too.
constexpr std::array<const char*, 9> kGroupPalette = {"#4e79a7", "#f28e2b", "#59a14f",
                                                      "#e15759", "#17becf", "#edc948",
                                                      "#8e44ad", "#ff6fb1", "#bcbd22"};

// How each kind is named and drawn, in the enum's order: one table for the bars, their
// tooltips and the legend. A pattern's fill names its id after the picture's prefix.
struct KindStyle {
  ActivityKind kind;
  const char* id;       // data-kind and to_string
  const char* name;     // in tooltips
  const char* legend;   // in the legend
  const char* fill;     // LlmCompute: "", the group's colour; "url(#{}x)": pattern x
  const char* opacity;  // "" or a fill-opacity
};

constexpr std::array<KindStyle, 6> kKinds = {{
    {ActivityKind::LlmCompute, "llm_compute", "LLM compute", "LLM compute (colour: its CP group)",
     "", ""},
    {ActivityKind::Encoder, "encoder", "encoder", "encoder", "url(#{}encoder)", ""},
    {ActivityKind::Boundary, "boundary", "boundary transfer",
     "boundary transfer (waiting for encoder outputs)", "url(#{}boundary)", ""},
    {ActivityKind::RingComm, "ring_comm", "ring communication", "ring communication", "#222222",
     "0.55"},
    {ActivityKind::Wait, "wait", "wait", "wait (ring peers)", "#ffffff", "0.85"},
    {ActivityKind::GradSync, "grad_sync", "gradient sync", "gradient sync", "url(#{}gradsync)", ""},
}};

static_assert([] {
  for (std::size_t i = 0; i < kKinds.size(); ++i)
    if (static_cast<std::size_t>(kKinds[i].kind) != i) return false;
  return true;
}());

const KindStyle& style_of(ActivityKind kind) { return kKinds[static_cast<std::size_t>(kind)]; }

std::string kind_fill(ActivityKind kind, const std::string& id_prefix) {
  return fmt::format(fmt::runtime(style_of(kind).fill), id_prefix);
}

std::string fill_of(const Activity& a, const std::string& id_prefix) {
  return a.kind == ActivityKind::LlmCompute ? group_colour(a.wave, a.group)
                                            : kind_fill(a.kind, id_prefix);
}

std::string opacity_attribute(const char* opacity) {
  return *opacity ? fmt::format(" fill-opacity=\"{}\"", opacity) : std::string();
}

// "812", "8.2k", "41k", "1.3M": tokens short enough for a bar.
std::string short_tokens(std::int64_t tokens) {
  if (tokens < 1000) return std::to_string(tokens);
  if (tokens < 10000) return fmt::format("{:.1f}k", tokens / 1e3);
  if (tokens < 1000000) return fmt::format("{:.0f}k", tokens / 1e3);
  return fmt::format("{:.1f}M", tokens / 1e6);
}

// "label: #id tokens, #id tokens" with as many samples as fit in `chars` characters, then
// "+N" for the rest.
std::string bar_text(const Activity& a, std::size_t chars) {
  std::string text = a.label.empty() || a.samples.empty() ? a.label : a.label + ":";
  if (text.size() > chars) return std::string();
  std::size_t shown = 0;
  std::vector<std::size_t> ends;  // text size after each sample shown
  for (; shown < a.samples.size(); ++shown) {
    const std::string part =
        fmt::format("{}#{} {}", shown == 0 ? (text.empty() ? "" : " ") : ", ", a.samples[shown].id,
                    short_tokens(a.samples[shown].tokens));
    if (text.size() + part.size() > chars) break;
    text += part;
    ends.push_back(text.size());
  }
  // Samples left out: "+N" after the last one that leaves room for it; a count alone
  // says nothing, so where no sample fits only the label stays.
  while (shown < a.samples.size()) {
    if (shown == 0) return a.label.size() <= chars ? a.label : std::string();
    const std::string more = fmt::format(" +{}", a.samples.size() - shown);
    if (text.size() + more.size() <= chars) return text + more;
    --shown;
    ends.pop_back();
    text.resize(ends.empty() ? (a.label.empty() ? 0 : a.label.size() + 1) : ends.back());
  }
  return text;
}

std::string tooltip(const Activity& a) {
  std::string t = fmt::format("dev {}: {}", a.device, style_of(a.kind).name);
  if (a.wave >= 0) t += fmt::format(", wave {}", a.wave);
  if (a.group >= 0) t += fmt::format(", group {}", a.group);
  t += fmt::format(", {:.2f}-{:.2f} ms ({:.2f} ms)", a.start_ms, a.end_ms, a.end_ms - a.start_ms);
  for (std::size_t i = 0; i < a.samples.size(); ++i) {
    if (i == kTooltipSamples) {
      t += fmt::format("\n... and {} more samples", a.samples.size() - i);
      break;
    }
    const SampleShare& s = a.samples[i];
    t += fmt::format("\nsample {}: {} tokens", s.id, s.tokens);
    if (!s.detail.empty()) t += " (" + s.detail + ")";
  }
  return escape_xml(t);
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

std::string pattern_defs(const std::string& p) {
  return fmt::format(
      "<defs>"
      "<pattern id=\"{0}encoder\" width=\"6\" height=\"6\" patternUnits=\"userSpaceOnUse\" "
      "patternTransform=\"rotate(45)\"><rect width=\"6\" height=\"6\" fill=\"#a8a8a8\"/>"
      "<line x1=\"0\" y1=\"0\" x2=\"0\" y2=\"6\" stroke=\"#707070\" stroke-width=\"2\"/></pattern>"
      "<pattern id=\"{0}boundary\" width=\"4\" height=\"4\" patternUnits=\"userSpaceOnUse\">"
      "<rect width=\"4\" height=\"4\" fill=\"#ffffff\"/>"
      "<circle cx=\"2\" cy=\"2\" r=\"1\" fill=\"#444444\"/></pattern>"
      "<pattern id=\"{0}gradsync\" width=\"6\" height=\"6\" patternUnits=\"userSpaceOnUse\">"
      "<rect width=\"6\" height=\"6\" fill=\"#2f2f2f\"/>"
      "<path d=\"M0,0 L6,6 M6,0 L0,6\" stroke=\"#9a9a9a\" stroke-width=\"1\"/></pattern>"
      "</defs>\n",
      p);
}

// Shared by every panel of one picture.
struct Frame {
  double width = 0;
  double plot_w = 0;
  double axis_end = 1;
  std::string id_prefix;
  double x(double ms) const { return kLeft + plot_w * std::clamp(ms / axis_end, 0.0, 1.0); }
};

// The devices drawn (ascending, at most max_rows) and their rows.
struct Rows {
  std::map<int, int> row_of;
  int total = 0;
  double height = 20;  // per row
};

Rows rows_of(const StepTimeline& timeline, int max_rows) {
  std::set<int> devices;
  for (const Activity& a : timeline.activities) devices.insert(a.device);
  Rows rows;
  rows.total = static_cast<int>(devices.size());
  for (int d : devices) {
    if (static_cast<int>(rows.row_of.size()) == max_rows) break;
    rows.row_of[d] = static_cast<int>(rows.row_of.size());
  }
  const int n = std::max(1, static_cast<int>(rows.row_of.size()));
  rows.height = std::clamp(720.0 / n, 4.0, 22.0);
  return rows;
}

// What the legend must explain: the kinds drawn and the group colours used.
struct Used {
  std::set<ActivityKind> kinds;
  std::vector<std::string> group_fills;  // in order of first use
};

double draw_header(std::string& svg, const StepTimeline& t, const Rows& rows, double top) {
  svg += fmt::format("<text x=\"{:.0f}\" y=\"{:.0f}\" font-size=\"15\" font-weight=\"bold\">{}",
                     kLeft, top + 18, escape_xml(t.title));
  if (!t.alert.empty())
    svg += fmt::format(" <tspan fill=\"#c00000\">{}</tspan>", escape_xml(t.alert));
  svg += "</text>\n";
  std::string subtitle = t.subtitle;
  if (rows.total > static_cast<int>(rows.row_of.size()))
    subtitle += fmt::format("{}showing the first {} of {} rows", subtitle.empty() ? "" : "; ",
                            rows.row_of.size(), rows.total);
  svg += fmt::format("<text x=\"{:.0f}\" y=\"{:.0f}\" fill=\"#333\">{}</text>\n", kLeft, top + 36,
                     escape_xml(subtitle));
  return top + 46;
}

void draw_row_backgrounds(std::string& svg, const Frame& f, const Rows& rows, double top) {
  const int label_every = std::max(1, static_cast<int>(std::ceil(10.0 / rows.height)));
  for (const auto& [device, row] : rows.row_of) {
    const double y = top + row * rows.height;
    svg += fmt::format(
        "<rect class=\"idle\" x=\"{:.1f}\" y=\"{:.1f}\" width=\"{:.1f}\" height=\"{:.1f}\" "
        "fill=\"{}\"/>\n",
        kLeft, y + 0.5, f.plot_w, rows.height - 1, kIdleFill);
    if (row % label_every == 0)
      svg += fmt::format(
          "<text x=\"{:.0f}\" y=\"{:.1f}\" text-anchor=\"end\" font-size=\"{:.0f}\">dev "
          "{}</text>\n",
          kLeft - 6, y + rows.height / 2 + 4, std::clamp(rows.height, 8.0, 11.0), device);
  }
}

// Work first, then waits inset on it, then the communication strip; each bar with its
// tooltip and data-kind (what the legend and the tests match on).
void draw_bars(std::string& svg, const StepTimeline& t, const Frame& f, const Rows& rows,
               double top, Used& used) {
  auto geometry = [&](ActivityKind kind, double y, double h) {
    if (kind == ActivityKind::Wait) return std::pair(y + h * 0.15, h * 0.7);
    if (kind == ActivityKind::RingComm) return std::pair(y + h * 0.78, std::max(h * 0.22, 1.0));
    return std::pair(y, h);
  };
  for (int pass = 0; pass < 3; ++pass) {
    for (const Activity& a : t.activities) {
      const int a_pass = a.kind == ActivityKind::Wait       ? 1
                         : a.kind == ActivityKind::RingComm ? 2
                                                            : 0;
      const auto it = rows.row_of.find(a.device);
      if (a_pass != pass || it == rows.row_of.end()) continue;
      const auto [y, h] = geometry(a.kind, top + it->second * rows.height + 0.5, rows.height - 1);
      const std::string fill = fill_of(a, f.id_prefix);
      used.kinds.insert(a.kind);
      if (a.kind == ActivityKind::LlmCompute &&
          std::find(used.group_fills.begin(), used.group_fills.end(), fill) ==
              used.group_fills.end())
        used.group_fills.push_back(fill);
      const double x0 = f.x(a.start_ms), x1 = f.x(a.end_ms);
      svg += fmt::format(
          "<rect data-kind=\"{}\" x=\"{:.1f}\" y=\"{:.1f}\" width=\"{:.1f}\" height=\"{:.1f}\" "
          "fill=\"{}\"{}><title>{}</title></rect>\n",
          to_string(a.kind), x0, y, std::max(x1 - x0, 0.3), h, fill,
          opacity_attribute(style_of(a.kind).opacity), tooltip(a));
    }
  }
}

// Wave starts as black ticks, then the text of every bar wide and tall enough for it, with
// a white halo so that it reads on any fill. Text lets the pointer through to the tooltip.
void draw_bar_texts(std::string& svg, const StepTimeline& t, const Frame& f, const Rows& rows,
                    double top) {
  const double font = std::min(10.0, rows.height - 3);
  for (const Activity& a : t.activities) {
    const auto it = rows.row_of.find(a.device);
    if (it == rows.row_of.end()) continue;
    const double y = top + it->second * rows.height;
    const double x0 = f.x(a.start_ms), x1 = f.x(a.end_ms);
    if (a.kind == ActivityKind::LlmCompute && a.wave >= 0)
      svg += fmt::format(
          "<line x1=\"{0:.2f}\" y1=\"{1:.1f}\" x2=\"{0:.2f}\" y2=\"{2:.1f}\" stroke=\"#000\" "
          "stroke-width=\"1.5\"/>\n",
          x0, y, y + rows.height);
    if (font < 7 || (a.kind != ActivityKind::LlmCompute && a.kind != ActivityKind::Encoder))
      continue;
    const auto chars = static_cast<std::size_t>(std::max(0.0, (x1 - x0 - 5) / (0.6 * font)));
    const std::string text = bar_text(a, chars);
    if (text.empty()) continue;
    svg += fmt::format(
        "<text class=\"bar-text\" x=\"{:.2f}\" y=\"{:.1f}\" font-size=\"{:.1f}\" fill=\"#111\" "
        "stroke=\"#fff\" stroke-width=\"2\" stroke-opacity=\"0.75\" paint-order=\"stroke\" "
        "pointer-events=\"none\">{}</text>\n",
        x0 + 3, y + rows.height / 2 + font * 0.35, font, escape_xml(text));
  }
}

double draw_axis(std::string& svg, const StepTimeline& t, const Frame& f, double top,
                 bool with_label) {
  svg += fmt::format(
      "<line x1=\"{:.0f}\" y1=\"{:.1f}\" x2=\"{:.0f}\" y2=\"{:.1f}\" stroke=\"#000\"/>\n", kLeft,
      top, kLeft + f.plot_w, top);
  const double step = tick_step(f.axis_end, 10);
  for (double tick = 0; tick <= f.axis_end * (1 + 1e-9); tick += step) {
    const double x = f.x(tick);
    svg += fmt::format(
        "<line x1=\"{0:.2f}\" y1=\"{1:.1f}\" x2=\"{0:.2f}\" y2=\"{2:.1f}\" stroke=\"#000\"/>\n"
        "<text x=\"{0:.2f}\" y=\"{3:.1f}\" text-anchor=\"middle\">{4:g}</text>\n",
        x, top, top + 4, top + 16, tick);
  }
  if (!with_label) return top + 22;
  svg += fmt::format("<text x=\"{:.0f}\" y=\"{:.1f}\" text-anchor=\"middle\">{} time (ms)</text>\n",
                     kLeft + f.plot_w / 2, top + 32, escape_xml(t.clock));
  return top + 40;
}

// A dashed line where the step ends when the shared axis runs further (another timeline
// is longer): the difference is read off directly.
void draw_step_end(std::string& svg, const Frame& f, double end_ms, double top, double bottom) {
  if (end_ms >= f.axis_end * (1 - 1e-9)) return;
  svg += fmt::format(
      "<line x1=\"{0:.2f}\" y1=\"{1:.1f}\" x2=\"{0:.2f}\" y2=\"{2:.1f}\" stroke=\"#c00000\" "
      "stroke-dasharray=\"4,3\"/>\n<text x=\"{3:.2f}\" y=\"{4:.1f}\" fill=\"#c00000\" "
      "font-size=\"10\" text-anchor=\"end\">end {5:.1f} ms</text>\n",
      f.x(end_ms), top - 4, bottom, f.x(end_ms) - 3, top - 6, end_ms);
}

double end_of(const StepTimeline& t) {
  if (t.end_ms > 0) return t.end_ms;
  double end = 0;
  for (const Activity& a : t.activities) end = std::max(end, a.end_ms);
  return end;
}

double draw_panel(std::string& svg, const StepTimeline& t, const Frame& f, int max_rows, double top,
                  bool axis_label, Used& used) {
  const Rows rows = rows_of(t, max_rows);
  const double rows_top = draw_header(svg, t, rows, top);
  draw_row_backgrounds(svg, f, rows, rows_top);
  draw_bars(svg, t, f, rows, rows_top, used);
  draw_bar_texts(svg, t, f, rows, rows_top);
  const double rows_bottom = rows_top + std::max<std::size_t>(1, rows.row_of.size()) * rows.height;
  draw_step_end(svg, f, end_of(t), rows_top, rows_bottom);
  return draw_axis(svg, t, f, rows_bottom + 4, axis_label);
}

// One entry per kind drawn and idle; LLM compute shows the group colours used (up to 8).
double draw_legend(std::string& svg, const Frame& f, double top, const Used& used) {
  double x = kLeft, y = top;
  auto entry = [&](const std::vector<std::pair<std::string, std::string>>& swatches,
                   const char* opacity, const std::string& label) {
    const double text_w = 6 + 5.6 * static_cast<double>(label.size()) + 14;
    const double w = 16.0 * static_cast<double>(swatches.size()) + text_w;
    if (x + w > f.width - kRight && x > kLeft) x = kLeft, y += 16;  // wrap
    for (const auto& [kind, fill] : swatches) {
      svg += fmt::format(
          "<rect class=\"legend\" data-kind=\"{}\" x=\"{:.0f}\" y=\"{:.0f}\" width=\"14\" "
          "height=\"10\" fill=\"{}\"{} stroke=\"#888\"/>\n",
          kind, x, y, fill, opacity_attribute(opacity));
      x += 16;
    }
    svg +=
        fmt::format("<text x=\"{:.0f}\" y=\"{:.0f}\">{}</text>\n", x + 4, y + 9, escape_xml(label));
    x += text_w;
  };
  for (const KindStyle& style : kKinds) {
    if (!used.kinds.count(style.kind)) continue;
    std::vector<std::pair<std::string, std::string>> swatches;
    if (style.kind == ActivityKind::LlmCompute) {
      for (std::size_t i = 0; i < used.group_fills.size() && i < 8; ++i)
        swatches.emplace_back(style.id, used.group_fills[i]);
    } else {
      swatches.emplace_back(style.id, kind_fill(style.kind, f.id_prefix));
    }
    entry(swatches, style.opacity, style.legend);
  }
  entry({{"idle", kIdleFill}}, "", "idle");
  return y + 20;
}

}  // namespace

const char* to_string(ActivityKind kind) noexcept { return style_of(kind).id; }

std::string escape_xml(std::string_view text) {
  std::string out;
  out.reserve(text.size());
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

std::string group_colour(int wave, int group) {
  const std::size_t n = kGroupPalette.size();
  return kGroupPalette[(static_cast<std::size_t>(std::max(group, 0)) +
                        3 * static_cast<std::size_t>(std::max(wave, 0))) %
                       n];
}

std::string timelines_to_svg(std::span<const StepTimeline> timelines,
                             const TimelineSvgOptions& options) {
  Frame f;
  f.width = options.width;
  f.plot_w = f.width - kLeft - kRight;
  f.id_prefix = options.id_prefix;
  f.axis_end = options.axis_end_ms;
  if (f.axis_end <= 0)
    for (const StepTimeline& t : timelines) f.axis_end = std::max(f.axis_end, end_of(t));
  f.axis_end = std::max(f.axis_end, 1e-9);

  std::string body;
  Used used;
  double y = 8;
  for (std::size_t i = 0; i < timelines.size(); ++i) {
    y = draw_panel(body, timelines[i], f, options.max_rows, y, i + 1 == timelines.size(), used);
    y += 12;
  }
  const double height = draw_legend(body, f, y, used) + 4;

  std::string svg = fmt::format(
      "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{0:.0f}\" height=\"{1:.0f}\" "
      "viewBox=\"0 0 {0:.0f} {1:.0f}\" font-family=\"sans-serif\" font-size=\"11\">\n",
      f.width, height);
  svg += pattern_defs(f.id_prefix);
  svg += fmt::format("<rect x=\"0\" y=\"0\" width=\"{:.0f}\" height=\"{:.0f}\" fill=\"white\"/>\n",
                     f.width, height);
  svg += body;
  svg += "</svg>\n";
  return svg;
}

std::string timeline_to_svg(const StepTimeline& timeline, const TimelineSvgOptions& options) {
  return timelines_to_svg(std::span<const StepTimeline>(&timeline, 1), options);
}

}  // namespace dhp
