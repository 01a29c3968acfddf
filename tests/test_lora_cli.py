"""``sdrt generate --lora FILE[:SCALE]``: applies run-time LoRA as the API does; a bad file
exits 2 with one line, before the model loads."""

from __future__ import annotations

import numpy as np
import pytest
from lora_helpers import write_peft_file
from PIL import Image

import sdrt
from sdrt.cli import main

FAST = ["--steps", "2", "--size", "64x64", "--seed", "0", "--no-progress"]


@pytest.fixture(scope="module")
def lora(tiny_source, tmp_path_factory):
    return write_peft_file(tmp_path_factory.mktemp("cli-lora") / "style", tiny_source, seed=3)


def _pixels(path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def test_generate_with_lora_equals_the_api(tiny_built_lora_ready, lora, tmp_path):
    out = tmp_path / "fox.png"
    assert (
        main(
            [
                "generate",
                str(tiny_built_lora_ready),
                "a red fox",
                "-o",
                str(out),
                "--lora",
                f"{lora}:0.7",
                *FAST,
            ]
        )
        == 0
    )
    plain = tmp_path / "plain.png"
    assert main(["generate", str(tiny_built_lora_ready), "a red fox", "-o", str(plain), *FAST]) == 0
    pipe = sdrt.Pipeline.load(tiny_built_lora_ready, backend="ort-cpu")
    pipe.load_lora_weights(lora, adapter_name="style")
    pipe.set_adapters("style", 0.7)
    api = pipe("a red fox", num_inference_steps=2, height=64, width=64, seed=0).images[0]
    np.testing.assert_array_equal(_pixels(out), np.asarray(api))
    assert np.abs(_pixels(out).astype(int) - _pixels(plain)).max() > 0


def test_bad_lora_file_exits_2_before_loading(tiny_built_lora_ready, tmp_path, capsys, monkeypatch):
    def load(*args, **kwargs):
        raise RuntimeError("the model was loaded before the LoRA file was checked")

    monkeypatch.setattr(sdrt.Pipeline, "load", load)
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a safetensors file")
    code = main(
        [
            "generate",
            str(tiny_built_lora_ready),
            "a fox",
            "-o",
            str(tmp_path / "x.png"),
            "--lora",
            str(bad),
            *FAST,
        ]
    )
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "bad.safetensors: not a valid .safetensors file" in err
    code = main(
        [
            "generate",
            str(tiny_built_lora_ready),
            "a fox",
            "--lora",
            str(tmp_path / "none.safetensors:0.5"),
            *FAST,
        ]
    )
    assert code == 2
    assert "does not exist" in capsys.readouterr().err


@pytest.mark.parametrize("scale", ["nan", "inf"])
def test_non_finite_scale_exits_2_before_loading(
    tiny_built_lora_ready, lora, tmp_path, capsys, monkeypatch, scale
):
    def load(*args, **kwargs):
        raise RuntimeError("the model was loaded before the --lora scale was checked")

    monkeypatch.setattr(sdrt.Pipeline, "load", load)
    out = tmp_path / "x.png"
    code = main(
        [
            "generate",
            str(tiny_built_lora_ready),
            "a fox",
            "-o",
            str(out),
            "--lora",
            f"{lora}:{scale}",
            *FAST,
        ]
    )
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    expected = f"--lora: expected a finite SCALE, got '{scale}' (from '{lora}:{scale}')"
    assert err == [f"sdrt generate: error: {expected}"]
    assert not out.exists()


def test_lora_that_matches_nothing_exits_2(tiny_built_lora_ready, tmp_path, capsys):
    from safetensors.numpy import save_file

    other = tmp_path / "other.safetensors"
    save_file(
        {
            "unet.x.y.lora_A.weight": np.ones((2, 8), np.float32),
            "unet.x.y.lora_B.weight": np.ones((8, 2), np.float32),
        },
        str(other),
    )
    code = main(
        [
            "generate",
            str(tiny_built_lora_ready),
            "a fox",
            "-o",
            str(tmp_path / "x.png"),
            "--lora",
            str(other),
            *FAST,
        ]
    )
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "matches this model" in err
