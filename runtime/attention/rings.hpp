// The ring entry points with their streams given: the public cp_attention_* and
// encoder_attention_* make them with make_ring_streams(); tests pass a recording
// decorator to check the order of the calls (tests/runtime/test_ring_streams.cpp).
#pragma once

#include "attention/ring_streams.hpp"
#include "dhp/cp_attention.hpp"
#include "dhp/encoder_attention.hpp"

namespace dhp {

void cp_attention_forward(const CpAttentionContext& ctx, RingStreams& streams, const void* q,
                          const void* k, const void* v, void* out, void* lse);
void cp_attention_backward(const CpAttentionContext& ctx, RingStreams& streams, const void* q,
                           const void* k, const void* v, const void* out, const void* lse,
                           const void* dout, void* dq, void* dk, void* dv);
void encoder_attention_forward(const EncoderAttentionContext& ctx, RingStreams& streams,
                               const void* q, const void* k, const void* v, void* out, void* lse);
void encoder_attention_backward(const EncoderAttentionContext& ctx, RingStreams& streams,
                                const void* q, const void* k, const void* v, const void* out,
                                const void* lse, const void* dout, void* dq, void* dk, void* dv);

}  // namespace dhp
