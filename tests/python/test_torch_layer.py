"""dhp.torch's building blocks against single-process references (ring attention with the
log-sum-exp at CP degrees 1, 2, 3 and 5, Ulysses, tensor-parallel layers, bucketed gradient
sync), beside torch.distributed or without it, and the executor's errors on bad input."""
import json
import os
import sys

import pytest

from conftest import SOURCE, WORKERS, launch, needs_torch

pytestmark = needs_torch

WORKER = os.path.join(WORKERS, "layer_worker.py")


def worst(result):
    values = list(result["ring"].values()) + [result["tp"]]
    if "ulysses" in result:
        values.append(result["ulysses"])
    return max(values)


@pytest.mark.parametrize("nprocs, dtype, torch_distributed", [
    (1, "float64", "none"), (2, "float64", "none"), (3, "float64", "before"),
    (5, "float64", "after"), (3, "float32", "none")])
def test_blocks_match_one_process(nprocs, dtype, torch_distributed):
    run = launch([WORKER, "--dtype", dtype, "--torch-distributed", torch_distributed], nprocs)
    assert run.returncodes == [0] * nprocs, run.describe()
    result = json.loads(run.stdout[0].strip().splitlines()[-1])
    assert result["world"] == nprocs
    assert worst(result) <= (1e-12 if dtype == "float64" else 2e-5), result
    assert len(result["ring"]) == 4  # causal and not, zigzag and chosen sharding
    assert ("ulysses" in result) == (2 % nprocs == 0)
    assert result["sync"] == 0.0
    assert "tensor q has shape [3,4,8]" in result["bad_call"]
    if torch_distributed != "none":
        assert result["torch_distributed_sum"] == nprocs


# ---------------------------------------------------------------- one process: bad input

@pytest.fixture(scope="module")
def vlm():
    sys.path.insert(0, os.path.join(SOURCE, "examples"))
    import train_vlm
    return train_vlm


@pytest.fixture(scope="module")
def setup(vlm):
    import torch
    import dhp
    import dhp.torch as dt
    c = vlm.Config()
    world = dt.world()
    pool = dt.GroupPool(world)
    data = vlm.batches(c, 2, 3, 1, 2.0, 8.0, 120)
    planner = dhp.Planner(vlm.cpu_cluster(1, 1, 1.0), c.spec(), llm_tp=1, encoder_tp=1)
    plan = planner.plan(data[0])
    model = vlm.VLM(c, [t.clone() for t in vlm.full_parameters(c, 1)])
    step = vlm.VLMStep(model, True, True)
    executor = dt.StepExecutor(world, pool, c.spec(), dtype=torch.float64, patch_dim=c.patch_dim)
    samples = [vlm.sample_data(c, s, 1) for s in data[0]["samples"]]
    tokens = torch.tensor([t for d in samples for t in d.tokens])
    labels = torch.tensor([t for d in samples for t in d.labels])
    import numpy as np
    patches = torch.from_numpy(np.concatenate([d.patches for d in samples]))
    inputs = dt.StepInputs([0] * len(samples), tokens, labels, patches)
    return dict(dt=dt, dhp=dhp, torch=torch, c=c, batch=data[0], plan=plan, step=step,
                executor=executor, inputs=inputs, world=world, pool=pool)


def run_error(s, **changes):
    dhp = s["dhp"]
    args = dict(batch=s["batch"], plan=s["plan"], inputs=s["inputs"], model=s["step"])
    args.update(changes)
    with pytest.raises((dhp.Error, TypeError, NotImplementedError)) as info:
        s["executor"].run(**args)
    text = str(info.value)
    assert "\n" not in text.strip(), text
    return info.value, text


def test_a_good_step_runs(setup):
    stats = setup["executor"].run(setup["batch"], setup["plan"], setup["inputs"], setup["step"])
    assert stats.loss > 0 and stats.loss_tokens > 0 and stats.step_ms > 0
    assert {e.kind for e in stats.events} >= {"dispatch", "encoder_forward", "boundary", "llm"}


