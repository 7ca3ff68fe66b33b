// The framework-free step executor runs a whole multimodal step exactly as its plan says:
// a toy vision-language model (patch embedding, one bidirectional attention block, a
// projector merging 2 patches per LLM token; token embedding, one causal attention block,
// an output layer, cross-entropy), its backward written by hand, trained through the
// executor under hand-built plans of every shape (CP groups of any degree, zigzag and whole
// sequences, whole items, span ranges, shards in rings, colocated and disjoint encoders),
// gives the loss and every parameter's gradient of the same model run by one process over
// whole samples and whole items (f64 to 1e-9, f32 to 1e-4, norm-wise relative).
#include <gtest/gtest.h>

#include <Eigen/Dense>

#include <cmath>
#include <map>
#include <string>

#include "dhp/error.hpp"
#include "dhp/kernels.hpp"
#include "dhp/step_executor.hpp"
#include "multimodal_test_util.hpp"
#include "runtime_test_util.hpp"

namespace dhp {
namespace {

using testing::world;

constexpr int kPatchDim = 6, kEnc = 8, kEncHeads = 2, kHidden = 8, kLlmHeads = 2, kVocab = 11;
constexpr int kMerge = 2;  // patches per LLM token

template <typename T>
using Mat = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

template <typename T>
kernels::DType dtype_of() {
  return std::is_same_v<T, double> ? kernels::DType::F64 : kernels::DType::F32;
}

// The parameters (and, with the same shapes, the gradients).
template <typename T>
struct Params {
  Mat<T> wp, wq, wk, wv, wo, wm;          // encoder: patch embed, attention, projector
  Mat<T> embed, lq, lk, lv, lo, unembed;  // LLM
  std::vector<Mat<T>*> encoder() { return {&wp, &wq, &wk, &wv, &wo, &wm}; }
  std::vector<Mat<T>*> llm() { return {&embed, &lq, &lk, &lv, &lo, &unembed}; }

