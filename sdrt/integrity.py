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

The ort-cpu backend's saved graphs (``SAVED_GRAPHS_DIR``, written by backends/ort_saved_graphs.py)
are mapped by loads too, so they are checked the same way, against the sha256 that each
folder's key record lists for its files as they were written. They are a cache derived from
the verified graphs: a load removes a copy that does not match (or whose record lists no
sha256) and says so, and the backend writes it again from its source graph.

Engine plans (TensorRT's, under ``engines/tensorrt``) are checked the same way, against the
sha256 that their engine record in sdrt.json lists, written when they were built. A plan
cannot be written again at load (that is a build, on a GPU), and only the backend that maps
it needs it: ``check_model_files`` warns about a plan that does not match,
``check_engine_plan`` (the backend, before TensorRT deserializes it) refuses it, naming it
and ``sdrt engines build``, and ``engine_plan_problem`` lets a build replace it. A plan
recorded without a sha256 (by an older sdrt) is not checked, and ``sdrt info --verify`` says
so.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sdrt.errors import InputError, ModelFolderError
from sdrt.files import atomic_write
from sdrt.manifest import (
    MANIFEST_NAME,
    Engine,
    Manifest,
    component_files,
    read_manifest,
    sha256_file,
)

log = logging.getLogger(__name__)

RECORD_NAME = ".sdrt-verified.json"
RECORD_FORMAT = 1
VERIFY_MODES = ("changed", "always", "never")
# The ort-cpu backend's saved graphs: one folder per copy, each with a key record that lists
# its files' sha256 (sdrt/backends/ort_cpu_options.py names them; hidden folders are copies
# still being written).
SAVED_GRAPHS_DIR = "engines/ort-cpu"
SAVED_GRAPH_RECORD = "key.json"
# Sessions are made on several threads, each may record the copy it wrote.
_record_lock = threading.Lock()


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
    _record_as_verified(Path(folder), component_files(manifest))


def record_saved_graph(folder: str | os.PathLike, saved: str | os.PathLike) -> None:
    """Record the saved graph in folder ``saved`` as matching what its key record lists (its
    writer just hashed it), so that the next load need not hash it again."""
    folder, saved = Path(folder), Path(saved)
    listed = _listed_files(saved)
    rel = saved.relative_to(folder).as_posix()
    _record_as_verified(folder, {f"{rel}/{name}": digest for name, digest in listed.items()})


def record_engine_plan(folder: str | os.PathLike, engine: Engine) -> None:
    """Record ``engine``'s plan as it is now as matching its record's sha256 (the builder just
    hashed it), so that loads need not hash it again."""
    _record_as_verified(Path(folder), {engine.path: engine.sha256})


def _record_as_verified(folder: Path, files: dict[str, str]) -> None:
    with _record_lock:
        record = _read_record(folder)
        record.update(
            {
                rel: {"sha256": expected, **_identity((folder / rel).stat())}
                for rel, expected in files.items()
                if expected
            }
        )
        _write_record(folder, record)


def _listed_files(saved: Path) -> dict[str, str]:
    """A saved graph's files and the sha256 its key record lists for each; "" for every
    file when the record lists none (written by an older sdrt, or damaged)."""
    try:
        record = json.loads((saved / SAVED_GRAPH_RECORD).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        record = None
    listed = record.get("files") if isinstance(record, dict) else None
    if isinstance(listed, dict) and listed:
        return {str(k): v if isinstance(v, str) else "" for k, v in listed.items()}
    return {
        p.name: "" for p in sorted(saved.iterdir()) if p.is_file() and p.name != SAVED_GRAPH_RECORD
    }


def saved_graph_files(folder: str | os.PathLike) -> dict[str, str]:
    """Relative path -> sha256 recorded when it was written, for every file of every saved
    graph under SAVED_GRAPHS_DIR ("" where its key record lists none: such a copy is not
    trusted). Folders without a key record, and hidden ones (being written), are not ours."""
    root = Path(folder) / SAVED_GRAPHS_DIR
    if not root.is_dir():
        return {}
    files = {}
    for saved in sorted(root.iterdir()):
        if saved.name.startswith(".") or saved.is_symlink() or not saved.is_dir():
            continue
        if not (saved / SAVED_GRAPH_RECORD).is_file():
            continue  # not a copy ort-cpu wrote (it writes the record with it): not ours
        for name, digest in _listed_files(saved).items():
            files[f"{SAVED_GRAPHS_DIR}/{saved.name}/{name}"] = digest
    return files


@dataclass(frozen=True)
class FileCheck:
    """One component file against its sha256 in sdrt.json."""

    path: str  # relative to the model folder
    expected_sha256: str  # "" where an older manifest has none
    size: int | None  # bytes now; None when the file is missing
    sha256: str | None = None  # what it hashes to now; None when it was not hashed
    verified_size: int | None = None  # its size when it last hashed as expected, if on record
    saved_graph: bool = False  # a saved ORT graph: a cache that a load writes again
    engine_plan: bool = False  # an engine plan: its backend refuses it, a build replaces it

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
        if self.sha256 is not None and not self.expected_sha256:
            return "MISMATCH (no sha256 recorded)"
        if not self.expected_sha256 and self.engine_plan:
            return "not checked (built before sdrt recorded plan sha256s)"
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
        if not self.expected_sha256:
            return f"{self.path}: no sha256 was recorded when it was written"
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
    """Each component file's check, in manifest order, then each saved ORT graph file's,
    then each engine plan's; raises nothing for a bad file.

    ``"always"`` hashes every file, ``"changed"`` trusts those whose identity is on record,
    ``"never"`` hashes none (sizes and recorded sizes only). When every component file is
    present and every hashed one matched, the record is updated so that later loads trust
    the files that matched (a saved ORT graph or engine plan that did not keeps its entry:
    it is named as truncated until it is written again).
    """
    return _check_listed(Path(folder), component_files(manifest), verify_mode(mode), manifest)


def _check_one(
    folder: Path, rel: str, expected: str, on_record: dict, mode: str, **kind: Any
) -> tuple[FileCheck, dict[str, Any] | None]:
    """One file's check, and its identity to record if it matches (None when it is missing).
    ``kind``: FileCheck's saved_graph or engine_plan, and for a plan ``built_size``, the size
    its engine record lists (named when the plan is truncated and not on record here)."""
    built_size = kind.pop("built_size", None)
    verified_size = on_record.get("size") if on_record.get("sha256") == expected else None
    if not isinstance(verified_size, int):
        verified_size = built_size if expected else None
    if not (folder / rel).is_file():
        return FileCheck(rel, expected, None, None, verified_size, **kind), None
    identity = _identity((folder / rel).stat())
    entry = {"sha256": expected, **identity}
    digest = None
    # A saved graph with no sha256 on record is hashed too: it must not pass as checked.
    hashable = expected or kind.get("saved_graph")
    if hashable and mode != "never" and not (mode == "changed" and on_record == entry):
        digest = sha256_file(folder / rel)
    return FileCheck(rel, expected, identity["size"], digest, verified_size, **kind), entry


def _check_listed(
    folder: Path, files: dict[str, str], mode: str, manifest: Manifest
) -> list[FileCheck]:
    """check_files on ``files`` (relative path -> expected sha256, listed by the caller),
    then on the saved graphs and the manifest's engine plans."""
    record = _read_record(folder)
    checks, verified = [], {}
    listed = [(rel, expected, {}) for rel, expected in files.items()]
    listed += [(rel, sha, {"saved_graph": True}) for rel, sha in saved_graph_files(folder).items()]
    listed += [
        (e.path, e.sha256, {"engine_plan": True, "built_size": e.size}) for e in manifest.engines
    ]
    for rel, expected, kind in listed:
        on_record = record.get(rel)
        if not isinstance(on_record, dict):
            on_record = {}
        check, entry = _check_one(folder, rel, expected, on_record, mode, **kind)
        checks.append(check)
        if entry is not None and expected and mode != "never" and check.ok:
            verified[rel] = entry
        elif (check.saved_graph or check.engine_plan) and on_record:
            verified[rel] = on_record  # what it was when it last matched, kept
    if mode != "never" and all(c.ok for c in checks if not (c.saved_graph or c.engine_plan)):
        with _record_lock:
            if verified != _read_record(folder):
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
    """Raise ModelFolderError if a component file is missing or does not match its sha256;
    remove (and say so) a saved ORT graph that does not match what was recorded when it was
    written, so that the backend writes it again from the verified graph."""
    mode = verify_mode(mode)
    folder = Path(folder)
    files = component_files(manifest)
    missing = [rel for rel in files if not (folder / rel).is_file()]
    if missing:  # before hashing gigabytes
        raise ModelFolderError(
            f"{folder}: files named in {MANIFEST_NAME} are missing: {', '.join(missing)}"
        )
    checks = _check_listed(folder, files, mode, manifest)
    changed = [c for c in checks if not c.ok and not (c.saved_graph or c.engine_plan)]
    if changed:
        raise ModelFolderError(
            f"{folder}: files do not match their sha256 in {MANIFEST_NAME}: "
            + "; ".join(c.problem() for c in changed)
            + " (rebuild, or restore the original files)"
        )
    _remove_bad_saved_graphs(folder, manifest, [c for c in checks if not c.ok and c.saved_graph])
    for check in checks:
        if not check.ok and check.engine_plan:  # not every backend maps it: its own refuses it
            log.warning("%s: %s", folder, _plan_refusal(folder, check.problem()))


def _plan_refusal(folder: Path, problem: str) -> str:
    return (
        f"the engine plan is not as it was built ({problem}): rebuild it with "
        f"`sdrt engines build {folder}`"
    )


def engine_plan_problem(folder: str | os.PathLike, engine: Engine) -> str | None:
    """What is wrong with ``engine``'s plan (missing, or not the sha256 recorded when it was
    built), or None. Hashes it only if it changed since it last matched, and records a match;
    a plan recorded without a sha256 (an older sdrt's) is not checked."""
    folder = Path(folder)
    on_record = _read_record(folder).get(engine.path)
    if not isinstance(on_record, dict):
        on_record = {}
    check, _ = _check_one(
        folder,
        engine.path,
        engine.sha256,
        on_record,
        "changed",
        engine_plan=True,
        built_size=engine.size,
    )
    if not check.ok:
        return check.problem()
    if check.sha256 is not None:  # hashed just now: the next load need not
        _record_as_verified(folder, {engine.path: engine.sha256})
    return None


def check_engine_plan(folder: str | os.PathLike, engine: Engine) -> None:
    """Raise ModelFolderError naming ``engine``'s plan unless engine_plan_problem finds it
    sound: the backend calls this before it maps the plan."""
    problem = engine_plan_problem(folder, engine)
    if problem is not None:
        raise ModelFolderError(f"{folder}: {_plan_refusal(Path(folder), problem)}")


def _remove_bad_saved_graphs(folder: Path, manifest: Manifest, bad: list[FileCheck]) -> None:
    by_copy: dict[str, list[FileCheck]] = {}
    for check in bad:
        by_copy.setdefault(check.path.rsplit("/", 1)[0], []).append(check)
    for rel, checks in by_copy.items():
        component = manifest.components.get(rel.rsplit("/", 1)[1].rsplit("-", 1)[0])
        source = component.file if component is not None else "its graph"
        problems = "; ".join(c.problem() for c in checks)
        if all(not c.expected_sha256 for c in checks):  # written before sdrt recorded them
            problems = f"{rel}: no sha256 was recorded when it was written"
        shutil.rmtree(folder / rel, ignore_errors=True)
        if (folder / rel).exists():
            raise ModelFolderError(
                f"{folder}: the saved ONNX Runtime graph does not match what was recorded when "
                f"it was written ({problems}), and it cannot be removed: remove {rel}"
            )
        log.warning(
            "%s: the saved ONNX Runtime graph does not match what was recorded when it was "
            "written (%s); removed it: ort-cpu writes it again from the verified %s",
            folder,
            problems,
            source,
        )
