"""Walks between keyframes: frames whose noise and prompts move smoothly from one
keyframe (a prompt and a seed, or given initial noise) to the next.

    walk = pipe.walk(["a red fox", "a blue cat"], seeds=[1, 2], num_frames=16)
    for progress in pipe.generate_walk(walk):     # one FrameProgress per frame
        ...                                       # progress.result is set on the last one
    frames = pipe.interpolate(["a red fox", "a blue cat"], seeds=[1, 2]).images

**Keyframes.** ``prompts`` and ``seeds`` give one keyframe each; either may be a single
value shared by every keyframe (one prompt and several seeds walk between seeds, several
prompts and one seed walk between prompts). ``seeds=None`` draws one seed at random for
every keyframe (``InterpolationOutput.seeds`` says which). ``latents`` (keyframes, C,
h, w) gives each keyframe's initial noise instead, as ``latents=`` does for a plain call;
the seeds then only feed the schedulers that draw noise at every step.

**Frames.** ``num_frames`` counts every frame, keyframes included: the ``num_frames - 1``
intervals are shared out evenly over the ``keyframes - 1`` segments (earlier segments get
one more where they do not divide), so every keyframe is a frame and ``num_frames ==
keyframes`` gives the keyframes alone.

**What is interpolated.** A frame at ``t`` in [0, 1) between keyframes a and b gets:

- noise: the spherical interpolation (``slerp``) of a's and b's noise, the whole array as
  one vector. Two independent Gaussian noises are nearly orthogonal, and slerp keeps the
  result's per-pixel statistics those of unit Gaussian noise, which the denoiser expects;
  a straight line (lerp) would shrink its variance to (1 - t)^2 + t^2 (0.5 halfway) and
  give washed-out frames. This is the initial noise and, for schedulers that draw noise at
  every step (ancestral ones), every step's noise: each keyframe's stream is drawn as a
  plain call with its seed draws it (sdrt/noise.py), and the frame gets them slerped.
- prompt embeddings (and SDXL's pooled embeddings): ``method="slerp"`` (each token's
  vector along the great circle, so shared tokens such as the start token stay as they
  are) or ``"lerp"`` (straight lines). The negative prompt is one for every frame.

At ``t = 0`` a frame takes the keyframe's arrays as they are, so **a keyframe's frame is
a plain call** ``pipe(prompt, seed=seed, ...)`` with the same settings (tested bit for
bit; see the README for the batching measurement).

**slerp's edge cases.** Nearly parallel vectors (cosine above ``PARALLEL_COSINE``) are
interpolated linearly: the great circle and the chord are then the same to float32, and
dividing by sin(angle) would only add rounding. Opposite vectors (cosine below
``-PARALLEL_COSINE``) have no one great circle between them (every half circle through
both is as short); rather than pick one arbitrarily, slerp raises InputError naming them.
Zero vectors are interpolated linearly.

**Batches.** Frames run ``batch_size`` at a time (default: the folder's
``build.max_batch``), each batch one pipeline call with the frames' embeddings as
``prompt_embeds`` and their noise from a ``WalkNoise``.
"""

from __future__ import annotations

import numbers
import secrets
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from sdrt.arrays import namespace_of
from sdrt.errors import InputError, ParameterError
from sdrt.manifest import Manifest
from sdrt.noise import SeedNoise
from sdrt.recipes import DEFAULT_ETA, DEFAULT_GUIDANCE_SCALE, DEFAULT_STEPS
from sdrt.request import Request, make_request, prompt_list

METHODS = ("slerp", "lerp")
PARALLEL_COSINE = 0.9995  # above: lerp; below its negative: opposite, an error
DEFAULT_FRAMES = 16


# ---------------------------------------------------------------------------- the maths


def lerp(a, b, t: float):
    """``a`` at t=0, ``b`` at t=1 (exactly), the straight line between them otherwise."""
    if t == 0:
        return a
    if t == 1:
        return b
    return (a + (b - a) * t).astype(a.dtype)


