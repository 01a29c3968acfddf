"""The Stable Diffusion architectures ``sdrt init-model`` makes, as diffusers-format configs.

``sd15``, ``sd21`` and ``sdxl`` are the published ``config.json`` files of
runwayml/stable-diffusion-v1-5, stabilityai/stable-diffusion-2-1 and
stabilityai/stable-diffusion-xl-base-1.0, written out as dicts (bookkeeping keys such as
``_diffusers_version`` and ``_name_or_path`` left out). The ``tiny`` variants keep the same
block structure (block types, 4 VAE levels so the latent scale stays 8, text_time embeddings
for XL) with small widths, so tests run whole pipelines on a CPU in seconds.

The text encoders' ``vocab_size`` of ``None`` means "the locally made tokenizer's size"; it is
filled in when the model is made (the full-size ones keep CLIP's 49408).
"""

from __future__ import annotations

import dataclasses
from types import MappingProxyType
from typing import Any

# --- shared pieces --------------------------------------------------------------------------

_SD_DOWN_BLOCKS = ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"]
_SD_UP_BLOCKS = ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3
_XL_DOWN_BLOCKS = ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"]
_XL_UP_BLOCKS = ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"]
_VAE_DOWN_BLOCKS = ["DownEncoderBlock2D"] * 4
_VAE_UP_BLOCKS = ["UpDecoderBlock2D"] * 4

# SD 1.5's scaled-linear noise schedule, shared by all three families.
_SCALED_LINEAR = {
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "num_train_timesteps": 1000,
    "trained_betas": None,
}

# CLIP text configs keep the legacy special-token ids of the published files (bos 0, pad 1,
# eos 2): with eos_token_id == 2 transformers pools at the highest token id, which is
# <|endoftext|> in CLIP's vocabulary and in ours.
_CLIP_TEXT_COMMON = {
    "attention_dropout": 0.0,
    "bos_token_id": 0,
    "dropout": 0.0,
    "eos_token_id": 2,
    "initializer_factor": 1.0,
    "initializer_range": 0.02,
    "layer_norm_eps": 1e-05,
    "max_position_embeddings": 77,
    "model_type": "clip_text_model",
    "pad_token_id": 1,
}

CLIP_VOCAB_SIZE = 49408


def _clip_text(**fields: Any) -> dict[str, Any]:
    return {**_CLIP_TEXT_COMMON, **fields}


# --- SD 1.5 ---------------------------------------------------------------------------------

SD15_UNET = {
    "act_fn": "silu",
    "attention_head_dim": 8,
    "block_out_channels": [320, 640, 1280, 1280],
    "center_input_sample": False,
    "cross_attention_dim": 768,
    "down_block_types": _SD_DOWN_BLOCKS,
    "downsample_padding": 1,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "in_channels": 4,
    "layers_per_block": 2,
    "mid_block_scale_factor": 1,
    "norm_eps": 1e-05,
    "norm_num_groups": 32,
    "out_channels": 4,
    "sample_size": 64,
    "up_block_types": _SD_UP_BLOCKS,
}

SD15_VAE = {
    "act_fn": "silu",
    "block_out_channels": [128, 256, 512, 512],
    "down_block_types": _VAE_DOWN_BLOCKS,
    "in_channels": 3,
    "latent_channels": 4,
    "layers_per_block": 2,
    "norm_num_groups": 32,
    "out_channels": 3,
    "sample_size": 512,
    "scaling_factor": 0.18215,
    "up_block_types": _VAE_UP_BLOCKS,
}

# openai/clip-vit-large-patch14's text tower.
CLIP_VIT_L_TEXT = _clip_text(
    architectures=["CLIPTextModel"],
    hidden_act="quick_gelu",
    hidden_size=768,
    intermediate_size=3072,
    num_attention_heads=12,
    num_hidden_layers=12,
    projection_dim=768,
    vocab_size=CLIP_VOCAB_SIZE,
)

