"""sdrt: an optimized Stable Diffusion inference runtime.

The public API is ``sdrt.Pipeline``, ``sdrt.load`` (``Pipeline.load``) and
``sdrt.__version__``: ``sdrt.load(folder, backend="auto")`` opens a folder made by
``sdrt build``, and calling the pipeline takes diffusers' argument names and meanings
(``prompt``, ``negative_prompt``, ``num_inference_steps``, ``guidance_scale``, ``height``,
``width``, ``seed`` or ``latents``, ``scheduler``, ``image``/``strength``, ``mask_image``,
``output_type``) and returns a result whose ``images`` are PIL images or an array.
``sdrt.Pipeline.__call__`` says what each argument means; the README's "Generate" section
shows a whole call. ``Pipeline.interpolate`` (README, "Interpolate") makes the frames of a
walk between prompts and seeds. Errors a caller can act on are ``sdrt.errors.SdrtError`` subclasses.
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