def slerp(a, b, t: float, *, axis: int | None = None, what: str = "vectors"):
    """Spherical interpolation from ``a`` (t=0, exactly) to ``b`` (t=1, exactly).

    The vectors lie along ``axis`` (None: each whole array is one vector). Computed in
    float64, returned in ``a``'s dtype. Nearly parallel or zero vectors: lerp; opposite
    vectors: InputError naming ``what`` (see the module docstring).
    """
    if t == 0:
        return a
    if t == 1:
        return b
    xp = namespace_of(a)
    a64, b64 = a.astype(xp.float64), b.astype(xp.float64)
    norms = xp.sqrt((a64 * a64).sum(axis=axis, keepdims=True)) * xp.sqrt(
        (b64 * b64).sum(axis=axis, keepdims=True)
    )
    zero = norms == 0
    cosine = (a64 * b64).sum(axis=axis, keepdims=True) / xp.where(zero, 1.0, norms)
    cosine = xp.where(zero, 1.0, xp.clip(cosine, -1.0, 1.0))
    lowest = float(cosine.min())
    if lowest < -PARALLEL_COSINE:
        raise InputError(
            f"slerp: expected {what} that are not opposite, got a cosine of {lowest:.6f} "
            "between them: no one great circle joins opposite vectors"
        )
    parallel = cosine > PARALLEL_COSINE
    angle = xp.arccos(cosine)
    sine = xp.where(parallel, 1.0, xp.sin(angle))
    weight_a = xp.where(parallel, 1.0 - t, xp.sin((1.0 - t) * angle) / sine)
    weight_b = xp.where(parallel, t, xp.sin(t * angle) / sine)
    return (weight_a * a64 + weight_b * b64).astype(a.dtype)


@dataclass(frozen=True)
class FramePosition:
    """Where a frame lies on the walk: ``t`` in [0, 1) from keyframe ``keyframe`` to the
    next (t == 0: the keyframe itself)."""

    keyframe: int
    t: float


def frame_positions(keyframes: int, frames: int) -> tuple[FramePosition, ...]:
    """``frames`` positions, every keyframe among them, the intervals shared out evenly
    over the segments (the first ones one more where they do not divide)."""
    segments = keyframes - 1
    base, extra = divmod(frames - 1, segments)
    positions = []
    for segment in range(segments):
        intervals = base + (1 if segment < extra else 0)
        positions += [FramePosition(segment, j / intervals) for j in range(intervals)]
    positions.append(FramePosition(keyframes - 1, 0.0))
    return tuple(positions)


def at(values, position: FramePosition, mix):
    """A frame's value from its keyframes' ``values``: ``mix(a, b, t)`` between them."""
    if position.t == 0:
        return values[position.keyframe]
    return mix(values[position.keyframe], values[position.keyframe + 1], position.t)


def _slerp_noise(a, b, t: float):
    return slerp(a, b, t, what="the keyframes' noise")


class WalkNoise:
    """One batch of frames' noise (sdrt.noise.NoiseSource): every keyframe's plain-call
    stream (``SeedNoise(seed)``) drawn once per draw, slerped for each frame."""

    def __init__(self, seeds: tuple[int, ...], positions: tuple[FramePosition, ...]):
        needed = {p.keyframe for p in positions} | {p.keyframe + 1 for p in positions if p.t}
        self._streams = {k: SeedNoise(seeds[k]) for k in sorted(needed)}
        self._positions = positions

    def initial(self, shape: tuple[int, ...]) -> np.ndarray:
        return self._draw(shape, lambda stream, one: stream.initial(one))

    def step(self, shape: tuple[int, ...]) -> np.ndarray:
        return self._draw(shape, lambda stream, one: stream.step(one))

    def _draw(self, shape: tuple[int, ...], draw) -> np.ndarray:
        if shape[0] != len(self._positions):
            raise ValueError(f"expected noise for {len(self._positions)} frames, got {shape}")
        one = (1, *shape[1:])
        drawn = {k: draw(stream, one) for k, stream in self._streams.items()}
        return np.concatenate([at(drawn, p, _slerp_noise) for p in self._positions], axis=0)


# ---------------------------------------------------------------------------- the walk


@dataclass(frozen=True)
class Walk:
    """A checked walk: its keyframes, frames and the settings of every frame's call."""

    prompts: tuple[str, ...]  # one per keyframe
    seeds: tuple[int, ...]  # one per keyframe
    positions: tuple[FramePosition, ...]  # one per frame, in order
    method: str  # how the prompt embeddings are interpolated: "slerp" or "lerp"
    batch_size: int  # frames per pipeline call
    request: Request  # the keyframes as one checked call: the settings every frame runs
    latents: Any = None  # (keyframes, C, h, w) given initial noise, or None: from the seeds


@dataclass(frozen=True)
class InterpolationOutput:
    images: Any  # list of PIL images, or float32 NHWC np.ndarray in [0, 1], one per frame
    positions: tuple[FramePosition, ...]
    seeds: tuple[int, ...]  # each keyframe's seed (drawn at random where none was given)


@dataclass(frozen=True)
class FrameProgress:
    """One frame done (frames come in order); the last FrameProgress carries the result."""

    frame: int  # frames done so far
    total_frames: int
    position: FramePosition
    image: Any  # this frame's image: a PIL image, or an (H, W, 3) array for output_type="np"
    result: InterpolationOutput | None = None


