// Fused attention backward (FlashAttention-2 style) for packed variable-length sequences.
//   1. delta[h][i] = sum_d dO[i,h,d] * O[i,h,d]            (attention_delta_kernel)
//   2. one CTA of 4 warps per (64-key tile, kv head, sequence): dK and dV of its keys stay
//      in registers while it walks every query tile of every query head sharing the kv
//      head (GQA reduction without atomics); dQ partials go to an fp32 buffer by atomics.
//      Each warp owns 16 keys and computes the transposed products (S^T = K Q^T) so that
//      P^T and dS^T are already mma A fragments for dV += P^T dO and dK += dS^T Q.
//   3. dq = scale * dq_accum (+ dq when accumulating)      (attention_dq_convert_kernel)
// Uses the final out and lse of the whole attention, so every ring step is independent.
// Tiles are D = 64, 80, 96 or 128 columns wide; a smaller head_dim is zero-padded (see
// attention_forward.cu). dq, dk, dv are written in T, or in fp32 with accumulator_grads.
#include "attention_common.cuh"

namespace dhp::kernels::cuda {
namespace {

constexpr int kBwdWarps = 4;
constexpr int kBwdThreads = kBwdWarps * 32;
constexpr int kBwdBlockK = 64;  // 16 keys per warp

// Query tile: 64 rows up to D = 80, 32 above, which keeps dK+dV (D floats per thread) and
// S^T, dP^T in registers; it also makes the dQ column split (below) a multiple of 16.
template <int D>
constexpr int bwd_block_q() {
  return D <= 80 ? 64 : 32;
}

template <int D>
constexpr int bwd_smem_bytes() {
  constexpr int stride = D + 8;
  return (2 * kBwdBlockK + 2 * bwd_block_q<D>()) * stride * 2 +
         kBwdBlockK * (bwd_block_q<D>() + 8) * 2;
}

struct BackwardParams {
  AttentionParams a;
  const void* dout;
  const float* lse;
  const float* delta;
  float* dq_accum;  // [total_q, heads_q, head_dim] fp32
  void* dk;
  void* dv;
  bool accumulate;
  bool fp32_grads;  // dk, dv (and dq) are float buffers (accumulator_grads)
};

// One warp per (row, head): delta = rowsum(dO * O) in fp32.
template <typename T>
__global__ void attention_delta_kernel(const T* out, const T* dout, float* delta,
                                       std::int64_t total_q, int heads, int head_dim) {
  const std::int64_t warp_id =
      (static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) / 32;
  const int lane = threadIdx.x % 32;
  if (warp_id >= total_q * heads) return;
  const std::int64_t row = warp_id / heads;
  const int head = static_cast<int>(warp_id % heads);
  const T* o = out + warp_id * head_dim;
  const T* d = dout + warp_id * head_dim;
  float sum = 0.f;
  for (int i = lane; i < head_dim; i += 32)
    sum += Elem<T>::to_float(o[i]) * Elem<T>::to_float(d[i]);
#pragma unroll
  for (int off = 16; off > 0; off /= 2) sum += __shfl_xor_sync(0xffffffffu, sum, off);
  if (lane == 0) delta[static_cast<std::int64_t>(head) * total_q + row] = sum;
}

// dq = scale * dq_accum (+ dq), dq in T (16-bit, rounded once) or float (fp32_grads).
template <typename T>
__global__ void attention_dq_convert_kernel(const float* dq_accum, void* dq, std::int64_t count,
                                            float scale, bool accumulate, bool fp32_grads) {
  for (std::int64_t i = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < count;
       i += static_cast<std::int64_t>(gridDim.x) * blockDim.x) {
    float value = dq_accum[i] * scale;
    if (fp32_grads) {
      float* out = static_cast<float*>(dq);
      out[i] = accumulate ? out[i] + value : value;
    } else {
      T* out = static_cast<T*>(dq);
      if (accumulate) value += Elem<T>::to_float(out[i]);
      out[i] = Elem<T>::from_float(value);
    }
  }
}

// One pair of dK or dV columns (col, col + 1) of a key row: the fp32 sum, plus the old value
// when accumulating, stored in T (rounded once) or as float.
template <typename T>
__device__ __forceinline__ void store_grad_pair(void* base, std::int64_t offset, float a, float b,
                                                bool accumulate, bool fp32_grads) {
  if (fp32_grads) {
    float2* dst = reinterpret_cast<float2*>(static_cast<float*>(base) + offset);
    if (accumulate) {
      const float2 old = *dst;
      a += old.x;
      b += old.y;
    }
    *dst = make_float2(a, b);
  } else {
    T* dst = static_cast<T*>(base) + offset;
    if (accumulate) {
      a += Elem<T>::to_float(dst[0]);
      b += Elem<T>::to_float(dst[1]);
    }
    *reinterpret_cast<std::uint32_t*>(dst) = Elem<T>::pack(a, b);
  }
}

template <typename T, int D>
__global__ void __launch_bounds__(kBwdThreads)
    attention_backward_kernel(const BackwardParams params) {
  constexpr int kBlockQ = bwd_block_q<D>();
  constexpr int kStride = D + 8;
  constexpr int kDsStride = kBlockQ + 8;
  constexpr int kChunksPerRow = D / 8;
  // dQ tile split: kBlockQ/16 row groups, the remaining warps split head_dim.
  constexpr int kDqRowGroups = kBlockQ / 16;
  constexpr int kDqWarpsPerGroup = kBwdWarps / kDqRowGroups;
  constexpr int kDqCols = D / kDqWarpsPerGroup;
  static_assert(D % 16 == 0 && kDqCols % 16 == 0, "the mma loops step 16 columns");

  extern __shared__ __align__(16) unsigned char smem[];
  T* s_k = reinterpret_cast<T*>(smem);
  T* s_v = s_k + kBwdBlockK * kStride;
  T* s_q = s_v + kBwdBlockK * kStride;
  T* s_do = s_q + kBlockQ * kStride;
  T* s_ds = s_do + kBlockQ * kStride;  // dS^T [key][query]
  __shared__ float s_lse[kBlockQ];     // lse * log2(e); +inf for rows that must get P = 0
  __shared__ float s_delta[kBlockQ];
  __shared__ int s_qpos[kBlockQ];
  __shared__ int s_kpos[kBwdBlockK];

  const AttentionParams& p = params.a;
  const int kv_head = blockIdx.x;
  const int seq = blockIdx.y;
  const int k_tile = gridDim.z - 1 - blockIdx.z;
  const int k_begin = p.cu_seqlens_k[seq];
  const int k_len = p.cu_seqlens_k[seq + 1] - k_begin;
  const int k0 = k_tile * kBwdBlockK;
  if (k0 >= k_len) return;
  const int rows_k = min(kBwdBlockK, k_len - k0);
  const int q_begin = p.cu_seqlens_q[seq];
  const int q_len = p.cu_seqlens_q[seq + 1] - q_begin;
  const int group = p.heads_q / p.heads_kv;

  const int tid = threadIdx.x;
  const int warp = tid / 32;
  const int lane = tid % 32;
  const int g = lane / 4;
  const int t = lane % 4;

  const int hd = p.head_dim;  // <= D; columns [hd, D) of the tiles are zeros
  const std::int64_t q_row_stride = static_cast<std::int64_t>(p.heads_q) * hd;
  const std::int64_t kv_row_stride = static_cast<std::int64_t>(p.heads_kv) * hd;
  const std::int64_t kv_offset = (k_begin + k0) * kv_row_stride + kv_head * hd;

  for (int c = tid; c < kBwdBlockK * kChunksPerRow; c += kBwdThreads) {
    const int r = c / kChunksPerRow;
    const int col = (c % kChunksPerRow) * 8;
    const bool valid = r < rows_k && col < hd;
    const std::int64_t src = kv_offset + (valid ? r * kv_row_stride + col : 0);
    cp_async_16(s_k + r * kStride + col, static_cast<const T*>(p.k) + src, valid);
    cp_async_16(s_v + r * kStride + col, static_cast<const T*>(p.v) + src, valid);
  }
  cp_async_commit();
  if (tid < kBwdBlockK)
    s_kpos[tid] = tid < rows_k ? row_position(p.k_positions, k_begin, k0 + tid) : INT32_MAX;
  int k_pos_lo, k_pos_hi;
  warp_position_range(p.k_positions, k_begin, k0, rows_k, lane, k_pos_lo, k_pos_hi);

  float dk_acc[D / 8][4];
  float dv_acc[D / 8][4];
#pragma unroll
  for (int n = 0; n < D / 8; ++n)
#pragma unroll
    for (int e = 0; e < 4; ++e) dk_acc[n][e] = dv_acc[n][e] = 0.f;

  const int my_key0 = warp * 16 + g;  // this thread's key rows: my_key0 and my_key0 + 8
  const int q_tiles = (q_len + kBlockQ - 1) / kBlockQ;

  TileRanges q_ranges{p.q_positions, q_begin, q_len, kBlockQ, lane};
  for (int hh = 0; hh < group; ++hh) {
    const int head = kv_head * group + hh;
    for (int qt = 0; qt < q_tiles; ++qt) {
      const int q0 = qt * kBlockQ;
      const int rows_q = min(kBlockQ, q_len - q0);
      bool needs_causal_mask = false;
      if (p.causal) {
        int q_pos_lo, q_pos_hi;
        q_ranges.range(qt, q_pos_lo, q_pos_hi);
        if (k_pos_lo > q_pos_hi) continue;  // no key of this tile is visible to the query tile
        needs_causal_mask = k_pos_hi > q_pos_lo;
      }
      __syncthreads();  // every warp is done with the previous query tile's shared memory
      const std::int64_t q_offset = (q_begin + q0) * q_row_stride + head * hd;
      for (int c = tid; c < kBlockQ * kChunksPerRow; c += kBwdThreads) {
        const int r = c / kChunksPerRow;
        const int col = (c % kChunksPerRow) * 8;
        const bool valid = r < rows_q && col < hd;
        const std::int64_t src = q_offset + (valid ? r * q_row_stride + col : 0);
        cp_async_16(s_q + r * kStride + col, static_cast<const T*>(p.q) + src, valid);
        cp_async_16(s_do + r * kStride + col, static_cast<const T*>(params.dout) + src, valid);
      }
      cp_async_commit();
      if (tid < kBlockQ) {
        const bool valid = tid < rows_q;
        const std::int64_t stat = static_cast<std::int64_t>(head) * p.total_q + q_begin + q0 + tid;
        const float lse = valid ? params.lse[stat] : -INFINITY;
        s_lse[tid] = lse == -INFINITY ? INFINITY : lse * kLog2e;
        s_delta[tid] = valid ? params.delta[stat] : 0.f;
        s_qpos[tid] = valid ? row_position(p.q_positions, q_begin, q0 + tid) : INT32_MIN;
      }
      cp_async_wait<0>();
      __syncthreads();

      // S^T = K Q^T and dP^T = V dO^T: this warp's 16 keys x kBlockQ queries.
      float st[kBlockQ / 8][4];
      float dpt[kBlockQ / 8][4];
#pragma unroll
      for (int n = 0; n < kBlockQ / 8; ++n)
#pragma unroll
        for (int e = 0; e < 4; ++e) st[n][e] = dpt[n][e] = 0.f;
#pragma unroll
      for (int kk = 0; kk < D / 16; ++kk) {
        std::uint32_t k_frag[4], v_frag[4];
        const int a_row = warp * 16 + (lane % 8) + ((lane / 8) % 2) * 8;
        const int a_col = kk * 16 + (lane / 16) * 8;
        ldmatrix_x4(k_frag, s_k + a_row * kStride + a_col);
        ldmatrix_x4(v_frag, s_v + a_row * kStride + a_col);
#pragma unroll
        for (int np = 0; np < kBlockQ / 16; ++np) {
          const int b_row = np * 16 + (lane % 8) + (lane / 16) * 8;
          const int b_col = kk * 16 + ((lane / 8) % 2) * 8;
          std::uint32_t b[4];
          ldmatrix_x4(b, s_q + b_row * kStride + b_col);
          mma16816<T>(st[2 * np], k_frag, b[0], b[1]);
          mma16816<T>(st[2 * np + 1], k_frag, b[2], b[3]);
          ldmatrix_x4(b, s_do + b_row * kStride + b_col);
          mma16816<T>(dpt[2 * np], v_frag, b[0], b[1]);
          mma16816<T>(dpt[2 * np + 1], v_frag, b[2], b[3]);
        }
      }

      // P^T = exp(S^T * scale - lse) and dS^T = P^T (dP^T - delta), as A fragments over
      // the query dimension (mma k) for dV += P^T dO and dK += dS^T Q.
      std::uint32_t p_frag[kBlockQ / 16][4];
      std::uint32_t ds_frag[kBlockQ / 16][4];
#pragma unroll
      for (int n = 0; n < kBlockQ / 8; ++n) {
        float pv[4], dsv[4];
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int key = my_key0 + (e / 2) * 8;
          const int query = n * 8 + 2 * t + (e % 2);
          bool visible = key < rows_k;
          if (needs_causal_mask) visible = visible && s_kpos[key] <= s_qpos[query];
          pv[e] = visible ? exp2f(st[n][e] * p.scale_log2 - s_lse[query]) : 0.f;
          dsv[e] = pv[e] * (dpt[n][e] - s_delta[query]);
        }
        p_frag[n / 2][(n % 2) * 2 + 0] = Elem<T>::pack(pv[0], pv[1]);
        p_frag[n / 2][(n % 2) * 2 + 1] = Elem<T>::pack(pv[2], pv[3]);
        ds_frag[n / 2][(n % 2) * 2 + 0] = Elem<T>::pack(dsv[0], dsv[1]);
        ds_frag[n / 2][(n % 2) * 2 + 1] = Elem<T>::pack(dsv[2], dsv[3]);
        // dS^T to shared memory for dQ = dS K (needs all 64 keys, i.e. every warp).
        *reinterpret_cast<std::uint32_t*>(s_ds + my_key0 * kDsStride + n * 8 + 2 * t) =
            ds_frag[n / 2][(n % 2) * 2 + 0];
        *reinterpret_cast<std::uint32_t*>(s_ds + (my_key0 + 8) * kDsStride + n * 8 + 2 * t) =
            ds_frag[n / 2][(n % 2) * 2 + 1];
      }

#pragma unroll
      for (int kk = 0; kk < kBlockQ / 16; ++kk) {
#pragma unroll
        for (int dp = 0; dp < D / 16; ++dp) {
          const int b_row = kk * 16 + (lane % 8) + ((lane / 8) % 2) * 8;
          const int b_col = dp * 16 + (lane / 16) * 8;
          std::uint32_t b[4];
          ldmatrix_x4_trans(b, s_do + b_row * kStride + b_col);
          mma16816<T>(dv_acc[2 * dp], p_frag[kk], b[0], b[1]);
          mma16816<T>(dv_acc[2 * dp + 1], p_frag[kk], b[2], b[3]);
          ldmatrix_x4_trans(b, s_q + b_row * kStride + b_col);
          mma16816<T>(dk_acc[2 * dp], ds_frag[kk], b[0], b[1]);
          mma16816<T>(dk_acc[2 * dp + 1], ds_frag[kk], b[2], b[3]);
        }
      }
      __syncthreads();  // dS^T complete in shared memory

      // dQ[q, d] += sum_key dS[q, key] K[key, d] for this warp's 16 queries x kDqCols.
      {
        const int row_group = warp / kDqWarpsPerGroup;
        const int col0 = (warp % kDqWarpsPerGroup) * kDqCols;
        float dq_acc[kDqCols / 8][4];
#pragma unroll
        for (int n = 0; n < kDqCols / 8; ++n)
#pragma unroll
          for (int e = 0; e < 4; ++e) dq_acc[n][e] = 0.f;
#pragma unroll
        for (int kk = 0; kk < kBwdBlockK / 16; ++kk) {
          std::uint32_t a[4];
          const int a_key = kk * 16 + (lane % 8) + (lane / 16) * 8;
          const int a_query = row_group * 16 + ((lane / 8) % 2) * 8;
          ldmatrix_x4_trans(a, s_ds + a_key * kDsStride + a_query);
#pragma unroll
          for (int dp = 0; dp < kDqCols / 16; ++dp) {
            const int b_key = kk * 16 + (lane % 8) + ((lane / 8) % 2) * 8;
            const int b_col = col0 + dp * 16 + (lane / 16) * 8;
            std::uint32_t b[4];
            ldmatrix_x4_trans(b, s_k + b_key * kStride + b_col);
            mma16816<T>(dq_acc[2 * dp], a, b[0], b[1]);
            mma16816<T>(dq_acc[2 * dp + 1], a, b[2], b[3]);
          }
        }
#pragma unroll
        for (int r = 0; r < 2; ++r) {
          const int query = row_group * 16 + g + r * 8;
          if (query >= rows_q) continue;
          float* dst = params.dq_accum + (q_begin + q0 + query) * q_row_stride + head * hd + col0;
#pragma unroll
          for (int n = 0; n < kDqCols / 8; ++n) {
            if (col0 + n * 8 >= hd) continue;  // padding columns
            atomicAdd(dst + n * 8 + 2 * t, dq_acc[n][2 * r]);
            atomicAdd(dst + n * 8 + 2 * t + 1, dq_acc[n][2 * r + 1]);
          }
        }
      }
    }
  }

