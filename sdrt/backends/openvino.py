"""The openvino backend: Intel's OpenVINO runtime on the CPU, reading the folder's ONNX graphs.

It runs every folder ort-cpu runs, from the same ONNX files (OpenVINO's ONNX frontend reads
them; nothing is converted on disk). Where it pays is int8: a folder built ``--precision
int8 --int8-method nncf`` carries an NNCF-quantized U-Net in OpenVINO's IR
(unet/openvino_model.xml), which this backend runs instead of the fp32 ONNX U-Net; on the
two CPUs measured its step was 1.35x and 1.97x faster than ONNX Runtime's int8 graph on
ONNX Runtime (README, int8 section). An ONNX Runtime int8 folder's QDQ graph runs too (its
QuantizeLinear/DequantizeLinear pairs become OpenVINO int8 kernels). It is never picked by ``auto``: ask
for it with ``backend="openvino"`` (``pip install 'sdrt[openvino]'``).

``precision`` is OpenVINO's inference precision hint: "f32" (the default here, so that the
images match ort-cpu and diffusers to float32 rounding) or "bf16" (OpenVINO's own default on
CPUs with bf16 instructions: faster, and about 3 significant digits per activation).

What it does not do: feed overridden initializers. OpenVINO folds a graph input that has an
initializer into a constant, so run-time textual inversion is refused on this backend, and
a ``--lora-ready`` folder (run-time LoRA) is refused at load, each with an error that names
the backends that take them (the build-time ``--lora``/``--embedding`` work, as they change
the graphs themselves).
"""

from __future__ import annotations

import importlib.util
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sdrt.backends.machine import Machine
from sdrt.backends.ort_cpu import create_in_parallel
from sdrt.backends.protocol import Session, check_feeds, options_of_type
from sdrt.errors import BackendUnavailableError, InputError, ModelFolderError, SdrtError
from sdrt.manifest import Component, Manifest

NAME = "openvino"
DEVICE = "CPU"
INSTALL_HINT = "pip install 'sdrt[openvino]'"
PRECISIONS = {"f32": "FP32", "bf16": "BF16"}  # hint -> the CPU capability it needs


@dataclass(frozen=True)
class OpenVinoOptions:
    """How the graphs are compiled: threads (0: OpenVINO's default, one per physical core),
    the inference precision hint (see the module docstring), and whether a component's
    OpenVINO IR (the NNCF int8 U-Net of ``--int8-method nncf``) runs instead of its ONNX
    graph (False: the fp32 ONNX graph, exact)."""

    threads: int = 0
    precision: str = "f32"
    use_ir: bool = True

    def __post_init__(self):
        if self.precision not in PRECISIONS:
            raise InputError(
                f"openvino precision: expected one of {', '.join(PRECISIONS)}, "
                f"got {self.precision!r}"
            )
        if not isinstance(self.threads, int) or self.threads < 0:
            raise InputError(f"openvino threads: expected an integer >= 0, got {self.threads!r}")

    def compile_config(self) -> dict[str, Any]:
        config: dict[str, Any] = {
            "PERFORMANCE_HINT": "LATENCY",
            "INFERENCE_PRECISION_HINT": self.precision,
        }
        if self.threads:
            config["INFERENCE_NUM_THREADS"] = self.threads
        return config


def graph_file(component: Component, options: OpenVinoOptions) -> str:
    """The file this backend compiles for ``component``: its IR where it has one (and the
    options take it), else its ONNX graph."""
    if options.use_ir and component.openvino is not None:
        return component.openvino.file
    return component.file


