"""``sdrt build --tiny-vae FOLDER``: a diffusers ``AutoencoderTiny`` (TAESD) beside the full VAE.

The tiny VAE is exported as two more graphs, ``vae_decoder_tiny`` (latent_sample -> sample)
and ``vae_encoder_tiny`` (sample -> latent_sample), verified against eager PyTorch like the
others; the full VAE stays, so each call chooses (``Pipeline(..., vae="tiny")``).

What the graphs compute is what diffusers computes with ``vae=AutoencoderTiny(...)``:
``AutoencoderTiny.decode`` maps latents to images in [-1, 1] (its decoder's [0, 1] output
times 2 minus 1), and ``encode`` maps [-1, 1] images to latents (its ``.latents``, no
distribution to sample). Its ``latent_magnitude``/``latent_shift`` are used only by its own
``forward`` (8-bit latent round trips), never by the pipelines, so not here either.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from sdrt.export.build_config import check_tiny_vae_option
from sdrt.export.components import ExportWrapper, ShapeCase, VaeDecoderExport
from sdrt.export.random_tiny_vae import CLASS_NAME
from sdrt.export.source import FolderHasher, SourceModel, download_model

from sdrt.errors import InputError, ModelFolderError
from sdrt.manifest import Source, TinyVae

DECODER = "vae_decoder_tiny"
ENCODER = "vae_encoder_tiny"
COMPONENTS = (DECODER, ENCODER)
CONFIG_FILE = "config.json"


@dataclass(frozen=True)
class TinyVaeSource:
    """A checked local AutoencoderTiny folder and where it came from."""

    folder: Path
    path_or_id: str
    revision: str | None
    config: dict[str, Any]

    def files(self) -> tuple[str, ...]:
        """The folder's files (names relative to it), what its content hash covers."""
        return tuple(
            sorted(
                p.name for p in self.folder.iterdir() if p.is_file() and not p.name.startswith(".")
            )
        )

    def content_sha256(self, hasher: FolderHasher, extra: dict[str, Any] | None = None) -> str:
        return hasher.folders(self.files(), extra)

    def record(self, hasher: FolderHasher) -> TinyVae:
        return TinyVae(
            source=Source(self.path_or_id, self.revision, self.content_sha256(hasher)),
            class_name=CLASS_NAME,
            scaling_factor=float(self.config.get("scaling_factor", 1.0)),
            decoder=DECODER,
            encoder=ENCODER,
        )


def resolve_tiny_vae(path_or_id: str, pipeline: SourceModel) -> TinyVaeSource:
    """The tiny VAE folder (a Hub id is fetched into the Hub cache), checked against the
    pipeline it will decode for: AutoencoderTiny, same latent channels, same scale factor."""
    revision = None
    folder = check_tiny_vae_option(path_or_id)
    if folder is not None:
        path_or_id = str(folder)
    else:
        folder = download_model(path_or_id, "--tiny-vae")
        revision = folder.name if folder.parent.name == "snapshots" else None
    config = _read_config(folder, path_or_id)
    _check_compatible(config, pipeline, path_or_id)
    return TinyVaeSource(folder, path_or_id, revision, config)


def _read_config(folder: Path, where: str) -> dict[str, Any]:
    path = folder / CONFIG_FILE
    if not path.is_file():
        raise ModelFolderError(
            f"--tiny-vae {where!r}: expected a diffusers AutoencoderTiny folder with "
            f"{CONFIG_FILE}, found none"
        )
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ModelFolderError(f"{path}: cannot be read as JSON ({e})") from None
    if not isinstance(config, dict) or config.get("_class_name") != CLASS_NAME:
        got = config.get("_class_name") if isinstance(config, dict) else type(config).__name__
        raise InputError(f"--tiny-vae {where!r}: expected an {CLASS_NAME} config, got {got!r}")
    return config


def tiny_scale_factor(config: dict[str, Any]) -> int:
    """Pixels per latent: the decoder upsamples once between each of its stages."""
    stages = len(config.get("num_decoder_blocks", (3, 3, 3, 1)))
    return int(config.get("upsampling_scaling_factor", 2)) ** (stages - 1)


def _check_compatible(config: dict[str, Any], pipeline: SourceModel, where: str) -> None:
    channels = int(config.get("latent_channels", 4))
    expected = int(pipeline.configs["vae"].get("latent_channels", 4))
    if channels != expected:
        raise InputError(
            f"--tiny-vae {where!r}: expected {expected} latent channels (the pipeline's VAE), "
            f"got {channels}"
        )
    scale = tiny_scale_factor(config)
    encoder_scale = 2 ** (len(config.get("num_encoder_blocks", (1, 3, 3, 3))) - 1)
    if scale != pipeline.vae_scale_factor or encoder_scale != pipeline.vae_scale_factor:
        raise InputError(
            f"--tiny-vae {where!r}: expected a VAE scale factor of {pipeline.vae_scale_factor} "
            f"(the pipeline's VAE), got {scale} (decoder) and {encoder_scale} (encoder)"
        )


# ---------------------------------------------------------------------------- wrappers


class TinyVaeDecoderExport(VaeDecoderExport):
    """``AutoencoderTiny.decode``: latents (already divided by its scaling factor) -> [-1, 1]."""

    name = DECODER
    source_folder = "tiny_vae"


class TinyVaeEncoderExport(ExportWrapper):
    """``AutoencoderTiny.encode(...).latents``: [-1, 1] images -> latents (before scaling)."""

    name = ENCODER
    source_folder = "tiny_vae"
    input_names = ("sample",)
    output_names = ("latent_sample",)

    def __init__(self, vae: torch.nn.Module):
        super().__init__()
        self.vae = vae

    def forward(self, sample):
        return self.vae.encode(sample, return_dict=False)[0]

    def dynamic_axes(self):
        return {
            "sample": {0: "batch", 2: "image_height", 3: "image_width"},
            "latent_sample": {0: "batch", 2: "latent_height", 3: "latent_width"},
        }

    def sample_inputs(self, case: ShapeCase, generator: torch.Generator):
        shape = (case.batch, self.vae.config.in_channels, case.height, case.width)
        return {"sample": torch.rand(shape, generator=generator) * 2.0 - 1.0}


def load_tiny_wrapper(source: TinyVaeSource, name: str, vae_scale_factor: int):
    """The tiny VAE's weights (float32, eval mode) wrapped for export as ``name``."""
    from diffusers import AutoencoderTiny

    vae = AutoencoderTiny.from_pretrained(source.folder, torch_dtype=torch.float32).eval()
    if name == DECODER:
        return TinyVaeDecoderExport(vae, vae_scale_factor=vae_scale_factor)
    if name == ENCODER:
        return TinyVaeEncoderExport(vae)
    raise ValueError(f"unknown tiny VAE component {name!r}")
