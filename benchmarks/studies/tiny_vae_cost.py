"""What the tiny VAE (TAESD) saves: its decode time against the full VAE's, in one process,
and what that changes in a whole generation.

    python -m sdrt.benchmarks.studies.tiny_vae_cost --work DIR [--sizes 256 512] [--rounds 7]
        [--e2e FOLDER --steps 10 --e2e-size 256 --e2e-rounds 3] [--json OUT.json]

Decode: DIR gets a random-weight folder with SD 1.5's full-size VAE (AutoencoderKL, 83M
parameters with its encoder) and TAESD's full-size config (diffusers' AutoencoderTiny,
madebyollin/taesd), around the tiny U-Net and text encoder (they are not timed: a full SD
1.5 U-Net is not needed, and no bigmem lock). It is built with ``--tiny-vae`` and loaded on
ort-cpu; ``Pipeline.decode`` (the session run and the postprocessing a call does) is
timed for both VAEs on the same latents, batch 1, alternating full, tiny, full, ... so that
a shared machine's load falls on both alike; medians.

End to end (``--e2e FOLDER``, a folder built from ``sdrt init-model sd15`` with
``--tiny-vae``, e.g. from ``sdrt init-model taesd``): ``--steps``-step generations at
``--e2e-size`` px with vae="full" and vae="tiny", alternating, medians of the whole call
and of its vae_decode stage.

Quality: PSNR and max difference of the tiny-VAE image against the full-VAE image on the
same latents. With random weights the two VAEs are unrelated networks, so the figure is
only a guide (a trained TAESD is close to its VAE; these are not).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import time
from pathlib import Path

import numpy as np

import sdrt

VAES = ("full", "tiny")
PROMPT = "a red fox in the snow"


def make_vae_folder(work: Path, sizes: list[int]) -> Path:
    """The tiny pipeline with SD 1.5's full-size VAE and a full-size TAESD, built."""
    from sdrt.export.architectures import SD15_VAE, Component
    from sdrt.export.build import BuildConfig, build
    from sdrt.export.random_model import _write_component, init_random_model
    from sdrt.export.random_tiny_vae import init_random_tiny_vae

    source = init_random_model("tiny", work / "src", seed=0, force=True)
    vae = Component("diffusers", "AutoencoderKL", SD15_VAE)
    _write_component("vae", vae, source / "vae", seed=0, vocab_size=0)
    taesd = init_random_tiny_vae("taesd", work / "taesd", seed=0, force=True)
    config = BuildConfig(
        source=str(source),
        output=work / "built",
        min_size=min(sizes),
        max_size=max(sizes),
        max_batch=1,
        force=True,
        tiny_vae=str(taesd),
    )
    return build(config).output


def _interleaved(calls: dict, rounds: int) -> dict[str, list[float]]:
    """Seconds of each call, ``rounds`` times, alternating between them (after one warm-up)."""
    for call in calls.values():
        call()
    times: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(rounds):
        for name, call in calls.items():
            t0 = time.perf_counter()
            call()
            times[name].append(time.perf_counter() - t0)
    return times


def image_difference(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    """PSNR (dB, images in [0, 1]) and max abs difference."""
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return {
        "psnr_db": math.inf if mse == 0 else 10 * math.log10(1.0 / mse),
        "max_abs_diff": float(np.abs(a - b).max()),
    }


def decode_figures(pipe, size: int, rounds: int) -> dict:
    f = pipe.manifest.vae_scale_factor
    latents = np.random.default_rng(size).standard_normal((1, 4, size // f, size // f))
    latents = latents.astype(np.float32)
    times = _interleaved({v: lambda v=v: pipe.decode(latents, v) for v in VAES}, rounds)
    medians = {v: statistics.median(t) for v, t in times.items()}
    images = {v: pipe.decode(latents, v) for v in VAES}
    return {
        "size": size,
        "batch": 1,
        "rounds": rounds,
        "full_s": medians["full"],
        "tiny_s": medians["tiny"],
        "speedup": medians["full"] / medians["tiny"],
        "all_s": times,
        "tiny_vs_full": image_difference(images["tiny"], images["full"]),
    }


def e2e_figures(folder: Path, steps: int, size: int, rounds: int) -> dict:
    pipe = sdrt.Pipeline.load(folder, backend="ort-cpu")
    decode_s: dict[str, list[float]] = {v: [] for v in VAES}
    images = {}

    def call(vae: str):
        result = pipe(
            PROMPT,
            num_inference_steps=steps,
            height=size,
            width=size,
            seed=0,
            vae=vae,
            output_type="np",
        )
        decode_s[vae].extend(t.seconds for t in result.timings if t.stage == "vae_decode")
        images[vae] = result.images

    times = _interleaved({v: lambda v=v: call(v) for v in VAES}, rounds)
    medians = {v: statistics.median(t) for v, t in times.items()}
    return {
        "folder": str(folder),
        "steps": steps,
        "size": size,
        "guidance_scale": 7.5,
        "rounds": rounds,
        "full_s": medians["full"],
        "tiny_s": medians["tiny"],
        "speedup": medians["full"] / medians["tiny"],
        "vae_decode_full_s": statistics.median(decode_s["full"][1:]),
        "vae_decode_tiny_s": statistics.median(decode_s["tiny"][1:]),
        "all_s": times,
        "tiny_vs_full": image_difference(images["tiny"], images["full"]),
    }


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _machine() -> dict:
    import onnxruntime

    from sdrt.backends.ort_cpu_options import physical_cores

    return {
        "cpu": _cpu_model(),
        "load_average_1m": os.getloadavg()[0],
        "physical_cores": physical_cores(),
        "onnxruntime": onnxruntime.__version__,
        "backend": "ort-cpu",
    }


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, required=True, help="folder for the VAE model")
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 512])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--e2e", type=Path, default=None, help="an sd15 folder with a tiny VAE")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--e2e-size", type=int, default=256)
    parser.add_argument("--e2e-rounds", type=int, default=3)
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args(argv)

    folder = make_vae_folder(args.work, args.sizes)
    pipe = sdrt.Pipeline.load(folder, backend="ort-cpu")
    figures = {
        "machine": _machine(),
        "decode": [decode_figures(pipe, size, args.rounds) for size in args.sizes],
    }
    del pipe
    if args.e2e is not None:
        figures["end_to_end"] = e2e_figures(args.e2e, args.steps, args.e2e_size, args.e2e_rounds)
    figures["load_average_1m_at_end"] = os.getloadavg()[0]
    text = json.dumps(figures, indent=2)
    print(text)
    if args.json is not None:
        args.json.write_text(text + "\n")
    return figures


if __name__ == "__main__":
    main()
