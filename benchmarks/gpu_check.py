"""The GPU check: one command that proves sdrt's CUDA paths on a GPU machine and reports.

    python -m sdrt.benchmarks.gpu_check OUT_DIR [--models DIR] [--dry-run]

On a GPU machine (onnxruntime-gpu, cupy, torch CUDA; diffusers for the baseline) it:

1. records the machine: GPU, driver-side versions, ONNX Runtime's providers (after
   ``onnxruntime.preload_dlls()``), the library versions;
2. builds the tiny random-weight model (SD 1.5 block structure) to an fp32 and an fp16
   folder (or takes them from ``--models``, as an earlier run or another machine left them);
3. runs ``pytest -m gpu`` on the GPU test files, in a child process (a crashing CUDA test
   must not take the report with it), and records its outcome counts;
4. generates the same images (same latents, a deterministic scheduler) with
   ``backend="ort-cuda"`` from the fp32 and the fp16 folder, CUDA graphs off and on, and
   compares each with ``ort-cpu`` fp32 (PSNR, max and mean abs, against the gates of
   engines/compare.py) and with eager diffusers on torch CUDA fp16 (same weights, latents);
5. times one U-Net step and one image for every sdrt configuration and for torch;
6. checks that the loop's arrays stay on the device: the U-Net is fed device arrays and
   the pipeline copies to the host once per image batch;
7. writes ``gpu_check.json`` and ``gpu_check.md`` into OUT_DIR.

Each step records ``ok``, ``failed`` (with the error) or ``skipped`` (with why); one failing
step does not stop the others, and the exit status is 1 when any step failed.

``--dry-run`` runs everything but CUDA on the CPU: ort-cpu stands in for ort-cuda, numpy for
cupy, torch on the CPU in fp32 for torch CUDA fp16, and the GPU tests are collected and
skipped rather than asked for. It is how this command is tested (tests/test_gpu_check.py).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import platform
import subprocess
import sys
import time
import traceback
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from sdrt.engines.compare import (
    FP16_IMAGE_MAX_ABS,
    FP16_IMAGE_MEAN_ABS,
    FP16_IMAGE_MIN_PSNR,
    FP32_IMAGE_MIN_PSNR,
    psnr,
)

ARCH = "tiny"
SIZE = 64  # the tiny architecture's native size
GPU_TEST_FILES = ("tests/test_gpu_ort_cuda.py", "tests/test_gpu_tensorrt.py")
# Deterministic: no noise drawn inside the loop, so diffusers and sdrt can agree.
SCHEDULER = "EulerDiscreteScheduler"
SETTINGS = dict(
    prompt=["a red fox in snow", "a lighthouse at dusk"],
    negative_prompt=["blurry", "blurry"],
    num_inference_steps=8,
    guidance_scale=7.5,
    height=SIZE,
    width=SIZE,
)
UNET_REPEATS = 30
IMAGE_REPEATS = 5
PYTEST_TIMEOUT_S = 300


@dataclass
class Step:
    name: str
    status: str = "running"  # then ok, failed or skipped
    detail: str = ""
    seconds: float = 0.0
    results: dict[str, Any] = field(default_factory=dict)

    def skip(self, why: str) -> None:
        self.status, self.detail = "skipped", why


@dataclass
class Target:
    """Where the check runs: the real GPU, or the CPU standing in for it (dry run)."""

    dry_run: bool
    backend: str  # what sdrt generates with: ort-cuda, or ort-cpu in a dry run
    torch_device: str
    torch_dtype: str  # "float16" on CUDA, "float32" on the CPU

    @classmethod
    def for_run(cls, dry_run: bool) -> Target:
        if dry_run:
            return cls(True, "ort-cpu", "cpu", "float32")
        return cls(False, "ort-cuda", "cuda", "float16")

    def options(self, cuda_graph: bool):
        if self.dry_run:
            return None
        from sdrt.backends.ort_cuda import OrtCudaOptions

        return OrtCudaOptions(cuda_graph=cuda_graph)

    def synchronize(self) -> None:
        if not self.dry_run:
            import cupy

            cupy.cuda.get_current_stream().synchronize()

    def device_array_type(self) -> type:
        if self.dry_run:
            return np.ndarray
        import cupy

        return cupy.ndarray


class Check:
    """The steps' shared state and the report they fill in."""

    def __init__(
        self, out_dir: Path, target: Target, models: Path | None, steps: int, repeats: float
    ):
        self.out = out_dir
        self.settings = {**SETTINGS, "num_inference_steps": steps}
        self.unet_repeats = max(1, round(UNET_REPEATS * repeats))
        self.image_repeats = max(1, round(IMAGE_REPEATS * repeats))
        self.target = target
        self.models = models or out_dir / "models"
        self.steps: list[Step] = []
        self.folders: dict[str, Path] = {}
        self.latents: np.ndarray | None = None
        self.images: dict[str, np.ndarray] = {}

    @contextlib.contextmanager
    def step(self, name: str) -> Iterator[Step]:
        step = Step(name)
        self.steps.append(step)
        start = time.perf_counter()
        try:
            yield step
            if step.status == "running":
                step.status = "ok"
        except Exception as e:  # one step's failure is recorded; the others still run
            step.status = "failed"
            step.detail = f"{type(e).__name__}: {e}"
            step.results["traceback"] = traceback.format_exc(limit=8)
        finally:
            step.seconds = round(time.perf_counter() - start, 3)
            print(f"[gpu_check] {name}: {step.status} {step.detail}", file=sys.stderr)


