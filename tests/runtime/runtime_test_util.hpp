// Shared helpers of the runtime tests: the world communicator, deterministic random
// data, hand-built plans and a naive single-process attention reference.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <vector>

#include "dhp/communicator.hpp"
#include "dhp/plan.hpp"

namespace dhp::testing {

// The world communicator created by mpi_test_main.cpp.
Communicator& world();

// Same values on every rank for the same seed.
template <typename T>
std::vector<T> random_values(std::size_t n, std::uint64_t seed) {
  std::mt19937_64 gen(seed);
  std::uniform_real_distribution<double> dist(-1.0, 1.0);
  std::vector<T> out(n);
  for (auto& x : out) x = static_cast<T>(dist(gen));
  return out;
}

// A one-wave plan over `world_size` ranks (tp = 1): `group_sizes` consecutive groups;
// sequence i goes to group i % groups; Zigzag where `zigzag(i)` and the group has more
// than one rank, else Whole on member i % degree. Ring order is reversed for odd groups
// so that ring order != rank order is exercised.
template <typename ZigzagFn>
Plan one_wave_plan(int world_size, const std::vector<int>& group_sizes, int num_sequences,
                   ZigzagFn zigzag, CpAttention attention = CpAttention::Ring) {
  Plan plan;
  plan.strategy = "test";
  plan.llm.ranks = world_size;
  WavePlan wave;
  int next = 0;
  for (std::size_t g = 0; g < group_sizes.size(); ++g) {
    GroupPlan group;
    group.attention = attention;
    for (int i = 0; i < group_sizes[g]; ++i) group.ranks.push_back(next++);
    if (g % 2 == 1) std::reverse(group.ranks.begin(), group.ranks.end());
    wave.groups.push_back(group);
  }
  for (int i = 0; i < num_sequences; ++i) {
    SequencePlan seq;
    seq.sample = i;
    seq.group = i % static_cast<int>(group_sizes.size());
    const int degree = group_sizes[static_cast<std::size_t>(seq.group)];
    if (degree > 1 && zigzag(i)) {
      seq.sharding = Sharding::Zigzag;
      seq.member = -1;
    } else {
      seq.member = i % degree;
    }
    wave.sequences.push_back(seq);
  }
  plan.waves.push_back(wave);
  return plan;
}

// Random plan: `waves` waves, each a random partition of `ranks` plan ranks into groups,
// samples spread over waves and groups, Zigzag or Whole at random. Same on every rank.
inline Plan random_plan(int ranks, int tp, int first_device, int num_samples, int waves,
                        std::uint64_t seed) {
  std::mt19937_64 gen(seed);
  Plan plan;
  plan.llm = {tp, first_device, ranks};
  for (int w = 0; w < waves; ++w) {
    WavePlan wave;
    std::vector<int> order(static_cast<std::size_t>(ranks));
    for (int i = 0; i < ranks; ++i) order[static_cast<std::size_t>(i)] = i;
    std::shuffle(order.begin(), order.end(), gen);
    for (int next = 0; next < ranks;) {
      const int size = 1 + static_cast<int>(gen() % static_cast<std::uint64_t>(ranks - next));
      GroupPlan group;
      group.ranks.assign(order.begin() + next, order.begin() + next + size);
      next += size;
      wave.groups.push_back(group);
    }
    plan.waves.push_back(wave);
  }
  for (int s = 0; s < num_samples; ++s) {
    WavePlan& wave = plan.waves[static_cast<std::size_t>(s % waves)];
    SequencePlan seq;
    seq.sample = s;
    seq.group = static_cast<int>(gen() % wave.groups.size());
    const int degree = wave.groups[static_cast<std::size_t>(seq.group)].degree();
    if (degree > 1 && gen() % 3 != 0) {
      seq.sharding = Sharding::Zigzag;
      seq.member = -1;
    } else {
      seq.member = static_cast<int>(gen() % static_cast<std::uint64_t>(degree));
    }
    wave.sequences.push_back(seq);
  }
  return plan;
}

// Naive causal attention of whole packed sequences in double, forward and backward
// (grouped-query: q head h reads kv head h / (hq / hkv)). Layouts as in kernels.hpp.
// `round_out`: how the code under test stores out (16-bit rounding); the backward's
// delta = dO . out then uses the rounded out as that code's backward does, so that the
// comparison measures the backward's own error, not the forward's rounding.
struct Reference {
  std::vector<double> out, dq, dk, dv;
};

inline Reference reference_attention(const std::vector<std::int64_t>& cu, int hq, int hkv, int hd,
                                     const std::vector<double>& q, const std::vector<double>& k,
                                     const std::vector<double>& v, const std::vector<double>& dout,
                                     bool causal = true, double (*round_out)(double) = nullptr) {
  const std::int64_t total = cu.back();
  Reference r;
  r.out.assign(static_cast<std::size_t>(total * hq * hd), 0.0);
  r.dq.assign(r.out.size(), 0.0);
  r.dk.assign(static_cast<std::size_t>(total * hkv * hd), 0.0);
  r.dv.assign(r.dk.size(), 0.0);
  const double scale = 1.0 / std::sqrt(static_cast<double>(hd));
  const int group = hq / hkv;
  auto qi = [&](std::int64_t row, int h, int c) {
    return static_cast<std::size_t>((row * hq + h) * hd + c);
  };
  auto ki = [&](std::int64_t row, int h, int c) {
    return static_cast<std::size_t>((row * hkv + h) * hd + c);
  };
  for (std::size_t s = 0; s + 1 < cu.size(); ++s) {
    const std::int64_t b = cu[s], n = cu[s + 1] - cu[s];
    for (int h = 0; h < hq; ++h) {
      const int kh = h / group;
      for (std::int64_t i = 0; i < n; ++i) {
        const std::int64_t keys = causal ? i + 1 : n;  // keys [0, keys) are visible
        std::vector<double> p(static_cast<std::size_t>(keys));
        double mx = -std::numeric_limits<double>::infinity();
        for (std::int64_t j = 0; j < keys; ++j) {
          double dot = 0;
          for (int c = 0; c < hd; ++c) dot += q[qi(b + i, h, c)] * k[ki(b + j, kh, c)];
          p[static_cast<std::size_t>(j)] = dot * scale;
          mx = std::max(mx, dot * scale);
        }
        double sum = 0;
        for (auto& x : p) sum += (x = std::exp(x - mx));
        for (auto& x : p) x /= sum;
        for (std::int64_t j = 0; j < keys; ++j)
          for (int c = 0; c < hd; ++c)
            r.out[qi(b + i, h, c)] += p[static_cast<std::size_t>(j)] * v[ki(b + j, kh, c)];
        // Backward: dP = dO V^T, dS = P (dP - rowsum(dO * O)).
        double delta = 0;
        for (int c = 0; c < hd; ++c) {
          const double o = r.out[qi(b + i, h, c)];
          delta += dout[qi(b + i, h, c)] * (round_out ? round_out(o) : o);
        }
        for (std::int64_t j = 0; j < keys; ++j) {
          const double pj = p[static_cast<std::size_t>(j)];
          double dp = 0;
          for (int c = 0; c < hd; ++c) dp += dout[qi(b + i, h, c)] * v[ki(b + j, kh, c)];
          const double ds = pj * (dp - delta) * scale;
          for (int c = 0; c < hd; ++c) {
            r.dq[qi(b + i, h, c)] += ds * k[ki(b + j, kh, c)];
            r.dk[ki(b + j, kh, c)] += ds * q[qi(b + i, h, c)];
            r.dv[ki(b + j, kh, c)] += pj * dout[qi(b + i, h, c)];
          }
        }
      }
    }
  }
  return r;
}

// The same without the causal mask: every row attends to its whole sequence.
inline Reference reference_attention_full(const std::vector<std::int64_t>& cu, int hq, int hkv,
                                          int hd, const std::vector<double>& q,
                                          const std::vector<double>& k,
                                          const std::vector<double>& v,
                                          const std::vector<double>& dout) {
  return reference_attention(cu, hq, hkv, hd, q, k, v, dout, false);
}

}  // namespace dhp::testing
