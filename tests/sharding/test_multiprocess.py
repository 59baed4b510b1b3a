"""Two JAX processes on localhost (gloo CPU collectives, 4 devices each) train with FSDP,
checkpoint, restore and continue; the result matches the single-process unsharded run."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

CHILD = Path(__file__).parent / "multiprocess_child.py"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_fsdp_checkpoint_resume_match_single_process(tmp_path, reference):
    _, ref_losses, ref_state = reference
    # Without the conftest's persistent compilation cache: jax writes entries from process 0
    # only, so with a warm cache process 0 skips its compiles and waits at the first
    # collective for process 1, still compiling, past gloo's 30 s key-value timeout.
    env = {
        **{k: v for k, v in os.environ.items() if k != "JAX_COMPILATION_CACHE_DIR"},
        "JAX_PLATFORMS": "cpu",
        "XLA_FLAGS": "--xla_force_host_platform_device_count=4",
        "PYTHONPATH": str(Path(__file__).parents[2]),
    }
    port, out = _free_port(), tmp_path / "out.json"
    procs = [
        subprocess.Popen(
            [sys.executable, str(CHILD), str(i), str(port), str(tmp_path / "run"), str(out)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i in range(2)
    ]
    logs = [p.communicate(timeout=300)[0] for p in procs]
    for i, (p, log) in enumerate(zip(procs, logs, strict=True)):
        assert p.returncode == 0, f"process {i} failed:\n{log[-3000:]}"
    result = json.loads(out.read_text())
    np.testing.assert_allclose(result["losses"], ref_losses, rtol=1e-6)
    for got, want in zip(result["params"], jax.tree.leaves(ref_state.params), strict=True):
        np.testing.assert_allclose(np.asarray(got, np.float32), want, rtol=1e-5, atol=1e-7)
    assert result["compiles"] == 1
