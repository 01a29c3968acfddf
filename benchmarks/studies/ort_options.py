"""Measure ONNX Runtime session options for the lean runtime: cold start and per-image time.

    python -m sdrt.benchmarks.studies.ort_options MODEL_FOLDER [--size 64] [--steps 4] [--repeats 3]

Each variant runs in a fresh process (a cold start is what a service restart pays):
``Pipeline.load``, then the first image, then warm images. Variants are interleaved over
the repeats so that background load on the machine spreads over all of them. The first
variant prepares the saved optimised graphs of the cached variants; "saved" rows load
those, "no-save" rows optimise in memory on every load. Prints one JSON row per variant
(medians) and the settings that ran.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass

# A variant is OrtOptions fields; "label" names it in the table.
VARIANTS = {
    "extended+saved": dict(graph_optimization="extended", cache_optimized_model=True),
    "extended": dict(graph_optimization="extended", cache_optimized_model=False),
    "all": dict(graph_optimization="all", cache_optimized_model=False),
    "all+saved": dict(graph_optimization="all", cache_optimized_model=True),
    "basic": dict(graph_optimization="basic", cache_optimized_model=False),
    "no-arena+saved": dict(enable_mem_arena=False, cache_optimized_model=True),
    "1-thread+saved": dict(intra_op_threads=1, cache_optimized_model=True),
    "no-spin+saved": dict(allow_spinning=False, cache_optimized_model=True),
}

CHILD = """
import json, sys, time
start = time.perf_counter()
import sdrt
from sdrt.backends.ort_cpu_options import OrtOptions
folder, options, size, steps, warm = sys.argv[1], json.loads(sys.argv[2]), *map(int, sys.argv[3:6])
imported = time.perf_counter()
pipe = sdrt.Pipeline.load(folder, backend="ort-cpu", ort_options=OrtOptions(**options), verify_files=False)
loaded = time.perf_counter()
args = dict(prompt="a red fox in snow", num_inference_steps=steps, height=size, width=size,
            seed=0, scheduler="euler", output_type="np")
pipe(**args)
first = time.perf_counter()
warm_times = []
for _ in range(warm):
    t = time.perf_counter(); pipe(**args); warm_times.append(time.perf_counter() - t)
print(json.dumps(dict(import_s=imported - start, load_s=loaded - imported,
                      first_image_s=first - loaded, warm_image_s=min(warm_times))))
"""


@dataclass(frozen=True)
class Row:
    variant: str
    options: dict
    import_s: float
    load_s: float
    first_image_s: float
    cold_start_s: float  # import + load + first image
    warm_image_s: float
    repeats: int


def run_variant(folder: str, options: dict, size: int, steps: int, warm: int) -> dict:
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            CHILD,
            folder,
            json.dumps(options),
            str(size),
            str(steps),
            str(warm),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"variant {options} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--warm", type=int, default=2, help="warm images per process")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    args = parser.parse_args(argv)
    names = args.variants.split(",")
    # Prepare the saved graphs once, so "saved" rows measure loading them.
    for name in names:
        if VARIANTS[name].get("cache_optimized_model"):
            run_variant(args.folder, VARIANTS[name], args.size, 1, 1)
    samples: dict[str, list[dict]] = {n: [] for n in names}
    for _ in range(args.repeats):
        for name in names:
            samples[name].append(
                run_variant(args.folder, VARIANTS[name], args.size, args.steps, args.warm)
            )
    print(json.dumps(dict(folder=args.folder, size=args.size, steps=args.steps, time=time.time())))
    for name in names:
        med = {k: statistics.median(s[k] for s in samples[name]) for k in samples[name][0]}
        row = Row(
            variant=name,
            options=VARIANTS[name],
            import_s=round(med["import_s"], 3),
            load_s=round(med["load_s"], 3),
            first_image_s=round(med["first_image_s"], 3),
            cold_start_s=round(med["import_s"] + med["load_s"] + med["first_image_s"], 3),
            warm_image_s=round(med["warm_image_s"], 3),
            repeats=args.repeats,
        )
        print(json.dumps(asdict(row)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
