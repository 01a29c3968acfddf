"""Which VAE a call decodes (and encodes) with: the folder's full VAE, or its tiny one.

A folder built with ``sdrt build --tiny-vae`` carries both; ``Pipeline(..., vae="tiny")``
picks the tiny pair for the whole call, as diffusers does with ``vae=AutoencoderTiny(...)``:
txt2img decodes with it, img2img and inpainting also encode the image with it. Latents are
divided by the chosen VAE's own scaling factor (TAESD's is 1.0) before decoding and
multiplied by it after encoding, exactly as diffusers' pipelines use ``vae.config``.
"""

from __future__ import annotations

from dataclasses import dataclass

from sdrt.errors import ModelFolderError, ParameterError
from sdrt.manifest import Manifest

VAE_CHOICES = ("full", "tiny")
DEFAULT_VAE = "full"  # exact: the model's own VAE unless a call asks for the tiny one


@dataclass(frozen=True)
class VaeRoute:
    """The graphs and latent scaling of one VAE choice."""

    decoder: str  # component names
    encoder: str | None
    scaling_factor: float
    shift_factor: float | None


def check_vae_choice(manifest: Manifest, value) -> str:
    """``vae=``: None (the full VAE), "full" or "tiny" (where the folder has one)."""
    if value is None:
        return DEFAULT_VAE
    if value not in VAE_CHOICES:
        raise ParameterError(
            f"{{vae}}: expected one of {', '.join(map(repr, VAE_CHOICES))}, got {{value!r}}",
            value=value,
        )
    if value == "tiny" and manifest.tiny_vae is None:
        raise ParameterError(
            "{vae}: expected 'full' for this model folder, got 'tiny': it was built without a "
            "tiny VAE (rebuild it with `sdrt build ... --tiny-vae FOLDER`)"
        )
    return value


def vae_route(manifest: Manifest, choice: str) -> VaeRoute:
    """The decoder/encoder graphs and scaling for a checked choice."""
    if choice != "tiny":
        return VaeRoute(
            "vae_decoder", "vae_encoder", manifest.vae_scaling_factor, manifest.vae_shift_factor
        )
    tiny = manifest.tiny_vae
    if tiny.decoder not in manifest.components:
        raise ModelFolderError(
            f"sdrt.json: tiny_vae names the decoder {tiny.decoder!r}, which is not a component"
        )
    return VaeRoute(tiny.decoder, tiny.encoder, tiny.scaling_factor, None)