  static Params random(std::uint64_t seed) {
    Params p;
    std::mt19937_64 gen(seed);
    std::uniform_real_distribution<double> dist(-0.5, 0.5);
    const auto fill = [&](Mat<T>& m, int r, int c) {
      m.resize(r, c);
      for (int i = 0; i < r * c; ++i) m.data()[i] = static_cast<T>(dist(gen));
    };
    fill(p.wp, kPatchDim, kEnc);
    fill(p.wq, kEnc, kEnc);
    fill(p.wk, kEnc, kEnc);
    fill(p.wv, kEnc, kEnc);
    fill(p.wo, kEnc, kEnc);
    fill(p.wm, kMerge * kEnc, kHidden);
    fill(p.embed, kVocab, kHidden);
    fill(p.lq, kHidden, kHidden);
    fill(p.lk, kHidden, kHidden);
    fill(p.lv, kHidden, kHidden);
    fill(p.lo, kHidden, kHidden);
    fill(p.unembed, kVocab, kHidden);
    return p;
  }
  Params zeros_like() const {
    Params z = *this;
    for (Mat<T>* m : z.encoder()) m->setZero();
    for (Mat<T>* m : z.llm()) m->setZero();
    return z;
  }
};

// Attention callbacks: (q, k, v, out, lse) and (q, k, v, out, lse, dout, dq, dk, dv).
template <typename T>
using AttnFwd = std::function<void(const T*, const T*, const T*, T*, T*)>;
template <typename T>
using AttnBwd =
    std::function<void(const T*, const T*, const T*, const T*, const T*, const T*, T*, T*, T*)>;

template <typename T>
struct EncoderActs {
  Mat<T> x, h, q, k, v, a, lse, o;
};

template <typename T>
Mat<T> encoder_forward(const Params<T>& p, const Mat<T>& x, const AttnFwd<T>& attn,
                       EncoderActs<T>& acts) {
  acts.x = x;
  acts.h = x * p.wp;
  acts.q = acts.h * p.wq;
  acts.k = acts.h * p.wk;
  acts.v = acts.h * p.wv;
  acts.a.resize(x.rows(), kEnc);
  acts.lse.resize(kEncHeads, x.rows());
  attn(acts.q.data(), acts.k.data(), acts.v.data(), acts.a.data(), acts.lse.data());
  acts.o = acts.h + acts.a * p.wo;
  // Merge: rows 2i, 2i+1 side by side.
  const Eigen::Map<const Mat<T>> merged(acts.o.data(), x.rows() / kMerge, kMerge * kEnc);
  return merged * p.wm;
}

template <typename T>
void encoder_backward(const Params<T>& p, const EncoderActs<T>& acts, const Mat<T>& d_emb,
                      const AttnBwd<T>& attn, Params<T>& g) {
  const auto rows = acts.x.rows();
  const Eigen::Map<const Mat<T>> merged(acts.o.data(), rows / kMerge, kMerge * kEnc);
  g.wm += merged.transpose() * d_emb;
  Mat<T> d_merged = d_emb * p.wm.transpose();
  const Eigen::Map<const Mat<T>> d_o(d_merged.data(), rows, kEnc);
  g.wo += acts.a.transpose() * d_o;
  const Mat<T> d_a = d_o * p.wo.transpose();
  Mat<T> dq(rows, kEnc), dk(rows, kEnc), dv(rows, kEnc);
  attn(acts.q.data(), acts.k.data(), acts.v.data(), acts.a.data(), acts.lse.data(), d_a.data(),
       dq.data(), dk.data(), dv.data());
  g.wq += acts.h.transpose() * dq;
  g.wk += acts.h.transpose() * dk;
  g.wv += acts.h.transpose() * dv;
  const Mat<T> d_h = d_o + dq * p.wq.transpose() + dk * p.wk.transpose() + dv * p.wv.transpose();
  g.wp += acts.x.transpose() * d_h;
}

// The LLM over `rows` rows: text rows from the embedding, visual rows given. Returns the
// scaled loss; accumulates gradients; writes the visual rows' gradient.
template <typename T>
double llm_forward_backward(const Params<T>& p, const std::int64_t* tokens,
                            const std::int64_t* labels, std::int64_t rows,
                            const std::vector<std::int64_t>& visual_rows, const T* visual,
                            double scale, const AttnFwd<T>& fwd, const AttnBwd<T>& bwd,
                            Params<T>& g, T* d_visual) {
  Mat<T> x(rows, kHidden);
  for (std::int64_t r = 0; r < rows; ++r) x.row(r) = p.embed.row(tokens[r]);
  for (std::size_t i = 0; i < visual_rows.size(); ++i)
    for (int c = 0; c < kHidden; ++c) x(visual_rows[i], c) = visual[i * kHidden + c];
  const Mat<T> q = x * p.lq, k = x * p.lk, v = x * p.lv;
  Mat<T> a(rows, kHidden), lse(kLlmHeads, rows);
  fwd(q.data(), k.data(), v.data(), a.data(), lse.data());
  const Mat<T> y = x + a * p.lo;
  const Mat<T> logits = y * p.unembed.transpose();
  Mat<T> d_logits = Mat<T>::Zero(rows, kVocab);
  double loss = 0;
  for (std::int64_t r = 0; r < rows; ++r) {
    if (labels[r] < 0) continue;
    const T top = logits.row(r).maxCoeff();
    const auto e = (logits.row(r).array() - top).exp();
    const T sum = e.sum();
    loss += (static_cast<double>(std::log(sum)) + top - logits(r, labels[r])) * scale;
    d_logits.row(r) = (e / sum).matrix() * static_cast<T>(scale);
    d_logits(r, labels[r]) -= static_cast<T>(scale);
  }
  g.unembed += d_logits.transpose() * y;
  const Mat<T> d_y = d_logits * p.unembed;
  g.lo += a.transpose() * d_y;
  const Mat<T> d_a = d_y * p.lo.transpose();
  Mat<T> dq(rows, kHidden), dk(rows, kHidden), dv(rows, kHidden);
  bwd(q.data(), k.data(), v.data(), a.data(), lse.data(), d_a.data(), dq.data(), dk.data(),
      dv.data());
  g.lq += x.transpose() * dq;
  g.lk += x.transpose() * dk;
  g.lv += x.transpose() * dv;
  const Mat<T> d_x = d_y + dq * p.lq.transpose() + dk * p.lk.transpose() + dv * p.lv.transpose();
  std::vector<char> visual_row(static_cast<std::size_t>(rows), 0);
  for (std::size_t i = 0; i < visual_rows.size(); ++i) {
    visual_row[static_cast<std::size_t>(visual_rows[i])] = 1;
    for (int c = 0; c < kHidden; ++c) d_visual[i * kHidden + c] = d_x(visual_rows[i], c);
  }
  for (std::int64_t r = 0; r < rows; ++r)
    if (!visual_row[static_cast<std::size_t>(r)]) g.embed.row(tokens[r]) += d_x.row(r);
  return loss;
}

// Plain attention of one process over packed sequences (the reference's attention).
template <typename T>
struct LocalAttention {
  std::vector<std::int32_t> cu;
  kernels::AttentionShape shape;
  AttnFwd<T> fwd() const {
    return [this](const T* q, const T* k, const T* v, T* out, T* lse) {
      kernels::AttentionForwardArgs a;
      a.dtype = dtype_of<T>();
      a.shape = shape;
      a.seqs.cu_seqlens_q = a.seqs.cu_seqlens_k = cu.data();
      a.seqs.num_seqs = static_cast<int>(cu.size()) - 1;
      a.seqs.total_q = a.seqs.total_k = cu.back();
      a.q = q;
      a.k = k;
      a.v = v;
      a.out = out;
      a.lse = lse;
      ASSERT_EQ(kernels::attention_forward(a), kernels::Status::Ok) << kernels::last_error();
    };
  }
  AttnBwd<T> bwd() const {
    return [this](const T* q, const T* k, const T* v, const T* out, const T* lse, const T* dout,
                  T* dq, T* dk, T* dv) {
      kernels::AttentionBackwardArgs a;
      a.dtype = dtype_of<T>();
      a.shape = shape;
      a.seqs.cu_seqlens_q = a.seqs.cu_seqlens_k = cu.data();
      a.seqs.num_seqs = static_cast<int>(cu.size()) - 1;
      a.seqs.total_q = a.seqs.total_k = cu.back();
      a.q = q;
      a.k = k;
      a.v = v;
      a.out = out;
      a.lse = lse;
      a.dout = dout;
      a.dq = dq;
      a.dk = dk;
      a.dv = dv;
      ASSERT_EQ(kernels::attention_backward(a), kernels::Status::Ok) << kernels::last_error();
    };
  }
};

const kernels::AttentionShape kLlmShape{kLlmHeads, kLlmHeads, kHidden / kLlmHeads, 0.0, true};
const kernels::AttentionShape kEncShape{kEncHeads, kEncHeads, kEnc / kEncHeads, 0.0, false};

template <typename T>
struct Result {
  double loss = 0;
  Params<T> grads;
};

// One process, whole samples and whole items: the computation the plan must reproduce.
template <typename T>
Result<T> reference_step(const Batch& batch, const EncoderSpec& enc, const Params<T>& p,
                         std::uint64_t data_seed) {
  Result<T> res{0, p.zeros_like()};
  std::int64_t loss_rows = 0;
  struct SampleData {
    std::vector<std::int64_t> tokens, labels;
    std::vector<double> patches;
  };
  std::vector<SampleData> data(batch.samples.size());
  for (std::size_t s = 0; s < batch.samples.size(); ++s) {
    testing::sample_data(batch, static_cast<int>(s), kVocab, kPatchDim, data_seed, data[s].tokens,
                         data[s].labels, data[s].patches);
    for (auto l : data[s].labels) loss_rows += l >= 0;
  }
  const double scale = 1.0 / static_cast<double>(loss_rows);
  for (std::size_t s = 0; s < batch.samples.size(); ++s) {
    const Sample& sample = batch.samples[s];
    // Encoder, item by item; the item's spans attend separately.
    std::vector<Mat<T>> embeddings;
    std::vector<EncoderActs<T>> acts(sample.visuals.size());
    std::vector<LocalAttention<T>> attention(sample.visuals.size());
    std::int64_t patch_row = 0;
    for (std::size_t v = 0; v < sample.visuals.size(); ++v) {
      const VisualItem& item = sample.visuals[v];
      const ItemPartRows rows = item_part_rows(enc, item, 0, 1);
      attention[v].shape = kEncShape;
      for (std::int64_t t : rows.span_tokens)
        attention[v].cu.push_back(static_cast<std::int32_t>(t * kMerge));
      Mat<T> x(item.patches, kPatchDim);
      for (std::int64_t i = 0; i < item.patches * kPatchDim; ++i)
        x.data()[i] =
            static_cast<T>(data[s].patches[static_cast<std::size_t>(patch_row * kPatchDim + i)]);
      patch_row += item.patches;
      embeddings.push_back(encoder_forward(p, x, attention[v].fwd(), acts[v]));
    }
    // The sample's sequence, visual rows at their offsets.
    std::vector<std::int64_t> visual_rows;
    std::vector<T> visual;
    const auto offsets = visual_token_offsets(sample);
    for (std::size_t v = 0; v < sample.visuals.size(); ++v)
      for (std::int64_t t = 0; t < sample.visuals[v].llm_tokens; ++t) {
        visual_rows.push_back(offsets[v] + t);
        for (int c = 0; c < kHidden; ++c) visual.push_back(embeddings[v](t, c));
      }
    LocalAttention<T> llm_attention{{0, static_cast<std::int32_t>(sample.llm_tokens())}, kLlmShape};
    std::vector<T> d_visual(visual.size());
    res.loss += llm_forward_backward(
        p, data[s].tokens.data(), data[s].labels.data(), sample.llm_tokens(), visual_rows,
        visual.data(), scale, llm_attention.fwd(), llm_attention.bwd(), res.grads, d_visual.data());
    std::size_t at = 0;
    for (std::size_t v = 0; v < sample.visuals.size(); ++v) {
      Mat<T> d_emb(sample.visuals[v].llm_tokens, kHidden);
      for (std::int64_t i = 0; i < d_emb.size(); ++i) d_emb.data()[i] = d_visual[at++];
      encoder_backward(p, acts[v], d_emb, attention[v].bwd(), res.grads);
    }
  }
  return res;
}

// The same model behind the executor's StepModel.
template <typename T>
class ToyModel final : public StepModel {
 public:
  explicit ToyModel(const Params<T>& p) : params_(p), grads_(p.zeros_like()) {}

