"""ONNX Runtime sessions: one InferenceSession per component, created once, run from any thread.

Default options, chosen by measurement (``python -m sdrt.benchmarks.ort_options``; SD 1.5
fp32 U-Net at 256x256, batch 2, on this project's shared 2-core machines): sequential
execution; intra-op threads = physical cores (1 thread was slower once the machine was not
oversubscribed); the CPU memory arena on (off was slower per step); ORT_ENABLE_ALL (its
NCHWc layouts ran U-Net steps faster than ORT_ENABLE_EXTENDED in most interleaved pairs);
the optimised graph saved once under ``<folder>/engines/<target>/`` and loaded with
optimisation off later. ORT_ENABLE_ALL specialises on the CPU's instruction set, so the
saved copy's key includes a CPU fingerprint. Spinning pool threads stay on (fastest when
the process has its cores; on an oversubscribed machine ``allow_spinning=False`` or one
thread was faster). ``providers`` is open for CUDA.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import platform
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import onnxruntime as ort
from onnxruntime.capi import onnxruntime_pybind11_state as ort_errors

from sdrt.errors import BackendUnavailableError, ModelFolderError, SdrtError
from sdrt.manifest import Component, Manifest
from sdrt.sessions.base import check_feeds

log = logging.getLogger(__name__)

GRAPH_OPTIMIZATION_LEVELS = {
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}
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
# Written beside each saved graph: what it was made from, so that superseded copies can go.
KEY_RECORD = "key.json"
# Initializers at least this large go to the optimised model's external data file, so that
# models over protobuf's 2 GiB limit (an fp32 SD U-Net) can be saved.
EXTERNAL_INITIALIZER_MIN_BYTES = 1024


def physical_cores() -> int:
    """Physical cores of this machine (hyper-threads share the FPUs ORT's kernels use)."""
    try:
        cores = set()
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            physical_id = core_id = None
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "physical id":
                    physical_id = value.strip()
                elif key == "core id":
                    core_id = value.strip()
                    cores.add((physical_id, core_id))
        if cores:
            return min(len(cores), os.cpu_count() or len(cores))
    except OSError:
        pass  # not Linux: fall back on the logical count
    return os.cpu_count() or 1


@functools.cache
def cpu_fingerprint() -> str:
    """The CPU model and instruction-set flags (what ORT's CPU kernels specialise on)."""
    text = platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            lines = [line for line in f if line.startswith(("model name", "flags", "Features"))]
        text += "".join(sorted(set(lines)))
    except OSError:
        text += platform.processor()
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class OrtOptions:
    """How sessions are made; the defaults are the measured choice for CPU inference."""

    providers: tuple[str, ...] = ("CPUExecutionProvider",)
    intra_op_threads: int = 0  # 0: physical cores
    enable_mem_arena: bool = True
    # Idle pool threads spin for work by default; off gives the cores back to other
    # processes at some latency cost (worth it on a shared, oversubscribed machine).
    allow_spinning: bool = True
    graph_optimization: str = "all"  # a key of GRAPH_OPTIMIZATION_LEVELS
    # Save the optimised graph once under <folder>/engines/<target>/ and load it later with
    # optimisation off; skipped silently where the folder is read-only.
    cache_optimized_model: bool = True
    # ORT repacks constant matmul weights at load for its GEMM kernels, and saves the
    # repacked copies beside the optimised graph, which later loads map. Measured on SD 1.5
    # at 256x256 (medians of 10-16 interleaved pairs of U-Net steps): unpacked weights ran
    # 3-6% slower than packed ones (the text encoder, with few rows per weight, 24% slower),
    # and the saved, mapped packed weights 5% faster than packing at load. Unpacked, the
    # U-Net's session is made in 1.6 s instead of 2.8 s: list components here to trade step
    # time for load time.
    unpacked_components: tuple[str, ...] = ()
    save_prepacked_weights: bool = True

    def __post_init__(self):
        if self.graph_optimization not in GRAPH_OPTIMIZATION_LEVELS:
            raise ValueError(
                f"graph_optimization: expected one of {', '.join(GRAPH_OPTIMIZATION_LEVELS)}, "
                f"got {self.graph_optimization!r}"
            )
        if self.intra_op_threads < 0:
            raise ValueError(f"intra_op_threads: expected >= 0, got {self.intra_op_threads}")

    @property
    def target(self) -> str:
        return "ort-cuda" if "CUDAExecutionProvider" in self.providers else "ort-cpu"


def _session_options(options: OrtOptions, component: str) -> ort.SessionOptions:
    so = ort.SessionOptions()
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.intra_op_num_threads = options.intra_op_threads or physical_cores()
    so.inter_op_num_threads = 1
    so.enable_cpu_mem_arena = options.enable_mem_arena
    so.graph_optimization_level = GRAPH_OPTIMIZATION_LEVELS[options.graph_optimization]
    if not options.allow_spinning:
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if component in options.unpacked_components:
        so.add_session_config_entry("session.disable_prepacking", "1")
    so.log_severity_level = 3  # errors only: ORT's warnings are about its own internals
    return so


def optimized_model_path(folder: Path, component: Component, options: OrtOptions) -> Path:
    """Where the optimised copy lives; the key covers everything that changes the result."""
    key_text = "|".join(
        [
            component.sha256,
            component.external_data_sha256 or "",
            ort.__version__,
            options.graph_optimization,
            ",".join(options.providers),
            # ORT_ENABLE_ALL saves layouts for this CPU's instruction set: key on it.
            cpu_fingerprint() if options.graph_optimization == "all" else "",
            "prepacked" if _saves_prepacked_weights(options, component.name) else "",
        ]
    )
    key = hashlib.sha256(key_text.encode()).hexdigest()[:16]
    return folder / "engines" / options.target / f"{component.name}-{key}" / "model.onnx"


def _saves_prepacked_weights(options: OrtOptions, component: str) -> bool:
    return (
        options.save_prepacked_weights
        and options.target == "ort-cpu"
        and component not in options.unpacked_components
    )


def _key_record(component: Component) -> dict[str, str]:
    return {
        "component": component.name,
        "sha256": component.sha256,
        "external_data_sha256": component.external_data_sha256 or "",
        "onnxruntime": ort.__version__,
        "cpu": cpu_fingerprint(),
    }


def prune_superseded(saved_dir: Path, record: dict[str, str]) -> list[Path]:
    """Remove the component's other saved graphs that no load can pick again: those made
    from another version of its graph, or by another ONNX Runtime on this same CPU (an SD 1.5
    U-Net's copy is 4.3 GB). Copies for other CPUs or other options stay; so does a folder
    without a key record, which is not ours to judge."""
    removed = []
    for sibling in sorted(saved_dir.parent.glob(f"{record['component']}-*")):
        if sibling == saved_dir or not sibling.is_dir():
            continue
        try:
            other = json.loads((sibling / KEY_RECORD).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if not isinstance(other, dict) or other.get("component") != record["component"]:
            continue
        other_graph = any(other.get(k) != record[k] for k in ("sha256", "external_data_sha256"))
        older_runtime = other.get("cpu") == record["cpu"] and (
            other.get("onnxruntime") != record["onnxruntime"]
        )
        if other_graph or older_runtime:
            shutil.rmtree(sibling, ignore_errors=True)  # open mappings stay valid on POSIX
            removed.append(sibling)
    return removed


def _write_optimized_model(
    source: Path, target: Path, options: OrtOptions, component: Component
) -> None:
    """Let ORT optimise ``source`` and save the result; rename the folder in atomically,
    then remove the copies it supersedes."""
    target.parent.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.parent.name}.", dir=target.parent.parent))
    try:
        so = _session_options(options, component.name)
        so.optimized_model_filepath = str(staging / target.name)
        so.add_session_config_entry(
            "session.optimized_model_external_initializers_file_name", target.name + "_data"
        )
        so.add_session_config_entry(
            "session.optimized_model_external_initializers_min_size_in_bytes",
            str(EXTERNAL_INITIALIZER_MIN_BYTES),
        )
        if _saves_prepacked_weights(options, component.name):
            so.add_session_config_entry(
                "session.save_external_prepacked_constant_initializers", "1"
            )
        ort.InferenceSession(str(source), so, providers=list(options.providers))
        record = _key_record(component)
        (staging / KEY_RECORD).write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
        try:
            os.replace(staging, target.parent)
        except OSError:
            if not target.is_file():  # not another process that won the race: a real failure
                raise
            return
    finally:
        if staging.exists():
            for child in staging.iterdir():
                child.unlink()
            staging.rmdir()
    removed = prune_superseded(target.parent, record)
    if removed:
        log.info("removed %d superseded saved graphs of %s", len(removed), component.name)


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
        self.outputs = component.outputs
        self.options = options
        source = folder / component.file
        if not source.is_file():
            raise ModelFolderError(
                f"{folder}: the {component.name} graph {component.file} is missing"
            )
        try:
            self.model_path = self._model_to_load(folder, component, source)
            so = _session_options(options, component.name)
            if self.model_path != source:
                so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
            self._session = ort.InferenceSession(
                str(self.model_path), so, providers=list(options.providers)
            )
        except LOAD_ERRORS as e:
            raise ModelFolderError(
                f"{folder}: ONNX Runtime {ort.__version__} cannot load {component.file}: {e}"
            ) from None
        self._output_names = [o.name for o in self._session.get_outputs()]

    def _model_to_load(self, folder: Path, component: Component, source: Path) -> Path:
        if not self.options.cache_optimized_model or self.options.graph_optimization == "disable":
            return source
        target = optimized_model_path(folder, component, self.options)
        if target.is_file():
            return target
        try:
            _write_optimized_model(source, target, self.options, component)
        except OSError as e:  # a read-only folder: optimise in memory on every load instead
            log.info("not caching the optimised %s graph (%s)", component.name, e)
            return source
        return target

    def run(self, feeds: Mapping[str, Any]) -> dict[str, Any]:
        check_feeds(self.name, self.inputs, feeds)
        try:
            values = self._session.run(self._output_names, dict(feeds))
        except RUN_ERRORS as e:
            shapes = {k: list(getattr(v, "shape", ())) for k, v in feeds.items()}
            raise SdrtError(f"{self.name}: ONNX Runtime failed on inputs {shapes}: {e}") from None
        return dict(zip(self._output_names, values, strict=True))


def save_optimized_models(
    folder: str | os.PathLike, manifest: Manifest, options: OrtOptions | None = None
) -> list[Path]:
    """Write every component's optimised graph for this machine now (what the first
    ``Pipeline.load`` would do), so that the first load is as fast as the later ones."""
    from sdrt.sessions import create_sessions

    options = options or OrtOptions()
    if not options.cache_optimized_model or options.graph_optimization == "disable":
        raise ValueError(
            "save_optimized_models needs cache_optimized_model and an optimisation level"
        )
    sessions = create_sessions(folder, manifest, "ort-cpu", ort_options=options)
    return [session.model_path for session in sessions.values()]
