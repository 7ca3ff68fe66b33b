// dhp_attention_bench: the CUDA attention forward and forward+backward on the mission's
// workloads, packed variable-length batches built from the real length data of data/:
//   encoder_mathvista  Qwen2-VL's ViT on MathVista images: one non-causal sequence of
//                      patches per image, 16 heads of 80, bf16
//   llm_activitynet    Qwen2-VL-7B's LLM on ActivityNet videos (1 fps, 144 tokens a frame):
//                      causal, 28 query / 4 kv heads of 128, bf16
// each filled to --tokens rows (a seeded draw of samples; the last one cut to fit).
//
//   dhp_attention_bench [--format table|json] [--runs N] [--warmup N] [--tokens N]
//                       [--shapes FILE] [--write-shapes FILE]
//
// --write-shapes writes the workloads (lengths, heads, dtype, mask) as JSON and exits (no
// GPU needed); scripts/attention_vs_sdpa.py times PyTorch on the same file. Rows follow the
// measured-table schema of attention_backend.hpp ("backend": "dhp"). FLOPs: forward
// 4 * heads * head_dim per visible (query, key) pair, forward + backward 3.5x that. Times
// are cudaEvent medians of N runs after warm-up. Every workload is checked against the
// CPU reference first (the first and last 64 rows of every sequence): a mismatch exits 1.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "dhp/command_line.hpp"
#include "dhp/dataset.hpp"
#include "dhp/float16.hpp"
#include "dhp/kernels.hpp"

namespace dk = dhp::kernels;

namespace {

struct Workload {
  std::string name;
  std::string dtype = "bf16";
  int head_dim = 0, heads_q = 0, heads_kv = 0;
  bool causal = true;
  std::vector<int> lengths;

