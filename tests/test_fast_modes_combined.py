"""Fast modes together in one folder: int8 with DeepCache and the tiny VAE builds, records
all three, and its DeepCache image stays within the int8 PSNR gate of the fp32 one."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import TINY_MAX_SIZE, TINY_MIN_SIZE
from sdrt.engines.compare import psnr
from test_build_int8 import INT8_IMAGE_MIN_PSNR, SIZE, _image

from sdrt.errors import InputError
from sdrt.manifest import read_manifest


def test_int8_deep_cache_and_tiny_vae_compose(tiny_built_all_modes, tiny_built_deep_cache):
    manifest = read_manifest(tiny_built_all_modes)
    assert manifest.components["unet"].precision == "int8"
    assert manifest.components["unet_shallow_0"].precision == "fp32"
    assert manifest.deep_cache.branch_ids == (0,)
    assert manifest.tiny_vae is not None
    latents = np.random.default_rng(5).standard_normal((1, 4, SIZE // 8, SIZE // 8))
    latents = latents.astype(np.float32)
    cached = {"deep_cache_interval": 3, "deep_cache_branch": 0}
    fp32 = _image(tiny_built_deep_cache, latents, **cached)
    int8 = _image(tiny_built_all_modes, latents, **cached)
    assert np.abs(int8 - fp32).max() > 0
    assert psnr(int8, fp32) >= INT8_IMAGE_MIN_PSNR
    tiny = _image(tiny_built_all_modes, latents, vae="tiny", **cached)
    assert np.abs(tiny - int8).max() > 0.05  # the tiny decoder ran


def test_deep_cache_and_token_merging_are_refused_together(tiny_source, tmp_path):
    from sdrt.export.build import BuildConfig
    from sdrt.export.tome_options import TomeOptions

    with pytest.raises(InputError, match="--deep-cache and --tome-ratio"):
        BuildConfig(
            source=str(tiny_source),
            output=tmp_path / "out",
            min_size=TINY_MIN_SIZE,
            max_size=TINY_MAX_SIZE,
            deep_cache_branches=(0,),
            tome=TomeOptions(0.5),
        )
