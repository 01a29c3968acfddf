"""sdrt generate --embedding FILE[:TOKEN]: the embedding loaded as Pipeline.load_textual_inversion."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

import sdrt
from sdrt.cli import main

torch = pytest.importorskip("torch")
safetensors_torch = pytest.importorskip("safetensors.torch")

FAST = ["--steps", "2", "--no-progress", "--size", "64", "--seed", "0"]
# PNGs round to 1/255; the same pipeline at run time and on the command line gives the same bytes.
MAX_PIXEL_DIFF = 0


@pytest.fixture(scope="module")
def embedding(tmp_path_factory):
    path = tmp_path_factory.mktemp("cli-embedding") / "cat.safetensors"
    vectors = np.random.default_rng(5).standard_normal((2, 32)).astype(np.float32)
    safetensors_torch.save_file({"<cat>": torch.from_numpy(vectors)}, path)
    return path


def _pixels(path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"), dtype=np.int16)


def test_generate_with_an_embedding_and_its_token(tiny_built, embedding, tmp_path):
    prompt = "a <kitty> photo"
    out = tmp_path / "cli.png"
    args = ["generate", str(tiny_built), prompt, "-o", str(out), *FAST]
    assert main([*args, "--embedding", f"{embedding}:<kitty>"]) == 0
    pipe = sdrt.Pipeline.load(tiny_built)
    pipe.load_textual_inversion(embedding, token="<kitty>")
    api = pipe(prompt, num_inference_steps=2, height=64, width=64, seed=0).images[0]
    api.save(tmp_path / "api.png")
    assert np.abs(_pixels(out) - _pixels(tmp_path / "api.png")).max() <= MAX_PIXEL_DIFF
    plain = tmp_path / "plain.png"
    assert main(["generate", str(tiny_built), prompt, "-o", str(plain), *FAST]) == 0
    assert np.abs(_pixels(out) - _pixels(plain)).max() > 0


def test_bad_embedding_option_is_one_line_and_exit_2(tiny_built, embedding, tmp_path, capsys):
    args = ["generate", str(tiny_built), "a <cat>", "-o", str(tmp_path / "x.png"), *FAST]
    assert main([*args, "--embedding", str(tmp_path / "missing.pt")]) == 2
    assert "--embedding: no such file" in capsys.readouterr().err
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"garbage")
    assert main([*args, "--embedding", str(bad)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("sdrt generate: error:") and "bad.safetensors" in err[-1]
    assert main([*args, "--embedding", f"{embedding}:tree"]) == 2  # "tree</w>": a word
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Token tree is a word of the tokenizer vocabulary" in err[0]
    twice = [*args, "--embedding", str(embedding), "--embedding", str(embedding)]
    assert main(twice) == 2
    assert "Token <cat> already in tokenizer vocabulary" in capsys.readouterr().err
    assert not (tmp_path / "x.png").exists()
