"""SDXL folders: two text encoders, pooled embeddings and time ids give diffusers' images."""

from __future__ import annotations

import numpy as np
import pytest

import sdrt

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

# Max abs difference of float images in [0, 1]: two 8-bit levels.
MAX_IMAGE_DIFF = 2 / 255
PROMPTS = ["a red fox in the snow", "an astronaut riding a horse"]


@pytest.fixture(scope="module")
def tiny_xl(tmp_path_factory):
    """(sdrt pipeline, diffusers pipeline) on the tiny SDXL architecture's weights."""
    from sdrt.export.build import BuildConfig, build
    from sdrt.export.random_model import init_random_model

    source = init_random_model("tiny-xl", tmp_path_factory.mktemp("xl") / "src")
    config = BuildConfig(
        source=str(source), output=source.parent / "built", min_size=64, max_size=128
    )
    built = build(config).output
    reference = diffusers.StableDiffusionXLPipeline.from_pretrained(str(source))
    reference.set_progress_bar_config(disable=True)
    return sdrt.Pipeline.load(built), reference


@pytest.mark.parametrize(
    ("negative_prompt", "guidance"),
    [(None, 7.5), (["blurry", "cartoon"], 7.5), (None, 1.0)],
    ids=["zeroed-negative", "negative-prompts", "no-guidance"],
)
def test_xl_txt2img_matches_diffusers(tiny_xl, negative_prompt, guidance):
    sd, reference = tiny_xl
    assert sd.manifest.family == "sdxl" and len(sd.prompt_encoders) == 2
    latents = np.random.default_rng(0).standard_normal((2, 4, 8, 16), dtype=np.float32)
    settings = dict(
        negative_prompt=negative_prompt,
        num_inference_steps=3,
        guidance_scale=guidance,
        height=64,
        width=128,
        output_type="np",
    )
    theirs = reference(PROMPTS, latents=torch.from_numpy(latents), **settings).images
    ours = sd(PROMPTS, latents=latents, **settings).images
    assert float(np.abs(ours - theirs).max()) <= MAX_IMAGE_DIFF
