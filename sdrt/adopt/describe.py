"""What an adopted folder is, from its configs and its graphs' I/O: family, latent settings,
size range, the outputs that condition the U-Net, and what differs from an sdrt build.

Configs win where the folder has them (Optimum copies the diffusers ones); where an older
export has none, a setting comes from the graphs' shapes or the family's default, and
``derived`` says which. The I/O checks here need no forward pass: names, dtypes and the
fixed dimensions the runtime relies on.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from sdrt.adopt.folder import OnnxFolder
from sdrt.adopt.graphs import GraphInfo
from sdrt.errors import InputError, ModelFolderError, ParameterError
from sdrt.families import detect_family
from sdrt.guidance_embedding import GUIDANCE_EMBEDDING_INPUT
from sdrt.manifest import PREDICTION_TYPES

SIZE_STEP = 8
# Defaults where an export carries no config (diffusers' values for each family).
DEFAULT_SCALING = {"sd1": 0.18215, "sd2": 0.18215, "sdxl": 0.13025}
DEFAULT_SAMPLE_SIZE = {"sd1": 64, "sd2": 96, "sdxl": 128}
DEFAULT_VAE_SCALE = 8
DEFAULT_UNET_DOWNSAMPLES = 3  # every SD U-Net: four blocks, three down-samplers
SD2_TEXT_WIDTH = 1024  # OpenCLIP ViT-H; CLIP ViT-L is 768
HIDDEN_STATE = re.compile(r"hidden_states\.(\d+)$")
UNET_INPUTS = ("sample", "timestep", "encoder_hidden_states")
UNET_XL_INPUTS = ("text_embeds", "time_ids")
# An LCM-distilled U-Net (Optimum's LCM export) also takes the guidance embedding.
UNET_OPTIONAL_INPUTS = (GUIDANCE_EMBEDDING_INPUT,)


@dataclass(frozen=True)
class AdoptOptions:
    """The size and batch range to serve (image pixels), as ``sdrt build`` takes them."""

    min_size: int = 256
    max_size: int = 1024
    max_batch: int = 4

    def __post_init__(self):
        for name in ("min_size", "max_size"):
            value = getattr(self, name)
            if value <= 0 or value % SIZE_STEP:
                raise ParameterError(
                    "{" + name + "} must be a positive multiple of {step} pixels, got {value}",
                    step=SIZE_STEP,
                    value=value,
                )
        if self.min_size > self.max_size:
            raise ParameterError(
                "{min_size} {low} is above {max_size} {high}", low=self.min_size, high=self.max_size
            )
        if self.max_batch < 1:
            raise ParameterError(
                "{max_batch} must be at least 1, got {value}", value=self.max_batch
            )


@dataclass(frozen=True)
class Settings:
    family: str
    prediction_type: str
    vae_scaling_factor: float
    vae_shift_factor: float | None
    latent_channels: int
    unet_in_channels: int
    sample_size: int
    vae_scale_factor: int
    size_multiple: int
    precision: str
    vae_precision: str
    opset: int
    family_options: Mapping[str, Any]
    layout: str
    notes: tuple[str, ...]
    derived: Mapping[str, str] = field(default_factory=dict)


def describe(onnx: OnnxFolder, graphs: Mapping[str, GraphInfo]) -> Settings:
    """The manifest's settings for the folder; ModelFolderError where the graphs do not fit."""
    _check_unet_inputs(graphs["unet"], onnx.is_xl)
    derived: dict[str, str] = {}
    configs = onnx.configs
    unet_config, vae_config = configs.get("unet", {}), configs.get("vae", {})
    family = _family(onnx, graphs, derived)
    latent_channels = _setting(
        vae_config, "latent_channels", _dim(graphs["vae_decoder"].inputs[0], 1), 4, derived, "vae"
    )
    unet_in = _setting(
        unet_config, "in_channels", _dim(graphs["unet"].input("sample"), 1), 4, derived, "unet"
    )
    vae_scale, downsamples = _scale_factors(unet_config, vae_config, derived)
    scaling = vae_config.get("scaling_factor")
    if scaling is None:
        scaling = DEFAULT_SCALING[family]
        derived["vae_scaling_factor"] = f"the {family} default {scaling} (no VAE config)"
    sample_size = unet_config.get("sample_size")
    if sample_size is None:
        sample_size = DEFAULT_SAMPLE_SIZE[family]
        derived["sample_size"] = f"the {family} default {sample_size} (no unet/config.json)"
    settings = Settings(
        family=family,
        prediction_type=_prediction_type(configs["scheduler"]),
        vae_scaling_factor=float(scaling),
        vae_shift_factor=vae_config.get("shift_factor"),
        latent_channels=int(latent_channels),
        unet_in_channels=int(unet_in),
        sample_size=int(sample_size),
        vae_scale_factor=vae_scale,
        size_multiple=vae_scale * 2**downsamples,
        precision=graphs["unet"].header.weights_precision,
        vae_precision=graphs["vae_decoder"].header.weights_precision,
        opset=graphs["unet"].header.opset,
        family_options=_family_options(onnx, graphs, family),
        layout=_layout(onnx, graphs),
        notes=tuple(_notes(onnx, graphs)),
        derived=derived,
    )
    check_io(graphs, settings)
    return settings


