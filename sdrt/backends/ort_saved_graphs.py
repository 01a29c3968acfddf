"""ONNX Runtime's optimised CPU graphs as build artifacts: write, record, prune.

ONNX Runtime optimises a graph for this CPU (ORT_ENABLE_ALL) and repacks its matmul
weights every time it makes a session; writing the result once (``sdrt build --target
ort-cpu``, or the ort-cpu backend on a folder's first load) lets later loads map it. Each
copy lives in a folder named by its key (sdrt.backends.ort_cpu_options.py) with a key record
beside it, which is what lets a new copy remove the ones it supersedes.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

import onnxruntime as ort

from sdrt.backends.ort_cpu_options import (
    EXTERNAL_INITIALIZER_MIN_BYTES,
    KEY_RECORD,
    OrtOptions,
    key_record,
    optimized_model_path,
    saves_prepacked_weights,
    session_options,
)
from sdrt.files import with_umask_mode
from sdrt.manifest import Component, Manifest, sha256_file

log = logging.getLogger(__name__)


def prune_superseded(saved_dir: Path, record: dict[str, str]) -> list[Path]:
    """Remove the component's other saved graphs that no load can pick again: those made
    from another version of its graph, or by another ONNX Runtime on this same CPU (an SD 1.5
    U-Net's copy is 4.3 GB). Copies for other CPUs or other options stay; so does a folder
    without a key record, which is not ours to judge."""
    removed = []
    for sibling in sorted(saved_dir.parent.glob(f"{record['component']}-*")):
        if sibling == saved_dir or not sibling.is_dir():
            continue
        try:
            other = json.loads((sibling / KEY_RECORD).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if not isinstance(other, dict) or other.get("component") != record["component"]:
            continue
        other_graph = any(other.get(k) != record[k] for k in ("sha256", "external_data_sha256"))
        older_runtime = other.get("cpu") == record["cpu"] and (
            other.get("onnxruntime") != record["onnxruntime"]
        )
        if other_graph or older_runtime:
            shutil.rmtree(sibling, ignore_errors=True)  # open mappings stay valid on POSIX
            removed.append(sibling)
    return removed


def write_optimized_model(
    source: Path, target: Path, options: OrtOptions, component: Component
) -> None:
    """Let ORT optimise ``source`` and save the result; rename the folder in atomically,
    then remove the copies it supersedes."""
    target.parent.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.parent.name}.", dir=target.parent.parent))
    try:
        so = session_options(options, component.name)
        so.optimized_model_filepath = str(staging / target.name)
        so.add_session_config_entry(
            "session.optimized_model_external_initializers_file_name", target.name + "_data"
        )
        so.add_session_config_entry(
            "session.optimized_model_external_initializers_min_size_in_bytes",
            str(EXTERNAL_INITIALIZER_MIN_BYTES),
        )
        if saves_prepacked_weights(options, component.name):
            so.add_session_config_entry(
                "session.save_external_prepacked_constant_initializers", "1"
            )
        ort.InferenceSession(str(source), so, providers=list(options.providers))
        # What loads check the copy against (sdrt.integrity): they map it, never re-derive it.
        files = {p.name: sha256_file(p) for p in sorted(staging.iterdir())}
        record = {**key_record(component), "files": files}
        (staging / KEY_RECORD).write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
        with_umask_mode(staging)  # mkdtemp's folder is private (0o700)
        try:
            os.replace(staging, target.parent)
        except OSError:
            if not target.is_file():  # not another process that won the race: a real failure
                raise
            return
    finally:
        if staging.exists():
            for child in staging.iterdir():
                child.unlink()
            staging.rmdir()
    removed = prune_superseded(target.parent, record)
    if removed:
        log.info("removed %d superseded saved graphs of %s", len(removed), component.name)


def save_optimized_models(
    folder: str | os.PathLike, manifest: Manifest, options: OrtOptions | None = None
) -> list[Path]:
    """Write every component's optimised graph for this machine now (what the first
    ``Pipeline.load`` would do), so that the first load is as fast as the later ones."""
    folder = Path(folder)
    options = options or OrtOptions()
    if not options.cache_optimized_model or options.graph_optimization == "disable":
        raise ValueError(
            "save_optimized_models needs cache_optimized_model and an optimisation level"
        )
    paths = []
    for component in manifest.components.values():
        target = optimized_model_path(folder, component, options)
        if not target.is_file():
            write_optimized_model(folder / component.file, target, options, component)
        paths.append(target)
    return paths
