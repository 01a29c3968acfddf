"""Atomic file writes: readers see the old file or the whole new one, never half of it; and
the rules every command follows before it replaces what is already at its output path.

tempfile makes private files (0o600) and folders (0o700); what is renamed into place gets
the permissions a plain ``open``/``mkdir`` would give instead (``with_umask_mode``), as other
tools' outputs have.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from sdrt.errors import InputError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def with_umask_mode(path: str | os.PathLike) -> None:
    """Give ``path`` the mode a plain ``open`` (0o666) or ``mkdir`` (0o777) would, less the
    umask; a folder, everything in it too. For what this process just wrote before it is
    renamed into place: tempfile makes private files and folders, and so do libraries
    (safetensors' and onnx's external-data writers make 0o600 files)."""
    mask = _umask()
    if os.path.islink(path):
        return  # a link's target is not ours to change
    if not os.path.isdir(path):
        os.chmod(path, 0o666 & ~mask)
        return
    os.chmod(path, 0o777 & ~mask)
    for folder, dirs, files in os.walk(path):  # links are left, as above
        for names, mode in ((dirs, 0o777), (files, 0o666)):
            for name in names:
                if not os.path.islink(os.path.join(folder, name)):
                    os.chmod(os.path.join(folder, name), mode & ~mask)


def check_output_file(path: str | os.PathLike, *, force: bool, option: str = "-o") -> None:
    """Refuse, before any work, to replace an existing file at ``path`` unless ``force``:
    what a command writes never silently takes the place of what the user had."""
    if os.path.lexists(path) and not force:
        raise InputError(f"{option}: {str(path)!r} already exists; pass --force to replace it")


def check_output_folder(output: str | os.PathLike, *, force: bool, marker: str, kind: str) -> bool:
    """Refuse, before any work, to replace what should not be replaced: a folder that is not
    of ``kind`` (one that holds ``marker``) is never replaced, one that is only with
    ``force``. True when ``output`` is such a folder to replace, False when it is absent or
    empty (nothing of the user's to lose)."""
    output = Path(output)
    if not output.exists():
        return False
    if not output.is_dir():
        raise InputError(f"output {str(output)!r} exists and is not a folder")
    if not any(output.iterdir()):
        return False
    if not (output / marker).is_file():
        raise InputError(
            f"output {str(output)!r} exists and is not {kind} (no {marker}); refusing to replace it"
        )
    if not force:
        raise InputError(f"output {str(output)!r} already exists; pass --force to replace it")
    return True


def atomic_write(path: str | os.PathLike, write: Callable[[IO], None], *, binary: bool) -> None:
    """Call ``write(file)`` on a temporary file beside ``path``, then rename it over ``path``.

    The file gets the permissions a plain ``open(path, "w")`` would give (0o666 less the
    umask), not mkstemp's private 0o600.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with_umask_mode(tmp)
        with os.fdopen(
            fd, "wb" if binary else "w", **({} if binary else {"encoding": "utf-8"})
        ) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary file name beside ``path`` with its suffix, for writers that need a name
    rather than a file (ffmpeg picks the container by suffix); renamed over ``path`` when
    the block ends, removed when it raises. Permissions as ``atomic_write``'s."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(
        prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}", dir=path.parent
    )
    os.close(fd)
    try:
        yield Path(tmp)
        with_umask_mode(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
