// Batches and plans: token sums, validation, JSON round trips, plan_hash and the plan
// invariants.
#include <gtest/gtest.h>

#include <utility>

#include "dhp/io.hpp"
#include "expect_error.hpp"

using namespace dhp;

namespace {

bool same(const Batch& a, const Batch& b) {
  if (a.step != b.step || a.samples.size() != b.samples.size()) return false;
  for (std::size_t i = 0; i < a.samples.size(); ++i) {
    const Sample &x = a.samples[i], &y = b.samples[i];
    if (x.id != y.id || x.text_tokens != y.text_tokens || x.visuals.size() != y.visuals.size())
      return false;
    for (std::size_t v = 0; v < x.visuals.size(); ++v)
      if (x.visuals[v].patches != y.visuals[v].patches ||
          x.visuals[v].llm_tokens != y.visuals[v].llm_tokens ||
          x.visuals[v].frames != y.visuals[v].frames)
        return false;
  }
  return true;
}

// Three samples: text only, one image, a video and an image.
Batch small_batch() {
  Batch b;
  b.step = 7;
  b.samples = {
      {.id = 10, .text_tokens = 100, .visuals = {}},
      {.id = 11, .text_tokens = 20, .visuals = {{.patches = 1024, .llm_tokens = 256, .frames = 1}}},
      {.id = 12,
       .text_tokens = 50,
       .visuals = {{.patches = 4000, .llm_tokens = 1000, .frames = 8},
                   {.patches = 64, .llm_tokens = 16, .frames = 1}}}};
  return b;
}

// Two waves on 4 LLM ranks (tp 2, 8 devices) with a colocated encoder of 8 ranks.
Plan small_plan() {
  Plan p;
  p.strategy = "dhp";
  p.step = 7;
  p.placement = EncoderPlacement::Colocated;
  p.llm = {.tp = 2, .first_device = 0, .ranks = 4};
  p.encoder = {.tp = 1, .first_device = 0, .ranks = 8};
  WavePlan w0;
  w0.groups = {{.ranks = {0, 1, 2}, .attention = CpAttention::Ring},
               {.ranks = {3}, .attention = CpAttention::Ring}};
  w0.sequences = {{.sample = 2, .group = 0, .sharding = Sharding::Zigzag, .member = -1},
                  {.sample = 0, .group = 1, .sharding = Sharding::Whole, .member = 0}};
  WavePlan w1;
  w1.groups = {{.ranks = {3, 2, 1, 0}, .attention = CpAttention::Ulysses}};
  w1.sequences = {{.sample = 1, .group = 0, .sharding = Sharding::Whole, .member = 2}};
  p.waves = {w0, w1};
  p.encoder_tasks = {{.sample = 2, .visual = 0, .wave = 0, .rank = 5},
                     {.sample = 2, .visual = 1, .wave = 0, .rank = 6},
                     {.sample = 1, .visual = 0, .wave = 1, .rank = 7}};
  p.estimate = {.step_ms = 12.5,
                .encoder_ms = 1.25,
                .llm_ms = 10,
                .grad_sync_ms = 1.25,
                .wave_ms = {6, 4},
                .peak_mem_gib = {40.5, 41, 39.25, 12},
                .mem_capacity_gib = 74};
  return p;
}

}  // namespace

TEST(Batch, TokenSums) {
  const Batch b = small_batch();
  EXPECT_EQ(b.samples[0].llm_tokens(), 100);
  EXPECT_EQ(b.samples[2].llm_tokens(), 1066);
  EXPECT_EQ(b.samples[2].encoder_patches(), 4064);
  EXPECT_EQ(b.total_llm_tokens(), 100 + 276 + 1066);
  EXPECT_NO_THROW(validate(b));
}

TEST(Batch, ValidateNamesTheSample) {
  expect_error([] { validate(Batch{}); }, ErrorKind::InvalidInput, {"no samples"});
  Batch b = small_batch();
  b.samples[1].text_tokens = -3;
  expect_error([&] { validate(b); }, ErrorKind::InvalidInput, {"sample 1", "id 11", "-3"});
  b = small_batch();
  b.samples[0].text_tokens = 0;
  expect_error([&] { validate(b); }, ErrorKind::InvalidInput, {"sample 0", "id 10", "no tokens"});
  b = small_batch();
  b.samples[2].visuals[1].llm_tokens = 0;
  expect_error([&] { validate(b); }, ErrorKind::InvalidInput,
               {"sample 2", "visual 1", "llm_tokens=0"});
}

