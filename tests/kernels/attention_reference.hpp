// Test helpers for the kernel tests: packed random batches and a naive fp64 attention
// (full score matrix, explicit mask, softmax), written independently of kernels/cpu.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <string>
#include <type_traits>
#include <vector>

#include "dhp/kernels.hpp"
#include "sixteen_bit.hpp"

namespace dhp::kernels::testing {

constexpr double kInf = std::numeric_limits<double>::infinity();
constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

using dhp::testing::Acc;
using dhp::testing::BF16;
using dhp::testing::dtype_of;
using dhp::testing::F16;

// Per-dtype tolerance (TransformerEngine style: one table, looked up by dtype):
// |got - want| <= tol * (1 + |want|), against the fp64 reference on the same (rounded)
// inputs; values are O(1) by construction. F32/F64: about 10x the worst error measured
// (fp32: forward 2.1e-7, backward 1.3e-6; fp64 below 1e-14 / 1e-13), so a real regression
// fails. 16-bit: the kernels accumulate in fp32 and round each output once, so an output
// is off by at most the unit roundoff u (2^-8 bf16, 2^-11 f16) plus the fp32 error; the
// backward also reads the final out rounded to 16 bits (delta = dO . O), which would add
// an error growing with the number of queries a key serves unless the reference takes the same
// rounded out (reference_attention's delta_out; the tests do). Rounding twice (a 16-bit
// accumulator) or a wrong mask exceeds these.
template <typename T>
struct Tolerance;
template <>
struct Tolerance<double> {
  static constexpr double forward = 1e-13;
  static constexpr double backward = 1e-12;
  static constexpr double lse = forward;
};
template <>
struct Tolerance<float> {
  static constexpr double forward = 2e-6;
  static constexpr double backward = 1e-5;
  static constexpr double lse = forward;
};
template <>
struct Tolerance<BF16> {
  static constexpr double forward = dhp::testing::unit_roundoff<BF16>() + Tolerance<float>::forward;
  static constexpr double backward =
      dhp::testing::unit_roundoff<BF16>() + Tolerance<float>::backward;
  static constexpr double lse = Tolerance<float>::forward;  // fp32, from the rounded inputs
};
template <>
struct Tolerance<F16> {
  static constexpr double forward = dhp::testing::unit_roundoff<F16>() + Tolerance<float>::forward;
  static constexpr double backward =
      dhp::testing::unit_roundoff<F16>() + Tolerance<float>::backward;
  static constexpr double lse = Tolerance<float>::forward;
};

struct Batch {
  std::vector<std::int32_t> cu_q{0}, cu_k{0};
  std::vector<std::int32_t> q_pos, k_pos;  // empty = index in segment
  int num_seqs() const { return static_cast<int>(cu_q.size()) - 1; }
  std::int64_t total_q() const { return cu_q.back(); }
  std::int64_t total_k() const { return cu_k.back(); }
  PackedSeqs seqs() const {
    PackedSeqs s;
    s.cu_seqlens_q = cu_q.data();
    s.cu_seqlens_k = cu_k.data();
    s.q_positions = q_pos.empty() ? nullptr : q_pos.data();
    s.k_positions = k_pos.empty() ? nullptr : k_pos.data();
    s.num_seqs = num_seqs();
    s.total_q = total_q();
    s.total_k = total_k();
    return s;
  }
  std::int32_t q_position(std::int64_t row, int b) const {
    return q_pos.empty() ? static_cast<std::int32_t>(row - cu_q[b]) : q_pos[row];
  }
  std::int32_t k_position(std::int64_t row, int b) const {
    return k_pos.empty() ? static_cast<std::int32_t>(row - cu_k[b]) : k_pos[row];
  }
  // The longest segments: the max_seqlen hints a caller passes (the CPU checks them).
  int max_len_q() const { return max_len(cu_q); }
  int max_len_k() const { return max_len(cu_k); }
  static int max_len(const std::vector<std::int32_t>& cu) {
    int longest = 0;
    for (std::size_t b = 0; b + 1 < cu.size(); ++b) longest = std::max(longest, cu[b + 1] - cu[b]);
    return longest;
  }
};

inline Batch make_batch(const std::vector<int>& q_lens, const std::vector<int>& k_lens) {
  Batch batch;
  for (std::size_t b = 0; b < q_lens.size(); ++b) {
    batch.cu_q.push_back(batch.cu_q.back() + q_lens[b]);
    batch.cu_k.push_back(batch.cu_k.back() + k_lens[b]);
  }
  return batch;
}

inline std::vector<double> random_vector(std::size_t n, std::mt19937_64& rng, double sigma = 1) {
  std::normal_distribution<double> normal(0.0, sigma);
  std::vector<double> v(n);
  for (auto& x : v) x = normal(rng);
  return v;
}

template <typename T>
std::vector<T> cast(const std::vector<double>& v) {
  std::vector<T> out;
  out.reserve(v.size());
  for (double x : v) out.push_back(static_cast<T>(x));
  return out;
}
template <typename T>
std::vector<double> to_double(const std::vector<T>& v) {
  std::vector<double> out;
  out.reserve(v.size());
  for (const T& x : v) out.push_back(static_cast<double>(x));
  return out;
}

struct Reference {
  std::vector<double> out, lse;    // forward
  std::vector<double> dq, dk, dv;  // backward (when dout given)
};

// Naive attention in fp64: for each sequence and query head, the full [Lq, Lk] score
// matrix, the causal mask from positions, a two-pass softmax, then out = P V.
// With dout: dV = P^T dO, dP = dO V^T, dS = P (dP - delta), dQ = s dS K, dK = s dS^T Q, with
// delta = rowsum(P dP) = dO . out. `delta_out`: the out the backward under test is given
// (the final out rounded to 16 bits), used for delta = dO . delta_out the way the kernels
// use it, so that the comparison measures the backward's own error and not the forward's
// rounding, which every 16-bit backward inherits.
inline Reference reference_attention(const Batch& batch, const AttentionShape& shape,
                                     const std::vector<double>& q, const std::vector<double>& k,
                                     const std::vector<double>& v,
                                     const std::vector<double>* dout = nullptr,
                                     const std::vector<double>* delta_out = nullptr) {
  const int hq = shape.heads_q, hkv = shape.heads_kv, d = shape.head_dim;
  const double scale = shape.softmax_scale != 0 ? shape.softmax_scale : 1.0 / std::sqrt(d);
  const std::int64_t tq = batch.total_q(), tk = batch.total_k();
  Reference ref;
  ref.out.assign(static_cast<std::size_t>(tq * hq * d), 0.0);
  ref.lse.assign(static_cast<std::size_t>(hq * tq), -kInf);
  if (dout) {
    ref.dq.assign(ref.out.size(), 0.0);
    ref.dk.assign(static_cast<std::size_t>(tk * hkv * d), 0.0);
    ref.dv.assign(ref.dk.size(), 0.0);
  }
  auto qi = [&](std::int64_t row, int h, int c) { return (row * hq + h) * d + c; };
  auto ki = [&](std::int64_t row, int h, int c) { return (row * hkv + h) * d + c; };
  for (int b = 0; b < batch.num_seqs(); ++b) {
    const std::int64_t q0 = batch.cu_q[b], q1 = batch.cu_q[b + 1];
    const std::int64_t k0 = batch.cu_k[b], k1 = batch.cu_k[b + 1];
    const std::int64_t lq = q1 - q0, lk = k1 - k0;
    for (int h = 0; h < hq; ++h) {
      const int g = h / (hq / hkv);
      std::vector<double> p(static_cast<std::size_t>(lq * lk), 0.0);
      std::vector<char> visible(p.size(), 0);
      for (std::int64_t i = 0; i < lq; ++i) {
        double row_max = -kInf;
        for (std::int64_t j = 0; j < lk; ++j) {
          const bool vis =
              !shape.causal || batch.k_position(k0 + j, b) <= batch.q_position(q0 + i, b);
          if (!vis) continue;
          double s = 0;
          for (int c = 0; c < d; ++c) s += q[qi(q0 + i, h, c)] * k[ki(k0 + j, g, c)];
          p[i * lk + j] = s * scale;
          visible[i * lk + j] = 1;
          row_max = std::max(row_max, s * scale);
        }
        if (row_max == -kInf) continue;  // no visible key: out 0, lse -inf
        double sum = 0;
        for (std::int64_t j = 0; j < lk; ++j)
          if (visible[i * lk + j]) sum += std::exp(p[i * lk + j] - row_max);
        for (std::int64_t j = 0; j < lk; ++j)
          p[i * lk + j] = visible[i * lk + j] ? std::exp(p[i * lk + j] - row_max) / sum : 0.0;
        ref.lse[h * tq + q0 + i] = row_max + std::log(sum);
        for (int c = 0; c < d; ++c) {
          double o = 0;
          for (std::int64_t j = 0; j < lk; ++j) o += p[i * lk + j] * v[ki(k0 + j, g, c)];
          ref.out[qi(q0 + i, h, c)] = o;
        }
      }
      if (!dout) continue;
      for (std::int64_t i = 0; i < lq; ++i) {
        std::vector<double> dp(static_cast<std::size_t>(lk), 0.0);
        double row_dot = 0;
        for (std::int64_t j = 0; j < lk; ++j) {
          for (int c = 0; c < d; ++c) dp[j] += (*dout)[qi(q0 + i, h, c)] * v[ki(k0 + j, g, c)];
          row_dot += p[i * lk + j] * dp[j];
        }
        if (delta_out != nullptr) {
          row_dot = 0;
          for (int c = 0; c < d; ++c)
            row_dot += (*dout)[qi(q0 + i, h, c)] * (*delta_out)[qi(q0 + i, h, c)];
        }
        for (std::int64_t j = 0; j < lk; ++j) {
          const double pij = p[i * lk + j];
          const double ds = pij * (dp[j] - row_dot) * scale;
          for (int c = 0; c < d; ++c) {
            ref.dv[ki(k0 + j, g, c)] += pij * (*dout)[qi(q0 + i, h, c)];
            ref.dq[qi(q0 + i, h, c)] += ds * k[ki(k0 + j, g, c)];
            ref.dk[ki(k0 + j, g, c)] += ds * q[qi(q0 + i, h, c)];
          }
        }
      }
    }
  }
  return ref;
}

// The worst |got - want| / (1 + |want|) over finite pairs (what all_close bounds), for the
// figures the tests print.
template <typename T>
double worst_scaled_error(const std::vector<T>& got, const std::vector<double>& want) {
  double worst = 0;
  for (std::size_t i = 0; i < got.size() && i < want.size(); ++i) {
    const double g = static_cast<double>(got[i]), w = want[i];
    if (std::isfinite(g) && std::isfinite(w))
      worst = std::max(worst, std::abs(g - w) / (1 + std::abs(w)));
  }
  return worst;
}

// Element-wise comparison; -inf must match -inf exactly, NaN never matches.
template <typename T>
::testing::AssertionResult all_close(const std::vector<T>& got, const std::vector<double>& want,
                                     double tol, const std::string& what) {
  if (got.size() != want.size())
    return ::testing::AssertionFailure()
           << what << ": size " << got.size() << " vs " << want.size();
  double worst = 0;
  for (std::size_t i = 0; i < got.size(); ++i) {
    const double g = static_cast<double>(got[i]), w = want[i];
    if (std::isinf(w) || std::isinf(g)) {
      if (g != w)
        return ::testing::AssertionFailure() << what << "[" << i << "] = " << g << ", want " << w;
      continue;
    }
    const double err = std::abs(g - w) / (1 + std::abs(w));
    if (!(err <= tol))  // also catches NaN (unwritten, poisoned elements)
      return ::testing::AssertionFailure() << what << "[" << i << "] = " << g << ", want " << w
                                           << " (scaled error " << err << " > " << tol << ")";
    worst = std::max(worst, err);
  }
  return ::testing::AssertionSuccess() << what << " worst scaled error " << worst;
}

template <typename T, typename O = T>
struct ForwardResult {
  std::vector<O> out;
  std::vector<Acc<T>> lse;
};

// Runs the public launcher on the CPU with out/lse poisoned (NaN) so that an element the
// kernel forgets to write fails the comparison. O is T, or Acc<T> (accumulator_out).
template <typename T, typename O = T>
ForwardResult<T, O> run_forward(const Batch& batch, const AttentionShape& shape,
                                const std::vector<T>& q, const std::vector<T>& k,
                                const std::vector<T>& v) {
  static_assert(std::is_same_v<O, T> || std::is_same_v<O, Acc<T>>);
  ForwardResult<T, O> r;
  r.out.assign(static_cast<std::size_t>(batch.total_q() * shape.heads_q * shape.head_dim),
               static_cast<O>(kNaN));
  r.lse.assign(static_cast<std::size_t>(batch.total_q() * shape.heads_q),
               static_cast<Acc<T>>(kNaN));
  AttentionForwardArgs args;
  args.dtype = dtype_of<T>();
  args.shape = shape;
  args.seqs = batch.seqs();
  args.seqs.max_seqlen_q = batch.max_len_q();
  args.seqs.max_seqlen_k = batch.max_len_k();
  args.q = q.data();
  args.k = k.data();
  args.v = v.data();
  args.out = r.out.data();
  args.lse = r.lse.data();
  args.accumulator_out = !std::is_same_v<O, T>;
  const Status status = attention_forward(args);
  EXPECT_EQ(status, Status::Ok) << last_error();
  return r;
}

template <typename T>
struct Gradients {
  std::vector<T> dq, dk, dv;
};

// Backward from the final out/lse. Without `initial`, gradients are poisoned and
// overwritten (accumulate=false); with it, they start from `initial` and accumulate.
// G is T (gradients in the data type) or Acc<T> (accumulator_grads: fp32 for 16-bit data).
template <typename T, typename G = T>
Gradients<G> run_backward(const Batch& batch, const AttentionShape& shape, const std::vector<T>& q,
                          const std::vector<T>& k, const std::vector<T>& v,
                          const std::vector<T>& out, const std::vector<T>& dout,
                          const std::vector<Acc<T>>& lse, const Gradients<G>* initial = nullptr) {
  static_assert(std::is_same_v<G, T> || std::is_same_v<G, Acc<T>>);
  Gradients<G> g;
  if (initial) {
    g = *initial;
  } else {
    g.dq.assign(q.size(), static_cast<G>(kNaN));
    g.dk.assign(k.size(), static_cast<G>(kNaN));
    g.dv.assign(v.size(), static_cast<G>(kNaN));
  }
  AttentionBackwardArgs args;
  args.dtype = dtype_of<T>();
  args.shape = shape;
  args.seqs = batch.seqs();
  args.seqs.max_seqlen_q = batch.max_len_q();
  args.seqs.max_seqlen_k = batch.max_len_k();
  args.q = q.data();
  args.k = k.data();
  args.v = v.data();
  args.out = out.data();
  args.dout = dout.data();
  args.lse = lse.data();
  args.dq = g.dq.data();
  args.dk = g.dk.data();
  args.dv = g.dv.data();
  args.accumulate = initial != nullptr;
  args.accumulator_grads = !std::is_same_v<G, T>;
  const Status status = attention_backward(args);
  EXPECT_EQ(status, Status::Ok) << last_error();
  return g;
}

}  // namespace dhp::kernels::testing
