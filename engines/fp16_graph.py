"""An fp16 copy of an fp32 ONNX graph, for TensorRT versions that only build strongly typed.

TensorRT 10 builds fp16 engines from fp32 graphs with a builder flag (weak typing);
TensorRT 11 removed that flag: every network is strongly typed and runs in the types its
graph declares. To get fp16 engines there, an fp32 component is converted first, the way
``sdrt build --precision fp16`` converts it (ONNX Runtime's float16 converter): fp16
weights and activations, normalisations kept in fp32 (their reductions overflow or lose
precision in fp16), fp32 inputs and outputs so the engine keeps the folder's I/O contract.
The copy is written to a scratch folder, built from, and deleted.
"""

from __future__ import annotations

from pathlib import Path

from sdrt.errors import BackendUnavailableError

# The same fp32 islands as the exporter's fp16 graphs (export/onnx.py: FP32_ISLAND_OPS).
FP32_ISLAND_OPS = ("InstanceNormalization", "LayerNormalization", "GroupNormalization")


def write_fp16_copy(onnx_path: Path, folder: Path) -> Path:
    """Convert ``onnx_path`` (external data included) to fp16 and save it in ``folder``."""
    try:
        import onnx
        from onnxruntime.transformers.float16 import (
            DEFAULT_OP_BLOCK_LIST,
            convert_float_to_float16,
        )
    except ImportError as e:
        raise BackendUnavailableError(
            f"converting an fp32 graph to fp16 for TensorRT needs the onnx package ({e.name} "
            "is missing): pip install onnx, or build the folder with `sdrt build --precision fp16`"
        ) from None
    model = onnx.load(str(onnx_path))
    fp16 = convert_float_to_float16(
        model,
        keep_io_types=True,
        disable_shape_infer=True,  # fails over 2 GB; the exporter already annotated shapes
        op_block_list=list(DEFAULT_OP_BLOCK_LIST) + list(FP32_ISLAND_OPS),
    )
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / "model.onnx"
    onnx.save_model(
        fp16,
        str(target),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location="model.onnx_data",
        size_threshold=1024,
    )
    return target
