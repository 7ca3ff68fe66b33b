// CUDA kernels against the CPU reference. Both go through the public launchers: the CPU
// side (Device::CPU, F32) gets fp32 copies of the same bf16/f16-rounded inputs, so the only
// differences left are the GPU's 16-bit P/dS operands and summation order. Every output is
// poisoned (NaN) before each call so an unwritten element fails. Without a GPU every test
// skips, saying so.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "dhp/kernels.hpp"

namespace dk = dhp::kernels;

namespace {

bool have_gpu() {
  int count = 0;
  return cudaGetDeviceCount(&count) == cudaSuccess && count > 0;
}

#define SKIP_WITHOUT_GPU()                       \
  do {                                           \
    if (!have_gpu()) {                           \
      std::printf("SKIPPED: no CUDA device\n");  \
      GTEST_SKIP() << "SKIPPED: no CUDA device"; \
    }                                            \
  } while (0)

#define CUDA_OK(expr) ASSERT_EQ((expr), cudaSuccess) << #expr
#define KERNEL_OK(expr) ASSERT_EQ((expr), dk::Status::Ok) << #expr << ": " << dk::last_error()

// Host 16-bit helpers (cuda_fp16/bf16 conversions work in host code).
std::uint16_t to_bits(float x, dk::DType t) {
  if (t == dk::DType::BF16) {
    __nv_bfloat16 h = __float2bfloat16_rn(x);
    return *reinterpret_cast<std::uint16_t*>(&h);
  }
  __half h = __float2half_rn(x);
  return *reinterpret_cast<std::uint16_t*>(&h);
}
float from_bits(std::uint16_t b, dk::DType t) {
  if (t == dk::DType::BF16) return __bfloat162float(*reinterpret_cast<__nv_bfloat16*>(&b));
  return __half2float(*reinterpret_cast<__half*>(&b));
}

// A device buffer that frees itself.
template <typename T>
struct DeviceBuffer {
  T* ptr = nullptr;
  std::size_t count = 0;
  explicit DeviceBuffer(std::size_t n) : count(n) {
    if (cudaMalloc(&ptr, std::max<std::size_t>(n, 1) * sizeof(T)) != cudaSuccess) ptr = nullptr;
  }
  DeviceBuffer(const std::vector<T>& host) : DeviceBuffer(host.size()) { upload(host); }
  ~DeviceBuffer() { cudaFree(ptr); }
  DeviceBuffer(const DeviceBuffer&) = delete;
  void upload(const std::vector<T>& host) {
    cudaMemcpy(ptr, host.data(), host.size() * sizeof(T), cudaMemcpyHostToDevice);
  }
  std::vector<T> download() const {
    std::vector<T> host(count);
    cudaMemcpy(host.data(), ptr, count * sizeof(T), cudaMemcpyDeviceToHost);
    return host;
  }
  void poison() { cudaMemset(ptr, 0xff, std::max<std::size_t>(count, 1) * sizeof(T)); }
};

// Random 16-bit tensor and its exact fp32 value.
struct Tensor16 {
  std::vector<std::uint16_t> bits;
  std::vector<float> values;
};
Tensor16 random_tensor(std::size_t n, dk::DType t, std::mt19937& rng, float scale = 1.f) {
  std::normal_distribution<float> dist(0.f, scale);
  Tensor16 out;
  out.bits.resize(n);
  out.values.resize(n);
  for (std::size_t i = 0; i < n; ++i) {
    out.bits[i] = to_bits(dist(rng), t);
    out.values[i] = from_bits(out.bits[i], t);
  }
  return out;
}
std::vector<float> to_float(const std::vector<std::uint16_t>& bits, dk::DType t) {
  std::vector<float> out(bits.size());
  for (std::size_t i = 0; i < bits.size(); ++i) out[i] = from_bits(bits[i], t);
  return out;
}

// |got - want| <= tol * max(1, max|want|) elementwise, NaN fails; reports the worst element.
void expect_close(const std::vector<float>& got, const std::vector<float>& want, double tol,
                  const std::string& what) {
  ASSERT_EQ(got.size(), want.size()) << what;
  double ref_max = 1.0;
  for (float w : want)
    if (std::isfinite(w)) ref_max = std::max(ref_max, std::fabs(static_cast<double>(w)));
  double worst = 0;
  std::size_t worst_at = 0;
  for (std::size_t i = 0; i < got.size(); ++i) {
    const double err = std::fabs(static_cast<double>(got[i]) - want[i]);
    if (!(err <= worst) || std::isnan(got[i])) {
      worst = std::isnan(got[i]) ? INFINITY : err;
      worst_at = i;
    }
  }
  EXPECT_LE(worst, tol * ref_max) << what << ": worst at " << worst_at << " got " << got[worst_at]
                                  << " want " << want[worst_at];
}

// lse: -inf rows must match exactly, finite rows within tol (absolute, natural log units).
void expect_lse_close(const std::vector<float>& got, const std::vector<float>& want, double tol,
                      const std::string& what) {
  ASSERT_EQ(got.size(), want.size());
  for (std::size_t i = 0; i < got.size(); ++i) {
    if (std::isinf(want[i])) {
      ASSERT_TRUE(std::isinf(got[i]) && got[i] < 0) << what << " lse[" << i << "]=" << got[i];
    } else {
      ASSERT_NEAR(got[i], want[i], tol) << what << " lse[" << i << "]";
    }
  }
}

struct Tolerance {
  double out, lse, grad;
};
Tolerance tolerance(dk::DType t) {
  // bf16 keeps 8 mantissa bits, f16 11: P and dS are rounded to them before the mma.
  return t == dk::DType::BF16 ? Tolerance{2.5e-2, 2e-2, 4e-2} : Tolerance{4e-3, 4e-3, 8e-3};
}

struct Case {
  dk::DType dtype;
  int head_dim;
  int heads_q;
  int heads_kv;
  bool causal;
  std::vector<int> q_lens;
  std::vector<int> k_lens;
  bool zigzag_positions;  // q = one zigzag rank's rows, k = whole sequence
  std::string name;
};

std::vector<std::int32_t> prefix(const std::vector<int>& lens) {
  std::vector<std::int32_t> cu(lens.size() + 1, 0);
  for (std::size_t i = 0; i < lens.size(); ++i) cu[i + 1] = cu[i] + lens[i];
  return cu;
}

void run_case(const Case& c, std::uint32_t seed) {
  std::mt19937 rng(seed);
  const int hd = c.head_dim, hq = c.heads_q, hkv = c.heads_kv;
  std::vector<int> q_lens = c.q_lens, k_lens = c.k_lens;
  std::vector<std::int32_t> q_pos, k_pos;
  if (c.zigzag_positions) {
    // Queries: rank 1 of a degree-2 zigzag split of each sequence; keys: the whole sequence.
    std::vector<std::int32_t> cu_full = prefix(k_lens);
    const int n = static_cast<int>(k_lens.size());
    std::vector<std::int32_t> cu_local(n + 1);
    const auto local = dk::zigzag_local_rows(cu_full.data(), n, 2, 1);
    std::vector<std::int32_t> src(local), pos(local);
    KERNEL_OK(dk::zigzag_layout(cu_full.data(), n, 2, 1, cu_local.data(), src.data(), pos.data()));
    for (int b = 0; b < n; ++b) q_lens[b] = cu_local[b + 1] - cu_local[b];
    q_pos = pos;
    // Keys carry explicit positions too, shifted by 6 so the earliest query rows see no key.
    for (int b = 0; b < n; ++b)
      for (int i = 0; i < k_lens[b]; ++i) k_pos.push_back(i + 6);
  }
  const auto cu_q = prefix(q_lens), cu_k = prefix(k_lens);
  const std::int64_t total_q = cu_q.back(), total_k = cu_k.back();
  const int num_seqs = static_cast<int>(q_lens.size());
  const std::size_t nq = total_q * hq * hd, nk = total_k * hkv * hd;

  auto q = random_tensor(nq, c.dtype, rng), k = random_tensor(nk, c.dtype, rng),
       v = random_tensor(nk, c.dtype, rng), dout = random_tensor(nq, c.dtype, rng);

  // CPU reference forward (fp32 on the rounded values).
  dk::PackedSeqs cpu_seqs{cu_q.data(),
                          cu_k.data(),
                          q_pos.empty() ? nullptr : q_pos.data(),
                          k_pos.empty() ? nullptr : k_pos.data(),
                          num_seqs,
                          total_q,
                          total_k};
  dk::AttentionShape shape{hq, hkv, hd, 0.0, c.causal};
  std::vector<float> ref_out(nq), ref_lse(static_cast<std::size_t>(hq) * total_q);
  dk::AttentionForwardArgs cf;
  cf.dtype = dk::DType::F32;
  cf.device = dk::Device::CPU;
  cf.shape = shape;
  cf.seqs = cpu_seqs;
  cf.q = q.values.data();
  cf.k = k.values.data();
  cf.v = v.values.data();
  cf.out = ref_out.data();
  cf.lse = ref_lse.data();
  KERNEL_OK(dk::attention_forward(cf));

  // GPU forward.
  DeviceBuffer<std::int32_t> d_cu_q(cu_q), d_cu_k(cu_k);
  DeviceBuffer<std::int32_t> d_qpos(q_pos.empty() ? std::vector<std::int32_t>{0} : q_pos),
      d_kpos(k_pos.empty() ? std::vector<std::int32_t>{0} : k_pos);
  DeviceBuffer<std::uint16_t> d_q(q.bits), d_k(k.bits), d_v(v.bits), d_out(nq), d_dout(dout.bits);
  DeviceBuffer<float> d_lse(ref_lse.size());
  d_out.poison();
  d_lse.poison();
  // The hints come from the host (the launchers never read cu_seqlens back).
  dk::PackedSeqs gpu_seqs{d_cu_q.ptr,
                          d_cu_k.ptr,
                          q_pos.empty() ? nullptr : d_qpos.ptr,
                          k_pos.empty() ? nullptr : d_kpos.ptr,
                          num_seqs,
                          total_q,
                          total_k,
                          *std::max_element(q_lens.begin(), q_lens.end()),
                          *std::max_element(k_lens.begin(), k_lens.end())};
  dk::AttentionForwardArgs gf = cf;
  gf.dtype = c.dtype;
  gf.device = dk::Device::CUDA;
  gf.seqs = gpu_seqs;
  gf.q = d_q.ptr;
  gf.k = d_k.ptr;
  gf.v = d_v.ptr;
  gf.out = d_out.ptr;
  gf.lse = d_lse.ptr;
  KERNEL_OK(dk::attention_forward(gf));
  CUDA_OK(cudaDeviceSynchronize());
  const Tolerance tol = tolerance(c.dtype);
  expect_close(to_float(d_out.download(), c.dtype), ref_out, tol.out, c.name + " out");
  expect_lse_close(d_lse.download(), ref_lse, tol.lse, c.name);
  {
    // accumulator_out: the same out, in fp32 (what a ring merges), never rounded to 16 bits.
    DeviceBuffer<float> d_out32(nq);
    d_out32.poison();
    dk::AttentionForwardArgs wide = gf;
    wide.out = d_out32.ptr;
    wide.accumulator_out = true;
    KERNEL_OK(dk::attention_forward(wide));
    CUDA_OK(cudaDeviceSynchronize());
    const std::vector<float> out32 = d_out32.download();
    expect_close(out32, ref_out, tol.out, c.name + " out (accumulator_out)");
    const std::vector<float> out16 = to_float(d_out.download(), c.dtype);
    for (std::size_t i = 0; i < nq; ++i)  // rounding the fp32 out gives the 16-bit out
      ASSERT_EQ(from_bits(to_bits(out32[i], c.dtype), c.dtype), out16[i])
          << c.name << " out[" << i << "]";
  }

  // Backward from the same final out (rounded to 16 bits) and lse on both sides.
  std::vector<std::uint16_t> out_bits(nq);
  for (std::size_t i = 0; i < nq; ++i) out_bits[i] = to_bits(ref_out[i], c.dtype);
  const std::vector<float> out_rounded = to_float(out_bits, c.dtype);
  d_out.upload(out_bits);
  d_lse.upload(ref_lse);
  for (bool accumulate : {false, true}) {
    // Accumulating adds to these starting gradients on both sides.
    auto dq0 = random_tensor(nq, c.dtype, rng, 0.5f), dk0 = random_tensor(nk, c.dtype, rng, 0.5f),
         dv0 = random_tensor(nk, c.dtype, rng, 0.5f);
    std::vector<float> ref_dq(nq), ref_dk(nk), ref_dv(nk);
    if (accumulate) {
      ref_dq = dq0.values;
      ref_dk = dk0.values;
      ref_dv = dv0.values;
    }
    dk::AttentionBackwardArgs cb;
    cb.dtype = dk::DType::F32;
    cb.device = dk::Device::CPU;
    cb.shape = shape;
    cb.seqs = cpu_seqs;
    cb.q = q.values.data();
    cb.k = k.values.data();
    cb.v = v.values.data();
    cb.out = out_rounded.data();
    cb.dout = dout.values.data();
    cb.lse = ref_lse.data();
    cb.dq = ref_dq.data();
    cb.dk = ref_dk.data();
    cb.dv = ref_dv.data();
    cb.accumulate = accumulate;
    KERNEL_OK(dk::attention_backward(cb));

    DeviceBuffer<std::uint16_t> d_dq(nq), d_dk(nk), d_dv(nk);
    if (accumulate) {
      d_dq.upload(dq0.bits);
      d_dk.upload(dk0.bits);
      d_dv.upload(dv0.bits);
    } else {
      d_dq.poison();
      d_dk.poison();
      d_dv.poison();
    }
    dk::AttentionBackwardArgs gb = cb;
    gb.dtype = c.dtype;
    gb.device = dk::Device::CUDA;
    gb.seqs = gpu_seqs;
    gb.q = d_q.ptr;
    gb.k = d_k.ptr;
    gb.v = d_v.ptr;
    gb.out = d_out.ptr;
    gb.dout = d_dout.ptr;
    gb.lse = d_lse.ptr;
    gb.dq = d_dq.ptr;
    gb.dk = d_dk.ptr;
    gb.dv = d_dv.ptr;
    KERNEL_OK(dk::attention_backward(gb));
    CUDA_OK(cudaDeviceSynchronize());
    const std::string tag = c.name + (accumulate ? " accumulate" : "");
    expect_close(to_float(d_dq.download(), c.dtype), ref_dq, tol.grad, tag + " dq");
    expect_close(to_float(d_dk.download(), c.dtype), ref_dk, tol.grad, tag + " dk");
    expect_close(to_float(d_dv.download(), c.dtype), ref_dv, tol.grad, tag + " dv");

    // accumulator_grads: fp32 gradient buffers (a ring's accumulators), added to in fp32.
    DeviceBuffer<float> d_dq32(nq), d_dk32(nk), d_dv32(nk);
    if (accumulate) {
      d_dq32.upload(dq0.values);
      d_dk32.upload(dk0.values);
      d_dv32.upload(dv0.values);
    } else {
      d_dq32.poison();
      d_dk32.poison();
      d_dv32.poison();
    }
    dk::AttentionBackwardArgs wide = gb;
    wide.dq = d_dq32.ptr;
    wide.dk = d_dk32.ptr;
    wide.dv = d_dv32.ptr;
    wide.accumulator_grads = true;
    KERNEL_OK(dk::attention_backward(wide));
    CUDA_OK(cudaDeviceSynchronize());
    expect_close(d_dq32.download(), ref_dq, tol.grad, tag + " dq (accumulator_grads)");
    expect_close(d_dk32.download(), ref_dk, tol.grad, tag + " dk (accumulator_grads)");
    expect_close(d_dv32.download(), ref_dv, tol.grad, tag + " dv (accumulator_grads)");
  }
}

class CudaAttention : public ::testing::Test {
 protected:
  void SetUp() override { SKIP_WITHOUT_GPU(); }
};

const std::vector<int> kOddLengths = {17, 37, 0, 1, 127, 64, 130};

// Every head size of the models served (72: SigLIP-so400m, 80: Qwen2-VL's ViT, 64, 96,
// 128) in every tile (72 runs zero-padded in the 80 tile; 40 in the 64 one).
TEST_F(CudaAttention, ForwardBackwardMatchCpuAcrossShapes) {
  std::uint32_t seed = 1;
  for (dk::DType dtype : {dk::DType::BF16, dk::DType::F16})
    for (int hd : {64, 72, 80, 96, 128, 40})
      for (int gqa : {1, 2, 4, 8})
        for (bool causal : {true, false}) {
          Case c{dtype,
                 hd,
                 8,
                 8 / gqa,
                 causal,
                 kOddLengths,
                 kOddLengths,
                 false,
                 std::string(dk::to_string(dtype)) + " hd" + std::to_string(hd) + " gqa" +
                     std::to_string(gqa) + (causal ? " causal" : " full")};
          SCOPED_TRACE(c.name);
          run_case(c, seed++);
          if (HasFatalFailure()) return;
        }
}

TEST_F(CudaAttention, DifferentQueryAndKeyLengths) {
  // Cross-attention-like pieces: keys longer or shorter than queries, some empty.
  for (dk::DType dtype : {dk::DType::BF16, dk::DType::F16}) {
    Case c{dtype, 64, 4, 2, false, {5, 0, 70, 33}, {90, 12, 0, 33}, false, "q!=k full"};
    run_case(c, 11);
    c.causal = true;
    c.name = "q!=k causal";
    run_case(c, 12);
  }
}

TEST_F(CudaAttention, ZigzagPositionsAndRowsWithoutKeys) {
  for (dk::DType dtype : {dk::DType::BF16, dk::DType::F16})
    for (int hd : {64, 80, 128}) {
      Case c{dtype, hd, 8, 2, true, {}, {17, 37, 1, 127, 200}, true, "zigzag"};
      c.q_lens = c.k_lens;  // replaced by the zigzag local lengths
      run_case(c, 21 + hd);
    }
}

TEST_F(CudaAttention, UnsupportedHeadDimAndDtypeAreRefused) {
  dk::AttentionForwardArgs args;
  args.device = dk::Device::CUDA;
  args.dtype = dk::DType::BF16;
  args.shape = {4, 4, 100, 0.0, true};
  DeviceBuffer<std::int32_t> cu(std::vector<std::int32_t>{0, 4});
  DeviceBuffer<std::uint16_t> buf(4 * 4 * 128);
  DeviceBuffer<float> lse(16);
  args.seqs = {cu.ptr, cu.ptr, nullptr, nullptr, 1, 4, 4, 4, 4};
  args.q = args.k = args.v = buf.ptr;
  args.out = buf.ptr;
  args.lse = lse.ptr;
  EXPECT_EQ(dk::attention_forward(args), dk::Status::Unsupported);
  EXPECT_NE(std::string(dk::last_error()).find("100"), std::string::npos) << dk::last_error();
  args.shape.head_dim = 64;
  args.dtype = dk::DType::F64;
  EXPECT_NE(dk::attention_forward(args), dk::Status::Ok);
}

// The launchers never synchronise with the host: captured into a CUDA graph, any
// synchronising call (cudaStreamSynchronize, a blocking copy, a read-back of cu_seqlens)
// would invalidate the capture. The replayed graph must then give the eager results.
TEST_F(CudaAttention, LaunchesAreCapturableSoNeverSynchronise) {
  std::mt19937 rng(31);
  const dk::DType dtype = dk::DType::BF16;
  const std::vector<int> lens = {130, 7, 64};
  const auto cu = prefix(lens);
  const int hq = 4, hkv = 2, hd = 80;
  const std::size_t nq = cu.back() * hq * hd, nk = cu.back() * hkv * hd;
  auto q = random_tensor(nq, dtype, rng), k = random_tensor(nk, dtype, rng),
       v = random_tensor(nk, dtype, rng), dout = random_tensor(nq, dtype, rng);
  DeviceBuffer<std::int32_t> d_cu(cu);
  DeviceBuffer<std::uint16_t> d_q(q.bits), d_k(k.bits), d_v(v.bits), d_dout(dout.bits), d_out(nq),
      d_dq(nq), d_dk(nk), d_dv(nk);
  DeviceBuffer<float> d_lse(static_cast<std::size_t>(hq) * cu.back());
  cudaStream_t stream = nullptr;
  CUDA_OK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  dk::AttentionForwardArgs f;
  f.dtype = dtype;
  f.device = dk::Device::CUDA;
  f.shape = {hq, hkv, hd, 0.0, true};
  f.seqs = {d_cu.ptr, d_cu.ptr, nullptr, nullptr, 3, cu.back(), cu.back(), 130, 130};
  f.q = d_q.ptr;
  f.k = d_k.ptr;
  f.v = d_v.ptr;
  f.out = d_out.ptr;
  f.lse = d_lse.ptr;
  f.stream = stream;
  dk::AttentionBackwardArgs b;
  b.dtype = dtype;
  b.device = dk::Device::CUDA;
  b.shape = f.shape;
  b.seqs = f.seqs;
  b.q = d_q.ptr;
  b.k = d_k.ptr;
  b.v = d_v.ptr;
  b.out = d_out.ptr;
  b.dout = d_dout.ptr;
  b.lse = d_lse.ptr;
  b.dq = d_dq.ptr;
  b.dk = d_dk.ptr;
  b.dv = d_dv.ptr;
  b.stream = stream;
  KERNEL_OK(dk::attention_forward(f));
  KERNEL_OK(dk::attention_backward(b));
  CUDA_OK(cudaStreamSynchronize(stream));
  const auto eager_out = d_out.download(), eager_dk = d_dk.download();

  cudaGraph_t graph = nullptr;
  CUDA_OK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeGlobal));
  const dk::Status fs = dk::attention_forward(f);
  const dk::Status bs = dk::attention_backward(b);
  CUDA_OK(cudaStreamEndCapture(stream, &graph));
  KERNEL_OK(fs);
  KERNEL_OK(bs);
  cudaGraphExec_t exec = nullptr;
  CUDA_OK(cudaGraphInstantiate(&exec, graph, 0));
  d_out.poison();
  d_dk.poison();
  CUDA_OK(cudaGraphLaunch(exec, stream));
  CUDA_OK(cudaStreamSynchronize(stream));
  EXPECT_EQ(d_out.download(), eager_out);
  // dK is summed by one CTA per key tile in a fixed order: deterministic.
  EXPECT_EQ(d_dk.download(), eager_dk);
  cudaGraphExecDestroy(exec);
  cudaGraphDestroy(graph);
  cudaStreamDestroy(stream);
}

