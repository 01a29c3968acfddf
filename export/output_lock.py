"""One build per output folder at a time: an OS advisory lock on a file beside the output.

``lock_output(output)`` takes an exclusive lock (``fcntl.flock`` on POSIX, ``msvcrt.locking``
on Windows) on ``.OUT.lock`` in the output's parent, without waiting, and holds it until the
``with`` block ends: a second build of the same output fails at once with
``OutputBusyError``, naming the holder's pid, which the holder writes into the file.

The lock is the OS lock, never the file's existence: a process that dies, even by SIGKILL,
loses its lock with it, and the next build locks the file it left. The holder removes the
file while still holding the lock; a taker that locked a file which was removed or replaced
meanwhile (its inode is no longer the path's) lets it go and tries the path's file again, so
two builds never both hold the lock for one output.

Where neither fcntl nor msvcrt exists, ``lock_output`` warns and yields ``False``: the build
runs unlocked, and the caller must not treat anything as abandoned.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sdrt.errors import SdrtError

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None
try:
    import msvcrt
except ImportError:  # POSIX
    msvcrt = None

LOCK_SUFFIX = ".lock"
_ATTEMPTS = 5  # a lock file replaced under us more often than this means something is wrong


class OutputBusyError(SdrtError):
    """Another process holds the output's lock: it is building that output right now."""


def lock_file(output: Path) -> Path:
    """``.OUT.lock`` beside ``output``; the parent is resolved, so that every spelling of one
    folder (relative, absolute, through a symlinked parent) locks the same file."""
    output = Path(os.path.abspath(output))
    return Path(os.path.realpath(output.parent)) / f".{output.name}{LOCK_SUFFIX}"


@contextmanager
def lock_output(output: Path) -> Iterator[bool]:
    """Hold the output's lock for the ``with`` block; yield whether a lock is really held.

    Raises ``OutputBusyError`` at once if another process holds it. The output's parent
    must exist.
    """
    if fcntl is None and msvcrt is None:
        warnings.warn(
            "no file locking on this platform (neither fcntl nor msvcrt): concurrent builds "
            f"of {str(output)!r} are not detected",
            RuntimeWarning,
            stacklevel=2,
        )
        yield False
        return
    path = lock_file(output)
    fd = _acquire(path, output)
    try:
        yield True
    finally:
        _release(fd, path)


def _acquire(path: Path, output: Path) -> int:
    for _ in range(_ATTEMPTS):
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            if not _try_lock(fd):
                raise OutputBusyError(_busy_message(output, path, _read_pid(fd)))
            if _is_file_at(fd, path):
                os.ftruncate(fd, 0)
                os.lseek(fd, 0, os.SEEK_SET)
                os.write(fd, f"{os.getpid()}\n".encode())
                return fd
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)  # locked a file its holder removed meanwhile: try the path's file again
    raise OutputBusyError(
        f"could not lock output {str(output)!r}: its lock file {str(path)!r} was replaced "
        f"{_ATTEMPTS} times while taking it; is another build starting and stopping?"
    )


def _release(fd: int, path: Path) -> None:
    if fcntl is not None:
        try:
            if _is_file_at(fd, path):
                path.unlink()  # while still locked: a later taker finds it gone, makes its own
        finally:
            os.close(fd)  # closing releases the lock
        return
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)
    finally:
        os.close(fd)
    # Windows removes no open file: if another process has it open by now, it stays.
    with contextlib.suppress(OSError):
        path.unlink()


def _try_lock(fd: int) -> bool:
    if fcntl is not None:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True
    os.lseek(fd, 0, os.SEEK_SET)
    try:
        msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
    except OSError:  # held by another process (EACCES or EDEADLOCK)
        return False
    return True


def _is_file_at(fd: int, path: Path) -> bool:
    try:
        here = os.stat(path)
    except FileNotFoundError:
        return False
    mine = os.fstat(fd)
    return (mine.st_dev, mine.st_ino) == (here.st_dev, here.st_ino)


def _read_pid(fd: int) -> int | None:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        text = os.read(fd, 32).decode("ascii").strip()
        return int(text) if text else None
    except (OSError, ValueError):  # not written yet, or unreadable while locked (Windows)
        return None


def _busy_message(output: Path, path: Path, pid: int | None) -> str:
    holder = f"another sdrt build (pid {pid})" if pid is not None else "another sdrt build"
    return (
        f"output {str(output)!r} is being built by {holder}, which holds its lock "
        f"{str(path)!r}; expected no other build of it: wait for that one to finish or stop it"
    )
