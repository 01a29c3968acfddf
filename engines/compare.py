"""Parity: the error measure and the fp16 thresholds every build step holds itself to.

Both build steps use what is here: the export compares ONNX Runtime with eager PyTorch
(export/verify.py), an engine build compares the engine with ONNX Runtime fp32. Per output,
the absolute error is max |candidate - reference| and the relative error is that divided by
max |reference| (the output's scale, not per element, so outputs that cross zero do not
report huge ratios and one threshold fits outputs of any magnitude); the largest of each
over all outputs is recorded. A case passes when either bound holds (the absolute floor only
matters for outputs that are nearly zero); NaN or inf anywhere fails. The result is the
manifest's ``Verification``.

Engines prove themselves for each verification shape (the profile's opt and min shapes):
seeded random inputs go through the reference (ONNX Runtime on the CPU, the graph as
exported) and the engine. Both sides are plain callables ``feeds -> {name: array}``, so this
runs (and is tested) on the CPU with two ONNX Runtime sessions; on a GPU the candidate is the
TensorRT session.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
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

    def admits(self, max_abs: float, max_rel: float) -> bool:
        """Whether errors of this size pass: either bound holding is enough."""
        return max_abs <= self.abs or max_rel <= self.rel


# fp16 graphs (fp32 islands, fp32 I/O) carry ~3 decimal digits through deep networks: the
# bound for fp16 exports against eager PyTorch and for fp16 engines against the fp32 graph.
# Measured (ORT CPU, fp16 copies of the tiny model's components against their fp32 graphs,
# seeded inputs at 64..128 px, batch 1-2): max relative error 0.0011 (text encoder), 0.0051
# (U-Net), 0.0040 (VAE decoder), 0.0014 (VAE encoder); the gate leaves 2x over the worst.
# The absolute floor is fp16's unit roundoff at 1 (2^-10): it only admits outputs whose
# scale is below ~0.1, where the relative bound would ask for more digits than fp16 has.
FP16 = Thresholds(abs=1e-3, rel=1e-2)
# fp32 engines are built with TF32 off (TensorRTBuilder passes tf32=False, Polygraphy's
# default too: CreateConfig clears BuilderFlag.TF32 unless asked), so they differ from ORT
# fp32 on the CPU only by kernel order of operations (fp32 rounding, ~1e-6 relative per
# layer); 1e-4 leaves room for deep networks, and TF32 products (10-bit mantissa, ~1e-3)
# would fail it.
FP32 = Thresholds(abs=1e-5, rel=1e-4)

# Whole images, fp16 against fp32 (pixels in [0, 1]): the same settings through the fp16
# and the fp32 folder of the tiny model on ORT CPU differ by mean 0.0002, max 0.002 (PSNR
# 71-72 dB, seeds 0-2, 4 steps, 64 px, 2 prompts). The gates leave 10x (20 dB) for GPU
# fp16 kernels, which may accumulate in fp16 where the CPU's do not.
FP16_IMAGE_MAX_ABS = 0.02  # ~5/255
FP16_IMAGE_MEAN_ABS = 0.002
FP16_IMAGE_MIN_PSNR = 50.0  # dB
# fp32 images on the GPU against the CPU (TF32 off): fp32 rounding only.
FP32_IMAGE_MIN_PSNR = 80.0  # dB


def psnr(a, b, peak: float = 1.0) -> float:
    """Peak signal-to-noise ratio of two images in [0, peak], in dB (inf when equal)."""
    mse = float(np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2))
    return math.inf if mse == 0 else 10.0 * math.log10(peak * peak / mse)


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


def output_errors(actual: np.ndarray, expected: np.ndarray) -> tuple[float, float]:
    """(max abs error, max abs error / max |expected|) of two arrays of one shape; inf when
    anything is not finite."""
    actual = np.asarray(actual, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    if not (np.isfinite(actual).all() and np.isfinite(expected).all()):
        return math.inf, math.inf
    max_abs = float(np.max(np.abs(actual - expected), initial=0.0))
    scale = float(np.max(np.abs(expected), initial=0.0))
    return max_abs, (max_abs / scale if scale > 0 else (0.0 if max_abs == 0 else math.inf))


def measure(
    reference: Mapping[str, np.ndarray],
    candidate: Mapping[str, np.ndarray],
    *,
    candidate_name: str = "the engine",
) -> tuple[float, float]:
    """The largest ``output_errors`` over every output the reference has."""
    missing = sorted(set(reference) - set(candidate))
    if missing:
        raise VerificationError(f"{candidate_name} did not return the outputs {missing}")
    max_abs, max_rel = 0.0, 0.0
    for name, ref in reference.items():
        got = np.asarray(candidate[name])
        if got.shape != np.shape(ref):
            raise VerificationError(
                f"output {name!r}: {candidate_name} returned shape {list(got.shape)}, "
                f"the reference {list(np.shape(ref))}"
            )
        err, rel = output_errors(got, ref)
        max_abs, max_rel = max(max_abs, err), max(max_rel, rel)
    return max_abs, max_rel


def summarize(
    reference: str, thresholds: Thresholds, cases: Sequence[VerificationCase]
) -> Verification:
    """The manifest's record of the cases measured; passed when every case is admitted."""
    return Verification(
        reference=reference,
        threshold_abs=thresholds.abs,
        threshold_rel=thresholds.rel,
        cases=tuple(cases),
        passed=all(thresholds.admits(c.max_abs_error, c.max_rel_error) for c in cases),
    )


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
    return summarize(REFERENCE, thresholds, results)


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
