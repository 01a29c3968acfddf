"""int8 U-Net for the openvino backend: NNCF's post-training quantization, written as OpenVINO IR.

``sdrt build --precision int8 --int8-method nncf``. The fp32 folder (built and verified) is
run through sdrt's Pipeline on the same prompts and steps as the ONNX Runtime method
(engines/int8_unet.py records the feeds); NNCF quantizes the fp32 U-Net as OpenVINO reads it:
the transformer model type (SmoothQuant, attention Softmax and normalisations left fp32), the
mixed preset (asymmetric activations), and the same first and last convolutions kept fp32.
Where the build CPU lacks VNNI, weights get 7 bits in every layer (NNCF's overflow fix), as
the ONNX Runtime method's ``reduce_range``: the same probe decides both. The result is checked
against ONNX Runtime's fp32 U-Net on feeds of held-out prompts, under the same
``INT8_THRESHOLDS``, and written beside the fp32 graph as ``unet/openvino_model.xml``
and ``.bin`` (Optimum Intel's names). The ONNX graph stays fp32: ort-cpu runs it, exact;
the openvino backend runs the IR.

Why a second method: on the two CPUs measured (benchmarks/studies/int8_openvino_cost.py, README), the
NNCF-quantized U-Net on OpenVINO ran a step 1.35x (AVX-512 VNNI, AMD) and 1.97x (AMX, Intel)
faster than ONNX Runtime's QDQ graph on ONNX Runtime, with about half the error.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from sdrt.engines.compare import Thresholds
from sdrt.engines.int8_unet import (
    INT8_THRESHOLDS,
    Int8Options,
    calibration_record,
    compare_with_fp32,
    held_out_feeds,
    kept_fp32_nodes,
    record_unet_feeds,
    reduce_range_for,
    refuse_above_gate,
)

from sdrt.errors import InputError
from sdrt.manifest import Component, OpenVinoGraph, sha256_file

METHOD = "nncf"
IR_FILE = "openvino_model.xml"  # and openvino_model.bin beside it
INSTALL_HINT = "pip install 'sdrt[nncf]'"


def check_nncf_installed() -> None:
    """InputError naming the install when NNCF or OpenVINO is missing (before any export)."""
    import importlib.util

    missing = [m for m in ("nncf", "openvino") if importlib.util.find_spec(m) is None]
    if missing:
        raise InputError(
            f"--int8-method nncf needs {' and '.join(missing)}, which this environment "
            f"lacks: {INSTALL_HINT}"
        )


def overflow_fix_for(options: Int8Options) -> str:
    """NNCF's overflow fix (an ``nncf.OverflowFix`` value): ``"enable"`` (7-bit weights in
    every layer) where the ONNX Runtime method would take 7-bit weights (``reduce_range``: the
    build CPU lacks VNNI, and OpenVINO's AVX2 u8 x s8 kernels saturate their 16-bit sums as
    ONNX Runtime's do); NNCF's default, ``"first_layer_only"``, otherwise."""
    return "enable" if reduce_range_for(options) else "first_layer_only"


def quantize(
    onnx_file: Path,
    feeds: Sequence[Mapping[str, np.ndarray]],
    keep_fp32: list[str],
    overflow_fix: str = "first_layer_only",
):
    """NNCF's quantized ov.Model of the fp32 graph (see the module docstring)."""
    import nncf
    import openvino as ov

    model = ov.Core().read_model(str(onnx_file))
    return nncf.quantize(
        model,
        nncf.Dataset(list(feeds)),
        preset=nncf.QuantizationPreset.MIXED,
        model_type=nncf.ModelType.TRANSFORMER,
        subset_size=len(feeds),
        ignored_scope=nncf.IgnoredScope(names=keep_fp32, validate=False),
        advanced_parameters=nncf.AdvancedQuantizationParameters(
            overflow_fix=nncf.OverflowFix(overflow_fix)
        ),
    )


def compare_ir(
    fp32_file: Path,
    ir_file: Path,
    feeds: Sequence[Mapping[str, np.ndarray]],
    thresholds: Thresholds = INT8_THRESHOLDS,
):
    """The IR on OpenVINO (f32 for what is not int8) against ONNX Runtime's fp32 graph on
    the same feeds, as the ONNX Runtime method checks its graph."""
    import openvino as ov

    compiled = ov.Core().compile_model(str(ir_file), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    request = compiled.create_infer_request()

    ports = {n: o for o in compiled.outputs for n in o.get_names()}

    def run(name: str, feed: Mapping[str, np.ndarray]) -> np.ndarray:
        return request.infer(dict(feed))[ports[name]]

    return compare_with_fp32(fp32_file, run, feeds, thresholds, "the NNCF int8 U-Net")


def build_nncf_unet(
    folder: Path,
    component: Component,
    options: Int8Options,
    thresholds: Thresholds = INT8_THRESHOLDS,
) -> Component:
    """Write the U-Net's NNCF int8 IR beside its fp32 graph; return the component's record
    with it (``openvino``). Raises VerificationError above ``thresholds``, leaving no IR."""
    import openvino as ov

    fp32_file = folder / component.file
    feeds = record_unet_feeds(folder, options.prompts, options.steps, options.size)
    check_feeds = held_out_feeds(folder, options)
    calibration = calibration_record(options, feeds)
    keep_fp32 = kept_fp32_nodes(fp32_file, options.keep_fp32_patterns)
    overflow_fix = overflow_fix_for(options)
    model = quantize(fp32_file, feeds, keep_fp32, overflow_fix)
    del feeds
    ir_file = fp32_file.parent / IR_FILE
    weights_file = ir_file.with_suffix(".bin")
    ov.save_model(model, str(ir_file), compress_to_fp16=False)
    del model
    verification = compare_ir(fp32_file, ir_file, check_feeds, thresholds)
    if not verification.passed:
        ir_file.unlink(missing_ok=True)
        weights_file.unlink(missing_ok=True)
    refuse_above_gate("NNCF int8", verification, len(check_feeds), thresholds)
    record: dict[str, Any] = {
        "method": "nncf quantize (OpenVINO), mixed preset, transformer model type",
        "nncf_version": _version("nncf"),
        "activations": "uint8 (asymmetric)",
        "weights": "int8 per-channel (symmetric)",
        # "enable": 7-bit weights in every layer, where the build CPU lacks VNNI
        "overflow_fix": overflow_fix,
        "kept_fp32": {
            "op_types": "NNCF's transformer model type: Softmax, normalisations, elementwise",
            "nodes": keep_fp32,
        },
        "calibration": calibration,
    }
    rel = component.file.rsplit("/", 1)[0]
    graph = OpenVinoGraph(
        file=f"{rel}/{ir_file.name}",
        sha256=sha256_file(ir_file),
        weights=f"{rel}/{weights_file.name}",
        weights_sha256=sha256_file(weights_file),
        precision="int8",
        openvino_version=ov.get_version(),
        quantization=record,
        verification=verification,
    )
    return dataclasses.replace(component, openvino=graph)


def _version(name: str) -> str:
    from importlib.metadata import version

    return version(name)
