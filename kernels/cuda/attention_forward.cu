// Fused attention forward (FlashAttention-2 style) for packed variable-length sequences:
// one CTA of 4 warps per (query tile of 64 rows, query head, sequence); each warp owns 16
// query rows, streams 64-key tiles of K and V through shared memory (cp.async, K of the
// next tile loading while P*V runs), and keeps the online-softmax state in registers.
// Tensor cores via mma.sync m16n8k16 (sm_80+, also what runs on sm_90). Tiles are D = 64,
// 80, 96 or 128 columns wide; a head_dim below D (72 in the 80 tile) is zero-filled on load
// (zero columns add nothing to Q K^T, and the P V columns past head_dim are not stored).
#include "attention_common.cuh"

namespace dhp::kernels::cuda {
namespace {

constexpr int kFwdWarps = 4;
constexpr int kFwdThreads = kFwdWarps * 32;
constexpr int kFwdBlockQ = 64;  // 16 rows per warp
constexpr int kFwdBlockK = 64;

struct ForwardParams {
  AttentionParams a;
  void* out;
  float* lse;
  bool fp32_out;  // out is a float buffer (accumulator_out)
};

template <int D>
constexpr int fwd_smem_bytes() {
  return (kFwdBlockQ + 2 * kFwdBlockK) * (D + 8) * 2;
}

template <typename T, int D>
__global__ void __launch_bounds__(kFwdThreads)
    attention_forward_kernel(const ForwardParams params) {
  // Rows padded by 8 elements (16 bytes) so that ldmatrix's 8 row reads hit 8 bank groups.
  constexpr int kStride = D + 8;
  constexpr int kChunksPerRow = D / 8;  // 16-byte chunks
  static_assert(D % 16 == 0, "the mma k and n loops step 16 columns");
  extern __shared__ __align__(16) unsigned char smem[];
  T* s_q = reinterpret_cast<T*>(smem);
  T* s_k = s_q + kFwdBlockQ * kStride;
  T* s_v = s_k + kFwdBlockK * kStride;
  __shared__ int s_qpos[kFwdBlockQ];
  __shared__ int s_kpos[kFwdBlockK];

  const AttentionParams& p = params.a;
  const int head = blockIdx.x;
  const int seq = blockIdx.y;
  const int tile = gridDim.z - 1 - blockIdx.z;  // late (causally heavy) tiles start first
  const int q_begin = p.cu_seqlens_q[seq];
  const int q_len = p.cu_seqlens_q[seq + 1] - q_begin;
  const int q0 = tile * kFwdBlockQ;
  if (q0 >= q_len) return;
  const int k_begin = p.cu_seqlens_k[seq];
  const int k_len = p.cu_seqlens_k[seq + 1] - k_begin;
  const int kv_head = head / (p.heads_q / p.heads_kv);
  const int rows_q = min(kFwdBlockQ, q_len - q0);

  const int tid = threadIdx.x;
  const int warp = tid / 32;
  const int lane = tid % 32;
  const int g = lane / 4;  // mma fragment row group
  const int t = lane % 4;  // mma fragment column pair

  const int hd = p.head_dim;  // <= D; columns [hd, D) of the tiles are zeros
  const std::int64_t q_row_stride = static_cast<std::int64_t>(p.heads_q) * hd;
  const std::int64_t kv_row_stride = static_cast<std::int64_t>(p.heads_kv) * hd;
  const T* q_tile = static_cast<const T*>(p.q) + (q_begin + q0) * q_row_stride + head * hd;
  const T* k_seq = static_cast<const T*>(p.k) + k_begin * kv_row_stride + kv_head * hd;
  const T* v_seq = static_cast<const T*>(p.v) + k_begin * kv_row_stride + kv_head * hd;

  // Causal visibility is decided per tile from position ranges: a key tile whose smallest
  // position exceeds the largest query position is skipped; one whose largest position is
  // at most the smallest query position needs no per-element mask.
  int q_pos_lo, q_pos_hi;
  warp_position_range(p.q_positions, q_begin, q0, rows_q, lane, q_pos_lo, q_pos_hi);
  const int k_tiles = (k_len + kFwdBlockK - 1) / kFwdBlockK;
  TileRanges k_ranges{p.k_positions, k_begin, k_len, kFwdBlockK, lane};
  auto next_visible_tile = [&](int j) {
    if (!p.causal) return j;
    for (; j < k_tiles; ++j) {
      int lo, hi;
      k_ranges.range(j, lo, hi);
      if (lo <= q_pos_hi) break;
    }
    return j;
  };
  auto load_kv_tile = [&](T* dst, const T* src_seq, int j) {
    const int rows = min(kFwdBlockK, k_len - j * kFwdBlockK);
    for (int c = tid; c < kFwdBlockK * kChunksPerRow; c += kFwdThreads) {
      const int r = c / kChunksPerRow;
      const int col = (c % kChunksPerRow) * 8;
      const bool valid = r < rows && col < hd;
      const T* src = src_seq + (valid ? (j * kFwdBlockK + r) * kv_row_stride + col : 0);
      cp_async_16(dst + r * kStride + col, src, valid);
    }
  };

  for (int c = tid; c < kFwdBlockQ * kChunksPerRow; c += kFwdThreads) {
    const int r = c / kChunksPerRow;
    const int col = (c % kChunksPerRow) * 8;
    const bool valid = r < rows_q && col < hd;
    cp_async_16(s_q + r * kStride + col, q_tile + (valid ? r * q_row_stride + col : 0), valid);
  }
  if (tid < kFwdBlockQ)
    s_qpos[tid] = tid < rows_q ? row_position(p.q_positions, q_begin, q0 + tid) : INT32_MIN;
  cp_async_commit();

  int j = next_visible_tile(0);
  if (j < k_tiles) {
    load_kv_tile(s_k, k_seq, j);
    if (tid < kFwdBlockK) {
      const int key = j * kFwdBlockK + tid;
      s_kpos[tid] = key < k_len ? row_position(p.k_positions, k_begin, key) : INT32_MAX;
    }
  }
  cp_async_commit();

  // Q stays in registers as mma A fragments for the whole key loop.
  cp_async_wait<1>();
  __syncthreads();
  std::uint32_t q_frag[D / 16][4];
#pragma unroll
  for (int kk = 0; kk < D / 16; ++kk) {
    const int row = warp * 16 + (lane % 8) + ((lane / 8) % 2) * 8;
    const int col = kk * 16 + (lane / 16) * 8;
    ldmatrix_x4(q_frag[kk], s_q + row * kStride + col);
  }

  float o_acc[D / 8][4];
#pragma unroll
  for (int n = 0; n < D / 8; ++n)
#pragma unroll
    for (int e = 0; e < 4; ++e) o_acc[n][e] = 0.f;
  // Per thread two rows: g and g+8 of the warp's 16. Max in scaled base-2 units.
  float row_max[2] = {-INFINITY, -INFINITY};
  float row_sum[2] = {0.f, 0.f};
  const int my_row0 = warp * 16 + g;

  while (j < k_tiles) {
    cp_async_wait<0>();
    __syncthreads();  // K_j visible; every warp is done with V of the previous tile
    load_kv_tile(s_v, v_seq, j);
    cp_async_commit();

    // S = Q K^T for this warp's 16 rows x 64 keys.
    float s_acc[kFwdBlockK / 8][4];
#pragma unroll
    for (int n = 0; n < kFwdBlockK / 8; ++n)
#pragma unroll
      for (int e = 0; e < 4; ++e) s_acc[n][e] = 0.f;
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) {
#pragma unroll
      for (int np = 0; np < kFwdBlockK / 16; ++np) {
        std::uint32_t b[4];
        const int key = np * 16 + (lane % 8) + (lane / 16) * 8;
        const int col = kk * 16 + ((lane / 8) % 2) * 8;
        ldmatrix_x4(b, s_k + key * kStride + col);
        mma16816<T>(s_acc[2 * np], q_frag[kk], b[0], b[1]);
        mma16816<T>(s_acc[2 * np + 1], q_frag[kk], b[2], b[3]);
      }
    }

    bool needs_causal_mask = false;
    if (p.causal) {
      int k_pos_lo, k_pos_hi;
      k_ranges.range(j, k_pos_lo, k_pos_hi);
      needs_causal_mask = k_pos_hi > q_pos_lo;
    }
    const int keys_here = k_len - j * kFwdBlockK;

    float tile_max[2] = {-INFINITY, -INFINITY};
#pragma unroll
    for (int n = 0; n < kFwdBlockK / 8; ++n) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int row = my_row0 + (e / 2) * 8;
        const int key = n * 8 + 2 * t + (e % 2);
        bool visible = key < keys_here;
        if (needs_causal_mask) visible = visible && s_kpos[key] <= s_qpos[row];
        const float s = visible ? s_acc[n][e] * p.scale_log2 : -INFINITY;
        s_acc[n][e] = s;
        tile_max[e / 2] = fmaxf(tile_max[e / 2], s);
      }
    }
    float alpha[2];
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      tile_max[r] = fmaxf(tile_max[r], __shfl_xor_sync(0xffffffffu, tile_max[r], 1));
      tile_max[r] = fmaxf(tile_max[r], __shfl_xor_sync(0xffffffffu, tile_max[r], 2));
      const float new_max = fmaxf(row_max[r], tile_max[r]);
      // A row with nothing visible yet keeps max -inf; subtracting 0 keeps exp2 at 0
      // instead of NaN.
      const float ref = new_max == -INFINITY ? 0.f : new_max;
      alpha[r] = exp2f(row_max[r] - ref);
      row_max[r] = new_max;
      row_sum[r] *= alpha[r];
    }
    std::uint32_t p_frag[kFwdBlockK / 16][4];
