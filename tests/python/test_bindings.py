"""The Python bindings plan, simulate and draw; errors come back as dhp.Error."""
import json
import os
import unittest

import dhp

SOURCE = os.environ.get("DHP_SOURCE_DIR", os.path.join(os.path.dirname(__file__), "..", ".."))


def small_batch():
    samples = []
    for i, (text, tokens) in enumerate([(300, 0), (1200, 4096), (80, 576), (5000, 16384)]):
        visuals = [{"patches": 4 * tokens, "tokens": tokens, "frames": 1}] if tokens else []
        samples.append({"id": i, "text": text, "visuals": visuals})
    return {"step": 3, "samples": samples}


class BindingsTest(unittest.TestCase):
    def test_presets_listed(self):
        self.assertIn("h100-64", dhp.cluster_preset_names())
        self.assertIn("qwen2-vl-7b", dhp.model_preset_names())
        self.assertIn("dhp", dhp.strategy_names())
        self.assertEqual(dhp.cluster("h100-64")["num_nodes"], 8)

    def test_plan_places_every_sample_once_and_simulates(self):
        planner = dhp.Planner("h100-8", "qwen2-vl-7b")
        batch = small_batch()
        plan = planner.plan(batch)
        placed = sorted(s["sample"] for w in plan["waves"] for s in w["sequences"])
        self.assertEqual(placed, list(range(len(batch["samples"]))))
        self.assertEqual(plan["step"], 3)
        sim = planner.simulate(batch, plan)
        self.assertGreater(sim["step_ms"], 0)
        self.assertLessEqual(sim["max_peak_mem_gib"], sim["mem_capacity_gib"])
        svg = planner.svg(batch, plan)
        self.assertTrue(svg.lstrip().startswith("<svg") or svg.lstrip().startswith("<?xml"))

    def test_every_strategy_plans_and_simulates(self):
        # The static strategies choose their TP per layout; the simulator follows the plan's.
        batch = small_batch()
        tps = set()
        for strategy in dhp.strategy_names():
            if strategy == "exact":
                continue
            planner = dhp.Planner("h100-8", "qwen2-vl-7b", strategy=strategy)
            plan = planner.plan(batch)
            tps.add(plan["llm"]["tp"])
            sim = planner.simulate(batch, plan)
            self.assertGreater(sim["step_ms"], 0, strategy)
            self.assertLessEqual(sim["max_peak_mem_gib"], sim["mem_capacity_gib"], strategy)
        self.assertGreater(len(tps), 1)  # some strategy planned at another TP than the default

    def test_same_batch_same_plan(self):
        a = dhp.Planner("h100-8", "qwen2-vl-7b").plan(small_batch())
        b = dhp.Planner(dhp.cluster("h100-8"), dhp.model("qwen2-vl-7b")).plan(small_batch())
        self.assertEqual(json.dumps(a["waves"], sort_keys=True),
                         json.dumps(b["waves"], sort_keys=True))

    def test_errors_are_dhp_errors_with_values(self):
        with self.assertRaises(dhp.Error) as ctx:
            dhp.Planner("h100-8", "qwen2-vl-7b").plan({"step": 0, "samples": []})
        self.assertIn("no samples", str(ctx.exception))
        with self.assertRaises(dhp.Error) as ctx:
            dhp.Planner("h100-8", "qwen2-vl-7b", strategy="nonsense")
        self.assertIn("nonsense", str(ctx.exception))
        with self.assertRaises(dhp.Error):
            dhp.Planner("no-such-cluster", "qwen2-vl-7b")


if __name__ == "__main__":
    unittest.main()
