"""``sdrt control canny IMAGE -o edges.png``: make a ControlNet control image from a photo.

Canny edges (sdrt.control.canny) need OpenCV, from the ``control`` extra. Every input is
checked before any work: the thresholds, the -o suffix and place, an existing file (replaced
only with --force); the image is then read, and the edge map written atomically (a failure
leaves no partial file). Other detectors (depth, pose) are models; run them yourself
(controlnet_aux) and hand their images to ``sdrt generate --control``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from sdrt.image_files import FORMATS

HELP = "Make ControlNet control images: canny edge maps (needs the 'control' extra)."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from sdrt.control.canny import HIGH_THRESHOLD, LOW_THRESHOLD

    detectors = parser.add_subparsers(dest="detector", metavar="DETECTOR", required=True)
    canny = detectors.add_parser(
        "canny",
        help="canny edges with OpenCV, as diffusers' ControlNet docs make them",
        description="White edges on black, in three channels: the control image of canny "
        "ControlNets (cv2.Canny on the RGB image, as diffusers' ControlNet docs do).",
    )
    canny.add_argument("image", metavar="IMAGE", help="the photo to take the edges of")
    canny.add_argument(
        "-o",
        "--output",
        metavar="FILE",
        required=True,
        help=f"edge map to write; its suffix picks the format: {', '.join(FORMATS)}; an "
        "existing file is replaced only with --force",
    )
    canny.add_argument(
        "--low",
        type=float,
        default=LOW_THRESHOLD,
        help=f"gradients above it continue an edge (default: {LOW_THRESHOLD})",
    )
    canny.add_argument(
        "--high",
        type=float,
        default=HIGH_THRESHOLD,
        help=f"gradients above it start an edge; at least --low (default: {HIGH_THRESHOLD})",
    )
    canny.add_argument(
        "--force", action="store_true", help="replace an existing output file (default: refuse)"
    )
    canny.set_defaults(command_parser=canny)  # a mistyped option prints canny's usage


def run(args: argparse.Namespace) -> int:
    from sdrt.commands.generate import read_image
    from sdrt.control.canny import canny, check_thresholds, import_cv2
    from sdrt.files import check_output_file
    from sdrt.image_files import check_writable, image_format, save_image

    output = Path(args.output)
    check_thresholds(args.low, args.high)
    image_format(output)
    check_writable(output)
    check_output_file(output, force=args.force)
    import_cv2()  # a missing extra is said before the image is read
    edges = canny(read_image(Path(args.image), "IMAGE"), args.low, args.high)
    output.parent.mkdir(parents=True, exist_ok=True)
    save_image(edges, output)
    print(output, flush=True)
    return 0
