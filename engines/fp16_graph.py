"""fp16 ONNX graphs: the one conversion, for fp16 exports and for strongly typed TensorRT.

``sdrt build --precision fp16`` converts each cleaned graph here (export/onnx.py), and so does
an fp16 TensorRT build from an fp32 folder: TensorRT 10 builds fp16 engines from fp32 graphs
with a builder flag (weak typing); TensorRT 11 removed that flag: every network is strongly
typed and runs in the types its graph declares. The conversion is ONNX Runtime's float16
converter: fp16 weights and activations, normalisations kept in fp32 (their reductions
overflow or lose precision in fp16), fp32 inputs and outputs so the graph keeps the folder's
I/O contract (the casts at the boundary cost little). For TensorRT the copy is written to a
scratch folder, built from, and deleted.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from sdrt.errors import BackendUnavailableError

if TYPE_CHECKING:
    import onnx

# Ops kept in fp32 in fp16 graphs: normalisations reduce over many values (means and
# variances overflow or lose precision in fp16). GroupNorm exports as InstanceNormalization.
FP32_ISLAND_OPS = ("InstanceNormalization", "LayerNormalization", "GroupNormalization")


def convert_to_fp16(model: onnx.ModelProto) -> onnx.ModelProto:
    """fp16 weights and activations, fp32 islands for FP32_ISLAND_OPS, fp32 inputs and outputs."""
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

    return convert_float_to_float16(
        model,
        keep_io_types=True,
        # Fails over 2 GB; the exporter already annotated the shapes where it could.
        disable_shape_infer=True,
        op_block_list=list(DEFAULT_OP_BLOCK_LIST) + list(FP32_ISLAND_OPS),
    )


def write_fp16_copy(onnx_path: Path, folder: Path) -> Path:
    """Convert ``onnx_path`` (external data included) to fp16 and save it in ``folder``."""
    try:
        import onnx
        from onnxruntime.transformers import float16  # noqa: F401  (convert_to_fp16's)
    except ImportError as e:
        raise BackendUnavailableError(
            f"converting an fp32 graph to fp16 for TensorRT needs the onnx package ({e.name} "
            "is missing): pip install onnx, or build the folder with `sdrt build --precision fp16`"
        ) from None
    fp16 = convert_to_fp16(onnx.load(str(onnx_path)))
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
