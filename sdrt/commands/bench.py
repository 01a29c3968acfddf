"""``sdrt bench``: sdrt against eager diffusers (and Optimum), stage by stage, into a report."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

HELP = (
    "Benchmark sdrt against eager PyTorch (diffusers), Optimum and Optimum-Intel; write a report."
)

DEFAULT_CACHE = Path("~/.cache/sdrt/bench")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "source", nargs="?", help="diffusers folder or Hub id (or use --arch --random-weights)"
    )
    parser.add_argument(
        "-o",
        "--output",
        type=Path,
        help="report folder, e.g. reports/sd15-cpu; an earlier report in it is replaced only "
        "with --force",
    )
    parser.add_argument(
        "--force", action="store_true", help="replace the report in -o (default: refuse)"
    )
    parser.add_argument(
        "--backends",
        default="torch,ort-cpu",
        help="comma-separated contenders: torch[+tinyvae], optimum, "
        "optimum-intel[+int8][+tinyvae] "
        "and sdrt backends, an sdrt backend "
        "with fast modes as BACKEND+MODE[+MODE] (int8, deepcacheN[bB], tomeR, tinyvae; e.g. "
        "ort-cpu+int8+deepcache3), compared with the bare backend (default: %(default)s)",
    )
    parser.add_argument("--arch", help="architecture to make (sd15, sd21, sdxl, tiny, ...)")
    parser.add_argument(
        "--random-weights", action="store_true", help="make --arch with random weights, offline"
    )
    parser.add_argument(
        "--size",
        action="append",
        metavar="N|WxH",
        help="image size, N (square) or WxH in pixels as `sdrt generate --size`; repeat or "
        "comma-separate for several (default: 256)",
    )
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument(
        "--batch",
        type=int,
        default=1,
        help="images per call, as `sdrt generate --batch`; above 1 each image gets its own "
        "prompt (the prompt + ', variant i'), the same for every contender (default 1)",
    )
    parser.add_argument("--guidance", type=float, default=7.5)
    parser.add_argument(
        "--scheduler",
        help="diffusers scheduler class or sdrt alias, the same for every contender "
        "(default: EulerDiscreteScheduler, which draws no noise, so images can match)",
    )
    parser.add_argument(
        "--runs",
        type=int,
        default=5,
        help="measured runs per contender and size; fewer than 3 gives no verdicts",
    )
    parser.add_argument(
        "--warmup",
        type=int,
        default=1,
        help="uncounted runs per contender and size; 0 gives no verdicts",
    )
    _add_run_arguments(parser)


def _add_run_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--threads", type=int, help="threads per contender (default: all CPUs)")
    parser.add_argument("--precision", choices=("fp32", "fp16"), default="fp32")
    parser.add_argument("--seed", type=int, default=0, help="seed of the latents and weights")
    parser.add_argument("--prompt", help="the prompt every contender gets")
    parser.add_argument("--negative-prompt", help="the negative prompt every contender gets")
    parser.add_argument(
        "--cache-dir",
        type=Path,
        help=f"where made and built models are kept (default: $SDRT_CACHE_DIR or {DEFAULT_CACHE})",
    )
    parser.add_argument(
        "--built", type=Path, help="an sdrt build of SOURCE to use instead of building one"
    )
    parser.add_argument(
        "--matmul-size",
        type=int,
        default=4096,
        help="n of the n x n fp32 matmuls that measure the peak rate (default: %(default)s)",
    )
    parser.add_argument(
        "--peak-samples",
        type=int,
        metavar="N",
        help="measure the peak matmul rate N times, spread over the measured rounds, the last "
        "after them; 0 skips it and the report's share-of-peak figures (default: after "
        "every round and once after)",
    )
    parser.add_argument(
        "--tiny-vae",
        metavar="FOLDER|HUB_ID",
        help="the AutoencoderTiny the tinyvae fast mode builds with (default with "
        "--random-weights: a random TAESD of the architecture's family)",
    )
    parser.add_argument(
        "--optimum-venv", type=Path, help="Optimum's virtualenv (default: .bench-venvs/optimum)"
    )
    parser.add_argument(
        "--setup-optimum",
        action="store_true",
        help="create Optimum's virtualenv (needs PyPI) and exit",
    )
    parser.add_argument(
        "--optimum-intel-venv",
        type=Path,
        help="Optimum-Intel's virtualenv (default: .bench-venvs/optimum-intel)",
    )
    parser.add_argument(
        "--setup-optimum-intel",
        action="store_true",
        help="create Optimum-Intel's virtualenv (OpenVINO, NNCF; needs PyPI) and exit",
    )


def _check_sources(args: argparse.Namespace) -> None:
    from sdrt.errors import InputError

    if args.output is None:
        raise InputError("expected -o/--output: the report folder")
    from sdrt.benchmarks.report import REPORT_FILES
    from sdrt.files import check_output_file

    for name in REPORT_FILES:  # before minutes of benchmarking
        check_output_file(args.output / name, force=args.force)
    if args.random_weights != (args.arch is not None):
        raise InputError("--arch and --random-weights go together")
    if args.source is not None and args.arch is not None:
        raise InputError(f"expected SOURCE or --arch, got both ({args.source!r}, {args.arch!r})")
    if args.source is None and args.arch is None:
        raise InputError(
            "expected SOURCE (a diffusers folder or Hub id) or --arch --random-weights"
        )


def _config(args: argparse.Namespace):
    from sdrt.benchmarks import config as bench_config
    from sdrt.errors import InputError

    _check_sources(args)
    scheduler = args.scheduler
    if scheduler is not None:
        from sdrt.schedulers import SCHEDULERS

        scheduler = SCHEDULERS.get(scheduler, scheduler)  # an alias -> its diffusers class
        if scheduler not in SCHEDULERS.values():
            raise InputError(
                f"--scheduler: expected a diffusers class name or alias sdrt implements "
                f"({', '.join(SCHEDULERS.values())}), got {args.scheduler!r}"
            )
    cache = args.cache_dir or Path(os.environ.get("SDRT_CACHE_DIR") or DEFAULT_CACHE)
    optional = {
        "threads": args.threads,
        "scheduler": scheduler,
        "prompt": args.prompt,
        "negative_prompt": args.negative_prompt,
        "optimum_venv": args.optimum_venv,
        "optimum_intel_venv": args.optimum_intel_venv,
        "built_dir": args.built,
        "peak_samples": args.peak_samples,
        "tiny_vae": args.tiny_vae,
    }
    return bench_config.BenchConfig(
        source=args.source,
        random_arch=args.arch,
        output_dir=args.output,
        cache_dir=cache.expanduser(),
        backends=tuple(name.strip() for name in args.backends.split(",") if name.strip()),
        sizes=bench_config.parse_sizes(args.size or ["256"]),
        steps=args.steps,
        batch=args.batch,
        guidance=args.guidance,
        runs=args.runs,
        warmup=args.warmup,
        precision=args.precision,
        seed=args.seed,
        matmul_size=args.matmul_size,
        **{name: value for name, value in optional.items() if value is not None},
    )


class RichProgress:
    """The harness's progress display: a status line and a bar over all runs."""

    def __init__(self, console):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

        self.console = console
        self.bar = Progress(
            "[progress.description]{task.description}",
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
        )
        self.task = self.bar.add_task("preparing", total=None)

    def __enter__(self):
        self.bar.start()
        return self

    def __exit__(self, *exc_info):
        self.bar.stop()

    def status(self, message: str) -> None:
        self.console.log(message)
        self.bar.update(self.task, description=message)

    def start_runs(self, total: int) -> None:
        self.bar.update(self.task, total=total, completed=0, description="runs")

    def advance(self, description: str) -> None:
        self.bar.update(self.task, advance=1, description=description)


