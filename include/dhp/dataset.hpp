// Batch streams from real length data (../shared/data, copied into data/) and from
// synthetic distributions. Every assumption that turns raw records into token counts is a
// field of DatasetAssumptions, so it is stated and configurable.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "dhp/batch.hpp"
#include "dhp/model.hpp"

namespace dhp {

struct DatasetAssumptions {
  double text_token_scale = 1.15;    // the files' GPT-4 BPE counts -> Llama/Qwen tokenizers
  double tokens_per_word = 1.3;      // narrativeqa: words -> tokens
  int chat_template_tokens = 24;     // system prompt + role tags per sample
  double video_fps = 1.0;            // sampled frames per second of video
  int video_tokens_per_frame = 144;  // LLM tokens per sampled frame (frame-pooled video LLM)
  // Qwen2-VL's own video tokens instead of video_tokens_per_frame, when both are set: frames
  // resized like its images (sides to multiples of 28), (h/28)(w/28) tokens per 3-D patch of
  // video_temporal_patch frames (the frame count rounded up to a multiple of it).
  int video_frame_width = 0;
  int video_frame_height = 0;
  int video_temporal_patch = 2;
  int video_max_frames = 0;           // 0: no cap (Qwen2-VL's sampling keeps at most 768)
  int video_frames_per_item = 16;     // a video is encoded as clips of at most this many frames;
                                      // 0: the whole video is one item
  int image_tokens_llava = 576;       // llava: CLIP-L/336 tokens per image
  int llava_patches_per_token = 1;    // llava: CLIP-L/336 has no merge (576 patches -> 576)
  int encoder_patches_per_token = 4;  // ViT patches per LLM token (2x2 merge)
  int qwen_min_pixels = 56 * 56;      // Qwen2-VL image resize bounds
  int qwen_max_pixels = 28 * 28 * 16384;
  bool activitynet_per_event = false;  // one sample per caption event instead of per video
  std::int64_t max_text_tokens = 0;    // 0: no cap (narrativeqa documents are kept whole)
};

// Videos as Qwen2-VL's own pipeline samples them, whole: 2 frames per second (at most 768),
// each frame resized to `frame_width` x `frame_height` (sides to multiples of 28), one 3-D
// patch of 2 frames per (h/28)(w/28) tokens, the whole video one visual item.
DatasetAssumptions qwen2_vl_whole_videos(int frame_width, int frame_height);

// Loaders: one Sample per record. `path` is the raw file as copied from ../shared/data.
std::vector<Sample> load_activitynet(const std::string& path, const DatasetAssumptions& a);
std::vector<Sample> load_llava_cc3m(const std::string& path, const DatasetAssumptions& a);
std::vector<Sample> load_mathvista(const std::string& path, const DatasetAssumptions& a);
std::vector<Sample> load_narrativeqa(const std::string& path, const DatasetAssumptions& a);

// Default path of a data file by name ("activitynet", "llava_cc3m", "mathvista",
// "narrativeqa"), looked up in DHP_DATA_DIR, <source>/data, then ../shared/data.
std::string default_data_path(const std::string& dataset);

// Cuts a sample pool into `num_batches` global batches of `samples_per_batch`, drawn
// with a seeded shuffle (deterministic).
std::vector<Batch> make_batches(const std::vector<Sample>& pool, int num_batches,
                                int samples_per_batch, std::uint64_t seed);

// Text-only lognormal lengths clipped to [min_tokens, max_tokens], with the given mean of
// the underlying distribution's exp and log-space sigma (Megatron's dynamic-CP benchmark:
// 128..8192, mean 1024, sigma 1.5).
std::vector<Sample> lognormal_samples(int count, double mean_tokens, double sigma,
                                      std::int64_t min_tokens, std::int64_t max_tokens,
                                      std::uint64_t seed);

}  // namespace dhp