# ---------------------------------------------------------------------------- 1. environment


def _version(module: str) -> str | None:
    try:
        return __import__(module).__version__
    except Exception as e:  # not installed, or broken: either way say so
        return None if isinstance(e, ImportError) else f"broken: {type(e).__name__}: {e}"


def check_environment(check: Check) -> None:
    with check.step("environment") as step:
        import onnxruntime as ort

        from sdrt.backends.machine import probe_machine
        from sdrt.backends.ort_cuda import preload_cuda_libraries

        preload_cuda_libraries(ort)
        machine = probe_machine()
        step.results = {
            "dry_run": check.target.dry_run,
            "python": platform.python_version(),
            "platform": platform.platform(),
            "versions": {
                m: _version(m)
                for m in ("sdrt", "numpy", "onnxruntime", "cupy", "torch", "diffusers", "tensorrt")
            },
            "ort_providers": list(ort.get_available_providers()),
            "device": machine.device_name,
            "compute_capability": machine.compute_capability,
            "cuda_devices": machine.cuda_devices,
        }
        if not check.target.dry_run:
            import torch

            step.results["torch_cuda"] = torch.version.cuda
            step.results["torch_device"] = (
                torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
            )
            if "CUDAExecutionProvider" not in step.results["ort_providers"]:
                raise RuntimeError("ONNX Runtime has no CUDAExecutionProvider")


# ---------------------------------------------------------------------------- 2. models


def check_models(check: Check) -> None:
    with check.step("models") as step:
        source = check.models / f"{ARCH}-source"
        wanted = {"fp32": check.models / f"{ARCH}-fp32", "fp16": check.models / f"{ARCH}-fp16"}
        if not (source / "model_index.json").is_file():
            from sdrt.export.random_model import init_random_model

            init_random_model(ARCH, source, seed=0)
            step.results["made_source"] = True
        for precision, folder in wanted.items():
            if not (folder / "sdrt.json").is_file():
                from sdrt.export.build import BuildConfig, build

                build(
                    BuildConfig(
                        source=str(source),
                        output=folder,
                        min_size=SIZE,
                        max_size=2 * SIZE,
                        precision=precision,
                    )
                )
                step.results[f"built_{precision}"] = True
            check.folders[precision] = folder
        check.folders["source"] = source
        step.results["folders"] = {k: str(v) for k, v in check.folders.items()}


# ---------------------------------------------------------------------------- 3. pytest -m gpu


def _junit_counts(path: Path) -> dict[str, int]:
    root = ET.parse(path).getroot()
    suites = [root] if root.tag == "testsuite" else list(root)
    counts = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
    for suite in suites:
        for key in counts:
            counts[key] += int(suite.get(key, 0))
    counts["passed"] = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
    return counts


def check_pytest(check: Check, root: Path | None) -> None:
    with check.step("pytest -m gpu") as step:
        if root is None or not (root / GPU_TEST_FILES[0]).is_file():
            step.skip("the project's tests/ are not beside this package (run from a checkout)")
            return
        junit = check.out / "pytest-gpu.xml"
        # A dry run collects the GPU tests and lets them skip; on a GPU they are asked for.
        markers = [] if check.target.dry_run else ["-m", "gpu"]
        command = [sys.executable, "-m", "pytest", *markers, "-q", "-rA", "-p", "no:cacheprovider"]
        command += [*GPU_TEST_FILES, f"--junitxml={junit}"]
        done = subprocess.run(
            command, cwd=root, capture_output=True, text=True, timeout=PYTEST_TIMEOUT_S
        )
        (check.out / "pytest-gpu.log").write_text(done.stdout + done.stderr)
        step.results = {"command": " ".join(command[1:]), "returncode": done.returncode}
        step.results.update(_junit_counts(junit))
        step.results["summary"] = done.stdout.strip().splitlines()[-1:] or [""]
        if done.returncode not in (0, 5):  # 5: nothing collected
            raise RuntimeError(f"pytest exited {done.returncode}: {step.results['summary'][0]}")


