"""kohya's SDXL LoRA files name U-Net modules in the SGM (original LDM) layout; this maps
them to diffusers' block names, as diffusers' ``_maybe_map_sgm_blocks_to_diffusers`` does
(``loaders/lora_conversion_utils.py``). kohya's sd-scripts train SDXL on that U-Net::

    input_blocks_4_1_transformer_blocks_0_attn1_to_q
        -> down_blocks_1_attentions_0_transformer_blocks_0_attn1_to_q
    middle_block_1_proj_in      -> mid_block_attentions_0_proj_in
    output_blocks_3_1_proj_out  -> up_blocks_1_attentions_0_proj_out

with ``layers_per_block`` (L) from the U-Net's config: ``input_blocks_i_k`` is level
``(i-1) // (L+1)``, layer ``(i-1) % (L+1)``, kind ``k`` (0 resnets, 1 attentions; ``_op``
is the level's downsampler); ``output_blocks_i_k`` is level ``i // (L+1)``, layer
``i % (L+1)`` (kind 2, the upsampler, is layer 0); ``middle_block_0/1/2`` are resnet 0,
attention 0, resnet 1. A transformer block's inner names are the same in both layouts; a
ResNet's and a sampler's are renamed as diffusers' ``_convert_unet_lora_key`` renames them
(``in_layers_2`` conv1, ``out_layers_3`` conv2, ``emb_layers_1`` time_emb_proj,
``skip_connection`` conv_shortcut, ``op`` the downsampler's conv), and so are the modules
outside the blocks (``input_blocks_0_0`` conv_in, ``out_2`` conv_out, ``time_embed_0/2``
and ``label_emb_0_0/0_2`` the time and added-condition embeddings' linear_1/2): what
distillation LoRAs (SDXL-Lightning, Hyper-SD) and LoCon train, which a folder built
``--lora-ready all`` takes at run time.

diffusers maps only in SDXL pipelines (its SD 1.x and 2.x ones fail on such files), and in
a file that also has diffusers-layout U-Net names it drops the SGM ones; so does this.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

from sdrt.adapters.lora_files import LoraFile, LoraModule
from sdrt.errors import InputError, ModelFolderError

log = logging.getLogger(__name__)

SGM_BLOCKS = ("input_blocks", "middle_block", "output_blocks")
DIFFUSERS_BLOCKS = ("down_blocks", "mid_block", "up_blocks")
INNER_KINDS = ("resnets", "attentions", "upsamplers")  # an SGM block's inner index
MIDDLE_LAYERS = {0: ("resnets", 0), 1: ("attentions", 0), 2: ("resnets", 1)}
CONV_IN = "input_blocks_0_0"  # conv_in: outside the level structure
DOWNSAMPLER = "op"
# A ResNet's modules, SGM -> diffusers (inside a mapped block's name).
RESNET_NAMES = {
    "in_layers_2": "conv1",
    "out_layers_3": "conv2",
    "emb_layers_1": "time_emb_proj",
    "skip_connection": "conv_shortcut",
}
# Modules outside the blocks, SGM -> diffusers (whole names).
OUTSIDE_BLOCKS = {
    CONV_IN: "conv_in",
    "out_2": "conv_out",
    "time_embed_0": "time_embedding_linear_1",
    "time_embed_2": "time_embedding_linear_2",
    "label_emb_0_0": "add_embedding_linear_1",
    "label_emb_0_2": "add_embedding_linear_2",
}


def uses_sgm_blocks(lora: LoraFile) -> bool:
    """Whether any U-Net module of a kohya file is named in the SGM layout."""
    return lora.layout == "kohya" and any(is_sgm_module(m) for m in lora.modules)


def is_sgm_module(module: LoraModule) -> bool:
    return module.component == "unet" and module.key.startswith(SGM_BLOCKS)


def layers_per_block(unet_config: Path) -> int:
    """The U-Net's ``layers_per_block`` from its config.json (what diffusers maps with)."""
    try:
        value = json.loads(unet_config.read_text())["layers_per_block"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ModelFolderError(
            f"{unet_config}: needed for kohya SDXL LoRA names in the SGM layout (its "
            f"layers_per_block), but it cannot be read ({type(e).__name__}: {e})"
        ) from None
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ModelFolderError(
            f"{unet_config}: expected layers_per_block a positive integer to map kohya SGM "
            f"LoRA names, got {value!r}"
        )
    return value


def map_sgm_blocks(lora: LoraFile, layers_per_block: int) -> LoraFile:
    """``lora`` with its SGM-layout U-Net modules renamed to diffusers' layout (each keeps
    the file's name in ``file_key``); InputError naming the file and key for a block index
    that no U-Net has."""
    if any(m.component == "unet" and m.key.startswith(DIFFUSERS_BLOCKS) for m in lora.modules):
        dropped = [m.key for m in lora.modules if is_sgm_module(m)]
        log.warning(
            "%s: %d U-Net modules in the SGM layout ignored, as diffusers ignores them in a "
            "file that also has diffusers-layout names (first: %s)",
            lora.path,
            len(dropped),
            dropped[0],
        )
        kept = tuple(m for m in lora.modules if not is_sgm_module(m))
        return dataclasses.replace(lora, modules=kept)
    modules = tuple(_mapped_module(lora, m, layers_per_block) for m in lora.modules)
    return dataclasses.replace(lora, modules=modules)


def _mapped_module(lora: LoraFile, module: LoraModule, layers_per_block: int) -> LoraModule:
    if module.component != "unet":
        return module
    if module.key in OUTSIDE_BLOCKS:
        return _renamed(module, [OUTSIDE_BLOCKS[module.key]])
    if not is_sgm_module(module):
        return module
    mapped = _mapped(lora, module, layers_per_block)
    for sgm, diffusers in RESNET_NAMES.items():
        if mapped.key.endswith("_" + sgm) and "_resnets_" in mapped.key:
            key = mapped.key[: -len(sgm)] + diffusers
            return dataclasses.replace(mapped, key=key)
    return mapped


def _mapped(lora: LoraFile, module: LoraModule, layers_per_block: int) -> LoraModule:
    key = module.key
    parts = key.split("_")  # e.g. input, blocks, 4, 1, transformer, blocks, 0, ...
    per_level = layers_per_block + 1  # SGM blocks per level: its layers and a sampler

    def bad(why: str) -> InputError:
        return InputError(
            f"{lora.path}: module {'lora_unet_' + key!r} names no block of an SDXL U-Net "
            f"with layers_per_block {layers_per_block} ({why})"
        )

    block = _index(parts, 2)
    if block is None:
        raise bad("expected a block number after the block name")
    if parts[0] == "middle":
        if block not in MIDDLE_LAYERS:
            raise bad(f"middle_block has blocks {sorted(MIDDLE_LAYERS)}")
        kind, layer = MIDDLE_LAYERS[block]
        return _renamed(module, ["mid", "block", kind, str(layer), *parts[3:]])
    inner = _index(parts, 3)
    if inner is None or inner >= len(INNER_KINDS):
        raise bad(f"expected an inner index 0 to {len(INNER_KINDS) - 1} after the block number")
    if parts[0] == "input":
        if block < 1:
            raise bad("input_blocks_0 is conv_in")
        level, layer = divmod(block - 1, per_level)
        kind, rest = INNER_KINDS[inner], parts[4:]
        if rest == [DOWNSAMPLER]:  # the level's downsampler: diffusers' downsamplers.0.conv
            kind, layer, rest = "downsamplers", 0, ["conv"]
        return _renamed(module, ["down", "blocks", str(level), kind, str(layer), *rest])
    level, layer = divmod(block, per_level)
    kind = INNER_KINDS[inner]
    if kind == "upsamplers":
        layer = 0
    return _renamed(module, ["up", "blocks", str(level), kind, str(layer), *parts[4:]])


def _index(parts: list[str], position: int) -> int | None:
    if position < len(parts) and parts[position].isdigit():
        return int(parts[position])
    return None


def _renamed(module: LoraModule, parts: list[str]) -> LoraModule:
    return dataclasses.replace(module, key="_".join(parts), file_key=module.key)
