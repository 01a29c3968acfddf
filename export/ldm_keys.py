"""diffusers -> original (LDM/A1111) key layout: the reverse of diffusers' single-file loading.

A port of what diffusers' ``scripts/convert_diffusers_to_original_stable_diffusion.py`` and
``convert_diffusers_to_original_sdxl.py`` do, driven by the component configs instead of
SD 1.5's fixed block counts, so that the tiny architectures convert too. It exists so that
``sdrt init-model --single-file`` can write single-file checkpoints for the tests; the
tests check that diffusers' own forward conversion of its output gives back every tensor.

Layout of a file (prefixes as in the published checkpoints):

    model.diffusion_model.        U-Net
    first_stage_model.            VAE
    cond_stage_model.transformer. SD 1.x CLIP ViT-L text encoder (transformers' key names)
    cond_stage_model.model.       SD 2.x OpenCLIP ViT-H text encoder (OpenCLIP key names)
    conditioner.embedders.0.transformer.  SDXL CLIP ViT-L
    conditioner.embedders.1.model.        SDXL OpenCLIP ViT-bigG (with its projection)
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
# Text encoder folder -> (prefix, key style) per family.
TEXT_ENCODER_LAYOUT = {
    "sd1": {"text_encoder": ("cond_stage_model.transformer.", "clip")},
    "sd2": {"text_encoder": ("cond_stage_model.model.", "open_clip")},
    "sdxl": {
        "text_encoder": ("conditioner.embedders.0.transformer.", "clip"),
        "text_encoder_2": ("conditioner.embedders.1.model.", "open_clip"),
    },
}

_UNET_TOP = {
    "time_embedding.linear_1.": "time_embed.0.",
    "time_embedding.linear_2.": "time_embed.2.",
    "add_embedding.linear_1.": "label_emb.0.0.",  # SDXL's text_time embedding
    "add_embedding.linear_2.": "label_emb.0.2.",
    "conv_in.": "input_blocks.0.0.",
    "conv_norm_out.": "out.0.",
    "conv_out.": "out.2.",
}
_UNET_RESNET = {
    "norm1.": "in_layers.0.",
    "conv1.": "in_layers.2.",
    "time_emb_proj.": "emb_layers.1.",
    "norm2.": "out_layers.0.",
    "conv2.": "out_layers.3.",
    "conv_shortcut.": "skip_connection.",
}
_VAE_TOP = {
    "encoder.conv_norm_out.": "encoder.norm_out.",
    "decoder.conv_norm_out.": "decoder.norm_out.",
    "encoder.mid_block.resnets.0.": "encoder.mid.block_1.",
    "encoder.mid_block.resnets.1.": "encoder.mid.block_2.",
    "encoder.mid_block.attentions.0.": "encoder.mid.attn_1.",
    "decoder.mid_block.resnets.0.": "decoder.mid.block_1.",
    "decoder.mid_block.resnets.1.": "decoder.mid.block_2.",
    "decoder.mid_block.attentions.0.": "decoder.mid.attn_1.",
}
_VAE_ATTENTION = {
    "group_norm.": "norm.",
    "to_q.": "q.",
    "to_k.": "k.",
    "to_v.": "v.",
    "to_out.0.": "proj_out.",
}
_OPEN_CLIP_LAYER = {
    "self_attn.out_proj.": "attn.out_proj.",
    "layer_norm1.": "ln_1.",
    "layer_norm2.": "ln_2.",
    "mlp.fc1.": "mlp.c_fc.",
    "mlp.fc2.": "mlp.c_proj.",
}


def _int_config(config: Mapping[str, Any], key: str) -> int:
    value = config[key]
    if not isinstance(value, int):
        raise ValueError(f"only an integer {key} converts to the LDM layout, got {value!r}")
    return value


def _unet_block_prefixes(config: Mapping[str, Any]) -> dict[str, tuple[str, bool]]:
    """diffusers block prefix -> (LDM prefix, whether it is a resnet) for every block."""
    per_level = _int_config(config, "layers_per_block") + 1  # LDM blocks per level
    levels = len(config["block_out_channels"])
    down, up = config["down_block_types"], config["up_block_types"]
    prefixes: dict[str, tuple[str, bool]] = {}
    for i in range(levels):
        for j in range(per_level - 1):
            block = per_level * i + j + 1
            prefixes[f"down_blocks.{i}.resnets.{j}."] = (f"input_blocks.{block}.0.", True)
            if "CrossAttn" in down[i]:
                prefixes[f"down_blocks.{i}.attentions.{j}."] = (f"input_blocks.{block}.1.", False)
        if i < levels - 1:
            prefixes[f"down_blocks.{i}.downsamplers.0.conv."] = (
                f"input_blocks.{per_level * (i + 1)}.0.op.",
                False,
            )
        for j in range(per_level):
            block = per_level * i + j
            prefixes[f"up_blocks.{i}.resnets.{j}."] = (f"output_blocks.{block}.0.", True)
            if "CrossAttn" in up[i]:
                prefixes[f"up_blocks.{i}.attentions.{j}."] = (f"output_blocks.{block}.1.", False)
        if i < levels - 1:
            # The up-sampler follows the level's last resnet (and its attention, if any).
            index = 2 if "CrossAttn" in up[i] else 1
            prefixes[f"up_blocks.{i}.upsamplers.0."] = (
                f"output_blocks.{per_level * i + per_level - 1}.{index}.",
                False,
            )
    prefixes["mid_block.resnets.0."] = ("middle_block.0.", True)
    prefixes["mid_block.attentions.0."] = ("middle_block.1.", False)
    prefixes["mid_block.resnets.1."] = ("middle_block.2.", True)
    return prefixes


def _rename(key: str, table: Mapping[str, str]) -> str | None:
    """``key`` with the first matching prefix of ``table`` replaced, or None."""
    for old, new in table.items():
        if key.startswith(old):
            return new + key[len(old) :]
    return None


def unet_to_ldm(state_dict: Mapping[str, Any], config: Mapping[str, Any]) -> dict[str, Any]:
    """A diffusers UNet2DConditionModel state dict in the LDM layout (with its prefix)."""
    blocks = _unet_block_prefixes(config)
    out = {}
    for key, tensor in state_dict.items():
        new = _rename(key, _UNET_TOP)
        if new is None:
            block = next((p for p in blocks if key.startswith(p)), None)
            if block is None:
                raise ValueError(f"U-Net key {key!r} has no place in the LDM layout")
            ldm_block, is_resnet = blocks[block]
            rest = key[len(block) :]
            if is_resnet:
                rest = _rename(rest, _UNET_RESNET) or rest
            new = ldm_block + rest
        out[UNET_PREFIX + new] = tensor
    return out


def vae_to_ldm(state_dict: Mapping[str, Any], config: Mapping[str, Any]) -> dict[str, Any]:
    """A diffusers AutoencoderKL state dict in the LDM layout; attention projections become
    the 1x1 convolutions the original VAE has."""
    levels = len(config["block_out_channels"])
    out = {}
    for key, tensor in state_dict.items():
        new = _rename(key, _VAE_TOP) or key
        new = re.sub(r"^encoder\.down_blocks\.(\d+)\.resnets\.", r"encoder.down.\1.block.", new)
        new = re.sub(
            r"^encoder\.down_blocks\.(\d+)\.downsamplers\.0\.", r"encoder.down.\1.downsample.", new
        )
        match = re.match(r"^decoder\.up_blocks\.(\d+)\.(resnets|upsamplers\.0)\.", new)
        if match:  # the original numbers decoder levels from the lowest resolution up
            level = levels - 1 - int(match.group(1))
            part = "block." if match.group(2) == "resnets" else "upsample."
            new = f"decoder.up.{level}.{part}" + new[match.end() :]
        new = new.replace(".conv_shortcut.", ".nin_shortcut.")
        if ".attn_1." in new:
            head, _, tail = new.partition(".attn_1.")
            tail = _rename(tail, _VAE_ATTENTION) or tail
            new = f"{head}.attn_1.{tail}"
            if tail.endswith("weight") and not tail.startswith("norm.") and tensor.dim() == 2:
                tensor = tensor.reshape(*tensor.shape, 1, 1)
        out[VAE_PREFIX + new] = tensor
    return out


def _text_model_keys(state_dict: Mapping[str, Any]) -> dict[str, Any]:
    """transformers' CLIP keys with the ``text_model.`` level that CLIPTextModel flattened in
    transformers 5; buffers (position_ids) left out, as the published files mostly do."""
    out = {}
    for key, tensor in state_dict.items():
        if key.endswith("position_ids"):
            continue
        if not key.startswith(("text_model.", "text_projection.")):
            key = "text_model." + key
        out[key] = tensor
    return out


def clip_to_ldm(state_dict: Mapping[str, Any], prefix: str) -> dict[str, Any]:
    """A CLIP ViT-L text encoder: transformers' key names under ``prefix``."""
    return {prefix + key: tensor for key, tensor in _text_model_keys(state_dict).items()}