def test_step_input_errors(setup):
    dt, torch = setup["dt"], setup["torch"]
    good = setup["inputs"]
    rows = good.tokens.shape[0]
    _, text = run_error(setup, inputs=dt.StepInputs(good.sample_owners, good.tokens[:-1],
                                                    good.labels, good.patches))
    assert "inputs.tokens" in text and f"[{rows}]" in text
    _, text = run_error(setup, inputs=dt.StepInputs(good.sample_owners, good.tokens, good.labels,
                                                    good.patches.float()))
    assert "inputs.patches" in text and "Float" in text and "Double" in text
    _, text = run_error(setup, inputs=dt.StepInputs(good.sample_owners, good.tokens, good.labels,
                                                    good.patches.t()))
    assert "inputs.patches" in text
    _, text = run_error(setup, inputs=dt.StepInputs([0, 3, 0], good.tokens, good.labels,
                                                    good.patches))
    assert "sample_owners[1]=3" in text
    _, text = run_error(setup, inputs=dt.StepInputs([0], good.tokens, good.labels, good.patches))
    assert "sample_owners has 1 entries" in text
    _, text = run_error(setup, inputs={"tokens": good.tokens})
    assert "inputs: expected dhp.torch.StepInputs" in text


def test_plan_errors(setup):
    dhp = setup["dhp"]
    plan = json.loads(json.dumps(setup["plan"]))
    plan["llm"]["tp"] = 2
    error, text = run_error(setup, plan=plan)
    assert isinstance(error, dhp.Error)
    plan = json.loads(json.dumps(setup["plan"]))
    plan["waves"][0]["sequences"] = []
    error, text = run_error(setup, plan=plan)
    assert isinstance(error, dhp.InvalidArgumentError) and "sample" in text, text
    plan = json.loads(json.dumps(setup["plan"]))
    plan["wavez"] = plan.pop("waves")
    _, text = run_error(setup, plan=plan)
    assert "plan.wavez" in text and "'plan.waves'" in text


def test_model_errors(setup):
    dt, torch = setup["dt"], setup["torch"]
    step = setup["step"]

    class NotATensor(type(step)):
        def llm_loss(self, *args):
            return 3.0

    class WrongShape(type(step)):
        def encode(self, patches, ctx):
            return torch.zeros(ctx.token_rows + 1, 32, dtype=torch.float64)

    class Missing(dt.StepModel):
        def __init__(self):
            super().__init__()

    class NoSuperInit(type(step)):
        def __init__(self):
            pass

    _, text = run_error(setup, model=NotATensor(step.model, True, True))
    assert "StepModel.llm_loss returned float; expected a torch.Tensor" in text
    _, text = run_error(setup, model=WrongShape(step.model, True, True))
    assert "encoder module returned" in text and "wave 0" in text
    error, text = run_error(setup, model=Missing())
    assert "llm_parameters" in text
    with pytest.raises(TypeError) as info:
        setup["executor"].run(setup["batch"], setup["plan"], setup["inputs"], NoSuperInit())
    assert "__init__" in str(info.value)
    # the executor keeps working after every refused step
    assert setup["executor"].run(setup["batch"], setup["plan"], setup["inputs"], step).loss > 0


def test_loss_scale_scales_the_gradients_not_the_loss(setup):
    dt, torch = setup["dt"], setup["torch"]
    step = setup["step"]
    params = step.llm_parameters() + step.encoder_parameters()

    def grads(executor):
        for p in params:
            p.grad = None
        stats = executor.run(setup["batch"], setup["plan"], setup["inputs"], step)
        return stats.loss, [p.grad.clone() for p in params]

    loss, plain = grads(setup["executor"])
    scaled_executor = dt.StepExecutor(setup["world"], setup["pool"], setup["c"].spec(),
                                      dtype=torch.float64, patch_dim=setup["c"].patch_dim,
                                      loss_scale=8.0)
    assert scaled_executor.loss_scale == 8.0
    scaled_loss, scaled = grads(scaled_executor)
    assert scaled_loss == pytest.approx(loss, rel=1e-12)  # the loss stays unscaled
    for g, s in zip(plain, scaled):
        assert torch.allclose(s, 8 * g, rtol=1e-10, atol=1e-14)
    for p in params:
        p.grad = None