  void encoder_forward(const EncoderWave& work, EncoderContext& ctx, const void* patches,
                       void* embeddings) override {
    EncoderActs<T>& acts = acts_[ctx.wave];
    Mat<T> x(work.patch_rows, kPatchDim);
    if (work.patch_rows > 0) std::memcpy(x.data(), patches, sizeof(T) * x.size());
    const Mat<T> emb = testing_forward(x, ctx, acts);
    if (emb.size() > 0) std::memcpy(embeddings, emb.data(), sizeof(T) * emb.size());
  }
  void encoder_backward(const EncoderWave& work, EncoderContext& ctx,
                        const void* d_embeddings) override {
    Mat<T> d_emb(work.token_rows, kHidden);
    if (d_emb.size() > 0) std::memcpy(d_emb.data(), d_embeddings, sizeof(T) * d_emb.size());
    EncoderAttentionContext attention = ctx.attention;
    dhp::encoder_backward<T>(
        params_, acts_.at(ctx.wave), d_emb,
        [&](const T* q, const T* k, const T* v, const T* out, const T* lse, const T* dout, T* dq,
            T* dk,
            T* dv) { encoder_attention_backward(attention, q, k, v, out, lse, dout, dq, dk, dv); },
        grads_);
    acts_.erase(ctx.wave);
    if (ctx.gradients != nullptr)
      for (int i = 0; i < 6; ++i) ctx.gradients->ready(i);  // all final: the last wave's
  }
  double llm_forward_backward(const LlmWave& work, LlmContext& ctx, const std::int64_t* tokens,
                              const std::int64_t* labels, const void* visual, double scale,
                              void* d_visual) override {
    std::vector<std::int64_t> visual_rows;
    for (const VisualRow& v : work.visuals) visual_rows.push_back(v.local_row);
    const CpAttentionContext attention = ctx.attention;
    const double loss = dhp::llm_forward_backward<T>(
        params_, tokens, labels, work.layout.rows, visual_rows, static_cast<const T*>(visual),
        scale,
        [&](const T* q, const T* k, const T* v, T* out, T* lse) {
          cp_attention_forward(attention, q, k, v, out, lse);
        },
        [&](const T* q, const T* k, const T* v, const T* out, const T* lse, const T* dout, T* dq,
            T* dk,
            T* dv) { cp_attention_backward(attention, q, k, v, out, lse, dout, dq, dk, dv); },
        grads_, static_cast<T*>(d_visual));
    if (ctx.gradients != nullptr)
      for (int i = 0; i < 6; ++i) ctx.gradients->ready(i);
    return loss;
  }
  std::vector<GradBuckets::Gradient> llm_gradients() override { return list(grads_.llm()); }
  std::vector<GradBuckets::Gradient> encoder_gradients() override { return list(grads_.encoder()); }
  Params<T>& grads() { return grads_; }

