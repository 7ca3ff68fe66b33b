// CPU attention over packed variable-length sequences: flash-style on the CPU, i.e.
// blocks of queries against blocks of keys with an online softmax, so memory stays
// O(block^2) whatever the sequence length. Block products go through Eigen.
#include <Eigen/Core>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "cpu/cpu_kernels.hpp"
#include "cuda_launchers.hpp"  // effective_softmax_scale: one definition for both paths

namespace dhp::kernels::cpu {
namespace {

template <typename T>
using RowMatrix = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
// A [rows, head_dim] slice of one head inside a [tokens, heads, head_dim] buffer.
template <typename T>
using ConstHeadRows = Eigen::Map<const RowMatrix<T>, 0, Eigen::OuterStride<>>;
template <typename T>
using HeadRows = Eigen::Map<RowMatrix<T>, 0, Eigen::OuterStride<>>;

// 64x64 score blocks: big enough for Eigen's GEMM kernels, small enough for L1/L2.
constexpr std::int64_t kQueryBlock = 64;
constexpr std::int64_t kKeyBlock = 64;

// Positions of one sequence's rows: explicit, or the row's index in its segment.
std::vector<std::int32_t> segment_positions(const std::int32_t* positions, std::int64_t begin,
                                            std::int64_t length) {
  std::vector<std::int32_t> result(static_cast<std::size_t>(length));
  for (std::int64_t i = 0; i < length; ++i)
    result[static_cast<std::size_t>(i)] =
        positions ? positions[begin + i] : static_cast<std::int32_t>(i);
  return result;
}

struct Segment {
  std::int64_t q_begin, q_len, k_begin, k_len;
};

Segment segment_of(const PackedSeqs& seqs, int b) {
  return {seqs.cu_seqlens_q[b], seqs.cu_seqlens_q[b + 1] - seqs.cu_seqlens_q[b],
          seqs.cu_seqlens_k[b], seqs.cu_seqlens_k[b + 1] - seqs.cu_seqlens_k[b]};
}

// Whole key blocks that no query of the block can see are skipped under a causal mask.
struct BlockRange {
  std::int32_t min, max;
};
BlockRange range_of(const std::vector<std::int32_t>& pos, std::int64_t begin, std::int64_t n) {
  auto first = pos.begin() + begin;
  auto [lo, hi] = std::minmax_element(first, first + n);
  return {*lo, *hi};
}

// Sets the scores of keys a query must not see (k_pos > q_pos) to -inf.
template <typename T>
void apply_causal_mask(RowMatrix<T>& scores, const std::vector<std::int32_t>& q_pos,
                       std::int64_t q_first, const std::vector<std::int32_t>& k_pos,
                       std::int64_t k_first) {
  constexpr T kNegInf = -std::numeric_limits<T>::infinity();
  for (Eigen::Index i = 0; i < scores.rows(); ++i) {
    const std::int32_t qp = q_pos[static_cast<std::size_t>(q_first + i)];
    for (Eigen::Index j = 0; j < scores.cols(); ++j)
      if (k_pos[static_cast<std::size_t>(k_first + j)] > qp) scores(i, j) = kNegInf;
  }
}

}  // namespace

template <typename T>
void attention_forward(const AttentionForwardArgs& args) {
  constexpr T kNegInf = -std::numeric_limits<T>::infinity();
  const AttentionShape& shape = args.shape;
  const PackedSeqs& seqs = args.seqs;
  const std::int64_t d = shape.head_dim;
  const std::int64_t q_stride = shape.heads_q * d;
  const std::int64_t kv_stride = shape.heads_kv * d;
  const int group = shape.heads_q / shape.heads_kv;
  const T scale = static_cast<T>(effective_softmax_scale(shape));
  const T* q = static_cast<const T*>(args.q);
  const T* k = static_cast<const T*>(args.k);
  const T* v = static_cast<const T*>(args.v);
  T* out = static_cast<T*>(args.out);
  T* lse = static_cast<T*>(args.lse);

  RowMatrix<T> scores, acc;
  Eigen::Matrix<T, Eigen::Dynamic, 1> row_max, row_sum;
  for (int b = 0; b < seqs.num_seqs; ++b) {
    const Segment seg = segment_of(seqs, b);
    if (seg.q_len == 0) continue;
    const auto q_pos = segment_positions(seqs.q_positions, seg.q_begin, seg.q_len);
    const auto k_pos = segment_positions(seqs.k_positions, seg.k_begin, seg.k_len);
    for (int h = 0; h < shape.heads_q; ++h) {
      const int kv_head = h / group;
      ConstHeadRows<T> Q(q + seg.q_begin * q_stride + h * d, seg.q_len, d,
                         Eigen::OuterStride<>(q_stride));
      ConstHeadRows<T> K(k + seg.k_begin * kv_stride + kv_head * d, seg.k_len, d,
                         Eigen::OuterStride<>(kv_stride));
      ConstHeadRows<T> V(v + seg.k_begin * kv_stride + kv_head * d, seg.k_len, d,
                         Eigen::OuterStride<>(kv_stride));
      HeadRows<T> O(out + seg.q_begin * q_stride + h * d, seg.q_len, d,
                    Eigen::OuterStride<>(q_stride));
      T* lse_head = lse + h * seqs.total_q + seg.q_begin;

      for (std::int64_t qb = 0; qb < seg.q_len; qb += kQueryBlock) {
        const std::int64_t nq = std::min(kQueryBlock, seg.q_len - qb);
        const BlockRange q_range = range_of(q_pos, qb, nq);
        row_max.setConstant(nq, kNegInf);
        row_sum.setZero(nq);
        acc.setZero(nq, d);
        for (std::int64_t kb = 0; kb < seg.k_len; kb += kKeyBlock) {
          const std::int64_t nk = std::min(kKeyBlock, seg.k_len - kb);
          bool needs_mask = false;
          if (shape.causal) {
            const BlockRange k_range = range_of(k_pos, kb, nk);
            if (k_range.min > q_range.max) continue;  // nothing visible in this block
            needs_mask = k_range.max > q_range.min;
          }
          scores.noalias() = Q.middleRows(qb, nq) * K.middleRows(kb, nk).transpose();
          scores *= scale;
          if (needs_mask) apply_causal_mask(scores, q_pos, qb, k_pos, kb);
          // Online softmax: rescale what was accumulated so far to the new row maximum.
          for (Eigen::Index i = 0; i < nq; ++i) {
            const T new_max = std::max(row_max(i), scores.row(i).maxCoeff());
            if (new_max == kNegInf) {  // row sees nothing yet: contributes nothing
              scores.row(i).setZero();
              continue;
            }
            const T correction = std::exp(row_max(i) - new_max);  // exp(-inf) = 0
            scores.row(i) = (scores.row(i).array() - new_max).exp().matrix();
            row_sum(i) = row_sum(i) * correction + scores.row(i).sum();
            acc.row(i) *= correction;
            row_max(i) = new_max;
          }
          acc.noalias() += scores * V.middleRows(kb, nk);
        }
        for (Eigen::Index i = 0; i < nq; ++i) {
          if (row_sum(i) == T(0)) {  // no visible key
            O.row(qb + i).setZero();
            lse_head[qb + i] = kNegInf;
          } else {
            O.row(qb + i) = acc.row(i) / row_sum(i);
            lse_head[qb + i] = row_max(i) + std::log(row_sum(i));
          }
        }
      }
    }
  }
}

template <typename T>
void attention_backward(const AttentionBackwardArgs& args) {
  constexpr T kNegInf = -std::numeric_limits<T>::infinity();
  const AttentionShape& shape = args.shape;
  const PackedSeqs& seqs = args.seqs;
  const std::int64_t d = shape.head_dim;
  const std::int64_t q_stride = shape.heads_q * d;
  const std::int64_t kv_stride = shape.heads_kv * d;
  const int group = shape.heads_q / shape.heads_kv;
  const T scale = static_cast<T>(effective_softmax_scale(shape));
  const T* q = static_cast<const T*>(args.q);
  const T* k = static_cast<const T*>(args.k);
  const T* v = static_cast<const T*>(args.v);
  const T* out = static_cast<const T*>(args.out);
  const T* dout = static_cast<const T*>(args.dout);
  const T* lse = static_cast<const T*>(args.lse);
  T* dq = static_cast<T*>(args.dq);
  T* dk = static_cast<T*>(args.dk);
  T* dv = static_cast<T*>(args.dv);

  if (!args.accumulate) {
    std::fill(dq, dq + seqs.total_q * q_stride, T(0));
    std::fill(dk, dk + seqs.total_k * kv_stride, T(0));
    std::fill(dv, dv + seqs.total_k * kv_stride, T(0));
  }

  RowMatrix<T> probs, dprobs;
  Eigen::Matrix<T, Eigen::Dynamic, 1> delta;
  for (int b = 0; b < seqs.num_seqs; ++b) {
    const Segment seg = segment_of(seqs, b);
    if (seg.q_len == 0 || seg.k_len == 0) continue;
    const auto q_pos = segment_positions(seqs.q_positions, seg.q_begin, seg.q_len);
    const auto k_pos = segment_positions(seqs.k_positions, seg.k_begin, seg.k_len);
    for (int h = 0; h < shape.heads_q; ++h) {
      const int kv_head = h / group;
      const Eigen::OuterStride<> qs(q_stride), kvs(kv_stride);
      const std::int64_t q_off = seg.q_begin * q_stride + h * d;
      const std::int64_t kv_off = seg.k_begin * kv_stride + kv_head * d;
      ConstHeadRows<T> Q(q + q_off, seg.q_len, d, qs), O(out + q_off, seg.q_len, d, qs),
          dO(dout + q_off, seg.q_len, d, qs);
      ConstHeadRows<T> K(k + kv_off, seg.k_len, d, kvs), V(v + kv_off, seg.k_len, d, kvs);
      HeadRows<T> dQ(dq + q_off, seg.q_len, d, qs);
      HeadRows<T> dK(dk + kv_off, seg.k_len, d, kvs), dV(dv + kv_off, seg.k_len, d, kvs);
      const T* lse_head = lse + h * seqs.total_q + seg.q_begin;

      for (std::int64_t qb = 0; qb < seg.q_len; qb += kQueryBlock) {
        const std::int64_t nq = std::min(kQueryBlock, seg.q_len - qb);
        const BlockRange q_range = range_of(q_pos, qb, nq);
        // delta_i = sum_j P_ij dP_ij = dO_i . O_i (O is the final, merged output).
        delta = dO.middleRows(qb, nq).cwiseProduct(O.middleRows(qb, nq)).rowwise().sum();
        for (std::int64_t kb = 0; kb < seg.k_len; kb += kKeyBlock) {
          const std::int64_t nk = std::min(kKeyBlock, seg.k_len - kb);
          bool needs_mask = false;
          if (shape.causal) {
            const BlockRange k_range = range_of(k_pos, kb, nk);
            if (k_range.min > q_range.max) continue;
            needs_mask = k_range.max > q_range.min;
          }
          probs.noalias() = Q.middleRows(qb, nq) * K.middleRows(kb, nk).transpose();
          probs *= scale;
          if (needs_mask) apply_causal_mask(probs, q_pos, qb, k_pos, kb);
          for (Eigen::Index i = 0; i < nq; ++i) {
            const T row_lse = lse_head[qb + i];
            if (row_lse == kNegInf)  // the row saw no key anywhere: no gradient
              probs.row(i).setZero();
            else
              probs.row(i) = (probs.row(i).array() - row_lse).exp().matrix();
          }
          dV.middleRows(kb, nk).noalias() += probs.transpose() * dO.middleRows(qb, nq);
          dprobs.noalias() = dO.middleRows(qb, nq) * V.middleRows(kb, nk).transpose();
          // dS = P * (dP - delta), with the softmax scale folded in once here.
          // Two statements: Eigen evaluates a broadcast that reads dprobs while assigning it
          // incorrectly (wrong dQ/dK seen in tests), so subtract in place first.
          dprobs.colwise() -= delta;
          dprobs = (probs.array() * dprobs.array() * scale).matrix();
          dQ.middleRows(qb, nq).noalias() += dprobs * K.middleRows(kb, nk);
          dK.middleRows(kb, nk).noalias() += dprobs.transpose() * Q.middleRows(qb, nq);
        }
      }
    }
  }
}

template <typename T>
void merge_attention_partial(const MergeArgs& args) {
  constexpr T kNegInf = -std::numeric_limits<T>::infinity();
  const std::int64_t d = args.head_dim;
  const std::int64_t row_elems = args.heads * d;
  T* out_acc = static_cast<T*>(args.out_acc);
  T* lse_acc = static_cast<T*>(args.lse_acc);
  const T* out_part = static_cast<const T*>(args.out_part);
  const T* lse_part = static_cast<const T*>(args.lse_part);
  for (int h = 0; h < args.heads; ++h) {
    for (std::int64_t r = 0; r < args.rows; ++r) {
      T& la = lse_acc[h * args.rows + r];
      const T lb = lse_part[h * args.rows + r];
      T* oa = out_acc + r * row_elems + h * d;
      const T* ob = out_part + r * row_elems + h * d;
      if (lb == kNegInf) {
        // Nothing to add. An empty accumulator row is (re)written as 0 so that it never
        // carries garbage forward.
        if (la == kNegInf) std::fill(oa, oa + d, T(0));
        continue;
      }
      if (la == kNegInf) {  // first contribution: copy (never multiply garbage by 0)
        std::copy(ob, ob + d, oa);
        la = lb;
        continue;
      }
      // Both finite: weights relative to the larger lse, so the larger is exp(0) = 1.
      const T new_max = std::max(la, lb);
      const T wa = std::exp(la - new_max);
      const T wb = std::exp(lb - new_max);
      const T total = wa + wb;  // in [1, 2]: no overflow, no division by ~0
      for (std::int64_t i = 0; i < d; ++i) oa[i] = (oa[i] * wa + ob[i] * wb) / total;
      la = new_max + std::log1p(std::min(wa, wb));  // log(1 + smaller weight), exact-ish
    }
  }
}

template void attention_forward<float>(const AttentionForwardArgs&);
template void attention_forward<double>(const AttentionForwardArgs&);
template void attention_backward<float>(const AttentionBackwardArgs&);
template void attention_backward<double>(const AttentionBackwardArgs&);
template void merge_attention_partial<float>(const MergeArgs&);
template void merge_attention_partial<double>(const MergeArgs&);

}  // namespace dhp::kernels::cpu
