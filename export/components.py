"""Per-component torch wrappers: what each exported graph takes and returns.

Each wrapper is a thin ``torch.nn.Module`` around one diffusers/transformers model whose
``forward`` takes the ONNX inputs positionally and returns the ONNX outputs as a tuple, in
Optimum's ONNX layout and names:

    text_encoder(_2)  input_ids -> last_hidden_state, pooler_output   (CLIPTextModel)
                      input_ids -> text_embeds, last_hidden_state      (...WithProjection)
                      SDXL also returns hidden_states.0 .. hidden_states.N, as Optimum does
    unet              sample, timestep, encoder_hidden_states[, text_embeds, time_ids]
                      [, timestep_cond] -> out_sample
    vae_decoder       latent_sample -> sample
    vae_encoder       sample -> latent_sample, latent_parameters

``timestep_cond`` is an LCM U-Net's guidance embedding (config ``time_cond_proj_dim``), as
Optimum names it: (batch, time_cond_proj_dim), computed by the runtime from the guidance scale.
``timestep`` has shape ("steps",): one value broadcast over the batch (what Optimum's ORT
pipeline feeds) or one per sample. The VAE encoder returns both the distribution's mode
(``latent_sample``, deterministic, our contract) and its ``latent_parameters`` (mean and
log-variance concatenated on channels, what current Optimum exports and samples from).
"""

from __future__ import annotations

import abc
from dataclasses import dataclass

import torch
from sdrt.export.source import SourceModel

from sdrt.guidance_embedding import GUIDANCE_EMBEDDING_INPUT
from sdrt.manifest import shallow_unet_name


@dataclass(frozen=True)
class ShapeCase:
    """One set of input shapes in image pixels: the trace shape or a verification shape."""

    batch: int
    height: int
    width: int
    steps: int = 1  # length of the U-Net's timestep input; 1 means broadcast over the batch


class ExportWrapper(torch.nn.Module, abc.ABC):
    """Base of the wrappers: names, dynamic axes and sample inputs of one ONNX graph."""

    name: str
    source_folder: str  # the source pipeline's folder the weights come from
    input_names: tuple[str, ...]
    output_names: tuple[str, ...]

    @abc.abstractmethod
    def dynamic_axes(self) -> dict[str, dict[int, str]]:
        """ONNX input/output name -> {axis: symbolic dimension name}."""

    @abc.abstractmethod
    def sample_inputs(self, case: ShapeCase, generator: torch.Generator) -> dict[str, torch.Tensor]:
        """Random inputs of the case's shapes, keyed and ordered as ``input_names``."""


class TextEncoderExport(ExportWrapper):
    def __init__(self, name: str, model: torch.nn.Module, *, with_hidden_states: bool):
        super().__init__()
        self.name = self.source_folder = name
        self.model = model
        self.with_projection = type(model).__name__ == "CLIPTextModelWithProjection"
        self.with_hidden_states = with_hidden_states
        self.vocab_size = model.config.vocab_size
        self.sequence_length = model.config.max_position_embeddings
        self.input_names = ("input_ids",)
        main = (
            ("text_embeds", "last_hidden_state")
            if self.with_projection
            else ("last_hidden_state", "pooler_output")
        )
        layers = model.config.num_hidden_layers
        hidden = (
            tuple(f"hidden_states.{i}" for i in range(layers + 1)) if with_hidden_states else ()
        )
        self.output_names = main + hidden

    def forward(self, input_ids):
        out = self.model(input_ids=input_ids, output_hidden_states=self.with_hidden_states)
        main = (
            (out.text_embeds, out.last_hidden_state)
            if self.with_projection
            else (out.last_hidden_state, out.pooler_output)
        )
        return main + (tuple(out.hidden_states) if self.with_hidden_states else ())

    def dynamic_axes(self):
        axes = {"input_ids": {0: "batch", 1: "sequence"}}
        for name in self.output_names:
            pooled = name in ("pooler_output", "text_embeds")
            axes[name] = {0: "batch"} if pooled else {0: "batch", 1: "sequence"}
        return axes

    def sample_inputs(self, case, generator):
        ids = torch.randint(
            0, self.vocab_size, (case.batch, self.sequence_length), generator=generator
        )
        return {"input_ids": ids}


