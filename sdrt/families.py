"""Which Stable Diffusion family a pipeline is, from its component configs (no weights).

Shared by ``sdrt build`` (diffusers folders) and ``sdrt adopt`` (ONNX folders, whose
component configs Optimum copies from the diffusers source).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sdrt.errors import InputError

# model_index.json classes we export; anything else is a different model family.
SUPPORTED_PIPELINES = {
    "StableDiffusionPipeline": "sd",
    "StableDiffusionImg2ImgPipeline": "sd",
    "StableDiffusionInpaintPipeline": "sd",
    # LCM-distilled SD 1.5: the U-Net takes a guidance embedding (sdrt/guidance_embedding.py).
    "LatentConsistencyModelPipeline": "sd",
    "LatentConsistencyModelImg2ImgPipeline": "sd",
    "StableDiffusionXLPipeline": "sdxl",
    "StableDiffusionXLImg2ImgPipeline": "sdxl",
    "StableDiffusionXLInpaintPipeline": "sdxl",
}


# Pipelines that feed the U-Net LCM's guidance embedding unconditionally (diffusers'
# get_guidance_scale_embedding with the config's time_cond_proj_dim, which must be set).
GUIDANCE_EMBEDDING_PIPELINES = (
    "LatentConsistencyModelPipeline",
    "LatentConsistencyModelImg2ImgPipeline",
)


def check_guidance_embedding_unet(
    pipeline_class: str, unet_config: Mapping[str, Any], *, where: str
) -> None:
    """InputError for an LCM pipeline diffusers' LatentConsistencyModelPipeline cannot run:
    an SDXL U-Net (an LCM SDXL folder is a StableDiffusionXLPipeline, as
    latent-consistency/lcm-sdxl's card makes it), or a U-Net without a guidance embedding
    (the pipeline embeds the guidance scale at a width of None). A plain U-Net with
    LCMScheduler belongs in a StableDiffusion(XL)Pipeline folder, which runs it with
    classifier-free guidance (as for LCM-LoRA)."""
    if pipeline_class not in GUIDANCE_EMBEDDING_PIPELINES:
        return
    if unet_config.get("addition_embed_type") == "text_time":
        raise InputError(
            f"{where!r}: a {pipeline_class} expects an SD 1.x U-Net; this one is SDXL's "
            "(addition_embed_type 'text_time'). An LCM SDXL folder is a "
            "StableDiffusionXLPipeline: make that model_index.json's _class_name"
        )
    if not unet_config.get("time_cond_proj_dim"):
        raise InputError(
            f"{where!r}: a {pipeline_class} expects an LCM-distilled U-Net (unet/config.json "
            "time_cond_proj_dim, the width of its guidance embedding); this U-Net has none. "
            "For a plain U-Net with LCMScheduler, make model_index.json's _class_name "
            "StableDiffusionPipeline"
        )


def detect_family(configs: Mapping[str, Mapping[str, Any]], *, is_xl: bool, where: str) -> str:
    """sdxl from the U-Net's text_time embedding; sd2 (OpenCLIP, gelu) vs sd1 (CLIP, quick_gelu)."""
    unet = configs["unet"]
    embed = unet.get("addition_embed_type")
    if is_xl:
        if embed != "text_time":
            raise InputError(
                f"{where!r}: an SDXL pipeline whose U-Net has addition_embed_type {embed!r}, "
                "not 'text_time', is not supported"
            )
        return "sdxl"
    if embed is not None:
        raise InputError(
            f"{where!r}: a U-Net with addition_embed_type {embed!r} is not a supported SD 1.x/2.x U-Net"
        )
    hidden_act = configs["text_encoder"].get("hidden_act", "quick_gelu")
    return "sd2" if hidden_act == "gelu" else "sd1"
