"""Walks between keyframes (sdrt.interpolation) and the prompt_embeds seam they run on:
slerp's numerics, frame positions, keyframes that are plain calls bit for bit (batched
or not), the middle frame's noise statistics, progress per frame, clear errors."""

from __future__ import annotations

import numpy as np
import pytest

import sdrt
from sdrt.errors import InputError
from sdrt.interpolation import (
    PARALLEL_COSINE,
    FramePosition,
    WalkNoise,
    frame_positions,
    lerp,
    slerp,
)
from sdrt.noise import SeedNoise

SIZE = 64
FAST = dict(num_inference_steps=3, height=SIZE, width=SIZE, output_type="np")
PROMPTS = ["a red fox in snow", "a blue cat on a roof"]
SEEDS = [1, 2]


@pytest.fixture(scope="module")
def pipe(tiny_built):
    return sdrt.Pipeline.load(tiny_built)


@pytest.fixture(scope="module")
def plain(tiny_built):
    """A second pipeline without a prompt cache: plain calls that share nothing with the
    walk's pipeline, so that equal images mean equal computations."""
    return sdrt.Pipeline.load(tiny_built, prompt_cache_size=0)


def _keyframe_indices(positions) -> list[int]:
    return [i for i, p in enumerate(positions) if p.t == 0]


# ------------------------------------------------------------------------------- slerp


def test_slerp_gives_its_endpoints_exactly():
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((2, 4, 8, 8), dtype=np.float32)
    assert slerp(a, b, 0.0) is a and slerp(a, b, 1.0) is b
    assert lerp(a, b, 0.0) is a and lerp(a, b, 1.0) is b
    assert slerp(a, b, 0.5).dtype == np.float32


def test_slerp_follows_the_great_circle():
    a, b = np.array([1.0, 0.0]), np.array([0.0, 1.0])
    for t in (0.1, 0.25, 0.5, 0.9):
        expected = np.array([np.cos(t * np.pi / 2), np.sin(t * np.pi / 2)])
        np.testing.assert_allclose(slerp(a, b, t), expected, rtol=0, atol=1e-15)
        assert abs(np.linalg.norm(slerp(a, b, t)) - 1) < 1e-15  # lerp: 0.707 at t = 0.5


def test_slerp_is_lerp_for_nearly_parallel_and_zero_vectors():
    a = np.array([1.0, 0.0, 0.0])
    b = np.array([1.0, 1e-3, 0.0])  # cosine 0.9999995 > PARALLEL_COSINE
    assert float(a @ b / np.linalg.norm(b)) > PARALLEL_COSINE
    np.testing.assert_array_equal(slerp(a, b, 0.3), lerp(a, b, 0.3))
    np.testing.assert_array_equal(slerp(a, a, 0.3), a)  # identical: no division by sin(0)
    zero = np.zeros(3)
    np.testing.assert_array_equal(slerp(zero, b, 0.5), lerp(zero, b, 0.5))


def test_slerp_per_vector_along_an_axis():
    """Embeddings are slerped token by token: a row shared by both ends stays as it is
    (whole-array slerp would scale it up), the others move on their own circles."""
    rng = np.random.default_rng(1)
    a = rng.standard_normal((1, 3, 16))
    b = rng.standard_normal((1, 3, 16))
    b[0, 0] = a[0, 0]  # e.g. the start token, the same in every prompt
    mixed = slerp(a, b, 0.5, axis=-1)
    np.testing.assert_allclose(mixed[0, 0], a[0, 0], rtol=1e-15)
    for row in (1, 2):
        np.testing.assert_allclose(mixed[0, row], slerp(a[0, row], b[0, row], 0.5), rtol=1e-14)
    assert np.abs(slerp(a, b, 0.5)[0, 0] - a[0, 0]).max() > 1e-3


def test_slerp_refuses_opposite_vectors():
    a = np.array([1.0, 2.0, 3.0])
    with pytest.raises(
        InputError,
        match=r"slerp: expected vectors that are not opposite, got a cosine of -1\.000000",
    ):
        slerp(a, -a, 0.5)


# ---------------------------------------------------------------------- the noise statistics


