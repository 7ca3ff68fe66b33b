"""The package's type stubs and annotations: mypy --strict passes on the package and on the
example a user starts from (examples/train_vlm.py), and finds a wrong call in user code."""
import os
import subprocess
import sys

import pytest

from conftest import SOURCE, has_torch_layer

mypy = pytest.importorskip("mypy")


def run_mypy(*targets, cwd=None):
    cache = os.environ.get("DHP_MYPY_CACHE", os.path.join(os.getcwd(), ".mypy_cache"))
    return subprocess.run([sys.executable, "-m", "mypy", "--strict", "--cache-dir", cache,
                           *targets], capture_output=True, text=True, cwd=cwd, timeout=900)


def test_package_and_example_pass_strict():
    import dhp
    targets = [os.path.dirname(dhp.__file__)]  # the package as imported (build tree or site)
    if has_torch_layer():
        targets.append(os.path.join(SOURCE, "examples", "train_vlm.py"))
    result = run_mypy(*targets)
    assert result.returncode == 0, result.stdout + result.stderr


def test_strict_catches_a_wrong_call(tmp_path):
    user = tmp_path / "user.py"
    user.write_text(
        "import dhp\n"
        "planner = dhp.Planner('h100-8', 'qwen2-vl-7b', llm_tp=2)\n"
        "plan = planner.plan({'samples': [{'text': 5}]})\n"
        "steps: str = plan['estimate']['step_ms']\n"  # a float, not a str
        "planner.simulate(plan)\n")  # the batch is missing
    result = run_mypy(str(user))
    assert result.returncode == 1, result.stdout
    assert 'user.py:4: error: Incompatible types in assignment (expression has type "float"' \
        in result.stdout, result.stdout
    assert "user.py:5: error: Missing positional argument" in result.stdout, result.stdout
