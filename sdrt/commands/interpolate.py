"""``sdrt interpolate FOLDER "prompt A" "prompt B" --seeds 1,2 --frames 16 -o walk.gif``:
a smooth walk between prompts and seeds (sdrt.interpolation), as a GIF, an animated WebP,
an MP4 video (the ``video`` extra) or a folder of numbered PNG frames.

The options mean what they mean in ``sdrt generate`` (--size, --steps, --guidance,
--scheduler, --eta, --negative-prompt, --image/--strength). Every input is checked before the
model loads: the -o place and format (and, for .mp4, that the video extra is installed),
that it replaces no existing file without --force, the keyframes, the walk's settings for
the folder, the scheduler.
"""

from __future__ import annotations

import argparse
import secrets
import sys
from dataclasses import dataclass
from pathlib import Path

from sdrt.animation_files import (
    ANIMATIONS,
    FOLDER,
    check_frames_held,
    check_output,
    frame_paths,
    output_kind,
)
from sdrt.backends.registry import BACKENDS
from sdrt.commands.generate import IMG2IMG_STRENGTH, add_eta_argument, read_image
from sdrt.errors import InputError
from sdrt.files import check_output_file
from sdrt.interpolation import DEFAULT_FRAMES, METHODS
from sdrt.recipes import DEFAULT_ETA, DEFAULT_GUIDANCE_SCALE, DEFAULT_STEPS
from sdrt.sizes import add_size_arguments, size_from_options

HELP = "Walk between prompts and seeds: frames as a GIF, WebP, MP4 or a folder of numbered PNGs."
RANDOM_SEED = -1
DEFAULT_FPS = 8.0


@dataclass(frozen=True)
class InterpolateConfig:
    folder: Path
    prompts: tuple[str, ...]
    seeds: tuple[int, ...]  # as given; RANDOM_SEED entries are drawn in prepare()
    frames: int
    output: Path
    kind: str  # "GIF", "WEBP", "MP4" or sdrt.animation_files.FOLDER
    fps: float
    method: str
    negative_prompt: str | None
    image: Path | None
    strength: float | None  # None: 0.8 with --image
    scheduler: str | None
    steps: int
    guidance: float
    width: int | None
    height: int | None
    frames_per_call: int | None  # None: the folder's max batch
    backend: str
    progress: bool
    force: bool = False  # replace an existing animation or frames
    eta: float = DEFAULT_ETA  # diffusers' eta (DDIM, TCD), as sdrt generate's


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = (
        "Keyframes: one per PROMPT and per --seeds entry (a single prompt or seed is shared "
        "by every keyframe). --frames counts every frame, keyframes included; each keyframe's "
        "frame is the image `sdrt generate` makes with that prompt and seed. Output by -o: "
        f"{', '.join(ANIMATIONS)} (.mp4 needs pip install 'sdrt[video]'), or a folder (a name "
        "without a suffix) of frame-00.png, frame-01.png, ..."
    )
    parser.add_argument("folder", help="model folder written by `sdrt build`")
    parser.add_argument("prompt", nargs="+", help="the keyframes' prompts, in order")
    parser.add_argument(
        "--seeds",
        default="0",
        metavar="N,N,...",
        help="the keyframes' seeds, comma-separated, one or one per prompt; -1 picks one at "
        "random and prints the seeds to stderr (default: 0 for every keyframe)",
    )
    parser.add_argument(
        "--frames",
        type=int,
        metavar="N",
        default=DEFAULT_FRAMES,
        help=f"frames in all, keyframes included (default: {DEFAULT_FRAMES})",
    )
    parser.add_argument(
        "-o",
        "--output",
        metavar="PATH",
        default="walk.gif",
        help=f"{', '.join(ANIMATIONS)}, or a folder for PNG frames (default: walk.gif); an "
        "existing file or frame is replaced only with --force",
    )
    parser.add_argument(
        "--force",
        action="store_true",
        help="replace an existing animation or existing frames (default: refuse)",
    )
    parser.add_argument(
        "--fps",
        type=float,
        metavar="N",
        default=DEFAULT_FPS,
        help=f"frames per second of the animation (default: {DEFAULT_FPS:g})",
    )
    parser.add_argument(
        "--method",
        choices=METHODS,
        default="slerp",
        help="how the prompts' embeddings are interpolated; the noise is always slerped "
        "(default: slerp)",
    )
    _add_generate_arguments(parser)


def _add_generate_arguments(parser: argparse.ArgumentParser) -> None:
    """The options `sdrt generate` has too, with the same meanings."""
    add = parser.add_argument
    add("--negative-prompt", metavar="TEXT", default=None, help="for every frame (default: none)")
    add(
        "--image",
        metavar="FILE",
        default=None,
        help="start every frame from this image (img2img) (default: none)",
    )
    add(
        "--strength",
        type=float,
        metavar="S",
        default=None,
        help=f"how much of --image to repaint, in (0, 1] (default: {IMG2IMG_STRENGTH})",
    )
    add(
        "--scheduler", metavar="NAME", default=None, help="as sdrt generate (default: the folder's)"
    )
    add_eta_argument(add)
    add(
        "--steps",
        type=int,
        metavar="N",
        default=DEFAULT_STEPS,
        help="denoising steps (default: the folder's recipe (sdrt info), else 20)",
    )
    add(
        "--guidance",
        type=float,
        metavar="SCALE",
        default=DEFAULT_GUIDANCE_SCALE,
        help="classifier-free guidance scale, >= 0; <= 1 turns guidance off (default: the "
        "folder's recipe, else 7.5)",
    )
    add_size_arguments(add, "the model folder's default size, as sdrt generate")
    add(
        "--frames-per-call",
        type=int,
        metavar="N",
        default=None,
        help="frames made in one batched call (default: the folder's max batch)",
    )
    add("--backend", metavar="NAME", default="auto", help=f"{', '.join(BACKENDS)} (default: auto)")
    add("--no-progress", action="store_true", help="no progress bar (default: a bar on stderr)")


