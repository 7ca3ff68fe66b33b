// Kernel launchers: attention with log-sum-exp over packed variable-length sequences,
// the merge of partial results, and the layout kernels around the collectives.
//
// Framework-free: plain pointers to contiguous row-major buffers. Launchers return a
// Status, never throw; status_string() says what was wrong. One dispatch point picks the
// implementation from `device` and `dtype`. DHP_ATTENTION_IMPL=auto|cpu|cuda (default
// auto) forces one; it moves no data, so a forced implementation that cannot read the
// buffers (cpu with device=CUDA, or the reverse) is refused with Unsupported.
// CPU: attention and merge in F32, F64, BF16 and F16 (16-bit data widened to float, fp32
// accumulation, one rounding of each output); layout copies and convert_dtype any dtype.
// CUDA: attention in BF16/F16 for head_dim a multiple of 8 up to 128 (check with
// check_attention_support); merge, copies and conversions as kernels_cuda.md lists.
// A pointer may be null when the number of rows it covers is 0.
//
// Packed layout. Sequence b owns query rows [cu_seqlens_q[b], cu_seqlens_q[b+1]) and key
// rows [cu_seqlens_k[b], cu_seqlens_k[b+1]); sequences never attend to each other.
// cu_seqlens start at 0, never decrease and end at total_q / total_k (checked on the host
// for CPU buffers; for CUDA buffers they live on the device and are trusted).
//   q:   [total_q, heads_q,  head_dim]      out: [total_q, heads_q, head_dim]
//   k,v: [total_k, heads_kv, head_dim]      lse: [heads_q, total_q] (accumulator type)
// heads_q % heads_kv == 0 (grouped-query attention: query head h reads kv head
// h / (heads_q / heads_kv)).
//
// Causal masking uses positions inside the sequence: query row i sees key j iff
// k_pos[j] <= q_pos[i]. With null position arrays a row's position is its index inside
// its sequence segment. Explicit positions express ring/zigzag pieces exactly (any order,
// any lengths). Positions are ignored when causal = false.
// A row that sees no key gets out = 0 and lse = -inf.
//
// Accumulator type: double for F64, float for F32/BF16/F16. lse, the merge and all
// softmax statistics use it.
//
// Streams (CUDA). A launcher enqueues its work on args.stream (a cudaStream_t; null is
// the legacy default stream) and returns without waiting for the device: it never
// synchronises with the host and never reads device memory back. Its inputs must be
// ready in that stream's order and its outputs are ready in that order (an event recorded
// on the stream after the call completes once they are written). Temporaries are
// stream-ordered (cudaMallocAsync/cudaFreeAsync on the same stream). Lengths the grid
// needs come from the host: PackedSeqs::max_seqlen_q/k are required on CUDA wherever the
// rows exist (the caller knows them from its plan); like cu_seqlens they are trusted.
// CPU launchers run synchronously and ignore `stream`.
#pragma once

#include <cstdint>

