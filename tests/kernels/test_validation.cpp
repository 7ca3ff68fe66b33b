// Every launcher rejects bad arguments with InvalidArgument (or Unsupported) and a message
// naming the argument and its value; nothing is written.
#include <gtest/gtest.h>

#include <cstdlib>
#include <string>
#include <vector>

#include "dhp/kernels.hpp"

namespace dhp::kernels {
namespace {

::testing::AssertionResult fails_with(Status got, Status want, const std::string& fragment) {
  if (got != want)
    return ::testing::AssertionFailure() << "status " << status_string(got) << ", want "
                                         << status_string(want) << " (" << last_error() << ")";
  if (std::string(last_error()).find(fragment) == std::string::npos)
    return ::testing::AssertionFailure()
           << "last_error '" << last_error() << "' lacks '" << fragment << "'";
  return ::testing::AssertionSuccess();
}

// A valid 2-sequence forward call that each case breaks in one place.
struct ForwardFixture {
  std::vector<std::int32_t> cu_q = {0, 3, 5}, cu_k = {0, 3, 5};
  std::vector<float> q = std::vector<float>(5 * 4 * 8, 0.5f),
                     k = std::vector<float>(5 * 2 * 8, 0.25f), v = k, out = q,
                     lse = std::vector<float>(5 * 4, 0.f);
  AttentionForwardArgs args() {
    AttentionForwardArgs a;
    a.shape = {4, 2, 8, 0, true};
    a.seqs.cu_seqlens_q = cu_q.data();
    a.seqs.cu_seqlens_k = cu_k.data();
    a.seqs.num_seqs = 2;
    a.seqs.total_q = 5;
    a.seqs.total_k = 5;
    a.q = q.data();
    a.k = k.data();
    a.v = v.data();
    a.out = out.data();
    a.lse = lse.data();
    return a;
  }
};

TEST(Validation, ValidForwardCallSucceeds) {
  ForwardFixture f;
  ASSERT_EQ(attention_forward(f.args()), Status::Ok) << last_error();
}

TEST(Validation, ForwardArguments) {
  ForwardFixture f;
  auto a = f.args();
  a.q = nullptr;
  EXPECT_TRUE(fails_with(attention_forward(a), Status::InvalidArgument, "q is null"));
  a = f.args();
  a.lse = nullptr;
  EXPECT_TRUE(fails_with(attention_forward(a), Status::InvalidArgument, "lse is null"));
  a = f.args();
  a.shape.heads_q = 3;
  EXPECT_TRUE(fails_with(attention_forward(a), Status::InvalidArgument,
                         "heads_q=3 is not a multiple of heads_kv=2"));
  a = f.args();
  a.shape.head_dim = 0;
  EXPECT_TRUE(fails_with(attention_forward(a), Status::InvalidArgument, "head_dim=0"));
  a = f.args();
  a.seqs.num_seqs = -1;
  EXPECT_TRUE(fails_with(attention_forward(a), Status::InvalidArgument, "num_seqs=-1"));
  a = f.args();
  a.seqs.total_k = -4;
  EXPECT_TRUE(fails_with(attention_forward(a), Status::InvalidArgument, "total_k=-4"));
  a = f.args();
  a.seqs.total_q = 6;
  EXPECT_TRUE(fails_with(attention_forward(a), Status::InvalidArgument,
                         "cu_seqlens_q[num_seqs=2]=5 but the total is 6"));
  f.cu_k = {0, 4, 3};
  a = f.args();
  a.seqs.total_k = 3;
  EXPECT_TRUE(fails_with(attention_forward(a), Status::InvalidArgument,
                         "cu_seqlens_k[2]=3 < cu_seqlens_k[1]=4"));
  f.cu_k = {1, 3, 5};
  EXPECT_TRUE(
      fails_with(attention_forward(f.args()), Status::InvalidArgument, "cu_seqlens_k[0]=1"));
}

// max_seqlen hints: optional on the CPU, but a given one must cover the longest segment
// and cannot exceed the total (what the CUDA grid would be sized from).
TEST(Validation, MaxSeqlenHints) {
  ForwardFixture f;  // query and key segments of 3 and 2 rows
  auto a = f.args();
  a.seqs.max_seqlen_q = 2;
  EXPECT_TRUE(fails_with(attention_forward(a), Status::InvalidArgument,
                         "max_seqlen_q=2 but a query segment has 3 rows"));
  a = f.args();
  a.seqs.max_seqlen_k = 9;
  EXPECT_TRUE(fails_with(attention_forward(a), Status::InvalidArgument,
                         "max_seqlen_k=9 outside [0, total_k=5]"));
  a = f.args();
  a.seqs.max_seqlen_q = 3;
  a.seqs.max_seqlen_k = 4;
  EXPECT_EQ(attention_forward(a), Status::Ok) << last_error();
}

// CUDA buffers: the launchers never read cu_seqlens back, so the hints are required, and
// the head sizes the tiles serve (multiples of 8 up to 128) are known on the host. Checked
// before any device memory is touched (these pointers are host memory).
TEST(Validation, CudaNeedsHostHintsAndSupportedHeadDims) {
  if (!built_with_cuda()) GTEST_SKIP() << "dhp_kernels was built without CUDA";
  ForwardFixture f;
  auto a = f.args();
  a.device = Device::CUDA;
  a.dtype = DType::BF16;
  EXPECT_TRUE(fails_with(attention_forward(a), Status::InvalidArgument,
                         "max_seqlen_q=0 with total_q=5 on CUDA"));
  for (const int head_dim : {64, 72, 80, 96, 128, 8, 40})
    EXPECT_EQ(check_attention_support(DType::BF16, Device::CUDA, {2, 1, head_dim, 0, false}),
              Status::Ok)
        << head_dim << ": " << last_error();
  for (const int head_dim : {68, 136, 256})
    EXPECT_TRUE(
        fails_with(check_attention_support(DType::F16, Device::CUDA, {2, 1, head_dim, 0, true}),
                   Status::Unsupported, "head_dim a multiple of 8 up to 128"))
        << head_dim;
  EXPECT_TRUE(fails_with(check_attention_support(DType::F32, Device::CUDA, {2, 1, 64, 0, true}),
                         Status::Unsupported, "bf16 and f16 only"));
}

TEST(Validation, BackwardArguments) {
  ForwardFixture f;
  std::vector<float> dq = f.q, dk = f.k, dv = f.v;
  AttentionBackwardArgs a;
  a.shape = {4, 2, 8, 0, true};
  a.seqs = f.args().seqs;
  a.q = f.q.data();
  a.k = f.k.data();
  a.v = f.v.data();
  a.out = f.out.data();
  a.dout = f.out.data();
  a.lse = f.lse.data();
  a.dq = dq.data();
  a.dk = dk.data();
  a.dv = nullptr;
  EXPECT_TRUE(fails_with(attention_backward(a), Status::InvalidArgument, "dv is null (5 rows)"));
  a.dv = dv.data();
  a.shape.heads_kv = 0;
  EXPECT_TRUE(fails_with(attention_backward(a), Status::InvalidArgument, "heads_kv=0"));
}

TEST(Validation, MergeArguments) {
  std::vector<float> out(8), lse(2);
  MergeArgs a;
  a.rows = 2;
  a.heads = 1;
  a.head_dim = 4;
  a.out_acc = out.data();
  a.lse_acc = lse.data();
  a.out_part = out.data();
  a.lse_part = nullptr;
  EXPECT_TRUE(fails_with(merge_attention_partial(a), Status::InvalidArgument, "lse_part is null"));
  a.lse_part = lse.data();
  a.rows = -1;
  EXPECT_TRUE(fails_with(merge_attention_partial(a), Status::InvalidArgument, "rows=-1"));
  a.rows = 2;
  a.dtype = static_cast<DType>(9);
  EXPECT_TRUE(fails_with(merge_attention_partial(a), Status::InvalidArgument, "is not a DType"));
}

TEST(Validation, ZigzagArguments) {
  const std::vector<std::int32_t> cu = {0, 4, 9};
  std::vector<std::int32_t> cu_local(3), src(9), pos(9);
  EXPECT_TRUE(fails_with(zigzag_layout(cu.data(), 2, 0, 0, cu_local.data(), src.data(), pos.data()),
                         Status::InvalidArgument, "degree=0"));
  EXPECT_TRUE(fails_with(zigzag_layout(cu.data(), 2, 3, 3, cu_local.data(), src.data(), pos.data()),
                         Status::InvalidArgument, "rank=3 outside [0, degree=3)"));
  EXPECT_TRUE(fails_with(zigzag_layout(cu.data(), 2, 2, 0, cu_local.data(), nullptr, pos.data()),
                         Status::InvalidArgument, "src_rows is null"));
  EXPECT_EQ(zigzag_local_rows(cu.data(), 2, 2, -1), -1);
  EXPECT_NE(std::string(last_error()).find("rank=-1"), std::string::npos) << last_error();
  const std::vector<std::int32_t> decreasing = {0, 5, 2};
  EXPECT_EQ(zigzag_local_rows(decreasing.data(), 2, 2, 0), -1);
  EXPECT_NE(std::string(last_error()).find("cu_seqlens[2]=2 < cu_seqlens[1]=5"), std::string::npos)
      << last_error();
}

TEST(Validation, LayoutCopyArguments) {
  std::vector<float> buf(12), other(12);
  const std::vector<std::int32_t> rows = {0, -2};
  RowCopyArgs r;
  r.num_rows = 2;
  r.row_bytes = 8;
  r.rows = rows.data();
  r.src = buf.data();
  r.dst = other.data();
  EXPECT_TRUE(fails_with(gather_rows(r), Status::InvalidArgument, "rows[1]=-2"));
  r.row_bytes = -8;
  EXPECT_TRUE(fails_with(scatter_rows(r), Status::InvalidArgument, "row_bytes=-8"));
  HeadScatterArgs h;
  h.tokens = 1;
  h.heads = 6;
  h.head_dim = 2;
  h.degree = 4;
  h.src = buf.data();
  h.dst = other.data();
  EXPECT_TRUE(fails_with(ulysses_head_scatter(h), Status::InvalidArgument,
                         "heads=6 is not a multiple of degree=4"));
  h.degree = 0;
  EXPECT_TRUE(fails_with(ulysses_head_gather(h), Status::InvalidArgument, "degree=0"));
  h.degree = 2;
  h.dst = buf.data();
  EXPECT_TRUE(
      fails_with(ulysses_head_gather(h), Status::InvalidArgument, "src and dst are the same"));
}

// DHP_ATTENTION_IMPL forces an implementation; one that cannot read the buffers is refused.
TEST(Validation, ForcedImplementation) {
  ForwardFixture f;
  ::setenv("DHP_ATTENTION_IMPL", "cuda", 1);
  EXPECT_TRUE(
      fails_with(attention_forward(f.args()), Status::Unsupported, "DHP_ATTENTION_IMPL=cuda"));
  ::setenv("DHP_ATTENTION_IMPL", "gpu", 1);
  EXPECT_TRUE(
      fails_with(attention_forward(f.args()), Status::InvalidArgument, "DHP_ATTENTION_IMPL='gpu'"));
  ::setenv("DHP_ATTENTION_IMPL", "cpu", 1);
  EXPECT_EQ(attention_forward(f.args()), Status::Ok) << last_error();
  ::unsetenv("DHP_ATTENTION_IMPL");
}

// Without a CUDA build, CUDA buffers are refused with a reason (checked before anything
// else, so even an empty call is refused).
TEST(Validation, CudaDeviceWithoutCudaBuildIsUnsupported) {
  if (built_with_cuda()) GTEST_SKIP() << "dhp_kernels was built with CUDA";
  AttentionForwardArgs a;
  a.device = Device::CUDA;
  a.shape = {2, 1, 64, 0, true};
  a.dtype = DType::BF16;
  EXPECT_TRUE(fails_with(attention_forward(a), Status::Unsupported, "built without CUDA"));
  RowCopyArgs r;
  r.device = Device::CUDA;
  EXPECT_TRUE(fails_with(gather_rows(r), Status::Unsupported, "built without CUDA"));
}

TEST(Validation, StatusAndDtypeNames) {
  EXPECT_STREQ(status_string(Status::InvalidArgument), "InvalidArgument");
  EXPECT_STREQ(to_string(DType::BF16), "BF16");
  EXPECT_EQ(dtype_size(DType::F64), 8);
  EXPECT_EQ(dtype_size(DType::F16), 2);
}

TEST(Validation, ConvertArguments) {
  float src = 1.0f, dst = 0.0f;
  ConvertArgs args;
  args.src_dtype = DType::F32;
  args.dst_dtype = static_cast<DType>(99);
  args.count = 1;
  args.src = &src;
  args.dst = &dst;
  EXPECT_TRUE(fails_with(convert_dtype(args), Status::InvalidArgument, "is not a DType"));
  EXPECT_EQ(dst, 0.0f);
}

}  // namespace
}  // namespace dhp::kernels
