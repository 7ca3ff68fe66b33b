// A step's timeline as a person reads it: per device, timed activities (LLM work of a CP
// group, encoder work, boundary transfers, ring communication, waits, gradient sync), each
// naming the samples it works on. One drawing serves the planner's simulated plans
// (plan_timeline in plan_svg.hpp) and a runtime's measured steps, so both share one style
// and one legend: a measured step is drawn by filling a StepTimeline with what was timed
// and calling timeline_to_svg. Pure C++, in dhp_core: drawing needs neither the planner nor
// a GPU.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace dhp {

enum class ActivityKind {
  LlmCompute,  // a rank's LLM forward and backward of one wave, in its CP group's colour
  Encoder,     // vision encoder work on one visual item (or part of one)
  Boundary,    // an LLM rank waiting for the encoder outputs it consumes
  RingComm,    // context-parallel communication (drawn as a strip under the work)
  Wait,        // a ring member waiting for its peers
  GradSync,    // gradient synchronisation (all-reduce / reduce-scatter)
};
const char* to_string(ActivityKind kind) noexcept;  // "llm_compute", "encoder", ...

// A sample's part in an activity: its id in the data source and the tokens this device
// handles of it ("detail" says how: "zigzag share 2 of 4", "video 0, part 1 of 3").
struct SampleShare {
  std::int64_t id = 0;
  std::int64_t tokens = 0;
  std::string detail;
};

struct Activity {
  int device = 0;  // the row it is drawn on
  ActivityKind kind = ActivityKind::LlmCompute;
  double start_ms = 0;  // from the start of the step
  double end_ms = 0;
  int wave = -1;                     // LlmCompute: the wave and the CP group in it pick the colour
  int group = -1;                    //   (-1 where the activity belongs to no group)
  std::string label;                 // short text drawn before the samples ("w1"); may be empty
  std::vector<SampleShare> samples;  // drawn as "#id tokens" where they fit; all in the tooltip
};

struct StepTimeline {
  std::string title;     // "dhp: step 812.4 ms (simulated), idle 6.1 %"
  std::string subtitle;  // layout and sizes
  std::string alert;     // drawn in red after the title ("peak memory over capacity"); or empty
  std::string clock = "simulated";  // the axis reads "<clock> time (ms)": simulated, measured
  double end_ms = 0;                // the step's end; 0: the latest activity's end
  std::vector<Activity> activities;
};

struct TimelineSvgOptions {
  double width = 1200;  // pixels
  int max_rows = 128;   // devices drawn per timeline; the title says when more were left out
  // The time axis runs to this (several timelines on one axis); 0: each timeline's end.
  double axis_end_ms = 0;
  // Prefix of the SVG's element ids: pictures inlined in one HTML page need distinct ones.
  std::string id_prefix;
};

// One row per device, time along x; every bar has an SVG <title> tooltip (device, kind,
// times, every sample with its tokens) and, where it fits, its samples as text.
std::string timeline_to_svg(const StepTimeline& timeline, const TimelineSvgOptions& options = {});

// Several timelines stacked on one shared time axis (e.g. dhp's plan above a baseline's),
// with one legend.
std::string timelines_to_svg(std::span<const StepTimeline> timelines,
                             const TimelineSvgOptions& options = {});

// `text` with & < > " escaped, for SVG and HTML text and attributes.
std::string escape_xml(std::string_view text);

// The fill of a CP group's LLM work: neighbouring groups of a wave differ, and no group
// colour is grey (encoder) or dark (gradient sync, communication).
std::string group_colour(int wave, int group);

}  // namespace dhp
