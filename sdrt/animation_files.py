"""Walks out: a GIF, an animated WebP, an MP4 video or a folder of numbered PNG frames,
picked by the -o name, each written atomically (readers never see half a file).

GIF and WebP are written by Pillow (a runtime dependency); MP4 (H.264, yuv420p) by
imageio-ffmpeg, which brings its own ffmpeg binary, in the ``video`` extra
(``pip install 'sdrt[video]'``). A name with no suffix, or an existing folder, is a folder
of ``frame-00.png``, ``frame-01.png``, ... (sdrt.image_files.numbered_paths).

``open_animation`` takes frames one at a time. PNG frames and MP4 are written as they come,
so a walk of any length holds one frame here. Pillow writes a GIF or WebP from every frame
at once (its GIF writer keeps each frame to compare with the next), so those hold all their
frames until the end: ``check_frames_held`` bounds them to HELD_BYTES of pixels and names
.mp4 and a folder for longer walks.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
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
HELD_BYTES = 2**30  # GIF and WebP: the most RGB pixel bytes held until the file is written


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
    with open_animation(path, "MP4", fps, len(frames)) as writer:
        for frame in frames:
            writer.write(frame)


def check_frames_held(kind: str, frames: int, width: int, height: int, option="--frames") -> None:
    """InputError where a GIF or WebP of ``frames`` frames of width x height would hold
    more than HELD_BYTES of pixels until it is written (PNG frames and MP4 hold one)."""
    if kind not in ("GIF", "WEBP"):
        return
    most = max(HELD_BYTES // (width * height * 3), 1)
    if frames > most:
        raise InputError(
            f"{option}: expected at most {most} frames for a .{kind.lower()} of {width}x{height} "
            f"(Pillow writes it from every frame held in memory, {HELD_BYTES // 2**20} MiB at "
            f"most), got {frames}; write .mp4 or a folder of PNG frames for longer walks"
        )


class AnimationWriter:
    """Frames in, one at a time (``write``); the file is complete when ``finish`` returns."""

    def write(self, frame) -> None:
        raise NotImplementedError

    def finish(self) -> None:
        """Called once after the last frame (not after an error)."""


@contextmanager
def open_animation(path: Path, kind: str, fps: float, frames: int) -> Iterator[AnimationWriter]:
    """A writer of ``frames`` PIL frames to ``path`` as ``kind`` at ``fps``. A GIF, WebP or
    MP4 appears, atomically, only when every frame was written and the block ended without
    an error; PNG frames appear one by one, each printed to stdout as it is written."""
    path = Path(path)
    if kind == FOLDER:
        yield _FrameFolder(frame_paths(path, frames))
        return
    if kind == "MP4":
        with atomic_path(path) as tmp:
            writer = _Mp4Writer(tmp, fps)
            try:
                yield writer
            finally:
                writer.close()  # ffmpeg finishes the file before it is renamed into place
        return
    writer = _HeldFrames(path, kind, fps)
    yield writer
    writer.finish()


class _FrameFolder(AnimationWriter):
    def __init__(self, paths: list[Path]):
        self.paths, self.written = paths, 0

    def write(self, frame) -> None:
        from sdrt.image_files import save_image

        path = self.paths[self.written]
        save_image(frame, path)
        self.written += 1
        print(path, flush=True)


class _HeldFrames(AnimationWriter):
    """GIF and WebP: Pillow needs every frame at once (bounded by check_frames_held)."""

    def __init__(self, path: Path, kind: str, fps: float):
        self.path, self.kind, self.fps, self.frames = path, kind, fps, []

    def write(self, frame) -> None:
        self.frames.append(frame)

    def finish(self) -> None:
        save_animation(self.frames, self.path, self.kind, self.fps)
        self.frames = []


class _Mp4Writer(AnimationWriter):
    """Each frame piped to ffmpeg as it comes; ffmpeg starts with the first frame, which
    gives the size."""

    def __init__(self, tmp: Path, fps: float):
        self.tmp, self.fps, self.ffmpeg = tmp, fps, None

    def write(self, frame) -> None:
        if self.ffmpeg is None:
            import imageio_ffmpeg

            self.ffmpeg = imageio_ffmpeg.write_frames(
                str(self.tmp), frame.size, fps=self.fps, codec="libx264", macro_block_size=8
            )
            self.ffmpeg.send(None)  # start ffmpeg
        self.ffmpeg.send(np.ascontiguousarray(np.asarray(frame.convert("RGB"))))

    def close(self) -> None:
        if self.ffmpeg is not None:
            self.ffmpeg.close()
