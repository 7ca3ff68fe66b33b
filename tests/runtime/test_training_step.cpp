// The same training step (embedding -> q/k/v projections -> CP attention -> per-token
// loss, manual backward, gradient sync) under different plans gives the same loss and the
// same gradients: dispatch, ring / Ulysses attention, loss normalisation and gradient sync
// together are plan-independent.
#include <gtest/gtest.h>

#include "dhp/cp_attention.hpp"
#include "dhp/dispatch.hpp"
#include "dhp/grad_sync.hpp"
#include "dhp/group_pool.hpp"
#include "runtime_test_util.hpp"

namespace dhp {
namespace {

using testing::world;

constexpr int kVocab = 23, kHeads = 2, kHeadDim = 8, kHidden = kHeads * kHeadDim;
constexpr int kSamples = 9;

// Parameters, flattened in one buffer so that one all_reduce syncs them.
struct Params {
  std::vector<double> all;
  double* embed() { return all.data(); }  // [vocab, hidden]
  double* w(int i) { return all.data() + kVocab * kHidden + i * kHidden * kHidden; }  // q, k, v
  double* unembed() {
    return all.data() + kVocab * kHidden + 3 * kHidden * kHidden;
  }  // [vocab, hidden]
  static std::size_t size() { return 2 * kVocab * kHidden + 3 * kHidden * kHidden; }
};

struct StepResult {
  double loss = 0;
  std::vector<double> grads;
};

// y[rows, hidden] = x[rows, hidden] * w[hidden, hidden]
void matmul(const std::vector<double>& x, const double* w, std::vector<double>& y) {
  const std::size_t rows = x.size() / kHidden;
  y.assign(x.size(), 0.0);
  for (std::size_t r = 0; r < rows; ++r)
    for (int i = 0; i < kHidden; ++i)
      for (int j = 0; j < kHidden; ++j)
        y[r * kHidden + j] += x[r * kHidden + i] * w[i * kHidden + j];
}

StepResult train_step(const Plan& plan, bool with_pool) {
  Communicator& comm = world();
  const int me = comm.rank(), n = comm.size();
  check_same_plan(comm, plan);
  Params p{testing::random_values<double>(Params::size(), 5)};
  Params grad{std::vector<double>(Params::size(), 0.0)};

  // The batch: every rank knows lengths and owners, and loads only its own samples.
  std::vector<std::int64_t> lengths;
  std::vector<int> owners;
  for (int s = 0; s < kSamples; ++s) {
    lengths.push_back(3 + (s * 7) % 19);
    owners.push_back((s * 5) % n);
  }
  std::vector<std::int64_t> tokens, labels;
  for (int s = 0; s < kSamples; ++s) {
    if (owners[static_cast<std::size_t>(s)] != me) continue;
    for (std::int64_t t = 0; t < lengths[static_cast<std::size_t>(s)]; ++t) {
      tokens.push_back((s * 13 + t * 7) % kVocab);
      labels.push_back((s * 3 + t * 11 + 1) % kVocab);
    }
  }
  // Loss normalisation: every token is a loss token here; one all_reduce per step.
  const double global_tokens =
      static_cast<double>(global_count(comm, static_cast<std::int64_t>(tokens.size())));

  GroupPool pool(comm);
  if (with_pool) pool.prewarm(plan);
  StepResult result;
  for (std::size_t w = 0; w < plan.waves.size(); ++w) {
    const WaveDispatch dispatch(plan, static_cast<int>(w), lengths, owners, me, n);
    const auto rows = static_cast<std::size_t>(dispatch.local_rows());
    std::vector<std::int64_t> tok(rows), lab(rows);
    dispatch.forward(comm, tokens.data(), tok.data(), sizeof(std::int64_t));
    dispatch.forward(comm, labels.data(), lab.data(), sizeof(std::int64_t));

    std::vector<double> x(rows * kHidden);
    for (std::size_t r = 0; r < rows; ++r)
      for (int i = 0; i < kHidden; ++i) x[r * kHidden + i] = p.embed()[tok[r] * kHidden + i];
    std::vector<double> q, k, v;
    matmul(x, p.w(0), q);
    matmul(x, p.w(1), k);
    matmul(x, p.w(2), v);

    CpAttentionContext ctx;
    ctx.dtype = kernels::DType::F64;
    ctx.shape = {kHeads, kHeads, kHeadDim, 0.0, true};
    ctx.layout = &dispatch.layout();
    ctx.world = &comm;
    ctx.pool = with_pool ? &pool : nullptr;
    std::vector<double> out(q.size()), lse(rows * kHeads), dout(q.size());
    cp_attention_forward(ctx, q.data(), k.data(), v.data(), out.data(), lse.data());

    // loss_token = <out_row, unembed[label]> / global tokens
    for (std::size_t r = 0; r < rows; ++r) {
      for (int i = 0; i < kHidden; ++i) {
        const double u = p.unembed()[lab[r] * kHidden + i];
        result.loss += out[r * kHidden + i] * u / global_tokens;
        dout[r * kHidden + i] = u / global_tokens;
        grad.unembed()[lab[r] * kHidden + i] += out[r * kHidden + i] / global_tokens;
      }
    }
    std::vector<double> dq(q.size()), dk(k.size()), dv(v.size());
    cp_attention_backward(ctx, q.data(), k.data(), v.data(), out.data(), lse.data(), dout.data(),
                          dq.data(), dk.data(), dv.data());
    const std::vector<double>* dproj[3] = {&dq, &dk, &dv};
    for (int m = 0; m < 3; ++m) {
      for (std::size_t r = 0; r < rows; ++r)
        for (int i = 0; i < kHidden; ++i)
          for (int j = 0; j < kHidden; ++j) {
            const double g = (*dproj[m])[r * kHidden + j];
            grad.w(m)[i * kHidden + j] += x[r * kHidden + i] * g;
            grad.embed()[tok[r] * kHidden + i] += p.w(m)[i * kHidden + j] * g;
          }
    }
  }
  sync_gradients(comm, grad.all.data(), static_cast<std::int64_t>(grad.all.size()), DataType::F64);
  comm.all_reduce(&result.loss, &result.loss, 1, DataType::F64, ReduceOp::Sum);
  result.grads = std::move(grad.all);
  return result;
}

void expect_same(const StepResult& a, const StepResult& b, const char* what) {
  EXPECT_NEAR(a.loss, b.loss, 1e-12) << what;
  ASSERT_EQ(a.grads.size(), b.grads.size());
  double worst = 0, largest = 0;
  for (std::size_t i = 0; i < a.grads.size(); ++i) {
    worst = std::max(worst, std::abs(a.grads[i] - b.grads[i]));
    largest = std::max(largest, std::abs(a.grads[i]));
  }
  EXPECT_LE(worst, 1e-12) << what;
  EXPECT_GT(largest, 1e-6) << what << ": gradients are all zero, the comparison proves nothing";
  if (world().rank() == 0)
    std::printf("%s: loss %.15f, max gradient difference %.3g\n", what, a.loss, worst);
}

TEST(TrainingStep, SameLossAndGradientsUnderDifferentPlans) {
  const int n = world().size();
  // A: one ring over every rank, every sequence zigzag.
  const Plan ring = testing::one_wave_plan(n, {n}, kSamples, [](int) { return true; });
  // B: three waves of random partitions, mixing Whole and Zigzag.
  Plan mixed = testing::random_plan(n, 1, 0, kSamples, 3, 77);
  // C: Ulysses over the whole world where the heads divide (else it runs as the ring).
  const Plan ulysses = testing::one_wave_plan(
      n, {n}, kSamples, [](int i) { return i % 2 == 0; }, CpAttention::Ulysses);
  const StepResult a = train_step(ring, false);
  const StepResult b = train_step(mixed, false);
  const StepResult c = train_step(ulysses, true);
  expect_same(a, b, "ring plan vs 3-wave mixed plan");
  expect_same(a, c, "ring plan vs Ulysses plan");
}

}  // namespace
}  // namespace dhp