def run(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.markup import escape

    from sdrt.benchmarks import fast_modes
    from sdrt.benchmarks.contenders import is_known, known_contenders, mode_contenders
    from sdrt.benchmarks.contenders.optimum_env import OPTIMUM, OPTIMUM_INTEL
    from sdrt.errors import InputError

    for asked, venv, env in (
        (args.setup_optimum, args.optimum_venv, OPTIMUM),
        (args.setup_optimum_intel, args.optimum_intel_venv, OPTIMUM_INTEL),
    ):
        if asked:
            python = env.setup(venv)
            print(f"{env.peer}'s virtualenv is ready: {python}")
            return 0
    config = _config(args)
    unknown = [name for name in config.backends if not is_known(name)]
    if unknown:
        raise InputError(
            f"--backends: unknown {', '.join(unknown)}; expected some of "
            f"{', '.join(known_contenders())}, or an sdrt backend with fast modes "
            f"(BACKEND+MODE..., modes: {fast_modes.MODE_GRAMMAR})"
        )
    mode_contenders(config.backends)  # an unknown or clashing mode: InputError now
    from sdrt.benchmarks.config import too_few_runs_warning
    from sdrt.benchmarks.harness import run_benchmark
    from sdrt.benchmarks.report import write_report

    console = Console(stderr=True, log_path=False)
    warning = too_few_runs_warning(config)
    if warning is not None:
        console.print(f"[yellow]warning:[/] {escape(warning)}", highlight=False)
    with RichProgress(console) as progress:
        report = run_benchmark(config, progress)
    paths = write_report(report, config.output_dir)
    for contender in report["contenders"]:
        if contender["status"] != "ok":
            console.print(
                f"[yellow]{contender['name']}: {contender['status']}:[/] {contender['error']}"
            )
    print(f"wrote {paths['markdown']} and {paths['json']}")
    return 0