TEST_F(CudaAttention, MergeMatchesCpuWithEmptyRows) {
  std::mt19937 rng(5);
  const std::int64_t rows = 77;
  const int heads = 3, hd = 64;
  for (dk::DType dtype : {dk::DType::BF16, dk::DType::F16, dk::DType::F32}) {
    const std::size_t n = rows * heads * hd;
    std::normal_distribution<float> dist(0.f, 3.f);
    std::vector<float> acc(n), lse_acc(rows * heads), lse_part(rows * heads);
    for (auto& x : acc) x = dist(rng);
    for (std::size_t i = 0; i < lse_acc.size(); ++i) {
      // Mix of both empty, one side empty, large magnitudes that overflow a naive exp.
      lse_acc[i] = i % 5 == 0 ? -INFINITY : dist(rng) * 40.f;
      lse_part[i] = i % 7 == 0 ? -INFINITY : dist(rng) * 40.f;
    }
    for (std::size_t i = 0; i < n; ++i)
      if (std::isinf(lse_acc[(i / hd) % heads * rows + i / (heads * hd)])) acc[i] = 0.f;
    auto part16 = random_tensor(n, dtype == dk::DType::F32 ? dk::DType::BF16 : dtype, rng);
    std::vector<float> part = part16.values;

    std::vector<float> ref_acc = acc, ref_lse = lse_acc;
    dk::MergeArgs cm{dk::DType::F32, dk::Device::CPU, rows,        heads,           hd,
                     ref_acc.data(), ref_lse.data(),  part.data(), lse_part.data(), nullptr};
    KERNEL_OK(dk::merge_attention_partial(cm));

    DeviceBuffer<float> d_acc(acc), d_lse(lse_acc), d_lse_part(lse_part), d_part_f(part);
    DeviceBuffer<std::uint16_t> d_part16(part16.bits);
    dk::MergeArgs gm{dtype,
                     dk::Device::CUDA,
                     rows,
                     heads,
                     hd,
                     d_acc.ptr,
                     d_lse.ptr,
                     dtype == dk::DType::F32 ? static_cast<const void*>(d_part_f.ptr)
                                             : static_cast<const void*>(d_part16.ptr),
                     d_lse_part.ptr,
                     nullptr};
    KERNEL_OK(dk::merge_attention_partial(gm));
    CUDA_OK(cudaDeviceSynchronize());
    expect_close(d_acc.download(), ref_acc, 1e-5, "merge out");
    expect_lse_close(d_lse.download(), ref_lse, 1e-4, "merge lse");
  }
}

