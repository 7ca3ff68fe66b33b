#include "dhp/plan_svg.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <map>
#include <regex>
#include <set>
#include <string>
#include <vector>

#include "cost_test_fixtures.hpp"
#include "tests/core/svg_test_util.hpp"

namespace dhp {
namespace {

using testing::h100_cluster;
using testing::qwen2_vl_7b;

using testing::bars;
using testing::count;
using testing::tags_balanced;

struct Scenario {
  Batch batch;
  Plan plan;
};

// Two waves on one node: a ring of 3 (uneven degree), whole sequences, a disjoint encoder.
Scenario scenario(int llm_ranks) {
  Scenario s;
  for (int i = 0; i < 6; ++i) {
    Sample sample;
    sample.id = 100 + i;
    sample.text_tokens = i == 0 ? 24000 : 1500 + 500 * i;
    sample.visuals = {{.patches = 4096, .llm_tokens = 1024, .frames = 1}};
    s.batch.samples.push_back(sample);
  }
  Plan& p = s.plan;
  p.strategy = "dhp <test>";
  p.placement = EncoderPlacement::Disjoint;
  p.llm = {.tp = 1, .first_device = 0, .ranks = llm_ranks};
  p.encoder = {.tp = 1, .first_device = llm_ranks, .ranks = 2};
  p.waves.resize(2);
  p.waves[0].groups = {{.ranks = {0, 1, 2}}, {.ranks = {3}}, {.ranks = {4}}};
  p.waves[0].sequences = {{.sample = 0, .group = 0, .sharding = Sharding::Zigzag, .member = -1},
                          {.sample = 1, .group = 1, .sharding = Sharding::Whole, .member = 0},
                          {.sample = 2, .group = 2, .sharding = Sharding::Whole, .member = 0}};
  p.waves[1].groups = {{.ranks = {0, 1}}, {.ranks = {2, 3, 4}}};
  p.waves[1].sequences = {{.sample = 3, .group = 0, .sharding = Sharding::Zigzag, .member = -1},
                          {.sample = 4, .group = 1, .sharding = Sharding::Whole, .member = 2},
                          {.sample = 5, .group = 1, .sharding = Sharding::Zigzag, .member = -1}};
  for (int i = 0; i < 6; ++i)
    p.encoder_tasks.push_back({.sample = i, .visual = 0, .wave = i < 3 ? 0 : 1, .rank = i % 2});
  return s;
}

TEST(PlanSvg, IsWellFormedAndShowsEveryEvent) {
  const CostModel cost(h100_cluster(1), qwen2_vl_7b(), 1, 1);
  const Scenario s = scenario(5);
  const SimulationResult result = Simulator(cost).run(s.plan, s.batch, true);
  ASSERT_FALSE(result.timeline.empty());
  const std::string svg = plan_to_svg(s.plan, s.batch, result);
  EXPECT_EQ(svg.rfind("<svg", 0), 0u);
  std::string why;
  EXPECT_TRUE(tags_balanced(svg, &why)) << why;
  EXPECT_EQ(bars(svg).size(), result.timeline.size());
  EXPECT_EQ(count(svg, "<title>"), static_cast<int>(result.timeline.size()));
  EXPECT_NE(svg.find("dhp &lt;test&gt;: step"), std::string::npos);  // escaped strategy
  EXPECT_NE(svg.find("simulated time (ms)"), std::string::npos);
  EXPECT_NE(svg.find("url(#encoder)"), std::string::npos);
  EXPECT_NE(svg.find("data-kind=\"ring_comm\""), std::string::npos);
  EXPECT_EQ(svg.find("showing the first"), std::string::npos);
}

// Every LLM bar names the samples its rank holds in that wave with the rank's tokens of
// each; every encoder bar the item it encodes, forward then backward.
TEST(PlanSvg, BarsNameTheirSamplesAndTokens) {
  const CostModel cost(h100_cluster(1), qwen2_vl_7b(), 1, 1);
  const Scenario s = scenario(5);
  const SimulationResult result = Simulator(cost).run(s.plan, s.batch, true);
  const StepTimeline timeline = plan_timeline(s.plan, s.batch, result);
  auto tokens = [&](int sample) {
    return s.batch.samples[static_cast<size_t>(sample)].llm_tokens();
  };
  int compute = 0, encoder = 0;
  for (const Activity& a : timeline.activities) {
    if (a.kind == ActivityKind::LlmCompute) {
      ++compute;
      std::vector<SampleShare> expected;
      // Wave 0: device 0..2 ring over sample 100 (zigzag); 3: sample 101; 4: sample 102.
      // Wave 1: devices 0, 1 hold sample 103 split in two; 2..4 share sample 105, and
      // device 4 (member 2) also holds sample 104 whole.
      if (a.wave == 0 && a.device <= 2)
        expected = {{100, (tokens(0) + 2) / 3, ""}};
      else if (a.wave == 0)
        expected = {{a.device == 3 ? 101 : 102, tokens(a.device - 2), ""}};
      else if (a.device <= 1)
        expected = {{103, (tokens(3) + 1) / 2, ""}};
      else if (a.device == 4)
        expected = {{104, tokens(4), ""}, {105, (tokens(5) + 2) / 3, ""}};
      else
        expected = {{105, (tokens(5) + 2) / 3, ""}};
      ASSERT_EQ(a.samples.size(), expected.size()) << "device " << a.device << " wave " << a.wave;
      for (size_t i = 0; i < expected.size(); ++i) {
        EXPECT_EQ(a.samples[i].id, expected[i].id) << "device " << a.device;
        EXPECT_EQ(a.samples[i].tokens, expected[i].tokens) << "device " << a.device;
      }
    } else if (a.kind == ActivityKind::Encoder) {
      ASSERT_EQ(a.samples.size(), 1u);
      EXPECT_EQ(a.samples[0].tokens, 1024);
      EXPECT_EQ(a.samples[0].id % 2, a.device - 5);  // task i on encoder rank i % 2
      ++encoder;
    }
  }
  EXPECT_EQ(compute, 10);  // 5 ranks x 2 waves
  EXPECT_EQ(encoder, 12);  // 6 items, forward and backward
  const std::string svg = timeline_to_svg(timeline);
  EXPECT_NE(
      svg.find("sample 100: " + std::to_string((tokens(0) + 2) / 3) +
               " tokens (zigzag share 1 of 3, " + std::to_string(tokens(0)) + " tokens in all)"),
      std::string::npos);
  EXPECT_NE(svg.find("sample 103: 1024 tokens (forward, image 0: 4096 patches)"),
            std::string::npos);
  EXPECT_NE(svg.find("sample 103: 1024 tokens (backward, image 0: 4096 patches)"),
            std::string::npos);
}

// "<title>dev D ...</title>" of every drawn event, the rest of the title per device.
std::map<int, std::multiset<std::string>> titles_by_device(const std::string& svg) {
  std::map<int, std::multiset<std::string>> out;
  const std::regex title("<title>dev ([0-9]+): ([^<]*)</title>");
  for (auto it = std::sregex_iterator(svg.begin(), svg.end(), title); it != std::sregex_iterator();
       ++it)
    out[std::stoi((*it)[1].str())].insert((*it)[2].str());
  return out;
}

// The simulator records a rank's events on its first device; the picture must show the
// TP partners busy too: with LLM tp 2 and encoder tp 2, device 2r+1 draws exactly the
// events of device 2r (LLM ranks 0..4 on devices 0..9, encoder ranks on 10..13).
TEST(PlanSvg, DrawsEachRankOnAllItsTpDevices) {
  const CostModel cost(h100_cluster(2), qwen2_vl_7b(), 2, 2);
  Scenario s = scenario(5);
  s.plan.llm.tp = 2;
  s.plan.encoder = {.tp = 2, .first_device = 10, .ranks = 2};
  const SimulationResult result = Simulator(cost).run(s.plan, s.batch, true);
  const auto titles = titles_by_device(plan_to_svg(s.plan, s.batch, result));
  ASSERT_EQ(titles.size(), 14u);  // every device of both modules has a row with events
  for (int first = 0; first < 14; first += 2) {
    ASSERT_TRUE(titles.count(first) && titles.count(first + 1)) << "device " << first;
    EXPECT_FALSE(titles.at(first).empty());
    EXPECT_EQ(titles.at(first + 1), titles.at(first)) << "devices " << first << ", " << first + 1;
  }
  std::size_t drawn = 0;
  for (const auto& [device, events] : titles) drawn += events.size();
  EXPECT_EQ(drawn, 2 * result.timeline.size());  // each event once per TP device
  const auto& partner = titles.at(11);           // encoder rank 0's TP partner
  EXPECT_TRUE(std::any_of(partner.begin(), partner.end(),
                          [](const std::string& t) { return t.rfind("encoder, wave ", 0) == 0; }));
}

TEST(PlanSvg, CapsRowsForLargeClusters) {
  const CostModel cost(h100_cluster(32), qwen2_vl_7b(), 1, 1);
  Scenario s = scenario(200);
  for (int r = 5; r < 200; ++r) s.plan.waves[0].groups.push_back({.ranks = {r}});
  for (int i = 0; i < 195; ++i) {
    Sample sample;
    sample.id = 1000 + i;
    sample.text_tokens = 800;
    s.batch.samples.push_back(sample);
    s.plan.waves[0].sequences.push_back(
        {.sample = 6 + i, .group = 3 + i, .sharding = Sharding::Whole, .member = 0});
  }
  const SimulationResult result = Simulator(cost).run(s.plan, s.batch, true);
  const std::string svg = plan_to_svg(s.plan, s.batch, result);
  std::string why;
  EXPECT_TRUE(tags_balanced(svg, &why)) << why;
  EXPECT_NE(svg.find("showing the first 128 of 202 rows"), std::string::npos);
}

}  // namespace
}  // namespace dhp
