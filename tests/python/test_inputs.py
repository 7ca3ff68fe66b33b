"""What a Python user meets on bad input: errors that name the field path and the value, in
one line; numpy values accepted; degrees refused below 1 (auto is None or "auto"); a user's
bad plan reported as the user's error; the command line; help() and warnings."""
import json
import os
import subprocess
import sys
import warnings

import numpy as np
import pytest

import dhp
from conftest import SOURCE

BATCH = {"step": 0, "samples": [
    {"id": 0, "text": 300},
    {"id": 1, "text": 1200, "visuals": [{"patches": 4096, "tokens": 1024}]},
    {"id": 2, "text": 80, "visuals": [{"patches": 2304, "tokens": 576}]},
    {"id": 3, "text": 5000, "visuals": [{"patches": 65536, "tokens": 16384, "frames": 16}]}]}


@pytest.fixture(scope="module")
def planner():
    return dhp.Planner("h100-8", "qwen2-vl-7b")


def with_sample(index, **fields):
    batch = json.loads(json.dumps(BATCH))
    batch["samples"][index].update(fields)
    return batch


def message(fn):
    with pytest.raises(dhp.Error) as info:
        fn()
    text = str(info.value)
    assert "\n" not in text, f"a multi-line message: {text!r}"
    assert len(text) < 400, text
    return info.value, text


@pytest.mark.parametrize("batch, kind, fragments", [
    (with_sample(3, visuals=[{"patches": 4096, "tokens": 0}]), dhp.InvalidInputError,
     ["batch.samples[3].visuals[0].tokens=0", "must be in [1,"]),
    (with_sample(1, txt=5), dhp.InvalidInputError,
     ["batch.samples[1].txt: unknown field", "did you mean 'batch.samples[1].text'?"]),
    (with_sample(2, visual=[]), dhp.InvalidInputError,
     ["batch.samples[2].visual", "did you mean 'batch.samples[2].visuals'?"]),
    ({"stpe": 0, "samples": BATCH["samples"]}, dhp.InvalidInputError, ["batch.stpe", "'batch.step'"]),
    (with_sample(0, text=float("nan")), dhp.InvalidInputError, ["batch.samples[0].text=nan",
                                                                 "not a finite number"]),
    (with_sample(0, text=float("inf")), dhp.InvalidInputError, ["batch.samples[0].text=inf"]),
    (with_sample(0, text=-5), dhp.InvalidInputError, ["batch.samples[0].text=-5", "must be in"]),
    (with_sample(0, text=2**70), dhp.InvalidInputError,
     ["batch.samples[0].text=1180591620717411303424", "64 bits"]),
    (with_sample(0, text=2**45), dhp.InvalidInputError, ["batch.samples[0].text=35184372088832"]),
    (with_sample(0, text="300"), dhp.InvalidInputError,
     ["batch.samples[0].text: expected an integer", '"300"']),
    (with_sample(0, text=2.5), dhp.InvalidInputError, ["batch.samples[0].text", "2.5"]),
    (with_sample(1, visuals={"patches": 4}), dhp.InvalidInputError,
     ["batch.samples[1].visuals: expected an array"]),
    (with_sample(0, text={1, 2}), dhp.InputTypeError, ["batch.samples[0].text: got set"]),
    ({"samples": [{"text": 5}] * 3 + [object()]}, dhp.InputTypeError,
     ["batch.samples[3]: got object"]),
    ({"samples": []}, dhp.InvalidInputError, ["no samples"]),
    ([1, 2], dhp.InputTypeError, ["batch: got list", "expected a dict"]),
])
def test_bad_batch_names_the_field_and_value(planner, batch, kind, fragments):
    error, text = message(lambda: planner.plan(batch))
    assert isinstance(error, kind), (type(error), text)
    for fragment in fragments:
        assert fragment in text, (fragment, text)


def test_a_huge_batch_prints_one_short_line(planner):
    huge = {"samples": [{"text": 10, "visuals": [{"patches": 4, "tokens": 1}] * 50}] * 40}
    huge["samples"] = [dict(s) for s in huge["samples"]]
    huge["samples"][39] = {"text": [1] * 1000}
    _, text = message(lambda: planner.plan(huge))
    assert "batch.samples[39].text" in text and text.count("1,") < 30


