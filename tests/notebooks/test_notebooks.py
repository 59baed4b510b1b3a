"""Every notebook in notebooks/ executes headlessly at smoke size, and is committed clean.

The runner is nbclient + ipykernel (the `notebooks` extra): each notebook runs in a fresh
`python3` kernel (jupyter_client starts it with this interpreter) whose working directory is
notebooks/ and whose environment is this process's plus `LLM_NOTEBOOK_SMOKE=1`, which every
notebook's first code cell reads to shrink its steps, samples and model sizes, less the
conftest's simulated device count (notebooks run on one device, as a user's kernel does).
A failing cell fails the test with that cell's number, source and traceback.

Notebooks are committed without outputs (`outputs: []`, `execution_count: null`), so they open
in Jupyter, VS Code, Colab and on GitHub as users expect while git diffs show only code and
text; `test_notebook_is_clean` enforces it, and that each one is listed in notebooks/README.md.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

NOTEBOOKS = Path(__file__).resolve().parents[2] / "notebooks"
PATHS = sorted(NOTEBOOKS.glob("*.ipynb"))
CELL_TIMEOUT_S = 600  # per cell; smoke-size cells take seconds, compiles dominate
STARTUP_TIMEOUT_S = 180  # kernel start, generous for a loaded 2-core machine
SMOKE_FLAG = "LLM_NOTEBOOK_SMOKE"
DEVICE_COUNT_FLAG = "--xla_force_host_platform_device_count"
ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def _failing_cell(nb: nbformat.NotebookNode) -> int:
    """Index of the first cell whose outputs hold an error, -1 if none does."""
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "code" and any(
            out.get("output_type") == "error" for out in cell.get("outputs", [])
        ):
            return i
    return -1


def _one_device(xla_flags: str) -> str:
    """XLA_FLAGS without tests/conftest.py's simulated device count: notebooks run on one
    CPU device as a user's kernel does (a sharding notebook sets its own count before it
    imports jax), and compiles for one device are faster."""
    return " ".join(f for f in xla_flags.split() if not f.startswith(DEVICE_COUNT_FLAG))


@pytest.mark.parametrize("path", PATHS, ids=[p.stem for p in PATHS])
def test_notebook_executes(path: Path, tmp_path: Path) -> None:
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(
        nb,
        timeout=CELL_TIMEOUT_S,
        startup_timeout=STARTUP_TIMEOUT_S,
        kernel_name="python3",
        resources={"metadata": {"path": str(NOTEBOOKS)}},
    )
    env = {**os.environ, SMOKE_FLAG: "1", "PYDEVD_DISABLE_FILE_VALIDATION": "1"}
    env["XLA_FLAGS"] = _one_device(env.get("XLA_FLAGS", ""))
    env["TMPDIR"] = str(tmp_path)  # the notebooks' mkdtemp() folders (runs, SmolLM2: 334 MB)
    try:
        client.execute(env=env)
        return
    except CellExecutionError as err:
        # nbclient's message quotes the failing cell's source, then its traceback.
        message = f"{path.name}: cell {_failing_cell(nb)} failed\n{ANSI.sub('', str(err))}"
    pytest.fail(message, pytrace=False)  # outside `except`: no chained raw traceback


@pytest.mark.parametrize("path", PATHS, ids=[p.stem for p in PATHS])
def test_notebook_is_clean(path: Path) -> None:
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    assert nb.nbformat == 4, f"{path.name}: nbformat {nb.nbformat}, expected 4"
    kernel = nb.metadata.get("kernelspec", {}).get("name")
    assert kernel == "python3", (
        f"{path.name}: kernelspec {kernel!r}, expected 'python3' "
        "(author with `jupytext --set-kernel python3 --to ipynb ...`)"
    )
    code = [(i, c) for i, c in enumerate(nb.cells) if c.cell_type == "code"]
    assert code, f"{path.name}: no code cells"
    for i, cell in code:
        assert cell.outputs == [], f"{path.name}: cell {i} has outputs; clear them before commit"
        assert cell.execution_count is None, f"{path.name}: cell {i} has an execution_count"
    assert SMOKE_FLAG in code[0][1].source, (
        f"{path.name}: the first code cell must read {SMOKE_FLAG} (CI runs at smoke size)"
    )
    assert re.fullmatch(r"\d\d_[a-z0-9_]+", path.stem), (
        f"{path.name}: name must be NN_topic.ipynb (two digits, lower-case snake case)"
    )
    assert nb.cells[0].cell_type == "markdown", f"{path.name}: the first cell must be a title"
    index = (NOTEBOOKS / "README.md").read_text()
    assert path.name in index, f"{path.name} is not listed in notebooks/README.md"


def test_notebook_numbers_are_unique() -> None:
    numbers = [p.stem[:2] for p in PATHS]
    duplicates = sorted({n for n in numbers if numbers.count(n) > 1})
    assert not duplicates, f"notebooks share a number: {duplicates}"