def _unit_gaussian(noise: np.ndarray) -> bool:
    """Whether noise pooled from 10 pairs of 4x32x32 latents (40960 values) has mean 0 and
    variance 1 within 0.03: 4 standard errors of the sample variance (sqrt(2/40960) =
    0.007), far from lerp's 0.5 halfway."""
    return abs(float(noise.mean())) < 0.03 and abs(float(noise.var()) - 1.0) < 0.03


def test_the_middle_frame_noise_is_unit_gaussian_with_slerp_and_not_with_lerp():
    shape = (1, 4, 32, 32)  # a 256x256 image's latents
    halfway = FramePosition(0, 0.5)
    slerped, lerped = [], []
    for seed in range(0, 20, 2):
        a = SeedNoise(seed).initial(shape)
        b = SeedNoise(seed + 1).initial(shape)
        slerped.append(WalkNoise((seed, seed + 1), (halfway,)).initial(shape))
        lerped.append(lerp(a, b, 0.5))
    assert _unit_gaussian(np.concatenate(slerped))
    assert not _unit_gaussian(np.concatenate(lerped))  # the check can fail
    assert abs(float(np.concatenate(lerped).var()) - 0.5) < 0.03


def test_walk_noise_at_a_keyframe_is_that_seed_s_stream():
    """Initial noise then one draw per step, as a plain call with that seed draws them."""
    shape = (3, 4, 8, 8)
    positions = (FramePosition(0, 0.0), FramePosition(0, 0.5), FramePosition(1, 0.0))
    noise = WalkNoise((7, 8), positions)
    first, second = SeedNoise(7), SeedNoise(8)
    for draw in ("initial", "step", "step"):
        frames = getattr(noise, draw)(shape)
        np.testing.assert_array_equal(frames[0:1], getattr(first, draw)((1, 4, 8, 8)))
        np.testing.assert_array_equal(frames[2:3], getattr(second, draw)((1, 4, 8, 8)))
        assert np.abs(frames[1] - frames[0]).max() > 0.1


# ------------------------------------------------------------------------------ frames


@pytest.mark.parametrize(
    ("keyframes", "frames", "per_segment"),
    [(2, 2, [1]), (2, 5, [4]), (3, 3, [1, 1]), (3, 6, [3, 2]), (4, 8, [3, 2, 2])],
)
def test_frames_include_every_keyframe_and_share_the_intervals_out(keyframes, frames, per_segment):
    positions = frame_positions(keyframes, frames)
    assert len(positions) == frames
    assert [positions[i].keyframe for i in _keyframe_indices(positions)] == list(range(keyframes))
    assert positions[-1] == FramePosition(keyframes - 1, 0.0)
    counts = [sum(1 for p in positions if p.keyframe == k) for k in range(keyframes - 1)]
    assert counts == per_segment
    for p in positions[:-1]:
        assert 0 <= p.t < 1


# ------------------------------------------------------------------- keyframes, batches


@pytest.mark.parametrize("scheduler", ["euler_a", "pndm"])  # euler_a draws noise every step
def test_keyframes_are_plain_calls_bit_for_bit_batched_or_not(pipe, plain, scheduler):
    """Measured on ONNX Runtime's CPU kernels: a frame's images do not depend on the batch
    it runs in, so batched keyframes equal plain calls exactly (no tolerance needed)."""
    settings = dict(FAST, scheduler=scheduler, negative_prompt="blurry")
    prompts, seeds = [*PROMPTS, "a green dog"], [*SEEDS, 3]
    plain_images = [
        plain(p, seed=s, **settings).images[0] for p, s in zip(prompts, seeds, strict=True)
    ]
    outputs = {}
    for batch_size in (1, pipe.manifest.build.max_batch):
        out = pipe.interpolate(
            prompts, seeds=seeds, num_frames=7, batch_size=batch_size, **settings
        )
        assert out.images.shape == (7, SIZE, SIZE, 3) and out.seeds == tuple(seeds)
        keyframes = _keyframe_indices(out.positions)
        assert keyframes == [0, 3, 6]
        for index, expected in zip(keyframes, plain_images, strict=True):
            np.testing.assert_array_equal(out.images[index], expected)
        outputs[batch_size] = out.images
    np.testing.assert_array_equal(outputs[1], outputs[pipe.manifest.build.max_batch])


