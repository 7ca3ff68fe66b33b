#include "scenarios.hpp"

#include <algorithm>
#include <random>

#include "dhp/dataset.hpp"
#include "dhp/error.hpp"

namespace dhp::bench {
namespace {

int batches_or(const ScenarioConfig& config, int full, int quick) {
  if (config.batches > 0) return config.batches;
  return config.quick ? quick : full;
}

// Every strategy that is a per-batch competitor; exact only where instances are tiny.
std::vector<Strategy> strategies_without_exact() {
  std::vector<Strategy> out;
  for (Strategy s : all_strategies())
    if (s != Strategy::Exact) out.push_back(s);
  return out;
}

ScenarioData single_cluster(ClusterSpec cluster, ModelSpec model, std::vector<Batch> batches) {
  ScenarioData data;
  data.model = std::move(model);
  data.clusters.push_back(std::move(cluster));
  data.cluster_of_batch.assign(batches.size(), 0);
  data.batches = std::move(batches);
  data.strategies = strategies_without_exact();
  return data;
}

// H100 nodes of 8 (or one smaller node below 8 GPUs), for the scales without a preset.
ClusterSpec h100_cluster(int gpus) {
  ClusterSpec cluster = cluster_preset("h100-8");
  if (gpus < cluster.devices_per_node) {
    cluster.devices_per_node = gpus;
    cluster.num_nodes = 1;
  } else {
    DHP_CHECK(gpus % cluster.devices_per_node == 0, InvalidArgument,
              "h100 cluster of {} GPUs is not whole nodes of {}", gpus, cluster.devices_per_node);
    cluster.num_nodes = gpus / cluster.devices_per_node;
  }
  cluster.name = "h100-" + std::to_string(gpus);
  return cluster;
}

// Whole ActivityNet videos at 1 fps, 144 tokens per frame (frame-pooled video LLM): the
// median video is ~16k LLM tokens, the tail ~100k. 128 videos per step is ~2M tokens,
// ~33k tokens per GPU on 64 GPUs: a typical long-video SFT step of a few seconds.
ScenarioData build_video_longtail(const ScenarioConfig& config, int) {
  DatasetAssumptions a;
  a.video_fps = 1.0;
  a.video_tokens_per_frame = 144;
  auto pool = load_activitynet(default_data_path("activitynet"), a);
  auto batches = make_batches(pool, batches_or(config, 12, 3), 128, config.seed);
  return single_cluster(cluster_preset("h100-64"), model_preset("qwen2-vl-7b"), std::move(batches));
}

// Whole ActivityNet videos as a Qwen2-VL user hands them over: one visual item per video,
// frames sampled at 2 fps (at most Qwen2-VL's 768), resized to 640x360 (the file has no
// resolution: an assumption) = 23 x 13 = 299 tokens per 2-frame temporal patch, 4 ViT patches
// per token. The median video is ~34k LLM tokens and ~136k patches; the longest are 115k
// tokens and 459k patches in one item of 384 independent temporal slices. 64 videos per step
// is ~2.2M tokens, about video-longtail's step.
ScenarioData build_video_whole(const ScenarioConfig& config, int) {
  auto pool = load_activitynet(default_data_path("activitynet"), qwen2_vl_whole_videos(640, 360));
  auto batches = make_batches(pool, batches_or(config, 12, 3), 64, config.seed);
  return single_cluster(cluster_preset("h100-64"), model_preset("qwen2-vl-7b"), std::move(batches));
}

// One sample per caption event (clip of the event's span): ~5k tokens median, much
// narrower spread. 256 clips per step keeps the step size near the long-tail one.
ScenarioData build_video_uniform(const ScenarioConfig& config, int) {
  DatasetAssumptions a;
  a.video_fps = 1.0;
  a.video_tokens_per_frame = 144;
  a.activitynet_per_event = true;
  auto pool = load_activitynet(default_data_path("activitynet"), a);
  auto batches = make_batches(pool, batches_or(config, 12, 3), 256, config.seed);
  return single_cluster(cluster_preset("h100-64"), model_preset("qwen2-vl-7b"), std::move(batches));
}

// LLaVA recaption chats, one 576-token image each: short and uniform. 512 samples on 64
// GPUs is the planner-time target size (64 ranks, 512 sequences) and a usual SFT batch.
ScenarioData build_image_instruct(const ScenarioConfig& config, int) {
  DatasetAssumptions a;
  auto pool = load_llava_cc3m(default_data_path("llava_cc3m"), a);
  auto batches = make_batches(pool, batches_or(config, 12, 3), 512, config.seed);
  return single_cluster(cluster_preset("h100-64"), model_preset("qwen2-vl-7b"), std::move(batches));
}

// MathVista at native resolutions through Qwen2-VL's resize rule: 6 to 16k visual tokens
// per image. The pool has 1000 samples, so 128 per batch keeps batches mostly disjoint.
ScenarioData build_image_mathvista(const ScenarioConfig& config, int) {
  DatasetAssumptions a;
  auto pool = load_mathvista(default_data_path("mathvista"), a);
  auto batches = make_batches(pool, batches_or(config, 8, 2), 128, config.seed);
  return single_cluster(cluster_preset("h100-64"), model_preset("qwen2-vl-7b"), std::move(batches));
}

// NarrativeQA whole documents (up to ~570k tokens) on a 70B text model. A 570k-token
// document only fits when split over many TP ranks' worth of memory, so this runs on
// 1024 GPUs; 64 documents per step is ~5M tokens, ~5k per GPU.
ScenarioData build_long_context_text(const ScenarioConfig& config, int) {
  DatasetAssumptions a;
  auto pool = load_narrativeqa(default_data_path("narrativeqa"), a);
  auto batches = make_batches(pool, batches_or(config, 8, 2), 64, config.seed);
  return single_cluster(cluster_preset("h100-1024"), model_preset("llama3-70b"),
                        std::move(batches));
}

// Megatron Core dynamic-CP benchmark: lognormal lengths in [128, 8192] (mean 1024, sigma
// 1.5), 12 layers / hidden 2048, max 2048 tokens per rank. The post does not state the
// global batch; we give every GPU ~8 full micro-batches of 2048 tokens (16 sequences of
// ~1k per GPU), the regime where DP imbalance and CP over-sharding both show.
ScenarioData build_megatron_dcp_repro(const ScenarioConfig& config, int gpus) {
  const int num_batches = batches_or(config, 12, 3);
  const int per_batch =
      (config.sequences_per_gpu > 0 ? config.sequences_per_gpu : kReproSequencesPerGpu) * gpus;
  auto pool = lognormal_samples(num_batches * per_batch, 1024.0, 1.5, 128, 8192,
                                config.seed * 7919 + static_cast<std::uint64_t>(gpus));
  auto batches = make_batches(pool, num_batches, per_batch, config.seed);
  ScenarioData data =
      single_cluster(h100_cluster(gpus), model_preset("megatron-dcp-1b"), std::move(batches));
  data.options.llm_tp = 1;  // their runs: TP 1, the 1B model fits on one GPU
  data.options.max_tokens_per_rank = 2048;
  // Their static baseline: one CP degree for the run, the power of two that brings the
  // longest sequence (8192) under 2048 tokens per rank: CP 4, the rest data parallel.
  const int cp = std::min(gpus, 4);
  data.static_balanced_layout = StaticLayout{1, cp, gpus / cp, 0};
  return data;
}

// A mixed multimodal pool (whole videos, clips, LLaVA images, MathVista) at 4096 GPUs and
// 16384 sequences per step: here only planner time matters, but every strategy must run.
ScenarioData build_scale_4096(const ScenarioConfig& config, int) {
  DatasetAssumptions a;
  std::vector<Sample> pool = load_activitynet(default_data_path("activitynet"), a);
  DatasetAssumptions per_event = a;
  per_event.activitynet_per_event = true;
  auto clips = load_activitynet(default_data_path("activitynet"), per_event);
  pool.insert(pool.end(), clips.begin(), clips.end());
  auto images = load_llava_cc3m(default_data_path("llava_cc3m"), a);
  pool.insert(pool.end(), images.begin(), images.end());
  auto math = load_mathvista(default_data_path("mathvista"), a);
  pool.insert(pool.end(), math.begin(), math.end());
  auto batches = make_batches(pool, batches_or(config, 3, 1), 16384, config.seed);
  ScenarioData data =
      single_cluster(cluster_preset("h100-4096"), model_preset("qwen2-vl-7b"), std::move(batches));
  // A run-level search would plan 16k-sequence batches for each of ~60 layouts with
  // paper_bfd_dp (1.7 s a plan) and megatron_dcp (0.2 s).
  data.search_baseline_layouts = false;
  return data;
}

// Random small instances the exact solver can finish: one node of 4-8 GPUs, TP 1, 4-10
// lognormal sequences (128..16k tokens, so both splitting and packing matter).
ScenarioData build_small_exact(const ScenarioConfig& config, int) {
  const int instances = batches_or(config, 24, 6);
  ScenarioData data;
  data.model = model_preset("megatron-dcp-1b");
  data.options.llm_tp = 1;
  data.strategies = all_strategies();
  std::mt19937_64 rng(config.seed * 104729 + 17);
  for (int i = 0; i < instances; ++i) {
    const int gpus = std::uniform_int_distribution<int>(4, 8)(rng);
    const int sequences = std::uniform_int_distribution<int>(4, 10)(rng);
    auto it = std::find_if(data.clusters.begin(), data.clusters.end(),
                           [&](const ClusterSpec& c) { return c.world_size() == gpus; });
    if (it == data.clusters.end()) {
      data.clusters.push_back(h100_cluster(gpus));
      it = data.clusters.end() - 1;
    }
    Batch batch;
    batch.step = i;
    batch.samples = lognormal_samples(sequences, 2048.0, 1.2, 128, 16384, rng());
    data.batches.push_back(std::move(batch));
    data.cluster_of_batch.push_back(static_cast<int>(it - data.clusters.begin()));
  }
  return data;
}

}  // namespace

const std::vector<Scenario>& all_scenarios() {
  static const std::vector<Scenario> scenarios = [] {
    std::vector<Scenario> s;
    s.push_back({"video-longtail", "video-longtail",
                 "ActivityNet whole videos, 1 fps x 144 tok/frame (long tail to ~100k), "
                 "qwen2-vl-7b, h100-64, 128 videos/step",
                 build_video_longtail});
    s.push_back({"video-whole", "video-whole",
                 "ActivityNet whole videos as single Qwen2-VL items (2 fps, 640x360, up to 768 "
                 "frames; patches = 4 x tokens, one span per 2 frames), qwen2-vl-7b, h100-64, "
                 "64 videos/step",
                 build_video_whole});
    s.push_back({"video-uniform", "video-uniform",
                 "ActivityNet per-event clips (narrower lengths), qwen2-vl-7b, h100-64, "
                 "256 clips/step",
                 build_video_uniform});
    s.push_back({"image-instruct", "image-instruct",
                 "LLaVA cc3m chats, one 576-token image each (short, uniform), qwen2-vl-7b, "
                 "h100-64, 512/step",
                 build_image_instruct});
    s.push_back({"image-mathvista", "image-mathvista",
                 "MathVista native resolutions via Qwen2-VL resize (6..16k visual tokens), "
                 "qwen2-vl-7b, h100-64, 128/step",
                 build_image_mathvista});
    s.push_back({"long-context-text", "long-context-text",
                 "NarrativeQA whole documents (up to ~570k tokens), llama3-70b, h100-1024, "
                 "64 docs/step",
                 build_long_context_text});
    for (int gpus : {4, 8, 16, 32, 64}) {
      s.push_back({"megatron-dcp-repro-" + std::to_string(gpus), "megatron-dcp-repro",
                   "Megatron dynamic-CP benchmark: lognormal 128..8192 (mean 1024, sigma "
                   "1.5), megatron-dcp-1b, " +
                       std::to_string(gpus) + " GPUs, 16 seq/GPU, max 2048 tok/rank",
                   build_megatron_dcp_repro, gpus});
    }
    s.push_back({"scale-4096", "scale-4096",
                 "mixed video/clip/image pool, qwen2-vl-7b, h100-4096, 16384 seq/step "
                 "(planner time)",
                 build_scale_4096});
    s.push_back({"small-exact", "small-exact",
                 "random small instances: 4-8 GPUs in one node, 4-10 lognormal sequences, "
                 "megatron-dcp-1b; dhp's gap to exact",
                 build_small_exact});
    return s;
  }();
  return scenarios;
}

std::vector<const Scenario*> find_scenarios(const std::string& name) {
  std::vector<const Scenario*> found;
  std::string known;
  for (const Scenario& s : all_scenarios()) {
    if (s.name == name || s.family == name) found.push_back(&s);
    known += (known.empty() ? "" : ", ") + s.name;
  }
  DHP_CHECK(!found.empty(), InvalidArgument, "unknown scenario '{}' (known: {})", name, known);
  return found;
}

}  // namespace dhp::bench