SD15_SCHEDULER = {
    "_class_name": "PNDMScheduler",
    **_SCALED_LINEAR,
    "clip_sample": False,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
}

# --- LCM (SD 1.5 distilled) ----------------------------------------------------------------

# SimianLuo/LCM_Dreamshaper_v7: the SD 1.5 U-Net with a guidance-scale embedding input
# (``timestep_cond``, 256 wide) added to the time embedding, and its LCMScheduler config.
LCM_GUIDANCE_EMBED_DIM = 256
LCM_SD15_UNET = {**SD15_UNET, "time_cond_proj_dim": LCM_GUIDANCE_EMBED_DIM}

LCM_SCHEDULER = {
    "_class_name": "LCMScheduler",
    **_SCALED_LINEAR,
    "clip_sample": False,
    "clip_sample_range": 1.0,
    "dynamic_thresholding_ratio": 0.995,
    "original_inference_steps": 50,
    "prediction_type": "epsilon",
    "rescale_betas_zero_snr": False,
    "sample_max_value": 1.0,
    "set_alpha_to_one": True,
    "steps_offset": 1,
    "thresholding": False,
    "timestep_scaling": 10.0,
    "timestep_spacing": "leading",
}

# --- SD 2.1 ---------------------------------------------------------------------------------

SD21_UNET = {
    **SD15_UNET,
    "attention_head_dim": [5, 10, 20, 20],
    "cross_attention_dim": 1024,
    "dual_cross_attention": False,
    "num_class_embeds": None,
    "only_cross_attention": False,
    "sample_size": 96,
    "use_linear_projection": True,
}

SD21_VAE = {**SD15_VAE, "sample_size": 768}

# OpenCLIP ViT-H/14's text tower, without its last layer (SD 2 uses the penultimate one).
OPENCLIP_H_TEXT = _clip_text(
    architectures=["CLIPTextModel"],
    hidden_act="gelu",
    hidden_size=1024,
    intermediate_size=4096,
    num_attention_heads=16,
    num_hidden_layers=23,
    projection_dim=512,
    vocab_size=CLIP_VOCAB_SIZE,
)

SD21_SCHEDULER = {
    **SD15_SCHEDULER,
    "_class_name": "DDIMScheduler",
    "prediction_type": "v_prediction",
}

# --- SDXL base 1.0 --------------------------------------------------------------------------

SDXL_UNET = {
    "act_fn": "silu",
    "addition_embed_type": "text_time",
    "addition_embed_type_num_heads": 64,
    "addition_time_embed_dim": 256,
    "attention_head_dim": [5, 10, 20],
    "block_out_channels": [320, 640, 1280],
    "center_input_sample": False,
    "class_embed_type": None,
    "class_embeddings_concat": False,
    "conv_in_kernel": 3,
    "conv_out_kernel": 3,
    "cross_attention_dim": 2048,
    "cross_attention_norm": None,
    "down_block_types": _XL_DOWN_BLOCKS,
    "downsample_padding": 1,
    "dual_cross_attention": False,
    "encoder_hid_dim": None,
    "encoder_hid_dim_type": None,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "in_channels": 4,
    "layers_per_block": 2,
    "mid_block_only_cross_attention": None,
    "mid_block_scale_factor": 1,
    "mid_block_type": "UNetMidBlock2DCrossAttn",
    "norm_eps": 1e-05,
    "norm_num_groups": 32,
    "num_attention_heads": None,
    "num_class_embeds": None,
    "only_cross_attention": False,
    "out_channels": 4,
    "projection_class_embeddings_input_dim": 2816,
    "resnet_out_scale_factor": 1.0,
    "resnet_skip_time_act": False,
    "resnet_time_scale_shift": "default",
    "sample_size": 128,
    "time_cond_proj_dim": None,
    "time_embedding_act_fn": None,
    "time_embedding_dim": None,
    "time_embedding_type": "positional",
    "timestep_post_act": None,
    "transformer_layers_per_block": [1, 2, 10],
    "up_block_types": _XL_UP_BLOCKS,
    "upcast_attention": None,
    "use_linear_projection": True,
}

