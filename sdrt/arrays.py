"""The array namespace of a value (numpy on the CPU, cupy on a GPU) and the copy to the host.

The pipeline's loop is written against whichever namespace its session outputs live in,
so on a GPU backend latents, guidance and scheduler steps stay on the device until the
final image is copied back.
"""

from __future__ import annotations

import sys
from types import ModuleType

import numpy as np


def namespace_of(array) -> ModuleType:
    """numpy for numpy arrays; cupy for cupy arrays (without importing cupy otherwise)."""
    if type(array).__module__.startswith("cupy"):
        return sys.modules["cupy"]
    return np


def to_host(array) -> np.ndarray:
    """A numpy copy of a cupy array; numpy arrays are returned as they are."""
    if type(array).__module__.startswith("cupy"):
        return array.get()
    if isinstance(array, np.ndarray):
        return array
    raise TypeError(f"to_host: expected a numpy or cupy array, got {type(array).__name__}")


def import_cupy() -> ModuleType:
    """cupy, which the GPU backends keep their device arrays in, or a clear error."""
    try:
        import cupy
    except ImportError:
        from sdrt.errors import BackendUnavailableError

        raise BackendUnavailableError(
            "GPU backends need cupy for device arrays (pip install 'sdrt[gpu]')"
        ) from None
    return cupy