 private:
  Mat<T> testing_forward(const Mat<T>& x, EncoderContext& ctx, EncoderActs<T>& acts) {
    const EncoderAttentionContext attention = ctx.attention;
    return dhp::encoder_forward<T>(
        params_, x,
        [&](const T* q, const T* k, const T* v, T* out, T* lse) {
          encoder_attention_forward(attention, q, k, v, out, lse);
        },
        acts);
  }
  static std::vector<GradBuckets::Gradient> list(std::vector<Mat<T>*> mats) {
    std::vector<GradBuckets::Gradient> out;
    for (auto it = mats.rbegin(); it != mats.rend(); ++it)  // ready in reverse
      out.push_back({(*it)->data(), static_cast<std::int64_t>((*it)->size())});
    return out;
  }

  const Params<T>& params_;
  Params<T> grads_;
  std::map<int, EncoderActs<T>> acts_;
};

template <typename T>
double relative_error(const Mat<T>& a, const Mat<T>& b) {
  const double norm = b.template cast<double>().norm();
  return (a - b).template cast<double>().norm() / std::max(norm, 1e-300);
}

template <typename T>
void expect_step_matches(const Batch& batch, const Plan& plan, double tolerance,
                         const std::string& what) {
  Communicator& comm = world();
  const EncoderSpec enc = testing::small_encoder_spec();
  const Params<T> params = Params<T>::random(17);
  const std::uint64_t data_seed = 5;
  const auto owners = testing::round_robin_owners(batch, comm.size());
  const testing::OwnedData data =
      testing::owned_data(batch, owners, comm.rank(), kVocab, kPatchDim, data_seed);
  const std::vector<T> patches(data.patches.begin(), data.patches.end());

  GroupPool pool(comm);
  StepOptions options;
  options.dtype = dtype_of<T>();
  options.llm_hidden = kHidden;
  options.patch_dim = kPatchDim;
  options.llm_attention = kLlmShape;
  options.encoder_attention = kEncShape;
  options.encoder = &enc;
  StepExecutor executor(comm, pool, options);
  ToyModel<T> model(params);
  StepInputs inputs{owners, data.tokens.data(), data.labels.data(), patches.data()};
  const StepStats stats = executor.run(batch, plan, inputs, model);

  const Result<T> ref = reference_step(batch, enc, params, data_seed);
  EXPECT_NEAR(stats.loss, ref.loss, tolerance * std::abs(ref.loss)) << what;
  EXPECT_EQ(stats.boundary.sent_forward, stats.boundary.min_forward) << what;
  EXPECT_EQ(stats.boundary.sent_backward, stats.boundary.min_backward) << what;
  EXPECT_EQ(stats.dispatch_bytes, stats.dispatch_min_bytes) << what;
  if (comm.size() > 1) {
    EXPECT_GT(stats.dispatch_bytes, 0) << what;
  }
  const StepSchedule schedule(batch, plan, &enc, comm.rank(), comm.size());
  double worst = 0;
  auto compare = [&](std::vector<Mat<T>*> got, std::vector<const Mat<T>*> want) {
    for (std::size_t i = 0; i < got.size(); ++i) {
      const double err = relative_error(*got[i], *want[i]);
      worst = std::max(worst, err);
      EXPECT_LT(err, tolerance) << what << ": parameter " << i << " on rank " << comm.rank();
    }
  };
  Params<T> ref_grads = ref.grads;
  if (schedule.runs_llm()) {
    auto want = ref_grads.llm();
    compare(model.grads().llm(), {want.begin(), want.end()});
  }
  if (schedule.runs_encoder()) {
    auto want = ref_grads.encoder();
    compare(model.grads().encoder(), {want.begin(), want.end()});
  }
  if (comm.rank() == 0)
    std::printf(
        "%s: loss %.12f (reference %.12f), worst gradient error %.3g, boundary %lld/%lld "
        "bytes forward, %lld communicators created\n",
        what.c_str(), stats.loss, ref.loss, worst,
        static_cast<long long>(stats.boundary.sent_forward),
        static_cast<long long>(stats.boundary.min_forward),
        static_cast<long long>(stats.comm_created));
}

TEST(StepExecutor, ColocatedPlansOfEveryShapeMatchOneProcess) {
  const EncoderSpec enc = testing::small_encoder_spec();
  const int n = world().size();
  for (std::uint64_t seed : {1u, 2u, 3u}) {
    const Batch batch = testing::multimodal_batch(11, seed, enc);
    testing::PlanShape shape;
    shape.waves = 1 + static_cast<int>(seed % 3);
    const Plan plan = testing::multimodal_plan(batch, enc, n, shape, seed * 31);
    expect_step_matches<double>(batch, plan, 1e-9, "colocated f64 seed " + std::to_string(seed));
    expect_step_matches<float>(batch, plan, 1e-4, "colocated f32 seed " + std::to_string(seed));
  }
}

TEST(StepExecutor, OneRingOverTheWorldWithEveryItemCut) {
  const EncoderSpec enc = testing::small_encoder_spec();
  const int n = world().size();
  const Batch batch = testing::multimodal_batch(7, 9, enc, 80);
  testing::PlanShape shape;
  shape.waves = 1;
  shape.groups = {n};
  const Plan plan = testing::multimodal_plan(batch, enc, n, shape, 77);
  expect_step_matches<double>(batch, plan, 1e-9, "one ring of " + std::to_string(n));
}

TEST(StepExecutor, DisjointEncoderRunsAWaveAhead) {
  const int n = world().size();
  if (n < 2) GTEST_SKIP() << "a disjoint encoder needs two processes";
  const EncoderSpec enc = testing::small_encoder_spec();
  for (std::uint64_t seed : {4u, 5u}) {
    const Batch batch = testing::multimodal_batch(9, seed, enc);
    testing::PlanShape shape;
    shape.placement = EncoderPlacement::Disjoint;
    shape.waves = 3;
    shape.encoder_devices = std::max(1, n / 3);
    const Plan plan = testing::multimodal_plan(batch, enc, n, shape, seed * 13);
    expect_step_matches<double>(batch, plan, 1e-9, "disjoint f64 seed " + std::to_string(seed));
    expect_step_matches<float>(batch, plan, 1e-4, "disjoint f32 seed " + std::to_string(seed));
  }
}

TEST(StepExecutor, ABadPlanIsRefusedOnEveryRankNamingTheItem) {
  const EncoderSpec enc = testing::small_encoder_spec();
  const int n = world().size();
  Batch batch = testing::multimodal_batch(6, 12, enc);
  batch.samples[0].visuals = {VisualItem{.patches = 9, .llm_tokens = 4, .frames = 1}};
  testing::PlanShape shape;
  const Plan plan = testing::multimodal_plan(batch, enc, n, shape, 3);
  try {
    expect_step_matches<double>(batch, plan, 1e-9, "bad item");
    ADD_FAILURE() << "an item of 9 patches for 4 tokens was accepted";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::InvalidArgument);
    EXPECT_NE(std::string(e.what()).find("sample 0 (id 1000) visual 0"), std::string::npos)
        << e.what();
    EXPECT_NE(std::string(e.what()).find("needs 8 patches"), std::string::npos) << e.what();
  }
  // The communicator is still usable.
  const Batch good = testing::multimodal_batch(6, 12, enc);
  expect_step_matches<double>(good, testing::multimodal_plan(good, enc, n, shape, 3), 1e-9,
                              "after a refused step");
}

// Runs one step of `plan` and returns its error (InvalidArgument or Communication expected).
Error step_error(const Batch& batch, const Plan& plan) {
  try {
    expect_step_matches<double>(batch, plan, 1e-9, "a bad plan");
  } catch (const Error& e) {
    return e;
  }
  ADD_FAILURE() << "the bad plan was run";
  return Error(ErrorKind::Internal, "");
}

TEST(StepExecutor, PlansThatDoNotFitTheirBatchOrDifferAcrossRanksAreRefusedEverywhere) {
  const EncoderSpec enc = testing::small_encoder_spec();
  const int n = world().size();
  const Batch batch = testing::multimodal_batch(6, 21, enc);
  testing::PlanShape shape;
  const Plan good = testing::multimodal_plan(batch, enc, n, shape, 8);

  Plan missing = good;  // a sample in no wave
  for (auto& wave : missing.waves)
    std::erase_if(wave.sequences, [](const SequencePlan& s) { return s.sample == 2; });
  std::erase_if(missing.encoder_tasks, [](const EncoderTask& t) { return t.sample == 2; });
  Error e = step_error(batch, missing);
  EXPECT_EQ(e.kind(), ErrorKind::InvalidArgument);
  EXPECT_NE(std::string(e.what()).find("sample 2 (id 1002) is in no wave"), std::string::npos)
      << e.what();

  Plan out_of_range = good;  // an encoder task on a rank the encoder does not have
  ASSERT_FALSE(out_of_range.encoder_tasks.empty());
  out_of_range.encoder_tasks.front().rank = out_of_range.encoder.ranks;
  e = step_error(batch, out_of_range);
  EXPECT_EQ(e.kind(), ErrorKind::InvalidArgument);
  EXPECT_NE(std::string(e.what()).find("encoder task 0 on encoder rank " +
                                       std::to_string(out_of_range.encoder.ranks)),
            std::string::npos)
      << e.what();

  if (n > 1) {  // one rank planned something else
    Plan differs = good;
    if (world().rank() == n - 1) differs.waves.push_back(WavePlan{});
    e = step_error(batch, differs);
    EXPECT_EQ(e.kind(), ErrorKind::Communication);
    EXPECT_NE(std::string(e.what()).find("ranks hold different plans"), std::string::npos)
        << e.what();
  }
  expect_step_matches<double>(batch, good, 1e-9, "after refused plans");
}

}  // namespace
}  // namespace dhp
