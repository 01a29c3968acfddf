"""Walks out: a GIF, an animated WebP, an MP4 video or a folder of numbered PNG frames,
picked by the -o name, each written atomically (readers never see half a file).

GIF and WebP are written by Pillow (a runtime dependency); MP4 (H.264, yuv420p) by
imageio-ffmpeg, which brings its own ffmpeg binary, in the ``video`` extra
(``pip install 'sdrt[video]'``). A name with no suffix, or an existing folder, is a folder
of ``frame-00.png``, ``frame-01.png``, ... (sdrt.image_files.numbered_paths).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from sdrt.errors import InputError
from sdrt.files import atomic_path, atomic_write
from sdrt.image_files import DEFAULT_QUALITY, check_writable, numbered_paths

# suffix -> kind; FOLDER for a folder of PNG frames
ANIMATIONS = {".gif": "GIF", ".webp": "WEBP", ".mp4": "MP4"}
FOLDER = "folder"
GIF_MAX_FPS = 50  # GIF frame delays are whole hundredths of a second
FRAME_NAME = "frame.png"  # numbered: frame-00.png, frame-01.png, ...


def output_kind(path: Path, option: str = "-o") -> str:
    """ "GIF", "WEBP", "MP4" by suffix, FOLDER for a folder or a name without a suffix."""
    path = Path(path)
    kind = ANIMATIONS.get(path.suffix.lower())
    if kind is not None:
        return kind
    if path.suffix == "" or path.is_dir():
        return FOLDER
    raise InputError(
        f"{option}: expected a name ending in {', '.join(ANIMATIONS)}, or a folder (a name "
        f"without a suffix) for numbered PNG frames, got {str(path)!r}"
    )


def check_output(path: Path, kind: str, fps: float, option: str = "-o") -> None:
    """InputError unless ``kind`` can be written at ``path`` at ``fps``; MP4 imports
    imageio_ffmpeg now, so that a missing ``video`` extra is said before any work."""
    path = Path(path)
    if not fps > 0 or fps == float("inf"):
        raise InputError(f"--fps: expected a number above 0, got {fps:g}")
    if kind == "GIF" and fps > GIF_MAX_FPS:
        raise InputError(
            f"--fps: expected at most {GIF_MAX_FPS} for a GIF (its frame delays are whole "
            f"hundredths of a second), got {fps:g}; use .webp or .mp4 for more"
        )
    if kind == FOLDER:
        if path.exists() and not path.is_dir():
            raise InputError(
                f"{option}: expected a folder for PNG frames, got {str(path)!r}, which is a file"
            )
        check_writable(path / FRAME_NAME, option)
        return
    check_writable(path, option)
    if kind == "MP4":
        import imageio_ffmpeg  # noqa: F401  (the video extra)


def frame_paths(folder: Path, count: int) -> list[Path]:
    """The PNG frames' names in ``folder`` (a walk has two frames or more):
    frame-00.png, frame-01.png, ... (more digits where ``count`` needs them)."""
    return numbered_paths(Path(folder) / FRAME_NAME, count)


def save_animation(frames: list, path: Path, kind: str, fps: float) -> None:
    """Write PIL ``frames`` as a GIF, WebP or MP4 at ``fps``, atomically."""
    path = Path(path)
    if kind == "MP4":
        _save_mp4(frames, path, fps)
        return
    first, rest = frames[0], frames[1:]
    options = dict(save_all=True, append_images=rest, duration=round(1000 / fps), loop=0)
    if kind == "WEBP":
        options["quality"] = DEFAULT_QUALITY
    try:
        atomic_write(path, lambda f: first.save(f, format=kind, **options), binary=True)
    except OSError as e:
        raise InputError(f"-o: cannot write {str(path)!r}: {e.strerror or e}") from None


def _save_mp4(frames: list, path: Path, fps: float) -> None:
    import imageio_ffmpeg

    width, height = frames[0].size
    with atomic_path(path) as tmp:
        writer = imageio_ffmpeg.write_frames(
            str(tmp), (width, height), fps=fps, codec="libx264", macro_block_size=8
        )
        writer.send(None)  # start ffmpeg
        try:
            for frame in frames:
                writer.send(np.ascontiguousarray(np.asarray(frame.convert("RGB"))))
        finally:
            writer.close()