def check_io(graphs: Mapping[str, GraphInfo], settings: Settings) -> None:
    """The inputs the runtime feeds and the outputs it reads exist, with the fixed dimensions
    it relies on; ModelFolderError naming the graph and what it has instead."""
    unet = graphs["unet"]
    _check_unet_inputs(unet, settings.family == "sdxl")
    _expect_dim(unet.input("sample"), 1, settings.unet_in_channels, "unet", "U-Net in channels")
    _expect_dim(unet.outputs[0], 1, settings.latent_channels, "unet", "latent channels")
    decoder = graphs["vae_decoder"]
    if len(decoder.inputs) != 1 or len(decoder.inputs[0].shape) != 4:
        raise ModelFolderError(
            f"vae_decoder: expected one 4-D latent input, got {[(s.name, list(s.shape)) for s in decoder.inputs]}"
        )
    _expect_dim(decoder.inputs[0], 1, settings.latent_channels, "vae_decoder", "latent channels")
    encoder = graphs.get("vae_encoder")
    if encoder is not None:
        outputs = encoder.output_names()
        if not {"latent_sample", "latent_parameters"} & set(outputs) or len(encoder.inputs) != 1:
            raise ModelFolderError(
                "vae_encoder: expected one image input and a latent_sample or "
                f"latent_parameters output, got inputs {[s.name for s in encoder.inputs]}, "
                f"outputs {outputs}"
            )
    widths = []
    hidden = settings.family_options["prompt_embeds_outputs"]
    for name, output in hidden.items():
        graph = graphs[name]
        ids = graph.input("input_ids")
        if ids is None or ids.dtype not in ("int64", "int32") or len(graph.inputs) != 1:
            raise ModelFolderError(
                f"{name}: expected one integer input 'input_ids', got "
                f"{[(s.name, s.dtype) for s in graph.inputs]}"
            )
        spec = next((s for s in graph.outputs if s.name == output), None)
        if spec is None:
            raise ModelFolderError(
                f"{name}: expected an output {output!r}, got {graph.output_names()}"
            )
        widths.append(spec.shape[-1])
    if all(isinstance(w, int) for w in widths):
        states = unet.input("encoder_hidden_states")
        _expect_dim(states, 2, sum(widths), "unet", "the text encoders' hidden widths")


