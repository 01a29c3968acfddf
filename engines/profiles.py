"""Optimization profiles: the min/opt/max shape of every engine input, from the build options.

TensorRT needs, for each input with a dynamic dimension, the smallest, the most common and
the largest shape it will ever see. They follow from three user choices: the image size
range (pixels; latents are 1/``vae_scale_factor`` of that), the batch range (images per
call), and classifier-free guidance, which runs the U-Net (and the text encoder) on cond
and uncond together, doubling their batch. Everything here is plain Python so it is tested
without a GPU.

Each input's axes are given a role by the component's input name (Optimum's names); a
symbolic axis without a role, or a role the spec fixes to a number, is a clear error, so a
model folder whose graphs we do not understand is never built with made-up shapes.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from sdrt.errors import InputError, ModelFolderError
from sdrt.manifest import (
    CONTROLNET_PREFIX,
    CONTROLNET_UNET,
    MID_BLOCK_RESIDUAL,
    Component,
    Manifest,
    TensorSpec,
    down_block_residual,
)

TOKENS = 77  # CLIP's context length, the same for every SD text encoder

# Axis roles. Latent axes are image axes divided by the VAE scale factor.
BATCH, GUIDED_BATCH, TOKEN, IMAGE_H, IMAGE_W, LATENT_H, LATENT_W, ONE, FIXED = (
    "batch",
    "guided_batch",
    "tokens",
    "image_height",
    "image_width",
    "latent_height",
    "latent_width",
    "one",
    "fixed",
)

# (component, input) -> role of each axis. The U-Net and text encoder see the doubled batch
# of classifier-free guidance; the VAE sees the images themselves.
AXIS_ROLES: dict[tuple[str, str], tuple[str, ...]] = {
    ("text_encoder", "input_ids"): (GUIDED_BATCH, TOKEN),
    ("text_encoder_2", "input_ids"): (GUIDED_BATCH, TOKEN),
    ("unet", "sample"): (GUIDED_BATCH, FIXED, LATENT_H, LATENT_W),
    ("unet", "timestep"): (ONE,),
    ("unet", "encoder_hidden_states"): (GUIDED_BATCH, TOKEN, FIXED),
    ("unet", "text_embeds"): (GUIDED_BATCH, FIXED),
    ("unet", "time_ids"): (GUIDED_BATCH, FIXED),
    ("vae_decoder", "latent_sample"): (BATCH, FIXED, LATENT_H, LATENT_W),
    ("vae_encoder", "sample"): (BATCH, FIXED, IMAGE_H, IMAGE_W),
    ("vae_decoder_tiny", "latent_sample"): (BATCH, FIXED, LATENT_H, LATENT_W),
    ("vae_encoder_tiny", "sample"): (BATCH, FIXED, IMAGE_H, IMAGE_W),
}

LEVELS = ("min", "opt", "max")


def axis_roles(component: str, spec: TensorSpec) -> tuple[str, ...] | None:
    """The role of each axis of ``component``'s input ``spec``, or None where unknown.

    ControlNet graphs (sdrt build --controlnet) take the U-Net's inputs, the control image
    (in pixels) and the residuals, whose sides are the latents' halved ``level`` times with
    ceil (the export names them ``height_<level>``; level 0 is the latents' own)."""
    roles = AXIS_ROLES.get((component, spec.name))
    controlnet = component == CONTROLNET_UNET or component.startswith(CONTROLNET_PREFIX)
    if roles is not None or not controlnet:
        return roles
    if ("unet", spec.name) in AXIS_ROLES:
        return AXIS_ROLES[("unet", spec.name)]
    if spec.name == "controlnet_cond":
        return (GUIDED_BATCH, FIXED, IMAGE_H, IMAGE_W)
    residual = spec.name == MID_BLOCK_RESIDUAL or spec.name.startswith(down_block_residual(0)[:-1])
    if residual and len(spec.shape) == 4 and isinstance(spec.shape[2], str):
        _, _, level = spec.shape[2].rpartition("_")
        divisor = 2 ** int(level) if level.isdigit() else 1
        return (GUIDED_BATCH, FIXED, f"{LATENT_H}/{divisor}", f"{LATENT_W}/{divisor}")
    return None


@dataclass(frozen=True)
class ShapeRange:
    """Image sizes in pixels and batch sizes in images per call; min <= opt <= max each."""

    min_height: int
    min_width: int
    opt_height: int
    opt_width: int
    max_height: int
    max_width: int
    min_batch: int = 1
    opt_batch: int = 1
    max_batch: int = 1
    # With guidance the U-Net and text encoder run cond + uncond as one batch of 2N.
    guidance: bool = True

    @classmethod
    def static(cls, height: int, width: int, batch: int = 1, *, guidance: bool = True):
        return cls(height, width, height, width, height, width, batch, batch, batch, guidance)

    @property
    def is_static(self) -> bool:
        return (
            self.min_height == self.max_height
            and self.min_width == self.max_width
            and self.min_batch == self.max_batch
        )

    def check(self, size_multiple: int = 8) -> None:
        for level in LEVELS:
            for axis in ("height", "width"):
                value = getattr(self, f"{level}_{axis}")
                if value <= 0 or value % size_multiple:
                    raise InputError(
                        f"{level} {axis} must be a positive multiple of {size_multiple}, got {value}"
                    )
            if getattr(self, f"{level}_batch") < 1:
                raise InputError(
                    f"{level} batch must be at least 1, got {getattr(self, f'{level}_batch')}"
                )
        for axis in ("height", "width", "batch"):
            lo, opt, hi = (getattr(self, f"{level}_{axis}") for level in LEVELS)
            if not lo <= opt <= hi:
                raise InputError(f"{axis}: expected min <= opt <= max, got {lo}, {opt}, {hi}")

    def within(self, low: int, high: int) -> None:
        """Check the sizes lie in the range the model folder was exported and verified for."""
        for level in ("min", "max"):
            for axis in ("height", "width"):
                value = getattr(self, f"{level}_{axis}")
                if not low <= value <= high:
                    raise InputError(
                        f"{level} {axis} {value} is outside the model folder's size range "
                        f"{low}..{high} (rebuild the folder with a wider --min-size/--max-size)"
                    )


def shape_range_from_options(
    manifest: Manifest,
    *,
    static: tuple[int, int] | None = None,
    min_size: int | None = None,
    opt_size: int | None = None,
    max_size: int | None = None,
    batch: int | None = None,
    max_batch: int | None = None,
    guidance: bool = True,
) -> ShapeRange:
    """The shape range for the given options; what is not given comes from the folder's build.

    ``static`` is (width, height); it fixes every dimension (batch to ``batch`` or 1).
    """
    build = manifest.build
    if static is not None:
        if min_size is not None or max_size is not None or max_batch is not None:
            raise InputError(
                "a static shape fixes every dimension: do not combine it with --min-size, --max-size or --max-batch"
            )
        width, height = static
        shapes = ShapeRange.static(height, width, batch or 1, guidance=guidance)
    else:
        lo = build.min_size if min_size is None else min_size
        hi = build.max_size if max_size is None else max_size
        opt = min(max(build.opt_size if opt_size is None else opt_size, lo), hi)
        top = build.max_batch if max_batch is None else max_batch
        shapes = ShapeRange(
            lo,
            lo,
            opt,
            opt,
            hi,
            hi,
            min_batch=1,
            opt_batch=min(batch or 1, top),
            max_batch=top,
            guidance=guidance,
        )
    shapes.check(build.size_multiple)
    shapes.within(build.min_size, build.max_size)
    return shapes


def _axis_value(role: str, level: str, shapes: ShapeRange, vae_scale_factor: int) -> int:
    if "/" in role:  # a latent side halved with ceil (ControlNet residuals)
        base, _, divisor = role.partition("/")
        return -(-_axis_value(base, level, shapes, vae_scale_factor) // int(divisor))
    batch = getattr(shapes, f"{level}_batch")
    if role == BATCH:
        return batch
    if role == GUIDED_BATCH:
        # A dynamic profile keeps the unguided batch (guidance_scale <= 1) at its minimum.
        if not shapes.guidance or (level == "min" and not shapes.is_static):
            return batch
        return 2 * batch
    if role == TOKEN:
        return TOKENS
    if role == ONE:
        return 1
    if role in (IMAGE_H, LATENT_H):
        pixels = getattr(shapes, f"{level}_height")
    else:
        pixels = getattr(shapes, f"{level}_width")
    return pixels if role in (IMAGE_H, IMAGE_W) else pixels // vae_scale_factor


def tied_batch_axes(component: Component) -> dict[str, str]:
    """Symbolic dimension name -> batch role, for names some input uses on its batch axis.

    ONNX treats inputs that share a dimension name as equal in that dimension, and
    TensorRT enforces it (the profile ranges must overlap and the runtime values agree).
    Exports may name the U-Net's timestep axis like its batch axis; that axis then follows
    the batch in the profile, and sessions broadcast a one-value timestep to the batch.
    """
    tied: dict[str, str] = {}
    for spec in component.inputs:
        roles = axis_roles(component.name, spec) or ()
        if len(roles) != len(spec.shape):
            continue
        for role, dim in zip(roles, spec.shape, strict=True):
            if isinstance(dim, str) and role in (BATCH, GUIDED_BATCH):
                tied.setdefault(dim, role)
    return tied


def input_profile(
    component: Component,
    spec: TensorSpec,
    shapes: ShapeRange,
    vae_scale_factor: int,
    tied: Mapping[str, str] | None = None,
) -> dict[str, tuple[int, ...]]:
    """{"min","opt","max"} -> concrete shape of one input."""
    roles = axis_roles(component.name, spec)
    if roles is None:
        if all(isinstance(d, int) for d in spec.shape):
            fixed = tuple(int(d) for d in spec.shape)
            return dict.fromkeys(LEVELS, fixed)
        raise ModelFolderError(
            f"{component.name}: input {spec.name!r} has symbolic shape {list(spec.shape)} and no "
            f"known axis roles; expected one of "
            f"{sorted(n for c, n in AXIS_ROLES if c == component.name)}"
        )
    if len(roles) != len(spec.shape):
        raise ModelFolderError(
            f"{component.name}: input {spec.name!r} expected rank {len(roles)} "
            f"({', '.join(roles)}), got shape {list(spec.shape)}"
        )
    profile = {}
    for level in LEVELS:
        dims = []
        for role, dim in zip(roles, spec.shape, strict=True):
            if role == FIXED:
                if not isinstance(dim, int):
                    raise ModelFolderError(
                        f"{component.name}: input {spec.name!r} expected a fixed channel size, "
                        f"got the symbolic dimension {dim!r}"
                    )
                dims.append(dim)
                continue
            if role == ONE and isinstance(dim, str) and tied and dim in tied:
                role = tied[dim]
            value = _axis_value(role, level, shapes, vae_scale_factor)
            if isinstance(dim, int) and dim != value:
                raise InputError(
                    f"{component.name}: input {spec.name!r} is fixed to {list(spec.shape)} in the "
                    f"graph; the requested {level} shape needs {role} = {value}"
                )
            dims.append(value)
        profile[level] = tuple(dims)
    return profile


def component_profile(
    component: Component, shapes: ShapeRange, vae_scale_factor: int
) -> dict[str, dict[str, tuple[int, ...]]]:
    """Input name -> {"min","opt","max"} -> shape, for every input of one component."""
    tied = tied_batch_axes(component)
    return {
        spec.name: input_profile(component, spec, shapes, vae_scale_factor, tied)
        for spec in component.inputs
    }


def profile_contains(
    profile: Mapping[str, Mapping[str, tuple[int, ...]]], shapes: Mapping[str, tuple[int, ...]]
) -> str | None:
    """None when every input shape lies within its min..max, else a message saying which not."""
    for name, levels in profile.items():
        shape = tuple(shapes[name])
        lo, hi = levels["min"], levels["max"]
        if len(shape) != len(lo) or any(
            not a <= d <= b for d, a, b in zip(shape, lo, hi, strict=True)
        ):
            return (
                f"input {name!r} has shape {list(shape)}; the engine was built for "
                f"{list(lo)} .. {list(hi)} (rebuild it with `sdrt engines build` for this size)"
            )
    return None
