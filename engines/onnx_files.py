"""Writing an ONNX graph into a component folder: ``model.onnx``, with its weights in one
``model.onnx_data`` beside it when the graph would not fit in a single protobuf.

It lives in the engines layer because both the exporters (export/onnx.py) and the engine
builds that rewrite a graph (engines/int8_unet.py) save graphs this way; it needs only onnx.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import onnx

ONNX_FILE = "model.onnx"
EXTERNAL_DATA_FILE = "model.onnx_data"
# Protobuf cannot serialise a message of 2 GiB or more; stay clear of it.
EXTERNAL_DATA_THRESHOLD_BYTES = 2**31 - 2**26


@dataclass(frozen=True)
class SavedModel:
    onnx_file: Path
    external_data_file: Path | None


def tensor_bytes(model: onnx.ModelProto) -> int:
    """Bytes held in initializers and Constant nodes: what decides external data."""
    import onnx

    total = sum(len(t.raw_data) or _typed_bytes(t) for t in model.graph.initializer)
    for node in model.graph.node:
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.TENSOR:
                    total += len(attr.t.raw_data) or _typed_bytes(attr.t)
    return total


def _typed_bytes(tensor: onnx.TensorProto) -> int:
    values = len(tensor.float_data) + len(tensor.int64_data) + len(tensor.int32_data)
    return values * 4 + len(tensor.double_data) * 8


def save_graph(model: onnx.ModelProto, folder: Path) -> SavedModel:
    """Write ``model.onnx``; weights go to one ``model.onnx_data`` beside it when the
    graph would not fit in a single protobuf."""
    import onnx

    folder.mkdir(parents=True, exist_ok=True)
    onnx_file = folder / ONNX_FILE
    if tensor_bytes(model) < EXTERNAL_DATA_THRESHOLD_BYTES:
        onnx.save_model(model, str(onnx_file))
        return SavedModel(onnx_file, None)
    onnx.save_model(
        model,
        str(onnx_file),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location=EXTERNAL_DATA_FILE,
        size_threshold=1024,
    )
    # The graph alone is small now: annotate its shapes in place.
    onnx.shape_inference.infer_shapes_path(str(onnx_file), str(onnx_file))
    return SavedModel(onnx_file, folder / EXTERNAL_DATA_FILE)
