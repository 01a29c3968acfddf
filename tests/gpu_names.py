"""The committed public names of TensorRT, Polygraphy and cupy (tests/data/gpu_api_names.json,
made by tests/data/extract_gpu_api_names.py from the libraries' binding sources)."""

from __future__ import annotations

import json
from pathlib import Path

NAMES = json.loads((Path(__file__).parent / "data" / "gpu_api_names.json").read_text())


def tensorrt_names(kind: str) -> set[str]:
    """A TensorRT class's (or "module"'s) names in any of the recorded versions."""
    return {n for version in NAMES["tensorrt"].values() for n in version.get(kind, ())}
