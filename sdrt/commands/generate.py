"""``sdrt generate FOLDER "prompt" ... -o out.png``: txt2img, img2img (--image), inpainting
(--mask), outpainting (--outpaint) and ControlNet (--control, sdrt/control/spec.py).

Needs only the runtime (numpy, onnxruntime, tokenizers, pillow, tqdm). Every input is
checked before the model loads: the -o place must be writable, the request valid for the
folder (sizes, strength, guidance, scheduler). Images are written atomically, as PNG,
JPEG or WebP by the -o suffix, with the generation settings in A1111's "parameters"
convention (sdrt.infotext). Several images are numbered: see ``numbered_paths``.
"""

from __future__ import annotations

import argparse
import dataclasses
import secrets
import sys
from dataclasses import dataclass
from pathlib import Path

from sdrt.backends.registry import BACKENDS
from sdrt.errors import InputError
from sdrt.files import check_output_file
from sdrt.image_files import DEFAULT_QUALITY, FORMATS, check_writable, image_format, numbered_paths
from sdrt.recipes import DEFAULT_ETA, DEFAULT_GUIDANCE_SCALE, DEFAULT_STEPS
from sdrt.sizes import add_size_arguments, size_from_options

HELP = (
    "Generate images from a model folder: txt2img, img2img (--image), inpainting (--mask), "
    "outpainting (--outpaint)."
)
IMG2IMG_STRENGTH = 0.8  # diffusers' StableDiffusionImg2ImgPipeline default
INPAINT_STRENGTH = 1.0  # diffusers' StableDiffusionInpaintPipeline default
RANDOM_SEED = -1
OUTPAINT_OVERLAP = 8


@dataclass(frozen=True)
class Margins:
    left: int
    top: int
    right: int
    bottom: int


@dataclass(frozen=True)
class GenerateConfig:
    folder: Path
    prompts: tuple[str, ...]
    output: Path
    negative_prompt: str | None
    image: Path | None
    mask: Path | None
    outpaint: Margins | None
    strength: float | None  # None: 0.8 for img2img, 1.0 for inpainting and outpainting
    scheduler: str | None  # None: the folder's
    seed: int | None  # None: pick one at random
    steps: int
    guidance: float
    width: int | None
    height: int | None
    batch: int
    quality: int
    backend: str
    progress: bool
    embeddings: tuple = ()  # sdrt.adapters.options.EmbeddingOption, loaded in order
    loras: tuple = ()  # sdrt.adapters.options.LoraOption, applied at run time
    deep_cache_interval: int | None = None  # DeepCache (sdrt/deep_cache.py); None: off
    deep_cache_branch: int | None = None
    vae: str | None = None  # "full" / "tiny" (sdrt/vae_choice.py); None: the full VAE
    eta: float = DEFAULT_ETA  # diffusers' eta (DDIM, TCD); ignored by other schedulers
    force: bool = False  # replace existing output files
    # sdrt.control.spec.ControlSpec, one per ControlNet of the folder, in build order
    controls: tuple = ()
    # sdrt.control.adapter_spec.AdapterSpec: --adapter-image; None: none
    adapter: object = None


