"""LCM's guidance embedding: how an LCM-distilled U-Net is guided without a CFG batch.

A latent consistency model is distilled with the guidance scale as an input: its U-Net
(config ``time_cond_proj_dim``) adds a sinusoidal embedding of w = guidance_scale - 1 to
its time embedding, through the graph input ``timestep_cond``. One U-Net call per step on
the prompts alone gives the guided prediction: no unconditional rows, so no negative
prompt, as in diffusers' LatentConsistencyModelPipeline. sdrt runs a folder this way
whenever its U-Net graph has that input; a U-Net without it is guided by CFG as usual.
"""

from __future__ import annotations

import numpy as np

from sdrt.errors import ModelFolderError, ParameterError
from sdrt.manifest import Manifest

GUIDANCE_EMBEDDING_INPUT = "timestep_cond"  # Optimum's name for it, which sdrt's export keeps
# diffusers' get_guidance_scale_embedding: w is scaled by 1000 (the timesteps' range) and
# embedded with the sinusoid frequencies of the timestep embedding.
W_SCALE = 1000.0
MAX_PERIOD = 10000.0


def guidance_embedding_width(manifest: Manifest) -> int | None:
    """The width of the U-Net's guidance embedding input, or None where it has none."""
    unet = manifest.components.get("unet")
    specs = {s.name: s for s in unet.inputs} if unet is not None else {}
    spec = specs.get(GUIDANCE_EMBEDDING_INPUT)
    if spec is None:
        return None
    width = spec.shape[-1] if len(spec.shape) == 2 else None
    if not isinstance(width, int) or width < 1:
        raise ModelFolderError(
            f"sdrt.json: expected the U-Net's {GUIDANCE_EMBEDDING_INPUT} input to be "
            f"(batch, width) with a fixed width, got shape {list(spec.shape)}"
        )
    return width


def check_guidance_embedding(manifest: Manifest, negative_prompt, negative_prompt_embeds) -> bool:
    """Whether the call guides through the U-Net's guidance embedding (LCM); ParameterError
    for a negative prompt there, which has no unconditional pass to go into."""
    if guidance_embedding_width(manifest) is None:
        return False
    given = "negative_prompt" if negative_prompt is not None else None
    if negative_prompt_embeds is not None:
        given = "negative_prompt_embeds"
    if given is not None:
        raise ParameterError(
            f"{{{given}}}: expected none for this LCM-distilled model (its U-Net takes the "
            "guidance scale as an embedding, with no unconditional pass, as diffusers' "
            f"LatentConsistencyModelPipeline); got a {given}"
        )
    return True


def guidance_scale_embedding(guidance_scale: float, rows: int, width: int, xp=np):
    """(rows, width) float32 embedding of w = guidance_scale - 1, as diffusers'
    LatentConsistencyModelPipeline feeds ``timestep_cond`` (get_guidance_scale_embedding,
    computed in float32 as there)."""
    half = width // 2
    w = np.float32(guidance_scale - 1.0) * np.float32(W_SCALE)
    step = np.log(np.float32(MAX_PERIOD)) / np.float32(half - 1)
    # The float32 operands and products of diffusers' computation, with each function
    # evaluated in float64 and rounded: torch's float32 exp, sin and cos are close to
    # correctly rounded, numpy's SIMD float32 ones less so, and at angles up to 1000 * w
    # one ulp of an angle moves its sine by 5e-4.
    exponents = (np.arange(half, dtype=np.float32) * -step).astype(np.float64)
    frequencies = np.exp(exponents).astype(np.float32)
    angles = (w * frequencies).astype(np.float64)
    row = np.concatenate([np.sin(angles), np.cos(angles)]).astype(np.float32)
    if width % 2:  # odd widths end in a zero, as diffusers pads them
        row = np.concatenate([row, np.zeros(1, dtype=np.float32)])
    return xp.asarray(np.repeat(row[None, :].astype(np.float32), rows, axis=0))