SDXL_VAE = {
    **SD15_VAE,
    "force_upcast": True,
    "sample_size": 1024,
    "scaling_factor": 0.13025,
}

# OpenCLIP ViT-bigG/14's text tower with its projection.
OPENCLIP_BIGG_TEXT = _clip_text(
    architectures=["CLIPTextModelWithProjection"],
    hidden_act="gelu",
    hidden_size=1280,
    intermediate_size=5120,
    num_attention_heads=20,
    num_hidden_layers=32,
    projection_dim=1280,
    vocab_size=CLIP_VOCAB_SIZE,
)

SDXL_SCHEDULER = {
    **SD15_SCHEDULER,
    "_class_name": "EulerDiscreteScheduler",
    "interpolation_type": "linear",
    "prediction_type": "epsilon",
    "sample_max_value": 1.0,
    "timestep_spacing": "leading",
    "use_karras_sigmas": False,
}

# --- Turbo (adversarial diffusion distillation) -------------------------------------------

# stabilityai/sd-turbo (SD 2.1 distilled, 512 px) and stabilityai/sdxl-turbo (SDXL distilled,
# 512 px): the architectures of their teachers at 512 px, and their scheduler configs
# (Euler and Euler a, both with trailing timesteps; written from the Hub files as we know
# them, not fetched here: no downloads). Their recipe (1 step, guidance 0; sdrt/recipes.py)
# is not in any config: init-model names it in model_index.json (``_sdrt_recipe``).
SD_TURBO_SCHEDULER = {
    **SD15_SCHEDULER,
    "_class_name": "EulerDiscreteScheduler",
    "interpolation_type": "linear",
    "prediction_type": "epsilon",
    "sample_max_value": 1.0,
    "timestep_spacing": "trailing",
    "use_karras_sigmas": False,
}
SDXL_TURBO_SCHEDULER = {**SD_TURBO_SCHEDULER, "_class_name": "EulerAncestralDiscreteScheduler"}
SD_TURBO_UNET = {**SD21_UNET, "sample_size": 64}
SD_TURBO_VAE = {**SD21_VAE, "sample_size": 512}
SDXL_TURBO_UNET = {**SDXL_UNET, "sample_size": 64}
SDXL_TURBO_VAE = {**SDXL_VAE, "sample_size": 512}

# --- tiny variants --------------------------------------------------------------------------

TINY_UNET = {
    **SD15_UNET,
    "attention_head_dim": 4,
    "block_out_channels": [32, 32, 64, 64],
    "cross_attention_dim": 32,
    "layers_per_block": 1,
    "norm_num_groups": 8,
    "sample_size": 8,
}

TINY_INPAINT_UNET = {**TINY_UNET, "in_channels": 9}

# A guidance embedding as narrow as the tiny U-Net's channels.
TINY_LCM_UNET = {**TINY_UNET, "time_cond_proj_dim": 8}

TINY_VAE = {
    **SD15_VAE,
    "block_out_channels": [16, 16, 32, 32],
    "layers_per_block": 1,
    "norm_num_groups": 8,
    "sample_size": 64,
}

TINY_TEXT = _clip_text(
    architectures=["CLIPTextModel"],
    hidden_act="quick_gelu",
    hidden_size=32,
    intermediate_size=64,
    num_attention_heads=4,
    num_hidden_layers=2,
    projection_dim=32,
    vocab_size=None,
)

# TINY_TEXT's widths in the shape of OpenCLIP bigG's tower (gelu, with its projection).
TINY_XL_TEXT_2 = {
    **TINY_TEXT,
    "architectures": ["CLIPTextModelWithProjection"],
    "hidden_act": "gelu",
}

