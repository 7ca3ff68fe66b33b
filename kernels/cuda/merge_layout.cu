// The merge of partial attention results and the layout kernels around the collectives
// (row gather/scatter, Ulysses head scatter/gather). The copies move the widest word
// (16/8/4/2/1 bytes) that the pointers and sizes allow.
#include <algorithm>

#include "common.cuh"

namespace dhp::kernels::cuda {
namespace {

// One warp per (row, head): lse = log(exp(a) + exp(b)) without overflow, -inf safe.
template <typename T>
__global__ void merge_kernel(float* out_acc, float* lse_acc, const T* out_part,
                             const float* lse_part, std::int64_t rows, int heads, int head_dim) {
  const std::int64_t warp_id =
      (static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) / 32;
  const int lane = threadIdx.x % 32;
  if (warp_id >= rows * heads) return;
  const std::int64_t row = warp_id / heads;
  const int head = static_cast<int>(warp_id % heads);
  const std::int64_t stat = static_cast<std::int64_t>(head) * rows + row;
  const float a = lse_acc[stat];
  const float b = lse_part[stat];
  const float hi = fmaxf(a, b);
  if (hi == -INFINITY) return;    // both empty: out stays 0, lse stays -inf
  const float wa = expf(a - hi);  // exp(-inf) = 0 for an empty side
  const float wb = expf(b - hi);
  const float sum = wa + wb;
  const float ca = wa / sum, cb = wb / sum;
  float* acc = out_acc + warp_id * head_dim;
  const T* part = out_part + warp_id * head_dim;
  for (int d = lane; d < head_dim; d += 32) {
    const float pv = b == -INFINITY ? 0.f : static_cast<float>(part[d]);
    const float av = a == -INFINITY ? 0.f : acc[d];
    acc[d] = av * ca + pv * cb;
  }
  if (lane == 0) lse_acc[stat] = hi + logf(sum);
}

// Generic chunk copy: chunk c of `words` words goes from src_offset(c) to dst_offset(c).
enum class CopyKind { Gather, Scatter, HeadScatter, HeadGather };

struct CopyPlan {
  CopyKind kind;
  const std::int32_t* rows;  // gather/scatter
  std::int64_t chunks;
  std::int64_t words;  // per chunk
  // Ulysses: chunk (j, t) of degree x tokens; offsets in words.
  std::int64_t tokens;
  std::int64_t heads_words;  // heads * head_dim in words (one token row of [t,h,d])
  std::int64_t block_words;  // heads/degree * head_dim in words
};

template <typename Word>
__global__ void chunk_copy_kernel(const Word* src, Word* dst, const CopyPlan plan) {
  const std::int64_t total = plan.chunks * plan.words;
  for (std::int64_t i = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < total;
       i += static_cast<std::int64_t>(gridDim.x) * blockDim.x) {
    const std::int64_t c = i / plan.words;
    const std::int64_t w = i % plan.words;
    std::int64_t s = 0, d = 0;
    switch (plan.kind) {
      case CopyKind::Gather:
        s = static_cast<std::int64_t>(plan.rows[c]) * plan.words;
        d = c * plan.words;
        break;
      case CopyKind::Scatter:
        s = c * plan.words;
        d = static_cast<std::int64_t>(plan.rows[c]) * plan.words;
        break;
      case CopyKind::HeadScatter: {  // [t][h][d] -> [j][t][h/deg][d]
        const std::int64_t j = c / plan.tokens, tok = c % plan.tokens;
        s = tok * plan.heads_words + j * plan.block_words;
        d = c * plan.block_words;
        break;
      }
      case CopyKind::HeadGather: {  // [j][t][h/deg][d] -> [t][h][d]
        const std::int64_t j = c / plan.tokens, tok = c % plan.tokens;
        s = c * plan.block_words;
        d = tok * plan.heads_words + j * plan.block_words;
        break;
      }
    }
    dst[d + w] = src[s + w];
  }
}

template <typename Word>
Status launch_copy(const void* src, void* dst, CopyPlan plan, cudaStream_t stream,
                   std::string& error) {
  const std::int64_t total = plan.chunks * plan.words;
  if (total == 0) return Status::Ok;
  const int threads = 256;
  const auto blocks =
      static_cast<unsigned>(std::min<std::int64_t>((total + threads - 1) / threads, 65535LL * 16));
  chunk_copy_kernel<Word><<<blocks, threads, 0, stream>>>(static_cast<const Word*>(src),
                                                          static_cast<Word*>(dst), plan);
  return check_launch("chunk_copy_kernel", error);
}

// Widest word (16/8/4/2/1 bytes) dividing the chunk size (bytes) and the alignment of both
// pointers.
Status copy_chunks(const void* src, void* dst, CopyPlan plan, std::int64_t chunk_bytes,
                   cudaStream_t stream, std::string& error) {
  const auto align = reinterpret_cast<std::uintptr_t>(src) | reinterpret_cast<std::uintptr_t>(dst) |
                     static_cast<std::uintptr_t>(chunk_bytes);
  auto scaled = [&](int word) {
    CopyPlan p = plan;
    p.words = chunk_bytes / word;
    p.heads_words = plan.heads_words / word;
    p.block_words = plan.block_words / word;
    return p;
  };
  if (align % 16 == 0) return launch_copy<uint4>(src, dst, scaled(16), stream, error);
  if (align % 8 == 0) return launch_copy<uint2>(src, dst, scaled(8), stream, error);
  if (align % 4 == 0) return launch_copy<std::uint32_t>(src, dst, scaled(4), stream, error);
  if (align % 2 == 0) return launch_copy<std::uint16_t>(src, dst, scaled(2), stream, error);
  return launch_copy<unsigned char>(src, dst, scaled(1), stream, error);
}

Status row_copy(const RowCopyArgs& args, CopyKind kind, std::string& error) {
  if (args.num_rows == 0 || args.row_bytes == 0) return Status::Ok;
  CopyPlan plan{kind, args.rows, args.num_rows, 0, 0, 0, 0};
  return copy_chunks(args.src, args.dst, plan, args.row_bytes, as_stream(args.stream), error);
}

int element_bytes(DType d) {
  switch (d) {
    case DType::F32:
      return 4;
    case DType::F64:
      return 8;
    case DType::BF16:
    case DType::F16:
      return 2;
  }
  return 0;
}

Status head_copy(const HeadScatterArgs& args, CopyKind kind, std::string& error) {
  if (args.tokens == 0 || args.heads == 0 || args.head_dim == 0) return Status::Ok;
  const std::int64_t elem = element_bytes(args.dtype);
  const std::int64_t block_bytes =
      static_cast<std::int64_t>(args.heads / args.degree) * args.head_dim * elem;
  // Offsets are scaled by the word size: the row of all heads must be a multiple too,
  // which it is since it is degree * block_bytes.
  CopyPlan plan{
      kind,       nullptr,     args.degree * args.tokens,
      0,          args.tokens, static_cast<std::int64_t>(args.heads) * args.head_dim * elem,
      block_bytes};
  return copy_chunks(args.src, args.dst, plan, block_bytes, as_stream(args.stream), error);
}

template <typename Src, typename Dst>
__global__ void convert_kernel(const Src* src, Dst* dst, std::int64_t count) {
  for (std::int64_t i = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < count;
       i += static_cast<std::int64_t>(gridDim.x) * blockDim.x)
    dst[i] = static_cast<Dst>(static_cast<float>(src[i]));
}

template <typename Src, typename Dst>
void launch_convert(const ConvertArgs& args, cudaStream_t stream) {
  const int threads = 256;
  const auto blocks =
      static_cast<unsigned>(std::min<std::int64_t>((args.count + threads - 1) / threads, 65535));
  convert_kernel<Src, Dst><<<blocks, threads, 0, stream>>>(static_cast<const Src*>(args.src),
                                                           static_cast<Dst*>(args.dst), args.count);
}

}  // namespace

Status convert_dtype(const ConvertArgs& args, std::string& error) {  // count > 0: dispatch.cpp
  const cudaStream_t stream = as_stream(args.stream);
  const DType from = args.src_dtype, to = args.dst_dtype;
  if (from == DType::F32 && to == DType::F32) {
    launch_convert<float, float>(args, stream);
  } else if (from == DType::F32 && to == DType::BF16) {
    launch_convert<float, __nv_bfloat16>(args, stream);
  } else if (from == DType::F32 && to == DType::F16) {
    launch_convert<float, __half>(args, stream);
  } else if (from == DType::BF16 && to == DType::F32) {
    launch_convert<__nv_bfloat16, float>(args, stream);
  } else if (from == DType::F16 && to == DType::F32) {
    launch_convert<__half, float>(args, stream);
  } else {
    return fail(Status::Unsupported, error,
                std::string("CUDA convert_dtype supports f32 <-> f32/bf16/f16, got ") +
                    to_string(from) + " -> " + to_string(to));
  }
  return check_launch("convert_kernel", error);
}

Status merge_attention_partial(const MergeArgs& args, std::string& error) {
  if (args.dtype == DType::F64)
    return fail(Status::Unsupported, error, "CUDA merge supports f32, bf16 and f16, got f64");
  if (args.rows == 0 || args.heads == 0) return Status::Ok;
  const std::int64_t warps = args.rows * args.heads;
  const int threads = 256;
  const auto blocks = static_cast<unsigned>((warps * 32 + threads - 1) / threads);
  auto* out_acc = static_cast<float*>(args.out_acc);
  auto* lse_acc = static_cast<float*>(args.lse_acc);
  const auto* lse_part = static_cast<const float*>(args.lse_part);
  const cudaStream_t stream = as_stream(args.stream);
  switch (args.dtype) {
    case DType::F32:
      merge_kernel<float><<<blocks, threads, 0, stream>>>(
          out_acc, lse_acc, static_cast<const float*>(args.out_part), lse_part, args.rows,
          args.heads, args.head_dim);
      break;
    case DType::BF16:
      merge_kernel<__nv_bfloat16><<<blocks, threads, 0, stream>>>(
          out_acc, lse_acc, static_cast<const __nv_bfloat16*>(args.out_part), lse_part, args.rows,
          args.heads, args.head_dim);
      break;
    default:
      merge_kernel<__half><<<blocks, threads, 0, stream>>>(
          out_acc, lse_acc, static_cast<const __half*>(args.out_part), lse_part, args.rows,
          args.heads, args.head_dim);
      break;
  }
  return check_launch("merge_kernel", error);
}

Status gather_rows(const RowCopyArgs& args, std::string& error) {
  return row_copy(args, CopyKind::Gather, error);
}
Status scatter_rows(const RowCopyArgs& args, std::string& error) {
  return row_copy(args, CopyKind::Scatter, error);
}
Status ulysses_head_scatter(const HeadScatterArgs& args, std::string& error) {
  return head_copy(args, CopyKind::HeadScatter, error);
}
Status ulysses_head_gather(const HeadScatterArgs& args, std::string& error) {
  return head_copy(args, CopyKind::HeadGather, error);
}

}  // namespace dhp::kernels::cuda
