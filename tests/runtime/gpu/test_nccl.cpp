// NCCL backend at world size 1 on one GPU: initialisation, collectives and send/recv to
// self on device buffers, splits, the group pool, the timeout path and CP attention on
// CUDA buffers. Skips (GTEST_SKIP "no CUDA device") where there is no GPU.
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <chrono>
#include <cmath>
#include <vector>

#include "dhp/cp_attention.hpp"
#include "dhp/dispatch.hpp"
#include "dhp/error.hpp"
#include "dhp/float16.hpp"
#include "dhp/group_pool.hpp"
#include "dhp/nccl.hpp"
#include "runtime_test_util.hpp"

namespace dhp {
namespace {

using namespace std::chrono_literals;

#define SKIP_WITHOUT_GPU()                                                              \
  do {                                                                                  \
    if (cuda_device_count() == 0) GTEST_SKIP() << "no CUDA device: NCCL tests skipped"; \
  } while (0)

// A device buffer holding a copy of `host`.
template <typename T>
class DeviceBuffer {
 public:
  explicit DeviceBuffer(const std::vector<T>& host) : size_(host.size()) {
    EXPECT_EQ(cudaMalloc(&data_, bytes()), cudaSuccess);
    EXPECT_EQ(cudaMemcpy(data_, host.data(), bytes(), cudaMemcpyHostToDevice), cudaSuccess);
  }
  explicit DeviceBuffer(std::size_t size) : DeviceBuffer(std::vector<T>(size)) {}
  ~DeviceBuffer() { cudaFree(data_); }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  T* get() { return static_cast<T*>(data_); }
  std::vector<T> host() const {
    std::vector<T> out(size_);
    EXPECT_EQ(cudaMemcpy(out.data(), data_, bytes(), cudaMemcpyDeviceToHost), cudaSuccess);
    return out;
  }

