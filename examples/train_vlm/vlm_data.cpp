// The synthetic task, the scaled-down batches of real length data, and the single-process
// reference of the small vision-language model (vlm.hpp).
#include <algorithm>
#include <cmath>
#include <random>

#include <fmt/format.h>

#include "dhp/dataset.hpp"
#include "dhp/encoder_geometry.hpp"
#include "dhp/error.hpp"
#include "dhp/planner.hpp"
#include "dhp/step_schedule.hpp"
#include "vlm.hpp"

namespace vlm {
namespace {

// Row p of a sample's sequence: the text segment it is in (-1 for a visual row) and its
// index inside that segment.
struct RowKind {
  int segment = -1;
  std::int64_t index = 0;
};

std::vector<RowKind> row_kinds(const dhp::Sample& sample) {
  std::vector<RowKind> rows(static_cast<std::size_t>(sample.llm_tokens()));
  const auto offsets = dhp::visual_token_offsets(sample);
  std::int64_t p = 0;
  for (std::size_t v = 0; v <= sample.visuals.size(); ++v) {
    const std::int64_t end =
        v < sample.visuals.size() ? offsets[v] : static_cast<std::int64_t>(rows.size());
    for (std::int64_t i = 0; p < end; ++p, ++i) rows[static_cast<std::size_t>(p)] = {static_cast<int>(v), i};
    if (v < sample.visuals.size()) p += sample.visuals[v].llm_tokens;  // visual rows stay -1
  }
  return rows;
}

// The prototype patch pattern of every class: [classes][4][patch_dim].
std::vector<double> prototypes(const Config& c, std::uint64_t seed) {
  std::mt19937_64 gen(seed);
  std::normal_distribution<double> normal;
  std::vector<double> out(static_cast<std::size_t>(c.classes * 4 * c.patch_dim));
  for (double& x : out) x = normal(gen);
  return out;
}

}  // namespace

SampleData sample_data(const Config& c, const dhp::Sample& sample, std::uint64_t seed) {
  std::mt19937_64 gen(seed * 1000003u + static_cast<std::uint64_t>(sample.id));
  SampleData d;
  std::vector<int> classes;
  for (std::size_t v = 0; v < sample.visuals.size(); ++v)
    classes.push_back(static_cast<int>(gen() % static_cast<std::uint64_t>(c.classes)));
  const int text_vocab = c.vocab - c.classes;
  for (const RowKind& r : row_kinds(sample)) {
    if (r.segment < 0) {
      d.tokens.push_back(0);
    } else if (r.segment == 0) {  // before any image: noise
      d.tokens.push_back(c.classes + static_cast<std::int64_t>(gen() % static_cast<std::uint64_t>(text_vocab)));
    } else {  // after item segment-1: its class, then a sequence derived from it
      const int cls = classes[static_cast<std::size_t>(r.segment - 1)];
      d.tokens.push_back(r.index == 0 ? cls : c.classes + (cls * 5 + r.index * 3) % text_vocab);
    }
  }
  const auto kinds = row_kinds(sample);
  for (std::size_t p = 0; p < kinds.size(); ++p)
    d.labels.push_back(p + 1 < kinds.size() && kinds[p + 1].segment >= 0 ? d.tokens[p + 1] : -1);
  const std::vector<double> proto = prototypes(c, seed);
  std::normal_distribution<double> noise(0.0, 0.5);
  for (std::size_t v = 0; v < sample.visuals.size(); ++v)
    for (std::int64_t j = 0; j < sample.visuals[v].patches; ++j)
      for (int k = 0; k < c.patch_dim; ++k)
        d.patches.push_back(
            proto[static_cast<std::size_t>((classes[v] * 4 + j % 4) * c.patch_dim + k)] + noise(gen));
  return d;
}

std::vector<dhp::Batch> batches(const Config& c, int count, int samples_per_batch,
                                std::uint64_t seed, double text_scale, double visual_scale,
                                std::int64_t max_tokens) {
  const dhp::DatasetAssumptions assumptions;
  std::vector<dhp::Sample> pool =
      dhp::load_activitynet(dhp::default_data_path("activitynet"), assumptions);
  const auto images = dhp::load_mathvista(dhp::default_data_path("mathvista"), assumptions);
  pool.insert(pool.end(), images.begin(), images.end());
  std::vector<dhp::Batch> out = dhp::make_batches(pool, count, samples_per_batch, seed);
  const auto scaled = [](std::int64_t n, double scale, std::int64_t least) {
    return std::max<std::int64_t>(least, std::llround(static_cast<double>(n) / scale));
  };
  for (dhp::Batch& batch : out) {
    for (dhp::Sample& s : batch.samples) {
      // Shrink until the sample holds at most max_tokens (the long tail kept, just capped).
      for (double extra = 1.0;; extra *= 1.25) {
        dhp::Sample t = s;
        t.text_tokens = scaled(s.text_tokens, text_scale * extra, 1);
        for (dhp::VisualItem& item : t.visuals) {
          item.llm_tokens = scaled(item.llm_tokens, visual_scale * extra, 2);
          item.patches = c.merge * item.llm_tokens;
        }
        if (t.llm_tokens() <= max_tokens || extra > 1e6) {
          s = t;
          break;
        }
      }
    }
  }
  return out;
}

// A CPU "cluster" of `world` processes on `nodes` nodes, whose memory the run chooses so that
// the longest samples need context parallelism (see choose_capacity).
dhp::ClusterSpec cpu_cluster(int world, int nodes, double capacity_gib) {
  dhp::ClusterSpec c;
  c.name = fmt::format("cpu-{}", world);
  c.device = "cpu";
  c.num_nodes = nodes;
  c.devices_per_node = world / nodes;
  c.peak_tflops = 0.05;
  c.hbm_gbs = 20;
  c.mem_capacity_gib = capacity_gib;
  c.mem_reserved_gib = 0;
  c.intra_node = {5, 20};
  c.inter_node = {1, 50};
  return c;
}

// The smallest memory (on a x1.25 grid) with which every one of `batches` plans, times
// 1.25: memory stays a binding constraint, so long samples run on CP groups.
double choose_capacity(const Config& config, int world, int nodes,
                       const dhp::PlannerOptions& options, const std::vector<dhp::Batch>& batches) {
  // Grid point k is 0.001 GiB x 1.25^k; a batch that plans at k plans above it too, so each
  // batch's smallest k is found by bisection, and the run takes the largest.
  constexpr int kPoints = 64;
  const auto capacity = [](int k) { return 0.001 * std::pow(1.25, k); };
  const auto fits = [&](const dhp::Batch& b, int k) {
    try {
      (void)dhp::Planner(cpu_cluster(world, nodes, capacity(k)), config.spec(), options).plan(b);
      return true;
    } catch (const dhp::Error& e) {
      if (e.kind() != dhp::ErrorKind::DoesNotFit) throw;
      return false;
    }
  };
  int needed = 0;
  for (const dhp::Batch& b : batches) {
    if (fits(b, needed)) continue;
    int lo = needed, hi = kPoints;  // fits(lo) is false; hi is assumed to fit
    while (hi - lo > 1) {
      const int mid = (lo + hi) / 2;
      (fits(b, mid) ? hi : lo) = mid;
    }
    DHP_CHECK(hi < kPoints || fits(b, hi), DoesNotFit,
              "batch of step {}: no memory up to {:.0f} GiB lets it plan", b.step, capacity(kPoints));
    needed = hi;
  }
  return capacity(needed) * 1.25;
}

ReferenceResult reference_step(Model& model, const dhp::Batch& batch, std::uint64_t seed) {
  const Config& c = model.config();
  const dhp::EncoderSpec encoder = *c.spec().encoder;
  const auto options = model.parameters().front().options().requires_grad(false);
  for (const at::Tensor& p : model.parameters())
    if (p.grad().defined()) p.grad().zero_();
  std::int64_t labelled = 0;
  std::vector<SampleData> data;
  for (const dhp::Sample& s : batch.samples) {
    data.push_back(sample_data(c, s, seed));
    for (auto l : data.back().labels) labelled += l >= 0;
  }
  at::Tensor total = at::zeros({}, options);
  for (std::size_t si = 0; si < batch.samples.size(); ++si) {
    const dhp::Sample& sample = batch.samples[si];
    const SampleData& d = data[si];
    std::vector<at::Tensor> embeddings;
    std::int64_t patch_row = 0;
    for (const dhp::VisualItem& item : sample.visuals) {
      const at::Tensor x =
          at::tensor(std::vector<double>(d.patches.begin() + patch_row * c.patch_dim,
                                         d.patches.begin() + (patch_row + item.patches) * c.patch_dim))
              .view({item.patches, c.patch_dim})
              .to(options.dtype());
      patch_row += item.patches;
      const dhp::ItemPartRows rows = dhp::item_part_rows(encoder, item, 0, 1);
      // Full attention inside each span of the item.
      const Attention spans = [&](const at::Tensor& q, const at::Tensor& k, const at::Tensor& v) {
        std::vector<at::Tensor> outs;
        for (std::size_t s = 0; s + 1 < rows.span_tokens.size(); ++s) {
          const std::int64_t a = rows.span_tokens[s] * c.merge, b = rows.span_tokens[s + 1] * c.merge;
          const at::Tensor qs = q.slice(0, a, b), ks = k.slice(0, a, b), vs = v.slice(0, a, b);
          const at::Tensor scores =
              at::einsum("qhd,khd->hqk", {qs, ks}) / std::sqrt(static_cast<double>(q.size(2)));
          outs.push_back(at::einsum("hqk,khd->qhd", {at::softmax(scores, -1), vs}));
        }
        return at::cat(outs, 0);
      };
      embeddings.push_back(model.encode(x, spans));
    }
    const std::int64_t length = sample.llm_tokens();
    std::vector<std::int64_t> visual_rows;
    const auto offsets = dhp::visual_token_offsets(sample);
    for (std::size_t v = 0; v < sample.visuals.size(); ++v)
      for (std::int64_t t = 0; t < sample.visuals[v].llm_tokens; ++t) visual_rows.push_back(offsets[v] + t);
    const at::Tensor visual = embeddings.empty() ? at::zeros({0, c.hidden}, options) : at::cat(embeddings, 0);
    const Attention causal = [](const at::Tensor& q, const at::Tensor& k, const at::Tensor& v) {
      const std::int64_t rows = q.size(0), group = q.size(1) / k.size(1);
      const at::Tensor kr = k.repeat_interleave(group, 1), vr = v.repeat_interleave(group, 1);
      at::Tensor scores =
          at::einsum("qhd,khd->hqk", {q, kr}) / std::sqrt(static_cast<double>(q.size(2)));
      const at::Tensor mask = at::ones({rows, rows}, at::kBool).triu(1);
      scores = scores.masked_fill(mask, -std::numeric_limits<double>::infinity());
      return at::einsum("hqk,khd->qhd", {at::softmax(scores, -1), vr});
    };
    total = total + model.llm_loss(at::tensor(d.tokens), visual, at::tensor(visual_rows),
                                   at::tensor(d.labels), at::arange(length, at::kLong), causal);
  }
  total = total / static_cast<double>(labelled);
  total.backward();
  ReferenceResult out;
  out.loss = total.item<double>();
  for (const at::Tensor& p : model.parameters())
    out.grads.push_back(p.grad().defined() ? p.grad().clone() : at::zeros_like(p));
  return out;
}

}  // namespace vlm