def _check_unet_inputs(unet: GraphInfo, is_xl: bool) -> None:
    wanted = UNET_INPUTS + (UNET_XL_INPUTS if is_xl else ())
    names = [s.name for s in unet.inputs]
    required = [n for n in names if n not in UNET_OPTIONAL_INPUTS]
    if sorted(required) != sorted(wanted):
        raise ModelFolderError(
            f"unet: expected the inputs {list(wanted)} (what the runtime feeds), optionally "
            f"{list(UNET_OPTIONAL_INPUTS)}, got {names}"
        )
    timestep = unet.input("timestep")
    if len(timestep.shape) > 1 or timestep.dtype == "bool":
        raise ModelFolderError(
            f"unet: expected a scalar or 1-D numeric timestep, got {timestep.dtype} "
            f"{list(timestep.shape)}"
        )
    embedding = unet.input(GUIDANCE_EMBEDDING_INPUT)
    if embedding is not None and (
        len(embedding.shape) != 2 or not isinstance(embedding.shape[1], int)
    ):
        raise ModelFolderError(
            f"unet: expected the guidance embedding {GUIDANCE_EMBEDDING_INPUT} as (batch, "
            f"width) with a fixed width, got {embedding.dtype} {list(embedding.shape)}"
        )


def _scale_factors(unet_config, vae_config, derived: dict[str, str]) -> tuple[int, int]:
    """(VAE scale factor, U-Net down-samplers) from the configs, or SD's."""
    if "block_out_channels" in vae_config:
        vae_scale = 2 ** (len(vae_config["block_out_channels"]) - 1)
    else:
        vae_scale = DEFAULT_VAE_SCALE
        derived["vae_scale_factor"] = f"the SD default {vae_scale}, checked by the forward pass"
    downsamples = len(unet_config.get("block_out_channels", ())) - 1
    if downsamples < 0:
        downsamples = DEFAULT_UNET_DOWNSAMPLES
        derived["size_multiple"] = f"SD's {downsamples} U-Net down-samplers (no unet/config.json)"
    return vae_scale, downsamples


def _prediction_type(scheduler_config: Mapping[str, Any]) -> str:
    prediction = scheduler_config.get("prediction_type", "epsilon")
    if prediction not in PREDICTION_TYPES:
        raise ModelFolderError(
            f"scheduler/scheduler_config.json: prediction_type {prediction!r} is not one of "
            f"{', '.join(PREDICTION_TYPES)}"
        )
    return prediction


def _family(onnx: OnnxFolder, graphs: Mapping[str, GraphInfo], derived: dict[str, str]) -> str:
    configs = dict(onnx.configs)
    if "unet" not in configs:
        configs["unet"] = {"addition_embed_type": "text_time" if onnx.is_xl else None}
        derived["family"] = "model_index.json's pipeline class (no unet/config.json)"
    if "text_encoder" not in configs and not onnx.is_xl:
        width = graphs["text_encoder"].outputs[0].shape[-1]
        configs["text_encoder"] = {
            "hidden_act": "gelu" if width == SD2_TEXT_WIDTH else "quick_gelu"
        }
        derived["family"] = f"the text encoder's width {width} (no text_encoder/config.json)"
    try:
        return detect_family(configs, is_xl=onnx.is_xl, where=str(onnx.folder))
    except InputError as e:
        raise ModelFolderError(str(e)) from None


def _family_options(onnx: OnnxFolder, graphs: Mapping[str, GraphInfo], family: str) -> dict:
    index, unet, vae = onnx.model_index, onnx.configs.get("unet", {}), onnx.configs.get("vae", {})
    options: dict[str, Any] = {
        "vae_force_upcast": family == "sdxl" and bool(vae.get("force_upcast", True)),
    }
    if "vae_encoder" in graphs:
        outputs = graphs["vae_encoder"].output_names()
        options["vae_encoder_outputs"] = {
            name: meaning
            for name, meaning in (
                ("latent_sample", "latents as the exporter computed them"),
                ("latent_parameters", "mean and log-variance, concatenated on channels"),
            )
            if name in outputs
        }
    if family != "sdxl":
        options["prompt_embeds_outputs"] = {"text_encoder": "last_hidden_state"}
        options["requires_safety_checker"] = bool(index.get("requires_safety_checker", False))
        return options
    options |= {
        "prompt_embeds_outputs": {
            name: _penultimate(graphs[name]) for name in ("text_encoder", "text_encoder_2")
        },
        "pooled_prompt_embeds_output": {"text_encoder_2": "text_embeds"},
        "force_zeros_for_empty_prompt": bool(index.get("force_zeros_for_empty_prompt", True)),
        "requires_aesthetics_score": bool(index.get("requires_aesthetics_score", False)),
        "addition_time_embed_dim": unet.get("addition_time_embed_dim"),
        "projection_class_embeddings_input_dim": unet.get("projection_class_embeddings_input_dim"),
    }
    if "text_embeds" not in graphs["text_encoder_2"].output_names():
        raise ModelFolderError(
            "text_encoder_2: expected an output 'text_embeds' (the pooled projection SDXL "
            f"conditions on), got {graphs['text_encoder_2'].output_names()}"
        )
    return options


