"""Tiny random T2I-Adapters for the T2I-Adapter tests: diffusers' ``T2IAdapter`` with the
tiny U-Net's block widths (as diffusers' own adapter tests size theirs to their tiny
U-Net), seeded."""

from __future__ import annotations

import json
from pathlib import Path


def make_tiny_t2i_adapter(
    pipeline_folder: Path,
    output: Path,
    seed: int,
    in_channels: int = 3,
    downscale_factor: int = 8,
    **config,
) -> Path:
    """A random T2IAdapter whose features fit ``pipeline_folder``'s U-Net, saved to
    ``output``."""
    import torch
    from diffusers import T2IAdapter

    unet = json.loads((pipeline_folder / "unet" / "config.json").read_text())
    torch.manual_seed(seed)
    adapter = T2IAdapter(
        in_channels=in_channels,
        channels=list(unet["block_out_channels"]),
        num_res_blocks=1,
        downscale_factor=downscale_factor,
        **config,
    )
    adapter.save_pretrained(output)
    return output
