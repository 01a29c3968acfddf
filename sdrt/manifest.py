"""The model folder's manifest, ``sdrt.json``: read, validate, write atomically.

A model folder (written by ``sdrt build``) follows Optimum's ONNX Stable Diffusion layout
and adds this manifest, which records where the folder came from, what each component
is (file, I/O specs, precision, sha256), how it was verified, and which engines were
built from it. Everything here is plain data: frozen dataclasses converted to and from
JSON once, at the edge.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sdrt.errors import ModelFolderError
from sdrt.files import atomic_write

FORMAT_VERSION = 1
MANIFEST_NAME = "sdrt.json"

# Component names, in Optimum's layout; each lives in a folder of that name.
COMPONENT_NAMES = ("text_encoder", "text_encoder_2", "unet", "vae_decoder", "vae_encoder")
# Built beside the full VAE by ``sdrt build --tiny-vae`` (the record is ``Manifest.tiny_vae``).
TINY_VAE_COMPONENTS = ("vae_decoder_tiny", "vae_encoder_tiny")
FAMILIES = ("sd1", "sd2", "sdxl")
PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")
PRECISIONS = ("fp32", "fp16", "int8")
# int8 is the U-Net's alone (engines/int8_unet.py); text encoders and VAEs stay fp32.
VAE_PRECISIONS = ("fp32", "fp16")
DTYPES = ("float32", "float16", "int64", "int32", "bool")

# DeepCache (sdrt build --deep-cache): the U-Net's extra outputs and its shallow graphs.
DEEP_CACHE_FEATURE_INPUT = "deep_cache_feature"
_SHALLOW_UNET = re.compile(r"unet_shallow_\d+")


def deep_cache_feature_output(branch: int) -> str:
    """The U-Net output holding DeepCache branch ``branch``'s cached feature."""
    return f"deep_cache_feature_{branch}"


def shallow_unet_name(branch: int) -> str:
    """The component computing what DeepCache recomputes on a cached step of ``branch``."""
    return f"unet_shallow_{branch}"


# ControlNet (sdrt build --controlnet NAME=PATH): one graph per ControlNet, and the U-Net
# that takes their residuals as inputs, beside the plain one (sdrt/control/).
CONTROLNET_UNET = "unet_controlnet"
CONTROLNET_PREFIX = "controlnet_"
CONTROLNET_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")
_CONTROLNET = re.compile(CONTROLNET_PREFIX + CONTROLNET_NAME.pattern)
# The ControlNet graphs' outputs and the residual U-Net's extra inputs, by the same names.
MID_BLOCK_RESIDUAL = "mid_block_additional_residual"


def down_block_residual(index: int) -> str:
    """The name of the ``index``-th of diffusers' ``down_block_additional_residuals``."""
    return f"down_block_additional_residual_{index}"


# T2I-Adapter (sdrt build --t2i-adapter [NAME=]PATH): its graph gives the features, run once
# per image, and the U-Net that takes them (diffusers' down_intrablock_additional_residuals)
# beside the plain one (sdrt/control/adapter.py).
T2I_ADAPTER = "t2i_adapter"
ADAPTER_UNET = "unet_adapter"


def adapter_feature(index: int) -> str:
    """The name of the ``index``-th of diffusers' ``down_intrablock_additional_residuals``
    (the adapter graph's outputs and the adapter U-Net's extra inputs)."""
    return f"down_intrablock_additional_residual_{index}"


def controlnet_component(name: str) -> str:
    """The component (and folder) of the ControlNet a build named ``name``."""
    return CONTROLNET_PREFIX + name


def is_component_name(name: str) -> bool:
    return (
        name in COMPONENT_NAMES
        or name in (CONTROLNET_UNET, T2I_ADAPTER, ADAPTER_UNET)
        or _SHALLOW_UNET.fullmatch(name) is not None
        or _CONTROLNET.fullmatch(name) is not None
    )


@dataclass(frozen=True)
class TensorSpec:
    """One named input or output. Symbolic dimensions are strings ("batch", "height")."""

    name: str
    dtype: str
    shape: tuple[int | str, ...]


@dataclass(frozen=True)
class VerificationCase:
    """Errors measured on one set of input shapes (name -> concrete shape)."""

    input_shapes: Mapping[str, tuple[int, ...]]
    max_abs_error: float
    max_rel_error: float


@dataclass(frozen=True)
class Verification:
    """How an artifact was checked against its reference, and whether it passed."""

    reference: str  # "torch-eager" for exports, "onnxruntime-fp32" for engines
    threshold_abs: float
    threshold_rel: float
    cases: tuple[VerificationCase, ...]
    passed: bool

    @property
    def max_abs_error(self) -> float:
        return max((c.max_abs_error for c in self.cases), default=0.0)

    @property
    def max_rel_error(self) -> float:
        return max((c.max_rel_error for c in self.cases), default=0.0)


