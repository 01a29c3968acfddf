"""The hidden folder a build writes into beside its output, and the ones killed builds left.

A build of ``OUT`` writes into ``.OUT.partial-<8 hex digits>/build/``; the partial folder
also holds a marker file naming ``OUT`` and the build's pid. On success, an existing ``OUT``
is moved to the partial folder's ``replaced/``, ``build/`` is renamed to ``OUT`` and the
partial folder is removed. So everything in flight lies in one marked folder, and a build
stopped at any point, even by SIGKILL, leaves at most that folder (and the old ``OUT`` in
it only for the instant between two renames: removing such a folder first puts the old
``OUT`` back).

``remove_stale`` removes those folders. It must be called only while holding the output's
lock (see ``output_lock``): then no live build can own one. It touches only directories
(never symlinks) whose name has the exact pattern for this output and that hold a marker
naming this output; anything else, including other outputs' partial folders and folders
that merely look like ours, stays.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
from dataclasses import dataclass
from pathlib import Path

from sdrt.files import with_umask_mode

MARKER_NAME = ".sdrt-partial-build.json"
MARKER_FORMAT = 1
BUILD_FOLDER = "build"  # becomes OUT
REPLACED_FOLDER = "replaced"  # the previous OUT, during the swap


@dataclass(frozen=True)
class Staging:
    """One build's partial folder: write the build into ``folder``, then ``commit``."""

    root: Path  # .OUT.partial-xxxxxxxx
    output: Path

    @property
    def folder(self) -> Path:
        return self.root / BUILD_FOLDER


@dataclass(frozen=True)
class StaleBuild:
    """A partial folder left by a stopped build, now removed."""

    path: Path
    pid: int | None  # the build that left it, as its marker says
    size_bytes: int
    restored_output: bool  # it held the previous output mid-swap, which was put back


def partial_pattern(output: Path) -> re.Pattern[str]:
    return re.compile(rf"\.{re.escape(output.name)}\.partial-[0-9a-f]{{8}}")


def create_staging(output: Path) -> Staging:
    """A new marked partial folder beside ``output`` (whose parent must exist)."""
    while True:
        root = output.parent / f".{output.name}.partial-{secrets.token_hex(4)}"
        try:
            root.mkdir()
            break
        except FileExistsError:  # 1 in 4 billion
            continue
    try:
        marker = {"format": MARKER_FORMAT, "output": output.name, "pid": os.getpid()}
        (root / MARKER_NAME).write_text(json.dumps(marker) + "\n", encoding="utf-8")
        (root / BUILD_FOLDER).mkdir()
    except BaseException:
        shutil.rmtree(root, ignore_errors=True)
        raise
    return Staging(root, output)


def commit(staging: Staging) -> None:
    """Put the finished build in place of the output (replacing it if it exists)."""
    output = staging.output
    with_umask_mode(staging.folder)  # onnx writes external data files as 0o600
    if output.exists():
        os.replace(output, staging.root / REPLACED_FOLDER)
    os.replace(staging.folder, output)
    shutil.rmtree(staging.root, ignore_errors=True)


def discard(staging: Staging) -> None:
    """Remove a build that did not finish; if it stopped mid-swap, put the old output back."""
    _remove(staging.root, staging.output)


def remove_stale(output: Path) -> list[StaleBuild]:
    """Remove partial folders of ``output`` that stopped builds left. Hold its lock."""
    pattern = partial_pattern(output)
    stale = []
    try:
        entries = list(os.scandir(output.parent))
    except FileNotFoundError:
        return []
    for entry in entries:
        if not pattern.fullmatch(entry.name) or not entry.is_dir(follow_symlinks=False):
            continue
        root = Path(entry.path)
        marker = _read_marker(root)
        if marker is None or marker.get("output") != output.name:
            continue
        size = _size(root)
        restored = _remove(root, output)
        if os.path.lexists(root):
            continue  # could not be removed (permissions?): left as it is, not reported
        pid = marker.get("pid")
        stale.append(StaleBuild(root, pid if isinstance(pid, int) else None, size, restored))
    return stale


def _remove(root: Path, output: Path) -> bool:
    replaced = root / REPLACED_FOLDER
    restored = False
    if replaced.is_dir() and not os.path.lexists(output):
        os.replace(replaced, output)
        restored = True
    shutil.rmtree(root, ignore_errors=True)
    return restored


def _read_marker(root: Path) -> dict | None:
    path = root / MARKER_NAME
    if path.is_symlink() or not path.is_file():
        return None
    try:
        marker = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(marker, dict) or marker.get("format") != MARKER_FORMAT:
        return None
    return marker


def _size(root: Path) -> int:
    total = 0
    for folder, _, files in os.walk(root):
        for name in files:
            with contextlib.suppress(OSError):  # removed meanwhile
                total += os.lstat(os.path.join(folder, name)).st_size
    return total