#pragma unroll
    for (int n = 0; n < kFwdBlockK / 8; ++n) {
      float pv[4];
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const float ref = row_max[e / 2] == -INFINITY ? 0.f : row_max[e / 2];
        pv[e] = exp2f(s_acc[n][e] - ref);
        row_sum[e / 2] += pv[e];
      }
      // The S accumulator of key columns [8n, 8n+8) is half of the A fragment of key
      // chunk n/2: registers {0,1} for even n, {2,3} for odd n.
      p_frag[n / 2][(n % 2) * 2 + 0] = Elem<T>::pack(pv[0], pv[1]);
      p_frag[n / 2][(n % 2) * 2 + 1] = Elem<T>::pack(pv[2], pv[3]);
    }
#pragma unroll
    for (int n = 0; n < D / 8; ++n) {
      o_acc[n][0] *= alpha[0];
      o_acc[n][1] *= alpha[0];
      o_acc[n][2] *= alpha[1];
      o_acc[n][3] *= alpha[1];
    }

    cp_async_wait<0>();
    __syncthreads();  // V_j visible; every warp is done with K_j
    const int j_next = next_visible_tile(j + 1);
    if (j_next < k_tiles) {
      load_kv_tile(s_k, k_seq, j_next);
      if (tid < kFwdBlockK) {
        const int key = j_next * kFwdBlockK + tid;
        s_kpos[tid] = key < k_len ? row_position(p.k_positions, k_begin, key) : INT32_MAX;
      }
    }
    cp_async_commit();

    // O += P V.
