"""``sdrt generate FOLDER "prompt" -o out.png``: txt2img, img2img (--image) and inpainting (--mask).

Needs only the runtime (numpy, onnxruntime, tokenizers, pillow, tqdm). Images are written
atomically (the -o folder is created if needed); a batch of N writes out-0.png ...
out-(N-1).png beside the -o name.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

from sdrt.errors import InputError
from sdrt.files import atomic_write

HELP = "Generate images from a model folder: txt2img, img2img (--image), inpainting (--mask)."


@dataclass(frozen=True)
class GenerateConfig:
    folder: Path
    prompt: str
    output: Path
    negative_prompt: str | None
    image: Path | None
    mask: Path | None
    strength: float
    scheduler: str | None
    seed: int
    steps: int
    guidance: float
    width: int | None
    height: int | None
    batch: int
    backend: str
    progress: bool


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("folder", help="model folder written by `sdrt build`")
    parser.add_argument("prompt", help="what to draw")
    parser.add_argument("-o", "--output", default="out.png", help="PNG to write (default out.png)")
    parser.add_argument("--negative-prompt", default=None, help="what to steer away from")
    parser.add_argument("--image", default=None, help="start from this image (img2img)")
    parser.add_argument("--mask", default=None, help="repaint the white area of --image")
    parser.add_argument("--strength", type=float, default=0.8, help="img2img strength in (0, 1]")
    parser.add_argument("--scheduler", default=None, help="scheduler class name or alias")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--steps", type=int, default=20, help="denoising steps (default 20)")
    parser.add_argument("--guidance", type=float, default=7.5, help="guidance scale (default 7.5)")
    parser.add_argument("--size", default=None, help="WxH in pixels (default: the model's)")
    parser.add_argument("--batch", type=int, default=1, help="images to generate (default 1)")
    parser.add_argument("--backend", default="auto", help="auto, ort-cpu, ort-cuda or tensorrt")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def parse_size(text: str | None) -> tuple[int | None, int | None]:
    """'768x512' -> (width, height)."""
    if text is None:
        return None, None
    parts = text.lower().split("x")
    if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
        raise InputError(f"--size: expected WIDTHxHEIGHT such as 512x768, got {text!r}")
    return int(parts[0]), int(parts[1])


def config_from_args(args: argparse.Namespace) -> GenerateConfig:
    width, height = parse_size(args.size)
    output = Path(args.output)
    if output.suffix.lower() != ".png":
        raise InputError(f"-o: expected a .png file name, got {str(output)!r}")
    if output.exists() and not output.is_file():
        raise InputError(f"-o: {str(output)!r} exists and is not a file")
    return GenerateConfig(
        folder=Path(args.folder),
        prompt=args.prompt,
        output=output,
        negative_prompt=args.negative_prompt,
        image=Path(args.image) if args.image else None,
        mask=Path(args.mask) if args.mask else None,
        strength=args.strength,
        scheduler=args.scheduler,
        seed=args.seed,
        steps=args.steps,
        guidance=args.guidance,
        width=width,
        height=height,
        batch=args.batch,
        backend=args.backend,
        progress=not args.no_progress,
    )


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


def save_png_atomically(image, path: Path) -> None:
    """Write through a temporary file beside ``path``: readers never see half a PNG."""
    atomic_write(path, lambda f: image.save(f, format="PNG"), binary=True)


def output_paths(output: Path, count: int) -> list[Path]:
    if count == 1:
        return [output]
    return [output.with_name(f"{output.stem}-{i}{output.suffix}") for i in range(count)]


def run(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    image = read_image(config.image, "--image")
    mask = read_image(config.mask, "--mask")

    from tqdm import tqdm

    from sdrt.pipeline import Pipeline

    pipe = Pipeline.load(config.folder, backend=config.backend)
    bar = None
    result = None
    try:
        request = pipe.request(
            config.prompt,
            negative_prompt=config.negative_prompt,
            num_inference_steps=config.steps,
            guidance_scale=config.guidance,
            height=config.height,
            width=config.width,
            num_images_per_prompt=config.batch,
            seed=config.seed,
            scheduler=config.scheduler,
            image=image,
            strength=config.strength,
            mask_image=mask,
        )
        for progress in pipe.generate(request):
            if bar is None and config.progress:
                bar = tqdm(
                    total=progress.total_steps, desc="denoising", unit="step", file=sys.stderr
                )
            if bar is not None:
                bar.update(progress.step - bar.n)
            result = progress.result
    finally:
        if bar is not None:
            bar.close()
    config.output.parent.mkdir(parents=True, exist_ok=True)
    paths = output_paths(config.output, len(result.images))
    for picture, path in zip(result.images, paths, strict=True):
        save_png_atomically(picture, path)
    print("\n".join(str(p) for p in paths))
    return 0
