// The LibTorch step executor trains the small vision-language model (examples/train_vlm)
// exactly as one process trains it over whole samples: per step, the loss and every
// parameter's gradient match (norm-wise, f64 to 1e-9, f32 to 1e-4) under plans of every
// shape the planner can produce and some it rarely picks: CP groups of 3, 5, 6 and 7,
// zigzag and whole sequences, items cut into shards and span ranges, colocated and disjoint
// encoders, encoder TP different from LLM TP. And it learns: 50 steps with the planner's
// plans bring the loss well below its start.
#include <gtest/gtest.h>

#include <string>

#include "dhp/error.hpp"
#include "dhp/planner.hpp"
#include "multimodal_test_util.hpp"
#include "runtime_test_util.hpp"
#include "trainer.hpp"

namespace dhp {
namespace {

using testing::world;

struct Case {
  std::string name;
  testing::PlanShape shape;
  at::ScalarType dtype = at::kDouble;
};

// The plan shapes a world of n processes can run.
std::vector<Case> cases(int n) {
  std::vector<Case> out;
  Case ring{"one ring of " + std::to_string(n), {}, at::kDouble};
  ring.shape.groups = {n};
  ring.shape.waves = 2;
  out.push_back(ring);
  static const std::map<int, std::vector<int>> mixed = {
      {3, {3}}, {5, {5}}, {6, {6}}, {7, {7}}, {8, {3, 5}}, {4, {3, 1}}, {2, {1, 1}}};
  if (auto it = mixed.find(n); it != mixed.end()) {
    Case m{"groups of " + std::to_string(it->second.front()) + " and more, f32", {}, at::kFloat};
    m.shape.groups = it->second;
    m.shape.waves = 3;
    out.push_back(m);
  }
  if (n % 2 == 0) {
    Case tp{"LLM TP 2, encoder TP 1", {}, at::kDouble};
    tp.shape.llm_tp = 2;
    out.push_back(tp);
    Case etp{"LLM TP 1, encoder TP 2", {}, at::kDouble};
    etp.shape.encoder_tp = 2;
    out.push_back(etp);
  }
  if (n >= 2) {
    Case d{"disjoint encoder", {}, at::kDouble};
    d.shape.placement = EncoderPlacement::Disjoint;
    d.shape.encoder_devices = std::max(1, n / 3);
    d.shape.waves = 3;
    out.push_back(d);
  }
  if (n >= 5) {
    Case d{"disjoint encoder TP 2, LLM TP 1, f32", {}, at::kFloat};
    d.shape.placement = EncoderPlacement::Disjoint;
    d.shape.encoder_devices = 2;
    d.shape.encoder_tp = 2;
    d.shape.waves = 2;
    out.push_back(d);
  }
  return out;
}

vlm::TrainerOptions options_for(const Plan& plan, at::ScalarType dtype) {
  vlm::TrainerOptions o;
  o.dtype = dtype;
  o.seed = 3;
  o.verify = true;
  o.llm = plan.llm;
  o.encoder = plan.encoder;
  o.placement = plan.placement;
  return o;
}

TEST(TorchStep, EveryPlanShapeMatchesOneProcess) {
  Communicator& comm = world();
  const int n = comm.size();
  GroupPool pool(comm);
  const vlm::Config config;
  const EncoderSpec enc = *config.spec().encoder;
  std::uint64_t seed = 11;
  for (const Case& c : cases(n)) {
    const Batch batch = testing::multimodal_batch(9, seed, enc, 60);
    const Plan plan = testing::multimodal_plan(batch, enc, n, c.shape, seed * 7);
    vlm::Trainer trainer(comm, pool, options_for(plan, c.dtype));
    // Two steps: the second runs on parameters the optimizer moved.
    for (int step = 0; step < 2; ++step) {
      const vlm::StepReport r = trainer.step(batch, plan);
      EXPECT_EQ(r.stats.boundary.sent_forward, r.stats.boundary.min_forward) << c.name;
      EXPECT_EQ(r.stats.boundary.sent_backward, r.stats.boundary.min_backward) << c.name;
      EXPECT_EQ(r.stats.dispatch_bytes, r.stats.dispatch_min_bytes) << c.name;
      if (comm.rank() != 0) continue;
      const double tolerance = c.dtype == at::kDouble ? 1e-9 : 1e-4;
      ASSERT_TRUE(r.ref_loss && r.max_grad_rel_err) << c.name;
      EXPECT_NEAR(r.stats.loss, *r.ref_loss, tolerance * std::abs(*r.ref_loss)) << c.name;
      EXPECT_LT(*r.max_grad_rel_err, tolerance) << c.name << ", step " << step;
      std::printf("world %d, %s, step %d: loss %.10f (one process %.10f), gradient error %.2e\n", n,
                  c.name.c_str(), step, r.stats.loss, *r.ref_loss, *r.max_grad_rel_err);
    }
    ++seed;
  }
}

// A module whose output disagrees with the plan is named on every rank, and the
// communicator stays usable for the next step.
TEST(TorchStep, AModuleOutputTheWrongSizeIsNamedOnEveryRank) {
  Communicator& comm = world();
  const int n = comm.size();
  GroupPool pool(comm);
  const vlm::Config config;
  const EncoderSpec enc = *config.spec().encoder;
  const Batch batch = testing::multimodal_batch(6, 41, enc, 30);
  testing::PlanShape shape;
  shape.waves = 1;
  const Plan plan = testing::multimodal_plan(batch, enc, n, shape, 5);
  vlm::TrainerOptions o = options_for(plan, at::kDouble);
  o.verify = false;
  vlm::Trainer trainer(comm, pool, o);

  // The encoder of the last process returns one row too many.
  struct Broken final : public TorchStepModel {
    explicit Broken(TorchStepModel& inner, bool broken) : inner(inner), broken(broken) {}
    at::Tensor encode(const at::Tensor& p, TorchEncoderContext& ctx) override {
      const at::Tensor e = inner.encode(p, ctx);
      return broken ? at::cat({e, e.narrow(0, 0, std::min<std::int64_t>(1, e.size(0))),
                               at::zeros({1, e.size(1)}, e.options())})
                    : e;
    }
    at::Tensor llm_loss(const at::Tensor& t, const at::Tensor& v, const at::Tensor& r,
                        const at::Tensor& l, TorchLlmContext& ctx) override {
      return inner.llm_loss(t, v, r, l, ctx);
    }
    std::vector<at::Tensor> llm_parameters() override { return inner.llm_parameters(); }
    std::vector<at::Tensor> encoder_parameters() override { return inner.encoder_parameters(); }
    TorchStepModel& inner;
    bool broken;
  };
  const vlm::Config cfg;
  std::vector<at::Tensor> params;
  for (const at::Tensor& p : vlm::full_parameters(cfg, 1))
    params.push_back(p.clone().requires_grad_(true));
  vlm::Model model(cfg, params, {}, {});
  vlm::StepModel inner(model);
  Broken broken(inner, comm.rank() == n - 1);
  TorchStepExecutor& executor = trainer.executor();
  std::vector<int> owners;
  std::vector<std::int64_t> tokens, labels;
  std::vector<double> patches;
  for (std::size_t s = 0; s < batch.samples.size(); ++s) {
    owners.push_back(static_cast<int>(s % static_cast<std::size_t>(n)));
    if (owners.back() != comm.rank()) continue;
    const vlm::SampleData d = vlm::sample_data(cfg, batch.samples[s], 1);
    tokens.insert(tokens.end(), d.tokens.begin(), d.tokens.end());
    labels.insert(labels.end(), d.labels.begin(), d.labels.end());
    patches.insert(patches.end(), d.patches.begin(), d.patches.end());
  }
  const StepInputs inputs{owners, tokens.data(), labels.data(), patches.data()};
  try {
    executor.run(batch, plan, inputs, broken);
    ADD_FAILURE() << "a wrong-sized encoder output was accepted";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::InvalidArgument) << e.what();
    EXPECT_NE(std::string(e.what()).find("world rank " + std::to_string(n - 1)), std::string::npos)
        << e.what();
    EXPECT_NE(std::string(e.what()).find("but the plan has it encode"), std::string::npos)
        << e.what();
  }
  const vlm::StepReport r = trainer.step(batch, plan);  // the next step runs
  EXPECT_GT(r.stats.loss, 0);
}

TEST(TorchStep, FiftyStepsOfPlannedBatchesLowerTheLoss) {
  Communicator& comm = world();
  if (comm.size() != 3) GTEST_SKIP() << "runs at world 3";
  GroupPool pool(comm);
  const vlm::Config config;
  const std::vector<Batch> batches = vlm::batches(config, 50, 6, 5, 4.0, 16.0, 320);
  PlannerOptions options;
  options.llm_tp = options.encoder_tp = 1;
  options.layout_search = LayoutSearch::Off;
  const double capacity =
      vlm::choose_capacity(config, 3, 1, options, {batches.begin(), batches.begin() + 4});
  const Planner planner(vlm::cpu_cluster(3, 1, capacity), config.spec(), options);
  Plan plan = planner.plan(batches[0]);
  vlm::TrainerOptions o = options_for(plan, at::kFloat);
  o.verify = false;
  o.learning_rate = 1e-2;
  vlm::Trainer trainer(comm, pool, o);
  double first = 0, last = 0;
  for (std::size_t s = 0; s < batches.size(); ++s) {
    const Plan next = s + 1 < batches.size() ? planner.plan(batches[s + 1]) : plan;
    const vlm::StepReport r = trainer.step(batches[s], plan, &next);
    if (s >= 1) {
      EXPECT_EQ(r.stats.comm_created, 0) << "step " << s;
    }
    if (s < 5) first += r.stats.loss / 5;
    if (s + 5 >= batches.size()) last += r.stats.loss / 5;
    plan = next;
  }
  if (comm.rank() == 0)
    std::printf("mean loss of the first 5 steps %.3f, of the last 5 %.3f\n", first, last);
  EXPECT_LT(last, 0.6 * first);
}

}  // namespace
}  // namespace dhp
