"""``sdrt build SOURCE -o OUT``: export a diffusers SD pipeline to a verified ONNX model folder."""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sdrt.export.build import HeldOutput
    from sdrt.export.build_config import BuildConfig

HELP = (
    "Export a Stable Diffusion pipeline (diffusers folder, Hub id or single-file checkpoint) "
    "to a verified ONNX model folder."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "source",
        metavar="SOURCE",
        help="a local diffusers folder, a Hub id, or a single-file checkpoint (.safetensors, "
        ".ckpt) in the original LDM/A1111 layout; an ONNX folder (exported by Optimum) is "
        "adopted as `sdrt adopt SOURCE -o OUTPUT` does",
    )
    parser.add_argument(
        "-o", "--output", required=True, type=Path, help="the model folder to write"
    )
    parser.add_argument(
        "--precision",
        choices=("fp32", "fp16", "int8"),
        default="fp32",
        help="int8: the U-Net quantized for the CPU (calibrated; text encoder and VAE fp32)",
    )
    parser.add_argument(
        "--int8-method",
        choices=("onnxruntime", "nncf"),
        default="onnxruntime",
        help="--precision int8: onnxruntime (the U-Net's ONNX graph made QDQ; runs on every "
        "backend) or nncf (an OpenVINO IR beside the fp32 graph, for backend openvino: faster "
        "where measured; needs nncf and openvino) (default: %(default)s)",
    )
    parser.add_argument(
        "--calibration-prompts",
        type=Path,
        default=None,
        metavar="FILE",
        help="--precision int8: a text file of calibration prompts, one a line "
        "(default: a built-in list)",
    )
    parser.add_argument(
        "--vae-precision",
        choices=("fp32", "fp16"),
        default=None,
        help="VAE precision (default: as --precision; fp32 where the VAE config asks to upcast)",
    )
    parser.add_argument("--min-size", type=int, default=256, help="smallest image side, pixels")
    parser.add_argument("--max-size", type=int, default=1024, help="largest image side, pixels")
    parser.add_argument(
        "--opt-size", type=int, default=None, help="most used image side (default: the model's)"
    )
    parser.add_argument("--max-batch", type=int, default=4, help="most images per call")
    parser.add_argument("--opset", type=int, default=17, help="ONNX opset (14..20)")
    parser.add_argument("--revision", default=None, help="Hub revision of SOURCE")
    parser.add_argument(
        "--config",
        default=None,
        help="single-file SOURCE: its architecture (sd15, sd21, sdxl, tiny, tiny-xl, ...) or a "
        "local diffusers folder with its configs and tokenizer (default: detected from the keys)",
    )
    parser.add_argument(
        "--prediction-type",
        choices=("epsilon", "v_prediction", "sample"),
        default=None,
        help="single-file SOURCE: override the config's (e.g. epsilon for SD 2.x base files)",
    )
    parser.add_argument(
        "--force", action="store_true", help="replace OUT (unchanged components are reused)"
    )
    parser.add_argument(
        "--lora",
        action="append",
        default=[],
        metavar="FILE[:SCALE]",
        help="fuse this LoRA into the weights at SCALE (default 1.0) before export, as "
        "diffusers' load_lora_weights + fuse_lora; repeatable",
    )
    parser.add_argument(
        "--embedding",
        action="append",
        default=[],
        metavar="FILE[:TOKEN]",
        help="add this textual-inversion embedding (as TOKEN; default: the file's own) before "
        "export, as diffusers' load_textual_inversion; repeatable",
    )
    parser.add_argument(
        "--tome-ratio",
        type=float,
        default=None,
        help="bake token merging (ToMe for SD, tomesd's deterministic setting) into the U-Net: "
        "the fraction of self-attention tokens merged, in (0, 0.75] (default: off)",
    )
    parser.add_argument(
        "--tome-max-downsample",
        type=int,
        default=1,
        help="with --tome-ratio: merge in blocks down-sampled at most this much (1, 2, 4, 8)",
    )
    parser.add_argument(
        "--lora-ready",
        nargs="?",
        const="attention",
        default=None,
        choices=("attention", "all"),
        help="give the modules LoRA touches low-rank branches fed at run time, so that "
        "Pipeline.load_lora_weights and `generate --lora` work; a U-Net step on the "
        "CPU is somewhat slower (docs/adapters.md; default: off). Bare or 'attention': the "
        "transformer blocks' modules; 'all': every Linear and conv of the U-Net too, for "
        "LCM-LoRA, TCD, Hyper-SD, Lightning and LoCon files (more branches, slower steps)",
    )
    parser.add_argument(
        "--deep-cache",
        action="store_true",
        help="also export what DeepCache needs (the U-Net's cached features and a shallow "
        "U-Net per branch), so that `generate --deep-cache-interval N` works (default: off)",
    )
    parser.add_argument(
        "--deep-cache-branches",
        default=None,
        metavar="B[,B...]",
        help="with --deep-cache: the DeepCache branches (cache_branch_id) to build (default: 0)",
    )
    parser.add_argument(
        "--tiny-vae",
        default=None,
        metavar="FOLDER",
        help="also export this diffusers AutoencoderTiny (TAESD; a local folder or a Hub id) as "
        "vae_decoder_tiny/ and vae_encoder_tiny/ beside the full VAE: calls choose it with "
        "vae='tiny' (`sdrt generate --vae tiny`); `sdrt init-model tiny-taesd` makes a random one",
    )
    parser.add_argument(
        "--controlnet",
        action="append",
        default=None,
        metavar="[NAME=]PATH[,...]",
        help="also export these diffusers ControlNetModels (local folders or Hub ids; repeatable), "
        "each named NAME or its folder's base name, and a U-Net that takes their residuals "
        "beside the plain one: calls pass control_image= (and controlnet='NAME')",
    )
    parser.add_argument(
        "--t2i-adapter",
        default=None,
        metavar="[NAME=]PATH",
        help="also export this diffusers T2IAdapter (a local folder or a Hub id) and a U-Net "
        "that takes its features beside the plain one: calls pass adapter_image= (the adapter "
        "runs once per image, the cheap form of spatial control)",
    )
    parser.add_argument(
        "--recipe",
        default=None,
        metavar="NAME|KEY=VALUE,...",
        help="record the steps, guidance and scheduler this distilled model runs with, which "
        "calls that leave them out take: a name (sd-turbo, sdxl-turbo, sdxl-lightning-4step, "
        "lcm, lcm-lora, tcd, hyper-sd, ...) and/or settings (steps=4,guidance=1.0,"
        "scheduler=LCMScheduler,timestep_spacing=trailing,eta=0.3) (default: from the "
        "source's configs: LCM and TCD folders, Turbo init-models)",
    )
    parser.add_argument(
        "--target",
        choices=("onnx", "ort-cpu", "tensorrt"),
        default="onnx",
        help="ort-cpu: also save ONNX Runtime's optimised CPU graphs for this machine (else "
        "the first load does); tensorrt: also build fp16 TensorRT engines for the folder's "
        "size and batch range (needs an NVIDIA GPU; `sdrt engines build` offers more choices)",
    )