namespace dhp::kernels {

enum class DType { F32, F64, BF16, F16 };
enum class Device { CPU, CUDA };

enum class Status {
  Ok = 0,
  InvalidArgument,  // null pointer, inconsistent sizes, heads_q % heads_kv != 0, ...
  Unsupported,      // dtype/device/head_dim combination not built or not implemented
  DeviceError,      // a CUDA call failed, or host memory ran out (see last_error())
};

const char* status_string(Status s) noexcept;
// Detail of the last non-Ok status on this thread (which argument, which value).
const char* last_error() noexcept;

// Whether dhp_kernels was built with its CUDA implementations (DHP_WITH_CUDA and a
// toolkit found). Says nothing about a GPU being present at run time.
bool built_with_cuda() noexcept;

const char* to_string(DType d) noexcept;
int dtype_size(DType d) noexcept;

struct PackedSeqs {
  const std::int32_t* cu_seqlens_q = nullptr;  // [num_seqs + 1]
  const std::int32_t* cu_seqlens_k = nullptr;  // [num_seqs + 1]
  const std::int32_t* q_positions = nullptr;   // optional [total_q]
  const std::int32_t* k_positions = nullptr;   // optional [total_k]
  int num_seqs = 0;
  std::int64_t total_q = 0;
  std::int64_t total_k = 0;
  // The longest query / key segment. CUDA: required (> 0) when total_q / total_k > 0; the
  // grid is sized from them, so a smaller value leaves rows uncomputed. CPU: 0 or at least
  // the longest segment (checked), so that CPU runs test the values a caller computes.
  int max_seqlen_q = 0;
  int max_seqlen_k = 0;
};

struct AttentionShape {
  int heads_q = 0;
  int heads_kv = 0;
  int head_dim = 0;
  double softmax_scale = 0;  // 0: 1/sqrt(head_dim)
  bool causal = true;
};

struct AttentionForwardArgs {
  DType dtype = DType::F32;
  Device device = Device::CPU;
  AttentionShape shape;
  PackedSeqs seqs;
  const void* q = nullptr;
  const void* k = nullptr;
  const void* v = nullptr;
  void* out = nullptr;
  void* lse = nullptr;
  // out in the accumulator type (float for BF16/F16) instead of `dtype`: a ring that merges
  // partial results keeps them in fp32 and rounds the merged output once. No effect for
  // F32/F64.
  bool accumulator_out = false;
  void* stream = nullptr;  // cudaStream_t for CUDA
};

// Gradients of one (q, kv) block given the *final* out and lse of the full attention
// (after any merge): each ring step's backward is then independent. dq, dk, dv are
// overwritten (accumulate=false) or added to (accumulate=true); they are in `dtype`, or in
// the accumulator type when accumulator_grads is set.
struct AttentionBackwardArgs {
  DType dtype = DType::F32;
  Device device = Device::CPU;
  AttentionShape shape;
  PackedSeqs seqs;
  const void* q = nullptr;
  const void* k = nullptr;
  const void* v = nullptr;
  const void* out = nullptr;
  const void* dout = nullptr;
  const void* lse = nullptr;
  void* dq = nullptr;
  void* dk = nullptr;
  void* dv = nullptr;
  bool accumulate = false;
  // dq, dk, dv in the accumulator type (float for BF16/F16) instead of `dtype`: a ring that
  // adds the gradients of many blocks keeps them in fp32 and rounds once at the end, so
  // that the error does not grow with the number of blocks. No effect for F32/F64.
  bool accumulator_grads = false;
  void* stream = nullptr;
};

Status attention_forward(const AttentionForwardArgs& args);
Status attention_backward(const AttentionBackwardArgs& args);

// Whether attention with this dtype, device and shape can run: the checks both attention
// launchers make before reading any buffer (the shape, the dtype, an implementation built
// for the device that supports this head_dim: any on the CPU; on CUDA BF16/F16 with
// head_dim % 8 == 0 and head_dim <= 128). Callers that post messages around the kernels
// (ring attention) call it first, so that a bad shape fails before anything is sent.
Status check_attention_support(DType dtype, Device device, const AttentionShape& shape);

// Merges a partial result (out_b, lse_b) into an accumulator (out_a, lse_a) in place:
// lse = log(exp(lse_a) + exp(lse_b)); out = out_a*exp(lse_a-lse) + out_b*exp(lse_b-lse).
// -inf on either side is handled (an all -inf row stays out = 0, lse = -inf); a row of
// the accumulator with lse_a = -inf is empty and its out_a is never read (it is
// overwritten), so an accumulator may start as (anything, -inf). Never produces NaN.
// out_a/lse_a are in the accumulator type; out_b in `dtype`; lse layout [heads, rows].
struct MergeArgs {
  DType dtype = DType::F32;
  Device device = Device::CPU;
  std::int64_t rows = 0;
  int heads = 0;
  int head_dim = 0;
  void* out_acc = nullptr;         // [rows, heads, head_dim], accumulator type
  void* lse_acc = nullptr;         // [heads, rows]
  const void* out_part = nullptr;  // [rows, heads, head_dim], dtype
  const void* lse_part = nullptr;  // [heads, rows]
  void* stream = nullptr;
};
Status merge_attention_partial(const MergeArgs& args);

// Element-wise dtype conversion, dst[i] = src[i] rounded to nearest even (e.g. the fp32
// accumulator of a bf16 CP attention into the bf16 output, and back). CPU: any pair of
// dtypes; CUDA: f32 <-> f32/bf16/f16. src and dst must not overlap unless equal dtypes.
struct ConvertArgs {
  DType src_dtype = DType::F32;
  DType dst_dtype = DType::F32;
  Device device = Device::CPU;
  std::int64_t count = 0;  // elements
  const void* src = nullptr;
  void* dst = nullptr;
  void* stream = nullptr;
};
Status convert_dtype(const ConvertArgs& args);

// Zigzag sharding of packed sequences over `degree` ranks: sequence of length L is cut
// into 2*degree chunks with boundaries floor(c*L / (2*degree)); rank r holds chunks r and
// 2*degree-1-r, in that order. Works for any L >= 0 (chunks may be empty).
// zigzag_layout fills, for `rank`, the per-sequence local lengths (cu_local, [num_seqs+1])
// and for every local row its source row in the packed input and its position in its
// sequence (src_rows, positions: [cu_local[num_seqs]]). Host-side bookkeeping.
Status zigzag_layout(const std::int32_t* cu_seqlens, int num_seqs, int degree, int rank,
                     std::int32_t* cu_local, std::int32_t* src_rows, std::int32_t* positions);
// Number of local rows of `rank` (to size the buffers above); -1 on invalid arguments
// (last_error() says which).
std::int64_t zigzag_local_rows(const std::int32_t* cu_seqlens, int num_seqs, int degree, int rank);

// Row gather / scatter used by the layout moves: dst[i] = src[rows[i]] (gather) or
// dst[rows[i]] = src[i] (scatter), rows of `row_bytes` bytes.
struct RowCopyArgs {
  Device device = Device::CPU;
  std::int64_t num_rows = 0;
  std::int64_t row_bytes = 0;
  const std::int32_t* rows = nullptr;  // on the device of the data
  const void* src = nullptr;
  void* dst = nullptr;
  void* stream = nullptr;
};
Status gather_rows(const RowCopyArgs& args);
Status scatter_rows(const RowCopyArgs& args);

// Ulysses packing. Head scatter: local [tokens, heads, hd] -> send buffer
// [degree][tokens][heads/degree][hd] (block j goes to rank j). After the all-to-all the
// received blocks [degree][tokens_j][heads/degree][hd], concatenated in rank order, are
// already the token-major [sum tokens_j, heads/degree, hd] input of attention (no copy).
// Head gather is the exact inverse of head scatter with the same arguments:
// [degree][tokens][heads/degree][hd] -> [tokens, heads, hd], used on the way back.
// Both are plain strided copies of dtype_size(dtype)-byte elements; heads % degree == 0
// is required; src and dst must not overlap.
struct HeadScatterArgs {
  DType dtype = DType::F32;
  Device device = Device::CPU;
  std::int64_t tokens = 0;
  int heads = 0;
  int head_dim = 0;
  int degree = 1;
  const void* src = nullptr;
  void* dst = nullptr;
  void* stream = nullptr;
};
Status ulysses_head_scatter(const HeadScatterArgs& args);  // [t,h,d] -> [deg][t][h/deg][d]
Status ulysses_head_gather(const HeadScatterArgs& args);   // [deg][t][h/deg][d] -> [t,h,d]

}  // namespace dhp::kernels