def test_constructor_errors(setup):
    dt, torch, dhp = setup["dt"], setup["torch"], setup["dhp"]
    c = setup["c"]
    for kwargs, fragment in [(dict(llm_tp=3), "llm_tp=3 must divide"),
                             (dict(llm_tp=0), "llm_tp=0"),
                             (dict(dtype=torch.int64), "dtype=torch.int64"),
                             (dict(dtype="float128"), "dtype='float128'"),
                             (dict(patch_dim=-1), "patch_dim=-1"),
                             (dict(loss_scale=0), "loss_scale=0.0: expected > 0"),
                             (dict(loss_scale=-2.5), "loss_scale=-2.5: expected > 0"),
                             (dict(loss_scale=float("inf")), "loss_scale=inf"),
                             (dict(loss_scale="1024"), "loss_scale='1024'")]:
        with pytest.raises(dhp.Error) as info:
            dt.StepExecutor(setup["world"], setup["pool"], c.spec(), **kwargs)
        assert fragment in str(info.value), str(info.value)
    with pytest.raises(dhp.InputTypeError, match="world: expected a dhp.torch.Communicator"):
        dt.StepExecutor("world", setup["pool"], c.spec())
    with pytest.raises(dhp.InvalidArgumentError, match="attention='ulysses' needs pool="):
        dt.RingAttention([4, 4], [0], setup["world"], attention="ulysses")
    with pytest.raises(dhp.InvalidArgumentError, match=r"sharding\[1\]="):
        dt.RingAttention([4, 4], [0], setup["world"], sharding=["zigzag", "whole"])
    with pytest.raises(dhp.Error, match="ring"):
        dt.RingAttention([4, 4], [0, 7], setup["world"])
    with pytest.raises(dhp.InvalidArgumentError, match="backend='mpi'"):
        dt.world("mpi")


def test_single_process_world_and_dispatch(setup):
    dt, torch = setup["dt"], setup["torch"]
    world = setup["world"]
    assert world.size == 1 and world.rank == 0 and world.backend == "gloo"
    assert dt.world() is world
    batch, plan = setup["batch"], setup["plan"]
    dispatch = dt.WaveDispatch(batch, plan, 0, [0] * len(batch["samples"]), world)
    owned = torch.arange(dispatch.owned_rows, dtype=torch.float64).unsqueeze(1).requires_grad_(True)
    local = dispatch(owned)
    assert local.shape[0] == dispatch.local_rows == int(dispatch.cu_seqlens[-1])
    local.sum().backward()
    assert owned.grad is not None and float(owned.grad.sum()) == dispatch.local_rows
    with pytest.raises(setup["dhp"].Error, match="owns"):
        dispatch(owned[:-1].detach())


def test_half_precision_on_cpu_matches_float64(setup):
    """bfloat16/float16 CPU tensors run through dhp's 16-bit CPU kernels (fp32 accumulation,
    each result rounded once): output and gradients within a few roundings of float64, and
    the world stays usable afterwards."""
    dt, torch = setup["dt"], setup["torch"]
    ring = dt.RingAttention([5, 3], [0], setup["world"])
    gen = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(8, 2, 4, generator=gen, dtype=torch.float64).requires_grad_(True)
               for _ in range(3))
    reference = ring(q, k, v)
    reference.sum().backward()
    reference = reference.detach()
    grads = [t.grad.clone() for t in (q, k, v)]
    # A few units of each format's rounding (2^-8 for bfloat16, 2^-11 for float16).
    for dtype, tolerance in ((torch.bfloat16, 2e-2), (torch.float16, 3e-3)):
        low = [t.detach().to(dtype).requires_grad_(True) for t in (q, k, v)]
        out = ring(*low)
        assert out.dtype == dtype
        assert float((out.detach().double() - reference).abs().max()) < tolerance, dtype
        out.float().sum().backward()
        for name, t, g in zip("qkv", low, grads):
            assert t.grad is not None and t.grad.dtype == dtype, (dtype, name)
            assert float((t.grad.double() - g).abs().max()) < tolerance, (dtype, name)
    assert float((ring(q, k, v).detach() - reference).abs().max()) == 0.0


def test_tensors_on_another_device_are_refused_by_name(setup):
    dt, torch, dhp = setup["dt"], setup["torch"], setup["dhp"]
    world = setup["world"]
    with pytest.raises(dhp.InvalidArgumentError, match="tensor is on meta"):
        world.all_reduce(torch.zeros(3, device="meta"))
    with pytest.raises(dhp.InvalidArgumentError, match="not contiguous"):
        world.all_reduce(torch.zeros(3, 4).t())
    with pytest.raises(dhp.InputTypeError, match="q: expected a torch.Tensor"):
        dt.RingAttention([4], [0], world)([1.0], [1.0], [1.0])  # type: ignore[arg-type]