def test_numpy_scalars_and_arrays_are_numbers_and_lists(planner):
    batch = {"step": np.int64(4), "samples": [
        {"id": np.int32(i), "text": np.int64(t),
         "visuals": np.array([]) if not v else [{"patches": np.int64(4 * v), "tokens": np.uint16(v),
                                                 "frames": np.int8(1)}]}
        for i, (t, v) in enumerate([(300, 0), (1200, 1024), (80, 576)])]}
    plan = planner.plan(batch)
    assert plan["step"] == 4
    assert sorted(s["sample"] for w in plan["waves"] for s in w["sequences"]) == [0, 1, 2]
    assert planner.simulate(batch, plan)["step_ms"] > 0
    a = dhp.Planner("h100-8", "qwen2-vl-7b", llm_tp=np.int64(2), encoder_tp=np.int32(1))
    assert a.plan(BATCH)["llm"]["tp"] == 2
    # a numpy float that is a whole number is an integer; NaN from numpy is refused by path
    _, text = message(lambda: planner.plan(with_sample(0, text=np.float64("nan"))))
    assert "batch.samples[0].text=nan" in text


@pytest.mark.parametrize("kwargs, fragments", [
    (dict(llm_tp=-1), ["llm_tp=-1", "None or 'auto'"]),
    (dict(llm_tp=0), ["llm_tp=0", "None or 'auto'"]),
    (dict(encoder_tp=-3), ["encoder_tp=-3"]),
    (dict(llm_tp=2.5), ["llm_tp=2.5", "integer"]),
    (dict(llm_tp="two"), ["llm_tp='two'"]),
    (dict(llm_tp=True), ["llm_tp=True", "expected an integer"]),
    (dict(strategy="dhpp"), ["strategy='dhpp'", "did you mean 'dhp'?"]),
    (dict(placement="disjointed"), ["placement='disjointed'", "'colocated', 'disjoint'"]),
    (dict(encoder_devices=-2), ["encoder_devices=-2"]),
    (dict(max_waves=0), ["max_waves=0", ">= 1"]),
])
def test_bad_planner_arguments(kwargs, fragments):
    error, text = message(lambda: dhp.Planner("h100-8", "qwen2-vl-7b", **kwargs))
    assert isinstance(error, (dhp.InvalidArgumentError, dhp.InputTypeError)), text
    for fragment in fragments:
        assert fragment in text, (fragment, text)


def test_auto_degrees():
    for auto in (None, "auto"):
        plan = dhp.Planner("h100-8", "qwen2-vl-7b", llm_tp=auto, encoder_tp=auto).plan(BATCH)
        assert plan["llm"]["tp"] >= 1


def test_bad_descriptions_name_their_fields():
    cluster = dhp.cluster("h100-8")
    cluster["num_nodez"] = 2
    _, text = message(lambda: dhp.Planner(cluster, "qwen2-vl-7b"))
    assert "cluster.num_nodez" in text and "'cluster.num_nodes'" in text
    model = dhp.model("qwen2-vl-7b")
    model["llm"]["heads"] = float("nan")
    _, text = message(lambda: dhp.Planner("h100-8", model))
    assert "model.llm.heads=nan" in text
    _, text = message(lambda: dhp.Planner("no-such-cluster", "qwen2-vl-7b"))
    assert "no-such-cluster" in text and "h100-8" in text
    _, text = message(lambda: dhp.Planner(42, "qwen2-vl-7b"))
    assert "cluster=42" in text


def test_a_users_bad_plan_is_the_users_error(planner):
    plan = planner.plan(BATCH)
    broken = json.loads(json.dumps(plan))
    broken["waves"][0]["sequences"] = broken["waves"][0]["sequences"][1:]
    error, text = message(lambda: planner.simulate(BATCH, broken))
    assert isinstance(error, dhp.InvalidArgumentError) and "internal" not in text.lower(), text
    assert "sample" in text
    broken = json.loads(json.dumps(plan))
    broken["waves"][0]["groups"][0]["rankz"] = [0]
    error, text = message(lambda: planner.svg(BATCH, broken))
    assert "plan.waves[0].groups[0].rankz" in text and "'plan.waves[0].groups[0].ranks'" in text
    with pytest.raises(dhp.InvalidArgumentError):
        dhp.check_plan(broken | {"waves": []}, BATCH)
    dhp.check_plan(plan, BATCH)


def test_does_not_fit_names_the_sample():
    tiny = dhp.cluster("h100-8")
    tiny["mem_capacity_gib"] = 8
    tiny["mem_reserved_gib"] = 0
    error, text = message(lambda: dhp.Planner(tiny, "qwen2-vl-7b").plan(BATCH))
    assert isinstance(error, dhp.DoesNotFitError), text