def run(args: argparse.Namespace) -> int:
    try:
        with _sigterm_raises():
            return _run(args)
    except _Terminated:
        print("sdrt build: terminated by SIGTERM", file=sys.stderr)
        return 128 + signal.SIGTERM


class _Terminated(BaseException):
    """SIGTERM, raised where the main thread is, so that the build cleans up as it unwinds.
    A BaseException, like KeyboardInterrupt: no ``except Exception`` swallows it."""


@contextmanager
def _sigterm_raises() -> Iterator[None]:
    """Turn the first SIGTERM into ``_Terminated``; a second one ends the process at once."""
    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers can only be set from the main thread
        return

    def handler(signum, frame):
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        raise _Terminated

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)


def _calibration_prompts(path: Path | None) -> tuple[str, ...]:
    """The prompts of a --calibration-prompts file, one a line (blank lines skipped)."""
    from sdrt.errors import InputError

    if path is None:
        return ()
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(
            f"--calibration-prompts: expected a readable UTF-8 text file, got {str(path)!r} ({e})"
        ) from None
    prompts = tuple(line.strip() for line in text.splitlines() if line.strip())
    if not prompts:
        raise InputError(f"--calibration-prompts: {str(path)!r} has no prompts (one a line)")
    return prompts


def _run(args: argparse.Namespace) -> int:
    if _is_onnx_folder(args.source):  # exported elsewhere (Optimum): adopt, don't export
        return _adopt(args)
    _check_export_installed()
    config = config_from_args(args)  # every argument and file checked before torch loads
    from sdrt.export.build import hold_output

    environment = None
    if args.target == "tensorrt":  # fail before a long export on a machine without TensorRT
        from sdrt.engines.tensorrt import check_can_build

        environment = check_can_build()
    with hold_output(config.output) as held:  # for the build and the target's steps after it
        return _build(args, config, held, environment)