def _epilog() -> str:
    from sdrt.schedulers import SCHEDULER_CLASSES, SCHEDULERS

    return (
        f"schedulers (--scheduler): aliases {', '.join(SCHEDULERS)}; or class names "
        f"{', '.join(SCHEDULER_CLASSES)}. Default: the folder's own "
        "(scheduler/scheduler_config.json). "
        "Output names: one image is written to -o as given; several (prompts x --batch) to "
        "-o's name with a zero-padded index, out-00.png, out-01.png, ..., numbered prompt by "
        "prompt (index = prompt number * batch + image number). "
        f"Output formats by suffix: {', '.join(FORMATS)}; each carries its settings "
        "(PNG text chunk 'parameters', EXIF UserComment for JPEG and WebP)."
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = _epilog()
    parser.add_argument("folder", help="model folder written by `sdrt build`")
    parser.add_argument(
        "prompt",
        nargs="*",
        help="what to draw; several prompts make several images (default: none, then "
        "--prompt-file is needed)",
    )
    parser.add_argument(
        "--prompt-file",
        default=None,
        metavar="FILE",
        help="read prompts from FILE, one per line; blank lines and lines starting with # are "
        "skipped; they come after any PROMPT given (default: none)",
    )
    parser.add_argument(
        "-o",
        "--output",
        metavar="FILE",
        default="out.png",
        help=f"image to write; its suffix picks the format: {', '.join(FORMATS)} "
        "(default: out.png); an existing file is replaced only with --force",
    )
    parser.add_argument(
        "--force", action="store_true", help="replace existing output files (default: refuse)"
    )
    parser.add_argument(
        "--negative-prompt",
        metavar="TEXT",
        default=None,
        help="what to steer away from, for every prompt (default: none)",
    )
    parser.add_argument(
        "--lora",
        action="append",
        default=[],
        metavar="FILE[:SCALE]",
        help="apply a LoRA .safetensors file (diffusers/PEFT or kohya keys) at run time, "
        "with SCALE (default 1.0); repeatable, the adapters add up (default: none)",
    )
    _add_image_arguments(parser)
    _add_sampling_arguments(parser)
    _add_output_arguments(parser)


def _add_image_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--image",
        metavar="FILE",
        default=None,
        help="start from this image (img2img) (default: none, txt2img)",
    )
    parser.add_argument(
        "--mask",
        metavar="FILE",
        default=None,
        help="repaint the white area of --image (default: none)",
    )
    parser.add_argument(
        "--outpaint",
        default=None,
        metavar="LEFT,TOP,RIGHT,BOTTOM",
        help="extend --image by these margins in pixels and paint the new area (e.g. 0,0,128,0 "
        "widens to the right; default: none)",
    )
    parser.add_argument(
        "--strength",
        type=float,
        metavar="S",
        default=None,
        help="how much of --image to repaint, in (0, 1]; needs --image "
        f"(default: {IMG2IMG_STRENGTH} for img2img, {INPAINT_STRENGTH} with --mask or "
        "--outpaint, as diffusers' pipelines)",
    )
    parser.add_argument(
        "--control",
        action="append",
        default=[],
        metavar="[canny:]FILE[:SCALE[:START:END]]",
        help="a control image for the folder's ControlNets (built with sdrt build "
        "--controlnet), one per ControlNet in build order; canny:PHOTO makes the photo's canny "
        "edge map (needs the 'control' extra); SCALE is the conditioning scale (default 1.0), "
        "START:END the fractions of the steps it steers (default 0:1); repeatable "
        "(default: none)",
    )
    parser.add_argument(
        "--adapter-image",
        default=None,
        metavar="[canny:]FILE[:SCALE[:FACTOR]]",
        help="the image for the folder's T2I-Adapter (built with sdrt build --t2i-adapter); "
        "canny:PHOTO makes the photo's canny edge map (needs the 'control' extra); SCALE is "
        "the features' weight (default 1.0), FACTOR the fraction of the steps they feed "
        "(default 1.0) (default: none)",
    )


def add_eta_argument(add) -> None:
    """--eta, as `sdrt generate` and `sdrt interpolate` take it (checked by make_request
    and the scheduler's plan, as the call checks ``eta``)."""
    add(
        "--eta",
        type=float,
        metavar="ETA",
        default=DEFAULT_ETA,
        help="stochasticity of DDIM and TCD (TCD's gamma; its LoRAs' cards use 0.3), in "
        "[0, 1]; other schedulers ignore it, as diffusers' pipelines do (default: the "
        "folder's recipe, else 0.0)",
    )


def _add_sampling_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--scheduler",
        metavar="NAME",
        default=None,
        help="scheduler class name or alias, listed below (default: the folder's recipe's, "
        "else its own)",
    )
    add_eta_argument(parser.add_argument)
    parser.add_argument(
        "--seed",
        type=int,
        metavar="N",
        default=0,
        help="random seed; -1 picks one at random and prints it to stderr (default: 0)",
    )
    parser.add_argument(
        "--steps",
        type=int,
        metavar="N",
        default=DEFAULT_STEPS,
        help="denoising steps (default: the folder's recipe (sdrt info), else 20)",
    )
    parser.add_argument(
        "--guidance",
        type=float,
        metavar="SCALE",
        default=DEFAULT_GUIDANCE_SCALE,
        help="classifier-free guidance scale, >= 0; <= 1 turns guidance off (default: the "
        "folder's recipe, else 7.5)",
    )
    add_size_arguments(
        parser.add_argument,
        "the model folder's default size (sdrt info); with --image, the image's size rounded "
        "down to the folder's size multiple and scaled into its built range",
    )
    parser.add_argument(
        "--batch",
        type=int,
        metavar="N",
        default=1,
        help="images per prompt, made in one call (num_images_per_prompt) (default: 1)",
    )
    parser.add_argument(
        "--deep-cache-interval",
        type=int,
        metavar="N",
        default=None,
        help="DeepCache: the whole U-Net every N steps, its shallow part between (a folder "
        "built with --deep-cache; default: off)",
    )
    parser.add_argument(
        "--deep-cache-branch",
        type=int,
        metavar="B",
        default=None,
        help="DeepCache's cache branch (default: the folder's first built branch)",
    )


