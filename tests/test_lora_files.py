"""LoRA files without a model: the safetensors reader, both key layouts, their scales, the
errors that name the file and what did not match, and the branch factors a snapshot feeds."""

from __future__ import annotations

import json
import struct
from types import SimpleNamespace

import numpy as np
import pytest
from safetensors.numpy import save_file

from sdrt.adapters.lora_files import (
    DEFAULT_WEIGHT_NAME,
    lora_file_path,
    read_lora_file,
)
from sdrt.adapters.lora_match import match_lora
from sdrt.adapters.lora_state import LoraState
from sdrt.adapters.options import parse_lora_option
from sdrt.adapters.safetensors_file import read_safetensors
from sdrt.errors import InputError
from sdrt.manifest import LoraBranch

RNG = np.random.default_rng(0)


def _factors(rank=2, inp=6, out=5):
    return (
        RNG.standard_normal((rank, inp)).astype(np.float32),
        RNG.standard_normal((out, rank)).astype(np.float32),
    )


def test_reader_matches_the_safetensors_library(tmp_path):
    tensors = {
        "a": RNG.standard_normal((3, 4)).astype(np.float32),
        "b": RNG.standard_normal((2,)).astype(np.float16),
        "c": np.arange(6, dtype=np.int64).reshape(2, 3),
    }
    save_file(tensors, str(tmp_path / "t.safetensors"), metadata={"k": "v"})
    read, metadata = read_safetensors(tmp_path / "t.safetensors")
    assert metadata == {"k": "v"}
    for name, value in tensors.items():
        assert read[name].dtype == value.dtype
        np.testing.assert_array_equal(read[name], value)


def test_reader_widens_bf16(tmp_path):
    import torch
    from safetensors.torch import save_file as save_torch

    value = torch.tensor([1.5, -2.25, 3.0e5], dtype=torch.bfloat16)
    save_torch({"x": value}, str(tmp_path / "bf.safetensors"))
    read, _ = read_safetensors(tmp_path / "bf.safetensors")
    np.testing.assert_array_equal(read["x"], value.float().numpy())


@pytest.mark.parametrize(
    "content, what",
    [
        (b"abc", "shorter than"),
        (struct.pack("<Q", 10**9) + b"{}", "header length"),
        (struct.pack("<Q", 5) + b"{not!", "not JSON"),
        (
            struct.pack("<Q", 64)
            + json.dumps({"x": {"dtype": "F32", "shape": [4], "data_offsets": [0, 99]}})
            .encode()
            .ljust(64)
            + b"\0" * 16,
            "data_offsets",
        ),
    ],
)
def test_corrupt_files_are_named(tmp_path, content, what):
    path = tmp_path / "bad.safetensors"
    path.write_bytes(content)
    with pytest.raises(InputError, match=rf"{path}.*{what}"):
        read_lora_file(path)


def test_peft_keys_with_and_without_alpha(tmp_path):
    down, up = _factors()
    save_file(
        {
            "unet.mid_block.attentions.0.proj_in.lora_A.weight": down,
            "unet.mid_block.attentions.0.proj_in.lora_B.weight": up,
            "text_encoder.text_model.encoder.layers.0.mlp.fc1.lora_A.weight": down,
            "text_encoder.text_model.encoder.layers.0.mlp.fc1.lora_B.weight": up,
            "text_encoder.text_model.encoder.layers.0.mlp.fc1.alpha": np.array(8.0, np.float32),
        },
        str(tmp_path / "p.safetensors"),
    )
    lora = read_lora_file(tmp_path / "p.safetensors")
    assert lora.layout == "peft"
    by_key = {m.key: m for m in lora.modules}
    assert by_key["mid_block.attentions.0.proj_in"].scale == 1.0  # no alpha: alpha = rank
    assert by_key["mid_block.attentions.0.proj_in"].component == "unet"
    fc1 = by_key["text_model.encoder.layers.0.mlp.fc1"]
    assert fc1.component == "text_encoder" and fc1.scale == 8.0 / 2


def test_kohya_keys_and_their_components(tmp_path):
    down, up = _factors(rank=4)
    tensors = {}
    for prefix in ("lora_unet_mid_block_attentions_0_proj_in", "lora_te2_encoder_layers_0_mlp_fc1"):
        tensors[f"{prefix}.lora_down.weight"] = down
        tensors[f"{prefix}.lora_up.weight"] = up
        tensors[f"{prefix}.alpha"] = np.array(2.0, np.float32)
    save_file(tensors, str(tmp_path / "k.safetensors"))
    lora = read_lora_file(tmp_path / "k.safetensors")
    assert lora.layout == "kohya"
    assert {(m.component, m.key, m.scale) for m in lora.modules} == {
        ("unet", "mid_block_attentions_0_proj_in", 0.5),
        ("text_encoder_2", "encoder_layers_0_mlp_fc1", 0.5),
    }


