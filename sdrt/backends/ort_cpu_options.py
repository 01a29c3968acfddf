"""The ort-cpu backend's options: how its ONNX Runtime sessions are made, and the key of
their saved graphs.

Default options, chosen by measurement (``python -m sdrt.benchmarks.studies.ort_options``; SD 1.5
fp32 U-Net at 256x256, batch 2, on this project's shared 2-core machines): sequential
execution; intra-op threads = physical cores (1 thread was slower once the machine was not
oversubscribed); the CPU memory arena on (off was slower per step); ORT_ENABLE_ALL (its
NCHWc layouts ran U-Net steps faster than ORT_ENABLE_EXTENDED in most interleaved pairs);
the optimised graph saved once under ``<folder>/engines/<target>/`` (ort_saved_graphs.py
writes it) and loaded with optimisation off later. ORT_ENABLE_ALL specialises on the CPU's
instruction set, so the saved copy's key includes a CPU fingerprint. Spinning pool threads
stay on (fastest when the process has its cores; on an oversubscribed machine
``allow_spinning=False`` or one thread was faster).

The key lives here, on the runtime side, because a load checks it; ort_saved_graphs.py (run
by a load, or by ``sdrt build --target ort-cpu``) writes what it names.
"""

from __future__ import annotations

import functools
import hashlib
import os
import platform
from dataclasses import dataclass
from pathlib import Path

import onnxruntime as ort

from sdrt.integrity import SAVED_GRAPH_RECORD, SAVED_GRAPHS_DIR
from sdrt.manifest import Component

# The folder under <model>/engines/ that holds the saved graphs: the backend's name.
# sdrt.integrity checks what lies in its SAVED_GRAPHS_DIR, engines/ort-cpu.
SAVED_GRAPHS_TARGET = "ort-cpu"
GRAPH_OPTIMIZATION_LEVELS = {
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}
# Written beside each saved graph: what it was made from, so that superseded copies can go,
# and its files' sha256, which loads check it against (sdrt.integrity).
KEY_RECORD = SAVED_GRAPH_RECORD
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


def session_options(options: OrtOptions, component: str) -> ort.SessionOptions:
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
            "prepacked" if saves_prepacked_weights(options, component.name) else "",
        ]
    )
    key = hashlib.sha256(key_text.encode()).hexdigest()[:16]
    return folder / SAVED_GRAPHS_DIR / f"{component.name}-{key}" / "model.onnx"


def saves_prepacked_weights(options: OrtOptions, component: str) -> bool:
    return options.save_prepacked_weights and component not in options.unpacked_components


def key_record(component: Component) -> dict[str, str]:
    return {
        "component": component.name,
        "sha256": component.sha256,
        "external_data_sha256": component.external_data_sha256 or "",
        "onnxruntime": ort.__version__,
        "cpu": cpu_fingerprint(),
    }
