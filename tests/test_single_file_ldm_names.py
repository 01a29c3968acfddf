"""The key names ``init-model --single-file`` writes are the original (LDM) layout's own.

diffusers' single-file converter also accepts some diffusers names inside an LDM file (a
U-Net resnet's ``conv_shortcut`` where the layout says ``skip_connection``, the VAE's
``conv_shortcut`` for ``nin_shortcut``), so reading a file back through it cannot tell a
half-converted file from a right one. These tests check the names themselves: every key of
a written file against a grammar of the LDM layout (the module names of CompVis'
``ldm.modules.diffusionmodules`` and the text encoders' published names), and the full-size
SD 1.5 conversion against key names of the published v1-5 checkpoint.
"""

from __future__ import annotations

import re

import pytest
from sdrt.export.single_file_writer import LOCAL_TOKENIZER, TOKENIZER_KEY, write_single_file

torch = pytest.importorskip("torch")
safetensors = pytest.importorskip("safetensors")

_PARAM = r"\.(weight|bias)"
# openaimodel.UNetModel: ResBlock (in_layers, emb_layers, out_layers, skip_connection),
# SpatialTransformer (norm, proj_in/out, transformer_blocks), Downsample.op, Upsample.conv.
_UNET_BLOCK = (
    r"(in_layers\.[02]|emb_layers\.1|out_layers\.[03]|skip_connection|op|conv|norm|proj_in"
    r"|proj_out|transformer_blocks\.\d+\.(attn[12]\.(to_[qkv]|to_out\.0)|norm[123]"
    r"|ff\.net\.(0\.proj|2)))"
)
UNET = re.compile(
    r"model\.diffusion_model\.("
    r"time_embed\.[02]|label_emb\.0\.[02]|out\.[02]|input_blocks\.0\.0"
    rf"|(input_blocks\.\d+|output_blocks\.\d+)\.\d+\.{_UNET_BLOCK}"
    rf"|middle_block\.[012]\.{_UNET_BLOCK}"
    rf"){_PARAM}"
)
# model.Encoder / model.Decoder: ResnetBlock (norm1/2, conv1/2, nin_shortcut), AttnBlock
# (norm, q, k, v, proj_out), Downsample.conv / Upsample.conv.
_VAE_RESNET = r"(norm[12]|conv[12]|nin_shortcut)"
VAE = re.compile(
    r"first_stage_model\.("
    r"(post_)?quant_conv"
    r"|(encoder|decoder)\.(conv_in|conv_out|norm_out)"
    rf"|encoder\.down\.\d+\.(block\.\d+\.{_VAE_RESNET}|downsample\.conv)"
    rf"|decoder\.up\.\d+\.(block\.\d+\.{_VAE_RESNET}|upsample\.conv)"
    rf"|(encoder|decoder)\.mid\.(block_[12]\.{_VAE_RESNET}|attn_1\.(norm|q|k|v|proj_out))"
    rf"){_PARAM}"
)
# transformers' CLIPTextModel names (SD 1.x, SDXL's first encoder) and OpenCLIP's (SD 2.x,
# SDXL's second).
_CLIP = (
    r"text_model\.(embeddings\.(token|position)_embedding\.weight|final_layer_norm"
    rf"{_PARAM}|encoder\.layers\.\d+\.(self_attn\.[qkv]_proj|self_attn\.out_proj"
    rf"|layer_norm[12]|mlp\.fc[12]){_PARAM})"
)
_OPEN_CLIP = (
    r"(positional_embedding|text_projection|token_embedding\.weight|ln_final"
    rf"{_PARAM}|transformer\.resblocks\.\d+\.(attn\.in_proj_(weight|bias)|(attn\.out_proj"
    rf"|ln_[12]|mlp\.c_fc|mlp\.c_proj){_PARAM}))"
)
TEXT = re.compile(
    rf"cond_stage_model\.transformer\.{_CLIP}|cond_stage_model\.model\.{_OPEN_CLIP}"
    rf"|conditioner\.embedders\.0\.transformer\.{_CLIP}"
    rf"|conditioner\.embedders\.1\.model\.{_OPEN_CLIP}"
)


def _not_ldm_names(keys) -> list[str]:
    return sorted(k for k in keys if not any(p.fullmatch(k) for p in (UNET, VAE, TEXT)))