#pragma unroll
    for (int kk = 0; kk < kFwdBlockK / 16; ++kk) {
#pragma unroll
      for (int dp = 0; dp < D / 16; ++dp) {
        std::uint32_t b[4];
        const int key = kk * 16 + (lane % 8) + ((lane / 8) % 2) * 8;
        const int col = dp * 16 + (lane / 16) * 8;
        ldmatrix_x4_trans(b, s_v + key * kStride + col);
        mma16816<T>(o_acc[2 * dp], p_frag[kk], b[0], b[1]);
        mma16816<T>(o_acc[2 * dp + 1], p_frag[kk], b[2], b[3]);
      }
    }
    j = j_next;
  }

  // Epilogue: normalise, write out and lse. A row that saw no key writes 0 and -inf.
  const std::int64_t out_tile = (q_begin + q0) * q_row_stride + head * hd;
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    row_sum[r] += __shfl_xor_sync(0xffffffffu, row_sum[r], 1);
    row_sum[r] += __shfl_xor_sync(0xffffffffu, row_sum[r], 2);
    const int row = my_row0 + r * 8;
    if (row >= rows_q) continue;
    const bool empty = row_sum[r] == 0.f;
    const float inv = empty ? 0.f : 1.f / row_sum[r];
    const std::int64_t out_row = out_tile + row * q_row_stride;
