"""``sdrt build --controlnet NAME=PATH``: diffusers ControlNetModels beside the U-Net.

Each ControlNet becomes a graph ``controlnet_<name>``::

    sample, timestep, encoder_hidden_states, controlnet_cond, conditioning_scale
    [, text_embeds, time_ids]  ->  down_block_additional_residual_0 .. _N-1,
                                   mid_block_additional_residual

what ``ControlNetModel.forward`` returns (guess_mode off: the runtime applies guess mode's
scale ramp to the outputs, sdrt/control/), and the U-Net is exported a second time as
``unet_controlnet``, which takes those residuals as inputs by the same names (diffusers'
``down_block_additional_residuals`` and ``mid_block_additional_residual``). The plain U-Net
stays, so calls without control run it and pay nothing for ControlNet. Both are verified
against eager PyTorch as every component is.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from sdrt.export.components import ExportWrapper, ShapeCase, UNetExport
from sdrt.export.controlnet_options import EXPECTED, ControlNetOption
from sdrt.export.source import (
    FolderHasher,
    SourceModel,
    download_model,
    local_folder_or_hub_id,
    read_model_config,
)

from sdrt.errors import InputError
from sdrt.guidance_embedding import GUIDANCE_EMBEDDING_INPUT
from sdrt.manifest import (
    CONTROLNET_UNET,
    MID_BLOCK_RESIDUAL,
    ControlNet,
    Source,
    controlnet_component,
    down_block_residual,
)

CLASS_NAME = "ControlNetModel"
# ControlNetModel.from_unet copies these from the U-Net: they fix the residuals' count and
# shapes, so a ControlNet made for another U-Net cannot feed this one.
MATCHING_KEYS = (
    "block_out_channels",
    "down_block_types",
    "layers_per_block",
    "cross_attention_dim",
)


@dataclass(frozen=True)
class ControlNetSource:
    """A checked local ControlNetModel folder, the name a build gives it, where it came from."""

    name: str
    folder: Path
    path_or_id: str
    revision: str | None
    config: dict[str, Any]

    @property
    def component(self) -> str:
        return controlnet_component(self.name)

    def content_sha256(self, hasher: FolderHasher, extra: dict[str, Any] | None = None) -> str:
        files = sorted(
            p.name for p in self.folder.iterdir() if p.is_file() and not p.name.startswith(".")
        )
        return hasher.folders(tuple(files), extra)

    def record(self, hasher: FolderHasher) -> ControlNet:
        return ControlNet(
            name=self.name,
            component=self.component,
            source=Source(self.path_or_id, self.revision, self.content_sha256(hasher)),
            conditioning_channels=int(self.config.get("conditioning_channels", 3)),
            global_pool_conditions=bool(self.config.get("global_pool_conditions", False)),
        )


def resolve_controlnets(
    options: tuple[ControlNetOption, ...], pipeline: SourceModel
) -> tuple[ControlNetSource, ...]:
    """Each ControlNet's folder (a Hub id is fetched into the Hub cache), checked against
    the pipeline's U-Net before anything is exported."""
    return tuple(_resolve(option, pipeline) for option in options)


def _resolve(option: ControlNetOption, pipeline: SourceModel) -> ControlNetSource:
    revision = None
    folder = local_folder_or_hub_id(option.path_or_id, "--controlnet", EXPECTED)
    path_or_id = option.path_or_id
    if folder is not None:
        path_or_id = str(folder)
    else:
        folder = download_model(option.path_or_id, "--controlnet")
        revision = folder.name if folder.parent.name == "snapshots" else None
    config = read_model_config(folder, "--controlnet", option.path_or_id, CLASS_NAME, EXPECTED)
    _check_compatible(config, pipeline, option.path_or_id)
    return ControlNetSource(option.name, folder, path_or_id, revision, config)