@pytest.mark.parametrize("source", ["tiny_source", "tiny_xl_source"])
def test_every_written_key_is_an_ldm_name(source, request, tmp_path):
    from safetensors import safe_open

    folder = request.getfixturevalue(source)
    path = write_single_file(
        folder, tmp_path / "model.safetensors", {TOKENIZER_KEY: LOCAL_TOKENIZER}
    )
    with safe_open(str(path), "pt") as handle:
        keys = list(handle.keys())
    assert _not_ldm_names(keys) == []
    # The tiny architectures change width between levels: the shortcuts must be there,
    # under their LDM names (the grammar alone would pass a file that dropped them).
    assert any(k.endswith(".0.skip_connection.weight") for k in keys)
    assert any(".nin_shortcut." in k for k in keys)


# Keys of the published SD 1.5 checkpoint (v1-5-pruned-emaonly), one of each kind that the
# conversion renames: level changes (skip_connection, nin_shortcut), samplers, attention.
SD15_PUBLISHED_KEYS = (
    "model.diffusion_model.time_embed.0.weight",
    "model.diffusion_model.input_blocks.0.0.weight",
    "model.diffusion_model.input_blocks.1.0.in_layers.0.weight",
    "model.diffusion_model.input_blocks.1.0.emb_layers.1.weight",
    "model.diffusion_model.input_blocks.1.0.out_layers.3.weight",
    "model.diffusion_model.input_blocks.1.1.proj_in.weight",
    "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight",
    "model.diffusion_model.input_blocks.3.0.op.weight",
    "model.diffusion_model.input_blocks.4.0.skip_connection.weight",
    "model.diffusion_model.input_blocks.7.0.skip_connection.weight",
    "model.diffusion_model.input_blocks.11.0.out_layers.3.weight",
    "model.diffusion_model.middle_block.0.in_layers.2.weight",
    "model.diffusion_model.middle_block.1.transformer_blocks.0.ff.net.0.proj.weight",
    "model.diffusion_model.middle_block.2.out_layers.0.weight",
    "model.diffusion_model.output_blocks.0.0.skip_connection.weight",
    "model.diffusion_model.output_blocks.2.1.conv.weight",
    "model.diffusion_model.output_blocks.5.2.conv.weight",
    "model.diffusion_model.output_blocks.8.2.conv.weight",
    "model.diffusion_model.output_blocks.11.0.skip_connection.weight",
    "model.diffusion_model.output_blocks.11.1.transformer_blocks.0.attn1.to_out.0.weight",
    "model.diffusion_model.out.2.weight",
    "first_stage_model.encoder.down.0.block.0.norm1.weight",
    "first_stage_model.encoder.down.0.downsample.conv.weight",
    "first_stage_model.encoder.down.1.block.0.nin_shortcut.weight",
    "first_stage_model.encoder.down.2.block.0.nin_shortcut.weight",
    "first_stage_model.encoder.mid.attn_1.q.weight",
    "first_stage_model.encoder.norm_out.weight",
    "first_stage_model.decoder.mid.block_2.conv2.weight",
    "first_stage_model.decoder.up.3.upsample.conv.weight",
    "first_stage_model.decoder.up.1.block.0.nin_shortcut.weight",
    "first_stage_model.decoder.up.0.block.0.nin_shortcut.weight",
    "first_stage_model.decoder.up.0.block.2.conv2.weight",
    "first_stage_model.post_quant_conv.weight",
    "cond_stage_model.transformer.text_model.encoder.layers.11.self_attn.q_proj.weight",
    "cond_stage_model.transformer.text_model.final_layer_norm.weight",
)


def test_full_size_sd15_has_the_published_key_names():
    """Made on torch's meta device: names and shapes, no memory."""
    from sdrt.export.architectures import ARCHITECTURES, CLIP_VOCAB_SIZE
    from sdrt.export.ldm_keys import pipeline_to_ldm
    from sdrt.export.random_model import build_component, component_config

    state_dicts, configs = {}, {}
    for name, component in ARCHITECTURES["sd15"].components.items():
        configs[name] = component_config(component, CLIP_VOCAB_SIZE)
        with torch.device("meta"):
            state_dicts[name] = build_component(component, configs[name]).state_dict()
    keys = pipeline_to_ldm("sd1", state_dicts, configs)
    assert [k for k in SD15_PUBLISHED_KEYS if k not in keys] == []
    assert _not_ldm_names(keys) == []
    # 12 output resnets take a concatenated skip, and 2 input levels widen: 14 shortcuts.
    assert sum(k.endswith("skip_connection.weight") for k in keys) == 14
