// Mixed precision through the whole step: the small vision-language model of
// examples/train_vlm in bfloat16 and float16 (16-bit parameters, activations, encoder ring
// attention, boundary, dispatch and CP attention; gradients summed over the replicas in
// fp32; fp32 master weights in the optimizer; float16 with a static loss scale) matches the
// float64 single-process reference within vlm::verify_tolerance: the loss and every
// parameter's gradient, colocated and disjoint, with and without tensor parallelism. A
// dtype the step cannot run is refused by name.
#include <gtest/gtest.h>

#include <cstdlib>
#include <string>

#include "dhp/error.hpp"
#include "dhp/float16.hpp"
#include "dhp/grad_sync.hpp"
#include "multimodal_test_util.hpp"
#include "runtime_test_util.hpp"
#include "trainer.hpp"

namespace dhp {
namespace {

using testing::world;

const char* c_str(at::ScalarType dtype) { return dtype == at::kHalf ? "float16" : "bfloat16"; }

struct Case {
  std::string name;
  testing::PlanShape shape;
};

std::vector<Case> cases(int n) {
  std::vector<Case> out;
  Case ring{"colocated, one ring of " + std::to_string(n), {}};
  ring.shape.groups = {n};
  out.push_back(ring);
  if (n >= 3) {
    Case d{"disjoint encoder", {}};
    d.shape.placement = EncoderPlacement::Disjoint;
    d.shape.encoder_devices = n / 3;
    out.push_back(d);
  }
  if (n % 2 == 0 && n >= 4) {
    Case tp{"colocated, LLM TP 2", {}};
    tp.shape.llm_tp = 2;
    out.push_back(tp);
  }
  return out;
}

// Seeds per case: DHP_TEST_16BIT_SEEDS (default 1), for measuring the worst errors.
int seeds() {
  const char* text = std::getenv("DHP_TEST_16BIT_SEEDS");
  return text != nullptr ? std::max(1, std::atoi(text)) : 1;
}

TEST(TorchStep16Bit, LossAndGradientsMatchTheFloat64Reference) {
  Communicator& comm = world();
  const int n = comm.size();
  GroupPool pool(comm);
  const vlm::Config config;
  const EncoderSpec enc = *config.spec().encoder;
  for (const at::ScalarType dtype : {at::kBFloat16, at::kHalf}) {
    const double tolerance = vlm::verify_tolerance(dtype);
    double worst_loss = 0, worst_grad = 0;
    for (const Case& c : cases(n)) {
      for (int k = 0; k < seeds(); ++k) {
        const std::uint64_t seed = 21 + static_cast<std::uint64_t>(k);
        const Batch batch = testing::multimodal_batch(8, seed, enc, 60);
        const Plan plan = testing::multimodal_plan(batch, enc, n, c.shape, seed * 7);
        vlm::TrainerOptions o;
        o.dtype = dtype;
        o.loss_scale = dtype == at::kHalf ? 1024 : 1;
        o.seed = 3 + static_cast<std::uint64_t>(k);
        o.verify = true;
        o.llm = plan.llm;
        o.encoder = plan.encoder;
        o.placement = plan.placement;
        vlm::Trainer trainer(comm, pool, o);
        // Two steps: the second from master weights the optimizer moved and rounded back (the
        // reference restarts from them).
        for (int step = 0; step < 2; ++step) {
          const vlm::StepReport r = trainer.step(batch, plan);
          EXPECT_FALSE(r.skipped) << c.name;
          EXPECT_EQ(r.stats.boundary.sent_forward, r.stats.boundary.min_forward) << c.name;
          EXPECT_EQ(r.stats.dispatch_bytes, r.stats.dispatch_min_bytes) << c.name;
          if (comm.rank() != 0) continue;
          ASSERT_TRUE(r.ref_loss && r.max_grad_rel_err) << c.name;
          const double loss_err = std::abs(r.stats.loss - *r.ref_loss) / std::abs(*r.ref_loss);
          EXPECT_LT(loss_err, tolerance) << c_str(dtype) << ", " << c.name << ", step " << step;
          EXPECT_LT(*r.max_grad_rel_err, tolerance)
              << c_str(dtype) << ", " << c.name << ", step " << step;
          worst_loss = std::max(worst_loss, loss_err);
          worst_grad = std::max(worst_grad, *r.max_grad_rel_err);
          std::printf(
              "world %d, %s, %s, seed %d, step %d: loss %.8f (float64 %.8f, rel. error "
              "%.2e), gradient error %.2e (%s)\n",
              n, c_str(dtype), c.name.c_str(), k, step, r.stats.loss, *r.ref_loss, loss_err,
              *r.max_grad_rel_err, r.worst_parameter.c_str());
        }
      }
    }
    if (comm.rank() == 0)
      std::printf("world %d, %s: worst loss error %.2e, worst gradient error %.2e (bound %.0e)\n",
                  n, c_str(dtype), worst_loss, worst_grad, tolerance);
  }
}

// 16-bit gradients are summed in fp32 and rounded once: rank 0 holds 1, every other rank
// half a 16-bit unit of 1 (which a 16-bit running sum would round away, tie to even).
TEST(TorchStep16Bit, GradientsOf16BitAreSummedInFp32) {
  Communicator& comm = world();
  const int n = comm.size();
  struct Type {
    DataType type;
    float half_unit;
    std::uint16_t (*narrow)(float);
    float (*widen)(std::uint16_t);
  };
  for (const Type& t : {Type{DataType::BF16, 0x1p-8f, float_to_bf16, bf16_to_float},
                        Type{DataType::F16, 0x1p-11f, float_to_f16, f16_to_float}}) {
    const float mine = comm.rank() == 0 ? 1.0f : t.half_unit;
    const float expected = t.widen(t.narrow(1.0f + static_cast<float>(n - 1) * t.half_unit));
    std::vector<std::uint16_t> a(5, t.narrow(mine)), b(3, t.narrow(mine));
    GradBuckets buckets(comm, {{a.data(), 5}, {b.data(), 3}}, t.type, 8);  // one per bucket
    buckets.ready(0);
    buckets.ready(1);
    buckets.finish();
    for (std::uint16_t x : a) EXPECT_EQ(t.widen(x), expected) << to_string(t.type);
    for (std::uint16_t x : b) EXPECT_EQ(t.widen(x), expected) << to_string(t.type);
    std::vector<std::uint16_t> c(4, t.narrow(mine));
    sync_gradients(comm, c.data(), 4, t.type);
    for (std::uint16_t x : c) EXPECT_EQ(t.widen(x), expected) << to_string(t.type);
  }
}

TEST(TorchStep16Bit, ADtypeTheStepCannotRunIsRefusedByName) {
  Communicator& comm = world();
  GroupPool pool(comm);
  const vlm::Config config;
  const EncoderSpec enc = *config.spec().encoder;
  const Batch batch = testing::multimodal_batch(4, 5, enc, 30);
  const Plan plan = testing::multimodal_plan(batch, enc, comm.size(), {}, 5);
  vlm::TrainerOptions o;
  o.llm = plan.llm;
  o.encoder = plan.encoder;
  o.placement = plan.placement;
  o.dtype = at::kInt;
  try {
    vlm::Trainer trainer(comm, pool, o);
    ADD_FAILURE() << "an int32 trainer was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("dtype Int"), std::string::npos) << e.what();
  }
  o.dtype = at::kFloat;
  o.loss_scale = 1024;  // a loss scale is for 16-bit runs
  try {
    vlm::Trainer trainer(comm, pool, o);
    ADD_FAILURE() << "a loss scale with float32 was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("loss scale 1024 with dtype Float"), std::string::npos)
        << e.what();
  }
  StepOptions options;
  options.dtype = static_cast<kernels::DType>(7);
  options.llm_hidden = 32;
  options.llm_attention = {4, 2, 8, 0.0, true};
  try {
    TorchStepExecutor executor(comm, pool, options);
    ADD_FAILURE() << "dtype 7 was accepted";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::InvalidArgument);
    EXPECT_NE(std::string(e.what()).find("dtype unknown DType (value 7)"), std::string::npos)
        << e.what();
  }
  options.dtype = kernels::DType::BF16;
  options.loss_scale = 0;
  try {
    StepExecutor executor(comm, pool, options);
    ADD_FAILURE() << "loss scale 0 was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("loss_scale=0"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace dhp
