"""``sdrt build --t2i-adapter [NAME=]PATH``: a diffusers T2IAdapter beside the U-Net.

The adapter becomes the graph ``t2i_adapter``::

    adapter_image (N, C, H, W in [0, 1])  ->  down_intrablock_additional_residual_0 .. _K-1

(``T2IAdapter.forward``'s features, the first K: one per U-Net down block, the ones the
U-Net consumes), and the U-Net is exported a third time as ``unet_adapter``, which takes
them as inputs by the same names (diffusers' ``down_intrablock_additional_residuals``).
The adapter runs once per image, not per step; the runtime scales its features
(sdrt/control/adapter.py). Both graphs are verified against eager PyTorch as every
component is; the plain U-Net (and the ControlNet one) stay.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from sdrt.export.components import ExportWrapper, UNetExport
from sdrt.export.source import (
    FolderHasher,
    SourceModel,
    download_model,
    local_folder_or_hub_id,
    read_model_config,
)
from sdrt.export.t2i_adapter_options import EXPECTED, OPTION, T2IAdapterOption

from sdrt.errors import InputError
from sdrt.manifest import (
    ADAPTER_UNET,
    T2I_ADAPTER,
    Source,
    T2IAdapter,
    adapter_feature,
)

CLASS_NAME = "T2IAdapter"
# diffusers' adapter types; the XL one's first feature is already halved (its
# downscale_factor is twice the VAE's), as SDXL's first down block halves the latents.
SD_TYPES = ("full_adapter", "light_adapter")
XL_TYPE = "full_adapter_xl"
INPUT = "adapter_image"


@dataclass(frozen=True)
class T2IAdapterSource:
    """A checked local T2IAdapter folder, the name a build gives it, where it came from."""

    name: str
    folder: Path
    path_or_id: str
    revision: str | None
    config: dict[str, Any]
    features: int  # how many of its features the pipeline's U-Net takes

    def content_sha256(self, hasher: FolderHasher, extra: dict[str, Any] | None = None) -> str:
        files = sorted(
            p.name for p in self.folder.iterdir() if p.is_file() and not p.name.startswith(".")
        )
        return hasher.folders(tuple(files), extra)

    def record(self, hasher: FolderHasher) -> T2IAdapter:
        return T2IAdapter(
            name=self.name,
            source=Source(self.path_or_id, self.revision, self.content_sha256(hasher)),
            in_channels=int(self.config.get("in_channels", 3)),
            adapter_type=self.config.get("adapter_type", "full_adapter"),
            features=self.features,
            downscale_factor=int(self.config.get("downscale_factor", 8)),
        )


def resolve_t2i_adapter(option: T2IAdapterOption, pipeline: SourceModel) -> T2IAdapterSource:
    """The adapter's folder (a Hub id is fetched into the Hub cache), checked against the
    pipeline's U-Net before anything is exported."""
    revision = None
    folder = local_folder_or_hub_id(option.path_or_id, OPTION, EXPECTED)
    path_or_id = option.path_or_id
    if folder is not None:
        path_or_id = str(folder)
    else:
        folder = download_model(option.path_or_id, OPTION)
        revision = folder.name if folder.parent.name == "snapshots" else None
    config = read_model_config(folder, OPTION, option.path_or_id, CLASS_NAME, EXPECTED)
    features = _check_compatible(config, pipeline, option.path_or_id)
    return T2IAdapterSource(option.name, folder, path_or_id, revision, config, features)


def _check_compatible(config: dict[str, Any], pipeline: SourceModel, where: str) -> int:
    """The number of features the U-Net takes (diffusers pops one per down block); each
    must have its down block's channels, at its down block's size."""
    unet = pipeline.configs["unet"]
    xl = unet.get("addition_embed_type") == "text_time"
    adapter_type = config.get("adapter_type", "full_adapter")
    wanted_type = (XL_TYPE,) if xl else SD_TYPES
    if adapter_type not in wanted_type:
        raise InputError(
            f"{OPTION} {where!r}: expected adapter_type {' or '.join(wanted_type)} (the "
            f"pipeline is {'SDXL' if xl else 'SD 1.x/2.x'}), got {adapter_type!r}"
        )
    factor = pipeline.vae_scale_factor * (2 if xl else 1)
    if int(config.get("downscale_factor", 8)) != factor:
        raise InputError(
            f"{OPTION} {where!r}: expected downscale_factor {factor} (features at the "
            f"U-Net's sizes), got {config.get('downscale_factor')!r}"
        )
    blocks = list(unet["block_out_channels"])
    channels = list(config.get("channels", (320, 640, 1280, 1280)))
    count = min(len(blocks), len(channels))
    if channels[:count] != blocks[:count]:
        raise InputError(
            f"{OPTION} {where!r}: expected channels starting {blocks} (the pipeline's U-Net "
            f"block_out_channels), got {channels}"
        )
    return count


