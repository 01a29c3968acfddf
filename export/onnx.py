"""torch -> ONNX: trace and clean up; engines/onnx_files.py saves (one external data file
over 2 GB).

fp16 graphs are converted between cleanup and save by engines/fp16_graph.py, the one fp16
conversion (TensorRT builds from fp32 folders use it too).

The legacy TorchScript exporter (``dynamo=False``) is used: it handles the diffusers and
transformers models as they are and names dynamic axes as asked. Node counts are taken
after each pass so a build can say what it did (``exported`` -> ``cleaned`` -> ``fp16``).
"""

from __future__ import annotations

import contextlib
import warnings
from dataclasses import dataclass
from pathlib import Path

import onnx
import torch
from sdrt.engines.onnx_files import EXTERNAL_DATA_THRESHOLD_BYTES, tensor_bytes
from sdrt.export.components import ExportWrapper, ShapeCase

# Constants folded into the graph larger than this stay computed at run time.
FOLD_SIZE_THRESHOLD_BYTES = 16 * 2**20


def export_graph(
    wrapper: ExportWrapper, case: ShapeCase, path: Path, *, opset: int, seed: int = 0
) -> None:
    """Trace ``wrapper`` on inputs of ``case`` and write the raw graph (may spill weights
    into many external files beside ``path`` when it is over 2 GB)."""
    inputs = wrapper.sample_inputs(case, torch.Generator().manual_seed(seed))
    path.parent.mkdir(parents=True, exist_ok=True)
    # The tracer warns about every Python branch on a shape; the verification at two
    # shapes is what tells whether a branch was baked in wrongly.
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            wrapper,
            tuple(inputs.values()),
            str(path),
            input_names=list(wrapper.input_names),
            output_names=list(wrapper.output_names),
            dynamic_axes=wrapper.dynamic_axes(),
            opset_version=opset,
            do_constant_folding=True,
            dynamo=False,
        )


@dataclass(frozen=True)
class CleanedGraph:
    model: onnx.ModelProto
    exported_nodes: int
    cleaned_nodes: int


def cleanup_graph(raw_file: Path) -> CleanedGraph:
    """Shape inference, constant folding and dead-node removal (onnx-graphsurgeon).

    Reads the raw export from disk and keeps at most two copies of the weights alive (the
    loaded graph and the cleaned one): an SD U-Net is 3.4 GB in fp32. Shape inference runs
    on the file, which also works for graphs whose weights live in external files.
    """
    import onnx_graphsurgeon as gs

    inferred_file = raw_file.with_name("inferred.onnx")
    onnx.shape_inference.infer_shapes_path(str(raw_file), str(inferred_file))
    model = onnx.load(str(inferred_file), load_external_data=True)
    exported_nodes = len(model.graph.node)
    io_types = _io_types(model)
    graph = gs.import_onnx(model)
    del model
    with _quiet_onnxruntime():
        graph.fold_constants(size_threshold=FOLD_SIZE_THRESHOLD_BYTES)
        graph.cleanup(remove_unused_graph_inputs=False).toposort()
    model = gs.export_onnx(graph)
    del graph
    model = infer_shapes_in_memory(model)
    _restore_io_types(model, io_types)
    return CleanedGraph(model, exported_nodes, len(model.graph.node))


def infer_shapes_in_memory(model: onnx.ModelProto) -> onnx.ModelProto:
    """Annotate every tensor's type and shape; graphs over 2 GB are annotated on disk by
    ``save_graph`` instead (protobuf cannot serialise them for the in-memory pass)."""
    if tensor_bytes(model) >= EXTERNAL_DATA_THRESHOLD_BYTES:
        return model
    return onnx.shape_inference.infer_shapes(model)


def _io_types(model: onnx.ModelProto) -> dict[str, onnx.TypeProto]:
    types = {}
    for value in [*model.graph.input, *model.graph.output]:
        copy = onnx.TypeProto()
        copy.CopyFrom(value.type)
        types[value.name] = copy
    return types


def _restore_io_types(model: onnx.ModelProto, types: dict[str, onnx.TypeProto]) -> None:
    """Shape inference may rename dims it proves equal where broadcasting allows them to
    differ (a timestep of "steps" becoming "batch"); the exported I/O shapes are the
    contract, so they are put back."""
    for value in [*model.graph.input, *model.graph.output]:
        if value.name in types:
            value.type.CopyFrom(types[value.name])


@contextlib.contextmanager
def _quiet_onnxruntime():
    """Constant folding runs ORT sessions whose optimisers warn about every node they
    cannot simplify; show errors only while it runs, then return to ORT's default level."""
    import onnxruntime as ort

    ort.set_default_logger_severity(3)
    try:
        yield
    finally:
        ort.set_default_logger_severity(2)
