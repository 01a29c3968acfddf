"""kohya SGM-layout U-Net names -> diffusers' block names, without a model: every module of
SDXL's U-Net and of the tiny SD 1.5-shaped one (layers_per_block 2 and 1; built on the meta
device) named as kohya names it, mapped as diffusers' ``_maybe_map_sgm_blocks_to_diffusers``
maps it; attention modules come back to their own diffusers names; mixed files, other
families and bad keys."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from lora_helpers import sgm_kohya_module

from sdrt.adapters.lora_files import LoraFile, LoraModule
from sdrt.adapters.lora_sgm_blocks import layers_per_block, map_sgm_blocks, uses_sgm_blocks
from sdrt.adapters.lora_state import LoraState
from sdrt.errors import InputError, ModelFolderError

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")
conversion = pytest.importorskip("diffusers.loaders.lora_conversion_utils")

FACTOR = np.zeros((1, 1), np.float32)
PATH = Path("style.safetensors")


def _unet_config(name: str) -> dict:
    from sdrt.export import architectures

    config = dict(getattr(architectures, name))
    return {k: v for k, v in config.items() if not k.startswith("_")}


def _module_names(config: dict) -> list[str]:
    """The U-Net's Linear and Conv modules (what LoRA files name), diffusers' names."""
    with torch.device("meta"):
        unet = diffusers.UNet2DConditionModel.from_config(config)
    kinds = (torch.nn.Linear, torch.nn.Conv2d)
    return [name for name, m in unet.named_modules() if isinstance(m, kinds)]


def _lora(keys: list[str], component: str = "unet") -> LoraFile:
    modules = tuple(LoraModule(component, key, FACTOR, FACTOR, 1.0) for key in keys)
    return LoraFile(PATH, "kohya", modules)


def _diffusers_name(kohya: str, config: dict) -> str:
    """diffusers' name for one kohya U-Net module: its own function on a one-key state dict,
    then the block renames (and op -> conv) that ``_convert_unet_lora_key`` does after it."""
    state = {f"{kohya}.lora_down.weight": None}
    (key,) = conversion._maybe_map_sgm_blocks_to_diffusers(state, SimpleNamespace(**config))
    name = key[len("lora_unet_") : -len(".lora_down.weight")]
    renames = {"input_blocks": "down_blocks", "middle_block": "mid_block"}
    renames |= {"output_blocks": "up_blocks", "downsamplers_0_op": "downsamplers_0_conv"}
    for old, new in renames.items():
        name = name.replace(old, new)
    return name


@pytest.mark.parametrize("architecture", ["SDXL_UNET", "TINY_UNET"])
def test_every_block_maps_as_diffusers_maps_it(architecture):
    config = _unet_config(architecture)
    names = _module_names(config)
    kohya = [sgm_kohya_module(n, config) for n in names]
    assert any(k.startswith("lora_unet_output_blocks_") for k in kohya)
    lora = _lora([k[len("lora_unet_") :] for k in kohya])
    assert uses_sgm_blocks(lora)
    ours = map_sgm_blocks(lora, config["layers_per_block"])
    theirs = {k[len("lora_unet_") :]: _diffusers_name(k, config) for k in kohya}
    # conv_in: passed through by both; diffusers names it only in _convert_unet_lora_key
    assert theirs.pop("input_blocks_0_0") == "down_blocks_0_0"
    mapped = {m.name_in_file: m.key for m in ours.modules}
    for file_key, key in mapped.items():
        if "_attentions_" in key:  # the blocks as diffusers maps them
            assert key == theirs[file_key]
        else:  # ResNets, samplers, outside the blocks: then _convert_unet_lora_key's names
            assert key == _converted(f"lora_unet_{file_key}", config), file_key
    astray = []
    for name, module in zip(names, ours.modules, strict=True):
        # every module back to its own name, as --lora-ready all's branches are named
        if module.key != name.replace(".", "_"):
            astray.append(name)
        assert module.file_key is not None
    if architecture == "SDXL_UNET":
        assert astray == []
    else:  # an up level without attentions has its upsampler at inner index 1, which
        # diffusers (mapping SGM names for SDXL only) maps to attentions_1 too
        assert astray and all(n.endswith("upsamplers.0.conv") for n in astray)


def _converted(kohya: str, config: dict) -> str:
    """diffusers' whole mapping of a kohya module outside the transformer blocks: the SGM
    blocks, then ``_convert_unet_lora_key`` ('.'-separated; '_'-separated here)."""
    state = {f"{kohya}.lora_down.weight": None}
    (key,) = conversion._maybe_map_sgm_blocks_to_diffusers(state, SimpleNamespace(**config))
    return conversion._convert_unet_lora_key(key[: -len(".lora_down.weight")]).replace(".", "_")


def test_layers_per_block_decides_the_level():
    lora = _lora(["input_blocks_4_1_proj_in", "output_blocks_5_1_proj_out"])
    assert [m.key for m in map_sgm_blocks(lora, 2).modules] == [
        "down_blocks_1_attentions_0_proj_in",
        "up_blocks_1_attentions_2_proj_out",
    ]
    assert [m.key for m in map_sgm_blocks(lora, 1).modules] == [
        "down_blocks_1_attentions_1_proj_in",
        "up_blocks_2_attentions_1_proj_out",
    ]


def test_other_layouts_and_components_pass_through():
    diffusers_layout = _lora(
        ["down_blocks_1_attentions_0_proj_in", "mid_block_attentions_0_proj_in"]
    )
    assert not uses_sgm_blocks(diffusers_layout)
    text = _lora(["text_model_encoder_layers_0_mlp_fc1"], component="text_encoder")
    assert not uses_sgm_blocks(text)
    outside = _lora(["input_blocks_0_0", "time_embed_0", "input_blocks_4_1_proj_in"])
    # outside the blocks: diffusers passes them through the block mapping, then names them
    # in _convert_unet_lora_key
    assert [m.key for m in map_sgm_blocks(outside, 2).modules] == [
        "conv_in",
        "time_embedding_linear_1",
        "down_blocks_1_attentions_0_proj_in",
    ]


def test_a_mixed_file_drops_its_sgm_names_as_diffusers_does(caplog):
    keys = ["down_blocks_1_attentions_0_proj_in", "input_blocks_4_1_proj_out"]
    state = {f"lora_unet_{k}.lora_down.weight": None for k in keys}
    config = SimpleNamespace(layers_per_block=2)
    kept = conversion._maybe_map_sgm_blocks_to_diffusers(dict(state), config)
    assert list(kept) == ["lora_unet_down_blocks_1_attentions_0_proj_in.lora_down.weight"]
    with caplog.at_level("WARNING"):
        ours = map_sgm_blocks(_lora(keys), 2)
    assert [m.key for m in ours.modules] == ["down_blocks_1_attentions_0_proj_in"]
    assert "input_blocks_4_1_proj_out" in caplog.text


@pytest.mark.parametrize(
    ("key", "why"),
    [
        ("middle_block_3_proj_in", r"middle_block has blocks \[0, 1, 2\]"),
        ("input_blocks_4_3_proj_in", "expected an inner index 0 to 2"),
        ("output_blocks_x_1_proj_in", "expected a block number"),
        ("input_blocks_0_1_proj_in", "input_blocks_0 is conv_in"),
    ],
)
def test_keys_that_name_no_block_are_named(key, why):
    with pytest.raises(InputError, match=rf"style\.safetensors: module 'lora_unet_{key}' .*{why}"):
        map_sgm_blocks(_lora(["input_blocks_4_1_proj_in", key]), 2)


def _state(tmp_path, family: str, config: dict | None) -> LoraState:
    (tmp_path / "unet").mkdir(parents=True)
    if config is not None:
        (tmp_path / "unet" / "config.json").write_text(json.dumps(config))
    unet = SimpleNamespace(lora_branches=(), lora_outdated=False, file="unet/model.onnx")
    return LoraState(tmp_path, SimpleNamespace(family=family, components={"unet": unet}))


def test_sgm_names_on_other_families_and_folders_without_a_config(tmp_path):
    lora = _lora(["input_blocks_4_1_proj_in"])
    with pytest.raises(
        InputError, match=r"style\.safetensors: .*SGM/LDM layout.*this folder is sd1"
    ):
        _state(tmp_path / "sd1", "sd1", {"layers_per_block": 2})._in_diffusers_layout(lora)
    with pytest.raises(ModelFolderError, match=r"unet/config\.json: needed for kohya SDXL"):
        _state(tmp_path / "xl", "sdxl", None)._in_diffusers_layout(lora)
    with pytest.raises(ModelFolderError, match="expected layers_per_block a positive integer"):
        layers_per_block(_write(tmp_path / "c.json", {"layers_per_block": [2, 2, 2]}))
    mapped = _state(tmp_path / "ok", "sdxl", {"layers_per_block": 2})._in_diffusers_layout(lora)
    assert [m.key for m in mapped.modules] == ["down_blocks_1_attentions_0_proj_in"]


def _write(path: Path, data: dict) -> Path:
    path.write_text(json.dumps(data))
    return path
