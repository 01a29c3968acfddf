"""Optimum's own virtualenv: Optimum pins other transformers/diffusers versions than sdrt.

``sdrt bench --setup-optimum`` makes it; the ``optimum`` contender runs its worker with that
venv's interpreter. The venv holds the CPU torch wheel pinned like ours, Optimum's ONNX
Runtime integration, the diffusers/huggingface_hub versions it works with, and sdrt itself
(editable, no dependencies) so the worker protocol module is importable there.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from sdrt.errors import BackendUnavailableError, SdrtError

DEFAULT_VENV = Path(".bench-venvs/optimum")
VENV_VARIABLE = "SDRT_OPTIMUM_VENV"
# torch first, pinned to the version of the shared venv, so pip takes the CPU wheel.
REQUIREMENTS = (
    ("torch==2.13.0",),
    ("optimum-onnx[onnxruntime]", "diffusers<0.36", "huggingface_hub>=0.34,<1.0"),
)
REPOSITORY = Path(__file__).resolve().parents[2]


def venv_path(venv: Path | None) -> Path:
    if venv is not None:
        return venv
    return Path(os.environ.get(VENV_VARIABLE) or DEFAULT_VENV)


def find_python(venv: Path | None) -> Path:
    path = venv_path(venv)
    python = path / "bin" / "python"
    if not python.is_file():
        raise BackendUnavailableError(
            f"Optimum's virtualenv not found at {path} (set it up with `sdrt bench "
            f"--setup-optimum`, or point --optimum-venv / ${VENV_VARIABLE} at one)"
        )
    return python


def setup(venv: Path | None) -> Path:
    """Create the venv and install Optimum into it; returns its interpreter."""
    path = venv_path(venv)
    steps = [[sys.executable, "-m", "venv", str(path)]]
    pip = [str(path / "bin" / "python"), "-m", "pip", "install"]
    steps += [[*pip, *group] for group in REQUIREMENTS]
    steps.append([*pip, "--no-deps", "-e", str(REPOSITORY)])
    for step in steps:
        print("+", " ".join(step), flush=True)
        if subprocess.run(step).returncode != 0:
            raise SdrtError(f"setting up Optimum's virtualenv failed at: {' '.join(step)}")
    return path / "bin" / "python"
