"""Unit tests of the export helpers that need no export: sources and shapes."""

from __future__ import annotations

import pytest
from sdrt.export.build import BuildConfig, _verification_cases
from sdrt.export.source import inspect_folder, looks_like_hub_id


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("runwayml/stable-diffusion-v1-5", True),
        ("stabilityai/sdxl-turbo", True),
        ("./models/sd15", False),
        ("/models/sd15", False),
        ("models/sd15/unet", False),
        ("sd15", False),
        ("../sd15", False),
    ],
)
def test_hub_id_or_path(text, expected):
    assert looks_like_hub_id(text) is expected


@pytest.mark.parametrize(("min_size", "max_size"), [(256, 1024), (512, 768), (320, 320)])
def test_verification_shapes_differ_and_stay_in_range(tiny_source, tmp_path, min_size, max_size):
    source = inspect_folder(tiny_source, str(tiny_source))
    config = BuildConfig(str(tiny_source), tmp_path / "out", min_size=min_size, max_size=max_size)
    cases = _verification_cases(config, source)
    factor = 64  # tiny's U-Net: 3 down-samplings of 8 px latents
    # The trace shape is off the U-Net's grid, so the graph takes up-sampling sizes as given.
    assert cases.trace.height % factor
    for first, second in (cases.unet, cases.vae):
        assert first != second
        for case in (first, second):
            assert min_size <= case.height <= max_size and min_size <= case.width <= max_size
            assert case.height % 8 == case.width % 8 == 0
    assert cases.unet[0].batch == 2 and cases.unet[0].steps == 1  # one timestep, batch of 2
    assert cases.sizes_verified_beyond_factor == (min_size != max_size or min_size % factor != 0)