def _add_output_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--quality",
        type=int,
        metavar="Q",
        default=None,
        help=f"JPEG / WebP quality, 1..100 (default: {DEFAULT_QUALITY}; not for .png)",
    )
    parser.add_argument(
        "--backend",
        metavar="NAME",
        default="auto",
        help=f"{', '.join(BACKENDS)} (default: auto)",
    )
    parser.add_argument(
        "--vae",
        choices=("full", "tiny"),
        default=None,
        help="tiny: decode (and encode a start image) with the folder's tiny VAE, built by "
        "`sdrt build --tiny-vae` (default: full, the model's own VAE)",
    )
    parser.add_argument(
        "--no-progress", action="store_true", help="no progress bar (default: a bar on stderr)"
    )
    parser.add_argument(
        "--embedding",
        action="append",
        default=[],
        metavar="FILE[:TOKEN]",
        help="load a textual-inversion embedding (diffusers, A1111 or SDXL file) as TOKEN "
        "(default: the file's own token); repeatable (default: none)",
    )


def parse_margins(text: str) -> Margins:
    """``"0,0,128,0"`` -> Margins(left=0, top=0, right=128, bottom=0)."""
    parts = [p.strip() for p in text.split(",")]
    if len(parts) != 4 or not all(p.isascii() and p.isdigit() for p in parts):
        raise InputError(
            "--outpaint: expected LEFT,TOP,RIGHT,BOTTOM as four integers >= 0 in pixels "
            f"(e.g. 0,0,128,0), got {text!r}"
        )
    margins = Margins(*(int(p) for p in parts))
    if not any((margins.left, margins.top, margins.right, margins.bottom)):
        raise InputError(f"--outpaint: expected at least one margin above 0, got {text!r}")
    return margins


