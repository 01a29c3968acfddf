"""Each graph of an ONNX folder as ONNX Runtime sees it: does it load, and its I/O specs.

Loaded with graph optimisation off (the quickest load that still checks the graph), on the
CPU. The specs become the components' inputs and outputs in sdrt.json, so the manifest
describes the real graphs, whatever their exporter named or typed.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import onnxruntime as ort

from sdrt.adopt.folder import GraphFiles
from sdrt.backends.ort_cpu import CPU_PROVIDER, LOAD_ERRORS
from sdrt.errors import ModelFolderError
from sdrt.manifest import DTYPES, TensorSpec
from sdrt.onnx_header import OnnxHeader, read_onnx_header

# ONNX Runtime's type strings -> sdrt.json's dtypes
ORT_DTYPES = {
    "tensor(float)": "float32",
    "tensor(float16)": "float16",
    "tensor(int64)": "int64",
    "tensor(int32)": "int32",
    "tensor(bool)": "bool",
}


@dataclass(frozen=True)
class GraphInfo:
    files: GraphFiles
    header: OnnxHeader
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    def input(self, name: str) -> TensorSpec | None:
        return next((s for s in self.inputs if s.name == name), None)

    def output_names(self) -> list[str]:
        return [s.name for s in self.outputs]


def read_graph(folder: Path, files: GraphFiles) -> GraphInfo:
    """Load one graph in ONNX Runtime; ModelFolderError naming the file if it cannot."""
    path = folder / files.file
    header = read_onnx_header(path)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 3  # errors only: exporters' graphs often warn
    try:
        session = ort.InferenceSession(str(path), options, providers=[CPU_PROVIDER])
    except LOAD_ERRORS as e:
        raise ModelFolderError(
            f"{files.name}: ONNX Runtime {ort.__version__} cannot load {files.file}: "
            f"{' '.join(str(e).split())}"
        ) from None
    inputs = tuple(_spec(files, arg) for arg in session.get_inputs())
    outputs = tuple(_spec(files, arg) for arg in session.get_outputs())
    return GraphInfo(files, header, inputs, outputs)


def _spec(files: GraphFiles, arg) -> TensorSpec:
    dtype = ORT_DTYPES.get(arg.type)
    if dtype is None or dtype not in DTYPES:
        raise ModelFolderError(
            f"{files.file}: {arg.name} is a {arg.type}; expected one of {', '.join(ORT_DTYPES)}"
        )
    shape = tuple(
        d if isinstance(d, (int, str)) and d != "" else f"{arg.name}_dim{i}"
        for i, d in enumerate(arg.shape)
    )
    return TensorSpec(arg.name, dtype, shape)