# What exporting imports (the 'export' extra), found without importing it.
EXPORT_MODULES = ("torch", "diffusers", "transformers", "onnx")


def _check_export_installed() -> None:
    """ModuleNotFoundError (the CLI names the extra) where the export extra is missing:
    said first, as no argument can be fixed to get past it."""
    import importlib.util

    for name in EXPORT_MODULES:
        if importlib.util.find_spec(name) is None:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)


def config_from_args(args: argparse.Namespace) -> BuildConfig:
    """The checked BuildConfig, or InputError, importing nothing heavy (no torch, no
    diffusers): a mistyped argument is said in a second, before any progress is printed."""
    from sdrt.adapters.options import parse_embedding_option, parse_lora_option
    from sdrt.export.build_config import BuildConfig
    from sdrt.export.single_file import SingleFileOptions
    from sdrt.export.source import local_folder_or_hub_id
    from sdrt.recipes import parse_recipe_option

    if not Path(args.source).expanduser().is_file():  # a single-file checkpoint is a file
        local_folder_or_hub_id(args.source, "source", "a diffusers folder or a Hub id")
    return BuildConfig(
        source=args.source,
        output=args.output,
        precision=args.precision,
        vae_precision=args.vae_precision,
        min_size=args.min_size,
        max_size=args.max_size,
        opt_size=args.opt_size,
        max_batch=args.max_batch,
        opset=args.opset,
        force=args.force,
        revision=args.revision,
        single_file=SingleFileOptions(config=args.config, prediction_type=args.prediction_type),
        loras=tuple(parse_lora_option(text) for text in args.lora),
        embeddings=tuple(parse_embedding_option(text) for text in args.embedding),
        calibration_prompts=_calibration_prompts(args.calibration_prompts),
        int8_method=args.int8_method,
        lora_ready=args.lora_ready is not None,
        lora_targets=args.lora_ready or "attention",
        deep_cache_branches=_deep_cache_branches(args),
        tiny_vae=args.tiny_vae,
        controlnets=_controlnet_options(args.controlnet),
        t2i_adapter=_t2i_adapter_option(args.t2i_adapter),
        tome=_tome_options(args),
        recipe=None if args.recipe is None else parse_recipe_option(args.recipe),
    )


def _build(args: argparse.Namespace, config: BuildConfig, held: HeldOutput, environment) -> int:
    from sdrt.export.build import build_held

    progress = _Progress()
    try:
        result = build_held(config, held, progress=progress)
    finally:
        progress.close()
    for stale in result.stale_removed:
        left_by = f" (pid {stale.pid})" if stale.pid is not None else ""
        restored = (
            f"; put back {result.output}, which it was replacing" if stale.restored_output else ""
        )
        print(
            f"removed {stale.path}, {stale.size_bytes / 2**20:.1f} MiB left by a stopped "
            f"build{left_by}{restored}"
        )
    for item in result.components:
        comp = item.component
        counts = " -> ".join(f"{v} {k}" for k, v in comp.node_counts.items())
        check = comp.verification
        errors = (
            f"max abs error {check.max_abs_error:.3g}, max rel error {check.max_rel_error:.3g}"
            if check
            else "not verified"
        )
        print(
            f"{item.name:15s} {item.action:8s} {comp.precision}  nodes {counts}; {errors}  ({item.seconds:.1f} s)"
        )
    size_mb = result.size_bytes / 2**20
    print(f"built {result.output} ({size_mb:.1f} MiB) in {result.seconds:.1f} s")
    if args.target == "ort-cpu":
        import time

        from sdrt.backends.ort_saved_graphs import save_optimized_models

        started = time.perf_counter()
        saved = save_optimized_models(result.output, result.manifest)
        print(
            f"saved {len(saved)} optimised ONNX Runtime CPU graphs under "
            f"{result.output / 'engines' / 'ort-cpu'} in {time.perf_counter() - started:.1f} s"
        )
    if environment is not None:
        from sdrt.engines.profiles import shape_range_from_options
        from sdrt.engines.tensorrt import TensorRTBuildOptions, build_and_report
        from sdrt.manifest import read_manifest

        shapes = shape_range_from_options(read_manifest(result.output))
        return build_and_report(result.output, TensorRTBuildOptions(shapes=shapes), environment)
    return 0