def read_prompt_file(path: Path) -> list[str]:
    """Prompts, one a line; blank lines and ``#`` comment lines are skipped."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError(f"--prompt-file: no such file {str(path)!r}") from None
    except UnicodeDecodeError as e:
        raise InputError(f"--prompt-file: expected UTF-8 text in {str(path)!r} ({e})") from None
    except OSError as e:
        raise InputError(f"--prompt-file: cannot read {str(path)!r} ({e.strerror or e})") from None
    prompts = [line.strip() for line in text.splitlines()]
    prompts = [p for p in prompts if p and not p.startswith("#")]
    if not prompts:
        raise InputError(
            f"--prompt-file: expected at least one prompt line in {str(path)!r}, got none"
        )
    return prompts


def config_from_args(args: argparse.Namespace) -> GenerateConfig:
    output = Path(args.output)
    image_format(output)
    check_writable(output)

    prompts = list(args.prompt)
    if args.prompt_file is not None:
        prompts += read_prompt_file(Path(args.prompt_file))
    if not prompts:
        raise InputError("expected a PROMPT or --prompt-file, got neither")

    width, height = size_from_options(args.size, args.width, args.height)
    _check_image_options(args)
    outpaint = None if args.outpaint is None else parse_margins(args.outpaint)
    if args.seed < RANDOM_SEED:
        raise InputError(
            f"--seed: expected an integer >= 0, or -1 for a random seed, got {args.seed}"
        )
    quality = _quality(args.quality, output)
    from sdrt.adapters.lora_files import read_lora_file
    from sdrt.adapters.options import parse_embedding_option, parse_lora_option
    from sdrt.control.adapter_spec import parse_adapter_image
    from sdrt.control.spec import parse_control

    embeddings = tuple(parse_embedding_option(text) for text in args.embedding)
    loras = tuple(parse_lora_option(text) for text in args.lora)
    for lora in loras:
        read_lora_file(lora.path)  # a corrupt or unknown file fails before the model loads
    return GenerateConfig(
        folder=Path(args.folder),
        prompts=tuple(prompts),
        output=output,
        negative_prompt=args.negative_prompt,
        image=Path(args.image) if args.image else None,
        mask=Path(args.mask) if args.mask else None,
        outpaint=outpaint,
        strength=args.strength,
        scheduler=args.scheduler,
        seed=None if args.seed == RANDOM_SEED else args.seed,
        steps=args.steps,
        guidance=args.guidance,
        width=width,
        height=height,
        batch=args.batch,
        quality=quality,
        backend=args.backend,
        progress=not args.no_progress,
        embeddings=embeddings,
        loras=loras,
        deep_cache_interval=args.deep_cache_interval,
        deep_cache_branch=args.deep_cache_branch,
        vae=args.vae,
        eta=args.eta,
        force=args.force,
        controls=tuple(parse_control(text) for text in args.control),
        adapter=None if args.adapter_image is None else parse_adapter_image(args.adapter_image),
    )


def _check_image_options(args: argparse.Namespace) -> None:
    if args.image is None:
        for option, value in (("--strength", args.strength), ("--outpaint", args.outpaint)):
            if value is not None:
                raise InputError(
                    f"{option}: applies to a start image; pass --image too, or drop {option}"
                )
    if args.outpaint is not None and args.mask is not None:
        raise InputError("--outpaint: makes its own mask; expected no --mask with it")


def _quality(quality: int | None, output: Path) -> int:
    if quality is None:
        return DEFAULT_QUALITY
    if image_format(output) == "PNG":
        raise InputError("--quality: applies to .jpg, .jpeg and .webp output, not .png")
    if not 1 <= quality <= 100:
        raise InputError(f"--quality: expected an integer in 1..100, got {quality}")
    return quality


def read_image(path: Path | None, option: str):
    if path is None:
        return None
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            image.load()
            return image.copy()
    except FileNotFoundError:
        raise InputError(f"{option}: no such file {str(path)!r}") from None
    except (UnidentifiedImageError, OSError) as e:
        raise InputError(f"{option}: cannot read {str(path)!r} as an image ({e})") from None
    except Image.DecompressionBombError as e:
        raise InputError(f"{option}: {str(path)!r} is too large to read ({e})") from None


@dataclass(frozen=True)
class Prepared:
    """What a run needs once every input has been checked, before the model loads."""

    manifest: object
    scheduler: object
    requests: tuple  # one sdrt.request.Request per prompt
    paths: tuple[Path, ...]
    seed: int
    image: object  # the start image (outpainting: the canvas), or None


def run(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    prepared = prepare(config)
    from sdrt.pipeline import Pipeline

    pipe = Pipeline.load(config.folder, backend=config.backend)
    for embedding in config.embeddings:
        pipe.load_textual_inversion(embedding.path, token=embedding.token)
    if config.loras:
        from sdrt.adapters.options import apply_loras

        apply_loras(pipe, config.loras)
    config.output.parent.mkdir(parents=True, exist_ok=True)
    for p, request in enumerate(prepared.requests):
        pictures = _generate(pipe, request, config, p)
        for b, picture in enumerate(pictures):
            parameters = _parameters(config, prepared, request, config.prompts[p], b)
            path = prepared.paths[p * config.batch + b]
            _save(picture, path, parameters, config.quality)
            print(path, flush=True)
    return 0


def prepare(config: GenerateConfig) -> Prepared:
    """Check everything before the model loads: the folder, the requests, the scheduler,
    the output paths."""
    from sdrt.manifest import read_manifest
    from sdrt.pipeline import make_scheduler
    from sdrt.request import make_request
    from sdrt.schedulers import load_scheduler_config

    manifest = read_manifest(config.folder)
    scheduler_config = load_scheduler_config(config.folder)
    image, mask, strength = _start_image(config, manifest)
    control = _control_arguments(config, manifest) | _adapter_arguments(config, manifest)
    seed = secrets.randbelow(2**32) if config.seed is None else config.seed
    requests = tuple(
        make_request(
            manifest,
            prompt=prompt,
            negative_prompt=config.negative_prompt,
            num_inference_steps=config.steps,
            guidance_scale=config.guidance,
            height=config.height,
            width=config.width,
            num_images_per_prompt=config.batch,
            seed=seed,
            latents=None,
            scheduler=config.scheduler,
            image=image,
            strength=strength,
            mask_image=mask,
            output_type="pil",
            deep_cache_interval=config.deep_cache_interval,
            deep_cache_branch=config.deep_cache_branch,
            vae=config.vae,
            eta=config.eta,
            **control,
        )
        for prompt in config.prompts
    )
    first = requests[0]  # the recipe's scheduler where --scheduler was left out
    scheduler = make_scheduler(
        first.scheduler, scheduler_config, config.folder, manifest, first.scheduler_config
    )
    scheduler.plan(first.num_inference_steps, strength=first.strength, eta=first.eta)
    paths = tuple(numbered_paths(config.output, len(config.prompts) * config.batch))
    for path in paths:
        check_writable(path)
        check_output_file(path, force=config.force)
    if config.seed is None:
        print(f"seed: {seed}", file=sys.stderr)
    _note_resize(config, image, requests[0], manifest.build.size_multiple)
    return Prepared(manifest, scheduler, requests, paths, seed, image)


def _start_image(config: GenerateConfig, manifest):
    """(image, mask, strength): the start image and mask read (outpainting: the canvas and
    its mask made), and the strength, defaulting as diffusers' pipelines do."""
    from sdrt.images import outpaint_canvas

    image = read_image(config.image, "--image")
    mask = read_image(config.mask, "--mask")
    if config.outpaint is not None:
        image, mask = outpaint_canvas(
            image,
            **dataclasses.asdict(config.outpaint),
            overlap=OUTPAINT_OVERLAP,
            multiple=manifest.build.size_multiple,
        )
    strength = config.strength
    if strength is None:
        strength = IMG2IMG_STRENGTH if mask is None else INPAINT_STRENGTH
    return image, mask, strength


