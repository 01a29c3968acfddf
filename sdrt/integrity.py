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

``open_model_folder`` (loads, engine builds) is the one reading of a folder: sdrt.json read
and validated, then the files it names listed once and checked in one pass; it raises,
naming every bad file (``check_model_files`` does the same for a manifest already read).
``check_files`` returns one ``FileCheck`` per file (``sdrt info --verify`` reports them all),
with the size the file had when it last matched, so that a truncated file is named as such.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sdrt.errors import InputError, ModelFolderError
from sdrt.files import atomic_write
from sdrt.manifest import MANIFEST_NAME, Manifest, component_files, read_manifest, sha256_file

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


@dataclass(frozen=True)
class FileCheck:
    """One component file against its sha256 in sdrt.json."""

    path: str  # relative to the model folder
    expected_sha256: str  # "" where an older manifest has none
    size: int | None  # bytes now; None when the file is missing
    sha256: str | None = None  # what it hashes to now; None when it was not hashed
    verified_size: int | None = None  # its size when it last hashed as expected, if on record

    @property
    def ok(self) -> bool:
        """False when the file is missing or hashed to something other than expected."""
        if self.size is None:
            return False
        return self.sha256 is None or self.sha256 == self.expected_sha256

    @property
    def status(self) -> str:
        if self.size is None:
            return "MISSING"
        if not self.expected_sha256:
            return "no sha256 in " + MANIFEST_NAME
        if self.sha256 is None:
            return "not hashed"
        if self.sha256 == self.expected_sha256:
            return "ok"
        if self.verified_size is not None and self.size < self.verified_size:
            return "MISMATCH (truncated)"
        return "MISMATCH"

    def problem(self) -> str:
        """What is wrong, in one line: the file, expected vs actual sha256 and size."""
        if self.size is None:
            return f"{self.path} is missing"
        text = (
            f"{self.path}: expected sha256 {self.expected_sha256}, got {self.sha256}; "
            f"{self.size} bytes"
        )
        if self.verified_size is not None and self.verified_size != self.size:
            text += f" where it had {self.verified_size} when it last matched"
            if self.size < self.verified_size:
                text += " (truncated)"
        return text


def check_files(
    folder: str | os.PathLike, manifest: Manifest, mode: str | bool = "always"
) -> list[FileCheck]:
    """Each component file's check, in manifest order; raises nothing for a bad file.

    ``"always"`` hashes every file, ``"changed"`` trusts those whose identity is on record,
    ``"never"`` hashes none (sizes and recorded sizes only). When every file is present and
    every hashed one matched, the record is updated so that later loads trust them.
    """
    return _check_listed(Path(folder), component_files(manifest), verify_mode(mode))


def _check_listed(folder: Path, files: dict[str, str], mode: str) -> list[FileCheck]:
    """check_files on ``files`` (relative path -> expected sha256), listed by the caller."""
    record = _read_record(folder)
    checks, verified = [], {}
    for rel, expected in files.items():
        on_record = record.get(rel)
        if not isinstance(on_record, dict):
            on_record = {}
        verified_size = on_record.get("size") if on_record.get("sha256") == expected else None
        if not isinstance(verified_size, int):
            verified_size = None
        if not (folder / rel).is_file():
            checks.append(FileCheck(rel, expected, None, verified_size=verified_size))
            continue
        identity = _identity((folder / rel).stat())
        entry = {"sha256": expected, **identity}
        digest = None
        if expected and mode != "never" and not (mode == "changed" and on_record == entry):
            digest = sha256_file(folder / rel)
        check = FileCheck(rel, expected, identity["size"], digest, verified_size)
        checks.append(check)
        if expected and mode != "never" and check.ok:
            verified[rel] = entry
    if mode != "never" and all(c.ok for c in checks) and verified != record:
        _write_record(folder, verified)
    return checks


def open_model_folder(folder: str | os.PathLike, mode: str | bool = "changed") -> Manifest:
    """The folder's manifest, read and validated, once its files are checked (``mode`` as
    ``check_files``'s); ModelFolderError naming what is wrong with it or with its files."""
    mode = verify_mode(mode)  # a bad mode fails before the folder is read
    manifest = read_manifest(folder)
    check_model_files(folder, manifest, mode)
    return manifest


def check_model_files(
    folder: str | os.PathLike, manifest: Manifest, mode: str | bool = "changed"
) -> None:
    """Raise ModelFolderError if a component file is missing or does not match its sha256."""
    mode = verify_mode(mode)
    folder = Path(folder)
    files = component_files(manifest)
    missing = [rel for rel in files if not (folder / rel).is_file()]
    if missing:  # before hashing gigabytes
        raise ModelFolderError(
            f"{folder}: files named in {MANIFEST_NAME} are missing: {', '.join(missing)}"
        )
    changed = [c for c in _check_listed(folder, files, mode) if not c.ok]
    if changed:
        raise ModelFolderError(
            f"{folder}: files do not match their sha256 in {MANIFEST_NAME}: "
            + "; ".join(c.problem() for c in changed)
            + " (rebuild, or restore the original files)"
        )
