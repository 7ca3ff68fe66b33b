"""Shared helpers of the Python tests: where the sources are, and a launcher that starts N
processes the way torchrun does (RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE,
MASTER_ADDR, MASTER_PORT), so that multi-process tests need no torchrun."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

import pytest

SOURCE = os.environ.get("DHP_SOURCE_DIR",
                        os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..")))
EXAMPLE = os.path.join(SOURCE, "examples", "train_vlm.py")
WORKERS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "workers")


def has_torch_layer() -> bool:
    try:
        import dhp.torch  # noqa: F401
        return True
    except ImportError:
        return False


needs_torch = pytest.mark.skipif(not has_torch_layer(),
                                 reason="dhp was built without its torch extension")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class Run:
    returncodes: List[int]
    stdout: List[str]
    stderr: List[str]
    seconds: float

    def lines(self, rank: int = 0) -> List[Dict[str, object]]:
        """The JSON lines a rank printed on stdout."""
        return [json.loads(line) for line in self.stdout[rank].splitlines()
                if line.startswith("{")]

    def describe(self) -> str:
        return "\n".join(f"--- rank {r} (exit {c}) stderr:\n{e[-3000:]}\n--- stdout:\n{o[-2000:]}"
                         for r, (c, o, e) in enumerate(zip(self.returncodes, self.stdout,
                                                           self.stderr)))


def env_for(rank: int, size: int, port: int, extra: Optional[Dict[str, str]] = None) -> Dict[str, str]:
    env = dict(os.environ)
    env.update({"RANK": str(rank), "WORLD_SIZE": str(size), "LOCAL_RANK": str(rank),
                "LOCAL_WORLD_SIZE": str(size), "MASTER_ADDR": "127.0.0.1",
                "MASTER_PORT": str(port), "OMP_NUM_THREADS": "1",
                "DHP_COMM_TIMEOUT_S": os.environ.get("DHP_TEST_COMM_TIMEOUT_S", "120")})
    env.pop("TORCHELASTIC_USE_AGENT_STORE", None)
    env.update(extra or {})
    return env


def launch(args: Sequence[str], nprocs: int, timeout: float = 600,
           extra_env: Optional[Dict[str, str]] = None) -> Run:
    """Runs `python args...` on `nprocs` processes with torchrun's variables."""
    port = free_port()
    start = time.monotonic()
    procs = [subprocess.Popen([sys.executable, *args], env=env_for(r, nprocs, port, extra_env),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for r in range(nprocs)]
    outs = []
    try:
        for p in procs:
            left = max(1.0, timeout - (time.monotonic() - start))
            outs.append(p.communicate(timeout=left))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.communicate()
    return Run([p.returncode for p in procs], [o for o, _ in outs], [e for _, e in outs],
               time.monotonic() - start)