def open_clip_to_ldm(state_dict: Mapping[str, Any], prefix: str) -> dict[str, Any]:
    """An OpenCLIP text tower: fused q/k/v (in_proj), OpenCLIP names, the projection
    transposed (OpenCLIP multiplies by it from the right)."""
    import torch

    keys = _text_model_keys(state_dict)
    out = {}
    fused: dict[str, dict[str, Any]] = {}
    for key, tensor in keys.items():
        if key == "text_projection.weight":
            out[prefix + "text_projection"] = tensor.T.contiguous()
            continue
        top = {
            "text_model.embeddings.position_embedding.weight": "positional_embedding",
            "text_model.embeddings.token_embedding.weight": "token_embedding.weight",
            "text_model.final_layer_norm.weight": "ln_final.weight",
            "text_model.final_layer_norm.bias": "ln_final.bias",
        }
        if key in top:
            out[prefix + top[key]] = tensor
            continue
        match = re.match(r"^text_model\.encoder\.layers\.(\d+)\.(.*)$", key)
        if match is None:
            raise ValueError(f"text encoder key {key!r} has no place in the OpenCLIP layout")
        layer, rest = match.groups()
        base = f"{prefix}transformer.resblocks.{layer}."
        qkv = re.match(r"^self_attn\.([qkv])_proj\.(weight|bias)$", rest)
        if qkv:
            fused.setdefault(f"{base}attn.in_proj_{qkv.group(2)}", {})[qkv.group(1)] = tensor
            continue
        renamed = _rename(rest, _OPEN_CLIP_LAYER)
        if renamed is None:
            raise ValueError(f"text encoder key {key!r} has no place in the OpenCLIP layout")
        out[base + renamed] = tensor
    for key, parts in fused.items():
        out[key] = torch.cat([parts["q"], parts["k"], parts["v"]], dim=0)
    return out


def pipeline_to_ldm(
    family: str,
    state_dicts: Mapping[str, Mapping[str, Any]],
    configs: Mapping[str, Mapping[str, Any]],
) -> dict[str, Any]:
    """One LDM-layout state dict from the pipeline's component state dicts (folder names:
    unet, vae, text_encoder(, text_encoder_2))."""
    out = unet_to_ldm(state_dicts["unet"], configs["unet"])
    out |= vae_to_ldm(state_dicts["vae"], configs["vae"])
    for name, (prefix, style) in TEXT_ENCODER_LAYOUT[family].items():
        convert = clip_to_ldm if style == "clip" else open_clip_to_ldm
        out |= convert(state_dicts[name], prefix)
    return out
