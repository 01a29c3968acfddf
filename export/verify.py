"""Export verification: ONNX Runtime against eager PyTorch on the same inputs.

Each component is run at two different input shapes (batch and image size differ); the
errors are measured, and a case passes, as every build step measures it (engines/compare.py:
max abs error, and that relative to the reference's scale; either bound holding passes; NaN
or inf anywhere fails). The reference is always the fp32 eager model, also for fp16 graphs.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from sdrt.engines.compare import FP16, Thresholds, measure, summarize

from sdrt.errors import VerificationError
from sdrt.manifest import Verification, VerificationCase

REFERENCE = "torch-eager"

# fp32 graphs differ from eager PyTorch only by kernel order of operations.
FP32_THRESHOLDS = Thresholds(abs=1e-5, rel=2e-4)
THRESHOLDS = {"fp32": FP32_THRESHOLDS, "fp16": FP16}


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


def compare_with_onnxruntime(
    onnx_file: Path, cases: list[ReferenceCase], thresholds: Thresholds
) -> Verification:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3  # not a warning per overridable (LoRA-ready) weight
    session = ort.InferenceSession(str(onnx_file), options, providers=["CPUExecutionProvider"])
    results = []
    for case in cases:
        names = list(case.outputs)
        outputs = dict(zip(names, session.run(names, dict(case.inputs)), strict=True))
        max_abs, max_rel = measure(case.outputs, outputs, candidate_name="ONNX Runtime")
        results.append(
            VerificationCase(
                input_shapes={k: tuple(int(d) for d in v.shape) for k, v in case.inputs.items()},
                max_abs_error=max_abs,
                max_rel_error=max_rel,
            )
        )
    return summarize(REFERENCE, thresholds, results)


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
