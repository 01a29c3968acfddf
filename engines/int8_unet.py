"""int8 U-Net: ONNX Runtime's static QDQ quantization, calibrated on the pipeline's own feeds.

The fp32 folder (already built and verified) is run through sdrt's Pipeline on a fixed set
of prompts; every U-Net call's feeds are recorded (a recording proxy around the pipeline's
U-Net session, nothing global). ``quantize_static`` takes min/max activation ranges from
them (u8 activations, s8 per-channel weights, QDQ format, which ORT's CPU provider fuses
into VNNI int8 kernels), then the int8 graph is checked against the fp32 one on feeds of
prompts the calibration did not see; a graph above ``INT8_THRESHOLDS`` fails the build.
"""

from __future__ import annotations

import dataclasses
import platform
import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from sdrt.engines.compare import Thresholds, measure, summarize

from sdrt.errors import VerificationError
from sdrt.manifest import Component, VerificationCase, sha256_file

QUANTIZED_OP_TYPES = ("Conv", "MatMul", "Gemm")
# Normalisations and Softmax are never quantized (not in QUANTIZED_OP_TYPES); the first and
# last convolutions (conv_in, conv_out) stay fp32 too: they touch the latents themselves.
KEEP_FP32_NODE_PATTERNS = ("conv_in", "conv_out")
CALIBRATION_METHOD = "MinMax"
CALIBRATION_PROMPTS = (
    "a red fox in snow",
    "a photograph of an astronaut riding a horse",
    "a bowl of fruit on a wooden table, oil painting",
    "a city street at night in the rain, neon lights",
    "portrait of an old man, charcoal drawing",
    "a mountain lake at sunrise, mist",
)
HELD_OUT_PROMPTS = ("a lighthouse on a cliff during a storm", "a cat asleep on a windowsill")
CALIBRATION_STEPS = 6  # every step's feeds are recorded: a spread of timesteps
GUIDANCE = 7.5  # batch 2 (cond + uncond), as a default call runs; an LCM U-Net embeds it (batch 1)
# The int8 U-Net's output against the fp32 graph's on held-out prompts: max abs error over
# max |fp32| (the noise prediction's scale). Measured on the tiny random-weight U-Net
# (benchmarks/studies/int8_cost.py, 64 px): 0.11 with conv_in/conv_out kept fp32, 0.40 with them
# int8; the gate admits the first with ~2x room and fails the second.
INT8_THRESHOLDS = Thresholds(abs=1e-3, rel=0.25)
REFERENCE = "onnxruntime-fp32"


@dataclass(frozen=True)
class Int8Options:
    """How to calibrate: the prompts, the steps per prompt, and the call's size."""

    prompts: tuple[str, ...] = CALIBRATION_PROMPTS
    steps: int = CALIBRATION_STEPS
    size: int = 256
    per_channel: bool = True
    keep_fp32_patterns: tuple[str, ...] = KEEP_FP32_NODE_PATTERNS
    reduce_range: bool | None = None  # 7-bit weights; None: where the CPU lacks VNNI


VNNI_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")


def cpu_lacks_vnni(cpuinfo: str | None = None) -> bool:
    """Whether this is an x86 CPU without VNNI, where ONNX Runtime's u8 x s8 kernels
    (VPMADDUBSW) saturate their 16-bit sums: there ORT's advice is 7-bit weights
    (reduce_range). Measured on the tiny U-Net on an AVX2-only AMD EPYC: max rel error
    0.52 with 8-bit weights (the gate fails), against 0.11 on an AVX-512 VNNI Xeon.
    The NNCF method follows it too (engines/int8_unet_nncf.py: its overflow fix)."""
    if platform.machine().lower() not in ("x86_64", "amd64", "x86", "i686"):
        return False
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return True  # cannot tell: the safe choice
    flags = next((line for line in cpuinfo.splitlines() if line.startswith("flags")), "")
    return not any(flag in flags.split() for flag in VNNI_FLAGS)


def reduce_range_for(options: Int8Options) -> bool:
    return cpu_lacks_vnni() if options.reduce_range is None else options.reduce_range


class _RecordingSession:
    """A U-Net session that keeps a copy of every feed it runs."""

    def __init__(self, session):
        self._session = session
        self.inputs, self.outputs = session.inputs, session.outputs
        self.feeds: list[dict[str, np.ndarray]] = []

    def run(self, feeds):
        self.feeds.append({k: np.array(v, copy=True) for k, v in feeds.items()})
        return self._session.run(feeds)


