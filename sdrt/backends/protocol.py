"""The two protocols every backend implements: Backend (what it needs of the machine,
whether a folder is usable with it and why not, open sessions) and Session (one compiled
graph, run on named arrays), so that the pipeline never knows which backend it drives.

Session inputs are checked at this boundary against the component's specs from the
manifest: names, dtypes and ranks, with messages that say what came.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from sdrt.backends.machine import Machine
from sdrt.errors import InputError
from sdrt.manifest import Manifest, TensorSpec


@runtime_checkable
class Session(Protocol):
    """A loaded graph. ``run`` may be called from several threads at once."""

    name: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    def run(self, feeds: Mapping[str, Any]) -> dict[str, Any]:
        """Run the graph; returns every output by name (numpy, or device arrays on GPU)."""
        ...


class Backend(Protocol):
    """One way of running a model folder; one module under sdrt/backends/ each."""

    name: str  # what users pass as backend=
    options_type: type  # the frozen dataclass of its options; None gives its defaults

    def missing(self, machine: Machine) -> list[str]:
        """What this backend needs that ``machine`` lacks (empty when it can run)."""
        ...

    def folder_problem(self, manifest: Manifest, machine: Machine) -> str | None:
        """None when the folder can run with this backend here, else why not."""
        ...

    def open_sessions(
        self,
        folder: Path,
        manifest: Manifest,
        names: tuple[str, ...],
        machine: Machine,
        options: Any = None,
    ) -> dict[str, Session]:
        """One session per named component."""
        ...


def options_of_type(backend: Backend, options: Any) -> Any:
    """``options``, or the backend's defaults for None; another kind is an InputError."""
    if options is None:
        return backend.options_type()
    if not isinstance(options, backend.options_type):
        raise InputError(
            f"backend {backend.name!r}: expected options of type "
            f"{backend.options_type.__name__}, got {type(options).__name__}"
        )
    return options


def check_feeds(
    session_name: str,
    specs: tuple[TensorSpec, ...],
    feeds: Mapping[str, Any],
    optional: tuple[TensorSpec, ...] = (),
) -> None:
    """Check names, dtypes and ranks (and fixed dimensions) of ``feeds`` against ``specs``;
    ``optional`` inputs (overridden initializers: run-time LoRA's weights, textual
    inversion's token table) may be fed too, and are checked the same."""
    expected = {s.name for s in specs}
    fed_optional = [s for s in optional if s.name in feeds]
    given = set(feeds) - {s.name for s in fed_optional}
    if given != expected:
        missing, extra = sorted(expected - given), sorted(given - expected)
        raise InputError(
            f"{session_name}: expected inputs {sorted(expected)}, got {sorted(given)}"
            + (f" (missing {missing})" if missing else "")
            + (f" (unexpected {extra})" if extra else "")
        )
    for spec in (*specs, *fed_optional):
        value = feeds[spec.name]
        dtype = str(getattr(value, "dtype", type(value).__name__))
        if dtype != spec.dtype:
            raise InputError(
                f"{session_name}: input {spec.name!r} expected dtype {spec.dtype}, got {dtype}"
            )
        shape = tuple(getattr(value, "shape", ()))
        if len(shape) != len(spec.shape):
            raise InputError(
                f"{session_name}: input {spec.name!r} expected shape {list(spec.shape)}, got {list(shape)}"
            )
        for dim, want in zip(shape, spec.shape, strict=True):
            if isinstance(want, int) and dim != want:
                raise InputError(
                    f"{session_name}: input {spec.name!r} expected shape {list(spec.shape)}, got {list(shape)}"
                )
