"""Backends behind one Session protocol; ``create_sessions`` maps a backend name to sessions.

Backend modules are imported on use, so a CPU-only install never imports TensorRT.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from typing import TYPE_CHECKING

from sdrt.errors import InputError
from sdrt.manifest import Manifest
from sdrt.sessions.base import Session, check_feeds

if TYPE_CHECKING:
    from sdrt.sessions.onnxruntime import OrtOptions

BACKENDS = ("auto", "ort-cpu", "ort-cuda", "tensorrt")

__all__ = ["BACKENDS", "Session", "check_feeds", "create_sessions", "resolve_backend"]


def resolve_backend(backend: str, manifest: Manifest | None = None) -> str:
    """The concrete backend for a requested name ("auto" picks the best one present)."""
    if backend not in BACKENDS:
        raise InputError(f"backend: expected one of {', '.join(BACKENDS)}, got {backend!r}")
    if backend == "ort-cpu":
        return backend
    # "auto" picks tensorrt, then ort-cuda, then ort-cpu by what the machine (and the
    # folder's engines) offer, and logs why; an explicit GPU backend that cannot run here
    # raises BackendUnavailableError naming what is missing.
    from sdrt.sessions.select import select_backend

    return select_backend(backend, manifest).backend


def _create_in_parallel(names: tuple[str, ...], make) -> dict[str, Session]:
    """``make(name)`` for every name on a few threads, the largest graph (the U-Net) first.

    ONNX Runtime releases the GIL while it creates a session, and creating one is mostly a
    single thread reading and repacking weights: SD 1.5's text encoder and VAE load while its
    U-Net does (2.7 s instead of 3.8 to 5.7 s one after another, on 2 cores).
    """
    if len(names) <= 1:
        return {name: make(name) for name in names}
    from concurrent.futures import ThreadPoolExecutor

    from sdrt.sessions.onnxruntime import physical_cores

    order = sorted(names, key=lambda name: name != "unet")
    with ThreadPoolExecutor(max_workers=min(len(names), physical_cores())) as pool:
        futures = {name: pool.submit(make, name) for name in order}
        # result() re-raises a failed session's own error (ModelFolderError, ...)
        return {name: futures[name].result() for name in names}


def create_sessions(
    folder: str | os.PathLike,
    manifest: Manifest,
    backend: str,
    components: tuple[str, ...] | None = None,
    ort_options: OrtOptions | None = None,
) -> Mapping[str, Session]:
    """One session per component of ``manifest`` (or the named subset), for ``backend``.

    ``ort_options`` overrides the measured ONNX Runtime defaults (its providers are set
    from the backend).
    """
    backend = resolve_backend(backend, manifest)
    names = tuple(manifest.components) if components is None else components
    if backend == "tensorrt":
        from sdrt.sessions.tensorrt import create_tensorrt_sessions

        return create_tensorrt_sessions(folder, manifest, names)
    if backend == "ort-cuda":  # device-resident I/O binding (sdrt/sessions/ort_cuda.py)
        from sdrt.sessions.ort_cuda import create_ort_cuda_sessions

        return create_ort_cuda_sessions(folder, manifest, names)
    if backend in ("ort-cpu", "ort-cuda"):
        from sdrt.sessions.onnxruntime import OrtOptions, OrtSession

        providers = ("CPUExecutionProvider",)
        if backend == "ort-cuda":
            providers = ("CUDAExecutionProvider", "CPUExecutionProvider")
        options = dataclasses.replace(ort_options or OrtOptions(), providers=providers)
        return _create_in_parallel(
            names, lambda name: OrtSession(folder, manifest.components[name], options)
        )
    from sdrt.errors import BackendUnavailableError

    raise BackendUnavailableError(f"backend {backend!r} is not implemented in this build of sdrt")
