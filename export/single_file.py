"""Single-file checkpoints (``.safetensors``, ``.ckpt``) in the original LDM/A1111 key layout.

``sdrt build model.safetensors -o OUT`` converts the file into a diffusers folder in a
temporary place beside OUT, then builds that folder as any other source. Fully offline:

- the file is read safely: safetensors, or ``torch.load(weights_only=True)``, which refuses
  pickles of anything but tensors and plain containers;
- the family comes from the keys: which text encoder(s) the file carries (CLIP ViT-L under
  ``cond_stage_model.transformer.``: SD 1.x; OpenCLIP under ``cond_stage_model.model.``:
  SD 2.x; both under ``conditioner.embedders.``: SDXL), the same keys diffusers tests;
- the configs come from ``--config``: one of sdrt's architectures (``export/architectures.py``:
  the published configs of SD 1.5, 2.1 and XL, and the tiny test models) or a local diffusers
  folder; by default the architecture of the detected family whose U-Net and text encoder
  widths match the file's. Never the Hub;
- the prediction type is the config's (SD 2.x -> SD 2.1's v_prediction, as diffusers'
  ``from_single_file`` takes its config from stabilityai/stable-diffusion-2-1 for SD 2.x
  keys), or ``--prediction-type`` (SD 2.x *base* files are epsilon);
- the tokenizer: a single file has none. The ``--config`` folder's, sdrt's locally learned one
  for the tiny architectures and for files sdrt wrote (their header says so), else the
  Hub cache's, looked up without network; otherwise an error says what is missing.

The weights are converted by diffusers' own functions (``convert_ldm_unet_checkpoint``,
``convert_ldm_vae_checkpoint``, ``convert_ldm_clip_checkpoint``, ``convert_open_clip_checkpoint``),
what ``StableDiffusionPipeline.from_single_file`` runs, and loaded strictly: a missing key or
a shape that differs from the config is an error naming it.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pickle
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sdrt.export.single_file_writer import (
    LOCAL_TOKENIZER,
    SUFFIXES,
    TOKENIZER_KEY,
)
from sdrt.export.source import SourceModel

from sdrt.errors import InputError
from sdrt.manifest import PREDICTION_TYPES, sha256_file

UNET_KEY = "model.diffusion_model.input_blocks.0.0.weight"
VAE_KEY = "first_stage_model.decoder.conv_in.weight"
# Text encoder token embeddings, by family: the keys that tell SD 1.x, 2.x and XL apart.
FAMILY_KEYS = {
    "sdxl": (
        "conditioner.embedders.0.transformer.text_model.embeddings.token_embedding.weight",
        "conditioner.embedders.1.model.token_embedding.weight",
    ),
    "sd2": ("cond_stage_model.model.token_embedding.weight",),
    "sd1": ("cond_stage_model.transformer.text_model.embeddings.token_embedding.weight",),
}
# sdrt architectures a family's file may be, the published one first.
FAMILY_ARCHITECTURES = {
    "sd1": ("sd15", "tiny", "tiny-inpaint"),
    "sd2": ("sd21",),
    "sdxl": ("sdxl", "tiny-xl"),
}
ARCHITECTURE_FAMILY = {a: f for f, archs in FAMILY_ARCHITECTURES.items() for a in archs}
# Where a Hub cache may hold the published tokenizers: (repo, subfolder) per tokenizer folder.
HUB_TOKENIZERS = {
    "sd15": {"tokenizer": ("stable-diffusion-v1-5/stable-diffusion-v1-5", "tokenizer")},
    "sd21": {"tokenizer": ("stabilityai/stable-diffusion-2-1", "tokenizer")},
    "sdxl": {
        "tokenizer": ("stabilityai/stable-diffusion-xl-base-1.0", "tokenizer"),
        "tokenizer_2": ("stabilityai/stable-diffusion-xl-base-1.0", "tokenizer_2"),
    },
}
TOKENIZER_FILES = ("vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json")
MAX_KEYS_SHOWN = 3


@dataclass(frozen=True)
class SingleFileOptions:
    """How to read a single-file source; both None: detect from the file."""

    config: str | None = None  # an sdrt architecture name or a local diffusers folder
    prediction_type: str | None = None

    def __post_init__(self):
        if self.prediction_type is not None and self.prediction_type not in PREDICTION_TYPES:
            raise InputError(
                f"prediction type must be one of {', '.join(PREDICTION_TYPES)}, "
                f"got {self.prediction_type!r}"
            )

    @property
    def given(self) -> bool:
        return self.config is not None or self.prediction_type is not None


@dataclass(frozen=True)
class Checkpoint:
    path: Path
    tensors: Mapping[str, Any] = field(repr=False)
    metadata: Mapping[str, str]


def is_single_file(path: str | os.PathLike) -> bool:
    return Path(path).suffix.lower() in SUFFIXES and Path(path).is_file()


# ---------------------------------------------------------------------------- reading


def load_checkpoint(path: Path) -> Checkpoint:
    """The file's tensors, safely; InputError for a truncated, corrupt or unsafe file."""
    if path.suffix.lower() == ".safetensors":
        return _load_safetensors(path)
    return _load_ckpt(path)


