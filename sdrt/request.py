"""One generation's arguments, checked at the boundary and frozen.

``make_request`` turns the keyword arguments of ``Pipeline.__call__`` into a Request, or
raises InputError saying what was expected and what came, before any graph runs.

Prompts come as text (``prompt``, ``negative_prompt``) or as the text encoders' outputs
(``prompt_embeds``, ``negative_prompt_embeds``, and for SDXL ``pooled_prompt_embeds``,
``negative_pooled_prompt_embeds``), with diffusers' names, meanings and rules: a prompt or
its embeddings, not both; SDXL embeddings come with their pooled ones.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from dataclasses import dataclass
from typing import Any

import numpy as np

from sdrt.arrays import namespace_of
from sdrt.control.adapter import (
    DEFAULT_FACTOR,
    AdapterSettings,
    adapter_default_size,
    check_adapter,
    check_adapter_size,
)
from sdrt.control.settings import (
    DEFAULT_END,
    DEFAULT_START,
    ControlSettings,
    check_control,
)
from sdrt.deep_cache import DeepCacheSettings, check_deep_cache
from sdrt.errors import InputError, ParameterError
from sdrt.guidance_embedding import check_guidance_embedding
from sdrt.images import image_size
from sdrt.manifest import Manifest
from sdrt.recipes import DEFAULT_ETA, call_settings, warn_guidance
from sdrt.vae_choice import check_vae_choice

OUTPUT_TYPES = ("pil", "np")


@dataclass(frozen=True)
class Request:
    prompts: tuple[str, ...]  # one per image: each prompt repeated num_images_per_prompt times
    # (empty where prompt_embeds are given)
    negative_prompts: tuple[str, ...]  # one per image ("" where none was given)
    num_inference_steps: int
    guidance_scale: float
    height: int
    width: int
    scheduler: str | None  # None: the folder's scheduler (or its recipe's, sdrt/recipes.py)
    strength: float
    output_type: str
    image: Any = None
    mask_image: Any = None
    latents: np.ndarray | None = None
    seed: int | np.random.Generator | None = None
    negative_prompt: Any = None  # as given: SDXL zeroes the unconditional input when None
    # Given text-encoder outputs, one row per image (repeated num_images_per_prompt times
    # like prompts), or None: the prompts are encoded.
    prompt_embeds: Any = None  # (images, tokens, width)
    negative_prompt_embeds: Any = None  # the shape of prompt_embeds
    pooled_prompt_embeds: Any = None  # SDXL: (images, pooled width)
    negative_pooled_prompt_embeds: Any = None
    deep_cache: DeepCacheSettings | None = None  # deep_cache_interval/_branch; None: off
    vae: str = "full"  # "full" or "tiny" (sdrt/vae_choice.py)
    # diffusers' eta: passed to the schedulers that take it (DDIM, TCD), ignored by others
    eta: float = 0.0
    # The U-Net embeds the guidance scale (LCM; sdrt/guidance_embedding.py): no CFG batch.
    guidance_embedding: bool = False
    # Keys set on the scheduler's config: the folder recipe's, where the call left
    # ``scheduler`` to it (timestep_spacing="trailing" for Turbo); else empty.
    scheduler_config: Any = dataclasses.field(default_factory=dict)
    # control_image and its settings (sdrt/control/settings.py); None: no ControlNet runs
    control: ControlSettings | None = None
    # adapter_image and its settings (sdrt/control/adapter.py); None: no T2I-Adapter runs
    adapter: AdapterSettings | None = None

    @property
    def batch_size(self) -> int:
        return len(self.negative_prompts)

    @property
    def do_classifier_free_guidance(self) -> bool:
        return self.guidance_scale > 1.0 and not self.guidance_embedding


def prompt_list(value: Any, name: str) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, (list, tuple)) and value and all(isinstance(p, str) for p in value):
        return list(value)
    raise ParameterError(
        f"{{{name}}}: expected a string or a non-empty list of strings, got {{value!r}}",
        value=value,
    )


def _integer(value: Any, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ParameterError(
            f"{{{name}}}: expected an integer, got {{kind}} {{value!r}}",
            kind=type(value).__name__,
            value=value,
        )
    if value < minimum:
        raise ParameterError(
            f"{{{name}}}: expected an integer >= {minimum}, got {{value}}", value=value
        )
    return int(value)


def _real(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise ParameterError(f"{{{name}}}: expected a finite number, got {{value!r}}", value=value)
    return float(value)


def _check_size(name: str, value: Any, manifest: Manifest) -> int:
    build = manifest.build
    value = _integer(value, name, 1)
    if value % build.size_multiple:
        raise ParameterError(
            f"{{{name}}}: expected a multiple of {build.size_multiple} (the size multiple this "
            f"model folder was built for), got {value}"
        )
    if not build.min_size <= value <= build.max_size:
        raise ParameterError(
            f"{{{name}}}: expected a size between {build.min_size} and {build.max_size} pixels "
            f"(the range this model folder was built for), got {value}"
        )
    return value


def _default_size(manifest: Manifest, image: Any) -> tuple[int, int]:
    """(height, width) when none is given: the size the folder was optimised for (txt2img),
    or the image's own size as diffusers' VaeImageProcessor takes it (rounded down to the
    size multiple), scaled with its aspect ratio kept into the folder's built range."""
    if image is None:
        return manifest.build.opt_size, manifest.build.opt_size
    width, height = image_size(image, "image")
    width, height = fit_size(width, height, manifest)
    return height, width


