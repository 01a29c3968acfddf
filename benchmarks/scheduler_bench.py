"""Scheduler micro-benchmark: microseconds per step, sdrt numpy vs diffusers' torch.

Each row times whole denoising loops of one scheduler with the U-Net replaced by a fixed
precomputed output, so only the scheduler's work is measured: per U-Net call,
``scale_model_input`` + ``step`` (+ the caller's noise draw for the samplers that need
one, as sdrt's pipeline does it; diffusers draws inside ``step``). The plan
(``set_timesteps``) is made once per loop and counted in the loop's time.

    rows = run_scheduler_bench()                  # list of dicts, one per scheduler/backend
    python -m sdrt.benchmarks.scheduler_bench     # prints a table; --json PATH writes rows

diffusers and torch are imported only when asked for (include_diffusers=True) and
present; without them only sdrt rows are returned.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from typing import Any

import numpy as np

from sdrt.schedulers import SCHEDULERS, create_scheduler

# runwayml/stable-diffusion-v1-5's scheduler_config.json: the config the rows run with.
SD15_SCHEDULER_CONFIG = {
    "_class_name": "PNDMScheduler",
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "num_train_timesteps": 1000,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "trained_betas": None,
    "clip_sample": False,
}
SAMPLERS_DRAWING_NOISE = {alias for alias in SCHEDULERS if create_scheduler(alias).needs_noise}
DEFAULT_SHAPE = (2, 4, 64, 64)  # CFG batch of one 512x512 image
# One SD 1.5 U-Net call at batch 2 with 32x32 latents in ONNX Runtime (fp32) on the
# project's 2-core CPU machines, measured by the team: the yardstick for "the scheduler
# costs under 1% of one U-Net call". Pass another figure with --unet-call-s.
REFERENCE_UNET_CALL_S = 3.4


def _sdrt_loop(alias: str, config: dict, steps: int, sample: np.ndarray, eps: np.ndarray):
    sched = create_scheduler(alias, config)
    rng = np.random.default_rng(0)

    def loop() -> int:
        plan = sched.plan(steps)
        latents = sample * plan.init_noise_sigma
        state = sched.initial_state(plan)
        for i in range(len(plan.timesteps)):
            sched.scale_model_input(plan, latents, i)
            noise = None
            if sched.needs_noise:
                noise = rng.standard_normal(latents.shape, dtype=np.float32)
            result = sched.step(plan, state, eps, i, latents, noise=noise)
            latents, state = result.prev_sample, result.state
        return len(plan.timesteps)

    return loop


def _diffusers_loop(alias: str, config: dict, steps: int, sample: np.ndarray, eps: np.ndarray):
    import diffusers
    import torch

    # what sdrt's alias means, in diffusers' terms
    alias_overrides = {
        "dpmpp_2m": {
            "algorithm_type": "dpmsolver++",
            "solver_order": 2,
            "use_karras_sigmas": False,
        },
        "dpmpp_2m_karras": {
            "algorithm_type": "dpmsolver++",
            "solver_order": 2,
            "use_karras_sigmas": True,
        },
    }
    cls = getattr(diffusers, SCHEDULERS[alias])
    sched = cls.from_config(config, **alias_overrides.get(alias, {}))
    sample_t = torch.from_numpy(sample)
    eps_t = torch.from_numpy(eps)
    generator = torch.Generator().manual_seed(0)
    takes_generator = alias in SAMPLERS_DRAWING_NOISE

    def loop() -> int:
        sched.set_timesteps(steps)
        latents = sample_t * sched.init_noise_sigma
        for t in sched.timesteps:
            sched.scale_model_input(latents, t)
            kwargs = {"generator": generator} if takes_generator else {}
            latents = sched.step(eps_t, t, latents, **kwargs).prev_sample
        return len(sched.timesteps)

    return loop


def _time_loops(loop, repeats: int) -> tuple[float, float, int]:
    """(median seconds per loop, min seconds per loop, U-Net calls per loop); 1 warm-up."""
    calls = loop()
    durations = []
    for _ in range(repeats):
        start = time.perf_counter()
        loop()
        durations.append(time.perf_counter() - start)
    return statistics.median(durations), min(durations), calls


def _noise_draw_us(backend: str, shape: tuple[int, ...], repeats: int) -> float:
    """Median time of one float32 standard-normal draw of the latent shape, drawn as the
    backend draws it (numpy's Generator for sdrt, torch.randn for diffusers)."""
    if backend == "sdrt-numpy":
        rng = np.random.default_rng(0)

        def draw():
            rng.standard_normal(shape, dtype=np.float32)
    else:
        import torch

        generator = torch.Generator().manual_seed(0)

        def draw():
            torch.randn(shape, generator=generator, dtype=torch.float32)

    durations = []
    for _ in range(max(repeats, 3)):
        start = time.perf_counter()
        draw()
        durations.append(time.perf_counter() - start)
    return statistics.median(durations) * 1e6


def _diffusers_available() -> bool:
    try:
        import diffusers  # noqa: F401
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


def run_scheduler_bench(
    schedulers: list[str] | None = None,
    shape: tuple[int, ...] = DEFAULT_SHAPE,
    steps: int = 50,
    repeats: int = 5,
    include_diffusers: bool = True,
    config: dict[str, Any] | None = None,
    unet_call_s: float = REFERENCE_UNET_CALL_S,
) -> list[dict[str, Any]]:
    """Time each scheduler's whole loop; one row (dict) per scheduler and backend.

    Row keys: scheduler (alias), class_name, backend ("sdrt-numpy" or "diffusers-torch"),
    shape, steps, unet_calls, repeats, us_per_step (median loop time / U-Net calls) and
    us_per_step_min, noise_draw_us (one draw by the backend's generator, part of
    us_per_step for the samplers that need noise), schedule_ms (median whole loop) and schedule_ms_min,
    share_of_unet_call (whole loop / unet_call_s), unet_call_s, threads, and the library
    versions that ran.
    """
    schedulers = list(SCHEDULERS) if schedulers is None else schedulers
    config = SD15_SCHEDULER_CONFIG if config is None else config
    rng = np.random.default_rng(0)
    sample = rng.standard_normal(shape, dtype=np.float32)
    eps = (0.5 * rng.standard_normal(shape)).astype(np.float32)

    backends = [("sdrt-numpy", _sdrt_loop)]
    torch_threads = None
    versions = {"numpy": np.__version__, "python": platform.python_version()}
    if include_diffusers and _diffusers_available():
        import diffusers
        import torch

        backends.append(("diffusers-torch", _diffusers_loop))
        torch_threads = torch.get_num_threads()
        versions.update(torch=torch.__version__, diffusers=diffusers.__version__)

    noise_draw_us = {backend: _noise_draw_us(backend, shape, repeats) for backend, _ in backends}
    rows = []
    for alias in schedulers:
        for backend, make_loop in backends:
            loop = make_loop(alias, config, steps, sample, eps)
            median_s, min_s, calls = _time_loops(loop, repeats)
            rows.append(
                {
                    "scheduler": alias,
                    "class_name": SCHEDULERS[alias],
                    "backend": backend,
                    "shape": list(shape),
                    "steps": steps,
                    "unet_calls": calls,
                    "repeats": repeats,
                    "us_per_step": median_s / calls * 1e6,
                    "us_per_step_min": min_s / calls * 1e6,
                    # included in us_per_step for samplers that draw noise (both backends)
                    "noise_draw_us": (
                        noise_draw_us[backend] if alias in SAMPLERS_DRAWING_NOISE else 0.0
                    ),
                    "schedule_ms": median_s * 1e3,
                    "schedule_ms_min": min_s * 1e3,
                    "unet_call_s": unet_call_s,
                    "share_of_unet_call": median_s / unet_call_s,
                    "threads": torch_threads if backend == "diffusers-torch" else 1,
                    "versions": versions,
                }
            )
    return rows


def format_table(rows: list[dict[str, Any]]) -> str:
    header = (
        f"{'scheduler':<16} {'backend':<16} {'calls':>5} {'us/step':>9} {'min':>9} "
        f"{'noise us':>9} {'loop ms':>9} {'% of U-Net call':>16}"
    )
    lines = [header, "-" * len(header)]
    for row in rows:
        lines.append(
            f"{row['scheduler']:<16} {row['backend']:<16} {row['unet_calls']:>5} "
            f"{row['us_per_step']:>9.1f} {row['us_per_step_min']:>9.1f} "
            f"{row['noise_draw_us']:>9.1f} {row['schedule_ms']:>9.2f} "
            f"{100 * row['share_of_unet_call']:>15.3f}%"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--schedulers", default=",".join(SCHEDULERS), help="comma-separated")
    parser.add_argument("--shape", default=",".join(map(str, DEFAULT_SHAPE)))
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--no-diffusers", action="store_true", help="sdrt rows only")
    parser.add_argument("--unet-call-s", type=float, default=REFERENCE_UNET_CALL_S)
    parser.add_argument("--json", metavar="PATH", help="also write the rows as JSON")
    args = parser.parse_args(argv)

    names = [s.strip() for s in args.schedulers.split(",") if s.strip()]
    unknown = [s for s in names if s not in SCHEDULERS]
    if unknown:
        parser.error(f"unknown scheduler(s) {', '.join(unknown)}; expected {', '.join(SCHEDULERS)}")
    try:
        shape = tuple(int(d) for d in args.shape.split(","))
    except ValueError:
        parser.error(f"--shape must be comma-separated integers; got {args.shape!r}")
    rows = run_scheduler_bench(
        schedulers=names,
        shape=shape,
        steps=args.steps,
        repeats=args.repeats,
        include_diffusers=not args.no_diffusers,
        unet_call_s=args.unet_call_s,
    )
    print(f"shape {shape}, {args.steps} steps, median of {args.repeats} loops, SD 1.5 config")
    print(format_table(rows))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(rows, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
