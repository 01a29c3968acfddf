"""The diffusers pipeline a build starts from: find it, check it, describe it, hash it.

A source is a local diffusers folder or a Hugging Face Hub id (fetched into the Hub cache
with diffusers' own download, for users who can reach the Hub). Everything the exporters
and the manifest need from it is read here once, from its JSON configs, without loading
any weights.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sdrt.errors import InputError, ModelFolderError
from sdrt.families import SUPPORTED_PIPELINES, check_guidance_embedding_unet, detect_family
from sdrt.manifest import sha256_file

TEXT_ENCODER_CLASSES = ("CLIPTextModel", "CLIPTextModelWithProjection")
# Folders a build reads (hashed as the source's content) and folders it copies as they are.
MODEL_FOLDERS = ("text_encoder", "text_encoder_2", "unet", "vae")
COPIED_FOLDERS = ("tokenizer", "tokenizer_2", "scheduler", "feature_extractor")


@dataclass(frozen=True)
class SourceModel:
    """A checked diffusers Stable Diffusion folder and what the build needs to know of it."""

    folder: Path
    path_or_id: str
    revision: str | None
    pipeline_class: str
    family: str  # "sd1", "sd2" or "sdxl"
    model_index: Mapping[str, Any]
    configs: Mapping[str, Mapping[str, Any]]  # folder name -> config.json (and "scheduler")
    text_encoder_classes: Mapping[str, str]  # "text_encoder"(, "text_encoder_2") -> class name
    # A single-file source converted into ``folder``: what export/single_file.py recorded.
    single_file: Mapping[str, Any] | None = None

    @property
    def text_encoders(self) -> tuple[str, ...]:
        return tuple(self.text_encoder_classes)

    @property
    def tokenizers(self) -> tuple[str, ...]:
        return tuple(t for t in ("tokenizer", "tokenizer_2") if (self.folder / t).is_dir())

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.configs["vae"]["block_out_channels"]) - 1)

    @property
    def prediction_type(self) -> str:
        return self.configs["scheduler"].get("prediction_type", "epsilon")


def looks_like_hub_id(text: str) -> bool:
    """ "org/name" with no path syntax: what from_pretrained would try on the Hub."""
    parts = text.split("/")
    return (
        len(parts) == 2
        and all(parts)
        and not text.startswith((".", "~"))
        and "\\" not in text
        and not any(p in (".", "..") for p in parts)
    )


def local_folder_or_hub_id(path_or_id: str, what: str, expected: str) -> Path | None:
    """The local folder ``path_or_id`` names (resolved), or None where it is a Hub id to
    fetch; InputError for a file or a path that does not exist. Cheap: callers check
    their arguments with it before torch loads."""
    path = Path(path_or_id).expanduser()
    if path.is_dir():
        return path.resolve()
    if path.exists():
        raise InputError(f"{what} {path_or_id!r} is a file; expected {expected}")
    if looks_like_hub_id(path_or_id):
        return None
    raise InputError(f"{what} {path_or_id!r} does not exist")


def resolve_source(path_or_id: str, revision: str | None = None) -> SourceModel:
    """Find the source folder (downloading a Hub id) and check that it is an SD pipeline."""
    path = Path(path_or_id).expanduser()
    if path.exists():
        if not path.is_dir():
            raise InputError(
                f"source {path_or_id!r} is a file; expected a diffusers folder or a "
                "single-file checkpoint (.safetensors, .ckpt)"
            )
        return inspect_folder(path.resolve(), str(path.resolve()), revision)
    if not looks_like_hub_id(path_or_id):
        raise InputError(f"source {path_or_id!r} does not exist")
    return inspect_folder(_download(path_or_id, revision), path_or_id, revision)


def _download(repo_id: str, revision: str | None) -> Path:
    from diffusers import DiffusionPipeline

    try:
        folder = DiffusionPipeline.download(repo_id, revision=revision)
    except Exception as e:  # network, auth and missing-repo errors all mean "not reachable"
        first_line = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise InputError(
            f"source {repo_id!r} is not a local folder and could not be fetched from the "
            f"Hugging Face Hub ({type(e).__name__}: {first_line})"
        ) from None
    return Path(folder)


def read_model_config(
    folder: Path, option: str, where: str, class_name: str, expected: str
) -> dict[str, Any]:
    """A side model's config.json (a ControlNet's, a T2I-Adapter's), checked to be of
    ``class_name``; ModelFolderError / InputError naming ``option`` and ``where``."""
    path = folder / "config.json"
    if not path.is_file():
        raise ModelFolderError(f"{option} {where!r}: expected {expected} with config.json")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ModelFolderError(f"{path}: cannot be read as JSON ({e})") from None
    got = config.get("_class_name") if isinstance(config, dict) else type(config).__name__
    if got != class_name:
        raise InputError(f"{option} {where!r}: expected a {class_name} config, got {got!r}")
    return config


def download_model(repo_id: str, what: str) -> Path:
    """A single model's Hub repo (its configs and safetensors weights) in the Hub cache, for
    options that name a model beside the pipeline (``--tiny-vae``, ``--controlnet``)."""
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id, allow_patterns=["*.json", "*.safetensors"]))
    except Exception as e:  # network, auth and missing-repo errors all mean "not reachable"
        first_line = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise InputError(
            f"{what} {repo_id!r} is not a local folder and could not be fetched from the "
            f"Hugging Face Hub ({type(e).__name__}: {first_line})"
        ) from None


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ModelFolderError(f"{path}: cannot be read as JSON ({e})") from None
    if not isinstance(data, dict):
        raise ModelFolderError(f"{path}: expected a JSON object")
    return data


def inspect_folder(folder: Path, path_or_id: str, revision: str | None = None) -> SourceModel:
    index_path = folder / "model_index.json"
    if not index_path.is_file():
        raise ModelFolderError(
            f"{path_or_id!r} is not a diffusers pipeline folder: it has no model_index.json"
        )
    index = _read_json(index_path)
    pipeline_class = index.get("_class_name")
    if pipeline_class not in SUPPORTED_PIPELINES:
        raise InputError(
            f"{path_or_id!r} is a {pipeline_class or 'pipeline of unknown class'}, an unsupported "
            f"model family; supported: {', '.join(SUPPORTED_PIPELINES)}"
        )
    is_xl = SUPPORTED_PIPELINES[pipeline_class] == "sdxl"
    needed = (
        ("text_encoder", "text_encoder_2", "unet", "vae")
        if is_xl
        else MODEL_FOLDERS[:1]
        + (
            "unet",
            "vae",
        )
    )
    configs: dict[str, dict[str, Any]] = {}
    for name in needed:
        config = folder / name / "config.json"
        if not config.is_file():
            raise ModelFolderError(
                f"{path_or_id!r} is not a complete Stable Diffusion pipeline: {name}/config.json is missing"
            )
        configs[name] = _read_json(config)
    scheduler = folder / "scheduler" / "scheduler_config.json"
    if not scheduler.is_file():
        raise ModelFolderError(
            f"{path_or_id!r} is not a complete Stable Diffusion pipeline: scheduler/scheduler_config.json is missing"
        )
    configs["scheduler"] = _read_json(scheduler)
    if not (folder / "tokenizer").is_dir():
        raise ModelFolderError(
            f"{path_or_id!r} is not a complete Stable Diffusion pipeline: tokenizer/ is missing"
        )

    text_encoder_classes = {}
    for name in needed:
        if name.startswith("text_encoder"):
            entry = index.get(name) or [None, None]
            class_name = entry[1] if isinstance(entry, list) and len(entry) == 2 else None
            if class_name not in TEXT_ENCODER_CLASSES:
                raise InputError(
                    f"{path_or_id!r}: {name} is a {class_name}, an unsupported text encoder; "
                    f"supported: {', '.join(TEXT_ENCODER_CLASSES)}"
                )
            text_encoder_classes[name] = class_name

    check_guidance_embedding_unet(pipeline_class, configs["unet"], where=path_or_id)
    family = detect_family(configs, is_xl=is_xl, where=path_or_id)
    return SourceModel(
        folder=folder,
        path_or_id=path_or_id,
        revision=revision or _hub_snapshot_revision(folder),
        pipeline_class=pipeline_class,
        family=family,
        model_index=index,
        configs=configs,
        text_encoder_classes=text_encoder_classes,
    )


def _hub_snapshot_revision(folder: Path) -> str | None:
    """The commit of a Hub cache snapshot (.../snapshots/<commit>), or None for a local folder."""
    if folder.parent.name == "snapshots" and len(folder.name) == 40:
        return folder.name
    return None


class FolderHasher:
    """sha256 of source folders (relative path + file hash per file), each file hashed once."""

    def __init__(self, root: Path):
        self.root = root
        self._files: dict[Path, str] = {}

    def file(self, path: Path) -> str:
        path = path.resolve()
        if path not in self._files:
            self._files[path] = sha256_file(path)
        return self._files[path]

    def folders(self, names: tuple[str, ...], extra: Mapping[str, Any] | None = None) -> str:
        digest = hashlib.sha256()
        for name in names:
            base = self.root / name
            paths = [base] if base.is_file() else sorted(p for p in base.rglob("*") if p.is_file())
            for path in paths:
                rel = path.relative_to(self.root).as_posix()
                digest.update(f"{rel}\0{self.file(path)}\n".encode())
        if extra:
            digest.update(json.dumps(dict(extra), sort_keys=True).encode())
        return digest.hexdigest()