TEST(BatchJson, RoundTripsAndReadsTheCompactForm) {
  const Batch b = small_batch();
  EXPECT_TRUE(same(batch_from_json(to_json(b)), b));
  EXPECT_TRUE(same(batch_from_json(to_json(b, -1)), b));
  const Batch read = batch_from_json(
      R"({"samples": [{"text": 5}, {"id": 99, "text": 0, "visuals": [{"patches": 8, "tokens": 2}]}]})");
  EXPECT_EQ(read.step, 0);
  EXPECT_EQ(read.samples[0].id, 0);  // defaults to the index
  EXPECT_EQ(read.samples[1].visuals[0].frames, 1);
  EXPECT_EQ(read.total_llm_tokens(), 7);
}

TEST(BatchJson, StreamsInBothForms) {
  Batch second = small_batch();
  second.step = 8;
  const std::vector<Batch> stream = {small_batch(), second};
  const auto read = batches_from_json(to_json(stream));
  ASSERT_EQ(read.size(), 2u);
  EXPECT_TRUE(same(read[0], stream[0]));
  EXPECT_TRUE(same(read[1], stream[1]));
  EXPECT_EQ(batches_from_json(R"([{"samples": [{"text": 1}]}])").size(), 1u);
}

TEST(BatchJson, BadInputsNameThePath) {
  expect_error([] { batches_from_json(R"({"batches": [{"samples": [{"text": 1}]}, )"); },
               ErrorKind::InvalidInput, {"malformed", "byte"});
  expect_error(
      [] {
        batches_from_json(R"({"batches": [{"samples": [{"text": 1}]},
                             {"samples": [{"text": 1}, {"text": -5}]}]})");
      },
      ErrorKind::InvalidInput, {"batches[1].samples[1].text=-5"});
  expect_error([] { batches_from_json(R"([{"samples": [{"text": 1}, {"id": 3}]}])"); },
               ErrorKind::InvalidInput, {"[0].samples[1].text", "missing"});
  expect_error([] { batch_from_json(R"({"step": 3, "samples": []})"); }, ErrorKind::InvalidInput,
               {"no samples"});
  expect_error([] { batch_from_json(R"({"samples": [{"text": 0}]})"); }, ErrorKind::InvalidInput,
               {"sample 0", "no tokens"});
  expect_error(
      [] {
        batch_from_json(
            R"({"samples": [{"text": 1, "visuals": [{"patches": 4, "tokens": "many"}]}]})");
      },
      ErrorKind::InvalidInput, {"samples[0].visuals[0].tokens", "\"many\""});
}

TEST(BatchJson, UnknownFieldsAreNamedWithTheClosestOne) {
  // A misspelt field would otherwise be ignored: the batch would plan without its images.
  expect_error([] { batch_from_json(R"({"samples": [{"text": 5, "visual": []}]})"); },
               ErrorKind::InvalidInput,
               {"samples[0].visual: unknown field", "did you mean 'samples[0].visuals'?"});
  expect_error(
      [] {
        batch_from_json(R"({"samples": [{"text": 5, "visuals": [{"patches": 8, "tokns": 2}]}]})");
      },
      ErrorKind::InvalidInput, {"samples[0].visuals[0].tokns", "'samples[0].visuals[0].tokens'"});
  expect_error([] { batch_from_json(R"({"stpe": 1, "samples": [{"text": 5}]})"); },
               ErrorKind::InvalidInput, {"stpe", "did you mean 'step'?"});
  // Nothing close: the known fields are listed.
  expect_error([] { batch_from_json(R"({"samples": [{"text": 5, "weight": 2}]})"); },
               ErrorKind::InvalidInput, {"samples[0].weight", "known fields: id, text, visuals"});
  // A root names the document ("batch.samples[0]...").
  expect_error([] { batch_from_json(R"({"samples": [{"text": -1}]})", "batch"); },
               ErrorKind::InvalidInput, {"batch.samples[0].text=-1"});
  expect_error([&] { plan_from_json(R"({"strategy": "x", "step": 0, "wave": []})", "plan"); },
               ErrorKind::InvalidInput, {"plan.wave: unknown field", "'plan.waves'"});
}

TEST(Plan, EnumNames) {
  EXPECT_STREQ(to_string(EncoderPlacement::Disjoint), "disjoint");
  EXPECT_STREQ(to_string(Sharding::Zigzag), "zigzag");
  EXPECT_STREQ(to_string(CpAttention::UlyssesRing), "ulysses_ring");
}

