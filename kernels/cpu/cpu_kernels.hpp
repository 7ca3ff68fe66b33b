// CPU reference implementations behind the dispatch (kernels/dispatch.cpp). Not installed.
// Arguments arrive validated (dispatch.cpp): pointers non-null where data exists,
// cu_seqlens non-decreasing from 0 to the totals, heads divisible. T is float or double
// (the accumulator type equals the data type); the *_16bit functions take BF16/F16 data:
// widened to float (exactly), computed by the float kernels (fp32 accumulation, fp32 lse),
// the outputs rounded once to nearest even.
#pragma once

#include <cstdint>

#include "dhp/kernels.hpp"

namespace dhp::kernels::cpu {

template <typename T>
void attention_forward(const AttentionForwardArgs& args);
template <typename T>
void attention_backward(const AttentionBackwardArgs& args);
template <typename T>
void merge_attention_partial(const MergeArgs& args);
void attention_forward_16bit(const AttentionForwardArgs& args);
void attention_backward_16bit(const AttentionBackwardArgs& args);
void merge_attention_partial_16bit(const MergeArgs& args);

void zigzag_layout(const std::int32_t* cu_seqlens, int num_seqs, int degree, int rank,
                   std::int32_t* cu_local, std::int32_t* src_rows, std::int32_t* positions);
std::int64_t zigzag_local_rows(const std::int32_t* cu_seqlens, int num_seqs, int degree, int rank);

void gather_rows(const RowCopyArgs& args);
void scatter_rows(const RowCopyArgs& args);
void ulysses_head_scatter(const HeadScatterArgs& args);
void ulysses_head_gather(const HeadScatterArgs& args);
void convert_dtype(const ConvertArgs& args);

}  // namespace dhp::kernels::cpu
