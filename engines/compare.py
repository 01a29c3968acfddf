"""Engine parity: run an engine and its reference on the same inputs and measure the errors.

Every engine proves itself when built: for each verification shape (the profile's opt and
min shapes), seeded random inputs go through the reference (ONNX Runtime on the CPU, the
graph as exported) and the engine, and the largest absolute and relative error over all
outputs is recorded. Relative error is taken against the reference's scale (max |ref|),
not per element, so outputs that cross zero do not report huge ratios. A case passes when
either bound holds; the result is the manifest's ``Verification``.

Both sides are plain callables ``feeds -> {name: array}``, so this runs (and is tested) on
the CPU with two ONNX Runtime sessions; on a GPU the candidate is the TensorRT session.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np

from sdrt.errors import VerificationError
from sdrt.manifest import TensorSpec, Verification, VerificationCase

Runner = Callable[[Mapping[str, np.ndarray]], Mapping[str, np.ndarray]]

REFERENCE = "onnxruntime-fp32"


@dataclass(frozen=True)
class Thresholds:
    abs: float
    rel: float


# fp16 engines against the fp32 graph: the bounds the fp16 export is held to against
# eager PyTorch (export/verify.py), same metric; fp16 carries ~3 decimal digits.
FP16 = Thresholds(abs=1e-3, rel=3e-2)
# TensorRT's fp32 engines use TF32 tensor cores by default (10-bit mantissa products).
FP32 = Thresholds(abs=1e-2, rel=5e-3)


def sample_inputs(
    specs: tuple[TensorSpec, ...], shapes: Mapping[str, tuple[int, ...]], seed: int
) -> dict[str, np.ndarray]:
    """Seeded inputs in each input's usual range: unit noise, token ids, diffusion timesteps."""
    rng = np.random.default_rng(seed)
    feeds = {}
    for spec in specs:
        shape = tuple(shapes[spec.name])
        dtype = np.dtype(spec.dtype)
        if spec.name == "input_ids":
            # Ids below 256 exist in every CLIP BPE vocabulary (the byte tokens).
            value = rng.integers(0, 256, size=shape)
        elif spec.name == "timestep":
            value = rng.integers(0, 1000, size=shape)
        elif np.issubdtype(dtype, np.integer) or dtype == np.bool_:
            value = rng.integers(0, 2, size=shape)
        else:
            value = rng.standard_normal(shape)
        feeds[spec.name] = np.asarray(value).astype(dtype)
    return feeds


def measure(
    reference: Mapping[str, np.ndarray], candidate: Mapping[str, np.ndarray]
) -> tuple[float, float]:
    """(max abs error, max error / max |reference|) over every output the reference has."""
    missing = sorted(set(reference) - set(candidate))
    if missing:
        raise VerificationError(f"the engine did not return the outputs {missing}")
    max_abs, max_rel = 0.0, 0.0
    for name, ref in reference.items():
        ref = np.asarray(ref, dtype=np.float64)
        got = np.asarray(candidate[name], dtype=np.float64)
        if got.shape != ref.shape:
            raise VerificationError(
                f"output {name!r}: the engine returned shape {list(got.shape)}, "
                f"the reference {list(ref.shape)}"
            )
        if not np.all(np.isfinite(got)):
            return float("inf"), float("inf")
        err = float(np.max(np.abs(got - ref))) if ref.size else 0.0
        scale = float(np.max(np.abs(ref))) if ref.size else 0.0
        max_abs = max(max_abs, err)
        max_rel = max(max_rel, err / scale if scale > 0 else (0.0 if err == 0 else float("inf")))
    return max_abs, max_rel


def verify(
    reference: Runner,
    candidate: Runner,
    specs: tuple[TensorSpec, ...],
    cases: tuple[Mapping[str, tuple[int, ...]], ...],
    thresholds: Thresholds = FP16,
    *,
    seed: int = 0,
) -> Verification:
    """Compare ``candidate`` with ``reference`` on each set of input shapes."""
    results = []
    for i, shapes in enumerate(cases):
        feeds = sample_inputs(specs, shapes, seed + i)
        max_abs, max_rel = measure(reference(feeds), candidate(feeds))
        results.append(
            VerificationCase(
                input_shapes={k: tuple(v) for k, v in shapes.items()},
                max_abs_error=max_abs,
                max_rel_error=max_rel,
            )
        )
    passed = all(
        c.max_abs_error <= thresholds.abs or c.max_rel_error <= thresholds.rel for c in results
    )
    return Verification(
        reference=REFERENCE,
        threshold_abs=thresholds.abs,
        threshold_rel=thresholds.rel,
        cases=tuple(results),
        passed=passed,
    )


def verification_cases(
    profile: Mapping[str, Mapping[str, tuple[int, ...]]],
) -> tuple[dict[str, tuple[int, ...]], ...]:
    """The opt shapes, then the min shapes when they differ."""
    opt = {name: tuple(levels["opt"]) for name, levels in profile.items()}
    low = {name: tuple(levels["min"]) for name, levels in profile.items()}
    return (opt,) if low == opt else (opt, low)


def failure_message(component: str, verification: Verification) -> str:
    worst = max(verification.cases, key=lambda c: c.max_rel_error)
    return (
        f"{component}: the engine disagrees with the {verification.reference} reference: "
        f"max abs error {verification.max_abs_error:.3g} (threshold {verification.threshold_abs:g}), "
        f"max relative error {verification.max_rel_error:.3g} (threshold "
        f"{verification.threshold_rel:g}), worst at input shapes "
        f"{ {k: list(v) for k, v in worst.input_shapes.items()} }"
    )