def record_unet_feeds(
    folder: Path, prompts: Sequence[str], steps: int, size: int, seed: int = 0
) -> list[dict[str, np.ndarray]]:
    """The U-Net feeds sdrt's own pipeline makes for each prompt, every step."""
    from sdrt.backends.ort_cpu_options import OrtOptions
    from sdrt.pipeline import Pipeline

    # No saved optimised graph: it would be of the fp32 graph this build replaces.
    options = OrtOptions(cache_optimized_model=False)
    pipe = Pipeline.load(folder, backend="ort-cpu", ort_options=options)
    recorder = _RecordingSession(pipe.session("unet"))
    pipe.replace_session("unet", recorder)  # this Pipeline instance only
    for i, prompt in enumerate(prompts):
        pipe(
            prompt=prompt,
            num_inference_steps=steps,
            guidance_scale=GUIDANCE,
            height=size,
            width=size,
            seed=seed + i,
            output_type="np",
        )
    return recorder.feeds


def held_out_feeds(folder: Path, options: Int8Options) -> list[dict[str, np.ndarray]]:
    """The int8 check's feeds: the first and last step of each held-out prompt (prompts the
    calibration did not see)."""
    held = record_unet_feeds(folder, HELD_OUT_PROMPTS, options.steps, options.size, seed=100)
    per_prompt = len(held) // len(HELD_OUT_PROMPTS)
    return [
        held[i]
        for p in range(len(HELD_OUT_PROMPTS))
        for i in (p * per_prompt, (p + 1) * per_prompt - 1)
    ]


class _FeedReader:
    """onnxruntime.quantization's CalibrationDataReader protocol over recorded feeds, with
    the ``__len__``/``set_range`` its strided calibration (``CalibStridedMinMax``) asks for."""

    def __init__(self, feeds: Sequence[Mapping[str, np.ndarray]]):
        self._all = list(feeds)
        self._feeds: Iterator = iter(self._all)

    def __len__(self) -> int:
        return len(self._all)

    def set_range(self, start_index: int, end_index: int) -> None:
        self._feeds = iter(self._all[start_index:end_index])

    def get_next(self):
        return next(self._feeds, None)


def kept_fp32_nodes(onnx_file: Path, patterns: Sequence[str]) -> list[str]:
    """Names of the quantizable nodes whose name contains one of ``patterns``."""
    import onnx

    graph = onnx.load(str(onnx_file), load_external_data=False).graph
    return [
        n.name
        for n in graph.node
        if n.op_type in QUANTIZED_OP_TYPES and any(p in n.name for p in patterns)
    ]


def quantize_unet(
    fp32_file: Path, out_file: Path, feeds: Sequence[Mapping[str, np.ndarray]], options: Int8Options
) -> list[str]:
    """Write the QDQ int8 graph to ``out_file`` (external data beside it when large);
    return the names of the quantizable nodes kept in fp32."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    excluded = kept_fp32_nodes(fp32_file, options.keep_fp32_patterns)
    quantize_static(
        str(fp32_file),
        str(out_file),
        _FeedReader(feeds),
        quant_format=QuantFormat.QDQ,
        op_types_to_quantize=list(QUANTIZED_OP_TYPES),
        per_channel=options.per_channel,
        reduce_range=reduce_range_for(options),
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        nodes_to_exclude=excluded,
        calibrate_method=getattr(CalibrationMethod, CALIBRATION_METHOD),
        use_external_data_format=True,
        # Ranges merged after every feed, so that no feed's activations pile up. Not
        # CalibMaxIntermediateOutputs: onnxruntime (1.32 here) clears the collected outputs
        # at that count without merging their ranges (onnxruntime issue 18893), so only the
        # last len(feeds) % N feeds were calibrated, and a multiple of N (an LCM folder's
        # 2 prompts x 6 steps, one U-Net call each) failed with "No data is collected".
        extra_options={"CalibStridedMinMax": 1},
    )
    return excluded


def compare_int8(
    fp32_file: Path,
    int8_file: Path,
    feeds: Sequence[Mapping[str, np.ndarray]],
    thresholds: Thresholds = INT8_THRESHOLDS,
):
    """The int8 graph against the fp32 one on the same feeds (a Verification)."""
    import onnxruntime as ort

    candidate = ort.InferenceSession(str(int8_file), providers=["CPUExecutionProvider"])

    def run(name: str, feed: Mapping[str, np.ndarray]) -> np.ndarray:
        return candidate.run([name], dict(feed))[0]

    return compare_with_fp32(fp32_file, run, feeds, thresholds, "the int8 U-Net")


def compare_with_fp32(
    fp32_file: Path,
    run: Callable[[str, Mapping[str, np.ndarray]], np.ndarray],
    feeds: Sequence[Mapping[str, np.ndarray]],
    thresholds: Thresholds,
    candidate_name: str,
):
    """``run(output_name, feed)`` (an int8 U-Net) against ONNX Runtime's fp32 graph."""
    import onnxruntime as ort

    reference = ort.InferenceSession(str(fp32_file), providers=["CPUExecutionProvider"])
    # The noise prediction only: DeepCache's feature outputs are intermediate activations
    # whose relative error is larger; the image they lead to is what the tests check.
    name = reference.get_outputs()[0].name
    cases = []
    for feed in feeds:
        want = {name: reference.run([name], dict(feed))[0]}
        got = {name: run(name, feed)}
        max_abs, max_rel = measure(want, got, candidate_name=candidate_name)
        shapes = {k: tuple(int(d) for d in v.shape) for k, v in feed.items()}
        cases.append(VerificationCase(shapes, max_abs, max_rel))
    return summarize(REFERENCE, thresholds, cases)


