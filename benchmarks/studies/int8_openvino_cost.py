"""int8 U-Net paths side by side: ONNX Runtime QDQ (what `sdrt build --precision int8` makes)
against OpenVINO with NNCF post-training quantization of the same fp32 ONNX, in one process.

    pip install 'sdrt[openvino]' nncf     # nncf is this benchmark's only
    python -m sdrt.benchmarks.studies.int8_openvino_cost FP32_FOLDER INT8_FOLDER [--size 256]

FP32_FOLDER is an fp32 `sdrt build` output, INT8_FOLDER a `--precision int8` build of the same
weights (both left untouched). Issue 14 asks for whichever int8 path measures faster here.
Both are calibrated on the same feeds (sdrt's own pipeline, engines/int8_unet.py's prompts and
steps) and timed on the same held-out feed, alternately (A, B, C, D, A, ...), with the same
thread count; each int8 graph's error is its max abs difference from ONNX Runtime's fp32
output over max |fp32| (as the int8 build's gate measures it). Medians are printed as JSON
lines. Random weights make the error figures only a guide.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np

HELD_OUT_STEPS = 2  # held-out feeds per held-out prompt: the error check and the timed feed


def _ort_unet(folder: Path, threads: int) -> Callable[[Mapping[str, np.ndarray]], np.ndarray]:
    """The U-Net session sdrt's Pipeline runs for ``folder`` (its own options and graph)."""
    from sdrt.backends.ort_cpu_options import OrtOptions
    from sdrt.pipeline import Pipeline

    pipe = Pipeline.load(
        folder, backend="ort-cpu", ort_options=OrtOptions(intra_op_threads=threads)
    )
    session = pipe.session("unet")
    noise = session.outputs[0].name  # the noise prediction, as OpenVINO's output 0
    return lambda feed: np.asarray(session.run(dict(feed))[noise])


def _openvino(
    model, threads: int, precision: str
) -> Callable[[Mapping[str, np.ndarray]], np.ndarray]:
    """A compiled OpenVINO model. ``precision`` is what runs what is not int8: on a CPU with
    bf16 instructions OpenVINO's default is bf16, so f32 is asked for explicitly where the
    comparison is with ONNX Runtime's fp32."""
    import openvino as ov

    compiled = ov.Core().compile_model(
        model,
        "CPU",
        {
            "INFERENCE_NUM_THREADS": threads,
            "PERFORMANCE_HINT": "LATENCY",
            "INFERENCE_PRECISION_HINT": precision,
        },
    )
    request = compiled.create_infer_request()
    return lambda feed: np.asarray(request.infer(dict(feed))[0]).copy()


def relative_error(reference: np.ndarray, candidate: np.ndarray) -> float:
    """max |candidate - reference| / max |reference|: the int8 build gate's measure."""
    return float(np.abs(candidate - reference).max() / np.abs(reference).max())


def interleaved(calls: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Median seconds of each call, run alternately after one warm-up each."""
    times: dict[str, list[float]] = {name: [] for name in calls}
    for call in calls.values():
        call()
    for _ in range(repeats):
        for name, call in calls.items():
            t0 = time.perf_counter()
            call()
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(t) for name, t in times.items()}


def measure(fp32: Path, int8: Path, size: int, repeats: int, threads: int) -> list[dict]:
    from sdrt.engines import int8_unet, int8_unet_nncf

    from sdrt.manifest import read_manifest

    calibration = int8_unet.record_unet_feeds(
        fp32, int8_unet.CALIBRATION_PROMPTS, int8_unet.CALIBRATION_STEPS, size
    )
    held_out = int8_unet.record_unet_feeds(
        fp32, int8_unet.HELD_OUT_PROMPTS, HELD_OUT_STEPS, size, seed=100
    )
    onnx_file = fp32 / read_manifest(fp32).components["unet"].file
    keep_fp32 = int8_unet.kept_fp32_nodes(onnx_file, int8_unet.KEEP_FP32_NODE_PATTERNS)
    t0 = time.perf_counter()
    # the overflow fix the build would choose on this CPU (7-bit weights without VNNI)
    overflow_fix = int8_unet_nncf.overflow_fix_for(int8_unet.Int8Options())
    nncf_model = int8_unet_nncf.quantize(onnx_file, calibration, keep_fp32, overflow_fix)
    nncf_seconds = time.perf_counter() - t0
    del calibration

    import openvino as ov

    fp32_model = ov.Core().read_model(str(onnx_file))
    qdq_model = ov.Core().read_model(str(int8 / read_manifest(int8).components["unet"].file))
    runners = {
        "onnxruntime fp32": _ort_unet(fp32, threads),
        "onnxruntime int8 (QDQ, sdrt build)": _ort_unet(int8, threads),
        "openvino fp32": _openvino(fp32_model, threads, "f32"),
        # what backend="openvino" runs for a --precision int8 folder
        "openvino on sdrt's int8 QDQ graph, rest f32": _openvino(qdq_model, threads, "f32"),
        "openvino int8 (NNCF), rest f32": _openvino(nncf_model, threads, "f32"),
    }
    if "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"):
        # OpenVINO's default on this CPU: shown because it is what a user gets untuned
        runners["openvino bf16 (its default here)"] = _openvino(fp32_model, threads, "bf16")
        runners["openvino int8 (NNCF), rest bf16"] = _openvino(nncf_model, threads, "bf16")
        runners["openvino on sdrt's int8 QDQ graph, rest bf16"] = _openvino(
            qdq_model, threads, "bf16"
        )
    references = [runners["onnxruntime fp32"](feed) for feed in held_out]
    errors = {
        name: max(relative_error(r, run(f)) for r, f in zip(references, held_out, strict=True))
        for name, run in runners.items()
    }
    timed = held_out[0]
    medians = interleaved({n: (lambda r=r: r(timed)) for n, r in runners.items()}, repeats)
    fp32_step = medians["onnxruntime fp32"]
    batch = int(timed["sample"].shape[0])
    return [
        {
            "runtime": name,
            "unet_step_s": round(seconds, 4),
            "speedup_vs_onnxruntime_fp32": round(fp32_step / seconds, 3),
            "max_rel_error_vs_onnxruntime_fp32": round(errors[name], 4),
            "size": size,
            "batch": batch,
            "threads": threads,
            "repeats": repeats,
            "calibration_feeds": len(int8_unet.CALIBRATION_PROMPTS) * int8_unet.CALIBRATION_STEPS,
            **({"nncf_quantize_s": round(nncf_seconds, 1)} if "NNCF" in name else {}),
        }
        for name, seconds in medians.items()
    ]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("fp32", type=Path, help="an fp32 `sdrt build` folder")
    parser.add_argument("int8", type=Path, help="a `--precision int8` build of the same weights")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args(argv)
    machine = {"cpu": platform.processor() or platform.machine(), "load": os.getloadavg()[0]}
    for row in measure(args.fp32, args.int8, args.size, args.repeats, args.threads):
        print(json.dumps({**row, **machine}), flush=True)


if __name__ == "__main__":
    main()