class UNetExport(ExportWrapper):
    name = source_folder = "unet"

    def __init__(
        self,
        unet: torch.nn.Module,
        *,
        sequence_length: int,
        vae_scale_factor: int,
        text_embeds_dim: int | None = None,
    ):
        super().__init__()
        self.unet = unet
        config = unet.config
        self.sequence_length = sequence_length
        self.vae_scale_factor = vae_scale_factor
        self.text_time = config.addition_embed_type == "text_time"
        self.guidance_embed_dim = config.get("time_cond_proj_dim")  # ControlNets: none
        self.input_names = (
            ("sample", "timestep", "encoder_hidden_states")
            + (("text_embeds", "time_ids") if self.text_time else ())
            + ((GUIDANCE_EMBEDDING_INPUT,) if self.guidance_embed_dim else ())
        )
        self.output_names = ("out_sample",)
        if self.text_time:
            # projection_class_embeddings_input_dim = text_embeds + time_ids * addition_time_embed_dim:
            # 6 time ids (SDXL base), or 5 with an aesthetic score (the refiner).
            self.text_embeds_dim = text_embeds_dim
            self.num_time_ids = (
                config.projection_class_embeddings_input_dim - text_embeds_dim
            ) // config.addition_time_embed_dim

    def forward(self, sample, timestep, encoder_hidden_states, *extra):
        named = dict(zip(self.input_names[3:], extra, strict=True))
        added = None
        if self.text_time:
            added = {"text_embeds": named["text_embeds"], "time_ids": named["time_ids"]}
        return self.unet(
            sample,
            timestep,
            encoder_hidden_states,
            timestep_cond=named.get(GUIDANCE_EMBEDDING_INPUT),
            added_cond_kwargs=added,
            return_dict=False,
            **self.unet_kwargs(named),
        )[0]

    def unet_kwargs(self, named: dict[str, torch.Tensor]) -> dict[str, object]:
        """More keyword arguments of the U-Net's forward from the named extra inputs (the
        ControlNet residuals of export/controlnet.py's subclass); none here."""
        return {}

    def dynamic_axes(self):
        image = {0: "batch", 2: "latent_height", 3: "latent_width"}
        axes = {
            "sample": image,
            "timestep": {0: "steps"},
            "encoder_hidden_states": {0: "batch", 1: "sequence"},
            "out_sample": image,
        }
        if self.text_time:
            axes |= {"text_embeds": {0: "batch"}, "time_ids": {0: "batch"}}
        if self.guidance_embed_dim:
            axes[GUIDANCE_EMBEDDING_INPUT] = {0: "batch"}
        return axes

    def sample_inputs(self, case, generator):
        config = self.unet.config
        f = self.vae_scale_factor
        shape = (case.batch, config.in_channels, case.height // f, case.width // f)
        timesteps = torch.rand(case.steps, generator=generator) * 999.0
        inputs = {
            "sample": torch.randn(shape, generator=generator),
            "timestep": timesteps,
            "encoder_hidden_states": torch.randn(
                (case.batch, self.sequence_length, config.cross_attention_dim), generator=generator
            ),
        }
        if self.text_time:
            # time_ids are (original size, crop top-left, target size) in pixels.
            size = torch.tensor(
                [case.height, case.width, 0, 0, case.height, case.width][: self.num_time_ids],
                dtype=torch.float32,
            )
            inputs["text_embeds"] = torch.randn(
                (case.batch, self.text_embeds_dim), generator=generator
            )
            inputs["time_ids"] = size.repeat(case.batch, 1)
        if self.guidance_embed_dim:
            inputs[GUIDANCE_EMBEDDING_INPUT] = torch.randn(
                (case.batch, self.guidance_embed_dim), generator=generator
            )
        return inputs


class VaeDecoderExport(ExportWrapper):
    name = "vae_decoder"
    source_folder = "vae"
    input_names = ("latent_sample",)
    output_names = ("sample",)

    def __init__(self, vae: torch.nn.Module, *, vae_scale_factor: int):
        super().__init__()
        self.vae = vae
        self.vae_scale_factor = vae_scale_factor

    def forward(self, latent_sample):
        return self.vae.decode(latent_sample, return_dict=False)[0]

    def dynamic_axes(self):
        return {
            "latent_sample": {0: "batch", 2: "latent_height", 3: "latent_width"},
            "sample": {0: "batch", 2: "image_height", 3: "image_width"},
        }

    def sample_inputs(self, case, generator):
        f = self.vae_scale_factor
        shape = (case.batch, self.vae.config.latent_channels, case.height // f, case.width // f)
        return {"latent_sample": torch.randn(shape, generator=generator)}


class VaeEncoderExport(ExportWrapper):
    name = "vae_encoder"
    source_folder = "vae"
    input_names = ("sample",)
    output_names = ("latent_sample", "latent_parameters")

    def __init__(self, vae: torch.nn.Module):
        super().__init__()
        self.vae = vae

    def forward(self, sample):
        parameters = self.vae.encode(sample, return_dict=False)[0].parameters
        # The mode is the mean, the first half of the channels. A slice with constant bounds
        # (not the distribution's chunk) keeps the channel count static in the graph.
        return parameters[:, : self.vae.config.latent_channels], parameters

    def dynamic_axes(self):
        latent = {0: "batch", 2: "latent_height", 3: "latent_width"}
        return {
            "sample": {0: "batch", 2: "image_height", 3: "image_width"},
            "latent_sample": latent,
            "latent_parameters": latent,
        }

    def sample_inputs(self, case, generator):
        shape = (case.batch, self.vae.config.in_channels, case.height, case.width)
        # Images reach the encoder scaled to [-1, 1].
        return {"sample": torch.rand(shape, generator=generator) * 2.0 - 1.0}


def component_names(
    source: SourceModel, deep_cache_branches: tuple[int, ...] = ()
) -> tuple[str, ...]:
    """The graphs a build exports from this source, in export order (DeepCache's shallow
    U-Nets after the U-Net)."""
    shallow = tuple(shallow_unet_name(b) for b in deep_cache_branches)
    return source.text_encoders + ("unet", *shallow, "vae_decoder", "vae_encoder")


def load_export_wrapper(
    source: SourceModel, name: str, deep_cache_branches: tuple[int, ...] = ()
) -> ExportWrapper:
    """Load one component's weights (float32, eval mode) and wrap it for export; with
    ``deep_cache_branches`` the U-Net also gives their features (export/deep_cache.py)."""
    import diffusers
    import transformers
    from sdrt.export import deep_cache

    if deep_cache.shallow_branch(name) is not None:
        unet = load_export_wrapper(source, "unet")
        return deep_cache.ShallowUNetExport(unet, deep_cache.shallow_branch(name))
    if name == "unet" and deep_cache_branches:
        unet = load_export_wrapper(source, "unet")
        return deep_cache.UNetWithFeaturesExport(unet, tuple(deep_cache_branches))
    folder = source.folder
    if name.startswith("text_encoder"):
        cls = getattr(transformers, source.text_encoder_classes[name])
        model = cls.from_pretrained(folder / name, torch_dtype=torch.float32)
        # SDXL conditions on the penultimate hidden state; Optimum exports them all.
        return TextEncoderExport(name, model.eval(), with_hidden_states=source.family == "sdxl")
    if name == "unet":
        unet = diffusers.UNet2DConditionModel.from_pretrained(
            folder / "unet", torch_dtype=torch.float32
        )
        text_2 = source.configs.get("text_encoder_2")
        return UNetExport(
            unet.eval(),
            sequence_length=source.configs["text_encoder"].get("max_position_embeddings", 77),
            vae_scale_factor=source.vae_scale_factor,
            text_embeds_dim=text_2["projection_dim"] if text_2 else None,
        )
    vae = diffusers.AutoencoderKL.from_pretrained(folder / "vae", torch_dtype=torch.float32).eval()
    if name == "vae_decoder":
        return VaeDecoderExport(vae, vae_scale_factor=source.vae_scale_factor)
    if name == "vae_encoder":
        return VaeEncoderExport(vae)
    raise ValueError(f"unknown component {name!r}")


def unet_upsampling_factor(source: SourceModel) -> int:
    """2 ** (number of U-Net up-sampling stages), from the config (no weights loaded)."""
    return 2 ** (len(source.configs["unet"]["down_block_types"]) - 1)