_TINY_XL_TIME_EMBED_DIM = 8
TINY_XL_UNET = {
    **SDXL_UNET,
    "addition_time_embed_dim": _TINY_XL_TIME_EMBED_DIM,
    "attention_head_dim": [2, 4, 4],
    "block_out_channels": [32, 64, 64],
    # The two text encoders' hidden states are concatenated.
    "cross_attention_dim": TINY_TEXT["hidden_size"] + TINY_XL_TEXT_2["hidden_size"],
    "norm_num_groups": 8,
    # pooled text_encoder_2 output + 6 time ids (original size, crop, target size).
    "projection_class_embeddings_input_dim": TINY_XL_TEXT_2["projection_dim"]
    + 6 * _TINY_XL_TIME_EMBED_DIM,
    "sample_size": 8,
    "transformer_layers_per_block": [1, 1, 2],
}

TINY_XL_VAE = {**TINY_VAE, "force_upcast": True, "scaling_factor": 0.13025}

# --- LCM SDXL -------------------------------------------------------------------------------

# latent-consistency/lcm-sdxl: SDXL base's U-Net with LCM's guidance embedding (256 wide, as
# for SD 1.5). Its card runs it in a StableDiffusionXLPipeline with
# ``LCMScheduler.from_config(pipe.scheduler.config)``: LCMScheduler on SDXL's Euler config,
# whose leftover keys (interpolation_type, skip_prk_steps, use_karras_sigmas) a saved folder
# keeps, as the published copies of that scheduler config show.
LCM_SDXL_UNET = {**SDXL_UNET, "time_cond_proj_dim": LCM_GUIDANCE_EMBED_DIM}

LCM_SDXL_SCHEDULER = {
    **SDXL_SCHEDULER,
    "_class_name": "LCMScheduler",
    "clip_sample_range": 1.0,
    "dynamic_thresholding_ratio": 0.995,
    "original_inference_steps": 50,
    "rescale_betas_zero_snr": False,
    "thresholding": False,
    "timestep_scaling": 10.0,
}

TINY_LCM_XL_UNET = {**TINY_XL_UNET, "time_cond_proj_dim": TINY_LCM_UNET["time_cond_proj_dim"]}


# --- the catalogue --------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Component:
    """One folder of the pipeline: which library class makes it, from which config."""

    library: str  # "diffusers" or "transformers", as in model_index.json
    class_name: str
    config: MappingProxyType


@dataclasses.dataclass(frozen=True)
class Tokenizer:
    """A tokenizer folder; SD 2.x and SDXL's second tokenizer pad with "!" instead of EOS."""

    pad_token: str


@dataclasses.dataclass(frozen=True)
class Architecture:
    name: str
    description: str
    pipeline_class: str
    scheduler: MappingProxyType
    components: MappingProxyType  # folder name -> Component (text encoders, unet, vae)
    tokenizers: MappingProxyType  # folder name -> Tokenizer
    pipeline_options: MappingProxyType  # extra model_index.json entries
    # The recipe (a name in sdrt/recipes.py) its configs do not tell, written into
    # model_index.json for `sdrt build` to record; None: none, or the configs tell it (LCM).
    recipe: str | None = None


def _frozen(mapping: dict[str, Any]) -> MappingProxyType:
    return MappingProxyType(dict(mapping))


def _architecture(
    name: str,
    description: str,
    pipeline_class: str,
    scheduler: dict[str, Any],
    components: dict[str, tuple[str, str, dict[str, Any]]],
    tokenizers: dict[str, str],
    pipeline_options: dict[str, Any],
    recipe: str | None = None,
) -> Architecture:
    return Architecture(
        name=name,
        description=description,
        pipeline_class=pipeline_class,
        scheduler=_frozen(scheduler),
        components=_frozen(
            {
                folder: Component(library, class_name, _frozen(config))
                for folder, (library, class_name, config) in components.items()
            }
        ),
        tokenizers=_frozen({folder: Tokenizer(pad) for folder, pad in tokenizers.items()}),
        pipeline_options=_frozen(pipeline_options),
        recipe=recipe,
    )