def make_walk(
    manifest: Manifest,
    prompts: str | list[str],
    *,
    seeds: int | list[int] | None = None,
    latents: Any = None,
    num_frames: int = DEFAULT_FRAMES,
    negative_prompt: str | None = None,
    method: str = "slerp",
    batch_size: int | None = None,
    **settings: Any,
) -> Walk:
    """The checked Walk, or InputError. ``settings`` are ``Pipeline.__call__``'s
    num_inference_steps, guidance_scale, height, width, scheduler, image, strength,
    mask_image, output_type and eta, with its defaults; every frame runs with them."""
    prompts = prompt_list(prompts, "prompts")
    seeds = _seed_list(seeds)
    count = _keyframe_count(len(prompts), seeds, latents)
    prompts, seeds = _per_keyframe(prompts, count), _per_keyframe(seeds, count)
    frames = _integer(num_frames, "num_frames", count, "at least one frame per keyframe")
    if method not in METHODS:
        raise ParameterError(
            f"{{method}}: expected one of {', '.join(map(repr, METHODS))}, got {{value!r}}",
            value=method,
        )
    if negative_prompt is not None and not isinstance(negative_prompt, str):
        raise InputError(
            "negative_prompt: expected a string or None (one negative prompt for every "
            f"frame), got {type(negative_prompt).__name__}"
        )
    per_call = manifest.build.max_batch if batch_size is None else batch_size
    per_call = _integer(per_call, "batch_size", 1, "frames per call")
    request = _keyframes_request(manifest, prompts, latents, negative_prompt, settings)
    if latents is not None:
        _check_not_opposite(request.latents)
    return Walk(
        prompts=tuple(prompts),
        seeds=tuple(seeds),
        positions=frame_positions(count, frames),
        method=method,
        batch_size=per_call,
        request=request,
        latents=request.latents,
    )


def _integer(value: Any, name: str, minimum: int, meaning: str) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ParameterError(
            f"{{{name}}}: expected an integer >= {minimum} ({meaning}), got {{value!r}}",
            value=value,
        )
    return int(value)


def _seed_list(seeds: Any) -> list[int]:
    """The seeds given as a list (one drawn at random for None)."""
    if seeds is None:
        return [secrets.randbelow(2**32)]
    values = list(seeds) if isinstance(seeds, (list, tuple)) else [seeds]
    for value in values:
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0:
            raise InputError(
                f"seeds: expected an integer >= 0 or a non-empty list of them, got {seeds!r}"
            )
    if not values:
        raise InputError("seeds: expected an integer >= 0 or a non-empty list of them, got []")
    return [int(v) for v in values]


def _keyframe_count(prompts: int, seeds: list[int], latents: Any) -> int:
    """How many keyframes: the longest of prompts, seeds and latents, each of which must
    be one (shared by every keyframe) or that many."""
    lengths = {"prompts": prompts, "seeds": len(seeds)}
    if latents is not None:
        lengths["latents"] = len(latents) if hasattr(latents, "__len__") else 1
    count = max(lengths.values())
    for name, length in lengths.items():
        if length not in (1, count):
            others = ", ".join(f"{{{n}}}: {v}" for n, v in lengths.items() if n != name)
            raise ParameterError(
                f"{{{name}}}: expected 1 or {count} (one per keyframe; {others}), got {length}"
            )
    if count < 2:
        raise ParameterError(
            "{prompts}: expected two or more keyframes (several prompts, seeds or latents), got 1"
        )
    return count


def _per_keyframe(values: list, count: int) -> list:
    return values * count if len(values) == 1 else values


def _keyframes_request(manifest, prompts, latents, negative_prompt, settings) -> Request:
    """The keyframes as one checked Request, so that every setting fails here, before
    any work (sizes, strength, scheduler name, latents' shape)."""
    unknown = sorted(set(settings) - set(FRAME_SETTINGS))
    if unknown:
        expected = sorted([*FRAME_SETTINGS, *WALK_ARGUMENTS])
        raise InputError(f"unexpected arguments {unknown}; expected some of {expected}")
    if latents is not None and len(latents) == 1:
        latents = namespace_of(latents).concatenate([latents] * len(prompts), axis=0)
    return make_request(
        manifest,
        prompt=list(prompts),
        negative_prompt=negative_prompt,
        num_images_per_prompt=1,
        seed=None,
        latents=latents,
        **{**FRAME_SETTINGS, **settings},
    )