def refuse_above_gate(label: str, verification, feeds: int, thresholds: Thresholds) -> None:
    """VerificationError when the int8 U-Net ``label`` failed its check."""
    if not verification.passed:
        raise VerificationError(
            f"unet ({label}) differs from the fp32 U-Net: max abs error "
            f"{verification.max_abs_error:.3g}, max rel error {verification.max_rel_error:.3g} "
            f"on {feeds} held-out feeds, above the int8 threshold "
            f"(rel {thresholds.rel:g}); build fp32 instead"
        )


def calibration_record(options: Int8Options, feeds: Sequence[Mapping[str, np.ndarray]]) -> dict:
    """What sdrt.json records of the calibration that ``feeds`` came from."""
    return {
        "prompts": len(options.prompts),
        "steps": options.steps,
        "size": options.size,
        "guidance_scale": GUIDANCE,
        "feeds": len(feeds),
        "timesteps": sorted({float(np.ravel(f["timestep"])[0]) for f in feeds}, reverse=True),
        "held_out_prompts": len(HELD_OUT_PROMPTS),
    }


def build_int8_unet(
    folder: Path,
    component: Component,
    options: Int8Options,
    thresholds: Thresholds = INT8_THRESHOLDS,
) -> Component:
    """Replace the folder's fp32 U-Net by its int8 graph; return its manifest record.

    ``folder`` is a complete fp32 build (the staging folder): its sdrt.json is rewritten by
    the caller. Raises VerificationError when the int8 graph is above INT8_THRESHOLDS.
    """
    import onnx
    from sdrt.engines.onnx_files import save_graph

    fp32_file = folder / component.file
    feeds = record_unet_feeds(folder, options.prompts, options.steps, options.size)
    check_feeds = held_out_feeds(folder, options)
    calibration = calibration_record(options, feeds)
    with tempfile.TemporaryDirectory(prefix=".int8-", dir=folder) as scratch:
        scratch_file = Path(scratch) / "model.onnx"
        excluded = quantize_unet(fp32_file, scratch_file, feeds, options)
        del feeds
        verification = compare_int8(fp32_file, scratch_file, check_feeds, thresholds)
        refuse_above_gate("int8", verification, len(check_feeds), thresholds)
        model = onnx.load(str(scratch_file))
        nodes = len(model.graph.node)
        unet_folder = fp32_file.parent
        for name in ("model.onnx", "model.onnx_data"):
            (unet_folder / name).unlink(missing_ok=True)
        saved = save_graph(model, unet_folder)
        del model
    shutil.rmtree(folder / ".scratch", ignore_errors=True)
    record: dict[str, Any] = {
        "method": f"onnxruntime quantize_static, QDQ, {CALIBRATION_METHOD} ranges",
        "activations": "uint8",
        "weights": "int8 per-channel" if options.per_channel else "int8 per-tensor",
        # 7-bit weights where the build CPU lacks VNNI (its u8 x s8 kernels saturate)
        "reduce_range": reduce_range_for(options),
        "op_types": list(QUANTIZED_OP_TYPES),
        "kept_fp32": {
            "op_types": "all others (normalisations, Softmax, activations, elementwise)",
            "nodes": excluded,
        },
        "calibration": calibration,
    }
    external = saved.external_data_file
    return dataclasses.replace(
        component,
        sha256=sha256_file(saved.onnx_file),
        precision="int8",
        external_data=f"{component.name}/{external.name}" if external else None,
        external_data_sha256=sha256_file(external) if external else None,
        node_counts={**component.node_counts, "int8": nodes},
        verification=verification,
        quantization=record,
    )
