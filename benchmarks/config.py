"""What a benchmark run is asked to do: one frozen configuration, made once from the CLI."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from sdrt.errors import InputError
from sdrt.sizes import parse_size

DEFAULT_PROMPT = "a photograph of an astronaut riding a horse on the moon, detailed, 4k"
DEFAULT_NEGATIVE_PROMPT = "blurry, low quality"
# Deterministic (no noise drawn per step), so every contender can match the torch image.
DEFAULT_SCHEDULER = "EulerDiscreteScheduler"
# Fewest measured runs and warm-ups for the report to call a target met or not met; below
# either, it shows the figures and says "too few runs for a verdict" (one cold run once
# read as a 10.7x speedup, "met").
MIN_RUNS_FOR_VERDICT = 3
MIN_WARMUP_FOR_VERDICT = 1


@dataclass(frozen=True)
class Size:
    height: int
    width: int

    @property
    def label(self) -> str:
        return f"{self.width}x{self.height}"


def parse_sizes(values: list[str]) -> tuple[Size, ...]:
    """``["256", "512,768", "512x768"]`` -> sizes; ``WxH`` for non-square ones."""
    sizes: list[Size] = []
    for value in values:
        for item in value.split(","):
            item = item.strip().lower()
            if not item:
                continue
            parsed = parse_size(item)
            width, height = parsed.width, parsed.height
            if width <= 0 or height <= 0 or width % 8 or height % 8:
                raise InputError(f"--size: expected positive multiples of 8, got {item!r}")
            size = Size(height=height, width=width)
            if size not in sizes:
                sizes.append(size)
    if not sizes:
        raise InputError("--size: expected at least one size")
    return tuple(sizes)


@dataclass(frozen=True)
class BenchConfig:
    """Every setting of a run; the report records it as it ran."""

    source: str | None  # a diffusers folder or Hub id; None with random_arch
    random_arch: str | None  # make this architecture with random weights instead
    output_dir: Path
    cache_dir: Path
    backends: tuple[str, ...] = ("torch", "ort-cpu")
    sizes: tuple[Size, ...] = (Size(256, 256),)
    steps: int = 20
    batch: int = 1
    guidance: float = 7.5
    scheduler: str = DEFAULT_SCHEDULER
    runs: int = 5
    warmup: int = 1
    threads: int = field(default_factory=lambda: os.cpu_count() or 1)
    precision: str = "fp32"
    seed: int = 0
    prompt: str = DEFAULT_PROMPT
    negative_prompt: str = DEFAULT_NEGATIVE_PROMPT
    optimum_venv: Path | None = None
    optimum_intel_venv: Path | None = None
    # An already built folder of SOURCE to use instead of building one in the cache.
    built_dir: Path | None = None
    # Measure the peak matmul rate with this matrix size (n x n times n x n, fp32).
    matmul_size: int = 4096
    # How many times the peak is measured, spread over the measured rounds (the last one
    # after them); None: after every round and once after; 0: not measured, and the report
    # leaves out the %-of-peak figures.
    peak_samples: int | None = None
    # The tinyvae fast mode's AutoencoderTiny (folder or Hub id); None: a random TAESD for
    # --random-weights (benchmarks/fast_modes.py).
    tiny_vae: str | None = None

    def __post_init__(self) -> None:
        if (self.source is None) == (self.random_arch is None):
            raise InputError("expected either SOURCE or --arch with --random-weights, not both")
        for name in ("steps", "batch", "runs", "threads", "matmul_size"):
            if getattr(self, name) < 1:
                raise InputError(f"--{name}: expected an integer >= 1, got {getattr(self, name)}")
        if self.warmup < 0:
            raise InputError(f"--warmup: expected an integer >= 0, got {self.warmup}")
        if self.peak_samples is not None and self.peak_samples < 0:
            raise InputError(
                f"--peak-samples: expected an integer >= 0 (0 skips it), got {self.peak_samples}"
            )
        if self.built_dir is not None and self.source is None:
            raise InputError("--built needs SOURCE: the diffusers folder it was built from")
        if not self.backends:
            raise InputError("--backends: expected at least one backend")
        if self.precision not in ("fp32", "fp16"):
            raise InputError(f"--precision: expected fp32 or fp16, got {self.precision!r}")

    @property
    def prompts(self) -> tuple[str, ...]:
        """One prompt per image of a call, each row its own (see ``batch_prompts``)."""
        return batch_prompts(self.prompt, self.batch)

    @property
    def negative_prompts(self) -> tuple[str, ...]:
        return batch_prompts(self.negative_prompt, self.batch)

    @property
    def enough_runs_for_verdict(self) -> bool:
        return self.runs >= MIN_RUNS_FOR_VERDICT and self.warmup >= MIN_WARMUP_FOR_VERDICT

    @property
    def measured_rounds(self) -> int:
        """Rounds of measured runs (one run of every contender each), all sizes together."""
        return self.runs * len(self.sizes)

    @property
    def peak_sample_count(self) -> int:
        if self.peak_samples is None:
            return self.measured_rounds + 1
        return min(self.peak_samples, self.measured_rounds + 1)


def batch_prompts(prompt: str, batch: int) -> tuple[str, ...]:
    """``batch`` different prompts: ``prompt`` alone at batch 1, else ``prompt, variant i``.

    sdrt encodes each distinct prompt of a call once; the same prompt repeated over the
    batch would let it encode fewer rows than its peers. Distinct rows give every contender
    the same text-encoder work.
    """
    if batch == 1:
        return (prompt,)
    return tuple(f"{prompt}, variant {i}" for i in range(1, batch + 1))


def too_few_runs_warning(config: BenchConfig) -> str | None:
    """What the CLI says before a run whose report can give no met/not-met verdicts."""
    if config.enough_runs_for_verdict:
        return None
    return (
        f"--runs {config.runs} --warmup {config.warmup}: too few runs for a verdict (needs "
        f"--runs >= {MIN_RUNS_FOR_VERDICT} and --warmup >= {MIN_WARMUP_FOR_VERDICT}); the "
        "report shows the figures but calls no target met or not met"
    )


def peak_sample_rounds(rounds: int, samples: int) -> frozenset[int]:
    """The measured rounds (0-based) after which the peak is sampled: ``samples - 1`` of
    them spread evenly, ending with the last round; the last sample is taken after all."""
    between = min(max(samples - 1, 0), rounds)
    return frozenset(round(k * rounds / between) - 1 for k in range(1, between + 1))


def round_orders(names: tuple[str, ...], rounds: int, seed: int) -> list[list[str]]:
    """The contenders' order in each measured round: a seeded shuffle, rotated by one each
    round, so that every contender goes first (and last) equally often over len(names)
    rounds; with two contenders, A B then B A."""
    import random

    base = list(names)
    random.Random(seed).shuffle(base)
    orders = []
    for index in range(rounds):
        shift = index % len(base) if base else 0
        orders.append(base[shift:] + base[:shift])
    return orders


def reproduce_command(config: BenchConfig) -> str:
    """The ``sdrt bench`` command line that runs exactly this configuration."""
    import shlex

    words = ["sdrt", "bench"]
    if config.source is not None:
        words.append(config.source)
    else:
        words += ["--arch", config.random_arch, "--random-weights"]
    if config.built_dir is not None:
        words += ["--built", str(config.built_dir)]
    words += ["--backends", ",".join(config.backends)]
    words += ["--size", ",".join(size.label for size in config.sizes)]
    options = {
        "--steps": config.steps,
        "--batch": config.batch,
        "--guidance": config.guidance,
        "--scheduler": config.scheduler,
        "--runs": config.runs,
        "--warmup": config.warmup,
        "--threads": config.threads,
        "--precision": config.precision,
        "--seed": config.seed,
        "--prompt": config.prompt,
        "--negative-prompt": config.negative_prompt,
        "--matmul-size": config.matmul_size,
        **({"--peak-samples": config.peak_samples} if config.peak_samples is not None else {}),
        "--cache-dir": config.cache_dir,
    }
    for flag, value in options.items():
        words += [flag, str(value)]
    if config.optimum_venv is not None:
        words += ["--optimum-venv", str(config.optimum_venv)]
    if config.optimum_intel_venv is not None:
        words += ["--optimum-intel-venv", str(config.optimum_intel_venv)]
    if config.tiny_vae is not None:
        words += ["--tiny-vae", config.tiny_vae]
    words += ["-o", str(config.output_dir)]
    return shlex.join(words)
