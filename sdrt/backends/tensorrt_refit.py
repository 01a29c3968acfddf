"""Refitting a TensorRT engine's weights in place: how a LoRA switch reaches TensorRT.

An engine built refittable (``sdrt engines build --refit``) names its weights after the ONNX
initializers they came from, so the U-Net's adaptable weights (the ones the folder's
manifest maps LoRA targets to) can be replaced without a rebuild: TensorRT's ``Refitter``
takes the new values by name and rewrites the engine on a stream. What this module checks
before it asks TensorRT, so that a bad switch fails with a message and leaves the engine as
it was:

- the engine is refittable (TensorRT cannot even make a refitter otherwise);
- every name is one of the engine's weights, and every array has the element count of the
  weights it replaces (values are cast to the engine's type: an fp16 engine takes fp16);
- TensorRT has nothing missing (weights it needs refitted together with the given ones; the
  caller may give their current values, ``companions``).

The host arrays must stay alive until the refit has run on the stream: the refit here
synchronises its stream before returning, so that the caller may drop them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np

from sdrt.errors import InputError

REFIT_HINT = "build the engines refittable with `sdrt engines build FOLDER --refit`"


@dataclass(frozen=True)
class RefitReport:
    weights: int  # how many named weights were replaced
    elements: int  # how many values that was


def refit_engine(
    trt,
    engine,
    weights: Mapping[str, np.ndarray],
    stream,
    *,
    logger,
    name: str,
    companions: Callable[[str], np.ndarray] | None = None,
) -> RefitReport:
    """Replace ``weights`` (engine weight name -> new value) in ``engine`` on ``stream``.

    ``companions(weight_name)`` gives the current value of a weight TensorRT wants refitted
    together with the given ones (a bias it fused into a kernel), which is then passed
    unchanged; without it such a refit is refused."""
    if not getattr(engine, "refittable", False):
        raise InputError(f"{name}: the TensorRT engine was not built refittable; {REFIT_HINT}")
    refitter = trt.Refitter(engine, logger)
    known = set(refitter.get_all_weights())
    unknown = sorted(set(weights) - known)
    if unknown:
        raise InputError(
            f"{name}: the engine has no weights named {unknown[:5]}"
            f"{' ...' if len(unknown) > 5 else ''} ({len(known)} refittable weights)"
        )
    keep_alive = []

    def put(weight_name: str, value) -> None:
        prototype = refitter.get_weights_prototype(weight_name)
        array = np.ascontiguousarray(value, dtype=trt.nptype(prototype.dtype))
        if array.size != prototype.size:
            raise InputError(
                f"{name}: weights {weight_name!r} have {prototype.size} values in the engine; "
                f"{array.size} came (shape {list(np.shape(value))})"
            )
        keep_alive.append(array)
        if not refitter.set_named_weights(weight_name, trt.Weights(array)):
            raise InputError(f"{name}: TensorRT refused the new weights {weight_name!r}")

    for weight_name, value in weights.items():
        put(weight_name, value)
    missing = sorted(refitter.get_missing_weights())
    if missing and companions is not None:
        for weight_name in missing:
            put(weight_name, companions(weight_name))
        missing = sorted(refitter.get_missing_weights())
    if missing:
        raise InputError(f"{name}: TensorRT needs these weights refitted too: {missing[:5]}")
    if not refitter.refit_cuda_engine_async(stream.ptr):
        raise RuntimeError(f"{name}: TensorRT failed to refit the engine")
    stream.synchronize()  # the refit reads keep_alive's host memory until it has run
    return RefitReport(len(weights), sum(a.size for a in keep_alive[: len(weights)]))