def _check_compatible(config: dict[str, Any], pipeline: SourceModel, where: str) -> None:
    unet = pipeline.configs["unet"]
    latent_channels = int(pipeline.configs["vae"].get("latent_channels", 4))
    if int(config.get("in_channels", 4)) != latent_channels:
        raise InputError(
            f"--controlnet {where!r}: expected {latent_channels} input channels (the "
            f"pipeline's latents), got {config.get('in_channels')}"
        )
    for key in MATCHING_KEYS:
        if _normalised(config.get(key), unet) != _normalised(unet.get(key), unet):
            raise InputError(
                f"--controlnet {where!r}: expected {key} {unet.get(key)!r} (the pipeline's "
                f"U-Net), got {config.get(key)!r}"
            )
    if config.get("addition_embed_type") != unet.get("addition_embed_type"):
        raise InputError(
            f"--controlnet {where!r}: expected addition_embed_type "
            f"{unet.get('addition_embed_type')!r} (the pipeline's U-Net; an SDXL ControlNet for "
            f"an SDXL pipeline), got {config.get('addition_embed_type')!r}"
        )


def _normalised(value, unet_config):
    """Lists as lists; an int layers_per_block as one per down block."""
    if isinstance(value, int) and not isinstance(value, bool):
        blocks = len(unet_config.get("down_block_types", ()))
        return [value] * blocks if blocks else value
    return list(value) if isinstance(value, (list, tuple)) else value


# ---------------------------------------------------------------------------- residuals


@dataclass(frozen=True)
class Residual:
    """One residual the ControlNet gives and the U-Net takes."""

    name: str
    channels: int
    level: int  # times the latents were halved (with ceil, as the stride-2 convs do)


def residual_layout(unet_config) -> tuple[Residual, ...]:
    """diffusers' down-block residuals in order (conv_in's output, each down block's
    resnets, its down-sampler but the last block's), then the mid block's."""
    channels = list(unet_config["block_out_channels"])
    layers = unet_config["layers_per_block"]
    layers = [layers] * len(channels) if isinstance(layers, int) else list(layers)
    down = [(channels[0], 0)]
    for i, width in enumerate(channels):
        down += [(width, i)] * layers[i]
        if i < len(channels) - 1:
            down.append((width, i + 1))
    residuals = [Residual(down_block_residual(k), c, level) for k, (c, level) in enumerate(down)]
    residuals.append(Residual(MID_BLOCK_RESIDUAL, channels[-1], len(channels) - 1))
    return tuple(residuals)


