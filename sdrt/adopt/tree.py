"""The adopted folder's files: a tree of links to the source's, its content hash, and the
rename that puts a finished folder in place.

Hard links cost no space and leave the source untouched (sdrt never writes into a graph
file; ONNX Runtime's saved graphs are new files under engines/). Across file systems they
fall back to copies. The in-place view used for the checks is a tree of symbolic links.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

from sdrt.manifest import sha256_file


def staging_beside(target: Path) -> Path:
    """A new hidden folder next to ``target`` (same file system: the final rename is atomic)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.parent / f".{target.name}.adopting-{os.getpid()}"
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir()
    return staging


def link_tree(
    source: Path, destination: Path, *, exclude: tuple[str, ...], symbolic: bool = False
) -> bool:
    """Link every file of ``source`` (but the top-level names in ``exclude``) into
    ``destination``; True when all are hard links, False when any was copied."""
    destination.mkdir(parents=True, exist_ok=True)
    all_linked = True
    for entry in sorted(source.iterdir()):
        if entry.name in exclude:
            continue
        if symbolic:
            os.symlink(entry.resolve(), destination / entry.name)
            continue
        files = [entry] if entry.is_file() else sorted(p for p in entry.rglob("*") if p.is_file())
        for path in files:
            target = destination / path.relative_to(source)
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(path, target)
            except OSError:  # another file system, or one without hard links
                shutil.copy2(path, target)
                all_linked = False
    return all_linked


def replace_folder(staging: Path, target: Path) -> None:
    """Rename ``staging`` to ``target``; an existing ``target`` (checked by the caller) is
    moved aside first and removed only once the new folder is in place."""
    old = None
    if target.exists():
        old = target.parent / f".{target.name}.replaced-{os.getpid()}"
        target.rename(old)
    try:
        staging.rename(target)
    except BaseException:
        if old is not None:
            old.rename(target)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def folder_content_sha256(folder: Path, *, exclude: tuple[str, ...]) -> str:
    """sha256 over (relative path, file sha256) of every file, as a build hashes its source."""
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        rel = path.relative_to(folder)
        if rel.parts[0] in exclude:
            continue
        digest.update(f"{rel.as_posix()}\0{sha256_file(path)}\n".encode())
    return digest.hexdigest()
