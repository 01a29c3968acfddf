"""The Session protocol: one compiled graph, run on named arrays.

Every backend (ONNX Runtime CPU/CUDA, TensorRT) implements this, so the pipeline never
knows which one it drives. Inputs are checked at this boundary against the component's
specs from the manifest: names, dtypes and ranks, with messages that say what came.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol, runtime_checkable

from sdrt.errors import InputError
from sdrt.manifest import TensorSpec


@runtime_checkable
class Session(Protocol):
    """A loaded graph. ``run`` may be called from several threads at once."""

    name: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    def run(self, feeds: Mapping[str, Any]) -> dict[str, Any]:
        """Run the graph; returns every output by name (numpy, or device arrays on GPU)."""
        ...


def check_feeds(session_name: str, specs: tuple[TensorSpec, ...], feeds: Mapping[str, Any]) -> None:
    """Check names, dtypes and ranks (and fixed dimensions) of ``feeds`` against ``specs``."""
    expected = {s.name for s in specs}
    given = set(feeds)
    if given != expected:
        missing, extra = sorted(expected - given), sorted(given - expected)
        raise InputError(
            f"{session_name}: expected inputs {sorted(expected)}, got {sorted(given)}"
            + (f" (missing {missing})" if missing else "")
            + (f" (unexpected {extra})" if extra else "")
        )
    for spec in specs:
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
