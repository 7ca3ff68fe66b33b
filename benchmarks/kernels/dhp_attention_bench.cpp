// dhp_attention_bench: throughput of the CUDA attention forward and backward on packed and
// unpacked causal bf16 batches, one fixed-schema row per shape.
//
//   dhp_attention_bench [--format table|json] [--runs N] [--warmup N] [--max-tokens N]
//                       [--dtype bf16|f16] [--full]
//
// FLOPs count causal work once: forward 4*L^2*H*D/2 per sequence of length L (two
// matmuls), backward 2.5x that (five matmuls). Times are cudaEvent medians of N runs after
// warm-up. scripts/attention_vs_sdpa.py prints PyTorch SDPA rows in the same schema.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <string>
#include <vector>

#include "dhp/command_line.hpp"
#include "dhp/kernels.hpp"

namespace dk = dhp::kernels;

namespace {

struct Options {
  bool json = false;
  int runs = 10;
  int warmup = 3;
  int max_tokens = 32768;
  dk::DType dtype = dk::DType::BF16;
  bool causal = true;
};

void declare_options(dhp::CommandLine& cli) {
  cli.option("--format", "F", "table (default) or json (one object per line)")
      .option("--runs", "N", "timed runs per shape; the median is reported (default 10)")
      .option("--warmup", "N", "untimed runs first (default 3)")
      .option("--max-tokens", "N",
              "largest total tokens per shape, from 512 doubling (default 32768)")
      .option("--dtype", "T", "bf16 (default) or f16")
      .flag("--full", "non-causal attention (default: causal)")
      .note("Without a CUDA device it prints \"SKIPPED: no CUDA device\" and exits 0.");
}

Options parse(const dhp::CommandLine& cli) {
  Options o;
  o.json = cli.choice("--format", {"table", "json"}, "table") == "json";
  o.runs = static_cast<int>(cli.integer("--runs", o.runs, 1));
  o.warmup = static_cast<int>(cli.integer("--warmup", o.warmup, 0));
  o.max_tokens = static_cast<int>(cli.integer("--max-tokens", o.max_tokens, 512));
  o.dtype =
      cli.choice("--dtype", {"bf16", "f16"}, "bf16") == "bf16" ? dk::DType::BF16 : dk::DType::F16;
  o.causal = !cli.has("--full");
  return o;
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

// Packed batches mix lengths the way real data does: halves down to 1/8, then the rest.
std::vector<int> packed_lengths(int tokens) {
  std::vector<int> lens;
  int left = tokens;
  for (int part = tokens / 2; part >= 128 && left > 0; part /= 2) {
    lens.push_back(std::min(part, left));
    left -= lens.back();
    if (lens.size() == 3) break;
  }
  while (left > 0) {  // the remainder in sequences of at most 512
    lens.push_back(std::min(left, 512));
    left -= lens.back();
  }
  return lens;
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

struct Row {
  std::string layout;
  int tokens, seqs, head_dim, heads;
  double fwd_ms, fwd_tflops, bwd_ms, bwd_tflops;
};

Row bench_shape(const Options& o, const std::string& layout, int tokens, int head_dim) {
  const int heads = 2048 / head_dim;  // model width 2048 for both head sizes
  const std::vector<int> lens =
      layout == "packed" ? packed_lengths(tokens) : std::vector<int>{tokens};
  std::vector<std::int32_t> cu(lens.size() + 1, 0);
  double work = 0;  // multiply-adds of QK^T and PV counted once: 2 * L^2 * H * D (x 1/2 causal)
  for (std::size_t i = 0; i < lens.size(); ++i) {
    cu[i + 1] = cu[i] + lens[i];
    work +=
        4.0 * lens[i] * static_cast<double>(lens[i]) * heads * head_dim * (o.causal ? 0.5 : 1.0);
  }
  const std::size_t elems = static_cast<std::size_t>(tokens) * heads * head_dim;
  std::vector<std::uint16_t> host(elems);
  std::mt19937 rng(1);
  std::normal_distribution<float> dist(0.f, 1.f);
  for (auto& h : host) {
    const float x = dist(rng);
    if (o.dtype == dk::DType::BF16) {
      const __nv_bfloat16 b = __float2bfloat16_rn(x);
      h = *reinterpret_cast<const std::uint16_t*>(&b);
    } else {
      const __half b = __float2half_rn(x);
      h = *reinterpret_cast<const std::uint16_t*>(&b);
    }
  }

  void *q, *k, *v, *out, *dout, *dq, *dk_, *dv, *lse;
  std::int32_t* d_cu;
  for (void** p : {&q, &k, &v, &out, &dout, &dq, &dk_, &dv}) {
    CUDA_CHECK(cudaMalloc(p, elems * 2));
    CUDA_CHECK(cudaMemcpy(*p, host.data(), elems * 2, cudaMemcpyHostToDevice));
  }
  CUDA_CHECK(cudaMalloc(&lse, static_cast<std::size_t>(tokens) * heads * sizeof(float)));
  CUDA_CHECK(cudaMalloc(&d_cu, cu.size() * sizeof(std::int32_t)));
  CUDA_CHECK(cudaMemcpy(d_cu, cu.data(), cu.size() * sizeof(std::int32_t), cudaMemcpyHostToDevice));

  const int max_len = *std::max_element(lens.begin(), lens.end());
  dk::PackedSeqs seqs{d_cu,   d_cu,   nullptr, nullptr, static_cast<int>(lens.size()),
                      tokens, tokens, max_len, max_len};
  dk::AttentionShape shape{heads, heads, head_dim, 0.0, o.causal};
  dk::AttentionForwardArgs fwd;
  fwd.dtype = o.dtype;
  fwd.device = dk::Device::CUDA;
  fwd.shape = shape;
  fwd.seqs = seqs;
  fwd.q = q;
  fwd.k = k;
  fwd.v = v;
  fwd.out = out;
  fwd.lse = lse;
  dk::AttentionBackwardArgs bwd;
  bwd.dtype = o.dtype;
  bwd.device = dk::Device::CUDA;
  bwd.shape = shape;
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

  Row row{layout, tokens, static_cast<int>(lens.size()), head_dim, heads, 0, 0, 0, 0};
  row.fwd_ms = median_ms(o, [&] { check(dk::attention_forward(fwd), "attention_forward"); });
  row.bwd_ms = median_ms(o, [&] { check(dk::attention_backward(bwd), "attention_backward"); });
  row.fwd_tflops = work / (row.fwd_ms * 1e-3) / 1e12;
  row.bwd_tflops = 2.5 * work / (row.bwd_ms * 1e-3) / 1e12;
  for (void* p : {q, k, v, out, dout, dq, dk_, dv, lse}) cudaFree(p);
  cudaFree(d_cu);
  return row;
}

int run(const Options& o) {
  int devices = 0;
  if (cudaGetDeviceCount(&devices) != cudaSuccess || devices == 0) {
    std::printf("SKIPPED: no CUDA device\n");
    return 0;
  }
  cudaDeviceProp prop{};
  CUDA_CHECK(cudaGetDeviceProperties(&prop, 0));
  const char* dtype = o.dtype == dk::DType::BF16 ? "bf16" : "f16";
  if (!o.json)
    std::printf("# %s, %s, %s, median of %d runs\n%-8s %7s %5s %4s %5s %9s %9s %9s %9s\n",
                prop.name, dtype, o.causal ? "causal" : "full", o.runs, "layout", "tokens", "seqs",
                "hd", "heads", "fwd_ms", "fwd_TF/s", "bwd_ms", "bwd_TF/s");
  for (int head_dim : {64, 128})
    for (const char* layout : {"unpacked", "packed"})
      for (int tokens = 512; tokens <= o.max_tokens; tokens *= 2) {
        const Row r = bench_shape(o, layout, tokens, head_dim);
        if (o.json)
          std::printf(
              "{\"impl\":\"dhp\",\"device\":\"%s\",\"dtype\":\"%s\",\"causal\":%s,\"layout\":\"%"
              "s\","
              "\"tokens\":%d,\"seqs\":%d,\"head_dim\":%d,\"heads\":%d,\"fwd_ms\":%.4f,"
              "\"fwd_tflops\":%.2f,\"bwd_ms\":%.4f,\"bwd_tflops\":%.2f}\n",
              prop.name, dtype, o.causal ? "true" : "false", r.layout.c_str(), r.tokens, r.seqs,
              r.head_dim, r.heads, r.fwd_ms, r.fwd_tflops, r.bwd_ms, r.bwd_tflops);
        else
          std::printf("%-8s %7d %5d %4d %5d %9.3f %9.1f %9.3f %9.1f\n", r.layout.c_str(), r.tokens,
                      r.seqs, r.head_dim, r.heads, r.fwd_ms, r.fwd_tflops, r.bwd_ms, r.bwd_tflops);
        std::fflush(stdout);
      }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  dhp::CommandLine cli("dhp_attention_bench",
                       "  dhp_attention_bench [--format table|json] [--runs N] [--warmup N] "
                       "[--max-tokens N]\n                      [--dtype bf16|f16] [--full]");
  declare_options(cli);
  return dhp::run_tool(cli, argc, argv, [&] { return run(parse(cli)); });
}
