// Dataset converters on the real files in data/ (counts and percentiles as documented in
// data/README.md and docs/data.md), and the deterministic batch / lognormal generators.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdio>
#include <functional>

#include "dhp/dataset.hpp"
#include "dhp/error.hpp"
#include "dhp/io.hpp"

using namespace dhp;

namespace {

struct Percentiles {
  std::int64_t min, p50, p90, p99, max;
};

Percentiles percentiles(std::vector<std::int64_t> v) {
  std::sort(v.begin(), v.end());
  auto at = [&](double q) { return v[static_cast<std::size_t>(q * (v.size() - 1))]; };
  return {v.front(), at(0.5), at(0.9), at(0.99), v.back()};
}

// Prints the figures docs/data.md quotes, then returns them for checking.
Percentiles report(const char* what, const std::vector<Sample>& samples,
                   const std::function<std::int64_t(const Sample&)>& measure) {
  std::vector<std::int64_t> values;
  for (const Sample& s : samples) values.push_back(measure(s));
  const Percentiles p = percentiles(values);
  std::printf("%-28s n=%zu min=%lld p50=%lld p90=%lld p99=%lld max=%lld\n", what, samples.size(),
              static_cast<long long>(p.min), static_cast<long long>(p.p50),
              static_cast<long long>(p.p90), static_cast<long long>(p.p99),
              static_cast<long long>(p.max));
  return p;
}

std::int64_t llm_tokens(const Sample& s) { return s.llm_tokens(); }
std::int64_t text_tokens(const Sample& s) { return s.text_tokens; }
std::int64_t visual_tokens(const Sample& s) { return s.llm_tokens() - s.text_tokens; }

}  // namespace

TEST(Datasets, ActivityNetVideos) {
  const DatasetAssumptions a;
  const auto samples = load_activitynet(default_data_path("activitynet"), a);
  ASSERT_EQ(samples.size(), 10009u);
  const Percentiles visual = report("activitynet visual tokens", samples, visual_tokens);
  const Percentiles text = report("activitynet text tokens", samples, text_tokens);
  report("activitynet llm tokens", samples, llm_tokens);
  // README: duration p50 113.9 s, max 755.1 s -> at 1 fps x 144: ~16.4k and ~109k.
  EXPECT_NEAR(visual.p50, 114 * 144, 2 * 144);
  EXPECT_NEAR(visual.max, 755 * 144, 2 * 144);
  // Captions p50 51 BPE tokens x 1.15 + 24 template tokens.
  EXPECT_GE(text.p50, 70);
  EXPECT_LE(text.p50, 90);
  // A video is encoded as clips of at most video_frames_per_item frames that add up to it.
  for (const Sample& s : samples) {
    ASSERT_FALSE(s.visuals.empty());
    int frames = 0;
    for (std::size_t i = 0; i < s.visuals.size(); ++i) {
      const VisualItem& v = s.visuals[i];
      EXPECT_EQ(v.patches, 4 * v.llm_tokens);
      EXPECT_EQ(v.llm_tokens, 144 * v.frames);
      EXPECT_LE(v.frames, a.video_frames_per_item);
      if (i + 1 < s.visuals.size()) {
        EXPECT_EQ(v.frames, a.video_frames_per_item);
      }
      frames += v.frames;
    }
    EXPECT_EQ(s.encoder_patches(), 4 * 144 * frames);
  }
  DatasetAssumptions whole_videos;
  whole_videos.video_frames_per_item = 1 << 20;
  for (const Sample& s : load_activitynet(default_data_path("activitynet"), whole_videos))
    ASSERT_EQ(s.visuals.size(), 1u);
  DatasetAssumptions per_event;
  per_event.activitynet_per_event = true;
  const auto events = load_activitynet(default_data_path("activitynet"), per_event);
  EXPECT_EQ(events.size(), 37421u);
  const Percentiles event_tokens = report("activitynet per event llm", events, llm_tokens);
  EXPECT_LT(event_tokens.p50, visual.p50);  // an event is a part of its video
}

TEST(Datasets, ActivityNetWholeVideosAsQwen2VlSeesThem) {
  // dhp_bench's video-whole: one item per video, 2 fps up to 768 frames, 640x360 frames.
  const DatasetAssumptions a = qwen2_vl_whole_videos(640, 360);
  const auto samples = load_activitynet(default_data_path("activitynet"), a);
  ASSERT_EQ(samples.size(), 10009u);
  for (const Sample& s : samples) {
    ASSERT_EQ(s.visuals.size(), 1u);
    const VisualItem& v = s.visuals[0];
    EXPECT_EQ(v.frames % 2, 0);
    EXPECT_LE(v.frames, 768);
    EXPECT_EQ(v.llm_tokens, v.frames / 2 * 23 * 13);  // 644 x 364 after rounding to 28
    EXPECT_EQ(v.patches, 4 * v.llm_tokens);
  }
  const Percentiles tokens = report("activitynet whole qwen llm", samples, llm_tokens);
  report("activitynet whole qwen patches", samples,
         [](const Sample& s) { return s.encoder_patches(); });
  // README: duration p50 113.9 s -> ~228 frames, 114 slices of 299 tokens; the longest are
  // cut at 768 frames.
  EXPECT_NEAR(tokens.p50, 114 * 299, 2 * 299 + 200);
  EXPECT_LE(tokens.max, 384 * 299 + 1000);
}

