"""What ``sdrt build`` builds and how (``BuildConfig``), checked when made, with no heavy
import: the command checks every argument and file before torch and diffusers load (a
bad ``--opset`` fails in a second, not after the source has been read). The build itself
is export/build.py, which takes this config."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from sdrt.export.controlnet_options import ControlNetOption, check_unique
from sdrt.export.single_file import SingleFileOptions
from sdrt.export.source import local_folder_or_hub_id
from sdrt.export.t2i_adapter_options import T2IAdapterOption
from sdrt.export.tome_options import TomeOptions

from sdrt.adapters.options import EmbeddingOption, LoraOption
from sdrt.errors import InputError, ParameterError
from sdrt.manifest import PRECISIONS
from sdrt.recipes import RecipeOption

# The legacy exporter needs opset 14 for scaled_dot_product_attention; 20 is its maximum.
MIN_OPSET, MAX_OPSET = 14, 20
SIZE_STEP = 8  # every SD VAE scales by 8; sizes are checked against the model's own later
# What --lora-ready gives branches (export/adaptable.py); the first is the default.
LORA_TARGETS = ("attention", "all")


def _check_lora_targets(config: BuildConfig) -> None:
    if config.lora_targets not in LORA_TARGETS:
        raise InputError(
            f"lora targets: expected one of {', '.join(LORA_TARGETS)}, got {config.lora_targets!r}"
        )


INT8_METHODS = ("onnxruntime", "nncf")


@dataclass(frozen=True)
class BuildConfig:
    """What to build and how; checked on creation (InputError names the bad value)."""

    source: str
    output: Path
    precision: str = "fp32"
    # None: the same as ``precision``, except fp32 for an SDXL VAE whose config asks for
    # force_upcast (SDXL's VAE overflows in fp16).
    vae_precision: str | None = None
    min_size: int = 256
    max_size: int = 1024
    opt_size: int | None = None  # None: the model's native size, clamped into the range
    max_batch: int = 4  # images per call; the U-Net sees up to twice that with guidance
    opset: int = 17
    force: bool = False
    revision: str | None = None
    single_file: SingleFileOptions = SingleFileOptions()  # for .safetensors/.ckpt sources
    # fused / added into the source before export (export/build_adapters.py), in order
    loras: tuple[LoraOption, ...] = ()
    embeddings: tuple[EmbeddingOption, ...] = ()
    # U-Net and text-encoder modules LoRA touches get low-rank branches fed at run time
    # (export/adaptable.py); off by default: they cost a plain build some speed (README)
    lora_ready: bool = False
    # with lora_ready: "attention" (the transformer blocks' modules) or "all" (every Linear
    # and Conv2d of the U-Net: what LCM-LoRA, Hyper-SD and LoCon files train)
    lora_targets: str = "attention"
    # DeepCache branches (cache_branch_id) to export shallow U-Nets for; () builds none
    deep_cache_branches: tuple[int, ...] = ()
    # a diffusers AutoencoderTiny folder or Hub id, exported beside the full VAE
    # (export/tiny_vae.py); None: no tiny VAE
    tiny_vae: str | None = None
    # precision "int8": the U-Net's calibration prompts (empty: engines/int8_unet.py's list)
    calibration_prompts: tuple[str, ...] = ()
    # precision "int8": "onnxruntime" (the U-Net's ONNX graph made QDQ, engines/int8_unet.py)
    # or "nncf" (an OpenVINO IR beside the fp32 graph, engines/int8_unet_nncf.py)
    int8_method: str = "onnxruntime"
    # token merging (ToMe for SD) baked into the U-Net graph (export/tome.py); None: off
    tome: TomeOptions | None = None
    # --recipe (sdrt/recipes.py): settings recorded in sdrt.json; None: what the source says
    recipe: RecipeOption | None = None
    # diffusers ControlNetModels exported beside the U-Net, with the U-Net that takes their
    # residuals (export/controlnet.py); in build order, the order calls default to
    controlnets: tuple[ControlNetOption, ...] = ()
    # a diffusers T2IAdapter exported beside the U-Net, with the U-Net that takes its
    # features (export/t2i_adapter.py); None: none
    t2i_adapter: T2IAdapterOption | None = None

    def __post_init__(self):
        object.__setattr__(self, "output", Path(self.output))
        object.__setattr__(self, "loras", tuple(self.loras))
        object.__setattr__(self, "embeddings", tuple(self.embeddings))
        object.__setattr__(self, "deep_cache_branches", tuple(self.deep_cache_branches))
        _check_deep_cache_branches(self)
        object.__setattr__(self, "calibration_prompts", tuple(self.calibration_prompts))
        _check_int8(self)
        _check_lora_targets(self)
        object.__setattr__(self, "controlnets", check_unique(self.controlnets))
        _check_controlnets(self)
        _check_t2i_adapter(self)
        for option in (*self.loras, *self.embeddings):
            if not Path(option.path).is_file():
                raise InputError(f"adapter file {str(option.path)!r} does not exist")
        if self.tiny_vae is not None:
            check_tiny_vae_option(self.tiny_vae)
        if self.output.name in ("", ".."):
            raise InputError(
                f"output must name the folder to write (e.g. out/sd15), got {str(self.output)!r}"
            )
        for name in ("precision", "vae_precision"):
            value = getattr(self, name)
            if value is not None and value not in PRECISIONS:
                raise ParameterError(
                    "{" + name + "} must be one of {choices}, got {value!r}",
                    choices=", ".join(PRECISIONS),
                    value=value,
                )
        for name in ("min_size", "max_size", "opt_size"):
            value = getattr(self, name)
            if value is not None and (value <= 0 or value % SIZE_STEP):
                raise ParameterError(
                    "{" + name + "} must be a positive multiple of {step} pixels, got {value}",
                    step=SIZE_STEP,
                    value=value,
                )
        if self.min_size > self.max_size:
            raise ParameterError(
                "{min_size} {low} is above {max_size} {high}", low=self.min_size, high=self.max_size
            )
        if self.opt_size is not None and not self.min_size <= self.opt_size <= self.max_size:
            raise ParameterError(
                "{opt_size} {value} is outside {min_size}..{max_size} ({low}..{high})",
                value=self.opt_size,
                low=self.min_size,
                high=self.max_size,
            )
        if self.max_batch < 1:
            raise ParameterError(
                "{max_batch} must be at least 1, got {value}", value=self.max_batch
            )
        if not MIN_OPSET <= self.opset <= MAX_OPSET:
            raise ParameterError(
                "{opset} must be between {low} and {high}, got {value}",
                low=MIN_OPSET,
                high=MAX_OPSET,
                value=self.opset,
            )


def _check_controlnets(config: BuildConfig) -> None:
    """What the residual-taking U-Net cannot be built with yet, refused before any export."""
    if not config.controlnets:
        return
    clashes = {
        "--precision int8": config.precision == "int8",  # its calibration feeds no residuals
        "--tome-ratio": config.tome is not None,
    }
    given = [option for option, clash in clashes.items() if clash]
    if given:
        raise InputError(
            f"--controlnet: expected a build without {', '.join(given)} (the U-Net that takes "
            "ControlNet residuals is not built with it yet); got both"
        )


def _check_t2i_adapter(config: BuildConfig) -> None:
    """What the feature-taking U-Net cannot be built with yet, refused before any export."""
    if config.t2i_adapter is None:
        return
    if not isinstance(config.t2i_adapter, T2IAdapterOption):
        raise InputError(
            f"t2i_adapter: expected a T2IAdapterOption, got {type(config.t2i_adapter).__name__}"
        )
    clashes = {
        "--precision int8": config.precision == "int8",  # its calibration feeds no features
        "--lora-ready": config.lora_ready,  # run-time LoRA feeds the plain U-Net's branches
        "--tome-ratio": config.tome is not None,
    }
    given = [option for option, clash in clashes.items() if clash]
    if given:
        raise InputError(
            f"--t2i-adapter: expected a build without {', '.join(given)} (the U-Net that takes "
            "T2I-Adapter features is not built with it yet); got both"
        )


def _check_deep_cache_branches(config: BuildConfig) -> None:
    branches = config.deep_cache_branches
    if any(isinstance(b, bool) or not isinstance(b, int) or b < 0 for b in branches):
        raise InputError(f"deep cache branches: expected integers >= 0, got {list(branches)}")
    if len(set(branches)) != len(branches):
        raise InputError(f"deep cache branches: expected each once, got {list(branches)}")
    if branches and config.lora_ready:
        # run-time LoRA would feed the U-Net's weights but not its shallow graphs'
        raise InputError("--deep-cache and --lora-ready cannot be combined yet")
    if branches and config.tome is not None:
        # the shallow U-Nets would run without the merging the full U-Net does
        raise InputError("--deep-cache and --tome-ratio cannot be combined yet")


# What --lora-ready gives branches (export/adaptable.py); the first is the default.
LORA_TARGETS = ("attention", "all")


def _check_lora_targets(config: BuildConfig) -> None:
    if config.lora_targets not in LORA_TARGETS:
        raise InputError(
            f"lora targets: expected one of {', '.join(LORA_TARGETS)}, got {config.lora_targets!r}"
        )


INT8_METHODS = ("onnxruntime", "nncf")


def _check_int8(config: BuildConfig) -> None:
    if config.vae_precision == "int8":
        raise InputError("vae_precision must be fp32 or fp16, got 'int8' (int8 is the U-Net's)")
    if config.int8_method not in INT8_METHODS:
        raise InputError(
            f"int8 method: expected one of {', '.join(INT8_METHODS)}, got {config.int8_method!r}"
        )
    if config.precision != "int8":
        if config.calibration_prompts:
            raise InputError(
                f"calibration prompts are for precision int8, got precision {config.precision!r}"
            )
        if config.int8_method != INT8_METHODS[0]:
            raise InputError(
                f"int8 method {config.int8_method!r} is for precision int8, got precision "
                f"{config.precision!r}"
            )
        return
    if config.int8_method == "nncf":
        from sdrt.engines.int8_unet_nncf import check_nncf_installed

        check_nncf_installed()
    if config.lora_ready:
        raise InputError("precision int8 and lora_ready do not combine (LoRA needs fp32 weights)")
    if any(not p.strip() for p in config.calibration_prompts):
        raise InputError("calibration prompts must not be empty strings")


def check_tiny_vae_option(path_or_id: str) -> Path | None:
    """``--tiny-vae``'s local folder, or None for a Hub id; InputError for anything else."""
    return local_folder_or_hub_id(
        path_or_id, "--tiny-vae", "a diffusers AutoencoderTiny folder or a Hub id"
    )
