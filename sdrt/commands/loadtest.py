"""``sdrt loadtest URL``: drive an images server and write a report (sdrt/benchmarks/
loadtest.py). Like ``sdrt bench``, a benchmark command: the runtime never imports it."""

from __future__ import annotations

import argparse
from pathlib import Path

from sdrt.errors import InputError

HELP = "Load-test an images server (sdrt serve): latency percentiles, status counts, images/s."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("url", help="the server, e.g. http://127.0.0.1:8000")
    parser.add_argument(
        "--concurrency", type=int, default=4, metavar="C", help="client threads (default: 4)"
    )
    parser.add_argument(
        "--requests", type=int, default=40, metavar="N", help="requests to send (default: 40)"
    )
    parser.add_argument(
        "--duration",
        type=float,
        default=None,
        metavar="S",
        help="stop sending after S seconds (default: when N are sent)",
    )
    parser.add_argument(
        "--size", default="64x64", metavar="WxH", help="image size (default: 64x64)"
    )
    parser.add_argument(
        "--steps", type=int, default=4, metavar="N", help="denoising steps (default: 4)"
    )
    parser.add_argument("--guidance", type=float, default=7.5, help="guidance scale (default: 7.5)")
    parser.add_argument("--scheduler", default="euler", help="scheduler (default: euler)")
    _add_client_arguments(parser)


def _add_client_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--api-key", default=None, metavar="KEY", help="bearer token (default: none)"
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=120.0,
        metavar="S",
        help="seconds to wait for one answer (default: 120)",
    )
    parser.add_argument(
        "--check",
        type=Path,
        default=None,
        metavar="FOLDER",
        help="also generate every accepted image locally from FOLDER and compare pixels",
    )
    parser.add_argument(
        "--no-retry-after",
        action="store_true",
        help="after a 429, send the next request at once (default: wait its Retry-After)",
    )
    parser.add_argument(
        "-o",
        "--output",
        type=Path,
        default=Path("reports/loadtest"),
        help="report folder (default: reports/loadtest); an earlier report in it is replaced "
        "only with --force",
    )
    parser.add_argument(
        "--force", action="store_true", help="replace the report in -o (default: refuse)"
    )


def run(args: argparse.Namespace) -> int:
    from sdrt.benchmarks.loadtest import LoadConfig, check_pixels, parse_url, run_load
    from sdrt.benchmarks.loadtest_report import REPORT_FILES, write_report
    from sdrt.files import check_output_file
    from sdrt.sizes import parse_size

    parse_url(args.url)
    size = parse_size(args.size)
    for option, value in (
        ("--concurrency", args.concurrency),
        ("--requests", args.requests),
        ("--steps", args.steps),
    ):
        if value < 1:
            raise InputError(f"{option}: expected an integer >= 1, got {value}")
    for name in REPORT_FILES:  # before the load is sent
        check_output_file(args.output / name, force=args.force)
    config = LoadConfig(
        url=args.url,
        concurrency=args.concurrency,
        requests=args.requests,
        duration=args.duration,
        size=size.label,
        steps=args.steps,
        guidance=args.guidance,
        scheduler=args.scheduler,
        api_key=args.api_key,
        timeout=args.timeout,
        check_folder=args.check,
        retry_after=not args.no_retry_after,
    )
    outcomes, wall = run_load(config)
    if config.check_folder is not None:
        outcomes = check_pixels(config, outcomes)
    summary = write_report(config, outcomes, wall, args.output)["summary"]
    print(
        f"{args.output}/loadtest.md: {summary['sent']} sent, statuses {summary['statuses']}, "
        f"{summary['lost']} lost, {summary['wrong']} wrong, {summary['images_per_s']:.2f} images/s"
    )
    return 1 if summary["lost"] or summary["wrong"] else 0
