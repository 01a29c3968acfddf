"""``sdrt init-model ARCH --random-weights OUT_DIR``: a real SD architecture with random weights.

``--single-file`` writes the same model as one checkpoint in the original LDM/A1111 layout
(``OUT.safetensors`` or ``OUT.ckpt``), what ``sdrt build`` takes as a single-file source.

Weights cannot be downloaded on our machines, so ``--random-weights`` is required for now.
The architecture catalogue is plain dicts (no torch); torch and diffusers load only in ``run``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from sdrt.errors import InputError
from sdrt.export.architectures import ARCHITECTURES
from sdrt.export.random_tiny_vae import TINY_VAE_ARCHITECTURES

# Pipelines, then tiny VAEs (diffusers AutoencoderTiny folders, for `sdrt build --tiny-vae`).
ALL_ARCHITECTURES = (*ARCHITECTURES, *TINY_VAE_ARCHITECTURES)

HELP = "Make a diffusers-format Stable Diffusion model folder with random weights (offline)."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "arch",
        metavar="ARCH",
        help=f"architecture: {', '.join(ARCHITECTURES)}; or a tiny VAE (AutoencoderTiny, for "
        f"`sdrt build --tiny-vae`): {', '.join(TINY_VAE_ARCHITECTURES)}",
    )
    parser.add_argument(
        "--random-weights",
        metavar="OUT_DIR",
        type=Path,
        help="write the architecture with random weights into OUT_DIR (required: no downloads)",
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="seed of the random weights (default 0)"
    )
    parser.add_argument(
        "--force",
        action="store_true",
        help="replace an existing OUT_DIR (only a model folder: any other folder is refused)",
    )
    parser.add_argument(
        "--single-file",
        action="store_true",
        help="write one checkpoint file in the original LDM/A1111 key layout instead of a "
        "folder: OUT_DIR is then the file, ending in .safetensors or .ckpt",
    )


def run(args: argparse.Namespace) -> int:
    if args.arch not in ALL_ARCHITECTURES:
        raise InputError(
            f"unknown architecture {args.arch!r}; expected one of: {', '.join(ALL_ARCHITECTURES)}"
        )
    if args.random_weights is None:
        raise InputError(
            "pretrained weights cannot be downloaded here; "
            f"pass --random-weights OUT_DIR to make {args.arch} with random weights"
        )

    if not args.single_file:  # the output before seconds of imports: nothing of the user's goes
        from sdrt.export.random_model import PIPELINE_MARKER, check_model_output
        from sdrt.export.random_tiny_vae import TINY_VAE_MARKER

        marker = TINY_VAE_MARKER if args.arch in TINY_VAE_ARCHITECTURES else PIPELINE_MARKER
        check_model_output(args.random_weights, args.force, marker)

    # Without the export extra, fail here, before seconds of tokenizer learning; sdrt.cli
    # turns the ModuleNotFoundError into "needs the 'export' extra".
    import diffusers  # noqa: F401
    import torch  # noqa: F401

    from sdrt.export.random_model import init_random_model
    from sdrt.export.single_file_writer import init_random_single_file

    def progress(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    write = init_random_single_file if args.single_file else init_random_model
    if args.arch in TINY_VAE_ARCHITECTURES:
        if args.single_file:
            raise InputError(f"--single-file: {args.arch} is a VAE, written only as a folder")
        from sdrt.export.random_tiny_vae import init_random_tiny_vae

        write = init_random_tiny_vae
    write(args.arch, args.random_weights, seed=args.seed, force=args.force, progress=progress)
    return 0