def _penultimate(graph: GraphInfo) -> str:
    """SDXL conditions on each encoder's penultimate layer: hidden_states.{N-1} of 0..N."""
    layers = [int(m.group(1)) for n in graph.output_names() if (m := HIDDEN_STATE.match(n))]
    if len(layers) < 2:
        raise ModelFolderError(
            f"{graph.files.name}: expected hidden_states.N outputs (SDXL conditions on the "
            f"penultimate layer; export with output_hidden_states), got {graph.output_names()}"
        )
    return f"hidden_states.{max(layers) - 1}"


def _layout(onnx: OnnxFolder, graphs: Mapping[str, GraphInfo]) -> str:
    """ "optimum-legacy" where the graphs have older exporters' I/O, else "optimum"."""
    encoder = graphs.get("vae_encoder")
    legacy = (
        (encoder is not None and "latent_sample" in encoder.output_names())
        or graphs["unet"].input("timestep").dtype not in ("float32", "float16")
        or str(onnx.model_index.get("_class_name", "")).startswith("Onnx")
    )
    return "optimum-legacy" if legacy else "optimum"


def _notes(onnx: OnnxFolder, graphs: Mapping[str, GraphInfo]) -> list[str]:
    notes = []
    timestep = graphs["unet"].input("timestep")
    if timestep.dtype not in ("float32", "float16"):
        notes.append(
            f"the U-Net takes an {timestep.dtype} timestep: fractional timesteps (Karras "
            "sigmas, linspace spacing) are rounded down, as Optimum's ORT pipelines do"
        )
    if (onnx.folder / "safety_checker").is_dir():
        notes.append("safety_checker/ is not used: sdrt runs no safety checker")
    missing = [n for n in ("unet", "vae", "text_encoder") if n not in onnx.configs]
    if missing:
        notes.append(f"no config.json for {', '.join(missing)}: settings derived (see derived)")
    return notes


def _setting(config, key, from_graph, default, derived: dict[str, str], where: str):
    """A config value, checked against the graph's fixed dimension where it has one."""
    if key in config:
        value = config[key]
        if from_graph is not None and from_graph != value:
            raise ModelFolderError(
                f"{where}/config.json says {key} {value}, but the graph's dimension is {from_graph}"
            )
        return value
    derived[key] = "the graph's shape" if from_graph is not None else f"the SD default {default}"
    return from_graph if from_graph is not None else default


def _dim(spec, axis: int) -> int | None:
    if spec is None or len(spec.shape) <= axis or not isinstance(spec.shape[axis], int):
        return None
    return spec.shape[axis]


def _expect_dim(spec, axis: int, expected: int, graph: str, what: str) -> None:
    if spec is None:
        return
    if len(spec.shape) <= axis:
        raise ModelFolderError(
            f"{graph}: {spec.name} has shape {list(spec.shape)}; expected at least {axis + 1} dimensions"
        )
    dim = spec.shape[axis]
    if isinstance(dim, int) and dim != expected:
        raise ModelFolderError(
            f"{graph}: {spec.name} has {dim} at axis {axis}; expected {expected} ({what})"
        )
