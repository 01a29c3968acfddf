"""The peers' own virtualenvs: Optimum pins other transformers/diffusers versions than sdrt.

``sdrt bench --setup-optimum`` makes Optimum ORT's, ``--setup-optimum-intel`` Optimum-Intel's
(OpenVINO and NNCF, the engine under FastSD CPU); the ``optimum`` and ``optimum-intel``
contenders run their workers with that venv's interpreter. Each venv holds the CPU torch
wheel pinned like ours, the peer's own packages at the diffusers/huggingface_hub versions it
works with, and sdrt itself (editable, no dependencies) so the worker modules are importable.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from sdrt.errors import BackendUnavailableError, SdrtError

REPOSITORY = Path(__file__).resolve().parents[2]
# torch first, pinned to the version of the shared venv, so pip takes the CPU wheel.
TORCH = ("torch==2.13.0",)


@dataclass(frozen=True)
class PeerVenv:
    peer: str  # as the messages name it
    default: Path
    variable: str  # the environment variable that points at another venv
    setup_flag: str
    venv_flag: str
    requirements: tuple[tuple[str, ...], ...]  # one pip install per group, in order
    # Distributions uninstalled after: requirements that break the CPU torch at import.
    removed: tuple[str, ...] = ()

    def path(self, venv: Path | None) -> Path:
        if venv is not None:
            return venv
        return Path(os.environ.get(self.variable) or self.default)

    def find_python(self, venv: Path | None) -> Path:
        path = self.path(venv)
        python = path / "bin" / "python"
        if not python.is_file():
            raise BackendUnavailableError(
                f"{self.peer}'s virtualenv not found at {path} (set it up with `sdrt bench "
                f"{self.setup_flag}`, or point {self.venv_flag} / ${self.variable} at one)"
            )
        return python

    def setup(self, venv: Path | None) -> Path:
        """Create the venv and install the peer into it; returns its interpreter."""
        path = self.path(venv)
        steps = [[sys.executable, "-m", "venv", str(path)]]
        pip = [str(path / "bin" / "python"), "-m", "pip", "install"]
        steps += [[*pip, *group] for group in self.requirements]
        if self.removed:
            steps.append(
                [str(path / "bin" / "python"), "-m", "pip", "uninstall", "-y", *self.removed]
            )
        steps.append([*pip, "--no-deps", "-e", str(REPOSITORY)])
        for step in steps:
            print("+", " ".join(step), flush=True)
            if subprocess.run(step).returncode != 0:
                raise SdrtError(f"setting up {self.peer}'s virtualenv failed at: {' '.join(step)}")
        return path / "bin" / "python"


OPTIMUM = PeerVenv(
    peer="Optimum",
    default=Path(".bench-venvs/optimum"),
    variable="SDRT_OPTIMUM_VENV",
    setup_flag="--setup-optimum",
    venv_flag="--optimum-venv",
    requirements=(
        TORCH,
        ("optimum-onnx[onnxruntime]", "diffusers<0.36", "huggingface_hub>=0.34,<1.0"),
    ),
)
OPTIMUM_INTEL = PeerVenv(
    peer="Optimum-Intel",
    default=Path(".bench-venvs/optimum-intel"),
    variable="SDRT_OPTIMUM_INTEL_VENV",
    setup_flag="--setup-optimum-intel",
    venv_flag="--optimum-intel-venv",
    # torch again beside it: torchvision (its requirement) would otherwise pull a newer
    # torch, the CUDA wheel. That torchvision is built for the CUDA torch: with the CPU one
    # its import fails ("operator torchvision::nms does not exist"), and transformers then
    # fails to import the classes Optimum-Intel imports; nothing here needs it.
    requirements=(TORCH, (*TORCH, "optimum-intel[openvino,nncf,diffusers]==2.2.0")),
    removed=("torchvision",),
)
