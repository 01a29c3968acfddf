"""Check a model folder's graphs against their sha256 in sdrt.json without re-reading
gigabytes on every load.

Hashing an SD 1.5 folder (4.1 GB) takes 9 to 12 s here, longer than creating its sessions.
So a file that hashed as expected once has its identity (size, mtime in ns, inode, device)
written to ``RECORD_NAME`` in the folder; a later load that finds the same identity and the
same expected sha256 trusts that hash. Writing a file in place changes its mtime, replacing
it changes its inode, and a copied folder has new inodes, so each of these is hashed again
(once). This guards against truncated, corrupted, replaced or half-copied files; it does not
guard against someone who forges timestamps, who could as well edit sdrt.json.

Modes: ``"changed"`` (the default) hashes only files whose identity is not on record,
``"always"`` hashes every file, ``"never"`` only checks that the files exist.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from sdrt.errors import InputError, ModelFolderError
from sdrt.files import atomic_write
from sdrt.manifest import MANIFEST_NAME, Manifest, component_files, sha256_file

log = logging.getLogger(__name__)

RECORD_NAME = ".sdrt-verified.json"
RECORD_FORMAT = 1
VERIFY_MODES = ("changed", "always", "never")


def verify_mode(value: str | bool) -> str:
    """A mode from ``VERIFY_MODES``; ``True`` and ``False`` mean "always" and "never"."""
    if value is True:
        return "always"
    if value is False:
        return "never"
    if value not in VERIFY_MODES:
        raise InputError(
            f"verify_files: expected one of {', '.join(VERIFY_MODES)} or a bool, got {value!r}"
        )
    return value


def _identity(stat: os.stat_result) -> dict[str, int]:
    return {
        "size": stat.st_size,
        "mtime_ns": stat.st_mtime_ns,
        "inode": stat.st_ino,
        "device": stat.st_dev,
    }


def _read_record(folder: Path) -> dict[str, Any]:
    try:
        data = json.loads((folder / RECORD_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}  # none yet, unreadable or damaged: everything is hashed again
    if not isinstance(data, dict) or data.get("format") != RECORD_FORMAT:
        return {}
    files = data.get("files")
    return files if isinstance(files, dict) else {}


def _write_record(folder: Path, files: dict[str, Any]) -> None:
    text = json.dumps({"format": RECORD_FORMAT, "files": files}, indent=1, sort_keys=True)
    try:
        atomic_write(folder / RECORD_NAME, lambda f: f.write(text + "\n"), binary=False)
    except OSError as e:  # a read-only folder: the next load hashes again
        log.info("cannot record verified hashes in %s (%s)", folder, e)


def record_verified(folder: str | os.PathLike, manifest: Manifest) -> None:
    """Record the files as they are now as matching the manifest (the builder just hashed them)."""
    folder = Path(folder)
    files = {
        rel: {"sha256": expected, **_identity((folder / rel).stat())}
        for rel, expected in component_files(manifest).items()
        if expected
    }
    _write_record(folder, files)


def check_model_files(
    folder: str | os.PathLike, manifest: Manifest, mode: str | bool = "changed"
) -> None:
    """Raise ModelFolderError if a component file is missing or does not match its sha256."""
    mode = verify_mode(mode)
    folder = Path(folder)
    expected_files = component_files(manifest)
    missing = [rel for rel in expected_files if not (folder / rel).is_file()]
    if missing:
        raise ModelFolderError(
            f"{folder}: files named in {MANIFEST_NAME} are missing: {', '.join(missing)}"
        )
    if mode == "never":
        return
    record = _read_record(folder) if mode == "changed" else {}
    verified, changed = {}, []
    for rel, expected in expected_files.items():
        if not expected:
            continue  # an older manifest without this hash: nothing to compare with
        identity = _identity((folder / rel).stat())
        entry = {"sha256": expected, **identity}
        if record.get(rel) != entry and sha256_file(folder / rel) != expected:
            changed.append(rel)
        else:
            verified[rel] = entry
    if changed:
        raise ModelFolderError(
            f"{folder}: files do not match their sha256 in {MANIFEST_NAME}: {', '.join(changed)} "
            "(rebuild, or restore the original files)"
        )
    if verified != record:
        _write_record(folder, verified)
