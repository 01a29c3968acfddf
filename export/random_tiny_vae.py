"""Random-weight tiny VAEs (diffusers' ``AutoencoderTiny``, the TAESD architecture), offline.

``taesd`` and ``taesdxl`` are the published configs of madebyollin/taesd (SD 1.x/2.x) and
madebyollin/taesdxl (SDXL): the two share one architecture (diffusers' AutoencoderTiny
defaults: 64-wide blocks, 1/3/3/3 encoder and 3/3/3/1 decoder blocks, 4 latent channels)
and ``scaling_factor`` 1.0 (TAESD works on the diffusion model's scaled latents, so
diffusers' pipelines divide by 1.0); only their trained weights differ. ``tiny-taesd`` keeps
the four stages (so it scales by 8 like every SD VAE) with 8-wide single blocks, for tests.

Default initialisation shrinks the signal at every ReLU convolution, so a random TAESD's
images would be all but black (mean 0.005) and its latents near zero: parity tests on them
could not fail. The last convolution of the decoder and of the encoder is therefore rescaled,
per output channel, on a fixed batch of random inputs (``_calibrate_last_conv``): images
come out around mid-grey with a spread (TARGET_IMAGE_*), latents with unit scale, as a
trained TAESD's are. Nothing else is touched.

The folder is what ``AutoencoderTiny.save_pretrained`` writes (config.json and one
safetensors file), so ``AutoencoderTiny.from_pretrained`` and ``sdrt build --tiny-vae``
read it as they read the Hub repos.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from pathlib import Path
from types import MappingProxyType
from typing import Any

from sdrt.errors import InputError

CLASS_NAME = "AutoencoderTiny"
# What makes a folder one init-model may replace (with --force): a diffusers model's weights.
TINY_VAE_MARKER = "diffusion_pytorch_model.safetensors"
# What the random decoder's images ([0, 1], before diffusers' x2-1) and the random
# encoder's latents are calibrated to, per channel, on CALIBRATION_* inputs.
TARGET_IMAGE_MEAN, TARGET_IMAGE_STD = 0.5, 0.2
TARGET_LATENT_MEAN, TARGET_LATENT_STD = 0.0, 1.0
CALIBRATION_BATCH, CALIBRATION_LATENT_SIZE = 2, 16

_TAESD = {
    "act_fn": "relu",
    "decoder_block_out_channels": [64, 64, 64, 64],
    "encoder_block_out_channels": [64, 64, 64, 64],
    "force_upcast": False,
    "in_channels": 3,
    "latent_channels": 4,
    "latent_magnitude": 3,
    "latent_shift": 0.5,
    "num_decoder_blocks": [3, 3, 3, 1],
    "num_encoder_blocks": [1, 3, 3, 3],
    "out_channels": 3,
    "scaling_factor": 1.0,
    "upsampling_scaling_factor": 2,
}

TINY_VAE_ARCHITECTURES: MappingProxyType = MappingProxyType(
    {
        "taesd": (
            "TAESD (madebyollin/taesd), the tiny VAE of SD 1.x/2.x",
            MappingProxyType(_TAESD),
        ),
        "taesdxl": (
            "TAESDXL (madebyollin/taesdxl), the tiny VAE of SDXL",
            MappingProxyType(dict(_TAESD)),
        ),
        "tiny-taesd": (
            "TAESD's four stages with 8-wide single blocks (for tests)",
            MappingProxyType(
                {
                    **_TAESD,
                    "decoder_block_out_channels": [8, 8, 8, 8],
                    "encoder_block_out_channels": [8, 8, 8, 8],
                    "num_decoder_blocks": [1, 1, 1, 1],
                    "num_encoder_blocks": [1, 1, 1, 1],
                }
            ),
        ),
    }
)


def init_random_tiny_vae(
    arch: str,
    out_dir: str | Path,
    *,
    seed: int = 0,
    force: bool = False,
    progress: Callable[[str], None] | None = None,
) -> Path:
    """Write tiny VAE ``arch`` with random weights from ``seed`` into ``out_dir``.

    Written under a temporary name beside ``out_dir`` and renamed into place when complete;
    an existing non-empty ``out_dir`` is replaced only with ``force``, and only if it is a
    diffusers model folder (it holds TINY_VAE_MARKER).
    """
    import torch
    from diffusers import AutoencoderTiny
    from sdrt.export.random_model import redraw_zero_weights, write_staged

    if arch not in TINY_VAE_ARCHITECTURES:
        raise InputError(
            f"unknown tiny VAE {arch!r}; expected one of: {', '.join(TINY_VAE_ARCHITECTURES)}"
        )

    def write(staging: Path) -> None:
        config: dict[str, Any] = dict(TINY_VAE_ARCHITECTURES[arch][1])
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(zlib.crc32(f"{seed}/{arch}".encode()))
            model = AutoencoderTiny.from_config(config)
            redraw_zero_weights(model)
            _calibrate(model)
        model.eval().save_pretrained(staging, safe_serialization=True)

    out_dir = write_staged(out_dir, seed, force, write, marker=TINY_VAE_MARKER)
    if progress is not None:
        progress(f"wrote {arch} ({CLASS_NAME}) with random weights (seed {seed}) to {out_dir}")
    return out_dir


def _calibrate(model) -> None:
    """Rescale the decoder's and encoder's last convolutions (see the module docstring)."""
    import torch

    latents = torch.randn(
        (CALIBRATION_BATCH, model.config.latent_channels)
        + (CALIBRATION_LATENT_SIZE, CALIBRATION_LATENT_SIZE)
    )
    size = CALIBRATION_LATENT_SIZE * 2 ** (len(model.config.num_encoder_blocks) - 1)
    images = torch.rand((CALIBRATION_BATCH, model.config.in_channels, size, size)) * 2 - 1
    _calibrate_last_conv(
        model.decoder.layers[-1],
        lambda: model.decoder(latents),
        TARGET_IMAGE_MEAN,
        TARGET_IMAGE_STD,
    )
    _calibrate_last_conv(
        model.encoder.layers[-1],
        lambda: model.encoder(images),
        TARGET_LATENT_MEAN,
        TARGET_LATENT_STD,
    )


def _calibrate_last_conv(conv, run, mean: float, std: float) -> None:
    """Scale and shift ``conv``'s output channels so that, on what ``run()`` feeds it, each
    has ``mean`` and ``std`` (a flat channel keeps its scale, gets the mean)."""
    import torch

    captured = {}
    hook = conv.register_forward_hook(lambda module, args, out: captured.update(out=out))
    try:
        with torch.no_grad():
            run()
    finally:
        hook.remove()
    out = captured["out"]
    got_mean, got_std = out.mean(dim=(0, 2, 3)), out.std(dim=(0, 2, 3))
    scale = torch.where(got_std > 0, std / got_std, torch.ones_like(got_std))
    with torch.no_grad():
        conv.weight.mul_(scale.view(-1, 1, 1, 1))
        bias = conv.bias if conv.bias is not None else torch.zeros_like(got_mean)
        conv.bias = torch.nn.Parameter((bias - got_mean) * scale + mean)
