// Layout kernels on the CPU: zigzag bookkeeping, row gather/scatter, Ulysses head
// scatter/gather. All plain copies.
#include <cstring>
#include <initializer_list>

#include "cpu/cpu_kernels.hpp"

namespace dhp::kernels::cpu {
namespace {

// Chunk c of a sequence of `length` rows split into `chunks` pieces starts here.
// 64-bit product: c * length overflows int32 for long sequences and large degrees.
std::int64_t chunk_begin(std::int64_t c, std::int64_t length, std::int64_t chunks) {
  return c * length / chunks;
}

}  // namespace

std::int64_t zigzag_local_rows(const std::int32_t* cu_seqlens, int num_seqs, int degree, int rank) {
  const std::int64_t chunks = 2 * static_cast<std::int64_t>(degree);
  std::int64_t rows = 0;
  for (int s = 0; s < num_seqs; ++s) {
    const std::int64_t length = cu_seqlens[s + 1] - cu_seqlens[s];
    for (const std::int64_t c : {static_cast<std::int64_t>(rank), chunks - 1 - rank})
      rows += chunk_begin(c + 1, length, chunks) - chunk_begin(c, length, chunks);
  }
  return rows;
}

void zigzag_layout(const std::int32_t* cu_seqlens, int num_seqs, int degree, int rank,
                   std::int32_t* cu_local, std::int32_t* src_rows, std::int32_t* positions) {
  const std::int64_t chunks = 2 * static_cast<std::int64_t>(degree);
  std::int64_t local = 0;
  cu_local[0] = 0;
  for (int s = 0; s < num_seqs; ++s) {
    const std::int64_t length = cu_seqlens[s + 1] - cu_seqlens[s];
    // Rank r holds chunk r (early, cheap under a causal mask) and chunk 2d-1-r (late,
    // expensive): every rank gets the same causal work up to rounding.
    for (const std::int64_t c : {static_cast<std::int64_t>(rank), chunks - 1 - rank}) {
      for (std::int64_t p = chunk_begin(c, length, chunks); p < chunk_begin(c + 1, length, chunks);
           ++p, ++local) {
        src_rows[local] = static_cast<std::int32_t>(cu_seqlens[s] + p);
        positions[local] = static_cast<std::int32_t>(p);
      }
    }
    cu_local[s + 1] = static_cast<std::int32_t>(local);
  }
}

void gather_rows(const RowCopyArgs& args) {
  auto* dst = static_cast<unsigned char*>(args.dst);
  const auto* src = static_cast<const unsigned char*>(args.src);
  for (std::int64_t i = 0; i < args.num_rows; ++i)
    std::memcpy(dst + i * args.row_bytes, src + args.rows[i] * args.row_bytes,
                static_cast<std::size_t>(args.row_bytes));
}

void scatter_rows(const RowCopyArgs& args) {
  auto* dst = static_cast<unsigned char*>(args.dst);
  const auto* src = static_cast<const unsigned char*>(args.src);
  for (std::int64_t i = 0; i < args.num_rows; ++i)
    std::memcpy(dst + args.rows[i] * args.row_bytes, src + i * args.row_bytes,
                static_cast<std::size_t>(args.row_bytes));
}

// Block j of the [degree][tokens][heads/degree][head_dim] buffer holds heads
// [j*heads/degree, (j+1)*heads/degree) of every token: one contiguous run per (j, token).
namespace {
template <bool kToBlocks>
void ulysses_copy(const HeadScatterArgs& args) {
  const std::int64_t elem = dtype_size(args.dtype);
  const std::int64_t run = static_cast<std::int64_t>(args.heads / args.degree) * args.head_dim *
                           elem;  // bytes per (block, token)
  const std::int64_t token_bytes = static_cast<std::int64_t>(args.heads) * args.head_dim * elem;
  auto* dst = static_cast<unsigned char*>(args.dst);
  const auto* src = static_cast<const unsigned char*>(args.src);
  for (std::int64_t j = 0; j < args.degree; ++j) {
    for (std::int64_t t = 0; t < args.tokens; ++t) {
      const std::int64_t token_major = t * token_bytes + j * run;
      const std::int64_t block_major = (j * args.tokens + t) * run;
      if constexpr (kToBlocks)
        std::memcpy(dst + block_major, src + token_major, static_cast<std::size_t>(run));
      else
        std::memcpy(dst + token_major, src + block_major, static_cast<std::size_t>(run));
    }
  }
}
}  // namespace

void ulysses_head_scatter(const HeadScatterArgs& args) { ulysses_copy<true>(args); }
void ulysses_head_gather(const HeadScatterArgs& args) { ulysses_copy<false>(args); }

}  // namespace dhp::kernels::cpu