def parse_seeds(text: str) -> tuple[int, ...]:
    """``"1,2"`` -> (1, 2); -1 entries stay RANDOM_SEED."""
    parts = [p.strip() for p in text.split(",")]
    try:
        seeds = tuple(int(p) for p in parts)
    except ValueError:
        seeds = ()
    if not seeds or any(s < RANDOM_SEED for s in seeds):
        raise InputError(
            "--seeds: expected comma-separated integers >= 0 (or -1 for a random one), "
            f"e.g. 1,2, got {text!r}"
        )
    return seeds


def config_from_args(args: argparse.Namespace) -> InterpolateConfig:
    output = Path(args.output)
    kind = output_kind(output)
    check_output(output, kind, args.fps)
    if kind != FOLDER:  # a folder's frames are checked once their count is known (prepare)
        check_output_file(output, force=args.force)
    if args.strength is not None and args.image is None:
        raise InputError("--strength: applies to a start image; pass --image too, or drop it")
    width, height = size_from_options(args.size, args.width, args.height)
    return InterpolateConfig(
        folder=Path(args.folder),
        prompts=tuple(args.prompt),
        seeds=parse_seeds(args.seeds),
        frames=args.frames,
        output=output,
        kind=kind,
        fps=args.fps,
        method=args.method,
        negative_prompt=args.negative_prompt,
        image=Path(args.image) if args.image else None,
        strength=args.strength,
        scheduler=args.scheduler,
        steps=args.steps,
        guidance=args.guidance,
        width=width,
        height=height,
        frames_per_call=args.frames_per_call,
        backend=args.backend,
        progress=not args.no_progress,
        force=args.force,
        eta=args.eta,
    )


def prepare(config: InterpolateConfig):
    """The checked Walk, before the model loads: folder, keyframes, settings, scheduler,
    and that no frame it writes would replace an existing file (without --force)."""
    from sdrt.interpolation import make_walk
    from sdrt.manifest import read_manifest
    from sdrt.pipeline import make_scheduler
    from sdrt.schedulers import load_scheduler_config

    manifest = read_manifest(config.folder)
    scheduler_config = load_scheduler_config(config.folder)
    seeds = [secrets.randbelow(2**32) if s == RANDOM_SEED else s for s in config.seeds]
    walk = make_walk(
        manifest,
        list(config.prompts),
        seeds=seeds,
        num_frames=config.frames,
        negative_prompt=config.negative_prompt,
        method=config.method,
        batch_size=config.frames_per_call,
        num_inference_steps=config.steps,
        guidance_scale=config.guidance,
        height=config.height,
        width=config.width,
        scheduler=config.scheduler,
        image=read_image(config.image, "--image"),
        strength=IMG2IMG_STRENGTH if config.strength is None else config.strength,
        eta=config.eta,
    )
    request = walk.request  # the recipe's scheduler where --scheduler was left out
    scheduler = make_scheduler(
        request.scheduler, scheduler_config, config.folder, manifest, request.scheduler_config
    )
    scheduler.plan(request.num_inference_steps, strength=request.strength, eta=request.eta)
    check_frames_held(config.kind, len(walk.positions), walk.request.width, walk.request.height)
    if config.kind == FOLDER:
        for path in frame_paths(config.output, len(walk.positions)):
            check_output_file(path, force=config.force)
    if RANDOM_SEED in config.seeds:
        print(f"seeds: {','.join(map(str, walk.seeds))}", file=sys.stderr)
    return walk


def run(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    walk = prepare(config)
    from sdrt.pipeline import Pipeline

    pipe = Pipeline.load(config.folder, backend=config.backend)
    parent = config.output if config.kind == FOLDER else config.output.parent
    parent.mkdir(parents=True, exist_ok=True)
    _generate(pipe, walk, config)
    if config.kind != FOLDER:
        print(config.output, flush=True)
    return 0


def _generate(pipe, walk, config: InterpolateConfig) -> None:
    """Each frame handed to the writer as it comes, with a bar over frames: nothing here
    holds a frame (the writer may: sdrt.animation_files)."""
    from tqdm import tqdm

    from sdrt.animation_files import open_animation

    total = len(walk.positions)
    bar = tqdm(
        total=total, desc="frames", unit="frame", file=sys.stderr, disable=not config.progress
    )
    try:
        with open_animation(config.output, config.kind, config.fps, total) as writer:
            for progress in pipe.generate_walk(walk, keep_frames=False):
                writer.write(progress.image)
                bar.update(1)
    finally:
        bar.close()
