"""The contenders a benchmark can run, each as a worker process in its own interpreter.

``torch`` is diffusers' own eager pipeline, ``optimum`` Optimum's ORT pipeline (in its own
virtualenv), and every sdrt backend name (``ort-cpu``, ...) the sdrt runtime.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from sdrt.errors import InputError

PACKAGE = "sdrt.benchmarks.contenders"
BASELINE = "torch"


@dataclass(frozen=True)
class ContenderSpec:
    name: str
    command: tuple[str, ...]  # interpreter and module; the worker's arguments follow
    extra_args: tuple[str, ...]
    model: str  # "source" (diffusers folder) or "built" (sdrt / Optimum ONNX folder)
    # Extra arguments that make the worker load without saved optimised graphs (optimising
    # every graph at load, as Optimum does); None: the contender has no such load.
    no_saved_graphs_args: tuple[str, ...] | None = None


def known_contenders() -> tuple[str, ...]:
    from sdrt.backends import BACKENDS

    return (BASELINE, "optimum", *(name for name in BACKENDS if name != "auto"))


def resolve(name: str, optimum_venv: Path | None) -> ContenderSpec:
    """The spec for contender ``name``; ``BackendUnavailableError`` says why one cannot run."""
    from sdrt.backends import BACKENDS

    if name == BASELINE:
        return ContenderSpec(
            name, (sys.executable, "-m", f"{PACKAGE}.torch_diffusers"), (), "source"
        )
    if name == "optimum":
        from sdrt.benchmarks.contenders import optimum_env

        python = optimum_env.find_python(optimum_venv)
        return ContenderSpec(name, (str(python), "-m", f"{PACKAGE}.optimum_ort"), (), "built")
    if name in BACKENDS:
        from sdrt.benchmarks.contenders.sdrt_runtime import NO_SAVED_GRAPHS, SAVES_GRAPHS

        return ContenderSpec(
            name,
            (sys.executable, "-m", f"{PACKAGE}.sdrt_runtime"),
            (name,),
            "built",
            no_saved_graphs_args=(NO_SAVED_GRAPHS,) if name in SAVES_GRAPHS else None,
        )
    raise InputError(
        f"--backends: unknown contender {name!r}; expected some of {', '.join(known_contenders())}"
    )
