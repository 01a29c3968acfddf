"""The benchmark: every contender on the same work, interleaved, each in its own process.

First, for each sdrt contender that can load without saved optimised graphs, a load-only
process does so alone on the machine: its load -> ready is like for like with Optimum's,
which optimises the graphs on every load (sdrt's own start maps the graphs that an
untimed ``sdrt build --target ort-cpu`` saved). A peer that runs its own export
of the model (Optimum-Intel's OpenVINO folder) makes it first, untimed, kept in the cache.
Then for each contender a worker process is
started, loads the model and makes its first image at once (process start -> first image
is its cold start); the next contender starts only then, so cold starts never overlap.
Then, per image size, the remaining warm-up runs (not counted) and the measured runs in
rounds, one run of each contender a round, in an order shuffled with the seed and rotated
by one each round (recorded in the report), so that drift on a noisy machine and the
position in a round hit every contender alike. Every contender gets the same prompts (one
of its own per image of the batch), size, steps, guidance, scheduler and initial latents
(drawn once here with numpy); an LCM-distilled model gets no negative prompts, as its
pipelines take none. A contender that fails is recorded with its error and the
others go on. The peak matmul rate is sampled between rounds (``--peak-samples``); after
the runs, in their own processes: the U-Net's FLOPs per call, a last peak sample and the
scheduler micro-benchmark.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import sys
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from sdrt.benchmarks import contenders, fast_modes
from sdrt.benchmarks.config import (
    MIN_RUNS_FOR_VERDICT,
    MIN_WARMUP_FOR_VERDICT,
    BenchConfig,
    Size,
    peak_sample_rounds,
    reproduce_command,
    round_orders,
)
from sdrt.benchmarks.contenders import ContenderSpec
from sdrt.benchmarks.contenders.protocol import version_of
from sdrt.benchmarks.jobs import JobFailed, run_jobs
from sdrt.benchmarks.models import BenchModels, prepare_export, prepare_models, prepare_variants
from sdrt.benchmarks.parity import compare_images
from sdrt.benchmarks.roofline import achieved, median_peak
from sdrt.benchmarks.stats import summarize
from sdrt.benchmarks.worker_process import Ready, WorkerFailed, WorkerProcess

from sdrt.errors import BackendUnavailableError, SdrtError

SCHEMA_VERSION = 2  # 2: load without saved graphs, round order, varied prompts
# Stages timed inside every contender; "other" is end-to-end minus their sum.
MODEL_STAGES = ("text_encoder", "unet", "vae_decode")


class ProgressDisplay(Protocol):
    def status(self, message: str) -> None: ...

    def start_runs(self, total: int) -> None: ...

    def advance(self, description: str) -> None: ...


@dataclass
class ContenderState:
    """One contender through the run: its worker, its figures, or why it failed."""

    name: str
    status: str = "ok"  # ok | failed | unavailable
    error: str | None = None
    failed_stage: str | None = None
    spec: ContenderSpec | None = None
    worker: WorkerProcess | None = None
    # the load-only process without saved optimised graphs (sdrt's ORT contenders)
    unsaved_load: dict[str, Any] | None = None
    ready: Ready | None = None
    cold_start_s: float | None = None
    peak_rss_bytes: int | None = None
    settings: dict[str, Any] = field(default_factory=dict)
    warmups_done: dict[str, int] = field(default_factory=dict)  # per size label
    runs: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # per size label
    images: dict[str, Path] = field(default_factory=dict)  # per size label, .npy

    @property
    def active(self) -> bool:
        return self.status == "ok" and self.worker is not None

    def fail(self, stage: str, error: str) -> None:
        self.status, self.failed_stage, self.error = "failed", stage, error
        if self.worker is not None:
            self.worker.close()
            self.worker = None


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.partition(":")[2].strip()
    except OSError:
        pass  # not Linux
    return platform.processor() or "unknown"


def machine_info(threads: int) -> dict[str, Any]:
    from sdrt.backends.ort_cpu_options import physical_cores

    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return {
        "cpu_model": cpu_model(),
        "logical_cpus": os.cpu_count(),
        "physical_cores": physical_cores(),
        "memory_bytes": memory,
        "threads": threads,
        "platform": platform.platform(),
        "python": sys.version.split()[0],
    }


def load_average() -> list[float] | None:
    try:
        return [round(value, 2) for value in os.getloadavg()]
    except OSError:  # not available on this platform
        return None


def harness_versions() -> dict[str, str]:
    names = ("sdrt", "numpy", "onnxruntime", "torch", "diffusers", "transformers", "matplotlib")
    return {name: version_of(name) for name in names}


def make_latents(config: BenchConfig, models: BenchModels, size: Size, work_dir: Path) -> Path:
    """The initial noise every contender starts from, drawn once with numpy."""
    vae = json.loads((models.source_dir / "vae" / "config.json").read_text())
    scale = 2 ** (len(vae["block_out_channels"]) - 1)
    shape = (
        config.batch,
        int(vae.get("latent_channels", 4)),
        size.height // scale,
        size.width // scale,
    )
    rng = np.random.default_rng(config.seed)
    path = work_dir / f"latents-{size.label}.npy"
    np.save(path, rng.standard_normal(shape, dtype=np.float32))
    return path


def guides_by_embedding(source_dir: Path) -> bool:
    """Whether the source's U-Net takes the guidance scale as an embedding (LCM-distilled,
    ``time_cond_proj_dim``): it runs without negative prompts, in every contender."""
    unet = json.loads((source_dir / "unet" / "config.json").read_text())
    return unet.get("time_cond_proj_dim") is not None


def workload(
    config: BenchConfig, size: Size, latents_path: Path, negative_prompts: bool = True
) -> dict[str, Any]:
    return {
        "prompts": list(config.prompts),
        "negative_prompts": list(config.negative_prompts) if negative_prompts else [],
        "height": size.height,
        "width": size.width,
        "steps": config.steps,
        "guidance": config.guidance,
        "scheduler": config.scheduler,
        "latents_path": str(latents_path),
    }


class Benchmark:
    def __init__(self, config: BenchConfig, progress: ProgressDisplay):
        self.config = config
        self.progress = progress
        self.out = config.output_dir
        self.work_dir = self.out / "work"
        self.states = [ContenderState(name) for name in config.backends]
        # peak matmul rates measured between the measured rounds (see _sample_peak)
        self.peak_samples: list[dict[str, Any]] = []
        # each measured round as it ran: size, run index, contenders in order, peak sampled
        self.rounds: list[dict[str, Any]] = []
        self.load_average_at_start: list[float] | None = None
        # the folders peers exported themselves (ContenderSpec.export), per contender
        self.exported: dict[str, Path] = {}

    # -------------------------------------------------------------------------- running

    def _run_once(self, state: ContenderState, size: Size, request: dict, measured: bool) -> None:
        save = None
        if measured and size.label not in state.images:
            save = self.work_dir / f"image-{state.name}-{size.label}.npy"
        try:
            message = state.worker.run(request, save)
        except WorkerFailed as failure:
            state.fail(failure.stage, failure.error)
            return
        if state.cold_start_s is None:
            state.cold_start_s = state.worker.first_image_at - state.worker.spawned_at
        state.settings = message["settings"]
        if measured:
            state.runs.setdefault(size.label, []).append(message["timings"])
            if save is not None:
                state.images[size.label] = save
        else:
            state.warmups_done[size.label] = state.warmups_done.get(size.label, 0) + 1
        kind = "run" if measured else "warm-up"
        self.progress.advance(f"{state.name} {size.label} {kind}")

    def _resolve(self, state: ContenderState) -> None:
        config = self.config
        try:
            spec = contenders.resolve(state.name, config.optimum_venv, config.optimum_intel_venv)
        except BackendUnavailableError as unavailable:
            state.status, state.failed_stage, state.error = "unavailable", "start", str(unavailable)
            return
        if fast_modes.TINY_VAE_FOLDER in spec.extra_args:  # torch+tinyvae's decoder
            folder = fast_modes.tiny_vae_folder(config, self.progress.status)
            words = (folder if w == fast_modes.TINY_VAE_FOLDER else w for w in spec.extra_args)
            spec = replace(spec, extra_args=tuple(words))
        state.spec = spec

    def _export(self, state: ContenderState, models: BenchModels) -> None:
        """A peer's own model folder, exported from the source by its own tools, untimed
        (once: kept in the cache); an export that fails fails that contender alone."""
        spec = state.spec
        if spec is None or spec.export is None:
            return
        self.progress.status(f"{state.name}: its own export of the model")
        log = self.out / "logs" / f"{state.name}-export.log"
        try:
            self.exported[state.name] = prepare_export(
                self.config, models, spec.export, log, self.progress.status
            )
        except SdrtError as failure:
            state.fail("export", str(failure))

    def _model_dir(self, spec: ContenderSpec, models: BenchModels) -> Path:
        if spec.export is not None:
            return self.exported[spec.name]
        if spec.model == "source":
            return models.source_dir
        return models.built_dir if spec.variant is None else models.variants[spec.variant]

    def _load_without_saved_graphs(self, state: ContenderState, models: BenchModels) -> None:
        """Load -> ready of ``state``'s runtime when it optimises every graph at load, as
        Optimum does: a process that loads, reports and quits, with nothing else running."""
        spec = state.spec
        if spec is None or spec.no_saved_graphs_args is None:
            return
        probe = ContenderSpec(
            spec.name, spec.command, (*spec.extra_args, *spec.no_saved_graphs_args), spec.model
        )
        self.progress.status(f"{state.name}: load without saved graphs")
        log = self.out / "logs" / f"{state.name}-no-saved-graphs.log"
        worker = WorkerProcess(probe, self._model_dir(spec, models), self.config.threads, log)
        try:
            ready = worker.wait_ready()
            worker.quit()
        except WorkerFailed as failure:
            worker.close()
            state.unsaved_load = {
                "status": "failed",
                "error": failure.error,
                "log": str(log.relative_to(self.out)),
            }
            return
        state.unsaved_load = {
            "status": "ok",
            "import_s": ready.import_s,
            "load_to_ready_s": ready.load_s,
            "process_start_to_ready_s": ready.ready_at - ready.spawned_at,
            "settings": ready.load_settings,
            "log": str(log.relative_to(self.out)),
        }

    def _start(self, state: ContenderState, models: BenchModels, first: dict, size: Size) -> None:
        if state.spec is None or state.status != "ok":  # unavailable, or its export failed
            return
        self.progress.status(f"starting {state.name}")
        state.worker = WorkerProcess(
            state.spec,
            self._model_dir(state.spec, models),
            self.config.threads,
            self.out / "logs" / f"{state.name}.log",
        )
        try:
            state.ready = state.worker.wait_ready()
        except WorkerFailed as failure:
            state.fail(failure.stage, failure.error)
            return
        # The first image right after loading: the cold start, and the first warm-up.
        self.progress.status(f"{state.name}: first image")
        self._run_once(state, size, first, measured=self.config.warmup == 0)

    def run(self) -> dict[str, Any]:
        config = self.config
        started = datetime.datetime.now(datetime.timezone.utc)
        self.load_average_at_start = load_average()
        self.work_dir.mkdir(parents=True, exist_ok=True)
        models = prepare_models(config, self.progress.status)
        with_modes = contenders.mode_contenders(config.backends)
        models = prepare_variants(config, models, with_modes, self.progress.status)
        negative = not guides_by_embedding(models.source_dir)
        requests = {
            size.label: workload(
                config, size, make_latents(config, models, size, self.work_dir), negative
            )
            for size in config.sizes
        }
        total = len(self.states) * len(config.sizes) * (config.warmup + config.runs)
        self.progress.start_runs(total)
        try:
            self._measure(models, requests)
        finally:
            for state in self.states:
                if state.worker is not None:  # only after an interruption
                    state.worker.close()
        peak = ", peak matmul rate" if config.peak_sample_count else ""
        self.progress.status(f"U-Net FLOPs{peak}, scheduler micro-benchmark")
        roofline, schedulers = self._side_measurements(models)
        finished = datetime.datetime.now(datetime.timezone.utc)
        return self._report(models, roofline, schedulers, started, finished)

    def _measure(self, models: BenchModels, requests: dict[str, dict]) -> None:
        config = self.config
        first_size = config.sizes[0]
        for state in self.states:
            self._resolve(state)
            self._export(state, models)
        for state in self.states:  # alone on the machine, before any contender starts
            self._load_without_saved_graphs(state, models)
        for state in self.states:
            self._start(state, models, requests[first_size.label], first_size)
        orders = round_orders(config.backends, config.measured_rounds, config.seed)
        sampled_after = peak_sample_rounds(config.measured_rounds, config.peak_sample_count)
        by_name = {state.name: state for state in self.states}
        for size in config.sizes:
            request = requests[size.label]
            for state in self.states:
                while state.active and state.warmups_done.get(size.label, 0) < config.warmup:
                    self._run_once(state, size, request, measured=False)
            for run_index in range(config.runs):
                round_index = len(self.rounds)
                ran = []
                for name in orders[round_index]:
                    state = by_name[name]
                    if state.active and len(state.runs.get(size.label, [])) <= run_index:
                        self._run_once(state, size, request, measured=True)
                    if state.status == "ok" and len(state.runs.get(size.label, [])) > run_index:
                        ran.append(name)  # this round's run (with --warmup 0, maybe the cold one)
                sampled = round_index in sampled_after and self._sample_peak()
                self.rounds.append(
                    {"size": size.label, "run": run_index, "order": ran, "peak_sampled": sampled}
                )
        for state in self.states:
            if state.active:
                try:
                    state.peak_rss_bytes = state.worker.quit()
                except WorkerFailed as failure:
                    state.fail(failure.stage, failure.error)
                state.worker = None

    # -------------------------------------------------------------------------- jobs

    def _unet_batch(self) -> int:
        # classifier-free guidance runs the conditional and unconditional halves as one batch
        return self.config.batch * (2 if self.config.guidance > 1 else 1)

    def _measured_unet_call_s(self) -> float | None:
        """sdrt's median U-Net call at the first size: the scheduler's yardstick."""
        label = self.config.sizes[0].label
        for state in self.states:
            if contenders.is_baseline(state.name) or contenders.is_peer(state.name):
                continue
            calls = [
                c for run in state.runs.get(label, []) for c in run["stages_s"].get("unet", [])
            ]
            if calls:
                return summarize(calls)["median"]
        return None

    def _peak_spec(self) -> dict[str, int]:
        return {"n": self.config.matmul_size, "threads": self.config.threads}

    def _sample_peak(self) -> bool:
        """The peak matmul rate between measured rounds, so that it is measured over the same
        minutes as the U-Net steps it divides: this machine's speed drifts by a third.
        Returns whether a sample was taken."""
        if not any(state.active for state in self.states):
            return False
        self.progress.status("peak matmul rate")
        try:
            answer = run_jobs({"peak": self._peak_spec()}, self.config.threads)
        except JobFailed:
            return False  # the measurement after the runs reports the failure
        if answer["peak"]["status"] == "ok":
            self.peak_samples.append(answer["peak"])
            return True
        return False

    def _side_measurements(self, models: BenchModels) -> tuple[dict, dict]:
        """The roofline's FLOPs and peak, and the scheduler micro-benchmark, in one process."""
        config = self.config
        first = config.sizes[0]
        scheduler_config = json.loads(
            (models.source_dir / "scheduler" / "scheduler_config.json").read_text()
        )
        latents = np.load(self.work_dir / f"latents-{first.label}.npy")
        schedulers = {
            "shape": [self._unet_batch(), *latents.shape[1:]],
            "steps": config.steps,
            "config": scheduler_config,
        }
        unet_call_s = self._measured_unet_call_s()
        if unet_call_s is not None:
            schedulers["unet_call_s"] = unet_call_s
        spec = {
            "flops": {
                "model_dir": str(models.source_dir),
                "batch": self._unet_batch(),
                "sizes": [
                    {"label": s.label, "height": s.height, "width": s.width} for s in config.sizes
                ],
                "cache_dir": str(config.cache_dir),
            },
            "schedulers": schedulers,
        }
        measure_peak = config.peak_sample_count > 0
        if measure_peak:
            spec["peak"] = self._peak_spec()
        try:
            answer = run_jobs(spec, config.threads)
        except JobFailed as failure:
            failed = {"status": "failed", "error": str(failure)}
            answer = {name: failed for name in spec}
        roofline: dict[str, Any] = {
            "status": "ok",
            "unet_batch": self._unet_batch(),
            "flops_per_unet_call": answer["flops"].get("by_size", {}),
            "peak_samples_asked": config.peak_samples,
        }
        if answer["flops"]["status"] == "ok":
            roofline["flop_count_method"] = answer["flops"]["method"]
        measured = [k for k in ("flops", "peak") if k in answer]
        errors = [answer[k]["error"] for k in measured if answer[k]["status"] != "ok"]
        if errors:
            roofline.update(status="failed", error="; ".join(errors))
        elif not measure_peak:
            roofline.update(
                status="skipped",
                reason="--peak-samples 0: the peak matmul rate was not measured, so the "
                "report gives no U-Net share of the peak",
            )
        else:
            roofline["peak"] = median_peak([*self.peak_samples, answer["peak"]])
        bench = answer["schedulers"]
        scheduler_bench = {
            "status": bench["status"],
            "rows": bench.get("rows", []),
            **({"error": bench["error"]} if "error" in bench else {}),
        }
        return roofline, scheduler_bench

    # -------------------------------------------------------------------------- figures

    def _size_results(self, state: ContenderState, roofline: dict, reference: ContenderState):
        names = tuple(s.name for s in self.states)
        reference_name = contenders.exact_reference(state.name, names)
        exact = next((s for s in self.states if s.name == reference_name), None)
        results = []
        for size in self.config.sizes:
            runs = state.runs.get(size.label)
            if not runs:
                continue
            result = self._size_result(state, size, runs, roofline, reference)
            image, exact_image = state.images.get(size.label), None
            if exact is not None:
                exact_image = exact.images.get(size.label)
            if image is not None and exact_image is not None:
                # what a fast mode (or a peer) costs in quality: against exact sdrt on the
                # same latents
                result["versus_exact"] = {
                    "reference": exact.name,
                    **compare_images(np.load(image), np.load(exact_image)),
                }
            results.append(result)
        return results

    def _size_result(self, state, size: Size, runs, roofline, reference) -> dict[str, Any]:
        per_run: dict[str, list[float]] = {f"{s}_s": [] for s in (*MODEL_STAGES, "other")}
        per_run["end_to_end_s"] = []
        unet_calls: list[float] = []
        for timings in runs:
            stages = timings["stages_s"]
            total = timings["end_to_end_s"]
            model_time = 0.0
            for stage in MODEL_STAGES:
                spent = sum(stages.get(stage, []))
                per_run[f"{stage}_s"].append(spent)
                model_time += spent
            per_run["other_s"].append(total - model_time)
            per_run["end_to_end_s"].append(total)
            unet_calls.extend(stages.get("unet", []))
        result: dict[str, Any] = {
            "size": size.label,
            "height": size.height,
            "width": size.width,
            "runs": len(runs),
            "unet_calls_per_run": len(unet_calls) // len(runs),
            "stages": {name: summarize(values) for name, values in per_run.items()},
            "raw": {**per_run, "unet_call_s": unet_calls},
        }
        if unet_calls:
            result["stages"]["unet_step_s"] = summarize(unet_calls)
        end_to_end = result["stages"]["end_to_end_s"]["median"]
        result["images_per_s"] = self.config.batch / end_to_end
        fractions = [
            o / e for o, e in zip(per_run["other_s"], per_run["end_to_end_s"], strict=True)
        ]
        result["other_fraction"] = summarize(fractions)["median"]
        flops = roofline.get("flops_per_unet_call", {}).get(size.label)
        if unet_calls and flops and roofline.get("status") == "ok":
            step = result["stages"]["unet_step_s"]["median"]
            result["roofline"] = achieved(flops, step, roofline["peak"]["peak_flops_per_s"])
        image_path = state.images.get(size.label)
        if image_path is not None:
            result["image"] = self._save_png(np.load(image_path), state.name, size)
            reference_path = reference.images.get(size.label) if reference else None
            if reference_path is not None and reference is not state:
                result["parity"] = {
                    "reference": reference.name,
                    **compare_images(np.load(image_path), np.load(reference_path)),
                }
        return result

    def _save_png(self, images: np.ndarray, name: str, size: Size) -> str:
        from PIL import Image

        path = self.out / "images" / f"{name}-{size.label}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        pixels = (np.clip(images[0], 0, 1) * 255).round().astype(np.uint8)
        Image.fromarray(pixels).save(path)
        return str(path.relative_to(self.out))

    def _contender_record(self, state: ContenderState, roofline, reference) -> dict[str, Any]:
        record: dict[str, Any] = {"name": state.name, "status": state.status}
        if state.error is not None:
            record["error"] = state.error
            record["failed_stage"] = state.failed_stage
        if state.ready is not None:
            record["versions"] = state.ready.versions
            record["cold_start"] = {
                "import_s": state.ready.import_s,
                "load_to_ready_s": state.ready.load_s,
                "process_start_to_first_image_s": state.cold_start_s,
                "load_settings": state.ready.load_settings,
            }
            record["installed"] = state.ready.installed
        if state.unsaved_load is not None:
            record["load_without_saved_graphs"] = state.unsaved_load
        record["peak_rss_bytes"] = state.peak_rss_bytes
        record["settings"] = state.settings
        record["log"] = str((self.out / "logs" / f"{state.name}.log").relative_to(self.out))
        record["results"] = self._size_results(state, roofline, reference)
        return record

    def _baseline_of(self, state: ContenderState) -> ContenderState | None:
        """The eager diffusers contender ``state``'s image is compared with (same VAE first)."""
        names = tuple(s.name for s in self.states)
        name = contenders.baseline_for(state.name, names)
        return next((s for s in self.states if s.name == name), None)

    def _report(self, models, roofline, schedulers, started, finished) -> dict[str, Any]:
        config = self.config
        settings = {
            name: str(value) if isinstance(value, Path) else value
            for name, value in asdict(config).items()
        }
        settings["sizes"] = [size.label for size in config.sizes]
        settings["backends"] = list(config.backends)
        settings["prompts"] = list(config.prompts)
        settings["negative_prompts"] = list(config.negative_prompts)
        return {
            "schema_version": SCHEMA_VERSION,
            "started": started.isoformat(timespec="seconds"),
            "finished": finished.isoformat(timespec="seconds"),
            "command": reproduce_command(config),
            "settings": settings,
            "verdict_minimum": {"runs": MIN_RUNS_FOR_VERDICT, "warmup": MIN_WARMUP_FOR_VERDICT},
            "round_order": {
                "method": f"contenders shuffled with seed {config.seed}, the order rotated by "
                "one each measured round",
                "rounds": self.rounds,
            },
            "machine": {
                **machine_info(config.threads),
                # other work on the machine: runnable processes, averaged over 1, 5, 15 min
                "load_average": {"start": self.load_average_at_start, "end": load_average()},
            },
            "versions": harness_versions(),
            "model": {
                "source": models.source_label,
                "source_dir": str(models.source_dir),
                "built_dir": str(models.built_dir),
                "built_reused": models.built_reused,
            },
            "roofline": roofline,
            "contenders": [
                self._contender_record(state, roofline, self._baseline_of(state))
                for state in self.states
            ],
            "scheduler_bench": schedulers,
        }


def run_benchmark(config: BenchConfig, progress: ProgressDisplay) -> dict[str, Any]:
    return Benchmark(config, progress).run()
