"""Request bodies -> checked generations.

The OpenAI Images API fields (``prompt``, ``n``, ``size`` "WxH" or "auto",
``response_format`` "b64_json", ``stream``) plus sdrt's own with diffusers' names
(``negative_prompt``, ``num_inference_steps``, ``guidance_scale``, ``seed``,
``scheduler``, ``strength``, ``eta``, ``deep_cache_interval``, ``deep_cache_branch``, and
ControlNet's ``control_image``, ``controlnet``, ``controlnet_conditioning_scale``,
``control_guidance_start``, ``control_guidance_end``, ``guess_mode``: sdrt/service/control.py).
Everything the Pipeline checks is checked by the same code (``Pipeline.request`` ->
sdrt.request), so the messages are the CLI's; what only the API
has (``n``, ``size``, the deployer's limits) is checked here, and every message starts
with the name of the field it is about.
"""

from __future__ import annotations

import math
import secrets
from dataclasses import dataclass
from typing import Any

from sdrt.errors import InputError, ParameterError
from sdrt.pipeline import make_scheduler
from sdrt.recipes import DEFAULT_ETA, DEFAULT_GUIDANCE_SCALE, DEFAULT_STEPS
from sdrt.service.config import Limits
from sdrt.service.control import CONTROL_FIELDS
from sdrt.service.errors import bad_request
from sdrt.sizes import parse_size

# OpenAI fields that a client may send and that do not apply here: accepted, ignored.
IGNORED_FIELDS = frozenset(
    {"model", "user", "quality", "style", "background", "moderation", "output_compression"}
)
GENERATION_FIELDS = frozenset(
    {
        "prompt",
        "n",
        "size",
        "response_format",
        "output_format",
        "stream",
        "negative_prompt",
        "num_inference_steps",
        "guidance_scale",
        "seed",
        "scheduler",
        "deep_cache_interval",
        "deep_cache_branch",
        "vae",  # "full" / "tiny" (sdrt/vae_choice.py)
        "eta",  # diffusers' eta (DDIM, TCD); other schedulers ignore it
        *CONTROL_FIELDS,  # ControlNet (sdrt/service/control.py)
    }
)
EDIT_FIELDS = GENERATION_FIELDS | {"strength", "image", "mask"}
# Steps, guidance and eta a body leaves out take the folder's recipe (sdrt/recipes.py), else
# these (numbers that say they are defaults; they read as 20, 7.5 and 0).
DEFAULTS = {
    "n": 1,
    "num_inference_steps": DEFAULT_STEPS,
    "guidance_scale": DEFAULT_GUIDANCE_SCALE,
    "eta": DEFAULT_ETA,
}
IMG2IMG_STRENGTH = 0.8  # diffusers' Img2Img default
INPAINT_STRENGTH = 1.0  # diffusers' Inpaint default
SEED_RANGE = 2**32


@dataclass(frozen=True)
class Generation:
    """One checked API request: the sdrt Request and what the response needs."""

    request: Any  # sdrt.request.Request
    seed: int
    stream: bool
    prompt: str
    negative_prompt: str | None
    edit: bool  # img2img / inpainting


def check_fields(body: Any, allowed: frozenset[str]) -> dict:
    if not isinstance(body, dict):
        raise bad_request(f"body: expected a JSON object, got {type(body).__name__}", param="body")
    unknown = sorted(set(body) - allowed - IGNORED_FIELDS)
    if unknown:
        raise bad_request(
            f"{unknown[0]}: unknown field; expected some of {sorted(allowed)}", param=unknown[0]
        )
    if "prompt" not in body:
        raise bad_request("prompt: required, got none", param="prompt")
    return body


def make_generation(pipe, body: dict, limits: Limits, image=None, mask=None) -> Generation:
    """The checked Generation for a body (and, for edits, its uploaded images)."""
    prompt, negative = _prompts(body, limits)
    _check_formats(body)
    n = _bounded_integer(body.get("n", DEFAULTS["n"]), "n", limits.max_n)
    steps = body.get("num_inference_steps", DEFAULTS["num_inference_steps"])
    if isinstance(steps, int) and not isinstance(steps, bool) and steps > limits.max_steps:
        raise bad_request(
            f"num_inference_steps: expected at most {limits.max_steps} (this server's limit), "
            f"got {steps}"
        )
    width, height = _size(body.get("size"))
    seed = body.get("seed")
    if seed is None:
        seed = secrets.randbelow(SEED_RANGE)
    strength = body.get("strength")
    if strength is None:
        strength = IMG2IMG_STRENGTH if mask is None else INPAINT_STRENGTH
    arguments = {
        "negative_prompt": negative,
        "num_inference_steps": steps,
        "guidance_scale": body.get("guidance_scale", DEFAULTS["guidance_scale"]),
        "height": height,
        "width": width,
        "num_images_per_prompt": n,
        "seed": seed,
        "scheduler": body.get("scheduler"),
        "image": image,
        "mask_image": mask,
        "strength": strength,
        "output_type": "np",
        "deep_cache_interval": body.get("deep_cache_interval"),
        "deep_cache_branch": body.get("deep_cache_branch"),
        "vae": body.get("vae"),
        "eta": body.get("eta", DEFAULTS["eta"]),
        # the control images decoded by the route (sdrt/service/control.py)
        **{name: body[name] for name in CONTROL_FIELDS if body.get(name) is not None},
    }
    request = _checked_request(pipe, prompt, arguments)
    if request.width * request.height > limits.max_pixels:
        raise bad_request(
            f"size: expected at most {limits.max_pixels} pixels (this server's limit), got "
            f"{request.width}x{request.height} = {request.width * request.height}"
        )
    stream = _boolean(body.get("stream", False), "stream")
    return Generation(request, request.seed, stream, prompt, negative, image is not None)