# ---------------------------------------------------------------------------- wrappers


def _round_up(size: int, multiple: int) -> int:
    return -(-size // multiple) * multiple


def _feature_axes(index: int) -> dict[int, str]:
    return {0: "batch", 2: f"adapter_height_{index}", 3: f"adapter_width_{index}"}


class T2IAdapterExport(ExportWrapper):
    """``T2IAdapter.forward``: the features the U-Net takes."""

    name = T2I_ADAPTER
    source_folder = T2I_ADAPTER
    input_names = (INPUT,)

    def __init__(self, adapter: torch.nn.Module, features: int):
        super().__init__()
        self.adapter = adapter
        self.output_names = tuple(adapter_feature(k) for k in range(features))

    def forward(self, adapter_image):
        return tuple(self.adapter(adapter_image)[: len(self.output_names)])

    def dynamic_axes(self):
        axes = {INPUT: {0: "batch", 2: "image_height", 3: "image_width"}}
        return axes | {n: _feature_axes(k) for k, n in enumerate(self.output_names)}

    def sample_inputs(self, case, generator):
        # sizes rounded up to what its pixel unshuffle takes (SDXL's: 16): the features of
        # such an image have the U-Net's sizes at the case's size (both halve with ceil)
        config = self.adapter.config
        height, width = (_round_up(n, config.downscale_factor) for n in (case.height, case.width))
        shape = (case.batch, config.in_channels, height, width)
        return {INPUT: torch.rand(shape, generator=generator)}


class UNetWithAdapterExport(UNetExport):
    """The U-Net with the adapter's features as inputs, after its own."""

    name = ADAPTER_UNET

    def __init__(self, unet: torch.nn.Module, adapter: T2IAdapterExport, **options):
        super().__init__(unet, **options)
        self.adapter = adapter  # gives the features' shapes at each verification size
        self.features = adapter.output_names
        self.input_names = self.input_names + self.features

    def unet_kwargs(self, named):
        # a new list per call: diffusers' U-Net pops the features off it
        return {"down_intrablock_additional_residuals": [named[n] for n in self.features]}

    def dynamic_axes(self):
        return super().dynamic_axes() | {n: _feature_axes(k) for k, n in enumerate(self.features)}

    def sample_inputs(self, case, generator):
        inputs = super().sample_inputs(case, generator)
        with torch.no_grad():
            image = self.adapter.sample_inputs(case, torch.Generator().manual_seed(0))
            shapes = [f.shape for f in self.adapter(*image.values())]
        return inputs | {
            n: torch.randn(shape, generator=generator)
            for n, shape in zip(self.features, shapes, strict=True)
        }


def load_adapter_wrapper(adapter: T2IAdapterSource) -> T2IAdapterExport:
    """The adapter's weights (float32, eval mode) wrapped for export."""
    import diffusers

    model = diffusers.T2IAdapter.from_pretrained(adapter.folder, torch_dtype=torch.float32)
    return T2IAdapterExport(model.eval(), adapter.features)


def load_adapter_unet(adapter: T2IAdapterSource, source: SourceModel) -> UNetWithAdapterExport:
    """The pipeline's U-Net (float32, eval mode) wrapped to take the adapter's features."""
    import diffusers

    unet = diffusers.UNet2DConditionModel.from_pretrained(
        source.folder / "unet", torch_dtype=torch.float32
    )
    text_2 = source.configs.get("text_encoder_2")
    return UNetWithAdapterExport(
        unet.eval(),
        load_adapter_wrapper(adapter),
        sequence_length=source.configs["text_encoder"].get("max_position_embeddings", 77),
        vae_scale_factor=source.vae_scale_factor,
        text_embeds_dim=text_2["projection_dim"] if text_2 else None,
    )
