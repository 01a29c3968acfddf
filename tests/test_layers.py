"""The layer contracts (pyproject.toml, [tool.importlinter]) hold, and catch a back edge.

The CLI on top, then benchmarks -> export -> engines -> the runtime; the runtime never
imports torch or the exporters' libraries. .ci/run checks them with .ci/lint-imports; these
tests run the same script, on the tree and on a copy with one bad import added.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LINT = REPO / ".ci" / "lint-imports"
CODE_FOLDERS = ("sdrt", "export", "engines", "benchmarks")


def lint(repo: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(LINT), str(repo)], capture_output=True, text=True, timeout=120
    )


def test_the_tree_keeps_its_layers():
    run = lint(REPO)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "2 kept, 0 broken" in run.stdout


def _copy_with(tmp_path: Path, module: str, line: str) -> Path:
    """The code folders, pyproject.toml and setup.py, with ``line`` added to ``module`` (a path)."""
    for folder in CODE_FOLDERS:
        shutil.copytree(
            REPO / folder, tmp_path / folder, ignore=shutil.ignore_patterns("__pycache__")
        )
    shutil.copy(REPO / "pyproject.toml", tmp_path)
    shutil.copy(REPO / "setup.py", tmp_path)
    target = tmp_path / module
    target.write_text(target.read_text(encoding="utf-8") + f"\n\n{line}\n", encoding="utf-8")
    return tmp_path


@pytest.mark.parametrize(
    ("module", "line", "message"),
    [
        # a lazy import in a function counts as much as one at the top
        (
            "sdrt/backends/ort_cpu.py",
            "def f():\n    from sdrt.engines.compare import Thresholds",
            "sdrt.backends is not allowed to import sdrt.engines",
        ),
        (
            "engines/int8_unet.py",
            "import sdrt.export.onnx",
            "sdrt.engines is not allowed to import sdrt.export",
        ),
        (
            "export/build.py",
            "import sdrt.benchmarks.harness",
            "sdrt.export is not allowed to import sdrt.benchmarks",
        ),
        ("sdrt/images.py", "import torch", "sdrt.images is not allowed to import torch"),
    ],
)
def test_a_back_edge_breaks_a_contract(tmp_path, module, line, message):
    run = lint(_copy_with(tmp_path, module, line))
    assert run.returncode == 1, run.stdout + run.stderr
    assert "1 broken" in run.stdout and message in run.stdout, run.stdout