def _load_safetensors(path: Path) -> Checkpoint:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            tensors = {key: f.get_tensor(key) for key in f.keys()}  # noqa: SIM118
    except Exception as e:  # SafetensorError, OSError: a truncated or corrupt header/body
        raise InputError(
            f"{path}: not a readable safetensors file ({type(e).__name__}: {_first_line(e)})"
        ) from None
    return Checkpoint(path, tensors, metadata)


def _load_ckpt(path: Path) -> Checkpoint:
    import torch

    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise InputError(
            f"{path}: refused to unpickle: the file holds objects other than tensors and plain "
            f"containers, which could run code ({_first_line(e)}); convert it to .safetensors "
            "with a tool you trust"
        ) from None
    except Exception as e:  # a truncated zip, not a torch file at all
        raise InputError(
            f"{path}: not a readable .ckpt (torch) file ({type(e).__name__}: {_first_line(e)})"
        ) from None
    if not isinstance(data, dict):
        raise InputError(f"{path}: expected a dict of tensors, got {type(data).__name__}")
    metadata = data.get("sdrt") if isinstance(data.get("sdrt"), dict) else {}
    while isinstance(data.get("state_dict"), dict):  # as diffusers unwraps it
        data = data["state_dict"]
    tensors = {k: v for k, v in data.items() if isinstance(v, torch.Tensor)}
    return Checkpoint(path, tensors, {str(k): str(v) for k, v in metadata.items()})


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else ""


def detect_family(checkpoint: Checkpoint) -> str:
    """sd1, sd2 or sdxl from the keys; InputError naming what a file of a known layout has."""
    keys = checkpoint.tensors
    if UNET_KEY not in keys or VAE_KEY not in keys:
        sample = ", ".join(sorted(keys)[:MAX_KEYS_SHOWN]) or "no tensors"
        raise InputError(
            f"{checkpoint.path}: unknown key layout: expected a Stable Diffusion checkpoint in "
            f"the original (LDM/A1111) layout with {UNET_KEY!r} and {VAE_KEY!r}; "
            f"its {len(keys)} keys start {sample}"
        )
    for family, needed in FAMILY_KEYS.items():
        if all(k in keys for k in needed):
            return family
    raise InputError(
        f"{checkpoint.path}: unknown text encoder layout: expected one of "
        + "; ".join(f"{f}: {', '.join(k)}" for f, k in FAMILY_KEYS.items())
    )


# ---------------------------------------------------------------------------- configs


@dataclass(frozen=True)
class _ConfigSource:
    """Where the diffusers configs and tokenizers of the converted folder come from."""

    kind: str  # "architecture" or "folder"
    name: str  # architecture name or folder path
    how: str  # "given" or "detected"


