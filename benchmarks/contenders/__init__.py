"""The contenders a benchmark can run, each as a worker process in its own interpreter.

``torch`` is diffusers' own eager pipeline, ``optimum`` Optimum's ORT pipeline (in its own
virtualenv), and every sdrt backend name (``ort-cpu``, ...) the sdrt runtime; a backend with
fast modes (``ort-cpu+int8+deepcache3``, benchmarks/fast_modes.py) runs sdrt on the variant
folder built with those modes, with their per-call arguments.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from sdrt.benchmarks import fast_modes

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
    # The variant build it loads (fast_modes.ModeContender.variant_key); None: the plain one.
    variant: str | None = None


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
    if fast_modes.SEPARATOR in name:
        return _with_modes(name)
    raise InputError(
        f"--backends: unknown contender {name!r}; expected some of {', '.join(known_contenders())}"
    )


def is_known(name: str) -> bool:
    """A contender ``resolve`` takes: a known name, or an sdrt backend with fast modes."""
    if name in known_contenders():
        return True
    backend = fast_modes.exact_name(name)
    return (
        backend is not None
        and backend in known_contenders()
        and backend
        not in (
            BASELINE,
            "optimum",
        )
    )


def _with_modes(name: str) -> ContenderSpec:
    import json

    from sdrt.benchmarks.contenders.sdrt_runtime import CALL_OPTIONS

    from sdrt.backends import BACKENDS

    contender = fast_modes.split_contender(name)
    if contender.backend not in BACKENDS or contender.backend == "auto":
        raise InputError(
            f"--backends: fast modes run on an sdrt backend, got {contender.backend!r} in "
            f"{name!r}; expected one of {', '.join(n for n in BACKENDS if n != 'auto')}"
        )
    call = json.dumps(contender.call_options, sort_keys=True)
    return ContenderSpec(
        name,
        (sys.executable, "-m", f"{PACKAGE}.sdrt_runtime"),
        (contender.backend, CALL_OPTIONS, call),
        "built",
        variant=contender.variant_key,
    )