def _control_arguments(config: GenerateConfig, manifest) -> dict:
    """The call's ControlNet arguments (diffusers' names) from --control, read and checked
    against the folder's ControlNets; none without --control."""
    if not config.controls:
        return {}
    from sdrt.control.spec import call_arguments, control_images

    # a folder from a build without --controlnet (or an sdrt without ControlNet records)
    controlnets = getattr(manifest, "controlnets", ())
    if not controlnets:
        raise InputError(
            f"--control: the model folder {str(config.folder)!r} has no ControlNet; build "
            "one in with sdrt build SRC --controlnet NAME=PATH"
        )
    if len(config.controls) != len(controlnets):
        names = ", ".join(c.name for c in controlnets)
        raise InputError(
            f"--control: expected one per ControlNet of the folder ({len(controlnets)}: "
            f"{names}), got {len(config.controls)}"
        )
    images = control_images(config.controls, lambda path: read_image(path, "--control"))
    return call_arguments(config.controls, images)


def _adapter_arguments(config: GenerateConfig, manifest) -> dict:
    """The call's T2I-Adapter arguments from --adapter-image; none without it."""
    if config.adapter is None:
        return {}
    if getattr(manifest, "t2i_adapter", None) is None:
        raise InputError(
            f"--adapter-image: the model folder {str(config.folder)!r} has no T2I-Adapter; "
            "build one in with sdrt build SRC --t2i-adapter [NAME=]PATH"
        )
    return config.adapter.call_arguments(lambda path: read_image(path, "--adapter-image"))


def _parameters(config: GenerateConfig, prepared: Prepared, request, prompt: str, b: int) -> str:
    """The image's settings in A1111's "parameters" text."""
    from sdrt.infotext import GenerationParameters

    return GenerationParameters.of_request(
        request,
        pipeline_folder=config.folder,
        manifest=prepared.manifest,
        scheduler=prepared.scheduler,
        prompt=prompt,
        negative_prompt=config.negative_prompt,
        seed=prepared.seed,
        from_image=prepared.image is not None,
        batch_size=config.batch,
        batch_pos=b,
    ).text()


def _note_resize(config: GenerateConfig, image, request, multiple: int) -> None:
    """Say so on stderr when --image was scaled to fit the folder (no --size given)."""
    if image is None or config.width is not None or config.height is not None:
        return
    width, height = image.size
    if (request.width, request.height) != (
        width // multiple * multiple,
        height // multiple * multiple,
    ):
        print(
            f"--image: {width}x{height} scaled to {request.width}x{request.height}, the "
            "model folder's built range (pass --size to choose)",
            file=sys.stderr,
        )


def _generate(pipe, request, config: GenerateConfig, index: int):
    from tqdm import tqdm

    bar = None
    result = None
    many = len(config.prompts) > 1
    try:
        for progress in pipe.generate(request):
            if bar is None and config.progress:
                desc = f"prompt {index + 1}/{len(config.prompts)}" if many else "denoising"
                bar = tqdm(total=progress.total_steps, desc=desc, unit="step", file=sys.stderr)
            if bar is not None:
                bar.update(progress.step - bar.n)
            result = progress.result
    finally:
        if bar is not None:
            bar.close()
    return result.images


def _save(picture, path: Path, parameters: str, quality: int) -> None:
    from sdrt.image_files import save_image

    save_image(picture, path, parameters=parameters, quality=quality)