  // Epilogue: this CTA owns its keys' dK and dV rows (all query heads of the group summed).
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int key = my_key0 + r * 8;
    if (key >= rows_k) continue;
    const std::int64_t row = kv_offset + key * kv_row_stride;
#pragma unroll
    for (int n = 0; n < D / 8; ++n) {
      const int col = n * 8 + 2 * t;
      if (n * 8 >= hd) continue;  // padding columns
      store_grad_pair<T>(params.dk, row + col, dk_acc[n][2 * r] * p.scale,
                         dk_acc[n][2 * r + 1] * p.scale, params.accumulate, params.fp32_grads);
      store_grad_pair<T>(params.dv, row + col, dv_acc[n][2 * r], dv_acc[n][2 * r + 1],
                         params.accumulate, params.fp32_grads);
    }
  }
}

template <typename T, int D>
Status launch_backward(const AttentionBackwardArgs& args, int max_seqlen_k, std::string& error) {
  const cudaStream_t stream = as_stream(args.stream);
  const std::int64_t total_q = args.seqs.total_q;
  const int heads_q = args.shape.heads_q;
  const std::int64_t q_elems = total_q * heads_q * args.shape.head_dim;
  // Workspace: delta [heads_q, total_q] and the fp32 dQ accumulator, stream-ordered.
  float* workspace = nullptr;
  const std::size_t ws_bytes =
      static_cast<std::size_t>(total_q * heads_q + q_elems) * sizeof(float);
  Status s = check_cuda(cudaMallocAsync(reinterpret_cast<void**>(&workspace), ws_bytes, stream),
                        "cudaMallocAsync(attention_backward workspace)", error);
  if (s != Status::Ok) return s;
  float* delta = workspace;
  float* dq_accum = workspace + total_q * heads_q;
  auto release = [&](Status status) {
    Status freed = check_cuda(cudaFreeAsync(workspace, stream), "cudaFreeAsync", error);
    return status != Status::Ok ? status : freed;
  };

  s = check_cuda(cudaMemsetAsync(dq_accum, 0, q_elems * sizeof(float), stream),
                 "cudaMemsetAsync(dq_accum)", error);
  if (s != Status::Ok) return release(s);
  {
    const std::int64_t warps = total_q * heads_q;
    const int threads = 256;
    const auto blocks = static_cast<unsigned>((warps * 32 + threads - 1) / threads);
    attention_delta_kernel<T><<<blocks, threads, 0, stream>>>(
        static_cast<const T*>(args.out), static_cast<const T*>(args.dout), delta, total_q, heads_q,
        args.shape.head_dim);
    s = check_launch("attention_delta_kernel", error);
    if (s != Status::Ok) return release(s);
  }
  if (max_seqlen_k > 0) {
    BackwardParams params{make_params(args.shape, args.seqs, args.q, args.k, args.v),
                          args.dout,
                          static_cast<const float*>(args.lse),
                          delta,
                          dq_accum,
                          args.dk,
                          args.dv,
                          args.accumulate,
                          args.accumulator_grads};
    constexpr int smem = bwd_smem_bytes<D>();
    auto kernel = attention_backward_kernel<T, D>;
    s = check_cuda(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem),
                   "cudaFuncSetAttribute(attention_backward)", error);
    if (s != Status::Ok) return release(s);
    const dim3 grid(args.shape.heads_kv, args.seqs.num_seqs,
                    (max_seqlen_k + kBwdBlockK - 1) / kBwdBlockK);
    kernel<<<grid, kBwdThreads, smem, stream>>>(params);
    s = check_launch("attention_backward_kernel", error);
    if (s != Status::Ok) return release(s);
  }
  {
    const int threads = 256;
    const auto blocks = static_cast<unsigned>(
        std::min<std::int64_t>((q_elems + threads - 1) / threads, 65535LL * 8));
    attention_dq_convert_kernel<T><<<blocks, threads, 0, stream>>>(
        dq_accum, args.dq, q_elems, static_cast<float>(effective_softmax_scale(args.shape)),
        args.accumulate, args.accumulator_grads);
    s = check_launch("attention_dq_convert_kernel", error);
  }
  return release(s);
}

}  // namespace