# ---------------------------------------------------------------------------- 4. parity


def _latents(batch: int) -> np.ndarray:
    return np.random.default_rng(1234).standard_normal((batch, 4, SIZE // 8, SIZE // 8), np.float32)


def _sdrt_images(check: Check, folder: Path, backend: str, options, latents) -> np.ndarray:
    import sdrt

    pipe = sdrt.Pipeline.load(folder, backend=backend, backend_options=options)
    return pipe(**check.settings, scheduler=SCHEDULER, latents=latents, output_type="np").images


def _load_torch(check: Check):
    import torch
    from diffusers import DiffusionPipeline
    from sdrt.benchmarks.contenders.diffusers_pipeline import use_scheduler

    dtype = getattr(torch, check.target.torch_dtype)
    pipe = DiffusionPipeline.from_pretrained(check.folders["source"], dtype=dtype)
    pipe = pipe.to(check.target.torch_device)
    pipe.set_progress_bar_config(disable=True)
    use_scheduler(pipe, SCHEDULER)
    return pipe


def _torch_images(check: Check, pipe, latents: np.ndarray) -> np.ndarray:
    import torch

    dtype = getattr(torch, check.target.torch_dtype)
    with torch.inference_mode():
        out = pipe(
            **check.settings,
            latents=torch.from_numpy(latents).to(check.target.torch_device, dtype),
            output_type="np",
        )
    return np.asarray(out.images, np.float32)


def compare(image: np.ndarray, reference: np.ndarray, gates: dict[str, float]) -> dict[str, Any]:
    diff = np.abs(image.astype(np.float64) - reference.astype(np.float64))
    measured = {
        "psnr_db": psnr(image, reference),
        "max_abs": float(diff.max()),
        "mean_abs": float(diff.mean()),
    }
    passed = measured["psnr_db"] >= gates["min_psnr_db"]
    passed &= measured["max_abs"] <= gates.get("max_abs", math.inf)
    passed &= measured["mean_abs"] <= gates.get("mean_abs", math.inf)
    finite = {k: (v if math.isfinite(v) else None) for k, v in measured.items()}
    return {**finite, "gates": gates, "passed": bool(passed)}


GATES = {
    "fp32": {"min_psnr_db": FP32_IMAGE_MIN_PSNR},
    "fp16": {
        "min_psnr_db": FP16_IMAGE_MIN_PSNR,
        "max_abs": FP16_IMAGE_MAX_ABS,
        "mean_abs": FP16_IMAGE_MEAN_ABS,
    },
}


def check_parity(check: Check) -> None:
    with check.step("parity with ort-cpu") as step:
        if "fp16" not in check.folders:
            step.skip("no model folders")
            return
        check.latents = _latents(len(SETTINGS["prompt"]))
        reference = _sdrt_images(check, check.folders["fp32"], "ort-cpu", None, check.latents)
        check.images["ort-cpu fp32"] = reference
        failed = []
        for precision in ("fp32", "fp16"):
            for graph in (False, True):
                label = f"{check.target.backend} {precision} cuda_graph={'on' if graph else 'off'}"
                image = _sdrt_images(
                    check,
                    check.folders[precision],
                    check.target.backend,
                    check.target.options(graph),
                    check.latents,
                )
                check.images[label] = image
                step.results[label] = compare(image, reference, GATES[precision])
                if not step.results[label]["passed"]:
                    failed.append(label)
        if failed:
            raise AssertionError(f"outside the gates: {', '.join(failed)}")
    with check.step("parity with eager torch") as step:
        if check.latents is None:
            step.skip("no sdrt images")
            return
        pipe = _load_torch(check)
        torch_image = _torch_images(check, pipe, check.latents)
        check.images["torch"] = torch_image
        step.results["torch"] = (
            f"diffusers on {check.target.torch_device}, {check.target.torch_dtype}"
        )
        for label, image in check.images.items():
            if label != "torch":
                step.results[label] = compare(image, torch_image, GATES["fp16"])


# ---------------------------------------------------------------------------- 5. timing


def _median_seconds(run: Callable[[], Any], synchronize: Callable[[], None], repeats: int) -> float:
    run()  # warm up (a CUDA graph is captured here)
    run()
    synchronize()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        synchronize()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def _unet_feeds(check: Check, session, array) -> dict[str, Any]:
    from sdrt.engines.compare import sample_inputs

    batch = 2 * len(SETTINGS["prompt"])
    shapes = {
        "sample": (batch, 4, SIZE // 8, SIZE // 8),
        "timestep": (1,),
        "encoder_hidden_states": (batch, 77, session.inputs[2].shape[2]),
    }
    return {k: array(v) for k, v in sample_inputs(session.inputs, shapes, seed=0).items()}


def _to_device(check: Check):
    if check.target.dry_run:
        return np.asarray
    import cupy

    return cupy.asarray


def _time_sdrt(check: Check, precision: str, cuda_graph: bool, latents) -> dict[str, float]:
    import sdrt

    pipe = sdrt.Pipeline.load(
        check.folders[precision],
        backend=check.target.backend,
        backend_options=check.target.options(cuda_graph),
    )
    unet = pipe.session("unet")
    feeds = _unet_feeds(check, unet, _to_device(check))
    sync = check.target.synchronize

    def image():
        pipe(**check.settings, scheduler=SCHEDULER, latents=latents, output_type="np")

    return {
        "unet_step_ms": 1e3 * _median_seconds(lambda: unet.run(feeds), sync, check.unet_repeats),
        "image_ms": 1e3 * _median_seconds(image, sync, check.image_repeats),
    }


def check_timing(check: Check) -> None:
    with check.step("timing") as step:
        if "fp16" not in check.folders:
            step.skip("no model folders")
            return
        latents = check.latents if check.latents is not None else _latents(2)
        for precision in ("fp16", "fp32"):
            for graph in (False, True):
                label = (
                    f"sdrt {check.target.backend} {precision} cuda_graph={'on' if graph else 'off'}"
                )
                step.results[label] = _time_sdrt(check, precision, graph, latents)
        step.results["torch"] = _torch_timing(check, latents)
        settings = {
            **check.settings,
            "scheduler": SCHEDULER,
            "unet_batch": 2 * len(SETTINGS["prompt"]),
            "unet_repeats": check.unet_repeats,
            "image_repeats": check.image_repeats,
        }
        step.detail = "medians; settings: " + json.dumps(settings)


def _torch_timing(check: Check, latents: np.ndarray) -> dict[str, Any]:
    import torch

    pipe = _load_torch(check)
    device, dtype = check.target.torch_device, getattr(torch, check.target.torch_dtype)
    batch = 2 * len(SETTINGS["prompt"])
    sample = torch.randn(batch, 4, SIZE // 8, SIZE // 8, device=device, dtype=dtype)
    hidden = torch.randn(
        batch, 77, pipe.text_encoder.config.hidden_size, device=device, dtype=dtype
    )
    timestep = torch.tensor([500], device=device)

    def synchronize():
        if device == "cuda":
            torch.cuda.synchronize()

    with torch.inference_mode():
        unet = _median_seconds(
            lambda: pipe.unet(sample, timestep, hidden), synchronize, check.unet_repeats
        )
        image = _median_seconds(
            lambda: _torch_images(check, pipe, latents), synchronize, check.image_repeats
        )
    return {
        "label": f"eager diffusers, torch {device} {check.target.torch_dtype}",
        "unet_step_ms": 1e3 * unet,
        "image_ms": 1e3 * image,
    }


# ---------------------------------------------------------------------------- 6. host copies


def check_host_copies(check: Check) -> None:
    with check.step("arrays stay on the device") as step:
        if "fp16" not in check.folders:
            step.skip("no model folders")
            return
        import sdrt
        import sdrt.pipeline

        pipe = sdrt.Pipeline.load(
            check.folders["fp16"],
            backend=check.target.backend,
            backend_options=check.target.options(False),
        )
        unet = pipe.session("unet")
        fed: list[set[type]] = []
        copies: list[str] = []
        run, to_host = unet.run, sdrt.pipeline.to_host

        def logged_run(feeds):
            fed.append({type(v) for v in feeds.values()})
            return run(feeds)

        def counted_to_host(array):
            copies.append(type(array).__module__ + "." + type(array).__name__)
            return to_host(array)

        unet.run = logged_run  # this session object only
        sdrt.pipeline.to_host = counted_to_host
        try:
            pipe(**check.settings, scheduler=SCHEDULER, seed=0, output_type="np")
        finally:
            sdrt.pipeline.to_host = to_host
            del unet.run
        expected = check.target.device_array_type()
        step.results = {
            "unet_calls": len(fed),
            "unet_fed_device_arrays": all(kinds == {expected} for kinds in fed),
            "host_copies_per_call": len(copies),
            "host_copy_types": copies,
        }
        if len(copies) != 1 or not step.results["unet_fed_device_arrays"]:
            raise AssertionError(f"expected device-array feeds and one host copy: {step.results}")


# ---------------------------------------------------------------------------- 7. report


def write_report(check: Check) -> dict[str, Any]:
    report = {
        "check": "sdrt gpu_check",
        "dry_run": check.target.dry_run,
        "target": asdict(check.target),
        "steps": [asdict(s) for s in check.steps],
        "passed": all(s.status != "failed" for s in check.steps),
    }
    (check.out / "gpu_check.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    (check.out / "gpu_check.md").write_text(markdown(report))
    return report


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "" if value is None else str(value)


def markdown(report: dict[str, Any]) -> str:
    lines = [
        "# sdrt GPU check"
        + (" (dry run on the CPU: ort-cpu stands in for ort-cuda)" if report["dry_run"] else ""),
        "",
        f"Overall: **{'passed' if report['passed'] else 'FAILED'}**",
        "",
        "| step | status | seconds | detail |",
        "|---|---|---|---|",
    ]
    lines += [
        f"| {s['name']} | {s['status']} | {s['seconds']} | {s['detail']} |" for s in report["steps"]
    ]
    for s in report["steps"]:
        rows = {k: v for k, v in s["results"].items() if isinstance(v, dict) and k != "gates"}
        if not rows:
            continue
        columns = sorted({c for v in rows.values() for c in v if c != "gates"})
        lines += ["", f"## {s['name']}", "", "| | " + " | ".join(columns) + " |"]
        lines += ["|---" * (len(columns) + 1) + "|"]
        lines += [
            f"| {k} | " + " | ".join(_cell(v.get(c)) for c in columns) + " |"
            for k, v in rows.items()
        ]
    env = next((s for s in report["steps"] if s["name"] == "environment"), None)
    if env and env["results"]:
        lines += ["", "## environment", "", "```json", json.dumps(env["results"], indent=1), "```"]
    return "\n".join(lines) + "\n"


def _project_root() -> Path | None:
    """The checkout whose tests/ hold the GPU tests: beside an editable install, or the
    current folder (a device command runs in the repository root with sdrt from a wheel)."""
    import sdrt

    for root in (Path(sdrt.__file__).resolve().parents[1], Path.cwd()):
        if (root / GPU_TEST_FILES[0]).is_file():
            return root
    return None


def run_check(
    out_dir: Path,
    *,
    dry_run: bool,
    models: Path | None = None,
    pytest: bool = True,
    steps: int = SETTINGS["num_inference_steps"],
    repeats: float = 1.0,
) -> dict[str, Any]:
    """Run every step (see the module docstring) and write the report into ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    check = Check(out_dir, Target.for_run(dry_run), models, steps, repeats)
    check_environment(check)
    check_models(check)
    if pytest:
        check_pytest(check, _project_root())
    check_parity(check)
    check_timing(check)
    check_host_copies(check)
    return write_report(check)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m sdrt.benchmarks.gpu_check", description=__doc__.splitlines()[0]
    )
    parser.add_argument("out_dir", type=Path, help="folder for gpu_check.json/.md and logs")
    parser.add_argument(
        "--models", type=Path, help="folder with (or for) tiny-source, tiny-fp32, tiny-fp16"
    )
    parser.add_argument("--dry-run", action="store_true", help="everything but CUDA, on the CPU")
    parser.add_argument("--no-pytest", action="store_true", help="skip the pytest -m gpu step")
    parser.add_argument(
        "--steps", type=int, default=SETTINGS["num_inference_steps"], help="denoising steps"
    )
    parser.add_argument(
        "--repeats", type=float, default=1.0, help="scale the timing repeats (30 steps, 5 images)"
    )
    args = parser.parse_args(argv)
    report = run_check(
        args.out_dir,
        dry_run=args.dry_run,
        models=args.models,
        pytest=not args.no_pytest,
        steps=args.steps,
        repeats=args.repeats,
    )
    print(f"gpu_check: {'passed' if report['passed'] else 'FAILED'}; report in {args.out_dir}")
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
