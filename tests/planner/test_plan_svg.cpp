#include "dhp/plan_svg.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <map>
#include <regex>
#include <set>
#include <string>
#include <vector>

#include "cost_test_fixtures.hpp"

namespace dhp {
namespace {

using testing::h100_cluster;
using testing::qwen2_vl_7b;

// Tags must nest: every <x ...> closed by </x>, self-closing <x .../> allowed.
bool tags_balanced(const std::string& svg, std::string* why) {
  std::vector<std::string> open;
  size_t pos = 0;
  while ((pos = svg.find('<', pos)) != std::string::npos) {
    const size_t end = svg.find('>', pos);
    if (end == std::string::npos) {
      *why = "unterminated tag";
      return false;
    }
    const std::string tag = svg.substr(pos + 1, end - pos - 1);
    pos = end + 1;
    if (tag.empty()) return false;
    if (tag[0] == '/') {
      const std::string name = tag.substr(1);
      if (open.empty() || open.back() != name) {
        *why = "closing </" + name + "> does not match " + (open.empty() ? "nothing" : open.back());
        return false;
      }
      open.pop_back();
    } else if (tag.back() != '/') {
      open.push_back(tag.substr(0, tag.find_first_of(" \n")));
    }
  }
  if (!open.empty()) *why = "unclosed <" + open.back() + ">";
  return open.empty();
}

int count(const std::string& text, const std::string& what) {
  int n = 0;
  for (size_t p = text.find(what); p != std::string::npos; p = text.find(what, p + 1)) ++n;
  return n;
}

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
  EXPECT_GE(count(svg, "<rect"), static_cast<int>(result.timeline.size()));
  EXPECT_EQ(count(svg, "<title>"), static_cast<int>(result.timeline.size()));
  EXPECT_NE(svg.find("dhp &lt;test&gt;"), std::string::npos);  // escaped strategy in the title
  EXPECT_NE(svg.find("simulated time (ms)"), std::string::npos);
  EXPECT_NE(svg.find("url(#hatch)"), std::string::npos);  // encoder work
  EXPECT_NE(svg.find("ring_comm"), std::string::npos);    // ring overlay
  EXPECT_EQ(svg.find("showing the first"), std::string::npos);
}

// "<title>dev D ...</title>" of every drawn event, the rest of the title per device.
std::map<int, std::multiset<std::string>> titles_by_device(const std::string& svg) {
  std::map<int, std::multiset<std::string>> out;
  const std::regex title("<title>dev ([0-9]+) ([^<]*)</title>");
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
  EXPECT_TRUE(std::any_of(partner.begin(), partner.end(), [](const std::string& t) {
    return t.find(": encoder ") != std::string::npos;
  }));
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