# make_walk's own arguments, besides the prompts and FRAME_SETTINGS.
WALK_ARGUMENTS = ("seeds", "latents", "num_frames", "negative_prompt", "method", "batch_size")
# The settings every frame's call takes, and their defaults (Pipeline.__call__'s: steps,
# guidance and scheduler left at them take the folder's recipe, sdrt/recipes.py).
FRAME_SETTINGS = {
    "num_inference_steps": DEFAULT_STEPS,
    "guidance_scale": DEFAULT_GUIDANCE_SCALE,
    "height": None,
    "width": None,
    "scheduler": None,
    "image": None,
    "strength": 0.8,
    "mask_image": None,
    "output_type": "pil",
    "eta": DEFAULT_ETA,
}


def _check_not_opposite(latents) -> None:
    """Given keyframe noise: consecutive keyframes must not be opposite (slerp's one
    refusal), said now rather than at the first frame between them."""
    for k in range(len(latents) - 1):
        slerp(latents[k : k + 1], latents[k + 1 : k + 2], 0.5, what=f"latents[{k}] and [{k + 1}]")


# ---------------------------------------------------------------------------- running


def run_walk(
    pipe, walk: Walk, stage_callback=None, *, keep_frames: bool = True
) -> Iterator[FrameProgress]:
    """Generate the walk's frames, ``walk.batch_size`` per call, yielding each in order.

    ``keep_frames``: gather every frame into the last FrameProgress's result. False holds
    no frame beyond the batch being yielded (the last result is then None): for callers
    that write each frame as it comes, so that a walk of any length fits in memory."""
    images: list = []
    total = len(walk.positions)
    for done, (position, image) in enumerate(_frames(pipe, walk, stage_callback), 1):
        output = None
        if keep_frames:
            images.append(image)
            output = _output(walk, images) if done == total else None
        yield FrameProgress(done, total, position, image, output)


def _frames(pipe, walk: Walk, stage_callback) -> Iterator[tuple[FramePosition, Any]]:
    """(position, image) for every frame in order, one batch held at a time."""
    keyframes = _keyframe_embeddings(pipe, walk.prompts)
    total = len(walk.positions)
    for start in range(0, total, walk.batch_size):
        positions = walk.positions[start : start + walk.batch_size]
        request = _frames_request(walk, keyframes, positions)
        result = None
        noise = WalkNoise(walk.seeds, positions)
        for progress in pipe.generate(request, stage_callback=stage_callback, noise=noise):
            result = progress.result
        images = result.images
        del result  # the batch's images are dropped as they are yielded, not kept here
        for index, position in enumerate(positions):
            yield position, images[index]


def _keyframe_embeddings(pipe, prompts: tuple[str, ...]) -> list:
    """Each keyframe's PromptEmbeddings, each prompt encoded on its own, as a plain call
    with that prompt encodes it (a batch of prompts could round differently)."""
    encoded = {p: pipe.embed_prompts(p) for p in dict.fromkeys(prompts)}
    return [encoded[p] for p in prompts]


def _frames_request(walk: Walk, keyframes: list, positions) -> Request:
    """One batch of frames as a Request: the walk's settings, the frames' embeddings as
    prompt_embeds, their initial noise as latents where the keyframes' was given."""

    def mix_embeddings(a, b, t):
        if walk.method == "lerp":
            return lerp(a, b, t)
        return slerp(a, b, t, axis=-1, what="the keyframes' prompt embeddings")

    hidden = [k.prompt_embeds for k in keyframes]
    xp = namespace_of(hidden[0])
    prompt_embeds = xp.concatenate([at(hidden, p, mix_embeddings) for p in positions], axis=0)
    pooled = None
    if keyframes[0].pooled_prompt_embeds is not None:
        values = [k.pooled_prompt_embeds for k in keyframes]
        pooled = xp.concatenate([at(values, p, mix_embeddings) for p in positions], axis=0)
    latents = None
    if walk.latents is not None:
        noise = [walk.latents[k : k + 1] for k in range(len(walk.latents))]
        latents = namespace_of(noise[0]).concatenate(
            [at(noise, p, _slerp_noise) for p in positions], axis=0
        )
    return replace(
        walk.request,
        prompts=(),
        negative_prompts=walk.request.negative_prompts[:1] * len(positions),
        prompt_embeds=prompt_embeds,
        pooled_prompt_embeds=pooled,
        latents=latents,
        seed=None,
    )


def _output(walk: Walk, images: list) -> InterpolationOutput:
    frames = np.stack(images) if walk.request.output_type == "np" else list(images)
    return InterpolationOutput(frames, walk.positions, walk.seeds)