// Layout kernels are exact copies: compare bytes with the CPU implementation.
TEST_F(CudaAttention, GatherScatterRowsMatchCpu) {
  std::mt19937 rng(7);
  for (std::int64_t row_bytes : {256, 24, 6, 3}) {  // 16-, 8-, 2- and 1-byte words
    const std::int64_t src_rows = 50, n = 33;
    std::vector<unsigned char> src(src_rows * row_bytes);
    for (auto& b : src) b = static_cast<unsigned char>(rng());
    std::vector<std::int32_t> rows(n);
    std::vector<int> perm(src_rows);
    for (int i = 0; i < src_rows; ++i) perm[i] = i;
    std::shuffle(perm.begin(), perm.end(), rng);
    for (int i = 0; i < n; ++i) rows[i] = perm[i];  // distinct, so scatter is well defined

    std::vector<unsigned char> ref_gather(n * row_bytes), ref_scatter(src_rows * row_bytes, 0);
    KERNEL_OK(dk::gather_rows(
        {dk::Device::CPU, n, row_bytes, rows.data(), src.data(), ref_gather.data()}));
    KERNEL_OK(dk::scatter_rows(
        {dk::Device::CPU, n, row_bytes, rows.data(), ref_gather.data(), ref_scatter.data()}));

    DeviceBuffer<unsigned char> d_src(src), d_gather(n * row_bytes),
        d_scatter(std::vector<unsigned char>(src_rows * row_bytes, 0));
    DeviceBuffer<std::int32_t> d_rows(rows);
    d_gather.poison();
    KERNEL_OK(
        dk::gather_rows({dk::Device::CUDA, n, row_bytes, d_rows.ptr, d_src.ptr, d_gather.ptr}));
    KERNEL_OK(dk::scatter_rows(
        {dk::Device::CUDA, n, row_bytes, d_rows.ptr, d_gather.ptr, d_scatter.ptr}));
    CUDA_OK(cudaDeviceSynchronize());
    EXPECT_EQ(d_gather.download(), ref_gather) << "row_bytes=" << row_bytes;
    EXPECT_EQ(d_scatter.download(), ref_scatter) << "row_bytes=" << row_bytes;
  }
}

