"""Test tiers: unit (no model), export/runtime on the tiny random model, slow, gpu.

``slow`` tests (full-size architectures) run only when selected with ``-m slow``;
``gpu`` tests run only where CUDA is present and skip cleanly elsewhere.
"""

from __future__ import annotations

import functools

import pytest


@functools.cache
def cuda_available() -> bool:
    try:
        import cupy

        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:  # no cupy, no driver, no device: all mean "no GPU here"
        return False


def pytest_collection_modifyitems(config, items):
    markexpr = config.getoption("markexpr") or ""
    skip_slow = pytest.mark.skip(reason="slow: run with -m slow")
    skip_gpu = pytest.mark.skip(reason="gpu: no CUDA device on this machine")
    for item in items:
        if "slow" in item.keywords and "slow" not in markexpr:
            item.add_marker(skip_slow)
        if "gpu" in item.keywords and not cuda_available():
            item.add_marker(skip_gpu)


# ---------------------------------------------------------------------------- tiny model

# The tiny architecture's native image size is 64 px; the built folder serves 64..256 px.
TINY_MIN_SIZE = 64
TINY_MAX_SIZE = 256


@pytest.fixture(scope="session")
def tiny_source(tmp_path_factory):
    """The `tiny` random-weight diffusers folder (made once per test session)."""
    from sdrt.export.random_model import init_random_model

    return init_random_model("tiny", tmp_path_factory.mktemp("tiny-source") / "tiny", seed=0)


@pytest.fixture(scope="session")
def tiny_built(tiny_source, tmp_path_factory):
    """`tiny_source` built to an fp32 sdrt model folder (made once per test session)."""
    from sdrt.export.build import BuildConfig, build

    config = BuildConfig(
        source=str(tiny_source),
        output=tmp_path_factory.mktemp("tiny-built") / "tiny",
        min_size=TINY_MIN_SIZE,
        max_size=TINY_MAX_SIZE,
    )
    return build(config).output