Status attention_backward(const AttentionBackwardArgs& args, std::string& error) {
  Status s = check_attention_support(
      args.dtype, args.shape, args.seqs.num_seqs,
      {args.q, args.k, args.v, args.out, args.dout, args.dq, args.dk, args.dv}, error);
  if (s != Status::Ok) return s;
  if (args.seqs.num_seqs == 0 || args.seqs.total_q == 0) {
    // No query rows: dK and dV of the keys are zero (or unchanged when accumulating).
    if (args.accumulate || args.seqs.total_k == 0) return Status::Ok;
    const std::size_t bytes = static_cast<std::size_t>(args.seqs.total_k) * args.shape.heads_kv *
                              args.shape.head_dim * (args.accumulator_grads ? sizeof(float) : 2);
    s = check_cuda(cudaMemsetAsync(args.dk, 0, bytes, as_stream(args.stream)), "memset dk", error);
    if (s != Status::Ok) return s;
    return check_cuda(cudaMemsetAsync(args.dv, 0, bytes, as_stream(args.stream)), "memset dv",
                      error);
  }
  // From the host (dispatch requires it when rows exist): no read-back, no synchronisation.
  const int max_seqlen_k = args.seqs.total_k > 0 ? args.seqs.max_seqlen_k : 0;
  if ((max_seqlen_k + kBwdBlockK - 1) / kBwdBlockK > 65535)
    return fail(Status::Unsupported, error,
                "max_seqlen_k=" + std::to_string(max_seqlen_k) + " exceeds the grid limit");
  const bool bf16 = args.dtype == DType::BF16;
  switch (tile_head_dim(args.shape.head_dim)) {
    case 64:
      return bf16 ? launch_backward<__nv_bfloat16, 64>(args, max_seqlen_k, error)
                  : launch_backward<__half, 64>(args, max_seqlen_k, error);
    case 80:
      return bf16 ? launch_backward<__nv_bfloat16, 80>(args, max_seqlen_k, error)
                  : launch_backward<__half, 80>(args, max_seqlen_k, error);
    case 96:
      return bf16 ? launch_backward<__nv_bfloat16, 96>(args, max_seqlen_k, error)
                  : launch_backward<__half, 96>(args, max_seqlen_k, error);
    default:
      return bf16 ? launch_backward<__nv_bfloat16, 128>(args, max_seqlen_k, error)
                  : launch_backward<__half, 128>(args, max_seqlen_k, error);
  }
}

}  // namespace dhp::kernels::cuda