class OpenVinoSession:
    """One component's graph compiled by OpenVINO. An infer request is not thread-safe and a
    compiled model is, so each calling thread gets its own request (and its own buffers)."""

    def __init__(self, core, folder: Path, component: Component, options: OpenVinoOptions):
        import openvino as ov

        self.name = component.name
        self.inputs = component.inputs
        self.outputs = component.outputs
        self.optional_inputs = ()  # overridden initializers are constants here (docstring)
        self.weight_inputs = None  # no LoRA branch feeds: lora_api refuses run-time LoRA
        graph = graph_file(component, options)
        self.graph = graph  # what ran: the benchmark records it
        source = folder / graph
        if not source.is_file():
            raise ModelFolderError(f"{folder}: the {component.name} graph {graph} is missing")
        try:
            self._compiled = core.compile_model(str(source), DEVICE, options.compile_config())
        except RuntimeError as e:
            raise ModelFolderError(
                f"{folder}: OpenVINO {ov.get_version()} cannot compile {graph}: {_first_line(e)}"
            ) from None
        # a port may carry several names (the ONNX output and the tensor feeding it)
        self._ports = {name: o for o in self._compiled.outputs for name in o.get_names()}
        missing = [o.name for o in self.outputs if o.name not in self._ports]
        if missing:
            raise ModelFolderError(
                f"{folder}: OpenVINO's {graph} has outputs {sorted(self._ports)}, "
                f"sdrt.json names {missing} too"
            )
        self._local = threading.local()

    def _request(self):
        request = getattr(self._local, "request", None)
        if request is None:
            request = self._local.request = self._compiled.create_infer_request()
        return request

    def run(self, feeds: Mapping[str, Any]) -> dict[str, Any]:
        check_feeds(self.name, self.inputs, feeds)
        arrays = {name: np.ascontiguousarray(value) for name, value in feeds.items()}
        try:
            result = self._request().infer(arrays)
        except RuntimeError as e:
            shapes = {k: list(v.shape) for k, v in arrays.items()}
            raise SdrtError(
                f"{self.name}: OpenVINO failed on inputs {shapes}: {_first_line(e)}"
            ) from None
        # infer() returns copies, so a later call on this thread cannot overwrite them
        return {spec.name: result[self._ports[spec.name]] for spec in self.outputs}


def _first_line(error: Exception) -> str:
    """OpenVINO's errors run to many lines of C++ locations; the first says what failed."""
    text = str(error).strip()
    return text.splitlines()[0] if text else repr(error)


def _has_openvino() -> bool:
    return importlib.util.find_spec("openvino") is not None


class OpenVinoBackend:
    name = NAME
    options_type = OpenVinoOptions

    def missing(self, machine: Machine) -> list[str]:
        return [] if _has_openvino() else [f"openvino ({INSTALL_HINT})"]

    def folder_problem(self, manifest: Manifest, machine: Machine) -> str | None:
        """None, except for ``--lora-ready`` folders: their LoRA branches take factor inputs
        whose defaults are empty initializers, which OpenVINO folds into scalars and cannot
        compile (MatMul of a scalar)."""
        ready = sorted(n for n, c in manifest.components.items() if c.lora_branches)
        if ready:
            return (
                f"backend 'openvino' cannot run a folder built --lora-ready ({', '.join(ready)} "
                "take LoRA factor inputs); use backend='ort-cpu', or build the folder without "
                "--lora-ready (sdrt build --lora fuses a LoRA at build time)"
            )
        return None

    def open_sessions(
        self,
        folder: Path,
        manifest: Manifest,
        names: tuple[str, ...],
        machine: Machine,
        options: OpenVinoOptions | None = None,
    ) -> dict[str, Session]:
        options = options_of_type(self, options)
        import openvino as ov

        core = ov.Core()
        capabilities = core.get_property(DEVICE, "OPTIMIZATION_CAPABILITIES")
        if PRECISIONS[options.precision] not in capabilities:
            raise BackendUnavailableError(
                f"openvino precision {options.precision!r} needs a CPU with "
                f"{PRECISIONS[options.precision]} support; this one has {sorted(capabilities)}"
            )
        folder = Path(folder)
        return create_in_parallel(
            names,
            lambda name: OpenVinoSession(core, folder, manifest.components[name], options),
        )


BACKEND = OpenVinoBackend()
