"""Tiny random ControlNets for the ControlNet tests: ``ControlNetModel.from_unet`` of a
tiny pipeline's U-Net (its encoder's weights copied), with the zero-initialised layers
(the zero convolutions and the conditioning embedding's last conv) redrawn so that the
control image changes the image."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

# ControlNet's zero layers redrawn with this std: large enough that the tiny model's image
# moves by far more than the parity tolerance.
ZERO_LAYER_STD = 0.1
ZERO_LAYERS = (
    "controlnet_down_blocks",
    "controlnet_mid_block",
    "controlnet_cond_embedding.conv_out",
)


def make_tiny_controlnet(pipeline_folder: Path, output: Path, seed: int, **config) -> Path:
    """A random ControlNetModel for ``pipeline_folder``'s U-Net, saved to ``output``."""
    import torch
    from diffusers import ControlNetModel, UNet2DConditionModel

    unet = UNet2DConditionModel.from_pretrained(pipeline_folder / "unet")
    controlnet = ControlNetModel.from_unet(unet, **config)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in controlnet.named_parameters():
            if name.startswith(ZERO_LAYERS):
                noise = torch.randn(parameter.shape, generator=generator)
                parameter.copy_(noise * ZERO_LAYER_STD)
    controlnet.save_pretrained(output)
    return output


def control_picture(width: int, height: int, seed: int) -> Image.Image:
    """A fixed RGB control image (blocks of random colours, like an edge or depth map's
    large regions)."""
    rng = np.random.default_rng(seed)
    blocks = rng.integers(0, 256, (height // 16 + 1, width // 16 + 1, 3), dtype=np.uint8)
    pixels = np.repeat(np.repeat(blocks, 16, axis=0), 16, axis=1)[:height, :width]
    return Image.fromarray(np.ascontiguousarray(pixels))


def rebuild_with(built: Path, output: Path, **options):
    """``built`` copied to ``output`` and rebuilt there (force) from the same source and
    sizes with ``options`` added: its graphs reused, only the new ones exported. The
    BuildResult."""
    import shutil

    from sdrt.export.build import BuildConfig, build

    from sdrt.manifest import read_manifest

    shutil.copytree(built, output)
    manifest = read_manifest(built)
    config = BuildConfig(
        source=manifest.source.path_or_id,
        output=output,
        min_size=manifest.build.min_size,
        max_size=manifest.build.max_size,
        force=True,
        **options,
    )
    return build(config)


def controlnet_options(sources: dict[str, Path]):
    """``BuildConfig.controlnets`` for {name: folder}, in order."""
    from sdrt.export.controlnet_options import ControlNetOption

    return tuple(ControlNetOption(name, str(path)) for name, path in sources.items())
