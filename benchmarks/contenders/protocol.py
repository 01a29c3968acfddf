"""The worker side of a benchmark: one contender, in its own process, driven over a pipe.

The harness starts one worker process per contender (in that contender's interpreter, which
may be another virtualenv) so that peak memory, import time and cold start belong to that
contender alone. The worker imports its runtime, loads the model, then answers requests
one JSON line at a time:

    parent -> worker   {"op": "run", "workload": {...}, "save_image": "path.npy" | null}
    worker -> parent   {"event": "result", "timings": {...}, "settings": {...}, "wall_time": t}
    parent -> worker   {"op": "quit"}
    worker -> parent   {"event": "bye", "peak_rss_bytes": n}

Messages travel on the process's original stdout; anything a library prints is sent to
stderr (the worker's log) so it can never corrupt the protocol. This module needs only the
standard library and numpy, because it also runs in environments without sdrt's dependencies.
"""

from __future__ import annotations

import json
import os
import re
import resource
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, Protocol


@dataclass(frozen=True)
class Workload:
    """One image request, identical for every contender (sent by the harness as a dict)."""

    prompts: tuple[str, ...]  # one per image of the call
    # one per prompt; none for a model guided by an embedding (LCM), whose pipelines take none
    negative_prompts: tuple[str, ...]
    height: int
    width: int
    steps: int
    guidance: float
    scheduler: str
    latents_path: str

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Workload:
        return cls(
            **{
                **data,
                "prompts": tuple(data["prompts"]),
                "negative_prompts": tuple(data["negative_prompts"]),
            }
        )

    def call_arguments(self) -> dict[str, Any]:
        """The keyword arguments every contender's diffusers-style pipeline call takes alike
        (the latents, seed, scheduler and output type are each contender's own)."""
        negative = {"negative_prompt": list(self.negative_prompts)} if self.negative_prompts else {}
        return {
            "prompt": list(self.prompts),
            **negative,
            "num_inference_steps": self.steps,
            "guidance_scale": self.guidance,
            "height": self.height,
            "width": self.width,
        }


@dataclass
class StageClock:
    """Wall time per pipeline stage for one image request; reset before each request."""

    durations: dict[str, list[float]] = field(default_factory=dict)

    def reset(self) -> None:
        self.durations = {}

    @contextmanager
    def measure(self, stage: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.durations.setdefault(stage, []).append(time.perf_counter() - start)

    def timed(self, stage: str, function: Callable[..., Any]) -> Callable[..., Any]:
        """``function`` wrapped so that each call's wall time is recorded under ``stage``."""

        def timed_call(*args: Any, **kwargs: Any) -> Any:
            with self.measure(stage):
                return function(*args, **kwargs)

        return timed_call


class Contender(Protocol):
    """What each contender module implements; the worker loop does the rest."""

    name: str
    # Distributions the runtime needs at run time; their dependency closure is measured.
    runtime_distributions: tuple[str, ...]
    # Source folders an editable install does not list among its files (sdrt's own).
    runtime_source_dirs: tuple[str, ...]

    def import_runtime(self) -> None:
        """Import the runtime's libraries (timed as the import cost)."""

    def load(self, model_dir: str, threads: int) -> None:
        """Load the model until the first image is possible (timed as load -> ready)."""

    def load_settings(self) -> dict[str, Any]:
        """How the load ran (whether saved optimised graphs were used, ...)."""

    def generate(self, workload: Workload, latents: Any, clock: StageClock) -> Any:
        """Make the image(s) as float32 NHWC in [0, 1], recording stages on ``clock``."""

    def settings(self, workload: Workload) -> dict[str, Any]:
        """The settings that actually ran (scheduler class, providers, threads...)."""

    def versions(self) -> dict[str, str]:
        """Versions of the libraries that ran."""


# --- installed size ---------------------------------------------------------------------

_REQUIREMENT_NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)")


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _runtime_requirements(dist: metadata.Distribution) -> list[str]:
    """Names of ``dist``'s requirements that are not behind an extra."""
    names = []
    for requirement in dist.requires or []:
        _, _, marker = requirement.partition(";")
        if "extra" in marker:
            continue
        match = _REQUIREMENT_NAME.match(requirement)
        if match:
            names.append(match.group(1))
    return names


