// Internal interface between the dispatch (kernels/dispatch.cpp) and the CUDA
// implementations (kernels/cuda/*.cu, library dhp_kernels_cuda). Not installed.
//
// Contract:
// - dispatch.cpp calls these only when dhp_kernels is built with DHP_HAVE_CUDA and the
//   chosen implementation is CUDA (args.device == Device::CUDA, or DHP_ATTENTION_IMPL=cuda).
// - Before the call, dispatch.cpp has validated everything that is visible on the host:
//   non-null pointers (where the element count is > 0), sizes >= 0, num_seqs >= 0,
//   heads_q % heads_kv == 0, head_dim > 0, degree > 0, heads % degree == 0.
//   cu_seqlens / positions / rows live in device memory and are NOT checked on the host.
// - softmax_scale arrives as given (0 means 1/sqrt(head_dim)); use
//   effective_softmax_scale() below so both implementations agree.
// - Each function returns Status::Ok, or Unsupported (dtype/head_dim/arch not built),
//   DeviceError (a CUDA call failed) or InvalidArgument, and then writes a one-line reason
//   naming the value into `error` (dispatch copies it into last_error()). `error` is
//   untouched on Ok. Launches are asynchronous on args.stream (cudaStream_t, null =
//   default stream); a function must not synchronise unless it says why.
// - Kept free of CUDA types so that dispatch.cpp compiles with a plain C++ compiler.
#pragma once

#include <cmath>
#include <string>

#include "dhp/kernels.hpp"

namespace dhp::kernels {

inline double effective_softmax_scale(const AttentionShape& shape) {
  return shape.softmax_scale != 0 ? shape.softmax_scale
                                  : 1.0 / std::sqrt(static_cast<double>(shape.head_dim));
}

}  // namespace dhp::kernels

namespace dhp::kernels::cuda {

// Host-only: whether the CUDA attention supports this dtype and shape (no launch).
Status attention_support(DType dtype, const AttentionShape& shape, std::string& error);
Status attention_forward(const AttentionForwardArgs& args, std::string& error);
Status attention_backward(const AttentionBackwardArgs& args, std::string& error);
Status merge_attention_partial(const MergeArgs& args, std::string& error);
Status gather_rows(const RowCopyArgs& args, std::string& error);
Status scatter_rows(const RowCopyArgs& args, std::string& error);
Status ulysses_head_scatter(const HeadScatterArgs& args, std::string& error);
Status ulysses_head_gather(const HeadScatterArgs& args, std::string& error);
Status convert_dtype(const ConvertArgs& args, std::string& error);

}  // namespace dhp::kernels::cuda