 private:
  std::size_t bytes() const { return size_ * sizeof(T); }
  void* data_ = nullptr;
  std::size_t size_;
};

std::unique_ptr<Communicator> single_rank_world(std::chrono::milliseconds timeout = 60s) {
  return nccl_world(nccl_unique_id(), 0, 1, 0, timeout);
}

TEST(NcclBackend, InitialisesNonBlockingAndDescribesItself) {
  SKIP_WITHOUT_GPU();
  auto world = single_rank_world();
  nccl_wait_ready(*world);
  EXPECT_EQ(world->size(), 1);
  EXPECT_EQ(world->device(), Device::CUDA);
  EXPECT_NE(world->stream(), nullptr);
  EXPECT_EQ(world->describe(), "nccl world rank 0/1 (world rank 0)");
}

TEST(NcclBackend, CollectivesOnDeviceBuffers) {
  SKIP_WITHOUT_GPU();
  auto world = single_rank_world();
  const std::vector<float> values{1.5f, -2.0f, 3.25f, 8.0f};
  DeviceBuffer<float> data(values);
  world->all_reduce(data.get(), data.get(), 4, DataType::F32, ReduceOp::Sum);  // in place
  EXPECT_EQ(data.host(), values);

  DeviceBuffer<float> gathered(4);
  world->all_gather(data.get(), gathered.get(), 4, DataType::F32);
  EXPECT_EQ(gathered.host(), values);

  DeviceBuffer<float> scattered(4);
  world->reduce_scatter(data.get(), scattered.get(), 4, DataType::F32, ReduceOp::Max);
  EXPECT_EQ(scattered.host(), values);

  DeviceBuffer<float> moved(4);
  const std::vector<std::int64_t> counts{3}, displs{1}, recv_displs{0};
  world->all_to_all_v(data.get(), counts, displs, moved.get(), counts, recv_displs, DataType::F32);
  const auto got = moved.host();
  EXPECT_EQ(std::vector<float>(got.begin(), got.begin() + 3),
            std::vector<float>(values.begin() + 1, values.end()));

  world->broadcast(data.get(), 4, DataType::F32, 0);
  world->barrier();
  EXPECT_EQ(data.host(), values);
}

TEST(NcclBackend, SendRecvToSelfThroughExchange) {
  SKIP_WITHOUT_GPU();
  auto world = single_rank_world();
  const std::vector<std::int64_t> values{7, 11, 13};
  DeviceBuffer<std::int64_t> send(values), recv(3);
  const P2POp ops[] = {{P2POp::Kind::Send, 0, send.get(), 3, DataType::I64, 0},
                       {P2POp::Kind::Recv, 0, recv.get(), 3, DataType::I64, 0}};
  auto request = world->exchange(ops);
  request->wait();
  EXPECT_TRUE(request->test());
  EXPECT_EQ(recv.host(), values);
}

TEST(NcclBackend, SplitIntoOneRankGroupsAndPool) {
  SKIP_WITHOUT_GPU();
  auto world = single_rank_world();
  auto group = world->split(0, 0, {0});
  ASSERT_NE(group, nullptr);
  EXPECT_EQ(group->name(), "group[0]");
  auto discovered = world->split(5, 0);  // members found by an all-gather
  ASSERT_NE(discovered, nullptr);
  EXPECT_EQ(discovered->world_ranks(), std::vector<int>{0});
  EXPECT_EQ(world->split(-1, 0), nullptr);
  DeviceBuffer<double> data(std::vector<double>{2.0});
  group->all_reduce(data.get(), data.get(), 1, DataType::F64, ReduceOp::Sum);
  EXPECT_EQ(data.host()[0], 2.0);

  GroupPool pool(*world, 4);
  pool.acquire({{0}});
  pool.acquire({{0}});
  EXPECT_EQ(pool.stats().misses, 1);
  EXPECT_EQ(pool.stats().hits, 1);
  Communicator& pooled = pool.get({0});
  EXPECT_STREQ(pooled.backend(), "nccl");
  pooled.barrier();
}

TEST(NcclBackend, NeverMatchedRecvTimesOutAndAborts) {
  SKIP_WITHOUT_GPU();
  auto world = single_rank_world();
  nccl_wait_ready(*world);  // initialisation may take longer than the short timeout below
  world->set_timeout(500ms);
  DeviceBuffer<float> buffer(16);
  const auto start = std::chrono::steady_clock::now();
  try {
    world->recv(buffer.get(), 16, DataType::F32, 0);
    FAIL() << "a receive nobody sends to must time out";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::Communication);
    EXPECT_NE(std::string(e.what()).find("irecv failed"), std::string::npos) << e.what();
  }
  EXPECT_LT(std::chrono::steady_clock::now() - start, 30s);
  EXPECT_TRUE(world->aborted());
  EXPECT_THROW(world->barrier(), Error);
}

// cudaMalloc'ed temporaries for CP attention on CUDA buffers.
class CudaAllocator final : public BufferAllocator {
 public:
  void* allocate(std::size_t bytes) override {
    void* p = nullptr;
    if (cudaMalloc(&p, bytes == 0 ? 1 : bytes) != cudaSuccess) throw std::bad_alloc();
    return p;
  }
  void deallocate(void* pointer) noexcept override { cudaFree(pointer); }
  void copy_from_host(void* dst, const void* src, std::size_t bytes) override {
    if (cudaMemcpy(dst, src, bytes, cudaMemcpyHostToDevice) != cudaSuccess) throw std::bad_alloc();
  }
};

// CP attention at degree 1 on CUDA buffers in bf16 (the CUDA kernels' dtypes, head_dim 64
// and 80), forward and backward, on a stream of the caller's (the context's `stream`),
// against the CPU kernel in f32 on the same bf16-rounded inputs.
TEST(NcclBackend, CpAttentionDegreeOneOnCudaMatchesCpu) {
  SKIP_WITHOUT_GPU();
  if (!kernels::built_with_cuda()) GTEST_SKIP() << "dhp_kernels built without CUDA";
  auto world = single_rank_world();
  const std::vector<std::int64_t> lengths{5, 17, 1};
  const std::vector<int> owners{0, 0, 0};
  const Plan plan = testing::one_wave_plan(1, {1}, 3, [](int) { return false; });
  const WaveDispatch dispatch(plan, 0, lengths, owners, 0, 1);
  const WaveLayout& layout = dispatch.layout();
  for (const int hd : {64, 80}) {
    SCOPED_TRACE("head_dim " + std::to_string(hd));
    const int hq = 4, hkv = 2;
    const auto rows = static_cast<std::size_t>(layout.rows);
    auto rounded = [](std::vector<float> values, std::vector<std::uint16_t>& bits) {
      bits.resize(values.size());
      for (std::size_t i = 0; i < values.size(); ++i) {
        bits[i] = float_to_bf16(values[i]);
        values[i] = bf16_to_float(bits[i]);
      }
      return values;
    };
    std::vector<std::uint16_t> qb, kb, vb;
    const auto q = rounded(testing::random_values<float>(rows * hq * hd, 1), qb);
    const auto k = rounded(testing::random_values<float>(rows * hkv * hd, 2), kb);
    const auto v = rounded(testing::random_values<float>(rows * hkv * hd, 3), vb);
    const kernels::AttentionShape shape{hq, hkv, hd, 0.0, true};

    // Reference: the CPU kernel straight on the layout's local sequences (degree 1).
    kernels::AttentionForwardArgs ref;
    ref.dtype = kernels::DType::F32;
    ref.device = kernels::Device::CPU;
    ref.shape = shape;
    ref.seqs = {layout.cu_seqlens.data(),
                layout.cu_seqlens.data(),
                layout.positions.data(),
                layout.positions.data(),
                static_cast<int>(layout.cu_seqlens.size()) - 1,
                layout.rows,
                layout.rows};
    std::vector<float> out_cpu(q.size()), lse_cpu(rows * hq);
    ref.q = q.data();
    ref.k = k.data();
    ref.v = v.data();
    ref.out = out_cpu.data();
    ref.lse = lse_cpu.data();
    ASSERT_EQ(kernels::attention_forward(ref), kernels::Status::Ok) << kernels::last_error();
    std::vector<std::uint16_t> dob;
    const auto dout_host = rounded(testing::random_values<float>(rows * hq * hd, 4), dob);
    std::vector<std::uint16_t> ob(out_cpu.size());
    std::vector<float> out_rounded(out_cpu.size());
    for (std::size_t i = 0; i < out_cpu.size(); ++i) {
      ob[i] = float_to_bf16(out_cpu[i]);
      out_rounded[i] = bf16_to_float(ob[i]);
    }
    std::vector<float> dq_cpu(q.size()), dk_cpu(k.size()), dv_cpu(v.size());
    kernels::AttentionBackwardArgs refb;
    refb.dtype = kernels::DType::F32;
    refb.device = kernels::Device::CPU;
    refb.shape = shape;
    refb.seqs = ref.seqs;
    refb.q = q.data();
    refb.k = k.data();
    refb.v = v.data();
    refb.out = out_rounded.data();
    refb.dout = dout_host.data();
    refb.lse = lse_cpu.data();
    refb.dq = dq_cpu.data();
    refb.dk = dk_cpu.data();
    refb.dv = dv_cpu.data();
    ASSERT_EQ(kernels::attention_backward(refb), kernels::Status::Ok) << kernels::last_error();

    CpAttentionContext ctx;
    ctx.dtype = kernels::DType::BF16;
    ctx.shape = shape;
    ctx.layout = &layout;
    ctx.world = world.get();
    CudaAllocator allocator;
    ctx.allocator = &allocator;
    cudaStream_t stream = nullptr;
    ASSERT_EQ(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking), cudaSuccess);
    ctx.stream = stream;
    DeviceBuffer<std::uint16_t> dq(qb), dk(kb), dv(vb), dout(qb.size());
    DeviceBuffer<float> dlse(rows * hq);
    cp_attention_forward(ctx, dq.get(), dk.get(), dv.get(), dout.get(), dlse.get());
    ASSERT_EQ(cudaStreamSynchronize(stream), cudaSuccess);
    const auto out_gpu = dout.host();
    for (std::size_t i = 0; i < out_cpu.size(); ++i)
      ASSERT_NEAR(bf16_to_float(out_gpu[i]), out_cpu[i], 2e-2) << i;
    const auto lse_gpu = dlse.host();
    for (std::size_t i = 0; i < lse_cpu.size(); ++i) ASSERT_NEAR(lse_gpu[i], lse_cpu[i], 1e-2) << i;

    DeviceBuffer<std::uint16_t> o16(ob), g16(dob), gq(qb.size()), gk(kb.size()), gv(vb.size());
    DeviceBuffer<float> lse_ref(lse_cpu);
    cp_attention_backward(ctx, dq.get(), dk.get(), dv.get(), o16.get(), lse_ref.get(), g16.get(),
                          gq.get(), gk.get(), gv.get());
    ASSERT_EQ(cudaStreamSynchronize(stream), cudaSuccess);
    const auto check = [](const std::vector<std::uint16_t>& got, const std::vector<float>& want,
                          const char* what) {
      for (std::size_t i = 0; i < want.size(); ++i)
        ASSERT_NEAR(bf16_to_float(got[i]), want[i], 4e-2 * std::max(1.0f, std::abs(want[i])))
            << what << "[" << i << "]";
    };
    check(gq.host(), dq_cpu, "dq");
    check(gk.host(), dk_cpu, "dk");
    check(gv.host(), dv_cpu, "dv");
    cudaStreamDestroy(stream);
  }
}

}  // namespace
}  // namespace dhp