TEST(Plan, JsonRoundTripKeepsEverything) {
  const Plan p = small_plan();
  const std::string text = to_json(p);
  const Plan read = plan_from_json(text);
  EXPECT_EQ(plan_hash(read), plan_hash(p));
  EXPECT_EQ(to_json(read), text);  // the estimate too
  EXPECT_EQ(read.estimate.peak_mem_gib, p.estimate.peak_mem_gib);
  EXPECT_EQ(read.waves[1].groups[0].attention, CpAttention::Ulysses);
  expect_error([&] { plan_from_json(R"({"strategy": "x", "step": 0})"); }, ErrorKind::InvalidInput,
               {"placement"});
}

TEST(Plan, HashIsPinnedAndSeesStructureNotEstimate) {
  const Plan p = small_plan();
  // Pinned once: FNV-1a 64 over the canonical little-endian encoding. A change here means
  // plans hash differently across versions, which the runtime's cross-rank check relies on.
  EXPECT_EQ(plan_hash(p), 0x6016912268f6fc5cull);  // also computed by an independent script
  Plan q = p;
  q.estimate.step_ms = 99;
  EXPECT_EQ(plan_hash(q), plan_hash(p));
  q.waves[0].groups[0].ranks[1] = 2;
  q.waves[0].groups[0].ranks[2] = 1;
  EXPECT_NE(plan_hash(q), plan_hash(p));
  q = p;
  q.encoder_tasks[0].rank = 4;
  EXPECT_NE(plan_hash(q), plan_hash(p));
  q = p;
  q.strategy = "dhq";
  EXPECT_NE(plan_hash(q), plan_hash(p));
}

TEST(PlanValidate, AcceptsAValidPlan) { EXPECT_NO_THROW(validate(small_plan(), small_batch())); }

TEST(PlanValidate, CatchesEachViolation) {
  const Batch b = small_batch();
  auto violates = [&](auto&& mutate, std::initializer_list<std::string_view> fragments) {
    Plan p = small_plan();
    mutate(p);
    expect_error([&] { validate(p, b); }, ErrorKind::Internal, fragments);
  };
  violates([](Plan& p) { p.waves[1].sequences.clear(); }, {"sample 1", "no wave"});
  violates([](Plan& p) { p.waves[1].sequences[0].sample = 0; }, {"sample 0", "placed twice"});
  violates([](Plan& p) { p.waves[1].sequences[0].sample = 3; }, {"sample 3", "outside [0, 3)"});
  violates([](Plan& p) { p.waves[1].sequences[0].group = 1; }, {"group 1"});
  violates([](Plan& p) { p.waves[0].groups[1].ranks = {4}; }, {"rank 4", "outside [0, 4)"});
  violates([](Plan& p) { p.waves[0].groups[1].ranks = {2}; }, {"rank 2", "group 0 and group 1"});
  violates([](Plan& p) { p.waves[0].groups[1].ranks.clear(); }, {"group 1", "no ranks"});
  violates([](Plan& p) { p.waves[1].sequences[0].member = 4; }, {"member 4", "degree 4"});
  violates([](Plan& p) { p.waves[0].sequences[0].member = 0; }, {"zigzag", "member 0"});
  violates([](Plan& p) { p.encoder_tasks.pop_back(); }, {"sample 1", "visual 0", "never encoded"});
  violates([](Plan& p) { p.encoder_tasks.push_back(p.encoder_tasks[0]); }, {"more than once"});
  violates([](Plan& p) { p.encoder_tasks[0].rank = 8; }, {"encoder rank 8"});
  violates([](Plan& p) { p.encoder_tasks[2].wave = 0; }, {"wave 0", "runs in wave 1"});
  violates([](Plan& p) { p.encoder_tasks[1].visual = 2; }, {"visual 2"});
  violates([](Plan& p) { p.encoder.ranks = 9; }, {"colocated", "[0, 9)", "[0, 8)"});
  violates([](Plan& p) { p.placement = EncoderPlacement::Disjoint; }, {"disjoint", "overlap"});
  violates([](Plan& p) { p.llm.ranks = 0; }, {"llm layout ranks=0"});
  violates([](Plan& p) { p.encoder.ranks = 0; }, {"3 encoder tasks", "no ranks"});
}

