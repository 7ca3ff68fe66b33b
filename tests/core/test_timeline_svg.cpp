#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <set>
#include <string>
#include <vector>

#include "dhp/timeline.hpp"
#include "svg_test_util.hpp"

namespace dhp {
namespace {

using testing::bar_texts;
using testing::bars;
using testing::legend;

Activity activity(int device, ActivityKind kind, double start, double end, int wave = -1,
                  int group = -1, std::string label = "", std::vector<SampleShare> samples = {}) {
  Activity a;
  a.device = device;
  a.kind = kind;
  a.start_ms = start;
  a.end_ms = end;
  a.wave = wave;
  a.group = group;
  a.label = std::move(label);
  a.samples = std::move(samples);
  return a;
}

// Two devices of a measured-looking step: every kind of activity once or more.
StepTimeline step() {
  using K = ActivityKind;
  StepTimeline t;
  t.title = "measured <step> 7";
  t.subtitle = "2 devices";
  t.clock = "measured";
  t.end_ms = 100;
  t.activities = {
      activity(0, K::Encoder, 0, 10, -1, -1, "", {{501, 576, "image 0"}}),
      activity(0, K::LlmCompute, 10, 90, 0, 0, "w0", {{17, 8192, "whole"}, {4, 512, ""}}),
      activity(1, K::Boundary, 0, 12, 0, 1),
      activity(1, K::LlmCompute, 12, 80, 0, 1, "", {{23, 40960, "zigzag share 1 of 2"}}),
      activity(1, K::RingComm, 20, 30, 0, 1),
      activity(1, K::Wait, 40, 45, 0, 1),
      activity(0, K::GradSync, 90, 100),
      activity(1, K::GradSync, 90, 100),
  };
  return t;
}

TEST(TimelineSvg, EveryBarHasATooltipWithItsSamplesAndTokens) {
  const StepTimeline t = step();
  const std::string svg = timeline_to_svg(t);
  std::string why;
  ASSERT_TRUE(testing::tags_balanced(svg, &why)) << why;
  const auto drawn = bars(svg);
  ASSERT_EQ(drawn.size(), t.activities.size());
  for (const auto& bar : drawn) EXPECT_EQ(bar.title.rfind("dev ", 0), 0u) << bar.title;
  auto titled = [&](const std::string& kind) {
    std::string all;
    for (const auto& bar : drawn)
      if (bar.kind == kind) all += bar.title + "\n";
    return all;
  };
  EXPECT_NE(titled("llm_compute").find("sample 17: 8192 tokens (whole)"), std::string::npos);
  EXPECT_NE(titled("llm_compute").find("sample 4: 512 tokens"), std::string::npos);
  EXPECT_NE(titled("llm_compute").find("sample 23: 40960 tokens (zigzag share 1 of 2)"),
            std::string::npos);
  EXPECT_NE(titled("encoder").find("sample 501: 576 tokens (image 0)"), std::string::npos);
  EXPECT_NE(titled("llm_compute").find("wave 0, group 1, 12.00-80.00 ms (68.00 ms)"),
            std::string::npos);
  EXPECT_NE(svg.find("measured &lt;step&gt; 7"), std::string::npos);  // escaped
  EXPECT_NE(svg.find("measured time (ms)"), std::string::npos);
}

TEST(TimelineSvg, BarsShowSampleIdsAndTokensWhereTheyFit) {
  StepTimeline t = step();
  const auto texts = bar_texts(timeline_to_svg(t));
  EXPECT_NE(std::find(texts.begin(), texts.end(), "w0: #17 8.2k, #4 512"), texts.end());
  EXPECT_NE(std::find(texts.begin(), texts.end(), "#23 41k"), texts.end());

  // Many samples on a short bar: as many as fit, then how many are left.
  t.activities.resize(1);
  t.activities[0] = activity(0, ActivityKind::LlmCompute, 0, 20, 0, 0);
  for (int i = 0; i < 30; ++i) t.activities[0].samples.push_back({1000 + i, 2048, ""});
  t.end_ms = 100;
  const auto crowded = bar_texts(timeline_to_svg(t));
  ASSERT_EQ(crowded.size(), 1u);
  EXPECT_EQ(crowded[0].rfind("#1000 2.0k, #1001 2.0k", 0), 0u) << crowded[0];
  const std::size_t plus = crowded[0].rfind(" +");
  ASSERT_NE(plus, std::string::npos) << crowded[0];
  const int shown = static_cast<int>(std::count(crowded[0].begin(), crowded[0].end(), '#'));
  EXPECT_EQ(std::stoi(crowded[0].substr(plus + 2)), 30 - shown) << crowded[0];

  // Too narrow for any sample: no text, the tooltip still names them all.
  t.activities[0].end_ms = 1;
  EXPECT_TRUE(bar_texts(timeline_to_svg(t)).empty());
  EXPECT_NE(bars(timeline_to_svg(t))[0].title.find("sample 1029: 2048 tokens"), std::string::npos);
}

// A legend swatch looks like the bars it explains: same fill, for every kind drawn.
TEST(TimelineSvg, LegendSwatchesMatchTheBars) {
  const std::string svg = timeline_to_svg(step());
  const auto drawn = bars(svg);
  const auto swatches = legend(svg);
  std::set<std::string> kinds_drawn, kinds_in_legend;
  for (const auto& bar : drawn) kinds_drawn.insert(bar.kind);
  for (const auto& swatch : swatches) {
    kinds_in_legend.insert(swatch.kind);
    if (swatch.kind == "idle") {
      EXPECT_NE(svg.find("<rect class=\"idle\" "), std::string::npos);
      EXPECT_NE(svg.find("fill=\"" + swatch.fill + "\"/>"), std::string::npos);
      continue;
    }
    const bool matches = std::any_of(drawn.begin(), drawn.end(), [&](const auto& bar) {
      return bar.kind == swatch.kind && bar.fill == swatch.fill;
    });
    EXPECT_TRUE(matches) << swatch.kind << " swatch " << swatch.fill << " is no bar's fill";
  }
  kinds_drawn.insert("idle");
  EXPECT_EQ(kinds_in_legend, kinds_drawn);
  // Both group colours used are in the legend.
  EXPECT_EQ(std::count_if(swatches.begin(), swatches.end(),
                          [](const auto& s) { return s.kind == "llm_compute"; }),
            2);
}

double distance(const std::string& a, const std::string& b) {
  auto channel = [](const std::string& hex, int i) {
    return std::stoi(hex.substr(1 + 2 * i, 2), nullptr, 16);
  };
  double sum = 0;
  for (int i = 0; i < 3; ++i) sum += std::pow(channel(a, i) - channel(b, i), 2);
  return std::sqrt(sum);
}

// Groups are told apart from each other, from the encoder's grey and from the gradient
// sync's dark fill (the bases of their patterns), and from idle.
TEST(TimelineSvg, GroupColoursStandApartFromEncoderSyncAndEachOther) {
  const std::string svg = timeline_to_svg(step());
  auto pattern_base = [&](const std::string& id) {
    const std::size_t at = svg.find("<pattern id=\"" + id + "\"");
    const std::size_t fill = svg.find("fill=\"", at);
    return svg.substr(fill + 6, 7);
  };
  const std::string encoder = pattern_base("encoder"), sync = pattern_base("gradsync");
  EXPECT_GE(distance(encoder, sync), 100);
  for (int wave = 0; wave < 3; ++wave) {
    for (int group = 0; group < 12; ++group) {
      const std::string c = group_colour(wave, group);
      EXPECT_GE(distance(c, encoder), 90) << c;
      EXPECT_GE(distance(c, sync), 120) << c;
      EXPECT_GE(distance(c, "#eeeeee"), 90) << c;
      EXPECT_GE(distance(c, group_colour(wave, group + 1)), 90) << c;  // neighbours differ
    }
    EXPECT_NE(group_colour(wave, 0), group_colour(wave + 1, 0));
  }
}

// Several timelines share one axis: the shorter one's end is marked where it falls.
TEST(TimelineSvg, TimelinesShareOneTimeAxis) {
  StepTimeline fast = step(), slow = step();
  fast.title = "fast";
  slow.title = "slow";
  for (Activity& a : slow.activities) a.start_ms *= 2, a.end_ms *= 2;
  slow.end_ms = 200;
  const std::vector<StepTimeline> both = {fast, slow};
  const std::string svg = timelines_to_svg(both);
  std::string why;
  ASSERT_TRUE(testing::tags_balanced(svg, &why)) << why;
  EXPECT_LT(svg.find(">fast"), svg.find(">slow"));
  EXPECT_NE(svg.find("end 100.0 ms"), std::string::npos);
  EXPECT_EQ(svg.find("end 200.0 ms"), std::string::npos);   // the axis ends there
  EXPECT_EQ(testing::count(svg, "measured time (ms)"), 1);  // one axis label, at the bottom
  // Same scale: the fast step's last bar ends halfway along the slow one's.
  const auto drawn = bars(svg);
  EXPECT_EQ(drawn.size(), 2 * fast.activities.size());
}

TEST(TimelineSvg, CapsRowsAndPrefixesIds) {
  StepTimeline t;
  t.title = "big";
  for (int d = 0; d < 300; ++d)
    t.activities.push_back(activity(d, ActivityKind::LlmCompute, 0, 1, 0, d));
  TimelineSvgOptions options;
  options.id_prefix = "p1-";
  const std::string svg = timeline_to_svg(t, options);
  EXPECT_NE(svg.find("showing the first 128 of 300 rows"), std::string::npos);
  EXPECT_EQ(bars(svg).size(), 128u);
  EXPECT_NE(svg.find("<pattern id=\"p1-encoder\""), std::string::npos);
  EXPECT_EQ(svg.find("<pattern id=\"encoder\""), std::string::npos);
}

}  // namespace
}  // namespace dhp