def test_the_middle_frame_differs_from_both_ends(pipe):
    out = pipe.interpolate(PROMPTS[0], seeds=SEEDS, num_frames=3, **FAST)  # a seed walk
    first, middle, last = out.images
    assert out.positions[1] == FramePosition(0, 0.5)
    assert np.abs(middle - first).mean() > 0.02 and np.abs(middle - last).mean() > 0.02
    # And it is not a cross-fade of the two ends: the noise was mixed, not the images.
    assert np.abs(middle - (first + last) / 2).mean() > 0.02


def test_a_prompt_walk_at_one_seed_and_lerp_embeddings(pipe, plain):
    out = pipe.interpolate(PROMPTS, seeds=5, num_frames=4, method="lerp", **FAST)
    assert out.seeds == (5, 5)
    np.testing.assert_array_equal(out.images[-1], plain(PROMPTS[1], seed=5, **FAST).images[0])
    slerped = pipe.interpolate(PROMPTS, seeds=5, num_frames=4, **FAST).images
    np.testing.assert_array_equal(slerped[0], out.images[0])
    assert np.abs(slerped[1] - out.images[1]).max() > 0  # the methods differ between


def test_given_keyframe_latents_and_img2img(pipe, plain):
    rng = np.random.default_rng(3)
    latents = rng.standard_normal((2, 4, SIZE // 8, SIZE // 8), dtype=np.float32)
    image = rng.random((SIZE, SIZE, 3), dtype=np.float32)
    settings = dict(FAST, image=image, strength=0.7, scheduler="euler_a")
    out = pipe.interpolate(PROMPTS, seeds=SEEDS, latents=latents, num_frames=3, **settings)
    for index, k in ((0, 0), (2, 1)):
        expected = plain(PROMPTS[k], seed=SEEDS[k], latents=latents[k : k + 1], **settings)
        np.testing.assert_array_equal(out.images[index], expected.images[0])


def test_random_seeds_are_reported_and_shared(pipe):
    out = pipe.interpolate(PROMPTS, num_frames=2, **FAST)
    assert len(out.seeds) == 2 and out.seeds[0] == out.seeds[1]
    again = pipe.interpolate(PROMPTS, seeds=list(out.seeds), num_frames=2, **FAST)
    np.testing.assert_array_equal(out.images, again.images)


def test_generate_walk_yields_each_frame_in_order_and_the_result_last(pipe):
    walk = pipe.walk(PROMPTS, seeds=SEEDS, num_frames=5, batch_size=2, **FAST)
    progress = list(pipe.generate_walk(walk))
    assert [p.frame for p in progress] == [1, 2, 3, 4, 5]
    assert all(p.total_frames == 5 for p in progress)
    assert [p.result is None for p in progress] == [True] * 4 + [False]
    result = progress[-1].result
    for p in progress:
        np.testing.assert_array_equal(p.image, result.images[p.frame - 1])
        assert p.position == walk.positions[p.frame - 1]
    seen = []
    pil = pipe.interpolate(
        PROMPTS, seeds=SEEDS, num_frames=3, callback=seen.append, **{**FAST, "output_type": "pil"}
    )
    assert [p.frame for p in seen] == [1, 2, 3]
    assert [image.size for image in pil.images] == [(SIZE, SIZE)] * 3


BAD_WALKS = [
    (dict(prompts="a fox", seeds=3), r"prompts: expected two or more keyframes .*, got 1"),
    (dict(prompts="a fox", seeds=[3]), r"prompts: expected two or more keyframes"),
    (
        dict(num_frames=0),
        r"num_frames: expected an integer >= 2 \(at least one frame per keyframe\), got 0",
    ),
    (dict(num_frames=1), r"num_frames: expected an integer >= 2"),
    (dict(num_frames=2.5), r"num_frames: expected an integer >= 2 .*, got 2.5"),
    (dict(seeds=[1, 2, 3]), r"prompts: expected 1 or 3 \(one per keyframe; seeds: 3\), got 2"),
    (
        dict(prompts=["a", "b", "c"], seeds=[1, 2]),
        r"seeds: expected 1 or 3 \(one per keyframe; prompts: 3\), got 2",
    ),
    (
        dict(seeds=[1, -2]),
        r"seeds: expected an integer >= 0 or a non-empty list of them, got \[1, -2\]",
    ),
    (dict(seeds=[]), r"seeds: expected an integer >= 0 or a non-empty list of them, got \[\]"),
    (dict(method="cubic"), r"method: expected one of 'slerp', 'lerp', got 'cubic'"),
    (dict(batch_size=0), r"batch_size: expected an integer >= 1 \(frames per call\), got 0"),
    (dict(negative_prompt=["a", "b"]), r"negative_prompt: expected a string or None .*, got list"),
    (dict(prompts=[]), r"prompts: expected a string or a non-empty list of strings, got \[\]"),
    (dict(num_inference_steps=0), r"num_inference_steps: expected an integer >= 1, got 0"),
    (dict(height=60), r"height: expected a multiple of 8"),
    (dict(eta=-0.5), r"eta: expected a number >= 0, got -0.5"),
    (dict(scheduler="ddim", eta=2), r"DDIMScheduler: eta must be in \[0, 1\]; got 2"),
    (
        dict(latents=np.zeros((3, 4, 8, 8), np.float32)),
        r"prompts: expected 1 or 3 \(one per keyframe; seeds: 2, latents: 3\), got 2",
    ),
    (
        dict(latents=np.zeros((2, 4, 4, 4), np.float32)),
        r"latents: expected an array of shape \(2, 4, 8, 8\)",
    ),
    (
        dict(latents=np.stack([np.ones((4, 8, 8)), -np.ones((4, 8, 8))]).astype(np.float32)),
        r"slerp: expected latents\[0\] and \[1\] that are not opposite, got a cosine of -1",
    ),
]


@pytest.mark.parametrize(("overrides", "message"), BAD_WALKS)
def test_bad_walks_are_input_errors_before_any_work(pipe, overrides, message):
    arguments = {"prompts": PROMPTS, "seeds": SEEDS, **FAST, **overrides}
    with pytest.raises(InputError, match=message):
        pipe.walk(**arguments)
    with pytest.raises(InputError, match=message):
        pipe.interpolate(**arguments)


def test_eta_is_every_frame_s_as_a_plain_call_s(pipe, plain):
    """DDIM's eta > 0 draws noise at every step: each keyframe's stream, slerped between."""
    settings = dict(FAST, scheduler="ddim", eta=0.5)
    out = pipe.interpolate(PROMPTS, seeds=SEEDS, num_frames=3, **settings)
    expected = plain(PROMPTS[1], seed=SEEDS[1], **settings).images[0]
    np.testing.assert_array_equal(out.images[-1], expected)
    without = plain(PROMPTS[1], seed=SEEDS[1], **{**settings, "eta": 0.0})
    assert np.abs(without.images[0] - expected).max() > 0


def test_walk_names_an_unknown_argument(pipe):
    with pytest.raises(InputError, match=r"unexpected arguments \['guidance'\]; expected some of"):
        pipe.walk(PROMPTS, seeds=SEEDS, guidance=2)


def test_a_bad_scheduler_fails_when_the_walk_is_made(pipe):
    with pytest.raises(InputError, match=r"unknown scheduler 'nope'"):
        pipe.walk(PROMPTS, seeds=SEEDS, scheduler="nope", **FAST)


# ------------------------------------------------------------------ the prompt_embeds seam


def test_prompt_embeds_give_the_image_of_the_prompt(pipe, plain):
    embeddings = pipe.embed_prompts(PROMPTS)
    assert embeddings.prompt_embeds.shape == (2, 77, 32)  # the tiny CLIP's width
    assert embeddings.pooled_prompt_embeds is None  # SD 1.x: no pooled embeddings
    settings = dict(FAST, seed=4, num_images_per_prompt=2, negative_prompt="blurry")
    expected = plain(PROMPTS, **settings).images
    given = pipe(prompt_embeds=embeddings.prompt_embeds, **settings).images
    np.testing.assert_array_equal(given, expected)
    negative = pipe.embed_prompts(["blurry", "blurry"]).prompt_embeds
    both = pipe(
        prompt_embeds=embeddings.prompt_embeds,
        negative_prompt_embeds=negative,
        **{**settings, "negative_prompt": None},
    ).images
    np.testing.assert_array_equal(both, expected)
    request = pipe.request(prompt_embeds=embeddings.prompt_embeds, seed=0)
    assert request.batch_size == 2 and request.prompts == ()


BAD_EMBEDS = [
    (
        dict(prompt="a fox", prompt_embeds="E"),
        r"prompt: expected a prompt or prompt_embeds=, not both",
    ),
    (
        dict(),
        r"prompt: expected a string, a non-empty list of strings, or prompt_embeds=; got neither",
    ),
    (
        dict(prompt_embeds=np.zeros((1, 77), np.float32)),
        r"prompt_embeds: expected an array of shape \(prompts, tokens, 32\), got ndarray of shape \(1, 77\)",
    ),
    (
        dict(prompt_embeds=np.zeros((1, 77, 16), np.float32)),
        r"prompt_embeds: expected an array of shape \(prompts, tokens, 32\), got ndarray of shape \(1, 77, 16\)",
    ),
    (
        dict(prompt_embeds=np.zeros((0, 77, 32), np.float32)),
        r"prompt_embeds: expected an array of shape \(prompts, tokens, 32\)",
    ),
    (
        dict(prompt_embeds=np.zeros((1, 77, 32), np.int64)),
        r"prompt_embeds: expected a float array, got dtype int64",
    ),
    (
        dict(prompt_embeds=[[[0.0] * 32] * 77]),
        r"prompt_embeds: expected an array of shape .*, got list of shape \(\)",
    ),
    (
        dict(
            prompt_embeds=np.zeros((2, 77, 32), np.float32),
            negative_prompt_embeds=np.zeros((1, 77, 32), np.float32),
        ),
        r"negative_prompt_embeds: expected an array of shape \(2, 77, 32\), got ndarray of shape \(1, 77, 32\)",
    ),
    (
        dict(
            prompt="a fox",
            negative_prompt="blurry",
            negative_prompt_embeds=np.zeros((1, 77, 32), np.float32),
        ),
        r"negative_prompt: expected a negative prompt or negative_prompt_embeds=, not both",
    ),
    (
        dict(
            prompt_embeds=np.zeros((1, 77, 32), np.float32),
            pooled_prompt_embeds=np.zeros((1, 32), np.float32),
        ),
        r"pooled_prompt_embeds: expected None: this sd1 model folder's U-Net takes no pooled embeddings; got ndarray",
    ),
    (
        dict(prompt_embeds=np.zeros((2, 77, 32), np.float32), negative_prompt=["a", "b", "c"]),
        r"negative_prompt: expected one prompt or 2 \(one per prompt\), got 3",
    ),
    (
        dict(
            prompt_embeds=np.zeros((1, 77, 32), np.float32),
            latents=np.zeros((2, 4, 8, 8), np.float32),
        ),
        r"latents: expected an array of shape \(1, 4, 8, 8\)",
    ),
]


@pytest.mark.parametrize(("overrides", "message"), BAD_EMBEDS)
def test_bad_embeddings_are_input_errors(pipe, overrides, message):
    with pytest.raises(InputError, match=message):
        pipe(**{**FAST, "seed": 0, **overrides})


def test_embeds_of_another_token_count_need_their_negative(pipe):
    long = np.zeros((1, 154, 32), np.float32)  # e.g. a long prompt's two chunks
    with pytest.raises(
        InputError,
        match=r"prompt_embeds: expected the shape of the encoded negative prompts, \(1, 77, 32\), to join them; got \(1, 154, 32\)",
    ):
        pipe(prompt_embeds=long, seed=0, **FAST)
    images = pipe(prompt_embeds=long, negative_prompt_embeds=long, seed=0, **FAST).images
    assert images.shape == (1, SIZE, SIZE, 3)