TEST(PlanValidate, PartsOfAnItemMustComeOutWhole) {
  const Batch b = small_batch();
  Plan p = small_plan();
  p.encoder_tasks[0].parts = 2;  // sample 2's video in two parts
  p.encoder_tasks.push_back(
      {.sample = 2, .visual = 0, .wave = 0, .rank = 4, .part = 1, .parts = 2});
  EXPECT_NO_THROW(validate(p, b));
  const Plan read = plan_from_json(to_json(p));
  EXPECT_EQ(read.encoder_tasks.back().part, 1);
  EXPECT_EQ(read.encoder_tasks.back().parts, 2);
  EXPECT_EQ(plan_hash(read), plan_hash(p));
  EXPECT_NE(plan_hash(p), plan_hash(small_plan()));
  // Whole items hash as before parts existed (ranks on another build still agree): the
  // value plan_hash gave this plan before EncoderTask had parts.
  EXPECT_EQ(plan_hash(small_plan()), 6923881054104648796ULL);
  Plan swapped = p;  // the same tasks, only the parts exchanged: the hash must see parts
  std::swap(swapped.encoder_tasks[0].part, swapped.encoder_tasks.back().part);
  EXPECT_NE(plan_hash(swapped), plan_hash(p));
  auto violates = [&](auto&& mutate, std::initializer_list<std::string_view> fragments) {
    Plan q = p;
    mutate(q);
    expect_error([&] { validate(q, b); }, ErrorKind::Internal, fragments);
  };
  violates([](Plan& q) { q.encoder_tasks.pop_back(); },
           {"sample 2", "1 encoder tasks for 2 parts"});
  violates([](Plan& q) { q.encoder_tasks.back().part = 0; }, {"part 0 of 2", "another task"});
  violates([](Plan& q) { q.encoder_tasks.back().parts = 3; }, {"different count"});
  violates([](Plan& q) { q.encoder_tasks.back().part = 2; }, {"part 2 of 2 parts"});
  violates([](Plan& q) { q.encoder_tasks.back().parts = 0; }, {"part 1 of 0 parts"});
}

TEST(PlanValidate, DisjointEncoderAndTextOnly) {
  Plan p = small_plan();
  p.placement = EncoderPlacement::Disjoint;
  p.encoder.first_device = 8;
  EXPECT_NO_THROW(validate(p, small_batch()));
  Batch text;
  text.samples = {{.id = 0, .text_tokens = 10, .visuals = {}}};
  Plan t;
  t.llm = {.tp = 1, .first_device = 0, .ranks = 1};
  t.waves = {{.groups = {{.ranks = {0}}}, .sequences = {{.sample = 0, .group = 0}}}};
  EXPECT_NO_THROW(validate(t, text));
}

TEST(Json, WrongShapesAreInputErrorsNotCrashes) {
  // Each of these reaches a different reader branch with the wrong JSON type or range.
  const char* batches[] = {"[]x",
                           "\"x\"",
                           "{\"samples\": {}}",
                           "{\"samples\": [1]}",
                           "{\"samples\": [{\"text\": 1, \"visuals\": {}}]}",
                           "{\"samples\": [{\"text\": 1, \"visuals\": [7]}]}",
                           "{\"samples\": [{\"text\": 1e300}]}",
                           "{\"samples\": [{\"text\": 18446744073709551615}]}",
                           "{\"samples\": [{\"text\": 1, \"id\": true}]}"};
  for (const char* text : batches)
    expect_error([&] { batch_from_json(text); }, ErrorKind::InvalidInput, {});
  expect_error([] { batches_from_json("{\"batch\": []}"); }, ErrorKind::InvalidInput, {"batches"});
  expect_error([] { batches_from_json("7"); }, ErrorKind::InvalidInput, {"expected an array"});

  std::string plan = to_json(small_plan());
  auto with = [&](const std::string& from, const std::string& to) {
    std::string text = plan;
    text.replace(text.find(from), from.size(), to);
    return text;
  };
  expect_error([&] { plan_from_json(with("\"ranks\": 4", "\"ranks\": 2000000000")); },
               ErrorKind::InvalidInput, {"llm.ranks=2000000000"});
  expect_error(
      [&] { plan_from_json(with("\"sharding\": \"zigzag\"", "\"sharding\": \"spiral\"")); },
      ErrorKind::InvalidInput, {"waves[0].sequences[0].sharding", "spiral"});
  expect_error([&] { plan_from_json(with("\"member\": -1", "\"member\": -2")); },
               ErrorKind::InvalidInput, {"waves[0].sequences[0].member=-2"});
  expect_error([&] { plan_from_json(with("\"wave_ms\": [", "\"wave_ms\": [\"a\", ")); },
               ErrorKind::InvalidInput, {"estimate.wave_ms[0]"});
}
