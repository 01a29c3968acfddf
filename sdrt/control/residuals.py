"""Per denoising step: run the call's ControlNets and sum their residuals, as diffusers'
StableDiffusion(XL)ControlNet(Img2Img/Inpaint)Pipeline and MultiControlNetModel do.

A ControlNet whose guidance window [start, end] excludes the step is not run (diffusers
runs it with scale 0, giving zero residuals); a step where none runs returns None, and the
caller runs the plain U-Net, which is the residual U-Net with zero residuals. In guess mode
under classifier-free guidance the ControlNets see the conditional half only (the latents
once, the prompt's rows), and zeros stand in for the unconditional half's residuals.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from sdrt.arrays import namespace_of
from sdrt.control.conditioning import controlnet_cond
from sdrt.control.settings import ControlSettings
from sdrt.errors import ModelFolderError
from sdrt.manifest import MID_BLOCK_RESIDUAL

# (component, feeds without the timestep) -> outputs as float32 arrays by name
RunGraph = Callable[[str, dict[str, Any]], Mapping[str, Any]]
# SDXL's added conditions, which the ControlNets take as the U-Net does
ADDED_INPUTS = ("text_embeds", "time_ids")


class ControlLoop:
    """One call's ControlNets, their prepared images, and the per-step residuals."""

    def __init__(
        self,
        settings: ControlSettings,
        width: int,
        height: int,
        batch: int,
        guided: bool,
        total_steps: int,
        xp,
    ):
        self.settings = settings
        self.guided = guided
        self.batch = batch
        # the conditional half alone: guess mode under guidance
        self.conditional_only = settings.guess_mode and guided
        doubled = guided and not settings.guess_mode
        self.images = tuple(
            xp.asarray(
                controlnet_cond(
                    u.image, width, height, u.controlnet.conditioning_channels, batch, doubled
                )
            )
            for u in settings.units
        )
        self.total_steps = total_steps

    def runs_at(self, step: int) -> bool:
        """Whether any ControlNet runs at U-Net call ``step``."""
        return any(self.settings.keeps(step, self.total_steps))

    def residuals(
        self, step: int, model_input, latents_input, conditioning, run: RunGraph
    ) -> dict[str, Any] | None:
        """The summed residuals for U-Net call ``step``, or None where no ControlNet runs.
        ``model_input``: the U-Net's latents (both guidance halves, scaled, before an
        inpainting U-Net's extra channels); ``latents_input``: one half of it, scaled."""
        keeps = self.settings.keeps(step, self.total_steps)
        if not any(keeps):
            return None
        rows = slice(self.batch, None) if self.conditional_only else slice(None)
        sample = latents_input if self.conditional_only else model_input
        feeds = {"sample": sample, "encoder_hidden_states": conditioning.embeddings[rows]}
        for name in ADDED_INPUTS:
            if name in conditioning.added:
                feeds[name] = conditioning.added[name][rows]
        xp = namespace_of(sample)
        total = None
        for unit, image, keep in zip(self.settings.units, self.images, keeps, strict=True):
            if not keep:
                continue
            scale = xp.asarray([unit.scale], dtype=xp.float32)
            outputs = run(
                unit.controlnet.component,
                feeds | {"controlnet_cond": image, "conditioning_scale": scale},
            )
            if self.settings.guess_mode and not unit.controlnet.global_pool_conditions:
                outputs = _guess_mode_ramp(outputs, xp)
            total = dict(outputs) if total is None else _summed(total, outputs)
        if self.conditional_only:
            total = {
                k: namespace_of(v).concatenate([namespace_of(v).zeros_like(v), v], axis=0)
                for k, v in total.items()
            }
        return total


def _guess_mode_ramp(outputs: Mapping[str, Any], xp) -> dict[str, Any]:
    """diffusers' guess-mode scales: torch.logspace(-1, 0, N + 1) over the N down-block
    residuals and the mid block's (the last, 1.0), times the conditioning scale (already in
    the outputs)."""
    down = [k for k in outputs if k != MID_BLOCK_RESIDUAL]
    ramp = np.logspace(-1, 0, len(down) + 1, dtype=np.float32)
    scaled = {k: outputs[k] * xp.float32(ramp[i]) for i, k in enumerate(down)}
    scaled[MID_BLOCK_RESIDUAL] = outputs[MID_BLOCK_RESIDUAL] * xp.float32(ramp[-1])
    return scaled


def _summed(total: dict[str, Any], outputs: Mapping[str, Any]) -> dict[str, Any]:
    missing = set(total) ^ set(outputs)
    if missing:  # the build checks each ControlNet against the U-Net; a hand-edited folder
        raise ModelFolderError(
            f"sdrt.json: expected the ControlNets to give the same residuals; "
            f"{sorted(missing)} come from some only"
        )
    return {k: total[k] + outputs[k] for k in total}