  double visible_pairs() const {
    double pairs = 0;
    for (int l : lengths) pairs += causal ? 0.5 * l * (l + 1.0) : static_cast<double>(l) * l;
    return pairs;
  }
  std::int64_t tokens() const {
    std::int64_t t = 0;
    for (int l : lengths) t += l;
    return t;
  }
};

// Samples drawn in a seeded order until `tokens` rows; the last one cut to fit.
template <typename LengthOf>
std::vector<int> fill(std::vector<dhp::Sample> pool, std::int64_t tokens, LengthOf length_of) {
  std::mt19937_64 rng(2026);
  std::shuffle(pool.begin(), pool.end(), rng);
  std::vector<int> lengths;
  std::int64_t left = tokens;
  for (const dhp::Sample& s : pool) {
    for (const std::int64_t l : length_of(s)) {
      if (left <= 0) return lengths;
      if (l <= 0) continue;
      lengths.push_back(static_cast<int>(std::min(l, left)));
      left -= lengths.back();
    }
  }
  return lengths;
}

std::vector<Workload> mission_workloads(std::int64_t tokens) {
  const dhp::DatasetAssumptions assumptions;
  Workload encoder{"encoder_mathvista", "bf16", 80, 16, 16, false, {}};
  encoder.lengths = fill(dhp::load_mathvista(dhp::default_data_path("mathvista"), assumptions),
                         tokens, [](const dhp::Sample& s) {
                           std::vector<std::int64_t> patches;
                           for (const dhp::VisualItem& v : s.visuals) patches.push_back(v.patches);
                           return patches;
                         });
  Workload llm{"llm_activitynet", "bf16", 128, 28, 4, true, {}};
  llm.lengths =
      fill(dhp::load_activitynet(dhp::default_data_path("activitynet"), assumptions), tokens,
           [](const dhp::Sample& s) { return std::vector<std::int64_t>{s.llm_tokens()}; });
  return {encoder, llm};
}

nlohmann::json to_json(const std::vector<Workload>& workloads) {
  nlohmann::json out = {{"workloads", nlohmann::json::array()}};
  for (const Workload& w : workloads)
    out["workloads"].push_back({{"name", w.name},
                                {"dtype", w.dtype},
                                {"head_dim", w.head_dim},
                                {"heads_q", w.heads_q},
                                {"heads_kv", w.heads_kv},
                                {"causal", w.causal},
                                {"lengths", w.lengths}});
  return out;
}

std::vector<Workload> read_workloads(const std::string& path) {
  std::ifstream in(path);
  if (!in) throw std::runtime_error("cannot read " + path);
  const nlohmann::json doc = nlohmann::json::parse(in);
  std::vector<Workload> out;
  for (const auto& w : doc.at("workloads"))
    out.push_back({w.at("name").get<std::string>(), w.at("dtype").get<std::string>(),
                   w.at("head_dim").get<int>(), w.at("heads_q").get<int>(),
                   w.at("heads_kv").get<int>(), w.at("causal").get<bool>(),
                   w.at("lengths").get<std::vector<int>>()});
  return out;
}

#define CUDA_CHECK(expr)                                                        \
  do {                                                                          \
    const cudaError_t err_ = (expr);                                            \
    if (err_ != cudaSuccess) {                                                  \
      std::fprintf(stderr, "%s failed: %s\n", #expr, cudaGetErrorString(err_)); \
      std::exit(1);                                                             \
    }                                                                           \
  } while (0)

void check(dk::Status s, const char* what) {
  if (s != dk::Status::Ok) {
    std::fprintf(stderr, "%s: %s: %s\n", what, dk::status_string(s), dk::last_error());
    std::exit(1);
  }
}

struct Options {
  bool json = false;
  int runs = 10;
  int warmup = 3;
  std::int64_t tokens = 65536;
  std::string shapes, write_shapes;
};

void declare_options(dhp::CommandLine& cli) {
  cli.option("--format", "F", "table (default) or json (one object per line)")
      .option("--runs", "N", "timed runs per workload; the median is reported (default 10)")
      .option("--warmup", "N", "untimed runs first (default 3)")
      .option("--tokens", "N", "rows per workload batch (default 65536)")
      .option("--shapes", "FILE", "read the workloads from FILE (as --write-shapes writes it)")
      .option("--write-shapes", "FILE", "write the workloads to FILE and exit (no GPU needed)")
      .note("Without a CUDA device it prints \"SKIPPED: no CUDA device\" and exits 0.");
}

Options parse(const dhp::CommandLine& cli) {
  Options o;
  o.json = cli.choice("--format", {"table", "json"}, "table") == "json";
  o.runs = static_cast<int>(cli.integer("--runs", o.runs, 1));
  o.warmup = static_cast<int>(cli.integer("--warmup", o.warmup, 0));
  o.tokens = cli.integer("--tokens", o.tokens, 1);
  o.shapes = cli.value_or("--shapes", "");
  o.write_shapes = cli.value_or("--write-shapes", "");
  return o;
}

template <typename F>
double median_ms(const Options& o, F&& launch) {
  cudaEvent_t start, stop;
  CUDA_CHECK(cudaEventCreate(&start));
  CUDA_CHECK(cudaEventCreate(&stop));
  for (int i = 0; i < o.warmup; ++i) launch();
  std::vector<float> times;
  for (int i = 0; i < o.runs; ++i) {
    CUDA_CHECK(cudaEventRecord(start));
    launch();
    CUDA_CHECK(cudaEventRecord(stop));
    CUDA_CHECK(cudaEventSynchronize(stop));
    float ms = 0;
    CUDA_CHECK(cudaEventElapsedTime(&ms, start, stop));
    times.push_back(ms);
  }
  cudaEventDestroy(start);
  cudaEventDestroy(stop);
  std::sort(times.begin(), times.end());
  return times[times.size() / 2];
}

std::uint16_t to_bits(float x, dk::DType t) {
  return t == dk::DType::BF16 ? dhp::float_to_bf16(x) : dhp::float_to_f16(x);
}
float from_bits(std::uint16_t b, dk::DType t) {
  return t == dk::DType::BF16 ? dhp::bf16_to_float(b) : dhp::f16_to_float(b);
}

// The GPU out against the CPU reference (fp32 on the same rounded inputs) on the rows it
// can afford: the first and the last 64 rows of every sequence (all of a shorter one), each
// against all its keys. Returns the worst |got - want| / max(1, |want|) over them (NaN
// counts as infinite).
double check_against_cpu(const Workload& w, dk::DType dtype, const std::vector<std::uint16_t>& q,
                         const std::vector<std::uint16_t>& k, const std::vector<std::uint16_t>& v,
                         const std::vector<std::uint16_t>& out) {
  const int hq = w.heads_q, hkv = w.heads_kv, hd = w.head_dim;
  std::vector<std::int32_t> cu_q{0}, cu_k{0}, q_pos, rows;
  std::int64_t begin = 0;
  for (int l : w.lengths) {
    int checked = 0;
    for (int i = 0; i < l; ++i) {
      if (i >= 64 && i < l - 64) continue;
      rows.push_back(static_cast<std::int32_t>(begin + i));
      q_pos.push_back(i);
      ++checked;
    }
    cu_q.push_back(cu_q.back() + checked);
    cu_k.push_back(cu_k.back() + l);
    begin += l;
  }
  auto widen = [&](const std::vector<std::uint16_t>& bits, std::int64_t row0, std::int64_t n,
                   int heads) {
    std::vector<float> f(static_cast<std::size_t>(n * heads * hd));
    for (std::size_t i = 0; i < f.size(); ++i)
      f[i] = from_bits(bits[static_cast<std::size_t>(row0 * heads * hd) + i], dtype);
    return f;
  };
  std::vector<float> fq;
  for (std::int32_t r : rows) {
    const auto row = widen(q, r, 1, hq);
    fq.insert(fq.end(), row.begin(), row.end());
  }
  const std::vector<float> fk = widen(k, 0, begin, hkv), fv = widen(v, 0, begin, hkv);
  std::vector<float> ref(fq.size()), lse(rows.size() * static_cast<std::size_t>(hq));
  dk::AttentionForwardArgs a;
  a.dtype = dk::DType::F32;
  a.device = dk::Device::CPU;
  a.shape = {hq, hkv, hd, 0.0, w.causal};
  a.seqs = {cu_q.data(),
            cu_k.data(),
            q_pos.data(),
            nullptr,
            static_cast<int>(w.lengths.size()),
            cu_q.back(),
            cu_k.back(),
            0,
            0};
  a.q = fq.data();
  a.k = fk.data();
  a.v = fv.data();
  a.out = ref.data();
  a.lse = lse.data();
  check(dk::attention_forward(a), "CPU reference");
  double worst = 0;
  for (std::size_t i = 0; i < rows.size(); ++i)
    for (int e = 0; e < hq * hd; ++e) {
      const double want = ref[i * hq * hd + e];
      const double got = from_bits(out[static_cast<std::size_t>(rows[i]) * hq * hd + e], dtype);
      const double err = std::abs(got - want) / std::max(1.0, std::abs(want));
      worst = std::isnan(got) ? INFINITY : std::max(worst, err);
    }
  return worst;
}

struct Row {
  double fwd_ms = 0, fwd_bwd_ms = 0, max_error = 0;
};

Row bench(const Options& o, const Workload& w) {
  const dk::DType dtype = w.dtype == "bf16" ? dk::DType::BF16 : dk::DType::F16;
  const std::int64_t tokens = w.tokens();
  std::vector<std::int32_t> cu(w.lengths.size() + 1, 0);
  for (std::size_t i = 0; i < w.lengths.size(); ++i) cu[i + 1] = cu[i] + w.lengths[i];
  const int max_len = *std::max_element(w.lengths.begin(), w.lengths.end());
  const std::size_t nq = static_cast<std::size_t>(tokens) * w.heads_q * w.head_dim;
  const std::size_t nk = static_cast<std::size_t>(tokens) * w.heads_kv * w.head_dim;
  std::mt19937 rng(1);
  std::normal_distribution<float> dist(0.f, 1.f);
  auto random16 = [&](std::size_t n) {
    std::vector<std::uint16_t> bits(n);
    for (auto& b : bits) b = to_bits(dist(rng), dtype);
    return bits;
  };
  const auto hq_ = random16(nq), hk = random16(nk), hv = random16(nk), hdout = random16(nq);
  void *q, *k, *v, *out, *dout, *dq, *dk_, *dv, *lse;
  std::int32_t* d_cu;
  for (auto [p, host] :
       {std::pair{&q, &hq_}, std::pair{&k, &hk}, std::pair{&v, &hv}, std::pair{&dout, &hdout}}) {
    CUDA_CHECK(cudaMalloc(p, host->size() * 2));
    CUDA_CHECK(cudaMemcpy(*p, host->data(), host->size() * 2, cudaMemcpyHostToDevice));
  }
  for (auto [p, n] :
       {std::pair{&out, nq}, std::pair{&dq, nq}, std::pair{&dk_, nk}, std::pair{&dv, nk}})
    CUDA_CHECK(cudaMalloc(p, n * 2));
  CUDA_CHECK(cudaMalloc(&lse, static_cast<std::size_t>(tokens) * w.heads_q * sizeof(float)));
  CUDA_CHECK(cudaMalloc(&d_cu, cu.size() * sizeof(std::int32_t)));
  CUDA_CHECK(cudaMemcpy(d_cu, cu.data(), cu.size() * sizeof(std::int32_t), cudaMemcpyHostToDevice));

  const dk::PackedSeqs seqs{d_cu,   d_cu,   nullptr, nullptr, static_cast<int>(w.lengths.size()),
                            tokens, tokens, max_len, max_len};
  dk::AttentionForwardArgs fwd;
  fwd.dtype = dtype;
  fwd.device = dk::Device::CUDA;
  fwd.shape = {w.heads_q, w.heads_kv, w.head_dim, 0.0, w.causal};
  fwd.seqs = seqs;
  fwd.q = q;
  fwd.k = k;
  fwd.v = v;
  fwd.out = out;
  fwd.lse = lse;
  dk::AttentionBackwardArgs bwd;
  bwd.dtype = dtype;
  bwd.device = dk::Device::CUDA;
  bwd.shape = fwd.shape;
  bwd.seqs = seqs;
  bwd.q = q;
  bwd.k = k;
  bwd.v = v;
  bwd.out = out;
  bwd.dout = dout;
  bwd.lse = lse;
  bwd.dq = dq;
  bwd.dk = dk_;
  bwd.dv = dv;

  Row row;
  check(dk::attention_forward(fwd), "attention_forward");
  CUDA_CHECK(cudaDeviceSynchronize());
  std::vector<std::uint16_t> got(nq);
  CUDA_CHECK(cudaMemcpy(got.data(), out, nq * 2, cudaMemcpyDeviceToHost));
  row.max_error = check_against_cpu(w, dtype, hq_, hk, hv, got);
  row.fwd_ms = median_ms(o, [&] { check(dk::attention_forward(fwd), "attention_forward"); });
  row.fwd_bwd_ms = median_ms(o, [&] {
    check(dk::attention_forward(fwd), "attention_forward");
    check(dk::attention_backward(bwd), "attention_backward");
  });
  for (void* p : {q, k, v, out, dout, dq, dk_, dv, lse}) cudaFree(p);
  cudaFree(d_cu);
  return row;
}

int run(const Options& o) {
  const std::vector<Workload> workloads =
      o.shapes.empty() ? mission_workloads(o.tokens) : read_workloads(o.shapes);
  if (!o.write_shapes.empty()) {
    std::ofstream(o.write_shapes) << to_json(workloads).dump(1) << "\n";
    for (const Workload& w : workloads)
      std::printf("%s: %zu sequences, %lld tokens, longest %d\n", w.name.c_str(), w.lengths.size(),
                  static_cast<long long>(w.tokens()),
                  *std::max_element(w.lengths.begin(), w.lengths.end()));
    return 0;
  }
  int devices = 0;
  if (cudaGetDeviceCount(&devices) != cudaSuccess || devices == 0) {
    std::printf("SKIPPED: no CUDA device\n");
    return 0;
  }
  cudaDeviceProp prop{};
  CUDA_CHECK(cudaGetDeviceProperties(&prop, 0));
  if (!o.json)
    std::printf("# %s, median of %d runs\n%-18s %5s %7s %4s %5s %8s %9s %8s %9s %8s\n", prop.name,
                o.runs, "workload", "seqs", "tokens", "hd", "heads", "fwd_ms", "fwd_TF/s", "f+b_ms",
                "f+b_TF/s", "max_err");
  int status = 0;
  for (const Workload& w : workloads) {
    const Row r = bench(o, w);
    const double flops = 4.0 * w.heads_q * w.head_dim * w.visible_pairs();
    const double fwd_tf = flops / (r.fwd_ms * 1e-3) / 1e12;
    const double fb_tf = 3.5 * flops / (r.fwd_bwd_ms * 1e-3) / 1e12;
    // bf16 rounds P to 8 bits before P V: the GPU kernel tests' bf16 tolerance (2.5e-2).
    const double tolerance = w.dtype == "bf16" ? 2.5e-2 : 4e-3;
    const bool ok = r.max_error <= tolerance;
    if (!ok) status = 1;
    if (o.json) {
      nlohmann::json row = {{"backend", "dhp"},
                            {"device", prop.name},
                            {"workload", w.name},
                            {"dtype", w.dtype},
                            {"head_dim", w.head_dim},
                            {"heads_q", w.heads_q},
                            {"heads_kv", w.heads_kv},
                            {"causal", w.causal},
                            {"tokens", w.tokens()},
                            {"seqs", w.lengths.size()},
                            {"visible_pairs", w.visible_pairs()},
                            {"fwd_ms", r.fwd_ms},
                            {"fwd_bwd_ms", r.fwd_bwd_ms},
                            {"fwd_tflops", fwd_tf},
                            {"fwd_bwd_tflops", fb_tf},
                            {"max_error", r.max_error},
                            {"check", ok ? "ok" : "MISMATCH"}};
      std::printf("%s\n", row.dump().c_str());
    } else {
      std::printf("%-18s %5zu %7lld %4d %2d/%-2d %8.3f %9.1f %8.3f %9.1f %8.2e%s\n", w.name.c_str(),
                  w.lengths.size(), static_cast<long long>(w.tokens()), w.head_dim, w.heads_q,
                  w.heads_kv, r.fwd_ms, fwd_tf, r.fwd_bwd_ms, fb_tf, r.max_error,
                  ok ? "" : "  MISMATCH");
    }
    if (!ok)
      std::fprintf(stderr, "%s: max error %.3g against the CPU reference > %.3g\n", w.name.c_str(),
                   r.max_error, tolerance);
    std::fflush(stdout);
  }
  return status;
}

}  // namespace

int main(int argc, char** argv) {
  dhp::CommandLine cli("dhp_attention_bench",
                       "  dhp_attention_bench [--format table|json] [--runs N] [--warmup N] "
                       "[--tokens N]\n                      [--shapes FILE] [--write-shapes FILE]");
  declare_options(cli);
  return dhp::run_tool(cli, argc, argv, [&] { return run(parse(cli)); });
}
