"""sdrt: an optimized Stable Diffusion inference runtime.

The public API (see DESIGN.md) is ``sdrt.Pipeline``, ``sdrt.load`` and ``sdrt.__version__``.
Importing sdrt never imports torch, diffusers or transformers.
"""

from __future__ import annotations

from importlib import metadata as _metadata

try:
    __version__ = _metadata.version("sdrt")
except _metadata.PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+local"

__all__ = ["Pipeline", "load", "__version__"]


def __getattr__(name: str):
    # The pipeline pulls in onnxruntime; keep `import sdrt` itself cheap.
    if name == "Pipeline":
        from sdrt.pipeline import Pipeline

        return Pipeline
    if name == "load":
        from sdrt.pipeline import Pipeline

        return Pipeline.load
    raise AttributeError(f"module 'sdrt' has no attribute {name!r}")