@dataclass(frozen=True)
class TokenEmbedding:
    """A text encoder's token-embedding table: an initializer that is also an optional graph
    input (fed only to override it: textual inversion feeds it enlarged), its values stored
    raw (little-endian, C order) in the component's external data file at ``offset``."""

    input: str
    dtype: str
    shape: tuple[int, int]  # (vocabulary, width) as built
    file: str  # relative to the model folder
    offset: int

    def spec(self) -> TensorSpec:
        """The optional input's spec: any number of rows of the table's width."""
        return TensorSpec(self.input, self.dtype, ("vocabulary", self.shape[1]))


@dataclass(frozen=True)
class BuiltAdapter:
    """A LoRA fused or a textual-inversion embedding added at build time (sdrt build
    --lora / --embedding)."""

    kind: str  # "lora" or "textual_inversion"
    file: str  # as given
    sha256: str
    scale: float | None = None  # LoRA: the lora_scale it was fused with
    tokens: tuple[str, ...] = ()  # textual inversion: the tokens added


@dataclass(frozen=True)
class LoraBranch:
    """A module run-time LoRA may change: it computes ``base(x) + (x @ down_t) @ up_t``
    with ``down_t`` [in, rank] and ``up_t`` [rank, out] graph inputs, zero-size by default
    (export/adaptable.py); a kxk conv ``up_t`` applied to a kxk conv of x by ``down``
    [rank, in, kh, kw]."""

    module: str  # the diffusers/transformers module name, e.g. "down_blocks.0....attn1.to_q"
    down: str  # graph input names
    up: str
    features_in: int  # the down factor's width: in channels x kernel area for a kxk conv
    features_out: int
    dtype: str
    kernel: tuple[int, int] = (1, 1)  # a conv's kernel; (1, 1) for Linear and 1x1 convs

    @property
    def spatial(self) -> bool:
        """A kxk conv (k > 1): ``down`` is its conv weight [rank, in, kh, kw], not a matrix."""
        return self.kernel != (1, 1)

    @property
    def down_shape(self) -> tuple:
        rank = f"rank of {self.module}"  # any size: the active adapters' ranks summed
        if self.spatial:
            kh, kw = self.kernel
            return (rank, self.features_in // (kh * kw), kh, kw)
        return (self.features_in, rank)

    @property
    def specs(self) -> tuple[TensorSpec, TensorSpec]:
        rank = f"rank of {self.module}"
        return (
            TensorSpec(self.down, self.dtype, self.down_shape),
            TensorSpec(self.up, self.dtype, (rank, self.features_out)),
        )


@dataclass(frozen=True)
class OpenVinoGraph:
    """A component's graph in OpenVINO's IR, built beside its ONNX graph for the openvino
    backend: the U-Net quantized by NNCF (``sdrt build --precision int8 --int8-method nncf``,
    engines/int8_unet_nncf.py). Named as Optimum Intel names it (unet/openvino_model.xml)."""

    file: str  # the .xml, relative to the model folder
    sha256: str
    weights: str  # the .bin beside it
    weights_sha256: str
    precision: str  # "int8"
    openvino_version: str
    quantization: Mapping[str, Any]
    verification: Verification


@dataclass(frozen=True)
class Component:
    """One exported ONNX graph of the pipeline."""

    name: str
    file: str  # relative to the model folder, e.g. "unet/model.onnx"
    sha256: str
    precision: str
    opset: int
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    external_data: str | None = None  # relative path of the single external data file
    external_data_sha256: str | None = None
    source_sha256: str = ""  # hash of the torch weights + config + export options it came from
    node_counts: Mapping[str, int] = field(
        default_factory=dict
    )  # e.g. {"exported": n, "cleaned": m}
    verification: Verification | None = None
    token_embedding: TokenEmbedding | None = None  # text encoders built by this sdrt
    # Modules run-time LoRA may feed (export/adaptable.py); empty in folders built without.
    lora_branches: tuple[LoraBranch, ...] = ()
    # Built --lora-ready by an older sdrt (whole weights as inputs): needs a rebuild for LoRA.
    lora_outdated: bool = False
    # int8 U-Nets: how they were quantized and calibrated (engines/int8_unet.py); else None.
    quantization: Mapping[str, Any] | None = None
    # Its OpenVINO IR, which the openvino backend runs instead of ``file``; else None.
    openvino: OpenVinoGraph | None = None

    @property
    def optional_inputs(self) -> tuple[TensorSpec, ...]:
        """Inputs a session may be fed besides ``inputs`` (initializers it overrides): the
        token table (textual inversion) and LoRA's branch factors."""
        table = () if self.token_embedding is None else (self.token_embedding.spec(),)
        return table + tuple(spec for b in self.lora_branches for spec in b.specs)


@dataclass(frozen=True)
class Source:
    path_or_id: str
    revision: str | None
    content_sha256: str
    # For a single-file checkpoint: how it was read (layout, detected family, where the
    # configs and tokenizers came from, the prediction type and why); None for a folder.
    single_file: Mapping[str, Any] | None = None


@dataclass(frozen=True)
class TinyVae:
    """A tiny VAE (diffusers' AutoencoderTiny, TAESD) built beside the full one."""

    source: Source  # its folder or Hub id, revision and content hash
    class_name: str  # "AutoencoderTiny"
    # Its config's; diffusers' pipelines divide latents by it before decoding and multiply
    # encoded latents by it (1.0 for TAESD). No shift: SD/SDXL pipelines apply none.
    scaling_factor: float
    decoder: str  # component names
    encoder: str | None


@dataclass(frozen=True)
class ControlNet:
    """A diffusers ControlNetModel built into the folder (sdrt build --controlnet)."""

    name: str  # what calls pick it by (controlnet="NAME")
    component: str  # its graph: controlnet_<name>
    source: Source  # its folder or Hub id, revision and content hash
    conditioning_channels: int  # channels of the control image it takes (3: RGB)
    # Its config's: the residuals are pooled and the pipeline runs it as in guess mode.
    global_pool_conditions: bool = False


@dataclass(frozen=True)
class T2IAdapter:
    """A diffusers T2IAdapter built into the folder (sdrt build --t2i-adapter)."""

    name: str  # the build's name for it (sdrt info)
    source: Source  # its folder or Hub id, revision and content hash
    in_channels: int  # channels of the adapter image it takes (3: RGB, 1: grayscale)
    adapter_type: str  # its config's: full_adapter, light_adapter or full_adapter_xl
    features: int  # how many features the adapter U-Net takes (one per U-Net down block)
    # its pixel unshuffle's: image sizes must be multiples of it (8; SDXL's adapters 16)
    downscale_factor: int
    component: str = T2I_ADAPTER


@dataclass(frozen=True)
class ConfigCorrection:
    """One rewrite of an outdated config that diffusers' pipelines make on load, made at build."""

    component: str  # "scheduler" or "unet": the config file it was made in
    key: str
    old: Any  # as the source file has it; None where the key is absent
    old_effective: Any  # what diffusers read (the class default where the key is absent)
    new: Any
    reason: str


@dataclass(frozen=True)
class BuildOptions:
    """The shape range and precision the folder was built for (image pixels, not latents)."""

    min_size: int
    max_size: int
    opt_size: int
    min_batch: int
    max_batch: int
    opt_batch: int
    precision: str
    vae_precision: str
    opset: int
    # Height and width must be multiples of this (8 for the VAE; a U-Net with N
    # down-sampling stages traced at a fixed parity may need 8 * 2**N).
    size_multiple: int = 8


@dataclass(frozen=True)
class Engine:
    """An engine built from one component for one target."""

    target: str  # the backend it is for (a name in sdrt/backends/registry.py)
    component: str
    path: str  # relative to the model folder
    cache_key: str
    profile: Mapping[str, Mapping[str, tuple[int, ...]]]  # input -> {"min","opt","max"} -> shape
    options: Mapping[str, Any]
    library_versions: Mapping[str, str]
    device: Mapping[str, Any]  # e.g. {"name": ..., "compute_capability": "9.0"}
    verification: Verification | None = None
    # The plan as written (sdrt.integrity checks it before a load maps it); "" and None in
    # records written before sdrt recorded them: such a plan is not checked.
    sha256: str = ""
    size: int | None = None


@dataclass(frozen=True)
class ForwardCheck:
    """One forward pass an adopted component passed: what it was fed, what it gave."""

    component: str
    input_shapes: Mapping[str, tuple[int, ...]]
    output_shapes: Mapping[str, tuple[int, ...]]
    max_abs_output: float  # over the outputs the runtime reads; all of them were finite


@dataclass(frozen=True)
class Adoption:
    """A folder whose graphs another exporter made (``sdrt adopt``): checked to load and run
    as the runtime feeds them, not verified against PyTorch (no weights to compare with)."""

    layout: str  # "optimum", or "optimum-legacy" (older exporters' I/O names and dtypes)
    exporter: str  # the graphs' producer, e.g. "pytorch 2.13.0"
    checked: tuple[str, ...]  # what was checked, in words
    forward_checks: tuple[ForwardCheck, ...]
    notes: tuple[str, ...] = ()  # what differs from a folder sdrt builds
    derived: Mapping[str, str] = field(default_factory=dict)  # setting -> where it came from


@dataclass(frozen=True)
class DeepCacheBranch:
    """One DeepCache branch a folder was built for (sdrt/deep_cache.py)."""

    branch: int  # DeepCache's cache_branch_id
    feature_output: str  # the unet output holding the cached feature
    component: str  # the shallow U-Net run on cached steps


@dataclass(frozen=True)
class DeepCacheBuild:
    """What ``sdrt build --deep-cache`` exported; None in folders built without it."""

    branches: tuple[DeepCacheBranch, ...]

    @property
    def branch_ids(self) -> tuple[int, ...]:
        return tuple(b.branch for b in self.branches)

    def branch(self, branch: int) -> DeepCacheBranch | None:
        return next((b for b in self.branches if b.branch == branch), None)


@dataclass(frozen=True)
class Recipe:
    """The settings a distilled model is meant to run with (its card's, or its configs'),
    recorded by ``sdrt build`` (sdrt/recipes.py makes them); a call that leaves an argument
    at its default takes the recipe's. None: the call's usual default."""

    name: str  # "sd-turbo", "lcm", ...; "custom" for --recipe KEY=VALUE alone
    source: str  # where it came from, in words ("--recipe sd-turbo", "the U-Net config ...")
    steps: int | None = None
    guidance_scale: float | None = None
    scheduler: str | None = None  # a diffusers class name; None: the folder's own
    # Keys set on that scheduler's config, as diffusers' from_config(..., key=value) sets them
    scheduler_config: Mapping[str, Any] = field(default_factory=dict)
    eta: float | None = None
    # Above this the model's card says guidance breaks it (Turbo: CFG it was not trained
    # for): a call's larger guidance_scale gets a warning. None: no such limit.
    max_guidance_scale: float | None = None


@dataclass(frozen=True)
class Manifest:
    source: Source
    family: str
    prediction_type: str
    vae_scaling_factor: float
    latent_channels: int
    unet_in_channels: int  # 4 for text-to-image U-Nets, 9 for inpainting U-Nets
    sample_size: int  # the U-Net's native latent size; image size is sample_size * vae_scale_factor
    vae_scale_factor: int
    build: BuildOptions
    components: Mapping[str, Component]
    tokenizers: tuple[str, ...]  # folder names: ("tokenizer",) or ("tokenizer", "tokenizer_2")
    versions: Mapping[str, str]  # exporter and library versions
    vae_shift_factor: float | None = None
    # Family specific settings the runtime needs (SDXL: "force_zeros_for_empty_prompt",
    # "requires_aesthetics_score", "addition_time_embed_dim"; SD: "requires_safety_checker").
    family_options: Mapping[str, Any] = field(default_factory=dict)
    engines: tuple[Engine, ...] = ()
    config_corrections: tuple[ConfigCorrection, ...] = ()
    adapters: tuple[BuiltAdapter, ...] = ()  # fused / added at build time, in order
    # token merging baked into the U-Net (sdrt build --tome-ratio): tomesd's settings; None: off
    tome: Mapping[str, Any] | None = None
    format_version: int = FORMAT_VERSION
    adoption: Adoption | None = None  # set for adopted folders (sdrt adopt), None when built
    deep_cache: DeepCacheBuild | None = None  # sdrt build --deep-cache; None without
    tiny_vae: TinyVae | None = None  # sdrt build --tiny-vae
    recipe: Recipe | None = None  # a distilled model's steps, guidance, scheduler; None: none
    # sdrt build --controlnet, in build order; their residuals feed CONTROLNET_UNET
    controlnets: tuple[ControlNet, ...] = ()
    # sdrt build --t2i-adapter; its features feed ADAPTER_UNET; None: none built
    t2i_adapter: T2IAdapter | None = None

    @property
    def default_image_size(self) -> int:
        return self.sample_size * self.vae_scale_factor

    @property
    def defaulted_scheduler_keys(self) -> frozenset[str]:
        """Scheduler keys the source's config lacked, written by a correction: diffusers
        keeps them in ``_use_default_values``, so its ``from_config`` (a scheduler swap)
        drops them and the new class takes its own default."""
        return frozenset(
            c.key for c in self.config_corrections if c.component == "scheduler" and c.old is None
        )

    def with_engines(self, engines: tuple[Engine, ...]) -> Manifest:
        return dataclasses.replace(self, engines=tuple(engines))


# ---------------------------------------------------------------------------- to / from JSON


def manifest_to_dict(manifest: Manifest) -> dict[str, Any]:
    def convert(value: Any) -> Any:
        if dataclasses.is_dataclass(value):
            return {f.name: convert(getattr(value, f.name)) for f in dataclasses.fields(value)}
        if isinstance(value, Mapping):
            return {str(k): convert(v) for k, v in value.items()}
        if isinstance(value, (tuple, list)):
            return [convert(v) for v in value]
        return value

    return convert(manifest)


class _Reader:
    """Typed access to a JSON object with messages that name the offending field."""

    def __init__(self, data: Any, where: str):
        if not isinstance(data, Mapping):
            raise ModelFolderError(f"{where}: expected a JSON object, got {type(data).__name__}")
        self.data = data
        self.where = where

    def get(self, key: str, kind: type | tuple[type, ...], *, optional: bool = False, default=None):
        if key not in self.data or self.data[key] is None:
            if optional:
                return default
            raise ModelFolderError(f"{self.where}: missing field {key!r}")
        value = self.data[key]
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if (
            isinstance(value, bool)
            and kind is not bool
            and bool not in (kind if isinstance(kind, tuple) else (kind,))
        ):
            raise ModelFolderError(
                f"{self.where}.{key}: expected {_kind_name(kind)}, got a boolean"
            )
        if not isinstance(value, kind):
            raise ModelFolderError(
                f"{self.where}.{key}: expected {_kind_name(kind)}, got {type(value).__name__} {value!r}"
            )
        return value

    def choice(self, key: str, choices: tuple[str, ...]) -> str:
        value = self.get(key, str)
        if value not in choices:
            raise ModelFolderError(
                f"{self.where}.{key}: expected one of {', '.join(choices)}, got {value!r}"
            )
        return value

    def sub(self, key: str, *, optional: bool = False) -> _Reader | None:
        value = self.get(key, Mapping, optional=optional)
        return None if value is None else _Reader(value, f"{self.where}.{key}")


def _kind_name(kind) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    names = {
        str: "a string",
        int: "an integer",
        float: "a number",
        bool: "a boolean",
        list: "a list",
        Mapping: "an object",
    }
    return " or ".join(names.get(k, k.__name__) for k in kinds)


def _shape(value: Any, where: str, *, symbolic: bool) -> tuple[int | str, ...]:
    allowed = (int, str) if symbolic else (int,)
    if not isinstance(value, list) or not all(
        isinstance(d, allowed) and not isinstance(d, bool) for d in value
    ):
        raise ModelFolderError(
            f"{where}: expected a list of {'dimensions' if symbolic else 'integers'}, got {value!r}"
        )
    return tuple(value)


def _tensor_specs(values: Any, where: str) -> tuple[TensorSpec, ...]:
    if not isinstance(values, list) or not values:
        raise ModelFolderError(
            f"{where}: expected a non-empty list of tensor specs, got {values!r}"
        )
    specs = []
    for i, value in enumerate(values):
        r = _Reader(value, f"{where}[{i}]")
        specs.append(
            TensorSpec(
                r.get("name", str),
                r.choice("dtype", DTYPES),
                _shape(r.get("shape", list), f"{r.where}.shape", symbolic=True),
            )
        )
    return tuple(specs)


def _verification(r: _Reader | None) -> Verification | None:
    if r is None:
        return None
    cases = []
    for i, case in enumerate(r.get("cases", list)):
        c = _Reader(case, f"{r.where}.cases[{i}]")
        shapes = c.sub("input_shapes")
        cases.append(
            VerificationCase(
                input_shapes={
                    k: _shape(v, f"{shapes.where}.{k}", symbolic=False)
                    for k, v in shapes.data.items()
                },
                max_abs_error=c.get("max_abs_error", float),
                max_rel_error=c.get("max_rel_error", float),
            )
        )
    return Verification(
        reference=r.get("reference", str),
        threshold_abs=r.get("threshold_abs", float),
        threshold_rel=r.get("threshold_rel", float),
        cases=tuple(cases),
        passed=r.get("passed", bool),
    )


def _component(name: str, r: _Reader) -> Component:
    return Component(
        name=name,
        file=r.get("file", str),
        sha256=r.get("sha256", str),
        precision=r.choice("precision", PRECISIONS),
        opset=r.get("opset", int),
        inputs=_tensor_specs(r.get("inputs", list), f"{r.where}.inputs"),
        outputs=_tensor_specs(r.get("outputs", list), f"{r.where}.outputs"),
        external_data=r.get("external_data", str, optional=True),
        external_data_sha256=r.get("external_data_sha256", str, optional=True),
        source_sha256=r.get("source_sha256", str, optional=True, default=""),
        node_counts=dict(r.get("node_counts", Mapping, optional=True, default={})),
        verification=_verification(r.sub("verification", optional=True)),
        token_embedding=_token_embedding(r.sub("token_embedding", optional=True)),
        lora_branches=_lora_branches(
            r.get("lora_branches", list, optional=True, default=[]), r.where
        ),
        lora_outdated=r.get("lora_outdated", bool, optional=True, default=False)
        or bool(r.get("adaptable", list, optional=True, default=[])),  # format 1's record
        quantization=r.get("quantization", Mapping, optional=True),
        openvino=_openvino_graph(r.sub("openvino", optional=True)),
    )


def _openvino_graph(r: _Reader | None) -> OpenVinoGraph | None:
    if r is None:
        return None
    return OpenVinoGraph(
        file=r.get("file", str),
        sha256=r.get("sha256", str),
        weights=r.get("weights", str),
        weights_sha256=r.get("weights_sha256", str),
        precision=r.choice("precision", PRECISIONS),
        openvino_version=r.get("openvino_version", str),
        quantization=r.get("quantization", Mapping),
        verification=_verification(r.sub("verification")),  # required: sub raises if absent
    )


def _token_embedding(r: _Reader | None) -> TokenEmbedding | None:
    if r is None:
        return None
    shape = _shape(r.get("shape", list), f"{r.where}.shape", symbolic=False)
    if len(shape) != 2:
        raise ModelFolderError(f"{r.where}.shape: expected (vocabulary, width), got {list(shape)}")
    return TokenEmbedding(
        input=r.get("input", str),
        dtype=r.choice("dtype", DTYPES),
        shape=shape,
        file=r.get("file", str),
        offset=r.get("offset", int),
    )


def _adapter(r: _Reader) -> BuiltAdapter:
    tokens = r.get("tokens", list, optional=True, default=[])
    if not all(isinstance(t, str) for t in tokens):
        raise ModelFolderError(f"{r.where}.tokens: expected a list of strings, got {tokens!r}")
    return BuiltAdapter(
        kind=r.choice("kind", ("lora", "textual_inversion")),
        file=r.get("file", str),
        sha256=r.get("sha256", str),
        scale=r.get("scale", float, optional=True),
        tokens=tuple(tokens),
    )


def _lora_branches(values: list, where: str) -> tuple[LoraBranch, ...]:
    branches = []
    for i, value in enumerate(values):
        b = _Reader(value, f"{where}.lora_branches[{i}]")
        branches.append(
            LoraBranch(
                module=b.get("module", str),
                down=b.get("down", str),
                up=b.get("up", str),
                features_in=b.get("features_in", int),
                features_out=b.get("features_out", int),
                dtype=b.choice("dtype", DTYPES),
                kernel=_kernel(b),
            )
        )
    return tuple(branches)


def _kernel(b: _Reader) -> tuple[int, int]:
    """A branch's conv kernel; (1, 1) in folders written before kxk convs had branches."""
    kernel = b.get("kernel", list, optional=True, default=[1, 1])
    if len(kernel) != 2 or not all(
        isinstance(k, int) and not isinstance(k, bool) and k > 0 for k in kernel
    ):
        raise ModelFolderError(f"{b.where}.kernel: expected two positive integers, got {kernel!r}")
    return (kernel[0], kernel[1])


def _engine(i: int, r: _Reader) -> Engine:
    profile_reader = r.sub("profile")
    profile = {}
    for input_name, levels in profile_reader.data.items():
        lr = _Reader(levels, f"{profile_reader.where}.{input_name}")
        profile[input_name] = {
            k: _shape(lr.get(k, list), f"{lr.where}.{k}", symbolic=False)
            for k in ("min", "opt", "max")
        }
    return Engine(
        target=r.get("target", str),
        component=_engine_component(r),
        path=r.get("path", str),
        cache_key=r.get("cache_key", str),
        profile=profile,
        options=dict(r.get("options", Mapping)),
        library_versions=dict(r.get("library_versions", Mapping)),
        device=dict(r.get("device", Mapping)),
        verification=_verification(r.sub("verification", optional=True)),
        sha256=r.get("sha256", str, optional=True, default=""),
        size=r.get("size", int, optional=True),
    )


def _engine_component(r: _Reader) -> str:
    """An engine's component: any the folder format knows (ControlNets and tiny VAEs too)."""
    name = r.get("component", str)
    if not is_component_name(name) and name not in TINY_VAE_COMPONENTS:
        raise ModelFolderError(
            f"{r.where}.component: expected one of {', '.join(COMPONENT_NAMES)}, a tiny VAE's, "
            f"unet_shallow_<branch>, {CONTROLNET_UNET} or {CONTROLNET_PREFIX}<name>, got {name!r}"
        )
    return name


def manifest_from_dict(data: Any, where: str = MANIFEST_NAME) -> Manifest:
    """Validate and convert parsed JSON; raises ModelFolderError naming the bad field."""
    r = _Reader(data, where)
    version = r.get("format_version", int)
    if version != FORMAT_VERSION:
        raise ModelFolderError(
            f"{where}: format_version {version} is not supported (expected {FORMAT_VERSION}); rebuild the folder with this sdrt"
        )
    s = r.sub("source")
    tokenizers = r.get("tokenizers", list)
    if not tokenizers or not all(isinstance(t, str) for t in tokenizers):
        raise ModelFolderError(
            f"{where}.tokenizers: expected a non-empty list of folder names, got {tokenizers!r}"
        )
    manifest = Manifest(
        format_version=version,
        source=Source(
            s.get("path_or_id", str),
            s.get("revision", str, optional=True),
            s.get("content_sha256", str),
            single_file=_optional_mapping(s, "single_file"),
        ),
        family=r.choice("family", FAMILIES),
        prediction_type=r.choice("prediction_type", PREDICTION_TYPES),
        vae_scaling_factor=r.get("vae_scaling_factor", float),
        vae_shift_factor=r.get("vae_shift_factor", float, optional=True),
        latent_channels=r.get("latent_channels", int),
        unet_in_channels=r.get("unet_in_channels", int),
        sample_size=r.get("sample_size", int),
        vae_scale_factor=r.get("vae_scale_factor", int),
        build=_build_options(r.sub("build")),
        components=_components(r.sub("components")),
        tokenizers=tuple(tokenizers),
        versions=dict(r.get("versions", Mapping)),
        family_options=dict(r.get("family_options", Mapping, optional=True, default={})),
        engines=tuple(
            _engine(i, _Reader(e, f"{where}.engines[{i}]"))
            for i, e in enumerate(r.get("engines", list, optional=True, default=[]))
        ),
        config_corrections=_config_corrections(r),
        adoption=_adoption(r.sub("adoption", optional=True)),
        adapters=tuple(
            _adapter(_Reader(a, f"{where}.adapters[{i}]"))
            for i, a in enumerate(r.get("adapters", list, optional=True, default=[]))
        ),
        deep_cache=_deep_cache(r.sub("deep_cache", optional=True)),
        tiny_vae=_tiny_vae(r.sub("tiny_vae", optional=True)),
        tome=r.get("tome", Mapping, optional=True, default=None),
        recipe=_recipe(r.sub("recipe", optional=True)),
        controlnets=tuple(
            _controlnet(_Reader(c, f"{where}.controlnets[{i}]"))
            for i, c in enumerate(r.get("controlnets", list, optional=True, default=[]))
        ),
        t2i_adapter=_t2i_adapter(r.sub("t2i_adapter", optional=True)),
    )

    _check_deep_cache(manifest, where)
    _check_controlnets(manifest, where)
    if manifest.t2i_adapter is not None:
        missing = [c for c in (T2I_ADAPTER, ADAPTER_UNET) if c not in manifest.components]
        if missing:
            raise ModelFolderError(
                f"{where}.t2i_adapter: expected the components {T2I_ADAPTER} and "
                f"{ADAPTER_UNET}; the folder lacks {missing}"
            )
    return manifest


def _source(s: _Reader) -> Source:
    return Source(
        s.get("path_or_id", str),
        s.get("revision", str, optional=True),
        s.get("content_sha256", str),
        single_file=_optional_mapping(s, "single_file"),
    )


def _controlnet(r: _Reader) -> ControlNet:
    return ControlNet(
        name=r.get("name", str),
        component=r.get("component", str),
        source=_source(r.sub("source")),
        conditioning_channels=r.get("conditioning_channels", int),
        global_pool_conditions=r.get("global_pool_conditions", bool, optional=True, default=False),
    )


def _t2i_adapter(r: _Reader | None) -> T2IAdapter | None:
    if r is None:
        return None
    return T2IAdapter(
        name=r.get("name", str),
        source=_source(r.sub("source")),
        in_channels=r.get("in_channels", int),
        adapter_type=r.get("adapter_type", str),
        features=r.get("features", int),
        downscale_factor=r.get("downscale_factor", int),
        component=r.choice("component", (T2I_ADAPTER,)),
    )


def _check_controlnets(manifest: Manifest, where: str) -> None:
    """Each ControlNet names a graph the folder has, and the residual U-Net is there."""
    if not manifest.controlnets:
        return
    wanted = [c.component for c in manifest.controlnets] + [CONTROLNET_UNET]
    missing = [name for name in wanted if name not in manifest.components]
    if missing:
        raise ModelFolderError(
            f"{where}.controlnets: expected the components {wanted}; the folder lacks {missing}"
        )


def _tiny_vae(r: _Reader | None) -> TinyVae | None:
    if r is None:
        return None
    s = r.sub("source")
    return TinyVae(
        source=Source(
            s.get("path_or_id", str),
            s.get("revision", str, optional=True),
            s.get("content_sha256", str),
        ),
        class_name=r.get("class_name", str),
        scaling_factor=r.get("scaling_factor", float),
        decoder=r.choice("decoder", TINY_VAE_COMPONENTS),
        encoder=r.get("encoder", str, optional=True),
    )


def _recipe(r: _Reader | None) -> Recipe | None:
    if r is None:
        return None
    return Recipe(
        name=r.get("name", str),
        source=r.get("source", str),
        steps=r.get("steps", int, optional=True),
        guidance_scale=r.get("guidance_scale", float, optional=True),
        scheduler=r.get("scheduler", str, optional=True),
        scheduler_config=dict(r.get("scheduler_config", Mapping, optional=True, default={})),
        eta=r.get("eta", float, optional=True),
        max_guidance_scale=r.get("max_guidance_scale", float, optional=True),
    )


def _check_deep_cache(manifest: Manifest, where: str) -> None:
    """Each DeepCache branch names a shallow component and a U-Net output that exist."""
    if manifest.deep_cache is None:
        return
    outputs = {o.name for o in manifest.components["unet"].outputs}
    for b in manifest.deep_cache.branches:
        if b.component not in manifest.components or b.feature_output not in outputs:
            raise ModelFolderError(
                f"{where}.deep_cache: branch {b.branch} expects the component {b.component!r} "
                f"and the unet output {b.feature_output!r}; the folder has components "
                f"{sorted(manifest.components)} and unet outputs {sorted(outputs)}"
            )


def _deep_cache(r: _Reader | None) -> DeepCacheBuild | None:
    if r is None:
        return None
    branches = []
    for i, value in enumerate(r.get("branches", list)):
        b = _Reader(value, f"{r.where}.branches[{i}]")
        branches.append(
            DeepCacheBranch(
                branch=b.get("branch", int),
                feature_output=b.get("feature_output", str),
                component=b.get("component", str),
            )
        )
    return DeepCacheBuild(tuple(branches))


def _adoption(r: _Reader | None) -> Adoption | None:
    if r is None:
        return None
    checks = []
    for i, value in enumerate(r.get("forward_checks", list)):
        c = _Reader(value, f"{r.where}.forward_checks[{i}]")
        shapes = {}
        for key in ("input_shapes", "output_shapes"):
            sub = c.sub(key)
            shapes[key] = {
                k: _shape(v, f"{sub.where}.{k}", symbolic=False) for k, v in sub.data.items()
            }
        checks.append(
            ForwardCheck(
                component=c.choice("component", COMPONENT_NAMES),
                max_abs_output=c.get("max_abs_output", float),
                **shapes,
            )
        )
    return Adoption(
        layout=r.get("layout", str),
        exporter=r.get("exporter", str),
        checked=tuple(_strings(r.get("checked", list), f"{r.where}.checked")),
        forward_checks=tuple(checks),
        notes=tuple(_strings(r.get("notes", list, optional=True, default=[]), f"{r.where}.notes")),
        derived=dict(r.get("derived", Mapping, optional=True, default={})),
    )


def _strings(values: list, where: str) -> list[str]:
    if not all(isinstance(v, str) for v in values):
        raise ModelFolderError(f"{where}: expected a list of strings, got {values!r}")
    return values


def _optional_mapping(r: _Reader, key: str) -> dict[str, Any] | None:
    value = r.get(key, Mapping, optional=True)
    return None if value is None else dict(value)


def _config_corrections(r: _Reader) -> tuple[ConfigCorrection, ...]:
    corrections = []
    for i, value in enumerate(r.get("config_corrections", list, optional=True, default=[])):
        c = _Reader(value, f"{r.where}.config_corrections[{i}]")
        corrections.append(
            ConfigCorrection(
                component=c.get("component", str),
                key=c.get("key", str),
                old=c.data.get("old"),
                old_effective=c.data.get("old_effective"),
                new=c.data.get("new"),
                reason=c.get("reason", str),
            )
        )
    return tuple(corrections)


def _build_options(b: _Reader) -> BuildOptions:
    return BuildOptions(
        min_size=b.get("min_size", int),
        max_size=b.get("max_size", int),
        opt_size=b.get("opt_size", int),
        min_batch=b.get("min_batch", int),
        max_batch=b.get("max_batch", int),
        opt_batch=b.get("opt_batch", int),
        precision=b.choice("precision", PRECISIONS),
        vae_precision=b.choice("vae_precision", VAE_PRECISIONS),
        opset=b.get("opset", int),
        size_multiple=b.get("size_multiple", int, optional=True, default=8),
    )


def _components(comps: _Reader) -> dict[str, Component]:
    unknown = sorted(
        name
        for name in comps.data
        if not is_component_name(name) and name not in TINY_VAE_COMPONENTS
    )
    if unknown:
        raise ModelFolderError(
            f"{comps.where}: unknown components {unknown}; expected names from "
            f"{', '.join(COMPONENT_NAMES + TINY_VAE_COMPONENTS + (CONTROLNET_UNET, T2I_ADAPTER, ADAPTER_UNET))}, "
            f"unet_shallow_<branch> or {CONTROLNET_PREFIX}<name>"
        )
    components = {
        name: _component(name, _Reader(value, f"{comps.where}.{name}"))
        for name, value in comps.data.items()
    }
    for required in ("text_encoder", "unet", "vae_decoder"):
        if required not in components:
            raise ModelFolderError(f"{comps.where}: the required component {required!r} is missing")
    return components


# ---------------------------------------------------------------------------- files


def sha256_file(path: str | os.PathLike, chunk_size: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write through a temporary file in the same folder and rename over the target."""
    atomic_write(path, lambda f: f.write(text), binary=False)


def write_manifest(folder: str | os.PathLike, manifest: Manifest) -> Path:
    path = Path(folder) / MANIFEST_NAME
    atomic_write_text(
        path, json.dumps(manifest_to_dict(manifest), indent=2, sort_keys=False) + "\n"
    )
    return path


def read_manifest(folder: str | os.PathLike) -> Manifest:
    folder = Path(folder)
    if not folder.is_dir():
        raise ModelFolderError(f"model folder {str(folder)!r} does not exist or is not a folder")
    path = folder / MANIFEST_NAME
    if not path.is_file():
        hint = "build one with `sdrt build`"
        if (folder / "unet" / "model.onnx").is_file():  # exported elsewhere (e.g. by Optimum)
            hint = f"adopt its ONNX graphs with `sdrt adopt {folder} -o OUT` (or --in-place)"
        raise ModelFolderError(
            f"{str(folder)!r} is not an sdrt model folder: it has no {MANIFEST_NAME} ({hint})"
        )
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ModelFolderError(f"{path}: not valid JSON ({e})") from None
    return manifest_from_dict(data, where=str(path))


def component_files(manifest: Manifest) -> dict[str, str]:
    """Relative path -> expected sha256 for every file the manifest's components name."""
    files = {}
    for comp in manifest.components.values():
        files[comp.file] = comp.sha256
        if comp.external_data:
            files[comp.external_data] = comp.external_data_sha256 or ""
        if comp.openvino is not None:
            files[comp.openvino.file] = comp.openvino.sha256
            files[comp.openvino.weights] = comp.openvino.weights_sha256
    return files
