// Shared helpers of the CUDA kernels: status reporting, element types, and the sm_80+
// tensor-core primitives (ldmatrix, mma.sync m16n8k16, cp.async) as inline PTX.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <string>

#include "cuda_launchers.hpp"

namespace dhp::kernels::cuda {

// Turns the last CUDA error (launch or API) into DeviceError with the CUDA message.
inline Status check_cuda(cudaError_t result, const char* what, std::string& error) {
  if (result == cudaSuccess) return Status::Ok;
  error = std::string(what) + ": " + cudaGetErrorString(result);
  return Status::DeviceError;
}

inline Status check_launch(const char* kernel, std::string& error) {
  return check_cuda(cudaGetLastError(), kernel, error);
}

inline Status fail(Status status, std::string& error, std::string message) {
  error = std::move(message);
  return status;
}

inline bool aligned16(const void* p) { return (reinterpret_cast<std::uintptr_t>(p) & 15) == 0; }

inline cudaStream_t as_stream(void* stream) { return static_cast<cudaStream_t>(stream); }

// Element type traits: packing two floats into one 32-bit register of two 16-bit values,
// and the matching mma instruction.
template <typename T>
struct Elem;

template <>
struct Elem<__half> {
  __device__ static float to_float(__half x) { return __half2float(x); }
  __device__ static __half from_float(float x) { return __float2half_rn(x); }
  __device__ static std::uint32_t pack(float lo, float hi) {
    __half2 h = __floats2half2_rn(lo, hi);
    return *reinterpret_cast<std::uint32_t*>(&h);
  }
};

template <>
struct Elem<__nv_bfloat16> {
  __device__ static float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }
  __device__ static __nv_bfloat16 from_float(float x) { return __float2bfloat16_rn(x); }
  __device__ static std::uint32_t pack(float lo, float hi) {
    __nv_bfloat162 h = __floats2bfloat162_rn(lo, hi);
    return *reinterpret_cast<std::uint32_t*>(&h);
  }
};

// D = A(16x16, row) * B(16x8, col) + D, fp32 accumulators. Fragment layout (PTX ISA,
// "mma.m16n8k16"): g = lane/4, t = lane%4; a0:(g, 2t) a1:(g+8, 2t) a2:(g, 2t+8)
// a3:(g+8, 2t+8) as packed pairs; b0:(k=2t, n=g) b1:(k=2t+8, n=g); d0,d1:(g, 2t..2t+1)
// d2,d3:(g+8, 2t..2t+1).
template <typename T>
__device__ __forceinline__ void mma16816(float (&d)[4], const std::uint32_t (&a)[4],
                                         std::uint32_t b0, std::uint32_t b1) {
  if constexpr (std::is_same_v<T, __half>) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
        "{%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  } else {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
        "{%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
}

__device__ __forceinline__ std::uint32_t smem_addr(const void* p) {
  return static_cast<std::uint32_t>(__cvta_generic_to_shared(p));
}

// Four 8x8 b16 matrices; lanes 8i..8i+7 give the row addresses of matrix i, and register
// i of lane l holds row l/4, columns 2(l%4), 2(l%4)+1 of matrix i (transposed with .trans).
__device__ __forceinline__ void ldmatrix_x4(std::uint32_t (&r)[4], const void* row_addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_addr(row_addr)));
}

__device__ __forceinline__ void ldmatrix_x4_trans(std::uint32_t (&r)[4], const void* row_addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_addr(row_addr)));
}

// 16-byte global->shared copy; src_bytes = 0 fills the destination with zeros (rows past
// the end of a sequence), and the source address is then not read.
__device__ __forceinline__ void cp_async_16(void* smem_dst, const void* gmem_src, bool valid) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_addr(smem_dst)),
               "l"(gmem_src), "r"(valid ? 16 : 0));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n"); }
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

// Position of row i of a segment starting at `base`: explicit, or the index in the segment.
__device__ __forceinline__ int row_position(const std::int32_t* positions, std::int64_t base,
                                            int i) {
  return positions ? positions[base + i] : i;
}

// Min and max position over rows [first, first + count) of the segment starting at
// seg_begin, reduced over one warp (every lane gets the result).
__device__ __forceinline__ void warp_position_range(const std::int32_t* positions,
                                                    std::int64_t seg_begin, int first, int count,
                                                    int lane, int& lo, int& hi) {
  lo = INT32_MAX;
  hi = INT32_MIN;
  for (int i = lane; i < count; i += 32) {
    const int pos = row_position(positions, seg_begin, first + i);
    lo = min(lo, pos);
    hi = max(hi, pos);
  }
  lo = __reduce_min_sync(0xffffffffu, lo);
  hi = __reduce_max_sync(0xffffffffu, hi);
}

// Position ranges of 32 consecutive tiles of one segment, one tile per lane, so that
// skipping invisible tiles costs one pass over their positions instead of one dependent
// round trip per tile. All lanes call range() with the same tile index.
struct TileRanges {
  const std::int32_t* positions;
  std::int64_t seg_begin;
  int seg_len;
  int tile_rows;
  int lane;
  int base = -32;  // tile of lane 0 in the cached block
  int lo = 0, hi = 0;

  __device__ void range(int tile, int& tile_lo, int& tile_hi) {
    if (tile < base || tile >= base + 32) {
      base = tile;
      const int first = (base + lane) * tile_rows;
      const int last = min(seg_len, first + tile_rows);
      if (positions == nullptr) {  // implicit positions: the rows' indices
        lo = first;
        hi = last - 1;
      } else {
        lo = INT32_MAX;
        hi = INT32_MIN;
        for (int i = first; i < last; ++i) {
          const int pos = positions[seg_begin + i];
          lo = min(lo, pos);
          hi = max(hi, pos);
        }
      }
    }
    tile_lo = __shfl_sync(0xffffffffu, lo, tile - base);
    tile_hi = __shfl_sync(0xffffffffu, hi, tile - base);
  }
};

constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;

}  // namespace dhp::kernels::cuda
