"""``sdrt adopt ONNX_FOLDER -o OUT``: serve an ONNX folder exported elsewhere (Optimum)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

HELP = (
    "Adopt an ONNX Stable Diffusion folder exported elsewhere (Hugging Face Optimum, the "
    "Hub's ONNX revisions): check it and write its sdrt.json, without torch."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", metavar="ONNX_FOLDER", type=Path, help="the exported folder")
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument(
        "-o",
        "--output",
        type=Path,
        help="the model folder to write: hard links to ONNX_FOLDER's files (copies across "
        "file systems) plus sdrt.json; ONNX_FOLDER is left as it is",
    )
    where.add_argument(
        "--in-place",
        action="store_true",
        help="add sdrt.json to ONNX_FOLDER itself (its own files are not changed)",
    )
    add_range_arguments(parser)
    parser.add_argument(
        "--force", action="store_true", help="replace an existing OUT (or ONNX_FOLDER's sdrt.json)"
    )


def add_range_arguments(parser: argparse.ArgumentParser) -> None:
    """The size and batch range to serve (shared with sdrt build's defaults)."""
    parser.add_argument("--min-size", type=int, default=256, help="smallest image side, pixels")
    parser.add_argument("--max-size", type=int, default=1024, help="largest image side, pixels")
    parser.add_argument("--max-batch", type=int, default=4, help="most images per call")


def run(args: argparse.Namespace) -> int:
    from sdrt.adopt import AdoptOptions, adopt

    options = AdoptOptions(args.min_size, args.max_size, args.max_batch)
    result = adopt(
        args.source,
        args.output,
        in_place=args.in_place,
        options=options,
        force=args.force,
        progress=lambda stage: print(f"adopt: {stage}", file=sys.stderr, flush=True),
    )
    print_summary(result)
    return 0


def print_summary(result) -> None:
    manifest, adoption = result.manifest, result.manifest.adoption
    for check in adoption.forward_checks:
        outputs = ", ".join(f"{k} {list(v)}" for k, v in check.output_shapes.items())
        print(f"{check.component:15s} ok  {outputs}, max |output| {check.max_abs_output:.3g}")
    for note in adoption.notes:
        print(f"note: {note}")
    for setting, origin in adoption.derived.items():
        print(f"derived: {setting} from {origin}")
    how = "hard links to the source's files" if result.linked else "files as they are"
    print(
        f"adopted {manifest.source.path_or_id} ({adoption.layout} layout, {manifest.family}, "
        f"{manifest.build.precision}) into {result.folder} ({how}) in {result.seconds:.1f} s; "
        "checked to load and run, not verified against PyTorch"
    )