TEST_F(CudaAttention, UlyssesHeadScatterGatherMatchCpu) {
  std::mt19937 rng(9);
  struct Shape {
    dk::DType dtype;
    std::int64_t tokens;
    int heads, hd, degree;
  };
  for (Shape s : {Shape{dk::DType::BF16, 37, 12, 64, 3}, Shape{dk::DType::F32, 5, 8, 128, 8},
                  Shape{dk::DType::F16, 1, 6, 3, 2}, Shape{dk::DType::F16, 0, 4, 64, 2}}) {
    const std::size_t bytes = s.tokens * s.heads * s.hd * dk::dtype_size(s.dtype);
    std::vector<unsigned char> src(bytes);
    for (auto& b : src) b = static_cast<unsigned char>(rng());
    std::vector<unsigned char> ref_scatter(bytes), ref_back(bytes);
    dk::HeadScatterArgs a{s.dtype,  dk::Device::CPU, s.tokens,           s.heads, s.hd,
                          s.degree, src.data(),      ref_scatter.data(), nullptr};
    KERNEL_OK(dk::ulysses_head_scatter(a));
    DeviceBuffer<unsigned char> d_src(src), d_scatter(bytes), d_back(bytes);
    d_scatter.poison();
    d_back.poison();
    dk::HeadScatterArgs g = a;
    g.device = dk::Device::CUDA;
    g.src = d_src.ptr;
    g.dst = d_scatter.ptr;
    KERNEL_OK(dk::ulysses_head_scatter(g));
    g.src = d_scatter.ptr;
    g.dst = d_back.ptr;
    KERNEL_OK(dk::ulysses_head_gather(g));
    CUDA_OK(cudaDeviceSynchronize());
    EXPECT_EQ(d_scatter.download(), ref_scatter) << "tokens=" << s.tokens << " degree=" << s.degree;
    EXPECT_EQ(d_back.download(), src) << "tokens=" << s.tokens << " degree=" << s.degree;
  }
}

}  // namespace
