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
