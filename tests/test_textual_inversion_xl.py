"""Textual inversion on SDXL: one clip_l + clip_g file into both text encoders, as diffusers'
two load_textual_inversion calls (text_encoder/tokenizer, then text_encoder_2/tokenizer_2)."""

from __future__ import annotations

import json

import numpy as np
import pytest

import sdrt
from sdrt.errors import InputError

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")
safetensors_torch = pytest.importorskip("safetensors.torch")

MAX_IMAGE_DIFF = 2 / 255  # the bound; float32 on both sides measures ~1e-6
MIN_TOKEN_EFFECT = 1e-2
PROMPT = "a <xl> in the snow"


@pytest.fixture(scope="module")
def tiny_xl(tiny_xl_source, tiny_xl_built):
    return tiny_xl_source, tiny_xl_built


def _width(source, encoder: str) -> int:
    return json.loads((source / encoder / "config.json").read_text())["hidden_size"]


def _settings():
    latents = np.random.default_rng(0).standard_normal((1, 4, 8, 8), dtype=np.float32)
    return latents, dict(
        num_inference_steps=3, guidance_scale=7.5, height=64, width=64, output_type="np"
    )


def test_sdxl_embedding_file_matches_diffusers_two_calls(tiny_xl, tmp_path):
    source, built = tiny_xl
    rng = np.random.default_rng(7)
    clip_l = rng.standard_normal((2, _width(source, "text_encoder"))).astype(np.float32)
    clip_g = rng.standard_normal((2, _width(source, "text_encoder_2"))).astype(np.float32)
    path = tmp_path / "xl.safetensors"
    safetensors_torch.save_file(
        {"clip_l": torch.from_numpy(clip_l), "clip_g": torch.from_numpy(clip_g)}, path
    )
    ours = sdrt.Pipeline.load(built)
    with pytest.raises(InputError, match="names no token"):
        ours.load_textual_inversion(path)
    ours.load_textual_inversion(path, token="<xl>")
    theirs = diffusers.StableDiffusionXLPipeline.from_pretrained(str(source))
    theirs.set_progress_bar_config(disable=True)
    theirs.load_textual_inversion(
        torch.from_numpy(clip_l),
        token="<xl>",
        text_encoder=theirs.text_encoder,
        tokenizer=theirs.tokenizer,
    )
    theirs.load_textual_inversion(
        torch.from_numpy(clip_g),
        token="<xl>",
        text_encoder=theirs.text_encoder_2,
        tokenizer=theirs.tokenizer_2,
    )
    latents, settings = _settings()
    a = ours(PROMPT, latents=latents, **settings).images
    b = theirs(PROMPT, latents=torch.from_numpy(latents), **settings).images
    assert np.abs(a - b).max() <= MAX_IMAGE_DIFF
    plain = sdrt.Pipeline.load(built)(PROMPT, latents=latents, **settings).images
    assert np.abs(a - plain).max() > MIN_TOKEN_EFFECT


def test_single_embedding_goes_to_the_named_encoder(tiny_xl, tmp_path):
    source, built = tiny_xl
    width_2 = _width(source, "text_encoder_2")
    path = tmp_path / "g.safetensors"
    safetensors_torch.save_file({"<g>": torch.ones(width_2)}, path)
    pipe = sdrt.Pipeline.load(built)
    if width_2 != _width(source, "text_encoder"):
        with pytest.raises(InputError, match="text_encoder expects"):
            pipe.load_textual_inversion(path)  # diffusers' default: the first encoder
    pipe.load_textual_inversion(path, text_encoder="text_encoder_2")
    first, second = pipe.prompt_encoders
    assert first.tokenizer.added_tokens == () and second.tokenizer.added_tokens == ("<g>",)