# SD 1.x/2.x pipelines on the Hub carry a safety checker; ours have none and say so.
_NO_SAFETY_CHECKER = {
    "feature_extractor": [None, None],
    "requires_safety_checker": False,
    "safety_checker": [None, None],
}
_XL_OPTIONS = {"force_zeros_for_empty_prompt": True}


_EOS_PAD = "<|endoftext|>"
_BANG_PAD = "!"


def _sd(
    name: str,
    description: str,
    scheduler: dict[str, Any],
    unet: dict[str, Any],
    vae: dict[str, Any],
    text: dict[str, Any],
    *,
    pipeline_class: str = "StableDiffusionPipeline",
    tokenizer_pad: str = _EOS_PAD,
    recipe: str | None = None,
) -> Architecture:
    """An SD 1.x/2.x pipeline: one CLIP text encoder, a U-Net, a VAE, no safety checker."""
    return _architecture(
        name,
        description,
        pipeline_class,
        scheduler,
        {
            "text_encoder": ("transformers", "CLIPTextModel", text),
            "unet": ("diffusers", "UNet2DConditionModel", unet),
            "vae": ("diffusers", "AutoencoderKL", vae),
        },
        {"tokenizer": tokenizer_pad},
        _NO_SAFETY_CHECKER,
        recipe,
    )


def _xl(
    name: str,
    description: str,
    unet: dict[str, Any],
    vae: dict[str, Any],
    text: dict[str, Any],
    text_2: dict[str, Any],
    *,
    scheduler: dict[str, Any] = SDXL_SCHEDULER,
    recipe: str | None = None,
) -> Architecture:
    """An SDXL pipeline: two text encoders (the second with its projection), a U-Net, a VAE."""
    return _architecture(
        name,
        description,
        "StableDiffusionXLPipeline",
        scheduler,
        {
            "text_encoder": ("transformers", "CLIPTextModel", text),
            "text_encoder_2": ("transformers", "CLIPTextModelWithProjection", text_2),
            "unet": ("diffusers", "UNet2DConditionModel", unet),
            "vae": ("diffusers", "AutoencoderKL", vae),
        },
        {"tokenizer": _EOS_PAD, "tokenizer_2": _BANG_PAD},
        _XL_OPTIONS,
        recipe,
    )