def fit_size(width: int, height: int, manifest: Manifest) -> tuple[int, int]:
    """(width, height) of an image scaled, aspect ratio kept, so that both sides lie in the
    folder's built range, then rounded down to its size multiple; an image already in range
    is only rounded. InputError where the aspect ratio cannot fit the range."""
    build = manifest.build
    multiple = build.size_multiple
    low = -(-build.min_size // multiple) * multiple  # the smallest allowed multiple
    high = build.max_size // multiple * multiple  # the largest
    scale = 1.0
    if max(width, height) > high:
        scale = high / max(width, height)
    if min(width, height) * scale < low:
        scale = low / min(width, height)
    if max(width, height) * scale > high + 1e-9:
        raise ParameterError(
            f"{{image}}: expected an aspect ratio that fits the sizes this model folder was "
            f"built for ({build.min_size} to {build.max_size} pixels a side), got a "
            f"{width}x{height} image; pass {{height=}} and {{width=}} to resize it"
        )

    def side(value: int) -> int:
        scaled = int(round(value * scale, 6)) // multiple * multiple
        return min(max(scaled, low), high)

    return side(width), side(height)


def make_request(
    manifest: Manifest,
    *,
    prompt: Any,
    negative_prompt: Any,
    num_inference_steps: Any,
    guidance_scale: Any,
    height: Any,
    width: Any,
    num_images_per_prompt: Any,
    seed: Any,
    latents: Any,
    scheduler: Any,
    image: Any,
    strength: Any,
    mask_image: Any,
    output_type: Any,
    prompt_embeds: Any = None,
    negative_prompt_embeds: Any = None,
    pooled_prompt_embeds: Any = None,
    negative_pooled_prompt_embeds: Any = None,
    deep_cache_interval: Any = None,
    deep_cache_branch: Any = None,
    vae: Any = None,
    eta: Any = DEFAULT_ETA,
    control_image: Any = None,
    controlnet: Any = None,
    controlnet_conditioning_scale: Any = None,
    control_guidance_start: Any = DEFAULT_START,
    control_guidance_end: Any = DEFAULT_END,
    guess_mode: Any = False,
    adapter_image: Any = None,
    adapter_conditioning_scale: Any = 1.0,
    adapter_conditioning_factor: Any = DEFAULT_FACTOR,
) -> Request:
    """The checked Request for ``Pipeline.__call__``'s arguments, or InputError. Steps,
    guidance, scheduler and eta left at their defaults (sdrt.recipes.DEFAULT_STEPS, ...,
    scheduler None) take the folder's recipe where it has one."""
    recipe = manifest.recipe
    settings = call_settings(recipe, num_inference_steps, guidance_scale, scheduler, eta)
    given = Embeddings(
        prompt_embeds, negative_prompt_embeds, pooled_prompt_embeds, negative_pooled_prompt_embeds
    )
    prompts, negatives = _prompt_lists(manifest, prompt, negative_prompt, given)
    per_prompt = _integer(num_images_per_prompt, "num_images_per_prompt", 1)
    steps = _integer(settings.num_inference_steps, "num_inference_steps", 1)
    _check_names(output_type, settings.scheduler)
    steps_note = ""
    if "num_inference_steps" in settings.from_recipe:
        steps_note = f" (this folder's {recipe.name} recipe)"
    strength = _check_images(manifest, image, mask_image, strength, steps, steps_note)
    control = check_control(
        manifest,
        control_image,
        controlnet,
        controlnet_conditioning_scale,
        control_guidance_start,
        control_guidance_end,
        guess_mode,
        mode="txt2img" if image is None else ("img2img" if mask_image is None else "inpaint"),
    )
    adapter = check_adapter(
        manifest, adapter_image, adapter_conditioning_scale, adapter_conditioning_factor
    )
    _check_adapter_call(adapter, image, control, deep_cache_interval)
    # Without an image, the control (or adapter) image's size, as diffusers' pipelines take it
    sized_by = image
    if sized_by is None:
        sized_by = control.first_image if control is not None else adapter_image
    asked_size = height, width
    height, width = _image_size(manifest, sized_by, height, width)
    if adapter is not None:  # as diffusers: a size from the image, rounded down to its unshuffle
        height, width = adapter_default_size(adapter, asked_size, (height, width))
    check_adapter_size(adapter, height, width)
    seed, latents = _noise(manifest, seed, latents, len(negatives) * per_prompt, height, width)
    guidance_embedding = check_guidance_embedding(manifest, negative_prompt, negative_prompt_embeds)
    guidance = _guidance(settings.guidance_scale)
    warn_guidance(recipe, guidance, guidance_embedding)
    if deep_cache_interval is not None and control is not None:
        raise ParameterError(
            "{deep_cache_interval}: DeepCache's cached steps skip the deep blocks the "
            "ControlNet residuals feed, so it does not run with {control_image=} (not "
            "verified); got both"
        )
    deep_cache = check_deep_cache(manifest, deep_cache_interval, deep_cache_branch)
    return Request(
        prompts=tuple(p for p in prompts for _ in range(per_prompt)),
        negative_prompts=tuple(n for n in negatives for _ in range(per_prompt)),
        num_inference_steps=steps,
        guidance_scale=guidance,
        height=height,
        width=width,
        scheduler=settings.scheduler,
        strength=strength,
        output_type=output_type,
        image=image,
        mask_image=mask_image,
        latents=latents,
        seed=seed,
        negative_prompt=negative_prompt,
        **given.repeated(per_prompt).as_request_fields(),
        deep_cache=deep_cache,
        vae=check_vae_choice(manifest, vae),
        eta=_eta(settings.eta),
        guidance_embedding=guidance_embedding,
        scheduler_config=settings.scheduler_config,
        control=control,
        adapter=adapter,
    )


def _check_adapter_call(adapter, image, control, deep_cache_interval) -> None:
    """What an adapter call does not combine with, refused with one line."""
    if adapter is None:
        return
    clash = None
    if image is not None:  # diffusers' adapter pipelines are txt2img only
        clash = "{image=} (img2img and inpainting; diffusers' adapter pipelines are txt2img)"
    elif control is not None:
        clash = "{control_image=} (ControlNet and T2I-Adapter in one call are not supported)"
    elif deep_cache_interval is not None:
        clash = "{deep_cache_interval=} (DeepCache with a T2I-Adapter is not verified)"
    if clash is not None:
        raise ParameterError("{adapter_image}: expected a txt2img call without " + clash)


def _eta(value: Any) -> float:
    """diffusers' eta: a finite number >= 0 (the schedulers that take it check their range;
    the others ignore it, as diffusers' pipelines do)."""
    eta = _real(value, "eta")
    if eta < 0:
        raise ParameterError(f"{{eta}}: expected a number >= 0, got {eta:g}")
    return eta


# ------------------------------------------------------------------- given embeddings


@dataclass(frozen=True)
class Embeddings:
    """Text-encoder outputs given in place of prompts (diffusers' argument names)."""

    prompt: Any = None  # prompt_embeds
    negative: Any = None  # negative_prompt_embeds
    pooled: Any = None  # pooled_prompt_embeds
    negative_pooled: Any = None  # negative_pooled_prompt_embeds

    def repeated(self, times: int) -> Embeddings:
        """Each row ``times`` times in a row, as prompts are for num_images_per_prompt."""

        def repeat(value):
            if value is None or times == 1:
                return value
            return namespace_of(value).repeat(value, times, axis=0)

        return Embeddings(
            repeat(self.prompt),
            repeat(self.negative),
            repeat(self.pooled),
            repeat(self.negative_pooled),
        )

    def as_request_fields(self) -> dict[str, Any]:
        return {
            "prompt_embeds": self.prompt,
            "negative_prompt_embeds": self.negative,
            "pooled_prompt_embeds": self.pooled,
            "negative_pooled_prompt_embeds": self.negative_pooled,
        }


def _prompt_lists(manifest: Manifest, prompt: Any, negative_prompt: Any, given: Embeddings):
    """(prompts, negative prompts): the prompts empty where prompt_embeds stand in for
    them, one negative prompt per prompt ("" where none was given); given embeddings
    checked against the folder and each other."""
    prompts = _prompts(prompt, given)
    count = check_embeddings(manifest, given, len(prompts), negative_prompt)
    return prompts, _negative_prompts(negative_prompt, count)


def _noise(manifest: Manifest, seed, latents, images: int, height: int, width: int):
    """(seed, latents), checked: the call's noise."""
    if seed is not None and not isinstance(seed, np.random.Generator):
        seed = _integer(seed, "seed", 0)
    if latents is not None:
        latents = _check_latents(latents, manifest, images, height, width)
    return seed, latents


def _prompts(prompt: Any, given: Embeddings) -> list[str]:
    """The prompts as a list; empty where prompt_embeds stand in for them."""
    if given.prompt is not None:
        if prompt is not None:
            raise InputError(
                "prompt: expected a prompt or prompt_embeds=, not both (as in diffusers); got both"
            )
        return []
    if prompt is None:
        raise InputError(
            "prompt: expected a string, a non-empty list of strings, or prompt_embeds=; got neither"
        )
    return prompt_list(prompt, "prompt")


def check_embeddings(manifest: Manifest, given: Embeddings, prompts: int, negative: Any) -> int:
    """The number of prompts (rows of prompt_embeds, or ``prompts``); InputError where a
    given array does not fit the folder's U-Net or the other arrays."""
    hidden_width = _unet_input_width(manifest, "encoder_hidden_states")
    rows: Any = prompts
    tokens: Any = "tokens"
    if given.prompt is not None:
        expected = ("prompts", "tokens", hidden_width or "width")
        _check_embedding_array(given.prompt, "prompt_embeds", expected)
        rows, tokens = given.prompt.shape[:2]
    if given.negative is not None:
        if negative is not None:
            raise InputError(
                "negative_prompt: expected a negative prompt or negative_prompt_embeds=, "
                "not both (as in diffusers); got both"
            )
        expected = (rows, tokens, hidden_width or "width")
        _check_embedding_array(given.negative, "negative_prompt_embeds", expected)
    _check_pooled(manifest, given, rows)
    return int(rows)


def _check_pooled(manifest: Manifest, given: Embeddings, rows: int) -> None:
    """SDXL: pooled embeddings with every given prompt_embeds, and only with them."""
    pairs = (
        ("pooled_prompt_embeds", given.pooled, "prompt_embeds", given.prompt),
        (
            "negative_pooled_prompt_embeds",
            given.negative_pooled,
            "negative_prompt_embeds",
            given.negative,
        ),
    )
    for name, pooled, partner_name, partner in pairs:
        if manifest.family != "sdxl":
            if pooled is not None:
                raise InputError(
                    f"{name}: expected None: this {manifest.family} model folder's U-Net takes "
                    f"no pooled embeddings; got {type(pooled).__name__}"
                )
            continue
        if partner is not None and pooled is None:
            raise InputError(
                f"{name}: expected the pooled embeddings that go with {partner_name}= (an "
                "SDXL U-Net needs both, as in diffusers); got None"
            )
        if pooled is not None and partner is None:
            raise InputError(
                f"{name}: expected {partner_name}= with it (without it the prompt is "
                f"encoded, pooled embeddings too); got {name} alone"
            )
        if pooled is not None:
            width = _unet_input_width(manifest, "text_embeds") or "width"
            _check_embedding_array(pooled, name, (rows, width))


def _check_embedding_array(value: Any, name: str, expected: tuple[int | str, ...]) -> None:
    """``value`` is a float array of ``expected``'s shape (strings: any size >= 1)."""
    shape = tuple(getattr(value, "shape", ()))
    fits = len(shape) == len(expected) and all(
        s >= 1 if isinstance(e, str) else s == e for s, e in zip(shape, expected, strict=False)
    )
    if not hasattr(value, "dtype") or not fits:
        spelled = "(" + ", ".join(str(e) for e in expected) + ")"
        raise InputError(
            f"{name}: expected an array of shape {spelled}, got {type(value).__name__} "
            f"of shape {shape}"
        )
    if not np.issubdtype(np.dtype(str(value.dtype)), np.floating):
        raise InputError(f"{name}: expected a float array, got dtype {value.dtype}")


def _unet_input_width(manifest: Manifest, name: str) -> int | None:
    """The last dimension of the U-Net's input ``name`` where the folder fixes it."""
    unet = manifest.components.get("unet")
    specs = [] if unet is None else [s for s in unet.inputs if s.name == name]
    if not specs or not specs[0].shape or not isinstance(specs[0].shape[-1], int):
        return None
    return specs[0].shape[-1]


def _check_names(output_type: Any, scheduler: Any) -> None:
    if output_type not in OUTPUT_TYPES:
        raise InputError(
            f"output_type: expected one of {', '.join(map(repr, OUTPUT_TYPES))}, got {output_type!r}"
        )
    if scheduler is not None and not isinstance(scheduler, str):
        raise InputError(
            f"scheduler: expected a scheduler name (string), got {type(scheduler).__name__}"
        )


def _image_size(manifest: Manifest, image: Any, height: Any, width: Any) -> tuple[int, int]:
    """(height, width) as given, or the default for the folder (and image), checked."""
    if height is None or width is None:
        default_height, default_width = _default_size(manifest, image)
        height = default_height if height is None else height
        width = default_width if width is None else width
    return _check_size("height", height, manifest), _check_size("width", width, manifest)


def _negative_prompts(negative_prompt: Any, count: int) -> list[str]:
    """One negative prompt per prompt ("" where none was given)."""
    if negative_prompt is None:
        return [""] * count
    negatives = prompt_list(negative_prompt, "negative_prompt")
    if len(negatives) == 1:
        return negatives * count
    if len(negatives) != count:
        raise InputError(
            f"negative_prompt: expected one prompt or {count} (one per prompt), "
            f"got {len(negatives)}"
        )
    return negatives


def _guidance(guidance_scale: Any) -> float:
    guidance = _real(guidance_scale, "guidance_scale")
    if guidance < 0.0:
        raise ParameterError(
            f"{{guidance_scale}}: expected a number >= 0 (<= 1 turns guidance off), got "
            f"{guidance:g}"
        )
    return guidance


def _check_images(
    manifest: Manifest, image: Any, mask_image: Any, strength: Any, steps: int, steps_note: str = ""
):
    """The img2img / inpainting inputs; returns the strength (1.0 for txt2img).
    ``steps_note`` says where the steps came from (a folder's recipe), or is empty."""
    if mask_image is not None and image is None:
        raise ParameterError(
            "{mask_image}: inpainting needs the image to repaint; pass {image=} too"
        )
    if image is not None:
        strength = _real(strength, "strength")
        if not 0.0 < strength <= 1.0:
            raise ParameterError(f"{{strength}}: expected a number in (0, 1], got {strength}")
        if int(steps * strength) < 1:  # diffusers' get_timesteps: int(steps * strength) steps
            raise ParameterError(
                f"{{strength}}: {strength:g} of {{num_inference_steps}} {steps}{steps_note} leaves no "
                f"denoising step (int({steps} * {strength:g}) = 0); expected "
                "{num_inference_steps} * {strength} >= 1"
            )
        image_size(image, "image")
    else:
        strength = 1.0
    if mask_image is not None:
        image_wh, mask_wh = image_size(image, "image"), image_size(mask_image, "mask_image")
        if image_wh != mask_wh:
            raise ParameterError(
                f"{{mask_image}}: expected the size of {{image}}, {image_wh[0]}x{image_wh[1]}, "
                f"got {mask_wh[0]}x{mask_wh[1]}"
            )
    if manifest.unet_in_channels != manifest.latent_channels and mask_image is None:
        raise ParameterError(
            f"this model folder holds an inpainting U-Net ({manifest.unet_in_channels} input "
            "channels): pass {image=} and {mask_image=}"
        )
    return strength


def _check_latents(latents: Any, manifest: Manifest, batch: int, height: int, width: int):
    factor = manifest.vae_scale_factor
    expected = (batch, manifest.latent_channels, height // factor, width // factor)
    shape = tuple(getattr(latents, "shape", ()))
    if not hasattr(latents, "dtype") or shape != expected:
        raise InputError(
            f"latents: expected an array of shape {expected} (batch, channels, height/{factor}, "
            f"width/{factor}), got {type(latents).__name__} of shape {shape}"
        )
    if not np.issubdtype(np.dtype(str(latents.dtype)), np.floating):
        raise InputError(f"latents: expected a float array, got dtype {latents.dtype}")
    return latents
