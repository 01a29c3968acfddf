"""int8 U-Net against fp32: step time, end-to-end time and image difference, in one process.

    python -m sdrt.benchmarks.studies.int8_cost FP32_FOLDER --work DIR [--size 256] [--steps 10]

FP32_FOLDER is an fp32 `sdrt build` output (left untouched). For each variant (what is
kept in fp32, per-channel or per-tensor weights) a copy of it is made under DIR (hard
links, the U-Net replaced by its int8 graph through engines/int8_unet.py, as `sdrt build
--precision int8` does), then the fp32 and int8 pipelines run alternately (A, B, A, B...)
and medians are printed as JSON lines. Random weights make quality figures only a guide.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import shutil
import statistics
import time
from pathlib import Path

import numpy as np

VARIANTS = {
    "per-channel, conv_in/conv_out fp32": {},
    "per-channel, all convs int8": {"keep_fp32_patterns": ()},
    "per-tensor, conv_in/conv_out fp32": {"per_channel": False},
}


def int8_copy(fp32: Path, out: Path, options) -> float:
    """``fp32`` hard-linked to ``out`` (engines/ left out), its U-Net made int8; seconds."""
    from sdrt.engines.compare import Thresholds
    from sdrt.engines.int8_unet import build_int8_unet

    from sdrt.integrity import record_verified
    from sdrt.manifest import read_manifest, write_manifest

    shutil.rmtree(out, ignore_errors=True)
    shutil.copytree(fp32, out, copy_function=os.link, ignore=shutil.ignore_patterns("engines"))
    manifest = read_manifest(out)
    t0 = time.perf_counter()
    # No gate here: a variant above the build's threshold is measured and reported too.
    admit_all = Thresholds(abs=float("inf"), rel=float("inf"))
    unet = build_int8_unet(out, manifest.components["unet"], options, admit_all)
    seconds = time.perf_counter() - t0
    manifest = dataclasses.replace(manifest, components={**manifest.components, "unet": unet})
    write_manifest(out, manifest)
    record_verified(out, manifest)
    return seconds


def interleaved(calls: dict, repeats: int) -> dict[str, float]:
    """Median seconds of each call, run alternately after one warm-up each."""
    times = {name: [] for name in calls}
    for call in calls.values():
        call()
    for _ in range(repeats):
        for name, call in calls.items():
            t0 = time.perf_counter()
            call()
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(t) for name, t in times.items()}


def measure(fp32_folder: Path, int8_folder: Path, size: int, steps: int, repeats: int) -> dict:
    from sdrt.engines.compare import psnr

    from sdrt.pipeline import Pipeline

    pipes = {"fp32": Pipeline.load(fp32_folder), "int8": Pipeline.load(int8_folder)}
    m = pipes["fp32"].manifest
    latent = size // m.vae_scale_factor
    rng = np.random.default_rng(0)
    feeds = {
        "sample": rng.standard_normal((2, m.latent_channels, latent, latent), dtype=np.float32),
        "encoder_hidden_states": rng.standard_normal(
            (2, 77, m.components["unet"].inputs[2].shape[2]), dtype=np.float32
        ),
    }
    sessions = {name: pipe.session("unet") for name, pipe in pipes.items()}
    timestep = sessions["fp32"].inputs[1]
    feeds["timestep"] = np.full(
        [2 if d else 1 for d in timestep.shape] if timestep.shape else [], 500, timestep.dtype
    )
    step = interleaved({n: (lambda s=s: s.run(feeds)) for n, s in sessions.items()}, repeats)
    latents = rng.standard_normal((1, m.latent_channels, latent, latent), dtype=np.float32)

    def generate(pipe):
        return pipe(
            prompt="a red fox in snow",
            num_inference_steps=steps,
            height=size,
            width=size,
            latents=latents,
            output_type="np",
        ).images

    images = {n: generate(p) for n, p in pipes.items()}
    e2e = interleaved(
        {n: (lambda p=p: generate(p)) for n, p in pipes.items()}, max(1, repeats // 2)
    )
    diff = np.abs(images["int8"] - images["fp32"])
    return {
        "unet_step_s": step,
        "unet_speedup": step["fp32"] / step["int8"],
        "end_to_end_s": e2e,
        "end_to_end_speedup": e2e["fp32"] / e2e["int8"],
        "image_psnr_db": psnr(images["int8"], images["fp32"]),
        "image_max_abs": float(diff.max()),
        "image_mean_abs": float(diff.mean()),
    }


def main(argv=None) -> None:
    from sdrt.engines.int8_unet import INT8_THRESHOLDS, Int8Options

    from sdrt.manifest import read_manifest

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("fp32", type=Path)
    parser.add_argument("--work", type=Path, required=True, help="where the int8 copies go")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--variants", nargs="*", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--keep", action="store_true", help="keep the int8 copies")
    args = parser.parse_args(argv)
    build = read_manifest(args.fp32).build
    flags = ""
    if Path("/proc/cpuinfo").is_file():
        words = set(Path("/proc/cpuinfo").read_text().split())
        flags = " ".join(sorted(w for w in words if "vnni" in w or w.startswith("avx512")))
    print(
        json.dumps(
            {
                "machine": platform.processor() or platform.machine(),
                "cpu_flags": flags,
                "cores": os.cpu_count(),
            }
        )
    )
    for i, name in enumerate(args.variants):
        options = Int8Options(size=build.min_size, **VARIANTS[name])
        out = args.work / f"int8-{i}"
        seconds = int8_copy(args.fp32, out, options)
        unet = read_manifest(out).components["unet"]
        row = {
            "variant": name,
            "size": args.size,
            "batch": 2,
            "steps": args.steps,
            "backend": "ort-cpu",
            "quantize_s": seconds,
            "calibration": unet.quantization["calibration"] | {"timesteps": "..."},
            "unet_vs_fp32_max_rel": unet.verification.max_rel_error,
            "passes_build_gate": INT8_THRESHOLDS.admits(
                unet.verification.max_abs_error, unet.verification.max_rel_error
            ),
            **measure(args.fp32, out, args.size, args.steps, args.repeats),
        }
        print(json.dumps(row), flush=True)
        if not args.keep:
            shutil.rmtree(out)


if __name__ == "__main__":
    main()
