"""Export verification: ONNX Runtime against eager PyTorch on the same inputs.

Each component is run at two different input shapes (batch and image size differ). Per
output, the absolute error is max |onnx - torch| and the relative error is that divided by
max |torch| (the output's scale), so one threshold fits outputs of any magnitude. A case
passes when its absolute error is within the threshold or its relative error is (the
absolute floor only matters for outputs that are nearly zero). NaN or inf anywhere fails.
The reference is always the fp32 eager model, also for fp16 graphs.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from sdrt.errors import VerificationError
from sdrt.manifest import Verification, VerificationCase

REFERENCE = "torch-eager"


@dataclass(frozen=True)
class Thresholds:
    abs: float
    rel: float


# fp32 graphs differ from eager PyTorch only by kernel order of operations.
FP32_THRESHOLDS = Thresholds(abs=1e-5, rel=2e-4)
# fp16 graphs (fp32 islands, fp32 I/O) carry ~3 decimal digits through deep networks.
FP16_THRESHOLDS = Thresholds(abs=1e-3, rel=3e-2)
THRESHOLDS = {"fp32": FP32_THRESHOLDS, "fp16": FP16_THRESHOLDS}


@dataclass(frozen=True)
class ReferenceCase:
    """Inputs and the eager PyTorch outputs for one verification shape."""

    inputs: Mapping[str, np.ndarray]
    outputs: Mapping[str, np.ndarray]


def torch_reference(
    module: torch.nn.Module, inputs: Mapping[str, torch.Tensor], output_names: tuple[str, ...]
) -> ReferenceCase:
    with torch.no_grad():
        outputs = module(*inputs.values())
    if isinstance(outputs, torch.Tensor):
        outputs = (outputs,)
    return ReferenceCase(
        inputs={k: v.numpy() for k, v in inputs.items()},
        outputs={n: o.float().numpy() for n, o in zip(output_names, outputs, strict=True)},
    )


def output_errors(actual: np.ndarray, expected: np.ndarray) -> tuple[float, float]:
    """(max abs error, max abs error / max |expected|); inf when anything is not finite."""
    if actual.shape != expected.shape:
        raise VerificationError(
            f"output shape {actual.shape} differs from the reference's {expected.shape}"
        )
    actual = actual.astype(np.float64)
    expected = expected.astype(np.float64)
    if not (np.isfinite(actual).all() and np.isfinite(expected).all()):
        return math.inf, math.inf
    max_abs = float(np.max(np.abs(actual - expected), initial=0.0))
    scale = float(np.max(np.abs(expected), initial=0.0))
    return max_abs, (max_abs / scale if scale > 0 else (0.0 if max_abs == 0 else math.inf))


def compare_with_onnxruntime(
    onnx_file: Path, cases: list[ReferenceCase], thresholds: Thresholds
) -> Verification:
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    results = []
    passed = True
    for case in cases:
        names = list(case.outputs)
        outputs = session.run(names, dict(case.inputs))
        errors = [
            output_errors(np.asarray(o), case.outputs[n])
            for n, o in zip(names, outputs, strict=True)
        ]
        max_abs = max(e[0] for e in errors)
        max_rel = max(e[1] for e in errors)
        passed = passed and (max_abs <= thresholds.abs or max_rel <= thresholds.rel)
        results.append(
            VerificationCase(
                input_shapes={k: tuple(int(d) for d in v.shape) for k, v in case.inputs.items()},
                max_abs_error=max_abs,
                max_rel_error=max_rel,
            )
        )
    return Verification(
        reference=REFERENCE,
        threshold_abs=thresholds.abs,
        threshold_rel=thresholds.rel,
        cases=tuple(results),
        passed=passed,
    )


def describe(verification: Verification) -> str:
    return (
        f"max abs error {verification.max_abs_error:.3g}, "
        f"max rel error {verification.max_rel_error:.3g} "
        f"over {len(verification.cases)} shapes"
    )


def check_passed(component: str, precision: str, verification: Verification) -> None:
    """Raise VerificationError naming the component and its error when it failed."""
    if verification.passed:
        return
    raise VerificationError(
        f"{component} ({precision}) differs from eager PyTorch: {describe(verification)}, "
        f"above the {precision} threshold (abs {verification.threshold_abs:g} "
        f"or rel {verification.threshold_rel:g})"
    )