def _distribution_size(dist: metadata.Distribution) -> int:
    total = 0
    for file in dist.files or []:
        path = Path(str(dist.locate_file(file)))
        if path.is_file():
            total += path.stat().st_size
    return total


def installed_size(roots: tuple[str, ...], extra_dirs: tuple[str, ...] = ()) -> dict[str, Any]:
    """Bytes on disk of ``roots`` and every installed distribution they require (not extras).

    Sizes come from each distribution's installed file list (its share of site-packages);
    ``extra_dirs`` adds source folders an editable install does not list.
    """
    seen: dict[str, int] = {}
    pending = list(roots)
    while pending:
        name = _normalise(pending.pop())
        if name in seen:
            continue
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue  # an optional or platform-specific requirement that is not installed
        seen[name] = _distribution_size(dist)
        pending.extend(_runtime_requirements(dist))
    extra = 0
    for folder in extra_dirs:
        for path in Path(folder).rglob("*"):
            if path.is_file() and "__pycache__" not in path.parts:
                extra += path.stat().st_size
    return {
        "bytes": sum(seen.values()) + extra,
        "distributions": dict(sorted(seen.items())),
        "source_dirs_bytes": extra,
    }


def version_of(distribution: str) -> str:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return "not installed"


def peak_rss_bytes() -> int:
    """The high-water mark of this process's resident memory.

    /proc's VmHWM belongs to this program's own address space. getrusage's ru_maxrss is
    not used on Linux: it keeps the parent's high-water mark across fork and exec, so every
    worker would report at least the harness's own peak.
    """
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024  # reported in kB
    except OSError:
        pass  # not Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


# --- the worker loop --------------------------------------------------------------------


def _channel():
    """Keep the original stdout for messages; route everything else printed to stderr."""
    out = os.fdopen(os.dup(sys.stdout.fileno()), "w", buffering=1)
    sys.stdout.flush()
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    return out


def _error_text(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}".strip()


def serve(contender: Contender, argv: list[str]) -> int:
    """Run ``contender`` as a worker: ``argv`` is ``[model_dir, threads]``."""
    channel = _channel()

    def send(message: dict[str, Any]) -> None:
        channel.write(json.dumps(message) + "\n")

    model_dir, threads = argv[0], int(argv[1])
    import numpy as np  # every contender's environment has numpy

    try:
        start = time.perf_counter()
        contender.import_runtime()
        import_s = time.perf_counter() - start
        start = time.perf_counter()
        contender.load(model_dir, threads)
        load_s = time.perf_counter() - start
    # A worker reports any failure of its contender as data; the harness shows it in the
    # report and the other contenders still run.
    except Exception as error:
        traceback.print_exc()
        send({"event": "error", "stage": "load", "error": _error_text(error)})
        return 1
    send(
        {
            "event": "ready",
            "wall_time": time.time(),
            "import_s": import_s,
            "load_s": load_s,
            "load_settings": contender.load_settings(),
            "versions": contender.versions(),
            "installed": installed_size(
                contender.runtime_distributions, contender.runtime_source_dirs
            ),
        }
    )

    clock = StageClock()
    for line in sys.stdin:
        request = json.loads(line)
        if request["op"] == "quit":
            send({"event": "bye", "peak_rss_bytes": peak_rss_bytes()})
            return 0
        workload = Workload.from_dict(request["workload"])
        try:
            latents = np.load(workload.latents_path)
            clock.reset()
            start = time.perf_counter()
            image = contender.generate(workload, latents, clock)
            end_to_end = time.perf_counter() - start
            if request.get("save_image"):
                np.save(request["save_image"], np.asarray(image, dtype=np.float32))
        except Exception as error:  # reported as data, as above
            traceback.print_exc()
            send({"event": "error", "stage": "run", "error": _error_text(error)})
            return 1
        send(
            {
                "event": "result",
                "wall_time": time.time(),
                "timings": {"end_to_end_s": end_to_end, "stages_s": clock.durations},
                "settings": contender.settings(workload),
            }
        )
    return 0