def test_unknown_format_and_missing_factor(tmp_path):
    save_file({"model.layer.weight": np.zeros((2, 2), np.float32)}, str(tmp_path / "u.safetensors"))
    with pytest.raises(InputError, match=r"u\.safetensors: unknown LoRA format.*model\.layer"):
        read_lora_file(tmp_path / "u.safetensors")
    save_file(
        {"unet.a.b.lora_A.weight": np.zeros((2, 2), np.float32)}, str(tmp_path / "m.safetensors")
    )
    with pytest.raises(InputError, match=r"m\.safetensors: module 'unet\.a\.b' has no up factor"):
        read_lora_file(tmp_path / "m.safetensors")
    save_file(
        {"unet.a.lora_magnitude_vector": np.zeros(2, np.float32)}, str(tmp_path / "d.safetensors")
    )
    with pytest.raises(InputError, match=r"not LoRA factors.*DoRA"):
        read_lora_file(tmp_path / "d.safetensors")


def test_file_paths(tmp_path):
    folder = tmp_path / "lora"
    folder.mkdir()
    with pytest.raises(InputError, match="does not exist"):
        lora_file_path(folder, None)
    (folder / DEFAULT_WEIGHT_NAME).write_bytes(b"")
    assert lora_file_path(folder, None) == folder / DEFAULT_WEIGHT_NAME
    (tmp_path / "x.bin").write_bytes(b"")
    with pytest.raises(InputError, match=r"expected a \.safetensors LoRA file, got '\.bin'"):
        lora_file_path(tmp_path / "x.bin", None)


def test_lora_option(tmp_path):
    down, up = _factors()
    path = tmp_path / "style.safetensors"
    save_file({"unet.m.lora_A.weight": down, "unet.m.lora_B.weight": up}, str(path))
    assert parse_lora_option(f"{path}:0.5").scale == 0.5
    assert parse_lora_option(str(path)).scale == 1.0
    with pytest.raises(InputError, match="does not exist"):
        parse_lora_option(str(tmp_path / "nope.safetensors:0.5"))
    folder = tmp_path / "diffusers-folder"
    folder.mkdir()
    (folder / DEFAULT_WEIGHT_NAME).write_bytes(path.read_bytes())
    assert parse_lora_option(f"{folder}:0.5").path == folder / DEFAULT_WEIGHT_NAME
    for scale in ("nan", "inf", "-inf"):
        with pytest.raises(InputError, match=f"--lora: expected a finite SCALE, got '{scale}'"):
            parse_lora_option(f"{path}:{scale}")


# Concatenated factors against the sum of the deltas they stand for, in float32.
DELTA_TOLERANCE = 1e-5


def _branch(module, features_in, features_out):
    return LoraBranch(
        module, f"{module}.down", f"{module}.up", features_in, features_out, "float32"
    )


def test_matching_names_and_shapes(tmp_path):
    down, up = _factors(inp=6, out=5)
    save_file(
        {"lora_unet_a_b_to_q.lora_down.weight": down, "lora_unet_a_b_to_q.lora_up.weight": up},
        str(tmp_path / "k.safetensors"),
    )
    lora = read_lora_file(tmp_path / "k.safetensors")
    branch = _branch("a.b.to_q", 6, 5)
    (matched,) = match_lora(lora, {"unet": (branch,)})
    assert matched.branch is branch and matched.lora.key == "a_b_to_q"
    with pytest.raises(InputError, match=r"k\.safetensors: 1 of 1 modules have shapes.*a\.b\.to_q"):
        match_lora(lora, {"unet": (_branch("a.b.to_q", 7, 5),)})
    with pytest.raises(InputError, match=r"k\.safetensors: none of its 1 modules matches"):
        match_lora(lora, {"unet": (_branch("c.d", 6, 5),)})


def _manifest(*branches):
    component = SimpleNamespace(lora_branches=branches, lora_outdated=False)
    return SimpleNamespace(components={"unet": component})


def test_snapshot_feeds_the_factors_side_by_side(tmp_path):
    """down_t @ up_t of a snapshot is the weighted, scaled sum of the active deltas
    (transposed: x @ W^T), and modules no active adapter touches are not fed."""
    first, second = _factors(rank=2, inp=6, out=5), _factors(rank=3, inp=6, out=5)
    save_file(
        {
            "unet.m.lora_A.weight": first[0],
            "unet.m.lora_B.weight": first[1],
            "unet.m.alpha": np.array(4.0, np.float32),  # scale 4 / 2
        },
        str(tmp_path / "a.safetensors"),
    )
    save_file(
        {"unet.m.lora_A.weight": second[0], "unet.m.lora_B.weight": second[1]},
        str(tmp_path / "b.safetensors"),
    )
    branch, untouched = _branch("m", 6, 5), _branch("n", 6, 5)
    state = LoraState(tmp_path, _manifest(branch, untouched))
    state.load(read_lora_file(tmp_path / "a.safetensors"), "a")
    state.load(read_lora_file(tmp_path / "b.safetensors"), "b")
    state.set_adapters(["a", "b"], [0.5, -1.5])
    feeds = state.current.of("unet")
    assert set(feeds) == {branch.down, branch.up}
    down_t, up_t = feeds[branch.down], feeds[branch.up]
    assert down_t.shape == (6, 5) and up_t.shape == (5, 5) and down_t.dtype == np.float32
    expected = 0.5 * 2.0 * first[1] @ first[0] - 1.5 * second[1] @ second[0]
    np.testing.assert_allclose(
        down_t @ up_t, expected.T, rtol=DELTA_TOLERANCE, atol=DELTA_TOLERANCE
    )
    state.set_adapters(["a", "b"], [0.0, 0.0])  # weights 0: nothing fed
    assert state.current.feeds == {}
