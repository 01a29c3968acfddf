"""The ort-cpu backend: ONNX Runtime on the CPU, one InferenceSession per component.

Sessions are created once and run from any thread. The options (and why they are the
defaults) are in sdrt/backends/ort_cpu_options.py. On a folder's first load the optimised
graph of each component is written under ``engines/ort-cpu/`` (ort_saved_graphs.py, which
needs only onnxruntime) and mapped by every later load; a read-only folder is optimised in
memory on every load instead. Loads check those copies as they check the graphs
(sdrt.integrity, in ``Pipeline.load``), which removes a copy that changed: it is written
again here.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import onnxruntime as ort
from onnxruntime.capi import onnxruntime_pybind11_state as ort_errors

from sdrt.backends.machine import Machine
from sdrt.backends.ort_cpu_options import (
    SAVED_GRAPHS_TARGET,
    OrtOptions,
    optimized_model_path,
    physical_cores,
    session_options,
)
from sdrt.backends.protocol import Session, check_feeds, options_of_type
from sdrt.errors import BackendUnavailableError, ModelFolderError, SdrtError
from sdrt.integrity import record_saved_graph
from sdrt.manifest import Component, Manifest

log = logging.getLogger(__name__)

NAME = SAVED_GRAPHS_TARGET
CPU_PROVIDER = "CPUExecutionProvider"

# What ORT raises for a graph it cannot load (they derive from Exception only).
LOAD_ERRORS = (
    ort_errors.Fail,
    ort_errors.InvalidGraph,
    ort_errors.InvalidProtobuf,
    ort_errors.NoSuchFile,
    ort_errors.NotImplemented,
    ort_errors.InvalidArgument,
)
RUN_ERRORS = (ort_errors.Fail, ort_errors.RuntimeException, ort_errors.InvalidArgument)


class OrtSession:
    """One component's graph on ONNX Runtime; ``run`` is safe from several threads at once."""

    def __init__(self, folder: str | os.PathLike, component: Component, options: OrtOptions):
        missing = [p for p in options.providers if p not in ort.get_available_providers()]
        if missing:
            raise BackendUnavailableError(
                f"ONNX Runtime providers {missing} are not available here "
                f"(available: {ort.get_available_providers()}); install onnxruntime-gpu for CUDA"
            )
        folder = Path(folder)
        self.name = component.name
        self.inputs = component.inputs
        self.optional_inputs = component.optional_inputs
        self.outputs = component.outputs
        # LoRA branch factors run-time LoRA may feed (sdrt/adapters/lora_state.py).
        self.weight_inputs = tuple(s for b in component.lora_branches for s in b.specs)
        self.options = options
        source = folder / component.file
        if not source.is_file():
            raise ModelFolderError(
                f"{folder}: the {component.name} graph {component.file} is missing"
            )
        self.model_path = source
        try:
            self.model_path = self._model_to_load(folder, component, source)
            so = session_options(options, component.name)
            if component.token_embedding is not None:
                # ORT warns on every load that an overridable table is not folded: it is meant so
                so.log_severity_level = 3
            if self.model_path != source:
                so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
            self._session = ort.InferenceSession(
                str(self.model_path), so, providers=list(options.providers)
            )
        except LOAD_ERRORS as e:
            loaded = self.model_path.relative_to(folder).as_posix()
            if self.model_path != source:  # a load with verify_files="never" mapped it as is
                loaded += f" (the saved optimised graph of {component.file}; remove it)"
            raise ModelFolderError(
                f"{folder}: ONNX Runtime {ort.__version__} cannot load {loaded}: {e}"
            ) from None
        self._output_names = [o.name for o in self._session.get_outputs()]
        if component.openvino is not None:
            log.info(
                "%s: ort-cpu runs its %s ONNX graph; its %s OpenVINO IR runs on backend openvino",
                component.name,
                component.precision,
                component.openvino.precision,
            )

    def _model_to_load(self, folder: Path, component: Component, source: Path) -> Path:
        if not self.options.cache_optimized_model or self.options.graph_optimization == "disable":
            return source
        target = optimized_model_path(folder, component, self.options)
        if target.is_file():
            return target
        from sdrt.backends.ort_saved_graphs import write_optimized_model  # onnxruntime only

        try:
            write_optimized_model(source, target, self.options, component)
        except OSError as e:  # a read-only folder: optimise in memory on every load instead
            log.info("not caching the optimised %s graph (%s)", component.name, e)
            return source
        record_saved_graph(folder, target.parent)  # just hashed: the next load need not
        return target

    def run(self, feeds: Mapping[str, Any]) -> dict[str, Any]:
        check_feeds(self.name, self.inputs, feeds, self.optional_inputs)
        try:
            values = self._session.run(self._output_names, dict(feeds))
        except RUN_ERRORS as e:
            shapes = {k: list(getattr(v, "shape", ())) for k, v in feeds.items()}
            raise SdrtError(f"{self.name}: ONNX Runtime failed on inputs {shapes}: {e}") from None
        return dict(zip(self._output_names, values, strict=True))


def create_in_parallel(
    names: tuple[str, ...], make: Callable[[str], Session]
) -> dict[str, Session]:
    """``make(name)`` for every name on a few threads, the largest graph (the U-Net) first.

    ONNX Runtime releases the GIL while it creates a session, and creating one is mostly a
    single thread reading and repacking weights: SD 1.5's text encoder and VAE load while its
    U-Net does (2.7 s instead of 3.8 to 5.7 s one after another, on 2 cores).
    """
    if len(names) <= 1:
        return {name: make(name) for name in names}
    from concurrent.futures import ThreadPoolExecutor

    order = sorted(names, key=lambda name: name != "unet")
    with ThreadPoolExecutor(max_workers=min(len(names), physical_cores())) as pool:
        futures = {name: pool.submit(make, name) for name in order}
        # result() re-raises a failed session's own error (ModelFolderError, ...)
        return {name: futures[name].result() for name in names}


class OrtCpuBackend:
    name = NAME
    options_type = OrtOptions

    def missing(self, machine: Machine) -> list[str]:
        return [] if CPU_PROVIDER in machine.ort_providers else ["onnxruntime"]

    def folder_problem(self, manifest: Manifest, machine: Machine) -> str | None:
        return None  # every folder has its ONNX graphs

    def open_sessions(
        self,
        folder: Path,
        manifest: Manifest,
        names: tuple[str, ...],
        machine: Machine,
        options: OrtOptions | None = None,
    ) -> dict[str, Session]:
        options = options_of_type(self, options)
        options = dataclasses.replace(options, providers=(CPU_PROVIDER,))
        return create_in_parallel(
            names, lambda name: OrtSession(folder, manifest.components[name], options)
        )


BACKEND = OrtCpuBackend()