def _checked_request(pipe, prompt: str, arguments: dict):
    """Pipeline.request's checks, with the size's messages naming ``size``; the
    scheduler is planned too, so that an unknown name is a 400 before any work."""
    try:
        request = pipe.request(prompt, **arguments)
    except InputError as e:
        message, param = str(e), None
        if message.startswith(("height:", "width:")):
            message = f"size: {message}"
        elif isinstance(e, ParameterError) and e.parameters():
            param = e.parameters()[0]  # "control_guidance_start and ...: " has no one prefix
        raise bad_request(message, param) from None
    try:
        scheduler = make_scheduler(
            request.scheduler,
            pipe.scheduler_config,
            pipe.folder,
            pipe.manifest,
            request.scheduler_config,
        )
        scheduler.plan(request.num_inference_steps, strength=request.strength, eta=request.eta)
    except InputError as e:
        # the limits depend on the scheduler (its most steps, DDIM's and TCD's eta range):
        # name the field the scheduler refused, else the scheduler itself
        named = e.parameters() if isinstance(e, ParameterError) else ()
        field = named[0] if named else "scheduler"
        raise bad_request(f"{field}: {e}", param=field) from None
    return request


def _prompts(body: dict, limits: Limits) -> tuple[str, str | None]:
    prompt, negative = body.get("prompt"), body.get("negative_prompt")
    for name, value in (("prompt", prompt), ("negative_prompt", negative)):
        if value is None and name == "negative_prompt":
            continue
        if not isinstance(value, str):
            raise bad_request(f"{name}: expected a string, got {_kind(value)}")
        if len(value) > limits.max_prompt_chars:
            raise bad_request(
                f"{name}: expected at most {limits.max_prompt_chars} characters (this "
                f"server's limit), got {len(value)}"
            )
    return prompt, negative


def _check_formats(body: dict) -> None:
    response_format = body.get("response_format", "b64_json")
    if response_format != "b64_json":
        raise bad_request(
            "response_format: expected 'b64_json' (this server returns images inline, "
            f"not as URLs), got {response_format!r}"
        )
    output_format = body.get("output_format", "png")
    if output_format != "png":
        raise bad_request(f"output_format: expected 'png', got {output_format!r}")


def _size(value: Any) -> tuple[int | None, int | None]:
    """(width, height) from "WxH"; (None, None) for "auto" or none: the folder's own."""
    if value is None or value == "auto":
        return None, None
    if not isinstance(value, str):
        raise bad_request(f"size: expected 'WxH' pixels or 'auto', got {_kind(value)}")
    try:
        size = parse_size(value, option="size")
    except InputError as e:
        raise bad_request(str(e)) from None
    return size.width, size.height


def _bounded_integer(value: Any, name: str, maximum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise bad_request(f"{name}: expected an integer, got {_kind(value)}")
    if not 1 <= value <= maximum:
        raise bad_request(
            f"{name}: expected an integer from 1 to {maximum} (this server's limit), got {value}"
        )
    return value


def _boolean(value: Any, name: str) -> bool:
    if not isinstance(value, bool):
        raise bad_request(f"{name}: expected true or false, got {_kind(value)}")
    return value


def _kind(value: Any) -> str:
    if isinstance(value, str):
        return repr(value) if len(value) <= 40 else f"a string of {len(value)} characters"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)) and (not isinstance(value, float) or math.isfinite(value)):
        return repr(value)
    return type(value).__name__


def form_value(name: str, text: str) -> Any:
    """A multipart field's text as the JSON value it stands for (edits are multipart)."""
    if name in ("n", "num_inference_steps", "seed", "deep_cache_interval", "deep_cache_branch"):
        try:
            return int(text)
        except ValueError:
            raise bad_request(f"{name}: expected an integer, got {text!r}") from None
    if name in (
        "guidance_scale",
        "strength",
        "controlnet_conditioning_scale",
        "control_guidance_start",
        "control_guidance_end",
    ):
        try:
            return float(text)
        except ValueError:
            raise bad_request(f"{name}: expected a number, got {text!r}") from None
    if name in ("stream", "guess_mode"):
        if text.lower() not in ("true", "false"):
            raise bad_request(f"{name}: expected true or false, got {text!r}")
        return text.lower() == "true"
    return text
