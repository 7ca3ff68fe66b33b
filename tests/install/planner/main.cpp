#include <dhp/planner.hpp>

#include <cstdio>

int main() {
  dhp::Planner planner(dhp::cluster_preset("h100-8"), dhp::model_preset("qwen2-vl-7b"));
  dhp::Batch batch;
  for (int i = 0; i < 8; ++i) {
    dhp::Sample s;
    s.id = i;
    s.text_tokens = 200 + 300 * i;
    s.visuals.push_back(dhp::VisualItem{4096, 1024, 1});
    batch.samples.push_back(s);
  }
  const dhp::Plan plan = planner.plan(batch);
  dhp::validate(plan, batch);
  std::printf("consumer: %zu waves, estimated step %.1f ms\n", plan.waves.size(),
              plan.estimate.step_ms);
  return plan.waves.empty() ? 1 : 0;
}