def _expected_shapes(arch: str, vocab_size: int) -> dict[str, tuple[int, ...]]:
    """The LDM shapes of the keys that tell one architecture of a family from another."""
    from sdrt.export.architectures import ARCHITECTURES

    components = ARCHITECTURES[arch].components
    unet = components["unet"].config
    shapes = {UNET_KEY: (unet["block_out_channels"][0], unet["in_channels"], 3, 3)}
    family = ARCHITECTURE_FAMILY[arch]
    keys = FAMILY_KEYS[family]
    text_names = ("text_encoder", "text_encoder_2")
    for key, name in zip(keys, text_names, strict=False):
        text = components[name].config
        shapes[key] = (text["vocab_size"] or vocab_size, text["hidden_size"])
    return shapes


def _pick_architecture(checkpoint: Checkpoint, family: str) -> str:
    """The family's architecture whose widths (U-Net base channels and input channels, text
    encoder vocabulary and width) the file has; the published one first."""
    tensors = checkpoint.tensors
    vocab = tensors[FAMILY_KEYS[family][0]].shape[0]
    found: dict[str, tuple[int, ...]] = {}
    for arch in FAMILY_ARCHITECTURES[family]:
        expected = _expected_shapes(arch, vocab)
        found = {key: tuple(tensors[key].shape) for key in expected}
        if found == expected:
            return arch
    shown = "; ".join(f"{k} {list(v)}" for k, v in found.items())
    raise InputError(
        f"{checkpoint.path}: an {family} checkpoint whose widths match none of sdrt's "
        f"{family} architectures ({', '.join(FAMILY_ARCHITECTURES[family])}): {shown}; "
        "pass --config FOLDER, a diffusers folder of the same architecture"
    )


def _config_source(checkpoint: Checkpoint, family: str, options: SingleFileOptions):
    from sdrt.export.architectures import ARCHITECTURES

    if options.config is None:
        return _ConfigSource("architecture", _pick_architecture(checkpoint, family), "detected")
    if options.config in ARCHITECTURES:
        arch_family = ARCHITECTURE_FAMILY.get(options.config)
        if arch_family != family:
            raise InputError(
                f"--config {options.config} is an {arch_family} architecture, but "
                f"{checkpoint.path} is an {family} checkpoint"
            )
        return _ConfigSource("architecture", options.config, "given")
    folder = Path(options.config).expanduser()
    if not folder.is_dir():
        raise InputError(
            f"--config {options.config!r}: expected one of sdrt's architectures "
            f"({', '.join(ARCHITECTURE_FAMILY)}) or a local diffusers folder"
        )
    return _ConfigSource("folder", str(folder.resolve()), "given")


def _write_architecture_configs(arch_name: str, checkpoint: Checkpoint, folder: Path) -> None:
    from sdrt.export.architectures import ARCHITECTURES
    from sdrt.export.random_model import component_config, model_index

    arch = ARCHITECTURES[arch_name]
    _write_json(folder / "model_index.json", model_index(arch))
    _write_json(folder / "scheduler" / "scheduler_config.json", dict(arch.scheduler))
    family = ARCHITECTURE_FAMILY[arch_name]
    vocab = checkpoint.tensors[FAMILY_KEYS[family][0]].shape[0]
    for name, component in arch.components.items():
        _write_json(folder / name / "config.json", component_config(component, vocab))


def _copy_folder_configs(source: Path, folder: Path) -> None:
    from sdrt.export.source import MODEL_FOLDERS, inspect_folder

    inspect_folder(source, str(source))  # a complete SD pipeline folder, or a clear error
    shutil.copy2(source / "model_index.json", folder / "model_index.json")
    for name in ("scheduler", "tokenizer", "tokenizer_2"):
        if (source / name).is_dir():
            shutil.copytree(source / name, folder / name)
    for name in MODEL_FOLDERS:
        if (source / name / "config.json").is_file():
            (folder / name).mkdir(parents=True, exist_ok=True)
            shutil.copy2(source / name / "config.json", folder / name / "config.json")