def _deep_cache_branches(args: argparse.Namespace) -> tuple[int, ...]:
    from sdrt.errors import InputError

    if not args.deep_cache:
        if args.deep_cache_branches is not None:
            raise InputError("--deep-cache-branches: expected with --deep-cache, got it alone")
        return ()
    try:
        return tuple(int(b) for b in (args.deep_cache_branches or "0").split(","))
    except ValueError:
        raise InputError(
            f"--deep-cache-branches: expected integers separated by commas, got "
            f"{args.deep_cache_branches!r}"
        ) from None


def _is_onnx_folder(source: str) -> bool:
    from sdrt.adopt import is_onnx_folder

    return is_onnx_folder(source)


def _adopt(args: argparse.Namespace) -> int:
    """`sdrt build ONNX_FOLDER -o OUT` is `sdrt adopt ONNX_FOLDER -o OUT`, under the build lock."""
    from sdrt.adopt import AdoptOptions, adopt
    from sdrt.commands.adopt import print_summary
    from sdrt.errors import InputError
    from sdrt.export.build import hold_output

    export_only = {
        "precision": "fp32",
        "vae_precision": None,
        "opt_size": None,
        "opset": 17,
        "revision": None,
        "tiny_vae": None,
        "controlnet": None,
        "t2i_adapter": None,
        "calibration_prompts": None,
        "recipe": None,  # recorded from a diffusers source's configs; adopt has none
    }
    given = [f"--{k.replace('_', '-')}" for k, v in export_only.items() if getattr(args, k) != v]
    if given or args.target != "onnx":
        raise InputError(
            f"{args.source} is an ONNX folder, adopted as it is: {', '.join(given or ['--target'])} "
            "apply only to exporting a diffusers folder"
        )
    options = AdoptOptions(args.min_size, args.max_size, args.max_batch)
    with hold_output(args.output):
        result = adopt(args.source, args.output, options=options, force=args.force)
    print_summary(result)
    return 0


class _Progress:
    """One tqdm line on stderr: which component and what step is running. Made on the first
    report, so that a build refused at once (a busy output) prints its one error line only.
    Where stderr is not a terminal (a log file, a pipe), one plain line per stage instead:
    a bar redrawn with carriage returns would run every stage together on one line."""

    def __init__(self, stream=None):
        self.stream = stream or sys.stderr
        self.bar = None
        self.last = None

    def __call__(self, component: str, stage: str) -> None:
        if not _is_terminal(self.stream):
            line = f"{component}: {stage}"
            if line != self.last:
                print(line, file=self.stream, flush=True)
                self.last = line
            return
        if self.bar is None:
            from tqdm import tqdm

            self.bar = tqdm(
                total=None, file=self.stream, bar_format="{desc} [{elapsed}]", leave=False
            )
        self.bar.set_description_str(f"{component}: {stage}")
        self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _is_terminal(stream) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # replaced by a test, or closed
        return False


def _tome_options(args):
    if args.tome_ratio is None:
        return None
    from sdrt.export.tome_options import TomeOptions

    return TomeOptions(ratio=args.tome_ratio, max_downsample=args.tome_max_downsample)


def _t2i_adapter_option(value: str | None):
    """``--t2i-adapter [NAME=]PATH`` as a T2IAdapterOption; None without it."""
    if value is None:
        return None
    from sdrt.export.t2i_adapter_options import T2IAdapterOption

    return T2IAdapterOption.parse(value)


def _controlnet_options(values: list[str] | None):
    """``--controlnet`` (repeatable, each comma-separated) as ControlNetOptions, in order."""
    if not values:
        return ()
    from sdrt.export.controlnet_options import check_unique, parse_controlnet_options

    return check_unique([o for text in values for o in parse_controlnet_options(text)])
