"""An ONNX Stable Diffusion folder exported elsewhere (Optimum's layout): find its graphs,
their external data, and the configs Optimum copies from the diffusers source.

Optimum writes ``model_index.json``, ``scheduler/``, ``tokenizer/`` (``tokenizer_2/``) and
one folder per graph (``text_encoder/``, ``text_encoder_2/``, ``unet/``, ``vae_decoder/``,
``vae_encoder/``), each with ``model.onnx`` (+ ``model.onnx_data`` over 2 GB) and the
component's ``config.json``. Older exports (diffusers' conversion script, the Hub's ``onnx``
revisions) name the pipeline ``OnnxStableDiffusionPipeline``, store external data as
``weights.pb`` and may carry no component configs; what they lack is derived from the
graphs or defaulted, and recorded as such.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sdrt.errors import InputError, ModelFolderError
from sdrt.families import SUPPORTED_PIPELINES
from sdrt.manifest import COMPONENT_NAMES, MANIFEST_NAME

ONNX_FILE = "model.onnx"
CONFIG_FILE = "config.json"
REQUIRED_GRAPHS = ("text_encoder", "unet", "vae_decoder")
# Prefixes of the pipeline classes ONNX exporters write into model_index.json.
EXPORTER_PREFIXES = ("ORT", "Onnx")
# What the folder may hold beside a graph that is not its external data.
NOT_EXTERNAL_DATA = (".json", ".md", ".txt")
# Left out when the folder is copied: sdrt's own files, made anew for the adopted folder.
SDRT_FILES = (MANIFEST_NAME, ".sdrt-verified.json", "engines")


@dataclass(frozen=True)
class GraphFiles:
    """One graph of the folder: its file and its external data file, relative to the folder."""

    name: str
    file: str
    external_data: str | None


@dataclass(frozen=True)
class OnnxFolder:
    folder: Path
    model_index: Mapping[str, Any]
    pipeline_class: str  # as diffusers names it, e.g. StableDiffusionPipeline
    is_xl: bool
    graphs: Mapping[str, GraphFiles]  # component name -> files, in COMPONENT_NAMES order
    configs: Mapping[str, Mapping[str, Any]]  # unet, vae, text_encoder(_2), scheduler: present ones
    tokenizers: tuple[str, ...]


def is_onnx_folder(path: str | Path) -> bool:
    """Whether ``path`` looks like an ONNX pipeline folder (a U-Net graph and model_index.json)."""
    path = Path(path)
    return (path / "model_index.json").is_file() and (path / "unet" / ONNX_FILE).is_file()


def inspect_onnx_folder(path: str | Path) -> OnnxFolder:
    """Check the folder's layout and read its configs; ModelFolderError names what is missing."""
    folder = Path(path)
    if not folder.is_dir():
        raise InputError(f"{str(folder)!r} does not exist or is not a folder")
    index = _read_json(folder / "model_index.json")
    pipeline_class = _pipeline_class(index, folder)
    is_xl = SUPPORTED_PIPELINES[pipeline_class] == "sdxl"
    required = (*REQUIRED_GRAPHS, "text_encoder_2") if is_xl else REQUIRED_GRAPHS
    missing = [
        f"{name}/{ONNX_FILE}" for name in required if not (folder / name / ONNX_FILE).is_file()
    ]
    tokenizers = ("tokenizer", "tokenizer_2") if is_xl else ("tokenizer",)
    missing += [f"{t}/" for t in tokenizers if not (folder / t).is_dir()]
    scheduler = folder / "scheduler" / "scheduler_config.json"
    if not scheduler.is_file():
        missing.append("scheduler/scheduler_config.json")
    if missing:
        diffusers = (folder / "vae" / CONFIG_FILE).is_file()  # weights, not graphs
        raise ModelFolderError(
            f"{str(folder)!r} is not a complete ONNX {pipeline_class} folder: "
            f"missing {', '.join(missing)}"
            + (" (it is a diffusers folder: export it with `sdrt build`)" if diffusers else "")
        )
    graphs = {
        name: _graph_files(folder, name)
        for name in COMPONENT_NAMES
        if (folder / name / ONNX_FILE).is_file()
    }
    configs = {"scheduler": _read_json(scheduler)}
    for name, places in {
        "text_encoder": ("text_encoder",),
        "text_encoder_2": ("text_encoder_2",),
        "unet": ("unet",),
        "vae": ("vae_decoder", "vae_encoder", "vae"),
    }.items():
        found = next(
            (folder / p / CONFIG_FILE for p in places if (folder / p / CONFIG_FILE).is_file()), None
        )
        if found is not None:
            configs[name] = _read_json(found)
    return OnnxFolder(folder, index, pipeline_class, is_xl, graphs, configs, tokenizers)


def _pipeline_class(index: Mapping[str, Any], folder: Path) -> str:
    """The diffusers pipeline class, with an exporter's prefix (ORT..., Onnx...) removed."""
    name = index.get("_class_name")
    if isinstance(name, str):
        for prefix in EXPORTER_PREFIXES:
            if name.startswith(prefix) and name[len(prefix) :] in SUPPORTED_PIPELINES:
                name = name[len(prefix) :]
    if name not in SUPPORTED_PIPELINES:
        raise InputError(
            f"{str(folder)!r}: model_index.json names a {name or 'pipeline of unknown class'}, "
            f"an unsupported model family; supported: {', '.join(SUPPORTED_PIPELINES)} "
            f"(or their {'/'.join(EXPORTER_PREFIXES)} ONNX names)"
        )
    return name


def _graph_files(folder: Path, name: str) -> GraphFiles:
    """model.onnx and the one external data file beside it, if any (model.onnx_data, weights.pb)."""
    others = sorted(
        p.name
        for p in (folder / name).iterdir()
        if p.is_file() and p.name != ONNX_FILE and not p.name.endswith(NOT_EXTERNAL_DATA)
    )
    if len(others) > 1:
        raise ModelFolderError(
            f"{folder / name}: expected {ONNX_FILE} and at most one external data file, "
            f"got {', '.join(others)} beside it"
        )
    return GraphFiles(name, f"{name}/{ONNX_FILE}", f"{name}/{others[0]}" if others else None)


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ModelFolderError(
            f"{path.parent}: not an ONNX pipeline folder: {path.name} is missing"
        )
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ModelFolderError(f"{path}: cannot be read as JSON ({e})") from None
    if not isinstance(data, dict):
        raise ModelFolderError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data
