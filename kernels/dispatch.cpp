// The one dispatch point of the kernels: validates the arguments of every public launcher,
// picks the implementation (CPU reference or CUDA) from the buffers' device and dtype,
// and turns failures into a Status plus a thread-local message (last_error()).
//
// DHP_ATTENTION_IMPL is read here with getenv, not through dhp::env: dhp_kernels does not
// link dhp_core (it stays framework-free). docs/environment.md lists it.
#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <exception>
#include <limits>
#include <new>
#include <sstream>
#include <string>

#include "cpu/cpu_kernels.hpp"
#include "cuda_launchers.hpp"
#include "dhp/kernels.hpp"

namespace dhp::kernels {
namespace {

thread_local std::string t_last_error;

template <typename... Parts>
std::string concat(const Parts&... parts) {
  std::ostringstream stream;
  (stream << ... << parts);
  return stream.str();
}

Status fail(Status status, std::string message) {
  t_last_error = std::move(message);
  return status;
}

// Early return with InvalidArgument; the message names the launcher, the argument, the value.
#define DHP_KERNEL_REQUIRE(cond, ...)                                       \
  do {                                                                      \
    if (!(cond)) return fail(Status::InvalidArgument, concat(__VA_ARGS__)); \
  } while (0)

#define DHP_KERNEL_TRY(expr)                   \
  do {                                         \
    const Status status_ = (expr);             \
    if (status_ != Status::Ok) return status_; \
  } while (0)

enum class Impl { Cpu, Cuda };

const char* to_string(Device device) { return device == Device::CPU ? "CPU" : "CUDA"; }

// The implementation for buffers on `device`. DHP_ATTENTION_IMPL=cpu|cuda does not move
// data: it asserts where work must run, so a forced implementation that cannot read the
// buffers is refused instead of crashing.
Status choose_impl(const char* op, Device device, Impl& impl) {
  const char* raw = std::getenv("DHP_ATTENTION_IMPL");
  const std::string forced = raw && *raw ? raw : "auto";
  DHP_KERNEL_REQUIRE(forced == "auto" || forced == "cpu" || forced == "cuda", op,
                     ": DHP_ATTENTION_IMPL='", forced, "' (expected auto, cpu or cuda)");
  if (forced != "auto" && forced != (device == Device::CPU ? "cpu" : "cuda"))
    return fail(Status::Unsupported,
                concat(op, ": DHP_ATTENTION_IMPL=", forced,
                       " but the buffers are on device=", to_string(device), "; the ", forced,
                       " implementation cannot read them (unset it or move the data)"));
  impl = device == Device::CPU ? Impl::Cpu : Impl::Cuda;
#ifndef DHP_HAVE_CUDA
  if (impl == Impl::Cuda)
    return fail(Status::Unsupported,
                concat(op,
                       ": device=CUDA but dhp was built without CUDA "
                       "(DHP_WITH_CUDA=OFF or no CUDA toolkit found at configure time)"));
#endif
  return Status::Ok;
}

Status require_dtype(const char* op, DType dtype) {
  DHP_KERNEL_REQUIRE(dtype_size(dtype) > 0, op, ": dtype=", static_cast<int>(dtype),
                     " is not a DType");
  return Status::Ok;
}

// Host-visible checks of a cu_seqlens array: starts at `first`, never decreases, ends at
// `total` (when total >= 0).
Status check_cu_seqlens(const char* op, const char* name, const std::int32_t* cu, int num_seqs,
                        std::int64_t total, bool must_start_at_zero) {
  DHP_KERNEL_REQUIRE(must_start_at_zero ? cu[0] == 0 : cu[0] >= 0, op, ": ", name, "[0]=", cu[0],
                     must_start_at_zero ? " (must be 0)" : " (must be >= 0)");
  for (int b = 0; b < num_seqs; ++b)
    DHP_KERNEL_REQUIRE(cu[b + 1] >= cu[b], op, ": ", name, "[", b + 1, "]=", cu[b + 1], " < ", name,
                       "[", b, "]=", cu[b], " (must be non-decreasing)");
  if (total >= 0)
    DHP_KERNEL_REQUIRE(cu[num_seqs] == total, op, ": ", name, "[num_seqs=", num_seqs,
                       "]=", cu[num_seqs], " but the total is ", total);
  return Status::Ok;
}

// The longest segment of a host-visible cu_seqlens array.
int longest_segment(const std::int32_t* cu, int num_seqs) {
  int longest = 0;
  for (int b = 0; b < num_seqs; ++b) longest = std::max(longest, cu[b + 1] - cu[b]);
  return longest;
}

Status check_seqs(const char* op, const PackedSeqs& seqs, bool host_visible) {
  constexpr std::int64_t kMaxRows = std::numeric_limits<std::int32_t>::max();
  DHP_KERNEL_REQUIRE(seqs.num_seqs >= 0, op, ": num_seqs=", seqs.num_seqs, " < 0");
  DHP_KERNEL_REQUIRE(seqs.total_q >= 0 && seqs.total_q <= kMaxRows, op, ": total_q=", seqs.total_q,
                     " outside [0, 2^31-1]");
  DHP_KERNEL_REQUIRE(seqs.total_k >= 0 && seqs.total_k <= kMaxRows, op, ": total_k=", seqs.total_k,
                     " outside [0, 2^31-1]");
  DHP_KERNEL_REQUIRE(seqs.max_seqlen_q >= 0 && seqs.max_seqlen_q <= seqs.total_q, op,
                     ": max_seqlen_q=", seqs.max_seqlen_q, " outside [0, total_q=", seqs.total_q,
                     "]");
  DHP_KERNEL_REQUIRE(seqs.max_seqlen_k >= 0 && seqs.max_seqlen_k <= seqs.total_k, op,
                     ": max_seqlen_k=", seqs.max_seqlen_k, " outside [0, total_k=", seqs.total_k,
                     "]");
  if (seqs.num_seqs == 0) {
    DHP_KERNEL_REQUIRE(seqs.total_q == 0 && seqs.total_k == 0, op,
                       ": num_seqs=0 but total_q=", seqs.total_q, ", total_k=", seqs.total_k);
    return Status::Ok;
  }
  DHP_KERNEL_REQUIRE(seqs.cu_seqlens_q != nullptr, op,
                     ": cu_seqlens_q is null (num_seqs=", seqs.num_seqs, ")");
  DHP_KERNEL_REQUIRE(seqs.cu_seqlens_k != nullptr, op,
                     ": cu_seqlens_k is null (num_seqs=", seqs.num_seqs, ")");
  if (!host_visible) {
    // The device grid is sized from the hints: the launchers never read cu_seqlens back.
    DHP_KERNEL_REQUIRE(seqs.total_q == 0 || seqs.max_seqlen_q > 0, op,
                       ": max_seqlen_q=0 with total_q=", seqs.total_q,
                       " on CUDA: pass the longest query segment (known on the host from the "
                       "plan; the launchers never read cu_seqlens back)");
    DHP_KERNEL_REQUIRE(seqs.total_k == 0 || seqs.max_seqlen_k > 0, op,
                       ": max_seqlen_k=0 with total_k=", seqs.total_k,
                       " on CUDA: pass the longest key segment (known on the host from the "
                       "plan; the launchers never read cu_seqlens back)");
    return Status::Ok;
  }
  DHP_KERNEL_TRY(
      check_cu_seqlens(op, "cu_seqlens_q", seqs.cu_seqlens_q, seqs.num_seqs, seqs.total_q, true));
  DHP_KERNEL_TRY(
      check_cu_seqlens(op, "cu_seqlens_k", seqs.cu_seqlens_k, seqs.num_seqs, seqs.total_k, true));
  // Hints are optional on the CPU, but a given one must hold (what CUDA would be told).
  const int longest_q = longest_segment(seqs.cu_seqlens_q, seqs.num_seqs);
  const int longest_k = longest_segment(seqs.cu_seqlens_k, seqs.num_seqs);
  DHP_KERNEL_REQUIRE(seqs.max_seqlen_q == 0 || seqs.max_seqlen_q >= longest_q, op,
                     ": max_seqlen_q=", seqs.max_seqlen_q, " but a query segment has ", longest_q,
                     " rows");
  DHP_KERNEL_REQUIRE(seqs.max_seqlen_k == 0 || seqs.max_seqlen_k >= longest_k, op,
                     ": max_seqlen_k=", seqs.max_seqlen_k, " but a key segment has ", longest_k,
                     " rows");
  return Status::Ok;
}

Status check_shape(const char* op, const AttentionShape& shape) {
  DHP_KERNEL_REQUIRE(shape.heads_q > 0, op, ": heads_q=", shape.heads_q, " <= 0");
  DHP_KERNEL_REQUIRE(shape.heads_kv > 0, op, ": heads_kv=", shape.heads_kv, " <= 0");
  DHP_KERNEL_REQUIRE(shape.heads_q % shape.heads_kv == 0, op, ": heads_q=", shape.heads_q,
                     " is not a multiple of heads_kv=", shape.heads_kv);
  DHP_KERNEL_REQUIRE(shape.head_dim > 0, op, ": head_dim=", shape.head_dim, " <= 0");
  DHP_KERNEL_REQUIRE(std::isfinite(shape.softmax_scale), op,
                     ": softmax_scale=", shape.softmax_scale, " is not finite");
  return Status::Ok;
}

Status check_pointer(const char* op, const char* name, const void* pointer, std::int64_t rows) {
  DHP_KERNEL_REQUIRE(rows == 0 || pointer != nullptr, op, ": ", name, " is null (", rows, " rows)");
  return Status::Ok;
}

// Runs a CPU implementation; an allocation failure becomes a status, never an exception.
template <typename Fn>
Status run_cpu(const char* op, Fn&& fn) noexcept {
  try {
    fn();
    return Status::Ok;
  } catch (const std::bad_alloc&) {
    return fail(Status::DeviceError, concat(op, ": out of host memory"));
  } catch (const std::exception& e) {
    return fail(Status::DeviceError, concat(op, ": ", e.what()));
  }
}

#ifdef DHP_HAVE_CUDA
template <typename Fn>
Status run_cuda(const char* op, Fn&& fn) noexcept {
  try {
    std::string error;
    const Status status = fn(error);
    if (status != Status::Ok)
      fail(status, error.empty()
                       ? concat(op, ": CUDA implementation returned ", status_string(status))
                       : error);
    return status;
  } catch (const std::exception& e) {
    return fail(Status::DeviceError, concat(op, ": ", e.what()));
  }
}
#define DHP_KERNEL_RUN_CUDA(op, fn, ...) \
  return run_cuda(op, [&](std::string& error) { return cuda::fn(__VA_ARGS__, error); })
#else
#define DHP_KERNEL_RUN_CUDA(op, fn, ...) return Status::Unsupported  // refused by choose_impl
#endif

}  // namespace

const char* status_string(Status s) noexcept {
  switch (s) {
    case Status::Ok:
      return "Ok";
    case Status::InvalidArgument:
      return "InvalidArgument";
    case Status::Unsupported:
      return "Unsupported";
    case Status::DeviceError:
      return "DeviceError";
  }
  return "unknown Status";
}

const char* last_error() noexcept { return t_last_error.c_str(); }

bool built_with_cuda() noexcept {
#ifdef DHP_HAVE_CUDA
  return true;
#else
  return false;
#endif
}

const char* to_string(DType d) noexcept {
  switch (d) {
    case DType::F32:
      return "F32";
    case DType::F64:
      return "F64";
    case DType::BF16:
      return "BF16";
    case DType::F16:
      return "F16";
  }
  return "unknown DType";
}

int dtype_size(DType d) noexcept {
  switch (d) {
    case DType::F32:
      return 4;
    case DType::F64:
      return 8;
    case DType::BF16:
      return 2;
    case DType::F16:
      return 2;
  }
  return 0;
}

Status attention_forward(const AttentionForwardArgs& args) {
  constexpr const char* op = "attention_forward";
  Impl impl{};
  DHP_KERNEL_TRY(require_dtype(op, args.dtype));
  DHP_KERNEL_TRY(choose_impl(op, args.device, impl));
  DHP_KERNEL_TRY(check_shape(op, args.shape));
  DHP_KERNEL_TRY(check_seqs(op, args.seqs, impl == Impl::Cpu));
  DHP_KERNEL_TRY(check_pointer(op, "q", args.q, args.seqs.total_q));
  DHP_KERNEL_TRY(check_pointer(op, "out", args.out, args.seqs.total_q));
  DHP_KERNEL_TRY(check_pointer(op, "lse", args.lse, args.seqs.total_q));
  DHP_KERNEL_TRY(check_pointer(op, "k", args.k, args.seqs.total_k));
  DHP_KERNEL_TRY(check_pointer(op, "v", args.v, args.seqs.total_k));
  if (impl == Impl::Cuda) DHP_KERNEL_RUN_CUDA(op, attention_forward, args);
  return run_cpu(op, [&] {
    if (args.dtype == DType::F64)
      cpu::attention_forward<double>(args);
    else if (args.dtype == DType::F32)
      cpu::attention_forward<float>(args);
    else
      cpu::attention_forward_16bit(args);
  });
}

Status check_attention_support(DType dtype, Device device, const AttentionShape& shape) {
  constexpr const char* op = "attention";
  Impl impl{};
  DHP_KERNEL_TRY(require_dtype(op, dtype));
  DHP_KERNEL_TRY(choose_impl(op, device, impl));
  DHP_KERNEL_TRY(check_shape(op, shape));
  if (impl == Impl::Cuda) DHP_KERNEL_RUN_CUDA(op, attention_support, dtype, shape);
  return Status::Ok;  // the CPU reference runs every dtype and head_dim
}

Status attention_backward(const AttentionBackwardArgs& args) {
  constexpr const char* op = "attention_backward";
  Impl impl{};
  DHP_KERNEL_TRY(require_dtype(op, args.dtype));
  DHP_KERNEL_TRY(choose_impl(op, args.device, impl));
  DHP_KERNEL_TRY(check_shape(op, args.shape));
  DHP_KERNEL_TRY(check_seqs(op, args.seqs, impl == Impl::Cpu));
  const std::int64_t total_q = args.seqs.total_q, total_k = args.seqs.total_k;
  DHP_KERNEL_TRY(check_pointer(op, "q", args.q, total_q));
  DHP_KERNEL_TRY(check_pointer(op, "out", args.out, total_q));
  DHP_KERNEL_TRY(check_pointer(op, "dout", args.dout, total_q));
  DHP_KERNEL_TRY(check_pointer(op, "lse", args.lse, total_q));
  DHP_KERNEL_TRY(check_pointer(op, "dq", args.dq, total_q));
  DHP_KERNEL_TRY(check_pointer(op, "k", args.k, total_k));
  DHP_KERNEL_TRY(check_pointer(op, "v", args.v, total_k));
  DHP_KERNEL_TRY(check_pointer(op, "dk", args.dk, total_k));
  DHP_KERNEL_TRY(check_pointer(op, "dv", args.dv, total_k));
  if (impl == Impl::Cuda) DHP_KERNEL_RUN_CUDA(op, attention_backward, args);
  return run_cpu(op, [&] {
    if (args.dtype == DType::F64)
      cpu::attention_backward<double>(args);
    else if (args.dtype == DType::F32)
      cpu::attention_backward<float>(args);
    else
      cpu::attention_backward_16bit(args);
  });
}

Status merge_attention_partial(const MergeArgs& args) {
  constexpr const char* op = "merge_attention_partial";
  Impl impl{};
  DHP_KERNEL_TRY(require_dtype(op, args.dtype));
  DHP_KERNEL_TRY(choose_impl(op, args.device, impl));
  DHP_KERNEL_REQUIRE(args.rows >= 0, op, ": rows=", args.rows, " < 0");
  DHP_KERNEL_REQUIRE(args.heads > 0, op, ": heads=", args.heads, " <= 0");
  DHP_KERNEL_REQUIRE(args.head_dim > 0, op, ": head_dim=", args.head_dim, " <= 0");
  DHP_KERNEL_TRY(check_pointer(op, "out_acc", args.out_acc, args.rows));
  DHP_KERNEL_TRY(check_pointer(op, "lse_acc", args.lse_acc, args.rows));
  DHP_KERNEL_TRY(check_pointer(op, "out_part", args.out_part, args.rows));
  DHP_KERNEL_TRY(check_pointer(op, "lse_part", args.lse_part, args.rows));
  if (impl == Impl::Cuda) DHP_KERNEL_RUN_CUDA(op, merge_attention_partial, args);
  return run_cpu(op, [&] {
    if (args.dtype == DType::F64)
      cpu::merge_attention_partial<double>(args);
    else if (args.dtype == DType::F32)
      cpu::merge_attention_partial<float>(args);
    else
      cpu::merge_attention_partial_16bit(args);
  });
}

namespace {
Status check_zigzag(const char* op, const std::int32_t* cu_seqlens, int num_seqs, int degree,
                    int rank) {
  DHP_KERNEL_REQUIRE(num_seqs >= 0, op, ": num_seqs=", num_seqs, " < 0");
  DHP_KERNEL_REQUIRE(degree > 0, op, ": degree=", degree, " <= 0");
  DHP_KERNEL_REQUIRE(rank >= 0 && rank < degree, op, ": rank=", rank,
                     " outside [0, degree=", degree, ")");
  DHP_KERNEL_REQUIRE(cu_seqlens != nullptr || num_seqs == 0, op,
                     ": cu_seqlens is null (num_seqs=", num_seqs, ")");
  if (num_seqs > 0)
    DHP_KERNEL_TRY(check_cu_seqlens(op, "cu_seqlens", cu_seqlens, num_seqs, -1, false));
  return Status::Ok;
}
}  // namespace

std::int64_t zigzag_local_rows(const std::int32_t* cu_seqlens, int num_seqs, int degree, int rank) {
  if (check_zigzag("zigzag_local_rows", cu_seqlens, num_seqs, degree, rank) != Status::Ok)
    return -1;
  return cpu::zigzag_local_rows(cu_seqlens, num_seqs, degree, rank);
}

Status zigzag_layout(const std::int32_t* cu_seqlens, int num_seqs, int degree, int rank,
                     std::int32_t* cu_local, std::int32_t* src_rows, std::int32_t* positions) {
  constexpr const char* op = "zigzag_layout";
  DHP_KERNEL_TRY(check_zigzag(op, cu_seqlens, num_seqs, degree, rank));
  DHP_KERNEL_REQUIRE(cu_local != nullptr, op, ": cu_local is null");
  const std::int64_t local_rows = cpu::zigzag_local_rows(cu_seqlens, num_seqs, degree, rank);
  DHP_KERNEL_TRY(check_pointer(op, "src_rows", src_rows, local_rows));
  DHP_KERNEL_TRY(check_pointer(op, "positions", positions, local_rows));
  cpu::zigzag_layout(cu_seqlens, num_seqs, degree, rank, cu_local, src_rows, positions);
  return Status::Ok;
}

namespace {
Status check_row_copy(const char* op, const RowCopyArgs& args, Impl& impl) {
  DHP_KERNEL_TRY(choose_impl(op, args.device, impl));
  DHP_KERNEL_REQUIRE(args.num_rows >= 0, op, ": num_rows=", args.num_rows, " < 0");
  DHP_KERNEL_REQUIRE(args.row_bytes >= 0, op, ": row_bytes=", args.row_bytes, " < 0");
  DHP_KERNEL_TRY(check_pointer(op, "rows", args.rows, args.num_rows));
  const std::int64_t data_rows = args.row_bytes > 0 ? args.num_rows : 0;
  DHP_KERNEL_TRY(check_pointer(op, "src", args.src, data_rows));
  DHP_KERNEL_TRY(check_pointer(op, "dst", args.dst, data_rows));
  if (impl == Impl::Cpu)  // row indices are host-visible only on the CPU
    for (std::int64_t i = 0; i < args.num_rows; ++i)
      DHP_KERNEL_REQUIRE(args.rows[i] >= 0, op, ": rows[", i, "]=", args.rows[i], " < 0");
  return Status::Ok;
}

Status check_head_scatter(const char* op, const HeadScatterArgs& args, Impl& impl) {
  DHP_KERNEL_TRY(require_dtype(op, args.dtype));
  DHP_KERNEL_TRY(choose_impl(op, args.device, impl));
  DHP_KERNEL_REQUIRE(args.tokens >= 0, op, ": tokens=", args.tokens, " < 0");
  DHP_KERNEL_REQUIRE(args.heads > 0, op, ": heads=", args.heads, " <= 0");
  DHP_KERNEL_REQUIRE(args.head_dim > 0, op, ": head_dim=", args.head_dim, " <= 0");
  DHP_KERNEL_REQUIRE(args.degree > 0, op, ": degree=", args.degree, " <= 0");
  DHP_KERNEL_REQUIRE(args.heads % args.degree == 0, op, ": heads=", args.heads,
                     " is not a multiple of degree=", args.degree);
  DHP_KERNEL_TRY(check_pointer(op, "src", args.src, args.tokens));
  DHP_KERNEL_TRY(check_pointer(op, "dst", args.dst, args.tokens));
  DHP_KERNEL_REQUIRE(args.tokens == 0 || args.src != args.dst, op,
                     ": src and dst are the same buffer (the copy is not in place)");
  return Status::Ok;
}
}  // namespace

Status gather_rows(const RowCopyArgs& args) {
  constexpr const char* op = "gather_rows";
  Impl impl{};
  DHP_KERNEL_TRY(check_row_copy(op, args, impl));
  if (impl == Impl::Cuda) DHP_KERNEL_RUN_CUDA(op, gather_rows, args);
  return run_cpu(op, [&] { cpu::gather_rows(args); });
}

Status scatter_rows(const RowCopyArgs& args) {
  constexpr const char* op = "scatter_rows";
  Impl impl{};
  DHP_KERNEL_TRY(check_row_copy(op, args, impl));
  if (impl == Impl::Cuda) DHP_KERNEL_RUN_CUDA(op, scatter_rows, args);
  return run_cpu(op, [&] { cpu::scatter_rows(args); });
}

Status ulysses_head_scatter(const HeadScatterArgs& args) {
  constexpr const char* op = "ulysses_head_scatter";
  Impl impl{};
  DHP_KERNEL_TRY(check_head_scatter(op, args, impl));
  if (impl == Impl::Cuda) DHP_KERNEL_RUN_CUDA(op, ulysses_head_scatter, args);
  return run_cpu(op, [&] { cpu::ulysses_head_scatter(args); });
}

Status ulysses_head_gather(const HeadScatterArgs& args) {
  constexpr const char* op = "ulysses_head_gather";
  Impl impl{};
  DHP_KERNEL_TRY(check_head_scatter(op, args, impl));
  if (impl == Impl::Cuda) DHP_KERNEL_RUN_CUDA(op, ulysses_head_gather, args);
  return run_cpu(op, [&] { cpu::ulysses_head_gather(args); });
}

Status convert_dtype(const ConvertArgs& args) {
  constexpr const char* op = "convert_dtype";
  Impl impl{};
  DHP_KERNEL_TRY(choose_impl(op, args.device, impl));
  DHP_KERNEL_REQUIRE(args.count >= 0, op, ": count=", args.count, " < 0");
  DHP_KERNEL_TRY(require_dtype(op, args.src_dtype));
  DHP_KERNEL_TRY(require_dtype(op, args.dst_dtype));
  DHP_KERNEL_TRY(check_pointer(op, "src", args.src, args.count));
  DHP_KERNEL_TRY(check_pointer(op, "dst", args.dst, args.count));
  if (args.count == 0) return Status::Ok;
  if (impl == Impl::Cuda) DHP_KERNEL_RUN_CUDA(op, convert_dtype, args);
  return run_cpu(op, [&] { cpu::convert_dtype(args); });
}

}  // namespace dhp::kernels