def _write_json(path: Path, data: Mapping[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(dict(data), indent=2, sort_keys=True) + "\n", encoding="utf-8")


# ---------------------------------------------------------------------------- tokenizers


def _write_tokenizers(arch_name: str, checkpoint: Checkpoint, folder: Path) -> str:
    """The tokenizer folders for an architecture config; returns where they came from."""
    local = arch_name.startswith("tiny") or checkpoint.metadata.get(TOKENIZER_KEY) == (
        LOCAL_TOKENIZER
    )
    if local:
        from sdrt.export import clip_bpe
        from sdrt.export.architectures import ARCHITECTURES
        from sdrt.export.random_model import _tokenizer_model

        merges, vocab = _tokenizer_model()
        for name, tokenizer in ARCHITECTURES[arch_name].tokenizers.items():
            clip_bpe.write_tokenizer_folder(
                folder / name, vocab, merges, pad_token=tokenizer.pad_token
            )
        return LOCAL_TOKENIZER
    return _copy_hub_tokenizers(arch_name, checkpoint, folder)


def _copy_hub_tokenizers(arch_name: str, checkpoint: Checkpoint, folder: Path) -> str:
    from huggingface_hub import try_to_load_from_cache

    used = []
    for name, (repo, subfolder) in HUB_TOKENIZERS[arch_name].items():
        found = {
            file: try_to_load_from_cache(repo, f"{subfolder}/{file}") for file in TOKENIZER_FILES
        }
        paths = {f: p for f, p in found.items() if isinstance(p, str)}
        if not {"vocab.json", "merges.txt"} <= set(paths):
            raise InputError(
                f"{checkpoint.path}: a single file carries no tokenizer, and the Hugging Face "
                f"cache has none for {arch_name} ({repo}, {subfolder}/vocab.json and merges.txt "
                "not found; nothing is downloaded); pass --config FOLDER, a diffusers folder "
                f"of the same architecture with {name}/"
            )
        (folder / name).mkdir(parents=True, exist_ok=True)
        for file, path in paths.items():
            shutil.copy2(path, folder / name / file)
        used.append(f"{repo}/{subfolder}")
    return "hub-cache:" + ",".join(used)


# ---------------------------------------------------------------------------- weights


def _load_components(checkpoint: Checkpoint, family: str, folder: Path) -> None:
    """Convert and strictly load each component from the file; save it into ``folder``."""
    import diffusers
    import torch
    import transformers
    from diffusers.loaders import single_file_utils as sfu
    from sdrt.export.ldm_keys import TEXT_ENCODER_LAYOUT

    index = json.loads((folder / "model_index.json").read_text())
    tensors = dict(checkpoint.tensors)
    for name in ("unet", "vae"):
        config = json.loads((folder / name / "config.json").read_text())
        cls = diffusers.UNet2DConditionModel if name == "unet" else diffusers.AutoencoderKL
        convert = (
            sfu.convert_ldm_unet_checkpoint if name == "unet" else sfu.convert_ldm_vae_checkpoint
        )
        model = cls.from_config(config)
        try:
            weights = convert(checkpoint=tensors, config=config)
        except (KeyError, IndexError, RuntimeError, ValueError) as e:
            raise _mismatch(checkpoint, name, f"{type(e).__name__}: {_first_line(e)}") from None
        _load_strict(model, weights, checkpoint, name)
        model.to(torch.float32).save_pretrained(folder / name, safe_serialization=True)
    for name, (prefix, style) in TEXT_ENCODER_LAYOUT[family].items():
        config = transformers.CLIPTextConfig(
            **json.loads((folder / name / "config.json").read_text())
        )
        class_name = index.get(name, [None, "CLIPTextModel"])[1]
        model = getattr(transformers, class_name)(config)
        if style == "clip":  # strips cond_stage_model.transformer. / conditioner.embedders.0.
            weights = sfu.convert_ldm_clip_checkpoint(tensors)
        else:
            weights = sfu.convert_open_clip_checkpoint(model, tensors, prefix=prefix)
        if not hasattr(model, "text_model"):  # transformers 5 flattened CLIPTextModel
            weights = {k.removeprefix("text_model."): v for k, v in weights.items()}
        _load_strict(model, weights, checkpoint, name)
        model.to(torch.float32).save_pretrained(folder / name)


def _load_strict(model, weights: Mapping[str, Any], checkpoint: Checkpoint, name: str) -> None:
    expected = model.state_dict()
    missing = [k for k in expected if k not in weights and not k.endswith("position_ids")]
    if missing:
        raise _mismatch(
            checkpoint,
            name,
            f"{len(missing)} weights missing, e.g. {', '.join(missing[:MAX_KEYS_SHOWN])}",
        )
    wrong = [
        f"{k} {list(weights[k].shape)} (config: {list(v.shape)})"
        for k, v in expected.items()
        if k in weights and tuple(weights[k].shape) != tuple(v.shape)
    ]
    if wrong:
        raise _mismatch(checkpoint, name, f"shapes differ: {'; '.join(wrong[:MAX_KEYS_SHOWN])}")
    model.load_state_dict({k: weights[k] for k in expected if k in weights}, strict=False)


def _mismatch(checkpoint: Checkpoint, name: str, what: str) -> InputError:
    return InputError(
        f"{checkpoint.path}: its {name} does not match the config ({what}); pass "
        "--config with the file's architecture (sd15, sd21, sdxl or a diffusers folder)"
    )


# ---------------------------------------------------------------------------- the folder


def convert_to_folder(path: Path, options: SingleFileOptions, folder: Path) -> dict[str, Any]:
    """Write the single file as a diffusers folder; return the record for sdrt.json."""
    checkpoint = load_checkpoint(path)
    family = detect_family(checkpoint)
    source = _config_source(checkpoint, family, options)
    folder.mkdir(parents=True, exist_ok=True)
    if source.kind == "folder":
        _copy_folder_configs(Path(source.name), folder)
        tokenizer = f"folder:{source.name}"
    else:
        _write_architecture_configs(source.name, checkpoint, folder)
        tokenizer = _write_tokenizers(source.name, checkpoint, folder)
    scheduler_path = folder / "scheduler" / "scheduler_config.json"
    scheduler = json.loads(scheduler_path.read_text())
    prediction_from = "config"
    if options.prediction_type is not None:
        scheduler["prediction_type"] = options.prediction_type
        _write_json(scheduler_path, scheduler)
        prediction_from = "--prediction-type"
    _load_components(checkpoint, family, folder)
    return {
        "file": str(path),
        "sha256": sha256_file(path),
        "layout": "ldm",
        "family": family,
        "config": source.name,
        "config_kind": source.kind,
        "config_chosen": source.how,
        "tokenizer": tokenizer,
        "prediction_type": scheduler.get("prediction_type", "epsilon"),
        "prediction_type_from": prediction_from,
    }


@contextmanager
def converted_folder(
    path: Path, options: SingleFileOptions, beside: Path
) -> Iterator[tuple[Path, dict[str, Any]]]:
    """The single file converted into a temporary diffusers folder beside ``beside`` (the
    build's output, where there is room for the weights), removed afterwards."""
    beside.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(
        prefix=f".{beside.name}.single-file-", dir=beside.parent
    ) as tmp:
        folder = Path(tmp) / "pipeline"
        yield folder, convert_to_folder(path, options, folder)


@contextmanager
def open_source(
    source: str, revision: str | None, options: SingleFileOptions, output: Path
) -> Iterator[SourceModel]:
    """The build's source: a diffusers folder or Hub id as it is, or a single file converted
    into a temporary diffusers folder for the length of the ``with`` block."""
    from sdrt.export.source import inspect_folder, resolve_source

    path = Path(source).expanduser()
    if not is_single_file(path):
        if options.given:
            raise InputError(
                f"--config and --prediction-type apply to single-file sources "
                f"({', '.join(SUFFIXES)}); {source!r} is not one"
            )
        yield resolve_source(source, revision)
        return
    if revision is not None:
        raise InputError(f"--revision applies to Hub ids; {source!r} is a local file")
    path = path.resolve()
    with converted_folder(path, options, output) as (folder, record):
        model = inspect_folder(folder, str(path))
        yield dataclasses.replace(model, revision=None, single_file=record)