def _halved(size: int, level: int) -> int:
    for _ in range(level):
        size = -(-size // 2)
    return size


def _residual_axes(residual: Residual) -> dict[int, str]:
    if residual.level == 0:
        return {0: "batch", 2: "latent_height", 3: "latent_width"}
    return {0: "batch", 2: f"height_{residual.level}", 3: f"width_{residual.level}"}


def _random_residuals(layout, case: ShapeCase, vae_scale_factor: int, generator):
    height, width = case.height // vae_scale_factor, case.width // vae_scale_factor
    return {
        r.name: torch.randn(
            (case.batch, r.channels, _halved(height, r.level), _halved(width, r.level)),
            generator=generator,
        )
        for r in layout
    }


# ---------------------------------------------------------------------------- wrappers


class UNetWithResidualsExport(UNetExport):
    """The U-Net with ControlNet's residuals as inputs, after its own."""

    name = CONTROLNET_UNET

    def __init__(self, unet: torch.nn.Module, **options):
        super().__init__(unet, **options)
        self.layout = residual_layout(unet.config)
        self.input_names = self.input_names + tuple(r.name for r in self.layout)

    def unet_kwargs(self, named):
        down = tuple(named[r.name] for r in self.layout[:-1])
        return {
            "down_block_additional_residuals": down,
            "mid_block_additional_residual": named[MID_BLOCK_RESIDUAL],
        }

    def dynamic_axes(self):
        return super().dynamic_axes() | {r.name: _residual_axes(r) for r in self.layout}

    def sample_inputs(self, case, generator):
        inputs = super().sample_inputs(case, generator)
        residuals = _random_residuals(self.layout, case, self.vae_scale_factor, generator)
        return inputs | residuals


class ControlNetExport(ExportWrapper):
    """``ControlNetModel.forward`` (guess_mode off): the residuals, scaled."""

    source_folder = "controlnet"

    def __init__(
        self,
        name: str,
        controlnet: torch.nn.Module,
        *,
        sequence_length: int,
        vae_scale_factor: int,
        text_embeds_dim: int | None = None,
    ):
        super().__init__()
        self.name = name
        self.controlnet = controlnet
        config = controlnet.config
        # Its text conditioning is the U-Net's: the same inputs, from the same wrapper code.
        self.unet_inputs = UNetExport(
            controlnet,
            sequence_length=sequence_length,
            vae_scale_factor=vae_scale_factor,
            text_embeds_dim=text_embeds_dim,
        )
        self.vae_scale_factor = vae_scale_factor
        self.layout = residual_layout(config)
        base = self.unet_inputs.input_names
        self.input_names = base[:3] + ("controlnet_cond", "conditioning_scale") + base[3:]
        self.output_names = tuple(r.name for r in self.layout)

    def forward(self, sample, timestep, encoder_hidden_states, controlnet_cond, scale, *extra):
        named = dict(zip(self.input_names[5:], extra, strict=True))
        added = None
        if self.unet_inputs.text_time:
            added = {"text_embeds": named["text_embeds"], "time_ids": named["time_ids"]}
        down, mid = self.controlnet(
            sample,
            timestep,
            encoder_hidden_states,
            controlnet_cond=controlnet_cond,
            conditioning_scale=scale,
            timestep_cond=named.get(GUIDANCE_EMBEDDING_INPUT),
            added_cond_kwargs=added,
            return_dict=False,
        )
        return (*down, mid)

    def dynamic_axes(self):
        axes = {k: v for k, v in self.unet_inputs.dynamic_axes().items() if k != "out_sample"}
        axes["controlnet_cond"] = {0: "batch", 2: "image_height", 3: "image_width"}
        return axes | {r.name: _residual_axes(r) for r in self.layout}

    def sample_inputs(self, case, generator):
        inputs = self.unet_inputs.sample_inputs(case, generator)
        channels = self.controlnet.config.conditioning_channels
        cond = torch.rand((case.batch, channels, case.height, case.width), generator=generator)
        scale = torch.rand((1,), generator=generator) + 0.5
        ordered = {k: inputs[k] for k in self.input_names[:3]}
        ordered |= {"controlnet_cond": cond, "conditioning_scale": scale}
        return ordered | {k: inputs[k] for k in self.input_names[5:]}


def _wrapper_options(source: SourceModel) -> dict[str, Any]:
    text_2 = source.configs.get("text_encoder_2")
    return {
        "sequence_length": source.configs["text_encoder"].get("max_position_embeddings", 77),
        "vae_scale_factor": source.vae_scale_factor,
        "text_embeds_dim": text_2["projection_dim"] if text_2 else None,
    }


def load_residual_unet(source: SourceModel) -> UNetWithResidualsExport:
    """The pipeline's U-Net (float32, eval mode) wrapped to take ControlNet residuals."""
    import diffusers

    unet = diffusers.UNet2DConditionModel.from_pretrained(
        source.folder / "unet", torch_dtype=torch.float32
    )
    return UNetWithResidualsExport(unet.eval(), **_wrapper_options(source))


def load_controlnet_wrapper(controlnet: ControlNetSource, source: SourceModel) -> ControlNetExport:
    """The ControlNet's weights (float32, eval mode) wrapped for export."""
    import diffusers

    model = diffusers.ControlNetModel.from_pretrained(controlnet.folder, torch_dtype=torch.float32)
    return ControlNetExport(controlnet.component, model.eval(), **_wrapper_options(source))