#pragma unroll
    for (int n = 0; n < D / 8; ++n) {
      if (n * 8 >= hd) continue;  // columns past head_dim are padding
      const std::int64_t at = out_row + n * 8 + 2 * t;
      const float o0 = o_acc[n][2 * r] * inv, o1 = o_acc[n][2 * r + 1] * inv;
      if (params.fp32_out)
        *reinterpret_cast<float2*>(static_cast<float*>(params.out) + at) = make_float2(o0, o1);
      else
        *reinterpret_cast<std::uint32_t*>(static_cast<T*>(params.out) + at) = Elem<T>::pack(o0, o1);
    }
    if (t == 0)
      params.lse[static_cast<std::int64_t>(head) * p.total_q + q_begin + q0 + row] =
          empty ? -INFINITY : (row_max[r] + log2f(row_sum[r])) * kLn2;
  }
}

template <typename T, int D>
Status launch_forward(const AttentionForwardArgs& args, int max_seqlen_q, std::string& error) {
  ForwardParams params{make_params(args.shape, args.seqs, args.q, args.k, args.v), args.out,
                       static_cast<float*>(args.lse), args.accumulator_out};
  constexpr int smem = fwd_smem_bytes<D>();
  auto kernel = attention_forward_kernel<T, D>;
  Status s =
      check_cuda(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem),
                 "cudaFuncSetAttribute(attention_forward)", error);
  if (s != Status::Ok) return s;
  const dim3 grid(args.shape.heads_q, args.seqs.num_seqs,
                  (max_seqlen_q + kFwdBlockQ - 1) / kFwdBlockQ);
  kernel<<<grid, kFwdThreads, smem, as_stream(args.stream)>>>(params);
  return check_launch("attention_forward_kernel", error);
}

}  // namespace

Status attention_support(DType dtype, const AttentionShape& shape, std::string& error) {
  return check_attention_support(dtype, shape, 0, {}, error);
}

Status attention_forward(const AttentionForwardArgs& args, std::string& error) {
  Status s = check_attention_support(args.dtype, args.shape, args.seqs.num_seqs,
                                     {args.q, args.k, args.v, args.out}, error);
  if (s != Status::Ok) return s;
  if (args.seqs.num_seqs == 0 || args.seqs.total_q == 0) return Status::Ok;
  // From the host (dispatch requires it when rows exist): no read-back, no synchronisation.
  const int max_seqlen_q = args.seqs.max_seqlen_q;
  if ((max_seqlen_q + kFwdBlockQ - 1) / kFwdBlockQ > 65535)
    return fail(Status::Unsupported, error,
                "max_seqlen_q=" + std::to_string(max_seqlen_q) + " exceeds the grid limit");
  const bool bf16 = args.dtype == DType::BF16;
  switch (tile_head_dim(args.shape.head_dim)) {
    case 64:
      return bf16 ? launch_forward<__nv_bfloat16, 64>(args, max_seqlen_q, error)
                  : launch_forward<__half, 64>(args, max_seqlen_q, error);
    case 80:
      return bf16 ? launch_forward<__nv_bfloat16, 80>(args, max_seqlen_q, error)
                  : launch_forward<__half, 80>(args, max_seqlen_q, error);
    case 96:
      return bf16 ? launch_forward<__nv_bfloat16, 96>(args, max_seqlen_q, error)
                  : launch_forward<__half, 96>(args, max_seqlen_q, error);
    default:
      return bf16 ? launch_forward<__nv_bfloat16, 128>(args, max_seqlen_q, error)
                  : launch_forward<__half, 128>(args, max_seqlen_q, error);
  }
}

}  // namespace dhp::kernels::cuda
