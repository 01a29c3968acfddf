"""``sdrt engines build FOLDER`` builds fp16 TensorRT engines; ``sdrt engines list FOLDER`` shows them.

Building needs an NVIDIA GPU with TensorRT, cupy and Polygraphy; elsewhere it stops with
one line saying what is missing (exit 2). Listing needs only the runtime.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from sdrt.errors import BackendUnavailableError, InputError

HELP = "Build fp16 TensorRT engines for a model folder (build), or show its engines (list)."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION")
    sub.required = True
    build = sub.add_parser("build", help="build (or reuse) fp16 TensorRT engines in FOLDER")
    build.add_argument("folder", help="model folder written by `sdrt build`")
    build.add_argument("--static", metavar="WxH", help="one fixed size, e.g. 512x512 (fastest)")
    build.add_argument("--min-size", type=int, help="smallest side in pixels (default: folder's)")
    build.add_argument("--opt-size", type=int, help="side TensorRT tunes for (default: folder's)")
    build.add_argument("--max-size", type=int, help="largest side in pixels (default: folder's)")
    build.add_argument("--batch", type=int, help="images per call to tune for (static: fixed)")
    build.add_argument("--max-batch", type=int, help="most images per call (default: folder's)")
    build.add_argument(
        "--no-guidance",
        action="store_true",
        help="U-Net batch not doubled (only for guidance_scale <= 1)",
    )
    build.add_argument("--refit", action="store_true", help="build refittable engines")
    build.add_argument(
        "--timing-cache",
        metavar="PATH",
        help="TensorRT timing cache to read and update (default: beside the engines)",
    )
    build.add_argument(
        "--components", help="comma-separated components (default: all the folder has)"
    )
    build.add_argument(
        "--optimization-level", type=int, default=3, help="TensorRT builder level 0..5 (default 3)"
    )
    build.add_argument(
        "--no-vae-fp32-fallback",
        action="store_true",
        help="skip the fp32 VAE decoder engine used when fp16 overflows",
    )
    listing = sub.add_parser("list", help="show the engines recorded in FOLDER")
    listing.add_argument("folder", help="model folder")


def parse_static(text: str) -> tuple[int, int]:
    """'768x512' -> (width, height): both sides, since a static engine fixes each."""
    from sdrt.sizes import parse_size

    if "x" not in text.lower():
        raise InputError(f"--static: expected WIDTHxHEIGHT such as 512x512, got {text!r}")
    size = parse_size(text, "--static")
    return size.width, size.height


def options_from_args(args: argparse.Namespace, manifest):
    from sdrt.engines.profiles import shape_range_from_options
    from sdrt.engines.tensorrt import TensorRTBuildOptions

    if not 0 <= args.optimization_level <= 5:
        raise InputError(f"--optimization-level: expected 0..5, got {args.optimization_level}")
    shapes = shape_range_from_options(
        manifest,
        static=parse_static(args.static) if args.static else None,
        min_size=args.min_size,
        opt_size=args.opt_size,
        max_size=args.max_size,
        batch=args.batch,
        max_batch=args.max_batch,
        guidance=not args.no_guidance,
    )
    components = None
    if args.components:
        components = tuple(c.strip() for c in args.components.split(",") if c.strip())
    return TensorRTBuildOptions(
        shapes=shapes,
        components=components,
        refit=args.refit,
        optimization_level=args.optimization_level,
        vae_fp32_fallback=not args.no_vae_fp32_fallback,
        timing_cache=Path(args.timing_cache) if args.timing_cache else None,
    )


def _build(args: argparse.Namespace) -> int:
    from sdrt.engines.tensorrt import build_and_report, check_can_build
    from sdrt.manifest import read_manifest

    manifest = read_manifest(args.folder)
    options = options_from_args(args, manifest)
    environment = check_can_build()  # fails fast, before hashing gigabytes of graphs
    return build_and_report(args.folder, options, environment)


def _list(args: argparse.Namespace) -> int:
    from sdrt.backends.engine_key import engine_cache_key
    from sdrt.engines.tensorrt import detect_environment
    from sdrt.manifest import read_manifest

    manifest = read_manifest(args.folder)
    if not manifest.engines:
        print(f"{args.folder}: no engines (build them with `sdrt engines build {args.folder}`)")
        return 0
    try:
        environment = detect_environment()
    except BackendUnavailableError as e:
        environment = None
        print(f"(not checked against this machine: {e})")
    for engine in manifest.engines:
        precision = engine.options.get("precision", "?")
        verification = engine.verification
        if verification is None:
            status = "unverified"
        elif verification.passed:
            status = f"verified (max abs error {verification.max_abs_error:.3g})"
        else:
            status = f"FAILED verification (max abs error {verification.max_abs_error:.3g})"
        if environment is not None and engine.target == environment.library:
            key = engine_cache_key(
                manifest.components[engine.component], engine.options, environment
            )
            if key != engine.cache_key:
                status += ", stale for this machine: rebuild"
        shapes = ", ".join(
            f"{name} {list(levels['min'])}..{list(levels['max'])}"
            for name, levels in engine.profile.items()
        )
        versions = ", ".join(f"{k} {v}" for k, v in engine.library_versions.items())
        print(
            f"{engine.target} {engine.component} {precision} {engine.cache_key} "
            f"[{versions}; compute capability {engine.device.get('compute_capability', '?')}] "
            f"{status}\n    {engine.path}\n    {shapes}"
        )
    return 0


def run(args: argparse.Namespace) -> int:
    return _build(args) if args.action == "build" else _list(args)
