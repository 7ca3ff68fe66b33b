// Converters from the raw length data in data/ to samples, and synthetic generators.
// Every number that turns a raw record into tokens comes from DatasetAssumptions
// (docs/data.md states them and the resulting percentiles).
#include "dhp/dataset.hpp"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <filesystem>
#include <limits>
#include <numbers>
#include <random>

#include "dhp/env.hpp"
#include "dhp/error.hpp"
#include "dhp/io.hpp"

namespace dhp {
namespace {

// ordered_json keeps the files' record order, so sample ids follow the file.
using ordered_json = nlohmann::ordered_json;

ordered_json parse_data_file(const std::string& path) {
  const std::string text = read_text_file(path);
  try {
    return ordered_json::parse(text);
  } catch (const ordered_json::parse_error& e) {
    DHP_THROW(InvalidInput, "{}: malformed JSON at byte {}: {}", path, e.byte, e.what());
  } catch (const ordered_json::exception& e) {  // e.g. a number too large for a double
    DHP_THROW(InvalidInput, "{}: malformed JSON: {}", path, e.what());
  }
}

const ordered_json& field(const ordered_json& obj, const std::string& path, const char* key) {
  DHP_CHECK(obj.is_object() && obj.contains(key), InvalidInput, "{}: missing field '{}'", path,
            key);
  return obj.at(key);
}

double number(const ordered_json& obj, const std::string& path, const char* key) {
  const ordered_json& v = field(obj, path, key);
  DHP_CHECK(v.is_number(), InvalidInput, "{}.{}: expected a number, got {}", path, key, v.dump());
  return v.get<double>();
}

// GPT-4-style BPE token count of English text, estimated as words (runs of letters and
// digits) plus punctuation characters: on the llava file this reproduces the documented
// counts (p50 240, p99 397, max ~1077) within a few tokens.
std::int64_t estimate_bpe_tokens(std::string_view text) {
  std::int64_t tokens = 0;
  bool in_word = false;
  for (unsigned char c : text) {
    const bool word_char = std::isalnum(c) != 0 || c >= 0x80;
    if (word_char) {
      if (!in_word) ++tokens;
    } else if (std::isspace(c) == 0) {
      ++tokens;  // punctuation and symbols
    }
    in_word = word_char;
  }
  return tokens;
}

// BPE estimate -> the target (Llama/Qwen) tokenizer.
std::int64_t text_tokens(std::string_view text, const DatasetAssumptions& a) {
  auto tokens = static_cast<std::int64_t>(
      std::ceil(static_cast<double>(estimate_bpe_tokens(text)) * a.text_token_scale));
  if (a.max_text_tokens > 0) tokens = std::min(tokens, a.max_text_tokens);
  return tokens;
}

std::int64_t qwen2_vl_image_tokens(double width, double height, const DatasetAssumptions& a);

// A video becomes clips of at most video_frames_per_item frames (or one item): the ViT
// attends within a clip (Qwen2-VL attends within each temporal patch group), so clips are
// independent encoder work that can go to different encoder ranks.
void append_video_items(double seconds, const DatasetAssumptions& a, std::vector<VisualItem>& out) {
  int frames = std::max(1, static_cast<int>(std::llround(seconds * a.video_fps)));
  if (a.video_max_frames > 0) frames = std::min(frames, a.video_max_frames);
  const bool native = a.video_frame_width > 0 && a.video_frame_height > 0;
  const int group = native ? a.video_temporal_patch : 1;
  frames = (frames + group - 1) / group * group;
  const std::int64_t tokens_per_group =
      native ? qwen2_vl_image_tokens(a.video_frame_width, a.video_frame_height, a)
             : a.video_tokens_per_frame;
  // Clips hold whole temporal patches.
  const int per_item = a.video_frames_per_item > 0
                           ? std::max(group, a.video_frames_per_item / group * group)
                           : frames;
  while (frames > 0) {
    VisualItem v;
    v.frames = std::min(frames, per_item);
    v.llm_tokens = static_cast<std::int64_t>(v.frames / group) * tokens_per_group;
    v.patches = v.llm_tokens * a.encoder_patches_per_token;
    out.push_back(v);
    frames -= v.frames;
  }
}

void check_assumptions(const DatasetAssumptions& a) {
  DHP_CHECK(a.text_token_scale > 0 && a.tokens_per_word > 0 && a.chat_template_tokens >= 0,
            InvalidArgument,
            "dataset assumptions: text_token_scale={}, tokens_per_word={} must be > 0 and "
            "chat_template_tokens={} >= 0",
            a.text_token_scale, a.tokens_per_word, a.chat_template_tokens);
  DHP_CHECK(a.video_frames_per_item >= 0 && a.video_max_frames >= 0 && a.video_frame_width >= 0 &&
                a.video_frame_height >= 0 && a.video_temporal_patch >= 1,
            InvalidArgument,
            "dataset assumptions: video_frames_per_item={}, video_max_frames={}, "
            "video_frame_width={} and video_frame_height={} must be >= 0, video_temporal_patch={} "
            ">= 1",
            a.video_frames_per_item, a.video_max_frames, a.video_frame_width, a.video_frame_height,
            a.video_temporal_patch);
  DHP_CHECK(a.video_fps > 0 && a.video_tokens_per_frame >= 1 && a.image_tokens_llava >= 1 &&
                a.encoder_patches_per_token >= 1 && a.llava_patches_per_token >= 1,
            InvalidArgument,
            "dataset assumptions: video_fps={} must be > 0 and video_tokens_per_frame={}, "
            "image_tokens_llava={}, encoder_patches_per_token={}, llava_patches_per_token={} "
            ">= 1",
            a.video_fps, a.video_tokens_per_frame, a.image_tokens_llava,
            a.encoder_patches_per_token, a.llava_patches_per_token);
  DHP_CHECK(a.qwen_min_pixels >= 1 && a.qwen_max_pixels >= a.qwen_min_pixels, InvalidArgument,
            "dataset assumptions: qwen_min_pixels={} must be in [1, qwen_max_pixels={}]",
            a.qwen_min_pixels, a.qwen_max_pixels);
  DHP_CHECK(a.max_text_tokens >= 0, InvalidArgument,
            "dataset assumptions: max_text_tokens={} must be >= 0", a.max_text_tokens);
}

// Qwen2-VL's smart_resize: both sides to multiples of 28 (round half to even, like
// Python's round), then scaled into [min_pixels, max_pixels] keeping the aspect ratio.
std::int64_t qwen2_vl_image_tokens(double width, double height, const DatasetAssumptions& a) {
  constexpr double kFactor = 28;
  double h = std::max(kFactor, std::nearbyint(height / kFactor) * kFactor);
  double w = std::max(kFactor, std::nearbyint(width / kFactor) * kFactor);
  if (h * w > a.qwen_max_pixels) {
    const double beta = std::sqrt(height * width / a.qwen_max_pixels);
    h = std::max(kFactor, std::floor(height / beta / kFactor) * kFactor);
    w = std::max(kFactor, std::floor(width / beta / kFactor) * kFactor);
  } else if (h * w < a.qwen_min_pixels) {
    const double beta = std::sqrt(a.qwen_min_pixels / (height * width));
    h = std::ceil(height * beta / kFactor) * kFactor;
    w = std::ceil(width * beta / kFactor) * kFactor;
  }
  return static_cast<std::int64_t>(h / kFactor) * static_cast<std::int64_t>(w / kFactor);
}

// One CSV record (RFC 4180: quoted fields may hold commas, doubled quotes and newlines).
// Returns false at the end of the input.
bool next_csv_record(std::string_view text, std::size_t& pos, std::vector<std::string>& fields) {
  fields.clear();
  if (pos >= text.size()) return false;
  std::string current;
  bool quoted = false;
  while (pos < text.size()) {
    const char c = text[pos++];
    if (quoted) {
      if (c == '"' && pos < text.size() && text[pos] == '"') {
        current += '"';
        ++pos;
      } else if (c == '"') {
        quoted = false;
      } else {
        current += c;
      }
    } else if (c == '"') {
      quoted = true;
    } else if (c == ',') {
      fields.push_back(std::move(current));
      current.clear();
    } else if (c == '\n' || c == '\r') {
      if (c == '\r' && pos < text.size() && text[pos] == '\n') ++pos;
      break;
    } else {
      current += c;
    }
  }
  fields.push_back(std::move(current));
  return true;
}

}  // namespace

DatasetAssumptions qwen2_vl_whole_videos(int frame_width, int frame_height) {
  DatasetAssumptions a;
  a.video_fps = 2.0;
  a.video_frame_width = frame_width;
  a.video_frame_height = frame_height;
  a.video_temporal_patch = 2;
  a.video_max_frames = 768;
  a.video_frames_per_item = 0;
  return a;
}

std::vector<Sample> load_activitynet(const std::string& path, const DatasetAssumptions& a) {
  check_assumptions(a);
  const ordered_json root = parse_data_file(path);
  DHP_CHECK(root.is_object(), InvalidInput, "{}: expected an object keyed by video id", path);
  std::vector<Sample> samples;
  std::int64_t video_index = 0;
  for (const auto& [video_id, video] : root.items()) {
    const std::string where = fmt::format("{}: {}", path, video_id);
    const ordered_json& sentences = field(video, where, "sentences");
    DHP_CHECK(sentences.is_array(), InvalidInput, "{}.sentences: expected an array", where);
    if (a.activitynet_per_event) {
      const ordered_json& stamps = field(video, where, "timestamps");
      DHP_CHECK(stamps.is_array() && stamps.size() == sentences.size(), InvalidInput,
                "{}: {} timestamps for {} sentences", where, stamps.size(), sentences.size());
      for (std::size_t e = 0; e < sentences.size(); ++e) {
        const ordered_json& span = stamps[e];
        DHP_CHECK(span.is_array() && span.size() == 2 && span[0].is_number() && span[1].is_number(),
                  InvalidInput, "{}.timestamps[{}]: expected [start, end], got {}", where, e,
                  span.dump());
        const double seconds = std::max(0.0, span[1].get<double>() - span[0].get<double>());
        Sample s;
        s.id = static_cast<std::int64_t>(samples.size());
        s.text_tokens = a.chat_template_tokens + text_tokens(sentences[e].get<std::string>(), a);
        append_video_items(seconds, a, s.visuals);
        samples.push_back(std::move(s));
      }
    } else {
      std::string captions;
      for (const auto& sentence : sentences) captions += sentence.get<std::string>();
      Sample s;
      s.id = video_index;
      s.text_tokens = a.chat_template_tokens + text_tokens(captions, a);
      append_video_items(number(video, where, "duration"), a, s.visuals);
      samples.push_back(std::move(s));
    }
    ++video_index;
  }
  return samples;
}

std::vector<Sample> load_llava_cc3m(const std::string& path, const DatasetAssumptions& a) {
  check_assumptions(a);
  const ordered_json root = parse_data_file(path);
  const ordered_json& annotations = field(root, path, "annotations");
  DHP_CHECK(annotations.is_array(), InvalidInput, "{}.annotations: expected an array", path);
  std::vector<Sample> samples;
  samples.reserve(annotations.size());
  for (std::size_t i = 0; i < annotations.size(); ++i) {
    const std::string where = fmt::format("{}: annotations[{}]", path, i);
    const ordered_json& caption = field(annotations[i], where, "caption");
    DHP_CHECK(caption.is_string(), InvalidInput, "{}.caption: expected a string", where);
    // The caption is the whole rendered chat (template included); the <image> placeholder
    // becomes the image's tokens, so it is not counted as text.
    std::string chat = caption.get<std::string>();
    if (const auto at = chat.find("<image>"); at != std::string::npos) chat.erase(at, 7);
    Sample s;
    s.id = static_cast<std::int64_t>(i);
    s.text_tokens = text_tokens(chat, a);
    VisualItem image;
    image.llm_tokens = a.image_tokens_llava;
    image.patches = static_cast<std::int64_t>(a.image_tokens_llava) * a.llava_patches_per_token;
    s.visuals.push_back(image);
    samples.push_back(std::move(s));
  }
  return samples;
}

std::vector<Sample> load_mathvista(const std::string& path, const DatasetAssumptions& a) {
  check_assumptions(a);
  const ordered_json root = parse_data_file(path);
  DHP_CHECK(root.is_object(), InvalidInput, "{}: expected an object keyed by pid", path);
  std::vector<Sample> samples;
  for (const auto& [pid, record] : root.items()) {
    const std::string where = fmt::format("{}: {}", path, pid);
    std::string text = field(record, where, "question").get<std::string>();
    // Choices and answer: strings as written, numbers as JSON text.
    auto append = [&text](const ordered_json& value) {
      text += ' ';
      text += value.is_string() ? value.get<std::string>() : value.dump();
    };
    if (const auto& choices = record.value("choices", ordered_json()); choices.is_array())
      for (const auto& choice : choices) append(choice);
    if (const auto& answer = record.value("answer", ordered_json()); !answer.is_null())
      append(answer);
    const ordered_json& meta = field(record, where, "metadata");
    const double width = number(meta, where + ".metadata", "img_width");
    const double height = number(meta, where + ".metadata", "img_height");
    DHP_CHECK(width >= 1 && height >= 1, InvalidInput, "{}: image {}x{} px", where, width, height);
    Sample s;
    s.id = static_cast<std::int64_t>(samples.size());
    char* end = nullptr;
    const long long numeric = std::strtoll(pid.c_str(), &end, 10);
    if (end != nullptr && *end == '\0') s.id = numeric;
    s.text_tokens = a.chat_template_tokens + text_tokens(text, a);
    VisualItem image;
    image.llm_tokens = qwen2_vl_image_tokens(width, height, a);
    image.patches = image.llm_tokens * a.encoder_patches_per_token;
    s.visuals.push_back(image);
    samples.push_back(std::move(s));
  }
  return samples;
}

std::vector<Sample> load_narrativeqa(const std::string& path, const DatasetAssumptions& a) {
  check_assumptions(a);
  const std::string text = read_text_file(path);
  std::size_t pos = 0;
  std::vector<std::string> fields;
  DHP_CHECK(next_csv_record(text, pos, fields), InvalidInput, "{}: empty CSV", path);
  const auto column = std::find(fields.begin(), fields.end(), "story_word_count");
  DHP_CHECK(column != fields.end(), InvalidInput, "{}: no story_word_count column in the header",
            path);
  const auto word_column = static_cast<std::size_t>(column - fields.begin());
  std::vector<Sample> samples;
  int line = 1;
  while (next_csv_record(text, pos, fields)) {
    ++line;
    if (fields.size() == 1 && fields[0].empty()) continue;  // trailing blank line
    DHP_CHECK(fields.size() > word_column, InvalidInput, "{}: record {} has {} fields", path, line,
              fields.size());
    char* end = nullptr;
    const long long words = std::strtoll(fields[word_column].c_str(), &end, 10);
    DHP_CHECK(end != nullptr && *end == '\0' && words > 0, InvalidInput,
              "{}: record {}: story_word_count='{}' is not a positive integer", path, line,
              fields[word_column]);
    Sample s;
    s.id = static_cast<std::int64_t>(samples.size());
    s.text_tokens = static_cast<std::int64_t>(std::ceil(a.tokens_per_word * words));
    if (a.max_text_tokens > 0) s.text_tokens = std::min(s.text_tokens, a.max_text_tokens);
    samples.push_back(std::move(s));
  }
  return samples;
}

std::string default_data_path(const std::string& dataset) {
  const char* file = nullptr;
  if (dataset == "activitynet") file = "activitynet_captions_train_modified.json";
  if (dataset == "llava_cc3m") file = "llava_next_cc3m_llava34b_recap_progress_5_or_24.json";
  if (dataset == "mathvista") file = "mathvista_testmini.json";
  if (dataset == "narrativeqa") file = "narrativeqa_documents.csv";
  DHP_CHECK(file != nullptr, InvalidArgument,
            "unknown dataset '{}' (known: activitynet, llava_cc3m, mathvista, narrativeqa)",
            dataset);
  const std::string path = (std::filesystem::path(env::data_dir()) / file).string();
  DHP_CHECK(std::filesystem::is_regular_file(path), InvalidInput,
            "data file for '{}' not found at '{}' (set DHP_DATA_DIR to the folder holding it)",
            dataset, path);
  return path;
}

namespace {

// Uniform in [0, n) by rejection: std::uniform_int_distribution differs between standard
// libraries, and the batches must be the same everywhere.
std::uint64_t uniform_below(std::mt19937_64& rng, std::uint64_t n) {
  const std::uint64_t limit =
      std::numeric_limits<std::uint64_t>::max() - std::numeric_limits<std::uint64_t>::max() % n;
  std::uint64_t x = rng();
  while (x >= limit) x = rng();
  return x % n;
}

void fisher_yates(std::vector<std::size_t>& order, std::mt19937_64& rng) {
  for (std::size_t i = order.size(); i > 1; --i)
    std::swap(order[i - 1], order[uniform_below(rng, i)]);
}

// In [0, 1) with 53 random bits.
double uniform_unit(std::mt19937_64& rng) { return static_cast<double>(rng() >> 11) * 0x1.0p-53; }

}  // namespace

std::vector<Batch> make_batches(const std::vector<Sample>& pool, int num_batches,
                                int samples_per_batch, std::uint64_t seed) {
  DHP_CHECK(!pool.empty(), InvalidArgument, "make_batches: the sample pool is empty");
  DHP_CHECK(num_batches >= 1 && samples_per_batch >= 1, InvalidArgument,
            "make_batches: num_batches={} and samples_per_batch={} must be >= 1", num_batches,
            samples_per_batch);
  std::mt19937_64 rng(seed);
  std::vector<std::size_t> order(pool.size());
  for (std::size_t i = 0; i < order.size(); ++i) order[i] = i;
  fisher_yates(order, rng);
  std::size_t next = 0;
  std::vector<Batch> batches(num_batches);
  for (int b = 0; b < num_batches; ++b) {
    batches[b].step = b;
    batches[b].samples.reserve(samples_per_batch);
    for (int i = 0; i < samples_per_batch; ++i) {
      // A new epoch when the pool runs out: reshuffle, as a data loader would.
      if (next == order.size()) {
        fisher_yates(order, rng);
        next = 0;
      }
      batches[b].samples.push_back(pool[order[next++]]);
    }
  }
  return batches;
}

std::vector<Sample> lognormal_samples(int count, double mean_tokens, double sigma,
                                      std::int64_t min_tokens, std::int64_t max_tokens,
                                      std::uint64_t seed) {
  DHP_CHECK(count >= 1, InvalidArgument, "lognormal_samples: count={} must be >= 1", count);
  DHP_CHECK(mean_tokens > 0 && sigma >= 0, InvalidArgument,
            "lognormal_samples: mean_tokens={} must be > 0 and sigma={} >= 0", mean_tokens, sigma);
  DHP_CHECK(min_tokens >= 1 && max_tokens >= min_tokens, InvalidArgument,
            "lognormal_samples: need 1 <= min_tokens={} <= max_tokens={}", min_tokens, max_tokens);
  // mean_tokens is the mean of the lognormal before clipping: E[exp(X)] = exp(mu + sigma^2/2).
  const double mu = std::log(mean_tokens) - 0.5 * sigma * sigma;
  std::mt19937_64 rng(seed);
  std::vector<Sample> samples(count);
  for (int i = 0; i < count; ++i) {
    // Box-Muller, one normal per pair of uniforms; u1 in (0, 1] keeps log finite.
    const double u1 = 1.0 - uniform_unit(rng);
    const double u2 = uniform_unit(rng);
    const double z = std::sqrt(-2.0 * std::log(u1)) * std::cos(2.0 * std::numbers::pi * u2);
    const double length = std::min(std::exp(mu + sigma * z), static_cast<double>(max_tokens));
    samples[i].id = i;
    samples[i].text_tokens =
        std::clamp(static_cast<std::int64_t>(std::llround(length)), min_tokens, max_tokens);
  }
  return samples;
}

}  // namespace dhp