ARCHITECTURES: MappingProxyType = _frozen(
    {
        arch.name: arch
        for arch in [
            _sd(
                "sd15",
                "Stable Diffusion 1.5 (runwayml/stable-diffusion-v1-5), 512 px",
                SD15_SCHEDULER,
                SD15_UNET,
                SD15_VAE,
                CLIP_VIT_L_TEXT,
            ),
            _sd(
                "lcm-sd15",
                "SD 1.5 distilled to a latent consistency model (SimianLuo/LCM_Dreamshaper_v7): "
                "guidance embedding, LCMScheduler, 512 px",
                LCM_SCHEDULER,
                LCM_SD15_UNET,
                SD15_VAE,
                CLIP_VIT_L_TEXT,
                pipeline_class="LatentConsistencyModelPipeline",
            ),
            _sd(
                "sd21",
                "Stable Diffusion 2.1 (stabilityai/stable-diffusion-2-1), v-prediction, 768 px",
                SD21_SCHEDULER,
                SD21_UNET,
                SD21_VAE,
                OPENCLIP_H_TEXT,
                tokenizer_pad=_BANG_PAD,
            ),
            _xl(
                "sdxl",
                "Stable Diffusion XL base 1.0 (stabilityai/stable-diffusion-xl-base-1.0), 1024 px",
                SDXL_UNET,
                SDXL_VAE,
                CLIP_VIT_L_TEXT,
                OPENCLIP_BIGG_TEXT,
            ),
            _sd(
                "tiny",
                "SD 1.5 block structure with small widths, 64 px (for tests)",
                SD15_SCHEDULER,
                TINY_UNET,
                TINY_VAE,
                TINY_TEXT,
            ),
            _sd(
                "tiny-inpaint",
                "tiny with a 9-channel inpainting U-Net, 64 px (for tests)",
                SD15_SCHEDULER,
                TINY_INPAINT_UNET,
                TINY_VAE,
                TINY_TEXT,
                pipeline_class="StableDiffusionInpaintPipeline",
            ),
            _sd(
                "tiny-lcm",
                "tiny with an LCM U-Net (guidance embedding) and LCMScheduler, 64 px (for tests)",
                LCM_SCHEDULER,
                TINY_LCM_UNET,
                TINY_VAE,
                TINY_TEXT,
                pipeline_class="LatentConsistencyModelPipeline",
            ),
            _xl(
                "tiny-xl",
                "SDXL block structure with small widths, two text encoders, 64 px (for tests)",
                TINY_XL_UNET,
                TINY_XL_VAE,
                TINY_TEXT,
                TINY_XL_TEXT_2,
            ),
            # diffusers has no LCM SDXL pipeline class: StableDiffusionXLPipeline runs it
            # (no CFG batch where the U-Net has time_cond_proj_dim).
            _xl(
                "lcm-sdxl",
                "SDXL base distilled to a latent consistency model (latent-consistency/lcm-sdxl): "
                "guidance embedding, LCMScheduler, 1024 px",
                LCM_SDXL_UNET,
                SDXL_VAE,
                CLIP_VIT_L_TEXT,
                OPENCLIP_BIGG_TEXT,
                scheduler=LCM_SDXL_SCHEDULER,
            ),
            _xl(
                "tiny-lcm-xl",
                "tiny-xl with an LCM U-Net (guidance embedding) and LCMScheduler, 64 px (for tests)",
                TINY_LCM_XL_UNET,
                TINY_XL_VAE,
                TINY_TEXT,
                TINY_XL_TEXT_2,
                scheduler=LCM_SDXL_SCHEDULER,
            ),
            _sd(
                "sd-turbo",
                "SD-Turbo (stabilityai/sd-turbo): SD 2.1 distilled, Euler trailing, 512 px; "
                "recipe sd-turbo (1 step, guidance 0)",
                SD_TURBO_SCHEDULER,
                SD_TURBO_UNET,
                SD_TURBO_VAE,
                OPENCLIP_H_TEXT,
                tokenizer_pad=_BANG_PAD,
                recipe="sd-turbo",
            ),
            _xl(
                "sdxl-turbo",
                "SDXL-Turbo (stabilityai/sdxl-turbo): SDXL distilled, Euler a trailing, 512 px; "
                "recipe sdxl-turbo (1 step, guidance 0)",
                SDXL_TURBO_UNET,
                SDXL_TURBO_VAE,
                CLIP_VIT_L_TEXT,
                OPENCLIP_BIGG_TEXT,
                scheduler=SDXL_TURBO_SCHEDULER,
                recipe="sdxl-turbo",
            ),
            _sd(
                "tiny-turbo",
                "tiny with SD-Turbo's scheduler config and recipe, 64 px (for tests)",
                SD_TURBO_SCHEDULER,
                TINY_UNET,
                TINY_VAE,
                TINY_TEXT,
                recipe="sd-turbo",
            ),
            _xl(
                "tiny-xl-turbo",
                "tiny-xl with SDXL-Turbo's scheduler config and recipe, 64 px (for tests)",
                TINY_XL_UNET,
                TINY_XL_VAE,
                TINY_TEXT,
                TINY_XL_TEXT_2,
                scheduler=SDXL_TURBO_SCHEDULER,
                recipe="sdxl-turbo",
            ),
        ]
    }
)
