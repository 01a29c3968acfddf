"""What DeepCache gains, in one process: U-Net time and end-to-end time of calls with
``deep_cache_interval`` N against the exact call, and the image's distance from it.

    python -m sdrt.benchmarks.studies.deep_cache_cost FOLDER [--size 256] [--steps 10] \
        [--intervals 2,3,5] [--branch 0] [--rounds 3] [-o report.json]

FOLDER is built with ``sdrt build --deep-cache``. The exact call runs on a twin of FOLDER
whose U-Net graph is the same graph without the DeepCache feature outputs (made here, in a
temporary folder beside FOLDER whose weights are hard links, removed at the end), so the
"exact" figure is a folder built without --deep-cache; FOLDER's own call without an
interval shows what the extra outputs cost a normal step. Calls run in interleaved rounds
(the order rotating each round) so that the load of a shared machine falls on all alike;
medians are reported. The images use the same prompt and latents; PSNR and max difference
are against the exact image (random weights make them only a guide).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

import sdrt
from sdrt.deep_cache import full_steps
from sdrt.manifest import read_manifest, sha256_file, write_manifest
from sdrt.stages import summarize

PROMPT = "a red fox in the snow, highly detailed"
EXACT = "exact"
EXACT_DEEP_CACHE_FOLDER = "exact on the --deep-cache folder"


def plain_twin(folder: Path) -> Path:
    """A copy of ``folder`` (hard links) whose U-Net has only ``out_sample``, no shallow
    U-Nets and no DeepCache record: what a build without --deep-cache gives."""
    import onnx

    manifest = read_manifest(folder)
    twin = Path(tempfile.mkdtemp(prefix=".deep-cache-twin-", dir=folder.parent))
    for path in folder.rglob("*"):
        rel = path.relative_to(folder)
        if rel.parts[0] == "engines" or rel.parts[0].startswith("unet_shallow_"):
            continue  # saved ORT graphs are remade for the twin; shallow U-Nets are dropped
        if path.is_dir():
            (twin / rel).mkdir(parents=True, exist_ok=True)
        elif rel != Path(manifest.components["unet"].file):
            (twin / rel).parent.mkdir(parents=True, exist_ok=True)
            os.link(path, twin / rel)
    unet = manifest.components["unet"]
    model = onnx.load(str(folder / unet.file), load_external_data=False)
    kept = [o for o in model.graph.output if o.name == unet.outputs[0].name]
    del model.graph.output[:]
    model.graph.output.extend(kept)
    onnx.save(model, str(twin / unet.file))
    components = {
        name: c for name, c in manifest.components.items() if not name.startswith("unet_shallow_")
    }
    components["unet"] = dataclasses.replace(
        unet, outputs=unet.outputs[:1], sha256=sha256_file(twin / unet.file)
    )
    write_manifest(twin, dataclasses.replace(manifest, components=components, deep_cache=None))
    return twin


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(1.0 / mse)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--guidance", type=float, default=7.5)
    parser.add_argument("--scheduler", default="EulerDiscreteScheduler")
    parser.add_argument("--intervals", default="2,3,5")
    parser.add_argument("--branch", type=int, default=None)
    parser.add_argument("--rounds", type=int, default=3, help="rounds of calls (0: none)")
    parser.add_argument(
        "--unet-rounds",
        type=int,
        default=0,
        help="rounds of single U-Net steps: the exact graph, the graph with the feature "
        "outputs, and a second session of the exact graph (the noise floor) (0: none)",
    )
    parser.add_argument("-o", "--output", type=Path, default=None)
    args = parser.parse_args(argv)
    intervals = [int(n) for n in args.intervals.split(",")]

    load_before = os.getloadavg()
    twin = plain_twin(args.folder)
    try:
        report = _measure(args, twin, intervals) if args.rounds else _header(args, None)
        if args.unet_rounds:
            report["unet_step"] = unet_steps(args, twin)
    finally:
        shutil.rmtree(twin, ignore_errors=True)
    report["machine"]["load_average_start"] = load_before
    report["machine"]["load_average_end"] = os.getloadavg()
    text = json.dumps(report, indent=2)
    if args.output is not None:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(text + "\n")
    print(text)
    return report


def _measure(args, twin: Path, intervals: list[int]) -> dict:
    exact_pipe = sdrt.Pipeline.load(twin, backend="ort-cpu", verify_files="never")
    pipe = sdrt.Pipeline.load(args.folder, backend="ort-cpu")
    f = pipe.manifest.vae_scale_factor
    latents = np.random.default_rng(0).standard_normal(
        (1, pipe.manifest.latent_channels, args.size // f, args.size // f), dtype=np.float32
    )
    settings = dict(
        num_inference_steps=args.steps,
        guidance_scale=args.guidance,
        height=args.size,
        width=args.size,
        scheduler=args.scheduler,
        latents=latents,
        output_type="np",
    )
    calls = {EXACT: (exact_pipe, {}), EXACT_DEEP_CACHE_FOLDER: (pipe, {})}
    for n in intervals:
        extra = {"deep_cache_interval": n}
        if args.branch is not None:
            extra["deep_cache_branch"] = args.branch
        calls[f"deep cache N={n}"] = (pipe, extra)

    def run(name):
        target, extra = calls[name]
        t0 = time.perf_counter()
        result = target(PROMPT, **settings, **extra)
        seconds = time.perf_counter() - t0
        return result, seconds

    images = {}
    for name in calls:  # warm-up: sessions made, first-call costs paid; the images kept
        result, _ = run(name)
        images[name] = result.images
    samples = {name: {"end_to_end_s": [], "unet_s": [], "unet_steps_s": []} for name in calls}
    names = list(calls)
    for r in range(args.rounds):
        order = names[r % len(names) :] + names[: r % len(names)]
        for name in order:
            result, seconds = run(name)
            totals = summarize(result.timings)
            samples[name]["end_to_end_s"].append(seconds)
            samples[name]["unet_s"].append(totals["unet"])
            samples[name]["unet_steps_s"].append(
                [t.seconds for t in result.timings if t.stage == "unet"]
            )
    return _report(args, pipe, intervals, calls, samples, images)


def _report(args, pipe, intervals, calls, samples, images) -> dict:
    exact_e2e = statistics.median(samples[EXACT]["end_to_end_s"])
    exact_unet = statistics.median(samples[EXACT]["unet_s"])
    rows = {}
    timesteps = pipe.plan(pipe.request(PROMPT, **_plan_settings(args)))[1].timesteps
    for name in calls:
        s = samples[name]
        e2e = statistics.median(s["end_to_end_s"])
        unet = statistics.median(s["unet_s"])
        row = {
            "end_to_end_s": e2e,
            "unet_s": unet,
            "speedup_end_to_end": exact_e2e / e2e,
            "speedup_unet": exact_unet / unet,
            "psnr_db_vs_exact": psnr(images[name], images[EXACT]),
            "max_abs_diff_vs_exact": float(np.abs(images[name] - images[EXACT]).max()),
            "samples": s,
        }
        extra = calls[name][1]
        if "deep_cache_interval" in extra:
            full = full_steps(timesteps, extra["deep_cache_interval"])
            steps = list(zip(*s["unet_steps_s"], strict=True))  # per step, over rounds
            row["full_steps"] = sum(full)
            row["full_step_s"] = statistics.median(
                [t for ok, ts in zip(full, steps, strict=True) if ok for t in ts]
            )
            if not all(full):
                row["shallow_step_s"] = statistics.median(
                    [t for ok, ts in zip(full, steps, strict=True) if not ok for t in ts]
                )
        rows[name] = row
    return {**_header(args, pipe.manifest.deep_cache, intervals), "results": rows}


def _header(args, built, intervals=()) -> dict:
    return {
        "benchmark": "deep_cache_cost",
        "folder": str(args.folder),
        "settings": {
            "prompt": PROMPT,
            "size": args.size,
            "steps": args.steps,
            "guidance_scale": args.guidance,
            "scheduler": args.scheduler,
            "batch": 1,
            "intervals": intervals,
            "branch": args.branch
            if args.branch is not None or built is None
            else built.branch_ids[0],
            "rounds": args.rounds,
            "backend": "ort-cpu",
            "latents": "numpy default_rng(0) standard normal",
        },
        "machine": {
            "cpus": os.cpu_count(),
            "processor": platform.processor() or platform.machine(),
        },
        "versions": {"sdrt": sdrt.__version__},
        "note": "random weights: PSNR and max difference are only a guide",
    }


def unet_steps(args, twin: Path) -> dict:
    """Single U-Net steps (batch 2: guidance) of the exact graph, of the graph that also
    gives DeepCache's features, and of a second session of the exact graph, interleaved."""
    from sdrt.backends import select_backend

    folders = {
        EXACT: twin,
        "with the feature outputs": args.folder,
        "exact, a second session": twin,
    }
    sessions = {}
    for name, folder in folders.items():
        manifest = read_manifest(folder)
        selection = select_backend("ort-cpu", manifest)
        sessions[name] = selection.open_sessions(folder, manifest, ("unet",))["unet"]
    rng = np.random.default_rng(0)
    latent = args.size // 8
    width = {s.name: s for s in sessions[EXACT].inputs}["encoder_hidden_states"].shape[2]
    feeds = {
        "sample": rng.standard_normal((2, 4, latent, latent), np.float32),
        "timestep": np.array([500.0], np.float32),
        "encoder_hidden_states": rng.standard_normal((2, 77, width), np.float32),
    }
    outputs = {name: s.run(feeds)["out_sample"] for name, s in sessions.items()}  # warm-up
    times = {name: [] for name in sessions}
    names = list(sessions)
    for r in range(args.unet_rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            t0 = time.perf_counter()
            sessions[name].run(feeds)
            times[name].append(time.perf_counter() - t0)
    exact = statistics.median(times[EXACT])
    return {
        "batch": 2,
        "size": args.size,
        "rounds": args.unet_rounds,
        "median_s": {name: statistics.median(t) for name, t in times.items()},
        "ratio_to_exact": {name: statistics.median(t) / exact for name, t in times.items()},
        "max_abs_diff_vs_exact": {
            name: float(np.abs(o - outputs[EXACT]).max()) for name, o in outputs.items()
        },
        "samples_s": times,
    }


def _plan_settings(args) -> dict:
    return dict(
        num_inference_steps=args.steps,
        guidance_scale=args.guidance,
        height=args.size,
        width=args.size,
        scheduler=args.scheduler,
    )


if __name__ == "__main__":
    main()
