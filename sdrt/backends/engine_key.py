"""Engine cache keys: which engine may be loaded for which graph, options, library and GPU.

A TensorRT plan is only valid for the exact graph it was built from, the options it was
built with (profile, precision, refit, optimisation level), the TensorRT version that
built it and the GPU architecture (compute capability) it was tuned for. The key hashes
all four; the plan lives in a folder named by the key and the manifest records the key.
Whoever loads an engine recomputes the key from what it has and loads only on a match;
anything else is rebuilt, never loaded (a stale plan fails or, worse, runs wrong). The
key lives on the runtime side: loads check it (sdrt/backends/tensorrt.py), builds write it
(engines/tensorrt.py).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sdrt.manifest import Component

KEY_LENGTH = 16  # hex digits: short enough for a folder name, far from collisions here


@dataclass(frozen=True)
class BuildEnvironment:
    """What an engine is specific to besides its graph and options."""

    library: str  # the backend's name
    library_version: str
    compute_capability: str  # "8.9"
    device_name: str = ""  # informational; not part of the key (same arch, same engine)


def graph_fingerprint(component: Component) -> str:
    """The component's graph and weights: the ONNX file's sha256 and its external data's."""
    if component.external_data:
        return f"{component.sha256}+{component.external_data_sha256 or ''}"
    return component.sha256


def _canonical(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _canonical(v) for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))}
    if isinstance(value, (tuple, list)):
        return [_canonical(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    raise TypeError(f"cache key options must be JSON data, got {type(value).__name__} {value!r}")


def engine_cache_key(
    component: Component, options: Mapping[str, Any], environment: BuildEnvironment
) -> str:
    """Hex key of (graph sha256, build options incl. profile, library version, compute capability).

    ``options`` must hold everything that changes the plan (profile included) as JSON data;
    tuples and lists hash alike, so a record read back from sdrt.json gives the same key.
    """
    payload = {
        "graph": graph_fingerprint(component),
        "options": _canonical(options),
        "library": environment.library,
        "library_version": environment.library_version,
        "compute_capability": environment.compute_capability,
    }
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:KEY_LENGTH]
