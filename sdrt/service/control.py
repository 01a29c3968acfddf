"""Control images for ControlNet in requests, with diffusers' names (as ``Pipeline.__call__``):

    control_image                   an image, or a list with one per ControlNet the call runs
    controlnet                      a ControlNet's name, or a list of names (default: all)
    controlnet_conditioning_scale   a number, or a list with one per ControlNet
    control_guidance_start          likewise (the fraction of the steps before it runs)
    control_guidance_end            likewise (the fraction after which it stops)
    guess_mode                      true or false

In the generations body a control image is a base64 string (PNG, JPEG or WebP, as OpenAI
clients send images inline; a ``data:image/...;base64,`` URL too); in an edit's form it is
a file part or such a string, and a field repeated makes a list (``name[]`` too: the
``openai`` client sends a list in ``extra_body`` so). The Pipeline checks the settings
(sdrt/control/settings.py) with the Python API's messages; what only the service checks is
here: the encoding, the upload limits, and that a request holds no more images than the
folder has ControlNets, counted before any is decoded (a small PNG can decode to a large
image, so their number must be bounded).
"""

from __future__ import annotations

import base64
import binascii
import re
from typing import Any

from sdrt.service.config import Limits
from sdrt.service.errors import bad_request, too_large
from sdrt.service.uploads import decode_image, read_file

IMAGE_FIELD = "control_image"
# The text fields of an edit's form that take a list when repeated.
LIST_FIELDS = (
    "controlnet",
    "controlnet_conditioning_scale",
    "control_guidance_start",
    "control_guidance_end",
)
CONTROL_FIELDS = frozenset({IMAGE_FIELD, *LIST_FIELDS, "guess_mode"})
DATA_URL = re.compile(r"data:image/[\w.+-]+;base64,")


def controlnet_count(pipe) -> int:
    """How many ControlNets the loaded folder has (0 while loading): the most control
    images a request may carry, which sizes the body limits."""
    return 0 if pipe is None else len(pipe.manifest.controlnets)


def base64_length(size: int) -> int:
    """The length of ``size`` bytes in base64, plus room for a data URL's prefix."""
    return 4 * -(-size // 3) + 64


def json_control_images(value: Any, manifest, limits: Limits) -> Any:
    """The PIL image(s) of a generations body's ``control_image``: a base64 string, or a
    list of them (a list stays a list); None when absent."""
    if value is None:
        return None
    items = value if isinstance(value, list) else [value]
    check_count(len(items), manifest)
    images = [_from_base64(item, limits) for item in items]
    return images if isinstance(value, list) else images[0]


def field_name(name: str) -> str:
    """A form field's name, a control field's ``name[]`` (a list's item) read as ``name``."""
    base = name.removesuffix("[]")
    return base if base in CONTROL_FIELDS else name


async def form_control(form, manifest, limits: Limits, value) -> dict:
    """The control fields of an edit's form: ``control_image`` parts (repeatable; files or
    base64 text) and the text fields, each repeated for a list; ``value(name, text)`` reads
    one text field."""
    fields = {}
    parts = _every(form, IMAGE_FIELD)
    if parts:
        check_count(len(parts), manifest)
        images = [
            _from_base64(part, limits)
            if isinstance(part, str)
            else await read_file(part, IMAGE_FIELD, limits)
            for part in parts
        ]
        fields[IMAGE_FIELD] = images if len(images) > 1 else images[0]
    for name in LIST_FIELDS:
        values = [value(name, text) for text in _every(form, name) if isinstance(text, str)]
        if values:
            fields[name] = values if len(values) > 1 else values[0]
    guess_mode = (_every(form, "guess_mode") or [None])[-1]
    if isinstance(guess_mode, str):
        fields["guess_mode"] = value("guess_mode", guess_mode)
    return fields


def _every(form, name: str) -> list:
    return [v for k, v in form.multi_items() if field_name(k) == name]


def check_count(count: int, manifest) -> None:
    """At most one control image per ControlNet of the folder (the Pipeline then checks
    that there is one per ControlNet the call runs)."""
    names = [c.name for c in manifest.controlnets]
    if not names:
        raise bad_request(
            f"{IMAGE_FIELD}: this model folder was built without ControlNets (rebuild it with "
            f"`sdrt build --controlnet [NAME=]FOLDER`); got {count} control image(s)"
        )
    if count > len(names):
        raise bad_request(
            f"{IMAGE_FIELD}: expected at most {len(names)} image(s), one per ControlNet of "
            f"this model folder ({', '.join(names)}), got {count}"
        )


def _from_base64(item: Any, limits: Limits):
    if not isinstance(item, str):
        raise bad_request(
            f"{IMAGE_FIELD}: expected a base64 PNG, JPEG or WebP image or a list of them, got "
            f"{type(item).__name__}"
        )
    text = DATA_URL.sub("", item, count=1)
    # the text's length bounds the bytes before anything is decoded
    too_long = len(text) > base64_length(limits.max_upload_bytes)
    if not too_long:
        try:
            data = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError) as e:  # ValueError: characters beyond ASCII
            raise bad_request(
                f"{IMAGE_FIELD}: expected a base64 PNG, JPEG or WebP image, could not decode "
                f"the base64 ({e})"
            ) from None
    if too_long or len(data) > limits.max_upload_bytes:
        raise too_large(
            f"{IMAGE_FIELD}: expected an image of at most {limits.max_upload_bytes} bytes (this "
            "server's limit), got more",
            param=IMAGE_FIELD,
        )
    return decode_image(data, IMAGE_FIELD, limits)