TEST(Datasets, LlavaImages) {
  const auto samples = load_llava_cc3m(default_data_path("llava_cc3m"), DatasetAssumptions{});
  ASSERT_EQ(samples.size(), 2144u);
  const Percentiles text = report("llava text tokens", samples, text_tokens);
  report("llava llm tokens", samples, llm_tokens);
  // README (GPT-4 BPE): p50 240, p99 397; x1.15 for the target tokenizer.
  EXPECT_NEAR(text.p50, 240 * 1.15, 10);
  EXPECT_NEAR(text.p99, 397 * 1.15, 15);
  for (const Sample& s : samples) {
    ASSERT_EQ(s.visuals.size(), 1u);
    EXPECT_EQ(s.visuals[0].llm_tokens, 576);
    EXPECT_EQ(s.visuals[0].patches, 576);
  }
}

TEST(Datasets, MathVistaQwenResolution) {
  const auto samples = load_mathvista(default_data_path("mathvista"), DatasetAssumptions{});
  ASSERT_EQ(samples.size(), 1000u);
  const Percentiles visual = report("mathvista visual tokens", samples, visual_tokens);
  report("mathvista text tokens", samples, text_tokens);
  report("mathvista llm tokens", samples, llm_tokens);
  // README: Qwen2-VL visual tokens min 6, p50 252, p90 976, p99 6,643, max 16,224.
  EXPECT_EQ(visual.min, 6);
  EXPECT_EQ(visual.p50, 252);
  EXPECT_NEAR(visual.p90, 976, 50);
  EXPECT_NEAR(visual.p99, 6643, 500);
  EXPECT_EQ(visual.max, 16224);
  EXPECT_EQ(samples.front().id, 1);  // pid
}

TEST(Datasets, NarrativeQaDocuments) {
  const auto samples = load_narrativeqa(default_data_path("narrativeqa"), DatasetAssumptions{});
  ASSERT_EQ(samples.size(), 1572u);
  const Percentiles text = report("narrativeqa tokens", samples, llm_tokens);
  // README: ~45k p50, ~189k p90, ~441k p99 at 1.3 tokens per word. The longest document
  // has 430,061 words (Python's csv module agrees), so the max is ceil(1.3 x 430,061).
  EXPECT_NEAR(text.p50, 45000, 3000);
  EXPECT_NEAR(text.p90, 189000, 10000);
  EXPECT_NEAR(text.p99, 441000, 20000);
  EXPECT_EQ(text.max, 559080);
  EXPECT_EQ(text.min, 4319);  // ceil(1.3 x 3,322)
  for (const Sample& s : samples) EXPECT_TRUE(s.visuals.empty());
  DatasetAssumptions capped;
  capped.max_text_tokens = 32768;
  for (const Sample& s : load_narrativeqa(default_data_path("narrativeqa"), capped))
    EXPECT_LE(s.text_tokens, 32768);
}

TEST(Datasets, MissingFileAndUnknownNameAreClearErrors) {
  try {
    load_mathvista("/nonexistent/mathvista.json", DatasetAssumptions{});
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("/nonexistent/mathvista.json"), std::string::npos);
  }
  EXPECT_THROW(default_data_path("imagenet"), Error);
  // A number beyond a double's range is reported as malformed JSON, naming the file.
  const std::string path = ::testing::TempDir() + "dhp_overflow_mathvista.json";
  write_text_file(path, R"([{"question": "q", "width": 1e999}])");
  try {
    load_mathvista(path, DatasetAssumptions{});
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("malformed"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find(path), std::string::npos) << e.what();
  }
  std::remove(path.c_str());
}

TEST(Batches, SeededAndDeterministic) {
  const auto pool = lognormal_samples(300, 1024, 1.5, 128, 8192, 1);
  const auto a = make_batches(pool, 4, 100, 42);
  const auto b = make_batches(pool, 4, 100, 42);
  const auto c = make_batches(pool, 4, 100, 43);
  ASSERT_EQ(a.size(), 4u);
  bool differs = false;
  for (int i = 0; i < 4; ++i) {
    EXPECT_EQ(a[i].step, i);
    ASSERT_EQ(a[i].samples.size(), 100u);
    for (int s = 0; s < 100; ++s) {
      EXPECT_EQ(a[i].samples[s].id, b[i].samples[s].id);
      differs = differs || a[i].samples[s].id != c[i].samples[s].id;
    }
  }
  EXPECT_TRUE(differs);
  // The first three batches are one epoch: every sample exactly once.
  std::vector<int> seen(pool.size(), 0);
  for (int i = 0; i < 3; ++i)
    for (const Sample& s : a[i].samples) ++seen[s.id];
  EXPECT_EQ(std::count(seen.begin(), seen.end(), 1), 300);
  // Pinned: the same ids on every platform (own Fisher-Yates over mt19937_64).
  EXPECT_EQ(a[0].samples[0].id, 159);
  EXPECT_EQ(a[3].samples[99].id, 91);  // second epoch, reshuffled
}

TEST(Batches, LognormalIsClippedAndDeterministic) {
  const auto s = lognormal_samples(20000, 1024, 1.5, 128, 8192, 7);
  const auto t = lognormal_samples(20000, 1024, 1.5, 128, 8192, 7);
  double sum = 0;
  for (std::size_t i = 0; i < s.size(); ++i) {
    EXPECT_EQ(s[i].text_tokens, t[i].text_tokens);
    ASSERT_GE(s[i].text_tokens, 128);
    ASSERT_LE(s[i].text_tokens, 8192);
    sum += static_cast<double>(s[i].text_tokens);
  }
  const Percentiles p = report("lognormal(1024, 1.5) clipped", s, text_tokens);
  std::printf("lognormal clipped mean %.1f\n", sum / s.size());
  // Underlying median exp(ln 1024 - 1.5^2 / 2) = 332.
  EXPECT_NEAR(p.p50, 332, 20);
  EXPECT_EQ(p.min, 128);
  EXPECT_EQ(p.max, 8192);
  EXPECT_THROW(lognormal_samples(10, 1024, 1.5, 200, 100, 1), Error);
}