def test_help_shows_python_names_and_units():
    import pydoc
    text = pydoc.render_doc(dhp.Planner, renderer=pydoc.plaintext)
    assert "llm_tp" in text and "None or \"auto\"" in text and ".hpp" not in text
    assert "ms" in pydoc.render_doc(dhp.Planner.simulate, renderer=pydoc.plaintext)
    assert "GiB" in pydoc.render_doc(dhp.cluster, renderer=pydoc.plaintext)
    assert "batch.samples[3].visuals[0].tokens" in (dhp.check_batch.__doc__ or "")


def test_import_warns_nothing():
    code = "import warnings; warnings.simplefilter('error'); import dhp; import dhp.__main__"
    try:
        import dhp.torch  # noqa: F401
        code += "; import dhp.torch"
    except ImportError:
        pass
    result = subprocess.run([sys.executable, "-W", "error", "-c", code], capture_output=True,
                            text=True)
    assert result.returncode == 0 and result.stderr == "", result.stderr


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "dhp", *args], capture_output=True, text=True,
                          timeout=300)


def test_cli_help():
    for args in (["-h"], ["plan", "-h"], ["simulate", "-h"], ["bench", "-h"]):
        r = run_cli(*args)
        assert r.returncode == 0 and "usage: python -m dhp" in r.stdout, (args, r.stderr)
    assert "plan" in run_cli("-h").stdout and "--batch" in run_cli("plan", "-h").stdout


def test_cli_plan_simulate_bench(tmp_path):
    batch = os.path.join(SOURCE, "examples", "batches.json")
    common = ["--cluster", "h100-8", "--model", "qwen2-vl-7b", "--batch", batch]
    plans = tmp_path / "plans.json"
    r = run_cli("plan", *common, "--summary", "-o", str(plans), "--svg", str(tmp_path / "p.svg"))
    assert r.returncode == 0, r.stderr
    assert "waves, CP degrees" in r.stderr and (tmp_path / "p.svg").read_text().count("<svg") >= 1
    document = json.loads(plans.read_text())
    count = len(dhp.load_batches(batch))
    assert len(document["plans"]) == count if count > 1 else "waves" in document
    r = run_cli("simulate", *common, "--plan", str(plans))
    assert r.returncode == 0, r.stderr
    assert "step_ms" in r.stdout
    r = run_cli("bench", *common, "--strategies", "dhp,static_best")
    assert r.returncode == 0, r.stderr
    assert "dhp" in r.stdout and "static_best" in r.stdout and "vs best" in r.stdout


def test_cli_errors():
    r = run_cli("plan", "--cluster", "h100-8", "--model", "qwen2-vl-7b", "--batchs", "x.json")
    assert r.returncode == 2 and "did you mean --batch?" in r.stderr, r.stderr
    r = run_cli("plan", "--cluster", "h100-8", "--model", "qwen2-vl-7b", "--batch", "/nonexistent.json")
    assert r.returncode == 1 and "/nonexistent.json" in r.stderr, r.stderr
    r = run_cli("plan", "--cluster", "h100-8", "--model", "qwen2-vl-7b", "--batch",
                os.path.join(SOURCE, "examples", "batches.json"), "--llm-tp", "-1")
    assert r.returncode == 1 and "llm_tp=-1" in r.stderr, r.stderr
    r = run_cli("bench", "--cluster", "h100-8", "--model", "qwen2-vl-7b", "--batch",
                os.path.join(SOURCE, "examples", "batches.json"), "--strategies", "dhp,statc_best")
    assert r.returncode != 0 and "did you mean 'static_best'?" in r.stderr, r.stderr
    r = run_cli("frobnicate")
    assert r.returncode == 2


def test_datasets_and_helpers():
    samples = dhp.load_dataset("mathvista")
    assert len(samples) > 100 and all("text" in s for s in samples[:10])
    batches = dhp.make_batches(samples, 3, 4, seed=5)
    assert [len(b["samples"]) for b in batches] == [4, 4, 4]
    assert batches == dhp.make_batches(samples, 3, 4, seed=5)
    with pytest.raises(dhp.InvalidArgumentError):
        dhp.load_dataset("imagenet")
    sample = {"text": 10, "visuals": [{"patches": 8, "tokens": 2}, {"patches": 4, "tokens": 1}]}
    assert dhp.visual_token_offsets(sample) == [3, 8]
    video = {"patches": 64, "tokens": 16, "frames": 4}
    spans = dhp.encoder_span_tokens("qwen2-vl-7b", video)
    assert spans[0] == 0 and spans[-1] == 16 and len(spans) >= 2
